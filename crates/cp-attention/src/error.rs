//! The error type of cp-attention.

use candle_core::DType;

/// Why an attention call was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttentionError {
    /// A tensor has the wrong rank or dimensions.
    #[error("{what} has shape {actual:?}, expected {expected}")]
    Shape { what: &'static str, expected: String, actual: Vec<usize> },
    /// Query heads are not a multiple of key/value heads.
    #[error("n_heads ({n_heads}) must be a non-zero multiple of n_kv_heads ({n_kv_heads})")]
    Heads { n_heads: usize, n_kv_heads: usize },
    /// The rows of a tensor and its layout disagree.
    #[error("{what} has {rows} rows but its layout has {layout_rows}")]
    LayoutRows { what: &'static str, rows: usize, layout_rows: usize },
    /// A dtype the operation does not support, or inputs of mixed dtypes.
    #[error("unsupported dtype for {what}: {dtype:?} (supported: f64, f32, bf16; all inputs alike)")]
    Dtype { what: &'static str, dtype: DType },
    /// Merging no partial at all.
    #[error("merge_all needs at least one partial")]
    NothingToMerge,
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

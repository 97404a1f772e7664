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
    /// A CUDA library could not be loaded.
    #[error("{library} could not be loaded: {hint}")]
    MissingLibrary { library: &'static str, hint: &'static str },
    /// No GPU with this ordinal.
    #[error("no CUDA device {ordinal}: {count} device(s) visible")]
    NoDevice { ordinal: usize, count: usize },
    /// A CUDA driver call failed.
    #[error("CUDA call {op} failed: {code}")]
    Cuda { op: &'static str, code: String },
    /// NVRTC failed to compile the kernels.
    #[error("NVRTC failed to compile the kernels for {arch}: {code}\n{log}")]
    Compile { arch: String, code: String, log: String },
    /// A shape or option the GPU kernels do not support.
    #[error("unsupported on the GPU path: {0}")]
    Unsupported(String),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

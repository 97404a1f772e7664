//! The error type of cp-attention.

use candle_core::DType;

/// Why an attention call was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttentionError {
    /// A tensor has the wrong rank or dimensions.
    #[error("{what} has shape {actual:?}, expected {expected}")]
    Shape {
        /// What it concerns.
        what: &'static str,
        /// What was expected.
        expected: String,
        /// What was found.
        actual: Vec<usize>,
    },
    /// Query heads are not a multiple of key/value heads.
    #[error("n_heads ({n_heads}) must be a non-zero multiple of n_kv_heads ({n_kv_heads})")]
    Heads {
        /// Query heads.
        n_heads: usize,
        /// Key/value heads.
        n_kv_heads: usize,
    },
    /// The rows of a tensor and its layout disagree.
    #[error("{what} has {rows} rows but its layout has {layout_rows}")]
    LayoutRows {
        /// What it concerns.
        what: &'static str,
        /// Rows of the block.
        rows: usize,
        /// Rows of its layout.
        layout_rows: usize,
    },
    /// A dtype the operation does not support, or inputs of mixed dtypes.
    #[error("unsupported dtype for {what}: {dtype:?} (supported: f64, f32, bf16; all inputs alike)")]
    Dtype {
        /// What it concerns.
        what: &'static str,
        /// The dtype.
        dtype: DType,
    },
    /// Merging no partial at all.
    #[error("merge_all needs at least one partial")]
    NothingToMerge,
    /// A CUDA library could not be loaded.
    #[error("{library} could not be loaded: {hint}")]
    MissingLibrary {
        /// The library.
        library: &'static str,
        /// How to get it.
        hint: &'static str,
    },
    /// No GPU with this ordinal.
    #[error("no CUDA device {ordinal}: {count} device(s) visible")]
    NoDevice {
        /// The device asked for.
        ordinal: usize,
        /// Devices visible.
        count: usize,
    },
    /// A CUDA driver call failed.
    #[error("CUDA call {op} failed: {code}")]
    Cuda {
        /// The operation.
        op: &'static str,
        /// The library's result code.
        code: String,
    },
    /// NVRTC failed to compile the kernels.
    #[error("NVRTC failed to compile the kernels for {arch}: {code}\n{log}")]
    Compile {
        /// The target architecture.
        arch: String,
        /// The library's result code.
        code: String,
        /// NVRTC's log.
        log: String,
    },
    /// The device is too old for a kernel.
    #[error("compute capability {major}.{minor}: {what} needs {needs}")]
    ComputeCapability {
        /// Major version.
        major: i32,
        /// Minor version.
        minor: i32,
        /// What it concerns.
        what: &'static str,
        /// What it needs.
        needs: &'static str,
    },
    /// A kernel that was not built (not compiled for this architecture, or no such variant).
    #[error("no kernel {name} for this device")]
    KernelMissing {
        /// The kernel.
        name: String,
    },
    /// A head dimension the GPU kernels do not take.
    #[error("head dim {head_dim}: the GPU kernels take {supported}")]
    HeadDim {
        /// The head dimension.
        head_dim: usize,
        /// What is supported.
        supported: &'static str,
    },
    /// GPU dtypes that do not fit together or the operation.
    #[error("{what}: {got} ({supported})")]
    GpuDtype {
        /// What it concerns.
        what: &'static str,
        /// What was given.
        got: String,
        /// What is supported.
        supported: &'static str,
    },
    /// A size beyond what a kernel's indexing or CUDA's grid allows.
    #[error("{what} is {value}, more than the GPU path allows ({max})")]
    TooLarge {
        /// What it concerns.
        what: &'static str,
        /// The value given.
        value: usize,
        /// The limit.
        max: usize,
    },
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

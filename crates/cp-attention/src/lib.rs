//! Partial attention returning (output, log-sum-exp), and the exact merge of partials.
//!
//! Context-parallel attention splits the keys of every query over the ranks of a ring. Each
//! rank computes a *partial* attention of some queries against the keys it holds; the partials
//! of one query over disjoint key blocks merge exactly using their log-sum-exp (Eq. 4 of
//! arXiv:2411.01783):
//!
//! ```text
//! LSE_max = max_s LSE_s
//! O       = sum_s O_s exp(LSE_s - LSE_max) / sum_s exp(LSE_s - LSE_max)
//! LSE     = LSE_max + log sum_s exp(LSE_s - LSE_max)
//! ```
//!
//! A query row that sees no key of a block (causally masked, or a padding row) gets
//! `LSE = -inf` and an output of zeros, and merging it changes nothing — without NaN. Only such
//! parts are skipped: a part whose weight underflows to 0 still multiplies its output, so a NaN
//! a row saw in it propagates as it does through attention over all the keys at once.
//!
//! Tensors are `q: [Tq, NH, DH]`, `k, v: [Tk, NKV, DH]` with `NH` a multiple of `NKV`
//! (grouped-query attention: query head `h` reads key/value head `h / (NH / NKV)`, without
//! repeating K/V in memory). Masks come from the global positions of the rows
//! ([`cp_shard::Layout`]), never from local indices.
//!
//! - [`CpuAttention`]: the CPU path on candle tensors, f64, f32 and bf16 (bf16 inputs are
//!   computed with f32 accumulation and give f32 partials; [`finish`] casts the merged output
//!   back). It implements [`cp_ring::AttentionOps`], so the ring algorithms run on it.
//! - [`reference`](mod@reference): a deliberately naive f64 implementation, the oracle every fast path is
//!   compared with.
//! - `cuda` (feature `cuda`): our own kernels — a fused flash-style prefill writing O and LSE,
//!   a split-KV decode kernel, and the merges — compiled at run time by NVRTC and launched
//!   through cudarc; `cuda::CudaAttention` implements [`cp_ring::AttentionOps`] on device
//!   tensors.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use cp_attention::{CpuAttention, merge};
//! use cp_shard::{Layout, Span};
//!
//! let dev = Device::Cpu;
//! let q = Tensor::randn(0f32, 1.0, (4, 2, 8), &dev)?;
//! let k = Tensor::randn(0f32, 1.0, (4, 1, 8), &dev)?;
//! let v = Tensor::randn(0f32, 1.0, (4, 1, 8), &dev)?;
//! let mut rows = Layout::new();
//! rows.push_tokens(0, Span::new(0, 4));
//! let ops = CpuAttention::default();
//! // Keys split in two blocks, merged: the same as attention over all four keys.
//! let (k0, k1) = (k.narrow(0, 0, 2)?, k.narrow(0, 2, 2)?);
//! let (v0, v1) = (v.narrow(0, 0, 2)?, v.narrow(0, 2, 2)?);
//! let (mut lo, mut hi) = (Layout::new(), Layout::new());
//! lo.push_tokens(0, Span::new(0, 2));
//! hi.push_tokens(0, Span::new(2, 2));
//! let a = ops.partial(&q, &rows, &k0, &v0, &lo)?;
//! let b = ops.partial(&q, &rows, &k1, &v1, &hi)?;
//! let whole = ops.partial(&q, &rows, &k, &v, &rows)?;
//! let merged = merge(&a, &b)?;
//! let diff = (merged.out - whole.out)?.abs()?.max_all()?.to_scalar::<f32>()?;
//! assert!(diff < 1e-5);
//! # Ok::<(), cp_attention::AttentionError>(())
//! ```

mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod error;
mod inputs;
pub mod reference;

pub use cp_ring::Partial;
pub use cpu::{CpuAttention, compute_dtype, finish, merge, merge_all, to_f64_vec};
pub use error::AttentionError;
pub use inputs::{hashed_row_bf16, hashed_value};

/// Result type of this crate.
pub type Result<T, E = AttentionError> = std::result::Result<T, E>;

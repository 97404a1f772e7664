//! Context-parallel attention inside a model.
//!
//! A model that runs attention with context parallelism needs, on every rank, more than the ring
//! algorithms: a KV cache per layer that owns its tensors and grows with each step, the plan of
//! each step (which tokens this rank computes, at which positions, for RoPE), and one call per
//! layer that appends the new keys and values and runs the ring over the cache where it lies.
//! [`RankAttention`] is that, for prefill, partial prefill (a later turn on top of the cache)
//! and batched decode alike, on the CPU (candle) and, with the `cuda` feature, on GPUs.
//!
//! Every rank runs the same program (SPMD):
//!
//! ```
//! use std::time::Duration;
//! use candle_core::{DType, Device, Tensor};
//! use cp_attention::CpuAttention;
//! use cp_model::{CacheConfig, Choice, RankAttention};
//! use cp_ring::{Algorithm, RankPool, PoolError, channel_ring};
//! use cp_shard::NewTokens;
//!
//! let (n, heads, kv_heads, dh) = (2, 4, 2, 8);
//! let config = CacheConfig {
//!     layers: 1, seqs: 1, reserve: 0,
//!     choice: Choice::Fixed { prefill: Algorithm::PassKv, decode: Algorithm::GatherQ },
//! };
//! let ends = std::sync::Mutex::new(channel_ring::<Tensor>(n, Duration::from_secs(10)));
//! let pool = RankPool::new(n, move |_rank| {
//!     let comm = ends.lock().unwrap().remove(0); // rank order
//!     RankAttention::new(CpuAttention::default(), comm, config)
//! })?;
//! // One step on every rank: plan, project (here: random rows), attend, finish.
//! let outs = pool.run(move |_rank, attn| {
//!     let mut step = attn.prefill(&[NewTokens { seq: 0, count: 10 }])?;
//!     let rows = step.rows().len();
//!     let q = Tensor::randn(0f32, 1.0, (rows, heads, dh), &Device::Cpu)?;
//!     let k = Tensor::randn(0f32, 1.0, (rows, kv_heads, dh), &Device::Cpu)?;
//!     let v = Tensor::randn(0f32, 1.0, (rows, kv_heads, dh), &Device::Cpu)?;
//!     let out = attn.attend(&mut step, 0, &q, &k, &v)?;
//!     attn.finish(step)?;
//!     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(out.dims().to_vec())
//! });
//! let dims = PoolError::all_ok(outs, |_| false).map_err(|e| e.to_string())?;
//! assert_eq!(dims[0], [6, heads, dh]); // ceil(10 / 4) = 3 rows per chunk, two chunks
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Where the rows are
//!
//! The rows a rank computes in a step are the plan's query rows ([`Step::rows`]): for a prefill
//! turn, two chunks of each sequence's new tokens (load-balanced, padded per chunk); for decode,
//! the new token of the sequences placed on this rank. Their keys and values join the rank's
//! cache: one buffer per layer for keys and one for values, holding each sequence in a region of
//! its own (sequences in id order; a region's rows are the sequence's tokens on this rank in the
//! order they were added, then padding). Regions are sized to a power of two or
//! [`CacheConfig::reserve`], so new rows are written in place; a sequence that outgrows its
//! region moves the regions once (a copy, like a doubling `Vec`). The ring reads the buffer's
//! first rows where they lie: a decode step copies only its new rows.
//!
//! Pass-KV ships each rank's buffer prefix around the ring, regions' padding included: with
//! power-of-two regions up to twice the rows. A model that knows its context length sets
//! `reserve` and pays neither moves nor growth.

mod error;
mod rank;
mod regions;

pub use cp_ring::KvOps;
pub use error::ModelError;
pub use rank::{CacheConfig, Choice, RankAttention, Step};

/// Result type of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

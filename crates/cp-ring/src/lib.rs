//! The ring algorithms of context parallelism, written once.
//!
//! Every algorithm here is SPMD code for one rank: the same function runs on every rank of the
//! ring, each with its own inputs and its own end of the transport. It is generic over two
//! small traits:
//!
//! - [`AttentionOps`]: a partial attention of a block of queries against a block of keys and
//!   values, returning the output and its log-sum-exp ([`Partial`]), and the exact merge of
//!   partials (Eq. 4 of arXiv:2411.01783). The CPU reference (candle) and the CUDA kernels
//!   implement it.
//! - [`RingTransport`]: shift a message one rank along the ring (send to `rank + 1`, receive
//!   from `rank - 1`), split into a start and a finish so that the transfer overlaps the compute
//!   of the current block, and an all-to-all. In-process channels, a same-GPU transport and
//!   NCCL implement it.
//!
//! Which rows of a block hold which token, and so the causal masks, come from the plan's
//! [`RingLayouts`] (see `cp-shard`), known to every rank; only tensors travel.
//!
//! Below the algorithms, std-only pieces every backend shares: [`ChannelTransport`], the
//! in-process transport over channels (the CPU simulation's ring, and the host side of the
//! same-GPU transport), and [`RankPool`], persistent rank threads that own a rank's state (its
//! device and transport, built once) and run jobs on every rank.
//!
//! The algorithms:
//!
//! - [`pass_kv`] (Algorithm 2): queries stay, key/value blocks travel. Full or partial prefill,
//!   batches of sequences of different lengths.
//! - [`pass_q`] (Algorithm 3): keys/values stay, query blocks travel; partial outputs go back to
//!   the owners of the queries with one all-to-all and are merged there. With the layouts of a
//!   [`cp_shard::DecodePlan`] — one query per sequence, tagged by its batch id through the
//!   layout — the same function is the batched ring pass-Q decode of Algorithm 4.
//! - [`gather_q`]: pass-Q with the queries gathered by one all-to-all instead of `N - 1` ring
//!   shifts: two collectives per step in all, for decode, where each step's latency counts.
//! - [`gather_kv`]: pass-KV with the keys and values gathered by one all-to-all: for short
//!   prompts, where each ring shift's latency outweighs the compute it would hide.

mod algorithms;
mod channel;
mod error;
mod pool;
mod traits;

pub use algorithms::{Algorithm, Local, gather_kv, gather_q, pass_kv, pass_q, run};
pub use channel::{ChannelTransport, TransportError, channel_ring};
pub use error::{BoxError, RingError};
pub use pool::{PoolError, RankPool, panic_message};
pub use traits::{AttentionOps, KvOps, Partial, Phase, Probe, RingTransport};

pub use cp_shard::{Layout, RingLayouts};

/// Result type of this crate.
pub type Result<T, E = RingError> = std::result::Result<T, E>;

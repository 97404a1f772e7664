//! The context-parallel ring in one process, verified against plain attention.
//!
//! [`ChannelTransport`] implements [`cp_ring::RingTransport`] over in-process channels: each
//! rank is a thread, a ring shift is a message to the next rank, an all-to-all a message to
//! every rank. A rank that ends (normally, with an error or by panicking) says goodbye to its
//! peers, so a peer waiting on it fails at once naming it; a peer that never answers fails after
//! the configured timeout. [`run_ranks`] runs one closure per rank on such a ring.
//!
//! [`Session`] is a multi-turn conversation over a batch of sequences: a prefill, later turns as
//! partial prefill over the persistent cache (pass-KV or pass-Q), and decode steps with
//! round-robin placement. It draws fresh random Q/K/V for every new token, runs the ring
//! algorithms of `cp-ring` on the CPU attention of `cp-attention`, gathers the outputs back into
//! global order, and compares them with the naive f64 oracle over the whole history
//! ([`StepReport`]).
//!
//! ```
//! use cp_ring::Algorithm;
//! use cp_shard::NewTokens;
//! use cp_sim::{Session, SimConfig};
//!
//! let mut session = Session::new(SimConfig::default(), 1)?;
//! let reports = session.prefill(&[NewTokens { seq: 0, count: 64 }], &[Algorithm::PassKv])?;
//! assert!(reports[0].passed(), "{}", reports[0]);
//! # Ok::<(), cp_sim::SimError>(())
//! ```

mod error;
mod probe;
mod session;
mod spmd;

pub use cp_ring::{ChannelTransport, TransportError, channel_ring, panic_message};
pub use error::SimError;
pub use probe::{CpuPhaseTimes, CpuProbe};
pub use session::{Estimate, MAX_SIM_WORLD_SIZE, Session, SimConfig, StepKind, StepReport, Tolerance};
pub use spmd::run_ranks;

/// Result type of this crate.
pub type Result<T, E = SimError> = std::result::Result<T, E>;

//! The context-parallel ring on GPUs.
//!
//! The algorithms live in `cp-ring`, once; this crate provides what they need on GPUs:
//!
//! - [`PeerTransport`]: ranks of one process joined by direct device copies — several ranks on
//!   one GPU (what a one-GPU machine can verify), or one GPU per rank with NVLink peer access.
//!   A sender offers its block with an event; the receiver copies it on its own high-priority
//!   copy stream after that event, and its compute stream waits on the copy: the copy overlaps
//!   the attention of the current block, and costs microseconds where an NCCL send/recv costs
//!   about 100. Host-side plumbing (who sends what to whom, peer-gone and timeout errors) is
//!   `cp_ring::ChannelTransport`.
//! - [`NcclTransport`]: the same on NCCL, grouped `ncclSend`/`ncclRecv` on a communication
//!   stream, the all-to-all from grouped send/recv. Our own thin communicator over
//!   `cudarc::nccl::result`, so that dropping it aborts the communicator without ever panicking.
//! - [`Rendezvous`]: one process per GPU in torchrun's convention; rank 0 hands out the NCCL
//!   unique id over TCP, with deadlines on every wait (`cp-rendezvous` checks a job's ranks can
//!   meet).
//! - [`GpuRing`]: a ring built once — a thread per rank owning its device, streams and end of
//!   the ring (NCCL communicators connected to every peer up front, transfers waited for on the
//!   GPU) — that runs `cp-ring` algorithms or any per-rank job many times, with [`CudaProbe`]
//!   timing each phase on the GPU (compute, exposed wait, all-to-all, merge).

mod error;
mod nccl;
mod peer;
mod probe;
mod rendezvous;
mod runner;

pub use error::GpuRingError;
pub use nccl::{GroupLaunch, NcclSetup, NcclTransport, WaitMode, nccl_available};
pub use peer::{PeerTransport, enable_peer_access};
pub use probe::{CudaProbe, PhaseTimes};
pub use rendezvous::{MAX_WORLD_SIZE, Rendezvous, RendezvousError, timeout_from_env as rendezvous_timeout_from_env};
pub use runner::{CapturedStep, GpuRank, GpuRing, Placement, RankInputs, RankOutput, RankTransport, RingOptions};

/// Result type of this crate.
pub type Result<T, E = GpuRingError> = std::result::Result<T, E>;

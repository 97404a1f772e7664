//! The error type of cp-nccl.

/// Why a GPU ring operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GpuRingError {
    /// A library could not be loaded.
    #[error("{library} could not be loaded: {hint}")]
    MissingLibrary { library: &'static str, hint: &'static str },
    /// A CUDA call failed.
    #[error("rank {rank}: CUDA call {op} failed: {code}")]
    Cuda { rank: usize, op: &'static str, code: String },
    /// An NCCL call failed.
    #[error("rank {rank}: NCCL call {op} failed: {code}")]
    Nccl { rank: usize, op: &'static str, code: String },
    /// The host-side exchange failed (a peer gone, a timeout).
    #[error(transparent)]
    Exchange(#[from] cp_ring::TransportError),
    /// Messages whose shapes differ between ranks (ring messages must be equal-sized).
    #[error("rank {rank}: {op}: {reason}")]
    Message { rank: usize, op: &'static str, reason: String },
    /// The attention backend failed.
    #[error(transparent)]
    Attention(#[from] cp_attention::AttentionError),
    /// The ring algorithm failed on a rank.
    #[error(transparent)]
    Ring(#[from] cp_ring::RingError),
    /// A rank's thread panicked.
    #[error("rank {rank} panicked: {message}")]
    RankPanicked { rank: usize, message: String },
}

pub(crate) fn cuda(rank: usize, op: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> GpuRingError {
    move |e| GpuRingError::Cuda { rank, op, code: format!("{e:?}") }
}

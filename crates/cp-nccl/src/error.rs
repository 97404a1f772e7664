//! The error type of cp-nccl.

/// Why a GPU ring operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GpuRingError {
    /// A library could not be loaded.
    #[error("{library} could not be loaded: {hint}")]
    MissingLibrary {
        /// The library.
        library: &'static str,
        /// How to get it.
        hint: &'static str,
    },
    /// A CUDA call failed.
    #[error("rank {rank}: CUDA call {op} failed: {code}")]
    Cuda {
        /// The rank.
        rank: usize,
        /// The operation.
        op: &'static str,
        /// The library's result code.
        code: String,
    },
    /// An NCCL call failed.
    #[error("rank {rank}: NCCL call {op} failed: {code}")]
    Nccl {
        /// The rank.
        rank: usize,
        /// The operation.
        op: &'static str,
        /// The library's result code.
        code: String,
    },
    /// The host-side exchange failed (a peer gone, a timeout).
    #[error(transparent)]
    Exchange(#[from] cp_ring::TransportError),
    /// A peer did not answer within the timeout (a rank that died, hung or never joined). NCCL
    /// communicators are aborted first, so no stream of this rank stays blocked.
    #[error("rank {rank}: {op}: no answer within {waited:?} from peer rank(s) {peers:?} (empty: unknown)")]
    Timeout {
        /// The rank.
        rank: usize,
        /// The operation.
        op: &'static str,
        /// The peer ranks involved (empty: not known).
        peers: Vec<usize>,
        /// How long it waited.
        waited: std::time::Duration,
    },
    /// NCCL reported an asynchronous failure (a peer gone, a transport error); the communicator
    /// was aborted.
    #[error("rank {rank}: {op}: NCCL reports {code} (peer rank(s) {peers:?}); communicator aborted")]
    PeerFailed {
        /// The rank.
        rank: usize,
        /// The operation.
        op: &'static str,
        /// The library's result code.
        code: String,
        /// The peer ranks involved (empty: not known).
        peers: Vec<usize>,
    },
    /// The communicator was aborted by an earlier failure and cannot be used again.
    #[error("rank {rank}: {op}: the communicator was aborted by an earlier failure")]
    Aborted {
        /// The rank.
        rank: usize,
        /// The operation.
        op: &'static str,
    },
    /// Transport calls out of order.
    #[error("rank {rank}: {op} misused: {what}")]
    Misuse {
        /// The rank.
        rank: usize,
        /// The operation.
        op: &'static str,
        /// What it concerns.
        what: &'static str,
    },
    /// Counts that do not fit the ring (messages, inputs, ranks).
    #[error("rank {rank}: {op}: {expected} {what} expected, got {actual}")]
    Count {
        /// The rank.
        rank: usize,
        /// The operation.
        op: &'static str,
        /// What it concerns.
        what: &'static str,
        /// What was expected.
        expected: usize,
        /// What was found.
        actual: usize,
    },
    /// A rank of a `GpuRing` cannot run jobs.
    #[error("rank {rank} cannot run jobs: {reason}")]
    RankUnusable {
        /// The rank.
        rank: usize,
        /// Why.
        reason: &'static str,
    },
    /// The attention backend failed.
    #[error(transparent)]
    Attention(#[from] cp_attention::AttentionError),
    /// The ring algorithm failed on a rank.
    #[error(transparent)]
    Ring(#[from] cp_ring::RingError),
    /// A rank's thread panicked.
    #[error("rank {rank} panicked: {message}")]
    RankPanicked {
        /// The rank.
        rank: usize,
        /// The panic message.
        message: String,
    },
}

pub(crate) fn cuda(rank: usize, op: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> GpuRingError {
    move |e| GpuRingError::Cuda { rank, op, code: format!("{e:?}") }
}

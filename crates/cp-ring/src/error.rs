//! The error type of cp-ring.

/// A boxed error from a compute backend or a transport.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a ring algorithm stopped on one rank.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// The transport's ring and the plan's layouts disagree on the world size or this rank.
    #[error("rank {rank}: the transport has world size {transport}, the plan's layouts {layouts}")]
    WorldSize {
        /// The rank.
        rank: usize,
        /// The transport's world size.
        transport: usize,
        /// The layouts' world size.
        layouts: usize,
    },
    /// A local tensor does not have the rows its layout says.
    #[error("rank {rank}: {what} has {actual} rows, its layout has {expected}")]
    Rows {
        /// The rank.
        rank: usize,
        /// What it concerns.
        what: &'static str,
        /// What was expected.
        expected: usize,
        /// What was found.
        actual: usize,
    },
    /// A message arrived with the wrong number of parts.
    #[error("rank {rank}, step {step}: {op} delivered {actual} tensors, expected {expected}")]
    Message {
        /// The rank.
        rank: usize,
        /// The ring step.
        step: usize,
        /// The operation.
        op: &'static str,
        /// What was expected.
        expected: usize,
        /// What was found.
        actual: usize,
    },
    /// The compute backend failed.
    #[error("rank {rank}, step {step}: {op} failed: {source}")]
    Compute {
        /// The rank.
        rank: usize,
        /// The ring step.
        step: usize,
        /// The operation.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// The transport failed (a peer gone, a timeout, a library error).
    #[error("rank {rank}, step {step}: {op} failed: {source}")]
    Transport {
        /// The rank.
        rank: usize,
        /// The ring step.
        step: usize,
        /// The operation.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
}

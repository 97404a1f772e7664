//! The error type of cp-sim.

/// Why a simulation step could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// A configuration value is invalid.
    #[error("invalid simulation configuration: {0}")]
    Config(String),
    /// Planning the sharding failed.
    #[error(transparent)]
    Shard(#[from] cp_shard::ShardError),
    /// Building or reading tensors failed.
    #[error(transparent)]
    Attention(#[from] cp_attention::AttentionError),
    /// A rank's algorithm failed.
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

impl From<candle_core::Error> for SimError {
    fn from(e: candle_core::Error) -> SimError {
        SimError::Attention(e.into())
    }
}

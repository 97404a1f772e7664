//! The error type of cp-model.

use cp_ring::BoxError;

/// Why a step of a rank's attention failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A configuration value that cannot work.
    #[error("invalid {what}: {reason}")]
    Config {
        /// The setting.
        what: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// A layer index past the model's layers.
    #[error("layer {layer} out of range: the cache has {layers} layers")]
    Layer {
        /// The layer asked for.
        layer: usize,
        /// Layers configured.
        layers: usize,
    },
    /// A tensor with another number of rows than the step's rows on this rank.
    #[error("{what} has {actual} rows, the step has {expected} rows on this rank (see Step::rows)")]
    Rows {
        /// Which tensor.
        what: &'static str,
        /// The step's rows.
        expected: usize,
        /// The tensor's rows.
        actual: usize,
    },
    /// A step used after another step was planned or it finished, or on another rank's attention.
    #[error(
        "the step is not the one planned last (another was planned, it finished, or it belongs to another rank's attention)"
    )]
    StaleStep,
    /// A step finished before every layer attended.
    #[error("layer {layer} did not attend in this step: every layer must, before finish")]
    Unattended {
        /// The first layer that did not.
        layer: usize,
    },
    /// A size past what the cache can address.
    #[error("{what} overflow usize")]
    TooLarge {
        /// What.
        what: &'static str,
    },
    /// Planning failed (bad sequence ids, empty batch, sizes).
    #[error(transparent)]
    Shard(#[from] cp_shard::ShardError),
    /// The heuristic could not decide (bad model shape or hardware).
    #[error(transparent)]
    Heuristic(#[from] cp_heuristic::HeuristicError),
    /// The ring failed (transport, a peer, or the attention on some step).
    #[error(transparent)]
    Ring(#[from] cp_ring::RingError),
    /// The device failed to allocate or copy cache rows.
    #[error("KV cache: {0}")]
    Device(#[source] BoxError),
}

impl ModelError {
    /// A device error (allocation, copy) as a model error.
    pub fn device(e: impl std::error::Error + Send + Sync + 'static) -> ModelError {
        ModelError::Device(Box::new(e))
    }
}

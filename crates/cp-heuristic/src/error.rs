//! The error type of cp-heuristic.

/// Why a heuristic could not be evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum HeuristicError {
    /// A count that must be at least one is zero.
    #[error("{what} must be at least 1, got 0")]
    Zero {
        /// What it concerns.
        what: &'static str,
    },
    /// Grouped-query attention needs the query heads to be a multiple of the key/value heads.
    #[error("n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")]
    HeadRatio {
        /// Query heads.
        n_heads: usize,
        /// Key/value heads.
        n_kv_heads: usize,
    },
    /// A rate or size that must be positive and finite is not.
    #[error("{what} must be positive and finite, got {value}")]
    NotPositive {
        /// What it concerns.
        what: &'static str,
        /// The value given.
        value: f64,
    },
    /// A value outside the range it must lie in (a miss rate outside `(0, 1]`, a NaN
    /// coefficient).
    #[error("{what} must be {range}, got {value}")]
    OutOfRange {
        /// What it concerns.
        what: &'static str,
        /// The allowed range.
        range: &'static str,
        /// The value given.
        value: f64,
    },
    /// A total that does not fit in `usize`.
    #[error("{what} overflows usize")]
    Overflow {
        /// What it concerns.
        what: &'static str,
    },
    /// Fitting the empirical rule failed.
    #[error("cannot fit the empirical rule: {reason}")]
    Fit {
        /// Why.
        reason: String,
    },
}

//! The error type of cp-shard.

/// What went wrong while planning or mapping a sharding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShardError {
    /// A ring needs at least one rank.
    #[error("world size must be at least 1, got 0")]
    ZeroWorldSize,
    /// A sequence (or a turn of one) with no tokens cannot be sharded.
    #[error("sequence {seq} has no new tokens; a turn must add at least one token")]
    EmptySequence { seq: usize },
    /// A decode or prefill step with no sequences at all.
    #[error("the batch is empty; give at least one sequence")]
    EmptyBatch,
    /// A rank index outside `0..world_size`.
    #[error("rank {rank} is out of range for world size {world_size}")]
    RankOutOfRange { rank: usize, world_size: usize },
    /// A sequence (batch) id the cache does not know.
    #[error("sequence id {seq} is out of range: the cache holds {n_seqs} sequences")]
    SequenceOutOfRange { seq: usize, n_seqs: usize },
    /// The same sequence named twice in one step.
    #[error("sequence id {seq} appears twice in one step")]
    DuplicateSequence { seq: usize },
    /// A global position that the plan does not cover.
    #[error("position {pos} is outside the planned range {start}..{end} of sequence {seq}")]
    PositionOutOfRange { seq: usize, pos: usize, start: usize, end: usize },
    /// A local row index past the end of a rank's block.
    #[error("row {row} is out of range for rank {rank}, which has {rows} rows")]
    RowOutOfRange { rank: usize, row: usize, rows: usize },
    /// A plan built for one cache was applied to another, or twice.
    #[error("plan does not match the cache: {reason}")]
    PlanMismatch { reason: String },
    /// Per-rank buffers handed to gather or scatter do not fit the layouts.
    #[error("buffer for rank {rank} has {actual} elements, expected {expected} ({rows} rows x width {width})")]
    BufferSize { rank: usize, actual: usize, expected: usize, rows: usize, width: usize },
    /// The number of per-rank buffers differs from the number of layouts.
    #[error("got {actual} per-rank buffers for {expected} ranks")]
    RankCount { actual: usize, expected: usize },
    /// Sizes that overflow the position type.
    #[error("sequence length overflows: {what}")]
    Overflow { what: &'static str },
}

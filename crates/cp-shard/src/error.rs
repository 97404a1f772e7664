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
    EmptySequence {
        /// The sequence id.
        seq: usize,
    },
    /// A decode or prefill step with no sequences at all.
    #[error("the batch is empty; give at least one sequence")]
    EmptyBatch,
    /// A rank index outside `0..world_size`.
    #[error("rank {rank} is out of range for world size {world_size}")]
    RankOutOfRange {
        /// The rank.
        rank: usize,
        /// Ranks in the ring.
        world_size: usize,
    },
    /// A sequence (batch) id the cache does not know.
    #[error("sequence id {seq} is out of range: the cache holds {n_seqs} sequences")]
    SequenceOutOfRange {
        /// The sequence id.
        seq: usize,
        /// Sequences the cache holds.
        n_seqs: usize,
    },
    /// The same sequence named twice in one step.
    #[error("sequence id {seq} appears twice in one step")]
    DuplicateSequence {
        /// The sequence id.
        seq: usize,
    },
    /// A global position that the plan does not cover.
    #[error("position {pos} is outside the planned range {start}..{end} of sequence {seq}")]
    PositionOutOfRange {
        /// The sequence id.
        seq: usize,
        /// The position.
        pos: usize,
        /// First position of the planned range.
        start: usize,
        /// One past the last planned position.
        end: usize,
    },
    /// A local row index past the end of a rank's block.
    #[error("row {row} is out of range for rank {rank}, which has {rows} rows")]
    RowOutOfRange {
        /// The rank.
        rank: usize,
        /// The row.
        row: usize,
        /// Rows of the block.
        rows: usize,
    },
    /// Rows handed over for a layout are not as many as the layout's rows.
    #[error("{rows} rows handed over for a layout of {layout_rows} rows")]
    RowCount {
        /// Rows handed over.
        rows: usize,
        /// Rows of the layout.
        layout_rows: usize,
    },
    /// Rows handed over in another order than the layout's: row `row` holds `actual` where the
    /// layout has `expected` (`None`: a padding row).
    #[error(
        "row {row} of the block holds {actual:?}, but the layout puts {expected:?} there (build each rank's rows in the layout's order: `Layout::rows`)"
    )]
    RowOrder {
        /// The first row that differs.
        row: usize,
        /// What the layout has in that row.
        expected: Option<crate::Token>,
        /// What the caller's rows have.
        actual: Option<crate::Token>,
    },
    /// A plan built for one cache was applied to another, or twice.
    #[error("plan does not match the cache: {reason}")]
    PlanMismatch {
        /// Why.
        reason: String,
    },
    /// Per-rank buffers handed to gather or scatter do not fit the layouts.
    #[error("buffer for rank {rank} has {actual} elements, expected {expected} ({rows} rows x width {width})")]
    BufferSize {
        /// The rank.
        rank: usize,
        /// What was found.
        actual: usize,
        /// What was expected.
        expected: usize,
        /// Rows of the block.
        rows: usize,
        /// Values per row.
        width: usize,
    },
    /// The number of per-rank buffers differs from the number of layouts.
    #[error("got {actual} per-rank buffers for {expected} ranks")]
    RankCount {
        /// What was found.
        actual: usize,
        /// What was expected.
        expected: usize,
    },
    /// Sizes that overflow the position type.
    #[error("sequence length overflows: {what}")]
    Overflow {
        /// What it concerns.
        what: &'static str,
    },
}

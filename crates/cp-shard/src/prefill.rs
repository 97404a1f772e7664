//! Load-balanced sharding of the new tokens of one sequence (Section 3.5.1 of the paper).

use crate::{Layout, Result, ShardError, Span};

/// The 2N-chunk sharding of `new_tokens` tokens starting at global position `offset`.
///
/// The tokens are cut into `2 * world_size` chunks of `chunk_len = ceil(new_tokens / 2N)`
/// positions; rank `i` holds chunks `i` and `2N - 1 - i`. When `new_tokens` is not a multiple of
/// `2N` the last chunks are short (or empty): a rank's query block is still `2 * chunk_len` rows,
/// the missing rows being padding. This is the paper's padding policy; no token is dropped.
///
/// `offset` is the number of tokens already in the cache (`P`), so partial prefill shards the
/// new tokens by the same rule as a first prefill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefillShards {
    world_size: usize,
    offset: usize,
    new_tokens: usize,
    chunk_len: usize,
}

impl PrefillShards {
    /// Plans the sharding; errors on a zero world size or no new tokens.
    pub fn new(world_size: usize, offset: usize, new_tokens: usize) -> Result<PrefillShards> {
        if world_size == 0 {
            return Err(ShardError::ZeroWorldSize);
        }
        if new_tokens == 0 {
            return Err(ShardError::EmptySequence { seq: 0 });
        }
        let n_chunks = world_size.checked_mul(2).ok_or(ShardError::Overflow { what: "2 * world_size" })?;
        offset.checked_add(new_tokens).ok_or(ShardError::Overflow { what: "offset + new_tokens" })?;
        let chunk_len = new_tokens.div_ceil(n_chunks);
        chunk_len.checked_mul(2).ok_or(ShardError::Overflow { what: "2 * chunk length (rows per rank)" })?;
        Ok(PrefillShards { world_size, offset, new_tokens, chunk_len })
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Global position of the first new token (`P`).
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Number of new tokens (`T`).
    pub fn new_tokens(&self) -> usize {
        self.new_tokens
    }

    /// Positions per chunk, `ceil(T / 2N)`.
    pub fn chunk_len(&self) -> usize {
        self.chunk_len
    }

    /// Rows of every rank's query block: two chunks, padding included.
    pub fn rows_per_rank(&self) -> usize {
        2 * self.chunk_len
    }

    /// The global span of the new tokens.
    pub fn span(&self) -> Span {
        Span::new(self.offset, self.new_tokens)
    }

    /// The real positions of chunk `chunk` (possibly short or empty at the end, and empty for
    /// a chunk past the last).
    pub fn chunk(&self, chunk: usize) -> Span {
        let start = chunk.saturating_mul(self.chunk_len).min(self.new_tokens);
        let end = chunk.saturating_add(1).saturating_mul(self.chunk_len).min(self.new_tokens);
        Span::new(self.offset + start, end - start)
    }

    /// The two chunks rank `rank` holds: `rank` and `2N - 1 - rank`.
    pub fn chunks_of(&self, rank: usize) -> Result<[usize; 2]> {
        self.check_rank(rank)?;
        Ok([rank, 2 * self.world_size - 1 - rank])
    }

    /// The real positions rank `rank` holds, low chunk first.
    pub fn spans(&self, rank: usize) -> Result<[Span; 2]> {
        let [lo, hi] = self.chunks_of(rank)?;
        Ok([self.chunk(lo), self.chunk(hi)])
    }

    /// Number of real tokens on `rank`.
    pub fn tokens_on(&self, rank: usize) -> Result<usize> {
        Ok(self.spans(rank)?.iter().map(|s| s.len).sum())
    }

    /// The query layout of `rank` for sequence `seq`: each chunk padded to `chunk_len` rows.
    pub fn q_layout(&self, seq: usize, rank: usize) -> Result<Layout> {
        let mut layout = Layout::new();
        self.push_q_rows(&mut layout, seq, rank)?;
        Ok(layout)
    }

    /// Appends this rank's padded query rows for sequence `seq` to `layout`.
    pub(crate) fn push_q_rows(&self, layout: &mut Layout, seq: usize, rank: usize) -> Result<()> {
        for span in self.spans(rank)? {
            layout.push_tokens(seq, span);
            layout.push_padding(self.chunk_len - span.len);
        }
        Ok(())
    }

    /// Where global position `pos` lives: `(rank, local row)` in the rank's padded query block.
    pub fn locate(&self, pos: usize) -> Result<(usize, usize)> {
        if !self.span().contains(pos) {
            return Err(ShardError::PositionOutOfRange { seq: 0, pos, start: self.offset, end: self.span().end() });
        }
        let rel = pos - self.offset;
        let chunk = rel / self.chunk_len;
        let within = rel % self.chunk_len;
        Ok(if chunk < self.world_size {
            (chunk, within)
        } else {
            (2 * self.world_size - 1 - chunk, self.chunk_len + within)
        })
    }

    /// The global position in row `row` of rank `rank`'s query block; `None` for a padding row.
    pub fn position(&self, rank: usize, row: usize) -> Result<Option<usize>> {
        let [lo, hi] = self.spans(rank)?;
        if row >= self.rows_per_rank() {
            return Err(ShardError::RowOutOfRange { rank, row, rows: self.rows_per_rank() });
        }
        let (span, within) = if row < self.chunk_len { (lo, row) } else { (hi, row - self.chunk_len) };
        Ok((within < span.len).then(|| span.start + within))
    }

    fn check_rank(&self, rank: usize) -> Result<()> {
        if rank >= self.world_size {
            return Err(ShardError::RankOutOfRange { rank, world_size: self.world_size });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_example_t64_n4() {
        let shards = PrefillShards::new(4, 0, 64).unwrap();
        assert_eq!(shards.chunk_len(), 8);
        assert_eq!(shards.spans(0).unwrap(), [Span::new(0, 8), Span::new(56, 8)]);
        assert_eq!(shards.spans(1).unwrap(), [Span::new(8, 8), Span::new(48, 8)]);
        assert_eq!(shards.spans(3).unwrap(), [Span::new(24, 8), Span::new(32, 8)]);
        let rank0: Vec<_> = (0..16).map(|row| shards.position(0, row).unwrap().unwrap()).collect();
        assert_eq!(rank0, [0, 1, 2, 3, 4, 5, 6, 7, 56, 57, 58, 59, 60, 61, 62, 63]);
    }

    #[test]
    fn uneven_length_pads_the_last_chunks() {
        // 10 tokens on 2 ranks: chunk_len 3, chunks [0,3) [3,6) [6,9) [9,10).
        let shards = PrefillShards::new(2, 100, 10).unwrap();
        assert_eq!(shards.chunk_len(), 3);
        assert_eq!(shards.spans(0).unwrap(), [Span::new(100, 3), Span::new(109, 1)]);
        assert_eq!(shards.spans(1).unwrap(), [Span::new(103, 3), Span::new(106, 3)]);
        assert_eq!(shards.position(0, 4).unwrap(), None);
        assert_eq!(shards.locate(109).unwrap(), (0, 3));
        assert_eq!(shards.q_layout(7, 0).unwrap().len(), 6);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert_eq!(PrefillShards::new(0, 0, 8), Err(ShardError::ZeroWorldSize));
        assert_eq!(PrefillShards::new(2, 0, 0), Err(ShardError::EmptySequence { seq: 0 }));
        let shards = PrefillShards::new(2, 0, 8).unwrap();
        assert!(matches!(shards.spans(2), Err(ShardError::RankOutOfRange { rank: 2, world_size: 2 })));
        assert!(matches!(shards.locate(8), Err(ShardError::PositionOutOfRange { .. })));
        assert!(matches!(shards.position(0, 4), Err(ShardError::RowOutOfRange { .. })));
        assert!(matches!(PrefillShards::new(2, usize::MAX, 1), Err(ShardError::Overflow { .. })));
    }
}

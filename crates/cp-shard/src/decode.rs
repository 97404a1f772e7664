//! Decode placement: one new token per sequence, placed round-robin over the ranks.

use crate::cache::Placement;
use crate::{CacheMap, Layout, Result, RingLayouts, Span};

/// One decode iteration of a batch: each sequence gets one new token.
///
/// Pinning a sequence's generated tokens to one rank would fill that rank's memory first.
/// Instead (Section 3.6), iteration `t` places the token of the `i`-th sequence of the batch on
/// rank `(t + i) mod N`: the start rank shifts by one every iteration, so each sequence's cache
/// grows by one token per rank every `N` iterations. The query of a token lives on the rank that
/// receives its key/value; query blocks are `ceil(B / N)` rows, padded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodePlan {
    world_size: usize,
    cache: u64,
    iteration: usize,
    /// `(seq, pos, rank)` in batch order.
    entries: Vec<(usize, usize, usize)>,
    layouts: RingLayouts,
}

impl DecodePlan {
    /// Plans decode iteration `iteration` for the batch `seqs` of `cache`.
    pub fn new(cache: &CacheMap, seqs: &[usize], iteration: usize) -> Result<DecodePlan> {
        cache.check_batch(seqs.iter().copied())?;
        let world_size = cache.world_size();
        let start_rank = iteration % world_size;
        let entries = seqs
            .iter()
            .enumerate()
            .map(|(i, &seq)| {
                let pos = cache.seq_len(seq)?;
                if pos == usize::MAX {
                    return Err(crate::ShardError::Overflow { what: "position of the next token" });
                }
                Ok((seq, pos, (start_rank + i) % world_size))
            })
            .collect::<Result<Vec<_>>>()?;
        let q_rows = seqs.len().div_ceil(world_size);
        let q = (0..world_size)
            .map(|rank| {
                let mut layout = Layout::new();
                for &(seq, pos, _) in entries.iter().filter(|e| e.2 == rank) {
                    layout.push_tokens(seq, Span::new(pos, 1));
                }
                layout.pad_to(q_rows);
                layout
            })
            .collect();
        let placements: Vec<Placement> =
            entries.iter().map(|&(seq, pos, rank)| Placement { seq, rank, span: Span::new(pos, 1) }).collect();
        let kv = cache.kv_layouts(seqs, &placements);
        Ok(DecodePlan { world_size, cache: cache.fingerprint(), iteration, entries, layouts: RingLayouts { q, kv } })
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The decode iteration this plan is for.
    pub fn iteration(&self) -> usize {
        self.iteration
    }

    /// The rank that receives the first sequence's token in this iteration.
    pub fn start_rank(&self) -> usize {
        self.iteration % self.world_size
    }

    /// The rank that receives the new token of the `i`-th sequence of the batch.
    pub fn rank_of(&self, i: usize) -> Option<usize> {
        self.entries.get(i).map(|e| e.2)
    }

    /// The query and key/value layouts of every rank.
    pub fn layouts(&self) -> &RingLayouts {
        &self.layouts
    }

    /// Each sequence and the position of its new token, in batch order.
    pub fn new_spans(&self) -> Vec<(usize, Span)> {
        self.entries.iter().map(|&(seq, pos, _)| (seq, Span::new(pos, 1))).collect()
    }

    /// Each sequence and its full history including the new token.
    pub fn history_spans(&self) -> Vec<(usize, Span)> {
        self.entries.iter().map(|&(seq, pos, _)| (seq, Span::new(0, pos + 1))).collect()
    }

    pub(crate) fn cache_fingerprint(&self) -> u64 {
        self.cache
    }

    pub(crate) fn base_lens(&self) -> Vec<(usize, usize)> {
        self.entries.iter().map(|&(seq, pos, _)| (seq, pos)).collect()
    }

    pub(crate) fn placements(&self) -> Vec<Placement> {
        self.entries.iter().map(|&(seq, pos, rank)| Placement { seq, rank, span: Span::new(pos, 1) }).collect()
    }
}

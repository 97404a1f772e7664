//! Where a rank's cached rows live in its buffers: one region per sequence.
//!
//! A rank's key (and value) buffer holds every sequence's cached rows, each sequence in a
//! region of its own, sequences in id order. A region has room for more rows than the sequence
//! holds on that rank — a power of two, or the configured reserve if larger — so a step appends
//! its new rows in place; only when a sequence outgrows its region are the regions laid out again
//! (the rows copied once, like a `Vec` that doubles). Rows of a region past its sequence's rows,
//! and rows past the last region, are padding.
//!
//! The regions are a pure function of the cache's lengths, so every rank computes every rank's
//! regions without talking to the others: the key/value layouts the ring needs for pass-KV.

use cp_shard::{CacheMap, Layout, RingLayouts, Span};

use crate::{ModelError, Result};

/// One rank's regions: `(offset, capacity)` per sequence, in sequence order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Regions {
    pub(crate) spans: Vec<(usize, usize)>,
}

/// The capacity of a region holding `len` rows: the larger of `reserve` and the next power of
/// two (0 for an empty region without a reserve). An empty region keeps its reserve, so a
/// sequence's first rows on a rank move no other region.
pub(crate) fn capacity(len: usize, reserve: usize) -> Result<usize> {
    if len == 0 {
        return Ok(reserve);
    }
    let pow2 = len.checked_next_power_of_two().ok_or(ModelError::TooLarge { what: "a sequence's rows on one rank" })?;
    Ok(pow2.max(reserve))
}

/// The regions of every rank after a step that adds the (non-padding) rows of `new[rank]` to
/// `cache`, and the key/value layout of every rank's buffer: per sequence in id order, its cached
/// spans in the order they were added, then its new rows in the order `new[rank]` lists them,
/// then padding to the region's capacity; every rank padded to the longest.
pub(crate) fn after_step(cache: &CacheMap, new: &[Layout], reserve: usize) -> Result<(Vec<Regions>, Vec<Layout>)> {
    let n = cache.world_size();
    let mut regions = Vec::with_capacity(n);
    let mut layouts = Vec::with_capacity(n);
    for (rank, new) in new.iter().enumerate().take(n) {
        let mut layout = Layout::new();
        let mut spans = Vec::with_capacity(cache.n_seqs());
        for seq in 0..cache.n_seqs() {
            let offset = layout.len();
            for &span in cache.spans(seq, rank)? {
                layout.push_tokens(seq, span);
            }
            for token in new.rows().flatten().filter(|t| t.seq == seq) {
                layout.push_tokens(seq, Span::new(token.pos, 1));
            }
            let len = layout.len() - offset;
            let cap = capacity(len, reserve)?;
            layout.push_padding(cap - len);
            spans.push((offset, cap));
        }
        regions.push(Regions { spans });
        layouts.push(layout);
    }
    let rows = layouts.iter().map(Layout::len).max().unwrap_or(0);
    layouts.iter_mut().for_each(|l| l.pad_to(rows));
    Ok((regions, layouts))
}

/// The ring layouts of a step: the plan's query layouts with the regions' key/value layouts.
pub(crate) fn ring_layouts(plan: &RingLayouts, kv: Vec<Layout>) -> RingLayouts {
    RingLayouts { q: plan.q.clone(), kv }
}

#[cfg(test)]
mod tests {
    use cp_shard::{NewTokens, StepPlan, Token, TurnPlan};

    use super::*;

    #[test]
    fn capacities_are_powers_of_two_or_the_reserve() {
        assert_eq!(capacity(0, 64).unwrap(), 64);
        assert_eq!(capacity(0, 0).unwrap(), 0);
        assert_eq!(capacity(1, 0).unwrap(), 1);
        assert_eq!(capacity(5, 0).unwrap(), 8);
        assert_eq!(capacity(5, 64).unwrap(), 64);
        assert_eq!(capacity(65, 64).unwrap(), 128);
        assert!(capacity(usize::MAX, 0).is_err());
    }

    #[test]
    fn regions_hold_each_sequence_contiguously_and_grow_by_doubling() {
        let mut cache = CacheMap::new(2, 2).unwrap();
        let plan = TurnPlan::new(&cache, &[NewTokens { seq: 0, count: 10 }, NewTokens { seq: 1, count: 3 }]).unwrap();
        let (regions, layouts) = after_step(&cache, &plan.layouts().q, 0).unwrap();
        // Rank 0 holds sequence 0's chunks 0 and 3 (3 + 1 tokens: 0..3 and 9..10) and one token
        // of sequence 1 (chunk 0 of 1 row) and its chunk 3 (empty).
        assert_eq!(regions[0].spans, [(0, 4), (4, 1)]);
        let rows: Vec<Option<Token>> = layouts[0].rows().collect();
        let t = |seq, pos| Some(Token { seq, pos });
        assert_eq!(rows[..5], [t(0, 0), t(0, 1), t(0, 2), t(0, 9), t(1, 0)]);
        assert_eq!(layouts[0].len(), layouts[1].len(), "padded to the longest rank");
        plan.commit(&mut cache).unwrap();
        // A decode token for sequence 1 on rank 0: 2 rows fit a region of 2; rank 0's sequence 0
        // region keeps its place.
        let step = cp_shard::DecodePlan::new(&cache, &[1], 0).unwrap();
        let (after, _) = after_step(&cache, &step.layouts().q, 0).unwrap();
        assert_eq!(after[0].spans, [(0, 4), (4, 2)]);
    }
}

//! A prefill turn over a batch of sequences ("fused varseq"), full or partial (on a cache).

use crate::cache::Placement;
use crate::{CacheMap, Layout, PrefillShards, Result, RingLayouts, ShardError, Span};

/// New tokens for one sequence in a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewTokens {
    /// Sequence (batch) id, `0..cache.n_seqs()`.
    pub seq: usize,
    /// Number of new tokens (`T` of this sequence).
    pub count: usize,
}

/// The sharding of one prefill turn: every sequence's new tokens sharded by the 2N-chunk rule
/// on its own, on top of whatever the cache already holds.
///
/// A first prefill is a turn over an empty cache; a later turn of a multi-turn session is a
/// partial prefill (`P > 0`). Query blocks are `sum_b 2 * ceil(T_b / 2N)` rows on every rank;
/// key/value blocks are the longest rank's cached plus new tokens, which is the padded message
/// length of ring pass-KV.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnPlan {
    world_size: usize,
    cache: u64,
    /// `(seq, shards)` in batch order; `shards.offset()` is the cached length.
    seqs: Vec<(usize, PrefillShards)>,
    layouts: RingLayouts,
}

impl TurnPlan {
    /// Plans a turn adding `new` tokens to the sequences of `cache`.
    pub fn new(cache: &CacheMap, new: &[NewTokens]) -> Result<TurnPlan> {
        cache.check_batch(new.iter().map(|n| n.seq))?;
        let world_size = cache.world_size();
        let seqs = new
            .iter()
            .map(|n| {
                PrefillShards::new(world_size, cache.seq_len(n.seq)?, n.count).map(|shards| (n.seq, shards)).map_err(
                    |e| match e {
                        ShardError::EmptySequence { .. } => ShardError::EmptySequence { seq: n.seq },
                        other => other,
                    },
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let q = (0..world_size)
            .map(|rank| {
                let mut layout = Layout::new();
                for (seq, shards) in &seqs {
                    shards.push_q_rows(&mut layout, *seq, rank)?;
                }
                Ok(layout)
            })
            .collect::<Result<Vec<_>>>()?;
        let placements = placements(&seqs)?;
        let order: Vec<usize> = seqs.iter().map(|(seq, _)| *seq).collect();
        let kv = cache.kv_layouts(&order, &placements);
        Ok(TurnPlan { world_size, cache: cache.fingerprint(), seqs, layouts: RingLayouts { q, kv } })
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The query and key/value layouts of every rank.
    pub fn layouts(&self) -> &RingLayouts {
        &self.layouts
    }

    /// The sharding of each sequence's new tokens, in batch order.
    pub fn shards(&self) -> impl Iterator<Item = (usize, &PrefillShards)> {
        self.seqs.iter().map(|(seq, shards)| (*seq, shards))
    }

    /// Each sequence and the global span of its new tokens, in batch order: what the turn's
    /// output covers.
    pub fn new_spans(&self) -> Vec<(usize, Span)> {
        self.seqs.iter().map(|(seq, shards)| (*seq, shards.span())).collect()
    }

    /// Each sequence and its full history after the turn (cached plus new), in batch order:
    /// the keys a reference attention must see.
    pub fn history_spans(&self) -> Vec<(usize, Span)> {
        self.seqs.iter().map(|(seq, shards)| (*seq, Span::new(0, shards.span().end()))).collect()
    }

    pub(crate) fn cache_fingerprint(&self) -> u64 {
        self.cache
    }

    pub(crate) fn base_lens(&self) -> Vec<(usize, usize)> {
        self.seqs.iter().map(|(seq, shards)| (*seq, shards.offset())).collect()
    }

    pub(crate) fn placements(&self) -> Vec<Placement> {
        // Every PrefillShards here has valid ranks, so this cannot fail.
        placements(&self.seqs).unwrap_or_default()
    }
}

fn placements(seqs: &[(usize, PrefillShards)]) -> Result<Vec<Placement>> {
    let mut out = Vec::new();
    for (seq, shards) in seqs {
        for rank in 0..shards.world_size() {
            for span in shards.spans(rank)? {
                out.push(Placement { seq: *seq, rank, span });
            }
        }
    }
    Ok(out)
}

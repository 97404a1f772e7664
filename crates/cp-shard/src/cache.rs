//! Which cached positions of each sequence every rank holds (the persistent KV cache).

use crate::{Layout, Result, ShardError, Span};

/// Where a plan puts new tokens: `span` of sequence `seq` goes to rank `rank`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Placement {
    pub seq: usize,
    pub rank: usize,
    pub span: Span,
}

/// The placement of a batch of sequences' KV caches over the ranks.
///
/// Each rank's cache of a sequence is a list of spans in the order they were added. Sequences
/// are numbered `0..n_seqs`; plans built against the map are committed with
/// [`CacheMap::commit_turn`] and [`CacheMap::commit_decode`] once their step has run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheMap {
    world_size: usize,
    /// `seqs[seq][rank]`: the spans of `seq` cached on `rank`.
    seqs: Vec<Vec<Vec<Span>>>,
}

impl CacheMap {
    /// An empty cache of `n_seqs` sequences over `world_size` ranks.
    pub fn new(world_size: usize, n_seqs: usize) -> Result<CacheMap> {
        if world_size == 0 {
            return Err(ShardError::ZeroWorldSize);
        }
        Ok(CacheMap { world_size, seqs: vec![vec![Vec::new(); world_size]; n_seqs] })
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Number of sequences.
    pub fn n_seqs(&self) -> usize {
        self.seqs.len()
    }

    /// Tokens of `seq` cached over all ranks, which is also the position of its next token.
    pub fn seq_len(&self, seq: usize) -> Result<usize> {
        Ok(self.ranks_of(seq)?.iter().flatten().map(|s| s.len).sum())
    }

    /// The spans of `seq` cached on `rank`, in the order they were added.
    pub fn spans(&self, seq: usize, rank: usize) -> Result<&[Span]> {
        self.check_rank(rank)?;
        Ok(&self.ranks_of(seq)?[rank])
    }

    /// Tokens of `seq` cached on `rank`.
    pub fn seq_rank_len(&self, seq: usize, rank: usize) -> Result<usize> {
        Ok(self.spans(seq, rank)?.iter().map(|s| s.len).sum())
    }

    /// Tokens of all sequences cached on `rank`.
    pub fn rank_len(&self, rank: usize) -> Result<usize> {
        self.check_rank(rank)?;
        self.seqs
            .iter()
            .flat_map(|ranks| &ranks[rank])
            .try_fold(0usize, |acc, s| acc.checked_add(s.len))
            .ok_or(ShardError::Overflow { what: "tokens cached on one rank" })
    }

    /// A fingerprint of the placement as it is now: plans record it and a commit checks it, so
    /// a plan made for another cache (even one with the same lengths) or made before a commit
    /// is refused.
    pub(crate) fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.world_size.hash(&mut h);
        self.seqs.hash(&mut h);
        h.finish()
    }

    /// Records a prefill turn's new tokens in the cache, once the turn has run.
    pub fn commit_turn(&mut self, plan: &crate::TurnPlan) -> Result<()> {
        self.commit(plan.world_size(), plan.cache_fingerprint(), plan.base_lens(), &plan.placements())
    }

    /// Records a decode iteration's new tokens in the cache, once the iteration has run.
    pub fn commit_decode(&mut self, plan: &crate::DecodePlan) -> Result<()> {
        self.commit(plan.world_size(), plan.cache_fingerprint(), plan.base_lens(), &plan.placements())
    }

    /// Checks that a plan was made for this cache as it is now, then appends its placements.
    fn commit(
        &mut self,
        world_size: usize,
        fingerprint: u64,
        base_lens: Vec<(usize, usize)>,
        placements: &[Placement],
    ) -> Result<()> {
        if world_size != self.world_size {
            return Err(ShardError::PlanMismatch {
                reason: format!("plan is for world size {world_size}, cache for {}", self.world_size),
            });
        }
        for (seq, len) in base_lens {
            let now = self.seq_len(seq)?;
            if now != len {
                return Err(ShardError::PlanMismatch {
                    reason: format!(
                        "plan expected sequence {seq} to hold {len} cached tokens, it holds {now} (stale or repeated plan?)"
                    ),
                });
            }
        }
        if fingerprint != self.fingerprint() {
            return Err(ShardError::PlanMismatch {
                reason: "plan was made for a cache with another placement or other sequences".into(),
            });
        }
        for p in placements {
            let spans = &mut self.seqs[p.seq][p.rank];
            match spans.last_mut() {
                Some(last) if last.end() == p.span.start => last.len += p.span.len,
                _ if p.span.is_empty() => {}
                _ => spans.push(p.span),
            }
        }
        Ok(())
    }

    /// The key/value layouts of a step over sequences `seqs` (in that order) that adds
    /// `placements`: on each rank, each sequence's cached spans then its new spans, padded to the
    /// longest rank.
    pub(crate) fn kv_layouts(&self, seqs: &[usize], placements: &[Placement]) -> Vec<Layout> {
        let mut layouts: Vec<Layout> = (0..self.world_size)
            .map(|rank| {
                let mut layout = Layout::new();
                for &seq in seqs {
                    for &span in &self.seqs[seq][rank] {
                        layout.push_tokens(seq, span);
                    }
                    for p in placements.iter().filter(|p| p.seq == seq && p.rank == rank) {
                        layout.push_tokens(seq, p.span);
                    }
                }
                layout
            })
            .collect();
        let rows = layouts.iter().map(Layout::len).max().unwrap_or(0);
        layouts.iter_mut().for_each(|l| l.pad_to(rows));
        layouts
    }

    /// Checks a batch of sequence ids: non-empty, in range, each once.
    pub(crate) fn check_batch(&self, seqs: impl IntoIterator<Item = usize>) -> Result<()> {
        let mut seen = vec![false; self.n_seqs()];
        let mut any = false;
        for seq in seqs {
            self.ranks_of(seq)?;
            if std::mem::replace(&mut seen[seq], true) {
                return Err(ShardError::DuplicateSequence { seq });
            }
            any = true;
        }
        if !any {
            return Err(ShardError::EmptyBatch);
        }
        Ok(())
    }

    fn ranks_of(&self, seq: usize) -> Result<&Vec<Vec<Span>>> {
        self.seqs.get(seq).ok_or(ShardError::SequenceOutOfRange { seq, n_seqs: self.n_seqs() })
    }

    fn check_rank(&self, rank: usize) -> Result<()> {
        if rank >= self.world_size {
            return Err(ShardError::RankOutOfRange { rank, world_size: self.world_size });
        }
        Ok(())
    }
}

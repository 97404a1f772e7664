//! What a prefill turn and a decode iteration have in common: the plan of one ring step.

use crate::{CacheMap, DecodePlan, Result, RingLayouts, Span, TurnPlan};

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::TurnPlan {}
    impl Sealed for crate::DecodePlan {}
}

/// The plan of one ring step — a prefill turn ([`TurnPlan`], full or partial) or a decode
/// iteration ([`DecodePlan`]) — as the code that runs a step needs it: the layouts to hand the
/// ring, the spans the output covers and the oracle must see, and the commit to the cache once the
/// step has run. Code written against it serves prefill and decode alike. Sealed: the plans'
/// invariants (one rank per token, equal block sizes) are this crate's to keep.
///
/// ```
/// use cp_shard::{CacheMap, DecodePlan, NewTokens, StepPlan, TurnPlan};
///
/// /// Runs a step (here: only counts its query rows) and commits it.
/// fn run(cache: &mut CacheMap, plan: &impl StepPlan) -> Result<usize, cp_shard::ShardError> {
///     let rows = plan.layouts().q_rows() * plan.world_size();
///     plan.commit(cache)?;
///     Ok(rows)
/// }
///
/// let mut cache = CacheMap::new(2, 1)?;
/// let turn = TurnPlan::new(&cache, &[NewTokens { seq: 0, count: 10 }])?;
/// assert_eq!(run(&mut cache, &turn)?, 12); // 4 chunks of ceil(10 / 4) = 3 rows
/// let step = DecodePlan::new(&cache, &[0], 0)?;
/// run(&mut cache, &step)?;
/// assert_eq!(cache.seq_len(0)?, 11);
/// // A plan commits once, to the cache it was made for.
/// assert!(step.commit(&mut cache).is_err());
/// # Ok::<(), cp_shard::ShardError>(())
/// ```
pub trait StepPlan: sealed::Sealed {
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// The query and key/value layouts of every rank.
    fn layouts(&self) -> &RingLayouts;
    /// Each sequence and the global span of its new tokens, in batch order: what the step's
    /// output covers.
    fn new_spans(&self) -> Vec<(usize, Span)>;
    /// Each sequence and its full history after the step, in batch order: the keys a reference
    /// attention must see.
    fn history_spans(&self) -> Vec<(usize, Span)>;
    /// Records the step's new tokens in `cache` once the step has run; an error if the plan was
    /// made for another cache, or for this one before a change (a plan commits once).
    fn commit(&self, cache: &mut CacheMap) -> Result<()>;
}

impl StepPlan for TurnPlan {
    fn world_size(&self) -> usize {
        TurnPlan::world_size(self)
    }
    fn layouts(&self) -> &RingLayouts {
        TurnPlan::layouts(self)
    }
    fn new_spans(&self) -> Vec<(usize, Span)> {
        TurnPlan::new_spans(self)
    }
    fn history_spans(&self) -> Vec<(usize, Span)> {
        TurnPlan::history_spans(self)
    }
    fn commit(&self, cache: &mut CacheMap) -> Result<()> {
        cache.commit_turn(self)
    }
}

impl StepPlan for DecodePlan {
    fn world_size(&self) -> usize {
        DecodePlan::world_size(self)
    }
    fn layouts(&self) -> &RingLayouts {
        DecodePlan::layouts(self)
    }
    fn new_spans(&self) -> Vec<(usize, Span)> {
        DecodePlan::new_spans(self)
    }
    fn history_spans(&self) -> Vec<(usize, Span)> {
        DecodePlan::history_spans(self)
    }
    fn commit(&self, cache: &mut CacheMap) -> Result<()> {
        cache.commit_decode(self)
    }
}

//! One rank's context-parallel attention for every layer of a model: the KV cache that owns its
//! tensors, the plan of each step, and one call per layer.

use cp_heuristic::{Decision, Hardware, Inputs, ModelShape, Rule, Workload, choose};
use cp_ring::{Algorithm, Local, RingLayouts, RingTransport};
use cp_shard::{CacheMap, DecodePlan, Layout, NewTokens, Run, StepPlan, Token, TurnPlan};

use crate::regions::{self, Regions};
use crate::{KvOps, ModelError, Result};

/// How a step's ring algorithm is chosen.
///
/// ```
/// use cp_heuristic::{Hardware, ModelShape};
/// use cp_model::Choice;
/// use cp_ring::Algorithm;
///
/// // Llama3-8B attention on H100s over NVLink: prefill by the cost model, decode by gather-Q.
/// let model = ModelShape { n_heads: 32, n_kv_heads: 8, head_dim: 128, elem_bytes: 2 };
/// let choice = Choice::Heuristic { model, hardware: Hardware::PAPER_EXAMPLE, decode: Algorithm::GatherQ };
/// // Or the same algorithms every step.
/// let fixed = Choice::Fixed { prefill: Algorithm::PassKv, decode: Algorithm::PassQ };
/// assert_ne!(choice, fixed);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Choice {
    /// Prefill by the heuristic ([`Rule::Auto`]: Algorithm 5, gather-KV for short prompts) for
    /// this model shape and hardware, on the batch's total new and cached tokens; decode by
    /// `decode` (gather-Q measured fastest for decode on 2-4 GPUs).
    Heuristic {
        /// The attention shape the cost model uses.
        model: ModelShape,
        /// Compute rate and link of the ranks.
        hardware: Hardware,
        /// The algorithm of decode steps.
        decode: Algorithm,
    },
    /// The same algorithms for every step.
    Fixed {
        /// Prefill turns (full or partial).
        prefill: Algorithm,
        /// Decode iterations.
        decode: Algorithm,
    },
}

/// What a rank's attention is built with.
///
/// ```
/// use cp_model::{CacheConfig, Choice};
/// use cp_ring::Algorithm;
///
/// // 32 layers, a batch of 8 sequences, each up to 128K tokens on 4 ranks: reserve
/// // 128K / 4 rows plus a chunk, so no row ever moves.
/// let config = CacheConfig {
///     layers: 32,
///     seqs: 8,
///     reserve: 131_072 / 4 + 4096,
///     choice: Choice::Fixed { prefill: Algorithm::PassKv, decode: Algorithm::GatherQ },
/// };
/// assert_eq!(config.reserve, 36_864);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CacheConfig {
    /// Layers of the model (one KV cache each).
    pub layers: usize,
    /// Sequences of the batch (ids `0..seqs`).
    pub seqs: usize,
    /// Rows reserved for each sequence on each rank, used or not: regions start this large, so a
    /// model that knows how many rows a sequence can reach on one rank never moves a row (about
    /// the longest context divided by the ranks, plus a chunk per turn: turns shorter than 2N
    /// tokens land on the low ranks). 0:
    /// regions start at a power of two and double when full.
    pub reserve: usize,
    /// How each step's algorithm is chosen.
    pub choice: Choice,
}

/// One layer's cache on one rank: key and value buffers `[rows, NKV, DH]`, laid out by `regions`.
#[derive(Debug)]
struct LayerCache<T> {
    k: T,
    v: T,
    regions: Regions,
    rows: usize,
}

/// A step under way: a prefill turn or a decode iteration, planned identically on every rank.
///
/// ```
/// # use candle_core::{Device, Tensor};
/// # use cp_model::{CacheConfig, Choice, RankAttention};
/// # use cp_ring::Algorithm;
/// # use cp_shard::NewTokens;
/// # let comm = cp_ring::channel_ring::<Tensor>(1, std::time::Duration::from_secs(5)).remove(0);
/// # let config = CacheConfig { layers: 1, seqs: 2, reserve: 0,
/// #     choice: Choice::Fixed { prefill: Algorithm::PassKv, decode: Algorithm::GatherQ } };
/// # let mut attn = RankAttention::new(cp_attention::CpuAttention::default(), comm, config)?;
/// # let randn = |rows: usize, heads: usize| Tensor::randn(0f32, 1.0, (rows, heads, 8), &Device::Cpu);
/// let step = attn.prefill(&[NewTokens { seq: 0, count: 5 }, NewTokens { seq: 1, count: 3 }])?;
/// // One rank: chunks of 3 and 2 rows for sequence 0, of 2 and 1 rows for sequence 1, each
/// // padded to ceil(T / 2) rows.
/// assert_eq!(step.positions(), [0, 1, 2, 3, 4, 0, 0, 1, 2, 0]);
/// assert_eq!(step.tokens()[5], None); // padding
/// assert_eq!(step.algorithm(), Algorithm::PassKv);
/// assert!(step.decision().is_none()); // fixed, not the heuristic
/// assert_eq!(step.layouts().kv[0].token_count(), 8);
/// # Ok::<(), cp_model::ModelError>(())
/// ```
#[derive(Debug)]
pub struct Step {
    plan: Plan,
    rank: usize,
    algorithm: Algorithm,
    decision: Option<Decision>,
    layouts: RingLayouts,
    regions: Vec<Regions>,
    attended: Vec<bool>,
    cache_id: u64,
}

#[derive(Debug)]
enum Plan {
    Turn(TurnPlan),
    Decode(DecodePlan),
}

impl Plan {
    fn step(&self) -> &dyn StepPlan {
        match self {
            Plan::Turn(p) => p,
            Plan::Decode(p) => p,
        }
    }
}

impl Step {
    /// This rank's rows: the tokens the model computes this step on this rank, in the order of
    /// the tensors it hands to [`RankAttention::attend`] (padding rows are `None` in
    /// [`Layout::rows`]; give them any values, they see nothing and are seen by nothing).
    ///
    /// ```
    /// use cp_model::{CacheConfig, Choice, RankAttention};
    /// # use cp_ring::{Algorithm, channel_ring};
    /// # let comm = channel_ring::<candle_core::Tensor>(2, std::time::Duration::from_secs(5)).remove(0);
    /// let config = CacheConfig {
    ///     layers: 1, seqs: 1, reserve: 0,
    ///     choice: Choice::Fixed { prefill: Algorithm::PassKv, decode: Algorithm::GatherQ },
    /// };
    /// let mut attn = RankAttention::new(cp_attention::CpuAttention::default(), comm, config)?;
    /// let step = attn.prefill(&[cp_shard::NewTokens { seq: 0, count: 6 }])?;
    /// // 6 tokens in 4 chunks of 2 rows: rank 0 holds positions 0, 1 and chunk 3 (position 6
    /// // would be the 7th token: padding).
    /// let rows: Vec<_> = step.rows().rows().map(|t| t.map(|t| t.pos)).collect();
    /// assert_eq!(rows, [Some(0), Some(1), None, None]);
    /// # Ok::<(), cp_model::ModelError>(())
    /// ```
    pub fn rows(&self) -> &Layout {
        &self.layouts.q[self.rank]
    }

    /// Each row's position in its sequence (0 for padding rows): what rotary embeddings take.
    pub fn positions(&self) -> Vec<u32> {
        self.rows().rows().map(|t| t.map_or(0, |t| t.pos as u32)).collect()
    }

    /// Each row's token, `None` for padding.
    pub fn tokens(&self) -> Vec<Option<Token>> {
        self.rows().rows().collect()
    }

    /// The ring algorithm this step runs.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The heuristic's decision, with its working (prefill with [`Choice::Heuristic`]).
    pub fn decision(&self) -> Option<&Decision> {
        self.decision.as_ref()
    }

    /// The layouts the ring runs with: the plan's queries, and keys/values as the cache's
    /// buffers hold them (see the crate docs).
    pub fn layouts(&self) -> &RingLayouts {
        &self.layouts
    }
}

/// One rank's context-parallel attention: a KV cache per layer that owns its tensors, kept in
/// step with the placement plans, and one call per layer.
///
/// Every rank builds one with the same [`CacheConfig`] and calls the same methods in the same
/// order (SPMD); planning needs no communication, since every rank plans identically.
/// A step is [`RankAttention::prefill`] or [`RankAttention::decode`] (the plan: which rows
/// this rank computes, their positions for RoPE), then [`RankAttention::attend`] once per
/// layer with the new rows' Q, K and V, then [`RankAttention::finish`].
///
/// ```
/// # use candle_core::{Device, Tensor};
/// # use cp_model::{CacheConfig, Choice, RankAttention};
/// # use cp_ring::Algorithm;
/// # use cp_shard::NewTokens;
/// # let comm = cp_ring::channel_ring::<Tensor>(1, std::time::Duration::from_secs(5)).remove(0);
/// # let config = CacheConfig { layers: 1, seqs: 2, reserve: 0,
/// #     choice: Choice::Fixed { prefill: Algorithm::PassKv, decode: Algorithm::GatherQ } };
/// # let mut attn = RankAttention::new(cp_attention::CpuAttention::default(), comm, config)?;
/// # let randn = |rows: usize, heads: usize| Tensor::randn(0f32, 1.0, (rows, heads, 8), &Device::Cpu);
/// assert_eq!((attn.rank(), attn.world_size()), (0, 1));
/// // A prompt of 5 tokens for sequence 0 (a region of 8 rows), then 3 decode steps.
/// let mut step = attn.prefill(&[NewTokens { seq: 0, count: 5 }])?;
/// let n = step.rows().len();
/// let out = attn.attend(&mut step, 0, &randn(n, 4)?, &randn(n, 2)?, &randn(n, 2)?)?;
/// assert_eq!(out.dims(), [n, 4, 8]);
/// attn.finish(step)?;
/// for _ in 0..3 {
///     let before = attn.rows_written();
///     let mut step = attn.decode(&[0])?;
///     attn.attend(&mut step, 0, &randn(1, 4)?, &randn(1, 2)?, &randn(1, 2)?)?;
///     attn.finish(step)?;
///     assert_eq!(attn.rows_written() - before, 1); // the new row only (room in its region)
/// }
/// assert_eq!(attn.cache().seq_len(0)?, 8);
/// assert_eq!(attn.buffer_rows(0), 8); // full: the next token moves it to a region of 16
/// # let _ = attn.ops();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct RankAttention<A: KvOps, C> {
    ops: A,
    comm: C,
    config: CacheConfig,
    cache: CacheMap,
    layers: Vec<Option<LayerCache<A::Tensor>>>,
    iteration: usize,
    plans: u64,
    id: u64,
    written: u64,
}

impl<A, C> RankAttention<A, C>
where
    A: KvOps,
    C: RingTransport<A::Tensor>,
{
    /// A rank's attention over `comm`'s ring, with empty caches. Zero layers or sequences are an
    /// error.
    ///
    /// ```
    /// use cp_model::{CacheConfig, Choice, ModelError, RankAttention};
    /// use cp_ring::Algorithm;
    ///
    /// let comm = cp_ring::channel_ring::<candle_core::Tensor>(1, std::time::Duration::from_secs(5)).remove(0);
    /// let choice = Choice::Fixed { prefill: Algorithm::PassKv, decode: Algorithm::GatherQ };
    /// let config = CacheConfig { layers: 0, seqs: 1, reserve: 0, choice };
    /// let err = RankAttention::new(cp_attention::CpuAttention::default(), comm, config).unwrap_err();
    /// assert!(matches!(err, ModelError::Config { what: "layers", .. }));
    /// ```
    pub fn new(ops: A, comm: C, config: CacheConfig) -> Result<Self> {
        if config.layers == 0 {
            return Err(ModelError::Config { what: "layers", reason: "a model has at least one layer" });
        }
        if config.seqs == 0 {
            return Err(ModelError::Config { what: "seqs", reason: "a batch has at least one sequence" });
        }
        // Every sequence's region starts at `reserve` rows on every rank; the buffers' rows must
        // stay addressable (the GPU layouts index rows with i32), or the first step would try an
        // allocation no device has.
        if config.reserve.checked_mul(config.seqs).is_none_or(|rows| rows > i32::MAX as usize) {
            return Err(ModelError::Config {
                what: "reserve",
                reason: "reserve x seqs rows exceed 2^31 - 1, the most rows a rank's buffer may have",
            });
        }
        let n = comm.world_size();
        if comm.rank() >= n {
            return Err(ModelError::Config { what: "transport", reason: "its rank is not below its world size" });
        }
        let cache = CacheMap::new(n, config.seqs)?;
        let layers = (0..config.layers).map(|_| None).collect();
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(RankAttention { ops, comm, config, cache, layers, iteration: 0, plans: 0, id, written: 0 })
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// Ranks in the ring.
    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    /// Where every sequence's cached tokens live (identical on every rank).
    pub fn cache(&self) -> &CacheMap {
        &self.cache
    }

    /// The device operations.
    pub fn ops(&self) -> &A {
        &self.ops
    }

    /// Rows of layer `layer`'s key buffer on this rank (0 before its first step): the memory the
    /// cache holds, regions and padding included.
    pub fn buffer_rows(&self, layer: usize) -> usize {
        self.layers.get(layer).and_then(Option::as_ref).map_or(0, |l| l.rows)
    }

    /// Rows written into the cache buffers so far, over every layer (a key row and its value
    /// row count once): each step's new rows, plus every cached row moved when the buffers were
    /// laid out again. What a step copies is the difference across it: its new rows alone, unless
    /// a region's start moved (a sequence before it outgrew its region) or the message length —
    /// the longest rank's rows, which another rank's growth can raise — outgrew this rank's
    /// buffer.
    pub fn rows_written(&self) -> u64 {
        self.written
    }

    /// Plans a prefill turn: `new[i].count` new tokens for sequence `new[i].seq` (a first prompt
    /// or a later turn on top of the cache). Nothing changes until [`RankAttention::finish`].
    ///
    /// ```
    /// # use candle_core::{Device, Tensor};
    /// # use cp_model::{CacheConfig, Choice, RankAttention};
    /// # use cp_ring::Algorithm;
    /// # use cp_shard::NewTokens;
    /// # let comm = cp_ring::channel_ring::<Tensor>(1, std::time::Duration::from_secs(5)).remove(0);
    /// # let config = CacheConfig { layers: 1, seqs: 2, reserve: 0,
    /// #     choice: Choice::Fixed { prefill: Algorithm::PassKv, decode: Algorithm::GatherQ } };
    /// # let mut attn = RankAttention::new(cp_attention::CpuAttention::default(), comm, config)?;
    /// # let randn = |rows: usize, heads: usize| Tensor::randn(0f32, 1.0, (rows, heads, 8), &Device::Cpu);
    /// let step = attn.prefill(&[NewTokens { seq: 1, count: 4 }])?;
    /// assert_eq!(step.positions(), [0, 1, 2, 3]);
    /// // An unknown sequence is an error naming it.
    /// assert!(attn.prefill(&[NewTokens { seq: 7, count: 4 }]).is_err());
    /// # Ok::<(), cp_model::ModelError>(())
    /// ```
    pub fn prefill(&mut self, new: &[NewTokens]) -> Result<Step> {
        let plan = TurnPlan::new(&self.cache, new)?;
        let (algorithm, decision) = match self.config.choice {
            Choice::Fixed { prefill, .. } => (prefill, None),
            Choice::Heuristic { model, hardware, .. } => {
                let mut workload = Workload::default();
                for n in new {
                    let cached = self.cache.seq_len(n.seq)?;
                    workload = workload.combine(Workload { new_tokens: n.count, cached_tokens: cached })?;
                }
                let inputs = Inputs { model, hardware, world_size: self.world_size(), workload };
                let decision = choose(Rule::Auto, &inputs)?;
                (decision.mode.into(), Some(decision))
            }
        };
        self.step(Plan::Turn(plan), algorithm, decision)
    }

    /// Plans a decode iteration: one new token for each sequence of `seqs`, placed round-robin
    /// (the start rank moves by one every iteration, so caches grow evenly).
    ///
    /// ```
    /// # use candle_core::{Device, Tensor};
    /// # use cp_model::{CacheConfig, Choice, RankAttention};
    /// # use cp_ring::Algorithm;
    /// # use cp_shard::NewTokens;
    /// # let comm = cp_ring::channel_ring::<Tensor>(1, std::time::Duration::from_secs(5)).remove(0);
    /// # let config = CacheConfig { layers: 1, seqs: 2, reserve: 0,
    /// #     choice: Choice::Fixed { prefill: Algorithm::PassKv, decode: Algorithm::GatherQ } };
    /// # let mut attn = RankAttention::new(cp_attention::CpuAttention::default(), comm, config)?;
    /// # let randn = |rows: usize, heads: usize| Tensor::randn(0f32, 1.0, (rows, heads, 8), &Device::Cpu);
    /// let mut step = attn.prefill(&[NewTokens { seq: 0, count: 4 }, NewTokens { seq: 1, count: 2 }])?;
    /// let n = step.rows().len();
    /// attn.attend(&mut step, 0, &randn(n, 4)?, &randn(n, 2)?, &randn(n, 2)?)?;
    /// attn.finish(step)?;
    /// let step = attn.decode(&[0, 1])?;
    /// assert_eq!(step.positions(), [4, 2]); // each sequence's next position
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn decode(&mut self, seqs: &[usize]) -> Result<Step> {
        let plan = DecodePlan::new(&self.cache, seqs, self.iteration)?;
        let algorithm = match self.config.choice {
            Choice::Fixed { decode, .. } | Choice::Heuristic { decode, .. } => decode,
        };
        self.step(Plan::Decode(plan), algorithm, None)
    }

    fn step(&mut self, plan: Plan, algorithm: Algorithm, decision: Option<Decision>) -> Result<Step> {
        let (regions, kv) = regions::after_step(&self.cache, &plan.step().layouts().q, self.config.reserve)?;
        let layouts = regions::ring_layouts(plan.step().layouts(), kv);
        // Only the step planned last may run: planning another (or finishing this one) makes it
        // stale, so two steps can never write the same rows.
        self.plans += 1;
        Ok(Step {
            plan,
            rank: self.rank(),
            algorithm,
            decision,
            layouts,
            regions,
            attended: vec![false; self.config.layers],
            cache_id: self.cache_id(),
        })
    }

    /// Identifies this attention and its latest plan: a step runs only if it is that plan.
    fn cache_id(&self) -> u64 {
        self.id.wrapping_mul(1 << 32).wrapping_add(self.plans)
    }

    /// Attention of layer `layer` for `step`: `q` `[rows, NH, DH]`, `k` and `v` `[rows, NKV, DH]`
    /// hold this rank's rows ([`Step::rows`], positions already rotated). Appends the new keys and
    /// values to the layer's cache in place, runs the step's ring algorithm over the cache where
    /// it lies, and returns the attention output of this rank's rows `[rows, NH, DH]` (in the
    /// device's compute dtype: f32 for 16-bit inputs on the CPU, f32 on the GPU; padding rows
    /// zero).
    ///
    /// ```
    /// # use candle_core::{Device, Tensor};
    /// # use cp_model::{CacheConfig, Choice, RankAttention};
    /// # use cp_ring::Algorithm;
    /// # use cp_shard::NewTokens;
    /// # let comm = cp_ring::channel_ring::<Tensor>(1, std::time::Duration::from_secs(5)).remove(0);
    /// # let config = CacheConfig { layers: 1, seqs: 2, reserve: 0,
    /// #     choice: Choice::Fixed { prefill: Algorithm::PassKv, decode: Algorithm::GatherQ } };
    /// # let mut attn = RankAttention::new(cp_attention::CpuAttention::default(), comm, config)?;
    /// # let randn = |rows: usize, heads: usize| Tensor::randn(0f32, 1.0, (rows, heads, 8), &Device::Cpu);
    /// let mut step = attn.prefill(&[NewTokens { seq: 0, count: 3 }])?;
    /// let (q, k) = (randn(4, 4)?, randn(4, 2)?); // 2 chunks of 2 rows, one of them padding
    /// let out = attn.attend(&mut step, 0, &q, &k, &k)?;
    /// assert_eq!(out.dims(), [4, 4, 8]);
    /// // Tensors with another number of rows are an error, not a silent wrong answer.
    /// assert!(attn.attend(&mut step, 0, &randn(3, 4)?, &k, &k).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn attend(
        &mut self,
        step: &mut Step,
        layer: usize,
        q: &A::Tensor,
        k: &A::Tensor,
        v: &A::Tensor,
    ) -> Result<A::Tensor> {
        if step.cache_id != self.cache_id() {
            return Err(ModelError::StaleStep);
        }
        let layers = self.layers.len();
        let slot = self.layers.get_mut(layer).ok_or(ModelError::Layer { layer, layers })?;
        let rank = step.rank;
        let q_rows = step.layouts.q_rows();
        for (what, t) in [("q", q), ("k", k), ("v", v)] {
            let rows = self.ops.rows(t).map_err(ModelError::device)?;
            if rows != q_rows {
                return Err(ModelError::Rows { what, expected: q_rows, actual: rows });
            }
        }
        let kv_rows = step.layouts.kv_rows();
        let target = &step.regions[rank];
        // Lay the cache out for this step: in place if every region starts where it did (a
        // region grows into its padding; capacities only grow) and the buffer holds the message
        // length, else once into new buffers (a region outgrown moves those after it; another
        // rank's growth can lengthen the message).
        let same_starts =
            |c: &LayerCache<A::Tensor>| c.regions.spans.iter().zip(&target.spans).all(|(a, b)| a.0 == b.0);
        match slot {
            Some(c) if c.rows >= kv_rows && same_starts(c) => c.regions = target.clone(),
            _ => {
                let rows =
                    kv_rows.max(1).checked_next_power_of_two().ok_or(ModelError::TooLarge { what: "cache rows" })?;
                let mut nk = self.ops.alloc_rows(k, rows).map_err(ModelError::device)?;
                let mut nv = self.ops.alloc_rows(v, rows).map_err(ModelError::device)?;
                if let Some(old) = slot.as_ref() {
                    for (seq, (&(from, _), &(to, _))) in old.regions.spans.iter().zip(&target.spans).enumerate() {
                        let len = self.cache.seq_rank_len(seq, rank)?;
                        self.ops.copy_rows(&mut nk, to, &old.k, from, len).map_err(ModelError::device)?;
                        self.ops.copy_rows(&mut nv, to, &old.v, from, len).map_err(ModelError::device)?;
                        self.written += len as u64;
                    }
                }
                *slot = Some(LayerCache { k: nk, v: nv, regions: target.clone(), rows });
            }
        }
        let Some(cache) = slot.as_mut() else { unreachable!("the layer's cache was just built") };
        // The new rows, run by run, after each sequence's cached rows in its region.
        let mut written = vec![0usize; self.config.seqs];
        let mut row = 0;
        for run in step.layouts.q[rank].runs() {
            if let Run::Tokens { seq, span } = *run {
                let at = target.spans[seq].0 + self.cache.seq_rank_len(seq, rank)? + written[seq];
                self.ops.copy_rows(&mut cache.k, at, k, row, span.len).map_err(ModelError::device)?;
                self.ops.copy_rows(&mut cache.v, at, v, row, span.len).map_err(ModelError::device)?;
                written[seq] += span.len;
                self.written += span.len as u64;
            }
            row += run.len();
        }
        let kview = self.ops.first_rows(&cache.k, kv_rows).map_err(ModelError::device)?;
        let vview = self.ops.first_rows(&cache.v, kv_rows).map_err(ModelError::device)?;
        let local = Local { q, k: &kview, v: &vview };
        let out = cp_ring::run(step.algorithm, &self.ops, &mut self.comm, &step.layouts, local, &mut ());
        // Whatever happened, nothing this rank sent may stay in flight: the next step writes
        // the cache in place.
        let drained = self.comm.drain();
        let out = out?;
        drained.map_err(|e| {
            ModelError::Ring(cp_ring::RingError::Transport { rank, step: 0, op: "drain", source: Box::new(e) })
        })?;
        step.attended[layer] = true;
        Ok(out.out)
    }

    /// Ends `step` once every layer has attended: records its tokens in the cache.
    ///
    /// ```
    /// # use candle_core::{Device, Tensor};
    /// # use cp_model::{CacheConfig, Choice, RankAttention};
    /// # use cp_ring::Algorithm;
    /// # use cp_shard::NewTokens;
    /// # let comm = cp_ring::channel_ring::<Tensor>(1, std::time::Duration::from_secs(5)).remove(0);
    /// # let config = CacheConfig { layers: 1, seqs: 2, reserve: 0,
    /// #     choice: Choice::Fixed { prefill: Algorithm::PassKv, decode: Algorithm::GatherQ } };
    /// # let mut attn = RankAttention::new(cp_attention::CpuAttention::default(), comm, config)?;
    /// # let randn = |rows: usize, heads: usize| Tensor::randn(0f32, 1.0, (rows, heads, 8), &Device::Cpu);
    /// let step = attn.prefill(&[NewTokens { seq: 0, count: 3 }])?;
    /// // No layer attended: the step cannot end, and the cache is unchanged.
    /// assert!(attn.finish(step).is_err());
    /// assert_eq!(attn.cache().seq_len(0)?, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn finish(&mut self, step: Step) -> Result<()> {
        if step.cache_id != self.cache_id() {
            return Err(ModelError::StaleStep);
        }
        if let Some(layer) = step.attended.iter().position(|a| !a) {
            return Err(ModelError::Unattended { layer });
        }
        step.plan.step().commit(&mut self.cache)?;
        if let Plan::Decode(_) = step.plan {
            self.iteration += 1;
        }
        self.plans += 1;
        Ok(())
    }
}

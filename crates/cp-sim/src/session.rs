//! A multi-turn conversation on a simulated ring, every step checked against the oracle.

use std::fmt;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use cp_attention::reference::{self, Discrepancy, Heads, discrepancy};
use cp_attention::{CpuAttention, finish, to_f64_vec};
use cp_ring::{Algorithm, Local, RingError, RingTransport, run};
use cp_shard::{
    CacheMap, DecodePlan, NewTokens, RingLayouts, Span, StepPlan, Token, TurnPlan, gather_rows, scatter_rows,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{CpuPhaseTimes, CpuProbe, Result, SimError, run_ranks};

/// Shape, dtype and randomness of a simulated ring.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimConfig {
    /// Ranks in the ring.
    pub world_size: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Input dtype: f64, f32 or bf16.
    pub dtype: DType,
    /// Seed of the random Q/K/V.
    pub seed: u64,
    /// How long a rank waits for a peer's message before failing.
    pub timeout: Duration,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            world_size: 4,
            n_heads: 8,
            n_kv_heads: 2,
            head_dim: 32,
            dtype: DType::F32,
            seed: 0,
            timeout: Duration::from_secs(120),
        }
    }
}

/// The most ranks the simulator runs (each is a thread, and a ring step is `N^2` partial
/// attentions).
pub const MAX_SIM_WORLD_SIZE: usize = 256;

/// The most work the naive f64 oracle may be asked for in one step (multiply-adds): minutes on
/// one core.
const MAX_ORACLE_WORK: u128 = 1 << 40;

/// What one simulated step costs, estimated before anything is allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    /// Bytes of host memory the step needs at its peak (history, per-rank tensors, scores).
    pub bytes: u128,
    /// Multiply-adds of the f64 oracle.
    pub oracle_work: u128,
}

/// Host memory this process may use for a step: 80% of what the kernel reports available,
/// or 8 GiB if it cannot be read.
fn memory_budget() -> u128 {
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u128>().ok())
    });
    available.map_or(8 << 30, |kib| kib * 1024 * 8 / 10)
}

impl SimConfig {
    /// Estimates a step adding `new[b]` tokens to sequences holding `cached[b]` (in batch
    /// order), in checked arithmetic.
    pub fn estimate(&self, cached: &[usize], new: &[usize]) -> Result<Estimate> {
        let overflow = || SimError::Config("sizes overflow: the step is far too large to simulate".into());
        let (nh, nkv, dh, n) =
            (self.n_heads as u128, self.n_kv_heads as u128, self.head_dim as u128, self.world_size as u128);
        let (mut hist, mut fresh, mut work, mut longest) = (0u128, 0u128, 0u128, 0u128);
        for (&p, &t) in cached.iter().zip(new) {
            let total = (p as u128).checked_add(t as u128).ok_or_else(overflow)?;
            hist = hist.checked_add(total).ok_or_else(overflow)?;
            fresh = fresh.checked_add(t as u128).ok_or_else(overflow)?;
            longest = longest.max(total);
            work = (t as u128)
                .checked_mul(total)
                .and_then(|x| x.checked_mul(nh * dh * 2))
                .and_then(|x| x.checked_add(work))
                .ok_or_else(overflow)?;
        }
        // f64 history of K and V, about four copies of it across the ranks' tensors and their
        // conversions, the new queries and outputs, and each rank's score block of 256 rows.
        let bytes = hist
            .checked_mul(2 * nkv * dh * 8 * 5)
            .and_then(|b| fresh.checked_mul(nh * dh * 8 * 6).and_then(|q| b.checked_add(q)))
            .and_then(|b| {
                longest.checked_mul(nh * 256 * 8 * 2).and_then(|s| s.checked_mul(n)).and_then(|s| b.checked_add(s))
            })
            .ok_or_else(overflow)?;
        Ok(Estimate { bytes, oracle_work: work })
    }

    /// Refuses a step that would not fit in memory or would keep the oracle busy for hours,
    /// naming the estimate.
    pub fn check_size(&self, cached: &[usize], new: &[usize]) -> Result<Estimate> {
        let e = self.estimate(cached, new)?;
        let budget = memory_budget();
        if e.bytes > budget {
            return Err(SimError::Config(format!(
                "this step needs about {:.1} GiB of host memory; {:.1} GiB are available to it: use fewer tokens, \
                 sequences, heads or a smaller head dim",
                e.bytes as f64 / (1u64 << 30) as f64,
                budget as f64 / (1u64 << 30) as f64
            )));
        }
        if e.oracle_work > MAX_ORACLE_WORK {
            return Err(SimError::Config(format!(
                "the f64 oracle of this step needs about {:.1e} multiply-adds (hours on one core; the limit is {:.1e}): \
                 use fewer tokens or sequences",
                e.oracle_work as f64, MAX_ORACLE_WORK as f64
            )));
        }
        Ok(e)
    }

    fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(SimError::Config(msg));
        if self.world_size == 0 {
            return bad("world size must be at least 1, got 0".into());
        }
        if self.world_size > MAX_SIM_WORLD_SIZE {
            return bad(format!(
                "world size {} is more ranks than the simulator runs (at most {MAX_SIM_WORLD_SIZE}: each is a thread, \
                 and a step is N^2 partial attentions)",
                self.world_size
            ));
        }
        if self.timeout.is_zero() {
            return bad("the timeout must be positive (a zero timeout fails every exchange at once)".into());
        }
        if self.n_heads == 0 || self.n_kv_heads == 0 || self.head_dim == 0 {
            return bad(format!(
                "heads and head dim must be at least 1 (n_heads {}, n_kv_heads {}, head_dim {})",
                self.n_heads, self.n_kv_heads, self.head_dim
            ));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!("n_heads ({}) must be a multiple of n_kv_heads ({})", self.n_heads, self.n_kv_heads));
        }
        if !matches!(self.dtype, DType::F64 | DType::F32 | DType::BF16) {
            return bad(format!("dtype {:?} is not supported (f64, f32, bf16)", self.dtype));
        }
        Ok(())
    }

    fn heads(&self) -> Heads {
        Heads { n_heads: self.n_heads, n_kv_heads: self.n_kv_heads, head_dim: self.head_dim }
    }
}

/// Relative L2 error bounds for a step's output and log-sum-exp against the f64 oracle.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// Bound on the output.
    pub out: f64,
    /// Bound on the log-sum-exp.
    pub lse: f64,
}

impl Tolerance {
    /// The bounds for an input dtype. The oracle sees the same rounded inputs, so only the
    /// arithmetic differs:
    /// - f64: summation order only, about 1e-15 per operation; 1e-12 leaves room for sums over
    ///   thousands of keys and N merges.
    /// - f32: unit roundoff 6e-8, amplified by the exponentials and sums over up to a few
    ///   thousand keys (about `sqrt(Tk) * 6e-8`, a few 1e-6); 2e-5.
    /// - bf16: computed in f32 (LSE bound as f32), but the output is rounded to bf16 at the end,
    ///   a relative error of at most 2^-9 = 0.2% per element; 4e-3.
    pub fn for_dtype(dtype: DType) -> Tolerance {
        match dtype {
            DType::F64 => Tolerance { out: 1e-12, lse: 1e-12 },
            DType::BF16 => Tolerance { out: 4e-3, lse: 2e-5 },
            _ => Tolerance { out: 2e-5, lse: 2e-5 },
        }
    }
}

/// What a step was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// A prefill turn adding `new_tokens` tokens over `cached_tokens` already cached (totals
    /// over `sequences` sequences); `cached_tokens == 0` is a full prefill.
    Prefill {
        /// New tokens over all sequences.
        new_tokens: usize,
        /// Tokens already cached over all sequences.
        cached_tokens: usize,
        /// Sequences in the turn.
        sequences: usize,
    },
    /// Decode iteration `iteration`, one token for each of `batch` sequences.
    Decode {
        /// The iteration.
        iteration: usize,
        /// Sequences decoded.
        batch: usize,
    },
}

/// The outcome of one step of one algorithm.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// The step.
    pub kind: StepKind,
    /// The algorithm that ran.
    pub algorithm: Algorithm,
    /// Ranks.
    pub world_size: usize,
    /// Input dtype.
    pub dtype: DType,
    /// Rows of each rank's query block and key/value block (message sizes in rows).
    pub q_rows: usize,
    /// See `q_rows`.
    pub kv_rows: usize,
    /// Output error against the oracle.
    pub out: Discrepancy,
    /// Log-sum-exp error against the oracle.
    pub lse: Discrepancy,
    /// The bounds applied.
    pub tolerance: Tolerance,
    /// Wall-clock time of the ring (all ranks, threads on this CPU).
    pub elapsed: Duration,
    /// Tokens cached on each rank after the step.
    pub cache_lens: Vec<usize>,
    /// Wall-clock time per phase on each rank.
    pub rank_times: Vec<CpuPhaseTimes>,
}

impl StepReport {
    /// Whether both errors are within the tolerance.
    pub fn passed(&self) -> bool {
        self.out.within(self.tolerance.out) && self.lse.within(self.tolerance.lse)
    }
}

impl fmt::Display for StepReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            StepKind::Prefill { new_tokens, cached_tokens: 0, sequences } => {
                format!("prefill T={new_tokens} ({sequences} seq)")
            }
            StepKind::Prefill { new_tokens, cached_tokens, sequences } => {
                format!("partial prefill T={new_tokens} P={cached_tokens} ({sequences} seq)")
            }
            StepKind::Decode { iteration, batch } => format!("decode iteration {iteration} (B={batch})"),
        };
        write!(
            f,
            "{} {what}, N={}, {:?}: max |err| {:.2e}, rel L2 {:.2e} (tol {:.0e}), LSE rel L2 {:.2e} [{}]",
            self.algorithm,
            self.world_size,
            self.dtype,
            self.out.max_abs,
            self.out.rel_l2,
            self.tolerance.out,
            self.lse.rel_l2,
            if self.passed() { "SUCCESS" } else { "FAILED" }
        )
    }
}

/// A batch of sequences living on a simulated ring across prefill turns and decode steps.
#[derive(Debug)]
pub struct Session {
    config: SimConfig,
    cache: CacheMap,
    /// Keys and values of every cached token, `[pos, NKV, DH]` per sequence, already rounded to
    /// the dtype: the ground truth each rank's cache is a slice of.
    k_hist: Vec<Vec<f64>>,
    v_hist: Vec<Vec<f64>>,
    rng: StdRng,
    decode_iteration: usize,
}

impl Session {
    /// A session of `n_seqs` empty sequences.
    pub fn new(config: SimConfig, n_seqs: usize) -> Result<Session> {
        config.validate()?;
        if n_seqs == 0 {
            return Err(SimError::Config("a session needs at least one sequence".into()));
        }
        Ok(Session {
            cache: CacheMap::new(config.world_size, n_seqs)?,
            k_hist: vec![Vec::new(); n_seqs],
            v_hist: vec![Vec::new(); n_seqs],
            rng: StdRng::seed_from_u64(config.seed),
            decode_iteration: 0,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Where every cached token lives.
    pub fn cache(&self) -> &CacheMap {
        &self.cache
    }

    /// Runs one prefill turn (full on empty sequences, partial on cached ones) with each of
    /// `algorithms` on the same fresh inputs, checks each against the oracle, then commits the
    /// new tokens to the cache.
    pub fn prefill(&mut self, new: &[NewTokens], algorithms: &[Algorithm]) -> Result<Vec<StepReport>> {
        if algorithms.is_empty() {
            return Err(SimError::Config("prefill: no algorithm given (the turn would be committed unchecked)".into()));
        }
        let plan = TurnPlan::new(&self.cache, new)?;
        let cached = new.iter().map(|n| self.cache.seq_len(n.seq)).collect::<Result<Vec<_>, _>>()?;
        let counts: Vec<usize> = new.iter().map(|n| n.count).collect();
        self.config.check_size(&cached, &counts)?;
        let cached_tokens = plan.shards().map(|(_, s)| s.offset()).sum();
        let kind =
            StepKind::Prefill { new_tokens: new.iter().map(|n| n.count).sum(), cached_tokens, sequences: new.len() };
        self.run_plan(&plan, algorithms, kind)
    }

    /// Runs one decode iteration (batched ring pass-Q, Algorithm 4) for the sequences `seqs`,
    /// checks it, and commits the new tokens, placed round-robin.
    pub fn decode(&mut self, seqs: &[usize]) -> Result<StepReport> {
        let mut reports = self.decode_with(seqs, &[Algorithm::PassQ])?;
        Ok(reports.remove(0))
    }

    /// Runs one decode iteration for the sequences `seqs` with each of `algorithms` (pass-Q,
    /// Algorithm 4, or gather-Q) on the same fresh inputs, checks each, and commits the new
    /// tokens, placed round-robin.
    pub fn decode_with(&mut self, seqs: &[usize], algorithms: &[Algorithm]) -> Result<Vec<StepReport>> {
        if algorithms.is_empty() {
            return Err(SimError::Config("decode_with: no algorithm given".into()));
        }
        let plan = DecodePlan::new(&self.cache, seqs, self.decode_iteration)?;
        let cached = seqs.iter().map(|&s| self.cache.seq_len(s)).collect::<Result<Vec<_>, _>>()?;
        self.config.check_size(&cached, &vec![1; seqs.len()])?;
        let kind = StepKind::Decode { iteration: self.decode_iteration, batch: seqs.len() };
        let reports = self.run_plan(&plan, algorithms, kind)?;
        self.decode_iteration += 1;
        Ok(reports)
    }

    /// Runs a planned step (a prefill turn or a decode iteration) with each of `algorithms` on
    /// the same fresh inputs, checks each against the oracle, and commits the step to the cache.
    fn run_plan(&mut self, plan: &impl StepPlan, algorithms: &[Algorithm], kind: StepKind) -> Result<Vec<StepReport>> {
        let q_new = self.draw_new_tokens(&plan.new_spans());
        let mut reports = algorithms
            .iter()
            .map(|&a| self.run_step(plan.layouts(), &q_new, &plan.new_spans(), a, kind))
            .collect::<Result<Vec<_>>>()?;
        plan.commit(&mut self.cache)?;
        let lens = (0..self.config.world_size).map(|r| self.cache.rank_len(r)).collect::<Result<Vec<_>, _>>()?;
        reports.iter_mut().for_each(|r| r.cache_lens = lens.clone());
        Ok(reports)
    }

    /// Draws values uniform in [-2, 2), rounded to the session's dtype.
    fn draw(&mut self, n: usize) -> Vec<f64> {
        let dtype = self.config.dtype;
        (0..n).map(|_| round_to(dtype, self.rng.random_range(-2.0..2.0))).collect()
    }

    /// Draws fresh queries for the new tokens and appends fresh keys and values to the history.
    fn draw_new_tokens(&mut self, new_spans: &[(usize, Span)]) -> Vec<Vec<f64>> {
        let c = self.config;
        new_spans
            .iter()
            .map(|&(seq, span)| {
                let q = self.draw(span.len * c.n_heads * c.head_dim);
                let k = self.draw(span.len * c.n_kv_heads * c.head_dim);
                let v = self.draw(span.len * c.n_kv_heads * c.head_dim);
                self.k_hist[seq].extend(k);
                self.v_hist[seq].extend(v);
                q
            })
            .collect()
    }

    fn run_step(
        &mut self,
        layouts: &RingLayouts,
        q_new: &[Vec<f64>],
        new_spans: &[(usize, Span)],
        algorithm: Algorithm,
        kind: StepKind,
    ) -> Result<StepReport> {
        let c = self.config;
        let q_width = c.n_heads * c.head_dim;
        let kv_width = c.n_kv_heads * c.head_dim;
        let q_row = |t: Token| {
            let i = new_spans
                .iter()
                .position(|&(seq, span)| seq == t.seq && span.contains(t.pos))
                .ok_or(cp_shard::ShardError::PositionOutOfRange { seq: t.seq, pos: t.pos, start: 0, end: 0 })?;
            let row = t.pos - new_spans[i].1.start;
            Ok(q_new[i][row * q_width..(row + 1) * q_width].to_vec())
        };
        let hist_row =
            |hist: &Vec<Vec<f64>>, t: Token| Ok(hist[t.seq][t.pos * kv_width..(t.pos + 1) * kv_width].to_vec());
        // Padding rows hold NaN (as recycled or uninitialised memory may): anything of them that
        // reached a result would show as a non-finite mismatch.
        let poison = |width: usize| vec![f64::NAN; width];
        let q = scatter_rows(&layouts.q, q_width, q_row, |_, _| poison(q_width))?;
        let k = scatter_rows(&layouts.kv, kv_width, |t| hist_row(&self.k_hist, t), |_, _| poison(kv_width))?;
        let v = scatter_rows(&layouts.kv, kv_width, |t| hist_row(&self.v_hist, t), |_, _| poison(kv_width))?;
        let tensor = |data: Vec<f64>, heads: usize| -> Result<Tensor> {
            let rows = data.len() / (heads * c.head_dim);
            Ok(Tensor::from_vec(data, (rows, heads, c.head_dim), &Device::Cpu)?.to_dtype(c.dtype)?)
        };
        let q = q.into_iter().map(|d| tensor(d, c.n_heads)).collect::<Result<Vec<_>>>()?;
        let k = k.into_iter().map(|d| tensor(d, c.n_kv_heads)).collect::<Result<Vec<_>>>()?;
        let v = v.into_iter().map(|d| tensor(d, c.n_kv_heads)).collect::<Result<Vec<_>>>()?;

        let ops = CpuAttention::default();
        let started = Instant::now();
        let results = run_ranks(c.world_size, c.timeout, |mut comm| {
            let rank = comm.rank();
            let local = Local { q: &q[rank], k: &k[rank], v: &v[rank] };
            let mut probe = CpuProbe::default();
            let partial = run(algorithm, &ops, &mut comm, layouts, local, &mut probe)?;
            Ok((to_f64_vec(&finish(&partial.out, c.dtype)?)?, to_f64_vec(&partial.lse)?, probe.times))
        });
        let elapsed = started.elapsed();
        let per_rank = first_root_cause(results)?;

        let outs: Vec<&[f64]> = per_rank.iter().map(|(o, _, _)| o.as_slice()).collect();
        let lses: Vec<&[f64]> = per_rank.iter().map(|(_, l, _)| l.as_slice()).collect();
        let got_out: Vec<f64> = gather_rows(&layouts.q, &outs, q_width, new_spans)?.concat();
        let got_lse: Vec<f64> = gather_rows(&layouts.q, &lses, c.n_heads, new_spans)?.concat();
        let (want_out, want_lse) = self.oracle(q_new, new_spans)?;
        Ok(StepReport {
            kind,
            algorithm,
            world_size: c.world_size,
            dtype: c.dtype,
            q_rows: layouts.q_rows(),
            kv_rows: layouts.kv_rows(),
            out: discrepancy(&got_out, &want_out),
            lse: discrepancy(&got_lse, &want_lse),
            tolerance: Tolerance::for_dtype(c.dtype),
            elapsed,
            cache_lens: Vec::new(),
            rank_times: per_rank.iter().map(|(_, _, t)| *t).collect(),
        })
    }

    /// Plain attention of each sequence's new queries over its whole history, in f64.
    fn oracle(&self, q_new: &[Vec<f64>], new_spans: &[(usize, Span)]) -> Result<(Vec<f64>, Vec<f64>)> {
        let c = self.config;
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let kv_width = c.n_kv_heads * c.head_dim;
        let (mut out, mut lse) = (Vec::new(), Vec::new());
        for (q, &(seq, span)) in q_new.iter().zip(new_spans) {
            let q_tokens: Vec<_> = (span.start..span.end()).map(|pos| Some(Token { seq, pos })).collect();
            let kv_tokens: Vec<_> = (0..span.end()).map(|pos| Some(Token { seq, pos })).collect();
            let k = &self.k_hist[seq][..span.end() * kv_width];
            let v = &self.v_hist[seq][..span.end() * kv_width];
            let (o, l) = reference::attention(q, &q_tokens, k, v, &kv_tokens, c.heads(), scale)?;
            out.extend(o);
            lse.extend(l);
        }
        Ok((out, lse))
    }
}

/// Rounds `x` to the precision of `dtype`, so the oracle sees exactly the values the ring does.
fn round_to(dtype: DType, x: f64) -> f64 {
    match dtype {
        DType::BF16 => half::bf16::from_f64(x).to_f64(),
        DType::F32 => x as f32 as f64,
        _ => x,
    }
}

/// All ranks' results, or the error that started the failure: a rank's own failure rather than
/// a peer's report that it went away.
fn first_root_cause<R>(results: Vec<Result<R>>) -> Result<Vec<R>> {
    let is_echo = |e: &SimError| matches!(e, SimError::Ring(RingError::Transport { .. }));
    if results.iter().any(|r| r.is_err()) {
        let mut errors: Vec<SimError> = results.into_iter().filter_map(|r| r.err()).collect();
        let at = errors.iter().position(|e| !is_echo(e)).unwrap_or(0);
        return Err(errors.swap_remove(at));
    }
    Ok(results.into_iter().filter_map(|r| r.ok()).collect())
}

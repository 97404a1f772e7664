//! `cp-model`'s per-rank attention on GPU ranks: a conversation through the KV cache that owns
//! its device buffers, every step against the f64 oracle, and the cost of a decode step at two
//! cache sizes.

use std::time::Instant;

use cp_attention::cuda::CudaAttention;
use cp_attention::reference::{Heads, discrepancy};
use cp_model::{CacheConfig, Choice, RankAttention, Step};
use cp_nccl::{GpuRing, RankTransport};
use cp_ring::Algorithm;
use cp_shard::{NewTokens, Span, Token};

use crate::check::{CheckLine, TOL_OUT};
use crate::workload;

/// A layer's seed: each layer attends over rows of its own.
fn layer_seed(seed: u64, layer: usize) -> u64 {
    seed.wrapping_add(0x9e37_79b9 * (layer as u64 + 1))
}

/// One rank's outputs of one step: per layer, its rows' tokens and outputs.
type StepOut = Vec<(Vec<Option<Token>>, Vec<f32>)>;

/// Draws the step's new rows (values depend on the token only, as the oracle's do) and attends
/// every layer; returns each layer's tokens and output.
fn run_step(
    attn: &mut RankAttention<CudaAttention, &mut RankTransport>,
    step: &mut Step,
    heads: Heads,
    layers: usize,
    seed: u64,
) -> Result<StepOut, cp_model::ModelError> {
    let mut outs = Vec::with_capacity(layers);
    for layer in 0..layers {
        let inputs = workload::draw_rows(attn.ops(), step.rows(), heads, layer_seed(seed, layer))
            .map_err(cp_model::ModelError::device)?;
        let out = attn.attend(step, layer, &inputs.q, &inputs.k, &inputs.v)?;
        outs.push((step.tokens(), out.download(attn.ops().stream()).map_err(cp_model::ModelError::device)?));
    }
    Ok(outs)
}

/// A conversation through `RankAttention` on every rank of `ring`: two sequences (prompts of
/// 300 and 77 tokens), a second turn (203 and 61), then 6 decode iterations of both and 3 of the
/// first alone; `layers` layers (one layer is the hard case for a cache written in place: no
/// later layer orders a rank's next write after its peers' reads); prefill by `prefill`, decode
/// by `decode`. Every step's outputs of every layer against the f64 oracle.
pub fn check_model(
    ring: &GpuRing,
    name: &str,
    seed: u64,
    prefill: Algorithm,
    decode: Algorithm,
    layers: usize,
) -> anyhow::Result<Vec<CheckLine>> {
    let heads = Heads { n_heads: 8, n_kv_heads: 2, head_dim: 128 };
    let n = ring.world_size();
    let config = CacheConfig { layers, seqs: 2, reserve: 0, choice: Choice::Fixed { prefill, decode } };
    type Plan = (Option<Vec<NewTokens>>, Vec<usize>);
    let mut plans: Vec<Plan> = vec![
        (Some(vec![NewTokens { seq: 0, count: 300 }, NewTokens { seq: 1, count: 77 }]), vec![]),
        (Some(vec![NewTokens { seq: 0, count: 203 }, NewTokens { seq: 1, count: 61 }]), vec![]),
    ];
    plans.extend((0..6).map(|_| (None, vec![0, 1])));
    plans.extend((0..3).map(|_| (None, vec![0])));
    let plans = std::sync::Arc::new(plans);
    let per_rank = ring.run(move |rank| {
        let ops = rank.ops.with_stream(rank.ops.stream().clone());
        let r = rank.rank;
        let mut attn = RankAttention::new(ops, &mut rank.transport, config).map_err(|e| ring_err(r, e))?;
        let mut steps = Vec::new();
        for (turn, seqs) in plans.iter() {
            let mut step = match turn {
                Some(new) => attn.prefill(new),
                None => attn.decode(seqs),
            }
            .map_err(|e| ring_err(r, e))?;
            let out = run_step(&mut attn, &mut step, heads, layers, seed).map_err(|e| ring_err(r, e))?;
            attn.finish(step).map_err(|e| ring_err(r, e))?;
            steps.push(out);
        }
        Ok(steps)
    })?;
    // Per step and layer: every rank's real rows against the oracle of their tokens.
    let mut lines = Vec::new();
    let width = heads.n_heads * heads.head_dim;
    for (i, _) in per_rank[0].iter().enumerate() {
        for layer in 0..layers {
            let (mut got, mut wanted) = (Vec::new(), Vec::new());
            for rank in &per_rank {
                let (tokens, out) = &rank[i][layer];
                for (row, t) in tokens.iter().enumerate() {
                    if let Some(t) = t {
                        got.extend(out[row * width..(row + 1) * width].iter().map(|&x| f64::from(x)));
                        wanted.push((t.seq, Span::new(t.pos, 1)));
                    }
                }
            }
            let (want, _) = workload::oracle(heads, layer_seed(seed, layer), &wanted)?;
            let d = discrepancy(&got, &want);
            let ok = d.within(TOL_OUT);
            let what = if i < 2 { format!("turn {}", i + 1) } else { format!("decode {}", i - 2) };
            let label = format!("N={n} {name} model {prefill}/{decode} {layers}L {what} layer {layer}");
            let line = format!("{label:<60} out relL2 {:.2e} (tol {TOL_OUT:.0e}), rows {}", d.rel_l2, wanted.len());
            lines.push(CheckLine { label, ok, line });
        }
    }
    Ok(lines)
}

/// A model step's failure on a rank, as the ring runner reports job errors.
fn ring_err(rank: usize, e: impl std::error::Error + Send + Sync + 'static) -> cp_nccl::GpuRingError {
    cp_nccl::GpuRingError::Ring(cp_ring::RingError::Compute { rank, step: 0, op: "model step", source: Box::new(e) })
}

/// A decode step's cost through the model API on one GPU, at each `context`.
#[derive(Debug)]
pub struct DecodeCost {
    /// Cached tokens before the first timed step.
    pub context: usize,
    /// Median wall time of a whole step (plan, draw the new row, attend, finish, synchronised).
    pub step_ms: f64,
    /// Median wall time of `attend` alone (append, ring, drain; synchronised).
    pub attend_ms: f64,
    /// Median time of the same attention as one raw `partial` call on tensors laid out as the
    /// step's (the kernel without the model API: the baseline).
    pub kernel_ms: f64,
    /// Rows the cache wrote per step (1: no copy of the cache).
    pub rows_written: f64,
}

/// One sequence prefilled to each `context` (no power of two: the region has room), then
/// `steps` decode steps of one layer (NH=32, NKV=8, DH=128, bf16) through `RankAttention`,
/// and the same attention as a raw kernel call.
pub fn decode_cost(ops: &CudaAttention, contexts: &[usize], steps: usize) -> anyhow::Result<Vec<DecodeCost>> {
    let heads = workload::BENCH_HEADS;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut rows = Vec::new();
    for &context in contexts {
        let comm =
            cp_ring::channel_ring::<cp_attention::cuda::GpuTensor>(1, std::time::Duration::from_secs(60)).remove(0);
        let config = CacheConfig {
            layers: 1,
            seqs: 1,
            reserve: 0,
            choice: Choice::Fixed { prefill: Algorithm::PassKv, decode: Algorithm::GatherQ },
        };
        let mut attn = RankAttention::new(ops.with_stream(ops.stream().clone()), comm, config)?;
        let mut step = attn.prefill(&[NewTokens { seq: 0, count: context }])?;
        let inputs = workload::draw_rows(attn.ops(), step.rows(), heads, 1)?;
        attn.attend(&mut step, 0, &inputs.q, &inputs.k, &inputs.v)?;
        attn.finish(step)?;
        let (mut step_t, mut attend_t, before) = (Vec::new(), Vec::new(), attn.rows_written());
        let mut last = None;
        for _ in 0..steps {
            let start = Instant::now();
            let mut step = attn.decode(&[0])?;
            let inputs = workload::draw_rows(attn.ops(), step.rows(), heads, 1)?;
            attn.ops().synchronize()?;
            let t = Instant::now();
            attn.attend(&mut step, 0, &inputs.q, &inputs.k, &inputs.v)?;
            attn.ops().synchronize()?;
            attend_t.push(t.elapsed().as_secs_f64() * 1e3);
            last = Some(step.layouts().clone());
            attn.finish(step)?;
            step_t.push(start.elapsed().as_secs_f64() * 1e3);
        }
        let written = (attn.rows_written() - before) as f64 / steps as f64;
        // The baseline: the last step's attention as one kernel call on drawn tensors.
        let layouts = last.ok_or_else(|| anyhow::anyhow!("no decode step ran"))?;
        let inputs = workload::draw(ops, 0, &layouts, heads, 2)?;
        let mut kernel_t = Vec::new();
        for _ in 0..steps {
            let t = Instant::now();
            cp_ring::AttentionOps::partial(ops, &inputs.q, &layouts.q[0], &inputs.k, &inputs.v, &layouts.kv[0])?;
            ops.synchronize()?;
            kernel_t.push(t.elapsed().as_secs_f64() * 1e3);
        }
        rows.push(DecodeCost {
            context,
            step_ms: median(step_t),
            attend_ms: median(attend_t),
            kernel_ms: median(kernel_t),
            rows_written: written,
        });
    }
    Ok(rows)
}

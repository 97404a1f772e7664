//! Decode latency: one attention layer's step for a batch of sequences with long caches, on one
//! GPU (the decode kernel alone) and on rings of N GPUs (pass-Q, Algorithm 4, and gather-Q),
//! many steps, medians and tails, with a breakdown per phase.
//!
//! Two modes. `steady` repeats one decode step (its layouts uploaded once): the attention
//! layer's latency with everything a step needs already on the device, which is what a
//! captured graph would replay. `growing` runs successive steps — the round-robin placement
//! moving, caches growing by a token — with every layout uploaded inside the step (the cache
//! of uploaded layouts is emptied after the inputs are drawn), which is what today's host path
//! costs a server that builds new layouts every token.

use std::sync::Arc;
use std::time::Instant;

use cp_attention::reference::Heads;
use cp_nccl::{GpuRing, PhaseTimes, RankInputs};
use cp_ring::{Algorithm, AttentionOps, RingLayouts};
use cudarc::driver::sys::CUevent_flags;
use serde::Serialize;

use crate::stats::{Summary, median};
use crate::workload;

/// One configuration's latency.
#[derive(Clone, Debug, Serialize)]
pub struct DecodeRow {
    /// Tokens cached per sequence.
    pub context: usize,
    /// Sequences decoded together.
    pub batch: usize,
    /// GPUs (1: the decode kernel alone).
    pub world_size: usize,
    /// `decode kernel` for one GPU, else the ring algorithm.
    pub algorithm: String,
    /// `steady` or `growing` (see the module).
    pub mode: String,
    /// GPU time of a step (slowest rank), microseconds.
    pub gpu_us: Summary,
    /// Host wall time of a step (launch to every rank synchronised), microseconds.
    pub wall_us: Summary,
    /// Slowest rank's medians per phase, microseconds: attention.
    pub compute_us: f64,
    /// Query shifts (pass-Q) or the query all-to-all (gather-Q) not hidden.
    pub q_transfer_us: f64,
    /// The partials' all-to-all.
    pub all_to_all_us: f64,
    /// The final merge.
    pub merge_us: f64,
    /// Host time to enqueue a step (the slowest rank's thread), median, microseconds: when it
    /// exceeds the GPU time of the step's work, launches and driver calls set the pace.
    pub enqueue_us: f64,
    /// The slowest enqueueing rank's host time per phase (medians, microseconds): attention,
    /// query transfer, partials' all-to-all, merge.
    pub enqueue_phase_us: [f64; 4],
}

fn summary_us(ms: &[f64]) -> Summary {
    Summary::of(&ms.iter().map(|x| x * 1e3).collect::<Vec<_>>())
}

/// The decode kernel alone on one GPU (`single`: a one-rank ring), `warmup + iters` steps.
pub fn single(
    ring: &GpuRing,
    heads: Heads,
    context: usize,
    batch: usize,
    warmup: usize,
    iters: usize,
) -> anyhow::Result<DecodeRow> {
    let (_, plan) = workload::decode_plan(1, batch, context, 0)?;
    let layouts = Arc::new(plan.layouts().clone());
    let inputs = workload::draw_all(ring, &layouts, heads, 11)?;
    let times = ring.run(move |rank| {
        let cuda = |e: cudarc::driver::DriverError| cp_nccl::GpuRingError::Cuda {
            rank: 0,
            op: "event",
            code: format!("{e:?}"),
        };
        let s = rank.ops.stream().clone();
        let x = &inputs[0];
        let mut out = Vec::new();
        for i in 0..warmup + iters {
            let started = Instant::now();
            let e0 = s.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(cuda)?;
            rank.ops.partial(&x.q, &layouts.q[0], &x.k, &x.v, &layouts.kv[0])?;
            let e1 = s.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(cuda)?;
            let enqueued = started.elapsed().as_secs_f64() * 1e6;
            rank.ops.synchronize()?;
            let wall = started.elapsed().as_secs_f64() * 1e3;
            if i >= warmup {
                out.push((f64::from(e0.elapsed_ms(&e1).map_err(cuda)?), wall, enqueued));
            }
        }
        Ok(out)
    })?;
    let gpu: Vec<f64> = times[0].iter().map(|t| t.0).collect();
    let wall: Vec<f64> = times[0].iter().map(|t| t.1).collect();
    let enqueue: Vec<f64> = times[0].iter().map(|t| t.2).collect();
    let gpu_us = summary_us(&gpu);
    Ok(DecodeRow {
        context,
        batch,
        world_size: 1,
        algorithm: "decode kernel".into(),
        mode: "steady".into(),
        wall_us: summary_us(&wall),
        compute_us: gpu_us.p50,
        q_transfer_us: 0.0,
        all_to_all_us: 0.0,
        merge_us: 0.0,
        enqueue_us: median(&enqueue),
        enqueue_phase_us: [median(&enqueue), 0.0, 0.0, 0.0],
        gpu_us,
    })
}

/// One step on every rank; (slowest rank's phase times, host wall ms).
fn step(
    ring: &GpuRing,
    algorithm: Algorithm,
    layouts: &Arc<RingLayouts>,
    inputs: &Arc<Vec<RankInputs>>,
) -> anyhow::Result<(PhaseTimes, f64)> {
    let started = Instant::now();
    let out = ring.run_algorithm(algorithm, layouts.clone(), inputs.clone())?;
    let wall = started.elapsed().as_secs_f64() * 1e3;
    let times: Vec<PhaseTimes> = out.iter().map(|o| o.times.unwrap_or_default()).collect();
    let mut slowest =
        times.iter().copied().fold(PhaseTimes::default(), |a, b| if b.total_ms > a.total_ms { b } else { a });
    // The enqueue time of the step is its slowest thread's, whichever rank's GPU was slowest.
    if let Some(host) = times.iter().max_by(|a, b| a.host_ms.total_cmp(&b.host_ms)) {
        slowest.host_ms = host.host_ms;
        slowest.host_phase_ms = host.host_phase_ms;
    }
    Ok((slowest, wall))
}

fn row(
    context: usize,
    batch: usize,
    n: usize,
    algorithm: Algorithm,
    mode: &str,
    steps: &[(PhaseTimes, f64)],
) -> DecodeRow {
    let col = |f: fn(&PhaseTimes) -> f64| steps.iter().map(|(t, _)| f(t)).collect::<Vec<f64>>();
    DecodeRow {
        context,
        batch,
        world_size: n,
        algorithm: algorithm.to_string(),
        mode: mode.into(),
        gpu_us: summary_us(&col(|t| t.total_ms)),
        wall_us: summary_us(&steps.iter().map(|s| s.1).collect::<Vec<_>>()),
        compute_us: median(&col(|t| t.compute_ms)) * 1e3,
        q_transfer_us: median(&col(|t| t.wait_ms)) * 1e3,
        all_to_all_us: median(&col(|t| t.all_to_all_ms)) * 1e3,
        merge_us: median(&col(|t| t.merge_ms)) * 1e3,
        enqueue_us: median(&col(|t| t.host_ms)) * 1e3,
        enqueue_phase_us: [0, 1, 2, 3]
            .map(|i| median(&steps.iter().map(|(t, _)| t.host_phase_ms[i]).collect::<Vec<_>>()) * 1e3),
    }
}

/// How a repeated step is issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Issue {
    /// Enqueued by each rank's thread every time (its host work in every step).
    Steady,
    /// Captured once per rank as a CUDA graph (kernels and NCCL transfers) and replayed: one
    /// launch a step. The GPU time is the slowest rank's, from its launch to its end (a rank
    /// that launches early waits for the others inside).
    Graph,
}

/// `algorithm` on `ring`: one decode step of `(context, batch)` repeated `warmup + iters` times,
/// issued as `issue` says.
pub fn repeated(
    ring: &GpuRing,
    heads: Heads,
    algorithm: Algorithm,
    (context, batch): (usize, usize),
    (warmup, iters): (usize, usize),
    issue: Issue,
) -> anyhow::Result<DecodeRow> {
    let graph = issue == Issue::Graph;
    let n = ring.world_size();
    let (_, plan) = workload::decode_plan(n, batch, context, 0)?;
    let layouts = Arc::new(plan.layouts().clone());
    let inputs = workload::draw_all(ring, &layouts, heads, 11)?;
    let captured = if graph {
        ring.forget_captured()?;
        Some(ring.capture(algorithm, layouts.clone(), inputs.clone())?)
    } else {
        None
    };
    let mut steps = Vec::new();
    for i in 0..warmup + iters {
        let s = match captured {
            Some(index) => replay(ring, index)?,
            None => step(ring, algorithm, &layouts, &inputs)?,
        };
        if i >= warmup {
            steps.push(s);
        }
    }
    if captured.is_some() {
        ring.forget_captured()?;
    }
    Ok(row(context, batch, n, algorithm, if graph { "graph" } else { "steady" }, &steps))
}

/// One replay of the captured step `index` on every rank; (the slowest rank's GPU time as the
/// step's total, host wall ms).
fn replay(ring: &GpuRing, index: usize) -> anyhow::Result<(PhaseTimes, f64)> {
    let started = Instant::now();
    let ms = ring.run(move |rank| rank.replay(index))?;
    let wall = started.elapsed().as_secs_f64() * 1e3;
    let total_ms = ms.iter().copied().fold(0.0, f64::max);
    Ok((PhaseTimes { total_ms, ..PhaseTimes::default() }, wall))
}

/// `algorithm` on `ring`, `iters` successive steps (placement moving, caches growing), each
/// step's layouts uploaded inside it.
pub fn growing(
    ring: &GpuRing,
    heads: Heads,
    algorithm: Algorithm,
    context: usize,
    batch: usize,
    iters: usize,
) -> anyhow::Result<DecodeRow> {
    let n = ring.world_size();
    let (mut cache, _) = workload::decode_plan(n, batch, context, 0)?;
    let seqs: Vec<usize> = (0..batch).collect();
    let mut steps = Vec::new();
    for it in 0..iters {
        let plan = cp_shard::DecodePlan::new(&cache, &seqs, it)?;
        let layouts = Arc::new(plan.layouts().clone());
        let inputs = workload::draw_all(ring, &layouts, heads, 11)?;
        ring.run(|rank| {
            rank.ops.forget_layouts();
            Ok(())
        })?;
        steps.push(step(ring, algorithm, &layouts, &inputs)?);
        cache.commit_decode(&plan)?;
    }
    Ok(row(context, batch, n, algorithm, "growing", &steps))
}

/// `algorithm` on `ring`, `iters` successive steps like [`growing`], as one CUDA graph per
/// shape: the keys laid out in regions (a model's cache, [`crate::check::in_regions`]), the
/// step captured once, then each token rebound to the new layouts ([`GpuRing::rebind`]) and
/// replayed. Wall time per token counts the rebind (host work and its small copies) and the
/// replay; the capture (first token) is not counted. Inputs are written once: the values do not
/// change the time.
pub fn rebound(
    ring: &GpuRing,
    heads: Heads,
    algorithm: Algorithm,
    context: usize,
    batch: usize,
    iters: usize,
) -> anyhow::Result<DecodeRow> {
    let n = ring.world_size();
    let (mut cache, _) = workload::decode_plan(n, batch, context, 0)?;
    let seqs: Vec<usize> = (0..batch).collect();
    // Each rank holds about context / N tokens of a sequence and gains at most one every N tokens.
    let region = context.div_ceil(n) + iters + 16;
    ring.forget_captured()?;
    let mut index = None;
    let mut steps = Vec::new();
    for it in 0..iters {
        let plan = cp_shard::DecodePlan::new(&cache, &seqs, it)?;
        let layouts = Arc::new(crate::check::in_regions(plan.layouts(), batch, region)?);
        let started = Instant::now();
        let i = match index {
            Some(i) => {
                ring.rebind(i, layouts.clone())?;
                i
            }
            None => {
                let inputs = workload::draw_all(ring, &layouts, heads, 11)?;
                *index.insert(ring.capture(algorithm, layouts.clone(), inputs)?)
            }
        };
        let (times, _) = replay(ring, i)?;
        if it > 0 {
            steps.push((times, started.elapsed().as_secs_f64() * 1e3));
        }
        cache.commit_decode(&plan)?;
    }
    ring.forget_captured()?;
    Ok(row(context, batch, n, algorithm, "rebound", &steps))
}

/// Prints one row.
pub fn print(r: &DecodeRow, single: Option<&DecodeRow>) {
    let vs = single.map_or(String::new(), |s| {
        format!(" | vs one GPU: GPU {:.2}x, wall {:.2}x", s.gpu_us.p50 / r.gpu_us.p50, s.wall_us.p50 / r.wall_us.p50)
    });
    println!(
        "  ctx {:>7} B={:<3} N={} {:<13} {:<7}: GPU p50 {:>8.1} us p99 {:>8.1} | wall p50 {:>8.1} p99 {:>8.1} | attn {:>7.1} q {:>6.1} a2a {:>6.1} merge {:>5.1} | enqueue {:>7.1} ({:.0}/{:.0}/{:.0}/{:.0}){vs}",
        r.context,
        r.batch,
        r.world_size,
        r.algorithm,
        r.mode,
        r.gpu_us.p50,
        r.gpu_us.p99,
        r.wall_us.p50,
        r.wall_us.p99,
        r.compute_us,
        r.q_transfer_us,
        r.all_to_all_us,
        r.merge_us,
        r.enqueue_us,
        r.enqueue_phase_us[0],
        r.enqueue_phase_us[1],
        r.enqueue_phase_us[2],
        r.enqueue_phase_us[3]
    );
}

//! Prefill on a ring against the same attention on one GPU: per-rank phase times, parallel
//! efficiency, and the cost model's prediction and the heuristic's choice from this machine's
//! measured rates.

use std::sync::Arc;
use std::time::Instant;

use cp_attention::cuda::PrefillKernel;
use cp_attention::reference::Heads;
use cp_heuristic::{Compute, CostModel, Decision, Hardware, Inputs, Link, ModelShape, Rule, Workload, choose};
use cp_nccl::{GpuRing, PhaseTimes, Placement, RankInputs};
use cp_ring::{Algorithm, RingLayouts};
use serde::Serialize;

use crate::stats::median;
use crate::workload;

/// Median phase times of one rank, milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RankTimes {
    /// Partial attentions and merges of the ring steps.
    pub compute_ms: f64,
    /// Compute stream stalled on a transfer (exposed communication).
    pub wait_ms: f64,
    /// Pass-Q's all-to-all (with the stall on it).
    pub all_to_all_ms: f64,
    /// Pass-Q's final merge.
    pub merge_ms: f64,
    /// First phase's start to last phase's end on the GPU.
    pub total_ms: f64,
}

/// A ring's timing for one workload and algorithm.
#[derive(Clone, Debug, Serialize)]
pub struct RingRun {
    /// The algorithm.
    pub algorithm: String,
    /// Ranks.
    pub world_size: usize,
    /// Per-rank medians.
    pub per_rank: Vec<RankTimes>,
    /// The slowest rank's median GPU total, ms.
    pub slowest_ms: f64,
    /// Median host wall time of a whole run (dispatch to every rank finished), ms.
    pub wall_ms: f64,
    /// `single / (N * slowest)`.
    pub efficiency: f64,
    /// The cost model's total for this algorithm, ms.
    pub predicted_ms: f64,
}

/// Runs `algorithm` on `ring` for at least `warmup` untimed runs and [`crate::WARM_UP`], then
/// `iters` timed runs; per-rank medians of the timed runs and the median host wall time. The
/// time-based warm-up matters on several GPUs: on 4 H100s (session 9) the algorithm timed right
/// after the one-GPU baseline (1.6 s of load on GPU 0 alone) ran 9-15% longer on rank 0 than on
/// the others after two warm-up runs; after 0.6 s of warm-up rank 0 was no longer the slowest.
pub fn time_ring(
    ring: &GpuRing,
    algorithm: Algorithm,
    layouts: &Arc<RingLayouts>,
    inputs: &Arc<Vec<RankInputs>>,
    warmup: usize,
    iters: usize,
) -> anyhow::Result<(Vec<RankTimes>, f64)> {
    let warming = Instant::now();
    let mut runs = 0;
    while runs < warmup || warming.elapsed() < crate::WARM_UP {
        ring.run_algorithm(algorithm, layouts.clone(), inputs.clone())?;
        runs += 1;
    }
    let mut samples: Vec<Vec<PhaseTimes>> = Vec::new();
    let mut walls = Vec::new();
    for _ in 0..iters {
        let started = Instant::now();
        let out = ring.run_algorithm(algorithm, layouts.clone(), inputs.clone())?;
        walls.push(started.elapsed().as_secs_f64() * 1e3);
        samples.push(out.iter().map(|o| o.times.unwrap_or_default()).collect());
    }
    let n = ring.world_size();
    let col = |r: usize, f: fn(&PhaseTimes) -> f64| median(&samples.iter().map(|s| f(&s[r])).collect::<Vec<_>>());
    let per_rank = (0..n)
        .map(|r| RankTimes {
            compute_ms: col(r, |t| t.compute_ms),
            wait_ms: col(r, |t| t.wait_ms),
            all_to_all_ms: col(r, |t| t.all_to_all_ms),
            merge_ms: col(r, |t| t.merge_ms),
            total_ms: col(r, |t| t.total_ms),
        })
        .collect();
    Ok((per_rank, median(&walls)))
}

/// What a prefill comparison runs on: a one-GPU ring (the baseline) and the N-rank ring, with
/// the N-rank ring's measured link.
#[derive(Debug)]
pub struct Rings<'a> {
    /// One rank on GPU 0.
    pub single: &'a GpuRing,
    /// The ring under test.
    pub ring: &'a GpuRing,
    /// Bytes a rank sends per second in a ring shift.
    pub link_bytes_per_s: f64,
    /// Fixed cost of a message, seconds.
    pub link_latency_s: f64,
    /// Whether the ring's transfers run under its attention kernel ([`transfers_overlap`]).
    pub transfers_overlap: bool,
    /// Attention shape.
    pub heads: Heads,
}

/// One workload: the baseline, the heuristic's view, and each algorithm's run.
#[derive(Clone, Debug, Serialize)]
pub struct PrefillReport {
    /// New tokens.
    pub t: usize,
    /// Cached tokens.
    pub p: usize,
    /// Ranks.
    pub world_size: usize,
    /// One GPU: median GPU time, ms.
    pub single_ms: f64,
    /// One GPU: the attention rate it implies (Table 3's count), TFLOP/s.
    pub rate_tflops: f64,
    /// The link the heuristic sees: GB/s and microseconds a message.
    pub link_gb_per_s: f64,
    /// Fixed cost of a message, microseconds.
    pub link_latency_us: f64,
    /// `auto`'s choice with these rates (Algorithm 5; gather-KV for short prompts).
    pub heuristic: String,
    /// Whether the cost model predicts the ring beats one GPU.
    pub cp_predicted_to_win: bool,
    /// The cost model's one-GPU time, ms.
    pub predicted_single_ms: f64,
    /// Each algorithm's run.
    pub runs: Vec<RingRun>,
}

impl PrefillReport {
    /// The run of `algorithm`, if it ran.
    pub fn run(&self, algorithm: Algorithm) -> Option<&RingRun> {
        self.runs.iter().find(|r| r.algorithm == algorithm.to_string())
    }
}

/// The heuristic's inputs from measured rates.
pub fn inputs(heads: Heads, rate: f64, link: Link, n: usize, t: usize, p: usize) -> Inputs {
    Inputs {
        model: ModelShape {
            n_heads: heads.n_heads,
            n_kv_heads: heads.n_kv_heads,
            head_dim: heads.head_dim,
            elem_bytes: 2,
        },
        hardware: Hardware { compute: Compute::custom(rate), link },
        world_size: n,
        workload: Workload { new_tokens: t, cached_tokens: p },
    }
}

/// Which algorithms a bench runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// Ring pass-KV.
    PassKv,
    /// Ring pass-Q.
    PassQ,
    /// Gather-Q.
    GatherQ,
    /// Gather-KV.
    GatherKv,
    /// What `auto` (Algorithm 5, gather-KV for short prompts) chooses with this machine's
    /// measured rates.
    Auto,
    /// Pass-KV, pass-Q and gather-KV.
    All,
}

impl Which {
    /// The algorithms to run, given the heuristic's decision.
    pub fn algorithms(self, decision: &Decision) -> Vec<Algorithm> {
        match self {
            Which::PassKv => vec![Algorithm::PassKv],
            Which::PassQ => vec![Algorithm::PassQ],
            Which::GatherQ => vec![Algorithm::GatherQ],
            Which::GatherKv => vec![Algorithm::GatherKv],
            Which::Auto => vec![Algorithm::from(decision.mode)],
            Which::All => vec![Algorithm::PassKv, Algorithm::PassQ, Algorithm::GatherKv],
        }
    }
}

/// Whether `ring`'s transfers run while its attention kernel runs: not over NCCL on 3+ GPUs
/// whose prefill is the persistent TMA kernel (measured on 4 × H100, sessions 6 and 8: each
/// shift waits until the kernel ends, with or without multiprocessors left free for NCCL), so
/// `auto`'s cost model adds every transfer there. On 2 GPUs the one shift is issued before the
/// first attention launch; peer copies run on the copy engines.
pub fn transfers_overlap(ring: &GpuRing) -> anyhow::Result<bool> {
    if !matches!(ring.placement(), Placement::Gpus(devices) if devices.len() >= 3) {
        return Ok(true);
    }
    let persistent = ring.run(|rank| Ok(matches!(rank.ops.prefill, PrefillKernel::Tma { .. })))?;
    Ok(!persistent.into_iter().any(|p| p))
}

/// Predicted total of `algorithm` in `cost`, ms.
fn predicted_ms(cost: &CostModel, algorithm: Algorithm) -> f64 {
    match algorithm {
        Algorithm::PassKv => cost.pass_kv.total_s * 1e3,
        // Gather-Q moves the same bytes as pass-Q, without the overlap: an upper bound.
        Algorithm::PassQ | Algorithm::GatherQ => cost.pass_q.total_s * 1e3,
        Algorithm::GatherKv => cost.gather_kv.total_s * 1e3,
    }
}

/// Times one workload of `t` new tokens over `p` cached: the one-GPU baseline, then each
/// algorithm `which` selects on the ring.
pub fn bench(
    rings: &Rings<'_>,
    t: usize,
    p: usize,
    which: Which,
    warmup: usize,
    iters: usize,
) -> anyhow::Result<(PrefillReport, Decision)> {
    let n = rings.ring.world_size();
    let seed = 3;
    let single_layouts = Arc::new(workload::turn(1, t, p)?.layouts().clone());
    let single_inputs = workload::draw_all(rings.single, &single_layouts, rings.heads, seed)?;
    let (single, _) = time_ring(rings.single, Algorithm::PassKv, &single_layouts, &single_inputs, warmup, iters)?;
    drop(single_inputs);
    let single_ms = single[0].total_ms;
    let d = (rings.heads.n_heads * rings.heads.head_dim) as f64;
    let rate = 4.0 * t as f64 * (t + p) as f64 * d / (single_ms / 1e3);
    let link = Link::custom(rings.link_bytes_per_s).with_latency(rings.link_latency_s);
    let link = if rings.transfers_overlap { link } else { link.without_overlap() };
    let decision = choose(Rule::Auto, &inputs(rings.heads, rate, link, n, t, p))?;
    let layouts = Arc::new(workload::turn(n, t, p)?.layouts().clone());
    let ring_inputs = workload::draw_all(rings.ring, &layouts, rings.heads, seed)?;
    let mut runs = Vec::new();
    for algorithm in which.algorithms(&decision) {
        let (per_rank, wall_ms) = time_ring(rings.ring, algorithm, &layouts, &ring_inputs, warmup, iters)?;
        let slowest_ms = per_rank.iter().map(|r| r.total_ms).fold(0.0, f64::max);
        runs.push(RingRun {
            algorithm: algorithm.to_string(),
            world_size: n,
            per_rank,
            slowest_ms,
            wall_ms,
            efficiency: single_ms / (n as f64 * slowest_ms),
            predicted_ms: predicted_ms(&decision.cost, algorithm),
        });
    }
    let report = PrefillReport {
        t,
        p,
        world_size: n,
        single_ms,
        rate_tflops: rate / 1e12,
        link_gb_per_s: rings.link_bytes_per_s / 1e9,
        link_latency_us: rings.link_latency_s * 1e6,
        heuristic: decision.mode.to_string(),
        cp_predicted_to_win: decision.cost.cp_wins(),
        predicted_single_ms: decision.cost.single_s * 1e3,
        runs,
    };
    Ok((report, decision))
}

/// Prints a report as the bench does.
pub fn print(report: &PrefillReport, decision: &Decision, where_: &str) {
    println!(
        "  T={} over P={}: one GPU {:.3} ms ({:.0} TFLOP/s, Table 3 count); link {:.0} GB/s, {:.1} us a message",
        report.t, report.p, report.single_ms, report.rate_tflops, report.link_gb_per_s, report.link_latency_us
    );
    print!("  auto (this machine's rates): {decision}");
    for run in &report.runs {
        println!(
            "  {} on {where_}: slowest rank {:.3} ms ({:.2}x one GPU, parallel efficiency {:.1}%), host wall {:.3} ms; predicted {:.3} ms",
            run.algorithm,
            run.slowest_ms,
            run.slowest_ms / report.single_ms,
            100.0 * run.efficiency,
            run.wall_ms,
            run.predicted_ms
        );
        for (r, x) in run.per_rank.iter().enumerate() {
            println!(
                "    rank {r}: compute {:>8.3} ms, exposed comm {:>7.3} ms, all-to-all {:>7.3} ms, merge {:>6.3} ms, idle {:>7.3} ms",
                x.compute_ms,
                x.wait_ms,
                x.all_to_all_ms,
                x.merge_ms,
                (run.slowest_ms - x.total_ms).max(0.0)
            );
        }
    }
}

//! The ring on GPU ranks against the f64 oracle: every algorithm, partial prefill of a batch of
//! two sequences over a cache, and decode iterations, on every placement this machine has.

use std::sync::Arc;
use std::time::Duration;

use cp_attention::cuda::GpuDType;
use cp_attention::reference::{Heads, discrepancy};
use cp_nccl::{GpuRing, Placement, RingOptions};
use cp_ring::Algorithm;
use cp_shard::{CacheMap, DecodePlan, Layout, NewTokens, RingLayouts, Run, Span, TurnPlan, gather_rows};

use crate::workload;

/// Tolerance (relative L2) of a GPU output against the oracle, for inputs of `dtype`: P is
/// rounded to the input dtype before P V (8 mantissa bits for bf16, 11 for f16), partials and
/// merges are f32. The one table for the kernel checks and the ring checks.
pub const fn tol_out(dtype: GpuDType) -> f64 {
    match dtype {
        GpuDType::F16 => 2e-3,
        _ => 1e-2,
    }
}

/// Tolerance of a ring's outputs (bf16 inputs) against the oracle.
pub const TOL_OUT: f64 = tol_out(GpuDType::Bf16);
/// LSE comes from f32 scores of exactly representable products.
pub const TOL_LSE: f64 = 1e-5;

/// One checked step.
#[derive(Debug)]
pub struct CheckLine {
    /// What ran.
    pub label: String,
    /// Within tolerance, no non-finite mismatch.
    pub ok: bool,
    /// The report line.
    pub line: String,
}

/// Runs `algorithm` on `ring` over `layouts` with drawn inputs and checks the `wanted` rows.
pub fn check_step(
    ring: &GpuRing,
    heads: Heads,
    seed: u64,
    algorithm: Algorithm,
    layouts: &Arc<RingLayouts>,
    wanted: &[(usize, Span)],
    label: String,
) -> anyhow::Result<CheckLine> {
    let l = layouts.clone();
    let per_rank = ring.run(move |rank| {
        let inputs = workload::draw(&rank.ops, rank.rank, &l, heads, seed)?;
        let out = rank.run_algorithm(algorithm, &l, &inputs)?;
        let s = rank.ops.stream().clone();
        Ok((out.partial.out.download(&s)?, out.partial.lse.download(&s)?))
    })?;
    judge(heads, seed, layouts, &per_rank, wanted, label)
}

/// Compares per-rank downloads (`(out, lse)` in the order of `layouts.q`) of the `wanted` rows
/// with the oracle of `seed`.
fn judge(
    heads: Heads,
    seed: u64,
    layouts: &RingLayouts,
    per_rank: &[(Vec<f32>, Vec<f32>)],
    wanted: &[(usize, Span)],
    label: String,
) -> anyhow::Result<CheckLine> {
    let f64s = |v: &Vec<f32>| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
    let outs: Vec<Vec<f64>> = per_rank.iter().map(|(o, _)| f64s(o)).collect();
    let lses: Vec<Vec<f64>> = per_rank.iter().map(|(_, l)| f64s(l)).collect();
    let outs_r: Vec<&[f64]> = outs.iter().map(Vec::as_slice).collect();
    let lses_r: Vec<&[f64]> = lses.iter().map(Vec::as_slice).collect();
    let got_out = gather_rows(&layouts.q, &outs_r, heads.n_heads * heads.head_dim, wanted)?.concat();
    let got_lse = gather_rows(&layouts.q, &lses_r, heads.n_heads, wanted)?.concat();
    let (want_out, want_lse) = workload::oracle(heads, seed, wanted)?;
    let (d_out, d_lse) = (discrepancy(&got_out, &want_out), discrepancy(&got_lse, &want_lse));
    let ok = d_out.within(TOL_OUT) && d_lse.within(TOL_LSE);
    let line = format!(
        "{label:<52} out relL2 {:.2e} (tol {TOL_OUT:.0e}), lse relL2 {:.2e}, non-finite mismatches {}",
        d_out.rel_l2,
        d_lse.rel_l2,
        d_out.non_finite_mismatches + d_lse.non_finite_mismatches
    );
    Ok(CheckLine { label, ok, line })
}

/// Captures one step of `algorithm` as a CUDA graph on every rank, then replays it `replays`
/// times, each time with new inputs (drawn from another seed and copied into the captured
/// buffers) and checks every replay's output against the oracle of its own inputs.
/// `step`: the layouts and the rows of them to check.
pub fn check_graph(
    ring: &GpuRing,
    heads: Heads,
    seed: u64,
    algorithm: Algorithm,
    step: (&Arc<RingLayouts>, &[(usize, Span)]),
    replays: usize,
    label: &str,
) -> anyhow::Result<Vec<CheckLine>> {
    let (layouts, wanted) = step;
    ring.forget_captured()?;
    let inputs = workload::draw_all(ring, layouts, heads, seed)?;
    let index = ring.capture(algorithm, layouts.clone(), inputs)?;
    let mut lines = Vec::new();
    for i in 0..replays {
        let s_i = seed.wrapping_add(1 + i as u64);
        lines.push(replay_checked(ring, heads, s_i, index, (layouts, wanted), format!("{label} replay {i}"))?);
    }
    ring.forget_captured()?;
    Ok(lines)
}

/// The step `rank` captured as `index`, or an error saying it was not.
fn captured(rank: &cp_nccl::GpuRank, index: usize) -> cp_nccl::Result<&cp_nccl::CapturedStep> {
    rank.captured(index).ok_or(cp_nccl::GpuRingError::Misuse {
        rank: rank.rank,
        op: "check_graph",
        what: "the step was not captured",
    })
}

/// Graph replays on `ring` against the oracle: a partial prefill (pass-KV), then decode steps
/// of three sequences of different lengths (pass-Q and gather-Q) for `N + 1` iterations (the
/// round-robin placement wraps around), then a step after one sequence finished; each step
/// captured once and replayed `replays` times with new inputs every time.
pub fn check_graphs(ring: &GpuRing, name: &str, seed: u64, replays: usize) -> anyhow::Result<Vec<CheckLine>> {
    let heads = Heads { n_heads: 8, n_kv_heads: 2, head_dim: 128 };
    let n = ring.world_size();
    let mut cache = CacheMap::new(n, 3)?;
    let prompt =
        [NewTokens { seq: 0, count: 1000 }, NewTokens { seq: 1, count: 2999 }, NewTokens { seq: 2, count: 77 }];
    let first = TurnPlan::new(&cache, &prompt)?;
    cache.commit_turn(&first)?;
    let mut lines = Vec::new();
    let turn = TurnPlan::new(&cache, &[NewTokens { seq: 0, count: 203 }, NewTokens { seq: 2, count: 61 }])?;
    let layouts = Arc::new(turn.layouts().clone());
    let label = format!("N={n} {name} graph pass-KV partial prefill");
    lines.extend(check_graph(ring, heads, seed, Algorithm::PassKv, (&layouts, &turn.new_spans()), replays, &label)?);
    cache.commit_turn(&turn)?;
    for it in 0..=n + 1 {
        // The last iteration decodes two of the three: sequence 1 has finished.
        let seqs: &[usize] = if it <= n { &[0, 1, 2] } else { &[0, 2] };
        let plan = DecodePlan::new(&cache, seqs, it)?;
        let layouts = Arc::new(plan.layouts().clone());
        for algorithm in [Algorithm::PassQ, Algorithm::GatherQ] {
            let label = format!("N={n} {name} graph {algorithm} decode {it} of {seqs:?}");
            lines.extend(check_graph(ring, heads, seed, algorithm, (&layouts, &plan.new_spans()), replays, &label)?);
        }
        cache.commit_decode(&plan)?;
    }
    Ok(lines)
}

/// `layouts` with each rank's keys laid out in regions, as a model's cache keeps them
/// (cp-model): `region` rows per sequence of `n_seqs`, its tokens first, padding after. Every
/// rank's key block then keeps its rows while the sequences grow.
pub fn in_regions(layouts: &RingLayouts, n_seqs: usize, region: usize) -> anyhow::Result<RingLayouts> {
    let kv = layouts
        .kv
        .iter()
        .map(|compact| {
            let mut spans: Vec<Vec<Span>> = vec![Vec::new(); n_seqs];
            for run in compact.runs() {
                if let Run::Tokens { seq, span } = *run {
                    spans.get_mut(seq).ok_or_else(|| anyhow::anyhow!("sequence {seq} of {n_seqs}"))?.push(span);
                }
            }
            let mut l = Layout::new();
            for (seq, spans) in spans.into_iter().enumerate() {
                let start = l.len();
                spans.into_iter().for_each(|span| l.push_tokens(seq, span));
                if l.len() - start > region {
                    anyhow::bail!(
                        "sequence {seq} has {} rows on a rank, more than its region of {region}",
                        l.len() - start
                    );
                }
                l.pad_to(start + region);
            }
            Ok(l)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(RingLayouts { q: layouts.q.clone(), kv })
}

/// One graph per shape, not per token: a decode step of three sequences of different lengths
/// (keys in regions, [`in_regions`]) is captured once and, for `tokens` tokens, rebound to the
/// next token's layouts ([`GpuRing::rebind`]) and replayed with new inputs, each replay checked
/// against the oracle — the placement wrapping around the ring twice, the cache growing on a
/// different rank each token. Near the end sequence 1 finishes: where that changes the query
/// blocks' rows (N < 3) the rebind must refuse and the step is captured anew; otherwise the
/// same graph goes on. Then one long sequence (9000 tokens): query blocks of padding only
/// rebound to real queries as the placement moves, keys in several splits. Pass-Q and
/// gather-Q. Each run's last line counts the captures against what the shapes require.
pub fn check_rebound(ring: &GpuRing, name: &str, seed: u64, tokens: usize) -> anyhow::Result<Vec<CheckLine>> {
    let mut lines = Vec::new();
    for algorithm in [Algorithm::PassQ, Algorithm::GatherQ] {
        lines.extend(rebound_run(ring, name, seed, algorithm, &[300, 77, 1200], tokens, true)?);
        // One long sequence: every rank but one holds a query block of padding only (rebound
        // next to a real query), and the keys take several splits.
        lines.extend(rebound_run(ring, name, seed ^ 0x77, algorithm, &[9000], tokens, false)?);
    }
    Ok(lines)
}

/// [`check_rebound`] for one algorithm and prompt (`lens`: tokens per sequence); with `finish`,
/// sequence 1 leaves the batch for the last two tokens.
fn rebound_run(
    ring: &GpuRing,
    name: &str,
    seed: u64,
    algorithm: Algorithm,
    lens: &[usize],
    tokens: usize,
    finish: bool,
) -> anyhow::Result<Vec<CheckLine>> {
    let heads = Heads { n_heads: 8, n_kv_heads: 2, head_dim: 128 };
    let n = ring.world_size();
    let mut lines = Vec::new();
    {
        let n_seqs = lens.len();
        let mut cache = CacheMap::new(n, n_seqs)?;
        let prompt: Vec<NewTokens> = lens.iter().enumerate().map(|(seq, &count)| NewTokens { seq, count }).collect();
        let first = TurnPlan::new(&cache, &prompt)?;
        cache.commit_turn(&first)?;
        let longest = lens.iter().copied().max().unwrap_or(0);
        let region = longest.div_ceil(n) + tokens + 16;
        let all: Vec<usize> = (0..n_seqs).collect();
        let fewer: Vec<usize> = all.iter().copied().filter(|&s| s != 1).collect();
        ring.forget_captured()?;
        let mut captured: Option<(usize, Vec<usize>, Vec<usize>)> = None;
        let (mut captures, mut refusals_ok) = (0, true);
        // One capture per shape: a second only where a sequence leaving the batch changes the
        // query blocks' rows (ceil(B / N)); the key blocks keep theirs (regions).
        let wanted_captures = 1 + usize::from(finish && all.len().div_ceil(n) != fewer.len().div_ceil(n));
        for it in 0..tokens {
            let seqs: &[usize] = if finish && it + 2 >= tokens { &fewer } else { &all };
            let plan = DecodePlan::new(&cache, seqs, it)?;
            let layouts = Arc::new(in_regions(plan.layouts(), n_seqs, region)?);
            let shape = |l: &[Layout]| l.iter().map(Layout::len).collect::<Vec<_>>();
            let (q_rows, kv_rows) = (shape(&layouts.q), shape(&layouts.kv));
            let s_i = seed.wrapping_add(0x100 * it as u64 + 1);
            let same = captured.as_ref().is_some_and(|(_, q, kv)| *q == q_rows && *kv == kv_rows);
            let index = match &captured {
                Some((index, ..)) if same => {
                    ring.rebind(*index, layouts.clone())?;
                    *index
                }
                _ => {
                    if let Some((index, ..)) = &captured {
                        // Another shape: the rebind must refuse (and the ring forget the step).
                        let refused = ring.rebind(*index, layouts.clone()).err().map(|e| e.to_string());
                        refusals_ok &= refused.is_some_and(|e| e.contains("rows differ"));
                    }
                    captures += 1;
                    let inputs = workload::draw_all(ring, &layouts, heads, s_i)?;
                    let index = ring.capture(algorithm, layouts.clone(), inputs)?;
                    captured = Some((index, q_rows, kv_rows));
                    index
                }
            };
            let label = format!("N={n} {name} graph {algorithm} rebound {lens:?}: token {it} of {seqs:?}");
            let mut line = replay_checked(ring, heads, s_i, index, (&layouts, &plan.new_spans()), label)?;
            // The device arguments, element by element (a stale key position of a new row
            // would hide in the output's tolerance: every key of a decode row is visible).
            let exact = ring.run(move |rank| rank.bindings_match(index))?.iter().all(|&m| m);
            line.ok &= exact;
            line.line.push_str(if exact { ", device arguments exact" } else { ", device arguments STALE" });
            lines.push(line);
            cache.commit_decode(&plan)?;
        }
        ring.forget_captured()?;
        let ok = captures == wanted_captures && refusals_ok;
        lines.push(CheckLine {
            label: format!("N={n} {name} {algorithm} captures"),
            ok,
            line: format!(
                "N={n} {name} graph {algorithm} {lens:?}: {tokens} tokens on {captures} capture(s) (one per \
                 shape: {wanted_captures}); rebinds across shapes refused: {refusals_ok}"
            ),
        });
    }
    Ok(lines)
}

/// Writes new inputs (drawn from `seed` for `layouts`) into the buffers of the step captured as
/// `index` on every rank, replays it, and checks the `wanted` rows against the oracle.
fn replay_checked(
    ring: &GpuRing,
    heads: Heads,
    seed: u64,
    index: usize,
    step: (&Arc<RingLayouts>, &[(usize, Span)]),
    label: String,
) -> anyhow::Result<CheckLine> {
    let (layouts, wanted) = step;
    let l = layouts.clone();
    let per_rank = ring.run(move |rank| {
        let fresh = workload::draw(&rank.ops, rank.rank, &l, heads, seed)?;
        let inputs = captured(rank, index)?.inputs();
        let (mut q, mut k, mut v) = (inputs.q.clone(), inputs.k.clone(), inputs.v.clone());
        use cp_ring::KvOps;
        for (dst, src) in [(&mut q, &fresh.q), (&mut k, &fresh.k), (&mut v, &fresh.v)] {
            let rows = src.shape()[0];
            rank.ops.copy_rows(dst, 0, src, 0, rows)?;
        }
        rank.replay(index)?;
        let output = captured(rank, index)?.output();
        let s = rank.ops.stream().clone();
        Ok((output.out.download(&s)?, output.lse.download(&s)?))
    })?;
    judge(heads, seed, layouts, &per_rank, wanted, label)
}

/// A partial-prefill turn of two sequences (300 and 77 cached; 203 and 61 new: lengths that
/// are no multiple of 2N), every algorithm; then two decode iterations with pass-Q and gather-Q.
/// Padding rows hold NaN throughout.
pub fn check_ring(ring: &GpuRing, name: &str, seed: u64) -> anyhow::Result<Vec<CheckLine>> {
    let heads = Heads { n_heads: 8, n_kv_heads: 2, head_dim: 128 };
    let n = ring.world_size();
    let mut lines = Vec::new();
    let mut cache = CacheMap::new(n, 2)?;
    let first = TurnPlan::new(&cache, &[NewTokens { seq: 0, count: 300 }, NewTokens { seq: 1, count: 77 }])?;
    cache.commit_turn(&first)?;
    let turn = TurnPlan::new(&cache, &[NewTokens { seq: 0, count: 203 }, NewTokens { seq: 1, count: 61 }])?;
    let layouts = Arc::new(turn.layouts().clone());
    for algorithm in Algorithm::ALL {
        let label = format!("N={n} {name} {algorithm} partial prefill");
        lines.push(check_step(ring, heads, seed, algorithm, &layouts, &turn.new_spans(), label)?);
    }
    cache.commit_turn(&turn)?;
    for it in 0..2 {
        let plan = DecodePlan::new(&cache, &[0, 1], it)?;
        let layouts = Arc::new(plan.layouts().clone());
        for algorithm in [Algorithm::PassQ, Algorithm::GatherQ] {
            let label = format!("N={n} {name} {algorithm} decode iteration {it}");
            lines.push(check_step(ring, heads, seed, algorithm, &layouts, &plan.new_spans(), label)?);
        }
        cache.commit_decode(&plan)?;
    }
    Ok(lines)
}

/// The placements to check on a machine with `gpus` GPUs: 1..=8 ranks on GPU 0 (direct copies),
/// NCCL with one rank, and one GPU per rank for 2..=gpus ranks over NCCL and over peer copies.
pub fn placements(gpus: usize) -> Vec<(Placement, String)> {
    let mut all: Vec<(Placement, String)> =
        (1..=8).map(|n| (Placement::SameGpu { device: 0, world_size: n }, "same-GPU".to_string())).collect();
    all.push((Placement::Gpus(vec![0]), "NCCL".into()));
    for n in 2..=gpus {
        all.push((Placement::Gpus((0..n).collect()), format!("NCCL {n} GPUs")));
        all.push((Placement::Peer((0..n).collect()), format!("peer {n} GPUs")));
    }
    all
}

/// Checks every placement; prints each line; returns whether all passed.
pub fn check_all(gpus: usize, timeout: Duration) -> anyhow::Result<bool> {
    let seed = 0x5eed ^ u64::from(std::process::id());
    let mut all_ok = true;
    let mut rings: Vec<(Placement, String, RingOptions)> =
        placements(gpus).into_iter().map(|(p, name)| (p, name, RingOptions::default())).collect();
    if gpus >= 2 {
        // Multiprocessors left to NCCL: a smaller persistent prefill grid, capped NCCL kernels.
        let options = RingOptions { transfer_sms: Some(8), ..RingOptions::default() };
        rings.push((Placement::Gpus((0..gpus).collect()), format!("NCCL {gpus} GPUs, 8 SMs to NCCL"), options));
    }
    for (placement, name, options) in rings {
        let ring = GpuRing::with_options(placement, timeout, options)?;
        for line in check_ring(&ring, &name, seed)? {
            println!("  {} {}", if line.ok { "[ok]    " } else { "[FAILED]" }, line.line);
            all_ok &= line.ok;
        }
    }
    Ok(all_ok)
}

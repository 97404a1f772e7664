//! The paper's Table 4 on this machine: P + T fixed, the miss rate swept; pass-KV and pass-Q
//! timed at each point, beside the cost model's predictions and the heuristic's choice; the
//! empirical rule fitted to the measured winners.

use cp_heuristic::{EmpiricalRule, Mode, Observation, Workload};
use serde::Serialize;

use crate::prefill::{self, RankTimes, Rings, Which};

/// The miss rates of Table 4, in percent.
pub const TABLE4_MISS_RATES: [f64; 8] = [1.0, 2.5, 3.25, 5.0, 10.0, 20.0, 50.0, 100.0];

/// One miss rate.
#[derive(Clone, Debug, Serialize)]
pub struct SweepPoint {
    /// Miss rate, percent.
    pub miss_rate_pct: f64,
    /// New tokens.
    pub t: usize,
    /// Cached tokens.
    pub p: usize,
    /// One GPU, ms.
    pub single_ms: f64,
    /// Pass-KV's slowest rank, ms.
    pub pass_kv_ms: f64,
    /// Pass-Q's slowest rank, ms.
    pub pass_q_ms: f64,
    /// Pass-Q's all-to-all on its slowest rank, ms.
    pub pass_q_all_to_all_ms: f64,
    /// Gather-KV's slowest rank, ms.
    pub gather_kv_ms: f64,
    /// Predicted gather-KV, ms.
    pub predicted_gather_kv_ms: f64,
    /// Predicted pass-KV, ms.
    pub predicted_pass_kv_ms: f64,
    /// Predicted pass-Q, ms.
    pub predicted_pass_q_ms: f64,
    /// What `auto` runs (Algorithm 5; gather-KV where the cost model says short prompt).
    pub heuristic: String,
    /// The fastest of the three measured.
    pub winner: String,
    /// What `auto` ran, ms (the chosen algorithm's measured time: the same run).
    pub auto_ms: f64,
    /// `auto`'s parallel efficiency.
    pub auto_efficiency: f64,
    /// `auto` over the winner (1.0 when it chose the winner).
    pub auto_over_winner: f64,
    /// Whether the cost model predicts the ring beats one GPU.
    pub cp_predicted_to_win: bool,
    /// Pass-KV's slowest rank, by phase.
    pub pass_kv_slowest: RankTimes,
    /// Pass-Q's slowest rank, by phase.
    pub pass_q_slowest: RankTimes,
}

/// The whole sweep.
#[derive(Clone, Debug, Serialize)]
pub struct SweepReport {
    /// Ranks.
    pub world_size: usize,
    /// P + T.
    pub total: usize,
    /// The points, by miss rate.
    pub points: Vec<SweepPoint>,
    /// The empirical rule fitted to this sweep's pass-KV / pass-Q winners (a, b, c), if each
    /// won somewhere.
    pub fitted: Option<[f64; 3]>,
    /// The paper's published coefficients.
    pub published: [f64; 3],
    /// Points where the fitted rule picks the measured winner.
    pub fitted_agrees: usize,
    /// Points where the published rule picks the measured winner.
    pub published_agrees: usize,
}

/// Runs the sweep of `total` tokens at each of `miss_rates` (percent).
pub fn sweep(
    rings: &Rings<'_>,
    total: usize,
    miss_rates: &[f64],
    warmup: usize,
    iters: usize,
) -> anyhow::Result<SweepReport> {
    let n = rings.ring.world_size();
    let mut points = Vec::new();
    let mut observations = Vec::new();
    for &pct in miss_rates {
        if !(pct > 0.0 && pct <= 100.0) {
            anyhow::bail!("miss rate {pct}%: must be in (0, 100]");
        }
        let w = Workload::from_miss_rate(total, pct / 100.0)?;
        let (t, p) = (w.new_tokens, w.cached_tokens);
        eprintln!("  sweep: miss rate {pct}% (T={t}, P={p}) on {n} ranks...");
        let (report, decision) = prefill::bench(rings, t, p, Which::All, warmup, iters)?;
        let kv = report.run(cp_ring::Algorithm::PassKv).ok_or_else(|| anyhow::anyhow!("pass-KV did not run"))?;
        let q = report.run(cp_ring::Algorithm::PassQ).ok_or_else(|| anyhow::anyhow!("pass-Q did not run"))?;
        let g = report.run(cp_ring::Algorithm::GatherKv).ok_or_else(|| anyhow::anyhow!("gather-KV did not run"))?;
        // Table 4's question (and the empirical rule's): pass-KV or pass-Q.
        let ring_winner = if kv.slowest_ms <= q.slowest_ms { Mode::PassKv } else { Mode::PassQ };
        observations.push(Observation { new_tokens: t, cached_tokens: p, winner: ring_winner });
        let timed = [(Mode::PassKv, kv.slowest_ms), (Mode::PassQ, q.slowest_ms), (Mode::GatherKv, g.slowest_ms)];
        let (winner, best) =
            timed.into_iter().fold((Mode::PassKv, f64::INFINITY), |a, b| if b.1 < a.1 { b } else { a });
        let auto_ms = timed.iter().find(|(m, _)| *m == decision.mode).map_or(f64::NAN, |x| x.1);
        points.push(SweepPoint {
            miss_rate_pct: pct,
            t,
            p,
            single_ms: report.single_ms,
            pass_kv_ms: kv.slowest_ms,
            pass_q_ms: q.slowest_ms,
            pass_q_all_to_all_ms: q.per_rank.iter().map(|r| r.all_to_all_ms).fold(0.0, f64::max),
            gather_kv_ms: g.slowest_ms,
            predicted_gather_kv_ms: g.predicted_ms,
            predicted_pass_kv_ms: kv.predicted_ms,
            predicted_pass_q_ms: q.predicted_ms,
            heuristic: decision.mode.to_string(),
            winner: winner.to_string(),
            auto_ms,
            auto_efficiency: report.single_ms / (n as f64 * auto_ms),
            auto_over_winner: auto_ms / best,
            cp_predicted_to_win: report.cp_predicted_to_win,
            pass_kv_slowest: slowest(&kv.per_rank),
            pass_q_slowest: slowest(&q.per_rank),
        });
    }
    let fitted = EmpiricalRule::fit(&observations).ok();
    let agrees = |rule: &EmpiricalRule| {
        observations.iter().filter(|o| rule.mode(o.new_tokens, o.cached_tokens) == o.winner).count()
    };
    let published = EmpiricalRule::published();
    Ok(SweepReport {
        world_size: n,
        total,
        fitted_agrees: fitted.as_ref().map_or(0, agrees),
        published_agrees: agrees(&published),
        fitted: fitted.map(|r| [r.a, r.b, r.c]),
        published: [published.a, published.b, published.c],
        points,
    })
}

fn slowest(ranks: &[RankTimes]) -> RankTimes {
    ranks.iter().copied().fold(RankTimes::default(), |a, b| if b.total_ms > a.total_ms { b } else { a })
}

/// Prints the sweep as a table.
pub fn print(report: &SweepReport) {
    println!(
        "  P+T={} on {} ranks: miss%  T  | one GPU | pass-KV (eff) | pass-Q (eff, a2a) | gather-KV (eff) | predicted KV / Q / gKV | auto | winner | auto eff",
        report.total, report.world_size
    );
    for p in &report.points {
        let eff = |ms: f64| 100.0 * p.single_ms / (report.world_size as f64 * ms);
        println!(
            "  {:>6}% {:>6} | {:>8.3} | {:>8.3} ({:>5.1}%) | {:>8.3} ({:>5.1}%, {:.3}) | {:>8.3} ({:>5.1}%) | {:>7.3} / {:>7.3} / {:>7.3} | {:>9} | {:>9} | {:>5.1}%{}",
            p.miss_rate_pct,
            p.t,
            p.single_ms,
            p.pass_kv_ms,
            eff(p.pass_kv_ms),
            p.pass_q_ms,
            eff(p.pass_q_ms),
            p.pass_q_all_to_all_ms,
            p.gather_kv_ms,
            eff(p.gather_kv_ms),
            p.predicted_pass_kv_ms,
            p.predicted_pass_q_ms,
            p.predicted_gather_kv_ms,
            p.heuristic,
            p.winner,
            100.0 * p.auto_efficiency,
            if p.auto_over_winner > 1.05 { format!(" ({:.2}x the winner)", p.auto_over_winner) } else { String::new() }
        );
    }
    println!("  slowest rank by phase (ms): compute / exposed comm / all-to-all / merge");
    for p in &report.points {
        let f = |r: &RankTimes| {
            format!("{:.3} / {:.3} / {:.3} / {:.3}", r.compute_ms, r.wait_ms, r.all_to_all_ms, r.merge_ms)
        };
        println!("  {:>6}%: pass-KV {} | pass-Q {}", p.miss_rate_pct, f(&p.pass_kv_slowest), f(&p.pass_q_slowest));
    }
    match report.fitted {
        Some([a, b, c]) => println!(
            "  empirical rule fitted here: a={a:.3} b={b:.3} c={c:.3} (agrees at {}/{} points); published a={:.3} b={:.3} c={:.3} (agrees at {}/{})",
            report.fitted_agrees,
            report.points.len(),
            report.published[0],
            report.published[1],
            report.published[2],
            report.published_agrees,
            report.points.len()
        ),
        None => println!("  empirical rule: no fit (one algorithm won everywhere)"),
    }
}

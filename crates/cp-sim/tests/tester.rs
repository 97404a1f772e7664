//! One test body, many configurations: every algorithm x world sizes 1..8 x dtypes x
//! full/partial prefill x GQA ratios x lengths not divisible by 2N, plus decode (pass-Q and
//! gather-Q). Each failure
//! is labelled with its configuration, and all failures are listed together.

use std::time::Duration;

use candle_core::DType;
use cp_ring::Algorithm;
use cp_shard::NewTokens;
use cp_sim::{Session, SimConfig, StepReport};

fn config(world_size: usize, dtype: DType, (n_heads, n_kv_heads): (usize, usize), seed: u64) -> SimConfig {
    SimConfig { world_size, n_heads, n_kv_heads, head_dim: 8, dtype, seed, timeout: Duration::from_secs(60) }
}

/// A session of two sequences of different lengths: a full prefill, a partial prefill on the
/// cache, then decode steps; every algorithm on every prefill.
fn run_session(cfg: SimConfig) -> Result<Vec<StepReport>, String> {
    let n = cfg.world_size;
    let mut session = Session::new(cfg, 2).map_err(|e| e.to_string())?;
    let mut reports = Vec::new();
    let algorithms = Algorithm::ALL;
    // 2N*3 + 1 and N + 2 tokens: neither is a multiple of 2N (for N > 1 in the second case).
    let first = [NewTokens { seq: 0, count: 6 * n + 1 }, NewTokens { seq: 1, count: n + 2 }];
    reports.extend(session.prefill(&first, &algorithms).map_err(|e| e.to_string())?);
    let second = [NewTokens { seq: 1, count: 2 * n + 3 }, NewTokens { seq: 0, count: 5 }];
    reports.extend(session.prefill(&second, &algorithms).map_err(|e| e.to_string())?);
    let decoders = [Algorithm::PassQ, Algorithm::GatherQ];
    for _ in 0..3 {
        reports.extend(session.decode_with(&[0, 1], &decoders).map_err(|e| e.to_string())?);
    }
    reports.extend(session.decode_with(&[1], &decoders).map_err(|e| e.to_string())?);
    Ok(reports)
}

#[test]
fn every_algorithm_world_size_dtype_and_head_ratio() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for world_size in 1..=8 {
        for dtype in [DType::F64, DType::F32, DType::BF16] {
            for heads in [(4, 4), (8, 2), (8, 1)] {
                let cfg = config(world_size, dtype, heads, world_size as u64 * 1000 + heads.1 as u64);
                let label = format!("N={world_size} {dtype:?} NH={} NKV={}", heads.0, heads.1);
                match run_session(cfg) {
                    Err(e) => failures.push(format!("{label}: error: {e}")),
                    Ok(reports) => {
                        for r in reports {
                            checked += 1;
                            if !r.passed() {
                                failures.push(format!("{label}: {r}"));
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {checked} steps failed:\n{}", failures.len(), failures.join("\n"));
    // Per configuration: every algorithm x 2 prefills + 2 decoders x 4 decode steps.
    assert_eq!(checked, 8 * 3 * 3 * (Algorithm::ALL.len() * 2 + 2 * 4));
}

//! Random multi-turn sessions: every step of every algorithm matches the oracle, and decode
//! keeps caches balanced.

use std::time::Duration;

use candle_core::DType;
use cp_ring::Algorithm;
use cp_shard::NewTokens;
use cp_sim::{Session, SimConfig};
use cp_testkit::check_property;
use proptest::prelude::*;

#[test]
fn random_sessions_match_the_oracle() {
    let strategy = (
        1usize..=6,
        prop::collection::vec(1usize..40, 1..=3),
        prop::collection::vec(1usize..20, 1..=3),
        0usize..4,
        any::<u64>(),
    );
    check_property("random multi-turn sessions", strategy, |(n, first, second, decodes, seed)| {
        let cfg = SimConfig {
            world_size: n,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 4,
            dtype: DType::F64,
            seed,
            timeout: Duration::from_secs(60),
        };
        let mut session = Session::new(cfg, first.len()).unwrap();
        let algorithms = [Algorithm::PassKv, Algorithm::PassQ];
        let turn1: Vec<_> = first.iter().enumerate().map(|(seq, &count)| NewTokens { seq, count }).collect();
        let mut reports = session.prefill(&turn1, &algorithms).unwrap();
        let turn2: Vec<_> = second
            .iter()
            .enumerate()
            .filter(|(seq, _)| *seq < first.len())
            .map(|(seq, &count)| NewTokens { seq, count })
            .collect();
        reports.extend(session.prefill(&turn2, &algorithms).unwrap());
        let batch: Vec<usize> = (0..first.len()).collect();
        for _ in 0..decodes {
            reports.push(session.decode(&batch).unwrap());
        }
        for r in &reports {
            prop_assert!(r.passed(), "{}", r);
        }
        Ok(())
    });
}

#[test]
fn long_decode_keeps_every_rank_within_one_token_per_sequence() {
    let cfg =
        SimConfig { world_size: 3, n_heads: 2, n_kv_heads: 1, head_dim: 4, dtype: DType::F32, ..SimConfig::default() };
    let mut session = Session::new(cfg, 2).unwrap();
    for r in session
        .prefill(&[NewTokens { seq: 0, count: 12 }, NewTokens { seq: 1, count: 6 }], &[Algorithm::PassKv])
        .unwrap()
    {
        assert!(r.passed(), "{r}");
    }
    let before: Vec<Vec<usize>> =
        (0..2).map(|s| (0..3).map(|r| session.cache().seq_rank_len(s, r).unwrap()).collect()).collect();
    for _ in 0..10 {
        let report = session.decode(&[0, 1]).unwrap();
        assert!(report.passed(), "{report}");
    }
    for (seq, base) in before.iter().enumerate() {
        let grown: Vec<usize> = (0..3).map(|r| session.cache().seq_rank_len(seq, r).unwrap() - base[r]).collect();
        assert_eq!(grown.iter().sum::<usize>(), 10);
        assert!(grown.iter().max().unwrap() - grown.iter().min().unwrap() <= 1, "seq {seq}: {grown:?}");
    }
}

//! Arbitrary sizes, up to `usize::MAX`, through every public planning and sizing entry point:
//! each returns a value or an error, never panics (checked arithmetic throughout).

use std::panic::{AssertUnwindSafe, catch_unwind};

use cp_heuristic::{Compute, Hardware, Inputs, Link, ModelShape, Rule, Workload, choose};
use cp_shard::{CacheMap, DecodePlan, NewTokens, PrefillShards, Span, TurnPlan};
use cp_sim::SimConfig;
use cp_testkit::check_property;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Sizes that are small, large, or at the edge of `usize`.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..64, 0usize..1 << 20, (usize::MAX - 64)..=usize::MAX, any::<usize>()]
}

fn no_panic(what: &str, f: impl FnOnce()) -> Result<(), TestCaseError> {
    catch_unwind(AssertUnwindSafe(f))
        .map_err(|p| TestCaseError::fail(format!("{what} panicked: {}", cp_ring::panic_message(&*p))))
}

#[test]
fn prefill_shards_never_panic() {
    check_property("prefill_shards_never_panic", (size(), size(), size(), size(), size()), |(n, p, t, i, r)| {
        no_panic("PrefillShards", || {
            if let Ok(s) = PrefillShards::new(n, p, t) {
                let _ = (
                    s.chunk(i),
                    s.spans(r),
                    s.locate(i),
                    s.position(r % n.max(1), i),
                    s.rows_per_rank(),
                    s.span().end(),
                );
                let _ = s.q_layout(0, r % n.max(1)).map(|l| l.len());
            }
            let _ = Span::new(p, t).end();
        })
    });
}

#[test]
fn plans_never_panic() {
    check_property("plans_never_panic", (1usize..64, size(), size(), size()), |(n, a, b, it)| {
        no_panic("TurnPlan / DecodePlan", || {
            let Ok(mut cache) = CacheMap::new(n, 2) else { return };
            if let Ok(plan) = TurnPlan::new(&cache, &[NewTokens { seq: 0, count: a }]) {
                let _ = cache.commit_turn(&plan);
            }
            if let Ok(plan) = TurnPlan::new(&cache, &[NewTokens { seq: 0, count: b }, NewTokens { seq: 1, count: a }]) {
                let _ = (plan.new_spans(), plan.history_spans(), cache.commit_turn(&plan));
            }
            if let Ok(plan) = DecodePlan::new(&cache, &[0, 1], it) {
                let _ = (plan.history_spans(), cache.commit_decode(&plan));
            }
            let _ = (cache.rank_len(0), cache.seq_len(0));
        })
    });
}

#[test]
fn the_heuristic_never_panics_and_stays_finite() {
    check_property(
        "the_heuristic_never_panics_and_stays_finite",
        (size(), size(), size(), any::<f64>()),
        |(t, p, n, rate)| {
            let mut out = Ok(());
            no_panic("heuristic", || {
                let inputs = Inputs {
                    model: ModelShape::LLAMA3_8B,
                    hardware: Hardware { compute: Compute::custom(400e12), link: Link::custom(100e9) },
                    world_size: n,
                    workload: Workload { new_tokens: t, cached_tokens: p },
                };
                if let Ok(d) = choose(Rule::Auto, &inputs)
                    && !(d.cost.pass_kv.total_s.is_finite() && d.cost.gather_kv.total_s.is_finite())
                {
                    out = Err(TestCaseError::fail(format!("non-finite prediction for T={t} P={p} N={n}")));
                }
                let _ = Workload::from_miss_rate(t, rate);
            })?;
            out
        },
    );
}

#[test]
fn simulation_estimates_never_panic() {
    check_property(
        "simulation_estimates_never_panic",
        (size(), size(), 1usize..1 << 16, 1usize..1 << 16),
        |(p, t, h, d)| {
            no_panic("SimConfig::estimate", || {
                let c = SimConfig { n_heads: h, n_kv_heads: 1, head_dim: d, ..SimConfig::default() };
                let _ = c.estimate(&[p, t], &[t, p]);
                let _ = c.check_size(&[p], &[t]);
            })
        },
    );
}

//! Bad input to the library API of every CPU crate (cp-shard, cp-heuristic, cp-attention,
//! cp-ring, cp-sim): each case must give an error that names the problem, or a defined answer
//! where one exists — never a panic, a hang, or a silently wrong value. The suite runs in CI.

use std::fmt::{Debug, Display};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use cp_attention::reference::{self, Heads};
use cp_attention::{CpuAttention, Partial, merge_all};
use cp_heuristic::{
    Compute, EmpiricalRule, Hardware, Inputs, Link, Mode, ModelShape, Observation, Rule, Workload, choose, cost_model,
};
use cp_ring::{Algorithm, Local, PoolError, RankPool, RingTransport, channel_ring};
use cp_shard::{CacheMap, DecodePlan, Layout, NewTokens, PrefillShards, Span, Token, TurnPlan, gather_rows};
use cp_sim::{Session, SimConfig, run_ranks};

type Case = (&'static str, Box<dyn Fn() -> Result<(), String>>);

/// An error whose message contains `phrase`.
fn err<T: Debug, E: Display>(r: Result<T, E>, phrase: &str) -> Result<(), String> {
    match r {
        Ok(v) => Err(format!("accepted: {v:?}")),
        Err(e) => {
            let m = e.to_string();
            if m.contains(phrase) { Ok(()) } else { Err(format!("message {m:?} lacks {phrase:?}")) }
        }
    }
}

fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what.to_string()) }
}

fn t3(rows: usize, heads: usize, dim: usize, dtype: DType) -> Tensor {
    Tensor::zeros((rows, heads, dim), DType::F32, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

fn rows(n: usize) -> Layout {
    let mut l = Layout::new();
    l.push_tokens(0, Span::new(0, n));
    l
}

fn inputs(t: usize, p: usize, n: usize) -> Inputs {
    Inputs {
        model: ModelShape::LLAMA3_8B,
        hardware: Hardware { compute: Compute::custom(400e12), link: Link::custom(200e9) },
        world_size: n,
        workload: Workload { new_tokens: t, cached_tokens: p },
    }
}

fn sim(world_size: usize) -> SimConfig {
    SimConfig { world_size, timeout: Duration::from_secs(10), ..SimConfig::default() }
}

fn shard_cases() -> Vec<Case> {
    vec![
        ("PrefillShards: zero ranks", Box::new(|| err(PrefillShards::new(0, 0, 10), "world size must be at least 1"))),
        ("PrefillShards: no tokens", Box::new(|| err(PrefillShards::new(4, 0, 0), "no new tokens"))),
        ("PrefillShards: 2N overflows", Box::new(|| err(PrefillShards::new(usize::MAX, 0, 10), "overflows"))),
        ("PrefillShards: P + T overflows", Box::new(|| err(PrefillShards::new(1, usize::MAX, 1), "overflows"))),
        ("PrefillShards: rows per rank overflow", Box::new(|| err(PrefillShards::new(1, 0, usize::MAX), "overflows"))),
        (
            "PrefillShards::chunk(usize::MAX) is empty",
            Box::new(|| {
                let s = PrefillShards::new(4, 7, 100).map_err(|e| e.to_string())?;
                check(s.chunk(usize::MAX).is_empty(), "a chunk past the last is not empty")
            }),
        ),
        ("Span::end saturates", Box::new(|| check(Span::new(usize::MAX, 2).end() == usize::MAX, "end overflowed"))),
        (
            "PrefillShards: rank out of range",
            Box::new(|| err(PrefillShards::new(4, 0, 64).map_err(|e| e.to_string())?.spans(4), "out of range")),
        ),
        (
            "PrefillShards: position out of range",
            Box::new(|| err(PrefillShards::new(4, 0, 64).map_err(|e| e.to_string())?.locate(usize::MAX), "outside")),
        ),
        (
            "PrefillShards: row out of range",
            Box::new(|| {
                err(PrefillShards::new(4, 0, 64).map_err(|e| e.to_string())?.position(0, 1 << 40), "out of range")
            }),
        ),
        ("CacheMap: zero ranks", Box::new(|| err(CacheMap::new(0, 1), "world size must be at least 1"))),
        (
            "TurnPlan: empty batch",
            Box::new(|| err(TurnPlan::new(&CacheMap::new(2, 1).unwrap(), &[]), "batch is empty")),
        ),
        (
            "TurnPlan: unknown sequence",
            Box::new(|| {
                err(TurnPlan::new(&CacheMap::new(2, 1).unwrap(), &[NewTokens { seq: 3, count: 4 }]), "out of range")
            }),
        ),
        (
            "TurnPlan: sequence twice",
            Box::new(|| {
                let new = [NewTokens { seq: 0, count: 4 }, NewTokens { seq: 0, count: 4 }];
                err(TurnPlan::new(&CacheMap::new(2, 1).unwrap(), &new), "appears twice")
            }),
        ),
        (
            "TurnPlan: zero new tokens",
            Box::new(|| {
                err(TurnPlan::new(&CacheMap::new(2, 1).unwrap(), &[NewTokens { seq: 0, count: 0 }]), "no new tokens")
            }),
        ),
        (
            "commit: the same plan twice",
            Box::new(|| {
                let mut c = CacheMap::new(2, 1).unwrap();
                let p = TurnPlan::new(&c, &[NewTokens { seq: 0, count: 9 }]).unwrap();
                c.commit_turn(&p).unwrap();
                err(c.commit_turn(&p), "does not match the cache")
            }),
        ),
        (
            "commit: another cache, same lengths, other placement",
            Box::new(|| {
                // Both caches hold 8 tokens of sequence 0, placed differently.
                let mut a = CacheMap::new(2, 1).unwrap();
                a.commit_turn(&TurnPlan::new(&a, &[NewTokens { seq: 0, count: 8 }]).unwrap()).unwrap();
                let mut b = CacheMap::new(2, 1).unwrap();
                for count in [5, 3] {
                    b.commit_turn(&TurnPlan::new(&b, &[NewTokens { seq: 0, count }]).unwrap()).unwrap();
                }
                let plan = TurnPlan::new(&a, &[NewTokens { seq: 0, count: 4 }]).unwrap();
                err(b.commit_turn(&plan), "another placement")
            }),
        ),
        (
            "commit: another cache with more sequences",
            Box::new(|| {
                let a = CacheMap::new(2, 1).unwrap();
                let mut b = CacheMap::new(2, 3).unwrap();
                let plan = TurnPlan::new(&a, &[NewTokens { seq: 0, count: 4 }]).unwrap();
                err(b.commit_turn(&plan), "does not match the cache")
            }),
        ),
        (
            "commit: another world size",
            Box::new(|| {
                let a = CacheMap::new(2, 1).unwrap();
                let mut b = CacheMap::new(3, 1).unwrap();
                err(b.commit_turn(&TurnPlan::new(&a, &[NewTokens { seq: 0, count: 4 }]).unwrap()), "world size")
            }),
        ),
        (
            "commit_decode: a decode plan of another cache",
            Box::new(|| {
                let mut a = CacheMap::new(2, 1).unwrap();
                a.commit_turn(&TurnPlan::new(&a, &[NewTokens { seq: 0, count: 8 }]).unwrap()).unwrap();
                let mut b = CacheMap::new(2, 1).unwrap();
                for count in [1, 7] {
                    b.commit_turn(&TurnPlan::new(&b, &[NewTokens { seq: 0, count }]).unwrap()).unwrap();
                }
                err(b.commit_decode(&DecodePlan::new(&a, &[0], 0).unwrap()), "another placement")
            }),
        ),
        (
            "DecodePlan: empty batch",
            Box::new(|| err(DecodePlan::new(&CacheMap::new(2, 1).unwrap(), &[], 0), "batch is empty")),
        ),
        (
            "DecodePlan: unknown sequence",
            Box::new(|| err(DecodePlan::new(&CacheMap::new(2, 1).unwrap(), &[5], 0), "out of range")),
        ),
        (
            "TurnPlan: cache near usize::MAX overflows",
            Box::new(|| {
                let mut c = CacheMap::new(1, 1).unwrap();
                c.commit_turn(&TurnPlan::new(&c, &[NewTokens { seq: 0, count: usize::MAX - 2 }]).unwrap()).unwrap();
                err(TurnPlan::new(&c, &[NewTokens { seq: 0, count: 10 }]), "overflows")
            }),
        ),
        (
            "gather_rows: buffer of the wrong size",
            Box::new(|| err(gather_rows(&[rows(2)], &[&[1.0f32; 3][..]], 1, &[(0, Span::new(0, 2))]), "expected 2")),
        ),
        (
            "gather_rows: wrong number of ranks",
            Box::new(|| {
                err(
                    gather_rows(&[rows(2)], &[&[1.0f32; 2][..], &[1.0; 2][..]], 1, &[(0, Span::new(0, 2))]),
                    "per-rank buffers",
                )
            }),
        ),
        (
            "gather_rows: more rows asked for than exist",
            Box::new(|| {
                err(
                    gather_rows(&[rows(2)], &[&[1.0f32; 2][..]], 1, &[(0, Span::new(0, usize::MAX / 2))]),
                    "rows asked for",
                )
            }),
        ),
    ]
}

fn heuristic_cases() -> Vec<Case> {
    vec![
        ("miss rate NaN", Box::new(|| err(Workload::from_miss_rate(128_000, f64::NAN), "miss rate"))),
        ("miss rate negative", Box::new(|| err(Workload::from_miss_rate(128_000, -0.1), "miss rate"))),
        ("miss rate above 1", Box::new(|| err(Workload::from_miss_rate(128_000, 1.5), "miss rate"))),
        ("miss rate zero", Box::new(|| err(Workload::from_miss_rate(128_000, 0.0), "miss rate"))),
        ("zero total tokens", Box::new(|| err(Workload::from_miss_rate(0, 0.5), "total tokens"))),
        (
            "T = P = usize::MAX gives finite predictions",
            Box::new(|| {
                let d = choose(Rule::Alg5, &inputs(usize::MAX, usize::MAX, 4)).map_err(|e| e.to_string())?;
                check(d.cost.pass_kv.total_s.is_finite() && (d.thresholds.miss_rate - 0.5).abs() < 1e-12, "not finite")
            }),
        ),
        ("zero ranks", Box::new(|| err(choose(Rule::Alg5, &inputs(10, 0, 0)), "world_size"))),
        ("zero new tokens", Box::new(|| err(cost_model(&inputs(0, 10, 2)), "new_tokens"))),
        (
            "zero KV heads",
            Box::new(|| {
                let mut i = inputs(10, 0, 2);
                i.model.n_kv_heads = 0;
                err(choose(Rule::Alg1, &i), "n_kv_heads")
            }),
        ),
        (
            "heads not a multiple",
            Box::new(|| {
                let mut i = inputs(10, 0, 2);
                i.model.n_kv_heads = 7;
                err(choose(Rule::Alg1, &i), "multiple")
            }),
        ),
        (
            "NaN compute rate",
            Box::new(|| {
                let mut i = inputs(10, 0, 2);
                i.hardware.compute = Compute::custom(f64::NAN);
                err(cost_model(&i), "compute")
            }),
        ),
        (
            "zero bandwidth",
            Box::new(|| {
                let mut i = inputs(10, 0, 2);
                i.hardware.link = Link::custom(0.0);
                err(cost_model(&i), "bandwidth")
            }),
        ),
        (
            "negative latency",
            Box::new(|| {
                let mut i = inputs(10, 0, 2);
                i.hardware.link = Link::custom(1e9).with_latency(-1.0);
                err(cost_model(&i), "latency")
            }),
        ),
        (
            "NaN empirical coefficient",
            Box::new(|| {
                err(
                    choose(Rule::Empirical(EmpiricalRule { a: f64::NAN, b: 1.0, c: 0.0 }), &inputs(10, 0, 2)),
                    "coefficient a",
                )
            }),
        ),
        (
            "fit with one kind of winner",
            Box::new(|| {
                let obs = [Observation { new_tokens: 10, cached_tokens: 0, winner: Mode::PassKv }];
                err(EmpiricalRule::fit(&obs), "winner of each kind")
            }),
        ),
        (
            "fit with T = 0",
            Box::new(|| {
                let obs = [
                    Observation { new_tokens: 0, cached_tokens: 5, winner: Mode::PassKv },
                    Observation { new_tokens: 3, cached_tokens: 5, winner: Mode::PassQ },
                ];
                err(EmpiricalRule::fit(&obs), "T = 0")
            }),
        ),
    ]
}

fn attention_cases() -> Vec<Case> {
    let ops = CpuAttention::default();
    let ops2 = ops;
    let ops3 = ops;
    let ops4 = ops;
    let ops5 = ops;
    let ops6 = ops;
    let ops7 = ops;
    vec![
        (
            "head dim 0",
            Box::new(move || {
                err(
                    ops.partial(
                        &t3(2, 2, 0, DType::F32),
                        &rows(2),
                        &t3(2, 1, 0, DType::F32),
                        &t3(2, 1, 0, DType::F32),
                        &rows(2),
                    ),
                    "DH > 0",
                )
            }),
        ),
        (
            "no KV heads",
            Box::new(move || {
                err(
                    ops2.partial(
                        &t3(2, 2, 4, DType::F32),
                        &rows(2),
                        &t3(2, 0, 4, DType::F32),
                        &t3(2, 0, 4, DType::F32),
                        &rows(2),
                    ),
                    "n_kv_heads (0)",
                )
            }),
        ),
        (
            "heads not a multiple",
            Box::new(move || {
                err(
                    ops3.partial(
                        &t3(2, 3, 4, DType::F32),
                        &rows(2),
                        &t3(2, 2, 4, DType::F32),
                        &t3(2, 2, 4, DType::F32),
                        &rows(2),
                    ),
                    "multiple",
                )
            }),
        ),
        (
            "v shape differs from k",
            Box::new(move || {
                err(
                    ops4.partial(
                        &t3(2, 2, 4, DType::F32),
                        &rows(2),
                        &t3(2, 1, 4, DType::F32),
                        &t3(3, 1, 4, DType::F32),
                        &rows(2),
                    ),
                    "shape of k",
                )
            }),
        ),
        (
            "mixed dtypes",
            Box::new(move || {
                err(
                    ops5.partial(
                        &t3(2, 2, 4, DType::F32),
                        &rows(2),
                        &t3(2, 1, 4, DType::F64),
                        &t3(2, 1, 4, DType::F64),
                        &rows(2),
                    ),
                    "dtype",
                )
            }),
        ),
        (
            "unsupported dtype",
            Box::new(move || {
                err(
                    ops6.partial(
                        &t3(2, 2, 4, DType::F16),
                        &rows(2),
                        &t3(2, 1, 4, DType::F16),
                        &t3(2, 1, 4, DType::F16),
                        &rows(2),
                    ),
                    "dtype",
                )
            }),
        ),
        (
            "layout rows differ",
            Box::new(move || {
                err(
                    ops7.partial(
                        &t3(2, 2, 4, DType::F32),
                        &rows(3),
                        &t3(2, 1, 4, DType::F32),
                        &t3(2, 1, 4, DType::F32),
                        &rows(2),
                    ),
                    "layout has 3",
                )
            }),
        ),
        (
            "two-dimensional q",
            Box::new(|| {
                let q = Tensor::zeros((2, 8), DType::F32, &Device::Cpu).unwrap();
                err(
                    CpuAttention::default().partial(
                        &q,
                        &rows(2),
                        &t3(2, 1, 8, DType::F32),
                        &t3(2, 1, 8, DType::F32),
                        &rows(2),
                    ),
                    "[Tq, NH, DH]",
                )
            }),
        ),
        ("merge of nothing", Box::new(|| err(merge_all(&[]), "at least one partial"))),
        (
            "merge of mismatched partials",
            Box::new(|| {
                let p = |r| Partial {
                    out: t3(r, 1, 4, DType::F32),
                    lse: Tensor::zeros((r, 1), DType::F32, &Device::Cpu).unwrap(),
                };
                err(merge_all(&[p(2), p(3)]), "partial to merge")
            }),
        ),
        (
            "oracle: short q slice",
            Box::new(|| {
                let h = Heads { n_heads: 2, n_kv_heads: 1, head_dim: 4 };
                let tok = vec![Some(Token { seq: 0, pos: 0 }); 2];
                err(reference::attention(&[0.0; 5], &tok, &[0.0; 8], &[0.0; 8], &tok, h, 1.0), "q has shape")
            }),
        ),
        (
            "oracle: no KV heads",
            Box::new(|| {
                let h = Heads { n_heads: 2, n_kv_heads: 0, head_dim: 4 };
                err(reference::attention(&[], &[], &[], &[], &[], h, 1.0), "n_kv_heads (0)")
            }),
        ),
    ]
}

fn ring_cases() -> Vec<Case> {
    vec![
        (
            "layouts of another world size",
            Box::new(|| {
                let plan = TurnPlan::new(&CacheMap::new(3, 1).unwrap(), &[NewTokens { seq: 0, count: 12 }]).unwrap();
                let mut comm = channel_ring::<Tensor>(2, Duration::from_secs(5)).remove(0);
                let q = t3(plan.layouts().q_rows(), 2, 4, DType::F32);
                let kv = t3(plan.layouts().kv_rows(), 1, 4, DType::F32);
                let local = Local { q: &q, k: &kv, v: &kv };
                err(
                    cp_ring::run(
                        Algorithm::PassKv,
                        &CpuAttention::default(),
                        &mut comm,
                        plan.layouts(),
                        local,
                        &mut (),
                    ),
                    "world size",
                )
            }),
        ),
        (
            "query rows that do not match the layout",
            Box::new(|| {
                let plan = TurnPlan::new(&CacheMap::new(1, 1).unwrap(), &[NewTokens { seq: 0, count: 12 }]).unwrap();
                let mut comm = channel_ring::<Tensor>(1, Duration::from_secs(5)).remove(0);
                let q = t3(plan.layouts().q_rows() + 1, 2, 4, DType::F32);
                let kv = t3(plan.layouts().kv_rows(), 1, 4, DType::F32);
                let local = Local { q: &q, k: &kv, v: &kv };
                err(
                    cp_ring::run(
                        Algorithm::GatherKv,
                        &CpuAttention::default(),
                        &mut comm,
                        plan.layouts(),
                        local,
                        &mut (),
                    ),
                    "rows",
                )
            }),
        ),
        (
            "a pool of no ranks",
            Box::new(|| err(RankPool::<()>::new(0, |_| Ok::<_, std::io::Error>(())), "at least one rank")),
        ),
        (
            "a pool whose state fails to build",
            Box::new(|| {
                err(
                    RankPool::<()>::new(2, |r| if r == 1 { Err(std::io::Error::other("no device")) } else { Ok(()) }),
                    "rank 1: no device",
                )
            }),
        ),
        (
            "finish_shift without start_shift",
            Box::new(|| {
                err(channel_ring::<u8>(2, Duration::from_secs(1)).remove(0).finish_shift(), "no shift was started")
            }),
        ),
        (
            "all-to-all with the wrong number of messages",
            Box::new(|| {
                err(
                    channel_ring::<u8>(2, Duration::from_secs(1)).remove(0).all_to_all(vec![vec![1]]),
                    "1 messages for 2 ranks",
                )
            }),
        ),
        (
            "pool errors keep the root cause",
            Box::new(|| {
                let results: Vec<Result<(), PoolError<std::io::Error>>> =
                    vec![Err(PoolError::Panicked { rank: 1, message: "boom".into() })];
                err(PoolError::all_ok(results, |_| false), "rank 1 panicked: boom")
            }),
        ),
    ]
}

fn sim_cases() -> Vec<Case> {
    vec![
        ("session of zero ranks", Box::new(|| err(Session::new(sim(0), 1), "world size must be at least 1"))),
        ("session of 300 ranks", Box::new(|| err(Session::new(sim(300), 1), "at most 256"))),
        (
            "zero timeout",
            Box::new(|| {
                err(Session::new(SimConfig { timeout: Duration::ZERO, ..sim(2) }, 1), "timeout must be positive")
            }),
        ),
        ("no sequences", Box::new(|| err(Session::new(sim(2), 0), "at least one sequence"))),
        (
            "f16 is not a simulator dtype",
            Box::new(|| err(Session::new(SimConfig { dtype: DType::F16, ..sim(2) }, 1), "not supported")),
        ),
        (
            "prefill with no algorithm",
            Box::new(|| {
                err(Session::new(sim(2), 1).unwrap().prefill(&[NewTokens { seq: 0, count: 8 }], &[]), "no algorithm")
            }),
        ),
        (
            "prefill with no algorithm commits nothing",
            Box::new(|| {
                let mut s = Session::new(sim(2), 1).unwrap();
                let _ = s.prefill(&[NewTokens { seq: 0, count: 8 }], &[]);
                check(s.cache().seq_len(0) == Ok(0), "tokens were committed")
            }),
        ),
        (
            "decode with no algorithm",
            Box::new(|| err(Session::new(sim(2), 1).unwrap().decode_with(&[0], &[]), "no algorithm")),
        ),
        (
            "a prefill too large for memory",
            Box::new(|| {
                err(
                    Session::new(sim(2), 1)
                        .unwrap()
                        .prefill(&[NewTokens { seq: 0, count: 1 << 40 }], &[Algorithm::PassKv]),
                    "GiB of host memory",
                )
            }),
        ),
        (
            "sizes that overflow the estimate",
            Box::new(|| err(sim(2).estimate(&[usize::MAX], &[usize::MAX]), "overflow")),
        ),
        (
            "run_ranks of zero ranks",
            Box::new(|| {
                let r = run_ranks::<u8, (), _>(0, Duration::from_secs(1), |_| Ok(()));
                check(r.len() == 1 && r[0].as_ref().is_err_and(|e| e.to_string().contains("at least 1")), "no error")
            }),
        ),
    ]
}

#[test]
fn every_bad_input_is_a_named_error_or_a_defined_answer() {
    let cases: Vec<Case> = [shard_cases(), heuristic_cases(), attention_cases(), ring_cases(), sim_cases()]
        .into_iter()
        .flatten()
        .collect();
    let mut failures = Vec::new();
    for (name, case) in &cases {
        match catch_unwind(AssertUnwindSafe(case)) {
            Ok(Ok(())) => {}
            Ok(Err(why)) => failures.push(format!("{name}: {why}")),
            Err(p) => failures.push(format!("{name}: PANICKED: {}", cp_ring::panic_message(&*p))),
        }
    }
    assert!(failures.is_empty(), "{} of {} cases:\n{}", failures.len(), cases.len(), failures.join("\n"));
    eprintln!("bad-input-cases: library API {}", cases.len());
    assert!(cases.len() >= 70, "the suite shrank to {} cases", cases.len());
}

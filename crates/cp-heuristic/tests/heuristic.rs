//! The heuristic's formulas against hand-computed values, the seed's demonstration, the
//! disagreement of the published empirical rule with Table 4, and monotonicity laws.

use cp_heuristic::{
    Compute, EmpiricalRule, Hardware, HeuristicError, Inputs, Link, Mode, ModelShape, Observation, Rule, Workload,
    choose, cost_model, thresholds,
};
use cp_testkit::check_property;
use proptest::prelude::*;

fn paper(world_size: usize, new_tokens: usize, cached_tokens: usize) -> Inputs {
    Inputs {
        model: ModelShape::LLAMA3_405B,
        hardware: Hardware::PAPER_EXAMPLE,
        world_size,
        workload: Workload { new_tokens, cached_tokens },
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1e-30)
}

#[test]
fn thresholds_match_hand_computation() {
    // N=4, NH=128, NKV=8, e=2, C=800e12, BW=50e9, T=1280, P=126720.
    let th = thresholds(&paper(4, 1280, 126_720)).unwrap();
    // Eq. 2: 4 * 800e12 * 8 * 2 / (2 * 128 * 50e9) = 4000 tokens.
    assert!(close(th.kv_hidden_min_tokens, 4000.0), "{}", th.kv_hidden_min_tokens);
    // Eq. 3: 4 * 2 * 800e12 / (4 * 50e9) = 32000 tokens.
    assert!(close(th.q_hidden_min_context, 32_000.0), "{}", th.q_hidden_min_context);
    // Eq. 1: 2 * 8 / 128 = 0.125.
    assert!(close(th.q_smaller_max_miss_rate, 0.125));
    // Alg. 5: 0.125 - 4 * 1280 * 50e9 / (4 * 800e12 * 2) = 0.125 - 0.04 = 0.085.
    assert!(close(th.alg5_min_miss_rate, 0.085), "{}", th.alg5_min_miss_rate);
    assert!(close(th.miss_rate, 0.01));
}

#[test]
fn cost_model_matches_hand_computation() {
    // Llama3-8B shape (D = 4096), N=2, T=8192, P=0, C=1e15, BW=1e11.
    let inputs = Inputs {
        model: ModelShape::LLAMA3_8B,
        hardware: Hardware { compute: Compute::custom(1e15), link: Link::custom(1e11) },
        world_size: 2,
        workload: Workload { new_tokens: 8192, cached_tokens: 0 },
    };
    let cost = cost_model(&inputs).unwrap();
    let step_flops = 4.0 * 4096.0 * 4096.0 * 4096.0;
    assert!(close(cost.step_flops, step_flops));
    assert!(close(cost.step_flops_causal, step_flops / 2.0));
    let compute = step_flops / 1e15;
    // KV message: 2 * 4096 tokens * 4096 * 2 bytes * (8 / 32).
    let kv_bytes = 2.0 * 4096.0 * 4096.0 * 2.0 * 0.25;
    assert!(close(cost.pass_kv.message_bytes, kv_bytes));
    assert!(close(cost.pass_kv.step_comm_s, kv_bytes / 1e11));
    assert!(close(cost.pass_kv.total_s, compute.max(kv_bytes / 1e11) + compute));
    let q_bytes = 4096.0 * 4096.0 * 2.0;
    assert!(close(cost.pass_q.message_bytes, q_bytes));
    let a2a = 1.0 * 4096.0 * 4097.0 * 2.0 / 1e11;
    assert!(close(cost.pass_q.all_to_all_s, a2a));
    assert!(close(cost.pass_q.total_s, compute.max(q_bytes / 1e11) + compute + a2a));
    assert_eq!(cost.pass_kv.all_to_all_s, 0.0);
}

#[test]
fn closed_forms_agree_with_the_cost_model() {
    // At T on Eq. 2's threshold, pass-KV's transfer equals its compute.
    let t = 4000;
    let cost = cost_model(&paper(4, t, 50_000)).unwrap();
    assert!(close(cost.pass_kv.step_comm_s, cost.pass_kv.step_compute_s));
    // At T + P on Eq. 3's threshold, pass-Q's transfer equals its compute.
    let cost = cost_model(&paper(4, 2000, 30_000)).unwrap();
    assert!(close(cost.pass_q.step_comm_s, cost.pass_q.step_compute_s));
}

#[test]
fn seed_demonstration() {
    let one = choose(Rule::Alg5, &paper(4, 1280, 126_720)).unwrap();
    assert_eq!(one.mode, Mode::PassQ, "{one}");
    let fifteen = choose(Rule::Alg5, &paper(4, 19_200, 108_800)).unwrap();
    assert_eq!(fifteen.mode, Mode::PassKv, "{fifteen}");
    assert!(fifteen.reason().contains("Eq. 2"), "{}", fifteen.reason());
    // Algorithm 1 without the all-to-all term agrees on both.
    assert_eq!(choose(Rule::Alg1, &paper(4, 1280, 126_720)).unwrap().mode, Mode::PassQ);
    assert_eq!(choose(Rule::Alg1, &paper(4, 19_200, 108_800)).unwrap().mode, Mode::PassKv);
}

#[test]
fn alg5_differs_from_alg1_where_the_all_to_all_matters() {
    // Miss rate 10%: below Eq. 1's 0.125 (Alg. 1 says pass-Q) but above Alg. 5's lowered
    // threshold 0.125 - 4 T BW / (N C e), which at T=3200 is 0.025.
    let inputs = paper(4, 3200, 28_800);
    assert_eq!(choose(Rule::Alg1, &inputs).unwrap().mode, Mode::PassQ);
    assert_eq!(choose(Rule::Alg5, &inputs).unwrap().mode, Mode::PassKv);
}

#[test]
fn published_empirical_rule_disagrees_with_table_4() {
    // Table 4 (CP4, P + T = 128000): pass-KV wins at 10%, 20%, ..., 100% miss rate.
    let rule = EmpiricalRule::published();
    for miss in [0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0] {
        let w = Workload::from_miss_rate(128_000, miss).unwrap();
        let h = rule.h(w.new_tokens, w.cached_tokens);
        assert!(h < 0.0, "miss {miss}: h = {h}");
    }
    // By hand at 100%: -1.059 ln(128000) + 12.112.
    assert!(close(rule.h(128_000, 0), -1.059 * 128_000f64.ln() + 12.112));
}

#[test]
fn fitted_rule_reproduces_table_4() {
    // Winners of Table 4 as measured by the paper: pass-Q at 1%, 2.5%; pass-KV from 10% up.
    let table4 = [
        (0.01, Mode::PassQ),
        (0.025, Mode::PassQ),
        (0.1, Mode::PassKv),
        (0.2, Mode::PassKv),
        (0.5, Mode::PassKv),
        (1.0, Mode::PassKv),
    ];
    let obs: Vec<Observation> = table4
        .iter()
        .map(|&(miss, winner)| {
            let w = Workload::from_miss_rate(128_000, miss).unwrap();
            Observation { new_tokens: w.new_tokens, cached_tokens: w.cached_tokens, winner }
        })
        .collect();
    let rule = EmpiricalRule::fit(&obs).unwrap();
    for o in &obs {
        assert_eq!(rule.mode(o.new_tokens, o.cached_tokens), o.winner, "{o:?} with {rule:?}");
    }
}

#[test]
fn fit_recovers_a_known_boundary() {
    check_property("empirical fit separates its own data", (-2.0f64..-0.2, 0.3f64..2.0, 5.0f64..15.0), |(a, b, c)| {
        let truth = EmpiricalRule { a, b, c };
        let mut obs = Vec::new();
        for total in [8_000usize, 32_000, 128_000, 512_000] {
            for miss in [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0] {
                let w = Workload::from_miss_rate(total, miss).unwrap();
                let h = truth.h(w.new_tokens, w.cached_tokens);
                if h.abs() > 0.3 {
                    obs.push(Observation {
                        new_tokens: w.new_tokens,
                        cached_tokens: w.cached_tokens,
                        winner: truth.mode(w.new_tokens, w.cached_tokens),
                    });
                }
            }
        }
        prop_assume!(obs.iter().any(|o| o.winner == Mode::PassKv) && obs.iter().any(|o| o.winner == Mode::PassQ));
        let fitted = EmpiricalRule::fit(&obs).unwrap();
        for o in &obs {
            prop_assert_eq!(fitted.mode(o.new_tokens, o.cached_tokens), o.winner, "{:?}", o);
        }
        Ok(())
    });
}

#[test]
fn bad_inputs_are_errors() {
    let mut inputs = paper(4, 10, 10);
    inputs.model.n_kv_heads = 3;
    assert!(matches!(choose(Rule::Alg5, &inputs), Err(HeuristicError::HeadRatio { n_heads: 128, n_kv_heads: 3 })));
    let mut inputs = paper(0, 10, 10);
    assert_eq!(choose(Rule::Alg1, &inputs).unwrap_err().to_string(), "world_size must be at least 1, got 0");
    inputs.world_size = 2;
    inputs.hardware.link.bandwidth = 0.0;
    assert!(matches!(cost_model(&inputs), Err(HeuristicError::NotPositive { .. })));
    assert!(choose(Rule::Alg5, &paper(4, 0, 10)).is_err());
    assert!(EmpiricalRule::fit(&[Observation { new_tokens: 1, cached_tokens: 1, winner: Mode::PassQ }]).is_err());
}

fn inputs_strategy() -> impl Strategy<Value = (usize, usize, usize, f64, f64)> {
    (1usize..=16, 1usize..200_000, 0usize..2_000_000, 1e13f64..2e15, 1e9f64..1e12)
}

fn at(n: usize, t: usize, p: usize, c: f64, bw: f64) -> Inputs {
    Inputs {
        model: ModelShape::LLAMA3_405B,
        hardware: Hardware { compute: Compute::custom(c), link: Link::custom(bw) },
        world_size: n,
        workload: Workload { new_tokens: t, cached_tokens: p },
    }
}

#[test]
fn pass_kv_is_monotone_in_its_favourable_directions() {
    check_property("Alg. 1/5 monotonicity", inputs_strategy(), |(n, t, p, c, bw)| {
        for rule in [Rule::Alg1, Rule::Alg5] {
            if choose(rule, &at(n, t, p, c, bw)).unwrap().mode == Mode::PassKv {
                // More new tokens, fewer cached tokens, a faster link or slower compute keep pass-KV.
                for other in
                    [at(n, t * 2, p, c, bw), at(n, t, p / 2, c, bw), at(n, t, p, c, bw * 2.0), at(n, t, p, c / 2.0, bw)]
                {
                    prop_assert_eq!(choose(rule, &other).unwrap().mode, Mode::PassKv, "{} at {:?}", rule, other);
                }
            }
        }
        Ok(())
    });
}

#[test]
fn costs_grow_with_tokens_and_thresholds_are_consistent() {
    check_property("cost model monotonicity", inputs_strategy(), |(n, t, p, c, bw)| {
        let base = cost_model(&at(n, t, p, c, bw)).unwrap();
        let more = cost_model(&at(n, t + 1, p + 1, c, bw)).unwrap();
        prop_assert!(more.pass_kv.total_s > base.pass_kv.total_s);
        prop_assert!(more.pass_q.total_s > base.pass_q.total_s);
        prop_assert!(base.step_flops_causal <= base.step_flops);
        // Eq. 2 is exactly "pass-KV's transfer fits under its compute".
        let th = thresholds(&at(n, t, p, c, bw)).unwrap();
        let hidden = base.pass_kv.step_comm_s <= base.pass_kv.step_compute_s;
        let t = t as f64;
        if t >= th.kv_hidden_min_tokens * (1.0 + 1e-9) {
            prop_assert!(hidden, "T = {} above Eq. 2's {} but the transfer is not hidden", t, th.kv_hidden_min_tokens);
        } else if t <= th.kv_hidden_min_tokens * (1.0 - 1e-9) {
            prop_assert!(!hidden, "T = {} below Eq. 2's {} but the transfer is hidden", t, th.kv_hidden_min_tokens);
        }
        // The published empirical rule prefers pass-KV more as the miss rate rises (b > 0).
        let rule = EmpiricalRule::published();
        prop_assert!(rule.h(t as usize, p / 2) >= rule.h(t as usize, p));
        Ok(())
    });
}

#[test]
fn a_short_prompt_is_cheaper_on_one_rank_once_messages_cost_latency() {
    // Llama3-8B attention on 4 ranks at 400 TFLOP/s over a 200 GB/s link with 30 us a message.
    let inputs = |t: usize, latency: f64| Inputs {
        model: ModelShape::LLAMA3_8B,
        hardware: Hardware { compute: Compute::custom(400e12), link: Link::custom(200e9).with_latency(latency) },
        world_size: 4,
        workload: Workload { new_tokens: t, cached_tokens: 0 },
    };
    // One rank: 4 T^2 D / C. T = 512: 4 * 512^2 * 4096 / 400e12 = 10.7 us.
    let tiny = cost_model(&inputs(512, 30e-6)).unwrap();
    assert!(close(tiny.single_s, 4.0 * 512.0 * 512.0 * 4096.0 / 400e12));
    // Three ring steps of at least 30 us each: the ring cannot win.
    assert!(!tiny.cp_wins(), "ring {} s vs one rank {} s", tiny.best_ring_s(), tiny.single_s);
    let text = choose(Rule::Alg5, &inputs(512, 30e-6)).unwrap().to_string();
    assert!(text.contains("CP cannot win here"), "{text}");
    // Without latency the paper's model always splits the work N ways.
    assert!(cost_model(&inputs(512, 0.0)).unwrap().cp_wins());
    // A long prompt wins with the same latency.
    let long = cost_model(&inputs(65_536, 30e-6)).unwrap();
    assert!(long.cp_wins() && long.best_ring_s() < long.single_s / 3.0);
    // A negative or NaN latency is refused.
    for bad in [-1e-6, f64::NAN] {
        assert!(matches!(cost_model(&inputs(512, bad)), Err(HeuristicError::NotPositive { .. })));
    }
}

#[test]
fn auto_takes_gather_kv_for_a_short_prompt_and_algorithm_5_otherwise() {
    let inputs = |t: usize, p: usize| Inputs {
        model: ModelShape::LLAMA3_8B,
        hardware: Hardware { compute: Compute::custom(400e12), link: Link::custom(250e9).with_latency(100e-6) },
        world_size: 4,
        workload: Workload { new_tokens: t, cached_tokens: p },
    };
    // T = 4096 on 4 ranks: three shifts of 100 us each against steps of ~27 us compute; one
    // gather pays the latency once.
    let short = choose(Rule::Auto, &inputs(4096, 0)).unwrap();
    assert_eq!(short.mode, Mode::GatherKv, "{short}");
    assert!(short.cost.gather_kv.total_s < short.cost.pass_kv.total_s.min(short.cost.pass_q.total_s));
    assert!(short.to_string().contains("gather-KV predicted"), "{short}");
    assert_eq!(cp_ring::Algorithm::from(short.mode), cp_ring::Algorithm::GatherKv);
    // A long prompt: Algorithm 5's choice stands.
    for (t, p) in [(131_072, 0), (1280, 126_720), (12_800, 115_200)] {
        let auto = choose(Rule::Auto, &inputs(t, p)).unwrap();
        let alg5 = choose(Rule::Alg5, &inputs(t, p)).unwrap();
        assert_eq!(auto.mode, alg5.mode, "T={t} P={p}: {auto}");
    }
    // Algorithm 5 itself never picks gather-KV.
    assert_ne!(choose(Rule::Alg5, &inputs(4096, 0)).unwrap().mode, Mode::GatherKv);
}

#[test]
fn where_transfers_do_not_overlap_compute_auto_takes_the_cheapest_total() {
    // Roughly 4 x H100 over NCCL (session 8): 2.5e15 FLOP/s by Table 3's count, 290 GB/s and
    // 23 us a message; P + T = 128000 at the sweep's miss rates.
    let inputs = |miss: f64, overlap: bool| {
        let link = Link::custom(290e9).with_latency(23e-6);
        Inputs {
            model: ModelShape::LLAMA3_8B,
            hardware: Hardware {
                compute: Compute::custom(2.5e15),
                link: if overlap { link } else { link.without_overlap() },
            },
            world_size: 4,
            workload: Workload::from_miss_rate(128_000, miss).unwrap(),
        }
    };
    for miss in [0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0] {
        let hidden = cost_model(&inputs(miss, true)).unwrap();
        let exposed = cost_model(&inputs(miss, false)).unwrap();
        // Every transfer adds to the ring's time: (N - 1) (compute + comm) + compute + all-to-all.
        for (h, e) in [(&hidden.pass_kv, &exposed.pass_kv), (&hidden.pass_q, &exposed.pass_q)] {
            assert!(close(e.total_s, 3.0 * (e.step_compute_s + e.step_comm_s) + e.step_compute_s + e.all_to_all_s));
            assert!(close(e.step_exposed_s, e.step_comm_s));
            assert!(e.total_s >= h.total_s);
        }
        // Gather-KV never overlapped: the same either way.
        assert!(close(exposed.gather_kv.total_s, hidden.gather_kv.total_s));
        let auto = choose(Rule::Auto, &inputs(miss, false)).unwrap();
        assert!(close(exposed.of(auto.mode).total_s, exposed.best_ring_s()), "miss {miss}: {auto}");
        assert!(auto.to_string().contains("do not overlap"), "{auto}");
    }
    // What the 4-GPU sweeps measured over NCCL (pass-Q the winner from 1% to 10%, within 2% of
    // gather-KV at 20%; gather-KV or pass-KV from 50%): pass-Q at low miss rates.
    for miss in [0.025, 0.05, 0.1] {
        assert_eq!(choose(Rule::Auto, &inputs(miss, false)).unwrap().mode, Mode::PassQ, "miss {miss}");
    }
    assert_ne!(choose(Rule::Auto, &inputs(1.0, false)).unwrap().mode, Mode::PassQ);
    // The paper's rules do not look at the overlap.
    for rule in [Rule::Alg1, Rule::Alg5] {
        assert_eq!(choose(rule, &inputs(0.05, false)).unwrap().mode, choose(rule, &inputs(0.05, true)).unwrap().mode);
    }
}

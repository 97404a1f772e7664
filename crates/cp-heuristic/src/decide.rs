//! Algorithm 1, Algorithm 5 and the empirical rule, with the quantities behind each decision.

use std::fmt;

use crate::{CostModel, EmpiricalRule, Inputs, Result, cost_model};

/// The two ring algorithms for prefill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Ring pass-KV (Algorithm 2): queries stay, keys and values travel.
    PassKv,
    /// Ring pass-Q (Algorithm 3): keys and values stay, queries travel, then an all-to-all.
    PassQ,
    /// Gather-KV: every rank's keys and values gathered by one all-to-all, no ring shifts
    /// (short prompts, where a shift's fixed latency outweighs its compute). Chosen only by
    /// [`Rule::Auto`].
    GatherKv,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::PassKv => "pass-KV",
            Mode::PassQ => "pass-Q",
            Mode::GatherKv => "gather-KV",
        })
    }
}

impl From<Mode> for cp_ring::Algorithm {
    /// The ring algorithm that runs a mode.
    fn from(mode: Mode) -> cp_ring::Algorithm {
        match mode {
            Mode::PassKv => cp_ring::Algorithm::PassKv,
            Mode::PassQ => cp_ring::Algorithm::PassQ,
            Mode::GatherKv => cp_ring::Algorithm::GatherKv,
        }
    }
}

/// Which rule decides.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// Algorithm 1: pass-KV if its transfer hides under compute (Eq. 2) or KV is the smaller
    /// message (Eq. 1).
    Alg1,
    /// Algorithm 5: Algorithm 1 with pass-Q's all-to-all counted against it.
    Alg5,
    /// The empirical rule `h(T, P) > 0` of Appendix D, with the given coefficients.
    Empirical(EmpiricalRule),
    /// Algorithm 5, except that gather-KV is taken where the cost model (with the link's
    /// latency) predicts it faster than Algorithm 5's choice: short prompts.
    Auto,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Alg1 => f.write_str("Algorithm 1"),
            Rule::Alg5 => f.write_str("Algorithm 5"),
            Rule::Auto => f.write_str("Algorithm 5 + gather-KV for short prompts"),
            Rule::Empirical(r) => write!(f, "empirical rule (a={:.3}, b={:.3}, c={:.3})", r.a, r.b, r.c),
        }
    }
}

/// The closed-form thresholds of the paper for one input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// `T / (T + P)`.
    pub miss_rate: f64,
    /// Eq. 2: pass-KV's transfer hides under compute when `T >=` this many tokens
    /// (`N C NKV e / (2 NH BW)`, independent of `P`).
    pub kv_hidden_min_tokens: f64,
    /// Eq. 3: pass-Q's transfer hides when `T + P >=` this many tokens (`N e C / (4 BW)`).
    pub q_hidden_min_context: f64,
    /// Eq. 1: Q is the smaller message when the miss rate is at most `2 NKV / NH`.
    pub q_smaller_max_miss_rate: f64,
    /// Algorithm 5's miss-rate threshold: `2 NKV / NH - 4 T BW / (N C e)`.
    pub alg5_min_miss_rate: f64,
}

/// Computes the paper's thresholds for `inputs`.
pub fn thresholds(inputs: &Inputs) -> Result<Thresholds> {
    inputs.validate()?;
    let n = inputs.world_size as f64;
    let t = inputs.workload.new_tokens as f64;
    let e = inputs.model.elem_bytes as f64;
    let c = inputs.hardware.compute.flops;
    let bw = inputs.hardware.link.bandwidth;
    let nh = inputs.model.n_heads as f64;
    let nkv = inputs.model.n_kv_heads as f64;
    let q_smaller = 2.0 * nkv / nh;
    Ok(Thresholds {
        miss_rate: inputs.workload.miss_rate(),
        kv_hidden_min_tokens: n * c * nkv * e / (2.0 * nh * bw),
        q_hidden_min_context: n * e * c / (4.0 * bw),
        q_smaller_max_miss_rate: q_smaller,
        alg5_min_miss_rate: q_smaller - 4.0 * t * bw / (n * c * e),
    })
}

/// A choice with everything behind it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// The chosen algorithm.
    pub mode: Mode,
    /// The rule that chose it.
    pub rule: Rule,
    /// The inputs it was made for.
    pub inputs: Inputs,
    /// The paper's thresholds at these inputs.
    pub thresholds: Thresholds,
    /// The empirical rule's `h(T, P)` when that rule decided.
    pub empirical_h: Option<f64>,
    /// Predicted per-step and total cost of both options.
    pub cost: CostModel,
}

impl Decision {
    /// One sentence saying which condition decided.
    pub fn reason(&self) -> String {
        let th = &self.thresholds;
        let t = self.inputs.workload.new_tokens as f64;
        let kv_hidden = t >= th.kv_hidden_min_tokens;
        match self.rule {
            Rule::Auto if !self.inputs.hardware.link.overlaps_compute => format!(
                "transfers do not overlap compute on this link: the cheapest predicted total (pass-KV {:.3} ms, \
                 pass-Q {:.3} ms, gather-KV {:.3} ms)",
                self.cost.pass_kv.total_s * 1e3,
                self.cost.pass_q.total_s * 1e3,
                self.cost.gather_kv.total_s * 1e3
            ),
            Rule::Empirical(_) => {
                let h = self.empirical_h.unwrap_or(f64::NAN);
                format!("h(T,P) = {h:.3} {} 0", if h > 0.0 { ">" } else { "<=" })
            }
            Rule::Auto if self.mode == Mode::GatherKv => format!(
                "gather-KV predicted at {:.3} ms, below pass-KV {:.3} ms and pass-Q {:.3} ms: each ring shift's latency \
                 outweighs its compute",
                self.cost.gather_kv.total_s * 1e3,
                self.cost.pass_kv.total_s * 1e3,
                self.cost.pass_q.total_s * 1e3
            ),
            Rule::Alg1 | Rule::Alg5 | Rule::Auto => {
                let miss_limit =
                    if self.rule == Rule::Alg1 { th.q_smaller_max_miss_rate } else { th.alg5_min_miss_rate };
                if kv_hidden {
                    format!("T = {t} >= {:.0}: KV transfer hides under compute (Eq. 2)", th.kv_hidden_min_tokens)
                } else if th.miss_rate >= miss_limit {
                    format!("miss rate {:.4} >= {miss_limit:.4}: KV is the cheaper message", th.miss_rate)
                } else {
                    format!(
                        "T = {t} < {:.0} and miss rate {:.4} < {miss_limit:.4}: Q is the cheaper message",
                        th.kv_hidden_min_tokens, th.miss_rate
                    )
                }
            }
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = &self.inputs.workload;
        writeln!(
            f,
            "{} (by {}) for T={}, P={}, N={}: {}",
            self.mode,
            self.rule,
            w.new_tokens,
            w.cached_tokens,
            self.inputs.world_size,
            self.reason()
        )?;
        if !self.cost.cp_wins() {
            writeln!(
                f,
                "  CP cannot win here: the faster ring is predicted at {:.3} ms, one rank doing all the work at {:.3} ms",
                self.cost.best_ring_s() * 1e3,
                self.cost.single_s * 1e3
            )?;
        }
        for (mode, cost) in [
            (Mode::PassKv, &self.cost.pass_kv),
            (Mode::PassQ, &self.cost.pass_q),
            (Mode::GatherKv, &self.cost.gather_kv),
        ] {
            writeln!(
                f,
                "  {mode:>7}: step compute {:.3} ms, step comm {:.3} ms (exposed {:.3} ms), all-to-all {:.3} ms, total {:.3} ms",
                cost.step_compute_s * 1e3,
                cost.step_comm_s * 1e3,
                cost.step_exposed_s * 1e3,
                cost.all_to_all_s * 1e3,
                cost.total_s * 1e3
            )?;
        }
        Ok(())
    }
}

/// Chooses pass-KV or pass-Q for `inputs` by `rule`.
pub fn choose(rule: Rule, inputs: &Inputs) -> Result<Decision> {
    let thresholds = thresholds(inputs)?;
    let cost = cost_model(inputs)?;
    let t = inputs.workload.new_tokens as f64;
    let kv_hidden = t >= thresholds.kv_hidden_min_tokens;
    let mut empirical_h = None;
    let kv = match rule {
        Rule::Alg1 => kv_hidden || thresholds.miss_rate >= thresholds.q_smaller_max_miss_rate,
        Rule::Alg5 | Rule::Auto => kv_hidden || thresholds.miss_rate >= thresholds.alg5_min_miss_rate,
        Rule::Empirical(r) => {
            for (what, value) in
                [("empirical coefficient a", r.a), ("empirical coefficient b", r.b), ("empirical coefficient c", r.c)]
            {
                if !value.is_finite() {
                    return Err(crate::HeuristicError::OutOfRange { what, range: "finite", value });
                }
            }
            let h = r.h(inputs.workload.new_tokens, inputs.workload.cached_tokens);
            empirical_h = Some(h);
            h > 0.0
        }
    };
    let mut mode = if kv { Mode::PassKv } else { Mode::PassQ };
    if rule == Rule::Auto && !inputs.hardware.link.overlaps_compute {
        // Algorithm 5's thresholds assume transfers hide under compute; where none does, the
        // cheapest predicted total decides.
        mode = cost.cheapest().0;
    } else if rule == Rule::Auto && cost.gather_kv.total_s < cost.of(mode).total_s {
        mode = Mode::GatherKv;
    }
    Ok(Decision { mode, rule, inputs: *inputs, thresholds, empirical_h, cost })
}

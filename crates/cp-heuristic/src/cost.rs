//! The cost model behind the heuristic: FLOPs and bytes of one ring step (Table 3 of the
//! paper) turned into predicted times for pass-KV and pass-Q.

use crate::{Inputs, Mode, Result};

/// Predicted cost of one ring algorithm on one rank.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModeCost {
    /// Bytes of one ring message.
    pub message_bytes: f64,
    /// Attention compute of one ring step, seconds.
    pub step_compute_s: f64,
    /// Transfer of one ring message, seconds.
    pub step_comm_s: f64,
    /// Part of a step's transfer not hidden under its compute: `max(0, comm - compute)`, or all
    /// of it on a link whose transfers do not overlap compute.
    pub step_exposed_s: f64,
    /// Pass-Q's all-to-all returning partial outputs (zero for pass-KV), seconds.
    pub all_to_all_s: f64,
    /// The whole ring: `N - 1` steps (overlapped, or compute then transfer), the last step's
    /// compute, and the all-to-all.
    pub total_s: f64,
}

/// Predicted costs of both options for one input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CostModel {
    /// FLOPs of one ring step on one rank: `4 (T/N) ((T+P)/N) D` (Table 3, no causal discount).
    pub step_flops: f64,
    /// FLOPs of one ring step on one rank counting only causally visible pairs:
    /// `4 D (T P + T^2 / 2) / N^2`. About half of `step_flops` for a full prefill.
    pub step_flops_causal: f64,
    /// Ring pass-KV (Algorithm 2).
    pub pass_kv: ModeCost,
    /// Ring pass-Q with its all-to-all (Algorithm 3).
    pub pass_q: ModeCost,
    /// Gather-KV: one all-to-all of every rank's keys and values, then the `N` steps' compute
    /// back to back (no overlap; `all_to_all_s` is the gather).
    pub gather_kv: ModeCost,
    /// The same attention on one rank: `4 T (T+P) D / C` (no ring, no message).
    pub single_s: f64,
}

impl CostModel {
    /// The predicted cost of ring algorithm `mode`.
    pub fn of(&self, mode: Mode) -> &ModeCost {
        match mode {
            Mode::PassKv => &self.pass_kv,
            Mode::PassQ => &self.pass_q,
            Mode::GatherKv => &self.gather_kv,
        }
    }

    /// The ring algorithm with the smallest predicted total (the first of pass-KV, pass-Q,
    /// gather-KV among equals) and that total.
    pub fn cheapest(&self) -> (Mode, f64) {
        let totals = [Mode::PassKv, Mode::PassQ, Mode::GatherKv].map(|m| (m, self.of(m).total_s));
        totals.into_iter().fold(totals[0], |best, next| if next.1 < best.1 { next } else { best })
    }

    /// The fastest ring algorithm's predicted total.
    pub fn best_ring_s(&self) -> f64 {
        self.cheapest().1
    }

    /// Whether the faster ring is predicted to beat one rank doing all the work: not so for a
    /// short prompt, where each ring step's fixed cost (the link's latency) outweighs its
    /// share of the compute.
    pub fn cp_wins(&self) -> bool {
        self.best_ring_s() < self.single_s
    }
}

/// Predicts per-step and total times of pass-KV and pass-Q.
///
/// Per rank and ring step, with `D = DH * NH`: compute `4 (T/N) ((T+P)/N) D / C`; pass-KV
/// sends `2 ((T+P)/N) D e NKV/NH` bytes, pass-Q sends `(T/N) D e` bytes; pass-Q's all-to-all
/// moves `(N - 1) (T/N) (D + 1) e` bytes (Appendix C's term, per rank). Transfers of step
/// `j + 1` overlap the compute of step `j`, so a ring of `N` steps takes
/// `(N - 1) max(compute, comm) + compute` — or `(N - 1) (compute + comm) + compute` on a link
/// whose transfers do not run under the attention ([`crate::Link::overlaps_compute`]). Every message also pays the link's fixed latency
/// (zero unless measured), which is what makes a short prompt cheaper on one rank
/// ([`CostModel::cp_wins`]). The model uses Table 3's count without a causal
/// discount, as the paper's thresholds do; `step_flops_causal` is there to compare with
/// measured causal work.
pub fn cost_model(inputs: &Inputs) -> Result<CostModel> {
    inputs.validate()?;
    let n = inputs.world_size as f64;
    let t = inputs.workload.new_tokens as f64;
    let p = inputs.workload.cached_tokens as f64;
    let d = inputs.model.model_dim() as f64;
    let e = inputs.model.elem_bytes as f64;
    let c = inputs.hardware.compute.flops;
    let bw = inputs.hardware.link.bandwidth;

    let step_flops = 4.0 * (t / n) * ((t + p) / n) * d;
    let step_flops_causal = 4.0 * d * (t * p + t * t / 2.0) / (n * n);
    let step_compute_s = step_flops / c;
    let latency = inputs.hardware.link.latency_s;
    let overlaps = inputs.hardware.link.overlaps_compute;
    let mode = |message_bytes: f64, all_to_all_s: f64| {
        let step_comm_s = latency + message_bytes / bw;
        let ring_steps = n - 1.0;
        let (step_s, step_exposed_s) = if overlaps {
            (step_compute_s.max(step_comm_s), (step_comm_s - step_compute_s).max(0.0))
        } else {
            (step_compute_s + step_comm_s, step_comm_s)
        };
        ModeCost {
            message_bytes,
            step_compute_s,
            step_comm_s,
            step_exposed_s,
            all_to_all_s,
            total_s: ring_steps * step_s + step_compute_s + all_to_all_s,
        }
    };
    let kv_bytes = 2.0 * ((t + p) / n) * d * e * inputs.model.kv_ratio();
    let q_bytes = (t / n) * d * e;
    let all_to_all_s = if n > 1.0 { latency + (n - 1.0) * (t / n) * (d + 1.0) * e / bw } else { 0.0 };
    let single_s = 4.0 * t * (t + p) * d / c;
    let gather_s = if n > 1.0 { latency + (n - 1.0) * kv_bytes / bw } else { 0.0 };
    let gather_kv = ModeCost {
        message_bytes: kv_bytes,
        step_compute_s,
        step_comm_s: 0.0,
        step_exposed_s: 0.0,
        all_to_all_s: gather_s,
        total_s: gather_s + n * step_compute_s,
    };
    Ok(CostModel {
        step_flops,
        step_flops_causal,
        pass_kv: mode(kv_bytes, 0.0),
        pass_q: mode(q_bytes, all_to_all_s),
        gather_kv,
        single_s,
    })
}

//! The empirical rule of Appendix D, `h(T, P) = a ln T + b ln(T / (T + P)) + c`, and fitting
//! it to measured winners.

use crate::{HeuristicError, Mode, Result};

/// `h(T, P) = a ln(T) + b ln(T / (T + P)) + c`; pass-KV when `h > 0`.
///
/// Logs are natural and `T` is in tokens. The paper states neither, and with these
/// conventions its published coefficients ([`EmpiricalRule::published`]) give `h < 0` at every
/// miss rate for `P + T = 128000`, where its own Table 4 has pass-KV winning above about 5%.
/// Fit coefficients to your own measurements with [`EmpiricalRule::fit`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EmpiricalRule {
    /// Coefficient of `ln T`.
    pub a: f64,
    /// Coefficient of `ln(miss rate)`.
    pub b: f64,
    /// Constant.
    pub c: f64,
}

/// A measured point: at `new_tokens` and `cached_tokens`, `winner` was faster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    /// New tokens `T`.
    pub new_tokens: usize,
    /// Cached tokens `P`.
    pub cached_tokens: usize,
    /// The faster algorithm.
    pub winner: Mode,
}

impl EmpiricalRule {
    /// The coefficients published in the paper: a = -1.059, b = 1.145, c = 12.112.
    pub const fn published() -> EmpiricalRule {
        EmpiricalRule { a: -1.059, b: 1.145, c: 12.112 }
    }

    /// `h(T, P)`; `T` must be at least 1 (`T = 0` gives `-inf` terms).
    pub fn h(&self, new_tokens: usize, cached_tokens: usize) -> f64 {
        let (x1, x2) = features(new_tokens, cached_tokens);
        self.a * x1 + self.b * x2 + self.c
    }

    /// The decision of the rule.
    pub fn mode(&self, new_tokens: usize, cached_tokens: usize) -> Mode {
        if self.h(new_tokens, cached_tokens) > 0.0 { Mode::PassKv } else { Mode::PassQ }
    }

    /// Fits `a, b, c` to measured winners by L2-regularised logistic regression (Newton's
    /// method), pass-KV being the positive class.
    ///
    /// Needs at least one winner of each kind; with separable data the small ridge term keeps
    /// the coefficients finite, and the boundary `h = 0` is what matters.
    pub fn fit(observations: &[Observation]) -> Result<EmpiricalRule> {
        let n_kv = observations.iter().filter(|o| o.winner == Mode::PassKv).count();
        if n_kv == 0 || n_kv == observations.len() {
            return Err(HeuristicError::Fit {
                reason: format!(
                    "{} observations, {n_kv} won by pass-KV: need at least one winner of each kind",
                    observations.len()
                ),
            });
        }
        if let Some(o) = observations.iter().find(|o| o.new_tokens == 0) {
            return Err(HeuristicError::Fit { reason: format!("observation with T = 0 (P = {})", o.cached_tokens) });
        }
        let rows: Vec<([f64; 3], f64)> = observations
            .iter()
            .map(|o| {
                let (x1, x2) = features(o.new_tokens, o.cached_tokens);
                ([x1, x2, 1.0], if o.winner == Mode::PassKv { 1.0 } else { 0.0 })
            })
            .collect();
        let ridge = 1e-4;
        let mut w = [0.0f64; 3];
        for _ in 0..200 {
            let mut grad = [0.0; 3];
            let mut hess = [[0.0; 3]; 3];
            for (x, y) in &rows {
                let z: f64 = (0..3).map(|i| w[i] * x[i]).sum();
                let s = 1.0 / (1.0 + (-z).exp());
                for i in 0..3 {
                    grad[i] += (s - y) * x[i];
                    for j in 0..3 {
                        hess[i][j] += s * (1.0 - s) * x[i] * x[j];
                    }
                }
            }
            for i in 0..3 {
                grad[i] += ridge * w[i];
                hess[i][i] += ridge;
            }
            let step = solve3(hess, grad)
                .ok_or_else(|| HeuristicError::Fit { reason: "singular system: the points are degenerate".into() })?;
            for i in 0..3 {
                w[i] -= step[i];
            }
            if step.iter().map(|s| s.abs()).fold(0.0, f64::max) < 1e-10 {
                break;
            }
        }
        if w.iter().any(|v| !v.is_finite()) {
            return Err(HeuristicError::Fit { reason: "the fit diverged".into() });
        }
        Ok(EmpiricalRule { a: w[0], b: w[1], c: w[2] })
    }
}

fn features(new_tokens: usize, cached_tokens: usize) -> (f64, f64) {
    let t = new_tokens as f64;
    (t.ln(), (t / (t + cached_tokens as f64)).ln())
}

/// Solves the 3x3 system `m x = b` by Gaussian elimination with partial pivoting.
fn solve3(mut m: [[f64; 3]; 3], mut b: [f64; 3]) -> Option<[f64; 3]> {
    for col in 0..3 {
        let pivot = (col..3).max_by(|&i, &j| m[i][col].abs().total_cmp(&m[j][col].abs()))?;
        if m[pivot][col].abs() < 1e-300 {
            return None;
        }
        m.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..3 {
            let f = m[row][col] / m[col][col];
            for k in col..3 {
                m[row][k] -= f * m[col][k];
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0.0; 3];
    for row in (0..3).rev() {
        let tail: f64 = (row + 1..3).map(|k| m[row][k] * x[k]).sum();
        x[row] = (b[row] - tail) / m[row][row];
    }
    Some(x)
}

//! The oracle: a deliberately naive f64 attention over plain vectors, and error measures.
//!
//! Nothing here is fast. It loops over every query row, head and key, applies the causal rule
//! row by row, and computes the log-sum-exp with the max trick in f64. Every other path (candle
//! on the CPU, the CUDA kernels, every ring algorithm) is compared with it. The causal rule is
//! spelled out here again on purpose, rather than taken from `cp_shard::visible`, so that a
//! mistake in the shared rule shows up as a mismatch instead of being copied into the oracle.

use cp_shard::Token;

use crate::{AttentionError, Result};

/// Shape of an attention problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
}

/// Attention of `q` (`[q_tokens.len(), NH, DH]`, row-major) against `k`, `v`
/// (`[kv_tokens.len(), NKV, DH]`): a query sees a key of the same sequence at the same or an
/// earlier position; padding rows (`None`) see and are seen by nothing. Returns `(out, lse)` with shapes
/// `[Tq, NH, DH]` and `[Tq, NH]`; rows that see nothing get zeros and `-inf`, rows with a NaN
/// among the scores they see (a NaN query, or a NaN in a key they see) NaN and NaN. Slices whose
/// lengths do not match the token lists and the head shape, or a head shape that is not one,
/// are errors.
pub fn attention(
    q: &[f64],
    q_tokens: &[Option<Token>],
    k: &[f64],
    v: &[f64],
    kv_tokens: &[Option<Token>],
    heads: Heads,
    scale: f64,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let Heads { n_heads, n_kv_heads, head_dim } = heads;
    if n_kv_heads == 0 || n_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        return Err(AttentionError::Heads { n_heads, n_kv_heads });
    }
    if head_dim == 0 {
        return Err(AttentionError::Shape { what: "head_dim", expected: "at least 1".into(), actual: vec![0] });
    }
    let want = |rows: usize, h: usize| rows.checked_mul(h).and_then(|x| x.checked_mul(head_dim));
    for (what, got, rows, h) in [
        ("q", q.len(), q_tokens.len(), n_heads),
        ("k", k.len(), kv_tokens.len(), n_kv_heads),
        ("v", v.len(), kv_tokens.len(), n_kv_heads),
    ] {
        if want(rows, h) != Some(got) {
            return Err(AttentionError::Shape {
                what,
                expected: format!("{rows} rows x {h} heads x {head_dim} = {:?} values", want(rows, h)),
                actual: vec![got],
            });
        }
    }
    let group = n_heads / n_kv_heads;
    let mut out = vec![0.0; q_tokens.len() * n_heads * head_dim];
    let mut lse = vec![f64::NEG_INFINITY; q_tokens.len() * n_heads];
    let mut scores = vec![0.0; kv_tokens.len()];
    for (i, &qt) in q_tokens.iter().enumerate() {
        for h in 0..n_heads {
            let kvh = h / group;
            let qrow = &q[(i * n_heads + h) * head_dim..][..head_dim];
            let mut max = f64::NEG_INFINITY;
            let mut nan_score = false;
            for (j, &kt) in kv_tokens.iter().enumerate() {
                let causal = matches!((qt, kt), (Some(q), Some(k)) if q.seq == k.seq && k.pos <= q.pos);
                scores[j] = if causal {
                    let krow = &k[(j * n_kv_heads + kvh) * head_dim..][..head_dim];
                    scale * qrow.iter().zip(krow).map(|(a, b)| a * b).sum::<f64>()
                } else {
                    f64::NEG_INFINITY
                };
                max = max.max(scores[j]);
                nan_score |= scores[j].is_nan();
            }
            if nan_score {
                // f64::max skips NaN: without this a NaN query (every score NaN) would look like
                // a row that sees nothing.
                out[(i * n_heads + h) * head_dim..][..head_dim].fill(f64::NAN);
                lse[i * n_heads + h] = f64::NAN;
                continue;
            }
            if max == f64::NEG_INFINITY {
                continue;
            }
            let mut denom = 0.0;
            let orow = &mut out[(i * n_heads + h) * head_dim..][..head_dim];
            for (j, &s) in scores.iter().enumerate() {
                // A key the row does not see adds nothing, whatever its V holds; one it sees adds
                // its weight times V even where the weight underflows (0 x NaN is NaN).
                if s == f64::NEG_INFINITY {
                    continue;
                }
                let p = (s - max).exp();
                denom += p;
                let vrow = &v[(j * n_kv_heads + kvh) * head_dim..][..head_dim];
                for (o, x) in orow.iter_mut().zip(vrow) {
                    *o += p * x;
                }
            }
            orow.iter_mut().for_each(|o| *o /= denom);
            lse[i * n_heads + h] = max + denom.ln();
        }
    }
    Ok((out, lse))
}

/// How far `actual` is from `expected`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Discrepancy {
    /// Largest absolute difference.
    pub max_abs: f64,
    /// `||actual - expected||_2 / ||expected||_2` (the absolute norm when `expected` is zero).
    pub rel_l2: f64,
    /// Elements compared.
    pub count: usize,
    /// Elements where one side is NaN, or where one side is infinite and the other differs.
    pub non_finite_mismatches: usize,
}

impl Discrepancy {
    /// Whether the error is within `tol` (relative L2) and no non-finite value disagrees.
    pub fn within(&self, tol: f64) -> bool {
        self.non_finite_mismatches == 0 && self.rel_l2 <= tol
    }
}

/// [`discrepancy`] where NaN must stand exactly where the oracle's does (garbage a query sees
/// propagates; garbage it must not see never arrives): an element NaN on one side only counts as
/// a non-finite mismatch, one NaN on both sides matches, and the rest is compared as by
/// [`discrepancy`].
pub fn discrepancy_nan_exact(actual: &[f64], expected: &[f64]) -> Discrepancy {
    let mut nan_mismatch = 0;
    let (mut a_rest, mut e_rest) = (Vec::with_capacity(actual.len()), Vec::with_capacity(expected.len()));
    for (&a, &e) in actual.iter().zip(expected) {
        if a.is_nan() || e.is_nan() {
            nan_mismatch += usize::from(a.is_nan() != e.is_nan());
        } else {
            a_rest.push(a);
            e_rest.push(e);
        }
    }
    let mut d = discrepancy(&a_rest, &e_rest);
    d.non_finite_mismatches += nan_mismatch + actual.len().abs_diff(expected.len());
    d
}

/// Compares two equally long slices. Equal infinities (a `-inf` LSE on both sides) count as
/// exact; NaN never matches.
pub fn discrepancy(actual: &[f64], expected: &[f64]) -> Discrepancy {
    let mut d = Discrepancy { count: actual.len(), ..Discrepancy::default() };
    if actual.len() != expected.len() {
        d.non_finite_mismatches = actual.len().abs_diff(expected.len()).max(1);
        return d;
    }
    let (mut num, mut den) = (0.0, 0.0);
    for (&a, &e) in actual.iter().zip(expected) {
        if a.is_nan() || e.is_nan() || (a.is_infinite() || e.is_infinite()) && a != e {
            d.non_finite_mismatches += 1;
            continue;
        }
        if a.is_infinite() {
            continue;
        }
        let diff = a - e;
        d.max_abs = d.max_abs.max(diff.abs());
        num += diff * diff;
        den += e * e;
    }
    d.rel_l2 = if den > 0.0 { (num / den).sqrt() } else { num.sqrt() };
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_exact_matches_nan_only_where_the_oracle_has_it() {
        let nan = f64::NAN;
        let same = discrepancy_nan_exact(&[1.0, nan, f64::NEG_INFINITY], &[1.0, nan, f64::NEG_INFINITY]);
        assert!(same.within(0.0), "{same:?}");
        for (got, want) in [([1.0, nan], [1.0, 2.0]), ([1.0, 2.0], [1.0, nan])] {
            let d = discrepancy_nan_exact(&got, &want);
            assert_eq!(d.non_finite_mismatches, 1, "{got:?} against {want:?}");
        }
        assert!(!discrepancy_nan_exact(&[1.0], &[1.0, nan]).within(1.0), "a length mismatch never passes");
        let off = discrepancy_nan_exact(&[1.1, nan], &[1.0, nan]);
        assert!(off.within(0.2) && !off.within(0.05), "{off:?}");
    }
}

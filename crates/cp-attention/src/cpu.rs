//! The CPU path on candle tensors: partial attention with LSE, the merge, and the
//! `cp_ring::AttentionOps` implementation the ring algorithms run on.

use candle_core::{D, DType, Tensor};
use cp_ring::{AttentionOps, Partial};
use cp_shard::{Layout, Token, visible};

use crate::{AttentionError, Result};

/// Query rows processed at once, bounding the score matrix to `NH * 256 * Tk` elements.
const Q_ROWS_PER_BLOCK: usize = 256;

/// The dtype partials are computed and merged in: f64 for f64 inputs, f32 otherwise
/// (bf16 inputs accumulate in f32).
pub fn compute_dtype(input: DType) -> Result<DType> {
    match input {
        DType::F64 => Ok(DType::F64),
        DType::F32 | DType::BF16 => Ok(DType::F32),
        dtype => Err(AttentionError::Dtype { what: "attention input", dtype }),
    }
}

/// Copies a tensor of any supported dtype into a flat `Vec<f64>` (row-major).
pub fn to_f64_vec(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

/// Casts a merged output back to the input dtype (a no-op for f64 and f32).
pub fn finish(out: &Tensor, input: DType) -> Result<Tensor> {
    Ok(out.to_dtype(input)?)
}

/// Partial attention and merges on the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuAttention {
    /// Softmax scale; `None` means `1 / sqrt(DH)`.
    pub scale: Option<f64>,
}

impl CpuAttention {
    /// Attention of `q` against `k`, `v`, masked by the rows' global positions.
    ///
    /// Returns the output `[Tq, NH, DH]` and log-sum-exp `[Tq, NH]` in [`compute_dtype`].
    pub fn partial(
        &self,
        q: &Tensor,
        q_layout: &Layout,
        k: &Tensor,
        v: &Tensor,
        kv_layout: &Layout,
    ) -> Result<Partial<Tensor>> {
        let dims = check_inputs(q, q_layout, k, v, kv_layout)?;
        let cd = compute_dtype(q.dtype())?;
        let scale = self.scale.unwrap_or(1.0 / (dims.head_dim as f64).sqrt());
        let group = dims.n_heads / dims.n_kv_heads;
        // [NKV, Tk, DH], shared by every query head of the group: no repetition.
        let k = k.to_dtype(cd)?.transpose(0, 1)?.contiguous()?;
        let v = v.to_dtype(cd)?.transpose(0, 1)?.contiguous()?;
        let k_t = k.t()?.contiguous()?;
        if dims.kv_rows == 0 {
            // No key at all: every row sees nothing.
            let out = Tensor::zeros((dims.q_rows, dims.n_heads, dims.head_dim), cd, q.device())?;
            let lse = Tensor::full(f64::NEG_INFINITY, (dims.q_rows, dims.n_heads), q.device())?.to_dtype(cd)?;
            return Ok(Partial { out, lse });
        }
        // A masked key has P = 0, but 0 x NaN = NaN: a non-finite V row would reach, through
        // P V, queries that must not see it (padding, future positions, other sequences,
        // unused cache slots). Such values are zeroed, and the queries that do see a bad row
        // get NaN below, as exact attention gives them. `bad` is [NKV, Tk]: 1 where the row of
        // that head holds a non-finite value.
        let finite = v.abs()?.lt(f64::INFINITY)?;
        let (v, bad) = if finite.min_all()?.to_scalar::<u8>()? == 0 {
            let bad = finite.min_keepdim(D::Minus1)?.squeeze(D::Minus1)?.eq(0u8)?.to_dtype(cd)?;
            (finite.where_cond(&v, &v.zeros_like()?)?, Some(bad))
        } else {
            (v, None)
        };
        let q_tokens: Vec<Option<Token>> = q_layout.rows().collect();
        let kv_tokens: Vec<Option<Token>> = kv_layout.rows().collect();

        let mut outs = Vec::new();
        let mut lses = Vec::new();
        for start in (0..dims.q_rows).step_by(Q_ROWS_PER_BLOCK) {
            let rows = Q_ROWS_PER_BLOCK.min(dims.q_rows - start);
            let visible = visibility(&q_tokens[start..start + rows], &kv_tokens)?;
            // [Tq, NH, DH] -> [NH, Tq, DH] -> [NKV, g * Tq, DH]: heads h = kvh * g + j.
            let qb = q.narrow(0, start, rows)?.to_dtype(cd)?.transpose(0, 1)?.contiguous()?;
            let qb = qb.reshape((dims.n_kv_heads, group * rows, dims.head_dim))?;
            let scores = (qb.matmul(&k_t)? * scale)?.reshape((dims.n_kv_heads, group, rows, dims.kv_rows))?;
            // Masked scores are replaced, not added to: a NaN or infinite score of a masked
            // pair (a NaN key, or a huge one overflowing q.k) must not survive the mask.
            let neg_inf = Tensor::full(f64::NEG_INFINITY, scores.shape(), q.device())?.to_dtype(cd)?;
            let scores = visible.broadcast_as(scores.shape())?.where_cond(&scores, &neg_inf)?;
            let max = scores.max_keepdim(D::Minus1)?;
            // A row with no visible key has max = -inf; use 0 so exp gives 0, not NaN.
            let max = finite_or_zero(&max)?;
            let p = scores.broadcast_sub(&max)?.exp()?;
            let sum = p.sum_keepdim(D::Minus1)?;
            let safe_sum = sum.gt(0.0)?.where_cond(&sum, &sum.ones_like()?)?;
            let p = p.reshape((dims.n_kv_heads, group * rows, dims.kv_rows))?;
            let out = p.matmul(&v)?.reshape((dims.n_kv_heads, group, rows, dims.head_dim))?;
            let mut out = out.broadcast_div(&safe_sum)?;
            if let Some(bad) = &bad {
                // [NKV, 1, Tq, Tk] x [NKV, 1, Tk, 1]: how many bad rows each query sees.
                let seen = visible.to_dtype(cd)?.unsqueeze(0)?.broadcast_matmul(&bad.unsqueeze(1)?.unsqueeze(3)?)?;
                let poisoned = seen.gt(0.0)?.broadcast_as(out.shape())?;
                let nan = Tensor::full(f64::NAN, out.shape(), q.device())?.to_dtype(cd)?;
                out = poisoned.where_cond(&nan, &out)?;
            }
            let lse = (max + sum.log()?)?;
            // Back to [Tq, NH, DH] and [Tq, NH].
            outs.push(out.reshape((dims.n_heads, rows, dims.head_dim))?.transpose(0, 1)?.contiguous()?);
            lses.push(lse.reshape((dims.n_heads, rows))?.t()?.contiguous()?);
        }
        Ok(Partial { out: Tensor::cat(&outs, 0)?, lse: Tensor::cat(&lses, 0)? })
    }
}

/// Merges two partials of the same queries over disjoint keys (online form of Eq. 4).
pub fn merge(a: &Partial<Tensor>, b: &Partial<Tensor>) -> Result<Partial<Tensor>> {
    merge_all(&[a.clone(), b.clone()])
}

/// Merges partials of the same queries over disjoint key blocks (N-way form of Eq. 4).
///
/// Rows whose every partial has `LSE = -inf` stay zero with `LSE = -inf`.
pub fn merge_all(parts: &[Partial<Tensor>]) -> Result<Partial<Tensor>> {
    let first = parts.first().ok_or(AttentionError::NothingToMerge)?;
    for p in parts {
        if p.out.dims() != first.out.dims() || p.lse.dims() != first.lse.dims() {
            return Err(AttentionError::Shape {
                what: "partial to merge",
                expected: format!("out {:?}, lse {:?}", first.out.dims(), first.lse.dims()),
                actual: p.out.dims().to_vec(),
            });
        }
        if p.out.dtype() != first.out.dtype() || p.lse.dtype() != first.out.dtype() {
            return Err(AttentionError::Dtype { what: "partial to merge", dtype: p.lse.dtype() });
        }
    }
    if parts.len() == 1 {
        return Ok(first.clone());
    }
    let mut max = first.lse.clone();
    for p in &parts[1..] {
        max = max.maximum(&p.lse)?;
    }
    let max = finite_or_zero(&max)?;
    let mut denom = max.zeros_like()?;
    let mut num = first.out.zeros_like()?;
    for p in parts {
        let w = (&p.lse - &max)?.exp()?.unsqueeze(D::Minus1)?;
        // A part of LSE -inf (it saw no key) adds nothing, whatever its output holds (0 x NaN
        // would be NaN). A part whose weight underflows to 0 still multiplies, so a NaN one of
        // its rows saw propagates as it does through attention over all the keys at once.
        let term = p.out.broadcast_mul(&w)?;
        let saw = p.lse.ne(f64::NEG_INFINITY)?.unsqueeze(D::Minus1)?;
        let term = saw.broadcast_as(term.shape())?.where_cond(&term, &term.zeros_like()?)?;
        num = (num + term)?;
        denom = (denom + w.squeeze(D::Minus1)?)?;
    }
    let safe = denom.gt(0.0)?.where_cond(&denom, &denom.ones_like()?)?;
    let out = num.broadcast_div(&safe.unsqueeze(D::Minus1)?)?;
    let lse = (max + denom.log()?)?;
    Ok(Partial { out, lse })
}

impl AttentionOps for CpuAttention {
    type Tensor = Tensor;
    type Error = AttentionError;

    fn rows(&self, t: &Tensor) -> Result<usize> {
        Ok(t.dims().first().copied().unwrap_or(0))
    }

    fn partial(
        &self,
        q: &Tensor,
        q_layout: &Layout,
        k: &Tensor,
        v: &Tensor,
        kv_layout: &Layout,
    ) -> Result<Partial<Tensor>> {
        CpuAttention::partial(self, q, q_layout, k, v, kv_layout)
    }

    fn merge(&self, acc: Partial<Tensor>, next: Partial<Tensor>) -> Result<Partial<Tensor>> {
        merge(&acc, &next)
    }

    fn merge_all(&self, parts: Vec<Partial<Tensor>>) -> Result<Partial<Tensor>> {
        merge_all(&parts)
    }

    fn concat(&self, parts: &[Tensor]) -> Result<Tensor> {
        if parts.is_empty() {
            return Err(AttentionError::NothingToMerge);
        }
        Ok(Tensor::cat(parts, 0)?)
    }
}

/// `-inf` entries (rows that see no key) replaced by 0, so that subtracting them in an
/// exponent gives `exp(-inf) = 0` rather than NaN.
fn finite_or_zero(max: &Tensor) -> Result<Tensor> {
    Ok(max.ne(f64::NEG_INFINITY)?.where_cond(max, &max.zeros_like()?)?)
}

/// Validated dimensions of one attention call.
struct Dims {
    q_rows: usize,
    kv_rows: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

fn dims3(t: &Tensor, what: &'static str, expected: &str) -> Result<(usize, usize, usize)> {
    t.dims3().map_err(|_| AttentionError::Shape { what, expected: expected.into(), actual: t.dims().to_vec() })
}

fn check_inputs(q: &Tensor, q_layout: &Layout, k: &Tensor, v: &Tensor, kv_layout: &Layout) -> Result<Dims> {
    let (q_rows, n_heads, head_dim) = dims3(q, "q", "[Tq, NH, DH]")?;
    let (kv_rows, n_kv_heads, k_dim) = dims3(k, "k", "[Tk, NKV, DH]")?;
    if k_dim != head_dim {
        return Err(AttentionError::Shape {
            what: "k",
            expected: format!("[Tk, NKV, {head_dim}] (DH of q)"),
            actual: k.dims().to_vec(),
        });
    }
    if v.dims() != k.dims() {
        return Err(AttentionError::Shape {
            what: "v",
            expected: format!("{:?} (shape of k)", k.dims()),
            actual: v.dims().to_vec(),
        });
    }
    if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return Err(AttentionError::Heads { n_heads, n_kv_heads });
    }
    if head_dim == 0 {
        return Err(AttentionError::Shape {
            what: "q",
            expected: "[Tq, NH, DH] with DH > 0".into(),
            actual: q.dims().to_vec(),
        });
    }
    for (what, t) in [("q", q), ("k", k), ("v", v)] {
        compute_dtype(t.dtype())?;
        if t.dtype() != q.dtype() {
            return Err(AttentionError::Dtype { what, dtype: t.dtype() });
        }
    }
    for (what, rows, layout) in [("q", q_rows, q_layout), ("k", kv_rows, kv_layout)] {
        if rows != layout.len() {
            return Err(AttentionError::LayoutRows { what, rows, layout_rows: layout.len() });
        }
    }
    Ok(Dims { q_rows, kv_rows, n_heads, n_kv_heads, head_dim })
}

/// The visibility `[Tq, Tk]` (u8): 1 where the query sees the key.
fn visibility(q_tokens: &[Option<Token>], kv_tokens: &[Option<Token>]) -> Result<Tensor> {
    let values: Vec<u8> =
        q_tokens.iter().flat_map(|&q| kv_tokens.iter().map(move |&k| u8::from(visible(q, k)))).collect();
    Ok(Tensor::from_vec(values, (q_tokens.len(), kv_tokens.len()), &candle_core::Device::Cpu)?)
}

/// The KV cache's buffers as candle tensors: zeros when allocated, rows written with
/// `slice_set`, views by `narrow`.
///
/// The KV cache's buffers as candle tensors: zeros when allocated, rows written in place with
/// `slice_set`, views by `narrow`.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use cp_attention::CpuAttention;
/// use cp_ring::KvOps;
///
/// let ops = CpuAttention::default();
/// let rows = Tensor::ones((3, 2, 4), DType::F32, &Device::Cpu)?;
/// let mut buf = ops.alloc_rows(&rows, 8)?; // 8 rows of [2, 4], zeros
/// ops.copy_rows(&mut buf, 5, &rows, 1, 2)?; // rows 1..3 of `rows` into rows 5..7
/// let view = ops.first_rows(&buf, 7)?; // no copy
/// assert_eq!(view.sum_all()?.to_scalar::<f32>()?, 16.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl cp_ring::KvOps for CpuAttention {
    fn alloc_rows(&self, like: &Tensor, rows: usize) -> Result<Tensor, AttentionError> {
        let mut dims = like.dims().to_vec();
        if dims.is_empty() {
            return Err(AttentionError::Shape { what: "cached rows", expected: "[rows, ...]".into(), actual: dims });
        }
        dims[0] = rows;
        Ok(Tensor::zeros(dims, like.dtype(), like.device())?)
    }

    fn copy_rows(
        &self,
        dst: &mut Tensor,
        at: usize,
        src: &Tensor,
        from: usize,
        count: usize,
    ) -> Result<(), AttentionError> {
        if count == 0 {
            return Ok(());
        }
        // slice_set writes into dst's storage (shared with its views) and needs a contiguous source.
        let rows = src.narrow(0, from, count)?.contiguous()?;
        Ok(dst.slice_set(&rows, 0, at)?)
    }

    fn first_rows(&self, t: &Tensor, rows: usize) -> Result<Tensor, AttentionError> {
        Ok(t.narrow(0, 0, rows)?)
    }
}

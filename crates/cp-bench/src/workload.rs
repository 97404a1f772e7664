//! Workloads: the plans of a turn, inputs drawn on each rank's GPU, and the oracle.
//!
//! Inputs are never built on the host: each rank draws its own rows on its device with
//! `CudaAttention::random_rows`, whose values depend only on the token (sequence, position) and
//! a seed, so every rank, layout and ring size sees the same prompt, and a million-token
//! benchmark sets up in milliseconds. The oracle recomputes the rows it needs on the host
//! ([`cp_attention::hashed_row_bf16`]).

use std::sync::Arc;

use cp_attention::cuda::{CudaAttention, GpuDType};
use cp_attention::reference::{self, Heads};
use cp_nccl::{GpuRing, RankInputs};
use cp_shard::{CacheMap, DecodePlan, Layout, NewTokens, RingLayouts, Span, Token, TurnPlan};

/// The benchmark shape: Llama3-8B attention (32 query heads, 8 KV heads, head dim 128).
pub const BENCH_HEADS: Heads = Heads { n_heads: 32, n_kv_heads: 8, head_dim: 128 };

/// Seeds of the three tensors drawn from one base seed.
fn seeds(seed: u64) -> [u64; 3] {
    [seed ^ 0x51, seed ^ 0x4b00, seed ^ 0x560000]
}

/// What padding rows hold: NaN, so that any padding reaching a result shows.
pub const PAD: f32 = f32::NAN;

/// Rank `r`'s Q, K and V for `layouts`, drawn on the GPU of `ops` (bf16; padding rows `PAD`).
pub fn draw(
    ops: &CudaAttention,
    r: usize,
    layouts: &RingLayouts,
    heads: Heads,
    seed: u64,
) -> cp_nccl::Result<RankInputs> {
    let [sq, sk, sv] = seeds(seed);
    Ok(RankInputs {
        q: ops.random_rows(&layouts.q[r], heads.n_heads, heads.head_dim, GpuDType::Bf16, sq, PAD)?,
        k: ops.random_rows(&layouts.kv[r], heads.n_kv_heads, heads.head_dim, GpuDType::Bf16, sk, PAD)?,
        v: ops.random_rows(&layouts.kv[r], heads.n_kv_heads, heads.head_dim, GpuDType::Bf16, sv, PAD)?,
    })
}

/// Q, K and V for the rows of one layout (new rows of a model step: the keys and values of a
/// token are drawn with it), on the GPU of `ops` (bf16; padding rows `PAD`).
pub fn draw_rows(ops: &CudaAttention, rows: &Layout, heads: Heads, seed: u64) -> cp_nccl::Result<RankInputs> {
    let [sq, sk, sv] = seeds(seed);
    Ok(RankInputs {
        q: ops.random_rows(rows, heads.n_heads, heads.head_dim, GpuDType::Bf16, sq, PAD)?,
        k: ops.random_rows(rows, heads.n_kv_heads, heads.head_dim, GpuDType::Bf16, sk, PAD)?,
        v: ops.random_rows(rows, heads.n_kv_heads, heads.head_dim, GpuDType::Bf16, sv, PAD)?,
    })
}

/// Every rank's inputs for `layouts`, drawn on the ranks' GPUs.
pub fn draw_all(
    ring: &GpuRing,
    layouts: &Arc<RingLayouts>,
    heads: Heads,
    seed: u64,
) -> cp_nccl::Result<Arc<Vec<RankInputs>>> {
    let layouts = layouts.clone();
    let inputs = ring.run(move |rank| {
        let drawn = draw(&rank.ops, rank.rank, &layouts, heads, seed)?;
        rank.ops.synchronize()?;
        Ok(drawn)
    })?;
    Ok(Arc::new(inputs))
}

/// Plain causal attention of the `wanted` query positions over each sequence's prefix, in f64,
/// on the values [`draw`] gives (bf16-rounded).
pub fn oracle(heads: Heads, seed: u64, wanted: &[(usize, Span)]) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let [sq, sk, sv] = seeds(seed);
    let Heads { n_heads, n_kv_heads, head_dim } = heads;
    let rows = |s: u64, seq: usize, span: std::ops::Range<usize>, width: usize| -> Vec<f64> {
        span.flat_map(|pos| cp_attention::hashed_row_bf16(s, seq as u32, pos as u32, width)).map(f64::from).collect()
    };
    let (mut out, mut lse) = (Vec::new(), Vec::new());
    for &(seq, span) in wanted {
        let q = rows(sq, seq, span.start..span.end(), n_heads * head_dim);
        let k = rows(sk, seq, 0..span.end(), n_kv_heads * head_dim);
        let v = rows(sv, seq, 0..span.end(), n_kv_heads * head_dim);
        let qt: Vec<_> = (span.start..span.end()).map(|pos| Some(Token { seq, pos })).collect();
        let kt: Vec<_> = (0..span.end()).map(|pos| Some(Token { seq, pos })).collect();
        let (o, l) = reference::attention(&q, &qt, &k, &v, &kt, heads, 1.0 / (head_dim as f64).sqrt())?;
        out.extend(o);
        lse.extend(l);
    }
    Ok((out, lse))
}

/// The plan of one sequence's turn of `t` new tokens over `p` cached ones on `n` ranks.
pub fn turn(n: usize, t: usize, p: usize) -> anyhow::Result<TurnPlan> {
    let mut cache = CacheMap::new(n, 1)?;
    if p > 0 {
        let first = TurnPlan::new(&cache, &[NewTokens { seq: 0, count: p }])?;
        cache.commit_turn(&first)?;
    }
    Ok(TurnPlan::new(&cache, &[NewTokens { seq: 0, count: t }])?)
}

/// The cache of `batch` sequences of `context` tokens each on `n` ranks (placed as a prefill
/// turn places them), and the decode plan of iteration `iteration` on top of it.
pub fn decode_plan(n: usize, batch: usize, context: usize, iteration: usize) -> anyhow::Result<(CacheMap, DecodePlan)> {
    let mut cache = CacheMap::new(n, batch)?;
    let prompt: Vec<NewTokens> = (0..batch).map(|seq| NewTokens { seq, count: context }).collect();
    let plan = TurnPlan::new(&cache, &prompt)?;
    cache.commit_turn(&plan)?;
    let seqs: Vec<usize> = (0..batch).collect();
    let decode = DecodePlan::new(&cache, &seqs, iteration)?;
    Ok((cache, decode))
}

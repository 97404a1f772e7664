//! A NaN a query sees reaches its output through every ring algorithm, whatever the weight of the
//! block that holds it, and nothing else does: each algorithm splits the keys into blocks and
//! merges the partials, and a merge that dropped a part whose weight underflows to 0 (or whose
//! LSE is NaN) would turn such a row finite where attention over all keys at once gives NaN.

use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use cp_attention::reference::{self, Heads, discrepancy_nan_exact};
use cp_attention::{CpuAttention, to_f64_vec};
use cp_ring::{Algorithm, Local, run};
use cp_shard::{CacheMap, Layout, NewTokens, Span, Token, TurnPlan, gather_rows, scatter_rows};
use cp_sim::run_ranks;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const HEADS: Heads = Heads { n_heads: 4, n_kv_heads: 2, head_dim: 8 };
const T: usize = 64;
/// Keys of positions 0..LOUD hold 60 in every element and every query element is 1 (but one
/// query's, NaN): their scores, 60 * 8 / sqrt(8) = 170, leave the other keys' blocks a weight of
/// about e^-170, 0 in f32.
const LOUD: usize = 16;
/// V of this position is NaN (queries at and after it see it at that negligible weight).
const BAD_V: usize = 40;
/// K of this position is NaN (queries at and after it see a NaN score).
const BAD_K: usize = 50;
/// This query is NaN (every score of its row).
const BAD_Q: usize = 30;

fn global_rows(which: char) -> Vec<f64> {
    let heads = if which == 'q' { HEADS.n_heads } else { HEADS.n_kv_heads };
    let width = heads * HEADS.head_dim;
    let mut rng = StdRng::seed_from_u64(which as u64);
    let mut rows: Vec<f64> = (0..T * width).map(|_| rng.random_range(-2.0..2.0)).collect();
    let mut fill = |pos: usize, x: f64| rows[pos * width..(pos + 1) * width].fill(x);
    match which {
        'q' => {
            (0..T).for_each(|p| fill(p, 1.0));
            fill(BAD_Q, f64::NAN);
        }
        'k' => {
            (0..LOUD).for_each(|p| fill(p, 60.0));
            fill(BAD_K, f64::NAN);
        }
        _ => fill(BAD_V, f64::NAN),
    }
    rows
}

/// Rows of `data` (`[T, width]`, by position) scattered to the ranks by `layouts`; padding rows
/// hold NaN, none of which may reach a result.
fn scatter(layouts: &[Layout], data: &[f64], width: usize) -> Vec<Vec<f64>> {
    let row = |t: Token| Ok(data[t.pos * width..(t.pos + 1) * width].to_vec());
    scatter_rows(layouts, width, row, |_, _| vec![f64::NAN; width]).unwrap()
}

#[test]
fn every_algorithm_keeps_exactly_the_nans_attention_over_all_keys_gives() {
    let (q, k, v) = (global_rows('q'), global_rows('k'), global_rows('v'));
    let tokens: Vec<Option<Token>> = (0..T).map(|pos| Some(Token { seq: 0, pos })).collect();
    let scale = 1.0 / (HEADS.head_dim as f64).sqrt();
    let (want_out, want_lse) = reference::attention(&q, &tokens, &k, &v, &tokens, HEADS, scale).unwrap();
    let q_width = HEADS.n_heads * HEADS.head_dim;
    let kv_width = HEADS.n_kv_heads * HEADS.head_dim;
    let all_nan = |x: &[f64]| x.iter().all(|e| e.is_nan());
    let nan_out = want_out.chunks(q_width).filter(|r| all_nan(r)).count();
    let nan_lse = want_lse.chunks(HEADS.n_heads).filter(|r| all_nan(r)).count();
    // The oracle: output NaN for the NaN query and every query from BAD_V on; LSE NaN where a
    // score is NaN (the NaN query, every query from BAD_K on); everything else finite.
    assert_eq!((nan_out, nan_lse), (1 + T - BAD_V, 1 + T - BAD_K), "NaN rows of the oracle's output and LSE");
    assert!(want_out.iter().chain(&want_lse).all(|x| x.is_nan() || x.is_finite()));

    for world_size in 2..=4 {
        let cache = CacheMap::new(world_size, 1).unwrap();
        let plan = TurnPlan::new(&cache, &[NewTokens { seq: 0, count: T }]).unwrap();
        let layouts = plan.layouts();
        let q_ranks = scatter(&layouts.q, &q, q_width);
        let k_ranks = scatter(&layouts.kv, &k, kv_width);
        let v_ranks = scatter(&layouts.kv, &v, kv_width);
        let tensor = |data: &Vec<f64>, heads: usize| {
            let rows = data.len() / (heads * HEADS.head_dim);
            Tensor::from_vec(data.clone(), (rows, heads, HEADS.head_dim), &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        };
        let qt: Vec<Tensor> = q_ranks.iter().map(|d| tensor(d, HEADS.n_heads)).collect();
        let kt: Vec<Tensor> = k_ranks.iter().map(|d| tensor(d, HEADS.n_kv_heads)).collect();
        let vt: Vec<Tensor> = v_ranks.iter().map(|d| tensor(d, HEADS.n_kv_heads)).collect();
        for algorithm in Algorithm::ALL {
            let ops = CpuAttention::default();
            let results = run_ranks(world_size, Duration::from_secs(30), |mut comm| {
                let rank = cp_ring::RingTransport::rank(&comm);
                let local = Local { q: &qt[rank], k: &kt[rank], v: &vt[rank] };
                let partial = run(algorithm, &ops, &mut comm, layouts, local, &mut ())?;
                Ok((to_f64_vec(&partial.out)?, to_f64_vec(&partial.lse)?))
            });
            let per_rank: Vec<(Vec<f64>, Vec<f64>)> = results.into_iter().map(|r| r.unwrap()).collect();
            let whole = [(0, Span { start: 0, len: T })];
            let outs: Vec<&[f64]> = per_rank.iter().map(|(o, _)| o.as_slice()).collect();
            let lses: Vec<&[f64]> = per_rank.iter().map(|(_, l)| l.as_slice()).collect();
            let got_out = gather_rows(&layouts.q, &outs, q_width, &whole).unwrap().concat();
            let got_lse = gather_rows(&layouts.q, &lses, HEADS.n_heads, &whole).unwrap().concat();
            let what = format!("{algorithm} on {world_size} ranks");
            for (got, want, name) in [(&got_out, &want_out, "out"), (&got_lse, &want_lse, "lse")] {
                // NaN exactly where the oracle's, the rest within 2e-5.
                let d = discrepancy_nan_exact(got, want);
                assert!(d.within(2e-5), "{what}: {name} {d:?} (non-finite mismatches: NaN on one side only)");
            }
        }
    }
}

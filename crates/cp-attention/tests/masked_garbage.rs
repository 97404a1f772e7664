//! Garbage a query must not see never reaches it: NaN, ±inf and huge finite values in key or
//! value rows that are masked for a query — padding rows, future positions, another sequence's
//! rows, unused cache slots — leave that query's output and LSE equal to the f64 oracle's, which
//! never looks at them. Garbage a query does see gives NaN exactly where the oracle gives NaN.
//! The merges ignore the output of a partial whose LSE is `-inf`, whatever it holds, and keep a
//! NaN a row saw in a partial whose weight underflows to 0 (as attention over all keys does).

use candle_core::{DType, Device, Tensor};
use cp_attention::reference::{self, Heads, discrepancy_nan_exact};
use cp_attention::{CpuAttention, Partial, merge, merge_all, to_f64_vec};
use cp_shard::{Layout, Token};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const HEADS: Heads = Heads { n_heads: 4, n_kv_heads: 2, head_dim: 8 };

/// Which tensor a planted value goes into.
#[derive(Clone, Copy, Debug)]
enum Which {
    Q,
    K,
    V,
}

/// Values of `[rows, heads, dim]`, with `plants` (tensor, row, value) written over whole rows.
fn values(rng: &mut StdRng, rows: usize, heads: usize, which: Which, plants: &[(Which, usize, f64)]) -> Vec<f64> {
    let w = heads * HEADS.head_dim;
    let mut v: Vec<f64> = (0..rows * w).map(|_| rng.random_range(-2.0..2.0)).collect();
    for &(t, row, x) in plants {
        if std::mem::discriminant(&t) == std::mem::discriminant(&which) {
            v[row * w..(row + 1) * w].iter_mut().for_each(|e| *e = x);
        }
    }
    v
}

/// Compares NaN-aware ([`discrepancy_nan_exact`]): an element NaN on one side must be NaN on the
/// other; the rest by relative L2 within `tol`. Returns the number of NaN elements expected.
fn compare(got: &[f64], want: &[f64], tol: f64, what: &str) -> usize {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let d = discrepancy_nan_exact(got, want);
    assert!(d.within(tol), "{what}: {d:?} (non-finite mismatches: NaN on one side only)");
    want.iter().filter(|x| x.is_nan()).count()
}

type Runs = &'static [(Option<usize>, usize, usize)];

/// Runs one case on the CPU path in `dtype` and checks it against the oracle; returns how many
/// output elements the oracle says are NaN. The keys are `kv_blocks` laid end to end; with more
/// than one, each block's partial is computed alone and the partials merged (as a ring does).
fn run_case(name: &str, dtype: DType, q_runs: Runs, kv_blocks: &[Runs], plants: &[(Which, usize, f64)]) -> usize {
    let mut rng = StdRng::seed_from_u64(name.len() as u64 * 977 + dtype.size_in_bytes() as u64);
    let blocks: Vec<Layout> = kv_blocks.iter().map(|runs| Layout::from_runs(runs)).collect();
    let (ql, kl) = (Layout::from_runs(q_runs), Layout::concat(&blocks));
    let q = values(&mut rng, ql.len(), HEADS.n_heads, Which::Q, plants);
    let k = values(&mut rng, kl.len(), HEADS.n_kv_heads, Which::K, plants);
    let v = values(&mut rng, kl.len(), HEADS.n_kv_heads, Which::V, plants);
    let t = |x: &[f64], rows: usize, heads: usize| {
        Tensor::from_vec(x.to_vec(), (rows, heads, HEADS.head_dim), &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
    };
    let (qt, kt, vt) =
        (t(&q, ql.len(), HEADS.n_heads), t(&k, kl.len(), HEADS.n_kv_heads), t(&v, kl.len(), HEADS.n_kv_heads));
    let ops = CpuAttention::default();
    let mut parts = Vec::new();
    let mut at = 0;
    for block in &blocks {
        let (kb, vb) = (kt.narrow(0, at, block.len()).unwrap(), vt.narrow(0, at, block.len()).unwrap());
        parts.push(ops.partial(&qt, &ql, &kb, &vb, block).unwrap());
        at += block.len();
    }
    let got = merge_all(&parts).unwrap();
    // The oracle sees the values as rounded to the dtype (3e38 is inf in f16, finite in bf16).
    let f = |x: &Tensor| to_f64_vec(x).unwrap();
    let q_tokens: Vec<Option<Token>> = ql.rows().collect();
    let kv_tokens: Vec<Option<Token>> = kl.rows().collect();
    let scale = 1.0 / (HEADS.head_dim as f64).sqrt();
    let (want_out, want_lse) =
        reference::attention(&f(&qt), &q_tokens, &f(&kt), &f(&vt), &kv_tokens, HEADS, scale).unwrap();
    let tol = if dtype == DType::F64 { 1e-12 } else { 2e-5 };
    let nan = compare(&f(&got.out), &want_out, tol, &format!("{name} {dtype:?} out"));
    compare(&f(&got.lse), &want_lse, tol, &format!("{name} {dtype:?} lse"));
    nan
}

const GARBAGE: [f64; 4] = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 3e38];

#[test]
fn garbage_in_padding_rows_never_reaches_a_result() {
    for dtype in [DType::F64, DType::F32, DType::BF16] {
        for g in GARBAGE {
            // K/V padding (rows 30..40) and Q padding (rows 20..25) hold garbage.
            let plants: Vec<(Which, usize, f64)> = (30..40)
                .flat_map(|r| [(Which::K, r, g), (Which::V, r, g)])
                .chain((20..25).map(|r| (Which::Q, r, g)))
                .collect();
            let nan = run_case(
                "padding",
                dtype,
                &[(Some(0), 10, 20), (None, 0, 5)],
                &[&[(Some(0), 0, 30), (None, 0, 10)]],
                &plants,
            );
            assert_eq!(nan, 0, "{dtype:?} {g}: padding leaked");
        }
    }
}

#[test]
fn garbage_at_future_positions_and_in_other_sequences_never_reaches_a_result() {
    for dtype in [DType::F64, DType::F32, DType::BF16] {
        for g in GARBAGE {
            // Queries 0..20 of sequence 0; keys: sequence 1 (rows 0..16, all garbage), then
            // sequence 0 positions 0..40 (rows 16..56); positions 25 and 33 are in the future.
            let plants = [
                (Which::K, 3, g),
                (Which::V, 7, g),
                (Which::K, 16 + 25, g),
                (Which::V, 16 + 25, g),
                (Which::V, 16 + 33, g),
            ];
            let nan =
                run_case("future+other", dtype, &[(Some(0), 0, 20)], &[&[(Some(1), 0, 16), (Some(0), 0, 40)]], &plants);
            assert_eq!(nan, 0, "{dtype:?} {g}: masked garbage leaked");
        }
    }
}

#[test]
fn garbage_a_query_sees_gives_nan_exactly_where_exact_attention_does() {
    for dtype in [DType::F64, DType::F32, DType::BF16] {
        // V of position 12 is NaN: queries at positions 12.. see it (NaN), 0..12 do not.
        let nan = run_case("visible", dtype, &[(Some(0), 0, 20)], &[&[(Some(0), 0, 20)]], &[(Which::V, 12, f64::NAN)]);
        assert_eq!(nan, 8 * HEADS.n_heads * HEADS.head_dim, "{dtype:?}: rows 12..20 are NaN, the rest exact");
    }
}

#[test]
fn a_nan_seen_in_a_block_of_negligible_weight_still_propagates() {
    // Queries at positions 40..60, every element 1; keys 0..40 every element 60 (scores of
    // 60 * 8 / sqrt(8) = 170 against about ±3 for the random keys 40..60), so the second
    // block's weight, about e^-170, underflows to 0 in f32 and bf16 when the two blocks'
    // partials are merged. V of position 45 is NaN: attention over all keys at once (the oracle)
    // gives NaN at positions 45.. however small that key's weight; the merge must too.
    // `loud` is the row where the keys of positions 0..40 start, `faint` where 40..60 start.
    let plants = |loud: usize, faint: usize| -> Vec<(Which, usize, f64)> {
        (0..20)
            .map(|r| (Which::Q, r, 1.0))
            .chain((loud..loud + 40).map(|r| (Which::K, r, 60.0)))
            .chain([(Which::V, faint + 5, f64::NAN)])
            .collect()
    };
    let (q, loud, faint): (Runs, Runs, Runs) = (&[(Some(0), 40, 20)], &[(Some(0), 0, 40)], &[(Some(0), 40, 20)]);
    for dtype in [DType::F64, DType::F32, DType::BF16] {
        for (blocks, plants) in [(vec![loud, faint], plants(0, 40)), (vec![faint, loud], plants(20, 0))] {
            let nan = run_case("faint NaN", dtype, q, &blocks, &plants);
            assert_eq!(nan, 15 * HEADS.n_heads * HEADS.head_dim, "{dtype:?}: positions 45..60 are NaN");
        }
    }
}

#[test]
fn a_non_finite_score_a_query_sees_survives_the_merge() {
    // Queries at positions 40..60 over keys 0..60 in two blocks: K of position 45 is NaN (queries
    // at 45.. see a NaN score), and so is the query at position 43 (every score of its row).
    // Their output and LSE are NaN, as the oracle's; the merge must not drop them.
    // A second sequence's query (row 21, position 5) is NaN too and sees keys of the first block
    // only: its NaN side meets a side that saw nothing (LSE -inf) in the merge. Its keys sit
    // between the two blocks of sequence 0's (K of position 45 is row 40 + 6 + 5).
    let plants = [(Which::K, 51, f64::NAN), (Which::Q, 3, f64::NAN), (Which::Q, 21, f64::NAN)];
    for dtype in [DType::F64, DType::F32, DType::BF16] {
        let (q, first, second): (Runs, Runs, Runs) =
            (&[(Some(0), 40, 20), (Some(1), 4, 2)], &[(Some(0), 0, 40), (Some(1), 0, 6)], &[(Some(0), 40, 20)]);
        let nan = run_case("NaN score", dtype, q, &[first, second], &plants);
        let what = "positions 43 and 45..60 of sequence 0, position 5 of sequence 1";
        assert_eq!(nan, 17 * HEADS.n_heads * HEADS.head_dim, "{dtype:?}: {what} are NaN");
    }
}

#[test]
fn merges_ignore_the_output_of_a_partial_that_saw_nothing() {
    let dev = Device::Cpu;
    let rows = 6;
    let good = Partial {
        out: Tensor::from_vec((0..rows * 4).map(|i| i as f32).collect::<Vec<_>>(), (rows, 1, 4), &dev).unwrap(),
        lse: Tensor::from_vec(vec![0.5f32; rows], (rows, 1), &dev).unwrap(),
    };
    // Saw nothing (LSE -inf) but its output buffer holds garbage.
    let empty = Partial {
        out: Tensor::from_vec(vec![f32::NAN; rows * 4], (rows, 1, 4), &dev).unwrap(),
        lse: Tensor::from_vec(vec![f32::NEG_INFINITY; rows], (rows, 1), &dev).unwrap(),
    };
    for merged in [
        merge(&good, &empty).unwrap(),
        merge(&empty, &good).unwrap(),
        merge_all(&[empty.clone(), good.clone(), empty]).unwrap(),
    ] {
        assert_eq!(to_f64_vec(&merged.out).unwrap(), to_f64_vec(&good.out).unwrap());
        assert_eq!(to_f64_vec(&merged.lse).unwrap(), to_f64_vec(&good.lse).unwrap());
    }
}

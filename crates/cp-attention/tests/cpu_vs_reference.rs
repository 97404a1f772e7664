//! The candle CPU path against the naive f64 oracle, and the laws of the merge.

use candle_core::{DType, Device, Tensor};
use cp_attention::reference::{self, Heads, discrepancy};
use cp_attention::{AttentionError, CpuAttention, Partial, merge, merge_all, to_f64_vec};
use cp_shard::{Layout, Span, Token};
use cp_testkit::check_property;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Relative L2 tolerances against the f64 oracle on inputs already rounded to the dtype.
/// f64: only summation order differs. f32: ~1e-7 rounding amplified by the softmax and sums
/// over up to a few hundred keys. bf16 inputs are computed in f32, so the same bound as f32
/// holds before the final cast (the partial stays f32).
fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-12,
        _ => 2e-5,
    }
}

fn random_tensor(rng: &mut StdRng, shape: (usize, usize, usize), dtype: DType) -> Tensor {
    let n = shape.0 * shape.1 * shape.2;
    let values: Vec<f64> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

/// A layout of `rows` rows over sequences 0 and 1, with padding and shuffled-looking spans.
fn layout(rng: &mut StdRng, rows: usize, base: usize) -> Layout {
    let mut layout = Layout::new();
    let mut pos = [base, base / 2];
    while layout.len() < rows {
        let len = rng.random_range(1..=(rows - layout.len()).min(40));
        match rng.random_range(0..5) {
            0 => layout.push_padding(len),
            r => {
                let seq = usize::from(r > 2);
                layout.push_tokens(seq, Span::new(pos[seq], len));
                pos[seq] += len + rng.random_range(0..3);
            }
        }
    }
    layout
}

fn check_against_reference(seed: u64, dtype: DType, q_rows: usize, kv_rows: usize, heads: Heads) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let q = random_tensor(&mut rng, (q_rows, heads.n_heads, heads.head_dim), dtype);
    let k = random_tensor(&mut rng, (kv_rows, heads.n_kv_heads, heads.head_dim), dtype);
    let v = random_tensor(&mut rng, (kv_rows, heads.n_kv_heads, heads.head_dim), dtype);
    let q_layout = layout(&mut rng, q_rows, 60);
    let kv_layout = layout(&mut rng, kv_rows, 0);
    let ops = CpuAttention::default();
    let got = ops.partial(&q, &q_layout, &k, &v, &kv_layout).map_err(|e| e.to_string())?;
    let q_tokens: Vec<Option<Token>> = q_layout.rows().collect();
    let kv_tokens: Vec<Option<Token>> = kv_layout.rows().collect();
    let f = |t: &Tensor| to_f64_vec(t).unwrap();
    let scale = 1.0 / (heads.head_dim as f64).sqrt();
    let (out, lse) = reference::attention(&f(&q), &q_tokens, &f(&k), &f(&v), &kv_tokens, heads, scale).unwrap();
    let d_out = discrepancy(&f(&got.out), &out);
    let d_lse = discrepancy(&f(&got.lse), &lse);
    let masked_rows = lse.iter().filter(|l| l.is_infinite()).count();
    let label =
        format!("seed {seed} {dtype:?} Tq={q_rows} Tk={kv_rows} {heads:?} ({masked_rows} fully masked row-heads)");
    if !d_out.within(tolerance(dtype)) || !d_lse.within(tolerance(dtype)) {
        return Err(format!("{label}: out {d_out:?}, lse {d_lse:?}"));
    }
    Ok(())
}

#[test]
fn matches_reference_across_dtypes_heads_and_odd_lengths() {
    let mut seed = 1;
    for dtype in [DType::F64, DType::F32, DType::BF16] {
        for (n_heads, n_kv_heads) in [(4, 4), (4, 2), (8, 2), (8, 1)] {
            for head_dim in [8, 20] {
                // 300 rows crosses the 256-row query block; 1 and 7 are tiny; 0 keys is legal.
                for (q_rows, kv_rows) in [(1, 1), (7, 13), (37, 0), (300, 61)] {
                    seed += 1;
                    let heads = Heads { n_heads, n_kv_heads, head_dim };
                    check_against_reference(seed, dtype, q_rows, kv_rows, heads).unwrap();
                }
            }
        }
    }
}

#[test]
fn matches_reference_on_random_shapes() {
    let strategy = (any::<u64>(), 1usize..70, 0usize..70, 1usize..=4, 0usize..=3, 1usize..=24);
    check_property(
        "cpu partial attention vs oracle",
        strategy,
        |(seed, q_rows, kv_rows, kv_heads, log_group, head_dim)| {
            let heads = Heads { n_heads: kv_heads << log_group, n_kv_heads: kv_heads, head_dim };
            let dtype = [DType::F64, DType::F32, DType::BF16][(seed % 3) as usize];
            check_against_reference(seed, dtype, q_rows, kv_rows, heads).map_err(TestCaseError::fail)
        },
    );
}

#[test]
fn fully_masked_rows_give_zeros_and_neg_inf() {
    let mut rng = StdRng::seed_from_u64(7);
    let q = random_tensor(&mut rng, (3, 2, 4), DType::F32);
    let k = random_tensor(&mut rng, (5, 1, 4), DType::F32);
    let v = random_tensor(&mut rng, (5, 1, 4), DType::F32);
    let mut q_layout = Layout::new();
    q_layout.push_tokens(0, Span::new(0, 1)); // sees key 0 only
    q_layout.push_padding(1); // sees nothing
    q_layout.push_tokens(1, Span::new(9, 1)); // another sequence: sees nothing
    let mut kv_layout = Layout::new();
    kv_layout.push_tokens(0, Span::new(0, 5));
    let p = CpuAttention::default().partial(&q, &q_layout, &k, &v, &kv_layout).unwrap();
    let lse = to_f64_vec(&p.lse).unwrap();
    let out = to_f64_vec(&p.out).unwrap();
    assert!(lse[..2].iter().all(|l| l.is_finite()), "{lse:?}");
    assert!(lse[2..].iter().all(|&l| l == f64::NEG_INFINITY), "{lse:?}");
    assert!(out[8..].iter().all(|&o| o == 0.0), "{out:?}");
    assert!(out.iter().all(|o| o.is_finite()));
}

fn random_partial(rng: &mut StdRng, rows: usize, heads: usize, dim: usize, masked: f64) -> Partial<Tensor> {
    let out = random_tensor(rng, (rows, heads, dim), DType::F64);
    let lse: Vec<f64> = (0..rows * heads)
        .map(|_| if rng.random_bool(masked) { f64::NEG_INFINITY } else { rng.random_range(-5.0..5.0) })
        .collect();
    let lse = Tensor::from_vec(lse, (rows, heads), &Device::Cpu).unwrap();
    // A masked row's output is zero by contract.
    let keep = lse.ne(f64::NEG_INFINITY).unwrap().to_dtype(DType::F64).unwrap().unsqueeze(2).unwrap();
    Partial { out: out.broadcast_mul(&keep).unwrap(), lse }
}

fn assert_close(a: &Partial<Tensor>, b: &Partial<Tensor>, tol: f64) -> Result<(), TestCaseError> {
    let d_out = discrepancy(&to_f64_vec(&a.out).unwrap(), &to_f64_vec(&b.out).unwrap());
    let d_lse = discrepancy(&to_f64_vec(&a.lse).unwrap(), &to_f64_vec(&b.lse).unwrap());
    prop_assert!(d_out.within(tol) && d_lse.within(tol), "out {:?} lse {:?}", d_out, d_lse);
    Ok(())
}

#[test]
fn merge_laws() {
    check_property(
        "merge associative, order-free, -inf neutral",
        (any::<u64>(), 1usize..6, 0.0f64..0.6),
        |(seed, rows, masked)| {
            let mut rng = StdRng::seed_from_u64(seed);
            let [a, b, c] = [0, 1, 2].map(|_| random_partial(&mut rng, rows, 3, 4, masked));
            let left = merge(&merge(&a, &b).unwrap(), &c).unwrap();
            let right = merge(&a, &merge(&b, &c).unwrap()).unwrap();
            assert_close(&left, &right, 1e-13)?;
            let swapped = merge(&merge(&c, &a).unwrap(), &b).unwrap();
            assert_close(&left, &swapped, 1e-13)?;
            let all = merge_all(&[b.clone(), c.clone(), a.clone()]).unwrap();
            assert_close(&left, &all, 1e-13)?;
            // A fully masked partial changes nothing.
            let empty = Partial {
                out: a.out.zeros_like().unwrap(),
                lse: a.lse.ones_like().unwrap().affine(0.0, f64::NEG_INFINITY).unwrap(),
            };
            let with_empty = merge(&a, &empty).unwrap();
            assert_close(&with_empty, &a, 0.0)?;
            let vals = to_f64_vec(&left.out).unwrap();
            prop_assert!(vals.iter().all(|v| v.is_finite()), "NaN or inf in merged output");
            Ok(())
        },
    );
}

#[test]
fn merging_split_keys_equals_attention_over_all_keys() {
    check_property(
        "split-and-merge equals whole",
        (any::<u64>(), 1usize..40, 2usize..60),
        |(seed, q_rows, kv_rows)| {
            let mut rng = StdRng::seed_from_u64(seed);
            let q = random_tensor(&mut rng, (q_rows, 4, 8), DType::F64);
            let k = random_tensor(&mut rng, (kv_rows, 2, 8), DType::F64);
            let v = random_tensor(&mut rng, (kv_rows, 2, 8), DType::F64);
            let q_layout = layout(&mut rng, q_rows, 30);
            let kv_layout = layout(&mut rng, kv_rows, 0);
            let ops = CpuAttention::default();
            let whole = ops.partial(&q, &q_layout, &k, &v, &kv_layout).unwrap();
            let cut = rng.random_range(1..kv_rows);
            let sub = |t: &Tensor, s, l| t.narrow(0, s, l).unwrap();
            let rows: Vec<Option<Token>> = kv_layout.rows().collect();
            let sub_layout = |s: usize, l: usize| {
                let mut out = Layout::new();
                for t in &rows[s..s + l] {
                    match t {
                        Some(t) => out.push_tokens(t.seq, Span::new(t.pos, 1)),
                        None => out.push_padding(1),
                    }
                }
                out
            };
            let a = ops.partial(&q, &q_layout, &sub(&k, 0, cut), &sub(&v, 0, cut), &sub_layout(0, cut)).unwrap();
            let rest = kv_rows - cut;
            let b =
                ops.partial(&q, &q_layout, &sub(&k, cut, rest), &sub(&v, cut, rest), &sub_layout(cut, rest)).unwrap();
            assert_close(&merge(&a, &b).unwrap(), &whole, 1e-12)
        },
    );
}

#[test]
fn bad_inputs_are_errors() {
    let dev = Device::Cpu;
    let ops = CpuAttention::default();
    let mut l4 = Layout::new();
    l4.push_tokens(0, Span::new(0, 4));
    let q = Tensor::zeros((4, 6, 8), DType::F32, &dev).unwrap();
    let k = Tensor::zeros((4, 4, 8), DType::F32, &dev).unwrap();
    let err = ops.partial(&q, &l4, &k, &k, &l4).unwrap_err();
    assert!(matches!(err, AttentionError::Heads { n_heads: 6, n_kv_heads: 4 }), "{err}");
    let k = Tensor::zeros((4, 2, 16), DType::F32, &dev).unwrap();
    assert!(matches!(ops.partial(&q, &l4, &k, &k, &l4).unwrap_err(), AttentionError::Shape { what: "k", .. }));
    let k = Tensor::zeros((4, 2, 8), DType::F64, &dev).unwrap();
    assert!(matches!(ops.partial(&q, &l4, &k, &k, &l4).unwrap_err(), AttentionError::Dtype { what: "k", .. }));
    let k = Tensor::zeros((4, 2, 8), DType::F32, &dev).unwrap();
    let mut l3 = Layout::new();
    l3.push_tokens(0, Span::new(0, 3));
    let err = ops.partial(&q, &l3, &k, &k, &l4).unwrap_err();
    assert_eq!(err.to_string(), "q has 4 rows but its layout has 3");
    let q2 = Tensor::zeros((4, 8), DType::F32, &dev).unwrap();
    assert!(ops.partial(&q2, &l4, &k, &k, &l4).unwrap_err().to_string().contains("[Tq, NH, DH]"));
    let qi = Tensor::zeros((4, 6, 8), DType::U32, &dev).unwrap();
    assert!(matches!(ops.partial(&qi, &l4, &k, &k, &l4).unwrap_err(), AttentionError::Dtype { .. }));
    assert!(matches!(merge_all(&[]).unwrap_err(), AttentionError::NothingToMerge));
}

//! The CUDA kernels against the f64 oracle, and their timings (`cp-gpu-bench`).
//!
//! - [`selftest`]: the wgmma building blocks alone (two products of one warpgroup).
//! - [`check`]: prefill, decode and merges on fresh random inputs, poisoned outputs, odd
//!   lengths, padding and fully masked rows, masked and visible NaN/inf garbage, split key
//!   ranges, GQA 1/4/8, head dims 64 and 128, bf16 and f16; each against the f64 oracle with a
//!   stated tolerance.
//! - [`bench()`]: causal prefill (NH=32, NKV=8, DH=128, bf16) at T = 4K (B=4), 16K, 64K, 128K; an
//!   off-diagonal block; a short query block over a long key range (split KV on and off); decode
//!   with KV length 128K (B=8) and 1M (B=1); merge bandwidth; device copy as the ceiling; the
//!   host cost of a launch. Medians of CUDA-event timings after warm-up.
//! - [`dump`]: one prefill's inputs and outputs as safetensors for `scripts/compare_sdpa.py`.
//! - [`profile`]: one prefill launch, for `ncu`.

use std::ops::Range;
use std::sync::Arc;

use cp_attention::cuda::{CudaAttention, DecodeKernel, DeviceLayout, GpuDType, GpuTensor, PrefillKernel, TailMode};
use cp_attention::reference::{self, Heads, discrepancy};
use cp_attention::{AttentionError, Partial};
use cp_shard::{Layout, PrefillShards, Span, Token};
use cudarc::driver::CudaStream;
use cudarc::driver::sys::CUevent_flags;

type Result<T> = anyhow::Result<T>;

/// One timing of [`bench()`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct Timing {
    /// What ran.
    pub name: String,
    /// Median milliseconds.
    pub ms: f64,
    /// The rate it implies, in `unit`.
    pub rate: f64,
    /// TFLOP/s, TB/s, ...
    pub unit: String,
}

/// Query rows up to which `CudaAttention::partial` takes the decode kernel in these checks
/// (larger ones here hold several rows of one sequence).
const DECODE_ROWS: usize = 16;

/// A small deterministic generator (xorshift64*), so the binary needs no extra crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 11) as f64) / (1u64 << 53) as f64
    }

    fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| (self.next() * 4.0 - 2.0) as f32).collect()
    }
}

fn rounded(values: &[f32], dtype: GpuDType) -> Vec<f64> {
    values
        .iter()
        .map(|&x| match dtype {
            GpuDType::Bf16 => half::bf16::from_f32(x).to_f64(),
            GpuDType::F16 => half::f16::from_f32(x).to_f64(),
            GpuDType::F32 => x as f64,
        })
        .collect()
}

struct Case {
    name: String,
    dtype: GpuDType,
    heads: Heads,
    q_layout: Layout,
    kv_layout: Layout,
    /// Values written over whole rows before the run: (tensor 'q', 'k' or 'v', row, value).
    plants: Vec<(char, usize, f32)>,
    /// The key rows in two blocks (`kv_layout` is the two one after the other): the first's
    /// partial, and the second's folded into it (`partial_into`, as pass-KV's later steps).
    fold: Option<(Layout, Layout)>,
}

impl Case {
    fn new(name: String, dtype: GpuDType, heads: Heads, q_layout: Layout, kv_layout: Layout) -> Case {
        Case { name, dtype, heads, q_layout, kv_layout, plants: Vec::new(), fold: None }
    }

    /// Keys in two blocks, the second's attention folded into the first's.
    fn folded(name: String, dtype: GpuDType, heads: Heads, q_layout: Layout, first: Layout, second: Layout) -> Case {
        let kv_layout = Layout::concat([&first, &second]);
        Case { name, dtype, heads, q_layout, kv_layout, plants: Vec::new(), fold: Some((first, second)) }
    }
    /// The case with `plants` written into its inputs (see [`plant`]).
    fn planted(self, plants: Vec<(char, usize, f32)>) -> Case {
        Case { plants, ..self }
    }
}

/// Writes `plants` for tensor `which` (rows of `width` values) into `values`.
fn plant(values: &mut [f32], width: usize, which: char, plants: &[(char, usize, f32)]) {
    for &(t, row, x) in plants {
        if t == which {
            values[row * width..(row + 1) * width].iter_mut().for_each(|e| *e = x);
        }
    }
}

/// [`reference::discrepancy_nan_exact`], and how many elements the oracle says are NaN.
fn compare(got: &[f64], want: &[f64]) -> (reference::Discrepancy, usize) {
    (reference::discrepancy_nan_exact(got, want), want.iter().filter(|x| x.is_nan()).count())
}

/// Runs one case through `CudaAttention::partial` (decode or flash as it chooses) and the
/// oracle; returns a report line and whether it passed.
fn check_case(ops: &CudaAttention, rng: &mut Rng, case: &Case) -> Result<(String, bool)> {
    let s = ops.stream();
    let Heads { n_heads, n_kv_heads, head_dim } = case.heads;
    let (tq, tk) = (case.q_layout.len(), case.kv_layout.len());
    let (mut qv, mut kv, mut vv) = (
        rng.values(tq * n_heads * head_dim),
        rng.values(tk * n_kv_heads * head_dim),
        rng.values(tk * n_kv_heads * head_dim),
    );
    plant(&mut qv, n_heads * head_dim, 'q', &case.plants);
    plant(&mut kv, n_kv_heads * head_dim, 'k', &case.plants);
    plant(&mut vv, n_kv_heads * head_dim, 'v', &case.plants);
    let q = GpuTensor::upload(s, &qv, &[tq, n_heads, head_dim], case.dtype)?;
    // Keys and values of `rows` rows from the values `vals`.
    let block = |vals: &[f32], rows: usize| GpuTensor::upload(s, vals, &[rows, n_kv_heads, head_dim], case.dtype);
    let got = match &case.fold {
        None => {
            let (k, v) = (block(&kv, tk)?, block(&vv, tk)?);
            cp_ring::AttentionOps::partial(ops, &q, &case.q_layout, &k, &v, &case.kv_layout)?
        }
        Some((first, second)) => {
            let split = first.len() * n_kv_heads * head_dim;
            let (k1, v1) = (block(&kv[..split], first.len())?, block(&vv[..split], first.len())?);
            let (k2, v2) = (block(&kv[split..], second.len())?, block(&vv[split..], second.len())?);
            let acc = cp_ring::AttentionOps::partial(ops, &q, &case.q_layout, &k1, &v1, first)?;
            cp_ring::AttentionOps::partial_into(ops, acc, &q, &case.q_layout, &k2, &v2, second)?
        }
    };
    let out: Vec<f64> = got.out.download(s)?.into_iter().map(f64::from).collect();
    let lse: Vec<f64> = got.lse.download(s)?.into_iter().map(f64::from).collect();
    let q_tokens: Vec<Option<Token>> = case.q_layout.rows().collect();
    let kv_tokens: Vec<Option<Token>> = case.kv_layout.rows().collect();
    let scale = 1.0 / (head_dim as f64).sqrt();
    let (want_out, want_lse) = reference::attention(
        &rounded(&qv, case.dtype),
        &q_tokens,
        &rounded(&kv, case.dtype),
        &rounded(&vv, case.dtype),
        &kv_tokens,
        case.heads,
        scale,
    )?;
    let (d_out, nan_rows) = compare(&out, &want_out);
    let (d_lse, _) = compare(&lse, &want_lse);
    // P is rounded to the input dtype before the P.V product (as in FlashAttention-2): a
    // relative error of 2^-9 (bf16) or 2^-12 (f16) per weight; LSE comes from f32 scores of
    // exactly representable products.
    let (tol_out, tol_lse) = (crate::check::tol_out(case.dtype), crate::check::TOL_LSE);
    let masked = want_lse.iter().filter(|l| l.is_infinite()).count();
    let ok = d_out.within(tol_out) && d_lse.within(tol_lse);
    let splits = if tq > DECODE_ROWS {
        ops.prefill_splits(ops.prefill_kernel_for(&case.q_layout, head_dim)?, tq, tk, n_heads, head_dim)
    } else {
        0
    };
    let nan_note = if nan_rows > 0 { format!(", {nan_rows} NaN elements expected") } else { String::new() };
    let split_note = match ops.prefill_tail(
        &case.q_layout,
        case.fold.as_ref().map_or(&case.kv_layout, |f| &f.1),
        n_heads,
        head_dim,
    )? {
        _ if tq <= DECODE_ROWS => String::new(),
        Some(t) => format!(" [tail: {} items x {} pieces]", t.items, t.pieces),
        None if splits > 1 => format!(" [{splits} KV splits]"),
        None => String::new(),
    };
    Ok((
        format!(
            "{:<44}{split_note} Tq={tq:<5} Tk={tk:<5} out relL2 {:.2e} (tol {tol_out:.0e}) max {:.2e}, lse relL2 {:.2e}, {masked} masked row-heads{nan_note}, non-finite mismatches {}",
            case.name,
            d_out.rel_l2,
            d_out.max_abs,
            d_lse.rel_l2,
            d_out.non_finite_mismatches + d_lse.non_finite_mismatches
        ),
        ok,
    ))
}

fn check_merges(ops: &CudaAttention, rng: &mut Rng) -> Result<(String, bool)> {
    use candle_core::{Device, Tensor};
    let s = ops.stream();
    let (rows, nh, d) = (37, 4, 64);
    let mut parts = Vec::new();
    let mut cpu = Vec::new();
    for p in 0..3 {
        let out = rng.values(rows * nh * d);
        let lse: Vec<f32> = (0..rows * nh)
            .map(|i| if (i + p) % 5 == 0 || i % 7 == 0 { f32::NEG_INFINITY } else { (rng.next() * 10.0 - 5.0) as f32 })
            .collect();
        // A part that saw nothing (LSE -inf) holds garbage in its output: the merges must
        // ignore it (0 x NaN is NaN).
        let out: Vec<f32> =
            out.iter().enumerate().map(|(i, &x)| if lse[i / d].is_infinite() { f32::NAN } else { x }).collect();
        parts.push(Partial {
            out: GpuTensor::upload(s, &out, &[rows, nh, d], GpuDType::F32)?,
            lse: GpuTensor::upload(s, &lse, &[rows, nh], GpuDType::F32)?,
        });
        cpu.push(Partial {
            out: Tensor::from_vec(out, (rows, nh, d), &Device::Cpu)?,
            lse: Tensor::from_vec(lse, (rows, nh), &Device::Cpu)?,
        });
    }
    let want = cp_attention::merge_all(&cpu)?;
    let want_out = cp_attention::to_f64_vec(&want.out)?;
    let want_lse = cp_attention::to_f64_vec(&want.lse)?;
    let all = ops.merge_many(&parts, GpuDType::F32)?;
    let folded = ops.merge_into(ops.merge_into(parts[0].clone(), &parts[1])?, &parts[2])?;
    let mut line = String::new();
    let mut ok = true;
    for (name, p) in [("merge_all (3-way)", &all), ("merge_fold (online)", &folded)] {
        let o: Vec<f64> = p.out.download(s)?.into_iter().map(f64::from).collect();
        let l: Vec<f64> = p.lse.download(s)?.into_iter().map(f64::from).collect();
        let (d_o, d_l) = (discrepancy(&o, &want_out), discrepancy(&l, &want_lse));
        ok &= d_o.within(1e-5) && d_l.within(1e-6);
        line += &format!(
            "{name}: out relL2 {:.2e}, lse relL2 {:.2e}, non-finite mismatches {}; ",
            d_o.rel_l2,
            d_l.rel_l2,
            d_o.non_finite_mismatches + d_l.non_finite_mismatches
        );
    }
    Ok((line, ok))
}

/// Masked garbage (issue: NaN, ±inf, huge values in rows a query must not see), split-KV
/// launches over long key ranges, and visible garbage that must give NaN where the oracle does.
fn garbage_cases(cases: &mut Vec<Case>, dtype: GpuDType, heads: Heads, tag: &str) {
    let nan = f32::NAN;
    // Query rows `q` every element 1 and key rows `k` every element `x`: those keys score
    // x sqrt(D) against each of those queries.
    let ones_against = |q: Range<usize>, k: Range<usize>, x: f32| -> Vec<(char, usize, f32)> {
        q.map(|r| ('q', r, 1.0)).chain(k.map(move |r| ('k', r, x))).collect()
    };
    // Padding K/V rows (200..256, the key tile shared with real rows) and Q padding rows.
    cases.push(
        Case::new(
            format!("NaN in K/V/Q padding rows, {tag}"),
            dtype,
            heads,
            Layout::from_runs(&[(Some(0), 0, 200), (None, 0, 20)]),
            Layout::from_runs(&[(Some(0), 0, 200), (None, 0, 56)]),
        )
        .planted(
            (200..256).flat_map(|r| [('k', r, nan), ('v', r, nan)]).chain((200..220).map(|r| ('q', r, nan))).collect(),
        ),
    );
    // Future rows inside a partly visible tile: queries 0..100, keys 0..256 with V row 110 NaN,
    // K row 120 NaN, V row 130 +inf, K row 140 huge (inf in f16).
    cases.push(
        Case::new(
            format!("NaN/inf/3e38 at future positions, {tag}"),
            dtype,
            heads,
            Layout::from_runs(&[(Some(0), 0, 100)]),
            Layout::from_runs(&[(Some(0), 0, 256)]),
        )
        .planted(vec![
            ('v', 110, nan),
            ('k', 120, nan),
            ('v', 130, f32::INFINITY),
            ('k', 140, 3e38),
            ('v', 141, -3e38),
        ]),
    );
    // Another sequence's rows full of NaN, in the same tiles as visible keys.
    cases.push(
        Case::new(
            format!("NaN in another sequence's rows, {tag}"),
            dtype,
            heads,
            Layout::from_runs(&[(Some(0), 50, 40), (Some(2), 0, 20)]),
            Layout::from_runs(&[(Some(1), 0, 70), (Some(0), 0, 90), (Some(2), 0, 20)]),
        )
        .planted((0..70).flat_map(|r| [('k', r, nan), ('v', r, nan)]).collect()),
    );
    // Visible garbage: V of position 60 is NaN; queries at 60.. must be NaN, 0..60 exact.
    cases.push(
        Case::new(
            format!("NaN in a visible V row propagates exactly, {tag}"),
            dtype,
            heads,
            Layout::from_runs(&[(Some(0), 0, 150)]),
            Layout::from_runs(&[(Some(0), 0, 150)]),
        )
        .planted(vec![('v', 60, nan)]),
    );
    // Decode (the split-KV decode kernel): a sequence's rows reach past its query (slots
    // holding later positions) and padding follows, all NaN.
    cases.push(
        Case::new(
            format!("decode, NaN in future slots and padding, {tag}"),
            dtype,
            heads,
            Layout::from_runs(&[(Some(0), 500, 1), (Some(1), 36, 1), (None, 0, 1)]),
            Layout::from_runs(&[(Some(0), 0, 530), (Some(1), 0, 37), (None, 0, 9)]),
        )
        .planted(
            (501..530).chain(567..576).flat_map(|r| [('k', r, nan), ('v', r, nan)]).chain([('q', 2, nan)]).collect(),
        ),
    );
    // Short queries over a long cache: the key range is split (flash-decoding for prefill),
    // with padding holding NaN and the other sequence's tiles skipped.
    cases.push(
        Case::new(
            format!("short queries, long cache (split KV), {tag}"),
            dtype,
            heads,
            Layout::from_runs(&[(Some(0), 4000, 70), (None, 0, 6), (Some(1), 2990, 40)]),
            Layout::from_runs(&[(Some(1), 0, 3030), (Some(0), 0, 4070), (None, 0, 40)]),
        )
        .planted((7100..7140).flat_map(|r| [('k', r, nan), ('v', r, nan)]).collect()),
    );
    // Visible garbage under a negligible weight: every query element 1 and the keys of positions
    // 0..300 (0..2000 below) every element 16 score 16 sqrt(D) >= 128, far above the other keys'
    // few units, so a partial over the other keys weighs e^-128 or less: 0 in f32, below even
    // its subnormals (e^-103; the merges' exponentials keep subnormals). Attention over all keys
    // at once still gives NaN where a query sees a NaN value, and so must every merge (the fold
    // in the epilogue, merge_fold, the split KV's merge, the tail split's pieces).
    let faint = |q_rows: usize, loud: Range<usize>, bad: usize| -> Vec<(char, usize, f32)> {
        let mut plants = ones_against(0..q_rows, loud, 16.0);
        plants.push(('v', bad, nan));
        plants
    };
    cases.push(
        Case::folded(
            format!("fold: NaN seen in a block of weight e^-128, {tag}"),
            dtype,
            heads,
            Layout::from_runs(&[(Some(0), 300, 200)]),
            Layout::from_runs(&[(Some(0), 0, 300)]),
            Layout::from_runs(&[(Some(0), 300, 200)]),
        )
        .planted(faint(200, 0..300, 320)),
    );
    cases.push(
        Case::new(
            format!("short queries, NaN seen at weight e^-128 (split KV), {tag}"),
            dtype,
            heads,
            Layout::from_runs(&[(Some(0), 4000, 70)]),
            Layout::from_runs(&[(Some(0), 0, 4070)]),
        )
        .planted(faint(70, 0..2000, 4010)),
    );
    // A non-finite score a query sees (NaN in a visible K row, or in the query itself) makes its
    // output and LSE NaN, as the oracle's; the LSE too, or a merge would drop the row's NaN
    // (a row that saw no key has LSE -inf, and merges skip those).
    cases.push(
        Case::new(
            format!("NaN in a visible K row and a Q row, {tag}"),
            dtype,
            heads,
            Layout::from_runs(&[(Some(0), 0, 150)]),
            Layout::from_runs(&[(Some(0), 0, 150)]),
        )
        .planted(vec![('k', 60, nan), ('q', 20, nan)]),
    );
    cases.push(
        Case::folded(
            format!("fold: NaN in a visible K row and a Q row, {tag}"),
            dtype,
            heads,
            Layout::from_runs(&[(Some(0), 300, 200)]),
            Layout::from_runs(&[(Some(0), 0, 300)]),
            Layout::from_runs(&[(Some(0), 300, 200)]),
        )
        .planted(vec![('k', 320, nan), ('q', 50, nan)]),
    );
    cases.push(
        Case::new(
            format!("short queries, NaN in a visible K row (split KV), {tag}"),
            dtype,
            heads,
            Layout::from_runs(&[(Some(0), 4000, 70)]),
            Layout::from_runs(&[(Some(0), 0, 4070)]),
        )
        .planted(vec![('k', 4010, nan)]),
    );
    // Decode (split over the long context): sequence 0 sees a NaN K row, sequence 1's query is
    // NaN, sequence 2 is exact.
    cases.push(
        Case::new(
            format!("decode, NaN in a visible K row and a Q row, {tag}"),
            dtype,
            heads,
            Layout::from_runs(&[(Some(0), 6000, 1), (Some(1), 36, 1), (Some(2), 99, 1)]),
            Layout::from_runs(&[(Some(0), 0, 6001), (Some(1), 0, 37), (Some(2), 0, 100)]),
        )
        .planted(vec![('k', 200, nan), ('q', 1, nan)]),
    );
    // A visible key scoring -inf (K of -inf against a query of 1s) before any other: it adds
    // nothing, as in the oracle; the row's maximum is still -inf when it arrives.
    cases.push(
        Case::new(
            format!("decode, a visible key scoring -inf first, {tag}"),
            dtype,
            heads,
            Layout::from_runs(&[(Some(0), 6000, 1), (Some(1), 36, 1)]),
            Layout::from_runs(&[(Some(0), 0, 6001), (Some(1), 0, 37)]),
        )
        .planted(vec![('q', 0, 1.0), ('k', 0, f32::NEG_INFINITY)]),
    );
    // Scores that rise after a row's first key tile: every query element 1, keys 200..260 (the
    // second and third key tiles) every element `loud`, so they score loud * sqrt(D) against the
    // other keys' few units — by 2 a rise of 16-23 nats (finite exponentials against an earlier
    // maximum), by 16 one of 128-181 nats (2^184 and more: they overflow f32 against an earlier
    // maximum). A kernel that exponentiates against a stale running maximum must rescale (the
    // first) or recompute the scores (the second); the exact kernels take each tile's maximum.
    // In a fold, the rise comes in the folding launch (keys 430..470, its second key tile),
    // which rows 430.. see.
    for (loud, what) in [(2.0, "by 16-23 nats"), (16.0, "past f32's range")] {
        cases.push(
            Case::new(
                format!("scores rising {what} after the first key tile, {tag}"),
                dtype,
                heads,
                Layout::from_runs(&[(Some(0), 300, 200)]),
                Layout::from_runs(&[(Some(0), 0, 500)]),
            )
            .planted(ones_against(0..200, 200..260, loud)),
        );
        cases.push(
            Case::folded(
                format!("fold: scores rising {what} after the first key tile, {tag}"),
                dtype,
                heads,
                Layout::from_runs(&[(Some(0), 300, 200)]),
                Layout::from_runs(&[(Some(0), 0, 300)]),
                Layout::from_runs(&[(Some(0), 300, 200)]),
            )
            .planted(ones_against(0..200, 430..470, loud)),
        );
    }
    // A row whose first visible key tile is not its item's first: sequence 1's queries (rows
    // 60..160, in the same query block as sequence 0's) see keys from the second key tile on,
    // and all of them score -12 sqrt(D) (-96 to -136 nats): exact, every weight equal. Measured
    // against 0 instead of their own maximum, their exponentials flush to zero.
    cases.push(
        Case::new(
            format!("a row's first visible keys in a later tile, all scoring far below 0, {tag}"),
            dtype,
            heads,
            Layout::from_runs(&[(Some(0), 140, 60), (Some(1), 0, 100)]),
            Layout::from_runs(&[(Some(0), 0, 200), (Some(1), 0, 100)]),
        )
        .planted(ones_against(60..160, 200..300, -12.0)),
    );
    // After a first tile of scores 0, one key (row 200) scoring ~87.6 nats (2^126.4 against the
    // earlier maximum: finite, its row sum too), the range where a power-of-two rescale's 2^-k
    // leaves the normal floats.
    let loud = 87.6 / (heads.head_dim as f32).sqrt();
    cases.push(
        Case::new(
            format!("one later key scoring 87.6 nats above the first tile's, {tag}"),
            dtype,
            heads,
            Layout::from_runs(&[(Some(0), 300, 100)]),
            Layout::from_runs(&[(Some(0), 0, 400)]),
        )
        .planted([ones_against(0..100, 0..400, 0.0), vec![('k', 200, loud)]].concat()),
    );
}

/// `CudaAttention::random_rows` against its host mirror, bit for bit, and NaN in padding rows.
fn check_random_rows(ops: &CudaAttention) -> Result<(String, bool)> {
    let layout = Layout::from_runs(&[(Some(3), 1000, 37), (None, 0, 5), (Some(0), 0, 20)]);
    let (heads, dim, seed) = (3, 64, 0xfeed);
    let t = ops.random_rows(&layout, heads, dim, GpuDType::Bf16, seed, f32::NAN)?;
    let got = t.download(ops.stream())?;
    let mut bad = 0;
    for (row, tok) in layout.rows().enumerate() {
        let want = match tok {
            Some(tok) => cp_attention::hashed_row_bf16(seed, tok.seq as u32, tok.pos as u32, heads * dim),
            None => vec![f32::NAN; heads * dim],
        };
        let have = &got[row * heads * dim..(row + 1) * heads * dim];
        bad +=
            have.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits() && !(a.is_nan() && b.is_nan())).count();
    }
    Ok((format!("random_rows (device) == hashed_value (host), bit for bit: {bad} mismatches"), bad == 0))
}

/// [`check_case`] for each of `cases`, a line each; whether all passed.
fn check_cases<'a>(ops: &CudaAttention, rng: &mut Rng, cases: impl Iterator<Item = &'a Case>) -> Result<bool> {
    let mut all_ok = true;
    for case in cases {
        let (line, ok) = check_case(ops, rng, case)?;
        println!("  {} {line}", if ok { "[ok]    " } else { "[FAILED]" });
        all_ok &= ok;
    }
    Ok(all_ok)
}

/// Every kernel against the f64 oracle; prints a line per case and returns whether all passed.
pub fn check(ops: &mut CudaAttention) -> Result<bool> {
    ops.poison_outputs = true;
    let mut rng = Rng(0x9e3779b97f4a7c15 ^ std::process::id() as u64);
    let mut cases = Vec::new();
    for dtype in [GpuDType::Bf16, GpuDType::F16] {
        for head_dim in [64, 128] {
            for (n_heads, n_kv_heads) in [(4, 4), (8, 2), (8, 1)] {
                let heads = Heads { n_heads, n_kv_heads, head_dim };
                let tag = format!("{dtype:?} D={head_dim} G={}", n_heads / n_kv_heads);
                // A rank's two chunks of a 301-token turn over 77 cached tokens, N=2 (padding rows).
                let shards = PrefillShards::new(2, 77, 301).map_err(|e| anyhow::anyhow!("{e}"))?;
                let q_layout = shards.q_layout(0, 0).map_err(|e| anyhow::anyhow!("{e}"))?;
                cases.push(Case::new(
                    format!("causal two chunks, cached prefix, {tag}"),
                    dtype,
                    heads,
                    q_layout,
                    Layout::from_runs(&[(Some(0), 0, 378)]),
                ));
                // Two sequences, padding between; keys include another sequence (fully masked rows).
                cases.push(Case::new(
                    format!("varseq + padding + masked rows, {tag}"),
                    dtype,
                    heads,
                    Layout::from_runs(&[(Some(0), 100, 70), (None, 0, 5), (Some(1), 0, 30), (Some(2), 0, 9)]),
                    Layout::from_runs(&[(Some(1), 0, 45), (Some(0), 0, 150), (None, 0, 11)]),
                ));
                // Off-diagonal ring step: every key before every query.
                cases.push(Case::new(
                    format!("off-diagonal block (no mask), {tag}"),
                    dtype,
                    heads,
                    Layout::from_runs(&[(Some(0), 300, 200)]),
                    Layout::from_runs(&[(Some(0), 0, 260)]),
                ));
                // Pass-KV's fold: a causal chunk over its prefix, then itself folded in (on the TMA
                // kernel, in the epilogue). Rows of sequence 1 see keys of the first block only,
                // of sequence 3 of the second only (each side's LSE -inf in turn), padding none.
                cases.push(Case::folded(
                    format!("fold: chunk over prefix, then itself, {tag}"),
                    dtype,
                    heads,
                    Layout::from_runs(&[(Some(0), 300, 200), (None, 0, 5), (Some(1), 50, 20), (Some(3), 10, 10)]),
                    Layout::from_runs(&[(Some(0), 0, 300), (Some(1), 0, 40)]),
                    Layout::from_runs(&[(Some(0), 300, 200), (Some(2), 0, 30), (Some(3), 0, 15)]),
                ));
                // A pass-KV step's shape: a rank's two chunks (positions 0..150, padding, 600..760)
                // against keys 300..450 — the first chunk sees none of them (at 128-row blocks,
                // a block that sees nothing: numbered last, and a fold skips it), the others all
                // (equal items: the tail split's case). Alone, and folded after keys 0..300.
                let chunks = Layout::from_runs(&[(Some(0), 0, 150), (None, 0, 10), (Some(0), 600, 160)]);
                cases.push(Case::new(
                    format!("ring step, a chunk seeing nothing, {tag}"),
                    dtype,
                    heads,
                    chunks.clone(),
                    Layout::from_runs(&[(Some(0), 300, 150)]),
                ));
                cases.push(Case::folded(
                    format!("fold: ring step, a chunk seeing nothing, {tag}"),
                    dtype,
                    heads,
                    chunks,
                    Layout::from_runs(&[(Some(0), 0, 300)]),
                    Layout::from_runs(&[(Some(0), 300, 150)]),
                ));
                // Several key tiles per query block, two sequences: the wgmma kernel's 3-stage
                // ring turns over more than once and skips the other sequence's tiles.
                if dtype == GpuDType::Bf16 && n_heads / n_kv_heads == 4 {
                    let two = Layout::from_runs(&[(Some(0), 0, 600), (Some(1), 0, 301)]);
                    cases.push(Case::new(format!("causal 2 seqs x many tiles, {tag}"), dtype, heads, two.clone(), two));
                }
                if n_heads / n_kv_heads == 4 {
                    garbage_cases(&mut cases, dtype, heads, &tag);
                }
                // Decode: one query per sequence, caches of different lengths, a padding row.
                cases.push(Case::new(
                    format!("decode B=3 + padding row, {tag}"),
                    dtype,
                    heads,
                    Layout::from_runs(&[(Some(0), 1000, 1), (Some(1), 36, 1), (Some(2), 2098, 1), (None, 0, 1)]),
                    Layout::from_runs(&[(Some(0), 0, 1001), (Some(1), 0, 37), (Some(2), 0, 2099), (None, 0, 3)]),
                ));
            }
        }
    }
    let mut all_ok = true;
    let (default_prefill, default_decode) = (ops.prefill, ops.decode_kernel);
    let kernels = ops.prefill_kernels();
    for (i, &prefill) in kernels.iter().enumerate() {
        // Each prefill kernel with the default decode kernel; the SIMT decode kernel once more
        // with the last round.
        let decodes: &[DecodeKernel] = if i + 1 == kernels.len() {
            &[DecodeKernel::TensorCore, DecodeKernel::Simt]
        } else {
            &[DecodeKernel::TensorCore]
        };
        for &decode in decodes {
            (ops.prefill, ops.decode_kernel) = (prefill, decode);
            println!("  prefill kernel {prefill}, decode kernel {decode:?}:");
            let simt = decode == DecodeKernel::Simt;
            all_ok &= check_cases(ops, &mut rng, cases.iter().filter(|c| !simt || c.name.starts_with("decode")))?;
        }
    }
    (ops.prefill, ops.decode_kernel) = (default_prefill, default_decode);
    // The split cases once more without splitting: the same results either way.
    ops.split_kv = false;
    println!("  prefill kernel {}, split KV off:", ops.prefill);
    all_ok &= check_cases(ops, &mut rng, cases.iter().filter(|c| c.name.contains("split KV")))?;
    ops.split_kv = true;
    // The prefill cases with all but 3 multiprocessors left to other kernels: the persistent
    // grid shrinks to 3 blocks, each walking many items (what `reserve_sms` does on a ring).
    let reserved = ops.sm_count().saturating_sub(3);
    ops.reserve_sms(reserved)?;
    println!("  prefill kernel {}, {reserved} multiprocessors reserved:", ops.prefill);
    let prefill_cases = || cases.iter().filter(|c| !c.name.starts_with("decode"));
    all_ok &= check_cases(ops, &mut rng, prefill_cases())?;
    // The tail split on every launch whose busy items are equal and whose last round is short:
    // on the 3 blocks (several rounds, pieces after them) and on all (every item cut).
    let tail_mode = std::mem::replace(&mut ops.tail_mode, TailMode::Always);
    for reserve in [reserved, 0] {
        ops.reserve_sms(reserve)?;
        println!("  prefill kernel {}, tail split always, {reserve} multiprocessors reserved:", ops.prefill);
        all_ok &= check_cases(ops, &mut rng, prefill_cases())?;
    }
    ops.tail_mode = tail_mode;
    ops.reserve_sms(0)?;
    let (line, ok) = check_merges(ops, &mut rng)?;
    println!("  {} {line}", if ok { "[ok]    " } else { "[FAILED]" });
    let (line, ok2) = check_random_rows(ops)?;
    println!("  {} {line}", if ok2 { "[ok]    " } else { "[FAILED]" });
    ops.poison_outputs = false;
    Ok(all_ok && ok && ok2)
}

/// The wgmma building blocks alone (sm_90a): S = Q K^T and O = bf16(S) V for one warpgroup,
/// against f64 products on the host. Says which product is wrong if the prefill check fails.
pub fn selftest(ops: &CudaAttention) -> Result<bool> {
    let s = ops.stream();
    let mut rng = Rng(0x5eed ^ std::process::id() as u64);
    let (qv, kv, vv) = (rng.values(64 * 128), rng.values(128 * 128), rng.values(128 * 128));
    let q = GpuTensor::upload(s, &qv, &[64, 128], GpuDType::Bf16)?;
    let k = GpuTensor::upload(s, &kv, &[128, 128], GpuDType::Bf16)?;
    let v = GpuTensor::upload(s, &vv, &[128, 128], GpuDType::Bf16)?;
    let (s_dev, o_dev) = ops.wgmma_selftest(&q, &k, &v)?;
    let s_got: Vec<f64> = s_dev.download(s)?.into_iter().map(f64::from).collect();
    let o_got: Vec<f64> = o_dev.download(s)?.into_iter().map(f64::from).collect();
    let (qr, kr, vr) = (rounded(&qv, GpuDType::Bf16), rounded(&kv, GpuDType::Bf16), rounded(&vv, GpuDType::Bf16));
    let mut s_want = vec![0.0; 64 * 128];
    for i in 0..64 {
        for j in 0..128 {
            s_want[i * 128 + j] = (0..128).map(|c| qr[i * 128 + c] * kr[j * 128 + c]).sum();
        }
    }
    // O from the device's own S rounded to bf16, as the kernel rounds P.
    let p: Vec<f64> = s_got.iter().map(|&x| half::bf16::from_f64(x).to_f64()).collect();
    let mut o_want = vec![0.0; 64 * 128];
    for i in 0..64 {
        for d in 0..128 {
            o_want[i * 128 + d] = (0..128).map(|j| p[i * 128 + j] * vr[j * 128 + d]).sum();
        }
    }
    let (ds, d_o) = (discrepancy(&s_got, &s_want), discrepancy(&o_got, &o_want));
    // The products of bf16 values are exact in f32, but the tensor cores' f32 accumulation is not
    // IEEE round-to-nearest at every step: up to 1.6e-5 was seen for O on an H100 and 2.1e-4 on
    // an H200 (sums of 128 terms with cancellation, on one draw of inputs). A layout or
    // descriptor mistake gives errors of order 1.
    let ok = ds.within(1e-3) && d_o.within(1e-3);
    println!(
        "  {} wgmma S = Q K^T rel L2 {:.2e}, O = P V rel L2 {:.2e} (tol 1e-3; exact bf16 products, tensor-core f32 sums)",
        if ok { "[ok]    " } else { "[FAILED]" },
        ds.rel_l2,
        d_o.rel_l2
    );
    Ok(ok)
}

/// Median of CUDA-event timings (ms) of `f` after warm-up.
fn time_ms(
    ops: &CudaAttention,
    reps: usize,
    mut f: impl FnMut() -> std::result::Result<(), AttentionError>,
) -> Result<f64> {
    let s = ops.stream();
    for _ in 0..3 {
        f()?;
    }
    ops.synchronize()?;
    let err = |e| AttentionError::Cuda { op: "event", code: format!("{e:?}") };
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = s.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(err)?;
        f()?;
        let end = s.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(err)?;
        times.push(start.elapsed_ms(&end).map_err(err)? as f64);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Medians of `reps` timings of `f` under each prefill kernel of `kernels`, the kernels taking
/// turns launch by launch after at least [`crate::WARM_UP`] of warm-up launches (taking turns
/// too).
/// An H100 running attention sits at its power limit, its clock set by what ran just before: a
/// kernel timed in a block of its own, or right after a slower kernel, runs faster than the same
/// kernel in a long run (identical launches differed by up to 14% in session 8, calls 2 and 3).
/// The warm-up brings the card to the sustained state; taking turns gives every kernel the same
/// conditions. Pass kernels of similar speed together (a slow one lets the next one boost).
fn time_kernels(
    ops: &mut CudaAttention,
    kernels: &[PrefillKernel],
    reps: usize,
    mut f: impl FnMut(&CudaAttention) -> std::result::Result<(), AttentionError>,
) -> Result<Vec<f64>> {
    if kernels.is_empty() {
        return Ok(Vec::new());
    }
    let default = ops.prefill;
    warm_up(|| {
        for &k in kernels {
            ops.prefill = k;
            f(ops)?;
        }
        Ok(ops.synchronize()?)
    })?;
    let err = |e| AttentionError::Cuda { op: "event", code: format!("{e:?}") };
    let s = ops.stream().clone();
    // Odd rounds go in reverse order, so that no kernel always follows the same one.
    let mut events = Vec::with_capacity(reps * kernels.len());
    for rep in 0..reps {
        for i in 0..kernels.len() {
            let i = if rep % 2 == 0 { i } else { kernels.len() - 1 - i };
            ops.prefill = kernels[i];
            let start = s.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(err)?;
            f(ops)?;
            events.push((i, start, s.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(err)?));
        }
    }
    ops.prefill = default;
    let mut times = vec![Vec::with_capacity(reps); kernels.len()];
    for (i, start, end) in &events {
        times[*i].push(start.elapsed_ms(end).map_err(err)? as f64);
    }
    Ok(times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect())
}

/// Runs `round` (which ends by waiting for its launches) at least three times and for at least
/// [`crate::WARM_UP`]: the card brought to the clock it holds under load before a timing.
fn warm_up(mut round: impl FnMut() -> Result<()>) -> Result<()> {
    let started = std::time::Instant::now();
    for n in 0.. {
        round()?;
        if n >= 2 && started.elapsed() >= crate::WARM_UP {
            break;
        }
    }
    Ok(())
}

/// FLOP of an attention forward over `heads` query heads (all sequences' heads together) of `tq`
/// queries and `tk` keys at head dimension `d`: two products of 2·tq·tk·d each, half of them
/// for a causal square block (the convention of the kernel bench, SDPA's and FlashAttention's).
fn attention_flops(heads: usize, tq: usize, tk: usize, d: usize, causal: bool) -> f64 {
    4.0 * heads as f64 * tq as f64 * tk as f64 * d as f64 / if causal { 2.0 } else { 1.0 }
}

fn random_tensor(s: &Arc<CudaStream>, rng: &mut Rng, shape: &[usize]) -> Result<GpuTensor> {
    Ok(GpuTensor::upload(s, &rng.values(shape.iter().product()), shape, GpuDType::Bf16)?)
}

/// Each kernel of `kernels` with its median time of `f` ([`time_kernels`]), timed in two groups:
/// the TMA variants, then the older ones (slower: between TMA launches they would let the next
/// one run at a higher clock).
fn time_prefill_kernels(
    ops: &mut CudaAttention,
    kernels: &[PrefillKernel],
    reps: usize,
    mut f: impl FnMut(&CudaAttention) -> std::result::Result<(), AttentionError>,
) -> Result<Vec<(PrefillKernel, f64)>> {
    let (tma, older): (Vec<_>, Vec<_>) = kernels.iter().partition(|p| matches!(p, PrefillKernel::Tma { .. }));
    let mut timed = Vec::with_capacity(kernels.len());
    for group in [tma, older] {
        let times = time_kernels(ops, &group, reps, &mut f)?;
        timed.extend(group.into_iter().zip(times));
    }
    Ok(timed)
}

/// A TMA kernel variant that differs from another only at head dim 64 (`wide: false`): the same
/// kernel at head dim 128, so not timed twice there.
fn narrow_twin(prefill: PrefillKernel) -> bool {
    matches!(prefill, PrefillKernel::Tma { wide: false, .. })
}

/// Times the kernels (`quick`: fewer sizes and repetitions); prints and returns the timings.
pub fn bench(ops: &mut CudaAttention, quick: bool) -> Result<Vec<Timing>> {
    let s = ops.stream().clone();
    let mut rng = Rng(42);
    let (nh, nkv, d) = (32usize, 8usize, 128usize);
    let mut rows = Vec::new();
    let reps = if quick { 5 } else { 20 };
    let mut record = |name: &str, ms: f64, rate: f64, unit: &str| {
        println!("  {name:<40} {ms:>9.3} ms  {rate:>8.1} {unit}");
        rows.push(Timing { name: name.to_string(), ms, rate, unit: unit.to_string() });
    };

    // Causal prefill, O written in bf16 like SDPA.
    let sizes: &[(usize, usize)] =
        if quick { &[(4096, 4), (16384, 1)] } else { &[(4096, 4), (16384, 1), (65536, 1), (131072, 1)] };
    for &(t, b) in sizes {
        let runs: Vec<_> = (0..b).map(|seq| (Some(seq), 0, t)).collect();
        let layout = Layout::from_runs(&runs);
        let dl = DeviceLayout::new(ops, &layout)?;
        let q = random_tensor(&s, &mut rng, &[t * b, nh, d])?;
        let k = random_tensor(&s, &mut rng, &[t * b, nkv, d])?;
        let v = random_tensor(&s, &mut rng, &[t * b, nkv, d])?;
        let flops = attention_flops(b * nh, t, t, d, true);
        // The older mma.sync variants only where they are cheap to time.
        let kernels: Vec<_> = ops
            .prefill_kernels()
            .into_iter()
            .filter(|&p| {
                let costly_mma =
                    t > 16384 && matches!(p, PrefillKernel::Mma { warps, m_tiles } if (warps, m_tiles) != (4, 2));
                !narrow_twin(p) && !costly_mma
            })
            .collect();
        for (prefill, ms) in time_prefill_kernels(ops, &kernels, reps, |ops| {
            ops.flash(&q, &dl, &k, &v, &dl, GpuDType::Bf16).map(|_| ())
        })? {
            record(&format!("prefill causal T={t} B={b} ({prefill})"), ms, flops / ms / 1e9, "TFLOP/s");
        }
    }
    // Head dim 64, causal T=16K.
    {
        let (t, d64) = (16384usize, 64usize);
        let dl = DeviceLayout::new(ops, &Layout::from_runs(&[(Some(0), 0, t)]))?;
        let q = random_tensor(&s, &mut rng, &[t, nh, d64])?;
        let k = random_tensor(&s, &mut rng, &[t, nkv, d64])?;
        let v = random_tensor(&s, &mut rng, &[t, nkv, d64])?;
        let flops = attention_flops(nh, t, t, d64, true);
        let kernels: Vec<_> =
            ops.prefill_kernels().into_iter().filter(|p| !matches!(p, PrefillKernel::Mma { .. })).collect();
        for (prefill, ms) in time_prefill_kernels(ops, &kernels, reps, |ops| {
            ops.flash(&q, &dl, &k, &v, &dl, GpuDType::Bf16).map(|_| ())
        })? {
            record(&format!("prefill causal D=64 T={t} ({prefill})"), ms, flops / ms / 1e9, "TFLOP/s");
        }
    }
    // Off-diagonal block: 16K queries after 16K keys, no mask.
    {
        let t = 16384;
        let (ql, kl) = (Layout::from_runs(&[(Some(0), t, t)]), Layout::from_runs(&[(Some(0), 0, t)]));
        let (dq, dk) = (DeviceLayout::new(ops, &ql)?, DeviceLayout::new(ops, &kl)?);
        let q = random_tensor(&s, &mut rng, &[t, nh, d])?;
        let k = random_tensor(&s, &mut rng, &[t, nkv, d])?;
        let v = random_tensor(&s, &mut rng, &[t, nkv, d])?;
        let flops = attention_flops(nh, t, t, d, false);
        let kernels: Vec<_> = ops.prefill_kernels().into_iter().filter(|&p| !narrow_twin(p)).collect();
        for (prefill, ms) in time_prefill_kernels(ops, &kernels, reps, |ops| {
            ops.flash(&q, &dq, &k, &v, &dk, GpuDType::Bf16).map(|_| ())
        })? {
            record(&format!("off-diagonal block 16K x 16K ({prefill})"), ms, flops / ms / 1e9, "TFLOP/s");
        }
        let default = [ops.prefill];
        let ms =
            time_kernels(ops, &default, reps, |ops| ops.flash(&q, &dq, &k, &v, &dk, GpuDType::F32).map(|_| ()))?[0];
        record("off-diagonal block 16K x 16K (f32 O)", ms, flops / ms / 1e9, "TFLOP/s");
    }
    // Host time to issue one prefill launch (no synchronisation between launches): the fixed
    // cost a short ring step pays on the host.
    {
        let t = 256usize;
        let layout = Layout::from_runs(&[(Some(0), 0, t)]);
        let dl = DeviceLayout::new(ops, &layout)?;
        let q = random_tensor(&s, &mut rng, &[t, nh, d])?;
        let k = random_tensor(&s, &mut rng, &[t, nkv, d])?;
        let v = random_tensor(&s, &mut rng, &[t, nkv, d])?;
        ops.flash(&q, &dl, &k, &v, &dl, GpuDType::F32)?;
        ops.synchronize()?;
        let n = 200;
        let started = std::time::Instant::now();
        for _ in 0..n {
            ops.flash(&q, &dl, &k, &v, &dl, GpuDType::F32)?;
        }
        let host_us = started.elapsed().as_secs_f64() * 1e6 / n as f64;
        ops.synchronize()?;
        let gpu_ms = time_ms(ops, reps, || ops.flash(&q, &dl, &k, &v, &dl, GpuDType::F32).map(|_| ()))?;
        println!(
            "  host time to issue one prefill launch: {host_us:.1} us (GPU time of that launch {:.1} us)",
            gpu_ms * 1e3
        );
        record("host issue time per prefill launch (T=256)", host_us / 1e3, gpu_ms * 1e3, "us GPU");
    }
    // Short queries over a long key range (a ring step of partial prefill at 1% miss on 4
    // ranks: 320 query rows against 32000 keys, all visible), split KV on and off.
    {
        let (tq, tk) = (320usize, 32000usize);
        let (ql, kl) = (Layout::from_runs(&[(Some(0), tk, tq)]), Layout::from_runs(&[(Some(0), 0, tk)]));
        let (dq, dk) = (DeviceLayout::new(ops, &ql)?, DeviceLayout::new(ops, &kl)?);
        let q = random_tensor(&s, &mut rng, &[tq, nh, d])?;
        let k = random_tensor(&s, &mut rng, &[tk, nkv, d])?;
        let v = random_tensor(&s, &mut rng, &[tk, nkv, d])?;
        let flops = attention_flops(nh, tq, tk, d, false);
        for split in [true, false] {
            ops.split_kv = split;
            let ms = time_ms(ops, reps, || ops.flash(&q, &dq, &k, &v, &dk, GpuDType::F32).map(|_| ()))?;
            let label = if split { "split KV" } else { "no split" };
            record(&format!("short q 320 x 32000 keys ({label})"), ms, flops / ms / 1e9, "TFLOP/s");
        }
        ops.split_kv = true;
    }
    // Decode.
    let decodes: &[(usize, usize)] = if quick { &[(131072, 8)] } else { &[(131072, 8), (1 << 20, 1)] };
    for &(len, b) in decodes {
        let ql = Layout::from_runs(&(0..b).map(|seq| (Some(seq), len - 1, 1)).collect::<Vec<_>>());
        let kl = Layout::from_runs(&(0..b).map(|seq| (Some(seq), 0, len)).collect::<Vec<_>>());
        let (dq, dk) = (DeviceLayout::new(ops, &ql)?, DeviceLayout::new(ops, &kl)?);
        let q = random_tensor(&s, &mut rng, &[b, nh, d])?;
        let k = random_tensor(&s, &mut rng, &[b * len, nkv, d])?;
        let v = random_tensor(&s, &mut rng, &[b * len, nkv, d])?;
        let bytes = 2.0 * (b * len * nkv * d * 2) as f64;
        let default = ops.decode_kernel;
        for kernel in [DecodeKernel::TensorCore, DecodeKernel::Simt] {
            ops.decode_kernel = kernel;
            let args = ops
                .prepare_decode(&dq, &dk, nh, nkv)?
                .ok_or_else(|| anyhow::anyhow!("decode layouts not contiguous"))?;
            let ms = time_ms(ops, reps, || ops.decode_with(&args, &q, &dq, &k, &v, &dk).map(|_| ()))?;
            record(&format!("decode KV={len} B={b} ({kernel:?})"), ms, bytes / ms / 1e9, "TB/s");
        }
        ops.decode_kernel = default;
    }
    // Merge bandwidth: fold an f32 partial into an f32 accumulator; 4-way merge.
    {
        let (t, rows_e) = (16384usize, 16384 * nh);
        let mk = |rng: &mut Rng| -> Result<Partial<GpuTensor>> {
            Ok(Partial {
                out: GpuTensor::upload(&s, &rng.values(rows_e * d), &[t, nh, d], GpuDType::F32)?,
                lse: GpuTensor::upload(&s, &rng.values(rows_e), &[t, nh], GpuDType::F32)?,
            })
        };
        let parts = (0..4).map(|_| mk(&mut rng)).collect::<Result<Vec<_>>>()?;
        let mut acc = Some(parts[0].clone());
        let one = (rows_e * d * 4 + rows_e * 4) as f64;
        let ms = time_ms(ops, reps, || {
            let a = acc.take().expect("accumulator");
            acc = Some(ops.merge_into(a, &parts[1])?);
            Ok(())
        })?;
        record("merge fold f32 (read 2, write 1)", ms, 3.0 * one / ms / 1e9, "TB/s");
        let ms = time_ms(ops, reps, || ops.merge_many(&parts, GpuDType::F32).map(|_| ()))?;
        record("merge 4-way f32 (read 4, write 1)", ms, 5.0 * one / ms / 1e9, "TB/s");
        // Ceiling: device-to-device copy of the same bytes.
        let src = parts[2].out.slice();
        let ms = time_ms(ops, reps, || {
            s.clone_dtod(src).map(|_| ()).map_err(|e| AttentionError::Cuda { op: "dtod", code: format!("{e:?}") })
        })?;
        record("device copy (read 1, write 1)", ms, 2.0 * (rows_e * d * 4) as f64 / ms / 1e9, "TB/s");
    }
    Ok(rows)
}

/// Writes a minimal safetensors file: 8-byte header length, JSON header, raw data.
fn write_safetensors(path: &std::path::Path, tensors: &[(&str, &str, &[usize], Vec<u8>)]) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, dtype, shape, data) in tensors {
        header.insert(
            (*name).to_string(),
            serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [offset, offset + data.len()] }),
        );
        offset += data.len();
    }
    let mut header = serde_json::Value::Object(header).to_string();
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    for (_, _, _, data) in tensors {
        bytes.extend(data);
    }
    std::fs::write(path, bytes)
}

/// Writes one prefill's inputs and outputs (T=4096) as safetensors under `dir`.
pub fn dump(ops: &CudaAttention, dir: &str) -> Result<()> {
    let s = ops.stream().clone();
    let mut rng = Rng(7);
    let (t, nh, nkv, d) = (4096usize, 32usize, 8usize, 128usize);
    let layout = Layout::from_runs(&[(Some(0), 0, t)]);
    let dl = DeviceLayout::new(ops, &layout)?;
    let q = random_tensor(&s, &mut rng, &[t, nh, d])?;
    let k = random_tensor(&s, &mut rng, &[t, nkv, d])?;
    let v = random_tensor(&s, &mut rng, &[t, nkv, d])?;
    let p = ops.flash(&q, &dl, &k, &v, &dl, GpuDType::Bf16)?;
    let bits = |x: &GpuTensor| -> Result<Vec<u8>> {
        let vals = x.download(&s)?;
        Ok(match x.dtype() {
            GpuDType::F32 => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
            _ => vals.iter().flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes()).collect(),
        })
    };
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = std::path::Path::new(dir).join("prefill_t4096.safetensors");
    write_safetensors(
        &path,
        &[
            ("q", "BF16", &[t, nh, d], bits(&q)?),
            ("k", "BF16", &[t, nkv, d], bits(&k)?),
            ("v", "BF16", &[t, nkv, d], bits(&v)?),
            ("out", "BF16", &[t, nh, d], bits(&p.out)?),
            ("lse", "F32", &[t, nh], bits(&p.lse)?),
        ],
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// One prefill's shape for [`profile`]: `batch` sequences of `tokens` tokens, head dimension
/// `head_dim`; causal, or (`off_diagonal`) each sequence's queries after all of its keys, no mask
/// (a ring step's block).
#[derive(Clone, Copy, Debug)]
pub struct ProfileShape {
    /// 64 or 128.
    pub head_dim: usize,
    /// Tokens per sequence (queries and keys alike).
    pub tokens: usize,
    /// Sequences, packed one after another.
    pub batch: usize,
    /// Queries after all of their sequence's keys, no mask; else causal.
    pub off_diagonal: bool,
    /// `(world, rank)`: instead of one launch, rank `rank`'s compute steps of ring pass-KV over
    /// `world` ranks (one sequence of `tokens`, load-balanced shards), the first step's partial
    /// and each later step folded into it, as `cp_ring::pass_kv` runs them — on this one GPU,
    /// without the transfers.
    pub ring: Option<(usize, usize)>,
}

impl ProfileShape {
    /// Whether [`profile`] can run the shape (checked before any GPU work): a ring profile takes
    /// one causal sequence that its ranks can shard, and a rank of the ring.
    pub fn check(&self) -> Result<()> {
        if let Some((world, rank)) = self.ring {
            anyhow::ensure!(
                self.batch == 1 && !self.off_diagonal,
                "a ring profile takes one causal sequence (no --batch, no --off-diagonal)"
            );
            anyhow::ensure!(rank < world, "--ring-rank {rank} is not a rank of a ring of {world}");
            PrefillShards::new(world, 0, self.tokens)?;
        }
        Ok(())
    }
}

/// `repeat` prefills of `shape` (one for `ncu`), back to back on one stream; more than one are
/// timed as a whole (CUDA events around all of them, after the usual warm-up: the sustained rate,
/// at the clock the card holds under load).
pub fn profile(ops: &CudaAttention, shape: &ProfileShape, repeat: usize) -> Result<()> {
    shape.check()?;
    let ProfileShape { head_dim, tokens, batch, off_diagonal, ring } = *shape;
    if let Some((world, rank)) = ring {
        return profile_ring(ops, head_dim, tokens, world, rank, repeat);
    }
    let s = ops.stream().clone();
    let mut rng = Rng(1);
    let q_start = if off_diagonal { tokens } else { 0 };
    let q_runs: Vec<_> = (0..batch).map(|seq| (Some(seq), q_start, tokens)).collect();
    let k_runs: Vec<_> = (0..batch).map(|seq| (Some(seq), 0, tokens)).collect();
    // The device's layout cache: a causal launch's query and key layouts are one upload.
    let (ql, kl) = (ops.device_layout(&Layout::from_runs(&q_runs))?, ops.device_layout(&Layout::from_runs(&k_runs))?);
    let rows = tokens * batch;
    let q = random_tensor(&s, &mut rng, &[rows, 32, head_dim])?;
    let k = random_tensor(&s, &mut rng, &[rows, 8, head_dim])?;
    let v = random_tensor(&s, &mut rng, &[rows, 8, head_dim])?;
    let launch = || ops.flash(&q, &ql, &k, &v, &kl, GpuDType::Bf16);
    if repeat > 1 {
        warm_up(|| {
            launch()?;
            Ok(ops.synchronize()?)
        })?;
    }
    let err = |e| anyhow::anyhow!("event: {e:?}");
    let start = s.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(err)?;
    for _ in 0..repeat {
        launch()?;
    }
    let end = s.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(err)?;
    ops.synchronize()?;
    if repeat > 1 {
        let ms = start.elapsed_ms(&end).map_err(err)? as f64 / repeat as f64;
        let flops = attention_flops(batch * 32, tokens, tokens, head_dim, !off_diagonal);
        let what = if off_diagonal { "off-diagonal" } else { "causal" };
        println!(
            "prefill {what} T={tokens} B={batch} D={head_dim} ({}): {repeat} launches, {ms:.3} ms each, {:.1} TFLOP/s",
            ops.prefill.for_queries(&ql, head_dim),
            flops / ms / 1e9
        );
    }
    Ok(())
}

/// Query-key pairs of one sequence that see each other (key position at or before the query's)
/// between the tokens of `q` and of `k`.
fn visible_pairs(q: &[Span], k: &[Span]) -> u64 {
    let mut pairs = 0u64;
    for qs in q {
        for ks in k {
            for p in qs.start..qs.end() {
                pairs += (p + 1).saturating_sub(ks.start).min(ks.len) as u64;
            }
        }
    }
    pairs
}

/// [`profile`] of rank `rank`'s pass-KV steps over `world` ranks (see [`ProfileShape::ring`]):
/// each step timed with CUDA events around it, summed over `repeat` rounds after the warm-up.
fn profile_ring(
    ops: &CudaAttention,
    head_dim: usize,
    tokens: usize,
    world: usize,
    rank: usize,
    repeat: usize,
) -> Result<()> {
    use cp_ring::AttentionOps;
    let shards = PrefillShards::new(world, 0, tokens)?;
    let s = ops.stream().clone();
    let mut rng = Rng(1);
    let layouts = (0..world).map(|r| shards.q_layout(0, r)).collect::<std::result::Result<Vec<_>, _>>()?;
    let rows = layouts[rank].len();
    let q = random_tensor(&s, &mut rng, &[rows, 32, head_dim])?;
    let kv = (0..world)
        .map(|_| {
            Ok((random_tensor(&s, &mut rng, &[rows, 8, head_dim])?, random_tensor(&s, &mut rng, &[rows, 8, head_dim])?))
        })
        .collect::<Result<Vec<_>>>()?;
    // Step j holds the block that started on rank (rank - j) mod world.
    let order: Vec<usize> = (0..world).map(|j| (rank + world - j) % world).collect();
    let step = |acc: Option<Partial<GpuTensor>>, src: usize| -> Result<Partial<GpuTensor>> {
        let (ql, kl, (k, v)) = (&layouts[rank], &layouts[src], &kv[src]);
        Ok(match acc {
            None => ops.partial(&q, ql, k, v, kl)?,
            Some(acc) => ops.partial_into(acc, &q, ql, k, v, kl)?,
        })
    };
    warm_up(|| {
        let mut acc = None;
        for &src in &order {
            acc = Some(step(acc, src)?);
        }
        Ok(ops.synchronize()?)
    })?;
    let err = |e| anyhow::anyhow!("event: {e:?}");
    // Every round enqueued back to back, an event after each step; one wait at the end (the
    // rounds run as the ring's would, without the host in between).
    let mut events = vec![s.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(err)?];
    for _ in 0..repeat {
        let mut acc = None;
        for &src in &order {
            acc = Some(step(acc, src)?);
            events.push(s.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(err)?);
        }
    }
    ops.synchronize()?;
    let mut step_ms = vec![0.0f64; world];
    for (i, pair) in events.windows(2).enumerate() {
        step_ms[i % world] += pair[0].elapsed_ms(&pair[1]).map_err(err)? as f64;
    }
    let total = events[0].elapsed_ms(&events[events.len() - 1]).map_err(err)? as f64 / repeat as f64;
    let spans = |r: usize| shards.spans(r).map(|s| s.to_vec());
    let mut detail = Vec::new();
    for (j, &src) in order.iter().enumerate() {
        let ms = step_ms[j] / repeat as f64;
        let flops = 4.0 * 32.0 * head_dim as f64 * visible_pairs(&spans(rank)?, &spans(src)?) as f64;
        detail.push(format!("{ms:.3} ms ({:.0} TFLOP/s)", flops / ms / 1e9));
    }
    let flops = attention_flops(32, tokens, tokens, head_dim, true) / world as f64;
    println!(
        "ring pass-KV steps T={tokens} D={head_dim} world {world} rank {rank} ({}): {repeat} rounds, {total:.3} ms each, \
         {:.1} TFLOP/s (the causal whole / world); steps: {}",
        ops.prefill,
        flops / total / 1e9,
        detail.join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{attention_flops, visible_pairs};
    use cp_shard::{PrefillShards, Span};

    #[test]
    fn visible_pairs_of_a_ring_add_up_to_the_causal_whole() {
        // Every rank's queries against every rank's keys: T (T + 1) / 2 pairs in all.
        let shards = PrefillShards::new(4, 0, 1000).unwrap();
        let total: u64 = (0..4)
            .flat_map(|q| (0..4).map(move |k| (q, k)))
            .map(|(q, k)| visible_pairs(&shards.spans(q).unwrap(), &shards.spans(k).unwrap()))
            .sum();
        assert_eq!(total, 1000 * 1001 / 2);
        // Queries 10..12 against keys 0..11: 11 + 11 pairs (key 11 is after query 10).
        assert_eq!(visible_pairs(&[Span::new(10, 2)], &[Span::new(0, 11)]), 11 + 11);
        assert_eq!(visible_pairs(&[Span::new(0, 5)], &[Span::new(5, 5)]), 0);
    }

    #[test]
    fn attention_flops_count_two_products_and_half_for_causal() {
        // 32 heads, 16K x 16K, D=128: 4 * 2^5 * 2^28 * 2^7 = 2^42 without a mask, 2^41 causal.
        assert_eq!(attention_flops(32, 16384, 16384, 128, false), (1u64 << 42) as f64);
        assert_eq!(attention_flops(32, 16384, 16384, 128, true), (1u64 << 41) as f64);
        // A short query block over a long key range: tq * tk, no mask.
        assert_eq!(attention_flops(1, 320, 32000, 64, false), 4.0 * 320.0 * 32000.0 * 64.0);
    }
}

//! RankAttention's contract: bad calls are errors naming the problem, a decode step copies only
//! its new rows, and the output matches the f64 oracle whatever the regions' growth.

use std::sync::Mutex;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use cp_attention::CpuAttention;
use cp_model::{CacheConfig, Choice, ModelError, RankAttention};
use cp_ring::{Algorithm, ChannelTransport, PoolError, RankPool, channel_ring};
use cp_shard::NewTokens;

type Attn = RankAttention<CpuAttention, ChannelTransport<Tensor>>;

fn config(layers: usize, seqs: usize, reserve: usize) -> CacheConfig {
    CacheConfig {
        layers,
        seqs,
        reserve,
        choice: Choice::Fixed { prefill: Algorithm::PassKv, decode: Algorithm::GatherQ },
    }
}

fn one_rank(config: CacheConfig) -> Attn {
    let comm = channel_ring::<Tensor>(1, Duration::from_secs(5)).remove(0);
    RankAttention::new(CpuAttention::default(), comm, config).unwrap()
}

fn rows(n: usize, heads: usize) -> Tensor {
    Tensor::randn(0f32, 1.0, (n, heads, 8), &Device::Cpu).unwrap()
}

#[test]
fn bad_calls_are_errors() {
    let comm = channel_ring::<Tensor>(1, Duration::from_secs(5)).remove(0);
    let zero = RankAttention::new(CpuAttention::default(), comm, config(0, 1, 0));
    assert!(matches!(zero, Err(ModelError::Config { what: "layers", .. })), "{zero:?}");
    let comm = channel_ring::<Tensor>(1, Duration::from_secs(5)).remove(0);
    let zero = RankAttention::new(CpuAttention::default(), comm, config(1, 0, 0));
    assert!(matches!(zero, Err(ModelError::Config { what: "seqs", .. })), "{zero:?}");
    for (seqs, reserve) in [(1, usize::MAX), (4, 1 << 30), (2, usize::MAX / 2 + 1)] {
        let comm = channel_ring::<Tensor>(1, Duration::from_secs(5)).remove(0);
        let huge = RankAttention::new(CpuAttention::default(), comm, config(1, seqs, reserve));
        assert!(matches!(huge, Err(ModelError::Config { what: "reserve", .. })), "{huge:?}");
    }

    let mut attn = one_rank(config(2, 2, 0));
    assert!(matches!(attn.prefill(&[NewTokens { seq: 5, count: 3 }]), Err(ModelError::Shard(_))));
    assert!(matches!(attn.decode(&[]), Err(ModelError::Shard(_))));
    let mut step = attn.prefill(&[NewTokens { seq: 0, count: 3 }]).unwrap();
    let n = step.rows().len();
    let (q, k) = (rows(n, 4), rows(n, 2));
    let e = attn.attend(&mut step, 2, &q, &k, &k).unwrap_err();
    assert!(matches!(e, ModelError::Layer { layer: 2, layers: 2 }), "{e}");
    let short = rows(n + 1, 2);
    let e = attn.attend(&mut step, 0, &q, &short, &k).unwrap_err();
    assert!(matches!(e, ModelError::Rows { what: "k", .. }), "{e}");
    attn.attend(&mut step, 0, &q, &k, &k).unwrap();
    // Layer 1 never attended: finishing is an error, and the cache did not move.
    assert!(matches!(attn.finish(step), Err(ModelError::Unattended { layer: 1 })));
    assert_eq!(attn.cache().seq_len(0).unwrap(), 0);
    // A step planned before another is refused.
    let stale = attn.prefill(&[NewTokens { seq: 1, count: 2 }]).unwrap();
    let mut step = attn.prefill(&[NewTokens { seq: 0, count: 3 }]).unwrap();
    for layer in 0..2 {
        attn.attend(&mut step, layer, &q, &k, &k).unwrap();
    }
    attn.finish(step).unwrap();
    assert_eq!(attn.cache().seq_len(0).unwrap(), 3);
    assert!(matches!(attn.finish(stale), Err(ModelError::StaleStep)));
    // A step of another rank's attention is refused too.
    let mut other = one_rank(config(2, 2, 0));
    let mut foreign = other.prefill(&[NewTokens { seq: 0, count: 3 }]).unwrap();
    assert!(matches!(attn.attend(&mut foreign, 0, &q, &k, &k), Err(ModelError::StaleStep)));
}

/// Decode on 2 ranks: after the prompt, each step writes its new rows only (one per layer on
/// the rank that holds the token), except when a sequence outgrows its power-of-two region; with
/// a reserve, never. Every step's output is checked against the f64 oracle.
#[test]
fn decode_copies_only_new_rows_and_matches_the_oracle() {
    for reserve in [0, 512] {
        let n = 2;
        let ends =
            Mutex::new(channel_ring::<Tensor>(n, Duration::from_secs(30)).into_iter().map(Some).collect::<Vec<_>>());
        let pool = RankPool::new(n, move |rank| {
            let comm = ends.lock().unwrap()[rank].take().unwrap();
            RankAttention::new(CpuAttention::default(), comm, config(1, 1, reserve))
        })
        .unwrap();
        // Keys, values and queries of every position, drawn once; each rank picks its rows.
        let total = 250 + 40;
        let all_q = std::sync::Arc::new(rows(total, 4).to_dtype(DType::F64).unwrap());
        let all_k = std::sync::Arc::new(rows(total, 2).to_dtype(DType::F64).unwrap());
        let all_v = std::sync::Arc::new(rows(total, 2).to_dtype(DType::F64).unwrap());
        let mut moved = 0;
        for i in 0..41 {
            let (q, k, v) = (all_q.clone(), all_k.clone(), all_v.clone());
            let res = pool.run(move |_rank, attn: &mut RankAttention<CpuAttention, ChannelTransport<Tensor>>| {
                let before = attn.rows_written();
                let mut step =
                    if i == 0 { attn.prefill(&[NewTokens { seq: 0, count: 250 }])? } else { attn.decode(&[0])? };
                let pos: Vec<u32> = step.positions();
                let new = step.tokens().iter().flatten().count() as u64;
                let idx = Tensor::new(pos.as_slice(), &Device::Cpu)?;
                let (q, k, v) = (q.index_select(&idx, 0)?, k.index_select(&idx, 0)?, v.index_select(&idx, 0)?);
                let out = attn.attend(&mut step, 0, &q, &k, &v)?;
                let tokens = step.tokens();
                attn.finish(step)?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((attn.rows_written() - before, new, tokens, out))
            });
            let res = PoolError::all_ok(res, |_| false).map_err(|e| e.to_string()).unwrap();
            for (copied, new, tokens, out) in res {
                assert!(copied >= new);
                if copied > new {
                    moved += 1;
                    assert_eq!(reserve, 0, "step {i}: a reserved region moved");
                }
                // Each real row against the f64 oracle over the positions it may see.
                for (row, t) in tokens.iter().enumerate() {
                    let Some(t) = t else { continue };
                    let keys = t.pos + 1;
                    let q = all_q.narrow(0, t.pos, 1).unwrap();
                    let k = all_k.narrow(0, 0, keys).unwrap();
                    let v = all_v.narrow(0, 0, keys).unwrap();
                    let want = oracle(&q, &k, &v);
                    let got = out
                        .narrow(0, row, 1)
                        .unwrap()
                        .to_dtype(DType::F64)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f64>()
                        .unwrap();
                    let err = got.iter().zip(&want).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
                    assert!(err < 1e-10, "step {i} position {}: error {err}", t.pos);
                }
            }
        }
        if reserve == 0 {
            // The prompt leaves 124 and 126 rows on the ranks (regions and buffers of 128); 20
            // more tokens each outgrow them once. A sequence alone never changes its region's
            // start, so each rank moves its rows once, when its buffer gets too short for the
            // longer message (its own growth or the other rank's); every other step writes its
            // new row alone.
            assert_eq!(moved, 2);
        }
    }
}

/// Exact attention of one query row `[1, NH, DH]` against `[T, NKV, DH]` keys, in f64.
fn oracle(q: &Tensor, k: &Tensor, v: &Tensor) -> Vec<f64> {
    let (_, nh, dh) = q.dims3().unwrap();
    let nkv = k.dims()[1];
    let (q, k, v) = (
        q.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        k.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        v.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
    );
    let t = k.len() / (nkv * dh);
    let mut out = vec![0f64; nh * dh];
    for h in 0..nh {
        let g = h / (nh / nkv);
        let s: Vec<f64> = (0..t)
            .map(|j| (0..dh).map(|d| q[h * dh + d] * k[(j * nkv + g) * dh + d]).sum::<f64>() / (dh as f64).sqrt())
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f64 = w.iter().sum();
        for j in 0..t {
            for d in 0..dh {
                out[h * dh + d] += w[j] / z * v[(j * nkv + g) * dh + d];
            }
        }
    }
    out
}

/// Only the step planned last may run: two steps planned on the same cache cannot both write.
#[test]
fn only_the_step_planned_last_runs() {
    let mut attn = one_rank(config(1, 2, 0));
    let mut a = attn.prefill(&[NewTokens { seq: 0, count: 3 }]).unwrap();
    let mut b = attn.prefill(&[NewTokens { seq: 1, count: 2 }]).unwrap();
    let n = a.rows().len();
    let (q, k) = (rows(n, 4), rows(n, 2));
    assert!(matches!(attn.attend(&mut a, 0, &q, &k, &k), Err(ModelError::StaleStep)));
    let m = b.rows().len();
    let (q, k) = (rows(m, 4), rows(m, 2));
    attn.attend(&mut b, 0, &q, &k, &k).unwrap();
    assert!(matches!(attn.finish(a), Err(ModelError::StaleStep)));
    attn.finish(b).unwrap();
    assert_eq!((attn.cache().seq_len(0).unwrap(), attn.cache().seq_len(1).unwrap()), (0, 2));
}

/// With a reserve, a sequence's first rows on a rank move no other region: every step writes its
/// new rows alone, whatever order the sequences start in.
#[test]
fn a_reserve_moves_no_rows() {
    let mut attn = one_rank(config(1, 3, 32));
    for (seq, count) in [(2, 5), (0, 7), (1, 3), (0, 4), (2, 9)] {
        let before = attn.rows_written();
        let mut step = attn.prefill(&[NewTokens { seq, count }]).unwrap();
        let n = step.rows().len();
        let (q, k) = (rows(n, 4), rows(n, 2));
        attn.attend(&mut step, 0, &q, &k, &k).unwrap();
        attn.finish(step).unwrap();
        assert_eq!(attn.rows_written() - before, count as u64, "sequence {seq}: rows moved");
    }
    assert_eq!(attn.buffer_rows(0), 128, "3 regions of 32 rows, the buffer a power of two");
}

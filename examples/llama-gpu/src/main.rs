//! The Llama example on GPUs: the model's tensors on candle's CUDA backend, attention through
//! `cp_model::RankAttention` on our kernels with one rank per GPU over NCCL, checked against the
//! same code on one GPU and against candle-transformers' own `Llama` on GPU 0.
//!
//! See README.md here for how to build it (candle's CUDA kernels need `nvcc`).

#[path = "../../../crates/cp-model/examples/llama/model.rs"]
#[allow(dead_code)]
mod model;

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Device, Storage, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama::{Cache, Config, Llama, LlamaConfig};
use cp_attention::cuda::{CudaAttention, GpuDType, GpuTensor};
use cp_model::{CacheConfig, Choice, RankAttention, Step};
use cp_nccl::{GpuRing, GpuRingError, Placement, RankTransport};
use cp_ring::{Algorithm, RingError};
use cp_shard::NewTokens;
use model::{CpLlama, Error, Feed, LayerAttention, argmax};

/// `RankAttention` on a rank's GPU, fed from and returning candle CUDA tensors by device copies.
struct CudaBridge<'t> {
    attn: RankAttention<CudaAttention, &'t mut RankTransport>,
    dev: CudaDevice,
}

impl CudaBridge<'_> {
    /// A candle CUDA tensor's values as a bf16 `GpuTensor` of our stream: converted on candle's
    /// stream, copied device to device on ours after it.
    fn to_gpu(&self, t: &Tensor) -> Result<GpuTensor, Error> {
        let t = t.to_dtype(DType::BF16)?.contiguous()?;
        let (n, dims) = (t.elem_count(), t.dims().to_vec());
        let ours = self.attn.ops().stream().clone();
        let theirs = self.dev.cuda_stream();
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cuda(cs) = &*storage else { return Err("the model's tensors are not on a CUDA device".into()) };
        let slice = cs.as_cuda_slice::<half::bf16>()?;
        let src = slice.slice(layout.start_offset()..layout.start_offset() + n);
        // SAFETY: bf16 is two plain bytes; the view covers the same 2n bytes.
        let src = unsafe { src.transmute::<u8>(2 * n) }.ok_or("bf16 view as bytes")?;
        let mut buf = GpuTensor::alloc_buffer(&ours, GpuDType::Bf16, &dims)?;
        ours.join(&theirs)?; // candle's conversion first
        ours.memcpy_dtod(&src, &mut buf.slice_mut(0..2 * n))?;
        theirs.join(&ours)?; // candle frees `t` on its stream: after our copy
        Ok(GpuTensor::from_buffer(buf, GpuDType::Bf16, dims)?)
    }

    /// An f32 `GpuTensor` of our stream as a candle CUDA tensor (a device copy on candle's
    /// stream after our work).
    fn to_candle(&self, t: &GpuTensor) -> Result<Tensor, Error> {
        if t.dtype() != GpuDType::F32 {
            return Err(format!("attention output in {:?}, expected f32", t.dtype()).into());
        }
        let n = t.elem_count();
        let ours = self.attn.ops().stream().clone();
        let theirs = self.dev.cuda_stream();
        let mut dst = self.dev.alloc_zeros::<f32>(n)?;
        theirs.join(&ours)?; // the attention first
        {
            // SAFETY: f32 is four plain bytes; the view covers the same 4n bytes.
            let mut view = unsafe { dst.transmute_mut::<u8>(4 * n) }.ok_or("f32 view as bytes")?;
            theirs.memcpy_dtod(&t.slice().slice(0..4 * n), &mut view)?;
        }
        ours.join(&theirs)?; // we free `t` on our stream: after candle's copy
        let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(dst, self.dev.clone()));
        Ok(Tensor::from_storage(storage, t.shape(), BackpropOp::none(), false))
    }
}

impl LayerAttention for CudaBridge<'_> {
    fn attend_layer(
        &mut self,
        step: &mut Step,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor, Error> {
        let (q, k, v) = (self.to_gpu(q)?, self.to_gpu(k)?, self.to_gpu(v)?);
        let out = self.attn.attend(step, layer, &q, &k, &v)?;
        self.to_candle(&out)
    }
}

/// Where the ranks post each step's logits, so every rank picks the same next tokens: posts are
/// collected with a deadline (a rank that fails ends the others with an error, not a hang).
struct Board {
    posts: Mutex<HashMap<usize, Vec<(usize, Vec<f32>)>>>,
    ranks: Mutex<HashMap<usize, usize>>,
    ready: Condvar,
}

impl Board {
    fn exchange(&self, step: usize, n: usize, mine: Vec<(usize, Vec<f32>)>) -> Result<Vec<(usize, Vec<f32>)>, Error> {
        let mut ranks = self.ranks.lock().map_err(|_| "board poisoned")?;
        self.posts.lock().map_err(|_| "board poisoned")?.entry(step).or_default().extend(mine);
        *ranks.entry(step).or_default() += 1;
        self.ready.notify_all();
        let (ranks, timeout) = self
            .ready
            .wait_timeout_while(ranks, Duration::from_secs(120), |r| r.get(&step).copied().unwrap_or(0) < n)
            .map_err(|_| "board poisoned")?;
        if timeout.timed_out() {
            return Err(format!("step {step}: only {} of {n} ranks posted logits within 120 s", ranks[&step]).into());
        }
        drop(ranks);
        let mut all = self.posts.lock().map_err(|_| "board poisoned")?[&step].clone();
        all.sort_by_key(|(seq, _)| *seq);
        Ok(all)
    }
}

/// What a run produced: per step, the tokens fed and each sequence's logits at its last token,
/// and the wall time of each step on rank 0.
struct Transcript {
    feeds: Vec<Feed>,
    logits: Vec<Vec<(usize, Vec<f32>)>>,
    step_ms: Vec<f64>,
}

fn job_err(rank: usize, e: impl Into<Error>) -> GpuRingError {
    GpuRingError::Ring(RingError::Compute { rank, step: 0, op: "llama step", source: e.into() })
}

/// The conversation on `gpus` GPUs over NCCL: every rank loads the weights onto its GPU and runs
/// its rows; the greedy tokens come from the logits every rank posts.
fn run_cp(weights: &str, cfg: &Config, gpus: usize, decode: usize) -> Result<Transcript, Error> {
    let ring = GpuRing::new(Placement::Gpus((0..gpus).collect()), Duration::from_secs(120))?;
    let board = Arc::new(Board { posts: Mutex::default(), ranks: Mutex::default(), ready: Condvar::new() });
    let (weights, cfg) = (weights.to_string(), cfg.clone());
    let transcripts = ring.run(move |rank| {
        let r = rank.rank;
        let dev = Device::new_cuda(r).map_err(|e| job_err(r, e))?;
        // SAFETY: the checkpoint is not modified while mapped (candle's mmap contract).
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &dev) }.map_err(|e| job_err(r, e))?;
        let model = CpLlama::load(vb, &cfg).map_err(|e| job_err(r, e))?;
        let config = CacheConfig {
            layers: cfg.num_hidden_layers,
            seqs: 3,
            reserve: 0,
            choice: Choice::Fixed { prefill: Algorithm::PassKv, decode: Algorithm::GatherQ },
        };
        let ops = rank.ops.with_stream(rank.ops.stream().clone());
        let cdev = dev.as_cuda_device().map_err(|e| job_err(r, e))?.clone();
        let attn = RankAttention::new(ops, &mut rank.transport, config).map_err(|e| job_err(r, e))?;
        let mut bridge = CudaBridge { attn, dev: cdev };
        let (first, second) = model::conversation(cfg.vocab_size);
        let mut history: Vec<Vec<u32>> = vec![Vec::new(); 3];
        let mut out = Transcript { feeds: Vec::new(), logits: Vec::new(), step_ms: Vec::new() };
        let mut next: Vec<u32> = Vec::new();
        for i in 0..2 + decode {
            let feed: Feed = match i {
                0 => first.clone(),
                1 => second.clone(),
                _ => (0..3).zip(&next).map(|(s, t)| (s, vec![*t])).collect(),
            };
            for (seq, toks) in &feed {
                history[*seq].extend(toks);
            }
            let start = Instant::now();
            let mut step = if i < 2 {
                let new: Vec<NewTokens> = feed.iter().map(|(seq, t)| NewTokens { seq: *seq, count: t.len() }).collect();
                bridge.attn.prefill(&new)
            } else {
                bridge.attn.decode(&[0, 1, 2])
            }
            .map_err(|e| job_err(r, e))?;
            let tokens = step.tokens();
            let ids: Vec<u32> = tokens.iter().map(|t| t.map_or(0, |t| history[t.seq][t.pos])).collect();
            let hidden = model.forward(&mut bridge, &mut step, &ids).map_err(|e| job_err(r, e))?;
            bridge.attn.finish(step).map_err(|e| job_err(r, e))?;
            let mut mine = Vec::new();
            for (row, t) in tokens.iter().enumerate() {
                if let Some(t) = t.filter(|t| t.pos + 1 == history[t.seq].len()) {
                    mine.push((t.seq, model.logits(&hidden, row).map_err(|e| job_err(r, e))?));
                }
            }
            out.step_ms.push(start.elapsed().as_secs_f64() * 1e3);
            let all = board.exchange(i, gpus, mine).map_err(|e| job_err(r, e))?;
            next = all.iter().map(|(_, l)| argmax(l)).collect();
            out.feeds.push(feed);
            out.logits.push(all);
        }
        Ok(out)
    })?;
    transcripts.into_iter().next().ok_or_else(|| "no rank".into())
}

/// candle-transformers' own `Llama` on GPU 0 (f32 attention), one sequence at a time with its
/// own KV cache, fed the tokens `feeds` lists.
fn reference(weights: &str, cfg: &Config, feeds: &[Feed]) -> Result<Vec<Vec<(usize, Vec<f32>)>>, Error> {
    let dev = Device::new_cuda(0)?;
    // SAFETY: as above.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &dev)? };
    let llama = Llama::load(vb, cfg)?;
    let mut caches: Vec<Cache> = (0..3).map(|_| Cache::new(true, DType::F32, cfg, &dev)).collect::<Result<_, _>>()?;
    let mut lens = [0usize; 3];
    let mut all = Vec::new();
    for feed in feeds {
        let mut step = Vec::new();
        for (seq, toks) in feed {
            let input = Tensor::new(toks.as_slice(), &dev)?.unsqueeze(0)?;
            let logits = llama.forward(&input, lens[*seq], &mut caches[*seq])?.squeeze(0)?.to_vec1::<f32>()?;
            lens[*seq] += toks.len();
            step.push((*seq, logits));
        }
        all.push(step);
    }
    Ok(all)
}

/// The largest relative error (max abs difference over max abs value) of each step's logits,
/// and how many steps' greedy tokens agree.
fn compare(a: &[Vec<(usize, Vec<f32>)>], b: &[Vec<(usize, Vec<f32>)>]) -> (f64, usize, usize) {
    let (mut worst, mut same, mut total) = (0f64, 0, 0);
    for (sa, sb) in a.iter().zip(b) {
        for ((qa, la), (qb, lb)) in sa.iter().zip(sb) {
            assert_eq!(qa, qb);
            worst = worst.max(model::rel_err(la, lb));
            same += usize::from(argmax(la) == argmax(lb));
            total += 1;
        }
    }
    (worst, same, total)
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let (mut weights, mut config, mut gpus, mut decode) = (None, None, 2usize, 8usize);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--weights" => weights = Some(value()?),
            "--config" => config = Some(value()?),
            "--gpus" => gpus = value()?.parse().map_err(|e| format!("--gpus: {e}"))?,
            "--decode" => decode = value()?.parse().map_err(|e| format!("--decode: {e}"))?,
            other => return Err(format!(
                "unknown argument {other}; usage: cp-llama-gpu [--weights FILE --config FILE] [--gpus N] [--decode STEPS]"
            )
            .into()),
        }
    }
    let (weights, config) = match (weights, config) {
        (Some(w), Some(c)) => (w, c),
        (None, None) => {
            // A random model of the shape our kernels take, written where every rank loads it.
            let dir = std::env::temp_dir().join(format!("cp-llama-gpu-{}", std::process::id()));
            let cfg = model::gpu_config();
            model::save_checkpoint(&cfg, &model::random_weights(&cfg, 1)?, &dir)?;
            println!(
                "random model ({} layers, hidden {}, head dim 128) in {}",
                cfg.num_hidden_layers,
                cfg.hidden_size,
                dir.display()
            );
            let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
            (path("model.safetensors"), path("config.json"))
        }
        _ => return Err("--weights and --config go together (or neither: a random model)".into()),
    };
    if gpus == 0 {
        return Err("--gpus must be at least 1".into());
    }
    let json = std::fs::read_to_string(&config).map_err(|e| format!("{config}: {e}"))?;
    let cfg: Config =
        serde_json::from_str::<LlamaConfig>(&json).map_err(|e| format!("{config}: {e}"))?.into_config(false);

    let one = run_cp(&weights, &cfg, 1, decode)?;
    let many = run_cp(&weights, &cfg, gpus, decode)?;
    let reference = reference(&weights, &cfg, &one.feeds)?;
    let median = |v: &[f64]| {
        let mut v = v[2..].to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (err_n, same_n, total) = compare(&many.logits, &one.logits);
    let (err_ref, same_ref, _) = compare(&one.logits, &reference);
    let tokens_agree = many.feeds == one.feeds;
    println!(
        "one GPU: decode step p50 {:.3} ms (3 sequences, {} layers, whole model)",
        median(&one.step_ms),
        cfg.num_hidden_layers
    );
    println!("{gpus} GPUs (NCCL): decode step p50 {:.3} ms", median(&many.step_ms));
    println!(
        "{gpus} GPUs against one GPU: logits within {err_n:.2e} (relative), greedy tokens {} ({same_n}/{total} argmax agree)",
        if tokens_agree { "identical" } else { "DIFFER" }
    );
    println!(
        "one GPU against candle-transformers' Llama on GPU 0 (f32 attention; ours takes bf16 Q/K/V): logits within {err_ref:.2e}, argmax agree {same_ref}/{total}"
    );
    if !tokens_agree || err_n > 1e-2 {
        return Err(format!("{gpus} GPUs do not agree with one GPU").into());
    }
    Ok(())
}

//! `cp-ring-bench`: the cp-ring algorithms on GPU ranks, checked and timed.
//!
//! - `cp-ring-bench check`: pass-KV and pass-Q on a partial-prefill turn of two sequences of
//!   different lengths (cached prefix, lengths not multiples of 2N), and batched pass-Q decode,
//!   at world sizes 1..8 over the same-GPU transport, at world size 1 over NCCL and, on a machine
//!   with several GPUs, over NCCL with one GPU per rank (2..GPUs); every output against the f64
//!   oracle. Exit status 1 on any failure.
//! - `cp-ring-bench nccl-process`: one process per GPU in torchrun's convention (`RANK`,
//!   `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`); rank 0 hands out the NCCL id over
//!   TCP; each process checks its own rows of a pass-KV and a pass-Q turn. `--die-at-shift K`
//!   crashes this process at its K-th ring shift, to see the others end with an error within
//!   `--timeout-s` (scripts/nccl_failure.sh).
//! - `cp-ring-bench bench [--world-size N] [--seq-len T] [--cached P] [--algorithm
//!   pass-kv|pass-q|auto|all] [--heads H] [--kv-heads K] [--head-dim D] [--warmup W] [--iters I]
//!   [--json PATH]`: the single-GPU time of the same attention (a ring of one), then the N-rank
//!   ring, on N GPUs over NCCL where the machine has them, else N ranks sharing GPU 0 (which
//!   measures overlap and overhead, not speed-up): per-rank compute, exposed communication and
//!   idle time, parallel efficiency, next to the cost model's prediction from this machine's
//!   measured attention rate and copy bandwidth; `auto` runs what Algorithm 5 chooses with
//!   those rates.

use std::process::ExitCode;
use std::time::Duration;

use cp_attention::cuda::{CudaAttention, GpuDType, GpuTensor};
use cp_attention::reference::{self, Heads, discrepancy};
use cp_nccl::{PhaseTimes, RankInputs, TransportKind, run_ring};
use cp_ring::{Algorithm, RingTransport};
use cp_shard::{CacheMap, DecodePlan, NewTokens, RingLayouts, Span, Token, TurnPlan, gather_rows, scatter_rows};

type Error = Box<dyn std::error::Error>;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let u = (self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 11) as f64 / (1u64 << 53) as f64;
        half::bf16::from_f64(u * 4.0 - 2.0).to_f32()
    }
}

/// Global Q/K/V of every sequence (bf16-rounded values), as the ground truth.
struct World {
    heads: Heads,
    q: Vec<Vec<f32>>,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl World {
    fn new(heads: Heads, lens: &[usize], rng: &mut Rng) -> World {
        let (qw, kw) = (heads.n_heads * heads.head_dim, heads.n_kv_heads * heads.head_dim);
        let mut draw = |n: usize| (0..n).map(|_| rng.next()).collect::<Vec<f32>>();
        let q = lens.iter().map(|&l| draw(l * qw)).collect();
        let k = lens.iter().map(|&l| draw(l * kw)).collect();
        let v = lens.iter().map(|&l| draw(l * kw)).collect();
        World { heads, q, k, v }
    }

    /// Per-rank device inputs laid out by `layouts`, all on the GPU of `s`; padding rows
    /// poisoned with large values.
    fn inputs(
        &self,
        s: &std::sync::Arc<cudarc::driver::CudaStream>,
        layouts: &RingLayouts,
    ) -> Result<Vec<RankInputs>, Error> {
        self.inputs_on(&vec![s.clone(); layouts.world_size()], layouts)
    }

    /// As [`World::inputs`], rank `r`'s tensors uploaded on `streams[r]` (its own GPU).
    fn inputs_on(
        &self,
        streams: &[std::sync::Arc<cudarc::driver::CudaStream>],
        layouts: &RingLayouts,
    ) -> Result<Vec<RankInputs>, Error> {
        let Heads { n_heads, n_kv_heads, head_dim } = self.heads;
        let (qw, kw) = (n_heads * head_dim, n_kv_heads * head_dim);
        let row = |src: &Vec<Vec<f32>>, w: usize, t: Token| Ok(src[t.seq][t.pos * w..(t.pos + 1) * w].to_vec());
        let q = scatter_rows(&layouts.q, qw, |t| row(&self.q, qw, t), |_, _| vec![1e4; qw])?;
        let k = scatter_rows(&layouts.kv, kw, |t| row(&self.k, kw, t), |_, _| vec![-1e4; kw])?;
        let v = scatter_rows(&layouts.kv, kw, |t| row(&self.v, kw, t), |_, _| vec![1e4; kw])?;
        let mut out = Vec::new();
        for (((q, k), v), s) in q.into_iter().zip(k).zip(v).zip(streams) {
            let (qr, kr) = (q.len() / qw, k.len() / kw);
            out.push(RankInputs {
                q: GpuTensor::upload(s, &q, &[qr, n_heads, head_dim], GpuDType::Bf16)?,
                k: GpuTensor::upload(s, &k, &[kr, n_kv_heads, head_dim], GpuDType::Bf16)?,
                v: GpuTensor::upload(s, &v, &[kr, n_kv_heads, head_dim], GpuDType::Bf16)?,
            });
        }
        Ok(out)
    }

    /// Plain attention of the wanted query positions over each sequence's prefix, in f64.
    fn oracle(&self, wanted: &[(usize, Span)]) -> (Vec<f64>, Vec<f64>) {
        let Heads { n_heads, n_kv_heads, head_dim } = self.heads;
        let (qw, kw) = (n_heads * head_dim, n_kv_heads * head_dim);
        let (mut out, mut lse) = (Vec::new(), Vec::new());
        for &(seq, span) in wanted {
            let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
            let q = f(&self.q[seq][span.start * qw..span.end() * qw]);
            let k = f(&self.k[seq][..span.end() * kw]);
            let v = f(&self.v[seq][..span.end() * kw]);
            let qt: Vec<_> = (span.start..span.end()).map(|pos| Some(Token { seq, pos })).collect();
            let kt: Vec<_> = (0..span.end()).map(|pos| Some(Token { seq, pos })).collect();
            let (o, l) = reference::attention(&q, &qt, &k, &v, &kt, self.heads, 1.0 / (head_dim as f64).sqrt());
            out.extend(o);
            lse.extend(l);
        }
        (out, lse)
    }
}

/// Where the ranks of a ring run.
#[derive(Clone, Copy)]
enum Ranks<'a> {
    /// All on the GPU of `ops`, over `kind` (NCCL: one rank only).
    OneGpu(TransportKind),
    /// One GPU each, over NCCL, a thread per GPU: rank `r` on `devices[r]`.
    Gpus(&'a [CudaAttention]),
}

impl Ranks<'_> {
    /// The stream of each of `n` ranks: where its inputs are uploaded and its outputs read.
    fn streams(&self, ops: &CudaAttention, n: usize) -> Vec<std::sync::Arc<cudarc::driver::CudaStream>> {
        match self {
            Ranks::OneGpu(_) => vec![ops.stream().clone(); n],
            Ranks::Gpus(devices) => devices[..n].iter().map(|d| d.stream().clone()).collect(),
        }
    }
}

/// Runs `algorithm` on `ranks` with `inputs` laid out by `layouts`.
fn run_on(
    ops: &CudaAttention,
    ranks: Ranks<'_>,
    algorithm: Algorithm,
    layouts: &RingLayouts,
    inputs: &[RankInputs],
) -> Result<Vec<cp_nccl::RankOutput>, Error> {
    let n = layouts.world_size();
    Ok(match ranks {
        Ranks::OneGpu(kind) => run_ring(ops, kind, algorithm, layouts, inputs, Duration::from_secs(60))?,
        Ranks::Gpus(devices) => {
            cp_nccl::run_ring_per_device(&devices[..n], algorithm, layouts, inputs, Duration::from_secs(60))?
        }
    })
}

/// Runs one ring step and compares with the oracle; returns (line, ok, per-rank times).
fn step(
    ops: &CudaAttention,
    world: &World,
    ranks: Ranks<'_>,
    algorithm: Algorithm,
    layouts: &RingLayouts,
    wanted: &[(usize, Span)],
    label: &str,
) -> Result<(String, bool, Vec<Option<PhaseTimes>>), Error> {
    let streams = ranks.streams(ops, layouts.world_size());
    let inputs = world.inputs_on(&streams, layouts)?;
    let outputs = run_on(ops, ranks, algorithm, layouts, &inputs)?;
    let Heads { n_heads, head_dim, .. } = world.heads;
    let mut outs = Vec::new();
    let mut lses = Vec::new();
    for (o, rs) in outputs.iter().zip(&streams) {
        outs.push(o.partial.out.download(rs)?.into_iter().map(f64::from).collect::<Vec<f64>>());
        lses.push(o.partial.lse.download(rs)?.into_iter().map(f64::from).collect::<Vec<f64>>());
    }
    let outs_r: Vec<&[f64]> = outs.iter().map(Vec::as_slice).collect();
    let lses_r: Vec<&[f64]> = lses.iter().map(Vec::as_slice).collect();
    let got_out = gather_rows(&layouts.q, &outs_r, n_heads * head_dim, wanted)?.concat();
    let got_lse = gather_rows(&layouts.q, &lses_r, n_heads, wanted)?.concat();
    let (want_out, want_lse) = world.oracle(wanted);
    let (d_out, d_lse) = (discrepancy(&got_out, &want_out), discrepancy(&got_lse, &want_lse));
    // bf16 inputs, P rounded to bf16 before P.V, f32 partials and merges.
    let ok = d_out.within(1e-2) && d_lse.within(1e-5);
    let line = format!(
        "{label:<48} out relL2 {:.2e} (tol 1e-2), lse relL2 {:.2e}, non-finite mismatches {}",
        d_out.rel_l2,
        d_lse.rel_l2,
        d_out.non_finite_mismatches + d_lse.non_finite_mismatches
    );
    Ok((line, ok, outputs.iter().map(|o| o.times).collect()))
}

/// GPUs visible to this process.
fn device_count() -> usize {
    if !cp_attention::cuda::driver_available() {
        return 0;
    }
    cudarc::driver::CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
}

/// `CudaAttention` on GPUs 0..n.
fn devices(n: usize) -> Result<Vec<CudaAttention>, Error> {
    (0..n).map(|d| CudaAttention::new(d).map_err(Error::from)).collect()
}

fn check(ops: &CudaAttention) -> Result<bool, Error> {
    let heads = Heads { n_heads: 8, n_kv_heads: 2, head_dim: 128 };
    let mut rng = Rng(0x5eed ^ std::process::id() as u64);
    let mut all_ok = true;
    let mut report = |line: String, ok: bool| {
        println!("  {} {line}", if ok { "[ok]    " } else { "[FAILED]" });
        all_ok &= ok;
    };
    let gpus = device_count();
    let multi = if gpus > 1 { devices(gpus)? } else { Vec::new() };
    let mut cases: Vec<(usize, Ranks<'_>, String)> =
        (1..=8).map(|n| (n, Ranks::OneGpu(TransportKind::SameGpu), "SameGpu".to_string())).collect();
    cases.push((1, Ranks::OneGpu(TransportKind::Nccl), "Nccl".into()));
    for n in 2..=gpus {
        cases.push((n, Ranks::Gpus(&multi), format!("NCCL {n} GPUs")));
    }
    for (n, ranks, kind) in cases {
        // Turn 1 (cached): 300 and 77 tokens; turn 2: 203 and 61 new tokens; then 2 decodes.
        let lens = [300 + 203 + 2, 77 + 61 + 2];
        let world = World::new(heads, &lens, &mut rng);
        let mut cache = CacheMap::new(n, 2)?;
        let first = TurnPlan::new(&cache, &[NewTokens { seq: 0, count: 300 }, NewTokens { seq: 1, count: 77 }])?;
        cache.commit_turn(&first)?;
        let turn = TurnPlan::new(&cache, &[NewTokens { seq: 0, count: 203 }, NewTokens { seq: 1, count: 61 }])?;
        for algorithm in [Algorithm::PassKv, Algorithm::PassQ] {
            let label = format!("N={n} {kind} {algorithm} partial prefill");
            let (line, ok, _) = step(ops, &world, ranks, algorithm, turn.layouts(), &turn.new_spans(), &label)?;
            report(line, ok);
        }
        cache.commit_turn(&turn)?;
        for it in 0..2 {
            let plan = DecodePlan::new(&cache, &[0, 1], it)?;
            let label = format!("N={n} {kind} pass-Q decode iteration {it}");
            let (line, ok, _) = step(ops, &world, ranks, Algorithm::PassQ, plan.layouts(), &plan.new_spans(), &label)?;
            report(line, ok);
            cache.commit_decode(&plan)?;
        }
    }
    Ok(all_ok)
}

/// Fault injection for the failure test: this process exits abruptly (`abort`: no unwinding,
/// no communicator teardown, as in a crash) when it is about to start ring shift `die_at`.
struct DieAtShift<T> {
    inner: T,
    die_at: usize,
    shifts: usize,
}

impl<T: RingTransport<GpuTensor>> RingTransport<GpuTensor> for DieAtShift<T> {
    type Error = T::Error;

    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn world_size(&self) -> usize {
        self.inner.world_size()
    }

    fn start_shift(&mut self, msg: &[GpuTensor]) -> Result<(), T::Error> {
        self.shifts += 1;
        if self.shifts == self.die_at {
            eprintln!("  rank {}: dying at ring shift {} (fault injection)", self.rank(), self.shifts);
            std::process::abort();
        }
        self.inner.start_shift(msg)
    }

    fn finish_shift(&mut self) -> Result<Vec<GpuTensor>, T::Error> {
        self.inner.finish_shift()
    }

    fn all_to_all(&mut self, msgs: Vec<Vec<GpuTensor>>) -> Result<Vec<Vec<GpuTensor>>, T::Error> {
        self.inner.all_to_all(msgs)
    }
}

/// One process per GPU (torchrun's environment): rendezvous for the NCCL id, then this rank's
/// share of a pass-KV and a pass-Q partial-prefill turn, its rows checked against the oracle.
/// `--die-at-shift K` makes this process crash at its K-th ring shift (the others must then end
/// with an error within `--timeout-s`, default 60).
fn nccl_process(args: &[String]) -> Result<bool, Error> {
    use cp_nccl::{NcclTransport, Rendezvous};
    let die_at = arg(args, "--die-at-shift", 0);
    let timeout = Duration::from_secs(arg(args, "--timeout-s", 60) as u64);
    let rdv = Rendezvous::from_env(Duration::from_secs(120))?;
    let id: [u8; 128] = rdv
        .share(|| NcclTransport::unique_id().map(|id| id.to_vec()).unwrap_or_default())?
        .try_into()
        .map_err(|_| "rank 0 could not create an NCCL unique id")?;
    let ops = CudaAttention::new(rdv.local_rank)?;
    let (n, rank) = (rdv.world_size, rdv.rank);
    let heads = Heads { n_heads: 8, n_kv_heads: 2, head_dim: 128 };
    // Every process draws the same world from the same seed.
    let world = World::new(heads, &[503, 138], &mut Rng(77));
    let mut cache = CacheMap::new(n, 2)?;
    let first = TurnPlan::new(&cache, &[NewTokens { seq: 0, count: 300 }, NewTokens { seq: 1, count: 77 }])?;
    cache.commit_turn(&first)?;
    let turn = TurnPlan::new(&cache, &[NewTokens { seq: 0, count: 203 }, NewTokens { seq: 1, count: 61 }])?;
    let layouts = turn.layouts();
    let inputs = world.inputs(ops.stream(), layouts)?.swap_remove(rank);
    let nccl = NcclTransport::init_rank(ops.stream().clone(), rank, n, id, timeout)?;
    let mut transport = DieAtShift { inner: nccl, die_at, shifts: 0 };
    let mut ok = true;
    for algorithm in [Algorithm::PassKv, Algorithm::PassQ] {
        let local = cp_ring::Local { q: &inputs.q, k: &inputs.k, v: &inputs.v };
        let partial = cp_ring::run(algorithm, &ops, &mut transport, layouts, local, &mut ())?;
        // Compare this rank's rows only.
        let s = ops.stream();
        let out: Vec<f64> = partial.out.download(s)?.into_iter().map(f64::from).collect();
        let qw = heads.n_heads * heads.head_dim;
        let mut got = Vec::new();
        let mut wanted = Vec::new();
        for (row, t) in layouts.q[rank].rows().enumerate() {
            if let Some(t) = t {
                got.extend_from_slice(&out[row * qw..(row + 1) * qw]);
                wanted.push((t.seq, Span::new(t.pos, 1)));
            }
        }
        let (want, _) = world.oracle(&wanted);
        let d = discrepancy(&got, &want);
        let pass = d.within(1e-2);
        ok &= pass;
        println!(
            "  {} rank {rank}/{n} (GPU {}) NCCL process, {algorithm}: out relL2 {:.2e} (tol 1e-2)",
            if pass { "[ok]    " } else { "[FAILED]" },
            rdv.local_rank,
            d.rel_l2
        );
    }
    Ok(ok)
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Per-rank median phase times of `algorithm` on `world_size` ranks (`ranks`: one GPU or one
/// GPU each), one sequence of `t` new tokens over `p` cached.
#[allow(clippy::too_many_arguments)]
fn timed_ring(
    ops: &CudaAttention,
    world: &World,
    world_size: usize,
    ranks: Ranks<'_>,
    t: usize,
    p: usize,
    algorithm: Algorithm,
    warmup: usize,
    reps: usize,
) -> Result<Vec<PhaseTimes>, Error> {
    let mut cache = CacheMap::new(world_size, 1)?;
    if p > 0 {
        let first = TurnPlan::new(&cache, &[NewTokens { seq: 0, count: p }])?;
        cache.commit_turn(&first)?;
    }
    let turn = TurnPlan::new(&cache, &[NewTokens { seq: 0, count: t }])?;
    let inputs = world.inputs_on(&ranks.streams(ops, world_size), turn.layouts())?;
    let mut samples: Vec<Vec<PhaseTimes>> = Vec::new();
    for i in 0..warmup + reps {
        let out = run_on(ops, ranks, algorithm, turn.layouts(), &inputs)?;
        eprint!("\r  {algorithm} on {world_size} rank(s): run {}/{}   ", i + 1, warmup + reps);
        if i >= warmup {
            samples.push(out.iter().map(|o| o.times.unwrap_or_default()).collect());
        }
    }
    eprintln!();
    Ok((0..world_size)
        .map(|r| PhaseTimes {
            compute_ms: median(samples.iter().map(|s| s[r].compute_ms).collect()),
            wait_ms: median(samples.iter().map(|s| s[r].wait_ms).collect()),
            all_to_all_ms: median(samples.iter().map(|s| s[r].all_to_all_ms).collect()),
            merge_ms: median(samples.iter().map(|s| s[r].merge_ms).collect()),
            total_ms: median(samples.iter().map(|s| s[r].total_ms).collect()),
        })
        .collect())
}

/// Bandwidth of a device-to-device copy on this GPU (bytes moved per second, one direction):
/// the "link" of ranks that share the GPU.
fn copy_bandwidth(ops: &CudaAttention) -> Result<f64, Error> {
    use cudarc::driver::sys::CUevent_flags;
    let s = ops.stream();
    let bytes = 256usize << 20;
    let src = s.alloc_zeros::<u8>(bytes)?;
    let mut dst = s.alloc_zeros::<u8>(bytes)?;
    let mut times = Vec::new();
    for i in 0..6 {
        let start = s.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        s.memcpy_dtod(&src, &mut dst)?;
        let end = s.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        if i > 0 {
            times.push(start.elapsed_ms(&end)? as f64);
        }
    }
    Ok(bytes as f64 / (median(times) / 1e3))
}

/// Bandwidth of one NCCL ring shift over `devices` (bytes each rank sends per second; the
/// slowest rank's median of 5 shifts of 256 MiB after 2 warm-ups).
fn nccl_bandwidth(devices: &[CudaAttention]) -> Result<f64, Error> {
    use cp_nccl::NcclTransport;
    let n = devices.len();
    let bytes = 256usize << 20;
    let id = NcclTransport::unique_id()?;
    let per_rank: Vec<Result<f64, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(rank, d)| {
                scope.spawn(move || -> Result<f64, String> {
                    let run = || -> Result<f64, Error> {
                        let s = d.stream().clone();
                        s.context().bind_to_thread()?;
                        let msg = GpuTensor::from_buffer(s.alloc_zeros::<u8>(bytes)?, GpuDType::Bf16, vec![bytes / 2])?;
                        let mut ring = NcclTransport::init_rank(s.clone(), rank, n, id, Duration::from_secs(60))?;
                        let mut times = Vec::new();
                        for i in 0..7 {
                            d.synchronize()?;
                            let started = std::time::Instant::now();
                            ring.start_shift(std::slice::from_ref(&msg))?;
                            ring.finish_shift()?;
                            d.synchronize()?;
                            if i >= 2 {
                                times.push(started.elapsed().as_secs_f64());
                            }
                        }
                        Ok(bytes as f64 / median(times))
                    };
                    run().map_err(|e| e.to_string())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|p| Err(cp_ring::panic_message(&*p)))).collect()
    });
    let mut slowest = f64::INFINITY;
    for (rank, r) in per_rank.into_iter().enumerate() {
        slowest = slowest.min(r.map_err(|e| format!("NCCL bandwidth, rank {rank}: {e}"))?);
    }
    Ok(slowest)
}

fn bench(ops: &CudaAttention, args: &[String]) -> Result<Vec<String>, Error> {
    use cp_heuristic::{Compute, Hardware, Inputs, Link, Mode, ModelShape, Rule, Workload, choose, cost_model};
    let n = arg(args, "--world-size", 4);
    let t = arg(args, "--seq-len", 16384);
    let p = arg(args, "--cached", 0);
    let reps = arg(args, "--iters", 5).max(1);
    let warmup = arg(args, "--warmup", 1);
    let heads = Heads {
        n_heads: arg(args, "--heads", 32),
        n_kv_heads: arg(args, "--kv-heads", 8),
        head_dim: arg(args, "--head-dim", 128),
    };
    let which =
        args.iter().position(|a| a == "--algorithm").and_then(|i| args.get(i + 1)).map_or("all", String::as_str);
    if n == 0 || t == 0 || heads.n_kv_heads == 0 || !heads.n_heads.is_multiple_of(heads.n_kv_heads) {
        return Err(format!(
            "bad shape: world size {n}, T {t}, heads {} / kv heads {}",
            heads.n_heads, heads.n_kv_heads
        )
        .into());
    }
    let world = World::new(heads, &[p + t], &mut Rng(3));
    let mut rows = Vec::new();
    println!(
        "  T={t} new tokens over P={p} cached, NH={} NKV={} DH={} bf16, {warmup} warm-up + {reps} timed runs (median)",
        heads.n_heads, heads.n_kv_heads, heads.head_dim
    );
    let single =
        timed_ring(ops, &world, 1, Ranks::OneGpu(TransportKind::SameGpu), t, p, Algorithm::PassKv, warmup, reps)?;
    // N GPUs over NCCL where this machine has them, else N ranks sharing GPU 0.
    let gpus = device_count();
    let multi = if n > 1 && gpus >= n { devices(n)? } else { Vec::new() };
    let (ranks, where_) = if multi.is_empty() {
        (Ranks::OneGpu(TransportKind::SameGpu), format!("{n} ranks sharing GPU 0 ({gpus} GPU(s) visible)"))
    } else {
        (Ranks::Gpus(&multi), format!("{n} GPUs over NCCL"))
    };
    println!("  ring: {where_}");
    let baseline_ms = single[0].total_ms;
    // This machine's measured rates feed the heuristic and the cost model (Table 3's count).
    let d = (heads.n_heads * heads.head_dim) as f64;
    let rate = 4.0 * t as f64 * (t + p) as f64 * d / (baseline_ms / 1e3);
    // The link the heuristic and the cost model see: NCCL's ring shift between the GPUs, or a
    // device-to-device copy for ranks that share one GPU.
    let (bw, link) = if multi.is_empty() {
        (copy_bandwidth(ops)?, "device copy")
    } else {
        (nccl_bandwidth(&multi)?, "NCCL ring shift")
    };
    println!(
        "  single GPU (ring of 1): {baseline_ms:.3} ms ({:.0} TFLOP/s, Table 3 count); link: {link} {:.0} GB/s",
        rate / 1e12,
        bw / 1e9
    );
    let inputs = Inputs {
        model: ModelShape {
            n_heads: heads.n_heads,
            n_kv_heads: heads.n_kv_heads,
            head_dim: heads.head_dim,
            elem_bytes: 2,
        },
        hardware: Hardware { compute: Compute::custom(rate), link: Link::custom(bw) },
        world_size: n,
        workload: Workload { new_tokens: t, cached_tokens: p },
    };
    let decision = choose(Rule::Alg5, &inputs)?;
    let predicted = cost_model(&inputs)?;
    print!("  heuristic (Algorithm 5, this machine's rates): {decision}");
    let algorithms = match which {
        "pass-kv" => vec![Algorithm::PassKv],
        "pass-q" => vec![Algorithm::PassQ],
        "auto" => vec![if decision.mode == Mode::PassKv { Algorithm::PassKv } else { Algorithm::PassQ }],
        "all" => vec![Algorithm::PassKv, Algorithm::PassQ],
        other => return Err(format!("--algorithm {other}: expected pass-kv, pass-q, auto or all").into()),
    };
    for algorithm in algorithms {
        let per_rank = timed_ring(ops, &world, n, ranks, t, p, algorithm, warmup, reps)?;
        let total = per_rank.iter().map(|x| x.total_ms).fold(0.0, f64::max);
        let model = if algorithm == Algorithm::PassKv { predicted.pass_kv } else { predicted.pass_q };
        println!(
            "  {algorithm} on {where_}: slowest rank {total:.3} ms ({:.2}x the single-GPU time, parallel efficiency {:.1}%); \
             predicted for {n} GPUs of this rate: {:.3} ms (step compute {:.3} ms, step comm {:.3} ms, all-to-all {:.3} ms)",
            total / baseline_ms,
            100.0 * baseline_ms / (n as f64 * total),
            model.total_s * 1e3,
            model.step_compute_s * 1e3,
            model.step_comm_s * 1e3,
            model.all_to_all_s * 1e3
        );
        for (r, x) in per_rank.iter().enumerate() {
            let idle = (total - x.total_ms).max(0.0);
            println!(
                "    rank {r}: compute {:>8.3} ms, exposed comm {:>7.3} ms, all-to-all {:>7.3} ms, merge {:>6.3} ms, idle {:>7.3} ms",
                x.compute_ms, x.wait_ms, x.all_to_all_ms, x.merge_ms, idle
            );
            rows.push(format!(
                "{{\"world_size\":{n},\"gpus\":{},\"algorithm\":\"{algorithm}\",\"rank\":{r},\"t\":{t},\"p\":{p},\"compute_ms\":{:.4},\"wait_ms\":{:.4},\"all_to_all_ms\":{:.4},\"merge_ms\":{:.4},\"total_ms\":{:.4},\"single_gpu_ms\":{baseline_ms:.4},\"predicted_ms\":{:.4},\"heuristic\":\"{}\"}}",
                multi.len().max(1),
                x.compute_ms,
                x.wait_ms,
                x.all_to_all_ms,
                x.merge_ms,
                x.total_ms,
                model.total_s * 1e3,
                decision.mode
            ));
        }
    }
    Ok(rows)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().cloned().unwrap_or_else(|| "check".into());
    let run = || -> Result<bool, Error> {
        if mode == "nccl-process" {
            return nccl_process(&args);
        }
        let ops = CudaAttention::new(0)?;
        let mut ok = true;
        if mode == "check" || mode == "all" {
            println!("== GPU ring check against the f64 oracle");
            ok &= check(&ops)?;
        }
        if mode == "bench" || mode == "all" {
            println!("== GPU ring bench");
            let rows = bench(&ops, &args)?;
            if let Some(path) = args.iter().position(|a| a == "--json").and_then(|i| args.get(i + 1)) {
                std::fs::write(path, format!("[{}]\n", rows.join(",\n")))?;
            }
        }
        Ok(ok)
    };
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: some checks FAILED");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

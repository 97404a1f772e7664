//! `cargo xtask bench --world-size N`: the ring against a single rank, with the compute /
//! communication breakdown and a correctness check. On a machine with NVIDIA GPUs it builds and
//! runs `cp-ring-bench`: N GPUs over NCCL (a thread per GPU) when there are N, else N ranks
//! sharing GPU 0; without a GPU it runs the very same ring algorithms on CPU ranks (threads of
//! this process) and says so.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cp_heuristic::{Compute, Hardware, Inputs, Link, ModelShape, Rule, Workload, choose, cost_model};
use cp_ring::Algorithm;
use cp_shard::NewTokens;
use cp_sim::{Session, SimConfig, StepReport};

use crate::simulate::Dtype;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    PassKv,
    PassQ,
    /// Chosen by Algorithm 5 with this machine's measured compute rate.
    Auto,
    All,
}

#[derive(clap::Args)]
pub struct Args {
    /// Ranks in the ring.
    #[arg(long, default_value_t = 4)]
    world_size: usize,
    /// New tokens T (default: 16384 on a GPU, 1024 on CPU ranks).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Tokens already cached P (partial prefill when > 0).
    #[arg(long, default_value_t = 0)]
    cached: usize,
    /// Which algorithm.
    #[arg(long, value_enum, default_value_t = Which::All)]
    algorithm: Which,
    /// Query heads (default: 32 on a GPU, 8 on CPU ranks).
    #[arg(long)]
    heads: Option<usize>,
    /// Key/value heads (default: 8 on a GPU, 2 on CPU ranks).
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Head dimension (default: 128 on a GPU, 64 on CPU ranks; the GPU kernels take 64 or 128).
    #[arg(long)]
    head_dim: Option<usize>,
    #[arg(skip)]
    gpu_heads: (usize, usize, usize),
    /// Input dtype (CPU ranks; the GPU run is bf16).
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
    /// Untimed runs first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Run on CPU ranks even if a GPU is present.
    #[arg(long)]
    cpu: bool,
}

fn gpu_present() -> bool {
    Command::new("nvidia-smi").arg("-L").output().map(|o| o.status.success() && !o.stdout.is_empty()).unwrap_or(false)
}

/// The workspace's root (where this xtask was built from), whatever the current directory.
fn workspace_root() -> PathBuf {
    let xtask = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().map_or(xtask.clone(), PathBuf::from)
}

/// `$CARGO_TARGET_DIR`, else the workspace's `target/`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

fn out_dir() -> anyhow::Result<PathBuf> {
    let dir = target_dir().join("cp-bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.world_size == 0 {
        bail!("--world-size must be at least 1, got 0");
    }
    if args.iters == 0 {
        bail!("--iters must be at least 1");
    }
    if args.warmup == 0 {
        bail!(
            "--warmup must be at least 1: a cold first run includes one-time set-up and would be compared with warm ones"
        );
    }
    if args.world_size > cp_sim::MAX_SIM_WORLD_SIZE {
        bail!(
            "--world-size {}: at most {} ranks (CPU ranks are threads; GPUs are fewer)",
            args.world_size,
            cp_sim::MAX_SIM_WORLD_SIZE
        );
    }
    if !args.cpu && gpu_present() {
        let mut args = args;
        args.gpu_heads = (args.heads.unwrap_or(32), args.kv_heads.unwrap_or(8), args.head_dim.unwrap_or(128));
        return gpu(&args);
    }
    println!(
        "No NVIDIA GPU found (or --cpu): running the same ring algorithms on {} CPU ranks (threads).",
        args.world_size
    );
    cpu(&args)
}

fn gpu(args: &Args) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("GPU found: building cp-ring-bench (release)...");
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", "cp-bench", "--bin", "cp-ring-bench"])
        .current_dir(workspace_root())
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building cp-ring-bench failed");
    }
    let bin = target_dir().join("release/cp-ring-bench");
    let json = out_dir()?.join("gpu-bench.json");
    let t = args.seq_len.unwrap_or(16384);
    let algorithm = match args.algorithm {
        Which::PassKv => "pass-kv",
        Which::PassQ => "pass-q",
        Which::Auto => "auto",
        Which::All => "all",
    };
    let status = Command::new(&bin).arg("check").status().context("running cp-ring-bench check")?;
    if !status.success() {
        bail!("cp-ring-bench check failed ({status})");
    }
    let status = Command::new(&bin)
        .args(["bench", "--world-size", &args.world_size.to_string(), "--seq-len", &t.to_string()])
        .args(["--cached", &args.cached.to_string(), "--iters", &args.iters.to_string()])
        .args(["--warmup", &args.warmup.to_string(), "--algorithm", algorithm])
        .args(["--heads", &args.gpu_heads.0.to_string(), "--kv-heads", &args.gpu_heads.1.to_string()])
        .args(["--head-dim", &args.gpu_heads.2.to_string()])
        .arg("--json")
        .arg(&json)
        .status()
        .context("running cp-ring-bench")?;
    if !status.success() {
        bail!("cp-ring-bench failed ({status})");
    }
    println!("results: {}", json.display());
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs one timed prefill turn (after the cached turn, if any) on a fresh session.
fn one_turn(config: SimConfig, t: usize, p: usize, algorithm: Algorithm) -> anyhow::Result<StepReport> {
    let mut session = Session::new(config, 1)?;
    if p > 0 {
        session.prefill(&[NewTokens { seq: 0, count: p }], &[Algorithm::PassKv])?;
    }
    Ok(session.prefill(&[NewTokens { seq: 0, count: t }], &[algorithm])?.remove(0))
}

fn cpu(args: &Args) -> anyhow::Result<()> {
    let t = args.seq_len.unwrap_or(1024);
    let (heads, kv_heads, head_dim) =
        (args.heads.unwrap_or(8), args.kv_heads.unwrap_or(2), args.head_dim.unwrap_or(64));
    if heads == 0 || kv_heads == 0 || head_dim == 0 || !heads.is_multiple_of(kv_heads) {
        bail!("--heads ({heads}) must be a non-zero multiple of --kv-heads ({kv_heads}), --head-dim at least 1");
    }
    let p = args.cached;
    if t == 0 {
        bail!("--seq-len must be at least 1, got 0");
    }
    p.checked_add(t).ok_or_else(|| anyhow::anyhow!("--seq-len {t} plus --cached {p} overflows"))?;
    let config = SimConfig {
        world_size: 1,
        n_heads: heads,
        n_kv_heads: kv_heads,
        head_dim,
        dtype: match args.dtype {
            Dtype::F64 => candle_core::DType::F64,
            Dtype::F32 => candle_core::DType::F32,
            Dtype::Bf16 => candle_core::DType::BF16,
        },
        seed: 1,
        timeout: Duration::from_secs(600),
    };
    // The whole step's size, before anything runs: the cached turn and the timed turn.
    config.check_size(&[0], &[p.max(1)])?;
    config.check_size(&[p], &[t])?;
    println!(
        "T = {t} new tokens over P = {p} cached; NH = {}, NKV = {}, DH = {}, {:?}; {} warm-up + {} timed runs",
        heads, kv_heads, head_dim, config.dtype, args.warmup, args.iters
    );
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut failures = 0;
    let timed = |cfg: SimConfig, algorithm: Algorithm| -> anyhow::Result<(f64, StepReport)> {
        let mut times = Vec::new();
        let mut last = None;
        for i in 0..args.warmup + args.iters {
            let report = one_turn(cfg, t, p, algorithm)?;
            eprint!(
                "\r  {algorithm} N={}: run {}/{} ({:.1} s)   ",
                cfg.world_size,
                i + 1,
                args.warmup + args.iters,
                started.elapsed().as_secs_f64()
            );
            if i >= args.warmup {
                times.push(report.elapsed.as_secs_f64() * 1e3);
            }
            last = Some(report);
        }
        eprintln!();
        Ok((median(times), last.context("no run")?))
    };
    let (single_ms, single) = timed(config, Algorithm::PassKv)?;
    failures += usize::from(!single.passed());
    // Measured attention rate of one CPU rank (Table 3's count, as the cost model uses).
    let d = (heads * head_dim) as f64;
    let flops = 4.0 * t as f64 * (t + p) as f64 * d;
    let rate = flops / (single_ms / 1e3);
    println!(
        "single rank (ring of 1): {single_ms:.2} ms, {:.1} GFLOP/s (Table 3 count); check: {}",
        rate / 1e9,
        verdict(&single)
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "note: the {} CPU ranks share this machine's {cores} cores (one rank already uses them all), so the ring\n      cannot be faster than one rank here; the cost model predicts N ranks each with one rank's rate.",
        args.world_size
    );
    let inputs = Inputs {
        model: ModelShape { n_heads: heads, n_kv_heads: kv_heads, head_dim, elem_bytes: config.dtype.size_in_bytes() },
        // In-process channels pass pointers: bandwidth is effectively unbounded here.
        hardware: Hardware { compute: Compute::custom(rate), link: Link::custom(1e15) },
        world_size: args.world_size,
        workload: Workload { new_tokens: t, cached_tokens: p },
    };
    let algorithms: Vec<Algorithm> = match args.algorithm {
        Which::PassKv => vec![Algorithm::PassKv],
        Which::PassQ => vec![Algorithm::PassQ],
        Which::All => vec![Algorithm::PassKv, Algorithm::PassQ],
        Which::Auto => {
            let decision = choose(Rule::Auto, &inputs)?;
            println!("auto: {decision}");
            vec![Algorithm::from(decision.mode)]
        }
    };
    let predicted = cost_model(&inputs)?;
    for algorithm in algorithms {
        let cfg = SimConfig { world_size: args.world_size, ..config };
        let (ms, report) = timed(cfg, algorithm)?;
        failures += usize::from(!report.passed());
        let model = if algorithm == Algorithm::PassKv { predicted.pass_kv } else { predicted.pass_q };
        println!(
            "{algorithm} on {} CPU ranks: {ms:.2} ms ({:.2}x vs one rank); predicted (cost model, C per rank = measured rate) {:.2} ms; check: {}",
            args.world_size,
            single_ms / ms,
            model.total_s * 1e3,
            verdict(&report)
        );
        for (r, x) in report.rank_times.iter().enumerate() {
            let busy = x.compute + x.wait + x.all_to_all + x.merge;
            let idle = report.elapsed.saturating_sub(busy);
            println!(
                "  rank {r}: compute {:>8.2} ms, waiting on ring {:>7.2} ms, all-to-all {:>7.2} ms, merge {:>6.2} ms, idle {:>7.2} ms",
                ms_of(x.compute),
                ms_of(x.wait),
                ms_of(x.all_to_all),
                ms_of(x.merge),
                ms_of(idle)
            );
            rows.push(serde_json::json!({
                "device": "cpu",
                "world_size": args.world_size,
                "algorithm": algorithm.to_string(),
                "rank": r,
                "t": t,
                "p": p,
                "compute_ms": ms_of(x.compute),
                "wait_ms": ms_of(x.wait),
                "all_to_all_ms": ms_of(x.all_to_all),
                "merge_ms": ms_of(x.merge),
                "total_ms": ms,
                "single_rank_ms": single_ms,
                "predicted_ms": model.total_s * 1e3,
                "max_abs_err": report.out.max_abs,
            }));
        }
    }
    let path = out_dir()?.join("cpu-bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&rows)? + "\n")?;
    println!("results: {}", path.display());
    if failures > 0 {
        bail!("{failures} runs did not match the oracle");
    }
    Ok(())
}

fn ms_of(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn verdict(r: &StepReport) -> String {
    format!(
        "max |err| {:.2e}, rel L2 {:.2e} [{}]",
        r.out.max_abs,
        r.out.rel_l2,
        if r.passed() { "SUCCESS" } else { "FAILED" }
    )
}

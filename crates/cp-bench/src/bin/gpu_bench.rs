//! `cp-gpu-bench`: the CUDA kernels checked against the f64 oracle and timed (logic in
//! `cp_bench::kernels`; `cp-gpu-bench --help` lists the modes).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use cp_attention::AttentionError;
use cp_attention::cuda::{CudaAttention, ItemSchedule, PrefillKernel, TailMode};
use cp_bench::{kernels, write_json};

#[derive(Parser)]
#[command(name = "cp-gpu-bench", about = "The cp-rs CUDA kernels: checked against the f64 oracle, and timed")]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[derive(Subcommand)]
enum Mode {
    /// The wgmma building blocks alone (two products of one warpgroup; sm_90a).
    Selftest,
    /// Every kernel against the f64 oracle (exit status 1 on a failure).
    Check,
    /// Kernel timings.
    Bench {
        /// Fewer sizes and repetitions.
        #[arg(long)]
        quick: bool,
        /// Write the timings here as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The self-test, the check and the timings (the default).
    All,
    /// One causal prefill launch (T=16K by default), for ncu; or several, timed.
    Profile {
        /// Head dimension: 64 or 128.
        #[arg(long, default_value_t = 128, value_parser = cp_bench::ring_cli::head_dim)]
        head_dim: u32,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
        tokens: u32,
        /// Sequences, packed one after another.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
        batch: u32,
        /// The TMA kernel's warpgroups taking turns at the tensor cores (ping-pong), not the
        /// default kernel (Hopper only).
        #[arg(long)]
        pingpong: bool,
        /// At head dim 64, the TMA kernel with two consumer warpgroups and 128-row query blocks
        /// always (by default: three and 192 rows, unless those would straddle more sequence
        /// boundaries of the packed batch; Hopper only; no effect at 128).
        #[arg(long)]
        narrow: bool,
        /// Whether the TMA kernel runs the short last round of equal items as pieces (Hopper only).
        #[arg(long, value_enum, default_value_t = TailArg::Auto)]
        tail_split: TailArg,
        /// How the TMA kernel's persistent blocks share the work items (Hopper only).
        #[arg(long, value_enum, default_value_t = ScheduleArg::ByKvHead)]
        schedule: ScheduleArg,
        /// Each sequence's queries after all of its keys, no mask (a ring step's off-diagonal
        /// block), instead of causal.
        #[arg(long)]
        off_diagonal: bool,
        /// Instead of one launch, rank `--ring-rank`'s compute steps of ring pass-KV over this many
        /// ranks (load-balanced shards of one causal sequence), on this GPU without transfers.
        #[arg(long, value_parser = clap::value_parser!(u32).range(2..=64))]
        ring_world: Option<u32>,
        /// The rank whose steps `--ring-world` times.
        #[arg(long, default_value_t = 0, requires = "ring_world")]
        ring_rank: u32,
        /// Launches, back to back; more than one are timed after a warm-up (the sustained rate).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        repeat: u32,
    },
    /// One prefill's inputs and outputs as safetensors (for scripts/compare_sdpa.py).
    Dump {
        /// Where to write them.
        #[arg(default_value = "dump")]
        dir: String,
    },
}

/// `profile --tail-split`: [`TailMode`].
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TailArg {
    /// Never.
    Off,
    /// Where it gains (the default).
    Auto,
    /// Whenever the last round is short.
    Always,
}

/// `profile --schedule`: [`ItemSchedule`].
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScheduleArg {
    /// Claimed, KV head first (the default).
    ByKvHead,
    /// Claimed over long key ranges, dealt below.
    ByKeyRange,
    /// Dealt in a zigzag.
    Zigzag,
    /// Claimed.
    Claimed,
}

fn run(mode: Mode) -> anyhow::Result<bool> {
    // A profile's shape is checked before the GPU is touched.
    let shape = match mode {
        Mode::Profile { head_dim, tokens, batch, off_diagonal, ring_world, ring_rank, .. } => {
            let shape = kernels::ProfileShape {
                head_dim: head_dim as usize,
                tokens: tokens as usize,
                batch: batch as usize,
                off_diagonal,
                ring: ring_world.map(|w| (w as usize, ring_rank as usize)),
            };
            shape.check()?;
            Some(shape)
        }
        _ => None,
    };
    let mut ops = CudaAttention::new(0)?;
    if let Mode::Profile { pingpong: p, schedule: s, tail_split, narrow, .. } = mode {
        ops.tail_mode = match tail_split {
            TailArg::Off => TailMode::Off,
            TailArg::Auto => TailMode::Auto,
            TailArg::Always => TailMode::Always,
        };
        let wanted = match s {
            ScheduleArg::ByKvHead => ItemSchedule::ByKvHead,
            ScheduleArg::ByKeyRange => ItemSchedule::ByKeyRange,
            ScheduleArg::Zigzag => ItemSchedule::Zigzag,
            ScheduleArg::Claimed => ItemSchedule::Claimed,
        };
        match &mut ops.prefill {
            PrefillKernel::Tma { pingpong, schedule, wide } => {
                *pingpong = p;
                *schedule = wanted;
                *wide = !narrow;
            }
            other if p || narrow || s != ScheduleArg::ByKvHead => {
                anyhow::bail!(
                    "--pingpong, --narrow and --schedule need the TMA kernel (Hopper); this device runs {other}"
                )
            }
            _ => {}
        }
    }
    println!("device 0: {} SMs; kernels compiled by NVRTC (or loaded from the cache)", ops.sm_count());
    let mut ok = true;
    if matches!(mode, Mode::Selftest | Mode::Check | Mode::All) {
        println!("== wgmma building blocks");
        match kernels::selftest(&ops) {
            Ok(pass) => ok &= pass,
            Err(e) if matches!(e.downcast_ref::<AttentionError>(), Some(AttentionError::KernelMissing { .. })) => {
                println!("  skipped: {e}")
            }
            Err(e) => return Err(e),
        }
    }
    if matches!(mode, Mode::Check | Mode::All) {
        println!("== check against the f64 oracle (poisoned outputs)");
        ok &= kernels::check(&mut ops)?;
    }
    let (quick, json) = match &mode {
        Mode::Bench { quick, json } => (*quick, json.clone()),
        _ => (false, None),
    };
    if matches!(mode, Mode::Bench { .. } | Mode::All) {
        println!("== bench (median of CUDA-event timings)");
        let rows = kernels::bench(&mut ops, quick)?;
        if let Some(path) = json {
            write_json(&path, &rows)?;
        }
    }
    match mode {
        Mode::Profile { repeat, .. } => {
            if let Some(shape) = &shape {
                kernels::profile(&ops, shape, repeat as usize)?
            }
        }
        Mode::Dump { dir } => kernels::dump(&ops, &dir)?,
        _ => {}
    }
    Ok(ok)
}

fn main() -> ExitCode {
    cp_bench::exit_code(run(Cli::parse().mode.unwrap_or(Mode::All)))
}

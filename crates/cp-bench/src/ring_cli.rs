//! The command line of `cp-ring-bench`: modes and flags (clap), each mode's set-up and report.

use std::path::PathBuf;
use std::time::Duration;

use crate::decode::Issue;
use crate::prefill::{Rings, Which};
use crate::{check, decode, device_count, links, prefill, process, sweep, write_json};
use clap::builder::RangedU64ValueParser;
use clap::{Parser, Subcommand};
use cp_attention::reference::Heads;
use cp_nccl::{GpuRing, GroupLaunch, Placement, RingOptions};
use cp_ring::Algorithm;

/// `cp-ring-bench`.
#[derive(Parser, Debug)]
#[command(name = "cp-ring-bench", about = "The cp-rs ring on GPU ranks: checked against the f64 oracle, and timed")]
pub struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(clap::Args, Clone, Copy, Debug)]
struct Shape {
    /// Query heads.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    heads: u32,
    /// Key/value heads (divides --heads).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    kv_heads: u32,
    /// Head dimension (the kernels take 64 or 128).
    #[arg(long, default_value_t = 128, value_parser = head_dim)]
    head_dim: u32,
}

/// `--head-dim`: 64 or 128 (what the kernels take), refused by name otherwise.
pub fn head_dim(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(d @ (64 | 128)) => Ok(d),
        _ => Err(format!("{s:?}: the kernels take head dim 64 or 128")),
    }
}

/// How the GPUs of a ring talk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Transport {
    /// NCCL send/recv.
    Nccl,
    /// Direct peer copies within this process (NVLink).
    Peer,
}

/// Where a mode's ring runs and where its report goes (every timed mode takes both).
#[derive(clap::Args, Clone, Debug)]
struct Output {
    /// How the GPUs talk.
    #[arg(long, value_enum, default_value_t = Transport::Nccl)]
    transport: Transport,
    /// Write the report here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep cudarc's per-buffer event tracking on (the default turns it off where a rank's
    /// buffers stay on its own streams; see `cp_nccl::RingOptions`): to measure its cost.
    #[arg(long)]
    event_tracking: bool,
    /// How NCCL launches a group: on the calling thread, or by a thread NCCL starts per group
    /// (its non-blocking mode; what cp-rs did before).
    #[arg(long, value_enum, default_value_t = Launch::Inline)]
    nccl_launch: Launch,
    /// Multiprocessors left to NCCL's transfer kernels on a ring of GPUs over NCCL: NCCL runs at
    /// most this many thread blocks per kernel and the persistent prefill kernel leaves as many
    /// free (see `cp_nccl::RingOptions::transfer_sms`; an experiment: on 4 H100s it made the
    /// exposed transfers longer). The one-GPU baseline and ranks sharing a GPU keep every
    /// multiprocessor.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    transfer_sms: Option<u32>,
}

/// `--nccl-launch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Launch {
    /// A blocking communicator: `ncclGroupEnd` enqueues and returns.
    Inline,
    /// A non-blocking communicator: a thread per group.
    Background,
}

impl Output {
    /// The ring options these flags ask for.
    fn options(&self) -> anyhow::Result<RingOptions> {
        if self.transfer_sms.is_some() && self.transport != Transport::Nccl {
            anyhow::bail!("--transfer-sms leaves multiprocessors to NCCL's kernels: it needs --transport nccl");
        }
        Ok(RingOptions {
            event_tracking: self.event_tracking,
            group_launch: match self.nccl_launch {
                Launch::Inline => GroupLaunch::Inline,
                Launch::Background => GroupLaunch::Background,
            },
            transfer_sms: self.transfer_sms,
        })
    }

    /// A ring at `placement` with these options (ranks sharing a GPU transfer by copies on
    /// that GPU: no multiprocessors are left to NCCL there).
    fn ring(&self, placement: Placement) -> anyhow::Result<GpuRing> {
        let mut options = self.options()?;
        if matches!(placement, Placement::SameGpu { .. }) {
            options.transfer_sms = None;
        }
        Ok(GpuRing::with_options(placement, TIMEOUT, options)?)
    }

    /// The one-GPU baseline: a ring of one on GPU 0.
    fn single(&self) -> anyhow::Result<GpuRing> {
        self.ring(Placement::SameGpu { device: 0, world_size: 1 })
    }

    /// Writes `report` to `--json`, if given.
    fn save(&self, report: &impl serde::Serialize) -> anyhow::Result<()> {
        match &self.json {
            Some(path) => write_json(path, report),
            None => Ok(()),
        }
    }
}

#[derive(clap::Args, Clone, Copy, Debug)]
struct Timing {
    /// Untimed runs first: at least this many, and (prefill) at least half a second of them,
    /// so that every GPU starts the timed runs warm — `--warmup 0` still warms (see
    /// `cp_bench::WARM_UP`).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed runs (medians reported).
    #[arg(long, default_value_t = 5, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    iters: usize,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Every algorithm on 1..8 ranks of GPU 0 and over NCCL on every GPU, against the f64 oracle.
    Check {
        /// Bound on every wait on a peer, seconds.
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
    },
    /// A prefill on N ranks against one GPU: phase times, efficiency, the heuristic's view.
    Bench {
        /// Ranks: N GPUs over NCCL where there are N, else N ranks sharing GPU 0 (said so).
        #[arg(long, default_value_t = 4, value_parser = RangedU64ValueParser::<usize>::new().range(1..=64))]
        world_size: usize,
        /// New tokens T.
        #[arg(long, default_value_t = 16384, value_parser = RangedU64ValueParser::<usize>::new().range(1..=(1 << 24)))]
        seq_len: usize,
        /// Cached tokens P.
        #[arg(long, default_value_t = 0, value_parser = RangedU64ValueParser::<usize>::new().range(0..=(1 << 24)))]
        cached: usize,
        /// Which algorithms.
        #[arg(long, value_enum, default_value_t = Which::All)]
        algorithm: Which,
        #[command(flatten)]
        shape: Shape,
        #[command(flatten)]
        timing: Timing,
        #[command(flatten)]
        output: Output,
    },
    /// The paper's Table 4: P + T fixed, miss rates swept, pass-KV and pass-Q and `auto`.
    Sweep {
        /// Ranks (GPUs over NCCL where there are that many).
        #[arg(long, default_value_t = 4, value_parser = RangedU64ValueParser::<usize>::new().range(2..=64))]
        world_size: usize,
        /// P + T.
        #[arg(long, default_value_t = 128_000, value_parser = RangedU64ValueParser::<usize>::new().range(64..=(1 << 24)))]
        total: usize,
        /// Miss rates in percent (default: Table 4's).
        #[arg(long, value_delimiter = ',')]
        miss_rates: Vec<f64>,
        #[command(flatten)]
        timing: Timing,
        #[command(flatten)]
        output: Output,
    },
    /// Per-token decode latency on one GPU and on rings of GPUs.
    Decode {
        /// Ring sizes besides the single GPU (each needs that many GPUs).
        #[arg(long, value_delimiter = ',', default_value = "2,4")]
        world_sizes: Vec<usize>,
        /// Tokens cached per sequence.
        #[arg(long, value_delimiter = ',', default_value = "131072,1048576")]
        contexts: Vec<usize>,
        /// Batch sizes.
        #[arg(long, value_delimiter = ',', default_value = "1,8")]
        batches: Vec<usize>,
        /// Steady-mode steps timed (after 10% as warm-up).
        #[arg(long, default_value_t = 200)]
        iters: usize,
        /// Growing-mode steps (0: none); with --graphs also as one graph per shape, rebound
        /// every token.
        #[arg(long, default_value_t = 0)]
        growing_iters: usize,
        /// Also capture each step as a CUDA graph per rank and time its replays (NCCL only).
        #[arg(long)]
        graphs: bool,
        #[command(flatten)]
        output: Output,
    },
    /// The ring's link: shift bandwidth and latency, all-to-all anchors.
    Links {
        /// Ranks (GPUs over NCCL).
        #[arg(long, default_value_t = 4, value_parser = RangedU64ValueParser::<usize>::new().range(2..=64))]
        world_size: usize,
        /// All-to-all sizes, bytes per peer.
        #[arg(long, value_delimiter = ',', default_value = "1048576,16777216,67108864")]
        sizes: Vec<usize>,
        #[command(flatten)]
        output: Output,
    },
    /// One process per GPU (torchrun's RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
    NcclProcess {
        /// Crash this process at its K-th ring shift (0: never), to see the others end.
        #[arg(long, default_value_t = 0)]
        die_at_shift: usize,
        /// Bound on the rendezvous and every wait on a peer, seconds.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        timeout_s: u64,
    },
}

impl Mode {
    /// The ring flags of a timed mode.
    fn output(&self) -> Option<&Output> {
        match self {
            Mode::Bench { output, .. }
            | Mode::Sweep { output, .. }
            | Mode::Decode { output, .. }
            | Mode::Links { output, .. } => Some(output),
            Mode::Check { .. } | Mode::NcclProcess { .. } => None,
        }
    }
}

const TIMEOUT: Duration = Duration::from_secs(60);

fn heads(shape: Shape) -> anyhow::Result<Heads> {
    let (h, kv, d) = (shape.heads as usize, shape.kv_heads as usize, shape.head_dim as usize);
    if !h.is_multiple_of(kv) {
        anyhow::bail!("--heads {h} is not a multiple of --kv-heads {kv}");
    }
    if d != 64 && d != 128 {
        anyhow::bail!("--head-dim {d}: the kernels take 64 or 128");
    }
    Ok(Heads { n_heads: h, n_kv_heads: kv, head_dim: d })
}

/// One GPU per rank for `n` ranks over `transport`.
fn gpus_placement(n: usize, transport: Transport) -> Placement {
    match transport {
        Transport::Nccl => Placement::Gpus((0..n).collect()),
        Transport::Peer => Placement::Peer((0..n).collect()),
    }
}

fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Nccl => "NCCL",
        Transport::Peer => "peer copies",
    }
}

/// The ring of `n` ranks: N GPUs (over `transport`) where there are N, else N ranks sharing GPU 0.
fn ring_of(n: usize, gpus: usize, output: &Output) -> anyhow::Result<(GpuRing, String)> {
    let transport = output.transport;
    if n > 1 && gpus >= n {
        Ok((output.ring(gpus_placement(n, transport))?, format!("{n} GPUs over {}", transport_name(transport))))
    } else {
        let placement = Placement::SameGpu { device: 0, world_size: n };
        Ok((
            output.ring(placement)?,
            format!("{n} ranks sharing GPU 0 ({gpus} GPU(s) visible; this measures overhead, not speed-up)"),
        ))
    }
}

/// The link the heuristic sees on `ring`: (bytes a rank sends per second, seconds a message).
fn link_of(ring: &GpuRing) -> anyhow::Result<(f64, f64)> {
    if ring.world_size() == 1 {
        return Ok((f64::INFINITY, 0.0));
    }
    let link = links::measure(ring, &[])?;
    Ok((link.shift_bytes_per_s, link.shift_latency_us * 1e-6))
}

/// Runs the mode `cli` names; `Ok(false)` when a check failed.
pub fn run(cli: Cli) -> anyhow::Result<bool> {
    if let Mode::Decode { graphs: true, output, .. } = &cli.mode
        && output.transport == Transport::Peer
    {
        anyhow::bail!(
            "--graphs with --transport peer: graph capture needs --transport nccl (peer copies pass buffers between \
             the rank threads at run time, which a graph cannot replay)"
        );
    }
    // Flags that contradict each other are refused before any device is looked at.
    if let Some(output) = cli.mode.output() {
        output.options()?;
    }
    let gpus = device_count();
    match cli.mode {
        Mode::NcclProcess { die_at_shift, timeout_s } => process::run(die_at_shift, Duration::from_secs(timeout_s)),
        _ if gpus == 0 => anyhow::bail!(
            "no NVIDIA GPU here (cp-ring-bench needs one; `cargo xtask bench` runs the ring on CPU ranks)"
        ),
        Mode::Check { timeout_s } => {
            println!("== GPU ring check against the f64 oracle ({gpus} GPU(s))");
            check::check_all(gpus, Duration::from_secs(timeout_s))
        }
        Mode::Bench { world_size, seq_len, cached, algorithm, shape, timing, output } => {
            let h = heads(shape)?;
            let (ring, where_) = ring_of(world_size, gpus, &output)?;
            let single = output.single()?;
            println!(
                "== GPU ring bench: {where_}; NH={} NKV={} DH={} bf16, at least {} warm-up runs and {:?} of them + {} timed runs (medians); {:?}",
                h.n_heads,
                h.n_kv_heads,
                h.head_dim,
                timing.warmup,
                crate::WARM_UP,
                timing.iters,
                output.options()?
            );
            let (link_bytes_per_s, link_latency_s) = link_of(&ring)?;
            let transfers_overlap = prefill::transfers_overlap(&ring)?;
            let rings =
                Rings { single: &single, ring: &ring, link_bytes_per_s, link_latency_s, transfers_overlap, heads: h };
            let (report, decision) = prefill::bench(&rings, seq_len, cached, algorithm, timing.warmup, timing.iters)?;
            prefill::print(&report, &decision, &where_);
            output.save(&report)?;
            Ok(true)
        }
        Mode::Sweep { world_size, total, miss_rates, timing, output } => {
            if gpus < world_size {
                anyhow::bail!(
                    "--world-size {world_size}: the sweep runs one GPU per rank and {gpus} GPU(s) are visible"
                );
            }
            let miss_rates = if miss_rates.is_empty() { sweep::TABLE4_MISS_RATES.to_vec() } else { miss_rates };
            let ring = output.ring(gpus_placement(world_size, output.transport))?;
            let single = output.single()?;
            let (link_bytes_per_s, link_latency_s) = link_of(&ring)?;
            let transfers_overlap = prefill::transfers_overlap(&ring)?;
            let rings = Rings {
                single: &single,
                ring: &ring,
                link_bytes_per_s,
                link_latency_s,
                transfers_overlap,
                heads: workload_heads(),
            };
            println!(
                "== Table 4 sweep on {world_size} GPUs over {}: link {:.0} GB/s, {:.1} us a message",
                transport_name(output.transport),
                rings.link_bytes_per_s / 1e9,
                rings.link_latency_s * 1e6
            );
            let report = sweep::sweep(&rings, total, &miss_rates, timing.warmup, timing.iters)?;
            sweep::print(&report);
            output.save(&report)?;
            Ok(true)
        }
        Mode::Decode { world_sizes, contexts, batches, iters, growing_iters, graphs, output } => {
            let h = workload_heads();
            let warmup = (iters / 10).max(2);
            let single = output.single()?;
            let mut rings = Vec::new();
            for &n in &world_sizes {
                if n < 2 || n > gpus {
                    println!("  N={n}: skipped ({gpus} GPU(s) visible; ring sizes from 2)");
                    continue;
                }
                rings.push(output.ring(gpus_placement(n, output.transport))?);
            }
            println!(
                "== decode latency: NH={} NKV={} DH={} bf16, {iters} steps after {warmup} warm-up (steady), {growing_iters} growing; {:?}",
                h.n_heads,
                h.n_kv_heads,
                h.head_dim,
                output.options()?
            );
            let issues: &[Issue] = if graphs { &[Issue::Steady, Issue::Graph] } else { &[Issue::Steady] };
            let mut rows = Vec::new();
            for &context in &contexts {
                for &batch in &batches {
                    let base = decode::single(&single, h, context, batch, warmup, iters)?;
                    decode::print(&base, None);
                    let timed =
                        |ring: &GpuRing, algorithm: Algorithm, issue: Issue| -> anyhow::Result<decode::DecodeRow> {
                            let r = decode::repeated(ring, h, algorithm, (context, batch), (warmup, iters), issue)?;
                            decode::print(&r, Some(&base));
                            Ok(r)
                        };
                    if graphs {
                        rows.push(timed(&single, Algorithm::GatherQ, Issue::Graph)?);
                    }
                    for ring in &rings {
                        for algorithm in [Algorithm::PassQ, Algorithm::GatherQ] {
                            for &issue in issues {
                                rows.push(timed(ring, algorithm, issue)?);
                            }
                            if growing_iters > 0 {
                                let g = decode::growing(ring, h, algorithm, context, batch, growing_iters)?;
                                decode::print(&g, Some(&base));
                                rows.push(g);
                                if graphs {
                                    let g = decode::rebound(ring, h, algorithm, context, batch, growing_iters)?;
                                    decode::print(&g, Some(&base));
                                    rows.push(g);
                                }
                            }
                        }
                    }
                    rows.push(base);
                }
            }
            output.save(&rows)?;
            Ok(true)
        }
        Mode::Links { world_size, sizes, output } => {
            if gpus < world_size {
                anyhow::bail!("--world-size {world_size}: {gpus} GPU(s) visible");
            }
            let ring = output.ring(gpus_placement(world_size, output.transport))?;
            let report = links::measure(&ring, &sizes)?;
            println!(
                "== links on {world_size} GPUs over {}: ring shift {:.0} GB/s (256 MiB), {:.1} us (8 KiB)",
                transport_name(output.transport),
                report.shift_bytes_per_s / 1e9,
                report.shift_latency_us
            );
            for (bytes, ms) in &report.all_to_all {
                println!("  all-to-all {:>6} KiB per peer: {:.3} ms", bytes >> 10, ms);
            }
            output.save(&report)?;
            Ok(true)
        }
    }
}

fn workload_heads() -> Heads {
    crate::workload::BENCH_HEADS
}

//! Checks and benchmarks of the cp-rs ring on GPUs, behind the thin `cp-ring-bench` binary
//! (and `cargo xtask bench` on a GPU machine). Not published.
//!
//! - [`kernels`]: every CUDA kernel against the f64 oracle, and their timings (`cp-gpu-bench`).
//! - [`check`]: every algorithm on every placement this machine has (1..8 ranks on one GPU,
//!   NCCL with one GPU per rank) against the f64 oracle, padding rows full of NaN.
//! - [`prefill`]: a prefill workload on N ranks against one GPU, per-rank phase times, parallel
//!   efficiency, the cost model's prediction and the heuristic's choice from measured rates.
//! - [`sweep`]: the paper's Table 4 on this machine, and the empirical rule fitted to it.
//! - [`decode`]: per-token decode latency on 1, 2 and 4 GPUs, medians and tails.
//! - [`links`]: the ring's link (shift bandwidth and latency) and all-to-all anchors.
//! - [`process`]: one process per GPU, and the rank-failure test.
//! - [`ring_cli`]: the command line of `cp-ring-bench`.
//!
//! Inputs are drawn on each rank's GPU from a hash of (seed, sequence, position, column)
//! ([`workload`]), so set-up takes milliseconds at any length and the oracle needs no copy of
//! the prompt. Results serialise to JSON (serde).

pub mod check;
pub mod decode;
pub mod kernels;
pub mod links;
pub mod model_check;
pub mod prefill;
pub mod process;
pub mod ring_cli;
pub mod stats;
pub mod sweep;
pub mod workload;

/// The least warm-up before a GPU timing here (kernels taking turns, rings and their one-GPU
/// baselines): an H100 running attention sits at its 700 W limit, and a launch timed right
/// after idling, after a lighter kernel, or on a card cooler than its peers runs at another
/// clock than in a long run (sessions 8 and 9, `docs/benchmarks.md`). `scripts/sdpa_bench.py`
/// warms up as long.
pub const WARM_UP: std::time::Duration = std::time::Duration::from_millis(500);

/// GPUs visible to this process (0 without a driver).
pub fn device_count() -> usize {
    if !cp_attention::cuda::driver_available() {
        return 0;
    }
    cudarc::driver::CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
}

/// The exit status of a check or bench: 0 when it ran and passed, 1 (with a line on stderr)
/// when a check failed or it could not run.
pub fn exit_code(result: anyhow::Result<bool>) -> std::process::ExitCode {
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: some checks FAILED");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}

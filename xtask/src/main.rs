//! Project workflow commands: `cargo xtask <command>`.
//!
//! - `simulate`: every algorithm on a simulated ring on the CPU, checked against plain
//!   attention, with a readable report.
//! - `soak`: the property tests with many more cases than `cargo test` runs.
//! - `bench`: the ring against one rank with the compute/communication breakdown, on the GPU
//!   if there is one, else on CPU ranks.
//! - `plot`: the JSON results under `docs/` as SVG charts.
//! - `ci`: everything CI checks, in one command (`.ci/run` calls it).

mod bench;
mod ci;
mod plot;
mod simulate;
mod soak;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "cp-rs workflow commands", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate every algorithm on N ranks in one process and verify against plain attention.
    Simulate(simulate::Args),
    /// Run the property tests with many cases (a long soak) and count them.
    Soak(soak::Args),
    /// Time the ring against one rank, with the compute/communication breakdown (GPU if present).
    Bench(bench::Args),
    /// Draw the JSON results under docs/ as SVG charts.
    Plot(plot::Args),
    /// Everything CI checks: tidy, fmt, clippy, doc, tests, NVRTC, simulate, bench.
    Ci(ci::Args),
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Simulate(args) => simulate::run(args),
        Command::Soak(args) => soak::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Plot(args) => plot::run(args),
        Command::Ci(args) => ci::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // The error chain, not a backtrace: these are user-facing messages.
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

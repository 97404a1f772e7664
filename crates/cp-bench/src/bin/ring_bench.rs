//! `cp-ring-bench`: the cp-rs ring on GPU ranks, checked and timed (the command line and the
//! modes live in `cp_bench::ring_cli`; `cp-ring-bench --help` lists them).

use std::process::ExitCode;

use clap::Parser;
use cp_bench::ring_cli::{Cli, run};

fn main() -> ExitCode {
    cp_bench::exit_code(run(Cli::parse()))
}

//! `cargo xtask soak`: the workspace's property tests with many cases.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

#[derive(clap::Args)]
pub struct Args {
    /// Cases per property (proptest's `PROPTEST_CASES`; `cargo test` uses 256).
    #[arg(long, default_value_t = 4096)]
    cases: u32,
    /// Build with optimisations (slower to build, faster to run).
    #[arg(long)]
    release: bool,
}

/// Runs `cargo test --workspace` with `PROPTEST_CASES` set, shows the tests' own summary lines,
/// and adds up the `proptest-cases:` lines the property runner prints.
pub fn run(args: Args) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["test", "--workspace"]);
    if args.release {
        cmd.arg("--release");
    }
    cmd.args(["--", "--nocapture", "--test-threads", "2"]);
    cmd.env("PROPTEST_CASES", args.cases.to_string()).stdout(Stdio::piped()).stderr(Stdio::piped());
    println!("soak: cargo test --workspace with PROPTEST_CASES={}", args.cases);
    let mut child = cmd.spawn().context("starting cargo test")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    // Test output goes to both streams; read stdout on a thread so neither pipe fills up.
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let out_thread = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.starts_with("test result:") || l.contains("FAILED"))
            .inspect(|l| println!("  {l}"))
            .count()
    });
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("proptest-cases: ") {
            if let Some((name, n)) = rest.rsplit_once(' ') {
                *counts.entry(name.to_string()).or_default() += n.parse::<u64>().unwrap_or(0);
            }
        } else if line.starts_with("error") {
            // Build errors; test failures show in the `test result` lines and cargo's status.
            println!("  {line}");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    let _ = out_thread.join();
    println!("\nproperty cases that passed:");
    for (name, n) in &counts {
        println!("  {n:>8}  {name}");
    }
    let total: u64 = counts.values().sum();
    println!("  {total:>8}  in all, over {} properties", counts.len());
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    if counts.is_empty() {
        bail!("no property reported its cases: were the property tests run?");
    }
    Ok(())
}

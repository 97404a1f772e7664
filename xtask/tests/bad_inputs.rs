//! Bad input to `cargo xtask`: every case must end quickly with a non-zero exit and a message
//! naming the problem — never a panic, a hang, or silent acceptance.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the xtask binary with `args`; returns (exit code, stdout + stderr), killing it after
/// `limit`.
fn run(args: &[&str], limit: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting xtask");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for xtask") {
            break Some(s);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut text = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut text);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut text);
    }
    (status.map(|s| s.code().unwrap_or(-1)), text)
}

/// (arguments, a phrase the message must contain).
const CASES: &[(&[&str], &str)] = &[
    // simulate
    (&["simulate", "--world-size", "0"], "at least 1"),
    (&["simulate", "--world-size", "2000"], "at most 256"),
    (&["simulate", "--world-size", "4x"], "invalid value '4x'"),
    (&["simulate", "--world-size=-1"], "invalid value '-1'"),
    (&["simulate", "--seq-len", "0"], "at least 1"),
    (&["simulate", "--seq-len", "1000000000000"], "GiB of host memory"),
    (&["simulate", "--cached", "18446744073709551615"], "overflows"),
    (&["simulate", "--cached", "18446744073709551616"], "invalid value"),
    (&["simulate", "--cached", "1000000000"], "GiB of host memory"),
    (&["simulate", "--batch", "0"], "at least 1"),
    (&["simulate", "--batch", "10000"], "GiB of host memory"),
    (&["simulate", "--heads", "0"], "at least 1"),
    (&["simulate", "--kv-heads", "0"], "at least 1"),
    (&["simulate", "--head-dim", "0"], "at least 1"),
    (&["simulate", "--heads", "8", "--kv-heads", "3"], "multiple of --kv-heads"),
    (&["simulate", "--heads", "100000", "--head-dim", "100000"], "GiB of host memory"),
    (&["simulate", "--dtype", "f16"], "invalid value 'f16'"),
    (&["simulate", "--only", "everything"], "invalid value 'everything'"),
    (&["simulate", "--seed", "abc"], "invalid value 'abc'"),
    (&["simulate", "--decode-steps", "many"], "invalid value 'many'"),
    (&["simulate", "--bogus"], "unexpected argument '--bogus'"),
    (&["simulate", "--world-size"], "a value is required"),
    (&["simulat"], "unrecognized subcommand"),
    (&[], "Usage"),
    // bench (no GPU in CI: the CPU ring; --cpu forces it anywhere)
    (&["bench", "--cpu", "--world-size", "0"], "at least 1"),
    (&["bench", "--cpu", "--world-size", "100000"], "at most 256"),
    (&["bench", "--cpu", "--iters", "0"], "at least 1"),
    (&["bench", "--cpu", "--warmup", "0"], "--warmup must be at least 1"),
    (&["bench", "--cpu", "--seq-len", "0"], "at least 1"),
    (&["bench", "--cpu", "--cached", "18446744073709551615"], "overflows"),
    (&["bench", "--cpu", "--seq-len", "1000000000000"], "GiB of host memory"),
    (&["bench", "--cpu", "--heads", "8", "--kv-heads", "3"], "multiple of --kv-heads"),
    (&["bench", "--cpu", "--algorithm", "sideways"], "invalid value 'sideways'"),
    (&["bench", "--cpu", "--dtype", "f16"], "invalid value 'f16'"),
    (&["bench", "--world-size", "4x"], "invalid value '4x'"),
    // soak and plot
    (&["soak", "--cases", "many"], "invalid value 'many'"),
    (&["soak", "--cases", "-3"], "unexpected argument '-3'"),
    (&["plot", "--dir", "/nonexistent/cp-rs"], "no results found"),
];

#[test]
fn every_bad_invocation_ends_quickly_with_a_named_error() {
    let mut failures = Vec::new();
    for (args, phrase) in CASES {
        let (code, text) = run(args, Duration::from_secs(60));
        let label = format!("xtask {}", args.join(" "));
        match code {
            None => failures.push(format!("{label}: still running after 60 s")),
            Some(0) => failures.push(format!("{label}: exit status 0 (accepted)\n{text}")),
            Some(_) if text.contains("panicked") => failures.push(format!("{label}: panicked\n{text}")),
            Some(_) if !text.contains(phrase) => failures.push(format!("{label}: message lacks {phrase:?}\n{text}")),
            Some(_) => {}
        }
    }
    assert!(failures.is_empty(), "{} of {} cases:\n{}", failures.len(), CASES.len(), failures.join("\n---\n"));
    eprintln!("bad-input-cases: xtask {}", CASES.len());
}

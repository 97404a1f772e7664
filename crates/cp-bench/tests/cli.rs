//! Bad input to `cp-ring-bench` (on a machine with no GPU, as in CI, every GPU mode must say
//! so): a non-zero exit and a message naming the problem, never a panic or a silent default.

use std::process::Command;

const CASES: &[(&[&str], &str)] = &[
    (&[], "Usage"),
    (&["bogus"], "unrecognized subcommand 'bogus'"),
    (&["bench", "--world-size", "4x"], "invalid value '4x'"),
    (&["bench", "--world-size", "0"], "invalid value '0'"),
    (&["bench", "--seq-len", "0"], "invalid value '0'"),
    (&["bench", "--head-dim", "96"], "head dim 64 or 128"),
    (&["bench", "--iters", "0"], "invalid value '0'"),
    (&["bench", "--algorithm", "sideways"], "invalid value 'sideways'"),
    (&["bench", "--transport", "pigeon"], "invalid value 'pigeon'"),
    (&["bench", "--heads", "8", "--kv-heads", "3"], "no NVIDIA GPU"),
    (&["sweep", "--world-size", "1"], "invalid value '1'"),
    (&["sweep", "--miss-rates", "lots"], "invalid value 'lots'"),
    (&["decode", "--contexts", "long"], "invalid value 'long'"),
    (&["links", "--world-size", "1"], "invalid value '1'"),
    (&["nccl-process", "--timeout-s", "0"], "invalid value '0'"),
    (&["check"], "no NVIDIA GPU"),
    (&["bench"], "no NVIDIA GPU"),
];

#[test]
fn bad_invocations_are_refused_by_name() {
    if cp_bench::device_count() > 0 {
        eprintln!("bad_invocations_are_refused_by_name: SKIPPED the no-GPU cases: a GPU is present");
    }
    let mut failures = Vec::new();
    for (args, phrase) in CASES {
        if cp_bench::device_count() > 0 && phrase.contains("no NVIDIA GPU") {
            continue;
        }
        let o = Command::new(env!("CARGO_BIN_EXE_cp-ring-bench")).args(*args).output().expect("running cp-ring-bench");
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        let label = format!("cp-ring-bench {}", args.join(" "));
        if o.status.success() {
            failures.push(format!("{label}: exit status 0\n{text}"));
        } else if text.contains("panicked") || !text.contains(phrase) {
            failures.push(format!("{label}: expected {phrase:?}\n{text}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
    eprintln!("bad-input-cases: cp-ring-bench {}", CASES.len());
}

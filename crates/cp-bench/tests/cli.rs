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
    (&["decode", "--graphs", "--transport", "peer"], "graph capture needs --transport nccl"),
    (&["decode", "--nccl-launch", "sideways"], "invalid value 'sideways'"),
    (&["decode", "--event-tracking", "yes"], "unexpected argument 'yes'"),
    (&["decode", "--graphs"], "no NVIDIA GPU"),
    (&["links", "--world-size", "1"], "invalid value '1'"),
    (&["bench", "--transfer-sms", "0"], "invalid value '0'"),
    (&["sweep", "--transfer-sms", "8", "--transport", "peer"], "--transfer-sms leaves multiprocessors to NCCL"),
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

#[test]
fn cp_gpu_bench_refuses_bad_arguments_and_says_when_there_is_no_gpu() {
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_cp-gpu-bench")).args(args).output().unwrap();
        (o.status.code(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
    };
    let mut cases = 0;
    for (args, phrase) in [
        (&["bogus"][..], "unrecognized subcommand 'bogus'"),
        (&["bench", "--json"][..], "a value is required"),
        (&["check", "extra"][..], "unexpected argument 'extra'"),
        (&["bench", "--fast"][..], "unexpected argument '--fast'"),
        (&["profile", "--head-dim", "96"][..], "head dim 64 or 128"),
        (&["profile", "--pingpong", "yes"][..], "unexpected argument 'yes'"),
        (&["profile", "--schedule", "random"][..], "invalid value 'random' for '--schedule <SCHEDULE>'"),
        (&["profile", "--tail-split", "maybe"][..], "invalid value 'maybe' for '--tail-split <TAIL_SPLIT>'"),
        (&["profile", "--ring-world", "1"][..], "1 is not in 2..=64"),
        (&["profile", "--ring-rank", "1"][..], "--ring-world <RING_WORLD>"),
        (&["profile", "--repeat", "0"][..], "0 is not in 1..=100000"),
    ] {
        let (code, text) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {text}");
        assert!(text.contains(phrase), "{args:?}: {text}");
        cases += 1;
    }
    // A ring profile's shape is refused before the GPU is touched (so here too, without one).
    for (args, phrase) in [
        (&["profile", "--ring-world", "4", "--ring-rank", "4"][..], "--ring-rank 4 is not a rank of a ring of 4"),
        (&["profile", "--ring-world", "2", "--batch", "2"][..], "a ring profile takes one causal sequence"),
        (&["profile", "--ring-world", "2", "--off-diagonal"][..], "a ring profile takes one causal sequence"),
    ] {
        let (code, text) = run(args);
        assert_eq!(code, Some(1), "{args:?}: {text}");
        assert!(text.contains(phrase) && !text.contains("panicked") && !text.contains("NVIDIA"), "{args:?}: {text}");
        cases += 1;
    }
    let (code, text) = run(&["--help"]);
    assert_eq!(code, Some(0), "{text}");
    if cp_bench::device_count() == 0 && !cp_attention::cuda::driver_available() {
        let (code, text) = run(&["check"]);
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains("no NVIDIA driver") && !text.contains("panicked"), "{text}");
    }
    eprintln!("bad-input-cases: cp-gpu-bench {cases}");
}

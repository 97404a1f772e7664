//! `cargo xtask ci`: everything CI checks, in one command (`.ci/run` installs the toolchain
//! components and calls it): tidy, format, clippy, documentation, tests, the CUDA kernels
//! compiled by NVRTC, and the two main commands run as a newcomer would.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

#[derive(clap::Args)]
pub struct Args {
    /// Skip compiling the CUDA kernels with NVRTC (it installs the nvidia-cuda-nvrtc wheel).
    #[arg(long)]
    no_nvrtc: bool,
    /// Only the tidy check.
    #[arg(long)]
    tidy_only: bool,
}

fn root() -> PathBuf {
    let xtask = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().map_or(xtask.clone(), PathBuf::from)
}

/// Runs one step, failing with its name if it fails.
fn step(name: &str, cmd: &mut Command) -> anyhow::Result<()> {
    println!("== {name}");
    let started = Instant::now();
    let status = cmd.current_dir(root()).status().with_context(|| format!("starting: {name}"))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    println!("   ({:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out)?;
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The habits the code follows, checked: every Rust file opens with a `//!` doc comment; no
/// `todo!`, `unimplemented!` or `dbg!`; no ignored test without a stated reason.
pub fn tidy() -> anyhow::Result<usize> {
    let mut files = Vec::new();
    for dir in ["crates", "xtask", "examples"] {
        rust_files(&root().join(dir), &mut files).with_context(|| format!("listing {dir}"))?;
    }
    let mut problems = Vec::new();
    // Spelled in pieces so that this file does not trip its own check.
    let banned = [concat!("todo", "!("), concat!("unimplemented", "!("), concat!("dbg", "!(")];
    let bare_ignore = concat!("#[", "ignore]");
    for f in &files {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let shown = f.strip_prefix(root()).unwrap_or(f).display();
        if !text.lines().find(|l| !l.trim().is_empty()).is_some_and(|l| l.starts_with("//!")) {
            problems.push(format!("{shown}: does not open with a //! doc comment saying what it is"));
        }
        for (i, line) in text.lines().enumerate() {
            for b in banned {
                if line.contains(b) {
                    problems.push(format!("{shown}:{}: {b}...) left in", i + 1));
                }
            }
            if line.contains(bare_ignore) {
                problems.push(format!("{shown}:{}: {bare_ignore} without a reason (say why: ignore = \"...\")", i + 1));
            }
        }
    }
    if !problems.is_empty() {
        bail!("tidy: {} problem(s):\n  {}", problems.len(), problems.join("\n  "));
    }
    Ok(files.len())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    println!("== tidy");
    println!("   {} Rust files: ok", tidy()?);
    if args.tidy_only {
        return Ok(());
    }
    step("cargo fmt --check", cargo().args(["fmt", "--all", "--", "--check"]))?;
    // The GPU Llama example is its own workspace (candle's CUDA kernels need nvcc to build, which
    // CI lacks): formatted here at least; it is built and run on the GPU machine.
    step(
        "rustfmt --check examples/llama-gpu (not built here: needs nvcc)",
        Command::new("rustfmt")
            .args(["--edition", "2024", "--check"])
            .arg(root().join("examples/llama-gpu/src/main.rs")),
    )?;
    step(
        "cargo clippy (all targets, all features, warnings denied)",
        cargo().args(["clippy", "--workspace", "--all-targets", "--all-features", "--locked", "--", "-D", "warnings"]),
    )?;
    step(
        "cargo doc (warnings denied)",
        cargo()
            .args(["doc", "--workspace", "--no-deps", "--all-features", "--locked"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    step("cargo test --workspace (the README's test command)", cargo().args(["test", "--workspace", "--locked"]))?;
    if !args.no_nvrtc {
        let wheel = root().join(".ci-nvrtc");
        step(
            "NVRTC from PyPI (the CUDA 13.0 build the GPU machine has)",
            Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target"])
                .arg(&wheel)
                .arg("nvidia-cuda-nvrtc==13.0.88"),
        )?;
        let lib = wheel.join("nvidia/cu13/lib");
        let path = match std::env::var_os("LD_LIBRARY_PATH") {
            Some(p) => format!("{}:{}", lib.display(), p.to_string_lossy()),
            None => lib.display().to_string(),
        };
        step(
            "every CUDA kernel compiles with NVRTC for sm_90a, sm_90 and sm_80",
            cargo()
                .args(["test", "-p", "cp-attention", "--features", "cuda", "--locked", "--lib", "--test", "cuda"])
                .env("LD_LIBRARY_PATH", path)
                .env("CP_REQUIRE_NVRTC", "1"),
        )?;
    }
    // Through cargo, as a user types it (the test step may have rebuilt this very binary, so
    // its own path can be gone).
    let xtask = || {
        let mut c = cargo();
        c.args(["run", "--locked", "--package", "xtask", "--"]);
        c
    };
    step("cargo xtask simulate (the README's main command, defaults)", xtask().arg("simulate"))?;
    step(
        "cargo xtask simulate, odd world size, bf16, GQA 8, T not a multiple of 2N",
        xtask().args(["simulate", "--world-size", "5", "--seq-len", "37", "--cached", "41", "--batch", "3"]).args([
            "--heads",
            "8",
            "--kv-heads",
            "1",
            "--head-dim",
            "16",
            "--dtype",
            "bf16",
            "--decode-steps",
            "6",
        ]),
    )?;
    step(
        "cargo xtask bench (no GPU here: the ring on CPU ranks, with its correctness check)",
        xtask().args(["bench", "--world-size", "3", "--seq-len", "257", "--cached", "64", "--iters", "1", "--cpu"]),
    )?;
    // The model example as the README shows it, and its checkpoint path: the random model saved
    // as safetensors + config.json, then loaded back (each step checked against
    // candle-transformers' Llama on the same weights).
    let dir = std::env::temp_dir().join(format!("cp-llama-{}", std::process::id()));
    let example = |args: &[&str]| {
        let mut c = cargo();
        c.args(["run", "--locked", "-p", "cp-model", "--example", "llama", "--"]).args(args);
        c
    };
    let dir_s = dir.to_string_lossy().into_owned();
    step(
        "the Llama example on 3 ranks, saving its random model",
        &mut example(&["--ranks", "3", "--decode", "4", "--save-random", &dir_s]),
    )?;
    let (weights, config) = (dir.join("model.safetensors"), dir.join("config.json"));
    step(
        "the Llama example on 5 ranks, loading that checkpoint",
        &mut example(&[
            "--ranks",
            "5",
            "--decode",
            "4",
            "--weights",
            &weights.to_string_lossy(),
            "--config",
            &config.to_string_lossy(),
        ]),
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    println!("== CI passed in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

//! `cargo xtask plot`: the JSON results under `docs/` as SVG charts (no plotting dependency:
//! line charts are a few dozen SVG elements).
//!
//! - `sweep-efficiency.svg`: parallel efficiency against the miss rate (the paper's Table 4 on
//!   our GPUs), one line per algorithm and `auto`.
//! - `decode-latency.svg`: per-token decode latency against context length on 1, 2 and 4 GPUs.
//! - `prefill-efficiency-*.svg`: parallel efficiency of each algorithm against prompt length.
//! - `kernels-vs-cudnn.svg`: our prefill kernel's throughput as a fraction of cuDNN's (SDPA),
//!   workload by workload, beside SDPA's flash backend.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

#[derive(clap::Args)]
pub struct Args {
    /// Folder holding the results (written next to them).
    #[arg(long, default_value = "docs/results-2026-11-26-4xh200")]
    dir: PathBuf,
}

/// One line of a chart.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

const COLORS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];

/// The opening of a chart: the canvas, a white background, the title and the rotated y label
/// (centred at height `y_mid`).
fn svg_open(w: f64, h: f64, title: &str, y_label: &str, y_mid: f64) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{0}" y="22" font-size="15" text-anchor="middle">{title}</text>
<text x="16" y="{y_mid}" text-anchor="middle" transform="rotate(-90 16 {y_mid})">{y_label}</text>
"#,
        w / 2.0
    )
}

/// A line chart; `log_x` puts x on a log scale.
fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series], log_x: bool) -> String {
    let (w, h, left, right, top, bottom) = (760.0, 440.0, 70.0, 200.0, 40.0, 55.0);
    let fx = |x: f64| if log_x { x.log10() } else { x };
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    for &(x, y) in pts {
        (x0, x1, y1) = (x0.min(fx(x)), x1.max(fx(x)), y1.max(y));
    }
    if !x0.is_finite() || x1 <= x0 {
        (x0, x1) = (0.0, 1.0);
    }
    // Five gridlines at a round step (1, 2 or 5 times a power of ten).
    let raw = if y1 > 0.0 { y1 / 5.0 } else { 0.2 };
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|&s| s >= raw).unwrap_or(10.0 * mag);
    let y1 = step * 5.0;
    let px = |x: f64| left + (fx(x) - x0) / (x1 - x0) * (w - left - right);
    let py = |y: f64| h - bottom - y / y1 * (h - top - bottom);
    let mut svg = svg_open(w, h, title, y_label, (top + h - bottom) / 2.0);
    let _ = write!(
        svg,
        r#"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="black"/>
<line x1="{left}" y1="{top}" x2="{left}" y2="{0}" stroke="black"/>
<text x="{2}" y="{3}" text-anchor="middle">{x_label}</text>
"#,
        h - bottom,
        w - right,
        (left + w - right) / 2.0,
        h - 15.0,
    );
    for i in 0..=5 {
        let y = y1 * f64::from(i) / 5.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="#ddd"/><text x="{2}" y="{3}" text-anchor="end">{4}</text>"##,
            py(y),
            w - right,
            left - 6.0,
            py(y) + 4.0,
            fmt_num(y)
        );
    }
    let mut xs: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for x in xs {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            px(x),
            h - bottom + 16.0,
            fmt_num(x)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let path: Vec<String> = s.points.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        let _ = writeln!(svg, r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#, path.join(" "));
        for &(x, y) in &s.points {
            let _ = writeln!(svg, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"/>"#, px(x), py(y));
        }
        let ly = top + 10.0 + 18.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            w - right + 12.0,
            w - right + 32.0,
            w - right + 38.0,
            ly + 4.0,
            s.name
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// A grouped bar chart: one group per category, one bar per series (values by category index),
/// with a dashed reference line at `reference`.
fn bar_chart(
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[(String, Vec<f64>)],
    reference: f64,
) -> String {
    let (w, h, left, right, top, bottom) = (900.0, 460.0, 70.0, 190.0, 40.0, 90.0);
    let y_max = series.iter().flat_map(|s| s.1.iter().copied()).fold(reference, f64::max) * 1.1;
    let py = |y: f64| h - bottom - y / y_max * (h - top - bottom);
    let group = (w - left - right) / categories.len().max(1) as f64;
    let bar = group * 0.8 / series.len().max(1) as f64;
    let mut svg = svg_open(w, h, title, y_label, (top + h - bottom) / 2.0);
    let _ = writeln!(svg, r#"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="black"/>"#, h - bottom, w - right);
    for i in 0..=5 {
        let y = y_max * f64::from(i) / 5.0;
        let _ = writeln!(svg, r#"<text x="{}" y="{}" text-anchor="end">{y:.2}</text>"#, left - 6.0, py(y) + 4.0);
    }
    let _ = writeln!(
        svg,
        r#"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="black" stroke-dasharray="5,4"/>"#,
        py(reference),
        w - right
    );
    for (c, name) in categories.iter().enumerate() {
        let x0 = left + group * c as f64 + group * 0.1;
        for (s, (_, values)) in series.iter().enumerate() {
            let Some(&v) = values.get(c).filter(|v| v.is_finite()) else { continue };
            let _ = writeln!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{v:.2}</text>"#,
                x0 + bar * s as f64,
                py(v),
                bar - 2.0,
                h - bottom - py(v),
                COLORS[s % COLORS.len()],
                x0 + bar * s as f64 + bar / 2.0,
                py(v) - 3.0
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="end" transform="rotate(-25 {:.1} {})">{name}</text>"#,
            x0 + group * 0.4,
            h - bottom + 16.0,
            x0 + group * 0.4,
            h - bottom + 16.0
        );
    }
    for (i, (name, _)) in series.iter().enumerate() {
        let ly = top + 10.0 + 18.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<rect x="{}" y="{}" width="16" height="10" fill="{}"/><text x="{}" y="{}">{name}</text>"#,
            w - right + 12.0,
            ly - 5.0,
            COLORS[i % COLORS.len()],
            w - right + 34.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn fmt_num(v: f64) -> String {
    if v >= 1e6 && (v / 1048576.0).fract() == 0.0 {
        format!("{}M", v / 1048576.0)
    } else if v >= 1024.0 && (v / 1024.0).fract() == 0.0 {
        format!("{}K", v / 1024.0)
    } else if v.fract() == 0.0 {
        format!("{v}")
    } else {
        format!("{v:.2}")
    }
}

fn read(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn num(v: &Value, key: &str) -> anyhow::Result<f64> {
    v.get(key).and_then(Value::as_f64).with_context(|| format!("field {key} missing or not a number"))
}

/// Parallel efficiency against the miss rate from a sweep report.
fn sweep_chart(sweep: &Value, label: &str) -> anyhow::Result<String> {
    let points = sweep.get("points").and_then(Value::as_array).context("sweep: no points")?;
    let n = num(sweep, "world_size")?;
    let mut series: Vec<Series> = ["pass-KV", "pass-Q", "gather-KV", "auto"]
        .iter()
        .map(|s| Series { name: (*s).into(), points: Vec::new() })
        .collect();
    for p in points {
        let (m, single) = (num(p, "miss_rate_pct")?, num(p, "single_ms")?);
        for (s, key) in series.iter_mut().zip(["pass_kv_ms", "pass_q_ms", "gather_kv_ms", "auto_ms"]) {
            if let Ok(ms) = num(p, key) {
                s.points.push((m, 100.0 * single / (n * ms)));
            }
        }
    }
    Ok(line_chart(
        &format!("Parallel efficiency, P+T={}, {n} GPUs ({label})", num(sweep, "total")?),
        "miss rate T/(T+P), % (log scale)",
        "efficiency vs one GPU, %",
        &series,
        true,
    ))
}

/// Decode latency (GPU time per step, p50) against context from decode rows.
fn decode_chart(rows: &[Value], batch: f64, label: &str) -> anyhow::Result<String> {
    let mut series: Vec<Series> = Vec::new();
    for r in rows.iter().filter(|r| num(r, "batch").ok() == Some(batch) && r["mode"] != "growing") {
        let graph = if r["mode"] == "graph" { " (graph)" } else { "" };
        let name = format!("N={} {}{graph}", num(r, "world_size")?, r["algorithm"].as_str().unwrap_or("?"));
        let p50 = r.get("gpu_us").map(|g| num(g, "p50")).context("gpu_us")??;
        let x = num(r, "context")?;
        match series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push((x, p50)),
            None => series.push(Series { name, points: vec![(x, p50)] }),
        }
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    series.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(line_chart(
        &format!("Decode step latency, batch {batch} ({label})"),
        "tokens cached per sequence (log scale)",
        "GPU time per step, us (p50)",
        &series,
        true,
    ))
}

/// Our best prefill kernel and SDPA's flash backend as fractions of cuDNN, per workload, from
/// `kernels-ours.json` and `kernels-sdpa.json` (same device call).
fn kernel_chart(ours: &[Value], sdpa: &[Value], label: &str) -> anyhow::Result<String> {
    let rate = |v: &Value| -> anyhow::Result<(String, f64)> {
        Ok((v["name"].as_str().context("kernel row without a name")?.to_string(), num(v, "rate")?))
    };
    let mut categories: Vec<String> = Vec::new();
    let (mut ours_ratio, mut flash_ratio) = (Vec::new(), Vec::new());
    for row in sdpa {
        let (name, cudnn) = rate(row)?;
        let Some(workload) = name.strip_prefix("sdpa-cudnn ") else { continue };
        // Ours: the fastest of our kernels on this workload ("<workload> (<kernel>)").
        let best = ours
            .iter()
            .filter_map(|v| rate(v).ok())
            .filter(|(n, _)| n.strip_prefix(workload).is_some_and(|rest| rest.starts_with(" (")))
            .map(|(_, r)| r)
            .fold(f64::NAN, f64::max);
        if best.is_nan() {
            continue;
        }
        let flash = sdpa
            .iter()
            .filter_map(|v| rate(v).ok())
            .find(|(n, _)| n.strip_prefix("sdpa-flash ") == Some(workload))
            .map_or(f64::NAN, |(_, r)| r);
        categories.push(workload.replace("prefill causal ", "causal "));
        ours_ratio.push(best / cudnn);
        flash_ratio.push(flash / cudnn);
    }
    anyhow::ensure!(!categories.is_empty(), "no workload appears in both kernel result files");
    Ok(bar_chart(
        &format!("Prefill throughput as a fraction of cuDNN ({label})"),
        "TFLOP/s / cuDNN's TFLOP/s",
        &categories,
        &[("cp-rs (best kernel)".into(), ours_ratio), ("SDPA flash".into(), flash_ratio)],
        1.0,
    ))
}

/// Parallel efficiency of each algorithm against prompt length, from full-prefill reports.
fn prefill_chart(reports: &[Value], label: &str) -> anyhow::Result<String> {
    let mut series: Vec<Series> = Vec::new();
    let mut n = 0.0;
    for rep in reports {
        let t = num(rep, "t")?;
        for run in rep.get("runs").and_then(Value::as_array).context("prefill report: no runs")? {
            let name = run["algorithm"].as_str().unwrap_or("?").to_string();
            n = num(run, "world_size")?;
            let point = (t, 100.0 * num(run, "efficiency")?);
            match series.iter_mut().find(|s| s.name == name) {
                Some(s) => s.points.push(point),
                None => series.push(Series { name, points: vec![point] }),
            }
        }
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    Ok(line_chart(
        &format!("Causal prefill on {n} GPUs: parallel efficiency ({label})"),
        "prompt tokens (log scale)",
        "efficiency vs one GPU, %",
        &series,
        true,
    ))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = &args.dir;
    let mut written: Vec<String> = Vec::new();
    // The card the results came from: `card.txt` beside them (the first sessions' results, which
    // have none, came from H200s).
    let card =
        std::fs::read_to_string(dir.join("card.txt")).map_or_else(|_| "H200".to_string(), |c| c.trim().to_string());
    for (file, transport, out) in [
        ("sweep-n4-peer-final.json", "peer copies", "sweep-efficiency-peer.svg"),
        ("sweep-n4-nccl-final.json", "NCCL", "sweep-efficiency-nccl.svg"),
        ("call4-sweep-n4-nccl.json", "NCCL", "sweep-efficiency-nccl.svg"),
    ] {
        let path = dir.join(file);
        if path.exists() {
            std::fs::write(dir.join(out), sweep_chart(&read(&path)?, &format!("{card}, {transport}"))?)?;
            written.push(out.to_string());
        }
    }
    for (transport, files) in [
        ("NCCL", ["decode-128k-nccl.json", "decode-1m-nccl.json"]),
        ("peer copies", ["decode-128k-peer.json", "decode-1m-peer.json"]),
        ("NCCL", ["decode-final.json", "decode-final-b64.json"]),
    ] {
        let mut rows = Vec::new();
        for f in files {
            let path = dir.join(f);
            if path.exists() {
                rows.extend(read(&path)?.as_array().cloned().unwrap_or_default());
            }
        }
        if rows.is_empty() {
            continue;
        }
        let tag = if transport == "NCCL" { "nccl" } else { "peer" };
        for batch in [1.0, 8.0, 64.0] {
            if !rows.iter().any(|r| num(r, "batch").ok() == Some(batch)) {
                continue;
            }
            let out = format!("decode-latency-b{batch}-{tag}.svg");
            std::fs::write(dir.join(&out), decode_chart(&rows, batch, &format!("{card}, {transport}"))?)?;
            written.push(out);
        }
    }
    for (transport, tag) in [("NCCL", "nccl"), ("peer copies", "peer")] {
        let mut reports = Vec::new();
        for t in [4096, 16384, 131072] {
            let path = dir.join(format!("prefill-n4-{t}-{tag}-final.json"));
            if path.exists() {
                reports.push(read(&path)?);
            }
        }
        if !reports.is_empty() {
            let out = format!("prefill-efficiency-{tag}.svg");
            std::fs::write(dir.join(&out), prefill_chart(&reports, &format!("{card}, {transport}"))?)?;
            written.push(out);
        }
    }
    let (ours, sdpa) = (dir.join("kernels-ours.json"), dir.join("kernels-sdpa.json"));
    if ours.exists() && sdpa.exists() {
        let rows = |v: Value| v.as_array().cloned().unwrap_or_default();
        let chart = kernel_chart(&rows(read(&ours)?), &rows(read(&sdpa)?), &format!("{card}, same device call"))?;
        std::fs::write(dir.join("kernels-vs-cudnn.svg"), chart)?;
        written.push("kernels-vs-cudnn.svg".into());
    }
    if written.is_empty() {
        anyhow::bail!("no results found under {}", dir.display());
    }
    for w in written {
        println!("wrote {}", dir.join(w).display());
    }
    Ok(())
}

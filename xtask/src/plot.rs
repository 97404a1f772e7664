//! `cargo xtask plot`: the JSON results under `docs/` as SVG charts (no plotting dependency:
//! line charts are a few dozen SVG elements).
//!
//! - `sweep-efficiency.svg`: parallel efficiency against the miss rate (the paper's Table 4 on
//!   our GPUs), one line per algorithm and `auto`.
//! - `decode-latency.svg`: per-token decode latency against context length on 1, 2 and 4 GPUs.

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
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" font-size="15" text-anchor="middle">{title}</text>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">{x_label}</text>
<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{y_label}</text>
"#,
        w / 2.0,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom,
        (left + w - right) / 2.0,
        h - 15.0,
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0
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
    for r in rows.iter().filter(|r| num(r, "batch").ok() == Some(batch) && r["mode"] == "steady") {
        let name = format!("N={} {}", num(r, "world_size")?, r["algorithm"].as_str().unwrap_or("?"));
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

pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = &args.dir;
    let mut written: Vec<String> = Vec::new();
    for (file, label, out) in [
        ("sweep-n4-peer-final.json", "H200, peer copies", "sweep-efficiency-peer.svg"),
        ("sweep-n4-nccl-final.json", "H200, NCCL", "sweep-efficiency-nccl.svg"),
    ] {
        let path = dir.join(file);
        if path.exists() {
            std::fs::write(dir.join(out), sweep_chart(&read(&path)?, label)?)?;
            written.push(out.to_string());
        }
    }
    for (transport, files) in [
        ("NCCL", ["decode-128k-nccl.json", "decode-1m-nccl.json"]),
        ("peer copies", ["decode-128k-peer.json", "decode-1m-peer.json"]),
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
        for batch in [1.0, 8.0] {
            let out = format!("decode-latency-b{batch}-{}.svg", if transport == "NCCL" { "nccl" } else { "peer" });
            std::fs::write(dir.join(&out), decode_chart(&rows, batch, &format!("H200, {transport}"))?)?;
            written.push(out);
        }
    }
    if written.is_empty() {
        anyhow::bail!("no results found under {}", dir.display());
    }
    for w in written {
        println!("wrote {}", dir.join(w).display());
    }
    Ok(())
}

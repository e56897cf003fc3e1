//! What the benches share: the Markdown table they print, where their JSON
//! goes, and the description of the machine they ran on. Included by each
//! bench with `#[path]`.

// Each bench uses only part of it (`commit` has no ratio table).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// One line of a bench's results table: tokend's figure, the same-run
/// baseline it is compared with, and the target, if any.
pub struct Row {
    pub metric: String,
    pub unit: &'static str,
    pub tokend: f64,
    /// (name, value) when there is a same-run baseline.
    pub baseline: Option<(&'static str, f64)>,
    /// (text, met) when the goals set a target for this line.
    pub target: Option<(&'static str, bool)>,
}

impl Row {
    /// tokend / baseline, when there is a (non-zero) baseline.
    pub fn ratio(&self) -> Option<f64> {
        self.baseline
            .filter(|(_, b)| *b > 0.0)
            .map(|(_, b)| self.tokend / b)
    }

    /// The row as JSON; NaN (no samples) as null.
    pub fn json(&self) -> Value {
        json!({
            "metric": self.metric,
            "unit": self.unit,
            "tokend": finite(self.tokend),
            "baseline_name": self.baseline.map(|(n, _)| n),
            "baseline": self.baseline.map(|(_, v)| finite(v)),
            "ratio": self.ratio().map(finite),
            "target": self.target.map(|(t, _)| t),
            "met": self.target.map(|(_, m)| m),
        })
    }
}

/// NaN or infinity as JSON null.
pub fn finite(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

/// The results table: metric, unit, tokend, baseline, ratio, target, met.
pub fn table(rows: &[Row]) -> String {
    let dash = || "—".to_string();
    let mut lines = vec![[
        "metric",
        "unit",
        "tokend",
        "baseline",
        "baseline value",
        "ratio",
        "target",
        "met",
    ]
    .map(String::from)
    .to_vec()];
    for r in rows {
        lines.push(vec![
            r.metric.clone(),
            r.unit.to_string(),
            number(r.tokend),
            r.baseline.map_or_else(dash, |(name, _)| name.to_string()),
            r.baseline.map_or_else(dash, |(_, v)| number(v)),
            r.ratio().map_or_else(dash, |x| format!("{x:.2}×")),
            r.target.map_or_else(dash, |(t, _)| t.to_string()),
            r.target
                .map_or_else(dash, |(_, m)| if m { "yes" } else { "NO" }.to_string()),
        ]);
    }
    markdown(&lines)
}

/// A figure with as many decimals as its size deserves.
pub fn number(v: f64) -> String {
    if v.is_nan() {
        "—".to_string()
    } else if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.1 || v == 0.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The first line of a bench's report: what ran, and on what.
pub fn headline(what: &str, quick: bool, machine: &Value) -> String {
    format!(
        "tokend {what} ({} run) on {}, {} CPUs, Linux {}",
        if quick { "quick" } else { "full" },
        machine["cpu"].as_str().unwrap_or("?"),
        machine["nproc"],
        machine["kernel"].as_str().unwrap_or("?"),
    )
}

/// A Markdown table from rows of cells, the first row being the header,
/// with columns padded so it reads as well in a terminal as pasted into
/// BENCHMARKS.md.
pub fn markdown(lines: &[Vec<String>]) -> String {
    let Some(header) = lines.first() else {
        return String::new();
    };
    let width: Vec<usize> = (0..header.len())
        .map(|c| {
            lines
                .iter()
                .map(|l| l.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |l: &[String]| {
        let cells: Vec<String> = l
            .iter()
            .enumerate()
            .map(|(c, s)| format!("{s}{}", " ".repeat(width[c] - s.chars().count())))
            .collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let mut out = line(header);
    let sep: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&format!("|-{}-|\n", sep.join("-|-")));
    for l in &lines[1..] {
        out.push_str(&line(l));
    }
    out
}

/// Where the JSON goes: the target dir the bench was built in (a bench
/// binary is `<target>/<profile>/deps/<name>-<hash>`).
pub fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let deps = exe.parent()?;
            (deps.file_name()? == "deps").then(|| deps.parent()?.parent().map(Path::to_path_buf))?
        })
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// nproc, CPU model and kernel release.
pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    json!({ "nproc": nproc, "cpu": cpu, "kernel": kernel, "arch": std::env::consts::ARCH })
}

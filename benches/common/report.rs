//! What the benches share: the Markdown table they print, where their JSON
//! goes, and the description of the machine they ran on. Included by each
//! bench with `#[path]`.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

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

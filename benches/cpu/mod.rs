//! CPU time of processes from `/proc` (Linux), for the benches that report CPU per request:
//! `load` (the server and itself) and `replicas` (the service and PostgreSQL's processes).

use std::process::Command;
use std::sync::OnceLock;

fn clock_ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds used so far by the process whose stat file is `stat_path`
/// (0 when it is gone).
pub fn process_cpu_seconds(stat_path: &str) -> f64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<f64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    (fields.get(11).unwrap_or(&0.0) + fields.get(12).unwrap_or(&0.0)) / clock_ticks_per_second()
}

/// CPU seconds used so far by the process `pid`.
#[allow(dead_code)] // (each bench uses its share of this module)
pub fn pid_cpu_seconds(pid: u32) -> f64 {
    process_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// CPU seconds used so far by every running process whose command name is `name` (e.g.
/// `postgres`: the postmaster, its backends and its background workers). A process that
/// ends between two readings takes its time with it: read around phases whose processes
/// stay (pooled connections).
#[allow(dead_code)]
pub fn named_cpu_seconds(name: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .map(|e| process_cpu_seconds(&e.path().join("stat").to_string_lossy()))
        .sum()
}

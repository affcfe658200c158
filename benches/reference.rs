//! The reference column of `make bench` (`cargo bench --bench reference`): runs `openssl
//! speed` for SM2 sign/verify, SM3 and SM4 on this machine now, times the same
//! operations of ours in the same process, and prints both with ratios. It needs no other
//! bench to have run first.
//! Debian's OpenSSL 3.0 has no SM4-GCM, so SM4 is compared in CBC mode (the `sm4` crate's
//! block function, one block at a time) and our SM4-GCM against OpenSSL's SM4-CTR (4 KiB
//! buffers).
//! Output: a table on stdout and `target/reference-report.json`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

#[path = "floor/mod.rs"]
mod floor;

/// Seconds per OpenSSL algorithm (`-seconds`); `REFERENCE_SECONDS` overrides it
/// (`make bench-smoke` uses 1).
fn openssl_seconds() -> String {
    std::env::var("REFERENCE_SECONDS")
        .ok()
        .filter(|s| s.parse::<u32>().is_ok_and(|n| (1..=60).contains(&n)))
        .unwrap_or_else(|| "3".into())
}
const BUFFER_BYTES: f64 = 4096.0;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// `openssl speed -mr` output lines starting with `prefix`, split on ':'.
fn openssl_speed(args: &[&str], prefix: &str) -> Option<Vec<String>> {
    let output = Command::new("openssl")
        .args(["speed", "-mr", "-seconds", &openssl_seconds()])
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .map(|l| l.split(':').map(str::to_owned).collect())
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("reference: runs only under `cargo bench` (it takes about 15 s of openssl speed)");
        return;
    }
    let version = Command::new("openssl")
        .arg("version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let Some(version) = version else {
        println!(
            "reference: `openssl` is not installed, so there is no reference column \
             (apt-get install openssl)"
        );
        return;
    };
    // Ours, timed now for as long as OpenSSL gets per algorithm.
    let seconds: u64 = openssl_seconds().parse().unwrap_or(3);
    let ours_measured = floor::reference_operations(std::time::Duration::from_secs(seconds));
    let ours = |id: &str| {
        ours_measured
            .iter()
            .find(|(name, _)| *name == id)
            .map(|(_, seconds)| *seconds)
    };
    // (name, our operation's id, OpenSSL ops/s)
    let mut rows: Vec<(&str, &str, Option<f64>)> = Vec::new();
    let sm2 = openssl_speed(&["sm2"], "+F7:");
    let field = |fields: &Option<Vec<String>>, index: usize| {
        fields
            .as_ref()
            .and_then(|f| f.get(index))
            .and_then(|v| v.parse::<f64>().ok())
    };
    rows.push(("SM2 sign", "sm2_sign", field(&sm2, 4)));
    rows.push(("SM2 verify", "sm2_verify", field(&sm2, 5)));
    let bytes = BUFFER_BYTES.to_string();
    let per_buffer = |fields: Option<Vec<String>>| field(&fields, 3).map(|bps| bps / BUFFER_BYTES);
    rows.push((
        "SM3 4 KiB",
        "sm3_4KiB",
        per_buffer(openssl_speed(&["-bytes", &bytes, "-evp", "sm3"], "+F:")),
    ));
    rows.push((
        "SM4-CBC 4 KiB",
        "sm4_cbc_encrypt_4KiB",
        per_buffer(openssl_speed(&["-bytes", &bytes, "-evp", "sm4-cbc"], "+F:")),
    ));
    // What the service runs (SM4-GCM: CTR plus GHASH) against OpenSSL's SM4-CTR, the part of
    // it OpenSSL 3.0 has: ours does GHASH on top, so the ratio understates ours.
    rows.push((
        "SM4-GCM ÷ CTR 4 KiB",
        "sm4_gcm_seal_4KiB",
        per_buffer(openssl_speed(&["-bytes", &bytes, "-evp", "sm4-ctr"], "+F:")),
    ));

    println!(
        "\nreference: {version}, measured now on this machine ({} s each)",
        openssl_seconds()
    );
    println!(
        "{:<20} {:>12} {:>14} {:>9}",
        "operation", "ours op/s", "OpenSSL op/s", "ours ÷ OpenSSL"
    );
    let mut report = Vec::new();
    let mut missing = Vec::new();
    for (name, id, theirs) in rows {
        let ours_ops = ours(id).map(|seconds| 1.0 / seconds);
        let ratio = ours_ops.zip(theirs).map(|(a, b)| a / b);
        let show = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.0}"));
        println!(
            "{name:<20} {:>12} {:>14} {:>9}",
            show(ours_ops),
            show(theirs),
            ratio.map_or("n/a".to_owned(), |r| format!("{r:.2}×"))
        );
        if ratio.is_none() {
            missing.push(name);
        }
        report.push(json!({
            "operation": name, "id": id,
            "ours_ops_per_s": ours_ops, "openssl_ops_per_s": theirs, "ratio": ratio,
        }));
    }
    let path = target_dir().join("reference-report.json");
    std::fs::create_dir_all(target_dir()).ok();
    let document = json!({"openssl": version, "rows": report});
    std::fs::write(&path, serde_json::to_vec_pretty(&document).unwrap()).ok();
    println!("report: {}", path.display());
    // `make bench-smoke` (CI) sets this: a row without both figures means the bench no longer
    // measures what docs/PERFORMANCE.md reports.
    if std::env::var_os("REFERENCE_REQUIRE_ALL").is_some() && !missing.is_empty() {
        eprintln!("reference: no ratio for {missing:?}");
        std::process::exit(1);
    }
}

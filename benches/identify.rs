//! 1:N search at scale (docs/PERFORMANCE.md, "1:N"): the gallery index (`risk::gallery`:
//! int8 scan + exact f32 re-score) against a plain f32 scan and, in the same run, FAISS's
//! exact `IndexFlatIP` (faiss-cpu from PyPI, one thread) on the same vectors. Synthetic unit
//! vectors (timing does not depend on what the faces look like; accuracy is `tee-risk eval`'s).
//!
//! Env (defaults under `cargo bench`; `cargo test` runs a 2,000-user pass without FAISS):
//! IDENTIFY_SIZES (10000,100000,1000000), IDENTIFY_QUERIES (200), IDENTIFY_FAISS
//! (1: run the reference; needs target/pyenv with faiss-cpu, which `make bench` installs),
//! IDENTIFY_STARTUP_USERS (100000: users enrolled in a sled vault to time the start-up load).
//! Report: target/identify-report.json. Timings are reported, never asserted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tee_risk::internals::risk::gallery::{Gallery, gallery_key};

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

/// Deterministic unit vectors (splitmix64, sums of uniforms): the same bytes for FAISS.
fn unit_vectors(count: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f32 / (1u64 << 53) as f32 - 0.5
    };
    let mut out = Vec::with_capacity(count * dim);
    for _ in 0..count {
        let v: Vec<f32> = (0..dim).map(|_| next() + next() + next()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        out.extend(v.iter().map(|x| x / norm));
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn write_f32(path: &Path, values: &[f32]) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for v in values {
        file.write_all(&v.to_le_bytes()).unwrap();
    }
}

/// FAISS IndexFlatIP on the same vectors: (p50, p99) milliseconds per single query.
fn faiss(dir: &Path, n: usize, dim: usize, queries: usize) -> Option<(f64, f64)> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python3");
    let output = std::process::Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/faiss_reference.py"))
        .arg(dir.join("gallery.f32"))
        .arg(dir.join("queries.f32"))
        .args([n.to_string(), dim.to_string(), queries.to_string()])
        .output()
        .ok()?;
    if !output.status.success() {
        eprintln!(
            "FAISS reference failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    Some((v["p50_ms"].as_f64()?, v["p99_ms"].as_f64()?))
}

/// Start-up: the service loads every enrolled user from the vault (decrypting each record)
/// into the index. Measured on sled with `users` enrolments, per user, to extrapolate.
fn startup(users: usize, dim: usize) -> serde_json::Value {
    use std::sync::Arc;
    use tee_risk::internals::store::{LEGACY_FACE_MODEL, MasterKey, SledStore, Store, Vault};
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let vault = Vault::open(store, &MasterKey::generate().unwrap()).unwrap();
    let vectors = unit_vectors(users, dim, 3);
    let started = Instant::now();
    for (i, v) in vectors.chunks_exact(dim).enumerate() {
        let id = format!("user-{i:07}");
        vault.enrol(&vault.user(&id), &id, v, 0, 5).unwrap();
    }
    vault.flush().unwrap();
    let enrol_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let gallery = Gallery::default();
    for (id, enrolment) in vault.enrolled_users().unwrap() {
        gallery.set(&id, &enrolment.templates_of(LEGACY_FACE_MODEL));
    }
    let load_secs = started.elapsed().as_secs_f64();
    assert_eq!(gallery.len(), users);
    let per_user_us = load_secs / users as f64 * 1e6;
    println!(
        "start-up: {users} users loaded from sled (decrypted) into the index in {load_secs:.2} s \
         ({per_user_us:.1} µs a user: {:.0} s for a million); enrolling them took {enrol_secs:.1} s",
        per_user_us
    );
    serde_json::json!({
        "users": users,
        "load_secs": load_secs,
        "load_us_per_user": per_user_us,
        "million_users_secs_extrapolated": per_user_us,
        "enrol_secs": enrol_secs,
    })
}

fn main() {
    // `cargo test` runs this binary without `--bench`: a quick pass that proves it works.
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let (default_sizes, default_queries): (&[usize], usize) = if benchmarking {
        (&[10_000, 100_000, 1_000_000], 200)
    } else {
        (&[2_000], 20)
    };
    let sizes = env_list("IDENTIFY_SIZES", default_sizes);
    let queries = env_list("IDENTIFY_QUERIES", &[default_queries])[0];
    let run_faiss = std::env::var("IDENTIFY_FAISS").map_or(benchmarking, |v| v != "0");
    let dim = 128;
    let dir = target_dir().join("identify-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let mut report = Vec::new();
    println!(
        "{:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "users",
        "p50 ms",
        "p99 ms",
        "f32 p50",
        "faiss p50",
        "faiss p99",
        "vs faiss",
        "build s",
        "MB"
    );
    for &n in &sizes {
        let vectors = unit_vectors(n, dim, 1);
        let probes = unit_vectors(queries, dim, 2);
        let started = Instant::now();
        let gallery = Gallery::default();
        let ids: Vec<String> = (0..n).map(|i| format!("user-{i:07}")).collect();
        for (i, v) in vectors.chunks_exact(dim).enumerate() {
            gallery.set(&ids[i], &[v]);
        }
        let build = started.elapsed().as_secs_f64();

        // Identification (top 5) and the conflict search at enrolment (top 1 but self).
        let mut times = Vec::with_capacity(queries);
        let mut checksum = 0.0f32;
        for probe in probes.chunks_exact(dim) {
            let t = Instant::now();
            let found = gallery.top_k(probe, 5);
            times.push(t.elapsed().as_secs_f64() * 1e3);
            checksum += found[0].similarity;
        }
        times.sort_by(f64::total_cmp);
        let mut conflict = Vec::with_capacity(queries);
        for (i, probe) in probes.chunks_exact(dim).enumerate() {
            let claimed = gallery_key(&ids[i % n]);
            let t = Instant::now();
            let found = gallery.best_other(probe, &claimed);
            conflict.push(t.elapsed().as_secs_f64() * 1e3);
            checksum += found.map_or(0.0, |c| c.similarity);
        }
        conflict.sort_by(f64::total_cmp);
        // The plain exact f32 scan it replaces (as the old gallery did); the index must give
        // the same best score on every query (exactness, checked here on the bench's data too).
        let mut plain = Vec::with_capacity(queries.min(50));
        for probe in probes.chunks_exact(dim).take(50) {
            let t = Instant::now();
            let best = vectors
                .chunks_exact(dim)
                .map(|c| {
                    tee_risk::internals::risk::cosine(
                        probe,
                        &tee_risk::internals::risk::centroid(&[c]),
                    )
                })
                .fold(f32::MIN, f32::max);
            plain.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(gallery.top_k(probe, 1)[0].similarity, best, "exact top-1");
            checksum += best;
        }
        plain.sort_by(f64::total_cmp);
        let faiss = if run_faiss {
            write_f32(&dir.join("gallery.f32"), &vectors);
            write_f32(&dir.join("queries.f32"), &probes);
            let found = faiss(&dir, n, dim, queries);
            assert!(
                found.is_some() || std::env::var_os("IDENTIFY_REQUIRE_FAISS").is_none(),
                "the FAISS reference did not run (make bench-pyenv installs it)"
            );
            found
        } else {
            None
        };
        let megabytes = (Gallery::bytes_per_user(dim) + 12) as f64 * n as f64 / 1e6;
        let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
        println!(
            "{n:>9} {p50:>9.3} {p99:>9.3} {:>10.3} {:>10} {:>10} {:>10} {build:>9.2} {megabytes:>9.0}",
            percentile(&plain, 0.5),
            faiss.map_or("-".into(), |f| format!("{:.3}", f.0)),
            faiss.map_or("-".into(), |f| format!("{:.3}", f.1)),
            faiss.map_or("-".into(), |f| format!("{:.2}x", f.0 / p50)),
        );
        report.push(serde_json::json!({
            "users": n,
            "identify_top5_p50_ms": p50,
            "identify_top5_p99_ms": p99,
            "conflict_search_p50_ms": percentile(&conflict, 0.5),
            "conflict_search_p99_ms": percentile(&conflict, 0.99),
            "plain_f32_scan_p50_ms": percentile(&plain, 0.5),
            "faiss_flat_ip_p50_ms": faiss.map(|f| f.0),
            "faiss_flat_ip_p99_ms": faiss.map(|f| f.1),
            "faiss_over_ours_p50": faiss.map(|f| f.0 / p50),
            "build_secs": build,
            "bytes_per_user": Gallery::bytes_per_user(dim) + 12,
            "checksum": checksum,
        }));
    }
    let startup_users = if benchmarking { 100_000 } else { 2_000 };
    let startup = startup(env_list("IDENTIFY_STARTUP_USERS", &[startup_users])[0], dim);
    let path = target_dir().join("identify-report.json");
    let report = serde_json::json!({ "searches": report, "startup": startup });
    std::fs::write(&path, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
    println!("report: {}", path.display());
}

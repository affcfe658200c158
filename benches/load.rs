//! The service load generator behind `make bench` (`cargo bench --bench load`).
//!
//! Starts the real `tee-risk` binary on a loopback port with a fresh database, enrols users
//! with real dlib embeddings (the dev set when `../shared` is beside the repository, else the
//! shipped samples), pre-builds unique encrypted assess requests (distinct `rid`, fresh SM2
//! session key each), then drives the server over real HTTP:
//! - closed loop: a fixed number of connections, each sending its next request as soon as
//!   the previous one is answered (throughput);
//! - open loop: requests scheduled at a fixed rate, latency counted from the scheduled send
//!   time, so a slow server cannot hide queueing delay (coordinated omission).
//!
//! Every phase is bounded in time and the run stops by itself. Results: a table on stdout and
//! `target/load-report.json`. Settings (environment): `LOAD_SECONDS` per phase (default 8),
//! `LOAD_CONCURRENCY` (default `1,4,16,64`), `LOAD_RATES` (default `250,500,1000,1500`),
//! `LOAD_SERVER_CONFIG` (a config file for the server, e.g. to try other thread counts;
//! by default one that switches the rate limits off, since one client sends everything).
//! No timing is asserted anywhere: this measures, it does not judge.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

#[path = "cpu/mod.rs"]
mod cpu;
#[path = "floor/mod.rs"]
mod floor;
#[path = "../tests/support/mod.rs"]
mod support;

use tee_risk::client::{Client, FeatureRequest, ServerKeys};
use tee_risk::internals::lab::{Dataset, new_capture};
use tee_risk::internals::obs::metrics::{Stage, sample};
use tee_risk::protocol::client_auth::ClientCredential;

/// Share of assess requests that claim another user's identity (impostors).
const IMPOSTOR_EVERY: usize = 10;
/// Threads that send in open-loop phases; enough that a slow answer never delays a send.
const OPEN_LOOP_SENDERS: usize = 64;

fn env_list(name: &str, default: &[u64]) -> Vec<u64> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .filter(|v: &Vec<u64>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// (identity, embedding) pairs: the dev set if present, else the shipped samples.
fn embeddings() -> (String, Vec<(String, Vec<f32>)>) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dev = support::dev_dataset_path();
    if let Ok(set) = Dataset::load(&dev) {
        let items = set
            .samples
            .into_iter()
            .map(|s| (s.identity, s.embedding))
            .collect();
        return (dev.display().to_string(), items);
    }
    let items = ["alice-enrol", "alice-probe", "mallory-probe"]
        .iter()
        .map(|name| {
            let path = manifest.join(format!("samples/{name}.json"));
            let features = tee_risk::client::read_features_file(&path).expect("shipped sample");
            (name.split('-').next().unwrap().to_owned(), features)
        })
        .collect();
    ("samples/ (../shared not found)".into(), items)
}

/// Users to enrol (one template each) and the probes to assess, as (user, features).
struct Workload {
    enrolments: Vec<(String, Vec<f32>)>,
    probes: Vec<(String, Vec<f32>)>,
}

fn workload(items: Vec<(String, Vec<f32>)>) -> Workload {
    let mut by_identity: BTreeMap<String, Vec<Vec<f32>>> = BTreeMap::new();
    for (identity, features) in items {
        by_identity.entry(identity).or_default().push(features);
    }
    let users: Vec<String> = by_identity.keys().cloned().collect();
    let mut enrolments = Vec::new();
    let mut probes = Vec::new();
    for (identity, mut images) in by_identity {
        enrolments.push((identity.clone(), images.remove(0)));
        probes.extend(images.into_iter().map(|f| (identity.clone(), f)));
    }
    if probes.is_empty() {
        probes = enrolments.clone();
    }
    // Every IMPOSTOR_EVERY-th probe claims the next user's account.
    for (i, probe) in probes.iter_mut().enumerate() {
        if i % IMPOSTOR_EVERY == IMPOSTOR_EVERY - 1 && users.len() > 1 {
            let index = users.iter().position(|u| *u == probe.0).unwrap_or(0);
            probe.0 = users[(index + 1) % users.len()].clone();
        }
    }
    Workload { enrolments, probes }
}

/// The operator token the load server is started with, to read `/metrics`.
const OPERATOR_TOKEN: &str = "load-generator-operator-token";

/// The real server, started by the tests' own fixture, with a fresh database in `dir`.
struct LoadServer {
    server: support::TestServer,
    _dir: tempfile::TempDir,
}

impl LoadServer {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = match std::env::var("LOAD_SERVER_CONFIG") {
            Ok(path) => path,
            // The engine is measured, not the rate limits: one client sends everything.
            Err(_) => support::unlimited_config(dir.path()),
        };
        let server =
            support::TestServer::builder(&dir.path().join("data"), &dir.path().join("keys"))
                .master_key(support::MASTER_KEY)
                .args(&["--config", &config])
                .env(&[
                    ("TEE_RISK_ADMIN_TOKEN", OPERATOR_TOKEN),
                    ("RUST_LOG", "warn"),
                ])
                .start();
        Self { server, _dir: dir }
    }

    /// User + system CPU seconds the server process has used so far.
    fn cpu_seconds(&self) -> f64 {
        cpu::pid_cpu_seconds(self.server.pid())
    }

    fn metrics(&self) -> String {
        self.server.metrics(OPERATOR_TOKEN)
    }
}

impl std::ops::Deref for LoadServer {
    type Target = support::TestServer;

    fn deref(&self) -> &support::TestServer {
        &self.server
    }
}

/// One pre-built request: the envelope body, ready to post.
struct Prepared {
    body: Vec<u8>,
    /// Signed ahead, like the sealing, so the run measures the server.
    authorization: String,
}

/// Seals `count` unique assess requests, cycling through the probes, on every core.
fn prepare(
    keys: &ServerKeys,
    credential: &ClientCredential,
    url: &str,
    probes: &[(String, Vec<f32>)],
    count: usize,
) -> Vec<Prepared> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunks: Vec<Vec<Prepared>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let client = Client::with_keys(url, keys.clone());
                    (t..count)
                        .step_by(threads)
                        .map(|i| {
                            let (user, features) = &probes[i % probes.len()];
                            let request = FeatureRequest {
                                user_id: user.clone(),
                                features: new_capture(features, i),
                                liveness: Some(0.95),
                                device_id: Some(format!("device-{}", i % 97)),
                                face_model: None,
                            };
                            let (_, body) = client.seal(&request).expect("seal");
                            let authorization = credential
                                .authorization("POST", "/v1/assess", &body)
                                .expect("sign");
                            Prepared {
                                body,
                                authorization,
                            }
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    chunks.into_iter().flatten().collect()
}

#[derive(Default)]
struct Outcome {
    /// Latency of each answered request, in microseconds.
    latencies_us: Vec<u64>,
    errors: usize,
    statuses: BTreeMap<u16, usize>,
    /// Open loop: sends that started more than 1 ms after their scheduled time.
    late_sends: usize,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        self.late_sends += other.late_sends;
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
    }

    fn record(&mut self, status: Option<u16>, latency: Duration) {
        match status {
            Some(200) => self.latencies_us.push(latency.as_micros() as u64),
            Some(other) => {
                self.errors += 1;
                *self.statuses.entry(other).or_default() += 1;
            }
            None => self.errors += 1,
        }
    }
}

fn post(client: &Client, request: &Prepared) -> Option<u16> {
    client
        .send_with_authorization(
            "POST",
            "/v1/assess",
            &request.body,
            Some(&request.authorization),
        )
        .ok()
        .map(|r| r.status)
}

/// `connections` senders, each posting its next request when the previous one is answered,
/// until `deadline` or the requests run out.
fn closed_loop(
    url: &str,
    keys: &ServerKeys,
    requests: &[Prepared],
    connections: usize,
    duration: Duration,
) -> Outcome {
    let next = AtomicUsize::new(0);
    let total = Mutex::new(Outcome::default());
    let deadline = Instant::now() + duration;
    std::thread::scope(|scope| {
        for _ in 0..connections {
            scope.spawn(|| {
                let client = Client::with_keys(url, keys.clone());
                let mut outcome = Outcome::default();
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(request) = requests.get(i) else {
                        break;
                    };
                    let start = Instant::now();
                    let status = post(&client, request);
                    outcome.record(status, start.elapsed());
                }
                total.lock().unwrap().merge(outcome);
            });
        }
    });
    total.into_inner().unwrap()
}

/// Requests sent at `rate` per second on a fixed schedule; latency counts from the scheduled
/// time.
fn open_loop(url: &str, keys: &ServerKeys, requests: &[Prepared], rate: u64) -> Outcome {
    let next = AtomicUsize::new(0);
    let total = Mutex::new(Outcome::default());
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now() + Duration::from_millis(50);
    std::thread::scope(|scope| {
        for _ in 0..OPEN_LOOP_SENDERS {
            scope.spawn(|| {
                let client = Client::with_keys(url, keys.clone());
                let mut outcome = Outcome::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(request) = requests.get(i) else {
                        break;
                    };
                    let scheduled = start + interval * i as u32;
                    let now = Instant::now();
                    if scheduled > now {
                        std::thread::sleep(scheduled - now);
                    } else if now - scheduled > Duration::from_millis(1) {
                        outcome.late_sends += 1;
                    }
                    let status = post(&client, request);
                    outcome.record(status, scheduled.elapsed());
                }
                total.lock().unwrap().merge(outcome);
            });
        }
    });
    total.into_inner().unwrap()
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

/// Mean (wall, CPU) microseconds per request of each stage between two `/metrics` snapshots.
fn breakdown(before: &str, after: &str) -> Vec<(String, f64, f64)> {
    let delta = |series: String| {
        sample(after, &series).unwrap_or(0.0) - sample(before, &series).unwrap_or(0.0)
    };
    Stage::ALL
        .iter()
        .map(|stage| {
            let label = format!("{{stage=\"{}\"}}", stage.name());
            let wall = delta(format!("tee_risk_stage_seconds_total{label}"));
            let cpu = delta(format!("tee_risk_stage_cpu_seconds_total{label}"));
            let count = delta(format!("tee_risk_stage_total{label}")).max(1.0);
            (
                stage.name().to_owned(),
                wall / count * 1e6,
                cpu / count * 1e6,
            )
        })
        .collect()
}

/// Median of 200 fsyncs after a 4 KiB write, in a file of a temporary folder (the
/// filesystem the server's data folder is on), in microseconds.
fn fsync_median_us() -> f64 {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut file = std::fs::File::create(dir.path().join("fsync-probe")).expect("probe file");
    let mut times: Vec<f64> = (0..200)
        .map(|_| {
            file.write_all(&[0x5a; 4096]).expect("write");
            let started = Instant::now();
            file.sync_data().expect("fsync");
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

struct Phase {
    name: String,
    kind: &'static str,
    setting: u64,
    outcome: Outcome,
    wall_seconds: f64,
    server_cpu_seconds: f64,
    client_cpu_seconds: f64,
    stages: Vec<(String, f64, f64)>,
    commits: f64,
    flushes: f64,
}

impl Phase {
    fn answered(&self) -> usize {
        self.outcome.latencies_us.len()
    }

    fn throughput(&self) -> f64 {
        self.answered() as f64 / self.wall_seconds
    }

    fn server_cpu_us_per_request(&self) -> f64 {
        self.server_cpu_seconds / (self.answered() + self.outcome.errors).max(1) as f64 * 1e6
    }

    fn to_json(&self, sorted: &[u64]) -> serde_json::Value {
        json!({
            "phase": self.name,
            "kind": self.kind,
            "setting": self.setting,
            "answered": self.answered(),
            "errors": self.outcome.errors,
            "error_statuses": self.outcome.statuses,
            "late_sends": self.outcome.late_sends,
            "wall_seconds": self.wall_seconds,
            "throughput_rps": self.throughput(),
            "latency_ms": {
                "p50": percentile(sorted, 50.0),
                "p90": percentile(sorted, 90.0),
                "p99": percentile(sorted, 99.0),
                "max": percentile(sorted, 100.0),
            },
            "server_cpu_us_per_request": self.server_cpu_us_per_request(),
            "client_cpu_us_per_request":
                self.client_cpu_seconds / self.answered().max(1) as f64 * 1e6,
            "stage_mean_us": self
                .stages
                .iter()
                .map(|(stage, wall, cpu)| (stage.clone(), json!({"wall": wall, "cpu": cpu})))
                .collect::<BTreeMap<_, _>>(),
            "commits": self.commits,
            "fsyncs": self.flushes,
        })
    }
}

fn run_phase(
    server: &LoadServer,
    keys: &ServerKeys,
    probes: &[(String, Vec<f32>)],
    kind: &'static str,
    setting: u64,
    seconds: u64,
    closed_loop_budget: usize,
) -> Phase {
    let count = match kind {
        "closed" => closed_loop_budget,
        _ => (setting * seconds) as usize,
    };
    let requests = prepare(keys, &server.credential, &server.url, probes, count);
    let before = server.metrics();
    let (server_cpu, client_cpu) = (
        server.cpu_seconds(),
        cpu::process_cpu_seconds("/proc/self/stat"),
    );
    let start = Instant::now();
    let outcome = match kind {
        "closed" => closed_loop(
            &server.url,
            keys,
            &requests,
            setting as usize,
            Duration::from_secs(seconds),
        ),
        _ => open_loop(&server.url, keys, &requests, setting),
    };
    let wall_seconds = start.elapsed().as_secs_f64();
    let server_cpu_seconds = server.cpu_seconds() - server_cpu;
    let client_cpu_seconds = cpu::process_cpu_seconds("/proc/self/stat") - client_cpu;
    let after = server.metrics();
    let delta = |series: &str| {
        sample(&after, series).unwrap_or(0.0) - sample(&before, series).unwrap_or(0.0)
    };
    let name = match kind {
        "closed" => format!("closed c={setting}"),
        _ => format!("open {setting}/s"),
    };
    Phase {
        name,
        kind,
        setting,
        wall_seconds,
        server_cpu_seconds,
        client_cpu_seconds,
        stages: breakdown(&before, &after),
        commits: delta("tee_risk_store_commits_total"),
        flushes: delta("tee_risk_store_flushes_total"),
        outcome,
    }
}

fn main() {
    // `cargo bench` passes `--bench`. Under `cargo test --all-targets` (no `--bench`) this
    // runs as a smoke test: one short phase of each kind, proving the tool works end to end.
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let (seconds, concurrency, rates) = if benchmarking {
        (
            env_list("LOAD_SECONDS", &[8])[0].clamp(1, 60),
            env_list("LOAD_CONCURRENCY", &[1, 4, 16, 64]),
            env_list("LOAD_RATES", &[250, 500, 1000, 1500]),
        )
    } else {
        (1, vec![2], vec![20])
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let (source, items) = embeddings();
    let workload = workload(items);
    let server = LoadServer::start();
    let admin = Client::fetch_keys(&server.url)
        .expect("GET /v1/keys")
        .with_credential(server.credential.clone());
    let keys = admin.keys().clone();
    for (user, features) in &workload.enrolments {
        admin
            .enroll(&FeatureRequest {
                user_id: user.clone(),
                features: features.clone(),
                liveness: None,
                device_id: None,
                face_model: None,
            })
            .expect("enrol");
    }
    println!(
        "load: {} users enrolled, {} probe embeddings from {source}; server {} on {cores} cores; \
         {seconds} s per phase",
        workload.enrolments.len(),
        workload.probes.len(),
        server.url
    );

    // A short closed-loop warm-up sizes the request budget of the closed-loop phases.
    let budget = if benchmarking {
        let warm = run_phase(&server, &keys, &workload.probes, "closed", 16, 2, 4000);
        ((warm.throughput() * 1.5).max(500.0) * seconds as f64) as usize
    } else {
        40
    };

    let mut phases = Vec::new();
    for &c in &concurrency {
        phases.push(run_phase(
            &server,
            &keys,
            &workload.probes,
            "closed",
            c,
            seconds,
            budget,
        ));
    }
    for &rate in &rates {
        phases.push(run_phase(
            &server,
            &keys,
            &workload.probes,
            "open",
            rate,
            seconds,
            0,
        ));
    }

    // Issue 31's second open-loop point: half the best closed-loop throughput of this run.
    let best_closed = phases
        .iter()
        .filter(|p| p.kind == "closed")
        .map(Phase::throughput)
        .fold(0.0, f64::max);
    let half_best = ((best_closed / 2.0).round() as u64).max(1);
    phases.push(run_phase(
        &server,
        &keys,
        &workload.probes,
        "open",
        half_best,
        seconds,
        0,
    ));

    // Measured here, after the load (the server stopped): the same operations as criterion's
    // `crypto_floor_per_request`, so that this bench needs no other to have run first.
    let (floor_us, old_floor_us) = floor::crypto_floor_us(Duration::from_secs(2));
    let floor_us = Some(floor_us);
    println!();
    println!(
        "{:<14} {:>8} {:>6} {:>9} {:>8} {:>8} {:>8} {:>8} {:>11} {:>11}",
        "phase",
        "answered",
        "errors",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "srv CPU µs",
        "fsync/req"
    );
    let mut reports = Vec::new();
    for phase in &mut phases {
        phase.outcome.latencies_us.sort_unstable();
        let sorted = &phase.outcome.latencies_us;
        println!(
            "{:<14} {:>8} {:>6} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>11.0} {:>11.3}",
            phase.name,
            sorted.len(),
            phase.outcome.errors,
            phase.throughput(),
            percentile(sorted, 50.0),
            percentile(sorted, 90.0),
            percentile(sorted, 99.0),
            percentile(sorted, 100.0),
            phase.server_cpu_us_per_request(),
            phase.flushes / phase.commits.max(1.0),
        );
        reports.push(phase.to_json(sorted));
    }

    let best = phases
        .iter()
        .filter(|p| p.kind == "closed")
        .max_by(|a, b| a.throughput().total_cmp(&b.throughput()))
        .expect("at least one closed-loop phase");
    let quiet = &phases[0];
    println!(
        "\nwhere a request's time goes (mean µs per request; wall includes waiting for a core, \
         a lock or the disk):"
    );
    println!(
        "  {:<16} {:>12} {:>12} {:>12} {:>12}",
        "stage",
        format!("{} wall", quiet.name),
        "cpu",
        format!("{} wall", best.name),
        "cpu"
    );
    for ((stage, wall, cpu), (_, best_wall, best_cpu)) in quiet.stages.iter().zip(&best.stages) {
        println!("  {stage:<16} {wall:>12.1} {cpu:>12.1} {best_wall:>12.1} {best_cpu:>12.1}");
    }
    let staged = |p: &Phase| p.stages.iter().map(|(_, _, cpu)| cpu).sum::<f64>();
    println!(
        "  {:<16} {:>12} {:>12.1} {:>12} {:>12.1}",
        "(stages, CPU)",
        "",
        staged(quiet),
        "",
        staged(best)
    );
    println!(
        "  {:<16} {:>12} {:>12.1} {:>12} {:>12.1}",
        "(whole process)",
        "",
        quiet.server_cpu_us_per_request(),
        "",
        best.server_cpu_us_per_request()
    );
    let floor = floor_us.map(|floor| {
        let floor_rps = cores as f64 * 1e6 / floor;
        println!(
            "\ncrypto floor (one core, measured now): {floor:.0} µs CPU = {floor_rps:.0} \
             req/s on {cores} cores\n  best throughput {:.0} req/s = {:.0} % of the floor; server \
             CPU per request {:.0} µs = floor × {:.2}",
            best.throughput(),
            100.0 * best.throughput() / floor_rps,
            best.server_cpu_us_per_request(),
            best.server_cpu_us_per_request() / floor
        );
        println!(
            "  the floor on the path before issue 31 (RustCrypto's verifier for the client's \
             key, decryption and signing key), measured now, taking turns: {old_floor_us:.0} µs; today's \
             ÷ that: {:.2}",
            floor / old_floor_us
        );
        json!({
            "floor_us": floor,
            "old_path_floor_us": old_floor_us,
            "floor_vs_old_path": floor / old_floor_us,
            "floor_rps": floor_rps,
            "best_phase": best.name,
            "best_rps": best.throughput(),
            "throughput_vs_floor": best.throughput() / floor_rps,
            "server_cpu_vs_floor": best.server_cpu_us_per_request() / floor,
        })
    });
    let half = phases.last().expect("the half-best phase");
    let half_p99 = percentile(&half.outcome.latencies_us, 99.0);
    println!(
        "open loop at half the best closed-loop throughput ({half_best}/s): p99 {half_p99:.2} ms"
    );
    let open_at_half_best = json!({
        "rate": half_best,
        "best_closed_rps": best_closed,
        "p99_ms": half_p99,
    });
    // The store's durability against the disk it sits on: the `durable` stage of the
    // quietest phase (one request at a time) beside a single fsync of this filesystem.
    let fsync_us = fsync_median_us();
    let durable_us = quiet
        .stages
        .iter()
        .find(|(stage, _, _)| stage == "durable")
        .map_or(0.0, |(_, wall, _)| *wall);
    println!(
        "durable at {}: {durable_us:.0} µs wall = {:.2} × one fsync of this filesystem \
         ({fsync_us:.0} µs, median of 200)",
        quiet.name,
        durable_us / fsync_us
    );
    let durability = json!({
        "phase": quiet.name,
        "durable_wall_us": durable_us,
        "fsync_us": fsync_us,
        "durable_vs_fsync": durable_us / fsync_us,
    });
    let report = json!({
        "durability": durability,
        "embeddings": source,
        "cores": cores,
        "seconds_per_phase": seconds,
        "phases": reports,
        "floor": floor,
        "open_at_half_best": open_at_half_best,
    });
    let path = target_dir().join("load-report.json");
    std::fs::create_dir_all(target_dir()).ok();
    std::fs::write(&path, serde_json::to_vec_pretty(&report).unwrap()).expect("write report");
    println!("\nfull report: {}", path.display());
    // Under `cargo test` (smoke) and in `make bench-smoke` every request must be answered:
    // an error there is a broken tool or server, not a figure.
    let require = !benchmarking || std::env::var_os("LOAD_REQUIRE_NO_ERRORS").is_some();
    let errors: usize = phases.iter().map(|p| p.outcome.errors).sum();
    assert!(
        !require || errors == 0,
        "{errors} requests failed (see the table above)"
    );
}

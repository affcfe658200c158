//! In-process counters behind `GET /metrics` (Prometheus text format): requests by route and
//! status, decisions, store commits, and the CPU-side time spent in each stage of the request
//! flow, so that `make bench` can say where a request's time goes.
//!
//! Only aggregates are kept: no request id, user id, key or feature value ever reaches a
//! counter or a label.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use cpu_time::ThreadTime;

/// The stages of one encrypted request, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for a blocking thread after the body arrived.
    Queue,
    /// Verifying the client's SM2 signature over the request, and its rate limit.
    ClientAuth,
    /// JSON + base64url of the envelope, header checks, replay lookup.
    EnvelopeParse,
    /// SM2 decryption of the session key.
    Sm2Unwrap,
    /// SM4-GCM authentication and decryption of the payload.
    Sm4GcmOpen,
    /// Parsing and validating the decrypted feature message.
    PayloadParse,
    /// Reading and decrypting the user's templates, then scoring.
    Score,
    /// Sealing the records and writing them to sled (in memory, not yet durable).
    StoreWrite,
    /// Waiting until the write is on disk (group commit: one fsync serves many requests).
    Durable,
    /// SM3 of the request and SM2 signature of the answer.
    Sign,
}

impl Stage {
    pub const ALL: [Stage; 10] = [
        Stage::Queue,
        Stage::ClientAuth,
        Stage::EnvelopeParse,
        Stage::Sm2Unwrap,
        Stage::Sm4GcmOpen,
        Stage::PayloadParse,
        Stage::Score,
        Stage::StoreWrite,
        Stage::Durable,
        Stage::Sign,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Queue => "queue",
            Stage::ClientAuth => "client_auth",
            Stage::EnvelopeParse => "envelope_parse",
            Stage::Sm2Unwrap => "sm2_unwrap",
            Stage::Sm4GcmOpen => "sm4_gcm_open",
            Stage::PayloadParse => "payload_parse",
            Stage::Score => "score",
            Stage::StoreWrite => "store_write",
            Stage::Durable => "durable",
            Stage::Sign => "sign",
        }
    }
}

const STAGES: usize = Stage::ALL.len();

#[derive(Default)]
struct Counter {
    count: AtomicU64,
    /// Wall-clock time, including waits (for a CPU, a lock, the disk).
    nanos: AtomicU64,
    /// CPU time of the thread that ran the stage.
    cpu_nanos: AtomicU64,
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl Counter {
    fn add(&self, wall: Duration, cpu: Duration) {
        self.count.fetch_add(1, Relaxed);
        self.nanos.fetch_add(nanos(wall), Relaxed);
        self.cpu_nanos.fetch_add(nanos(cpu), Relaxed);
    }
}

/// (route, HTTP status).
type RouteStatus = (&'static str, u16);
/// Upper bounds (seconds) of the latency histogram's buckets; `+Inf` is implied.
const LATENCY_BUCKETS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
/// Per route: count in each bucket (not cumulative), then the total count and seconds.
type Histogram = ([u64; LATENCY_BUCKETS.len()], u64, f64);
/// (count, total seconds from the handler's start to the answer built).
type RequestTotals = (u64, f64);

/// The service's counters; cheap enough to update on every request (relaxed atomics).
pub struct Metrics {
    stages: [Counter; STAGES],
    /// The decisions' names, from the layer that owns them (`risk::Decision::NAMES`: obs
    /// imports nothing above it), and a counter for each, in the same order.
    decision_names: &'static [&'static str],
    decisions: Box<[AtomicU64]>,
    commits: AtomicU64,
    flushes: AtomicU64,
    requests: Mutex<BTreeMap<RouteStatus, RequestTotals>>,
    latencies: Mutex<BTreeMap<&'static str, Histogram>>,
    /// Refused requests by error code (replays, failed authentication, rate limits…).
    refusals: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    /// Counters at zero, with one decision counter per name in `decision_names`.
    pub fn new(decision_names: &'static [&'static str]) -> Self {
        Self {
            stages: Default::default(),
            decision_names,
            decisions: decision_names.iter().map(|_| AtomicU64::new(0)).collect(),
            commits: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            requests: Mutex::default(),
            latencies: Mutex::default(),
            refusals: Mutex::default(),
        }
    }

    /// Charges `wall` (and `cpu` of the running thread) to `stage`.
    pub fn record_stage(&self, stage: Stage, wall: Duration, cpu: Duration) {
        self.stages[stage as usize].add(wall, cpu);
    }

    /// One assessment answered with the decision at `index` of the names given to
    /// [`Metrics::new`]. An index past them is a bug of the caller: counted nowhere, rather
    /// than under another decision.
    pub fn record_decision(&self, index: usize) {
        debug_assert!(index < self.decisions.len(), "decision index {index}");
        if let Some(counter) = self.decisions.get(index) {
            counter.fetch_add(1, Relaxed);
        }
    }

    /// One durable commit; `flushed` when this request ran the fsync itself.
    pub fn record_commit(&self, flushed: bool) {
        self.commits.fetch_add(1, Relaxed);
        if flushed {
            self.flushes.fetch_add(1, Relaxed);
        }
    }

    pub fn record_request(&self, route: &'static str, status: u16, elapsed: Duration) {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let entry = requests.entry((route, status)).or_insert((0, 0.0));
        entry.0 += 1;
        entry.1 += elapsed.as_secs_f64();
        drop(requests);
        let seconds = elapsed.as_secs_f64();
        let mut latencies = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        let histogram = latencies
            .entry(route)
            .or_insert(([0; LATENCY_BUCKETS.len()], 0, 0.0));
        if let Some(bucket) = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            histogram.0[bucket] += 1;
        }
        histogram.1 += 1;
        histogram.2 += seconds;
    }

    /// A refused request, by its error code.
    pub fn record_refusal(&self, code: &'static str) {
        let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        *refusals.entry(code).or_default() += 1;
    }

    /// Total (count, wall seconds, CPU seconds) of a stage so far.
    pub fn stage_total(&self, stage: Stage) -> (u64, f64, f64) {
        let counter = &self.stages[stage as usize];
        (
            counter.count.load(Relaxed),
            counter.nanos.load(Relaxed) as f64 / 1e9,
            counter.cpu_nanos.load(Relaxed) as f64 / 1e9,
        )
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        for (name, kind, help) in FAMILIES {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        }
        self.render_stages(&mut out);
        self.render_http(&mut out);
        let refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        for (code, count) in refusals.iter() {
            let _ = writeln!(out, "tee_risk_refusals_total{{code=\"{code}\"}} {count}");
        }
        out
    }

    /// The request stages, decisions and commits.
    fn render_stages(&self, out: &mut String) {
        for stage in Stage::ALL {
            let (count, seconds, cpu_seconds) = self.stage_total(stage);
            let name = stage.name();
            let _ = writeln!(
                out,
                "tee_risk_stage_seconds_total{{stage=\"{name}\"}} {seconds:.9}\n\
                 tee_risk_stage_cpu_seconds_total{{stage=\"{name}\"}} {cpu_seconds:.9}\n\
                 tee_risk_stage_total{{stage=\"{name}\"}} {count}"
            );
        }
        for (decision, count) in self.decision_names.iter().zip(self.decisions.iter()) {
            let _ = writeln!(
                out,
                "tee_risk_decisions_total{{decision=\"{}\"}} {}",
                decision,
                count.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "tee_risk_store_commits_total {}\ntee_risk_store_flushes_total {}",
            self.commits.load(Relaxed),
            self.flushes.load(Relaxed)
        );
    }

    /// Requests by route and status, and the latency histograms by route.
    fn render_http(&self, out: &mut String) {
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        for ((route, status), (count, seconds)) in requests.iter() {
            let _ = writeln!(
                out,
                "tee_risk_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}\n\
                 tee_risk_http_request_seconds_total{{route=\"{route}\",status=\"{status}\"}} \
                 {seconds:.9}"
            );
        }
        drop(requests);
        let latencies = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        for (route, (buckets, count, seconds)) in latencies.iter() {
            let mut cumulative = 0;
            for (bound, n) in LATENCY_BUCKETS.iter().zip(buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "tee_risk_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "tee_risk_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}\n\
                 tee_risk_http_request_duration_seconds_sum{{route=\"{route}\"}} {seconds:.9}\n\
                 tee_risk_http_request_duration_seconds_count{{route=\"{route}\"}} {count}"
            );
        }
    }

    /// Gauges of the store's size, appended to [`Metrics::render`]'s text.
    /// The records-per-table gauge (counters the vault keeps: no store access).
    pub fn render_store_sizes(sizes: &BTreeMap<&'static str, u64>) -> String {
        let mut out = String::from(
            "# HELP tee_risk_store_records Records per table (counted since start).\n# TYPE tee_risk_store_records gauge\n",
        );
        for (table, count) in sizes {
            let _ = writeln!(out, "tee_risk_store_records{{table=\"{table}\"}} {count}");
        }
        out
    }
}

/// The metric families [`Metrics::render`] writes: name, type, help.
const FAMILIES: [(&str, &str, &str); 10] = [
    (
        "tee_risk_stage_seconds_total",
        "counter",
        "Wall-clock time spent in each stage of encrypted requests.",
    ),
    (
        "tee_risk_stage_cpu_seconds_total",
        "counter",
        "CPU time of the serving thread in each stage of encrypted requests.",
    ),
    (
        "tee_risk_stage_total",
        "counter",
        "Encrypted requests that reached each stage.",
    ),
    (
        "tee_risk_decisions_total",
        "counter",
        "Assessments by decision.",
    ),
    (
        "tee_risk_store_commits_total",
        "counter",
        "Requests whose writes were made durable.",
    ),
    (
        "tee_risk_store_flushes_total",
        "counter",
        "fsyncs performed; commits / flushes is the group-commit batch size.",
    ),
    (
        "tee_risk_http_requests_total",
        "counter",
        "Requests by route and status.",
    ),
    (
        "tee_risk_http_request_seconds_total",
        "counter",
        "Time from the handler's start to the answer built, by route and status.",
    ),
    (
        "tee_risk_http_request_duration_seconds",
        "histogram",
        "Time from the handler's start to the answer built, by route.",
    ),
    (
        "tee_risk_refusals_total",
        "counter",
        "Refused encrypted requests by error code (replays, authentication, limits…).",
    ),
];

/// Times consecutive stages of one request: each [`StageTimer::lap`] charges the time since
/// the previous lap to the named stage.
pub struct StageTimer<'a> {
    metrics: &'a Metrics,
    last: Instant,
    last_cpu: ThreadTime,
}

impl<'a> StageTimer<'a> {
    pub fn start(metrics: &'a Metrics) -> Self {
        Self {
            metrics,
            last: Instant::now(),
            last_cpu: ThreadTime::now(),
        }
    }

    pub fn lap(&mut self, stage: Stage) {
        let (now, now_cpu) = (Instant::now(), ThreadTime::now());
        let cpu = now_cpu.duration_since(self.last_cpu);
        self.metrics.record_stage(stage, now - self.last, cpu);
        self.last = now;
        self.last_cpu = now_cpu;
    }
}

/// Parses one sample `name{labels} value` out of a [`Metrics::render`] text; `None` when
/// absent. For clients, the load generator and tests.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_accumulate_and_render() {
        let metrics = Metrics::new(&["allow", "step_up", "deny"]);
        let us = Duration::from_micros;
        metrics.record_stage(Stage::Sm2Unwrap, us(200), us(150));
        metrics.record_stage(Stage::Sm2Unwrap, us(300), us(250));
        metrics.record_decision(2);
        metrics.record_commit(true);
        metrics.record_commit(false);
        metrics.record_request("assess", 200, Duration::from_millis(2));
        let text = metrics.render();
        assert_eq!(
            sample(&text, "tee_risk_stage_seconds_total{stage=\"sm2_unwrap\"}"),
            Some(0.0005)
        );
        assert_eq!(
            sample(
                &text,
                "tee_risk_stage_cpu_seconds_total{stage=\"sm2_unwrap\"}"
            ),
            Some(0.0004)
        );
        assert_eq!(
            sample(&text, "tee_risk_stage_total{stage=\"sm2_unwrap\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "tee_risk_decisions_total{decision=\"deny\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "tee_risk_decisions_total{decision=\"allow\"}"),
            Some(0.0)
        );
        assert_eq!(sample(&text, "tee_risk_store_commits_total"), Some(2.0));
        assert_eq!(sample(&text, "tee_risk_store_flushes_total"), Some(1.0));
        assert_eq!(
            sample(
                &text,
                "tee_risk_http_requests_total{route=\"assess\",status=\"200\"}"
            ),
            Some(1.0)
        );
        assert_eq!(sample(&text, "tee_risk_no_such_series"), None);
    }

    #[test]
    fn timer_charges_each_lap_to_its_stage() {
        let metrics = Metrics::new(&["allow", "step_up", "deny"]);
        let mut timer = StageTimer::start(&metrics);
        timer.lap(Stage::EnvelopeParse);
        timer.lap(Stage::Sign);
        assert_eq!(metrics.stage_total(Stage::EnvelopeParse).0, 1);
        assert_eq!(metrics.stage_total(Stage::Sign).0, 1);
        assert_eq!(metrics.stage_total(Stage::Score).0, 0);
    }
}

//! The configuration's sections, each with the rules it keeps on its own (`checks`); the
//! rules between sections are `Config::between_sections`.

use std::path::PathBuf;

use serde::Deserialize;

use crate::attest::TeeKind;
use crate::risk::RiskConfig;

/// A rule and the message given when it does not hold.
pub(super) type Check = (bool, &'static str);

/// Replicas acting as one service (`app::join`, `service::cluster`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Peers' operator listeners (`http://host:port`); empty: a cluster of one.
    pub peers: Vec<String>,
    /// When no peer answers, generate the cluster's identity (the first replica).
    pub bootstrap: bool,
    /// The policy peers and joiners verify each other under (a client policy file).
    pub policy: PathBuf,
    /// A replica that has not joined within this many seconds exits instead of serving.
    pub join_timeout_secs: u64,
}

impl ClusterConfig {
    /// Whether this replica takes part in a cluster (serves joins, or joins).
    pub fn enabled(&self) -> bool {
        self.bootstrap || !self.peers.is_empty()
    }
}

/// Token-bucket rate limits (0 per minute: no limit).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub client_per_minute: u32,
    pub client_burst: u32,
    pub user_per_minute: u32,
    pub user_burst: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// The registered clients (`docs/OPERATIONS.md`); empty: only the development client,
    /// and only in dev mode.
    pub clients_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationConfig {
    /// `sim` (refused on a machine with a TEE device), `snp` (inside an SEV-SNP guest) or
    /// `csv` (inside a Hygon CSV guest; builds with the `csv` feature).
    pub mode: TeeKind,
    /// Measurement reported in sim mode, 64 hex digits; empty: SM3 of the executable.
    pub sim_measurement: String,
    /// sim mode: the sim platform's private key file; empty: in the data folder. The
    /// replicas of a sim cluster share one, as real ones share a vendor's root.
    #[serde(default)]
    pub sim_platform_key_file: PathBuf,
    /// csv mode: the chip's HSK ‖ CEK file from Hygon's key server, sent inline with the
    /// evidence; empty: verifiers need it in their offline folder.
    #[serde(default)]
    pub csv_hsk_cek_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    /// A second listener for the operator endpoints (`/metrics`, `/admin/…`), which then
    /// answer only there; empty: they share `listen`.
    pub operator_listen: String,
    /// Largest accepted body, in bytes.
    pub max_body_bytes: usize,
    /// Seconds a body may take to arrive whole after its headers.
    pub body_deadline_secs: u64,
    /// Bytes all bodies being read may hold together.
    pub bodies_in_flight_bytes: usize,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// Threads per HTTP worker for the CPU and fsync work of requests; more wait in line.
    pub blocking_threads_per_worker: usize,
    /// Whether to run in development mode (generated master key kept beside the data).
    pub dev: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// sled's folder, the high-water mark and (in dev mode) the dev master key.
    pub data_dir: PathBuf,
    /// `sled` (one machine, embedded) or `postgres` (replicas sharing one database; the URL
    /// comes from `TEE_RISK_DATABASE_URL`, never from this file).
    pub backend: StorageBackend,
    /// postgres: connections per replica at most.
    pub pool_size: u32,
    /// postgres: bound on connecting and on every statement, in seconds; past it a request
    /// gets `503 storage_unavailable` instead of waiting.
    pub timeout_secs: u64,
    /// postgres: the CA certificates (PEM) the server's certificate must chain to, for the
    /// URL's `sslmode=verify-full` (or `verify-ca`); empty: none (the URL's `sslrootcert`
    /// may name one). docs/OPERATIONS.md, "PostgreSQL over TLS".
    #[serde(default)]
    pub postgres_ca_file: PathBuf,
}

impl StorageConfig {
    /// `postgres_ca_file`, when set.
    pub fn postgres_ca(&self) -> Option<PathBuf> {
        (!self.postgres_ca_file.as_os_str().is_empty()).then(|| self.postgres_ca_file.clone())
    }
}

/// Where the records live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Sled,
    Postgres,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Where the identity public key is written as PEM for clients that pin it.
    pub dir: PathBuf,
    /// Validity of each encryption key; a new one is issued when the newest expires.
    pub encryption_key_lifetime_secs: i64,
    /// How long an expired encryption key still decrypts before it is wiped.
    pub encryption_key_grace_secs: i64,
    /// Where the DB master key comes from: `env` (`DB_MASTER_KEY`, or the dev key) or
    /// `custodians` (k of n custodians unseal the service: `service::custody`).
    pub source: MasterKeySourceConfig,
    /// The custodians file (`threshold`, `[[custodian]] name, public_key`), for `source =
    /// "custodians"`.
    pub custodians_file: PathBuf,
}

/// `[keys] source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MasterKeySourceConfig {
    Env,
    Custodians,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtocolConfig {
    /// Accepted |now − iat| in seconds.
    pub iat_window_secs: i64,
    /// Request ids remembered at most; beyond this, requests get 503 until ids expire.
    pub replay_cache_capacity: usize,
}

/// `[features]`: the face models this deployment accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturesConfig {
    /// What a request without `face_model` means (v1.1 and v1.2 clients).
    pub default_model: String,
    pub models: Vec<FaceModelConfig>,
}

/// One accepted face model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaceModelConfig {
    /// The id requests name in `face_model`.
    pub id: String,
    /// Its embedding dimension.
    pub dimension: usize,
    /// Its risk model (`tee-risk train --face-model <id>`); "" = the one shipped for `id`.
    pub model_file: PathBuf,
    /// This model's own decision thresholds, where its measurements call for other values
    /// than `[risk]`'s (absent: `[risk]`'s). Each is a false-match rate in (0, 1].
    #[serde(default)]
    pub allow_max_fmr: Option<f64>,
    #[serde(default)]
    pub step_up_max_fmr: Option<f64>,
    #[serde(default)]
    pub conflict_max_fmr: Option<f64>,
    #[serde(default)]
    pub enrolment_conflict_max_fmr: Option<f64>,
    #[serde(default)]
    pub identify_max_fmr: Option<f64>,
}

impl FaceModelConfig {
    /// `[risk]` with this model's thresholds in place of the shared ones.
    pub(super) fn risk(&self, shared: &RiskConfig) -> RiskConfig {
        RiskConfig {
            allow_max_fmr: self.allow_max_fmr.unwrap_or(shared.allow_max_fmr),
            step_up_max_fmr: self.step_up_max_fmr.unwrap_or(shared.step_up_max_fmr),
            conflict_max_fmr: self.conflict_max_fmr.unwrap_or(shared.conflict_max_fmr),
            enrolment_conflict_max_fmr: self
                .enrolment_conflict_max_fmr
                .unwrap_or(shared.enrolment_conflict_max_fmr),
            identify_max_fmr: self.identify_max_fmr.unwrap_or(shared.identify_max_fmr),
            ..shared.clone()
        }
    }
}

/// The rules every set of thresholds keeps (`[risk]`'s and each model's own).
pub(super) fn thresholds_hold(risk: &RiskConfig) -> Option<&'static str> {
    let rate = |f: f64| 0.0 < f && f <= 1.0;
    if !(rate(risk.allow_max_fmr)
        && risk.allow_max_fmr <= risk.step_up_max_fmr
        && rate(risk.step_up_max_fmr))
    {
        return Some("risk thresholds must satisfy 0 < allow_max_fmr <= step_up_max_fmr <= 1");
    }
    if !(rate(risk.conflict_max_fmr) && rate(risk.enrolment_conflict_max_fmr)) {
        return Some("risk.conflict_max_fmr and risk.enrolment_conflict_max_fmr must be in (0, 1]");
    }
    if !rate(risk.identify_max_fmr) {
        return Some("risk.identify_max_fmr must be in (0, 1]");
    }
    None
}

/// A face model id: short, printable, and safe in a file name and a metrics label.
fn valid_model_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl ServerConfig {
    pub(super) fn checks(&self) -> Vec<Check> {
        vec![
            (
                self.workers <= 1024,
                "server.workers must be in 0..=1024 (0: one per core)",
            ),
            (
                (1..=512).contains(&self.blocking_threads_per_worker),
                "server.blocking_threads_per_worker must be in 1..=512",
            ),
            (
                self.max_body_bytes >= 1024,
                "server.max_body_bytes must be at least 1024",
            ),
            (
                self.max_body_bytes <= 16 << 20,
                "server.max_body_bytes must be at most 16 MiB",
            ),
            (
                (1..=300).contains(&self.body_deadline_secs),
                "server.body_deadline_secs must be in 1..=300",
            ),
            (
                self.bodies_in_flight_bytes >= self.max_body_bytes,
                "server.bodies_in_flight_bytes must be at least server.max_body_bytes",
            ),
        ]
    }
}

impl StorageConfig {
    pub(super) fn checks(&self) -> Vec<Check> {
        vec![
            (
                self.backend != StorageBackend::Postgres || cfg!(feature = "postgres"),
                "storage.backend = \"postgres\" needs a build with `--features postgres`",
            ),
            (
                (1..=256).contains(&self.pool_size),
                "storage.pool_size must be in 1..=256",
            ),
            (
                (1..=300).contains(&self.timeout_secs),
                "storage.timeout_secs must be in 1..=300",
            ),
        ]
    }
}

impl KeysConfig {
    pub(super) fn checks(&self) -> Vec<Check> {
        vec![
            (
                (60..=7 * 86_400).contains(&self.encryption_key_lifetime_secs),
                "keys.encryption_key_lifetime_secs must be in 60..=604800",
            ),
            (
                (0..=self.encryption_key_lifetime_secs).contains(&self.encryption_key_grace_secs),
                "keys.encryption_key_grace_secs must be in 0..=encryption_key_lifetime_secs",
            ),
            (
                self.source != MasterKeySourceConfig::Custodians
                    || !self.custodians_file.as_os_str().is_empty(),
                "keys.source = \"custodians\" needs keys.custodians_file (docs/OPERATIONS.md, \
                 \"Custodians\")",
            ),
        ]
    }
}

impl ProtocolConfig {
    pub(super) fn checks(&self) -> Vec<Check> {
        vec![
            (
                (1..=86_400).contains(&self.iat_window_secs),
                "protocol.iat_window_secs must be in 1..=86400",
            ),
            (
                self.replay_cache_capacity >= 1,
                "protocol.replay_cache_capacity must be positive",
            ),
        ]
    }
}

impl FeaturesConfig {
    pub(super) fn checks(&self) -> Vec<Check> {
        vec![
            (
                self.models
                    .iter()
                    .all(|m| (1..=4096).contains(&m.dimension)),
                "every features.models dimension must be in 1..=4096",
            ),
            (
                self.models.iter().all(|m| valid_model_id(&m.id)),
                "every features.models id must be 1 to 64 letters, digits, '-', '_' or '.'",
            ),
        ]
    }
}

impl AttestationConfig {
    pub(super) fn checks(&self) -> Vec<Check> {
        vec![
            (
                self.mode != TeeKind::Csv || cfg!(feature = "csv"),
                "attestation.mode = \"csv\" needs a build with `--features csv`",
            ),
            (
                self.sim_measurement.is_empty()
                    || (self.sim_measurement.len() == 64
                        && hex::decode(&self.sim_measurement).is_ok()),
                "attestation.sim_measurement must be empty or 64 hex digits",
            ),
        ]
    }
}

impl LimitsConfig {
    pub(super) fn checks(&self) -> Vec<Check> {
        vec![(
            (self.client_per_minute == 0 || self.client_burst >= 1)
                && (self.user_per_minute == 0 || self.user_burst >= 1),
            "limits.client_burst and limits.user_burst must be at least 1 where a rate is set",
        )]
    }
}

impl ClusterConfig {
    pub(super) fn checks(&self) -> Vec<Check> {
        vec![
            (
                !self.enabled() || !self.policy.as_os_str().is_empty(),
                "cluster.policy must name the policy peers verify each other under",
            ),
            (
                (1..=3600).contains(&self.join_timeout_secs),
                "cluster.join_timeout_secs must be in 1..=3600",
            ),
            (
                self.peers
                    .iter()
                    .all(|p| p.starts_with("http://") || p.starts_with("https://")),
                "cluster.peers must be URLs like http://10.0.0.2:9090",
            ),
        ]
    }
}

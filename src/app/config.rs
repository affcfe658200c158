//! Configuration: built-in defaults (the file `config/default.toml`, embedded at build time),
//! overlaid by an optional operator file, then by command-line flags and environment
//! variables (the binary's `cli.rs`). Unknown keys are errors, so a typo never goes
//! unnoticed. Each subsystem owns its section's struct where it has one (`[risk]`:
//! `risk::RiskConfig`); this module assembles and checks them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::attest::TeeKind;
use crate::risk::model::ModelError;
use crate::risk::{FaceModel, FaceModels, FaceModelsError, RiskConfig, RiskModel, RiskPolicy};
use crate::service::Settings;

/// The documented defaults; also the example file operators copy.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../config/default.toml");

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The operator's file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The operator's file is wrong; the cause says how.
    #[error("config {path}: {source}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: Box<ConfigError>,
    },
    /// Not TOML, an unknown key, or a value of the wrong type.
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// A value outside its documented range (the sentence names the key and the range).
    #[error("{0}")]
    Invalid(&'static str),
    /// A listen address that does not parse.
    #[error("{key} `{value}` is not an address like 127.0.0.1:8080")]
    Address {
        /// The configuration key.
        key: &'static str,
        /// What it holds.
        value: String,
    },
    /// A face model's `model_file` could not be read.
    #[error("cannot read the model_file of face model {face_model}, {path}: {source}")]
    ModelRead {
        /// The face model's id.
        face_model: String,
        /// The model file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A face model's `model_file` is not a valid model.
    #[error("the model_file of face model {face_model}, {path}: {source}")]
    Model {
        /// The face model's id.
        face_model: String,
        /// The model file.
        path: PathBuf,
        /// What is wrong with it.
        source: ModelError,
    },
    /// A model file trained for another face model or dimension than its entry says.
    #[error(
        "face model {face_model} ({dimension}-d): its model file {path} was trained for \
         {trained_for} ({trained_dimension}-d)"
    )]
    ModelMismatch {
        /// The entry's id and dimension.
        face_model: String,
        dimension: usize,
        /// The model file.
        path: String,
        /// What the model file says.
        trained_for: String,
        trained_dimension: usize,
    },
    /// An entry with `model_file = ""` for a face model no model is shipped for.
    #[error(
        "face model {0} has no shipped model: give its model_file (tee-risk train --face-model {0})"
    )]
    NoShippedModel(String),
    /// `--face-model` names a model the configuration does not accept.
    #[error("face model `{requested}` is not in features.models; accepted: {accepted}")]
    UnknownFaceModel {
        /// The id asked for.
        requested: String,
        /// The accepted ones.
        accepted: String,
    },
    /// The list of face models is empty, repeats an id, or lacks the default.
    #[error(transparent)]
    FaceModels(#[from] FaceModelsError),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub keys: KeysConfig,
    pub protocol: ProtocolConfig,
    pub features: FeaturesConfig,
    pub risk: RiskConfig,
    pub attestation: AttestationConfig,
    pub access: AccessConfig,
    pub limits: LimitsConfig,
    pub cluster: ClusterConfig,
}

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
    fn risk(&self, shared: &RiskConfig) -> RiskConfig {
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
fn thresholds_hold(risk: &RiskConfig) -> Option<&'static str> {
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

impl Config {
    /// The built-in defaults.
    pub fn builtin() -> Self {
        Self::from_toml_layers(&[DEFAULT_CONFIG_TOML]).expect("config/default.toml is valid")
    }

    /// Defaults overlaid by the operator's file, if any.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            None => Ok(Self::builtin()),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Self::from_toml_layers(&[DEFAULT_CONFIG_TOML, &text]).map_err(|source| {
                    ConfigError::InFile {
                        path: path.to_owned(),
                        source: Box::new(source),
                    }
                })
            }
        }
    }

    /// Deep-merges TOML documents, later ones winning, then checks the result.
    pub fn from_toml_layers(layers: &[&str]) -> Result<Self, ConfigError> {
        let mut merged = toml::Table::new();
        for layer in layers {
            let table: toml::Table = layer.parse()?;
            merge(&mut merged, table);
        }
        let config: Config = toml::Value::Table(merged).try_into()?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let checks = [
            (
                self.attestation.mode != TeeKind::Csv || cfg!(feature = "csv"),
                "attestation.mode = \"csv\" needs a build with `--features csv`",
            ),
            (
                self.attestation.sim_measurement.is_empty()
                    || (self.attestation.sim_measurement.len() == 64
                        && hex::decode(&self.attestation.sim_measurement).is_ok()),
                "attestation.sim_measurement must be empty or 64 hex digits",
            ),
            (
                (60..=7 * 86_400).contains(&self.keys.encryption_key_lifetime_secs),
                "keys.encryption_key_lifetime_secs must be in 60..=604800",
            ),
            (
                (0..=self.keys.encryption_key_lifetime_secs)
                    .contains(&self.keys.encryption_key_grace_secs),
                "keys.encryption_key_grace_secs must be in 0..=encryption_key_lifetime_secs",
            ),
            (
                !self.cluster.enabled() || !self.cluster.policy.as_os_str().is_empty(),
                "cluster.policy must name the policy peers verify each other under",
            ),
            (
                !self.cluster.enabled() || !self.server.operator_listen.is_empty(),
                "a cluster replica needs server.operator_listen: the join endpoints answer there",
            ),
            (
                self.storage.backend != StorageBackend::Postgres || cfg!(feature = "postgres"),
                "storage.backend = \"postgres\" needs a build with `--features postgres`",
            ),
            (
                !self.cluster.enabled() || self.storage.backend == StorageBackend::Postgres,
                "a cluster needs storage.backend = \"postgres\": replicas share one database",
            ),
            (
                self.keys.encryption_key_grace_secs >= self.protocol.iat_window_secs,
                "keys.encryption_key_grace_secs must be at least protocol.iat_window_secs: a \
                 request sealed just before a key change must still open",
            ),
            (
                (self.limits.client_per_minute == 0 || self.limits.client_burst >= 1)
                    && (self.limits.user_per_minute == 0 || self.limits.user_burst >= 1),
                "limits.client_burst and limits.user_burst must be at least 1 where a rate is set",
            ),
            (
                self.server.workers <= 1024,
                "server.workers must be in 0..=1024 (0: one per core)",
            ),
            (
                (1..=3600).contains(&self.cluster.join_timeout_secs),
                "cluster.join_timeout_secs must be in 1..=3600",
            ),
            (
                self.cluster
                    .peers
                    .iter()
                    .all(|p| p.starts_with("http://") || p.starts_with("https://")),
                "cluster.peers must be URLs like http://10.0.0.2:9090",
            ),
            (
                (1..=512).contains(&self.server.blocking_threads_per_worker),
                "server.blocking_threads_per_worker must be in 1..=512",
            ),
            (
                (1..=256).contains(&self.storage.pool_size),
                "storage.pool_size must be in 1..=256",
            ),
            (
                (1..=300).contains(&self.storage.timeout_secs),
                "storage.timeout_secs must be in 1..=300",
            ),
            (
                self.server.max_body_bytes >= 1024,
                "server.max_body_bytes must be at least 1024",
            ),
            (
                self.server.max_body_bytes <= 16 << 20,
                "server.max_body_bytes must be at most 16 MiB",
            ),
            (
                (1..=300).contains(&self.server.body_deadline_secs),
                "server.body_deadline_secs must be in 1..=300",
            ),
            (
                self.server.bodies_in_flight_bytes >= self.server.max_body_bytes,
                "server.bodies_in_flight_bytes must be at least server.max_body_bytes",
            ),
            (
                (1..=86_400).contains(&self.protocol.iat_window_secs),
                "protocol.iat_window_secs must be in 1..=86400",
            ),
            (
                self.protocol.replay_cache_capacity >= 1,
                "protocol.replay_cache_capacity must be positive",
            ),
            (
                self.features
                    .models
                    .iter()
                    .all(|m| (1..=4096).contains(&m.dimension)),
                "every features.models dimension must be in 1..=4096",
            ),
            (
                self.features.models.iter().all(|m| valid_model_id(&m.id)),
                "every features.models id must be 1 to 64 letters, digits, '-', '_' or '.'",
            ),
            (
                (1..=86_400).contains(&self.risk.velocity_window_secs),
                "risk.velocity_window_secs must be in 1..=86400",
            ),
            (
                (1..=1000).contains(&self.risk.max_devices),
                "risk.max_devices must be in 1..=1000",
            ),
            (
                self.risk.reason_min_log_odds.is_finite() && self.risk.reason_min_log_odds > 0.0,
                "risk.reason_min_log_odds must be positive",
            ),
            (
                (0.0..=1.0).contains(&self.risk.min_liveness),
                "risk.min_liveness must be in [0, 1]",
            ),
            (
                (0.99..=1.0).contains(&self.risk.copy_min_similarity),
                "risk.copy_min_similarity must be in [0.99, 1]",
            ),
            (
                self.risk.replay_history <= 1000,
                "risk.replay_history must be at most 1000",
            ),
            (
                (1..=100).contains(&self.risk.max_templates),
                "risk.max_templates must be in 1..=100",
            ),
        ];
        if let Some((_, message)) = checks.iter().find(|(ok, _)| !ok) {
            return Err(ConfigError::Invalid(message));
        }
        let own = self.features.models.iter().map(|m| m.risk(&self.risk));
        if let Some(message) = std::iter::once(self.risk.clone())
            .chain(own)
            .find_map(|risk| thresholds_hold(&risk))
        {
            return Err(ConfigError::Invalid(message));
        }
        self.listen_addr()?;
        self.face_models().map(|_| ())
    }

    /// A face model's risk model: the one shipped for its id, or its `model_file`, checked
    /// to have been trained for that id and dimension (files of formats before 3 name
    /// neither: the entry's word is taken).
    fn risk_model(&self, entry: &FaceModelConfig) -> Result<RiskModel, ConfigError> {
        let (model, path) = if entry.model_file.as_os_str().is_empty() {
            let model = RiskModel::builtin_for(&entry.id)
                .ok_or_else(|| ConfigError::NoShippedModel(entry.id.clone()))?;
            (model, format!("config/models/{}.json (shipped)", entry.id))
        } else {
            let path = &entry.model_file;
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ModelRead {
                face_model: entry.id.clone(),
                path: path.clone(),
                source,
            })?;
            let model = RiskModel::from_json(&text).map_err(|source| ConfigError::Model {
                face_model: entry.id.clone(),
                path: path.clone(),
                source,
            })?;
            (model, path.display().to_string())
        };
        match &model.face_model {
            Some(trained) if trained.id != entry.id || trained.dimension != entry.dimension => {
                Err(ConfigError::ModelMismatch {
                    face_model: entry.id.clone(),
                    dimension: entry.dimension,
                    path,
                    trained_for: trained.id.clone(),
                    trained_dimension: trained.dimension,
                })
            }
            _ => Ok(model),
        }
    }

    /// The accepted face models, each with its policy (`[risk]`'s thresholds, its own model).
    pub fn face_models(&self) -> Result<FaceModels, ConfigError> {
        let models = self
            .features
            .models
            .iter()
            .map(|entry| {
                let model = self.risk_model(entry)?;
                Ok(FaceModel::new(
                    entry.id.clone(),
                    entry.dimension,
                    entry.risk(&self.risk).policy(Arc::new(model)),
                ))
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(FaceModels::new(&self.features.default_model, models)?)
    }

    /// One accepted face model (`None`: the default), e.g. for `tee-risk eval --face-model`.
    pub fn face_model(&self, id: Option<&str>) -> Result<FaceModel, ConfigError> {
        let models = self.face_models()?;
        models
            .resolve(id)
            .cloned()
            .ok_or_else(|| ConfigError::UnknownFaceModel {
                requested: id.unwrap_or_default().to_owned(),
                accepted: models.describe(),
            })
    }

    /// The operator listener's address, if one is configured.
    pub fn operator_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        if self.server.operator_listen.is_empty() {
            return Ok(None);
        }
        self.server
            .operator_listen
            .parse()
            .map(Some)
            .map_err(|_| ConfigError::Address {
                key: "server.operator_listen",
                value: self.server.operator_listen.clone(),
            })
    }

    /// The service listener's address.
    pub fn listen_addr(&self) -> Result<std::net::SocketAddr, ConfigError> {
        self.server
            .listen
            .parse()
            .map_err(|_| ConfigError::Address {
                key: "server.listen",
                value: self.server.listen.clone(),
            })
    }

    /// The default face model's policy; its model file was checked when the config was
    /// loaded.
    pub fn risk_policy(&self) -> Result<RiskPolicy, ConfigError> {
        Ok(self.face_model(None)?.policy().clone())
    }

    /// What the service needs, assembled from the sections that hold it.
    pub fn service_settings(&self) -> Result<Settings, ConfigError> {
        Ok(Settings {
            face_models: self.face_models()?,
            iat_window_secs: self.protocol.iat_window_secs,
            replay_cache_capacity: self.protocol.replay_cache_capacity,
            encryption_key_lifetime_secs: self.keys.encryption_key_lifetime_secs,
            encryption_key_grace_secs: self.keys.encryption_key_grace_secs,
            velocity_window_secs: self.risk.velocity_window_secs,
            max_devices: self.risk.max_devices,
            max_templates: self.risk.max_templates,
            user_per_minute: self.limits.user_per_minute,
            user_burst: self.limits.user_burst,
        })
    }
}

/// A face model id: short, printable, and safe in a file name and a metrics label.
fn valid_model_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(overlay_table)) => {
                merge(base_table, overlay_table)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_defaults_load() {
        let config = Config::builtin();
        assert_eq!(config.features.default_model, "dlib-resnet128");
        let models = config.face_models().unwrap();
        let ids: Vec<(&str, usize)> = models.iter().map(|m| (m.id(), m.dimension())).collect();
        assert_eq!(ids, [("dlib-resnet128", 128), ("mobilefacenet192", 192)]);
        assert_eq!(config.protocol.iat_window_secs, 120);
        assert!(!config.server.dev);
    }

    #[test]
    fn overlay_changes_only_what_it_names() {
        let config =
            Config::from_toml_layers(&[DEFAULT_CONFIG_TOML, "[protocol]\niat_window_secs = 30\n"])
                .unwrap();
        assert_eq!(config.protocol.iat_window_secs, 30);
        assert_eq!(
            config.protocol.replay_cache_capacity,
            Config::builtin().protocol.replay_cache_capacity
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let typo =
            Config::from_toml_layers(&[DEFAULT_CONFIG_TOML, "[protocol]\niat_windw_secs = 30\n"]);
        assert!(typo.unwrap_err().to_string().contains("iat_windw_secs"));
        let bad = Config::from_toml_layers(&[
            DEFAULT_CONFIG_TOML,
            "[risk]\nallow_max_fmr = 0.5\nstep_up_max_fmr = 0.1\n",
        ]);
        assert!(bad.unwrap_err().to_string().contains("thresholds"));
        let addr =
            Config::from_toml_layers(&[DEFAULT_CONFIG_TOML, "[server]\nlisten = \"nowhere\"\n"]);
        assert!(addr.unwrap_err().to_string().contains("not an address"));
        let model = Config::from_toml_layers(&[
            DEFAULT_CONFIG_TOML,
            "[features]\nmodels = [{ id = \"m\", dimension = 4, model_file = \"/nonexistent/model.json\" }]\ndefault_model = \"m\"\n",
        ]);
        assert!(
            model
                .unwrap_err()
                .to_string()
                .contains("model_file of face model m")
        );
    }

    /// `[features]`: a model file must have been trained for its entry's id and dimension;
    /// an id without a shipped model needs a file; the default must be listed.
    #[test]
    fn face_model_entries_are_checked_against_their_model_files() {
        let features = |body: &str| {
            Config::from_toml_layers(&[DEFAULT_CONFIG_TOML, &format!("[features]\n{body}\n")])
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        let shipped = "models = [{ id = \"dlib-resnet128\", dimension = 192, model_file = \"\" }]";
        assert!(features(shipped).contains("trained for dlib-resnet128 (128-d)"));
        let unshipped = "models = [{ id = \"arcface512\", dimension = 512, model_file = \"\" }]\ndefault_model = \"arcface512\"";
        assert!(features(unshipped).contains("no shipped model"));
        assert!(features("default_model = \"arcface512\"").contains("not in features.models"));
        assert!(features("models = []").contains("at least one face model"));
        let bad_id = "models = [{ id = \"a b\", dimension = 4, model_file = \"\" }]";
        assert!(features(bad_id).contains("letters, digits"));
        let bad_own = "models = [{ id = \"dlib-resnet128\", dimension = 128, model_file = \"\", enrolment_conflict_max_fmr = 0.0 }]";
        assert!(features(bad_own).contains("enrolment_conflict_max_fmr must be in (0, 1]"));
        let config = Config::builtin();
        assert_eq!(
            config
                .face_model(Some("mobilefacenet192"))
                .unwrap()
                .dimension(),
            192
        );
        assert!(
            config
                .face_model(Some("x"))
                .unwrap_err()
                .to_string()
                .contains("dlib-resnet128 (128-d, the default), mobilefacenet192 (192-d)")
        );
    }

    /// The bounds of the encryption-key lifetime, as docs/OPERATIONS.md states them.
    #[test]
    fn encryption_key_lifetime_bounds_are_the_documented_ones() {
        let lifetime = |secs: i64| {
            Config::from_toml_layers(&[
                DEFAULT_CONFIG_TOML,
                &format!(
                    "[keys]\nencryption_key_lifetime_secs = {secs}\nencryption_key_grace_secs = 1\n\
                     [protocol]\niat_window_secs = 1\n"
                ),
            ])
        };
        assert!(lifetime(59).is_err());
        assert!(lifetime(60).is_ok());
        assert!(lifetime(604_800).is_ok());
        assert!(lifetime(604_801).is_err());
        let operations = include_str!("../../docs/OPERATIONS.md");
        assert!(operations.contains("**at least 60 s** and at most 604,800 s"));
    }

    /// The documented rules between sections hold at load, each refusal naming its keys.
    #[test]
    fn rules_between_sections_are_checked() {
        let refused = |layer: &str| {
            Config::from_toml_layers(&[DEFAULT_CONFIG_TOML, layer])
                .unwrap_err()
                .to_string()
        };
        assert!(
            refused("[keys]\nencryption_key_grace_secs = 119\n")
                .contains("at least protocol.iat_window_secs")
        );
        assert!(refused("[limits]\nuser_burst = 0\n").contains("limits.user_burst"));
        assert!(refused("[server]\nworkers = 5000\n").contains("server.workers"));
        assert!(
            refused("[cluster]\nbootstrap = true\npolicy = \"p.toml\"\n[server]\noperator_listen = \"127.0.0.1:9\"\n")
                .contains("a cluster needs storage.backend = \"postgres\"")
        );
        // No rate, no burst needed.
        Config::from_toml_layers(&[
            DEFAULT_CONFIG_TOML,
            "[limits]\nuser_per_minute = 0\nuser_burst = 0\n",
        ])
        .unwrap();
    }

    #[test]
    fn csv_mode_needs_a_build_with_the_csv_feature() {
        let csv =
            Config::from_toml_layers(&[DEFAULT_CONFIG_TOML, "[attestation]\nmode = \"csv\"\n"]);
        if cfg!(feature = "csv") {
            assert_eq!(csv.unwrap().attestation.mode, TeeKind::Csv);
        } else {
            assert!(csv.unwrap_err().to_string().contains("--features csv"));
        }
        let tdx =
            Config::from_toml_layers(&[DEFAULT_CONFIG_TOML, "[attestation]\nmode = \"tdx\"\n"]);
        assert_eq!(tdx.unwrap().attestation.mode, TeeKind::Tdx);
        let other =
            Config::from_toml_layers(&[DEFAULT_CONFIG_TOML, "[attestation]\nmode = \"sgx\"\n"]);
        let other = other.unwrap_err().to_string();
        assert!(other.contains("unknown variant `sgx`"), "{other}");
    }
}

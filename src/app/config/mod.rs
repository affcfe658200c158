//! Configuration: built-in defaults (the file `config/default.toml`, embedded at build time),
//! overlaid by an optional operator file, then by command-line flags and environment
//! variables (the binary's `cli.rs`). Unknown keys are errors, so a typo never goes
//! unnoticed. Each subsystem owns its section's struct where it has one (`[risk]`:
//! `risk::RiskConfig`); this module assembles and checks them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::risk::model::ModelError;
use crate::risk::{FaceModel, FaceModels, FaceModelsError, RiskConfig, RiskModel, RiskPolicy};
use crate::service::Settings;

mod sections;

pub use sections::{
    AccessConfig, AttestationConfig, ClusterConfig, FaceModelConfig, FeaturesConfig, KeysConfig,
    LimitsConfig, MasterKeySourceConfig, ProtocolConfig, ServerConfig, StorageBackend,
    StorageConfig,
};
use sections::{Check, thresholds_hold};

/// The documented defaults; also the example file operators copy.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../../config/default.toml");

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

    /// Each section's own rules, then the rules between sections, then each set of
    /// thresholds, the listen address and the face models.
    fn validate(&self) -> Result<(), ConfigError> {
        let rules = [
            self.server.checks(),
            self.storage.checks(),
            self.keys.checks(),
            self.protocol.checks(),
            self.features.checks(),
            self.risk.checks(),
            self.attestation.checks(),
            self.limits.checks(),
            self.cluster.checks(),
            self.between_sections(),
        ];
        if let Some((_, message)) = rules.iter().flatten().find(|(ok, _)| !ok) {
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

    /// The rules that tie one section to another.
    fn between_sections(&self) -> Vec<Check> {
        vec![
            (
                !self.cluster.enabled() || !self.server.operator_listen.is_empty(),
                "a cluster replica needs server.operator_listen: the join endpoints answer there",
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
        ]
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
mod tests;

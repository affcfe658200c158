//! The records the vault seals: what each table's values hold once opened. Every type that
//! holds features or device ids wipes them on drop.

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// A user's enrolled templates (unit vectors), as stored. Wiped on drop.
#[derive(Default, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub(super) struct UserRecord {
    /// Kept (sealed) so that a key rotation can compute the user's new blind index. Empty
    /// in records written before rotation existed.
    #[serde(default)]
    pub(super) user_id: String,
    pub(super) templates: Vec<StoredTemplate>,
    /// SM3 (hex) of the devices seen with this user, most recent first: enrolment and
    /// allowed assessments (for the new-device signal). Absent in older records.
    #[serde(default)]
    pub(super) devices: Vec<String>,
}

/// The face model of records written before records named one (PROTOCOL v1.3): every
/// template, accepted probe and log entry of an earlier database is dlib's 128-d ResNet.
pub const LEGACY_FACE_MODEL: &str = "dlib-resnet128";

fn legacy_face_model() -> String {
    LEGACY_FACE_MODEL.to_owned()
}

/// One enrolled template: a unit vector of the face model that made it. Wiped on drop.
pub struct Template {
    pub face_model: String,
    pub features: Zeroizing<Vec<f32>>,
}

/// What the vault holds about an enrolled user: templates (unit vectors, of one face model
/// or, while the user re-enrols under a new one, of several) and known devices.
#[derive(Default)]
pub struct Enrolment {
    pub templates: Vec<Template>,
    /// SM3 (hex) of known device ids, most recent first.
    pub devices: Vec<String>,
}

impl Enrolment {
    /// The templates of one face model: a decision never compares two models' vectors.
    pub fn templates_of(&self, face_model: &str) -> Vec<&[f32]> {
        self.templates
            .iter()
            .filter(|t| t.face_model == face_model)
            .map(|t| t.features.as_slice())
            .collect()
    }

    /// The face models the user has templates of, in enrolment order, each once.
    pub fn face_models(&self) -> Vec<&str> {
        let mut models: Vec<&str> = Vec::new();
        for t in &self.templates {
            if !models.contains(&t.face_model.as_str()) {
                models.push(&t.face_model);
            }
        }
        models
    }
}

impl UserRecord {
    /// Moves the templates out (the record is wiped on drop; the vectors in `Zeroizing`).
    pub(super) fn take_templates(&mut self) -> Vec<Template> {
        self.templates
            .iter_mut()
            .map(|t| Template {
                face_model: std::mem::take(&mut t.face_model),
                features: Zeroizing::new(std::mem::take(&mut t.features)),
            })
            .collect()
    }

    /// The number of templates of `face_model`.
    pub(super) fn count_of(&self, face_model: &str) -> usize {
        self.templates
            .iter()
            .filter(|t| t.face_model == face_model)
            .count()
    }

    pub(super) fn take_enrolment(&mut self) -> Enrolment {
        Enrolment {
            templates: self.take_templates(),
            devices: std::mem::take(&mut self.devices),
        }
    }
}

/// Puts `device` first in a most-recent-first list of at most `max`.
pub(super) fn remember(devices: &mut Vec<String>, device: &str, max: usize) {
    devices.retain(|d| d != device);
    devices.insert(0, device.to_owned());
    devices.truncate(max);
}

#[derive(Serialize, Deserialize, Zeroize)]
#[serde(deny_unknown_fields)]
pub(super) struct StoredTemplate {
    #[serde(with = "crate::store::packed")]
    pub(super) features: Vec<f32>,
    pub(super) enrolled_at: i64,
    /// Absent in records written before face models were named: [`LEGACY_FACE_MODEL`].
    #[serde(default = "legacy_face_model")]
    pub(super) face_model: String,
}

/// An accepted probe kept for drift checks. Wiped on drop.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryRecord {
    #[serde(with = "crate::store::packed")]
    pub(super) features: Vec<f32>,
    pub(super) at: i64,
    pub(super) rid: String,
    /// Absent in records written before face models were named: [`LEGACY_FACE_MODEL`].
    #[serde(default = "legacy_face_model")]
    #[zeroize(skip)]
    pub(super) face_model: String,
}

/// What an assessment leaves in `risk_logs`: the result and the re-encrypted probe.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RiskLogEntry {
    pub rid: String,
    pub at: i64,
    /// Hex of the user's blind index (never the user id). Rotation rewrites it to the new
    /// index for enrolled users; for ids that never enrolled it keeps the old one.
    pub user: String,
    pub decision: String,
    pub score: f64,
    pub reasons: Vec<String>,
    pub model: String,
    /// The face model of `features`; absent in entries written before face models were
    /// named: [`LEGACY_FACE_MODEL`].
    #[serde(default = "legacy_face_model")]
    pub face_model: String,
    #[serde(with = "crate::store::packed")]
    pub features: Vec<f32>,
    pub liveness: Option<f32>,
    pub device_id: Option<String>,
}

impl Drop for RiskLogEntry {
    fn drop(&mut self) {
        self.features.zeroize();
        self.device_id.zeroize();
    }
}

/// Records per table, after decrypting every one of them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TableCounts {
    pub user_data: usize,
    pub feature_history: usize,
    pub risk_logs: usize,
}

/// What `Vault::erase_user` removed or scrubbed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Erased {
    pub templates: usize,
    pub history: usize,
    /// Risk log entries kept as decisions only: user index, features, liveness and device
    /// removed; rid, time, decision, score, reasons and model stay for the audit trail.
    pub risk_logs_scrubbed: usize,
}

/// What an erased user's risk log entries name instead of a blind index.
pub const ERASED_USER: &str = "erased";

/// A risk log entry for tests.
#[cfg(test)]
pub(crate) fn sample_log(rid: &str, user: &str) -> RiskLogEntry {
    RiskLogEntry {
        rid: rid.into(),
        at: 1,
        user: user.into(),
        decision: "allow".into(),
        score: 0.0,
        reasons: vec![],
        model: "m".into(),
        face_model: LEGACY_FACE_MODEL.into(),
        features: vec![0.6, 0.8],
        liveness: None,
        device_id: None,
    }
}

//! Who holds the shares and how many unseal: the custodians file (`[keys] custodians_file`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::crypto::sm2::PublicKey;

/// Most custodians a roster lists (shares are numbered in one byte).
pub const MAX_CUSTODIANS: usize = 255;

/// One custodian as the service knows them.
pub(super) struct Custodian {
    pub(super) name: String,
    pub(super) key: PublicKey,
}

/// Who holds the shares and how many unseal: `[keys] custodians_file`.
pub struct Roster {
    pub(super) threshold: u8,
    pub(super) custodians: Vec<Custodian>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RosterFile {
    threshold: u8,
    custodian: Vec<RosterEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RosterEntry {
    name: String,
    /// PEM, or a PEM file relative to the roster file.
    public_key: String,
}

/// Why a custodians file was refused.
#[derive(Debug, thiserror::Error)]
#[error("custodians file {path}: {reason}")]
pub struct RosterError {
    pub path: PathBuf,
    pub reason: String,
}

impl Roster {
    /// Reads a custodians file (TOML: `threshold`, then `[[custodian]] name, public_key`).
    pub fn load(path: &Path) -> Result<Self, RosterError> {
        let fail = |reason: String| RosterError {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let file: RosterFile = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut custodians: Vec<Custodian> = Vec::new();
        for entry in file.custodian {
            let name_ok = !entry.name.is_empty()
                && entry.name.len() <= 64
                && entry
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !name_ok {
                return Err(fail(format!(
                    "custodian name `{}`: use 1 to 64 letters, digits, '-', '_' or '.'",
                    entry.name
                )));
            }
            let pem = if entry.public_key.contains("-----BEGIN") {
                entry.public_key
            } else {
                let key_path = base.join(&entry.public_key);
                std::fs::read_to_string(&key_path)
                    .map_err(|e| fail(format!("{}: {e}", key_path.display())))?
            };
            let key = PublicKey::from_pem(&pem)
                .map_err(|_| fail(format!("custodian {}: not an SM2 public key", entry.name)))?;
            if custodians
                .iter()
                .any(|c| c.name == entry.name || c.key == key)
            {
                return Err(fail(format!(
                    "custodian {} is listed twice (by name or by key)",
                    entry.name
                )));
            }
            custodians.push(Custodian {
                name: entry.name,
                key,
            });
        }
        let n = custodians.len();
        if n > MAX_CUSTODIANS || file.threshold < 2 || usize::from(file.threshold) > n {
            return Err(fail(format!(
                "threshold {} of {n} custodians: k must be at least 2 (no single person holds \
                 the key) and at most the number of custodians (at most {MAX_CUSTODIANS})",
                file.threshold
            )));
        }
        Ok(Self {
            threshold: file.threshold,
            custodians,
        })
    }

    pub fn threshold(&self) -> u8 {
        self.threshold
    }

    pub(super) fn find(&self, name: &str) -> Option<&Custodian> {
        self.custodians.iter().find(|c| c.name == name)
    }

    pub(super) fn names(&self) -> Vec<String> {
        self.custodians.iter().map(|c| c.name.clone()).collect()
    }
}

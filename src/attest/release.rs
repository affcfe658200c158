//! Release manifests and the release log: which source a measurement comes from
//! (docs/ATTESTATION.md, "From measurement to source").
//!
//! `make release` builds the TEE binary reproducibly and writes `release.json`: the commit,
//! the toolchain, SM3 of `Cargo.lock` and of the binary, and the measurements a TEE running
//! that binary reports, signed with the SM2 release key. A verifier that is given manifests
//! accepts a measurement only if a manifest signed by the release key lists it, and learns
//! the commit. `releases.log` chains every published manifest (SM3), so that a release cannot
//! be shown to one client and hidden from another: clients compare the log's head.
//!
//! ```text
//! release.json = { format, key_id, payload = base64url(manifest JSON),
//!                  signature = base64url(DER SM2(ID 1234567812345678,
//!                              "tee-risk/release/v1\0" ‖ payload bytes)),
//!                  manifest = the same JSON, for reading (must equal the payload) }
//! releases.log line = "<seq> <prev hex> <manifest digest hex> <version> <commit>"
//!   entry hash = SM3("tee-risk/releases/v1\0" ‖ line), prev of the first = 64 zeros,
//!   manifest digest = SM3(payload bytes)
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::TeeKind;
use crate::crypto::sm2::{IdentityKey, PublicKey};
use crate::crypto::{CryptoError, sm3};
use crate::protocol::{b64_decode, b64_encode};

/// The signed file's format.
pub const SIGNED_FORMAT: &str = "tee-risk-signed-release/1";
/// The manifest's format.
pub const MANIFEST_FORMAT: &str = "tee-risk-release/1";
/// What the release key signs before the payload: a release signature can pass for no other
/// signature this crate verifies, nor the reverse.
const SIGNATURE_LABEL: &[u8] = b"tee-risk/release/v1\0";
/// What the release log hashes before each line.
const LOG_LABEL: &[u8] = b"tee-risk/releases/v1\0";

/// What one release is: the source, how it was built, and what a TEE running it reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseManifest {
    /// [`MANIFEST_FORMAT`].
    pub format: String,
    /// The crate's version (`Cargo.toml`).
    pub version: String,
    /// The git commit built (40 hex digits).
    pub commit: String,
    /// `SOURCE_DATE_EPOCH` of the build: the commit's time.
    pub source_date_epoch: i64,
    /// `rustc -vV` of the pinned toolchain (`rust-toolchain.toml`), one line per field.
    pub toolchain: String,
    /// The build, as `scripts/release.sh` ran it (profile, features, flags).
    pub build: String,
    /// SM3 of `Cargo.lock` (lowercase hex): every dependency's exact version and checksum.
    pub cargo_lock_sm3: String,
    /// SM3 of the binary (lowercase hex); equal to the sim measurement of that binary.
    pub binary_sm3: String,
    /// The measurements a TEE running this binary reports, per kind.
    pub measurements: Vec<ReleaseMeasurement>,
    /// Reference values that could not be computed offline, and what is missing for them:
    /// never accepted, there for the auditor (e.g. SEV-SNP with Debian's firmware).
    #[serde(default)]
    pub incomplete: Vec<IncompleteReference>,
}

/// A measurement the manifest vouches for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseMeasurement {
    pub tee: TeeKind,
    /// Lowercase hex, as attestation reports it.
    pub measurement: String,
    /// How it was computed (the guest it assumes, for hardware TEEs).
    pub how: String,
}

/// A reference value the release could not compute: not accepted by any verifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncompleteReference {
    pub tee: TeeKind,
    /// What could be computed (e.g. the launch digest of the firmware alone), if anything.
    pub partial: Option<String>,
    /// The inputs, as documented (files with their SHA-256, vCPUs, command line).
    pub inputs: serde_json::Value,
    /// What is missing, and how an operator completes it.
    pub missing: String,
}

/// `release.json`: a manifest signed by the release key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    /// [`SIGNED_FORMAT`].
    pub format: String,
    /// The release key's kid ([`PublicKey::kid`]).
    pub key_id: String,
    /// The manifest's JSON (base64url): the bytes signed.
    pub payload: String,
    /// DER SM2 signature (base64url) of the label and the payload.
    pub signature: String,
    /// The manifest again, for reading; must equal the payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<serde_json::Value>,
}

/// A manifest whose signature holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub manifest: ReleaseManifest,
    /// SM3 of the payload (hex): the manifest's entry in the release log.
    pub digest: String,
}

/// The checks on a release, named in errors (docs/ATTESTATION.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReleaseCheck {
    /// The file is not a signed manifest of a known format.
    Format,
    /// Signed by another key than the release key.
    Key,
    /// The signature does not hold over the payload.
    Signature,
    /// The readable copy differs from the signed payload.
    Copy,
    /// The release log is broken, does not list the manifest, or does not extend a head
    /// seen before.
    Log,
}

impl ReleaseCheck {
    /// The check's name in messages and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseCheck::Format => "release_format",
            ReleaseCheck::Key => "release_key",
            ReleaseCheck::Signature => "release_signature",
            ReleaseCheck::Copy => "release_copy",
            ReleaseCheck::Log => "release_log",
        }
    }
}

impl std::fmt::Display for ReleaseCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A release that did not pass, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("release check `{check}` failed: {detail}")]
pub struct ReleaseError {
    pub check: ReleaseCheck,
    pub detail: String,
}

fn refuse(check: ReleaseCheck, detail: impl Into<String>) -> ReleaseError {
    ReleaseError {
        check,
        detail: detail.into(),
    }
}

impl SignedManifest {
    /// Signs `manifest` with the release key.
    pub fn sign(manifest: &ReleaseManifest, key: &IdentityKey) -> Result<Self, CryptoError> {
        let payload = serde_json::to_vec(manifest).expect("a manifest always serialises");
        let signature = key.sign_der(&[SIGNATURE_LABEL, &payload])?;
        Ok(Self {
            format: SIGNED_FORMAT.to_owned(),
            key_id: key.public().kid(),
            payload: b64_encode(&payload),
            signature: b64_encode(&signature),
            manifest: Some(serde_json::to_value(manifest).expect("a manifest always serialises")),
        })
    }

    /// Parses `release.json`.
    pub fn parse(text: &[u8]) -> Result<Self, ReleaseError> {
        let signed: Self = serde_json::from_slice(text)
            .map_err(|e| refuse(ReleaseCheck::Format, format!("not a signed manifest: {e}")))?;
        if signed.format != SIGNED_FORMAT {
            return Err(refuse(
                ReleaseCheck::Format,
                format!("unknown format `{}`", signed.format),
            ));
        }
        Ok(signed)
    }

    /// Reads and parses a `release.json` file.
    pub fn load(path: &Path) -> Result<Self, ReleaseError> {
        let text = std::fs::read(path).map_err(|e| {
            refuse(
                ReleaseCheck::Format,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        Self::parse(&text)
    }

    /// Checks the signature with the release key, then the readable copy, and returns the
    /// manifest.
    pub fn open(&self, release_key: &PublicKey) -> Result<Release, ReleaseError> {
        if self.key_id != release_key.kid() {
            return Err(refuse(
                ReleaseCheck::Key,
                format!(
                    "signed by key {}, not the release key {}",
                    self.key_id,
                    release_key.kid()
                ),
            ));
        }
        let payload = b64_decode(&self.payload)
            .ok_or_else(|| refuse(ReleaseCheck::Format, "the payload is not base64url"))?;
        let signature = b64_decode(&self.signature)
            .ok_or_else(|| refuse(ReleaseCheck::Format, "the signature is not base64url"))?;
        let signed = [SIGNATURE_LABEL, &payload].concat();
        release_key.verify(&signed, &signature).map_err(|_| {
            refuse(
                ReleaseCheck::Signature,
                "the release key's signature does not hold over the payload",
            )
        })?;
        let value: serde_json::Value = serde_json::from_slice(&payload)
            .map_err(|e| refuse(ReleaseCheck::Format, format!("payload: {e}")))?;
        if let Some(copy) = &self.manifest
            && *copy != value
        {
            return Err(refuse(
                ReleaseCheck::Copy,
                "the readable manifest differs from the signed payload",
            ));
        }
        let manifest: ReleaseManifest = serde_json::from_value(value)
            .map_err(|e| refuse(ReleaseCheck::Format, format!("manifest: {e}")))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(refuse(
                ReleaseCheck::Format,
                format!("unknown manifest format `{}`", manifest.format),
            ));
        }
        Ok(Release {
            manifest,
            digest: hex::encode(sm3(&payload)),
        })
    }
}

impl Release {
    /// Whether this release vouches for `measurement` (lowercase hex) of a `tee`.
    pub fn lists(&self, tee: TeeKind, measurement: &str) -> bool {
        self.manifest
            .measurements
            .iter()
            .any(|m| m.tee == tee && m.measurement == measurement)
    }
}

/// One line of `releases.log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub seq: u64,
    pub prev: String,
    pub digest: String,
    pub version: String,
    pub commit: String,
    /// SM3 of the label and the line (hex): the next entry's `prev`; the last is the head.
    pub hash: String,
}

/// `releases.log`: every published manifest, in order, chained by SM3.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReleaseLog {
    pub entries: Vec<LogEntry>,
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn entry_hash(line: &str) -> String {
    hex::encode(sm3(&[LOG_LABEL, line.as_bytes()].concat()))
}

impl ReleaseLog {
    /// Parses a log and checks its chain: sequence numbers from 1, each `prev` the hash of
    /// the line before.
    pub fn parse(text: &str) -> Result<Self, ReleaseError> {
        let mut log = ReleaseLog::default();
        for (index, line) in text.lines().enumerate() {
            let broken =
                |why: &str| refuse(ReleaseCheck::Log, format!("line {}: {why}", index + 1));
            let fields: Vec<&str> = line.split(' ').collect();
            let [seq, prev, digest, version, commit] = fields[..] else {
                return Err(broken("not `<seq> <prev> <digest> <version> <commit>`"));
            };
            let expected_prev = log.head().unwrap_or(GENESIS);
            if seq.parse::<u64>().ok() != Some(index as u64 + 1) {
                return Err(broken("sequence number out of order"));
            }
            if prev != expected_prev {
                return Err(broken("does not chain to the line before"));
            }
            if !is_hex64(digest) {
                return Err(broken("the digest is not 64 lowercase hex digits"));
            }
            log.entries.push(LogEntry {
                seq: index as u64 + 1,
                prev: prev.to_owned(),
                digest: digest.to_owned(),
                version: version.to_owned(),
                commit: commit.to_owned(),
                hash: entry_hash(line),
            });
        }
        Ok(log)
    }

    pub fn load(path: &Path) -> Result<Self, ReleaseError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            refuse(
                ReleaseCheck::Log,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        Self::parse(&text)
    }

    /// The hash of the last entry: what clients compare.
    pub fn head(&self) -> Option<&str> {
        self.entries.last().map(|e| e.hash.as_str())
    }

    /// The entry listing `release`, or the refusal.
    pub fn inclusion(&self, release: &Release) -> Result<&LogEntry, ReleaseError> {
        self.entries
            .iter()
            .find(|e| e.digest == release.digest)
            .ok_or_else(|| {
                refuse(
                    ReleaseCheck::Log,
                    format!(
                        "manifest {} (commit {}) is not in the release log",
                        release.digest, release.manifest.commit
                    ),
                )
            })
    }

    /// Checks that this log extends one whose head was `seen` (append-only: nothing seen
    /// before was removed or rewritten).
    pub fn extends(&self, seen: &str) -> Result<(), ReleaseError> {
        if self.entries.iter().any(|e| e.hash == seen) {
            Ok(())
        } else {
            Err(refuse(
                ReleaseCheck::Log,
                format!("the log does not contain the head {seen} seen before: it was rewritten"),
            ))
        }
    }

    /// The line that appends `release`, and the log with it.
    pub fn append(&mut self, release: &Release) -> Result<String, ReleaseError> {
        if self.entries.iter().any(|e| e.digest == release.digest) {
            return Err(refuse(
                ReleaseCheck::Log,
                "the manifest is already in the log",
            ));
        }
        let seq = self.entries.len() as u64 + 1;
        let prev = self.head().unwrap_or(GENESIS).to_owned();
        let m = &release.manifest;
        if m.version.contains(char::is_whitespace) || m.commit.contains(char::is_whitespace) {
            return Err(refuse(
                ReleaseCheck::Format,
                "version and commit must not contain spaces",
            ));
        }
        let line = format!("{seq} {prev} {} {} {}", release.digest, m.version, m.commit);
        self.entries.push(LogEntry {
            seq,
            prev,
            digest: release.digest.clone(),
            version: m.version.clone(),
            commit: m.commit.clone(),
            hash: entry_hash(&line),
        });
        Ok(line)
    }
}

fn is_hex64(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests;

//! Remote attestation: evidence that binds a client's nonce and the service's identity key
//! to a TEE report, and the one verifier that clients, the CLI and tests use.
//!
//! ```text
//! report_data (64 bytes) = SM3("tee-risk/attest/v1\0" ‖ u16be(len nonce) ‖ nonce
//!                               ‖ u16be(65) ‖ identity key SEC1) ‖ 32 zero bytes
//! ```
//! TEE kinds: `sim` (a simulated report signed by a pinned "sim platform" SM2 key, for
//! machines without a TEE; verifiers refuse it unless their policy lists it) and `snp` (AMD
//! SEV-SNP, verified to AMD's roots) and `tdx` (Intel TDX, DCAP quotes verified to Intel's
//! root) in every build; `csv` (Hygon CSV, verified to Hygon's root) with the cargo feature
//! `csv`.

#[cfg(feature = "csv")]
pub mod csv;
#[cfg(feature = "server")]
pub mod join;
pub mod policy;
pub mod release;
pub mod sim;
#[cfg(feature = "snp")]
pub mod snp;
#[cfg(feature = "tdx")]
pub mod tdx;
#[cfg(feature = "server")]
pub mod tsm;
pub mod verify;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::crypto::sm2::PublicKey;
use crate::crypto::{CryptoError, sm3};
use crate::protocol::PublicJwk;

pub use policy::{Policy, PolicyError};
pub use verify::{PlatformVerified, Verified};

/// The kinds of TEE this crate attests and verifies. Chosen by this enum, never by a string:
/// a kind this build cannot verify is named, not silently skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeeKind {
    /// A simulated TEE: reports signed by a pinned local key. Proves nothing about hardware.
    Sim,
    /// AMD SEV-SNP.
    Snp,
    /// Hygon CSV (verified by builds with the `csv` feature).
    Csv,
    /// Intel TDX (DCAP quotes).
    Tdx,
}

impl TeeKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [TeeKind; 4] = [TeeKind::Sim, TeeKind::Snp, TeeKind::Csv, TeeKind::Tdx];

    /// The name on the wire and in policy and config files.
    pub fn as_str(self) -> &'static str {
        match self {
            TeeKind::Sim => "sim",
            TeeKind::Snp => "snp",
            TeeKind::Csv => "csv",
            TeeKind::Tdx => "tdx",
        }
    }
}

impl std::fmt::Display for TeeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TeeKind {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        TeeKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or(())
    }
}

/// The checks a verifier runs, in order; a refusal names the one that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Check {
    /// The evidence or report does not parse (or does not re-encode to the same bytes).
    Format,
    /// The TEE kind is unknown, not allowed by the policy, or not verifiable by this build.
    TeeKind,
    /// The evidence answers another nonce.
    Nonce,
    /// The identity key is not a valid SM2 signing key.
    IdentityKey,
    /// The platform's signature chain (sim key, AMD or Hygon roots) does not hold.
    Platform,
    /// The chip id in the report and in its certificate differ.
    ChipId,
    /// The reported TCB is below the policy's floor.
    Tcb,
    /// The report was not made at VMPL 0.
    Vmpl,
    /// report_data does not bind the nonce and the identity key.
    ReportData,
    /// The measurement is not in the policy.
    Measurement,
    /// The report comes from a debug-mode guest.
    Debug,
    /// The report is too old (or from the future).
    Freshness,
}

impl Check {
    /// The check's name in messages, logs and docs/ATTESTATION.md.
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Format => "format",
            Check::TeeKind => "tee_kind",
            Check::Nonce => "nonce",
            Check::IdentityKey => "identity_key",
            Check::Platform => "platform",
            Check::ChipId => "chip_id",
            Check::Tcb => "tcb",
            Check::Vmpl => "vmpl",
            Check::ReportData => "report_data",
            Check::Measurement => "measurement",
            Check::Debug => "debug",
            Check::Freshness => "freshness",
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Check {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A check that failed, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("attestation check `{check}` failed: {detail}")]
pub struct AttestError {
    /// Which check.
    pub check: Check,
    /// What it found (no secrets: reports and certificates are public).
    pub detail: String,
}

pub(crate) fn err(check: Check, detail: impl Into<String>) -> AttestError {
    AttestError {
        check,
        detail: detail.into(),
    }
}

/// Why the service could not produce evidence.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// The TEE's guest device refused or failed.
    #[error("{device}: {detail}")]
    Device {
        /// The device file, e.g. `/dev/sev-guest`.
        device: &'static str,
        /// What it said.
        detail: String,
    },
    /// A file the evidence needs (the executable to measure, an endorsement) is unreadable.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Signing the simulated report failed.
    #[error("cannot sign the report: {0}")]
    Sign(#[from] CryptoError),
}

/// Evidence format version.
pub const EVIDENCE_VERSION: u32 = 1;
/// Nonces are exactly this long (base64url on the wire).
pub const NONCE_LEN: usize = 32;

/// What a report's report_data binds beside the verifier's nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// The service's identity key, for clients (`GET /v1/attestation`; key use `sig`).
    Identity,
    /// A joining replica's ephemeral key, to which a peer seals the cluster's secrets
    /// (`attest::join`; key use `enc`). Its own label: no client-facing report can pass for
    /// a join report, nor the reverse.
    ClusterJoin,
}

impl Binding {
    fn label(self) -> &'static [u8] {
        match self {
            Binding::Identity => b"tee-risk/attest/v1\0",
            Binding::ClusterJoin => b"tee-risk/cluster-join/v1\0",
        }
    }

    /// The JWK `use` of the bound key.
    pub fn key_use(self) -> &'static str {
        match self {
            Binding::Identity => "sig",
            Binding::ClusterJoin => "enc",
        }
    }
}

/// `GET /v1/attestation?nonce=…`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    pub v: u32,
    /// `sim`, `snp` or `csv` ([`TeeKind`]); a string on the wire so that a verifier can
    /// name a kind it does not know.
    pub tee: String,
    /// The client's nonce, echoed (base64url).
    pub nonce: String,
    pub identity_key: PublicJwk,
    /// The raw TEE report (base64url).
    pub report: String,
    /// Per-TEE material that vouches for the report (base64url values), e.g. the sim
    /// platform's signature.
    pub endorsements: BTreeMap<String, String>,
}

/// Where evidence comes from on the service side.
#[cfg(feature = "server")]
pub enum Attester {
    Sim(Box<sim::SimPlatform>),
    /// An AMD SEV-SNP guest: reports from `/dev/sev-guest`.
    Snp,
    /// A Hygon CSV guest: reports from `/dev/csv-guest`, with the chip's HSK ‖ CEK file when
    /// the operator provides one.
    #[cfg(feature = "csv")]
    Csv {
        hsk_cek_file: Option<std::path::PathBuf>,
    },
    /// An Intel TDX guest: quotes through configfs-tsm.
    Tdx,
}

#[cfg(feature = "server")]
impl Attester {
    /// Evidence binding `nonce` and `identity`, made now.
    pub fn evidence(
        &self,
        nonce: &[u8; NONCE_LEN],
        identity: &PublicKey,
        now: i64,
    ) -> Result<Evidence, EvidenceError> {
        self.evidence_for(Binding::Identity, nonce, identity, now)
    }

    /// Evidence binding `nonce` and `key` for the purpose `binding` names.
    pub fn evidence_for(
        &self,
        binding: Binding,
        nonce: &[u8; NONCE_LEN],
        key: &PublicKey,
        now: i64,
    ) -> Result<Evidence, EvidenceError> {
        let identity = key;
        let data = bound_report_data(binding, nonce, identity);
        let (tee, report, endorsements) = match self {
            Attester::Sim(platform) => {
                let (report, signature) = platform.report(data, now)?;
                (TeeKind::Sim, report, vec![("sim_signature", signature)])
            }
            Attester::Snp => {
                let (report, vcek) = snp::guest_report(data)?;
                let endorsements = vcek.map(|v| ("vcek", v)).into_iter().collect();
                (TeeKind::Snp, report, endorsements)
            }
            #[cfg(feature = "csv")]
            Attester::Csv { hsk_cek_file } => {
                let (report, hsk_cek) = csv::guest_report(data, hsk_cek_file.as_deref())?;
                let endorsements = hsk_cek.map(|c| ("hsk_cek", c)).into_iter().collect();
                (TeeKind::Csv, report, endorsements)
            }
            Attester::Tdx => {
                let report = tsm::report(data)?;
                if report.provider != "tdx_guest" {
                    return Err(EvidenceError::Device {
                        device: tsm::REPORT_DIR,
                        detail: format!("the provider is {}, not tdx_guest", report.provider),
                    });
                }
                // Collateral is the verifier's to find (inline only when an operator adds
                // it; the quote names its FMSPC).
                (TeeKind::Tdx, report.outblob, vec![])
            }
        };
        Ok(Evidence {
            v: EVIDENCE_VERSION,
            tee: tee.as_str().into(),
            nonce: crate::protocol::b64_encode(nonce),
            identity_key: PublicJwk::new(identity, binding.key_use()),
            report: crate::protocol::b64_encode(&report),
            endorsements: endorsements
                .into_iter()
                .map(|(name, bytes)| (name.to_owned(), crate::protocol::b64_encode(&bytes)))
                .collect(),
        })
    }
}

/// The 64 bytes a report must carry for `nonce` and `identity`.
pub fn report_data(nonce: &[u8], identity: &PublicKey) -> [u8; 64] {
    bound_report_data(Binding::Identity, nonce, identity)
}

/// The 64 bytes a report must carry for `nonce` and `key`, for the purpose `binding` names.
pub fn bound_report_data(binding: Binding, nonce: &[u8], key: &PublicKey) -> [u8; 64] {
    let identity = key;
    let mut input = binding.label().to_vec();
    input.extend_from_slice(&(nonce.len() as u16).to_be_bytes());
    input.extend_from_slice(nonce);
    input.extend_from_slice(&(identity.sec1().len() as u16).to_be_bytes());
    input.extend_from_slice(identity.sec1());
    let mut data = [0u8; 64];
    data[..32].copy_from_slice(&sm3(&input));
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::sm2::IdentityKey;

    #[test]
    fn report_data_binds_nonce_and_key() {
        let key = IdentityKey::generate().unwrap();
        let other = IdentityKey::generate().unwrap();
        let data = report_data(&[1; 32], key.public());
        assert_eq!(&data[32..], &[0u8; 32]);
        assert_ne!(data, report_data(&[2; 32], key.public()));
        assert_ne!(data, report_data(&[1; 32], other.public()));
        let mut manual = b"tee-risk/attest/v1\0\x00\x20".to_vec();
        manual.extend_from_slice(&[1; 32]);
        manual.extend_from_slice(&[0, 65]);
        manual.extend_from_slice(key.public().sec1());
        assert_eq!(&data[..32], &sm3(&manual));

        let join = bound_report_data(Binding::ClusterJoin, &[1; 32], key.public());
        assert_ne!(join, data, "a join report cannot pass for a client report");
        let mut manual = b"tee-risk/cluster-join/v1\0\x00\x20".to_vec();
        manual.extend_from_slice(&[1; 32]);
        manual.extend_from_slice(&[0, 65]);
        manual.extend_from_slice(key.public().sec1());
        assert_eq!(&join[..32], &sm3(&manual));
    }
}

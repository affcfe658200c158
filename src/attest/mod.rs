//! Remote attestation: evidence that binds a client's nonce and the service's identity key
//! to a TEE report, and the one verifier that clients, the CLI and tests use.
//!
//! ```text
//! report_data (64 bytes) = SM3("tee-risk/attest/v1\0" ‖ u16be(len nonce) ‖ nonce
//!                               ‖ u16be(65) ‖ identity key SEC1) ‖ 32 zero bytes
//! ```
//! TEE kinds: `sim` (a simulated report signed by a pinned "sim platform" SM2 key, for
//! machines without a TEE; verifiers refuse it unless their policy lists it) and `snp` (AMD
//! SEV-SNP, verified to AMD's roots) in every build; `csv` (Hygon CSV, verified to Hygon's
//! root) with the cargo feature `csv`.

#[cfg(feature = "csv")]
pub mod csv;
pub mod sim;
pub mod snp;
pub mod verify;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypto::sm2::PublicKey;
use crate::crypto::sm3;
use crate::envelope::b64_encode;
use crate::service::PublicJwk;

/// Evidence format version.
pub const EVIDENCE_VERSION: u32 = 1;
/// Nonces are exactly this long (base64url on the wire).
pub const NONCE_LEN: usize = 32;
const BINDING_LABEL: &[u8] = b"tee-risk/attest/v1\0";

/// `GET /v1/attestation?nonce=…`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    pub v: u32,
    /// `sim`, `snp` or `csv`.
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
}

impl Attester {
    /// Evidence binding `nonce` and `identity`, made now.
    pub fn evidence(
        &self,
        nonce: &[u8; NONCE_LEN],
        identity: &PublicKey,
        now: i64,
    ) -> Result<Evidence, String> {
        let data = report_data(nonce, identity);
        let (tee, report, endorsements) = match self {
            Attester::Sim(platform) => {
                let (report, signature) = platform.report(data, now)?;
                ("sim", report, vec![("sim_signature", signature)])
            }
            Attester::Snp => {
                let (report, vcek) = snp::guest_report(data)?;
                let endorsements = vcek.map(|v| ("vcek", v)).into_iter().collect();
                ("snp", report, endorsements)
            }
            #[cfg(feature = "csv")]
            Attester::Csv { hsk_cek_file } => {
                let (report, hsk_cek) = csv::guest_report(data, hsk_cek_file.as_deref())?;
                let endorsements = hsk_cek.map(|c| ("hsk_cek", c)).into_iter().collect();
                ("csv", report, endorsements)
            }
        };
        Ok(Evidence {
            v: EVIDENCE_VERSION,
            tee: tee.into(),
            nonce: b64_encode(nonce),
            identity_key: PublicJwk::new(identity, "sig"),
            report: b64_encode(&report),
            endorsements: endorsements
                .into_iter()
                .map(|(name, bytes)| (name.to_owned(), b64_encode(&bytes)))
                .collect(),
        })
    }
}

/// The 64 bytes a report must carry for `nonce` and `identity`.
pub fn report_data(nonce: &[u8], identity: &PublicKey) -> [u8; 64] {
    let mut input = BINDING_LABEL.to_vec();
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
    }
}

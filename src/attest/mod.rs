//! Remote attestation: evidence that binds a client's nonce and the service's identity key
//! to a TEE report, and the one verifier that clients, the CLI and tests use.
//!
//! ```text
//! report_data (64 bytes) = SM3("tee-risk/attest/v1\0" ‖ u16be(len nonce) ‖ nonce
//!                               ‖ u16be(65) ‖ identity key SEC1) ‖ 32 zero bytes
//! ```
//! TEE kinds: `sim` (a simulated report signed by a pinned "sim platform" SM2 key, for
//! machines without a TEE; verifiers refuse it unless their policy lists it). AMD SEV-SNP
//! and Hygon CSV are planned (`docs/ATTESTATION.md`).

pub mod sim;
pub mod verify;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypto::sm2::PublicKey;
use crate::crypto::sm3;
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

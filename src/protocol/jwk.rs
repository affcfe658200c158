//! Public keys on the wire (`GET /v1/keys`, attestation evidence): JWK-shaped SM2 keys.

use serde::{Deserialize, Serialize};

use super::b64_encode;
use super::keycert::PublishedKey;
use super::response::SignedResponse;
use crate::crypto::sm2::PublicKey;

/// `GET /v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeysDocument {
    pub keys: Vec<PublicJwk>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicJwk {
    pub kid: String,
    #[serde(rename = "use")]
    pub key_use: String,
    pub crv: String,
    pub x: String,
    pub y: String,
    /// Encryption keys: validity (unix seconds) and the identity key's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<SignedResponse>,
}

impl PublicJwk {
    pub fn new(key: &PublicKey, key_use: &str) -> Self {
        Self {
            kid: key.kid(),
            key_use: key_use.into(),
            crv: "SM2".into(),
            x: b64_encode(key.x()),
            y: b64_encode(key.y()),
            nbf: None,
            exp: None,
            cert: None,
        }
    }

    /// An encryption key with its validity and certificate.
    pub fn encryption(key: &PublishedKey) -> Self {
        Self {
            nbf: Some(key.not_before),
            exp: Some(key.not_after),
            cert: Some(key.certificate.clone()),
            ..Self::new(&key.public, "enc")
        }
    }
}

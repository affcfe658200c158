//! Public keys on the wire (`GET /v1/keys`, attestation evidence): JWK-shaped SM2 keys.

use serde::{Deserialize, Serialize};

use super::keycert::PublishedKey;
use super::response::SignedResponse;
use super::{b64_decode, b64_encode};
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

/// Why a JWK is not an SM2 public key of this protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwkError {
    #[error("key {0}: the curve is not SM2")]
    Curve(String),
    #[error("key {0}: its use is neither \"sig\" nor \"enc\"")]
    Use(String),
    #[error("key {0}: a coordinate is not base64url")]
    Coordinate(String),
    #[error("key {0} is not a point on SM2")]
    NotOnCurve(String),
    #[error("key {0}'s kid does not match its coordinates")]
    Kid(String),
}

impl PublicJwk {
    /// The key, checked: curve SM2, use `sig` or `enc`, coordinates on the curve, and a kid
    /// that is the key's own (SM3 of its point), so that a kid names one key only.
    pub fn key(&self) -> Result<PublicKey, JwkError> {
        let kid = || self.kid.clone();
        if self.crv != "SM2" {
            return Err(JwkError::Curve(kid()));
        }
        if !["sig", "enc"].contains(&self.key_use.as_str()) {
            return Err(JwkError::Use(kid()));
        }
        let coordinate = |v: &str| b64_decode(v).ok_or_else(|| JwkError::Coordinate(kid()));
        let key = PublicKey::from_xy(&coordinate(&self.x)?, &coordinate(&self.y)?)
            .map_err(|_| JwkError::NotOnCurve(kid()))?;
        if key.kid() != self.kid {
            return Err(JwkError::Kid(kid()));
        }
        Ok(key)
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::sm2::IdentityKey;

    #[test]
    fn a_key_is_accepted_only_as_itself() {
        let key = IdentityKey::generate().unwrap();
        let jwk = PublicJwk::new(key.public(), "sig");
        assert_eq!(&jwk.key().unwrap(), key.public());
        let other = IdentityKey::generate().unwrap();
        let wrong_kid = PublicJwk {
            kid: other.public().kid(),
            ..jwk.clone()
        };
        assert!(matches!(wrong_kid.key(), Err(JwkError::Kid(_))));
        let wrong_use = PublicJwk {
            key_use: "wrap".into(),
            ..jwk.clone()
        };
        assert!(matches!(wrong_use.key(), Err(JwkError::Use(_))));
        let wrong_curve = PublicJwk {
            crv: "P-256".into(),
            ..jwk.clone()
        };
        assert!(matches!(wrong_curve.key(), Err(JwkError::Curve(_))));
        let off_curve = PublicJwk {
            y: jwk.x.clone(),
            ..jwk.clone()
        };
        assert!(matches!(off_curve.key(), Err(JwkError::NotOnCurve(_))));
        let bad = PublicJwk {
            x: "not*base64".into(),
            ..jwk
        };
        assert!(matches!(bad.key(), Err(JwkError::Coordinate(_))));
    }
}

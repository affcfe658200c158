//! The signed response: `{"protected","payload","signature"}`, a flattened JWS whose
//! signature is the DER SM2 signature (default ID) over ASCII(protected ‖ "." ‖ payload).

use serde::{Deserialize, Serialize};

use super::{b64_decode, b64_encode};
use crate::crypto::CryptoError;
use crate::crypto::sm2::{IdentityKey, PublicKey};

pub const ALG_SM2_SM3: &str = "SM2-SM3";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SignedResponse {
    pub protected: String,
    pub payload: String,
    pub signature: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseHeader {
    alg: String,
    kid: String,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ResponseError {
    #[error("the response is not a signed JSON object")]
    Malformed,
    #[error("the response header names another algorithm or key")]
    WrongKey,
    #[error("the response signature is invalid")]
    BadSignature,
}

/// Signs responses with the identity key; the protected header is encoded once.
pub struct ResponseSigner {
    protected: String,
}

impl ResponseSigner {
    pub fn new(identity: &PublicKey) -> Self {
        let header = ResponseHeader {
            alg: ALG_SM2_SM3.into(),
            kid: identity.kid(),
        };
        Self {
            protected: b64_encode(&serde_json::to_vec(&header).expect("header serialises")),
        }
    }

    /// Signs `payload_json`; the same payload always gets the same signature (for what
    /// replicas publish alike: key certificates).
    pub fn sign(
        &self,
        key: &IdentityKey,
        payload_json: &[u8],
    ) -> Result<SignedResponse, CryptoError> {
        self.sign_with(payload_json, |parts| key.sign_der(parts))
    }

    /// Signs `payload_json` with a random nonce made ahead (`IdentityKey::sign_der_random`):
    /// for the answer to each request.
    pub fn sign_answer(
        &self,
        key: &IdentityKey,
        payload_json: &[u8],
    ) -> Result<SignedResponse, CryptoError> {
        self.sign_with(payload_json, |parts| key.sign_der_random(parts))
    }

    fn sign_with(
        &self,
        payload_json: &[u8],
        sign: impl FnOnce(&[&[u8]]) -> Result<Vec<u8>, CryptoError>,
    ) -> Result<SignedResponse, CryptoError> {
        let payload = b64_encode(payload_json);
        let signature = sign(&[self.protected.as_bytes(), b".", payload.as_bytes()])?;
        Ok(SignedResponse {
            protected: self.protected.clone(),
            payload,
            signature: b64_encode(&signature),
        })
    }
}

/// Checks a response against the pinned identity key and returns the payload bytes.
pub fn verify(identity: &PublicKey, response: &SignedResponse) -> Result<Vec<u8>, ResponseError> {
    let header_json = b64_decode(&response.protected).ok_or(ResponseError::Malformed)?;
    let header: ResponseHeader =
        serde_json::from_slice(&header_json).map_err(|_| ResponseError::Malformed)?;
    if header.alg != ALG_SM2_SM3 || header.kid != identity.kid() {
        return Err(ResponseError::WrongKey);
    }
    let signature = b64_decode(&response.signature).ok_or(ResponseError::Malformed)?;
    let signed = format!("{}.{}", response.protected, response.payload);
    identity
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| ResponseError::BadSignature)?;
    b64_decode(&response.payload).ok_or(ResponseError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify_and_tamper() {
        let key = IdentityKey::generate().unwrap();
        let signer = ResponseSigner::new(key.public());
        let response = signer.sign(&key, br#"{"decision":"allow"}"#).unwrap();
        assert_eq!(
            verify(key.public(), &response).unwrap(),
            br#"{"decision":"allow"}"#
        );

        let mut tampered = response.clone();
        tampered.payload = b64_encode(br#"{"decision":"deny"}"#);
        assert_eq!(
            verify(key.public(), &tampered).unwrap_err(),
            ResponseError::BadSignature
        );

        let other = IdentityKey::generate().unwrap();
        assert_eq!(
            verify(other.public(), &response).unwrap_err(),
            ResponseError::WrongKey
        );
    }
}

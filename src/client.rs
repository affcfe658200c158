//! The client library (used by `tee-risk client …` and the tests): fetch or pin the service's
//! keys, seal a feature message into an envelope, post it, and accept the answer only if its
//! SM2 signature, request id and request hash all check out.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::crypto::sm2::PublicKey;
use crate::crypto::sm3_hex;
use crate::envelope::b64_decode;
use crate::envelope::request::{ProtectedHeader, seal};
use crate::envelope::response::{SignedResponse, verify};
use crate::service::KeysDocument;
use crate::time::unix_now;

/// Largest response the client reads.
const MAX_RESPONSE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("HTTP request failed: {0}")]
    Http(String),
    #[error("the service refused the request ({status} {code}): {detail}")]
    Refused {
        status: u16,
        code: String,
        detail: String,
    },
    #[error("the response cannot be trusted: {0}")]
    Untrusted(String),
    #[error("{0}")]
    Keys(String),
}

/// What the client sends, before encryption. Wiped on drop.
#[derive(Serialize, Zeroize, ZeroizeOnDrop)]
pub struct FeatureRequest {
    pub user_id: String,
    pub features: Vec<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
}

/// The service's public keys as the client trusts them.
#[derive(Debug, Clone)]
pub struct ServerKeys {
    pub identity: PublicKey,
    pub encryption: PublicKey,
}

impl ServerKeys {
    /// Keys from PEM files the operator distributed (pinning).
    pub fn from_pem(identity_pem: &str, encryption_pem: &str) -> Result<Self, ClientError> {
        let parse = |pem: &str, what: &str| {
            PublicKey::from_pem(pem).map_err(|_| {
                ClientError::Keys(format!("the {what} key PEM is not an SM2 public key"))
            })
        };
        Ok(Self {
            identity: parse(identity_pem, "identity")?,
            encryption: parse(encryption_pem, "encryption")?,
        })
    }

    /// Keys from a `GET /v1/keys` document.
    pub fn from_document(doc: &KeysDocument) -> Result<Self, ClientError> {
        let find = |key_use: &str| -> Result<PublicKey, ClientError> {
            let jwk = doc
                .keys
                .iter()
                .find(|k| k.key_use == key_use && k.crv == "SM2")
                .ok_or_else(|| ClientError::Keys(format!("no SM2 key with use {key_use}")))?;
            let coordinate = |v: &str| {
                b64_decode(v).ok_or_else(|| ClientError::Keys("bad key coordinate".into()))
            };
            let key =
                PublicKey::from_xy(&coordinate(&jwk.x)?, &coordinate(&jwk.y)?).map_err(|_| {
                    ClientError::Keys(format!("the {key_use} key is not a point on SM2"))
                })?;
            if key.kid() != jwk.kid {
                return Err(ClientError::Keys(format!(
                    "the {key_use} key's kid does not match its coordinates"
                )));
            }
            Ok(key)
        };
        Ok(Self {
            identity: find("sig")?,
            encryption: find("enc")?,
        })
    }
}

/// A raw HTTP answer.
pub struct RawResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

pub struct Client {
    base_url: String,
    agent: ureq::Agent,
    keys: ServerKeys,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent()
}

fn read(mut response: ureq::http::Response<ureq::Body>) -> Result<RawResponse, ClientError> {
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BYTES)
        .read_to_vec()
        .map_err(|e| ClientError::Http(e.to_string()))?;
    Ok(RawResponse { status, body })
}

impl Client {
    /// A client that trusts the keys the service publishes at `GET /v1/keys`.
    /// (Trust on first use; attested keys are the planned alternative.)
    pub fn fetch_keys(base_url: &str) -> Result<Self, ClientError> {
        let base_url = base_url.trim_end_matches('/').to_owned();
        let agent = agent();
        let raw = read(
            agent
                .get(format!("{base_url}/v1/keys"))
                .call()
                .map_err(|e| ClientError::Http(e.to_string()))?,
        )?;
        if raw.status != 200 {
            return Err(ClientError::Http(format!(
                "GET /v1/keys answered {}",
                raw.status
            )));
        }
        let doc: KeysDocument = serde_json::from_slice(&raw.body)
            .map_err(|e| ClientError::Keys(format!("bad keys document: {e}")))?;
        let keys = ServerKeys::from_document(&doc)?;
        Ok(Self {
            base_url,
            agent,
            keys,
        })
    }

    /// A client that trusts only `keys` (pinned).
    pub fn with_keys(base_url: &str, keys: ServerKeys) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            agent: agent(),
            keys,
        }
    }

    pub fn keys(&self) -> &ServerKeys {
        &self.keys
    }

    /// Encrypts `request` into an envelope body with a fresh request id.
    pub fn seal(
        &self,
        request: &FeatureRequest,
    ) -> Result<(ProtectedHeader, Vec<u8>), ClientError> {
        let header = ProtectedHeader::new(&self.keys.encryption.kid(), unix_now())
            .map_err(|e| ClientError::Keys(e.to_string()))?;
        let plaintext = Zeroizing::new(
            serde_json::to_vec(request).map_err(|e| ClientError::Keys(e.to_string()))?,
        );
        let body = seal(&self.keys.encryption, &header, &plaintext)
            .map_err(|e| ClientError::Keys(e.to_string()))?;
        Ok((header, body))
    }

    /// Posts `body` to `path` as is (tests use it to send tampered envelopes).
    pub fn post_raw(&self, path: &str, body: &[u8]) -> Result<RawResponse, ClientError> {
        let response = self
            .agent
            .post(format!("{}{path}", self.base_url))
            .header("content-type", "application/json")
            .send(body)
            .map_err(|e| ClientError::Http(e.to_string()))?;
        read(response)
    }

    /// Checks a 200 answer: SM2 signature by the pinned identity key, same `rid`, `req_sm3`
    /// equal to SM3 of the body we sent. Returns the payload.
    pub fn verify_answer(
        &self,
        header: &ProtectedHeader,
        body: &[u8],
        raw: &RawResponse,
    ) -> Result<serde_json::Value, ClientError> {
        if raw.status != 200 {
            #[derive(Deserialize)]
            struct ErrorBody {
                error: String,
                detail: String,
            }
            let error: ErrorBody = serde_json::from_slice(&raw.body).unwrap_or(ErrorBody {
                error: "unknown".into(),
                detail: String::from_utf8_lossy(&raw.body).into_owned(),
            });
            return Err(ClientError::Refused {
                status: raw.status,
                code: error.error,
                detail: error.detail,
            });
        }
        let signed: SignedResponse = serde_json::from_slice(&raw.body)
            .map_err(|_| ClientError::Untrusted("not a signed response".into()))?;
        let payload = verify(&self.keys.identity, &signed)
            .map_err(|e| ClientError::Untrusted(e.to_string()))?;
        let payload: serde_json::Value = serde_json::from_slice(&payload)
            .map_err(|_| ClientError::Untrusted("payload is not JSON".into()))?;
        if payload["rid"] != header.rid.as_str() {
            return Err(ClientError::Untrusted(
                "the response answers another request id".into(),
            ));
        }
        if payload["req_sm3"] != sm3_hex(body).as_str() {
            return Err(ClientError::Untrusted(
                "the response answers another request body".into(),
            ));
        }
        Ok(payload)
    }

    /// Seals, posts and verifies: the whole client side of one request.
    pub fn send(
        &self,
        path: &str,
        request: &FeatureRequest,
    ) -> Result<serde_json::Value, ClientError> {
        let (header, body) = self.seal(request)?;
        let raw = self.post_raw(path, &body)?;
        self.verify_answer(&header, &body, &raw)
    }

    pub fn enroll(&self, request: &FeatureRequest) -> Result<serde_json::Value, ClientError> {
        self.send("/v1/enroll", request)
    }

    pub fn assess(&self, request: &FeatureRequest) -> Result<serde_json::Value, ClientError> {
        self.send("/v1/assess", request)
    }
}

/// Reads a features file: a JSON array of numbers, or an object with `features` or
/// `embedding` (as in the shipped samples and the LFW embedding files).
pub fn read_features_file(path: &std::path::Path) -> Result<Vec<f32>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let array = match &value {
        serde_json::Value::Array(_) => &value,
        serde_json::Value::Object(map) => map
            .get("features")
            .or_else(|| map.get("embedding"))
            .ok_or_else(|| format!("{} has no `features` or `embedding` field", path.display()))?,
        _ => {
            return Err(format!(
                "{} must hold an array or an object",
                path.display()
            ));
        }
    };
    serde_json::from_value(array.clone())
        .map_err(|_| format!("{}: features must be an array of numbers", path.display()))
}

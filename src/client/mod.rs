//! The client library (used by `tee-risk client …` and the tests): fetch or pin the service's
//! keys, seal a feature message into an envelope, post it, and accept the answer only if its
//! SM2 signature, request id and request hash all check out.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::attest::{Check, Evidence, NONCE_LEN, Policy, Verified};
use crate::crypto::aead::KEY_LEN;
use crate::crypto::secret::SecretBytes;
use crate::crypto::sm2::PublicKey;
use crate::crypto::sm3_hex;
use crate::obs::unix_now;
use crate::protocol::answer::{EncryptedAnswer, open_answer};
use crate::protocol::client_auth::ClientCredential;
use crate::protocol::keycert::verify_certificate;
pub use crate::protocol::payload::IdentifyMode;
use crate::protocol::reply::{
    AssessReply, Code, EnrollReply, EraseReply, ErrorBody, ErrorCode, IdentifyReply, Stamp,
};
use crate::protocol::request::{ProtectedHeader, seal_keeping_key};
use crate::protocol::response::{SignedResponse, verify};
use crate::protocol::{KeysDocument, PublicJwk, b64_decode};

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
        /// The stable code (docs/PROTOCOL.md §4); one this client does not know is kept as
        /// text.
        code: Code<ErrorCode>,
        detail: String,
    },
    /// Evidence, a key certificate or an answer failed a check: trust nothing in it.
    #[error("the response cannot be trusted ({failed}): {detail}")]
    Untrusted {
        /// Which check failed.
        failed: Distrust,
        /// What it found.
        detail: String,
    },
    /// The service presents another identity key than the one this client pinned: it
    /// restarted with a new identity (a single node makes one at every start) or it is not
    /// the service that was pinned. Nothing was sent under the new key.
    #[error(
        "the service's identity changed: it presents identity key {presented}, not the pinned \
         {pinned}. A single node makes a new identity at every start: attest it again (tee-risk \
         client attest) and pin the new key (keys/identity.pub.pem) if the evidence holds"
    )]
    IdentityChanged {
        /// The kid of the pinned identity key.
        pinned: String,
        /// The kid of the identity key the service presents now.
        presented: String,
    },
    #[error("{0}")]
    Keys(String),
    /// A features file the CLI was given is unusable.
    #[error("{path}: {reason}")]
    FeaturesFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Which check an untrusted response failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Distrust {
    /// The attestation evidence failed this check of the policy.
    Attestation(Check),
    /// The evidence does not parse.
    Evidence,
    /// A 200 answer that is not a signed response, or an encrypted answer that does not
    /// open under this request's key (or was not sent encrypted when asked).
    Envelope,
    /// The answer's SM2 signature does not verify under the trusted identity key.
    Signature,
    /// The signed answer answers another request id.
    RequestId,
    /// The signed answer answers another request body (`req_sm3`).
    RequestHash,
    /// The signed payload is not the answer this call expects.
    Payload,
}

impl Distrust {
    /// A stable name: the attestation check's own (`measurement`, `tcb`, …) or `evidence`,
    /// `envelope`, `signature`, `request_id`, `request_hash`, `payload`.
    pub fn code(self) -> &'static str {
        match self {
            Distrust::Attestation(check) => check.as_str(),
            Distrust::Evidence => "evidence",
            Distrust::Envelope => "envelope",
            Distrust::Signature => "signature",
            Distrust::RequestId => "request_id",
            Distrust::RequestHash => "request_hash",
            Distrust::Payload => "payload",
        }
    }
}

impl std::fmt::Display for Distrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Distrust::Attestation(check) => return write!(f, "attestation check `{check}`"),
            Distrust::Evidence => "evidence",
            Distrust::Envelope => "answer envelope",
            Distrust::Signature => "signature",
            Distrust::RequestId => "request id",
            Distrust::RequestHash => "request hash",
            Distrust::Payload => "payload",
        })
    }
}

fn untrusted(failed: Distrust, detail: impl ToString) -> ClientError {
    ClientError::Untrusted {
        failed,
        detail: detail.to_string(),
    }
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
    /// PROTOCOL v1.3: the face model that made `features` (e.g. `mobilefacenet192`); `None`
    /// means the service's default model, as clients before v1.3 expect.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[zeroize(skip)]
    pub face_model: Option<String>,
}

/// What the client sends to `POST /v1/identify`, before encryption. Wiped on drop.
#[derive(Serialize, Zeroize, ZeroizeOnDrop)]
pub struct IdentifyRequest {
    pub features: Vec<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Candidates wanted: 1 to 10 to decide (the service's default: 1), 1 to 50 to
    /// investigate (default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    /// `Investigate` for ranked leads without a decision (permission `investigate`); absent
    /// or `Decide` for a decision (permission `identify`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[zeroize(skip)]
    pub mode: Option<IdentifyMode>,
    /// PROTOCOL v1.3: the face model that made `features`; only that model's templates are
    /// searched. `None`: the service's default model.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[zeroize(skip)]
    pub face_model: Option<String>,
}

/// A request sealed for sending: its header and body, and (when an encrypted answer was
/// asked for) the session key that opens the answer, wiped on drop.
pub struct SealedRequest {
    pub header: ProtectedHeader,
    pub body: Vec<u8>,
    answer_key: Option<SecretBytes<KEY_LEN>>,
}

/// The service's public keys as the client trusts them: the identity key, and the
/// encryption key it certified that is valid now.
#[derive(Debug, Clone)]
pub struct ServerKeys {
    pub identity: PublicKey,
    pub encryption: PublicKey,
    /// When the encryption key's certificate expires (unix seconds).
    pub encryption_not_after: i64,
}

fn jwk_key(jwk: &PublicJwk) -> Result<PublicKey, ClientError> {
    let coordinate =
        |v: &str| b64_decode(v).ok_or_else(|| ClientError::Keys("bad key coordinate".into()));
    let key = PublicKey::from_xy(&coordinate(&jwk.x)?, &coordinate(&jwk.y)?)
        .map_err(|_| ClientError::Keys(format!("key {} is not a point on SM2", jwk.kid)))?;
    if key.kid() != jwk.kid {
        return Err(ClientError::Keys(format!(
            "key {}'s kid does not match its coordinates",
            jwk.kid
        )));
    }
    Ok(key)
}

impl ServerKeys {
    /// The identity key of a PEM file the operator distributed (pinning).
    pub fn identity_from_pem(pem: &str) -> Result<PublicKey, ClientError> {
        PublicKey::from_pem(pem)
            .map_err(|_| ClientError::Keys("the identity key PEM is not an SM2 public key".into()))
    }

    /// Keys from a `GET /v1/keys` document. The identity key is the document's own (trust
    /// on first use) unless `pinned` is given, in which case the document must carry that
    /// key. The encryption key is the newest one whose certificate verifies against the
    /// identity key and whose validity holds at `now`.
    pub fn from_document(
        doc: &KeysDocument,
        pinned: Option<&PublicKey>,
        now: i64,
    ) -> Result<Self, ClientError> {
        let sig = doc
            .keys
            .iter()
            .find(|k| k.key_use == "sig" && k.crv == "SM2")
            .ok_or_else(|| ClientError::Keys("no SM2 identity key (use sig)".into()))?;
        let identity = jwk_key(sig)?;
        if let Some(pinned) = pinned.filter(|p| **p != identity) {
            return Err(ClientError::IdentityChanged {
                pinned: pinned.kid(),
                presented: identity.kid(),
            });
        }
        let mut best: Option<(i64, i64, PublicKey)> = None;
        let mut rejected = Vec::new();
        for jwk in doc.keys.iter().filter(|k| k.key_use == "enc") {
            let checked = jwk_key(jwk).and_then(|key| {
                let cert = jwk.cert.as_ref().ok_or_else(|| {
                    ClientError::Keys(format!("encryption key {} has no certificate", jwk.kid))
                })?;
                let statement = verify_certificate(&identity, &key, cert)
                    .map_err(|e| ClientError::Keys(format!("encryption key {}: {e}", jwk.kid)))?;
                Ok((statement, key))
            });
            match checked {
                Ok((statement, key))
                    if statement.not_before <= now && now <= statement.not_after =>
                {
                    if best
                        .as_ref()
                        .is_none_or(|(nbf, _, _)| statement.not_before > *nbf)
                    {
                        best = Some((statement.not_before, statement.not_after, key));
                    }
                }
                Ok(_) => rejected.push(format!("{}: not valid now", jwk.kid)),
                Err(e) => rejected.push(e.to_string()),
            }
        }
        let (_, encryption_not_after, encryption) = best.ok_or_else(|| {
            ClientError::Keys(format!(
                "no certified encryption key valid now ({})",
                rejected.join("; ")
            ))
        })?;
        Ok(Self {
            identity,
            encryption,
            encryption_not_after,
        })
    }
}

/// A raw HTTP answer.
pub struct RawResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// What a client trusts the service's identity by, so that it can fetch the keys again
/// when the service says it no longer knows the encryption key (`unknown_kid` after a
/// restart, `key_retired` after a long pause).
#[derive(Clone)]
enum Trust {
    /// The identity key `GET /v1/keys` presents (development).
    FirstUse,
    /// Only this identity key: a new one is [`ClientError::IdentityChanged`].
    Pinned(PublicKey),
    /// Whatever identity fresh evidence binds under this policy (a restarted single node's
    /// new identity is accepted when its attestation passes).
    Attested(Box<Policy>),
}

pub struct Client {
    base_url: String,
    agent: ureq::Agent,
    keys: RwLock<ServerKeys>,
    trust: Trust,
    /// Signs every request it posts (`access.rs`); without one the service answers 401.
    credential: Option<Arc<ClientCredential>>,
    /// Ask for every answer encrypted to this client (identify always is).
    encrypt_answers: bool,
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

/// `GET base_url ‖ path`, expecting 200; returns the body.
fn get_ok(agent: &ureq::Agent, base_url: &str, path: &str) -> Result<Vec<u8>, ClientError> {
    let raw = read(
        agent
            .get(format!("{base_url}{path}"))
            .call()
            .map_err(|e| ClientError::Http(e.to_string()))?,
    )?;
    if raw.status != 200 {
        let route = path.split('?').next().unwrap_or(path);
        return Err(ClientError::Http(format!(
            "GET {route} answered {}",
            raw.status
        )));
    }
    Ok(raw.body)
}

/// Checks an answer in the clear to the envelope `body` (which may have been built by another
/// program: its request id is read from its protected header) under the service's `identity`
/// key, and returns its payload as `T` (any answer: `serde_json::Value`). A refusal becomes
/// [`ClientError::Refused`]; an encrypted answer cannot be checked here (only the sealer
/// holds its key).
pub fn verify_answer_to<T: DeserializeOwned>(
    identity: &PublicKey,
    body: &[u8],
    raw: &RawResponse,
) -> Result<T, ClientError> {
    let envelope = crate::protocol::request::RequestEnvelope::parse(body)
        .map_err(|e| ClientError::Keys(format!("not a request envelope: {e}")))?;
    check_signed_answer(identity, &envelope.header.rid, body, raw)
}

/// A refusal as a typed error; a 200 answer only if signed by `identity` for request `rid`
/// and the exact `body` (`req_sm3`), then read as `T`.
fn check_signed_answer<T: DeserializeOwned>(
    identity: &PublicKey,
    rid: &str,
    body: &[u8],
    raw: &RawResponse,
) -> Result<T, ClientError> {
    if raw.status != 200 {
        let error: ErrorBody = serde_json::from_slice(&raw.body).unwrap_or(ErrorBody {
            error: Code::Other("unknown".into()),
            detail: String::from_utf8_lossy(&raw.body).into_owned(),
        });
        return Err(ClientError::Refused {
            status: raw.status,
            code: error.error,
            detail: error.detail,
        });
    }
    let signed: SignedResponse = serde_json::from_slice(&raw.body)
        .map_err(|_| untrusted(Distrust::Envelope, "not a signed response"))?;
    let payload = verify(identity, &signed).map_err(|e| untrusted(Distrust::Signature, e))?;
    let stamp: Stamp = serde_json::from_slice(&payload)
        .map_err(|e| untrusted(Distrust::Payload, format!("no answer stamp: {e}")))?;
    if stamp.rid != rid {
        return Err(untrusted(
            Distrust::RequestId,
            "the response answers another request id",
        ));
    }
    if stamp.req_sm3 != sm3_hex(body) {
        return Err(untrusted(
            Distrust::RequestHash,
            "the response answers another request body",
        ));
    }
    serde_json::from_slice(&payload).map_err(|e| {
        untrusted(
            Distrust::Payload,
            format!(
                "a signed {} answer that does not read as expected: {e}",
                stamp.op
            ),
        )
    })
}

impl Client {
    /// A client that trusts the identity key the service publishes at `GET /v1/keys`
    /// (trust on first use; attested keys are the planned alternative) and the encryption
    /// key that identity certified.
    pub fn fetch_keys(base_url: &str) -> Result<Self, ClientError> {
        Self::fetch_keys_checked(base_url, None)
    }

    /// Attests the service first: sends a fresh nonce to `GET /v1/attestation`, verifies the
    /// evidence under `policy` (which says exactly which check failed, if one does), then
    /// trusts the identity key the report binds and the encryption keys it certified.
    pub fn attest(base_url: &str, policy: &Policy) -> Result<(Self, Verified), ClientError> {
        let base_url = base_url.trim_end_matches('/').to_owned();
        let nonce: [u8; NONCE_LEN] =
            crate::crypto::random_array().map_err(|e| ClientError::Keys(e.to_string()))?;
        let path = format!(
            "/v1/attestation?nonce={}",
            crate::protocol::b64_encode(&nonce)
        );
        let body = get_ok(&agent(), &base_url, &path)?;
        let evidence: Evidence = serde_json::from_slice(&body)
            .map_err(|e| untrusted(Distrust::Evidence, format!("bad evidence: {e}")))?;
        let verified = policy
            .verify(&evidence, &nonce, unix_now())
            .map_err(|e| untrusted(Distrust::Attestation(e.check), e.detail))?;
        let mut client = Self::fetch_keys_pinned(&base_url, &verified.identity)?;
        client.trust = Trust::Attested(Box::new(policy.clone()));
        Ok((client, verified))
    }

    /// A client that trusts only the `identity` key it was given, and encryption keys that
    /// key certified.
    pub fn fetch_keys_pinned(base_url: &str, identity: &PublicKey) -> Result<Self, ClientError> {
        Self::fetch_keys_checked(base_url, Some(identity))
    }

    fn fetch_keys_checked(base_url: &str, pinned: Option<&PublicKey>) -> Result<Self, ClientError> {
        let base_url = base_url.trim_end_matches('/').to_owned();
        let agent = agent();
        let body = get_ok(&agent, &base_url, "/v1/keys")?;
        let doc: KeysDocument = serde_json::from_slice(&body)
            .map_err(|e| ClientError::Keys(format!("bad keys document: {e}")))?;
        let keys = ServerKeys::from_document(&doc, pinned, unix_now())?;
        Ok(Self {
            base_url,
            agent,
            keys: RwLock::new(keys),
            trust: pinned.map_or(Trust::FirstUse, |p| Trust::Pinned(p.clone())),
            credential: None,
            encrypt_answers: false,
        })
    }

    /// A client that trusts only `keys` (pinned: a later key fetch accepts only their
    /// identity key).
    pub fn with_keys(base_url: &str, keys: ServerKeys) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            agent: agent(),
            trust: Trust::Pinned(keys.identity.clone()),
            keys: RwLock::new(keys),
            credential: None,
            encrypt_answers: false,
        }
    }

    /// Fetches the service's keys again under the trust this client was made with: the
    /// same pinned identity, or fresh evidence under the same attestation policy (which may
    /// bind a new identity: a restarted single node), or what the service presents.
    pub fn refresh_keys(&self) -> Result<(), ClientError> {
        let fresh = match &self.trust {
            Trust::FirstUse => Self::fetch_keys_checked(&self.base_url, None)?,
            Trust::Pinned(identity) => Self::fetch_keys_checked(&self.base_url, Some(identity))?,
            Trust::Attested(policy) => Self::attest(&self.base_url, policy)?.0,
        };
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = fresh.keys();
        Ok(())
    }

    /// The same client, asking for every answer encrypted to it (docs/PROTOCOL.md §3a).
    pub fn with_encrypted_answers(mut self) -> Self {
        self.encrypt_answers = true;
        self
    }

    /// The same client, signing its requests with `credential`.
    pub fn with_credential(mut self, credential: Arc<ClientCredential>) -> Self {
        self.credential = Some(credential);
        self
    }

    /// The keys this client trusts now (a copy: [`Client::refresh_keys`] may replace them).
    pub fn keys(&self) -> ServerKeys {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Encrypts `request` into an envelope body with a fresh request id (answer in the
    /// clear).
    pub fn seal<T: Serialize>(
        &self,
        request: &T,
    ) -> Result<(ProtectedHeader, Vec<u8>), ClientError> {
        let sealed = self.seal_request(request, false)?;
        Ok((sealed.header, sealed.body))
    }

    /// Encrypts `request`, asking for an encrypted answer when `encrypted_answer`.
    pub fn seal_request<T: Serialize>(
        &self,
        request: &T,
        encrypted_answer: bool,
    ) -> Result<SealedRequest, ClientError> {
        let encryption = self.keys().encryption;
        let mut header = ProtectedHeader::new(&encryption.kid(), unix_now())
            .map_err(|e| ClientError::Keys(e.to_string()))?;
        if encrypted_answer {
            header = header.with_encrypted_answer();
        }
        let plaintext = Zeroizing::new(
            serde_json::to_vec(request).map_err(|e| ClientError::Keys(e.to_string()))?,
        );
        let (body, key) = seal_keeping_key(&encryption, &header, &plaintext)
            .map_err(|e| ClientError::Keys(e.to_string()))?;
        Ok(SealedRequest {
            header,
            body,
            answer_key: encrypted_answer.then_some(key),
        })
    }

    /// Checks the answer to `sealed`: decrypts it first when it was asked encrypted (and
    /// refuses one sent in the clear then), then as [`Client::verify_answer`].
    pub fn verify_sealed_answer<R: DeserializeOwned>(
        &self,
        sealed: &SealedRequest,
        raw: &RawResponse,
    ) -> Result<R, ClientError> {
        let Some(key) = &sealed.answer_key else {
            return self.verify_answer(&sealed.header, &sealed.body, raw);
        };
        if raw.status != 200 {
            return self.verify_answer(&sealed.header, &sealed.body, raw);
        }
        let encrypted: EncryptedAnswer = serde_json::from_slice(&raw.body).map_err(|_| {
            untrusted(
                Distrust::Envelope,
                "an encrypted answer was asked for, not sent",
            )
        })?;
        let signed = open_answer(key, &sealed.header.rid, &encrypted)
            .map_err(|e| untrusted(Distrust::Envelope, e))?;
        self.verify_answer(
            &sealed.header,
            &sealed.body,
            &RawResponse {
                status: 200,
                body: signed.to_vec(),
            },
        )
    }

    /// Posts `body` to `path` as is, signed when the client has a credential (tests use it
    /// to send tampered envelopes).
    pub fn post_raw(&self, path: &str, body: &[u8]) -> Result<RawResponse, ClientError> {
        self.request_raw("POST", path, body)
    }

    /// Sends `body` with `method` (POST or DELETE) to `path`, signed when the client has a
    /// credential.
    pub fn request_raw(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<RawResponse, ClientError> {
        let authorization = match &self.credential {
            Some(credential) => Some(
                credential
                    .authorization(method, path, body)
                    .map_err(|e| ClientError::Keys(e.to_string()))?,
            ),
            None => None,
        };
        self.send_with_authorization(method, path, body, authorization.as_deref())
    }

    /// Sends `body` with an `Authorization` value made beforehand (load generators sign
    /// ahead of time), or none.
    pub fn send_with_authorization(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        authorization: Option<&str>,
    ) -> Result<RawResponse, ClientError> {
        let url = format!("{}{path}", self.base_url);
        let mut request = match method {
            "POST" => self.agent.post(url),
            "DELETE" => self.agent.delete(url).force_send_body(),
            other => return Err(ClientError::Http(format!("unsupported method {other}"))),
        }
        .header("content-type", "application/json");
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        read(
            request
                .send(body)
                .map_err(|e| ClientError::Http(e.to_string()))?,
        )
    }

    /// Checks a 200 answer: SM2 signature by the pinned identity key, same `rid`, `req_sm3`
    /// equal to SM3 of the body we sent. Returns the payload.
    pub fn verify_answer<R: DeserializeOwned>(
        &self,
        header: &ProtectedHeader,
        body: &[u8],
        raw: &RawResponse,
    ) -> Result<R, ClientError> {
        check_signed_answer(&self.keys().identity, &header.rid, body, raw)
    }

    /// Seals, sends and verifies one request. When the service no longer knows the key it
    /// was sealed to (`unknown_kid`: it restarted; `key_retired`: the key expired while this
    /// client waited), nothing was spent: the keys are fetched again under this client's
    /// trust ([`Client::refresh_keys`]) and the request is sealed afresh (a new `rid`) and
    /// sent once more. A pinned client whose service changed identity gets
    /// [`ClientError::IdentityChanged`] instead.
    pub fn exchange<T: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        request: &T,
        encrypted_answer: bool,
    ) -> Result<R, ClientError> {
        let once = || {
            let sealed = self.seal_request(request, encrypted_answer)?;
            let raw = self.request_raw(method, path, &sealed.body)?;
            self.verify_sealed_answer(&sealed, &raw)
        };
        match once() {
            Err(ClientError::Refused {
                status: 400,
                code: Code::Known(ErrorCode::UnknownKid | ErrorCode::KeyRetired),
                ..
            }) => {
                self.refresh_keys()?;
                once()
            }
            other => other,
        }
    }

    /// Seals, posts and verifies a feature message to `path` (`/v1/enroll`, `/v1/assess`)
    /// and returns the verified payload as `R`: the typed answer, or any answer as
    /// `serde_json::Value`.
    pub fn send<R: DeserializeOwned>(
        &self,
        path: &str,
        request: &FeatureRequest,
    ) -> Result<R, ClientError> {
        self.exchange("POST", path, request, self.encrypt_answers)
    }

    /// `POST /v1/identify`: the enrolled users this face may be, with a decision (or, with
    /// `mode: Investigate`, ranked candidates and no decision); the answer is always
    /// encrypted to this client.
    pub fn identify(&self, request: &IdentifyRequest) -> Result<IdentifyReply, ClientError> {
        self.exchange("POST", "/v1/identify", request, true)
    }

    /// `POST /v1/enroll`: adds a template for the user (or refuses a face that is another
    /// user's: `outcome` says which).
    pub fn enroll(&self, request: &FeatureRequest) -> Result<EnrollReply, ClientError> {
        self.send("/v1/enroll", request)
    }

    /// `POST /v1/assess`: allow / step_up / deny, with a score and reason codes.
    pub fn assess(&self, request: &FeatureRequest) -> Result<AssessReply, ClientError> {
        self.send("/v1/assess", request)
    }

    /// `DELETE /v1/users`: erases everything the service keeps about `user_id`.
    pub fn erase(&self, user_id: &str) -> Result<EraseReply, ClientError> {
        self.exchange(
            "DELETE",
            "/v1/users",
            &serde_json::json!({ "user_id": user_id }),
            self.encrypt_answers,
        )
    }
}

/// Reads a features file: a JSON array of numbers, or an object with `features` or
/// `embedding` (as in the shipped samples and the LFW embedding files).
pub fn read_features_file(path: &std::path::Path) -> Result<Vec<f32>, ClientError> {
    let fail = |reason: String| ClientError::FeaturesFile {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| fail(format!("not JSON: {e}")))?;
    let array = match &value {
        serde_json::Value::Array(_) => &value,
        serde_json::Value::Object(map) => map
            .get("features")
            .or_else(|| map.get("embedding"))
            .ok_or_else(|| fail("no `features` or `embedding` field".into()))?,
        _ => return Err(fail("must hold an array or an object".into())),
    };
    serde_json::from_value(array.clone())
        .map_err(|_| fail("features must be an array of numbers".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::sm2::IdentityKey;
    use crate::service::keyset::KeySet;

    fn document(keys: &KeySet) -> KeysDocument {
        let mut jwks = vec![PublicJwk::new(keys.identity().public(), "sig")];
        jwks.extend(keys.published().iter().map(PublicJwk::encryption));
        KeysDocument { keys: jwks }
    }

    #[test]
    fn the_newest_certified_key_valid_now_is_chosen() {
        let keys = KeySet::new(KeySet::bootstrap(3600, 300, 1_000).unwrap(), 1_000).unwrap();
        let first = keys.newest();
        keys.maintain(4_600).unwrap();
        let second = keys.newest();
        let doc = document(&keys);
        let during_grace = ServerKeys::from_document(&doc, None, 4_700).unwrap();
        assert_eq!(during_grace.encryption, second);
        assert_eq!(during_grace.encryption_not_after, 8_200);
        // Before the second key's validity only the first is acceptable.
        assert_eq!(
            ServerKeys::from_document(&doc, None, 4_000)
                .unwrap()
                .encryption,
            first
        );
        let expired = ServerKeys::from_document(&doc, None, 9_000).unwrap_err();
        assert!(expired.to_string().contains("not valid now"), "{expired}");
    }

    #[test]
    fn keys_not_certified_by_the_identity_are_refused() {
        let keys = KeySet::new(KeySet::bootstrap(3600, 300, 1_000).unwrap(), 1_000).unwrap();
        let mut doc = document(&keys);
        // Swap in another identity: the encryption key's certificate no longer verifies.
        let other = IdentityKey::generate().unwrap();
        doc.keys[0] = PublicJwk::new(other.public(), "sig");
        let err = ServerKeys::from_document(&doc, None, 1_000).unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");
        // A certificate stripped off is refused too.
        let mut bare = document(&keys);
        bare.keys[1].cert = None;
        assert!(ServerKeys::from_document(&bare, None, 1_000).is_err());
        // And a pinned identity must be the one presented.
        let pinned = ServerKeys::from_document(&document(&keys), Some(other.public()), 1_000);
        assert!(pinned.unwrap_err().to_string().contains("pinned"));
    }
}

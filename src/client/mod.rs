//! The client library (used by `tee-risk client …` and the tests): fetch or pin the service's
//! keys, seal a feature message into an envelope, post it, and accept the answer only if its
//! SM2 signature, request id and request hash all check out.

use std::sync::{Arc, RwLock};

use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::attest::{Evidence, NONCE_LEN, Policy, Verified};
use crate::crypto::aead::KEY_LEN;
use crate::crypto::secret::SecretBytes;
use crate::crypto::sm2::PublicKey;
use crate::obs::unix_now;
use crate::protocol::KeysDocument;
use crate::protocol::answer::{EncryptedAnswer, open_answer};
use crate::protocol::client_auth::ClientCredential;
pub use crate::protocol::payload::IdentifyMode;
use crate::protocol::reply::{
    AssessReply, Code, EnrollReply, EraseReply, ErrorCode, IdentifyReply,
};
use crate::protocol::request::{ProtectedHeader, seal_keeping_key};

mod check;
mod custody;
mod error;
mod features_file;
mod keys;
mod transport;

pub use check::verify_answer_to;
pub use custody::custody_status;
pub use error::{ClientError, Distrust};
pub use features_file::read_features_file;
pub use keys::ServerKeys;
pub use transport::RawResponse;

use check::check_signed_answer;
use error::untrusted;
use transport::{agent, get_ok, read};

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

#[cfg(test)]
mod tests;

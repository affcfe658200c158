//! The tee-risk client library for other languages, through Mozilla's uniffi: one definition
//! (this file) from which Python, Kotlin and Swift bindings are generated. Everything here
//! delegates to `tee_risk::client`, the Rust client the CLI and the tests use: attestation
//! under a policy, certified keys, envelopes, request signatures, answer checks and answer
//! decryption exist once, in Rust (docs/CLIENTS.md says why uniffi).
//!
//! Answers come back as records (the verified payloads of docs/PROTOCOL.md §3) with their
//! codes as the protocol's stable strings; a field a newer service adds reaches callers in
//! `extra_json` without a new binding.

use std::path::Path;
use std::sync::Arc;

use tee_risk::client::{
    self, Client, ClientError, FeatureRequest, IdentifyMode, IdentifyRequest, RawResponse,
    ServerKeys,
};
use tee_risk::protocol::client_auth::{ClientCredential, valid_client_id};
use tee_risk::protocol::reply::{
    AssessReply, Code, EnrollReply, EraseReply, Extra, IdentifyReply, WireCode,
};
use tee_risk::{Policy, PublicKey, ReleaseError, ReleaseLog, SignedManifest};
use tee_risk::{load_sm2_key, parse_sm2_key};

uniffi::setup_scaffolding!("tee_risk_client");

/// Every failure a caller can meet, by whose fault and what to do.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum TeeRiskError {
    /// The service could not be reached, or answered outside the protocol: retry later.
    #[error("HTTP request failed: {detail}")]
    Http { detail: String },
    /// The service refused the request with a typed error (docs/PROTOCOL.md §4).
    #[error("the service refused the request ({status} {code}): {detail}")]
    Refused {
        status: u16,
        /// The stable code (docs/PROTOCOL.md §4).
        code: String,
        detail: String,
    },
    /// Evidence or an answer failed a check: trust nothing in it. `check` names it: the
    /// attestation check (`measurement`, `tcb`, `debug`, … docs/ATTESTATION.md) or
    /// `evidence`, `envelope`, `signature`, `request_id`, `request_hash`, `payload`.
    #[error("the response cannot be trusted ({check}): {detail}")]
    Untrusted { check: String, detail: String },
    /// The service's keys are unusable (none certified, none valid now, another identity
    /// than the pinned one).
    #[error("{detail}")]
    Keys { detail: String },
    /// An argument is unusable: a key that is no SM2 key, a policy file that does not load,
    /// payload text that is not JSON.
    #[error("invalid argument: {detail}")]
    InvalidArgument { detail: String },
    /// The pinned service presents another identity key (kids given): it restarted with a
    /// new identity, or it is not the pinned service. Attest it again and pin the new key.
    #[error("{detail}")]
    IdentityChanged {
        pinned: String,
        presented: String,
        detail: String,
    },
}

impl From<ClientError> for TeeRiskError {
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::Http(detail) => Self::Http { detail },
            ClientError::Refused {
                status,
                code,
                detail,
            } => Self::Refused {
                status,
                code: code.to_string(),
                detail,
            },
            ClientError::Untrusted { failed, detail } => Self::Untrusted {
                check: failed.code().to_owned(),
                detail,
            },
            ClientError::Keys(detail) => Self::Keys { detail },
            ClientError::IdentityChanged { pinned, presented } => Self::IdentityChanged {
                detail: ClientError::IdentityChanged {
                    pinned: pinned.clone(),
                    presented: presented.clone(),
                }
                .to_string(),
                pinned,
                presented,
            },
            other => Self::InvalidArgument {
                detail: other.to_string(),
            },
        }
    }
}

fn invalid(detail: impl ToString) -> TeeRiskError {
    TeeRiskError::InvalidArgument {
        detail: detail.to_string(),
    }
}

/// What a verifier accepts (docs/ATTESTATION.md, "The policy file").
#[derive(uniffi::Object)]
pub struct AttestationPolicy(Policy);

#[uniffi::export]
impl AttestationPolicy {
    /// Loads a policy file (TOML); a relative sim platform key is read beside it.
    #[uniffi::constructor]
    pub fn load(path: String) -> Result<Arc<Self>, TeeRiskError> {
        Ok(Arc::new(Self(
            Policy::load(Path::new(&path)).map_err(invalid)?,
        )))
    }

    /// This policy with its measurements replaced by those of signed release manifests
    /// (docs/ATTESTATION.md, "From measurement to source"): a measurement passes only if a
    /// manifest (the text of a `release.json`) signed by the release key (`release_key_pem`)
    /// lists it, and, with `release_log` (the text of `releases.log`), only if the log lists
    /// the manifest. A manifest that fails is refused as `Untrusted` with its check
    /// (`release_key`, `release_signature`, `release_copy`, `release_format`, `release_log`).
    pub fn require_releases(
        &self,
        manifests: Vec<String>,
        release_key_pem: String,
        release_log: Option<String>,
    ) -> Result<Arc<Self>, TeeRiskError> {
        let key = PublicKey::from_pem(&release_key_pem)
            .map_err(|_| invalid("the release key is not an SM2 public key PEM"))?;
        let manifests = manifests
            .iter()
            .map(|text| SignedManifest::parse(text.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(untrusted_release)?;
        let log = release_log
            .map(|text| ReleaseLog::parse(&text))
            .transpose()
            .map_err(untrusted_release)?;
        let policy = self
            .0
            .clone()
            .require_releases(&key, &manifests, log.as_ref())
            .map_err(untrusted_release)?;
        Ok(Arc::new(Self(policy)))
    }
}

fn untrusted_release(error: ReleaseError) -> TeeRiskError {
    TeeRiskError::Untrusted {
        check: error.check.as_str().to_owned(),
        detail: error.detail,
    }
}

/// A registered client's id and SM2 private key; signs every request (docs/PROTOCOL.md,
/// "Client authentication"). The key is held in wiping memory.
#[derive(uniffi::Object)]
pub struct Credential(Arc<ClientCredential>);

#[uniffi::export]
impl Credential {
    /// From the key's text: 64 hex digits or a PKCS#8 PEM.
    #[uniffi::constructor]
    pub fn new(client_id: String, private_key: String) -> Result<Arc<Self>, TeeRiskError> {
        let key = parse_sm2_key(&private_key)
            .map_err(|_| invalid("the private key is not 64 hex digits or a PKCS#8 SM2 PEM"))?;
        Self::checked(client_id, key)
    }

    /// From a key file (as `make run` writes `data/dev-client-key.hex`).
    #[uniffi::constructor]
    pub fn from_file(client_id: String, path: String) -> Result<Arc<Self>, TeeRiskError> {
        Self::checked(client_id, load_sm2_key(Path::new(&path)).map_err(invalid)?)
    }

    /// The client id.
    pub fn client_id(&self) -> String {
        self.0.id().to_owned()
    }

    /// The public key the operator registers for this client (PEM).
    pub fn public_key_pem(&self) -> String {
        self.0.public().to_pem()
    }
}

impl Credential {
    fn checked(client_id: String, key: tee_risk::IdentityKey) -> Result<Arc<Self>, TeeRiskError> {
        if !valid_client_id(&client_id) {
            return Err(invalid(format!("{client_id:?} is not a valid client id")));
        }
        Ok(Arc::new(Self(Arc::new(ClientCredential::new(
            &client_id, key,
        )))))
    }
}

/// What a verified attestation showed.
#[derive(Clone, uniffi::Record)]
pub struct Attestation {
    /// `snp`, `csv`, `tdx` or `sim`.
    pub tee: String,
    pub measurement: String,
    pub debug: bool,
    /// When the report says it was made (sim only; hardware reports are fresh by the nonce).
    pub issued_at: Option<i64>,
    /// The identity key the report binds, which signs answers and certifies encryption keys.
    pub identity_kid: String,
    /// The signed release that lists the measurement (a policy with releases): its commit.
    pub release_commit: Option<String>,
    /// … and its version.
    pub release_version: Option<String>,
}

/// `enroll`'s verified answer (docs/PROTOCOL.md §3).
#[derive(Debug, Clone, uniffi::Record)]
pub struct EnrollAnswer {
    /// The request id answered, and when (unix seconds).
    pub rid: String,
    pub iat: i64,
    /// `enrolled`, or `identity_conflict` (the face is another user's: nothing stored).
    pub outcome: String,
    /// The user's template count now, under `face_model`.
    pub templates: u64,
    /// Reason codes (docs/PROTOCOL.md, "Reason codes").
    pub reasons: Vec<String>,
    /// The risk model's version and the face model used.
    pub model: String,
    pub face_model: String,
    /// Fields a newer service added, as a JSON object (`{}` when none).
    pub extra_json: String,
}

/// `assess`'s verified answer.
#[derive(Debug, Clone, uniffi::Record)]
pub struct AssessAnswer {
    pub rid: String,
    pub iat: i64,
    /// `allow`, `step_up` or `deny`.
    pub decision: String,
    /// The risk score in [0, 1] (higher is riskier).
    pub score: f64,
    pub reasons: Vec<String>,
    pub model: String,
    pub face_model: String,
    pub extra_json: String,
}

/// One candidate of an identification.
#[derive(Debug, Clone, uniffi::Record)]
pub struct Candidate {
    /// 1 for the best (investigative mode only).
    pub rank: Option<u32>,
    pub user_id: String,
    /// Cosine similarity with the user's enrolled centroid.
    pub similarity: f64,
    /// A stranger's chance of scoring this well against some user of a gallery this size.
    pub fmr: f64,
    /// The calibrated FMR of this one comparison (investigative mode only).
    pub pair_fmr: Option<f64>,
}

/// `identify`'s and `investigate`'s verified answer.
#[derive(Debug, Clone, uniffi::Record)]
pub struct IdentifyAnswer {
    pub rid: String,
    pub iat: i64,
    /// `decide` or `investigate`.
    pub mode: String,
    /// `match`, `no_match`, `ambiguous` or `refused` to decide; `candidates` or `refused` to
    /// investigate.
    pub decision: String,
    /// How many enrolled users were searched.
    pub searched: u64,
    pub candidates: Vec<Candidate>,
    pub reasons: Vec<String>,
    pub model: String,
    pub face_model: String,
    pub extra_json: String,
}

/// `erase`'s verified answer: what was removed or scrubbed.
#[derive(Debug, Clone, uniffi::Record)]
pub struct EraseAnswer {
    pub rid: String,
    pub iat: i64,
    pub templates: u64,
    pub history: u64,
    /// Risk log entries kept as decisions only.
    pub risk_logs_scrubbed: u64,
    pub extra_json: String,
}

fn codes<T: WireCode>(codes: &[Code<T>]) -> Vec<String> {
    codes.iter().map(Code::to_string).collect()
}

fn extra_json(extra: &Extra) -> String {
    serde_json::Value::Object(extra.clone()).to_string()
}

impl From<EnrollReply> for EnrollAnswer {
    fn from(reply: EnrollReply) -> Self {
        Self {
            rid: reply.stamp.rid,
            iat: reply.stamp.iat,
            outcome: reply.outcome.to_string(),
            templates: reply.templates as u64,
            reasons: codes(&reply.reasons),
            model: reply.model,
            face_model: reply.face_model,
            extra_json: extra_json(&reply.extra),
        }
    }
}

impl From<AssessReply> for AssessAnswer {
    fn from(reply: AssessReply) -> Self {
        Self {
            rid: reply.stamp.rid,
            iat: reply.stamp.iat,
            decision: reply.decision.to_string(),
            score: reply.score,
            reasons: codes(&reply.reasons),
            model: reply.model,
            face_model: reply.face_model,
            extra_json: extra_json(&reply.extra),
        }
    }
}

impl From<IdentifyReply> for IdentifyAnswer {
    fn from(reply: IdentifyReply) -> Self {
        Self {
            rid: reply.stamp.rid,
            iat: reply.stamp.iat,
            mode: reply.mode,
            decision: reply.decision.to_string(),
            searched: reply.searched as u64,
            candidates: reply
                .candidates
                .into_iter()
                .map(|c| Candidate {
                    rank: c.rank.map(|r| r as u32),
                    user_id: c.user_id,
                    similarity: c.similarity,
                    fmr: c.fmr,
                    pair_fmr: c.pair_fmr,
                })
                .collect(),
            reasons: codes(&reply.reasons),
            model: reply.model,
            face_model: reply.face_model,
            extra_json: extra_json(&reply.extra),
        }
    }
}

impl From<EraseReply> for EraseAnswer {
    fn from(reply: EraseReply) -> Self {
        Self {
            rid: reply.stamp.rid,
            iat: reply.stamp.iat,
            templates: reply.erased.templates as u64,
            history: reply.erased.history as u64,
            risk_logs_scrubbed: reply.erased.risk_logs_scrubbed as u64,
            extra_json: extra_json(&reply.extra),
        }
    }
}

/// An HTTP answer as received, before any check.
#[derive(uniffi::Record)]
pub struct RawAnswer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl From<RawResponse> for RawAnswer {
    fn from(raw: RawResponse) -> Self {
        Self {
            status: raw.status,
            body: raw.body,
        }
    }
}

impl From<RawAnswer> for RawResponse {
    fn from(raw: RawAnswer) -> Self {
        Self {
            status: raw.status,
            body: raw.body,
        }
    }
}

/// A request sealed to the service: the envelope to post, and (when an encrypted answer was
/// asked for) the session key that opens the answer, wiped when this object is freed.
#[derive(uniffi::Object)]
pub struct SealedRequest(client::SealedRequest);

#[uniffi::export]
impl SealedRequest {
    /// The envelope (docs/PROTOCOL.md §2), the exact bytes to post.
    pub fn body(&self) -> Vec<u8> {
        self.0.body.clone()
    }

    /// The request id the answer must carry.
    pub fn rid(&self) -> String {
        self.0.header.rid.clone()
    }

    /// Whether the answer was asked encrypted to this client.
    pub fn encrypted_answer(&self) -> bool {
        self.0.header.wants_encrypted_answer()
    }
}

/// A client of one service: its verified keys, and the credential that signs requests.
/// Every answer it returns has been checked (signature by the identity key, request id,
/// SM3 of the body sent) and, where asked, decrypted.
#[derive(uniffi::Object)]
pub struct TeeRiskClient {
    inner: Client,
    attestation: Option<Attestation>,
}

impl TeeRiskClient {
    fn wrap(
        inner: Client,
        credential: Option<Arc<Credential>>,
        attestation: Option<Attestation>,
    ) -> Arc<Self> {
        let inner = match credential {
            Some(credential) => inner.with_credential(credential.0.clone()),
            None => inner,
        };
        Arc::new(Self { inner, attestation })
    }

    /// Seals, sends and verifies; re-fetches the keys (re-attests an attested client) once
    /// on unknown_kid.
    fn send<T: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        request: &T,
        encrypted_answer: bool,
    ) -> Result<R, TeeRiskError> {
        Ok(self
            .inner
            .exchange(method, path, request, encrypted_answer)?)
    }

    /// `POST /v1/identify` in either mode (the answer always encrypted to this client).
    fn search(
        &self,
        features: Vec<f32>,
        liveness: Option<f32>,
        device_id: Option<String>,
        top_k: Option<u32>,
        mode: Option<IdentifyMode>,
        face_model: Option<String>,
    ) -> Result<IdentifyAnswer, TeeRiskError> {
        let request = IdentifyRequest {
            features,
            liveness,
            device_id,
            top_k: top_k.map(|k| k as usize),
            mode,
            face_model,
        };
        let reply: IdentifyReply = self.send("POST", "/v1/identify", &request, true)?;
        Ok(reply.into())
    }
}

/// An enrol or assess payload (wiped on drop).
fn feature_request(
    user_id: String,
    features: Vec<f32>,
    liveness: Option<f32>,
    device_id: Option<String>,
    face_model: Option<String>,
) -> FeatureRequest {
    FeatureRequest {
        user_id,
        features,
        liveness,
        device_id,
        face_model,
    }
}

fn json(value: serde_json::Value) -> Result<String, TeeRiskError> {
    serde_json::to_string(&value).map_err(invalid)
}

#[uniffi::export]
impl TeeRiskClient {
    /// Attests the service at `base_url` with a fresh nonce under `policy`, then trusts the
    /// identity key the evidence binds and the encryption key it certified.
    #[uniffi::constructor]
    pub fn attest(
        base_url: String,
        policy: Arc<AttestationPolicy>,
        credential: Option<Arc<Credential>>,
    ) -> Result<Arc<Self>, TeeRiskError> {
        let (inner, verified) = Client::attest(&base_url, &policy.0)?;
        let attestation = Attestation {
            tee: verified.tee.to_string(),
            measurement: verified.measurement,
            debug: verified.debug,
            issued_at: verified.issued_at,
            identity_kid: verified.identity.kid(),
            release_commit: verified.release.as_ref().map(|r| r.manifest.commit.clone()),
            release_version: verified
                .release
                .as_ref()
                .map(|r| r.manifest.version.clone()),
        };
        Ok(Self::wrap(inner, credential, Some(attestation)))
    }

    /// Trusts only the identity key in `identity_pem` (as the service writes
    /// `keys/identity.pub.pem`), and encryption keys it certified.
    #[uniffi::constructor]
    pub fn pinned(
        base_url: String,
        identity_pem: String,
        credential: Option<Arc<Credential>>,
    ) -> Result<Arc<Self>, TeeRiskError> {
        let identity = ServerKeys::identity_from_pem(&identity_pem)?;
        Ok(Self::wrap(
            Client::fetch_keys_pinned(&base_url, &identity)?,
            credential,
            None,
        ))
    }

    /// Trusts the identity key the service presents at `GET /v1/keys` (trust on first use:
    /// for development; attest or pin in production).
    #[uniffi::constructor]
    pub fn trust_on_first_use(
        base_url: String,
        credential: Option<Arc<Credential>>,
    ) -> Result<Arc<Self>, TeeRiskError> {
        Ok(Self::wrap(Client::fetch_keys(&base_url)?, credential, None))
    }

    /// What the attestation showed, for a client made by `attest`.
    pub fn attestation(&self) -> Option<Attestation> {
        self.attestation.clone()
    }

    /// The trusted identity key's id and PEM (pin it for later sessions).
    pub fn identity_kid(&self) -> String {
        self.inner.keys().identity.kid()
    }

    pub fn identity_pem(&self) -> String {
        self.inner.keys().identity.to_pem()
    }

    /// The certified encryption key requests are sealed to, and when it expires (unix s).
    pub fn encryption_kid(&self) -> String {
        self.inner.keys().encryption.kid()
    }

    pub fn encryption_valid_until(&self) -> i64 {
        self.inner.keys().encryption_not_after
    }

    /// `POST /v1/enroll`: adds a template for `user_id`. Returns the verified answer.
    /// `face_model` names the model that made `features` (PROTOCOL v1.3, e.g.
    /// `mobilefacenet192`); absent: the service's default model.
    #[uniffi::method(default(face_model = None))]
    pub fn enroll(
        &self,
        user_id: String,
        features: Vec<f32>,
        liveness: Option<f32>,
        device_id: Option<String>,
        encrypted_answer: bool,
        face_model: Option<String>,
    ) -> Result<EnrollAnswer, TeeRiskError> {
        let request = feature_request(user_id, features, liveness, device_id, face_model);
        let reply: EnrollReply = self.send("POST", "/v1/enroll", &request, encrypted_answer)?;
        Ok(reply.into())
    }

    /// `POST /v1/assess`: allow / step_up / deny for a face claimed to be `user_id`, scored
    /// by `face_model`'s policy against that model's templates (absent: the default model).
    #[uniffi::method(default(face_model = None))]
    pub fn assess(
        &self,
        user_id: String,
        features: Vec<f32>,
        liveness: Option<f32>,
        device_id: Option<String>,
        encrypted_answer: bool,
        face_model: Option<String>,
    ) -> Result<AssessAnswer, TeeRiskError> {
        let request = feature_request(user_id, features, liveness, device_id, face_model);
        let reply: AssessReply = self.send("POST", "/v1/assess", &request, encrypted_answer)?;
        Ok(reply.into())
    }

    /// `POST /v1/identify` (1:N): the enrolled users this face may be. The answer names
    /// users, so it is always encrypted to this client. Only templates of `face_model`
    /// (absent: the default model) are searched.
    #[uniffi::method(default(face_model = None))]
    pub fn identify(
        &self,
        features: Vec<f32>,
        liveness: Option<f32>,
        device_id: Option<String>,
        top_k: Option<u32>,
        face_model: Option<String>,
    ) -> Result<IdentifyAnswer, TeeRiskError> {
        self.search(features, liveness, device_id, top_k, None, face_model)
    }

    /// `POST /v1/identify` in investigative mode: the top `top_k` (1 to 50, default 10)
    /// candidates ranked with their similarity and calibrated FMRs, and no decision (the
    /// client needs the `investigate` permission). Always encrypted to this client.
    #[uniffi::method(default(face_model = None))]
    pub fn investigate(
        &self,
        features: Vec<f32>,
        liveness: Option<f32>,
        device_id: Option<String>,
        top_k: Option<u32>,
        face_model: Option<String>,
    ) -> Result<IdentifyAnswer, TeeRiskError> {
        self.search(
            features,
            liveness,
            device_id,
            top_k,
            Some(IdentifyMode::Investigate),
            face_model,
        )
    }

    /// `DELETE /v1/users`: erases everything the service keeps about `user_id`.
    pub fn erase(
        &self,
        user_id: String,
        encrypted_answer: bool,
    ) -> Result<EraseAnswer, TeeRiskError> {
        let request = serde_json::json!({ "user_id": user_id });
        let reply: EraseReply = self.send("DELETE", "/v1/users", &request, encrypted_answer)?;
        Ok(reply.into())
    }

    /// Seals a payload (JSON text, docs/PROTOCOL.md §2) to the service's encryption key with
    /// a fresh request id, without sending it.
    pub fn seal(
        &self,
        payload_json: String,
        encrypted_answer: bool,
    ) -> Result<Arc<SealedRequest>, TeeRiskError> {
        let payload: serde_json::Value = serde_json::from_str(&payload_json)
            .map_err(|e| invalid(format!("the payload is not JSON: {e}")))?;
        Ok(Arc::new(SealedRequest(
            self.inner.seal_request(&payload, encrypted_answer)?,
        )))
    }

    /// Sends `body` with `method` (POST or DELETE) to `path`, signed with the credential;
    /// returns the answer unchecked (check it with `open_answer` or `verify_answer`).
    pub fn post_raw(
        &self,
        method: String,
        path: String,
        body: Vec<u8>,
    ) -> Result<RawAnswer, TeeRiskError> {
        Ok(self.inner.request_raw(&method, &path, &body)?.into())
    }

    /// Checks the answer to `sealed` (decrypting it first when it was asked encrypted) and
    /// returns its payload as JSON text (any route's answer); a refusal raises `Refused`.
    pub fn open_answer(
        &self,
        sealed: Arc<SealedRequest>,
        answer: RawAnswer,
    ) -> Result<String, TeeRiskError> {
        json(
            self.inner
                .verify_sealed_answer::<serde_json::Value>(&sealed.0, &RawResponse::from(answer))?,
        )
    }
}

/// Checks an answer in the clear to the envelope `request_body`, which any program may have
/// built (its request id is read from its header), under the identity key `identity_pem`.
/// Returns the payload (JSON); a refusal raises `Refused`.
#[uniffi::export]
pub fn verify_answer(
    identity_pem: String,
    request_body: Vec<u8>,
    answer: RawAnswer,
) -> Result<String, TeeRiskError> {
    let identity = ServerKeys::identity_from_pem(&identity_pem)?;
    json(client::verify_answer_to::<serde_json::Value>(
        &identity,
        &request_body,
        &RawResponse::from(answer),
    )?)
}

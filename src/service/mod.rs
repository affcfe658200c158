//! The flow of one request, independent of HTTP: open the envelope, check freshness and
//! replay, validate, score, store, sign. Every plaintext and session key is wiped before
//! the function returns. Nothing here names an HTTP type: refusals are [`ServiceError`]s,
//! which `http::error` maps to statuses.

pub mod access;
pub mod cluster;
pub mod custody;
mod error;
mod identify;
pub mod keyset;
pub mod limits;
mod one_to_one;
pub mod replay;

use std::sync::Mutex;

use serde::Serialize;

use crate::attest::join::ClusterSecrets;
use crate::crypto::CryptoError;
use crate::crypto::aead::KEY_LEN;
use crate::crypto::secret::SecretBytes;
use crate::crypto::sm2::{IdentityKey, PublicKey};
use crate::crypto::sm3_hex;
use crate::obs::Now;
use crate::obs::metrics::{Metrics, Stage, StageTimer};
use crate::protocol::answer::{EncryptedAnswer, seal_answer};
use crate::protocol::payload::{FeatureError, Probe};
use crate::protocol::reply::{Code, Stamp};
use crate::protocol::request::{ProtectedHeader, RequestEnvelope};
use crate::protocol::response::{ResponseSigner, SignedResponse};
use crate::protocol::{KeysDocument, PublicJwk};
use crate::risk::gallery::Gallery;
use crate::risk::velocity::VelocityTracker;
use crate::risk::{self, Decision, FaceModel, FaceModels, Reason};
use crate::store::{ChangeCursor, Enrolment, UserIndex, UserRef, Vault, VaultError};
use keyset::{KeySet, KidLookup};
use limits::RateLimiter;
use replay::{ReplayCache, ReplayCheck};

pub use error::{LimitScope, ServiceError};
pub use error::{SEALED_RETRY_AFTER_SECS, STORAGE_RETRY_AFTER_SECS};
pub(crate) use error::{fault, internal};

/// What the service needs from the configuration (the app assembles it from `Config`).
#[derive(Clone)]
pub struct Settings {
    /// The accepted face models, each with its scoring policy (model and thresholds); the
    /// default first.
    pub face_models: FaceModels,
    /// Accepted |now − iat| in seconds.
    pub iat_window_secs: i64,
    /// Request ids remembered at most.
    pub replay_cache_capacity: usize,
    /// Validity of each encryption key.
    pub encryption_key_lifetime_secs: i64,
    /// How long an expired encryption key still decrypts before it is wiped.
    pub encryption_key_grace_secs: i64,
    /// Length of the velocity windows.
    pub velocity_window_secs: i64,
    /// Devices remembered per user.
    pub max_devices: usize,
    /// Templates per user and face model at most.
    pub max_templates: usize,
    /// Requests per user and minute (0: no limit).
    pub user_per_minute: u32,
    /// Burst of requests per user.
    pub user_burst: u32,
}

/// An answer: signed by the identity key, and encrypted to the request's session key when
/// the client asked (`ans` in its header; always for identify). On the wire as its JSON.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Signed(SignedResponse),
    Encrypted(EncryptedAnswer),
}

impl Answer {
    /// The signed answer, if it was sent in the clear.
    pub fn signed(self) -> Option<SignedResponse> {
        match self {
            Answer::Signed(signed) => Some(signed),
            Answer::Encrypted(_) => None,
        }
    }
}

/// The session key of a request whose client asked for an encrypted answer; wiped when the
/// answer is sealed (or the request fails).
pub(crate) type AnswerKey = Option<SecretBytes<KEY_LEN>>;

/// A decrypted request's id, in the replay cache but not spent in the store yet. Every
/// path from here spends it: with the request's reads ([`Along::spend`]), or
/// [`Service::spend`], or [`Service::refuse_unspent`] ("once decrypted, spent").
#[must_use = "a decrypted request's id must be spent"]
struct Unspent {
    rid: String,
    iat: i64,
}

/// Why a service could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The random number generator or key generation failed.
    #[error("cannot generate the service keys: {0}")]
    Keys(#[from] CryptoError),
    /// The vault could not be read.
    #[error("cannot load the spent request ids or the enrolled users: {0}")]
    Store(#[from] VaultError),
}

/// One accepted face model as the service holds it: its policy, and the gallery of its
/// templates (every enrolled user's centroid of that model, for conflict search and 1:N).
struct ModelSlot {
    model: FaceModel,
    gallery: Gallery,
}

impl ModelSlot {
    fn policy(&self) -> &risk::RiskPolicy {
        self.model.policy()
    }

    fn id(&self) -> &str {
        self.model.id()
    }

    /// Puts the user's templates of this model (none: the user leaves this gallery, as
    /// `Gallery::set` does with an empty list).
    fn load(&self, user_id: &str, enrolment: &Enrolment) {
        self.gallery
            .set(user_id, &enrolment.templates_of(self.id()));
    }
}

pub struct Service {
    keys: std::sync::Arc<KeySet>,
    signer: ResponseSigner,
    vault: Vault,
    replay: ReplayCache,
    /// The accepted face models, the default first.
    models: Vec<ModelSlot>,
    /// For refusals' details: the accepted models, described once.
    models_described: String,
    /// Where this process is in the store's change feed (enrolments and erasures by other
    /// replicas on a shared store).
    changes: Mutex<ChangeCursor>,
    velocity: VelocityTracker,
    max_devices: usize,
    iat_window_secs: i64,
    max_templates: usize,
    metrics: Metrics,
    /// Requests per user (blind index) over enrol, assess and erase.
    user_limits: RateLimiter<UserIndex>,
}

impl Service {
    /// A service that is a cluster of its own: a new identity and ratchet, in memory.
    pub fn new(settings: &Settings, vault: Vault, now: i64) -> Result<Self, StartError> {
        let secrets = KeySet::bootstrap(
            settings.encryption_key_lifetime_secs,
            settings.encryption_key_grace_secs,
            now,
        )?;
        Self::with_secrets(settings, vault, secrets, now)
    }

    /// A service holding a cluster's secrets (from a peer, `app::join`; or tests).
    pub fn with_secrets(
        settings: &Settings,
        vault: Vault,
        secrets: ClusterSecrets,
        now: i64,
    ) -> Result<Self, StartError> {
        let keys = std::sync::Arc::new(KeySet::new(secrets, now)?);
        Self::with_keys(settings, vault, keys, now)
    }

    /// A service on keys made before its database opened (custodian mode: the keys answer
    /// attestation while the service is sealed, `service::custody`).
    pub fn with_keys(
        settings: &Settings,
        vault: Vault,
        keys: std::sync::Arc<KeySet>,
        now: i64,
    ) -> Result<Self, StartError> {
        let replay = ReplayCache::new(settings.iat_window_secs, settings.replay_cache_capacity);
        // Request ids spent before a restart stay spent.
        replay.load(vault.spent_rids(now - replay.retention_secs())?);
        let models: Vec<ModelSlot> = settings
            .face_models
            .iter()
            .map(|model| ModelSlot {
                model: model.clone(),
                gallery: Gallery::default(),
            })
            .collect();
        // The feed's position first: what commits while the galleries load is read again.
        let changes = Mutex::new(vault.change_cursor_now()?);
        for (user_id, enrolment) in vault.enrolled_users()? {
            for slot in &models {
                slot.load(&user_id, &enrolment);
            }
        }
        Ok(Self {
            signer: ResponseSigner::new(keys.identity().public()),
            keys,
            vault,
            replay,
            models_described: settings.face_models.describe(),
            models,
            changes,
            velocity: VelocityTracker::new(settings.velocity_window_secs),
            max_devices: settings.max_devices,
            iat_window_secs: settings.iat_window_secs,
            max_templates: settings.max_templates,
            metrics: Metrics::new(&Decision::NAMES),
            user_limits: RateLimiter::new(settings.user_per_minute, settings.user_burst),
        })
    }

    pub fn identity_public(&self) -> &PublicKey {
        self.keys.identity().public()
    }

    /// The identity key, to sign what the service vouches for (answers, join grants).
    pub fn identity(&self) -> &IdentityKey {
        self.keys.identity()
    }

    /// The cluster's secrets, for a peer whose evidence passed the cluster policy
    /// (`service::cluster`).
    pub fn export_secrets(&self) -> ClusterSecrets {
        self.keys.export()
    }

    /// The encryption key clients should use now.
    pub fn encryption_public(&self) -> PublicKey {
        self.keys.newest()
    }

    /// Forgets spent request ids older than the replay window, in memory and in the store.
    pub fn forget_spent_rids(&self, now: i64) -> Result<(), VaultError> {
        self.replay.prune(now);
        self.vault
            .forget_spent_rids(now - self.replay.retention_secs())
    }

    /// Forgets attempts older than the velocity window.
    pub fn forget_old_attempts(&self, now: i64) {
        self.velocity.prune(now);
    }

    /// Reloads into the gallery the users whose enrolment changed in the store since the
    /// last call (other replicas' enrolments and erasures: `store::vault::changes`).
    /// Returns how many users were reloaded.
    pub fn refresh_gallery(&self, now: i64) -> Result<usize, VaultError> {
        let mut cursor = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let users = self.vault.changes_since(&mut cursor, now)?;
        for user_id in &users {
            let enrolment = self.vault.enrolment(&self.vault.user(user_id), user_id)?;
            for slot in &self.models {
                slot.load(user_id, &enrolment);
            }
        }
        Ok(users.len())
    }

    /// Rotates and wipes encryption keys as their time comes (see [`KeySet::maintain`]).
    pub fn maintain_keys(&self, now: i64) -> Result<(), CryptoError> {
        self.keys.maintain(now)
    }

    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// `GET /v1/keys`: the identity key, then the live encryption keys (newest last), each
    /// with its certificate.
    pub fn keys_document(&self) -> KeysDocument {
        let mut keys = vec![PublicJwk::new(self.identity_public(), "sig")];
        keys.extend(self.keys.published().iter().map(PublicJwk::encryption));
        KeysDocument { keys }
    }

    /// The slot of a face model a request resolved to (always one of ours: the parser
    /// resolves against the same list).
    fn slot(&self, face_model: &str) -> Result<&ModelSlot, ServiceError> {
        self.models
            .iter()
            .find(|s| s.id() == face_model)
            .ok_or_else(|| internal(format!("face model {face_model} resolved but not held")))
    }

    /// Resolves a request's `face_model` (absent: the default) to its id and dimension.
    fn resolve_face_model(&self, requested: Option<&str>) -> Result<(String, usize), FeatureError> {
        let found = match requested {
            None => self.models.first(),
            Some(id) => self.models.iter().find(|s| s.id() == id),
        };
        found
            .map(|s| (s.id().to_owned(), s.model.dimension()))
            .ok_or_else(|| FeatureError::UnknownFaceModel {
                requested: requested.unwrap_or_default().to_owned(),
                accepted: self.models_described.clone(),
            })
    }

    /// Takes one of the user's request tokens.
    fn limit_user(&self, user: &UserRef, clock: Now) -> Result<(), ServiceError> {
        self.user_limit(user, clock)
            .map_err(|refusal| self.refuse_spent(refusal))
    }

    /// The user's rate limit alone (the request id not spent yet: see [`Unspent`]).
    fn user_limit(&self, user: &UserRef, clock: Now) -> Result<(), ServiceError> {
        self.user_limits
            .check(user.current(), clock.precise())
            .map_err(|retry_after_secs| ServiceError::RateLimited {
                scope: LimitScope::User,
                retry_after_secs,
            })
    }

    /// Waits until this request's writes are on disk; concurrent requests share the fsync.
    fn make_durable(&self, timer: &mut StageTimer) -> Result<(), ServiceError> {
        let flushed = self.vault.flush().map_err(fault)?;
        self.metrics.record_commit(flushed);
        timer.lap(Stage::Durable);
        Ok(())
    }

    /// The steps every encrypted request shares, cheapest checks first. Nothing is stored
    /// unless they all pass; the request id is then spent.
    fn open_request(
        &self,
        body: &[u8],
        now: i64,
        timer: &mut StageTimer,
    ) -> Result<(ProtectedHeader, Probe, AnswerKey), ServiceError> {
        self.open_request_as(body, now, timer, false, |plaintext| {
            self.parse_probe(plaintext)
        })
    }

    fn parse_probe(&self, plaintext: &[u8]) -> Result<Probe, ServiceError> {
        Ok(Probe::parse(plaintext, &|m| self.resolve_face_model(m))?)
    }

    /// [`Service::open_request`] for any payload type.
    fn open_request_as<T>(
        &self,
        body: &[u8],
        now: i64,
        timer: &mut StageTimer,
        encrypted_answer_required: bool,
        parse: impl FnOnce(&[u8]) -> Result<T, ServiceError>,
    ) -> Result<(ProtectedHeader, T, AnswerKey), ServiceError> {
        let (header, payload, answer_key, unspent) =
            self.open_request_unspent(body, now, timer, encrypted_answer_required, parse)?;
        self.spend(unspent)?;
        Ok((header, payload, answer_key))
    }

    /// [`Service::open_request_as`] that leaves the store's spend of the request id to the
    /// caller, so that it can travel with the request's reads (one round trip on
    /// PostgreSQL). The id is in the replay cache already; a payload that does not parse
    /// is refused with its id spent.
    fn open_request_unspent<T>(
        &self,
        body: &[u8],
        now: i64,
        timer: &mut StageTimer,
        encrypted_answer_required: bool,
        parse: impl FnOnce(&[u8]) -> Result<T, ServiceError>,
    ) -> Result<(ProtectedHeader, T, AnswerKey, Unspent), ServiceError> {
        let envelope = RequestEnvelope::parse(body)?;
        let header = &envelope.header;
        if encrypted_answer_required && !header.wants_encrypted_answer() {
            return Err(ServiceError::AnswerEncryptionRequired);
        }
        let encryption = match self.keys.lookup(&header.kid, now) {
            KidLookup::Live(key) => key,
            KidLookup::Retired => return Err(ServiceError::RetiredKid),
            KidLookup::Unknown => return Err(ServiceError::UnknownKid),
        };
        if now.abs_diff(header.iat) > self.iat_window_secs.unsigned_abs() {
            return Err(ServiceError::StaleRequest(self.iat_window_secs));
        }
        if self.replay.contains(&header.rid) {
            return Err(ServiceError::ReplayedRequest);
        }
        timer.lap(Stage::EnvelopeParse);
        let session_key = envelope.unwrap_session_key(&encryption)?;
        drop(encryption);
        timer.lap(Stage::Sm2Unwrap);
        let plaintext = envelope.open_payload(&session_key)?;
        // Kept (in wiping storage) only to encrypt the answer the client asked for.
        let answer_key = header.wants_encrypted_answer().then_some(session_key);
        timer.lap(Stage::Sm4GcmOpen);
        // The payload authenticated under a live key: the request id is spent now, whatever
        // the answer from here on (docs/PROTOCOL.md: one rule a client can act on: never
        // send a request id twice).
        match self.replay.check_and_insert(&header.rid, header.iat, now) {
            ReplayCheck::Fresh => {}
            ReplayCheck::Replayed => return Err(ServiceError::ReplayedRequest),
            ReplayCheck::Full => return Err(ServiceError::Overloaded),
        }
        let unspent = Unspent {
            rid: header.rid.clone(),
            iat: header.iat,
        };
        let payload = parse(&plaintext);
        drop(plaintext);
        timer.lap(Stage::PayloadParse);
        match payload {
            Ok(payload) => Ok((envelope.header, payload, answer_key, unspent)),
            Err(refusal) => Err(self.refuse_unspent(unspent, refusal)),
        }
    }

    /// Spends the request id in the store. Durable with the request's other writes, before
    /// the answer (or before the refusal). Another replica on the same database may have
    /// spent it: the store decides.
    fn spend(&self, unspent: Unspent) -> Result<(), ServiceError> {
        match self.vault.spend_rid(&unspent.rid, unspent.iat) {
            Ok(true) => Ok(()),
            Ok(false) => Err(ServiceError::ReplayedRequest),
            Err(e) => Err(fault(e)),
        }
    }

    /// A refusal before the request id was spent: spends it first (durably), as for every
    /// decrypted request.
    fn refuse_unspent(&self, unspent: Unspent, refusal: ServiceError) -> ServiceError {
        match self.spend(unspent) {
            Ok(()) => self.refuse_spent(refusal),
            Err(error) => error,
        }
    }

    /// A refusal after the request id was spent: makes the spent id durable first, so that
    /// the rule "once decrypted, spent" survives a crash.
    fn refuse_spent(&self, error: ServiceError) -> ServiceError {
        if let Err(fault) = self.vault.flush() {
            tracing::error!(error = %fault, "cannot make a spent request id durable");
        }
        error
    }

    /// Signs `payload`, then encrypts the signed answer to the request's session key when
    /// the client asked (sign-then-encrypt: `protocol::answer`); the key is wiped here.
    fn answer<T: Serialize>(
        &self,
        rid: &str,
        key: AnswerKey,
        payload: &T,
    ) -> Result<Answer, ServiceError> {
        let json = serde_json::to_vec(payload).map_err(internal)?;
        let signed = self
            .signer
            .sign_answer(self.keys.identity(), &json)
            .map_err(internal)?;
        match key {
            None => Ok(Answer::Signed(signed)),
            Some(key) => {
                let signed_json = serde_json::to_vec(&signed).map_err(internal)?;
                Ok(Answer::Encrypted(
                    seal_answer(&key, rid, &signed_json).map_err(internal)?,
                ))
            }
        }
    }
}

/// The fields every answer carries: what it answers (`rid`, SM3 of the exact envelope) and
/// when.
fn stamp(op: &str, rid: &str, body: &[u8], now: i64) -> Stamp {
    Stamp {
        op: op.to_owned(),
        rid: rid.to_owned(),
        req_sm3: sm3_hex(body),
        iat: now,
    }
}

/// Reason codes as answered.
fn codes(reasons: &[Reason]) -> Vec<Code<Reason>> {
    reasons.iter().copied().map(Code::Known).collect()
}

#[cfg(test)]
pub(crate) mod tests;

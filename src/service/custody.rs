//! The service's gate: open (a [`Service`] with its database) or sealed (the identity and
//! encryption keys only, in custodian mode, until k custodians have sent their shares of
//! the DB master key). While sealed, attestation and `/v1/keys` answer, every data endpoint
//! is refused with `sealed`, and nothing is read from or written to the store but the key
//! ids an unseal checks shares against (protocol: `protocol::custody`; operations:
//! docs/OPERATIONS.md "Custodians").
//!
//! The audit log lives in the store, which a sealed service does not write: events before
//! the unseal are kept in memory and written, with their times, once it opens (they are
//! also in the service log as they happen).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde::Deserialize;

use super::keyset::{KeySet, KidLookup};
use super::{Service, ServiceError};
use crate::attest::join::ClusterSecrets;
use crate::crypto::random_array;
use crate::crypto::secret::SecretBytes;
use crate::crypto::shamir::{self, Share};
use crate::crypto::sm2::PublicKey;
use crate::protocol::custody::{
    ATTEMPT_LEN, CustodyFormatError, CustodyStatus, INIT_TYP, InitReply, InitRequest,
    SHARE_PLAIN_LEN, SharePlain, UNSEAL_TYP, UnsealReply, UnsealRequest,
};
use crate::protocol::response::{ResponseSigner, SignedResponse};
use crate::protocol::{KeysDocument, PublicJwk, b64_encode};
use crate::store::{KeyId, MasterKey};

/// Most custodians a roster lists (shares are numbered in one byte).
pub const MAX_CUSTODIANS: usize = 255;

/// One custodian as the service knows them.
struct Custodian {
    name: String,
    key: PublicKey,
}

/// Who holds the shares and how many unseal: `[keys] custodians_file`.
pub struct Roster {
    threshold: u8,
    custodians: Vec<Custodian>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RosterFile {
    threshold: u8,
    custodian: Vec<RosterEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RosterEntry {
    name: String,
    /// PEM, or a PEM file relative to the roster file.
    public_key: String,
}

/// Why a custodians file was refused.
#[derive(Debug, thiserror::Error)]
#[error("custodians file {path}: {reason}")]
pub struct RosterError {
    pub path: PathBuf,
    pub reason: String,
}

impl Roster {
    /// Reads a custodians file (TOML: `threshold`, then `[[custodian]] name, public_key`).
    pub fn load(path: &Path) -> Result<Self, RosterError> {
        let fail = |reason: String| RosterError {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let file: RosterFile = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut custodians: Vec<Custodian> = Vec::new();
        for entry in file.custodian {
            let name_ok = !entry.name.is_empty()
                && entry.name.len() <= 64
                && entry
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !name_ok {
                return Err(fail(format!(
                    "custodian name `{}`: use 1 to 64 letters, digits, '-', '_' or '.'",
                    entry.name
                )));
            }
            let pem = if entry.public_key.contains("-----BEGIN") {
                entry.public_key
            } else {
                let key_path = base.join(&entry.public_key);
                std::fs::read_to_string(&key_path)
                    .map_err(|e| fail(format!("{}: {e}", key_path.display())))?
            };
            let key = PublicKey::from_pem(&pem)
                .map_err(|_| fail(format!("custodian {}: not an SM2 public key", entry.name)))?;
            if custodians
                .iter()
                .any(|c| c.name == entry.name || c.key == key)
            {
                return Err(fail(format!(
                    "custodian {} is listed twice (by name or by key)",
                    entry.name
                )));
            }
            custodians.push(Custodian {
                name: entry.name,
                key,
            });
        }
        let n = custodians.len();
        if n > MAX_CUSTODIANS || file.threshold < 2 || usize::from(file.threshold) > n {
            return Err(fail(format!(
                "threshold {} of {n} custodians: k must be at least 2 (no single person holds \
                 the key) and at most the number of custodians (at most {MAX_CUSTODIANS})",
                file.threshold
            )));
        }
        Ok(Self {
            threshold: file.threshold,
            custodians,
        })
    }

    pub fn threshold(&self) -> u8 {
        self.threshold
    }

    fn find(&self, name: &str) -> Option<&Custodian> {
        self.custodians.iter().find(|c| c.name == name)
    }

    fn names(&self) -> Vec<String> {
        self.custodians.iter().map(|c| c.name.clone()).collect()
    }
}

/// Why the database could not be read or opened with a rebuilt key.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The key is not this database's (or the database refused it): worth a new attempt.
    #[error("{0}")]
    Refused(String),
    /// The store failed: the same shares may be sent again once it is back.
    #[error("{0}")]
    Fault(String),
}

/// How a sealed service reaches its database (the app provides it: it knows the storage
/// configuration, and starts the background work of an opened service).
pub trait Opener: Send + Sync {
    /// The key ids the database holds (`None`: empty), read without a key.
    fn key_ids(&self) -> Result<Option<Vec<KeyId>>, OpenError>;
    /// Opens the database with `master` (creating it when empty) and builds the service
    /// on `keys`.
    fn open(&self, master: MasterKey, keys: Arc<KeySet>) -> Result<Arc<Service>, OpenError>;
}

/// Why an init or unseal was refused. Each has its code (docs/PROTOCOL.md §4).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CustodyError {
    /// The service does not run in custodian mode.
    #[error("this service takes its master key from its environment, not from custodians")]
    NotCustodyMode,
    /// Already unsealed (or initialised).
    #[error("the service is not sealed: it already holds its master key")]
    NotSealed,
    /// The message does not parse.
    #[error("{0}")]
    Malformed(CustodyFormatError),
    /// No such custodian in the roster.
    #[error("{0} is not a custodian of this service")]
    UnknownCustodian(String),
    /// Not signed by the listed custodian's key.
    #[error("the message is not signed by custodian {0}'s listed key")]
    BadSignature(String),
    /// Made for another attempt (another replica, an earlier start, a reset attempt).
    #[error(
        "the message names another unseal attempt (another replica, or an earlier one): read \
         GET /v1/custody and send it again"
    )]
    StaleAttempt,
    /// This custodian's share (or a share with that number) is already held.
    #[error("custodian {0}'s share was already received in this attempt")]
    ShareReplayed(String),
    /// The share does not open with the named encryption key, or is not a share.
    #[error("the share does not open: {0}")]
    ShareInvalid(String),
    /// The share is for another database, another split, or another k.
    #[error("{0}")]
    ShareMismatch(String),
    /// Init on a database that already has a key.
    #[error("the database already holds data under master key {0}: unseal it instead")]
    DatabaseNotEmpty(String),
    /// Unseal on an empty database.
    #[error("the database is empty: initialise it with `tee-risk admin init` first")]
    NotInitialised,
    /// The store cannot be read now: send again once it is back.
    #[error("the database cannot be read now: {0}")]
    Unavailable(String),
    /// A fault of the service.
    #[error("internal error")]
    Internal,
}

/// One accepted share of the current attempt.
struct Held {
    custodian: String,
    share: Share,
    key_id: [u8; 8],
}

/// An event for the audit log, kept while sealed.
struct Event {
    at: i64,
    name: &'static str,
    key_ids: Vec<String>,
    who: Vec<String>,
    counts: BTreeMap<String, u64>,
}

struct CustodyState {
    attempt: [u8; ATTEMPT_LEN],
    held: Vec<Held>,
    /// The master key once open (handed to joining replicas with the other secrets).
    master: Option<MasterKey>,
    /// Events not yet in the audit log (at most [`MAX_PENDING_EVENTS`]; beyond, counted).
    pending: Vec<Event>,
    dropped: u64,
}

/// Events kept while sealed at most: a flood of refused messages cannot grow memory.
const MAX_PENDING_EVENTS: usize = 1024;

impl CustodyState {
    fn record(&mut self, event: Event) {
        if self.pending.len() < MAX_PENDING_EVENTS {
            self.pending.push(event);
        } else {
            self.dropped += 1;
        }
    }
}

struct Custody {
    roster: Roster,
    opener: Box<dyn Opener>,
    state: Mutex<CustodyState>,
}

/// Sealed or open; what every handler goes through.
pub struct Gate {
    keys: Arc<KeySet>,
    signer: ResponseSigner,
    service: RwLock<Option<Arc<Service>>>,
    custody: Option<Custody>,
}

impl Gate {
    /// A service that opened its database at start (key from the environment).
    pub fn open(service: Arc<Service>) -> Self {
        let keys = service.keys.clone();
        Self {
            signer: ResponseSigner::new(keys.identity().public()),
            keys,
            service: RwLock::new(Some(service)),
            custody: None,
        }
    }

    /// Custodian mode: sealed until k custodians unseal it, or open already when `master`
    /// came with a peer's join (`opener` then opens at once).
    pub fn custodians(
        keys: Arc<KeySet>,
        roster: Roster,
        opener: Box<dyn Opener>,
        master: Option<MasterKey>,
        now: i64,
    ) -> Result<Self, CustodyError> {
        let gate = Self {
            signer: ResponseSigner::new(keys.identity().public()),
            keys,
            service: RwLock::new(None),
            custody: Some(Custody {
                roster,
                opener,
                state: Mutex::new(CustodyState {
                    attempt: new_attempt()?,
                    held: Vec::new(),
                    master: None,
                    pending: Vec::new(),
                    dropped: 0,
                }),
            }),
        };
        if let Some(master) = master {
            let custody = gate.custody.as_ref().expect("set above");
            let mut state = custody.lock();
            let key_id = master.key_id().to_string();
            let service = custody
                .opener
                .open(master.duplicate(), gate.keys.clone())
                .map_err(|e| CustodyError::Unavailable(e.to_string()))?;
            state.master = Some(master);
            state.record(Event::new(now, "custody_key_joined", &key_id, vec![]));
            gate.set_open(&mut state, service);
        } else {
            tracing::warn!(
                threshold = gate.roster().map_or(0, Roster::threshold),
                "SEALED: the DB master key comes from custodians (tee-risk admin unseal); data \
                 endpoints answer 503 until it does"
            );
        }
        Ok(gate)
    }

    /// The service, or `sealed`.
    pub fn service(&self) -> Result<Arc<Service>, ServiceError> {
        self.service
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(ServiceError::Sealed)
    }

    pub fn is_sealed(&self) -> bool {
        self.service().is_err()
    }

    pub fn keys(&self) -> &Arc<KeySet> {
        &self.keys
    }

    pub fn identity_public(&self) -> &PublicKey {
        self.keys.identity().public()
    }

    /// `GET /v1/keys` (answers sealed too: custodians encrypt their shares to these keys).
    pub fn keys_document(&self) -> KeysDocument {
        let mut keys = vec![PublicJwk::new(self.identity_public(), "sig")];
        keys.extend(self.keys.published().iter().map(PublicJwk::encryption));
        KeysDocument { keys }
    }

    /// What a joining replica receives: the identity and ratchet, and in custodian mode
    /// the master key (`None` while sealed: a sealed replica admits no one).
    pub fn export_secrets(&self) -> Option<ClusterSecrets> {
        let mut secrets = self.keys.export();
        if let Some(custody) = &self.custody {
            let state = custody.lock();
            let master = state.master.as_ref()?;
            secrets.master_key = Some(
                SecretBytes::from_slice(master.expose_secret().expose()).expect("same length"),
            );
        }
        Some(secrets)
    }

    fn roster(&self) -> Option<&Roster> {
        self.custody.as_ref().map(|c| &c.roster)
    }

    /// `GET /v1/custody`.
    pub fn status(&self) -> Result<CustodyStatus, CustodyError> {
        let custody = self.custody.as_ref().ok_or(CustodyError::NotCustodyMode)?;
        let state = custody.lock();
        let sealed = self.is_sealed();
        Ok(CustodyStatus {
            state: if sealed { "sealed" } else { "unsealed" }.into(),
            attempt: sealed.then(|| b64_encode(&state.attempt)),
            threshold: custody.roster.threshold,
            custodians: custody.roster.names(),
            received: state.held.iter().map(|h| h.custodian.clone()).collect(),
            key_id: state.master.as_ref().map(|m| m.key_id().to_string()),
        })
    }

    /// `POST /v1/custody/init`: on an empty database, makes the master key in memory,
    /// splits it k of n, seals each share to its custodian, creates the database and serves.
    pub fn init(&self, request: &InitRequest, now: i64) -> Result<SignedResponse, CustodyError> {
        let custody = self.custody.as_ref().ok_or(CustodyError::NotCustodyMode)?;
        let mut state = custody.lock();
        self.check_sealed()?;
        let result = self.try_init(custody, &mut state, request, now);
        if let Err(error) = &result {
            refused(
                &mut state,
                now,
                "custody_init_refused",
                &request.custodian,
                error,
            );
        }
        result
    }

    fn try_init(
        &self,
        custody: &Custody,
        state: &mut CustodyState,
        request: &InitRequest,
        now: i64,
    ) -> Result<SignedResponse, CustodyError> {
        let custodian = custody.custodian(&request.custodian)?;
        let attempt = request
            .verify(&custodian.key)
            .map_err(|e| signature_or_malformed(e, &request.custodian))?;
        if attempt != state.attempt {
            return Err(CustodyError::StaleAttempt);
        }
        match custody.opener.key_ids().map_err(unavailable)? {
            None => {}
            Some(ids) => {
                let names = ids.iter().map(ToString::to_string).collect::<Vec<_>>();
                return Err(CustodyError::DatabaseNotEmpty(names.join(", ")));
            }
        }
        let master = MasterKey::generate().map_err(|_| CustodyError::Internal)?;
        let key_id = master.key_id();
        let (k, n) = (custody.roster.threshold, custody.roster.custodians.len());
        let shares = shamir::split(master.expose_secret(), k.into(), n)
            .map_err(|_| CustodyError::Internal)?;
        let files = shares
            .into_iter()
            .zip(&custody.roster.custodians)
            .map(|(share, custodian)| {
                SharePlain {
                    key_id: key_id.0,
                    index: share.index,
                    threshold: k,
                    shares: n as u8,
                    value: share.value,
                }
                .seal_for(&custodian.name, &custodian.key)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| CustodyError::Internal)?;
        let service = custody
            .opener
            .open(master.duplicate(), self.keys.clone())
            .map_err(|e| match e {
                OpenError::Refused(why) => CustodyError::DatabaseNotEmpty(why),
                OpenError::Fault(why) => CustodyError::Unavailable(why),
            })?;
        let reply = InitReply {
            typ: INIT_TYP.into(),
            attempt: request.attempt.clone(),
            key_id: key_id.to_string(),
            threshold: k,
            shares: files,
        };
        let signed = self.sign(&reply)?;
        state.master = Some(master);
        let mut event = Event::new(
            now,
            "custody_initialised",
            &key_id.to_string(),
            vec![request.custodian.clone()],
        );
        event.counts.insert("threshold".into(), k.into());
        event.counts.insert("shares".into(), n as u64);
        state.record(event);
        self.set_open(state, service);
        tracing::info!(key_id = %key_id, by = %request.custodian, k, n, "custody initialised");
        Ok(signed)
    }

    /// `POST /v1/custody/unseal`: one custodian's share; the k-th rebuilds the key, which
    /// must open the database, and the service serves.
    pub fn unseal(
        &self,
        request: &UnsealRequest,
        now: i64,
    ) -> Result<SignedResponse, CustodyError> {
        let custody = self.custody.as_ref().ok_or(CustodyError::NotCustodyMode)?;
        let mut state = custody.lock();
        self.check_sealed()?;
        let result = self.try_unseal(custody, &mut state, request, now);
        if let Err(error) = &result {
            refused(
                &mut state,
                now,
                "custody_share_refused",
                &request.custodian,
                error,
            );
        }
        result
    }

    fn try_unseal(
        &self,
        custody: &Custody,
        state: &mut CustodyState,
        request: &UnsealRequest,
        now: i64,
    ) -> Result<SignedResponse, CustodyError> {
        let custodian = custody.custodian(&request.custodian)?;
        let (attempt, sealed) = request
            .verify(&custodian.key)
            .map_err(|e| signature_or_malformed(e, &request.custodian))?;
        if attempt != state.attempt {
            return Err(CustodyError::StaleAttempt);
        }
        if state.held.iter().any(|h| h.custodian == request.custodian) {
            return Err(CustodyError::ShareReplayed(request.custodian.clone()));
        }
        let plain = self.open_share(&request.kid, &sealed, now)?;
        if plain.threshold != custody.roster.threshold
            || usize::from(plain.shares) != custody.roster.custodians.len()
        {
            return Err(CustodyError::ShareMismatch(format!(
                "the share is of a {} of {} split; this service's roster is {} of {}",
                plain.threshold,
                plain.shares,
                custody.roster.threshold,
                custody.roster.custodians.len()
            )));
        }
        let share_key = KeyId(plain.key_id);
        match custody.opener.key_ids().map_err(unavailable)? {
            None => return Err(CustodyError::NotInitialised),
            // A database from before the key registry names no key: the open checks it.
            Some(ids) if !ids.is_empty() && !ids.contains(&share_key) => {
                return Err(CustodyError::ShareMismatch(format!(
                    "the share is of master key {share_key}, which is not a key of this \
                     database"
                )));
            }
            Some(_) => {}
        }
        if let Some(first) = state.held.first()
            && KeyId(first.share_key_id()) != share_key
        {
            return Err(CustodyError::ShareMismatch(format!(
                "the share is of master key {share_key}, the shares held so far of another"
            )));
        }
        if state.held.iter().any(|h| h.share.index == plain.index) {
            return Err(CustodyError::ShareReplayed(request.custodian.clone()));
        }
        state.held.push(Held {
            custodian: request.custodian.clone(),
            share: Share {
                index: plain.index,
                value: plain.value,
            },
            key_id: plain.key_id,
        });
        state.record(Event::new(
            now,
            "custody_share_accepted",
            &share_key.to_string(),
            vec![request.custodian.clone()],
        ));
        tracing::info!(custodian = %request.custodian, received = state.held.len(),
            threshold = custody.roster.threshold, "custodian share accepted");
        if state.held.len() >= usize::from(custody.roster.threshold) {
            self.rebuild(custody, state, share_key, now)?;
        }
        let reply = UnsealReply {
            typ: UNSEAL_TYP.into(),
            attempt: request.attempt.clone(),
            custodian: request.custodian.clone(),
            state: if self.is_sealed() {
                "sealed"
            } else {
                "unsealed"
            }
            .into(),
            received: state.held.iter().map(|h| h.custodian.clone()).collect(),
            threshold: custody.roster.threshold,
            key_id: state.master.as_ref().map(|m| m.key_id().to_string()),
        };
        self.sign(&reply)
    }

    /// Decrypts a share sent to one of our encryption keys.
    fn open_share(&self, kid: &str, sealed: &[u8], now: i64) -> Result<SharePlain, CustodyError> {
        let key = match self.keys.lookup(kid, now) {
            KidLookup::Live(key) => key,
            KidLookup::Retired | KidLookup::Unknown => {
                return Err(CustodyError::ShareInvalid(
                    "it is sealed to an encryption key this service does not hold now: \
                     fetch GET /v1/keys and seal it again"
                        .into(),
                ));
            }
        };
        let bytes: SecretBytes<SHARE_PLAIN_LEN> = key
            .decrypt_der_exact(sealed)
            .map_err(|_| CustodyError::ShareInvalid("SM2 decryption failed".into()))?;
        SharePlain::from_bytes(&bytes).map_err(|e| CustodyError::ShareInvalid(e.to_string()))
    }

    /// k shares held: rebuild the key, check it is the one they claim, open the database.
    /// A failure starts a new attempt (every share must be sent again).
    fn rebuild(
        &self,
        custody: &Custody,
        state: &mut CustodyState,
        claimed: KeyId,
        now: i64,
    ) -> Result<(), CustodyError> {
        let who: Vec<String> = state.held.iter().map(|h| h.custodian.clone()).collect();
        let rebuilt = shamir::combine(
            &state
                .held
                .iter()
                .map(|h| h.share.copy())
                .collect::<Vec<_>>(),
        );
        let outcome = match rebuilt {
            Err(_) => Err(CustodyError::Internal),
            Ok(secret) => {
                let master = MasterKey::from_secret(secret);
                if master.key_id() != claimed {
                    Err(CustodyError::ShareMismatch(format!(
                        "the {} shares do not rebuild master key {claimed} (one of them is not \
                         of that split): a new attempt has begun, send every share again",
                        who.len()
                    )))
                } else {
                    match custody.opener.open(master.duplicate(), self.keys.clone()) {
                        Ok(service) => Ok((master, service)),
                        Err(OpenError::Refused(why)) => Err(CustodyError::ShareMismatch(format!(
                            "the rebuilt key does not open the database ({why}): a new attempt \
                             has begun"
                        ))),
                        Err(OpenError::Fault(why)) => Err(CustodyError::Unavailable(why)),
                    }
                }
            }
        };
        match outcome {
            Ok((master, service)) => {
                state.held.clear();
                state.master = Some(master);
                state.record(Event::new(
                    now,
                    "custody_unsealed",
                    &claimed.to_string(),
                    who,
                ));
                self.set_open(state, service);
                tracing::info!(key_id = %claimed, "unsealed: the master key is rebuilt; serving");
                Ok(())
            }
            Err(CustodyError::Unavailable(why)) => {
                // The store, not the shares: keep them, the next share (or a resend) retries.
                state.held.pop();
                Err(CustodyError::Unavailable(why))
            }
            Err(error) => {
                state.held.clear();
                state.attempt = new_attempt()?;
                Err(error)
            }
        }
    }

    fn check_sealed(&self) -> Result<(), CustodyError> {
        match self.is_sealed() {
            true => Ok(()),
            false => Err(CustodyError::NotSealed),
        }
    }

    /// Serves `service` from now on and writes the events kept while sealed.
    fn set_open(&self, state: &mut CustodyState, service: Arc<Service>) {
        if state.dropped > 0 {
            let mut event =
                Event::new(crate::obs::unix_now(), "custody_events_dropped", "", vec![]);
            event.key_ids.clear();
            event
                .counts
                .insert("events".into(), std::mem::take(&mut state.dropped));
            state.pending.push(event);
        }
        for event in state.pending.drain(..) {
            if let Err(error) = service.vault().record_custody_event(
                event.at,
                event.name,
                event.key_ids,
                event.who,
                event.counts,
            ) {
                tracing::error!(%error, event = event.name, "custody event not in the audit log");
            }
        }
        *self.service.write().unwrap_or_else(|p| p.into_inner()) = Some(service);
    }

    fn sign(&self, payload: &impl serde::Serialize) -> Result<SignedResponse, CustodyError> {
        let json = serde_json::to_vec(payload).map_err(|_| CustodyError::Internal)?;
        self.signer
            .sign(self.keys.identity(), &json)
            .map_err(|_| CustodyError::Internal)
    }
}

impl Custody {
    fn lock(&self) -> MutexGuard<'_, CustodyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn custodian(&self, name: &str) -> Result<&Custodian, CustodyError> {
        self.roster
            .find(name)
            .ok_or_else(|| CustodyError::UnknownCustodian(name.to_owned()))
    }
}

impl Held {
    fn share_key_id(&self) -> [u8; 8] {
        self.key_id
    }
}

impl Share {
    fn copy(&self) -> Share {
        Share {
            index: self.index,
            value: SecretBytes::from_slice(self.value.expose()).expect("same length"),
        }
    }
}

impl Event {
    fn new(at: i64, name: &'static str, key_id: &str, who: Vec<String>) -> Self {
        Self {
            at,
            name,
            key_ids: vec![key_id.to_owned()],
            who,
            counts: BTreeMap::new(),
        }
    }
}

/// Logs a refusal and keeps it for the audit log (naming the custodian as they named
/// themselves: a refused name may not be in the roster).
fn refused(
    state: &mut CustodyState,
    now: i64,
    name: &'static str,
    who: &str,
    error: &CustodyError,
) {
    tracing::warn!(custodian = %who, %error, "{name}");
    let mut event = Event::new(now, name, "", vec![who.chars().take(64).collect()]);
    event.key_ids.clear();
    event
        .counts
        .insert(format!("refused:{}", error_kind(error)), 1);
    state.record(event);
}

fn error_kind(error: &CustodyError) -> &'static str {
    match error {
        CustodyError::NotCustodyMode => "not_custody_mode",
        CustodyError::NotSealed => "not_sealed",
        CustodyError::Malformed(_) => "malformed",
        CustodyError::UnknownCustodian(_) => "unknown_custodian",
        CustodyError::BadSignature(_) => "bad_signature",
        CustodyError::StaleAttempt => "stale_attempt",
        CustodyError::ShareReplayed(_) => "share_replayed",
        CustodyError::ShareInvalid(_) => "share_invalid",
        CustodyError::ShareMismatch(_) => "share_mismatch",
        CustodyError::DatabaseNotEmpty(_) => "database_not_empty",
        CustodyError::NotInitialised => "not_initialised",
        CustodyError::Unavailable(_) => "unavailable",
        CustodyError::Internal => "internal",
    }
}

fn signature_or_malformed(error: CustodyFormatError, custodian: &str) -> CustodyError {
    match error {
        CustodyFormatError::Signature => CustodyError::BadSignature(custodian.to_owned()),
        other => CustodyError::Malformed(other),
    }
}

fn unavailable(error: OpenError) -> CustodyError {
    CustodyError::Unavailable(error.to_string())
}

fn new_attempt() -> Result<[u8; ATTEMPT_LEN], CustodyError> {
    random_array().map_err(|_| CustodyError::Internal)
}

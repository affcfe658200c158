//! The service's gate: open (a [`Service`] with its database) or sealed (the identity and
//! encryption keys only, in custodian mode, until k custodians have sent their shares of
//! each DB master key the database needs: one, or two while a rekey's sweep is unfinished).
//! Unsealed, k custodians' approvals rekey it: a new key made here, new shares handed out,
//! the database reopened under the new key with the old one decrypt-only, and today's
//! online sweep; the old key stays in memory until the sweep is verified and it is retired. While sealed, attestation and `/v1/keys` answer, every data endpoint
//! is refused with `sealed`, and nothing is read from or written to the store but the key
//! ids an unseal checks shares against (protocol: `protocol::custody`; operations:
//! docs/OPERATIONS.md "Custodians").
//!
//! The audit log lives in the store, which a sealed service does not write: events before
//! the unseal are kept in memory and written, with their times, once it opens (they are
//! also in the service log as they happen).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::keyset::{KeySet, KidLookup};
use super::{Service, ServiceError};
use crate::attest::join::ClusterSecrets;
use crate::crypto::random_array;
use crate::crypto::secret::SecretBytes;
use crate::crypto::shamir::{self, Share};
use crate::crypto::sm2::PublicKey;
use crate::protocol::custody::{
    ATTEMPT_LEN, CustodyFormatError, CustodyStatus, INIT_TYP, InitReply, InitRequest, KeyShares,
    REKEY_TYP, RekeyReply, RekeyRequest, SHARE_PLAIN_LEN, ShareFile, SharePlain, UNSEAL_TYP,
    UnsealReply, UnsealRequest,
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
    /// Opens the database with `current` and decrypt-only `previous` keys (creating it when
    /// empty; registering `current` and starting the sweep when it is new) and builds the
    /// service on `keys`, with its background work.
    fn open(
        &self,
        current: &MasterKey,
        previous: &[MasterKey],
        keys: Arc<KeySet>,
    ) -> Result<Arc<Service>, OpenError>;
    /// Stops the service's background work and flushes its database (before it is reopened
    /// under a new key).
    fn close(&self, service: &Service);
    /// Restarts the background work of a service that stays (a rekey that could not switch).
    fn resume(&self, service: &Arc<Service>) -> Result<(), OpenError>;
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
    /// A rekey of a sealed service.
    #[error("the service is sealed: unseal it before a rekey")]
    Sealed,
    /// A rekey while the last one's sweep is unfinished.
    #[error(
        "a rekey is in progress: master key {0} is kept until the sweep is verified and the key \
         retired (GET /v1/custody shows it); rekey again after that"
    )]
    RekeyInProgress(String),
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
    /// This custodian's share (or a share with that number) or approval is already held.
    #[error("custodian {0}'s share or approval was already received in this attempt")]
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
    key_id: KeyId,
    /// The split's k and n, as the share names them.
    split: (u8, u8),
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
    /// Of the unseal while sealed, of the next rekey once open.
    attempt: [u8; ATTEMPT_LEN],
    /// Sealed: the shares of this attempt.
    held: Vec<Held>,
    /// Sealed: the key ids the database needs, read at the attempt's first share.
    needed: Option<Vec<KeyId>>,
    /// Open: the custodians who approved a rekey in this attempt.
    approvals: Vec<String>,
    /// The master key once open (handed to joining replicas with the other secrets).
    master: Option<MasterKey>,
    /// Open, during a rekey's sweep: the key it replaces, until it is retired.
    previous: Vec<MasterKey>,
    /// When retiring the previous key was last refused (a sweep not yet verified).
    retire_refused_at: Option<Instant>,
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
    /// A rekey is reopening the database: requests get `storage_unavailable` meanwhile.
    switching: AtomicBool,
    custody: Option<Custody>,
}

/// How long a rekey waits for the requests in flight on the old service.
const SWITCH_WAIT: Duration = Duration::from_secs(30);
/// How long after a refused retirement (the sweep not verified yet) it is tried again.
const RETIRE_RETRY: Duration = Duration::from_secs(30);

impl Gate {
    /// A service that opened its database at start (key from the environment).
    pub fn open(service: Arc<Service>) -> Self {
        let keys = service.keys.clone();
        Self {
            signer: ResponseSigner::new(keys.identity().public()),
            keys,
            service: RwLock::new(Some(service)),
            switching: AtomicBool::new(false),
            custody: None,
        }
    }

    /// Custodian mode: sealed until k custodians unseal it, or open already when `master`
    /// (and any `previous` key a sweep still needs) came with a peer's join.
    pub fn custodians(
        keys: Arc<KeySet>,
        roster: Roster,
        opener: Box<dyn Opener>,
        master: Option<MasterKey>,
        previous: Vec<MasterKey>,
        now: i64,
    ) -> Result<Self, CustodyError> {
        let gate = Self {
            signer: ResponseSigner::new(keys.identity().public()),
            keys,
            service: RwLock::new(None),
            switching: AtomicBool::new(false),
            custody: Some(Custody {
                roster,
                opener,
                state: Mutex::new(CustodyState {
                    attempt: new_attempt()?,
                    held: Vec::new(),
                    needed: None,
                    approvals: Vec::new(),
                    master: None,
                    previous: Vec::new(),
                    retire_refused_at: None,
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
                .open(&master, &previous, gate.keys.clone())
                .map_err(|e| CustodyError::Unavailable(e.to_string()))?;
            state.master = Some(master);
            state.previous = previous;
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

    /// The service, or `sealed` (or `storage_unavailable` while a rekey reopens it).
    pub fn service(&self) -> Result<Arc<Service>, ServiceError> {
        if self.switching.load(Ordering::SeqCst) {
            return Err(ServiceError::StorageUnavailable);
        }
        self.current().ok_or(ServiceError::Sealed)
    }

    fn current(&self) -> Option<Arc<Service>> {
        self.service
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn is_sealed(&self) -> bool {
        self.current().is_none() && !self.switching.load(Ordering::SeqCst)
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
            secrets.master_key = Some(copy_secret(master));
            secrets.previous_keys = state.previous.iter().map(copy_secret).collect();
        }
        Some(secrets)
    }

    /// Whether the key comes from custodians (the custody endpoints exist).
    pub fn custody_mode(&self) -> bool {
        self.custody.is_some()
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
            attempt: b64_encode(&state.attempt),
            threshold: custody.roster.threshold,
            custodians: custody.roster.names(),
            received: match sealed {
                true => state.held.iter().map(|h| h.custodian.clone()).collect(),
                false => state.approvals.clone(),
            },
            needed: state.needed_summary(),
            key_id: state.master.as_ref().map(|m| m.key_id().to_string()),
            previous_key_id: state.previous.first().map(|m| m.key_id().to_string()),
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
        let files = custody.split(&master)?;
        let service = custody
            .opener
            .open(&master, &[], self.keys.clone())
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
        let plain = self.open_share(&request.kid, &sealed, now)?;
        let share_key = KeyId(plain.key_id);
        let needed = match &state.needed {
            Some(needed) => needed.clone(),
            None => match custody.opener.key_ids().map_err(unavailable)? {
                None => return Err(CustodyError::NotInitialised),
                // A database from before the key registry names no key: the open checks it.
                Some(ids) if ids.is_empty() => vec![share_key],
                Some(ids) => ids,
            },
        };
        if !needed.contains(&share_key) {
            return Err(CustodyError::ShareMismatch(format!(
                "the share is of master key {share_key}, which is not a key of this database"
            )));
        }
        state.needed = Some(needed.clone());
        // The shares of one key are of one split: the same k and n. (The roster may have
        // changed since the split, to be re-split by a rekey: its k is a floor, not a match.)
        if let Some(held) = state.held.iter().find(|h| h.key_id == share_key)
            && (held.split) != (plain.threshold, plain.shares)
        {
            return Err(CustodyError::ShareMismatch(format!(
                "the share is of a {} of {} split; the shares of master key {share_key} held so \
                 far are of a {} of {} split",
                plain.threshold, plain.shares, held.split.0, held.split.1
            )));
        }
        let replayed = state.held.iter().any(|h| {
            h.key_id == share_key
                && (h.custodian == request.custodian || h.share.index == plain.index)
        });
        if replayed {
            return Err(CustodyError::ShareReplayed(request.custodian.clone()));
        }
        state.held.push(Held {
            custodian: request.custodian.clone(),
            share: Share {
                index: plain.index,
                value: plain.value,
            },
            key_id: share_key,
            split: (plain.threshold, plain.shares),
        });
        state.record(Event::new(
            now,
            "custody_share_accepted",
            &share_key.to_string(),
            vec![request.custodian.clone()],
        ));
        tracing::info!(custodian = %request.custodian, key_id = %share_key,
            received = state.held.len(), threshold = custody.roster.threshold,
            "custodian share accepted");
        // Per key: the roster's k, or the split's if it was larger (then fewer could not
        // rebuild it anyway).
        let complete = needed.iter().all(|id| {
            let of_key: Vec<&Held> = state.held.iter().filter(|h| h.key_id == *id).collect();
            let k = of_key.first().map_or(custody.roster.threshold, |h| {
                h.split.0.max(custody.roster.threshold)
            });
            !of_key.is_empty() && of_key.len() >= usize::from(k)
        });
        if complete {
            self.rebuild(custody, state, &needed, now)?;
        }
        let sealed = self.is_sealed();
        let reply = UnsealReply {
            typ: UNSEAL_TYP.into(),
            attempt: request.attempt.clone(),
            custodian: request.custodian.clone(),
            state: if sealed { "sealed" } else { "unsealed" }.into(),
            received: state.held.iter().map(|h| h.custodian.clone()).collect(),
            threshold: custody.roster.threshold,
            key_id: state.master.as_ref().map(|m| m.key_id().to_string()),
            needed: state.needed_summary(),
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

    /// k shares of every needed key held: rebuild each, check it is the key its shares
    /// name, open the database (which key is the active one is the database's to say: each
    /// is tried as the current key, the others decrypt-only). A failure starts a new
    /// attempt (every share must be sent again); a store fault keeps the shares.
    fn rebuild(
        &self,
        custody: &Custody,
        state: &mut CustodyState,
        needed: &[KeyId],
        now: i64,
    ) -> Result<(), CustodyError> {
        let who: Vec<String> = state.held.iter().map(|h| h.custodian.clone()).collect();
        let outcome = rebuild_keys(&state.held, needed).and_then(|keys| {
            let mut refusals = Vec::new();
            for current in 0..keys.len() {
                let previous: Vec<MasterKey> = keys
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != current)
                    .map(|(_, key)| key.duplicate())
                    .collect();
                match custody
                    .opener
                    .open(&keys[current], &previous, self.keys.clone())
                {
                    Ok(service) => return Ok((keys[current].duplicate(), previous, service)),
                    Err(OpenError::Refused(why)) => refusals.push(why),
                    Err(OpenError::Fault(why)) => return Err(CustodyError::Unavailable(why)),
                }
            }
            Err(CustodyError::ShareMismatch(format!(
                "the rebuilt keys do not open the database ({}): a new attempt has begun",
                refusals.join("; ")
            )))
        });
        match outcome {
            Ok((master, previous, service)) => {
                let ids: Vec<String> = needed.iter().map(ToString::to_string).collect();
                state.held.clear();
                state.needed = None;
                state.attempt = new_attempt()?;
                tracing::info!(key_id = %master.key_id(), keys = ?ids,
                    "unsealed: the master key is rebuilt; serving");
                state.master = Some(master);
                state.previous = previous;
                let mut event = Event::new(now, "custody_unsealed", "", who);
                event.key_ids = ids;
                state.record(event);
                self.set_open(state, service);
                Ok(())
            }
            Err(CustodyError::Unavailable(why)) => {
                // The store, not the shares: keep them, the next share (or a resend) retries.
                state.held.pop();
                Err(CustodyError::Unavailable(why))
            }
            Err(error) => {
                state.held.clear();
                state.needed = None;
                state.attempt = new_attempt()?;
                Err(error)
            }
        }
    }

    /// `POST /v1/custody/rekey`: one custodian's approval; the k-th makes a new master key,
    /// hands out its shares (in this answer), and reopens the database under it with the
    /// old key decrypt-only: the online sweep moves every record; the old key is kept until
    /// the sweep is verified and the key retired ([`Gate::finish_rekey`]).
    pub fn rekey(&self, request: &RekeyRequest, now: i64) -> Result<SignedResponse, CustodyError> {
        let custody = self.custody.as_ref().ok_or(CustodyError::NotCustodyMode)?;
        let mut state = custody.lock();
        if self.is_sealed() {
            return Err(CustodyError::Sealed);
        }
        let result = self.try_rekey(custody, &mut state, request, now);
        if let Err(error) = &result {
            refused(
                &mut state,
                now,
                "custody_rekey_refused",
                &request.custodian,
                error,
            );
            self.write_events(&mut state);
        }
        result
    }

    fn try_rekey(
        &self,
        custody: &Custody,
        state: &mut CustodyState,
        request: &RekeyRequest,
        now: i64,
    ) -> Result<SignedResponse, CustodyError> {
        let custodian = custody.custodian(&request.custodian)?;
        let attempt = request
            .verify(&custodian.key)
            .map_err(|e| signature_or_malformed(e, &request.custodian))?;
        if attempt != state.attempt {
            return Err(CustodyError::StaleAttempt);
        }
        if let Some(previous) = state.previous.first() {
            return Err(CustodyError::RekeyInProgress(previous.key_id().to_string()));
        }
        if state.approvals.contains(&request.custodian) {
            return Err(CustodyError::ShareReplayed(request.custodian.clone()));
        }
        let old = state
            .master
            .as_ref()
            .ok_or(CustodyError::Internal)?
            .duplicate();
        state.approvals.push(request.custodian.clone());
        state.record(Event::new(
            now,
            "custody_rekey_approved",
            &old.key_id().to_string(),
            vec![request.custodian.clone()],
        ));
        let mut reply = RekeyReply {
            typ: REKEY_TYP.into(),
            attempt: request.attempt.clone(),
            custodian: request.custodian.clone(),
            state: "approving".into(),
            approvals: state.approvals.clone(),
            threshold: custody.roster.threshold,
            key_id: None,
            previous_key_id: None,
            shares: Vec::new(),
        };
        if state.approvals.len() < usize::from(custody.roster.threshold) {
            self.write_events(state);
            return self.sign(&reply);
        }
        let new = MasterKey::generate().map_err(|_| CustodyError::Internal)?;
        reply.shares = custody.split(&new)?;
        reply.state = "rekeyed".into();
        reply.key_id = Some(new.key_id().to_string());
        reply.previous_key_id = Some(old.key_id().to_string());
        // Signed before the switch: once the new key may be registered, its shares must
        // reach the custodians whatever happens next.
        let signed = self.sign(&reply)?;
        let approvals = std::mem::take(&mut state.approvals);
        state.attempt = new_attempt()?;
        self.switch(custody, state, new, old, approvals, now)?;
        Ok(signed)
    }

    /// Reopens the database under `new` with `old` decrypt-only, once the requests in flight
    /// on the old service have finished.
    fn switch(
        &self,
        custody: &Custody,
        state: &mut CustodyState,
        new: MasterKey,
        old: MasterKey,
        approvals: Vec<String>,
        now: i64,
    ) -> Result<(), CustodyError> {
        let Some(service) = self.current() else {
            return Err(CustodyError::Sealed);
        };
        self.switching.store(true, Ordering::SeqCst);
        *self.service.write().unwrap_or_else(|p| p.into_inner()) = None;
        custody.opener.close(&service);
        let deadline = Instant::now() + SWITCH_WAIT;
        while Arc::strong_count(&service) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if Arc::strong_count(&service) > 1 {
            // Nothing registered yet: the old key stays, the new one is forgotten.
            let resumed = custody.opener.resume(&service);
            *self.service.write().unwrap_or_else(|p| p.into_inner()) = Some(service);
            self.switching.store(false, Ordering::SeqCst);
            resumed.map_err(unavailable)?;
            return Err(CustodyError::Unavailable(
                "requests in flight did not finish in time: send the approvals again".into(),
            ));
        }
        drop(service);
        let (new_id, old_id) = (new.key_id().to_string(), old.key_id().to_string());
        let opened = custody
            .opener
            .open(&new, std::slice::from_ref(&old), self.keys.clone());
        let result = match opened {
            Ok(service) => {
                state.master = Some(new);
                state.previous = vec![old];
                let mut event = Event::new(now, "custody_rekeyed", &new_id, approvals);
                event.key_ids.push(old_id);
                state.record(event);
                self.set_open(state, service);
                tracing::info!(key_id = %new_id, previous = %state.previous[0].key_id(),
                    "rekeyed: the sweep moves every record under the new key");
                Ok(())
            }
            // The database is as it was (or the store failed before the new key registered):
            // serve on the old key.
            Err(error) => match custody.opener.open(&old, &[], self.keys.clone()) {
                Ok(service) => {
                    tracing::error!(%error, "rekey failed; serving on the old key");
                    self.set_open(state, service);
                    Err(CustodyError::Unavailable(error.to_string()))
                }
                Err(again) => {
                    // Which key is active is the database's to say: sealed, the custodians
                    // unseal with both share sets (they have the new one: it was answered).
                    tracing::error!(%error, %again, "rekey failed and the database did not \
                        reopen: sealed until the custodians unseal it with both share sets");
                    state.master = None;
                    state.previous.clear();
                    Err(CustodyError::Unavailable(error.to_string()))
                }
            },
        };
        self.switching.store(false, Ordering::SeqCst);
        result
    }

    /// After a rekey: once the sweep is complete, verifies it and retires the previous key
    /// (in the database's registry, then from memory). Called regularly; a verification
    /// that fails is retried a little later (another replica may still write under the old
    /// key until it restarts with the new one).
    pub fn finish_rekey(&self, now: i64) {
        let Some(custody) = &self.custody else {
            return;
        };
        let Some(service) = self.current() else {
            return;
        };
        let mut state = custody.lock();
        if state.previous.is_empty()
            || service.vault().rotation_pending()
            || state
                .retire_refused_at
                .is_some_and(|at| at.elapsed() < RETIRE_RETRY)
        {
            return;
        }
        let old = state.previous[0].key_id();
        match service.vault().retire_key(old) {
            Ok(()) => {
                state.previous.remove(0);
                state.retire_refused_at = None;
                state.record(Event::new(
                    now,
                    "custody_previous_key_dropped",
                    &old.to_string(),
                    vec![],
                ));
                self.write_events(&mut state);
                tracing::info!(key_id = %old, "the sweep is verified: the previous master key is retired and forgotten");
            }
            Err(error) => {
                state.retire_refused_at = Some(Instant::now());
                tracing::warn!(key_id = %old, %error, "the previous master key cannot be retired yet");
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
        *self.service.write().unwrap_or_else(|p| p.into_inner()) = Some(service);
        self.write_events(state);
    }

    /// Writes the events not yet in the audit log (none while sealed: they wait).
    fn write_events(&self, state: &mut CustodyState) {
        let Some(service) = self.current() else {
            return;
        };
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
    }

    fn sign(&self, payload: &impl serde::Serialize) -> Result<SignedResponse, CustodyError> {
        let json = serde_json::to_vec(payload).map_err(|_| CustodyError::Internal)?;
        self.signer
            .sign(self.keys.identity(), &json)
            .map_err(|_| CustodyError::Internal)
    }
}

impl Custody {
    /// Splits `master` k of n and seals each share to its custodian.
    fn split(&self, master: &MasterKey) -> Result<Vec<ShareFile>, CustodyError> {
        let (k, n) = (self.roster.threshold, self.roster.custodians.len());
        let shares = shamir::split(master.expose_secret(), k.into(), n)
            .map_err(|_| CustodyError::Internal)?;
        shares
            .into_iter()
            .zip(&self.roster.custodians)
            .map(|(share, custodian)| {
                SharePlain {
                    key_id: master.key_id().0,
                    index: share.index,
                    threshold: k,
                    shares: n as u8,
                    value: share.value,
                }
                .seal_for(&custodian.name, &custodian.key)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| CustodyError::Internal)
    }

    fn lock(&self) -> MutexGuard<'_, CustodyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn custodian(&self, name: &str) -> Result<&Custodian, CustodyError> {
        self.roster
            .find(name)
            .ok_or_else(|| CustodyError::UnknownCustodian(name.to_owned()))
    }
}

impl CustodyState {
    /// The keys the database needs, with the shares held of each (sealed, once known).
    fn needed_summary(&self) -> Vec<KeyShares> {
        self.needed
            .iter()
            .flatten()
            .map(|id| KeyShares {
                key_id: id.to_string(),
                received: self.held.iter().filter(|h| h.key_id == *id).count() as u8,
            })
            .collect()
    }
}

/// Rebuilds each needed key from its shares and checks it is the key they name.
fn rebuild_keys(held: &[Held], needed: &[KeyId]) -> Result<Vec<MasterKey>, CustodyError> {
    needed
        .iter()
        .map(|id| {
            let shares: Vec<Share> = held
                .iter()
                .filter(|h| h.key_id == *id)
                .map(|h| h.share.copy())
                .collect();
            let key = MasterKey::from_secret(
                shamir::combine(&shares).map_err(|_| CustodyError::Internal)?,
            );
            if key.key_id() != *id {
                return Err(CustodyError::ShareMismatch(format!(
                    "the {} shares of master key {id} do not rebuild it (one of them is not of \
                     that split): a new attempt has begun, send every share again",
                    shares.len()
                )));
            }
            Ok(key)
        })
        .collect()
}

fn copy_secret(key: &MasterKey) -> SecretBytes<32> {
    SecretBytes::from_slice(key.expose_secret().expose()).expect("same length")
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
        CustodyError::Sealed => "sealed",
        CustodyError::RekeyInProgress(_) => "rekey_in_progress",
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

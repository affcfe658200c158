//! The service's gate: open (a [`Service`] with its database) or sealed (the identity and
//! encryption keys only, in custodian mode, until k custodians have sent their shares of
//! each DB master key the database needs: one, or two while a rekey's sweep is unfinished).
//! Unsealed, k custodians' approvals rekey it: a new key made here, new shares handed out,
//! the database reopened under the new key with the old one decrypt-only, and today's
//! online sweep; the old key stays in memory until the sweep is verified and it is retired.
//! While sealed, attestation and `/v1/keys` answer, every data endpoint is refused with
//! `sealed`, and nothing is read from or written to the store but the key ids an unseal
//! checks shares against (protocol: `protocol::custody`; operations: docs/OPERATIONS.md
//! "Custodians").
//!
//! Here: the gate, its state, and what every custody message shares; one file per message
//! (`init`, `unseal`, `rekey`, each an `impl Gate`), and the custodians file (`roster`).
//!
//! The audit log lives in the store, which a sealed service does not write: events before
//! the unseal are kept in memory and written, with their times, once it opens (they are
//! also in the service log as they happen).

mod init;
mod rekey;
mod roster;
mod unseal;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use super::keyset::{KeySet, KidLookup};
use super::{Service, ServiceError};
use crate::attest::join::ClusterSecrets;
use crate::crypto::random_array;
use crate::crypto::secret::SecretBytes;
use crate::crypto::shamir::{self, Share};
use crate::crypto::sm2::PublicKey;
use crate::protocol::custody::{
    ATTEMPT_LEN, Approval, CustodyFormatError, CustodyStatus, INIT_TYP, InitReply, KeyShares,
    Purpose, REKEY_TYP, RekeyReply, SHARE_PLAIN_LEN, ShareFile, SharePlain, UNSEAL_TYP,
    UnsealReply, UnsealRequest,
};
use crate::protocol::response::{ResponseSigner, SignedResponse};
use crate::protocol::{KeysDocument, PublicJwk, b64_encode};
use crate::store::{KeyId, MasterKey};
use roster::Custodian;
pub use roster::{MAX_CUSTODIANS, Roster, RosterError};

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

    /// One custody message under the state's lock: `ready` checks the gate first (sealed for
    /// an init or a share, open for a rekey), then `attempt` runs; a refusal is an audit
    /// event `refusal` naming the custodian.
    fn handle(
        &self,
        refusal: &'static str,
        custodian: &str,
        now: i64,
        ready: fn(&Self) -> Result<(), CustodyError>,
        attempt: impl FnOnce(&Custody, &mut CustodyState) -> Result<SignedResponse, CustodyError>,
    ) -> Result<SignedResponse, CustodyError> {
        let custody = self.custody.as_ref().ok_or(CustodyError::NotCustodyMode)?;
        let mut state = custody.lock();
        ready(self)?;
        let result = attempt(custody, &mut state);
        if let Err(error) = &result {
            refused(&mut state, now, refusal, custodian, error);
            // (A sealed service has no audit log yet: this keeps the event until it opens.)
            self.write_events(&mut state);
        }
        result
    }

    fn check_sealed(&self) -> Result<(), CustodyError> {
        match self.is_sealed() {
            true => Ok(()),
            false => Err(CustodyError::NotSealed),
        }
    }

    fn check_open(&self) -> Result<(), CustodyError> {
        match self.is_sealed() {
            true => Err(CustodyError::Sealed),
            false => Ok(()),
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

    /// An init's or a rekey's first checks: a listed custodian, their signature over the
    /// approval of `purpose`, and the current attempt.
    fn check_approval(
        &self,
        state: &CustodyState,
        request: &Approval,
        purpose: Purpose,
    ) -> Result<(), CustodyError> {
        let custodian = self.custodian(&request.custodian)?;
        let attempt = request
            .verify(purpose, &custodian.key)
            .map_err(|e| signature_or_malformed(e, &request.custodian))?;
        if attempt != state.attempt {
            return Err(CustodyError::StaleAttempt);
        }
        Ok(())
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

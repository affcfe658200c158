//! The service's SM2 keys, with forward secrecy for what clients send, the same on every
//! replica of a cluster.
//!
//! - The **identity key** (long-term; what attestation binds) signs answers and certifies
//!   encryption keys. It never decrypts anything.
//! - Session keys are wrapped to short-lived **encryption keys**: one per epoch of
//!   `lifetime` seconds from the cluster's genesis, derived from a ratchet
//!   (`crypto::ratchet`), each with a certificate (kid, point and validity signed by the
//!   identity key; SM2 signatures here are deterministic, RFC 6979, so every replica
//!   publishes the same bytes), each wiped from memory `grace` after it expires. The ratchet
//!   only moves forward and its old states are wiped: from then on the session keys of
//!   requests recorded while a key was live cannot be unwrapped by anyone, on any replica.
//!
//! Requests to a wiped key get `key_retired`, to a key never issued `unknown_kid`; both tell
//! the client to fetch `GET /v1/keys` again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};

use crate::attest::join::{ClusterSecrets, Schedule};
use crate::crypto::CryptoError;
use crate::crypto::ratchet::RatchetState;
use crate::crypto::secret::SecretBytes;
use crate::crypto::sm2::{DecryptionKey, IdentityKey, PublicKey};
use crate::protocol::keycert::{PublishedKey, certify};
use crate::protocol::response::ResponseSigner;

/// Kids of wiped keys remembered (to answer `key_retired` rather than `unknown_kid`).
const RETIRED_KIDS_KEPT: usize = 1024;
/// The next epoch's key decrypts this long before its epoch starts: replicas' clocks differ
/// by a little, and a client may fetch keys from one that has moved on and post to one that
/// has not.
pub const CLOCK_SKEW_SECS: i64 = 30;

/// The outcome of looking up the `kid` a request names.
pub enum KidLookup {
    Live(Arc<DecryptionKey>),
    /// Issued once, now past its grace period and wiped.
    Retired,
    Unknown,
}

struct LiveKey {
    key: Arc<DecryptionKey>,
    published: PublishedKey,
}

/// The ratchet and the keys it has derived so far.
struct Epochs {
    /// At the newest epoch that has begun.
    ratchet: RatchetState,
    /// Oldest first; the last is the one clients should use.
    live: Vec<LiveKey>,
    /// The next epoch's key, accepted [`CLOCK_SKEW_SECS`] early, not yet published.
    upcoming: LiveKey,
}

pub struct KeySet {
    /// The identity key's scalar, kept to hand to joining replicas.
    identity_scalar: SecretBytes<32>,
    identity: IdentityKey,
    /// Signs certificates in the same JWS shape as answers.
    signer: ResponseSigner,
    schedule: Schedule,
    epochs: RwLock<Epochs>,
    retired: Mutex<VecDeque<String>>,
}

impl KeySet {
    /// A new cluster's secrets: a random identity and ratchet, epoch 0 beginning at `now`.
    pub fn bootstrap(lifetime: i64, grace: i64, now: i64) -> Result<ClusterSecrets, CryptoError> {
        let identity = loop {
            // A random 256-bit value is a valid scalar but with probability ~2^-32.
            let scalar = SecretBytes::<32>::random()?;
            if IdentityKey::from_scalar(&scalar).is_ok() {
                break scalar;
            }
        };
        Ok(ClusterSecrets {
            identity,
            ratchet: RatchetState::generate(0)?,
            schedule: Schedule {
                genesis: now,
                lifetime,
                grace,
            },
            master_key: None,
            previous_keys: Vec::new(),
        })
    }

    /// The key set of a replica holding `secrets`, with the keys of the epoch current at
    /// `now` (and none earlier: a replica that joins late cannot decrypt what came before).
    pub fn new(secrets: ClusterSecrets, now: i64) -> Result<Self, CryptoError> {
        let ClusterSecrets {
            identity: identity_scalar,
            mut ratchet,
            schedule,
            // The master key is the vault's, not the key set's (`service::custody`).
            master_key: _,
            previous_keys: _,
        } = secrets;
        let identity = IdentityKey::from_scalar(&identity_scalar)?;
        let signer = ResponseSigner::new(identity.public());
        ratchet.advance_to(schedule.epoch_at(now))?;
        let current = issue(&signer, &identity, &schedule, &ratchet)?;
        let upcoming = issue(&signer, &identity, &schedule, &ratchet.peek_next()?)?;
        Ok(Self {
            identity_scalar,
            identity,
            signer,
            schedule,
            epochs: RwLock::new(Epochs {
                ratchet,
                live: vec![current],
                upcoming,
            }),
            retired: Mutex::new(VecDeque::new()),
        })
    }

    pub fn identity(&self) -> &IdentityKey {
        &self.identity
    }

    pub fn schedule(&self) -> Schedule {
        self.schedule
    }

    /// What a joining replica receives: the identity scalar and the ratchet at the current
    /// epoch (never an earlier state). Wiped when the caller drops it.
    pub fn export(&self) -> ClusterSecrets {
        let epochs = self.read();
        ClusterSecrets {
            identity: SecretBytes::from_slice(self.identity_scalar.expose()).expect("32 bytes"),
            ratchet: RatchetState::from_parts(
                epochs.ratchet.epoch(),
                SecretBytes::from_slice(epochs.ratchet.expose_state()).expect("32 bytes"),
            ),
            schedule: self.schedule,
            master_key: None,
            previous_keys: Vec::new(),
        }
    }

    /// Moves the ratchet to the epoch of `now` (issuing its key and wiping the old states),
    /// and wipes every key whose grace period is over. Call it regularly (the server does,
    /// every second).
    pub fn maintain(&self, now: i64) -> Result<(), CryptoError> {
        let target = self.schedule.epoch_at(now);
        let mut wiped = Vec::new();
        {
            let mut epochs = self.write();
            while epochs.ratchet.epoch() < target {
                epochs.ratchet.advance()?;
                let next = issue(
                    &self.signer,
                    &self.identity,
                    &self.schedule,
                    &epochs.ratchet.peek_next()?,
                )?;
                let started = std::mem::replace(&mut epochs.upcoming, next);
                tracing::info!(
                    kid = %started.published.public.kid(),
                    not_after = started.published.not_after,
                    "encryption key of a new epoch published"
                );
                epochs.live.push(started);
            }
            let grace = self.schedule.grace;
            epochs.live.retain(|live| {
                let keep = now <= live.published.not_after + grace;
                if !keep {
                    wiped.push(live.published.public.kid());
                }
                keep
            });
        }
        if !wiped.is_empty() {
            let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
            for kid in wiped {
                tracing::info!(%kid, "encryption key wiped after its grace period");
                retired.push_back(kid);
            }
            while retired.len() > RETIRED_KIDS_KEPT {
                retired.pop_front();
            }
        }
        Ok(())
    }

    /// The private key for `kid`, if it is live at `now` (within its validity plus grace,
    /// or the next epoch's within [`CLOCK_SKEW_SECS`] of its start).
    pub fn lookup(&self, kid: &str, now: i64) -> KidLookup {
        let epochs = self.read();
        if let Some(found) = epochs.live.iter().find(|k| k.published.public.kid() == kid) {
            if now <= found.published.not_after + self.schedule.grace {
                return KidLookup::Live(found.key.clone());
            }
            return KidLookup::Retired;
        }
        let upcoming = &epochs.upcoming;
        if upcoming.published.public.kid() == kid
            && now >= upcoming.published.not_before - CLOCK_SKEW_SECS
        {
            return KidLookup::Live(upcoming.key.clone());
        }
        drop(epochs);
        let retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        if retired.iter().any(|r| r == kid) {
            KidLookup::Retired
        } else {
            KidLookup::Unknown
        }
    }

    /// The live encryption keys with their certificates, newest last.
    pub fn published(&self) -> Vec<PublishedKey> {
        self.read()
            .live
            .iter()
            .map(|k| k.published.clone())
            .collect()
    }

    /// The key clients should encrypt to now.
    pub fn newest(&self) -> PublicKey {
        self.read()
            .live
            .last()
            .expect("a key set always holds a key")
            .published
            .public
            .clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Epochs> {
        // Updates replace whole entries; a panic cannot leave the list half-changed.
        self.epochs.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Epochs> {
        self.epochs.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The key of the ratchet's epoch, certified for that epoch's window.
fn issue(
    signer: &ResponseSigner,
    identity: &IdentityKey,
    schedule: &Schedule,
    ratchet: &RatchetState,
) -> Result<LiveKey, CryptoError> {
    let key = ratchet.encryption_key()?;
    let published = certify(
        signer,
        identity,
        key.public(),
        schedule.not_before(ratchet.epoch()),
        schedule.not_after(ratchet.epoch()),
    )?;
    Ok(LiveKey {
        key: Arc::new(key),
        published,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::b64_encode;
    use crate::protocol::keycert::{CertificateError, verify_certificate};

    const HOUR: i64 = 3600;

    fn keyset(now: i64) -> KeySet {
        KeySet::new(KeySet::bootstrap(HOUR, 300, now).unwrap(), now).unwrap()
    }

    #[test]
    fn keys_rotate_and_are_wiped_after_their_grace_period() {
        let keys = keyset(1_000);
        let first = keys.newest().kid();
        assert!(matches!(keys.lookup(&first, 1_000), KidLookup::Live(_)));
        keys.maintain(1_000 + HOUR - 1).unwrap();
        assert_eq!(keys.newest().kid(), first, "not yet expired");

        keys.maintain(1_000 + HOUR).unwrap();
        let second = keys.newest().kid();
        assert_ne!(second, first);
        assert_eq!(keys.published().len(), 2);
        // Within its grace period the old key still decrypts.
        assert!(matches!(
            keys.lookup(&first, 1_000 + HOUR + 300),
            KidLookup::Live(_)
        ));
        // Past it, it is refused even before maintenance wipes it...
        assert!(matches!(
            keys.lookup(&first, 1_000 + HOUR + 301),
            KidLookup::Retired
        ));
        // ...and maintenance wipes it.
        keys.maintain(1_000 + HOUR + 301).unwrap();
        assert_eq!(keys.published().len(), 1);
        assert!(matches!(
            keys.lookup(&first, 1_000 + HOUR + 301),
            KidLookup::Retired
        ));
        assert!(matches!(keys.lookup("0000", 0), KidLookup::Unknown));
    }

    #[test]
    fn certificates_verify_and_tampering_fails() {
        let keys = keyset(1_000);
        let published = &keys.published()[0];
        let identity = keys.identity().public();
        let statement =
            verify_certificate(identity, &published.public, &published.certificate).unwrap();
        assert_eq!(
            (statement.not_before, statement.not_after),
            (1_000, 1_000 + HOUR)
        );

        let other = IdentityKey::generate().unwrap();
        assert!(
            verify_certificate(other.public(), &published.public, &published.certificate).is_err()
        );
        let stranger = DecryptionKey::generate().unwrap();
        let err =
            verify_certificate(identity, stranger.public(), &published.certificate).unwrap_err();
        assert_eq!(err, CertificateError::OtherKey);
        let mut tampered = published.certificate.clone();
        tampered.payload = b64_encode(b"{\"typ\":\"x\"}");
        assert!(verify_certificate(identity, &published.public, &tampered).is_err());
    }

    fn replica_of(keys: &KeySet, now: i64) -> KeySet {
        let secrets = keys.export();
        let bytes = secrets.to_bytes();
        KeySet::new(ClusterSecrets::from_bytes(&bytes).unwrap(), now).unwrap()
    }

    fn document(keys: &KeySet) -> String {
        let jwks: Vec<_> = keys
            .published()
            .iter()
            .map(crate::protocol::PublicJwk::encryption)
            .collect();
        serde_json::to_string(&jwks).unwrap()
    }

    #[test]
    fn replicas_holding_one_secret_publish_the_same_keys_byte_for_byte() {
        let first = keyset(1_000);
        let second = replica_of(&first, 1_000 + 10);
        assert_eq!(first.identity().public(), second.identity().public());
        assert_eq!(document(&first), document(&second));
        for now in [1_000 + HOUR, 1_000 + HOUR + 301, 1_000 + 5 * HOUR + 7] {
            first.maintain(now).unwrap();
            second.maintain(now).unwrap();
            assert_eq!(document(&first), document(&second), "at {now}");
            let kid = first.newest().kid();
            let (KidLookup::Live(a), KidLookup::Live(b)) =
                (first.lookup(&kid, now), second.lookup(&kid, now))
            else {
                panic!("the newest key is live on both");
            };
            assert_eq!(a.public(), b.public());
        }
    }

    #[test]
    fn a_late_joiner_gets_the_current_epoch_only_and_the_next_key_early() {
        let first = keyset(1_000);
        let old = first.newest().kid();
        first.maintain(1_000 + HOUR + 10).unwrap();
        assert!(matches!(
            first.lookup(&old, 1_000 + HOUR + 10),
            KidLookup::Live(_)
        ));
        // Joining during the old key's grace: it receives the ratchet at epoch 1 only.
        let late = replica_of(&first, 1_000 + HOUR + 10);
        assert_eq!(late.export().ratchet.epoch(), 1);
        assert!(matches!(
            late.lookup(&old, 1_000 + HOUR + 10),
            KidLookup::Unknown
        ));
        assert_eq!(late.newest().kid(), first.newest().kid());

        // The next epoch's key decrypts up to CLOCK_SKEW_SECS before its start.
        let next_start = 1_000 + 2 * HOUR;
        first.maintain(next_start).unwrap();
        let next = first.newest().kid();
        assert!(matches!(
            late.lookup(&next, next_start - CLOCK_SKEW_SECS - 1),
            KidLookup::Unknown
        ));
        assert!(matches!(
            late.lookup(&next, next_start - CLOCK_SKEW_SECS),
            KidLookup::Live(_)
        ));
    }
}

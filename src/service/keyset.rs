//! The service's SM2 keys, with forward secrecy for what clients send.
//!
//! - The **identity key** (long-term; what attestation binds) signs answers and certifies
//!   encryption keys. It never decrypts anything.
//! - Session keys are wrapped to short-lived **encryption keys**: a new one every
//!   `lifetime`, each with a certificate (a statement of kid, point and validity signed by
//!   the identity key), each wiped from memory `grace` after it expires. From then on the
//!   session keys of requests recorded while it was live cannot be unwrapped by anyone:
//!   the private key is gone, and the identity key never could.
//!
//! Requests to a wiped key get `key_retired`, to a key never issued `unknown_kid`; both tell
//! the client to fetch `GET /v1/keys` again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};

use crate::crypto::CryptoError;
use crate::crypto::sm2::{DecryptionKey, IdentityKey, PublicKey};
use crate::protocol::keycert::{PublishedKey, certify};
use crate::protocol::response::ResponseSigner;

/// Kids of wiped keys remembered (to answer `key_retired` rather than `unknown_kid`).
const RETIRED_KIDS_KEPT: usize = 1024;

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

pub struct KeySet {
    identity: IdentityKey,
    /// Signs certificates in the same JWS shape as answers.
    signer: ResponseSigner,
    lifetime: i64,
    grace: i64,
    /// Oldest first; the last is the one clients should use.
    live: RwLock<Vec<LiveKey>>,
    retired: Mutex<VecDeque<String>>,
}

impl KeySet {
    /// A key set with a fresh encryption key valid from `now`.
    pub fn new(
        identity: IdentityKey,
        lifetime: i64,
        grace: i64,
        now: i64,
    ) -> Result<Self, CryptoError> {
        let keys = Self {
            signer: ResponseSigner::new(identity.public()),
            identity,
            lifetime,
            grace,
            live: RwLock::new(Vec::new()),
            retired: Mutex::new(VecDeque::new()),
        };
        let first = keys.issue(now)?;
        keys.write().push(first);
        Ok(keys)
    }

    pub fn identity(&self) -> &IdentityKey {
        &self.identity
    }

    fn issue(&self, not_before: i64) -> Result<LiveKey, CryptoError> {
        let key = DecryptionKey::generate()?;
        let published = certify(
            &self.signer,
            &self.identity,
            key.public(),
            not_before,
            not_before + self.lifetime,
        )?;
        tracing::info!(kid = %published.public.kid(), not_after = published.not_after, "encryption key issued");
        Ok(LiveKey {
            key: Arc::new(key),
            published,
        })
    }

    /// Issues the next key when the newest expires, and wipes every key whose grace period
    /// is over. Call it regularly (the server does, every second).
    pub fn maintain(&self, now: i64) -> Result<(), CryptoError> {
        let newest_expiry = self
            .read()
            .last()
            .map_or(i64::MIN, |k| k.published.not_after);
        if now >= newest_expiry {
            let next = self.issue(now)?;
            self.write().push(next);
        }
        let mut wiped = Vec::new();
        self.write().retain(|live| {
            let keep = now <= live.published.not_after + self.grace;
            if !keep {
                wiped.push(live.published.public.kid());
            }
            keep
        });
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

    /// The private key for `kid`, if it is live at `now` (within its validity plus grace).
    pub fn lookup(&self, kid: &str, now: i64) -> KidLookup {
        let live = self.read();
        if let Some(found) = live.iter().find(|k| k.published.public.kid() == kid) {
            if now <= found.published.not_after + self.grace {
                return KidLookup::Live(found.key.clone());
            }
            return KidLookup::Retired;
        }
        drop(live);
        let retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        if retired.iter().any(|r| r == kid) {
            KidLookup::Retired
        } else {
            KidLookup::Unknown
        }
    }

    /// The live encryption keys with their certificates, newest last.
    pub fn published(&self) -> Vec<PublishedKey> {
        self.read().iter().map(|k| k.published.clone()).collect()
    }

    /// The key clients should encrypt to now.
    pub fn newest(&self) -> PublicKey {
        self.read()
            .last()
            .expect("a key set always holds a key")
            .published
            .public
            .clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<LiveKey>> {
        // Updates replace whole entries; a panic cannot leave the list half-changed.
        self.live.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<LiveKey>> {
        self.live.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::b64_encode;
    use crate::protocol::keycert::{CertificateError, verify_certificate};

    const HOUR: i64 = 3600;

    fn keyset(now: i64) -> KeySet {
        KeySet::new(IdentityKey::generate().unwrap(), HOUR, 300, now).unwrap()
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
}

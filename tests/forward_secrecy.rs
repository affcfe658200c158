//! Forward secrecy of what clients send: a request recorded while its encryption key was
//! live cannot be decrypted once that key's grace period is over, and the long-term
//! identity key never could.

use std::sync::Arc;

use tee_risk::app::config::Config;
use tee_risk::client::FeatureRequest;
use tee_risk::crypto::secret::SecretBytes;
use tee_risk::crypto::sm2::{DecryptionKey, IdentityKey, PublicKey};
use tee_risk::obs::unix_now;
use tee_risk::protocol::request::{ProtectedHeader, RequestEnvelope, seal};
use tee_risk::service::Service;
use tee_risk::service::ServiceError;
use tee_risk::store::{MasterKey, SledStore, Store, Vault};

/// A fixed identity scalar, so the test can build the "stolen identity key" below.
const IDENTITY_SCALAR: [u8; 32] = [0x42; 32];

fn body(key: &PublicKey, iat: i64, user: &str) -> Vec<u8> {
    let features: Vec<f32> = (0..128).map(|i| ((i % 7) as f32) - 3.0).collect();
    let request = FeatureRequest {
        user_id: user.into(),
        features,
        liveness: None,
        device_id: None,
    };
    let header = ProtectedHeader::new(&key.kid(), iat).unwrap();
    seal(key, &header, &serde_json::to_vec(&request).unwrap()).unwrap()
}

#[test]
fn a_recorded_request_is_undecryptable_after_its_key_is_wiped() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let vault = Vault::open(store, &MasterKey::generate().unwrap()).unwrap();
    let config = Config::builtin();
    let lifetime = config.keys.encryption_key_lifetime_secs;
    let grace = config.keys.encryption_key_grace_secs;
    let identity =
        IdentityKey::from_scalar(&SecretBytes::from_slice(&IDENTITY_SCALAR).unwrap()).unwrap();
    let t0 = unix_now();
    let service =
        Service::with_identity(&config.service_settings().unwrap(), vault, identity, t0).unwrap();
    let live_key = service.encryption_public();

    // While the key is live: requests to it are served.
    service.enroll(&body(&live_key, t0, "alice"), t0).unwrap();
    // An eavesdropper records two more requests sealed to it.
    let recorded = body(&live_key, t0, "alice");
    let control = body(&live_key, t0, "alice");
    service.assess(&control, t0 + 1).unwrap();

    // Time passes: a new key is issued when the first expires; within the grace period the
    // old one still works (a request fresh by iat still decrypts).
    service.maintain_keys(t0 + lifetime).unwrap();
    let next_key = service.encryption_public();
    assert_ne!(next_key.kid(), live_key.kid());
    let late = t0 + lifetime + grace;
    service
        .assess(&body(&live_key, late, "alice"), late)
        .unwrap();

    // Past the grace period the old key is wiped: the recorded request is refused with a
    // typed error telling the client to fetch keys, because nothing can decrypt it any more.
    let after = late + 1;
    service.maintain_keys(after).unwrap();
    assert!(matches!(
        service.assess(&recorded, after),
        Err(ServiceError::RetiredKid)
    ));
    assert!(
        !service
            .keys_document()
            .keys
            .iter()
            .any(|k| k.kid == live_key.kid()),
        "the wiped key is no longer published"
    );

    // The long-term identity key, even if stolen, does not unwrap the session key.
    let stolen =
        DecryptionKey::from_scalar(&SecretBytes::from_slice(&IDENTITY_SCALAR).unwrap()).unwrap();
    assert_eq!(stolen.public(), service.identity_public());
    let envelope = RequestEnvelope::parse(&recorded).unwrap();
    assert!(envelope.unwrap_session_key(&stolen).is_err());
    assert!(envelope.open(&stolen).is_err());

    // The service goes on with the new key.
    service
        .assess(&body(&next_key, after, "alice"), after)
        .unwrap();
    let unknown = body(
        &DecryptionKey::generate().unwrap().public().clone(),
        after,
        "alice",
    );
    assert!(matches!(
        service.assess(&unknown, after),
        Err(ServiceError::UnknownKid)
    ));
}

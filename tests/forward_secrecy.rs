//! Forward secrecy of what clients send: a request recorded while its encryption key was
//! live cannot be decrypted once that key's grace period is over, on any replica of the
//! cluster, nor by any state of the cluster captured later; and the long-term identity key
//! never could.

use std::sync::Arc;

use tee_risk::client::FeatureRequest;
use tee_risk::internals::app::config::Config;
use tee_risk::internals::attest::join::{ClusterSecrets, Schedule};
use tee_risk::internals::crypto::ratchet::RatchetState;
use tee_risk::internals::crypto::secret::SecretBytes;
use tee_risk::internals::crypto::sm2::{DecryptionKey, IdentityKey, PublicKey};
use tee_risk::internals::obs::Now;
use tee_risk::internals::obs::unix_now;
use tee_risk::internals::service::Service;
use tee_risk::internals::service::ServiceError;
use tee_risk::internals::store::{MasterKey, SledStore, Store, Vault};
use tee_risk::protocol::request::{ProtectedHeader, RequestEnvelope, seal};

/// A fixed identity scalar, so the test can build the "stolen identity key" below.
const IDENTITY_SCALAR: [u8; 32] = [0x42; 32];

fn body(key: &PublicKey, iat: i64, user: &str) -> Vec<u8> {
    let features: Vec<f32> = (0..128).map(|i| ((i % 7) as f32) - 3.0).collect();
    let request = FeatureRequest {
        user_id: user.into(),
        features,
        liveness: None,
        device_id: None,
        face_model: None,
    };
    let header = ProtectedHeader::new(&key.kid(), iat).unwrap();
    seal(key, &header, &serde_json::to_vec(&request).unwrap()).unwrap()
}

#[test]
fn a_recorded_request_is_undecryptable_after_its_key_is_wiped() {
    let (vault, _dir) = vault();
    let config = Config::builtin();
    let lifetime = config.keys.encryption_key_lifetime_secs;
    let grace = config.keys.encryption_key_grace_secs;
    let t0 = unix_now();
    let secrets = ClusterSecrets {
        identity: SecretBytes::from_slice(&IDENTITY_SCALAR).unwrap(),
        ratchet: RatchetState::generate(0).unwrap(),
        schedule: Schedule {
            genesis: t0,
            lifetime,
            grace,
        },
        master_key: None,
        previous_keys: Vec::new(),
    };
    let service =
        Service::with_secrets(&config.service_settings().unwrap(), vault, secrets, t0).unwrap();
    assert_eq!(
        service.identity_public(),
        IdentityKey::from_scalar(&SecretBytes::from_slice(&IDENTITY_SCALAR).unwrap())
            .unwrap()
            .public()
    );
    let live_key = service.encryption_public();

    // While the key is live: requests to it are served.
    service
        .enroll(&body(&live_key, t0, "alice"), Now::at(t0))
        .unwrap();
    // An eavesdropper records two more requests sealed to it.
    let recorded = body(&live_key, t0, "alice");
    let control = body(&live_key, t0, "alice");
    service.assess(&control, Now::at(t0 + 1)).unwrap();

    // Time passes: a new key is issued when the first expires; within the grace period the
    // old one still works (a request fresh by iat still decrypts).
    service.maintain_keys(t0 + lifetime).unwrap();
    let next_key = service.encryption_public();
    assert_ne!(next_key.kid(), live_key.kid());
    let late = t0 + lifetime + grace;
    service
        .assess(&body(&live_key, late, "alice"), Now::at(late))
        .unwrap();

    // Past the grace period the old key is wiped: the recorded request is refused with a
    // typed error telling the client to fetch keys, because nothing can decrypt it any more.
    let after = late + 1;
    service.maintain_keys(after).unwrap();
    assert!(matches!(
        service.assess(&recorded, Now::at(after)),
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
        .assess(&body(&next_key, after, "alice"), Now::at(after))
        .unwrap();
    let unknown = body(
        &DecryptionKey::generate().unwrap().public().clone(),
        after,
        "alice",
    );
    assert!(matches!(
        service.assess(&unknown, Now::at(after)),
        Err(ServiceError::UnknownKid)
    ));
}

/// A replica with its own store, holding what `peer` would grant a joiner at `now` (the
/// secrets cross as the join protocol's bytes).
fn replica(peer: &Service, now: i64) -> (Service, tempfile::TempDir) {
    let (vault, dir) = vault();
    let bytes = peer.export_secrets().to_bytes();
    let secrets = ClusterSecrets::from_bytes(&bytes).unwrap();
    let config = Config::builtin();
    let service =
        Service::with_secrets(&config.service_settings().unwrap(), vault, secrets, now).unwrap();
    (service, dir)
}

#[test]
fn forward_secrecy_holds_across_replicas_and_against_states_captured_later() {
    let (vault, _dir) = vault();
    let config = Config::builtin();
    let lifetime = config.keys.encryption_key_lifetime_secs;
    let grace = config.keys.encryption_key_grace_secs;
    let t0 = unix_now();
    let first = Service::new(&config.service_settings().unwrap(), vault, t0).unwrap();
    let (second, _second_dir) = replica(&first, t0 + 1);

    // One identity, one set of keys: a client may fetch from one and post to the other.
    let same_keys = |a: &Service, b: &Service| {
        assert_eq!(
            serde_json::to_string(&a.keys_document()).unwrap(),
            serde_json::to_string(&b.keys_document()).unwrap()
        )
    };
    same_keys(&first, &second);
    let live_key = first.encryption_public();
    first
        .enroll(&body(&live_key, t0, "carol"), Now::at(t0))
        .unwrap();
    second
        .enroll(&body(&live_key, t0, "dave"), Now::at(t0))
        .unwrap();
    let recorded = body(&live_key, t0 + 2, "carol");

    // Both move to the next epoch on their own and still agree.
    let late = t0 + lifetime + grace;
    for replica in [&first, &second] {
        replica.maintain_keys(t0 + lifetime).unwrap();
    }
    same_keys(&first, &second);
    assert_ne!(first.encryption_public().kid(), live_key.kid());

    // Past the grace period, neither replica can decrypt the recorded request.
    let after = late + 1;
    for replica in [&first, &second] {
        replica.maintain_keys(after).unwrap();
        assert!(matches!(
            replica.assess(&recorded, Now::at(after)),
            Err(ServiceError::RetiredKid)
        ));
    }
    same_keys(&first, &second);

    // Everything either replica holds now, captured (as a joiner would receive it, or as a
    // memory dump would find it), derives no key that opens the recorded request: the
    // ratchet only runs forward.
    let envelope = RequestEnvelope::parse(&recorded).unwrap();
    for replica in [&first, &second] {
        let captured = replica.export_secrets();
        assert!(captured.ratchet.epoch() >= 1);
        let mut ratchet = captured.ratchet;
        for _ in 0..4 {
            let key = ratchet.encryption_key().unwrap();
            assert_ne!(key.public(), &live_key);
            assert!(envelope.open(&key).is_err());
            ratchet.advance().unwrap();
        }
        let identity = DecryptionKey::from_scalar(&captured.identity).unwrap();
        assert!(envelope.open(&identity).is_err());
    }

    // A replica that joins now receives the current epoch only.
    let (third, _third_dir) = replica(&second, after);
    same_keys(&second, &third);
    assert!(matches!(
        third.assess(&recorded, Now::at(after)),
        Err(ServiceError::UnknownKid | ServiceError::RetiredKid)
    ));
    let fresh = body(&third.encryption_public(), after, "carol");
    first.assess(&fresh, Now::at(after)).unwrap();
}

/// A vault on a fresh sled folder (kept while the folder lives).
fn vault() -> (Vault, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    (
        Vault::open(store, &MasterKey::generate().unwrap()).unwrap(),
        dir,
    )
}

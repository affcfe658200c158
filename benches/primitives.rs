//! Criterion benchmarks of the per-request crypto and the whole in-process request flow.
//! `make bench` runs them; no timing is asserted anywhere in the test suite.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use tee_risk::client::FeatureRequest;
use tee_risk::config::Config;
use tee_risk::crypto::aead::Sm4Gcm;
use tee_risk::crypto::kdf::hmac_sm3;
use tee_risk::crypto::secret::SecretBytes;
use tee_risk::crypto::sm2::{DecryptionKey, IdentityKey};
use tee_risk::crypto::sm3;
use tee_risk::envelope::request::{ProtectedHeader, RequestEnvelope, seal};
use tee_risk::service::Service;
use tee_risk::store::{MasterKey, SledStore, Store, Vault};
use tee_risk::time::unix_now;

fn primitives(c: &mut Criterion) {
    let identity = IdentityKey::generate().unwrap();
    let decryption = DecryptionKey::generate().unwrap();
    let wrapped = decryption.public().encrypt_der(&[7u8; 16]).unwrap();
    let signature = identity.sign_der(&[b"payload"]).unwrap();
    let data = vec![0x5au8; 4096];
    let gcm = Sm4Gcm::new(&SecretBytes::from_slice(&[1u8; 16]).unwrap());

    c.bench_function("sm2_sign", |b| {
        b.iter(|| identity.sign_der(&[b"payload"]).unwrap())
    });
    c.bench_function("sm2_verify", |b| {
        b.iter(|| identity.public().verify(b"payload", &signature).unwrap())
    });
    c.bench_function("sm2_encrypt_16B", |b| {
        b.iter(|| decryption.public().encrypt_der(&[7u8; 16]).unwrap())
    });
    c.bench_function("sm2_decrypt_16B", |b| {
        b.iter(|| decryption.decrypt_der_exact::<16>(&wrapped).unwrap())
    });
    c.bench_function("sm3_4KiB", |b| b.iter(|| sm3(&data)));
    c.bench_function("hmac_sm3_4KiB", |b| b.iter(|| hmac_sm3(b"key", &data)));
    c.bench_function("sm4_gcm_seal_4KiB", |b| {
        let mut buffer = data.clone();
        b.iter(|| gcm.seal_in_place(&[0u8; 12], b"aad", &mut buffer).unwrap())
    });
}

fn request_flow(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let vault = Vault::open(store, &MasterKey::generate().unwrap()).unwrap();
    let mut config = Config::builtin();
    config.protocol.replay_cache_capacity = 10_000_000;
    let service = Service::new(&config, vault).unwrap();
    let features: Vec<f32> = (0..128)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 100.0)
        .collect();
    let request = FeatureRequest {
        user_id: "bench-user".into(),
        features,
        liveness: Some(0.9),
        device_id: None,
    };
    let plaintext = serde_json::to_vec(&request).unwrap();
    let body_for = |now| {
        let header = ProtectedHeader::new(&service.encryption_public().kid(), now).unwrap();
        seal(service.encryption_public(), &header, &plaintext).unwrap()
    };
    service.enroll(&body_for(unix_now()), unix_now()).unwrap();

    let body = body_for(unix_now());
    c.bench_function("envelope_parse", |b| {
        b.iter(|| RequestEnvelope::parse(&body).unwrap())
    });
    // Each iteration needs a fresh request id; sealing happens outside the timed routine.
    c.bench_function("service_assess_with_flush", |b| {
        b.iter_batched(
            || body_for(unix_now()),
            |body| service.assess(&body, unix_now()).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, primitives, request_flow);
criterion_main!(benches);

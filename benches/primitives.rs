//! Criterion benchmarks of the primitives, the per-request crypto floor and the in-process
//! request flow. `make bench` runs them, then `benches/reference.rs` prints them beside
//! OpenSSL's figures from the same run. No timing is asserted anywhere in the test suite.

use std::sync::Arc;

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use tee_risk::internals::app::config::Config;
use tee_risk::internals::crypto::aead::Sm4Gcm;
use tee_risk::internals::crypto::kdf::{hkdf_sm3, hmac_sm3};
use tee_risk::internals::crypto::secret::SecretBytes;
use tee_risk::internals::crypto::sm2::{DecryptionKey, IdentityKey};
use tee_risk::internals::crypto::sm3;
use tee_risk::internals::obs::{Now, unix_now};
use tee_risk::internals::risk;
use tee_risk::internals::service::Service;
use tee_risk::internals::store::{MasterKey, SledStore, Store, Table, Vault, record};
use tee_risk::protocol::request::{ProtectedHeader, RequestEnvelope, seal};

#[path = "floor/mod.rs"]
mod floor;

use floor::{Fixture, KIB4, embedding, request_plaintext};

fn primitives(c: &mut Criterion) {
    let identity = IdentityKey::generate().unwrap();
    let decryption = DecryptionKey::generate().unwrap();
    let wrapped = decryption.public().encrypt_der(&[7u8; 16]).unwrap();
    let signature = identity.sign_der(&[b"payload"]).unwrap();
    let data = vec![0x5au8; KIB4];
    let gcm = Sm4Gcm::new(&SecretBytes::from_slice(&[1u8; 16]).unwrap());

    // How answers are signed (random nonces made ahead in batches, (1 + d)⁻¹ kept), and
    // RustCrypto's signing key (RFC 6979's k, both inversions on every signature: what
    // answers used before, and `sign_der` still is), kept as the reference row.
    c.bench_function("sm2_sign", |b| {
        b.iter(|| identity.sign_der_random(&[b"payload"]).unwrap())
    });
    c.bench_function("sm2_sign_rustcrypto", |b| {
        b.iter(|| identity.sign_der(&[b"payload"]).unwrap())
    });
    // The one-off path (a key seen once: Z and no table), a registered client's verifier
    // (its table built at start), and the RustCrypto verifier we used before (constant-time
    // linear combination), kept as the reference row.
    let verifier = identity.public().verifier().unwrap();
    c.bench_function("sm2_verify_table", |b| {
        b.iter(|| verifier.verify(b"payload", &signature).unwrap())
    });
    c.bench_function("sm2_verify_rustcrypto", |b| {
        use sm2::dsa::signature::Verifier as _;
        let key =
            sm2::dsa::VerifyingKey::from_sec1_bytes("1234567812345678", identity.public().sec1())
                .unwrap();
        let parsed = sm2::dsa::Signature::from_der(&signature).unwrap();
        b.iter(|| key.verify(b"payload", &parsed).unwrap())
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
    c.bench_function("sm2_decrypt_16B_rustcrypto", |b| {
        b.iter(|| {
            decryption
                .decrypt_der_exact_rustcrypto::<16>(&wrapped)
                .unwrap()
        })
    });
    c.bench_function("sm3_4KiB", |b| b.iter(|| sm3(&data)));
    c.bench_function("hmac_sm3_4KiB", |b| b.iter(|| hmac_sm3(b"key", &data)));
    c.bench_function("hkdf_sm3_16B", |b| {
        let mut out = [0u8; 16];
        b.iter(|| hkdf_sm3(&[3u8; 32], &[4u8; 32], b"tee-risk/bench", &mut out).unwrap())
    });
    c.bench_function("sm4_gcm_seal_4KiB", |b| {
        let mut buffer = data.clone();
        b.iter(|| gcm.seal_in_place(&[0u8; 12], b"aad", &mut buffer).unwrap())
    });
    // The same seal on the `sm4` crate's block function, our SM4-GCM before issue 31's SM4
    // step: one block at a time, a table S-box (`src/crypto/sm4_block.rs` says why not).
    c.bench_function("sm4_gcm_seal_4KiB_sm4crate", |b| {
        use aes_gcm::{AeadInOut, AesGcm, KeyInit, aead::consts::U12};
        let gcm = AesGcm::<sm4::Sm4, U12>::new(&[1u8; 16].into());
        let mut buffer = data.clone();
        b.iter(|| {
            gcm.encrypt_inout_detached(&[0u8; 12].into(), b"aad", buffer.as_mut_slice().into())
                .unwrap()
        })
    });
    c.bench_function("sm4_gcm_open_4KiB", |b| {
        let mut sealed = data.clone();
        let tag = gcm.seal_in_place(&[0u8; 12], b"aad", &mut sealed).unwrap();
        b.iter_batched_ref(
            || sealed.clone(),
            |buffer| gcm.open_in_place(&[0u8; 12], b"aad", buffer, &tag).unwrap(),
            BatchSize::SmallInput,
        )
    });
    // SM4-CBC only as the like-for-like comparison with `openssl speed -evp sm4-cbc`
    // (Debian's OpenSSL 3.0 has no SM4-GCM); the service never uses CBC.
    c.bench_function("sm4_cbc_encrypt_4KiB", |b| {
        use cbc::cipher::{BlockModeEncrypt, KeyIvInit};
        let mut blocks = vec![sm4::cipher::Block::<sm4::Sm4>::default(); KIB4 / 16];
        b.iter(|| {
            cbc::Encryptor::<sm4::Sm4>::new(&[1u8; 16].into(), &[2u8; 16].into())
                .encrypt_blocks(&mut blocks)
        })
    });
}

/// The SM2/SM3/SM4 work one assess request cannot avoid: verify the client's signature
/// (SM3 of the body, SM2 verify), unwrap the session key, open the payload, seal the stored
/// record, hash the request, sign the answer.
fn crypto_floor(c: &mut Criterion) {
    let f = Fixture::new();
    c.bench_function("crypto_floor_per_request", |b| b.iter(|| f.floor_request()));
    // The same on the path before issue 31 (RustCrypto's verifier, decryption and signing).
    c.bench_function("crypto_floor_per_request_rustcrypto", |b| {
        b.iter(|| f.floor_request_rustcrypto())
    });
}

fn components(c: &mut Criterion) {
    let f = Fixture::new();
    c.bench_function("envelope_parse", |b| {
        b.iter(|| RequestEnvelope::parse(&f.body).unwrap())
    });
    c.bench_function("envelope_open", |b| {
        b.iter(|| f.envelope.open(&f.decryption).unwrap())
    });
    // As the service signs each answer.
    c.bench_function("response_sign", |b| {
        b.iter(|| {
            f.signer
                .sign_answer(&f.identity, br#"{"decision":"allow"}"#)
                .unwrap()
        })
    });
    let sealed = f.seal_record(&f.plaintext);
    c.bench_function("record_seal", |b| b.iter(|| f.seal_record(&f.plaintext)));
    c.bench_function("record_open", |b| {
        b.iter(|| {
            record::open(
                f.keys.cipher(Table::RiskLogs),
                f.keys.key_id(),
                Table::RiskLogs,
                b"log-key",
                &sealed,
            )
            .unwrap()
        })
    });

    let probe = embedding(0);
    // The replay window: the default 8 recent probes.
    let recent: Vec<Vec<f32>> = (200_000..200_008).map(embedding).collect();
    let mut group = c.benchmark_group("risk_score_templates");
    for count in [1usize, 1_000, 100_000] {
        let templates: Vec<Vec<f32>> = (1..=count).map(embedding).collect();
        group.bench_with_input(BenchmarkId::from_parameter(count), &templates, |b, t| {
            b.iter(|| risk::signals(&probe, t, &recent))
        });
    }
    group.finish();
}

fn request_flow(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let vault = Vault::open(store, &MasterKey::generate().unwrap()).unwrap();
    let mut config = Config::builtin();
    config.protocol.replay_cache_capacity = 10_000_000;
    // The request flow is measured, not the rate limits: one user is assessed over and over
    // (with the per-user limit on, `assess` is refused after the burst).
    config.limits.user_per_minute = 0;
    config.limits.client_per_minute = 0;
    let service = Service::new(&config.service_settings().unwrap(), vault, unix_now()).unwrap();
    let plaintext = request_plaintext();
    let body_for = |now| {
        let encryption = service.encryption_public();
        let header = ProtectedHeader::new(&encryption.kid(), now).unwrap();
        seal(&encryption, &header, &plaintext).unwrap()
    };
    service.enroll(&body_for(unix_now()), Now::read()).unwrap();

    // Each iteration needs a fresh request id; sealing happens outside the timed routine.
    c.bench_function("service_assess_with_flush", |b| {
        b.iter_batched(
            || body_for(unix_now()),
            |body| service.assess(&body, Now::read()).unwrap(),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, primitives, crypto_floor, components, request_flow);
criterion_main!(benches);

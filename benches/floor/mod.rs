//! What the benches share: the keys and one sealed request as the service holds and
//! receives them (`Fixture`), the per-request crypto floor, and our own timings of the
//! operations `openssl speed` measures. Each bench measures what it reports in its own run,
//! so that none depends on another having run before it.

#![allow(dead_code)] // Each bench uses part of it.

use std::hint::black_box;
use std::time::{Duration, Instant};

use tee_risk::client::FeatureRequest;
use tee_risk::internals::crypto::aead::Sm4Gcm;
use tee_risk::internals::crypto::secret::SecretBytes;
use tee_risk::internals::crypto::sm2::{DecryptionKey, IdentityKey};
use tee_risk::internals::crypto::{sm3, sm3_hex};
use tee_risk::internals::obs::unix_now;
use tee_risk::internals::service::access::{ClientRegistry, Permission};
use tee_risk::internals::store::keys::{SALT_LEN, TableKeys};
use tee_risk::internals::store::{MasterKey, Table, record};
use tee_risk::protocol::client_auth::{ClientCredential, parse_authorization, signed_message};
use tee_risk::protocol::request::{ProtectedHeader, RequestEnvelope, seal};
use tee_risk::protocol::response::{ResponseSigner, SignedResponse};
use zeroize::Zeroizing;

pub const KIB4: usize = 4096;

/// The answer a floor request signs (a realistic assess payload).
const ANSWER: &[u8] = br#"{"op":"assess","rid":"0123456789abcdef0123456789abcdef","decision":"allow","score":0.000038,"reasons":[],"model":"cosine-fmr-v3"}"#;

/// A deterministic 128-d unit vector, different for each `seed`.
pub fn embedding(seed: usize) -> Vec<f32> {
    let raw: Vec<f32> = (0..128)
        .map(|i| (((i * 37 + seed * 101) % 211) as f32 - 105.0) / 100.0)
        .collect();
    let norm = raw.iter().map(|v| v * v).sum::<f32>().sqrt();
    raw.iter().map(|v| v / norm).collect()
}

/// The plaintext of a realistic assess request (128 floats, liveness, device id).
pub fn request_plaintext() -> Vec<u8> {
    serde_json::to_vec(&FeatureRequest {
        user_id: "bench-user".into(),
        features: embedding(1),
        liveness: Some(0.9),
        device_id: Some("device-1".into()),
        face_model: None,
    })
    .unwrap()
}

/// Keys and one sealed request, as the service would hold and receive them.
pub struct Fixture {
    /// A registered client and its credential: every request carries its signature.
    pub clients: ClientRegistry,
    pub client: ClientCredential,
    pub identity: IdentityKey,
    pub decryption: DecryptionKey,
    pub signer: ResponseSigner,
    pub plaintext: Vec<u8>,
    pub body: Vec<u8>,
    pub envelope: RequestEnvelope,
    pub keys: TableKeys,
    /// The client's `Authorization` value for `body`.
    pub authorization: String,
    /// The client's key as the path before issue 31 held it: RustCrypto's verifying key
    /// (its Z computed once), verified without a table.
    pub old_verifier: sm2::dsa::VerifyingKey,
}

impl Fixture {
    pub fn new() -> Self {
        let identity = IdentityKey::generate().unwrap();
        let decryption = DecryptionKey::generate().unwrap();
        let plaintext = request_plaintext();
        let header = ProtectedHeader::new(&decryption.public().kid(), unix_now()).unwrap();
        let body = seal(decryption.public(), &header, &plaintext).unwrap();
        let client = ClientCredential::new("bench", IdentityKey::generate().unwrap());
        let authorization = client.authorization("POST", "/v1/assess", &body).unwrap();
        let old_verifier =
            sm2::dsa::VerifyingKey::from_sec1_bytes("1234567812345678", client.public().sec1())
                .unwrap();
        Self {
            clients: ClientRegistry::single("bench", client.public(), vec![Permission::Assess])
                .unwrap(),
            old_verifier,
            client,
            signer: ResponseSigner::new(identity.public()),
            envelope: RequestEnvelope::parse(&body).unwrap(),
            keys: TableKeys::derive(&MasterKey::generate().unwrap(), &[9; SALT_LEN]).unwrap(),
            identity,
            decryption,
            plaintext,
            body,
            authorization,
        }
    }

    /// Seals `plaintext` as a `risk_logs` record.
    pub fn seal_record(&self, plaintext: &[u8]) -> Vec<u8> {
        record::seal(
            self.keys.cipher(Table::RiskLogs),
            self.keys.key_id(),
            Table::RiskLogs,
            b"log-key",
            Zeroizing::new(plaintext.to_vec()),
        )
        .unwrap()
    }

    /// The SM2/SM3/SM4 work one assess request cannot avoid: verify the client's signature
    /// (SM3 of the body, SM2 verify), unwrap the session key, open the payload, seal the
    /// stored record, hash the request, sign the answer.
    pub fn floor_request(&self) -> (Vec<u8>, String, SignedResponse) {
        self.clients
            .authorize(
                Some(&self.authorization),
                "POST",
                "/v1/assess",
                &self.body,
                Permission::Assess,
            )
            .unwrap();
        let (sealed, digest) = self.floor_after_client_auth();
        let response = self.signer.sign_answer(&self.identity, ANSWER).unwrap();
        (sealed, digest, response)
    }

    /// The floor's work after the client's signature and before the answer's: unwrap and
    /// open, seal the record, hash the request.
    fn floor_after_client_auth(&self) -> (Vec<u8>, String) {
        let plain = self.envelope.open(&self.decryption).unwrap();
        self.floor_after_open(&plain)
    }

    fn floor_after_open(&self, plain: &[u8]) -> (Vec<u8>, String) {
        let sealed = self.seal_record(plain);
        (sealed, sm3_hex(&self.body))
    }

    /// [`Fixture::floor_request`] on the path it replaced (issue 31, step 2): the client's
    /// signature checked by RustCrypto's verifier instead of the table built for its key at
    /// start, the session key unwrapped by RustCrypto's decryption instead of ours
    /// (`crypto::sm2::unwrap`), and the answer signed by RustCrypto's signing key
    /// (`ResponseSigner::sign`) instead of with nonces made ahead (`sign_answer`); the rest
    /// the same. The floor is compared with this row in the same run.
    pub fn floor_request_rustcrypto(&self) -> (Vec<u8>, String, SignedResponse) {
        use sm2::dsa::signature::Verifier as _;
        let credential = parse_authorization(Some(&self.authorization)).unwrap();
        let message = signed_message(credential.client_id, "POST", "/v1/assess", &self.body);
        let signature = sm2::dsa::Signature::from_der(&credential.signature).unwrap();
        self.old_verifier.verify(&message, &signature).unwrap();
        // The session key unwrapped by RustCrypto's decryption, as before.
        let session_key = self
            .decryption
            .decrypt_der_exact_rustcrypto::<16>(self.envelope.encrypted_key())
            .unwrap();
        let plain = self.envelope.open_payload(&session_key).unwrap();
        let (sealed, digest) = self.floor_after_open(&plain);
        // `sign` is RustCrypto's signing key, as answers were signed before.
        let response = self.signer.sign(&self.identity, ANSWER).unwrap();
        (sealed, digest, response)
    }
}

/// Mean seconds per call of `op`, timed on this thread for about `budget` after a short
/// warm-up (criterion gives the careful figure in `--bench primitives`; this one is for a
/// bench that needs the figure in its own run).
pub fn seconds_per_op<T>(budget: Duration, mut op: impl FnMut() -> T) -> f64 {
    let warm = Instant::now();
    while warm.elapsed() < budget / 10 {
        black_box(op());
    }
    let (start, mut n) = (Instant::now(), 0u64);
    while start.elapsed() < budget || n < 10 {
        black_box(op());
        n += 1;
    }
    start.elapsed().as_secs_f64() / n as f64
}

/// The crypto floor per request on one core, in microseconds, measured now: on today's
/// path and on the path before issue 31 (see [`Fixture::floor_request_rustcrypto`]). The
/// two take turns (`TURNS` of `budget / TURNS` each) so that the VM's drift from one second
/// to the next weighs on both alike: their ratio is the figure that matters.
pub fn crypto_floor_us(budget: Duration) -> (f64, f64) {
    const TURNS: u32 = 8;
    let fixture = Fixture::new();
    let (mut today, mut old) = (0.0, 0.0);
    for _ in 0..TURNS {
        today += seconds_per_op(budget / TURNS, || fixture.floor_request());
        old += seconds_per_op(budget / TURNS, || fixture.floor_request_rustcrypto());
    }
    (today * 1e6 / f64::from(TURNS), old * 1e6 / f64::from(TURNS))
}

/// Our seconds per operation for what `openssl speed` measures: SM2 sign and verify, SM3,
/// SM4-CBC and our SM4-GCM over 4 KiB. (SM4-CBC only as the like-for-like comparison of the
/// `sm4` crate's block function; Debian's OpenSSL 3.0 has no SM4-GCM, and the service never
/// uses CBC.)
pub fn reference_operations(budget: Duration) -> Vec<(&'static str, f64)> {
    use cbc::cipher::{BlockModeEncrypt, KeyIvInit};
    let identity = IdentityKey::generate().unwrap();
    let signature = identity.sign_der(&[b"payload"]).unwrap();
    let data = vec![0x5au8; KIB4];
    let mut blocks = vec![sm4::cipher::Block::<sm4::Sm4>::default(); KIB4 / 16];
    let gcm = Sm4Gcm::new(&SecretBytes::from_slice(&[1u8; 16]).unwrap());
    let mut buffer = data.clone();
    vec![
        (
            "sm2_sign",
            seconds_per_op(budget, || identity.sign_der_random(&[b"payload"]).unwrap()),
        ),
        (
            "sm2_verify",
            seconds_per_op(budget, || {
                identity.public().verify(b"payload", &signature).unwrap()
            }),
        ),
        ("sm3_4KiB", seconds_per_op(budget, || sm3(&data))),
        (
            "sm4_gcm_seal_4KiB",
            seconds_per_op(budget, || {
                gcm.seal_in_place(&[0u8; 12], b"aad", &mut buffer).unwrap()
            }),
        ),
        (
            "sm4_cbc_encrypt_4KiB",
            seconds_per_op(budget, || {
                cbc::Encryptor::<sm4::Sm4>::new(&[1u8; 16].into(), &[2u8; 16].into())
                    .encrypt_blocks(&mut blocks)
            }),
        ),
    ]
}

//! Entry points for the fuzzers (`fuzz/`, `make fuzz`) and their regression test
//! (`tests/fuzz_regressions.rs`): each takes arbitrary bytes and must return without
//! panicking, whatever they hold. They drive the parsers that face untrusted input. Every key
//! is fixed (from a constant scalar), so that an input that fails once fails again; the
//! seeds are committed files (`fuzz/seeds/`), written by [`seeds`].

use std::sync::OnceLock;

use crate::app::config::{Config, DEFAULT_CONFIG_TOML};
use crate::attest::policy::{Policy, SimPolicy};
use crate::attest::{Evidence, sim::SimReport, snp};
use crate::protocol::payload::{EraseRequest, FeatureError, IdentifyProbe, Probe};
use crate::protocol::request::RequestEnvelope;
use crate::protocol::response::SignedResponse;
use crate::store::RiskLogEntry;
use crate::store::keys::TableKeys;
use crate::store::{MasterKey, Table, record};

/// The face models the payload parsers accept here: the shipped two by id (the default
/// dlib's), and a 2-d one for the committed seeds.
fn menu(requested: Option<&str>) -> Result<(String, usize), FeatureError> {
    match requested {
        None | Some("dlib-resnet128") => Ok(("dlib-resnet128".into(), 128)),
        Some("mobilefacenet192") => Ok(("mobilefacenet192".into(), 192)),
        Some(other) => Err(FeatureError::UnknownFaceModel {
            requested: other.into(),
            accepted: "dlib-resnet128, mobilefacenet192".into(),
        }),
    }
}

/// The 2-d model of the committed seeds (no `face_model`).
fn menu_2d(requested: Option<&str>) -> Result<(String, usize), FeatureError> {
    match requested {
        None => Ok(("two".into(), 2)),
        Some(other) => menu(Some(other)),
    }
}

/// A request body: the envelope parser, then (as if it had decrypted) the payload parsers,
/// then a signed response as a client would read it.
pub fn envelope(data: &[u8]) {
    let _ = RequestEnvelope::parse(data);
    let _ = Probe::parse(data, &menu);
    let _ = Probe::parse(data, &menu_2d);
    let _ = EraseRequest::parse(data);
    let _ = IdentifyProbe::parse(data, &menu);
    if let Ok(signed) = serde_json::from_slice::<SignedResponse>(data) {
        let _ = crate::protocol::response::verify(fixed_key().public(), &signed);
    }
    // An encrypted answer as a client would open it (fixed session key and rid).
    if let Ok(answer) = serde_json::from_slice::<crate::protocol::answer::EncryptedAnswer>(data) {
        let key = crate::crypto::secret::SecretBytes::<16>::from_slice(&[7; 16]).expect("16 bytes");
        let _ = crate::protocol::answer::open_answer(&key, "AAECAwQFBgcICQoLDA0ODw", &answer);
    }
}

/// An encrypted request, all the way: the envelope, the SM2 unwrap of the session key under
/// the fixed recipient key (GM/T 0009 DER parsing, the point check, C3), SM4-GCM, and the
/// payload parsers on whatever decrypts. The bytes are also tried as a bare DER ciphertext.
pub fn decrypt(data: &[u8]) {
    let key = recipient();
    let _ = key.decrypt_der(data);
    let _ = key.decrypt_der_exact::<16>(data);
    if let Ok(envelope) = RequestEnvelope::parse(data) {
        if let Ok(plaintext) = envelope.open(key) {
            let _ = Probe::parse(&plaintext, &menu);
            let _ = EraseRequest::parse(&plaintext);
            let _ = IdentifyProbe::parse(&plaintext, &menu);
        }
    }
}

/// The client signature: the first line is the `Authorization` value, the rest the body,
/// checked for `POST /v1/assess` against a registry holding the fixed client key.
pub fn authorization(data: &[u8]) {
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let header = String::from_utf8_lossy(header);
    let _ = crate::protocol::client_auth::parse_authorization(Some(&header));
    let _ = registry().authorize(
        Some(&header),
        "POST",
        "/v1/assess",
        body,
        crate::service::access::Permission::Assess,
    );
}

/// A TDX quote: the DCAP parser, the FMSPC lookup, and the whole verification to Intel's
/// root with the real sample quote's collateral, at a time inside its validity, under a
/// policy that accepts every TCB status.
pub fn tdx_quote(data: &[u8]) {
    let _ = dcap_qvl::quote::Quote::parse(data);
    let _ = crate::attest::tdx::fmspc(data);
    let _ = verify_tdx_quote(data);
}

fn verify_tdx_quote(
    data: &[u8],
) -> Result<crate::attest::tdx::TdxFacts, crate::attest::AttestError> {
    static COLLATERAL: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    let collateral = COLLATERAL.get_or_init(|| {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/vectors/tdx/tdx_quote_collateral.json"
        ))
        .ok()
    });
    let policy = crate::attest::tdx::TdxPolicy::any_status();
    // 2025-06-20: inside the sample collateral's month of validity.
    crate::attest::tdx::verify(data, collateral.as_deref(), &policy, 1_750_400_000)
}

/// A stored record: header and authenticated decryption under fixed keys, for every table;
/// then a decrypted risk log entry (JSON with packed embeddings).
pub fn record(data: &[u8]) {
    let keys = table_keys();
    let _ = record::key_id_of(data);
    for table in Table::ALL {
        let _ = record::open(keys.cipher(table), keys.key_id(), table, b"key", data);
    }
    let _ = serde_json::from_slice::<RiskLogEntry>(data);
}

/// Attestation evidence: the JSON, then the whole verifier under a policy that allows every
/// TEE kind; and the raw sim and SNP report parsers.
pub fn evidence(data: &[u8]) {
    let _ = SimReport::decode(data);
    let _ = snp::verify(
        data,
        Some(data),
        None,
        &crate::attest::policy::Tcb::default(),
    );
    #[cfg(feature = "csv")]
    let _ = crate::attest::csv::verify(data, Some(data), None);
    if let Ok(evidence) = serde_json::from_slice::<Evidence>(data) {
        let _ = permissive_policy().verify(&evidence, &[1; 32], 1_800_000_000);
    }
}

/// Configuration text: the service config over the defaults, an attestation policy, and a
/// clients file.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Config::from_toml_layers(&[DEFAULT_CONFIG_TOML, text]);
    let _ = toml::from_str::<Policy>(text);
    let _ = crate::service::access::ClientRegistry::from_toml(
        text,
        std::path::Path::new("/nonexistent"),
    );
}

fn fixed_key() -> &'static crate::crypto::sm2::IdentityKey {
    static KEY: OnceLock<crate::crypto::sm2::IdentityKey> = OnceLock::new();
    KEY.get_or_init(|| {
        crate::crypto::sm2::IdentityKey::from_hex(&"11".repeat(32)).expect("a valid key")
    })
}

/// The fixed recipient of the `decrypt` target's envelopes.
fn recipient() -> &'static crate::crypto::sm2::DecryptionKey {
    static KEY: OnceLock<crate::crypto::sm2::DecryptionKey> = OnceLock::new();
    KEY.get_or_init(|| {
        crate::crypto::sm2::DecryptionKey::from_scalar(
            &crate::crypto::secret::SecretBytes::from_slice(&[0x33; 32]).expect("32 bytes"),
        )
        .expect("a valid key")
    })
}

/// The fixed client key of the `authorization` target (client id `fuzz`).
fn client_key() -> crate::crypto::sm2::IdentityKey {
    crate::crypto::sm2::IdentityKey::from_hex(&"44".repeat(32)).expect("a valid key")
}

fn registry() -> &'static crate::service::access::ClientRegistry {
    static REGISTRY: OnceLock<crate::service::access::ClientRegistry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        crate::service::access::ClientRegistry::single(
            "fuzz",
            client_key().public(),
            vec![crate::service::access::Permission::Assess],
        )
        .expect("a valid registry")
    })
}

fn table_keys() -> &'static TableKeys {
    static KEYS: OnceLock<TableKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let master = MasterKey::from_hex(&"22".repeat(32)).expect("64 hex digits");
        TableKeys::derive(&master, &[3; crate::store::keys::SALT_LEN]).expect("derivable keys")
    })
}

fn permissive_policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let pem = std::env::temp_dir().join(format!("tee-risk-fuzz-{}.pem", std::process::id()));
        std::fs::write(&pem, fixed_key().public().to_pem()).expect("write the sim key");
        Policy {
            allowed_tee: crate::attest::TeeKind::ALL.to_vec(),
            measurements: vec![],
            allow_any_measurement: true,
            release: None,
            releases: vec![],
            allow_debug: true,
            max_age_secs: i64::MAX,
            sim: Some(SimPolicy { platform_key: pem }),
            snp: None,
            csv: None,
            tdx: None,
        }
    })
}

/// Whether `data` passes every check of `target`: what a seed must do to be worth mutating
/// (the regression test checks each committed seed with it, so that a seed that stopped
/// reaching the deep code, say after a key change, is noticed).
pub fn reaches_the_end(target: &str, data: &[u8]) -> bool {
    match target {
        "envelope" => {
            RequestEnvelope::parse(data).is_ok()
                || Probe::parse(data, &menu_2d).is_ok()
                || EraseRequest::parse(data).is_ok()
                || serde_json::from_slice::<SignedResponse>(data).is_ok_and(|signed| {
                    crate::protocol::response::verify(fixed_key().public(), &signed).is_ok()
                })
        }
        "decrypt" => {
            recipient().decrypt_der(data).is_ok()
                || RequestEnvelope::parse(data).is_ok_and(|envelope| {
                    envelope.open(recipient()).is_ok_and(|plaintext| {
                        Probe::parse(&plaintext, &menu).is_ok()
                            || Probe::parse(&plaintext, &menu_2d).is_ok()
                    })
                })
        }
        "authorization" => {
            let (header, body) = match data.iter().position(|&b| b == b'\n') {
                Some(at) => (&data[..at], &data[at + 1..]),
                None => (data, &[][..]),
            };
            registry()
                .authorize(
                    Some(&String::from_utf8_lossy(header)),
                    "POST",
                    "/v1/assess",
                    body,
                    crate::service::access::Permission::Assess,
                )
                .is_ok()
        }
        "record" => {
            let keys = table_keys();
            Table::ALL.iter().any(|&table| {
                record::open(keys.cipher(table), keys.key_id(), table, b"key", data).is_ok()
            }) || serde_json::from_slice::<RiskLogEntry>(data).is_ok()
        }
        "tdx_quote" => verify_tdx_quote(data).is_ok(),
        "evidence" => serde_json::from_slice::<Evidence>(data).is_ok_and(|e| {
            permissive_policy()
                .verify(&e, &[1; 32], 1_800_000_000)
                .is_ok()
        }),
        "config" => std::str::from_utf8(data).is_ok_and(|text| {
            Config::from_toml_layers(&[DEFAULT_CONFIG_TOML, text]).is_ok()
                || toml::from_str::<Policy>(text).is_ok()
                || crate::service::access::ClientRegistry::from_toml(
                    text,
                    std::path::Path::new("/nonexistent"),
                )
                .is_ok()
        }),
        _ => false,
    }
}

/// Valid inputs for each target, under the fixed keys. SM2 encryption and signatures draw
/// random numbers, so these differ from call to call: `tests/fuzz_regressions.rs` writes them
/// once to `fuzz/seeds/<target>/` (committed), and the fuzzers and the mutation test start
/// from those files.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::attest::Attester;
    use crate::attest::sim::SimPlatform;
    use crate::crypto::sm2::IdentityKey;
    use crate::protocol::request::{ProtectedHeader, seal};

    let recipient = recipient();
    let header = ProtectedHeader::new(&recipient.public().kid(), 1_800_000_000).expect("header");
    let probe = br#"{"user_id":"alice","features":[0.1,0.2],"liveness":0.9,"device_id":"d"}"#;
    let body = seal(recipient.public(), &header, probe).expect("seal");
    let features: Vec<String> = (0..128)
        .map(|i| format!("{}", (i % 7) as f32 / 10.0 + 0.1))
        .collect();
    let full_probe = format!(r#"{{"user_id":"bob","features":[{}]}}"#, features.join(","));
    let full_body = seal(recipient.public(), &header, full_probe.as_bytes()).expect("seal");
    let wrapped_key = recipient.public().encrypt_der(&[9; 16]).expect("encrypt");
    let client = crate::protocol::client_auth::ClientCredential::new("fuzz", client_key());
    let signed_body = b"{\"protected\":\"x\"}";
    let mut authorization = client
        .authorization("POST", "/v1/assess", signed_body)
        .expect("sign")
        .into_bytes();
    authorization.push(b'\n');
    authorization.extend_from_slice(signed_body);
    let signed = crate::protocol::response::ResponseSigner::new(fixed_key().public())
        .sign(fixed_key(), br#"{"op":"assess","rid":"r"}"#)
        .expect("sign");

    let keys = table_keys();
    let log = br#"{"rid":"r","at":1,"user":"00","decision":"allow","score":0.1,"reasons":[],"model":"m","features":"AACAPwAAAEA","liveness":null,"device_id":null}"#;
    let sealed = record::seal(
        keys.cipher(Table::RiskLogs),
        keys.key_id(),
        Table::RiskLogs,
        b"key",
        zeroize::Zeroizing::new(log.to_vec()),
    )
    .expect("seal a record");

    let platform = SimPlatform::new(
        IdentityKey::from_hex(&"11".repeat(32)).expect("a valid key"),
        [7; 32],
        false,
    );
    let identity = IdentityKey::generate().expect("key");
    let evidence = Attester::Sim(Box::new(platform))
        .evidence(&[1; 32], identity.public(), 1_800_000_000)
        .expect("evidence");

    let tdx_quote = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/tdx/tdx_quote"
    ))
    .expect("the sample TDX quote");
    vec![
        ("tdx_quote", tdx_quote),
        ("envelope", body.clone()),
        ("decrypt", body),
        ("decrypt", full_body),
        ("decrypt", wrapped_key),
        ("authorization", authorization),
        ("envelope", probe.to_vec()),
        ("envelope", br#"{"user_id":"bob"}"#.to_vec()),
        ("envelope", serde_json::to_vec(&signed).expect("json")),
        ("record", sealed),
        ("record", log.to_vec()),
        ("evidence", serde_json::to_vec(&evidence).expect("json")),
        ("config", DEFAULT_CONFIG_TOML.as_bytes().to_vec()),
        (
            "config",
            include_bytes!("../config/attestation-policy.toml").to_vec(),
        ),
        (
            "config",
            format!(
                "[[client]]\nid = \"a\"\npermissions = [\"assess\"]\npublic_key = \"\"\"\n{}\"\"\"\n",
                client_key().public().to_pem()
            )
            .into_bytes(),
        ),
    ]
}

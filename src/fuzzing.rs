//! Entry points for the fuzzers (`fuzz/`, `make fuzz`) and their regression test
//! (`tests/fuzz_regressions.rs`): each takes arbitrary bytes and must return without
//! panicking, whatever they hold. They drive the parsers that face untrusted input.

use std::sync::OnceLock;

use crate::app::config::{Config, DEFAULT_CONFIG_TOML};
use crate::attest::verify::{Policy, SimPolicy};
use crate::attest::{Evidence, sim::SimReport, snp};
use crate::protocol::payload::{EraseRequest, Probe};
use crate::protocol::request::RequestEnvelope;
use crate::protocol::response::SignedResponse;
use crate::store::RiskLogEntry;
use crate::store::keys::TableKeys;
use crate::store::{MasterKey, Table, record};

/// A request body: the envelope parser, then (as if it had decrypted) the payload parsers,
/// then a signed response as a client would read it.
pub fn envelope(data: &[u8]) {
    let _ = RequestEnvelope::parse(data);
    let _ = Probe::parse(data, 128);
    let _ = Probe::parse(data, 2);
    let _ = EraseRequest::parse(data);
    if let Ok(signed) = serde_json::from_slice::<SignedResponse>(data) {
        let _ = crate::protocol::response::verify(fixed_key().public(), &signed);
    }
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
    let _ = snp::verify(data, Some(data), None, &snp::Tcb::default());
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
            allow_debug: true,
            max_age_secs: i64::MAX,
            sim: Some(SimPolicy { platform_key: pem }),
            snp: None,
            csv: None,
        }
    })
}

/// Valid inputs for each target, to start the fuzzers from (`make fuzz` writes them to
/// `fuzz/corpus/<target>/`) and to mutate in the regression test.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::attest::Attester;
    use crate::attest::sim::SimPlatform;
    use crate::crypto::sm2::{DecryptionKey, IdentityKey};
    use crate::protocol::request::{ProtectedHeader, seal};

    let recipient = DecryptionKey::generate().expect("key");
    let header = ProtectedHeader::new(&recipient.public().kid(), 1_800_000_000).expect("header");
    let probe = br#"{"user_id":"alice","features":[0.1,0.2],"liveness":0.9,"device_id":"d"}"#;
    let body = seal(recipient.public(), &header, probe).expect("seal");
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

    vec![
        ("envelope", body),
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
            b"[[client]]\nid = \"a\"\npermissions = [\"assess\"]\npublic_key = \"a.pem\"\n"
                .to_vec(),
        ),
    ]
}

//! Attestation over loopback against the real binary: a client attests the service before
//! sending a face, and a default (production) policy refuses simulated evidence.

mod support;

use std::path::Path;

use support::{MASTER_KEY, TestServer};
use tee_risk::client::{Client, FeatureRequest};
use tee_risk::internals::app::server::SIM_PLATFORM_PEM;
use tee_risk::internals::attest::Policy;

fn dev_policy(dir: &Path, keys: &Path) -> Policy {
    let path = dir.join("policy.toml");
    std::fs::write(
        &path,
        format!(
            "allowed_tee = [\"sim\"]\nallow_any_measurement = true\nmax_age_secs = 300\n\
             [sim]\nplatform_key = {:?}\n",
            keys.join(SIM_PLATFORM_PEM)
        ),
    )
    .unwrap();
    Policy::load(&path).unwrap()
}

#[test]
fn a_client_attests_then_sends_and_the_default_policy_refuses_sim() {
    let dir = tempfile::tempdir().unwrap();
    let (data, keys) = (dir.path().join("data"), dir.path().join("keys"));
    let server = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .start();

    let (client, verified) = Client::attest(&server.url, &dev_policy(dir.path(), &keys)).unwrap();
    let client = client.with_credential(server.credential.clone());
    assert_eq!(verified.tee.as_str(), "sim");
    assert!(!verified.debug, "production mode reports no debug flag");
    assert_eq!(verified.measurement.len(), 64);
    let tofu = Client::fetch_keys(&server.url).unwrap();
    assert_eq!(verified.identity, tofu.keys().identity);
    let answer = client
        .enroll(&FeatureRequest {
            user_id: "attested-user".into(),
            features: (0..128).map(|i| (i % 5) as f32 - 2.0).collect(),
            liveness: None,
            device_id: None,
            face_model: None,
        })
        .unwrap();
    assert_eq!(answer.outcome, "enrolled");

    let shipped =
        Policy::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/attestation-policy.toml"))
            .unwrap();
    let refused = Client::attest(&server.url, &shipped)
        .err()
        .unwrap()
        .to_string();
    assert!(refused.contains("`tee_kind`"), "{refused}");

    for query in ["", "?nonce=", "?nonce=AAAA", "?nonce=not*base64"] {
        let raw = ureq::get(format!("{}/v1/attestation{query}", server.url))
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        assert!(raw.contains("bad_nonce"), "{query}: {raw}");
    }

    // The keys folder holds exactly the public keys keys/README.md says it does.
    let mut written: Vec<String> = std::fs::read_dir(&keys)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(written, ["identity.pub.pem", SIM_PLATFORM_PEM]);
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("keys/README.md"))
            .unwrap();
    let named: Vec<&str> = readme
        .split('`')
        .filter(|word| word.ends_with(".pem"))
        .collect();
    for file in &named {
        assert!(
            written.iter().any(|w| w == file),
            "keys/README.md names {file}"
        );
    }
    server.stop_cleanly();
}

/// A TDX evidence document made from a real quote (Intel-signed, `tests/vectors/tdx/`) with
/// its collateral inline, checked by `tee-risk client verify-evidence` as of a time inside the
/// collateral's validity: it passes a policy that allows TDX and its MRTD, and is refused,
/// with the check named, by one that does not allow TDX, one with another MRTD, and at
/// today's date (the collateral has expired). The full verification with a nonce of ours
/// refuses it at `report_data`: the quote binds someone else's data.
#[test]
fn a_real_tdx_quote_passes_the_platform_checks_and_cannot_bind_our_nonce() {
    use tee_risk::internals::crypto::sm2::IdentityKey;
    use tee_risk::protocol::{PublicJwk, b64_encode};
    const MRTD: &str = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7";
    // QE identity issued 2025-06-19T10:32:27Z; an hour later.
    const AT: i64 = 1_750_329_147 + 3_600;
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/tdx");
    let quote = std::fs::read(vectors.join("tdx_quote")).unwrap();
    let collateral = std::fs::read(vectors.join("tdx_quote_collateral.json")).unwrap();
    let nonce = [9u8; 32];
    let identity = IdentityKey::generate().unwrap();
    let evidence = tee_risk::internals::attest::Evidence {
        v: tee_risk::internals::attest::EVIDENCE_VERSION,
        tee: "tdx".into(),
        nonce: b64_encode(&nonce),
        identity_key: PublicJwk::new(identity.public(), "sig"),
        report: b64_encode(&quote),
        endorsements: [("tdx_collateral".to_owned(), b64_encode(&collateral))].into(),
    };
    let dir = tempfile::tempdir().unwrap();
    let evidence_file = dir.path().join("evidence.json");
    std::fs::write(&evidence_file, serde_json::to_vec(&evidence).unwrap()).unwrap();
    let policy = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let allows = policy(
        "tdx.toml",
        &format!(
            "allowed_tee = [\"tdx\"]\nmeasurements = [\"{MRTD}\"]\nmax_age_secs = 300\n[tdx]\naccepted_tcb_status = [\"UpToDate\"]\n"
        ),
    );
    let no_tdx = policy(
        "snp-only.toml",
        &format!("allowed_tee = [\"snp\"]\nmeasurements = [\"{MRTD}\"]\nmax_age_secs = 300\n"),
    );
    let other_mrtd = policy(
        "other.toml",
        &format!(
            "allowed_tee = [\"tdx\"]\nmeasurements = [\"{}\"]\nmax_age_secs = 300\n",
            "00".repeat(48)
        ),
    );
    let run = |policy: &Path, at: Option<i64>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tee-risk"));
        command
            .args(["client", "verify-evidence", "--evidence"])
            .arg(&evidence_file)
            .arg("--policy")
            .arg(policy);
        if let Some(at) = at {
            command.args(["--at", &at.to_string()]);
        }
        command.output().unwrap()
    };
    let passed = run(&allows, Some(AT));
    assert!(
        passed.status.success(),
        "{}",
        String::from_utf8_lossy(&passed.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&passed.stdout).unwrap();
    assert_eq!(printed["tee"], "tdx");
    assert_eq!(printed["measurement"], MRTD);
    for (policy, at, check) in [
        (&no_tdx, Some(AT), "tee_kind"),
        (&other_mrtd, Some(AT), "measurement"),
        (&allows, None, "freshness"),
    ] {
        let refused = run(policy, at);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(3), "{stderr}");
        assert!(stderr.contains(&format!("`{check}`")), "{check}: {stderr}");
    }
    let full = Policy::load(&allows).unwrap().verify(&evidence, &nonce, AT);
    assert_eq!(full.unwrap_err().check, "report_data");
}

/// A single node makes a new identity at every start (its key lives only in TEE memory). A
/// client made by attestation keeps working across the restart: the service answers
/// `unknown_kid`, the client attests again under the same policy (the new identity's
/// evidence passes) and sends once more. A client pinned to the old identity is told, with a
/// typed error, that the identity changed and how to re-pin; nothing is sent under the
/// unknown key.
#[test]
fn an_attested_client_survives_a_restart_and_a_pinned_one_is_told_the_identity_changed() {
    let dir = tempfile::tempdir().unwrap();
    let (data, keys) = (dir.path().join("data"), dir.path().join("keys"));
    let server = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .start();
    let policy = dev_policy(dir.path(), &keys);
    let (attested, before) = Client::attest(&server.url, &policy).unwrap();
    let attested = attested.with_credential(server.credential.clone());
    let pinned = Client::fetch_keys_pinned(&server.url, &before.identity)
        .unwrap()
        .with_credential(server.credential.clone());
    let face: Vec<f32> = (0..128).map(|i| (i % 7) as f32 - 3.0).collect();
    let request = |user: &str| FeatureRequest {
        user_id: user.into(),
        features: face.clone(),
        liveness: None,
        device_id: Some("phone".into()),
        face_model: None,
    };
    assert_eq!(attested.enroll(&request("u")).unwrap().outcome, "enrolled");

    // The same address, the same data: a restart.
    let listen = server.url.trim_start_matches("http://").to_owned();
    server.stop_cleanly();
    let server = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .args(&["--listen", &listen])
        .start();
    assert_eq!(server.url, format!("http://{listen}"));

    let answer = attested.assess(&request("u")).unwrap();
    assert_eq!(answer.stamp.op, "assess", "{answer}");
    let now = attested.keys().identity;
    assert_ne!(now, before.identity, "a new identity after the restart");
    let refused = pinned.assess(&request("u")).unwrap_err();
    match &refused {
        tee_risk::client::ClientError::IdentityChanged { pinned, presented } => {
            assert_eq!((pinned, presented), (&before.identity.kid(), &now.kid()));
        }
        other => panic!("expected IdentityChanged, got {other}"),
    }
    assert!(refused.to_string().contains("pin the new key"), "{refused}");
    server.stop_cleanly();
}

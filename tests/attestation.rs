//! Attestation over loopback against the real binary: a client attests the service before
//! sending a face, and a default (production) policy refuses simulated evidence.

mod support;

use std::path::Path;

use support::{MASTER_KEY, TestServer};
use tee_risk::app::server::SIM_PLATFORM_PEM;
use tee_risk::attest::Policy;
use tee_risk::client::{Client, FeatureRequest};

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
    let server = TestServer::start(&data, &keys, Some(MASTER_KEY), &[]);

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
        })
        .unwrap();
    assert_eq!(answer["outcome"], "enrolled");

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
    assert!(server.stop().success());
}

use super::*;

fn manifest(commit: &str) -> ReleaseManifest {
    ReleaseManifest {
        format: MANIFEST_FORMAT.to_owned(),
        version: "0.1.0".to_owned(),
        commit: commit.to_owned(),
        source_date_epoch: 1_765_000_000,
        toolchain: "rustc 1.95.0".to_owned(),
        build: "cargo build --profile tee".to_owned(),
        cargo_lock_sm3: "11".repeat(32),
        binary_sm3: "22".repeat(32),
        measurements: vec![ReleaseMeasurement {
            tee: TeeKind::Sim,
            measurement: "22".repeat(32),
            how: "SM3 of the binary".to_owned(),
        }],
        incomplete: vec![],
    }
}

fn signed(key: &IdentityKey) -> SignedManifest {
    SignedManifest::sign(&manifest(&"a".repeat(40)), key).unwrap()
}

/// The JSON of `signed` with `edit` applied, parsed again.
fn edited(signed: &SignedManifest, edit: impl FnOnce(&mut serde_json::Value)) -> SignedManifest {
    let mut value = serde_json::to_value(signed).unwrap();
    edit(&mut value);
    SignedManifest::parse(&serde_json::to_vec(&value).unwrap()).unwrap()
}

#[test]
fn a_signed_manifest_opens_with_its_key_and_lists_its_measurements() {
    let key = IdentityKey::generate().unwrap();
    let text = serde_json::to_vec_pretty(&signed(&key)).unwrap();
    let release = SignedManifest::parse(&text)
        .unwrap()
        .open(key.public())
        .unwrap();
    assert_eq!(release.manifest, manifest(&"a".repeat(40)));
    assert!(release.lists(TeeKind::Sim, &"22".repeat(32)));
    assert!(!release.lists(TeeKind::Snp, &"22".repeat(32)));
    assert!(!release.lists(TeeKind::Sim, &"23".repeat(32)));
    assert!(is_hex64(&release.digest));
}

#[test]
fn another_key_a_forged_key_id_and_tampering_are_each_named() {
    let key = IdentityKey::generate().unwrap();
    let other = IdentityKey::generate().unwrap();
    let check = |signed: &SignedManifest| signed.open(key.public()).unwrap_err().check;

    assert_eq!(check(&signed(&other)), ReleaseCheck::Key);
    // Another key's signature under the release key's id.
    let forged = edited(&signed(&other), |v| v["key_id"] = key.public().kid().into());
    assert_eq!(check(&forged), ReleaseCheck::Signature);
    // A measurement added to the signed payload.
    let good = signed(&key);
    let mut payload: serde_json::Value =
        serde_json::from_slice(&b64_decode(&good.payload).unwrap()).unwrap();
    payload["measurements"][0]["measurement"] = "33".repeat(32).into();
    let tampered = edited(&good, |v| {
        v["payload"] = b64_encode(&serde_json::to_vec(&payload).unwrap()).into();
        v["manifest"] = payload.clone();
    });
    assert_eq!(check(&tampered), ReleaseCheck::Signature);
    // The readable copy alone changed.
    let copy = edited(&good, |v| v["manifest"]["commit"] = "b".repeat(40).into());
    assert_eq!(check(&copy), ReleaseCheck::Copy);
    // Without the readable copy the payload alone decides.
    let bare = edited(&good, |v| {
        v.as_object_mut().unwrap().remove("manifest");
    });
    assert!(bare.open(key.public()).is_ok());
    assert_eq!(
        SignedManifest::parse(br#"{"format":"x","key_id":"","payload":"","signature":""}"#)
            .unwrap_err()
            .check,
        ReleaseCheck::Format
    );
}

#[test]
fn the_log_chains_lists_and_refuses_rewrites() {
    let key = IdentityKey::generate().unwrap();
    let first = signed(&key).open(key.public()).unwrap();
    let second = SignedManifest::sign(&manifest(&"b".repeat(40)), &key)
        .unwrap()
        .open(key.public())
        .unwrap();
    let mut log = ReleaseLog::default();
    let mut text = String::new();
    for release in [&first, &second] {
        text.push_str(&log.append(release).unwrap());
        text.push('\n');
    }
    assert_eq!(log.append(&first).unwrap_err().check, ReleaseCheck::Log);
    let parsed = ReleaseLog::parse(&text).unwrap();
    assert_eq!(parsed, log);
    assert_eq!(parsed.inclusion(&second).unwrap().seq, 2);
    let head_after_first = parsed.entries[0].hash.clone();
    parsed.extends(&head_after_first).unwrap();

    // A third manifest is not listed.
    let third = SignedManifest::sign(&manifest(&"c".repeat(40)), &key)
        .unwrap()
        .open(key.public())
        .unwrap();
    assert_eq!(
        parsed.inclusion(&third).unwrap_err().check,
        ReleaseCheck::Log
    );
    // A line edited, a line removed, lines swapped: the chain breaks.
    let lines: Vec<&str> = text.lines().collect();
    let edited = text.replacen(&first.digest, &third.digest, 1);
    let removed = format!("{}\n", lines[1]);
    let swapped = format!("{}\n{}\n", lines[1], lines[0]);
    for broken in [edited, removed, swapped] {
        assert_eq!(
            ReleaseLog::parse(&broken).unwrap_err().check,
            ReleaseCheck::Log
        );
    }
    // A log rebuilt without the first release does not extend the head seen after it.
    let mut rewritten = ReleaseLog::default();
    rewritten.append(&second).unwrap();
    assert_eq!(
        rewritten.extends(&head_after_first).unwrap_err().check,
        ReleaseCheck::Log
    );
}

/// A policy file's `[release]`: the manifests' measurements pass and name their release, a
/// measurement none lists is refused, a manifest the named log lacks stops the load, and
/// `allow_any_measurement` beside `[release]` is a contradiction.
#[test]
fn a_policy_file_naming_releases_accepts_what_they_list() {
    use crate::attest::sim::SimPlatform;
    use crate::attest::{Check, EVIDENCE_VERSION, Evidence, Policy, PolicyError, report_data};
    use crate::protocol::PublicJwk;

    const NOW: i64 = 1_795_000_000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let platform = SimPlatform::new(IdentityKey::generate().unwrap(), [7; 32], false);
    std::fs::write(d.join("sim.pem"), platform.public().to_pem()).unwrap();
    let key = IdentityKey::generate().unwrap();
    std::fs::write(d.join("release.pub.pem"), key.public().to_pem()).unwrap();
    let write_manifest = |name: &str, measurement: [u8; 32]| {
        let mut m = manifest(&hex::encode(measurement)[..40]);
        m.measurements[0].measurement = hex::encode(measurement);
        let signed = SignedManifest::sign(&m, &key).unwrap();
        std::fs::write(d.join(name), serde_json::to_vec(&signed).unwrap()).unwrap();
        signed.open(key.public()).unwrap()
    };
    let ours = write_manifest("ours.json", [7; 32]);
    write_manifest("other.json", [8; 32]);
    let mut log = ReleaseLog::default();
    std::fs::write(d.join("releases.log"), log.append(&ours).unwrap() + "\n").unwrap();
    let policy = |extra: &str, manifest: &str| {
        let path = d.join("policy.toml");
        std::fs::write(
            &path,
            format!(
                "allowed_tee = [\"sim\"]\nmax_age_secs = 300\n{extra}\n[sim]\n\
                 platform_key = \"sim.pem\"\n[release]\nkey = \"release.pub.pem\"\n\
                 manifests = [\"{manifest}\"]\nlog = \"releases.log\"\n"
            ),
        )
        .unwrap();
        Policy::load(&path)
    };
    let identity = IdentityKey::generate().unwrap();
    let (report, signature) = platform
        .report(report_data(&[1; 32], identity.public()), NOW)
        .unwrap();
    let evidence = Evidence {
        v: EVIDENCE_VERSION,
        tee: "sim".into(),
        nonce: b64_encode(&[1; 32]),
        identity_key: PublicJwk::new(identity.public(), "sig"),
        report: b64_encode(&report),
        endorsements: [("sim_signature".to_owned(), b64_encode(&signature))].into(),
    };

    let verified = policy("", "ours.json")
        .unwrap()
        .verify(&evidence, &[1; 32], NOW)
        .unwrap();
    assert_eq!(verified.release.unwrap().digest, ours.digest);

    match policy("", "other.json") {
        Err(PolicyError::Release { source, .. }) => assert_eq!(source.check, ReleaseCheck::Log),
        other => panic!("{other:?}"),
    }
    // Without the log, the other manifest loads, and lists another measurement.
    let path = d.join("policy.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("log = \"releases.log\"\n", "");
    std::fs::write(&path, text).unwrap();
    let refused = Policy::load(&path)
        .unwrap()
        .verify(&evidence, &[1; 32], NOW)
        .unwrap_err();
    assert_eq!(refused.check, Check::Measurement);
    assert!(
        matches!(
            policy("allow_any_measurement = true", "ours.json"),
            Err(PolicyError::Invalid { .. })
        ),
        "allow_any_measurement beside [release]"
    );
}

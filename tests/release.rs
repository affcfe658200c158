//! Release manifests over the command line, against the real binary on loopback: a manifest
//! of the running binary signed with the test release key lets `client attest --manifest`
//! pass and name the commit; another key's manifest, a measurement the manifest does not
//! list and a tampered manifest are each refused with the failed check named; the release
//! log lists manifests and refuses rewrites; OpenSSL verifies the release signature.
//! (The reproducible release build itself is `make reproduce`, which CI runs.)

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{MASTER_KEY, TestServer, openssl, openssl_sm2_keypair};
use tee_risk::internals::app::server::SIM_PLATFORM_PEM;
use tee_risk::protocol::{b64_decode, b64_encode};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn tee_risk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tee-risk"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs the command; asserts its exit code; returns stdout and stderr.
fn expect(code: i32, args: &[&str]) -> (String, String) {
    let output = tee_risk(args);
    let (out, err) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert_eq!(output.status.code(), Some(code), "{args:?}\n{out}\n{err}");
    (out, err)
}

/// `release manifest` for `binary`, signed with `key`, into `out`.
fn sign(dir: &Path, binary: &Path, key: &Path, out: &Path) {
    let toolchain = dir.join("toolchain.txt");
    std::fs::write(&toolchain, "rustc 1.95.0 (test)\n").unwrap();
    expect(
        0,
        &[
            "release",
            "manifest",
            "--binary",
            binary.to_str().unwrap(),
            "--cargo-lock",
            repo("Cargo.lock").to_str().unwrap(),
            "--commit",
            COMMIT,
            "--source-date-epoch",
            "1765000000",
            "--toolchain",
            toolchain.to_str().unwrap(),
            "--build",
            "the test's",
            "--key",
            key.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
}

/// `path` with its JSON changed by `edit`, written to `out`.
fn edit_json(path: &Path, out: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(out, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
}

#[test]
fn client_attest_accepts_only_measurements_a_signed_manifest_lists() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (data, keys) = (d.join("data"), d.join("keys"));
    let server = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .start();
    let policy = d.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "allowed_tee = [\"sim\"]\nallow_any_measurement = true\nmax_age_secs = 300\n\
             [sim]\nplatform_key = {:?}\n",
            keys.join(SIM_PLATFORM_PEM)
        ),
    )
    .unwrap();
    let test_key = repo("release/test-key.pem");
    let test_pub = repo("release/test-key.pub.pem");
    let release = d.join("release.json");
    sign(
        d,
        Path::new(env!("CARGO_BIN_EXE_tee-risk")),
        &test_key,
        &release,
    );
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let attest = |manifest: &Path, key: &Path| {
        tee_risk(&[
            "client",
            "attest",
            "--url",
            &server.url,
            "--policy",
            &path(&policy),
            "--manifest",
            &path(manifest),
            "--release-key",
            &path(key),
        ])
    };

    // The release that runs: accepted, and the commit named.
    let output = attest(&release, &test_pub);
    assert!(output.status.success(), "{output:?}");
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["release"]["commit"], COMMIT);
    let signed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&release).unwrap()).unwrap();
    assert_eq!(printed["measurement"], signed["manifest"]["binary_sm3"]);

    let refused = |manifest: &Path, key: &Path, check: &str| {
        let output = attest(manifest, key);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(3), "{stderr}");
        assert!(stderr.contains(&format!("`{check}`")), "{check}: {stderr}");
    };
    // Signed by another key (OpenSSL's), checked with the test release key.
    openssl_sm2_keypair(d, "other.pem", "other.pub.pem");
    let other = d.join("other-release.json");
    sign(
        d,
        Path::new(env!("CARGO_BIN_EXE_tee-risk")),
        &d.join("other.pem"),
        &other,
    );
    refused(&other, &test_pub, "release_key");
    // A manifest of another binary: the running measurement is not in it.
    let elsewhere = d.join("elsewhere.json");
    sign(d, &repo("Cargo.toml"), &test_key, &elsewhere);
    refused(&elsewhere, &test_pub, "measurement");
    // Tampered: the running measurement written into the signed payload; or into the
    // readable copy only.
    let running = printed["measurement"].as_str().unwrap().to_owned();
    let tampered = d.join("tampered.json");
    edit_json(&elsewhere, &tampered, |v| {
        let mut payload: serde_json::Value =
            serde_json::from_slice(&b64_decode(v["payload"].as_str().unwrap()).unwrap()).unwrap();
        payload["measurements"][0]["measurement"] = running.clone().into();
        v["payload"] = b64_encode(&serde_json::to_vec(&payload).unwrap()).into();
        v["manifest"] = payload;
    });
    refused(&tampered, &test_pub, "release_signature");
    edit_json(&elsewhere, &tampered, |v| {
        v["manifest"]["measurements"][0]["measurement"] = running.clone().into()
    });
    refused(&tampered, &test_pub, "release_copy");

    release_log(d, &release, &elsewhere, &test_pub);
    openssl_verifies(d, &release);
}

/// The log lists what was appended, in order, and refuses a manifest it lacks and a head
/// it no longer extends.
fn release_log(d: &Path, first: &Path, second: &Path, key: &Path) {
    let log = d.join("releases.log");
    let append = |manifest: &Path| {
        tee_risk(&[
            "release",
            "append",
            "--manifest",
            manifest.to_str().unwrap(),
            "--release-key",
            key.to_str().unwrap(),
            "--log",
            log.to_str().unwrap(),
        ])
    };
    let appended = |manifest: &Path| {
        let output = append(manifest);
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    let verify = |manifest: &Path, log: &Path, head: Option<&str>| {
        let mut args = vec![
            "client",
            "verify-release",
            "--manifest",
            manifest.to_str().unwrap(),
            "--release-key",
            key.to_str().unwrap(),
            "--log",
            log.to_str().unwrap(),
        ];
        if let Some(head) = head {
            args.extend(["--head", head]);
        }
        tee_risk(&args)
    };
    let head_one = appended(first);
    let only_first = d.join("only-first.log");
    std::fs::copy(&log, &only_first).unwrap();
    let head_two = appended(second);
    assert_ne!(head_one, head_two);

    let output = verify(second, &log, Some(&head_one));
    assert!(output.status.success(), "{output:?}");
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["log"]["seq"], 2);
    assert_eq!(printed["log"]["head"], head_two.as_str());
    assert_eq!(printed["commit"], COMMIT);

    let refused = |output: Output, check: &str| {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(3), "{stderr}");
        assert!(stderr.contains(&format!("`{check}`")), "{check}: {stderr}");
    };
    // The second manifest is not in the shorter log.
    refused(verify(second, &only_first, None), "release_log");
    // A log rebuilt without the first entry does not extend the head seen after it.
    let rewritten = d.join("rewritten.log");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&rewritten, text.lines().nth(1).unwrap()).unwrap();
    refused(verify(second, &rewritten, None), "release_log");
    // Appending the same manifest twice is refused.
    refused(append(first), "release_log");
}

/// An auditor's check with OpenSSL: the signature is SM2 (default ID) over the label and the
/// payload, with the public key in release/test-key.pub.pem.
fn openssl_verifies(d: &Path, release: &Path) {
    let signed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(release).unwrap()).unwrap();
    let payload = b64_decode(signed["payload"].as_str().unwrap()).unwrap();
    let mut message = b"tee-risk/release/v1\0".to_vec();
    message.extend_from_slice(&payload);
    std::fs::write(d.join("msg"), &message).unwrap();
    std::fs::write(
        d.join("sig"),
        b64_decode(signed["signature"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let key = repo("release/test-key.pub.pem");
    let out = openssl(
        &[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            key.to_str().unwrap(),
            "-rawin",
            "-digest",
            "sm3",
            "-pkeyopt",
            "distid:1234567812345678",
            "-in",
            "msg",
            "-sigfile",
            "sig",
        ],
        d,
    );
    assert!(String::from_utf8_lossy(&out).contains("Signature Verified Successfully"));
}

/// The repository's own release log: its chain holds, and every manifest in
/// `release/manifests/` is signed by the test key and listed in it.
#[test]
fn the_committed_release_log_lists_every_committed_manifest() {
    let key = tee_risk::PublicKey::from_pem(
        &std::fs::read_to_string(repo("release/test-key.pub.pem")).unwrap(),
    )
    .unwrap();
    let log = tee_risk::ReleaseLog::load(&repo("release/releases.log")).unwrap();
    let mut listed = 0;
    for entry in std::fs::read_dir(repo("release/manifests")).unwrap() {
        let path = entry.unwrap().path();
        let release = tee_risk::SignedManifest::load(&path)
            .and_then(|signed| signed.open(&key))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            name,
            format!(
                "{}-{}.json",
                release.manifest.version,
                &release.manifest.commit[..12]
            )
        );
        log.inclusion(&release).unwrap();
        listed += 1;
    }
    assert_eq!(listed, log.entries.len(), "a logged manifest is missing");
    assert!(listed > 0);
}

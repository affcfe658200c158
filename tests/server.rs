//! End to end against the real server on a loopback port: enrol → assess with real
//! embeddings, signed answers, and every kind of bad input refused with a typed 4xx and no
//! change to the stored data.

mod support;

use std::sync::Arc;

use serde_json::{Value, json};
use support::{
    MASTER_KEY, TestServer, codes, error_code, faces, open_vault, request, unlimited_config,
};
use tee_risk::client::{Client, FeatureRequest, ServerKeys};
use tee_risk::internals::app::server::IDENTITY_PEM;
use tee_risk::internals::lab::new_capture;
use tee_risk::internals::obs::unix_now;
use tee_risk::internals::service::access::DevClient;
use tee_risk::internals::store::TableCounts;
use tee_risk::protocol::client_auth::ClientCredential;
use tee_risk::protocol::reply::AssessReply;
use tee_risk::protocol::request::{ProtectedHeader, seal};
use tee_risk::protocol::{b64_decode, b64_encode};

#[test]
fn enrol_assess_signed_and_pinned() {
    let faces = faces();
    let dir = tempfile::tempdir().unwrap();
    let (data, keys) = (dir.path().join("data"), dir.path().join("keys"));
    let server = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .start();

    // GET /v1/keys: the identity key (also in keys/identity.pub.pem) and an encryption key
    // it certified; a client that pins the PEM gets the same keys.
    let client = server.client();
    let identity_pem = std::fs::read_to_string(keys.join(IDENTITY_PEM)).unwrap();
    let pinned_identity = ServerKeys::identity_from_pem(&identity_pem).unwrap();
    let pinned_client = Client::fetch_keys_pinned(&server.url, &pinned_identity)
        .unwrap()
        .with_credential(server.credential.clone());
    let pinned = pinned_client.keys().clone();
    assert_eq!(pinned.identity, client.keys().identity);
    assert_eq!(pinned.encryption, client.keys().encryption);
    assert_ne!(
        pinned.identity, pinned.encryption,
        "signing and encryption keys are separate"
    );
    let document: tee_risk::protocol::KeysDocument = ureq::get(format!("{}/v1/keys", server.url))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    let enc = document.keys.iter().find(|k| k.key_use == "enc").unwrap();
    assert!(enc.nbf.unwrap() < enc.exp.unwrap() && enc.cert.is_some());
    // Another pinned identity refuses the service's keys.
    let stranger = tee_risk::internals::crypto::sm2::IdentityKey::generate().unwrap();
    let refused = Client::fetch_keys_pinned(&server.url, stranger.public())
        .err()
        .unwrap();
    assert!(
        matches!(
            refused,
            tee_risk::client::ClientError::IdentityChanged { .. }
        ),
        "{refused}"
    );

    let enrolled = pinned_client
        .enroll(&request("alice", &faces.enrol))
        .unwrap();
    assert_eq!(
        (
            enrolled.stamp.op.as_str(),
            enrolled.outcome.as_str(),
            enrolled.templates
        ),
        ("enroll", "enrolled", 1)
    );

    let genuine = client.assess(&request("alice", &faces.genuine)).unwrap();
    assert_eq!(genuine.decision, "allow", "{genuine}");
    assert_eq!(genuine.reasons, [] as [&str; 0]);
    let policy = tee_risk::internals::app::config::Config::builtin()
        .risk_policy()
        .unwrap();
    assert_eq!(genuine.model, policy.model_version());
    assert_eq!(enrolled.model, policy.model_version());
    assert!(genuine.score <= policy.allow_max_risk());
    let iat = genuine.stamp.iat;
    assert!((iat - unix_now()).abs() < 60);

    let impostor = client.assess(&request("alice", &faces.impostor)).unwrap();
    assert_eq!(impostor.decision, "deny");
    assert_eq!(impostor.reasons[0], "no_match", "{impostor}");

    let unknown = client.assess(&request("nobody", &faces.genuine)).unwrap();
    assert_eq!((unknown.decision.as_str(), unknown.score), ("deny", 1.0));
    assert_eq!(unknown.reasons, ["no_enrolment"]);

    let low_liveness = client
        .assess(&FeatureRequest {
            user_id: "alice".into(),
            features: new_capture(&faces.genuine, 1),
            liveness: Some(0.1),
            device_id: None,
            face_model: None,
        })
        .unwrap();
    // Liveness 0.1 after an earlier denial in the window: refused, both named.
    assert_ne!(low_liveness.decision, "allow", "{low_liveness}");
    assert_eq!(low_liveness.reasons[0], "low_liveness", "{low_liveness}");

    // The payload carries no feature values.
    for payload in [
        enrolled.to_string(),
        genuine.to_string(),
        impostor.to_string(),
    ] {
        assert!(!payload.contains("\"features\""));
        assert!(!payload.contains(&format!("{}", faces.genuine[0])));
    }

    // A response signed by another key is refused by the client.
    let (header, body) = client
        .seal(&request("alice", &new_capture(&faces.genuine, 2)))
        .unwrap();
    let raw = client.post_raw("/v1/assess", &body).unwrap();
    let impostor_keys = ServerKeys {
        identity: tee_risk::internals::crypto::sm2::IdentityKey::generate()
            .unwrap()
            .public()
            .clone(),
        ..client.keys().clone()
    };
    let wrong = Client::with_keys(&server.url, impostor_keys);
    assert!(
        wrong
            .verify_answer::<AssessReply>(&header, &body, &raw)
            .is_err()
    );
    // …and an answer to another body is refused even with the right key.
    let (_, other_body) = client.seal(&request("alice", &faces.genuine)).unwrap();
    assert!(
        client
            .verify_answer::<AssessReply>(&header, &other_body, &raw)
            .is_err()
    );
    client
        .verify_answer::<AssessReply>(&header, &body, &raw)
        .unwrap();

    server.stop_cleanly();

    // Reopen the database with the same master key and read every record back.
    let vault = open_vault(&data, MASTER_KEY).unwrap();
    let logs = vault.risk_logs().unwrap();
    let decisions: Vec<&str> = logs.iter().map(|l| l.decision.as_str()).collect();
    // genuine, impostor, unknown user, low liveness (after a denial: refused), and the last
    // answer (its decision depends on the velocity window).
    assert_eq!(decisions[..3], ["allow", "deny", "deny"]);
    assert_ne!(decisions[3], "allow");
    let allowed = decisions.iter().filter(|d| **d == "allow").count();
    assert_eq!(
        vault.verify_all().unwrap(),
        TableCounts {
            user_data: 1,
            feature_history: allowed,
            risk_logs: 5
        }
    );
    assert_eq!(
        logs[0].features.len(),
        128,
        "the risk log keeps the re-encrypted probe"
    );
    assert!(
        logs.iter()
            .all(|l| l.user.len() == 64 && !l.user.contains("alice"))
    );
}

/// Every bad request gets its typed 4xx, and the stored data is exactly what the good
/// requests wrote.
#[test]
fn bad_input_is_refused_with_typed_errors_and_changes_nothing() {
    let faces = faces();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::builder(&data, &dir.path().join("keys"))
        .master_key(MASTER_KEY)
        .start();
    let client = server.client();
    client.enroll(&request("alice", &faces.enrol)).unwrap();

    let (header, body) = client.seal(&request("alice", &faces.genuine)).unwrap();
    let envelope: Value = serde_json::from_slice(&body).unwrap();
    let with = |field: &str, value: Value| {
        let mut e = envelope.clone();
        e[field] = value;
        serde_json::to_vec(&e).unwrap()
    };
    let flip = |field: &str| {
        let mut bytes = b64_decode(envelope[field].as_str().unwrap()).unwrap();
        let i = bytes.len() / 2;
        bytes[i] ^= 0x40;
        with(field, json!(b64_encode(&bytes)))
    };
    let enc = client.keys().encryption.clone();
    let sealed_with =
        |header: &ProtectedHeader, plaintext: &[u8]| seal(&enc, header, plaintext).unwrap();
    let fresh = || ProtectedHeader::new(&enc.kid(), unix_now()).unwrap();
    let payload =
        |features: &str| format!(r#"{{"user_id":"alice","features":{features}}}"#).into_bytes();
    let ones = |n: usize| format!("[{}]", vec!["0.1"; n].join(","));

    let mut stale = fresh();
    stale.iat -= 1000;
    let mut future = fresh();
    future.iat += 1000;
    let mut wrong_kid = fresh();
    wrong_kid.kid = "00".repeat(16);
    let mut huge_number = ones(127);
    huge_number.insert_str(1, "1e39,");

    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("not JSON", b"{not json".to_vec(), 400, "malformed_envelope"),
        ("empty body", Vec::new(), 400, "malformed_envelope"),
        ("JSON array", b"[]".to_vec(), 400, "malformed_envelope"),
        ("missing field", { let mut e = envelope.clone(); e.as_object_mut().unwrap().remove("tag"); serde_json::to_vec(&e).unwrap() }, 400, "malformed_envelope"),
        ("unknown field", with("extra", json!("x")), 400, "malformed_envelope"),
        ("bad base64", with("ciphertext", json!("###")), 400, "bad_base64"),
        ("padded base64", with("iv", json!(format!("{}=", envelope["iv"].as_str().unwrap()))), 400, "bad_base64"),
        ("short iv", with("iv", json!(b64_encode(&[0u8; 8]))), 400, "bad_length"),
        ("header not JSON", with("protected", json!(b64_encode(b"nope"))), 400, "bad_header"),
        ("wrong alg", with("protected", json!(b64_encode(br#"{"alg":"RSA","enc":"SM4-GCM","kid":"x","rid":"AAAAAAAAAAAAAAAAAAAAAA","iat":1}"#))), 400, "unsupported_algorithm"),
        ("tampered encrypted_key", flip("encrypted_key"), 400, "decryption_failed"),
        ("tampered ciphertext", flip("ciphertext"), 400, "decryption_failed"),
        ("tampered tag", flip("tag"), 400, "decryption_failed"),
        ("tampered iv", flip("iv"), 400, "decryption_failed"),
        ("unknown kid", sealed_with(&wrong_kid, &payload(&ones(128))), 400, "unknown_kid"),
        ("stale iat", sealed_with(&stale, &payload(&ones(128))), 400, "stale_request"),
        ("future iat", sealed_with(&future, &payload(&ones(128))), 400, "stale_request"),
        ("plaintext not JSON", sealed_with(&fresh(), b"\x00\x01"), 422, "malformed_payload"),
        ("missing user_id", sealed_with(&fresh(), br#"{"features":[1]}"#), 422, "malformed_payload"),
        ("wrong dimension", sealed_with(&fresh(), &payload(&ones(127))), 422, "wrong_dimension"),
        ("empty features", sealed_with(&fresh(), &payload("[]")), 422, "wrong_dimension"),
        ("infinite feature", sealed_with(&fresh(), &payload(&huge_number)), 422, "non_finite_feature"),
        ("zero vector", sealed_with(&fresh(), &payload(&format!("[{}]", vec!["0"; 128].join(",")))), 422, "zero_norm"),
        ("liveness out of range", sealed_with(&fresh(), &format!(r#"{{"user_id":"alice","features":{},"liveness":2}}"#, ones(128)).into_bytes()), 422, "invalid_field"),
        ("empty user id", sealed_with(&fresh(), &format!(r#"{{"user_id":"","features":{}}}"#, ones(128)).into_bytes()), 422, "invalid_field"),
        ("oversized body", vec![b' '; 70_000], 413, "body_too_large"),
    ];
    for (round, path) in ["/v1/assess", "/v1/enroll"].into_iter().enumerate() {
        for (name, bad_body, status, code) in &cases {
            let raw = client.post_raw(path, bad_body).unwrap();
            // A 422 comes after decryption, so its request id is spent: the same body again,
            // on any endpoint, is a replay (docs/PROTOCOL.md, when a request id is spent).
            let expected = if round == 1 && *status == 422 {
                (409, "replayed_request".to_owned())
            } else {
                (*status, code.to_string())
            };
            assert_eq!(error_code(&raw), expected, "{name} on {path}");
        }
    }

    // Replays: the first use succeeds, the second is refused.
    let first = client.post_raw("/v1/assess", &body).unwrap();
    client
        .verify_answer::<AssessReply>(&header, &body, &first)
        .unwrap();
    let again = client.post_raw("/v1/assess", &body).unwrap();
    assert_eq!(error_code(&again), (409, "replayed_request".into()));
    let cross = client.post_raw("/v1/enroll", &body).unwrap();
    assert_eq!(
        error_code(&cross),
        (409, "replayed_request".into()),
        "a request id is spent on every endpoint"
    );

    // Routing errors are JSON too.
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    // A 405 names what the path answers (RFC 9110 §15.5.6); the GET routes answer HEAD,
    // without a body; a closed operator endpoint is 404 whatever the method.
    for (method, path, status, expected, allow) in [
        ("GET", "/v1/nothing", 404, "not_found", None),
        ("GET", "/v1/assess", 405, "method_not_allowed", Some("POST")),
        (
            "GET",
            "/v1/users",
            405,
            "method_not_allowed",
            Some("DELETE"),
        ),
        (
            "DELETE",
            "/v1/keys",
            405,
            "method_not_allowed",
            Some("GET, HEAD"),
        ),
        (
            "POST",
            "/healthz",
            405,
            "method_not_allowed",
            Some("GET, HEAD"),
        ),
        ("GET", "/healthz", 200, "ok", None),
        ("HEAD", "/healthz", 200, "", None),
        ("HEAD", "/v1/keys", 200, "", None),
        ("GET", "/admin/db/status", 404, "not_found", None),
        ("POST", "/admin/db/status", 404, "not_found", None),
        ("GET", "/cluster/v1/join", 404, "not_found", None),
    ] {
        let url = format!("{}{path}", server.url);
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(url)
            .body(())
            .unwrap();
        let mut response = agent.run(request).unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        assert_eq!(
            response.headers().get("allow").map(|v| v.to_str().unwrap()),
            allow,
            "{method} {path}"
        );
        let body = response.body_mut().read_to_string().unwrap();
        if method == "HEAD" {
            assert!(body.is_empty(), "HEAD {path} has no body: {body}");
        } else {
            assert!(body.contains(expected), "{method} {path}: {body}");
        }
    }

    // The service still works after all that, and nothing bad was stored.
    let after = client
        .assess(&request("alice", &new_capture(&faces.genuine, 1)))
        .unwrap();
    assert_eq!(after.decision, "allow");
    let stderr = server.stderr();
    server.stop_cleanly();
    assert!(!stderr.contains("panicked"), "no panic in the server log");
    let vault = open_vault(&data, MASTER_KEY).unwrap();
    assert_eq!(
        vault.verify_all().unwrap(),
        TableCounts {
            user_data: 1,
            feature_history: 2,
            risk_logs: 2
        }
    );
}

/// Concurrent requests share fsyncs (group commit) yet each is durable before its answer:
/// after SIGKILL, which skips the final flush, every answered request is in the database.
/// `/metrics` counts them and shows no identifier.
#[test]
fn concurrent_answers_are_durable_and_counted_without_identifiers() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 8;
    let faces = faces();
    let dir = tempfile::tempdir().unwrap();
    let (data, keys) = (dir.path().join("data"), dir.path().join("keys"));
    let config = unlimited_config(dir.path());
    let server = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .args(&["--config", &config])
        .env(&[("TEE_RISK_ADMIN_TOKEN", "operator-token")])
        .try_start()
        .unwrap();
    let client = server.client();
    client
        .enroll(&request("metrics-user-7f3a", &faces.enrol))
        .unwrap();
    let rids: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (server, client, faces) = (&server, &client, &faces);
                scope.spawn(move || {
                    let client = server.client_with_keys(client.keys().clone());
                    (0..PER_THREAD)
                        .map(|i| {
                            // A new capture each time: the same probe twice is a replay.
                            let probe = new_capture(&faces.genuine, t * PER_THREAD + i);
                            let (header, body) =
                                client.seal(&request("metrics-user-7f3a", &probe)).unwrap();
                            let raw = client.post_raw("/v1/assess", &body).unwrap();
                            let answer: AssessReply =
                                client.verify_answer(&header, &body, &raw).unwrap();
                            // 64 attempts on one account within seconds: the velocity
                            // signals may refuse some; each is answered and stored anyway.
                            assert_eq!(answer.stamp.op, "assess");
                            header.rid
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let answered = THREADS * PER_THREAD;

    let metrics = ureq::get(format!("{}/metrics", server.url))
        .header("Authorization", "Bearer operator-token")
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let value = |series: &str| tee_risk::internals::obs::metrics::sample(&metrics, series).unwrap();
    assert_eq!(
        value("tee_risk_http_requests_total{route=\"assess\",status=\"200\"}"),
        answered as f64
    );
    // Every answer is counted under its decision (velocity refuses some of the burst).
    let decided: f64 = ["allow", "step_up", "deny"]
        .iter()
        .map(|d| value(&format!("tee_risk_decisions_total{{decision=\"{d}\"}}")))
        .sum();
    assert_eq!(decided, answered as f64);
    let allowed_answers = value("tee_risk_decisions_total{decision=\"allow\"}") as usize;
    let commits = value("tee_risk_store_commits_total");
    let flushes = value("tee_risk_store_flushes_total");
    assert_eq!(commits, answered as f64 + 1.0);
    assert!((1.0..=commits).contains(&flushes), "{flushes} of {commits}");
    assert_eq!(
        value("tee_risk_stage_total{stage=\"sign\"}"),
        answered as f64 + 1.0
    );
    for secret in ["metrics-user-7f3a", "phone-1", &rids[0], MASTER_KEY] {
        assert!(!metrics.contains(secret), "{secret} leaked into /metrics");
    }

    let admin = ureq::get(format!("{}/admin/db/status", server.url))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    assert_eq!(
        admin.status().as_u16(),
        401,
        "operator endpoints need the operator's token"
    );

    server.kill();
    let vault = open_vault(&data, MASTER_KEY).unwrap();
    let logged: Vec<String> = vault
        .risk_logs()
        .unwrap()
        .into_iter()
        .map(|l| l.rid.clone())
        .collect();
    for rid in &rids {
        assert!(logged.contains(rid), "answered request {rid} was lost");
    }
    assert_eq!(
        vault.verify_all().unwrap(),
        TableCounts {
            user_data: 1,
            feature_history: allowed_answers,
            risk_logs: answered
        }
    );
}

#[test]
fn wrong_master_key_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (data, keys) = (dir.path().join("data"), dir.path().join("keys"));
    TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .start()
        .stop();
    let other = "ff".repeat(32);
    let (status, log) = TestServer::builder(&data, &keys)
        .master_key(&other)
        .try_start()
        .err()
        .expect("must refuse");
    assert!(status.is_some_and(|s| !s.success()));
    assert!(
        log.contains("DB_MASTER_KEY does not match this database"),
        "{log}"
    );
    assert!(
        !log.contains(&other) && !log.contains(MASTER_KEY),
        "keys never reach the log"
    );
    let (_, malformed) = TestServer::builder(&data, &keys)
        .master_key("1234")
        .try_start()
        .err()
        .expect("must refuse");
    assert!(malformed.contains("64 hex characters"), "{malformed}");
    // The right key still opens it: nothing was damaged by the refused starts.
    TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .start()
        .stop();
}

#[test]
fn dev_mode_generates_a_key_and_warns_and_production_mode_needs_one() {
    let dir = tempfile::tempdir().unwrap();
    let (data, keys) = (dir.path().join("data"), dir.path().join("keys"));
    let (status, log) = TestServer::builder(&data, &keys)
        .try_start()
        .err()
        .expect("no key, no dev: refuse");
    assert!(status.is_some_and(|s| !s.success()));
    assert!(log.contains("DB_MASTER_KEY is not set"), "{log}");

    let faces = faces();
    // Dev mode without a clients file: the dev client, whose key the CLI uses by default.
    let server = TestServer::builder(&data, &keys)
        .args(&["--dev"])
        .without_test_client()
        .start();
    assert!(server.stderr().contains("DEVELOPMENT MODE"));
    assert!(server.stderr().contains("DEVELOPMENT client `dev`"));
    let dev_client = Arc::new(ClientCredential::new(
        DevClient::ID,
        tee_risk::internals::crypto::keyfile::load_sm2_key(&DevClient::key_file(&data)).unwrap(),
    ));
    Client::fetch_keys(&server.url)
        .unwrap()
        .with_credential(dev_client.clone())
        .enroll(&request("dev-user", &faces.enrol))
        .unwrap();
    server.stop();
    let key_file = data.join(tee_risk::internals::app::secrets::DEV_KEY_FILE);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // A dev key file that others may read is refused, as OpenSSH refuses such private keys.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (status, log) = TestServer::builder(&data, &keys)
            .args(&["--dev"])
            .without_test_client()
            .try_start()
            .err()
            .expect("a world-readable dev key is refused");
        assert!(status.is_some_and(|s| !s.success()));
        assert!(log.contains("chmod 600"), "{log}");
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // The same dev key is used on the next start, with the warning again.
    let again = TestServer::builder(&data, &keys)
        .args(&["--dev"])
        .without_test_client()
        .start();
    assert!(again.stderr().contains("DEVELOPMENT MODE"));
    let answer = Client::fetch_keys(&again.url)
        .unwrap()
        .with_credential(dev_client)
        .assess(&request("dev-user", &faces.genuine))
        .unwrap();
    assert_eq!(answer.decision, "allow");
    again.stop();
    let dev_key = std::fs::read_to_string(key_file).unwrap();
    assert_eq!(
        open_vault(&data, dev_key.trim())
            .unwrap()
            .verify_all()
            .unwrap()
            .user_data,
        1
    );
}

/// The context signals over real HTTP: one face cannot open a second account (also after a
/// restart, from the gallery rebuilt out of the vault, and no longer once the first account
/// is erased); a new device is named once and remembered when allowed; a burst of attempts
/// on one account is named and refused.
#[test]
fn identity_conflict_new_device_and_velocity_end_to_end() {
    let faces = faces();
    let dir = tempfile::tempdir().unwrap();
    let (data, keys) = (dir.path().join("data"), dir.path().join("keys"));
    let config = unlimited_config(dir.path());
    let start = || {
        TestServer::builder(&data, &keys)
            .master_key(MASTER_KEY)
            .args(&["--config", &config])
            .start()
    };
    let server = start();
    let client = server.client();
    let enrolled = client.enroll(&request("alice", &faces.enrol)).unwrap();
    assert_eq!(enrolled.outcome, "enrolled", "{enrolled}");
    // Another photograph of the same face, enrolled as someone else: refused, not stored.
    let second = client.enroll(&request("mallory", &faces.genuine)).unwrap();
    assert_eq!(
        (
            second.outcome.as_str(),
            second.templates,
            codes(&second.reasons)
        ),
        ("identity_conflict", 0, vec!["identity_conflict"]),
        "{second}"
    );
    let mallory = client.assess(&request("mallory", &faces.genuine)).unwrap();
    assert_eq!(mallory.reasons, ["no_enrolment"]);
    // A different face enrols as bob without conflict.
    let bob = client.enroll(&request("bob", &faces.impostor)).unwrap();
    assert_eq!(bob.outcome, "enrolled", "{bob}");

    // A new device is named (and costs a step-up with the shipped model); once an attempt
    // from it was allowed or stepped up, it is known.
    let mut tablet = request("alice", &new_capture(&faces.genuine, 1));
    tablet.device_id = Some("tablet-9".into());
    let first = client.assess(&tablet).unwrap();
    assert!(first.reasons.iter().any(|r| r == "new_device"), "{first}");
    assert_ne!(
        first.decision, "deny",
        "a strong match from a new device: {first}"
    );
    tablet.features = new_capture(&faces.genuine, 2);
    let again = client.assess(&tablet).unwrap();
    assert_eq!(
        (again.decision.as_str(), codes(&again.reasons)),
        ("allow", Vec::<&str>::new()),
        "{again}"
    );
    server.stop_cleanly();

    // After a restart the gallery is rebuilt from the vault: the conflict still holds.
    let server = start();
    let client = server.client();
    let retry = client.enroll(&request("mallory", &faces.genuine)).unwrap();
    assert_eq!(retry.outcome, "identity_conflict", "{retry}");
    // A burst on bob's account with someone else's face: named, and refused.
    let mut last = None;
    for i in 0..8 {
        last = Some(
            client
                .assess(&request("bob", &new_capture(&faces.genuine, 10 + i)))
                .unwrap(),
        );
    }
    let last = last.unwrap();
    assert_eq!(last.decision, "deny");
    for reason in ["no_match", "high_velocity", "repeated_failures"] {
        assert!(
            last.reasons.iter().any(|r| r == reason),
            "{reason} in {last}"
        );
    }
    // Once alice is erased her face may enrol again, under any account.
    client.erase("alice").unwrap();
    let after = client.enroll(&request("mallory", &faces.genuine)).unwrap();
    assert_eq!(after.outcome, "enrolled", "{after}");
    server.stop_cleanly();
}

//! Hostile conditions against the real binary over loopback: replays across restarts, rate
//! limits, crashes under load, and logs that must not leak.

mod support;

use std::sync::Mutex;
use std::time::Duration;

use support::{
    MASTER_KEY, TestServer, error_code, faces, open_vault, request, synthetic_face,
    unlimited_config,
};
use tee_risk::client::{Client, ClientError};
use tee_risk::internals::crypto::aead::Sm4Gcm;
use tee_risk::internals::crypto::secret::SecretBytes;
use tee_risk::internals::lab::new_capture;
use tee_risk::internals::obs::unix_now;
use tee_risk::protocol::b64_encode;
use tee_risk::protocol::request::{ProtectedHeader, seal};

/// Sends a request for `user` to the server's current key under the request id `rid`: what
/// a client reusing an id (or an attacker who knows a plaintext) would send.
fn with_rid(client: &Client, rid: &str, user: &str, features: &[f32]) -> Vec<u8> {
    let mut header = ProtectedHeader::new(&client.keys().encryption.kid(), unix_now()).unwrap();
    header.rid = rid.to_owned();
    let plaintext = serde_json::to_vec(&request(user, features)).unwrap();
    seal(&client.keys().encryption, &header, &plaintext).unwrap()
}

/// Spent request ids are written with the request and loaded at start. (A captured request
/// itself cannot come back after a restart anyway: its encryption key died with the process,
/// so it gets `unknown_kid`; the persisted ids matter for the ids themselves.)
#[test]
fn a_request_id_stays_spent_across_restarts_and_crashes() {
    let faces = faces();
    let dir = tempfile::tempdir().unwrap();
    let (data, keys) = (dir.path().join("data"), dir.path().join("keys"));
    let server = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .start();
    let client = server.client();
    client.enroll(&request("alice", &faces.enrol)).unwrap();
    let first = client.assess(&request("alice", &faces.genuine)).unwrap();
    let first_rid = first.stamp.rid.as_str().to_owned();
    let (_, captured) = client.seal(&request("alice", &faces.genuine)).unwrap();
    assert_eq!(
        client.post_raw("/v1/assess", &captured).unwrap().status,
        200
    );

    // A clean restart: the id is still spent, even in a request to the new key.
    server.stop();
    let server = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .start();
    let client = server.client();
    let old = client.post_raw("/v1/assess", &captured).unwrap();
    assert_eq!(error_code(&old), (400, "unknown_kid".into()));
    let reused = with_rid(&client, &first_rid, "alice", &faces.genuine);
    let refused = client.post_raw("/v1/assess", &reused).unwrap();
    assert_eq!(error_code(&refused), (409, "replayed_request".into()));
    let second = client.assess(&request("alice", &faces.genuine)).unwrap();
    let second_rid = second.stamp.rid.as_str().to_owned();

    // A crash right after an answer: that id is spent too.
    server.kill();
    let server = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .start();
    let client = server.client();
    for rid in [&first_rid, &second_rid] {
        let reused = with_rid(&client, rid, "alice", &faces.genuine);
        let refused = client.post_raw("/v1/assess", &reused).unwrap();
        assert_eq!(error_code(&refused), (409, "replayed_request".into()));
    }
    // A fresh id is welcome (with a new capture: the same probe again is a replayed probe).
    let fresh = client
        .assess(&request("alice", &new_capture(&faces.genuine, 1)))
        .unwrap();
    assert_eq!(fresh.decision, "allow");
    let same_probe = client.assess(&request("alice", &faces.genuine)).unwrap();
    assert_eq!(same_probe.reasons, ["replayed_probe"]);
}

#[test]
fn rate_limits_answer_429_with_a_retry_time() {
    let faces = faces();
    let dir = tempfile::tempdir().unwrap();
    let (data, keys) = (dir.path().join("data"), dir.path().join("keys"));
    let config = dir.path().join("limits.toml");
    std::fs::write(
        &config,
        "[limits]\nuser_per_minute = 6\nuser_burst = 3\nclient_per_minute = 1\nclient_burst = 8\n",
    )
    .unwrap();
    let config = config.to_string_lossy().into_owned();
    let server = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .args(&["--config", &config])
        .start();
    let client = server.client();
    // Three requests for alice pass, the fourth is limited; bob has his own bucket.
    client.enroll(&request("alice", &faces.enrol)).unwrap();
    for _ in 0..2 {
        client.assess(&request("alice", &faces.genuine)).unwrap();
    }
    let (_, body) = client.seal(&request("alice", &faces.genuine)).unwrap();
    let limited = client.post_raw("/v1/assess", &body).unwrap();
    assert_eq!(error_code(&limited), (429, "rate_limited".into()));
    let detail: serde_json::Value = serde_json::from_slice(&limited.body).unwrap();
    assert!(detail["detail"].as_str().unwrap().contains("user"));
    client.enroll(&request("bob", &faces.enrol)).unwrap();
    // The client's own budget (8 at once) runs out too, for every user.
    let mut statuses = Vec::new();
    for i in 0..6 {
        let (_, body) = client
            .seal(&request(&format!("user-{i}"), &faces.enrol))
            .unwrap();
        let raw = client.post_raw("/v1/enroll", &body).unwrap();
        statuses.push(raw.status);
        if raw.status == 429 {
            let text = String::from_utf8_lossy(&raw.body).into_owned();
            assert!(text.contains("client"), "{text}");
        }
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 3);
    // Retry-After is set, in whole seconds.
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let (_, body) = client.seal(&request("carol", &faces.enrol)).unwrap();
    let authorization = server
        .credential
        .authorization("POST", "/v1/enroll", &body)
        .unwrap();
    let response = agent
        .post(format!("{}/v1/enroll", server.url))
        .header("authorization", &authorization)
        .send(&body[..])
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
}

/// What a sender learned from one signed 200.
enum Acknowledged {
    /// The user and the face enrolled.
    Enrolled(String, Vec<f32>),
    /// The request id, the decision and the score of an assessment.
    Assessed(String, String, f64),
}

/// Sends enrol + assess pairs until the server dies. Only a transport error (the kill) may
/// end it: any refusal or an answer that does not verify fails the test.
fn send_until_killed(client: &Client, round: usize, sender: usize, out: &Mutex<Vec<Acknowledged>>) {
    for i in 0.. {
        let user = format!("k{round}-{sender}-{i}");
        // A face of its own per account: one face twice is a conflict.
        let face = synthetic_face(round * 1_000_000 + sender * 100_000 + i);
        let enrolled = match client.enroll(&request(&user, &face)) {
            Ok(enrolled) => enrolled,
            Err(ClientError::Http(_)) => return,
            Err(other) => panic!("enrolment of {user} failed without a kill: {other}"),
        };
        assert_eq!(enrolled.templates, 1);
        out.lock()
            .unwrap()
            .push(Acknowledged::Enrolled(user.clone(), face.clone()));
        let probe = new_capture(&face, 1);
        let assessed = match client.assess(&request(&user, &probe)) {
            Ok(assessed) => assessed,
            Err(ClientError::Http(_)) => return,
            Err(other) => panic!("assessment of {user} failed without a kill: {other}"),
        };
        out.lock().unwrap().push(Acknowledged::Assessed(
            assessed.stamp.rid.as_str().to_owned(),
            assessed.decision.as_str().to_owned(),
            assessed.score,
        ));
    }
}

fn unit(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

/// SIGKILL at random moments while clients enrol and assess, 20 times over; after each
/// restart the database opens, and every request that got a signed 200 is there, as answered:
/// the enrolled template is the face sent, the logged decision and score are the ones signed.
#[test]
fn every_acknowledged_request_survives_repeated_sigkill_under_load() {
    const KILLS: usize = 20;
    const SENDERS: usize = 3;
    // Each round runs at least 200 ms; one enrol + assess pair takes a few milliseconds even in
    // a debug build (about 200 a round here), so a round that acknowledges fewer than this did
    // not load the server.
    const MIN_PER_ROUND: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let (data, keys) = (dir.path().join("data"), dir.path().join("keys"));
    let config = unlimited_config(dir.path());
    let acknowledged = Mutex::new(Vec::<Acknowledged>::new());
    let mut seed = std::env::var("KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| unix_now() as u64 | 1);
    eprintln!("kill delays seeded with KILL_SEED={seed}");
    for round in 0..=KILLS {
        let server = TestServer::builder(&data, &keys)
            .master_key(MASTER_KEY)
            .args(&["--config", &config])
            .start();
        let keys_now = Client::fetch_keys(&server.url).unwrap().keys().clone();
        let before = acknowledged.lock().unwrap().len();
        std::thread::scope(|scope| {
            for sender in 0..SENDERS {
                let client = server.client_with_keys(keys_now.clone());
                let acknowledged = &acknowledged;
                scope.spawn(move || send_until_killed(&client, round, sender, acknowledged));
            }
            // xorshift: a kill 200 to 700 ms into the round.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(Duration::from_millis(200 + seed % 500));
            if round < KILLS {
                server.kill();
            } else {
                // The last round ends with SIGTERM: in-flight requests drain, sled flushes.
                let log_path = server.stderr_log.clone();
                let status = server.stop();
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                assert!(status.success(), "{status:?}\n{log}");
            }
        });
        let this_round = acknowledged.lock().unwrap().len() - before;
        assert!(
            this_round >= MIN_PER_ROUND,
            "round {round} acknowledged only {this_round} requests"
        );
    }
    let acknowledged = acknowledged.into_inner().unwrap();
    let vault = open_vault(&data, MASTER_KEY).unwrap();
    let counts = vault.verify_all().unwrap();
    let logs: std::collections::HashMap<String, (String, f64)> = vault
        .risk_logs()
        .unwrap()
        .into_iter()
        .map(|l| (l.rid.clone(), (l.decision.clone(), l.score)))
        .collect();
    let mut enrolments = 0;
    for ack in &acknowledged {
        match ack {
            Acknowledged::Enrolled(user, face) => {
                enrolments += 1;
                let templates = vault.templates(&vault.user(user), user).unwrap();
                assert_eq!(templates.len(), 1, "acknowledged enrolment of {user} lost");
                let (stored, sent) = (unit(&templates[0]), unit(face));
                let off = stored.iter().zip(&sent).map(|(a, b)| (a - b).abs());
                assert!(
                    off.fold(0.0f32, f32::max) < 1e-5,
                    "{user}'s stored template is not the face enrolled"
                );
            }
            Acknowledged::Assessed(rid, decision, score) => {
                let logged = logs.get(rid);
                assert!(logged.is_some(), "acknowledged assessment {rid} lost");
                let (logged_decision, logged_score) = logged.unwrap();
                assert_eq!(logged_decision, decision, "{rid}: logged decision");
                assert!((logged_score - score).abs() < 1e-9, "{rid}: logged score");
            }
        }
    }
    // Requests cut by a kill may have been written without an answer, never the reverse.
    assert!(counts.user_data >= enrolments);
    eprintln!(
        "{KILLS} SIGKILLs + 1 SIGTERM under load: {} acknowledged requests ({enrolments} \
         enrolments), all present as answered; {} user records in the database",
        acknowledged.len(),
        counts.user_data
    );
}

/// A full session with every log level on (`RUST_LOG=trace`, the service's and its
/// libraries'): no key, token, user id, device id or feature value may appear in the log.
#[test]
fn logs_at_every_level_carry_no_secret_or_personal_data() {
    const ADMIN_TOKEN: &str = "admin-token-5e1f0c2b9d";
    const USER: &str = "user-4c1d9e7a";
    const DEVICE: &str = "device-77aa31";
    let faces = faces();
    let dir = tempfile::tempdir().unwrap();
    let (data, keys) = (dir.path().join("data"), dir.path().join("keys"));
    let server = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .env(&[("RUST_LOG", "trace"), ("TEE_RISK_ADMIN_TOKEN", ADMIN_TOKEN)])
        .try_start()
        .unwrap();
    let client = server.client();
    let mut probe = request(USER, &faces.enrol);
    probe.device_id = Some(DEVICE.into());
    client.enroll(&probe).unwrap();
    probe.features = faces.genuine.clone();
    client.assess(&probe).unwrap();
    probe.features = faces.impostor.clone();
    let (_, body) = client.seal(&probe).unwrap();
    assert_eq!(client.post_raw("/v1/assess", &body).unwrap().status, 200);
    assert_eq!(client.post_raw("/v1/assess", &body).unwrap().status, 409);
    let mut tampered = body.clone();
    let at = tampered.len() - 10;
    tampered[at] ^= 1;
    assert!(client.post_raw("/v1/assess", &tampered).unwrap().status >= 400);
    let anonymous = Client::fetch_keys(&server.url).unwrap();
    assert_eq!(anonymous.post_raw("/v1/assess", &body).unwrap().status, 401);
    // A request built by hand from the protocol text with a session key we know, so that the
    // log can be searched for it.
    let session_key = [
        0x5au8, 0x17, 0xc3, 0x9e, 0x41, 0x08, 0xd2, 0x6b, 0xf0, 0x33, 0x8c, 0x71, 0x2e, 0xa4, 0x5d,
        0x96,
    ];
    let header = ProtectedHeader::new(&client.keys().encryption.kid(), unix_now()).unwrap();
    let protected = b64_encode(&serde_json::to_vec(&header).unwrap());
    let mut payload = serde_json::to_vec(&probe).unwrap();
    let iv = [7u8; 12];
    let tag = Sm4Gcm::new(&SecretBytes::from_slice(&session_key).unwrap())
        .seal_in_place(&iv, protected.as_bytes(), &mut payload)
        .unwrap();
    let envelope = serde_json::json!({
        "protected": protected,
        "encrypted_key": b64_encode(&client.keys().encryption.encrypt_der(&session_key).unwrap()),
        "iv": b64_encode(&iv),
        "ciphertext": b64_encode(&payload),
        "tag": b64_encode(&tag),
    });
    let hand_built = serde_json::to_vec(&envelope).unwrap();
    assert_eq!(
        client.post_raw("/v1/assess", &hand_built).unwrap().status,
        200
    );
    client.erase(USER).unwrap();
    let get = |path: &str, token: Option<&str>| {
        let mut request = ureq::get(format!("{}{path}", server.url))
            .config()
            .http_status_as_error(false)
            .build();
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        request
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap()
    };
    get(&format!("/v1/attestation?nonce={}", "A".repeat(43)), None);
    get("/admin/db/status", Some(ADMIN_TOKEN));
    get(&format!("/v1/users/{USER}"), None);
    let metrics = get("/metrics", Some(ADMIN_TOKEN));
    // The tampered copy still names the spent rid, so it may count as a replay too.
    assert!(metrics.contains("tee_risk_refusals_total{code=\"replayed_request\"}"));
    assert!(metrics.contains("tee_risk_refusals_total{code=\"unauthenticated\"} 1"));
    assert!(metrics.contains("tee_risk_store_records{table=\"user_data\"} 0"));
    assert!(metrics.contains("tee_risk_http_request_duration_seconds_bucket{route=\"assess\""));
    let log_path = server.stderr_log.clone();
    server.stop_cleanly();

    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(
        log.contains("TRACE") && log.contains("answered"),
        "trace logging was on"
    );
    assert!(log.contains("request{id="), "log lines carry request ids");
    let read = |name: &str| std::fs::read_to_string(name).unwrap().trim().to_owned();
    let mut secrets = vec![
        ("session key (hex)", hex::encode(session_key)),
        ("session key (base64url)", b64_encode(&session_key)),
        ("DB master key", MASTER_KEY.to_owned()),
        ("admin token", ADMIN_TOKEN.to_owned()),
        ("user id", USER.to_owned()),
        ("device id", DEVICE.to_owned()),
        (
            "client key",
            read(data.with_extension("client-key.hex").to_str().unwrap()),
        ),
        (
            "sim platform key",
            read(data.join("sim-platform-key.hex").to_str().unwrap()),
        ),
    ];
    for features in [&faces.enrol, &faces.genuine, &faces.impostor] {
        for value in features.iter().take(32) {
            let text = format!("{value}");
            if text.len() >= 7 {
                secrets.push(("feature value", text));
            }
        }
    }
    for (what, secret) in &secrets {
        assert!(!log.contains(secret.as_str()), "the log holds a {what}");
        assert!(
            !log.to_lowercase().contains(&secret.to_lowercase()),
            "the log holds a {what} (other case)"
        );
    }
    eprintln!(
        "{} log lines at trace level, {} secrets and personal values searched, none found",
        log.lines().count(),
        secrets.len()
    );
}

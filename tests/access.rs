//! Access control and erasure against the real binary over loopback: who may enrol, assess
//! and erase, and what erasing a user leaves behind.

mod support;

use std::path::Path;
use std::sync::Arc;

use support::{
    MASTER_KEY, TestServer, error_code, faces, open_vault, openssl_sm2_keypair, request,
};
use tee_risk::client::Client;
use tee_risk::internals::crypto::sm2::IdentityKey;
use tee_risk::internals::lab::new_capture;
use tee_risk::internals::store::ERASED_USER;
use tee_risk::protocol::client_auth::ClientCredential;
use tee_risk::protocol::reply::ErasedCounts;

/// A clients file with `full` (every permission) and `assessor` (assess only).
fn two_clients(dir: &Path) -> (Arc<ClientCredential>, Arc<ClientCredential>, String) {
    let full = IdentityKey::generate().unwrap();
    let assessor = IdentityKey::generate().unwrap();
    std::fs::write(dir.join("assessor.pem"), assessor.public().to_pem()).unwrap();
    let file = dir.join("clients.toml");
    std::fs::write(
        &file,
        format!(
            "[[client]]\nid = \"full\"\npermissions = [\"enroll\", \"assess\", \"erase\"]\n\
             public_key = \"\"\"\n{}\"\"\"\n\n\
             [[client]]\nid = \"assessor\"\npermissions = [\"assess\"]\n\
             public_key = \"assessor.pem\"\n",
            full.public().to_pem()
        ),
    )
    .unwrap();
    (
        Arc::new(ClientCredential::new("full", full)),
        Arc::new(ClientCredential::new("assessor", assessor)),
        file.to_string_lossy().into_owned(),
    )
}

#[test]
fn only_registered_clients_with_the_permission_get_in() {
    let faces = faces();
    let dir = tempfile::tempdir().unwrap();
    let (data, keys) = (dir.path().join("data"), dir.path().join("keys"));
    let (full, assessor, clients) = two_clients(dir.path());
    let server = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .args(&["--clients", &clients])
        .without_test_client()
        .start();
    let anonymous = Client::fetch_keys(&server.url).unwrap();
    let as_full =
        Client::with_keys(&server.url, anonymous.keys().clone()).with_credential(full.clone());
    let as_assessor =
        Client::with_keys(&server.url, anonymous.keys().clone()).with_credential(assessor);
    as_full.enroll(&request("alice", &faces.enrol)).unwrap();

    let (_, body) = anonymous.seal(&request("alice", &faces.genuine)).unwrap();
    // No credential, then credentials that do not fit this request.
    let unsigned = anonymous.post_raw("/v1/assess", &body).unwrap();
    assert_eq!(error_code(&unsigned), (401, "unauthenticated".into()));
    let stranger = Arc::new(ClientCredential::new(
        "full",
        IdentityKey::generate().unwrap(),
    ));
    let forged = stranger.authorization("POST", "/v1/assess", &body).unwrap();
    // Signatures of a registered client, but over another body or for another endpoint.
    let other_body = full
        .authorization("POST", "/v1/assess", b"another body")
        .unwrap();
    let other_path = full.authorization("POST", "/v1/enroll", &body).unwrap();
    for authorization in [
        forged.as_str(),
        other_body.as_str(),
        other_path.as_str(),
        "Bearer token",
        "TR-SM2 nobody:AAAA",
    ] {
        let raw = anonymous
            .send_with_authorization("POST", "/v1/assess", &body, Some(authorization))
            .unwrap();
        assert_eq!(
            error_code(&raw),
            (401, "unauthenticated".into()),
            "{authorization}"
        );
    }
    // An unknown client id and a wrong signature for a known one get the very same answer:
    // a caller cannot learn which client ids exist.
    let unknown = ClientCredential::new("nobody", IdentityKey::generate().unwrap())
        .authorization("POST", "/v1/assess", &body)
        .unwrap();
    let answers: Vec<Vec<u8>> = [forged.as_str(), unknown.as_str()]
        .into_iter()
        .map(|authorization| {
            anonymous
                .send_with_authorization("POST", "/v1/assess", &body, Some(authorization))
                .unwrap()
                .body
        })
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&answers[0]),
        String::from_utf8_lossy(&answers[1])
    );
    // None of the refused attempts spent the request id: the right client still can.
    let answer = as_assessor.post_raw("/v1/assess", &body).unwrap();
    assert_eq!(answer.status, 200);

    // The assessor may assess, not enrol or erase.
    let enrol = as_assessor.enroll(&request("mallory", &faces.impostor));
    assert!(enrol.unwrap_err().to_string().contains("forbidden"));
    let erase = as_assessor.erase("alice");
    assert!(erase.unwrap_err().to_string().contains("forbidden"));
    let still_there = as_full
        .assess(&request("alice", &new_capture(&faces.genuine, 1)))
        .unwrap();
    assert_eq!(still_there.decision, "allow");
    // Unsigned reads stay open: keys and attestation carry nothing secret.
    assert!(Client::fetch_keys(&server.url).is_ok());
    server.stop();
}

#[test]
fn erasing_a_user_removes_templates_history_and_personal_log_fields() {
    let faces = faces();
    let dir = tempfile::tempdir().unwrap();
    let (data, keys) = (dir.path().join("data"), dir.path().join("keys"));
    let server = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .start();
    let client = server.client();
    // Two different faces (one face under two accounts would be an identity conflict).
    let bob_face = new_capture(&faces.impostor, 100);
    for (user, enrol, probe) in [
        ("alice", &faces.enrol, faces.genuine.clone()),
        ("bob", &faces.impostor, new_capture(&faces.impostor, 101)),
    ] {
        client.enroll(&request(user, enrol)).unwrap();
        client
            .enroll(&request(user, &new_capture(enrol, 0)))
            .unwrap();
        let allowed = client.assess(&request(user, &probe)).unwrap();
        assert_eq!(allowed.decision, "allow", "{user}: {allowed}");
    }
    client.assess(&request("alice", &faces.impostor)).unwrap();

    let erased = client.erase("alice").unwrap();
    assert_eq!(erased.stamp.op, "erase");
    assert_eq!(
        erased.erased,
        ErasedCounts {
            templates: 2,
            history: 1,
            risk_logs_scrubbed: 2
        }
    );
    // Alice is unknown from now on; Bob is untouched.
    let after = client.assess(&request("alice", &faces.genuine)).unwrap();
    assert_eq!(after.decision, "deny");
    assert!(after.reasons.iter().any(|r| r == "no_enrolment"));
    let bob = client.assess(&request("bob", &bob_face)).unwrap();
    assert_eq!(bob.decision, "allow", "{bob}");
    // Erasing again finds no data, only the log of the assessment made since.
    let again = client.erase("alice").unwrap();
    assert_eq!(
        again.erased,
        ErasedCounts {
            templates: 0,
            history: 0,
            risk_logs_scrubbed: 1
        }
    );
    server.stop();

    let vault = open_vault(&data, MASTER_KEY).unwrap();
    let counts = vault.verify_all().unwrap();
    assert_eq!(counts.user_data, 1, "only Bob's record is left");
    assert_eq!(counts.feature_history, 2, "Bob's two accepted probes");
    let logs = vault.risk_logs().unwrap();
    assert_eq!(logs.len(), 5, "decisions are kept");
    let scrubbed: Vec<_> = logs.iter().filter(|l| l.user == ERASED_USER).collect();
    assert_eq!(scrubbed.len(), 3);
    assert!(
        scrubbed
            .iter()
            .all(|l| l.features.is_empty() && l.device_id.is_none() && l.liveness.is_none())
    );
    assert!(
        logs.iter()
            .filter(|l| l.user != ERASED_USER)
            .all(|l| l.features.len() == 128)
    );
}

#[test]
fn without_client_credentials_the_service_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (data, keys) = (dir.path().join("data"), dir.path().join("keys"));
    let (_, log) = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .without_test_client()
        .try_start()
        .err()
        .unwrap();
    assert!(log.contains("no clients registered"), "{log}");
    std::fs::write(dir.path().join("bad.toml"), "[[client]]\nid = \"x\"\n").unwrap();
    let bad = dir.path().join("bad.toml");
    let (_, log) = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .args(&["--clients", bad.to_str().unwrap()])
        .without_test_client()
        .try_start()
        .err()
        .unwrap();
    assert!(log.contains("bad.toml"), "{log}");
}

fn status_of(url: &str, token: Option<&str>) -> u16 {
    let mut request = ureq::get(url).config().http_status_as_error(false).build();
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    request.call().unwrap().status().as_u16()
}

/// `/metrics` and `/admin/…` are operator endpoints: closed without the operator's token
/// (outside dev mode), and with an operator listener they answer only there.
#[test]
fn operator_endpoints_need_the_token_and_can_have_their_own_listener() {
    let dir = tempfile::tempdir().unwrap();
    let (data, keys) = (dir.path().join("data"), dir.path().join("keys"));
    let closed = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .start();
    for path in ["/metrics", "/admin/db/status"] {
        assert_eq!(status_of(&format!("{}{path}", closed.url), None), 404);
    }
    closed.stop();

    let server = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .args(&["--operator-listen", "127.0.0.1:0"])
        .env(&[("TEE_RISK_ADMIN_TOKEN", "op-token-1")])
        .try_start()
        .unwrap();
    let operator = server.operator_url.clone().expect("operator listener");
    assert_ne!(operator, server.url);
    for path in ["/metrics", "/admin/db/status"] {
        // Not on the service listener, even with the token…
        assert_eq!(
            status_of(&format!("{}{path}", server.url), Some("op-token-1")),
            404
        );
        // …and on the operator listener only with it.
        assert_eq!(status_of(&format!("{operator}{path}"), None), 401);
        assert_eq!(status_of(&format!("{operator}{path}"), Some("wrong")), 401);
        assert_eq!(
            status_of(&format!("{operator}{path}"), Some("op-token-1")),
            200
        );
    }
    // Client endpoints stay on the service listener.
    assert!(Client::fetch_keys(&server.url).is_ok());
    server.stop();
}

/// A client key made by OpenSSL registers and signs as documented in `docs/OPERATIONS.md`,
/// and OpenSSL verifies the `TR-SM2` signature over the message `docs/PROTOCOL.md` defines.
#[test]
fn a_client_key_made_by_openssl_works_and_openssl_verifies_its_signatures() {
    let faces = faces();
    let dir = tempfile::tempdir().unwrap();
    let (data, keys) = (dir.path().join("data"), dir.path().join("keys"));
    let tmp = dir.path();
    openssl_sm2_keypair(tmp, "client.key", "client.pem");
    std::fs::write(
        tmp.join("clients.toml"),
        "[[client]]\nid = \"bank-backend\"\npublic_key = \"client.pem\"\npermissions = [\"enroll\"]\n",
    )
    .unwrap();
    let clients = tmp.join("clients.toml").to_string_lossy().into_owned();
    let server = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .args(&["--clients", &clients])
        .without_test_client()
        .start();
    let credential = Arc::new(ClientCredential::new(
        "bank-backend",
        tee_risk::internals::crypto::keyfile::load_sm2_key(&tmp.join("client.key")).unwrap(),
    ));
    let client = Client::fetch_keys(&server.url)
        .unwrap()
        .with_credential(credential.clone());
    assert_eq!(
        client
            .enroll(&request("alice", &faces.enrol))
            .unwrap()
            .templates,
        1
    );
    server.stop();

    // The signed message, rebuilt from the protocol text, verifies in OpenSSL.
    let body = b"{\"any\":\"body\"}";
    let header = credential
        .authorization("POST", "/v1/enroll", body)
        .unwrap();
    let signature = header.rsplit_once(':').unwrap().1;
    let signature = tee_risk::protocol::b64_decode(signature).unwrap();
    let mut message = b"tee-risk/client-request/v1\0bank-backend\0POST\0/v1/enroll\0".to_vec();
    message.extend_from_slice(&tee_risk::internals::crypto::sm3(body));
    std::fs::write(tmp.join("msg"), &message).unwrap();
    std::fs::write(tmp.join("sig"), &signature).unwrap();
    let verified = std::process::Command::new("openssl")
        .args([
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            "client.pem",
            "-rawin",
        ])
        .args(["-digest", "sm3", "-pkeyopt", "distid:1234567812345678"])
        .args(["-in", "msg", "-sigfile", "sig"])
        .current_dir(tmp)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&verified.stdout).contains("Signature Verified Successfully"),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
}

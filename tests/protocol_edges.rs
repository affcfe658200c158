//! The edges of the protocol that an independent client found (bodies that do not arrive
//! whole, query strings, when a request id is spent, non-finite features), over real HTTP on
//! one shared server. Each case checks the answer and that nothing was stored.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::Duration;

use support::wire;
use support::{Faces, TestServer, error_code, request};
use tee_risk::client::Client;
use tee_risk::internals::obs::unix_now;
use tee_risk::protocol::request::{ProtectedHeader, seal};

/// One server for the whole file; each test uses its own user ids.
fn server() -> &'static TestServer {
    static SERVER: OnceLock<(TestServer, tempfile::TempDir)> = OnceLock::new();
    &SERVER
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            // A small per-user budget for the 429 case; the client's is generous.
            let server = TestServer::start_with_config(
                dir.path(),
                "[limits]\nuser_per_minute = 6\nuser_burst = 3\nclient_per_minute = 0\n",
            );
            (server, dir)
        })
        .0
}

/// The test faces, computed once.
fn faces() -> &'static Faces {
    static FACES: OnceLock<Faces> = OnceLock::new();
    FACES.get_or_init(support::faces)
}

/// Sends raw bytes on a new connection, half-closes it, and returns (status, error code).
fn raw_exchange(head: &str, body: &[u8]) -> (u16, String) {
    let address = server().url.trim_start_matches("http://").to_owned();
    let answer = wire::exchange(&address, head, body);
    assert!(
        answer.body.is_object(),
        "JSON error body in {:?}",
        String::from_utf8_lossy(&answer.raw)
    );
    (answer.status, answer.code())
}

/// The request head for an enrolment signed over `body` by the test client.
fn signed_head(path: &str, body: &[u8], framing: &str) -> String {
    let authorization = server()
        .credential
        .authorization("POST", "/v1/enroll", body)
        .unwrap();
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {authorization}\r\n\
         Content-Type: application/json\r\n{framing}\r\n"
    )
}

/// Whether `user` has an enrolment: an assessment says `no_enrolment` otherwise.
fn enrolled(client: &Client, user: &str) -> bool {
    let answer = client
        .assess(&request(user, &faces().genuine))
        .expect("assess");
    answer.reasons != ["no_enrolment"]
}

#[test]
fn a_body_that_does_not_arrive_whole_is_refused_and_changes_nothing() {
    let client = server().client();
    // A face of its own: another test of this file enrols faces().enrol for another
    // account, and one face under two accounts is refused as an identity conflict.
    let (_, body) = client
        .seal(&request("cut-short", &support::synthetic_face(4_242)))
        .unwrap();

    // Content-Length promises more than is sent before the sender half-closes.
    let half = &body[..body.len() / 2];
    let head = signed_head(
        "/v1/enroll",
        &body,
        &format!("Content-Length: {}\r\n", body.len()),
    );
    assert_eq!(raw_exchange(&head, half), (400, "incomplete_body".into()));

    // Chunked: whole, and missing only its final zero-length chunk. Both refused, because
    // the second cannot be told from the first once the sender half-closes.
    let chunk = format!("{:x}\r\n", body.len());
    let mut whole = chunk.clone().into_bytes();
    whole.extend_from_slice(&body);
    whole.extend_from_slice(b"\r\n0\r\n\r\n");
    let mut unterminated = chunk.into_bytes();
    unterminated.extend_from_slice(&body);
    unterminated.extend_from_slice(b"\r\n");
    for chunked in [&whole, &unterminated] {
        let head = signed_head("/v1/enroll", &body, "Transfer-Encoding: chunked\r\n");
        assert_eq!(
            raw_exchange(&head, chunked),
            (411, "length_required".into())
        );
    }
    assert!(!enrolled(&client, "cut-short"), "nothing was stored");

    // The same body, whole and with its length, is accepted: the refusals spent nothing.
    let head = signed_head(
        "/v1/enroll",
        &body,
        &format!("Content-Length: {}\r\n", body.len()),
    );
    let address = server().url.trim_start_matches("http://").to_owned();
    assert_eq!(wire::exchange(&address, &head, &body).status, 200);
    assert!(enrolled(&client, "cut-short"));
}

#[test]
fn a_query_string_is_refused_because_the_signature_does_not_cover_it() {
    let client = server().client();
    let (_, body) = client.seal(&request("query", &faces().enrol)).unwrap();
    let head = signed_head(
        "/v1/enroll?x=1",
        &body,
        &format!("Content-Length: {}\r\n", body.len()),
    );
    assert_eq!(
        raw_exchange(&head, &body),
        (400, "query_not_allowed".into())
    );
    assert!(!enrolled(&client, "query"));
}

/// One rule: a request id is spent once its envelope decrypts, whatever the answer. So the
/// same body after a 422 or a per-user 429 is a replay (409); a client always re-encrypts.
#[test]
fn a_request_id_is_spent_once_its_envelope_decrypts() {
    let client = server().client();
    let key = client.keys().encryption.clone();
    let header = ProtectedHeader::new(&key.kid(), unix_now()).unwrap();
    let short = seal(
        &key,
        &header,
        br#"{"user_id":"spent","features":[0.6,0.8]}"#,
    )
    .unwrap();
    let first = client.post_raw("/v1/enroll", &short).unwrap();
    assert_eq!(error_code(&first), (422, "wrong_dimension".into()));
    let again = client.post_raw("/v1/enroll", &short).unwrap();
    assert_eq!(error_code(&again), (409, "replayed_request".into()));

    // The per-user budget (a burst of 3): the fourth request for one user is limited, and
    // the same body after Retry-After is a replay.
    client.enroll(&request("limited", &faces().enrol)).unwrap();
    for _ in 0..2 {
        client
            .assess(&request("limited", &faces().genuine))
            .unwrap();
    }
    let (_, body) = client.seal(&request("limited", &faces().genuine)).unwrap();
    let limited = client.post_raw("/v1/assess", &body).unwrap();
    assert_eq!(error_code(&limited), (429, "rate_limited".into()));
    std::thread::sleep(Duration::from_secs(11));
    let retried = client.post_raw("/v1/assess", &body).unwrap();
    assert_eq!(error_code(&retried), (409, "replayed_request".into()));
}

/// JSON has no NaN or Infinity, and 1e309 overflows: each is named `non_finite_feature`;
/// a vector of tiny values is `zero_norm`, with a detail that says "too small".
#[test]
fn non_finite_and_vanishing_features_get_their_own_codes() {
    let client = server().client();
    let key = client.keys().encryption.clone();
    let dimension = faces().enrol.len();
    let send = |features: String| {
        let header = ProtectedHeader::new(&key.kid(), unix_now()).unwrap();
        let plaintext = format!(r#"{{"user_id":"odd-values","features":[{features}]}}"#);
        let body = seal(&key, &header, plaintext.as_bytes()).unwrap();
        client.post_raw("/v1/enroll", &body).unwrap()
    };
    let with = |value: &str| {
        let mut values = vec!["0.1".to_owned(); dimension];
        values[3] = value.to_owned();
        values.join(",")
    };
    for value in ["NaN", "Infinity", "-Infinity", "1e309", "1e39"] {
        let raw = send(with(value));
        assert_eq!(
            error_code(&raw),
            (422, "non_finite_feature".into()),
            "{value}"
        );
        let detail: serde_json::Value = serde_json::from_slice(&raw.body).unwrap();
        assert!(detail["detail"].as_str().unwrap().contains("feature 3"));
    }
    let tiny = send(vec!["1e-40"; dimension].join(","));
    assert_eq!(error_code(&tiny), (422, "zero_norm".into()));
    let detail: serde_json::Value = serde_json::from_slice(&tiny.body).unwrap();
    assert!(detail["detail"].as_str().unwrap().contains("too small"));
}

/// Bodies are bounded in time and in memory: an upload that stalls mid-body is refused
/// (`400 incomplete_body`) once `server.body_deadline_secs` pass, and while stalled uploads
/// hold the whole `server.bodies_in_flight_bytes`, a new one gets `503 overloaded` at once
/// instead of piling up; the budget returns when the stalled one is refused.
#[test]
fn stalled_uploads_are_cut_off_and_cannot_pile_up_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with_config(
        dir.path(),
        "[server]\nbody_deadline_secs = 2\nmax_body_bytes = 65536\nbodies_in_flight_bytes = 65536\n",
    );
    let address = server.url.trim_start_matches("http://").to_owned();
    // A stalled upload: the head promises 65,536 bytes, 100 arrive, then nothing.
    let mut stalled = TcpStream::connect(&address).unwrap();
    stalled
        .write_all(b"POST /v1/enroll HTTP/1.1\r\nHost: localhost\r\nContent-Length: 65536\r\n\r\n")
        .unwrap();
    stalled.write_all(&[b'{'; 100]).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // It holds the whole budget: a new upload is refused at once, not queued.
    let client = server.client();
    let (_, body) = client.seal(&request("budget", &faces().enrol)).unwrap();
    let started = std::time::Instant::now();
    let busy = client.post_raw("/v1/enroll", &body).unwrap();
    assert_eq!(error_code(&busy), (503, "overloaded".into()));
    assert!(started.elapsed() < Duration::from_secs(1));

    // The deadline passes: the stalled upload is refused and its budget returned.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = stalled.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("incomplete_body"), "{answer}");
    // The detail tells a slow sender about the deadline, not of a broken upload.
    assert!(answer.contains("within the 2 s deadline"), "{answer}");
    let (_, body) = client.seal(&request("budget", &faces().enrol)).unwrap();
    assert_eq!(client.post_raw("/v1/enroll", &body).unwrap().status, 200);
    server.stop();
}

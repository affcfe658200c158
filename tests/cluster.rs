//! The reference cluster as a user runs it (`make cluster`: scripts/cluster.sh): a real
//! PostgreSQL, three replicas that share one identity obtained by attested join, and
//! HAProxy round-robin in front. Through the balancer a client enrols on one replica and
//! assesses on another without knowing; every replica publishes the same keys; the identity
//! survives a rolling restart; a replica SIGKILLed under load re-joins, and clients see
//! only failures they may retry, never a wrong answer, and lose nothing acknowledged; and
//! joiners that fail the cluster policy are refused, each with the failed check named.
//!
//! One cluster for the whole binary: everything runs in one test, in order.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tee_risk::client::{Client, ClientError, ServerKeys};
use tee_risk::internals::app::join::{join_peer, open_grant};
use tee_risk::internals::attest::join::{ChallengeAnswer, ChallengeRequest, JoinRequest};
use tee_risk::internals::attest::sim::{Measurement, SimPlatform};
use tee_risk::internals::attest::{Attester, Binding, Policy};
use tee_risk::internals::crypto::keyfile::load_sm2_key;
use tee_risk::internals::crypto::random_array;
use tee_risk::internals::crypto::sm2::{DecryptionKey, PublicKey};
use tee_risk::internals::obs::unix_now;
use tee_risk::protocol::client_auth::ClientCredential;
use tee_risk::protocol::reply::EnrollReply;
use tee_risk::protocol::response::SignedResponse;
use tee_risk::protocol::{b64_decode, b64_encode};

use support::{request, synthetic_face};

/// The measurement scripts/cluster.sh pins (its default CLUSTER_MEASUREMENT).
const MEASUREMENT: [u8; 32] = [0xc1; 32];

/// The cluster started by scripts/cluster.sh; `down` when dropped (also on a failure).
struct LocalCluster {
    dir: PathBuf,
    port: u16,
    balancer: String,
}

impl LocalCluster {
    fn up() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tee-risk-cluster")
            .tempdir()
            .unwrap()
            .keep();
        let port = free_port_block();
        let cluster = Self {
            balancer: format!("http://127.0.0.1:{port}"),
            dir,
            port,
        };
        let out = cluster.script(&["up"]);
        let last = out.lines().last().unwrap_or_default();
        assert_eq!(
            last,
            format!("cluster ready: {}", cluster.balancer),
            "make cluster's last line"
        );
        cluster
    }

    /// Runs scripts/cluster.sh; panics with its output when it fails.
    fn script(&self, args: &[&str]) -> String {
        let output = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh"))
            .args(args)
            .env("TEE_RISK_BIN", env!("CARGO_BIN_EXE_tee-risk"))
            .env("CLUSTER_DIR", &self.dir)
            .env("CLUSTER_PORT", self.port.to_string())
            .output()
            .expect("run scripts/cluster.sh");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "cluster.sh {args:?}: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        text
    }

    fn replica_url(&self, n: u16) -> String {
        format!("http://127.0.0.1:{}", self.port + n)
    }

    fn operator_url(&self, n: u16) -> String {
        format!("http://127.0.0.1:{}", self.port + 10 + n)
    }

    fn log(&self, n: u16) -> String {
        std::fs::read_to_string(self.dir.join(format!("r{n}/log"))).unwrap_or_default()
    }

    fn identity(&self) -> PublicKey {
        let pem = std::fs::read_to_string(self.dir.join("r1/keys/identity.pub.pem")).unwrap();
        PublicKey::from_pem(&pem).unwrap()
    }

    fn credential(&self) -> Arc<ClientCredential> {
        let key = load_sm2_key(&self.dir.join("data/dev-client-key.hex")).unwrap();
        Arc::new(ClientCredential::new("dev", key))
    }

    /// A client of `url` that trusts only the cluster identity.
    fn client(&self, url: &str) -> Client {
        Client::fetch_keys_pinned(url, &self.identity())
            .expect("keys certified by the cluster identity")
            .with_credential(self.credential())
    }

    fn policy(&self) -> Policy {
        Policy::load(&self.dir.join("cluster-policy.toml")).unwrap()
    }

    /// A joiner of our own making: the shared sim platform key, any measurement.
    fn sim_joiner(&self, measurement: [u8; 32]) -> Attester {
        let key = load_sm2_key(&self.dir.join("data/sim-platform-key.hex")).unwrap();
        Attester::Sim(Box::new(SimPlatform::with_measurement(
            key,
            Measurement::Fixed(measurement),
            true,
        )))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh"))
            .arg("down")
            .env("CLUSTER_DIR", &self.dir)
            .env("CLUSTER_PORT", self.port.to_string())
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A base port with the 21 ports the cluster uses free.
fn free_port_block() -> u16 {
    for _ in 0..200 {
        let base: u16 = 20_000 + (u16::from_be_bytes(random_array().unwrap()) % 40_000);
        if (0..=20).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no free block of 21 ports");
}

fn get(url: &str) -> (u16, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut response = agent.get(url).call().expect("GET");
    let status = response.status().as_u16();
    let content_type = content_type(&response);
    let body = response.body_mut().read_to_vec().unwrap();
    support::openapi::check("GET", &target(url), status, &content_type, &body);
    (status, body)
}

/// The path and query of `url` (what docs/openapi.yaml is looked up by).
fn target(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.find('/').map_or("/".into(), |i| rest[i..].to_owned())
}

fn content_type(response: &ureq::http::Response<ureq::Body>) -> String {
    response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn post_json(url: &str, body: &impl serde::Serialize) -> (u16, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut response = agent.post(url).send_json(body).expect("POST");
    let status = response.status().as_u16();
    let content_type = content_type(&response);
    let bytes = response.body_mut().read_to_vec().unwrap();
    support::openapi::check("POST", &target(url), status, &content_type, &bytes);
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

/// Every replica and the balancer serve byte-identical `GET /v1/keys`.
fn keys_are_identical(cluster: &LocalCluster) -> Vec<u8> {
    let (status, reference) = get(&format!("{}/v1/keys", cluster.balancer));
    assert_eq!(status, 200);
    for n in 1..=3 {
        let (status, keys) = get(&format!("{}/v1/keys", cluster.replica_url(n)));
        assert_eq!(status, 200);
        assert_eq!(keys, reference, "replica {n} publishes other keys");
    }
    reference
}

#[test]
fn three_replicas_behind_haproxy_act_as_one_attested_service() {
    let cluster = LocalCluster::up();
    let identity = cluster.identity();
    for n in 2..=3 {
        assert!(cluster.log(n).contains("joined the cluster"), "replica {n}");
    }
    keys_are_identical(&cluster);

    // The project's client: attests the cluster through the balancer, enrols on replica 1,
    // assesses on replica 2 and through the balancer.
    let attested = Client::attest(&cluster.balancer, &cluster.policy())
        .expect("the cluster attests under its policy")
        .1;
    assert_eq!(attested.identity, identity);
    let on_first = cluster.client(&cluster.replica_url(1));
    let on_second = cluster.client(&cluster.replica_url(2));
    let through = cluster.client(&cluster.balancer);
    let face = synthetic_face(1);
    on_first.enroll(&request("walk-in", &face)).unwrap();
    let probe = tee_risk::internals::lab::new_capture(&face, 7);
    let answer = on_second.assess(&request("walk-in", &probe)).unwrap();
    assert_eq!(answer.decision, "allow", "{answer}");
    for i in 0..3 {
        let probe = tee_risk::internals::lab::new_capture(&face, 100 + i);
        let answer = through.assess(&request("walk-in", &probe)).unwrap();
        assert!(
            !answer.reasons.iter().any(|r| r == "no_enrolment"),
            "{answer}"
        );
    }

    independent_client(&cluster);
    refusals(&cluster);
    sigkill_under_load(&cluster);

    // A rolling restart, one replica at a time: the identity and every pin stay valid.
    let before = keys_are_identical(&cluster);
    for n in 1..=3 {
        cluster.script(&["stop", &n.to_string()]);
        cluster.script(&["start", &n.to_string()]);
        through.assess(&request("walk-in", &probe)).unwrap();
    }
    assert_eq!(keys_are_identical(&cluster), before);
    assert_eq!(cluster.identity(), identity);
    let pinned = Client::fetch_keys_pinned(&cluster.balancer, &identity).unwrap();
    assert_eq!(pinned.keys().identity, identity);
}

/// The Python interpreter with the independent client's packages (`make test` makes it).
fn python() -> PathBuf {
    let path = std::env::var_os("TEE_RISK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python3"));
    assert!(
        path.exists(),
        "{} is missing: `make test` creates it (python3 -m venv target/pyenv, then pip install \
         -r tests/independent/requirements.txt)",
        path.display()
    );
    path
}

/// Runs the independent client (naming `face_model` when given); returns the verified
/// payload.
fn independent(
    cluster: &LocalCluster,
    url: &str,
    path: &str,
    user: &str,
    face: &[f32],
    face_model: Option<&str>,
) -> serde_json::Value {
    let features = cluster.dir.join(format!("{user}-{}.json", face.len()));
    std::fs::write(&features, serde_json::to_vec(face).unwrap()).unwrap();
    let output = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/independent/client.py"))
        .args([
            "send",
            "--url",
            url,
            "--path",
            path,
            "--client-id",
            "dev",
            "--client-key",
        ])
        .arg(cluster.dir.join("data/dev-client-key.hex"))
        .arg("--pin")
        .arg(cluster.dir.join("r1/keys/identity.pub.pem"))
        .args(["--user", user, "--features"])
        .arg(&features)
        .args(
            face_model
                .map(|m| ["--face-model", m])
                .into_iter()
                .flatten(),
        )
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "independent client: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A client written from docs/PROTOCOL.md with other SM2/SM4 code (Python: gmssl,
/// cryptography) and ours serve each other's users across replicas.
fn independent_client(cluster: &LocalCluster) {
    let face = synthetic_face(2);
    let enrolled = independent(
        cluster,
        &cluster.replica_url(3),
        "/v1/enroll",
        "indy",
        &face,
        None,
    );
    assert_eq!(enrolled["outcome"], "enrolled", "{enrolled}");
    assert_eq!(enrolled["face_model"], "dlib-resnet128", "{enrolled}");
    let ours = cluster.client(&cluster.replica_url(1));
    // On the device the independent client enrolled from (a new or shared device would
    // rightly raise the risk).
    let mut probe = request("indy", &tee_risk::internals::lab::new_capture(&face, 3));
    probe.device_id = Some("independent-client".into());
    let answer = ours.assess(&probe).unwrap();
    assert_eq!(answer.decision, "allow", "{answer}");

    let face = synthetic_face(3);
    ours.enroll(&request("rusty", &face)).unwrap();
    let probe = tee_risk::internals::lab::new_capture(&face, 4);
    let answer = independent(
        cluster,
        &cluster.balancer,
        "/v1/assess",
        "rusty",
        &probe,
        None,
    );
    assert_eq!(answer["op"], "assess", "{answer}");
    assert!(
        !answer["reasons"].to_string().contains("no_enrolment"),
        "{answer}"
    );

    // PROTOCOL v1.3 from the independent client: a 192-d MobileFaceNet enrolment, named.
    let face: Vec<f32> = (0..192).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
    let enrolled = independent(
        cluster,
        &cluster.balancer,
        "/v1/enroll",
        "indy-192",
        &face,
        Some("mobilefacenet192"),
    );
    assert_eq!(
        (&enrolled["outcome"], &enrolled["face_model"]),
        (&"enrolled".into(), &"mobilefacenet192".into()),
        "{enrolled}"
    );
}

/// Joiners that fail the cluster policy, each refused with the check named; and the one
/// that passes receives the cluster's identity.
fn refusals(cluster: &LocalCluster) {
    let peer = cluster.operator_url(1);
    let policy = cluster.policy();
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();

    // A joiner built like a replica passes, and what it receives is the cluster identity.
    let honest = cluster.sim_joiner(MEASUREMENT);
    let secrets = join_peer(&agent, &peer, &policy, &honest).expect("an honest joiner");
    assert_eq!(
        tee_risk::internals::crypto::sm2::IdentityKey::from_scalar(&secrets.identity)
            .unwrap()
            .public(),
        &cluster.identity()
    );

    // One step at a time, to tamper with each.
    let attempt = |measurement: [u8; 32]| {
        let nonce: [u8; 32] = random_array().unwrap();
        let (status, answer) = post_json(
            &format!("{peer}/cluster/v1/challenge"),
            &ChallengeRequest {
                nonce: b64_encode(&nonce),
            },
        );
        assert_eq!(status, 200, "{answer}");
        let answer: ChallengeAnswer = serde_json::from_value(answer).unwrap();
        policy.verify(&answer.evidence, &nonce, unix_now()).unwrap();
        let challenge: [u8; 32] = b64_decode(&answer.challenge).unwrap().try_into().unwrap();
        let ephemeral = DecryptionKey::generate().unwrap();
        let evidence = cluster
            .sim_joiner(measurement)
            .evidence_for(
                Binding::ClusterJoin,
                &challenge,
                ephemeral.public(),
                unix_now(),
            )
            .unwrap();
        (
            JoinRequest {
                challenge: answer.challenge,
                evidence,
            },
            ephemeral,
        )
    };
    let refused = |request: &JoinRequest, check: &str| {
        let (status, body) = post_json(&format!("{peer}/cluster/v1/join"), request);
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("join_refused")),
            "{body}"
        );
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(check), "`{check}` in {detail}");
    };

    // Another build (measurement).
    let (other_build, _) = attempt([0x0b; 32]);
    refused(&other_build, "`measurement`");

    // A tampered report: one byte of the signed report changed.
    let (mut tampered, _) = attempt(MEASUREMENT);
    let mut report = b64_decode(&tampered.evidence.report).unwrap();
    report[60] ^= 1;
    tampered.evidence.report = b64_encode(&report);
    refused(&tampered, "`platform`");

    // A replayed challenge: the first use is granted, the second refused.
    let (valid, ephemeral) = attempt(MEASUREMENT);
    let (status, grant) = post_json(&format!("{peer}/cluster/v1/join"), &valid);
    assert_eq!(status, 200, "{grant}");
    let grant: SignedResponse = serde_json::from_value(grant).unwrap();
    open_grant(&grant, &cluster.identity(), &valid.challenge, &ephemeral).unwrap();
    refused(&valid, "challenge");
    // A grant opened with another key, or checked against another identity, fails.
    assert!(
        open_grant(
            &grant,
            &cluster.identity(),
            &valid.challenge,
            &DecryptionKey::generate().unwrap()
        )
        .is_err()
    );

    // A client-facing report (another label) cannot pass as join evidence.
    let (mut relabelled, ephemeral) = attempt(MEASUREMENT);
    let challenge: [u8; 32] = b64_decode(&relabelled.challenge)
        .unwrap()
        .try_into()
        .unwrap();
    let mut client_report = cluster
        .sim_joiner(MEASUREMENT)
        .evidence(&challenge, ephemeral.public(), unix_now())
        .unwrap();
    client_report.identity_key.key_use = "enc".into();
    relabelled.evidence = client_report;
    refused(&relabelled, "`report_data`");

    // A join message that is not the documented JSON.
    let (status, body) = post_json(
        &format!("{peer}/cluster/v1/join"),
        &serde_json::json!({ "challenge": 7 }),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_join_request")),
        "{body}"
    );
    // Every answer above was checked against docs/openapi.yaml; the cluster routes' 200s
    // and refusals were among them.
    let (operations, codes) = support::openapi::covered();
    for route in ["/cluster/v1/challenge", "/cluster/v1/join"] {
        assert!(
            operations.contains(&("POST".into(), route.into())),
            "{route}"
        );
    }
    for code in ["join_refused", "bad_join_request"] {
        assert!(codes.contains(code), "{code}");
    }

    // The endpoints exist only on the operator listener.
    let (status, _) = post_json(
        &format!("{}/cluster/v1/challenge", cluster.replica_url(1)),
        &ChallengeRequest {
            nonce: b64_encode(&[0; 32]),
        },
    );
    assert_eq!(status, 404);

    // A real replica of another build does not serve: it exits, naming the check.
    let config = cluster.dir.join("r2/config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let other = cluster.dir.join("other-build.toml");
    std::fs::write(
        &other,
        text.replace(&hex::encode(MEASUREMENT), &hex::encode([0x0b; 32]))
            .replace(&format!("127.0.0.1:{}", cluster.port + 2), "127.0.0.1:0")
            .replace(&format!("127.0.0.1:{}", cluster.port + 12), "127.0.0.1:0")
            .replace("join_timeout_secs = 60", "join_timeout_secs = 2")
            .replace(
                &format!("\"{}/keys\"", cluster.dir.join("r2").display()),
                &format!("\"{}/other-keys\"", cluster.dir.display()),
            ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tee-risk"))
        .args(["serve", "--config"])
        .arg(&other)
        .env(
            "DB_MASTER_KEY",
            std::fs::read_to_string(cluster.dir.join("master-key")).unwrap(),
        )
        .env(
            "TEE_RISK_DATABASE_URL",
            std::fs::read_to_string(cluster.dir.join("database-url"))
                .unwrap()
                .trim(),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(!stdout.contains("tee-risk listening"), "{stdout}");
    assert!(stderr.contains("cannot join the cluster"), "{stderr}");
    assert!(stderr.contains("`measurement`"), "{stderr}");
}

/// What one load thread saw.
#[derive(Default)]
struct Tally {
    acknowledged: usize,
    retried: usize,
    /// Users whose enrolment was acknowledged, with their face.
    enrolled: BTreeMap<String, Vec<f32>>,
}

/// Load through the balancer while replica 2 is SIGKILLed and started again.
fn sigkill_under_load(cluster: &LocalCluster) {
    let stop = Arc::new(AtomicBool::new(false));
    let serial = Arc::new(AtomicUsize::new(1_000));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let keys = ServerKeys::from_document(
        &serde_json::from_slice(&get(&format!("{}/v1/keys", cluster.balancer)).1).unwrap(),
        Some(&cluster.identity()),
        unix_now(),
    )
    .unwrap();
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let client = Client::with_keys(&cluster.balancer, keys.clone())
                .with_credential(cluster.credential());
            let (stop, serial, failures) = (stop.clone(), serial.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut tally = Tally::default();
                let mut round = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    // Mostly new enrolments (what must not be lost), some assessments.
                    // Spread over every user: a few assessments each, well inside the
                    // per-user rate limit.
                    let pick = round.wrapping_mul(7_919) % tally.enrolled.len().max(1);
                    let (path, user, features) = match tally.enrolled.iter().nth(pick) {
                        Some((user, face)) if round % 3 == 0 => (
                            "/v1/assess",
                            user.clone(),
                            tee_risk::internals::lab::new_capture(face, round),
                        ),
                        _ => {
                            let n = serial.fetch_add(1, Ordering::Relaxed);
                            ("/v1/enroll", format!("w{worker}-u{n}"), synthetic_face(n))
                        }
                    };
                    let result =
                        client
                            .seal(&request(&user, &features))
                            .and_then(|(header, body)| {
                                let raw = client.post_raw(path, &body)?;
                                // Either route's answer (enrolments are checked below).
                                client.verify_answer::<serde_json::Value>(&header, &body, &raw)
                            });
                    match result {
                        Ok(answer) => {
                            tally.acknowledged += 1;
                            if path == "/v1/enroll" {
                                let enrolled: EnrollReply = serde_json::from_value(answer).unwrap();
                                assert_eq!(enrolled.outcome, "enrolled", "{enrolled}");
                                tally.enrolled.insert(user, features);
                            }
                        }
                        // What a client retries: no answer, or the balancer's or the
                        // service's "try again" (the request may or may not have been done:
                        // it is sent again as a new request).
                        Err(ClientError::Http(_)) => tally.retried += 1,
                        Err(ClientError::Refused { status, .. })
                            if [502, 503, 504].contains(&status) =>
                        {
                            tally.retried += 1
                        }
                        Err(other) => failures
                            .lock()
                            .unwrap()
                            .push(format!("{path} {user}: {other}")),
                    }
                }
                tally
            })
        })
        .collect();

    std::thread::sleep(Duration::from_secs(2));
    cluster.script(&["kill", "2"]);
    std::thread::sleep(Duration::from_secs(2));
    cluster.script(&["start", "2"]);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let tallies: Vec<Tally> = workers.into_iter().map(|w| w.join().unwrap()).collect();

    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "answers a client cannot retry: {failures:?}"
    );
    let acknowledged: usize = tallies.iter().map(|t| t.acknowledged).sum();
    let retried: usize = tallies.iter().map(|t| t.retried).sum();
    eprintln!("under a SIGKILL: {acknowledged} acknowledged, {retried} retried");
    assert!(acknowledged >= 40, "the load ran: {acknowledged}");

    // The killed replica re-joined: same identity, same keys.
    let restarted = cluster.log(2);
    assert!(restarted.contains("joined the cluster"), "{restarted}");
    keys_are_identical(cluster);

    // Nothing acknowledged was lost: every enrolled user is enrolled, whichever replica is
    // asked (one checker per replica, in parallel).
    let started = Instant::now();
    let enrolled: Vec<(String, Vec<f32>)> = tallies
        .iter()
        .flat_map(|t| t.enrolled.iter().map(|(u, f)| (u.clone(), f.clone())))
        .collect();
    std::thread::scope(|scope| {
        for n in 1..=3u16 {
            let replica = cluster.client(&cluster.replica_url(n));
            let enrolled = &enrolled;
            scope.spawn(move || {
                for (i, (user, face)) in enrolled.iter().enumerate().skip(n as usize - 1).step_by(3)
                {
                    let probe = tee_risk::internals::lab::new_capture(face, 1_000_000 + i);
                    let answer = replica.assess(&request(user, &probe)).unwrap();
                    assert!(
                        !answer.reasons.iter().any(|r| r == "no_enrolment"),
                        "{user} was acknowledged, then lost: {answer}"
                    );
                }
            });
        }
    });
    eprintln!(
        "{} acknowledged enrolments found in {:?}",
        enrolled.len(),
        started.elapsed()
    );
}

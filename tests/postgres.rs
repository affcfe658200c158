//! The service on PostgreSQL, against a real throw-away cluster (`support::pg`): what the
//! database holds (nothing in the clear), replicas sharing spent request ids and records, the
//! operator commands, and a database that stops under load and comes back.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::pg::{self, PgCluster};
use support::{MASTER_KEY, TestServer, error_code, faces, request};
use tee_risk::internals::lab::new_capture;
use tee_risk::internals::obs::unix_now;
use tee_risk::protocol::request::{ProtectedHeader, seal};

/// A config file that puts the store on PostgreSQL.
fn postgres_config(dir: &Path, extra: &str) -> String {
    let path = dir.join("postgres.toml");
    std::fs::write(
        &path,
        format!("[storage]\nbackend = \"postgres\"\npool_size = 8\ntimeout_secs = 3\n{extra}"),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

/// A replica: its own data folder (keys, dev files), the shared database.
fn replica(dir: &Path, name: &str, url: &str, config: &str) -> TestServer {
    let data = dir.join(name);
    TestServer::builder(&data, &dir.join(format!("{name}-keys")))
        .master_key(MASTER_KEY)
        .args(&["--config", config])
        .env(&[("TEE_RISK_DATABASE_URL", url)])
        .try_start()
        .unwrap_or_else(|(status, log)| panic!("replica {name} did not start ({status:?}):\n{log}"))
}

/// Two replicas on a new database of the shared cluster.
fn two_replicas(dir: &Path) -> (TestServer, TestServer) {
    let url = pg::shared().create_database();
    let config = postgres_config(dir, "");
    (
        replica(dir, "a", &url, &config),
        replica(dir, "b", &url, &config),
    )
}

/// The database at `url`, opened as the service opens it.
fn open_database(url: &str) -> std::sync::Arc<dyn tee_risk::internals::store::Store> {
    std::sync::Arc::new(
        tee_risk::internals::store::PostgresStore::open(
            &tee_risk::internals::store::PostgresOptions {
                url: zeroize::Zeroizing::new(url.to_owned()),
                pool_size: 2,
                timeout: Duration::from_secs(10),
                ca_file: None,
            },
        )
        .unwrap(),
    )
}

/// `tee-risk db <args>` with `key` as the master key and the database at `url`.
fn db_with(args: &[&str], key: &str, url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tee-risk"))
        .arg("db")
        .args(args)
        .env("DB_MASTER_KEY", key)
        .env("TEE_RISK_DATABASE_URL", url)
        .env_remove("DB_MASTER_KEY_PREVIOUS")
        .env_remove("TEE_RISK_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// `tee-risk db <args>` for the replica folder `a` under `dir`.
fn db(dir: &Path, url: &str, config: &str, args: &[&str]) -> std::process::Output {
    let data = dir.join("a");
    let mut all = args.to_vec();
    all.extend(["--config", config, "--data-dir", data.to_str().unwrap()]);
    db_with(&all, MASTER_KEY, url)
}

/// The JSON a command printed, after checking that it succeeded.
fn succeeded(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Lowercase hex of `bytes`, as `pg_dump` prints `bytea`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Enrolment, assessment and erasure on PostgreSQL; then `pg_dump` of the database holds
/// no user id, device id or feature bytes, in the clear or as hex; and the operator
/// commands work on it.
#[test]
fn the_service_runs_on_postgres_and_the_database_holds_nothing_in_the_clear() {
    const USER: &str = "pg-user-5d8e21";
    const DEVICE: &str = "pg-device-9a7c44";
    let cluster = pg::shared();
    let url = cluster.create_database();
    let dir = tempfile::tempdir().unwrap();
    let config = postgres_config(dir.path(), "");
    let server = replica(dir.path(), "a", &url, &config);
    let client = server.client();
    let mut enrol = request(USER, &faces().enrol);
    enrol.device_id = Some(DEVICE.into());
    assert_eq!(client.enroll(&enrol).unwrap().outcome, "enrolled");
    let mut probe = request(USER, &faces().genuine);
    probe.device_id = Some(DEVICE.into());
    let answer = client.assess(&probe).unwrap();
    assert_eq!(answer.decision, "allow", "{answer}");
    client
        .enroll(&request("pg-other", &faces().impostor))
        .unwrap();
    server.stop_cleanly();

    let dump = cluster.dump(&url);
    assert!(
        dump.contains("tee_risk_user_data") && dump.lines().count() > 40,
        "the dump holds the records"
    );
    let feature_bytes: Vec<u8> = faces().enrol[..4]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    for (what, secret) in [
        ("user id", USER.as_bytes().to_vec()),
        ("device id", DEVICE.as_bytes().to_vec()),
        ("feature bytes", feature_bytes),
    ] {
        let text = String::from_utf8_lossy(&secret).into_owned();
        assert!(
            !dump.contains(&text) && !dump.contains(&hex(&secret)),
            "the {what} is in the dump"
        );
    }

    for command in [&["status"][..], &["verify"], &["verify-log"]] {
        let out = db(dir.path(), &url, &config, command);
        assert!(
            out.status.success(),
            "db {command:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let backup_dir = dir.path().join("backup");
    let backup = db(
        dir.path(),
        &url,
        &config,
        &["backup", backup_dir.to_str().unwrap()],
    );
    let counts = succeeded(&backup);
    assert_eq!(
        (counts["user_data"].as_u64(), counts["risk_logs"].as_u64()),
        (Some(2), Some(1))
    );
}

/// Two replicas on one database act as one service for request ids and records: an id
/// spent on one is refused on the other; an enrolment on one is assessed on the other, and
/// an erasure on one is seen by the other.
#[test]
fn two_replicas_share_spent_request_ids_and_records() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_replicas(dir.path());
    let (on_a, on_b) = (a.client(), b.client());

    on_a.enroll(&request("shared", &faces().enrol)).unwrap();
    let answer = on_b.assess(&request("shared", &faces().genuine)).unwrap();
    assert_eq!(
        answer.decision, "allow",
        "enrolled on a, assessed on b: {answer}"
    );

    // Each replica has its own encryption key: a client that reuses a request id seals it
    // to the other replica's key. The id is spent in the shared database.
    let spent = answer.stamp.rid.as_str().to_owned();
    let key = on_a.keys().encryption.clone();
    let mut header = ProtectedHeader::new(&key.kid(), unix_now()).unwrap();
    header.rid = spent;
    let plaintext =
        serde_json::to_vec(&request("shared", &new_capture(&faces().genuine, 3))).unwrap();
    let reused = seal(&key, &header, &plaintext).unwrap();
    let refused = on_a.post_raw("/v1/assess", &reused).unwrap();
    assert_eq!(error_code(&refused), (409, "replayed_request".into()));

    on_b.erase("shared").unwrap();
    let after = on_a
        .assess(&request("shared", &new_capture(&faces().genuine, 4)))
        .unwrap();
    assert_eq!(after.reasons, ["no_enrolment"], "erased on b, seen on a");
    a.stop_cleanly();
    b.stop_cleanly();
}

/// The identity-conflict search of one replica sees enrolments and erasures made on
/// another (the change feed, read every second): one face cannot open a second account
/// through the other replica. Prints the delay measured.
#[test]
fn enrolments_and_erasures_on_one_replica_reach_the_conflict_search_of_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_replicas(dir.path());
    let (on_a, on_b) = (a.client(), b.client());
    // A face enrolled on a; a second photograph of it, for another account, on b.
    on_a.enroll(&request("face-owner", &faces().enrol)).unwrap();
    let enrolled = Instant::now();
    let deadline = enrolled + Duration::from_secs(10);
    let mut attempt = 0;
    let delay = loop {
        // Each try under a new account id (a refused enrolment stores nothing).
        attempt += 1;
        let second = on_b
            .enroll(&request(&format!("second-{attempt}"), &faces().genuine))
            .unwrap();
        if second.outcome == "identity_conflict" {
            break enrolled.elapsed();
        }
        // Not seen yet: that account was enrolled; erase it so that it does not count.
        on_b.erase(&format!("second-{attempt}")).unwrap();
        assert!(Instant::now() < deadline, "b never saw a's enrolment");
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("an enrolment on a reached b's conflict search after {delay:?}");
    assert!(delay < Duration::from_secs(3), "{delay:?}");

    // Erased on a: b lets the face enrol again, once it has read the erasure.
    on_a.erase("face-owner").unwrap();
    let erased = Instant::now();
    let delay = loop {
        attempt += 1;
        let again = on_b
            .enroll(&request(&format!("second-{attempt}"), &faces().genuine))
            .unwrap();
        if again.outcome == "enrolled" {
            break erased.elapsed();
        }
        assert!(
            erased.elapsed() < Duration::from_secs(10),
            "b never saw the erasure"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("an erasure on a reached b's conflict search after {delay:?}");
    assert!(delay < Duration::from_secs(3), "{delay:?}");
    a.stop_cleanly();
    b.stop_cleanly();
}

/// PostgreSQL stops under load: requests get `503 storage_unavailable` within the
/// configured timeout (never a hang, never a 500); when it is back, the replica serves again
/// by itself, and every acknowledged enrolment is there.
#[test]
fn a_database_that_stops_under_load_gives_503_and_the_replica_recovers_by_itself() {
    // A cluster of its own: stopping the shared one would fail the other tests.
    let cluster = PgCluster::start();
    let url = cluster.create_database();
    let dir = tempfile::tempdir().unwrap();
    let config = postgres_config(dir.path(), "");
    let server = replica(dir.path(), "a", &url, &config);
    let client = server.client();
    let mut acknowledged = Vec::new();
    for i in 0..10 {
        let user = format!("before-{i}");
        client
            .enroll(&request(&user, &support::synthetic_face(i)))
            .unwrap();
        acknowledged.push(user);
    }
    // Readiness follows the database within a second, both ways (docs/OPERATIONS.md): a
    // balancer stops sending traffic this replica could only refuse.
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let health = |url: &str| {
        let response = agent.get(format!("{url}/healthz")).call().unwrap();
        response.status().as_u16()
    };
    assert_eq!(health(&server.url), 200);
    cluster.stop();
    let stopped = Instant::now();
    while health(&server.url) != 503 {
        assert!(
            stopped.elapsed() < Duration::from_secs(1),
            "/healthz still 200 a second after PostgreSQL stopped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..5 {
        let started = Instant::now();
        let (_, body) = client
            .seal(&request(
                &format!("during-{i}"),
                &support::synthetic_face(100 + i),
            ))
            .unwrap();
        let raw = client.post_raw("/v1/enroll", &body).unwrap();
        assert!(started.elapsed() < Duration::from_secs(15), "no hang");
        *statuses.entry(error_code(&raw)).or_insert(0) += 1;
    }
    assert_eq!(
        statuses.keys().collect::<Vec<_>>(),
        [&(503, "storage_unavailable".to_string())],
        "{statuses:?}"
    );
    cluster.start_server();
    let back = Instant::now();
    while health(&server.url) != 200 {
        assert!(
            back.elapsed() < Duration::from_secs(1),
            "/healthz still 503 a second after PostgreSQL came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let user = format!("after-{}", acknowledged.len());
        match client.enroll(&request(
            &user,
            &support::synthetic_face(1_000 + acknowledged.len()),
        )) {
            Ok(_) => {
                acknowledged.push(user);
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "never recovered: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    for user in &acknowledged {
        let answer = client
            .assess(&request(user, &new_capture(&support::synthetic_face(0), 1)))
            .unwrap();
        assert_ne!(answer.reasons, ["no_enrolment"], "{user} lost");
    }
    server.stop_cleanly();
}

/// `db copy` moves a sled deployment to PostgreSQL: the records arrive sealed as they were,
/// the counts per table and key match, a replica on PostgreSQL recognises the users; run
/// again (as after an interruption) it finishes the same; into another database it refuses.
#[test]
fn db_copy_moves_a_sled_deployment_to_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let (sled_data, keys) = (dir.path().join("sled"), dir.path().join("keys"));
    let server = TestServer::builder(&sled_data, &keys)
        .master_key(MASTER_KEY)
        .start();
    let client = server.client();
    for i in 0..20 {
        let user = format!("moved-{i}");
        client
            .enroll(&request(&user, &support::synthetic_face(i)))
            .unwrap();
        client
            .assess(&request(
                &user,
                &new_capture(&support::synthetic_face(i), 1),
            ))
            .unwrap();
    }
    server.stop_cleanly();

    let url = pg::shared().create_database();
    let config = postgres_config(dir.path(), "");
    let from = sled_data.to_str().unwrap();
    let copy = |url: &str| {
        db_with(
            &["copy", "--config", &config, "--from", from],
            MASTER_KEY,
            url,
        )
    };
    for run in 0..2 {
        let report = succeeded(&copy(&url));
        assert_eq!(
            (report["user_data"].as_u64(), report["risk_logs"].as_u64()),
            (Some(20), Some(20)),
            "{report}"
        );
        eprintln!("db copy run {run}: {report}");
    }
    let replica = replica(dir.path(), "a", &url, &config);
    let answer = replica
        .client()
        .assess(&request(
            "moved-7",
            &new_capture(&support::synthetic_face(7), 2),
        ))
        .unwrap();
    assert_eq!(answer.decision, "allow", "{answer}");
    replica.stop_cleanly();

    // A database of its own (another salt) is not a target.
    let other = pg::shared().create_database();
    let other_dir = tempfile::tempdir().unwrap();
    let started = replica_on(other_dir.path(), &other, &config);
    started.stop_cleanly();
    let refused = copy(&other);
    assert_eq!(
        refused.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

fn replica_on(dir: &Path, url: &str, config: &str) -> TestServer {
    replica(dir, "x", url, config)
}

/// A master-key rotation with two replicas on one database: one sweeps at a time (the
/// lease), the other serves; the sweeper is killed mid-way and the other takes the sweep
/// over; at the end every record is under the new key, nothing lost, and `db verify` passes.
#[test]
fn two_replicas_rotate_the_master_key_one_at_a_time_and_survive_the_sweepers_death() {
    use tee_risk::internals::store::{RiskLogEntry, Vault};
    const OLD_KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const NEW_KEY: &str = "2222222222222222222222222222222222222222222222222222222222222222";
    const USERS: usize = 1_500;
    let url = pg::shared().create_database();
    let dir = tempfile::tempdir().unwrap();
    let config = postgres_config(dir.path(), "");
    {
        // Seeded under the old key: users with a template and an assessment each.
        let store = open_database(&url);
        let vault = Vault::open(store, &support::master_key(OLD_KEY)).unwrap();
        for i in 0..USERS {
            let id = format!("user-{i}");
            let user = vault.user(&id);
            vault
                .enrol(&user, &id, &support::synthetic_face(i), 1, 5)
                .unwrap();
            let log = RiskLogEntry {
                rid: format!("seed-{i}"),
                at: 1,
                user: hex(user.current()),
                decision: "allow".into(),
                score: 0.0,
                reasons: vec![],
                model: "seed".into(),
                face_model: tee_risk::internals::store::LEGACY_FACE_MODEL.into(),
                features: support::synthetic_face(i),
                liveness: None,
                device_id: None,
            };
            vault.record_assessment(user.current(), &log, true).unwrap();
        }
        vault.flush().unwrap();
    }
    let start = |name: &str| {
        TestServer::builder(
            &dir.path().join(name),
            &dir.path().join(format!("{name}-keys")),
        )
        .master_key(NEW_KEY)
        .args(&["--config", &config])
        .env(&[
            ("TEE_RISK_DATABASE_URL", url.as_str()),
            ("DB_MASTER_KEY_PREVIOUS", OLD_KEY),
        ])
        .try_start()
        .unwrap_or_else(|(status, log)| panic!("{name} did not start ({status:?}):\n{log}"))
    };
    let sweeps = |server: &TestServer| server.stderr().contains("this process sweeps");
    let a = start("a");
    let b = start("b");
    // Whichever took the lease sweeps; the other serves (both read both keys).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sweeps(&a) && !sweeps(&b) {
        assert!(Instant::now() < deadline, "nobody sweeps");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!(sweeps(&a) && sweeps(&b)), "two sweepers at once");
    let (sweeper, other) = if sweeps(&a) { (a, b) } else { (b, a) };
    let answer = other
        .client()
        .assess(&request(
            "user-3",
            &new_capture(&support::synthetic_face(3), 1),
        ))
        .unwrap();
    assert_ne!(answer.reasons, ["no_enrolment"], "{answer}");
    sweeper.kill();
    // The other takes over once the lease runs out (10 s), and finishes.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !other.stderr().contains("key rotation complete") {
        assert!(
            Instant::now() < deadline,
            "the rotation never completed:\n{}",
            other.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(sweeps(&other), "the other replica took the sweep over");
    other.stop_cleanly();
    let data = dir.path().join("a");
    let verify = [
        "verify",
        "--config",
        &config,
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let report = succeeded(&db_with(&verify, NEW_KEY, &url));
    assert_eq!(report["counts"]["user_data"], USERS as u64, "{report}");
    // The seeded logs and the assessment made during the rotation.
    assert_eq!(report["counts"]["risk_logs"], USERS as u64 + 1, "{report}");
}

/// Load spread over three replicas; one is SIGKILLed mid-way. Every request that got a
/// signed answer, on any replica, is in the database afterwards, as answered.
#[test]
fn sigkill_of_one_replica_under_load_loses_nothing_acknowledged() {
    use std::sync::Mutex;
    use tee_risk::client::ClientError;
    use tee_risk::internals::store::Vault;
    let url = pg::shared().create_database();
    let dir = tempfile::tempdir().unwrap();
    let config = postgres_config(
        dir.path(),
        "[limits]\nclient_per_minute = 0\nuser_per_minute = 0\n",
    );
    let replicas: Vec<TestServer> = ["r0", "r1", "r2"]
        .iter()
        .map(|name| replica(dir.path(), name, &url, &config))
        .collect();
    let enrolled = Mutex::new(Vec::<(String, Vec<f32>)>::new());
    let assessed = Mutex::new(Vec::<(String, String)>::new());
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for (n, server) in replicas.iter().enumerate() {
            let client = server.client();
            let (enrolled, assessed, stop) = (&enrolled, &assessed, &stop);
            scope.spawn(move || {
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    let user = format!("r{n}-{i}");
                    let face = support::synthetic_face(n * 100_000 + i);
                    match client.enroll(&request(&user, &face)) {
                        Ok(_) => enrolled.lock().unwrap().push((user.clone(), face.clone())),
                        Err(ClientError::Http(_)) => return,
                        Err(other) => panic!("{user}: {other}"),
                    }
                    match client.assess(&request(&user, &new_capture(&face, 1))) {
                        Ok(answer) => assessed.lock().unwrap().push((
                            answer.stamp.rid.as_str().to_owned(),
                            answer.decision.as_str().to_owned(),
                        )),
                        Err(ClientError::Http(_)) => return,
                        Err(other) => panic!("{user}: {other}"),
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(1_500));
        let status = Command::new("kill")
            .args(["-KILL", &replicas[2].pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        std::thread::sleep(Duration::from_millis(1_500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    for server in replicas.into_iter().take(2) {
        server.stop_cleanly();
    }
    let enrolled = enrolled.into_inner().unwrap();
    let assessed = assessed.into_inner().unwrap();
    assert!(
        enrolled.iter().any(|(u, _)| u.starts_with("r2-")),
        "the killed replica had acknowledged work"
    );
    let store = open_database(&url);
    let vault = Vault::open(store, &support::master_key(MASTER_KEY)).unwrap();
    for (user, face) in &enrolled {
        let templates = vault.templates(&vault.user(user), user).unwrap();
        assert_eq!(templates.len(), 1, "acknowledged enrolment of {user} lost");
        let norm = face.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (templates[0][0] - face[0] / norm).abs() < 1e-5,
            "{user}'s template"
        );
    }
    let logs: std::collections::HashMap<String, String> = vault
        .risk_logs()
        .unwrap()
        .into_iter()
        .map(|l| (l.rid.clone(), l.decision.clone()))
        .collect();
    for (rid, decision) in &assessed {
        assert_eq!(
            logs.get(rid),
            Some(decision),
            "acknowledged assessment {rid}"
        );
    }
    eprintln!(
        "3 replicas, one SIGKILLed: {} enrolments and {} assessments acknowledged, all present",
        enrolled.len(),
        assessed.len()
    );
}

/// TLS to PostgreSQL (the cluster has `ssl = on` and a certificate for `localhost` from a test
/// CA; every other test here connects with `sslmode=verify-full`): the CA file from the
/// configuration authenticates the server; a server name the certificate does not carry, a
/// CA that did not sign it, and a verify mode without a CA file are refused with a clear
/// error; `require` and `disable` connect, and the service warns at start about what they
/// leave open.
#[test]
fn verify_full_authenticates_the_server_and_refuses_another_name() {
    use tee_risk::internals::store::{PostgresOptions, PostgresStore, StoreError};
    let cluster = pg::shared();
    let url = cluster.create_database();
    let ca = cluster.tls.join("ca.pem");
    let open = |url: &str, ca_file: Option<&Path>| {
        PostgresStore::open(&PostgresOptions {
            url: zeroize::Zeroizing::new(url.to_owned()),
            pool_size: 1,
            timeout: Duration::from_secs(5),
            ca_file: ca_file.map(Path::to_owned),
        })
    };
    let without_rootcert = url.split("&sslrootcert=").next().unwrap().to_owned();
    assert!(without_rootcert.ends_with("sslmode=verify-full"));
    // The CA file from the configuration instead of the URL.
    open(&without_rootcert, Some(&ca)).expect("verify-full with the CA file");

    let refused = |result: Result<PostgresStore, StoreError>| match result {
        Ok(_) => panic!("connected"),
        Err(e) => e.to_string(),
    };
    // The server's certificate names `localhost`, not 127.0.0.1.
    let by_address = without_rootcert.replace("@localhost:", "@127.0.0.1:");
    let error = refused(open(&by_address, Some(&ca)));
    assert!(
        error.contains("NotValidForName") || error.contains("not valid for name"),
        "{error}"
    );
    // Another CA: the chain does not verify.
    let dir = tempfile::tempdir().unwrap();
    support::openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "other.key",
            "-out",
            "other.pem",
            "-days",
            "1",
            "-subj",
            "/CN=other",
        ],
        dir.path(),
    );
    let error = refused(open(&without_rootcert, Some(&dir.path().join("other.pem"))));
    assert!(
        error.contains("UnknownIssuer") || error.contains("unknown issuer"),
        "{error}"
    );
    // verify-full without any CA file is a configuration error, before any connection.
    let error = refused(open(&without_rootcert, None));
    assert!(error.contains("need a CA file"), "{error}");

    // require (encrypted, the server not authenticated) and disable connect; the service
    // says at start what they leave open.
    for (mode, warning) in [
        ("require", "the server is not authenticated"),
        ("disable", "is not encrypted"),
    ] {
        let weak = without_rootcert.replace("verify-full", mode);
        open(&weak, None).unwrap_or_else(|e| panic!("{mode}: {e}"));
        let data = tempfile::tempdir().unwrap();
        let config = postgres_config(data.path(), "");
        let server = replica(data.path(), mode, &weak, &config);
        let log_path = server.stderr_log.clone();
        server.stop_cleanly();
        let log = std::fs::read_to_string(log_path).unwrap();
        assert!(log.contains(warning), "{mode}: {log}");
    }
}

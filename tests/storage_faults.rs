//! Faults of the storage under the real binary: a damaged log, and `db verify` on it.

mod support;

use std::process::Command;

use support::{MASTER_KEY, TestServer, synthetic_face};
use tee_risk::client::FeatureRequest;

fn enrol_request(i: usize) -> FeatureRequest {
    FeatureRequest {
        user_id: format!("user-{i}"),
        features: synthetic_face(i),
        liveness: None,
        device_id: None,
        face_model: None,
    }
}

/// Every file under `dir` with its SM3 (hex), by path.
fn files_under(dir: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, String> {
    let mut files = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            let digest = tee_risk::internals::crypto::sm3_hex(&std::fs::read(&path).unwrap());
            files.insert(path, digest);
        }
    }
    files
}

/// The events of the audit log of the (stopped) store under `data`, checked as a chain.
fn audit_events(data: &std::path::Path) -> Vec<String> {
    let store = tee_risk::internals::store::SledStore::open(&data.join("db")).unwrap();
    tee_risk::internals::store::audit::verify(&store)
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect()
}

fn db(args: &[&str], data: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tee-risk"))
        .arg("db")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env("DB_MASTER_KEY", MASTER_KEY)
        .env_remove("DB_MASTER_KEY_PREVIOUS")
        .env_remove("TEE_RISK_CONFIG")
        .env_remove("TEE_RISK_DEV")
        .output()
        .unwrap()
}

/// A log damaged in its middle after a crash: the engine drops what follows the damage and
/// would open as if whole; the high-water mark beside it says otherwise, so the start is
/// refused and `db verify` fails its check (3), until the operator accepts the loss.
#[test]
fn a_damaged_log_is_refused_never_served_as_if_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (data, keys) = (dir.path().join("data"), dir.path().join("keys"));
    let server = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .start();
    let client = server.client();
    for i in 0..40 {
        client.enroll(&enrol_request(i)).unwrap();
    }
    server.kill();

    // Four bytes in the middle of sled's log.
    let log = data.join("db").join("db");
    let mut bytes = std::fs::read(&log).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 4] {
        *b ^= 0xff;
    }
    std::fs::write(&log, &bytes).unwrap();
    // Damage is evidence: from here until the operator decides, nothing writes to it.
    let found = files_under(&data);

    let (status, stderr) = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .try_start()
        .err()
        .expect("a database that lost acknowledged enrolments is not served");
    assert!(status.is_some_and(|s| !s.success()));
    assert!(
        stderr.contains("behind its high-water mark")
            || stderr.contains("cannot open the database"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("behind its high-water mark").count(),
        1,
        "the cause is said once: {stderr}"
    );
    let verify = db(&["verify"], &data);
    assert_eq!(
        verify.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // `db status` says so (the mark, the store's commits, the verdict) and fails its check;
    // `db backup` refuses to pass the damage off as a backup, or with --force keeps a copy
    // marked as damaged, failing all the same.
    let status = db(&["status"], &data);
    assert_eq!(status.status.code(), Some(3));
    let printed: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(printed["damaged"], true, "{printed}");
    assert!(
        printed["high_water_mark"]["mark"]["commits"]
            .as_u64()
            .unwrap()
            > 0
    );
    let refused = dir.path().join("backup");
    let backup = db(&["backup", refused.to_str().unwrap()], &data);
    assert_eq!(backup.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&backup.stderr).contains("no backup was made"));
    assert!(!refused.join("db").exists());
    let evidence = dir.path().join("evidence");
    let forced = db(&["backup", "--force", evidence.to_str().unwrap()], &data);
    assert_eq!(forced.status.code(), Some(3));
    assert!(evidence.join("DAMAGED-COPY.txt").exists());
    assert!(evidence.join("high-water-mark").exists());
    // (The audit log itself survived this damage: verify-log checks it, and only it.)
    let log = db(&["verify-log"], &data);
    assert!(log.status.code().is_some());
    // Salvage: every record that still proves itself, into a new folder that starts as a
    // whole store (its own mark, an audit entry naming what was lost).
    let salvaged = dir.path().join("salvaged");
    let salvage = db(&["salvage", salvaged.to_str().unwrap()], &data);
    assert!(
        salvage.status.success(),
        "{}",
        String::from_utf8_lossy(&salvage.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&salvage.stdout).unwrap();
    let kept_users = report["kept"]["user_data"].as_u64().unwrap();
    assert!(kept_users > 0 && kept_users < 40, "{report}");
    assert_eq!(
        report["verify"]["problems"],
        serde_json::json!([]),
        "{report}"
    );
    assert!(report["source_mark"]["behind"].is_string(), "{report}");
    assert!(db(&["verify"], &salvaged).status.success());
    assert!(db(&["verify-log"], &salvaged).status.success());
    // The refused start, status, verify, verify-log and both backups left every file under
    // the data folder as they found it: sled's recovery ran on copies only.
    assert!(
        files_under(&data) == found,
        "a command wrote to the damaged store"
    );

    let answers_for = |client: &tee_risk::client::Client| {
        (0..40)
            .filter(|&i| {
                client
                    .assess(&enrol_request(i))
                    .map(|answer| answer.reasons != ["no_enrolment"])
                    .unwrap_or(true)
            })
            .count()
    };
    // The salvaged folder starts as it is (no --accept-data-loss) and answers for every
    // account whose template it kept.
    let server = TestServer::builder(&salvaged, &keys)
        .master_key(MASTER_KEY)
        .start();
    let salvaged_enrolled = answers_for(&server.client());
    assert_eq!(salvaged_enrolled as u64, kept_users);
    server.stop_cleanly();
    let events = audit_events(&salvaged);
    assert!(events.contains(&"salvaged".to_owned()), "{events:?}");

    // The operator accepts the loss: the service serves what is left, and says so in the
    // audit log; the mark now matches the store.
    let server = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .args(&["--accept-data-loss"])
        .start();
    let enrolled = answers_for(&server.client());
    assert!(
        enrolled < 40,
        "the damage did lose enrolments ({enrolled} left)"
    );
    // The salvage kept every account the store still holds after the damage.
    assert_eq!(salvaged_enrolled, enrolled);
    server.stop_cleanly();
    let log = db(&["verify-log"], &data);
    assert!(
        log.status.success(),
        "{}",
        String::from_utf8_lossy(&log.stderr)
    );
    assert!(String::from_utf8_lossy(&log.stdout).contains("audit log intact"));
    assert!(db(&["verify"], &data).status.success());
    TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .start()
        .stop();
    {
        let events = audit_events(&data);
        // The accepted loss, the check that passed afterwards (the failed check before it
        // ran on a copy: a damaged store is not written to, not even to log that).
        assert_eq!(
            events[..2],
            ["data_loss_accepted", "verify_passed"],
            "{events:?}"
        );
    }

    // The latest audit entry removed (a clean stop, then damage): the chain is still a
    // chain, but the mark beside the store knows it was longer.
    {
        let store = tee_risk::internals::store::SledStore::open(&data.join("db")).unwrap();
        use tee_risk::internals::store::{Store, Table};
        let (last, _) = store.last(Table::Audit).unwrap().unwrap();
        store.remove(Table::Audit, &last).unwrap();
        store.flush().unwrap();
    }
    let log = db(&["verify-log"], &data);
    assert_eq!(
        log.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&log.stdout)
    );
    assert!(String::from_utf8_lossy(&log.stderr).contains("high-water mark"));

    // The mark removed beside a store that holds records: the start is refused, naming the
    // mark's path and the ways out; `db status` reports the store as damaged.
    std::fs::remove_file(data.join("high-water-mark")).unwrap();
    let (_, stderr) = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .try_start()
        .err()
        .expect("a populated store without its mark is not served");
    assert!(stderr.contains("high-water-mark is missing"), "{stderr}");
    assert!(stderr.contains("--accept-data-loss"), "{stderr}");
    assert_eq!(db(&["status"], &data).status.code(), Some(3));
}

/// A small tmpfs, unmounted when dropped. Mounting needs root, as CI runs; where it cannot
/// be mounted the test fails rather than pass without having run.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("the mount command");
        assert!(
            status.success(),
            "cannot mount a tmpfs at {} (the full-disk test needs root)",
            path.display()
        );
        Self(path.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

const OPERATOR_TOKEN: &str = "storage-fault-test-token";

/// The real engine on a real full disk: sled on a small tmpfs filled up. Requests get a
/// typed `503 storage_unavailable` with `Retry-After` (never a 500), `/healthz` says the
/// storage is failing, `/metrics` still answers; space freed, the service recovers by itself
/// (no restart) and every acknowledged enrolment is there.
#[test]
fn a_full_disk_is_a_503_and_the_service_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    // The data folder and the server's log (beside it) are both on the full disk: log lines
    // that cannot be written are dropped, never a panic.
    let disk = Tmpfs::mount(&dir.path().join("disk"), "24m");
    let (data, keys) = (disk.0.join("data"), dir.path().join("keys"));
    let server = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .env(&[("TEE_RISK_ADMIN_TOKEN", OPERATOR_TOKEN)])
        .start();
    let client = server.client();
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let health = || {
        let mut answer = agent.get(format!("{}/healthz", server.url)).call().unwrap();
        let status = answer.status().as_u16();
        (status, answer.body_mut().read_to_string().unwrap())
    };
    assert_eq!(health().0, 200);
    client.enroll(&enrol_request(0)).unwrap();

    // Fill the disk but for a little room.
    let filler = disk.0.join("filler");
    let free = {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&disk.0)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    std::fs::write(&filler, vec![0u8; (free - 256 * 1024) as usize]).unwrap();

    let mut acknowledged = vec![0];
    let mut refused = None;
    for i in 1..2000 {
        let (_, body) = client.seal(&enrol_request(i)).unwrap();
        let raw = client.post_raw("/v1/enroll", &body).unwrap();
        match raw.status {
            200 => acknowledged.push(i),
            _ => {
                refused = Some(raw);
                break;
            }
        }
    }
    let refused = refused.expect("the disk filled up");
    assert_eq!(
        support::error_code(&refused),
        (503, "storage_unavailable".into())
    );
    support::openapi::check("POST", "/v1/enroll", 503, "application/json", &refused.body);
    // Later requests too, typed, and quickly: the broken engine is not touched again.
    for i in 2000..2005 {
        let (_, body) = client.seal(&enrol_request(i)).unwrap();
        let raw = client.post_raw("/v1/enroll", &body).unwrap();
        assert_eq!(
            support::error_code(&raw),
            (503, "storage_unavailable".into())
        );
    }
    let (status, body) = health();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("failing"), "{body}");
    support::openapi::check("GET", "/healthz", 503, "application/json", body.as_bytes());
    assert!(
        server
            .metrics(OPERATOR_TOKEN)
            .contains("tee_risk_store_records")
    );

    // Space comes back: readiness returns without a restart, and service resumes.
    std::fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while health().0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery within 20 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let client = server.client();
    client.enroll(&enrol_request(5000)).unwrap();
    acknowledged.push(5000);
    for &i in &acknowledged {
        let answer = client.assess(&enrol_request(i)).unwrap();
        assert_ne!(
            answer.reasons,
            ["no_enrolment"],
            "acknowledged enrolment {i} lost"
        );
    }
    server.stop_cleanly();
}

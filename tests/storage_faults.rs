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
    }
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
    let server = TestServer::start(&data, &keys, Some(MASTER_KEY), &[]);
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

    let (status, stderr) = TestServer::try_start(&data, &keys, Some(MASTER_KEY), &[])
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

    // The operator accepts the loss: the service serves what is left, and says so in the
    // audit log; the mark now matches the store.
    let server = TestServer::start(&data, &keys, Some(MASTER_KEY), &["--accept-data-loss"]);
    let client = server.client();
    let enrolled = (0..40)
        .filter(|&i| {
            client
                .assess(&enrol_request(i))
                .map(|answer| answer["reasons"] != serde_json::json!(["no_enrolment"]))
                .unwrap_or(true)
        })
        .count();
    assert!(
        enrolled < 40,
        "the damage did lose enrolments ({enrolled} left)"
    );
    assert!(server.stop().success());
    let log = db(&["verify-log"], &data);
    assert!(
        log.status.success(),
        "{}",
        String::from_utf8_lossy(&log.stderr)
    );
    assert!(String::from_utf8_lossy(&log.stdout).contains("audit log intact"));
    assert!(db(&["verify"], &data).status.success());
    TestServer::start(&data, &keys, Some(MASTER_KEY), &[]).stop();
    {
        let store = tee_risk::store::SledStore::open(&data.join("db")).unwrap();
        let events: Vec<String> = tee_risk::store::audit::verify(&store)
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        // The failed check, the accepted loss, the check that passed afterwards.
        assert_eq!(
            events[..3],
            ["verify_failed", "data_loss_accepted", "verify_passed"],
            "{events:?}"
        );
    }

    // The latest audit entry removed (a clean stop, then damage): the chain is still a
    // chain, but the mark beside the store knows it was longer.
    {
        let store = tee_risk::store::SledStore::open(&data.join("db")).unwrap();
        use tee_risk::store::{Store, Table};
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
}

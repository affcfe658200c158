//! A start that is refused writes nothing: every check that can refuse runs before the first
//! write (validate and bind first, write last). One test per refusal reason, each comparing
//! the data and keys folders, byte for byte, before and after.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use support::{MASTER_KEY, ServerBuilder, TestServer};

/// Every file under `dir` (relative path → SM3 of its bytes); empty when `dir` is absent.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let name = path.strip_prefix(root).unwrap().display().to_string();
                out.insert(
                    name,
                    tee_risk::internals::crypto::sm3_hex(&std::fs::read(&path).unwrap()),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Starts with `extra` and `env`, expects a refusal whose log says `expected`, and checks
/// that neither folder changed. (Where the refusal comes from the database itself, sled has
/// opened it and may rewrite its own files, `db/`, with the same records: [`refused_by_db`].)
fn refused(
    dir: &Path,
    master_key: Option<&str>,
    extra: &[&str],
    env: &[(&str, &str)],
    expected: &str,
) {
    refused_with(
        dir,
        |server| server.master_key_opt(master_key).args(extra).env(env),
        expected,
        |_| true,
    )
}

/// [`refused`] for a refusal by the database: everything but sled's own files must be as it
/// was, and the records are checked by opening the vault afterwards.
fn refused_by_db(dir: &Path, master_key: Option<&str>, expected: &str) {
    refused_with(
        dir,
        |server| server.master_key_opt(master_key),
        expected,
        |path| !path.starts_with("db/"),
    )
}

/// A start configured by `server` must be refused with `expected` in its log, leaving the
/// files `compared` selects as they were.
fn refused_with(
    dir: &Path,
    server: impl FnOnce(ServerBuilder) -> ServerBuilder,
    expected: &str,
    compared: impl Fn(&str) -> bool,
) {
    let (data, keys) = (dir.join("data"), dir.join("keys"));
    let snapshot = |dir: &Path| {
        let mut files = snapshot(dir);
        files.retain(|path, _| compared(path));
        files
    };
    let before = (snapshot(&data), snapshot(&keys));
    let (status, log) = server(TestServer::builder(&data, &keys))
        .try_start()
        .err()
        .unwrap_or_else(|| panic!("the start must be refused ({expected})"));
    assert!(status.is_some_and(|s| !s.success()), "{log}");
    assert!(log.contains(expected), "expected `{expected}` in:\n{log}");
    assert_eq!(
        (snapshot(&data), snapshot(&keys)),
        before,
        "a refused start ({expected}) changed the folders"
    );
}

#[test]
fn a_refused_start_leaves_the_data_and_keys_folders_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let (data, keys) = (dir.path().join("data"), dir.path().join("keys"));

    // Nothing yet: no master key, no clients, a bad value.
    refused(dir.path(), None, &[], &[], "DB_MASTER_KEY is not set");
    refused_with(
        dir.path(),
        |server| server.master_key(MASTER_KEY).without_test_client(),
        "no clients registered",
        |_| true,
    );
    refused(dir.path(), Some("not hex"), &[], &[], "DB_MASTER_KEY");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[risk]\nmax_templates = 0\n").unwrap();
    refused(
        dir.path(),
        Some(MASTER_KEY),
        &["--config", bad.to_str().unwrap()],
        &[],
        "risk.max_templates",
    );
    assert!(!data.exists() && !keys.exists(), "nothing was created");

    // A production database exists and runs.
    let running = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .start();
    let identity = std::fs::read(keys.join("identity.pub.pem")).unwrap();

    // A second start on the same port: refused before it writes its keys over the running
    // service's (clients that pinned them would reject the running service).
    let port = running.url.trim_start_matches("http://").to_owned();
    let (status, log) = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .args(&["--listen", &port])
        .try_start()
        .err()
        .expect("the port is taken");
    assert!(status.is_some_and(|s| !s.success()));
    assert!(log.contains("cannot listen on"), "{log}");
    assert_eq!(
        std::fs::read(keys.join("identity.pub.pem")).unwrap(),
        identity
    );
    assert!(
        !data
            .join(tee_risk::internals::app::secrets::DEV_KEY_FILE)
            .exists()
    );
    running.stop();

    // Stopped: dev mode pointed at the production folder leaves no dev key behind, and a
    // wrong master key, no clients, or a taken port change nothing.
    refused(
        dir.path(),
        None,
        &["--dev"],
        &[],
        "was not created in dev mode",
    );
    let counts = || {
        support::open_vault(&data, MASTER_KEY)
            .unwrap()
            .verify_all()
            .unwrap()
    };
    let records = counts();
    refused_by_db(
        dir.path(),
        Some(&"ab".repeat(32)),
        "does not match this database",
    );
    assert_eq!(counts(), records);
    refused_with(
        dir.path(),
        |server| server.master_key(MASTER_KEY).without_test_client(),
        "no clients registered",
        |_| true,
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    refused(
        dir.path(),
        Some(MASTER_KEY),
        &["--listen", &taken_addr],
        &[],
        "cannot listen on",
    );
    // And the folder still serves with its key.
    TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .start()
        .stop();
}

/// An error opening the database gives its real cause, not a guess that another service
/// holds it.
#[test]
fn a_database_that_cannot_open_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (data, keys) = (dir.path().join("data"), dir.path().join("keys"));
    std::fs::create_dir_all(&data).unwrap();
    // The store's folder is a file.
    std::fs::write(data.join("db"), b"not a folder").unwrap();
    let (_, log) = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .try_start()
        .err()
        .expect("refused");
    assert!(log.contains("cannot open the database"), "{log}");
    assert!(!log.contains("running service"), "{log}");
    // A database held by a running service is named as such.
    std::fs::remove_file(data.join("db")).unwrap();
    let running = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .start();
    let held = Command::new(env!("CARGO_BIN_EXE_tee-risk"))
        .args(["db", "status", "--data-dir"])
        .arg(&data)
        .env("DB_MASTER_KEY", MASTER_KEY)
        .output()
        .unwrap();
    assert!(!held.status.success());
    assert!(String::from_utf8_lossy(&held.stderr).contains("a running service holds it"));
    running.stop();
}

/// The listening line means "ready, and stoppable": a SIGTERM sent the moment it appears
/// drains and exits 0 (the signal handlers are installed before the line is printed; a
/// SIGTERM that beat them would kill the process by the default action).
#[test]
fn a_sigterm_right_after_the_listening_line_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (data, keys) = (dir.path().join("data"), dir.path().join("keys"));
    for _ in 0..10 {
        TestServer::builder(&data, &keys)
            .master_key(MASTER_KEY)
            .start()
            .stop_cleanly();
    }
}

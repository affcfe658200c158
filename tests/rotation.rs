//! Master-key rotation against the real binary: online under load with 100,000 records,
//! SIGKILL at random points during rotation, and the operator commands with their exit codes.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{TestServer, dev_dataset, synthetic_face};
use tee_risk::client::{Client, FeatureRequest};
use tee_risk::internals::lab::new_capture;
use tee_risk::internals::store::keys::MasterKey;
use tee_risk::internals::store::{OpenMode, SledStore, Store, Table, Vault};

const OLD_KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const NEW_KEY: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const ADMIN_TOKEN: &str = "operator-token-for-tests";

fn key_id(hex: &str) -> String {
    support::master_key(hex).key_id().to_string()
}

fn open(data: &Path, current: &str, previous: &[&str]) -> Vault {
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&data.join("db")).unwrap());
    let previous: Vec<MasterKey> = previous.iter().map(|k| support::master_key(k)).collect();
    Vault::open_keyring(
        store,
        &support::master_key(current),
        &previous,
        OpenMode::Write,
    )
    .unwrap()
}

/// `users` users with one real dev-set template each, then accepted assessments (a risk
/// log and a history entry each) until the data tables hold `records` records.
fn seed(data: &Path, users: usize, records: usize) -> Vec<(String, Vec<f32>)> {
    let faces = dev_dataset();
    let people: Vec<(String, Vec<f32>)> = (0..users)
        .map(|i| {
            let features = faces.samples[i % faces.samples.len()].embedding.clone();
            (format!("user-{i}"), features)
        })
        .collect();
    support::seed_store(
        data,
        &support::master_key(OLD_KEY),
        &people,
        (records - users) / 2,
    );
    people
}

fn start(data: &Path, previous: Option<&str>) -> TestServer {
    let mut env = vec![("TEE_RISK_ADMIN_TOKEN", ADMIN_TOKEN)];
    if let Some(previous) = previous {
        env.push(("DB_MASTER_KEY_PREVIOUS", previous));
    }
    TestServer::builder(data, &data.join("../keys"))
        .master_key(NEW_KEY)
        .env(&env)
        .try_start()
        .unwrap_or_else(|(status, log)| panic!("server did not start ({status:?}):\n{log}"))
}

fn status(server: &TestServer) -> Value {
    let text = ureq::get(format!("{}/admin/db/status", server.url))
        .header("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn db(data: &Path, args: &[&str], current: &str, previous: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tee-risk"));
    command
        .arg("db")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env("DB_MASTER_KEY", current)
        .env_remove("DB_MASTER_KEY_PREVIOUS")
        .env_remove("TEE_RISK_CONFIG")
        .env("RUST_LOG", "warn");
    if let Some(previous) = previous {
        command.env("DB_MASTER_KEY_PREVIOUS", previous);
    }
    command.output().unwrap()
}

fn stdout_json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "not JSON: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Every record decrypts under the new key alone; counts per table.
fn counts_under_new_key(data: &Path) -> (usize, usize, usize) {
    let vault = open(data, NEW_KEY, &[]);
    let counts = vault.verify_all().unwrap();
    (counts.user_data, counts.feature_history, counts.risk_logs)
}

#[test]
fn online_rotation_of_100k_records_under_load_loses_nothing() {
    const USERS: usize = 1_000;
    const RECORDS: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let people = seed(&data, USERS, RECORDS);
    let seeded_history = (RECORDS - USERS) / 2;

    let server = start(&data, Some(OLD_KEY));
    let keys = Client::fetch_keys(&server.url).unwrap().keys().clone();
    let wrong_token = ureq::get(format!("{}/admin/db/status", server.url))
        .header("Authorization", "Bearer not-the-token")
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    assert_eq!(wrong_token.status().as_u16(), 401);
    let rotating = AtomicBool::new(true);
    let started = Instant::now();
    // Clients keep assessing seeded users and enrolling new ones until rotation completes.
    let acknowledged: Vec<(String, String)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let (keys, people, rotating, server) = (&keys, &people, &rotating, &server);
                scope.spawn(move || {
                    let client = server.client_with_keys(keys.clone());
                    let mut acked = Vec::new();
                    let mut i = 0;
                    while rotating.load(Ordering::Relaxed) {
                        let (path, user, features) = if i % 5 == 4 {
                            // A face of its own: a seeded person's face would be an
                            // identity conflict.
                            (
                                "/v1/enroll",
                                format!("new-{t}-{i}"),
                                synthetic_face(t * 1_000_000 + i),
                            )
                        } else {
                            let (id, f) = &people[(t * 7919 + i) % people.len()];
                            ("/v1/assess", id.clone(), new_capture(f, t * 100_000 + i))
                        };
                        let request = FeatureRequest {
                            user_id: user.clone(),
                            features,
                            liveness: Some(0.9),
                            device_id: None,
                            face_model: None,
                        };
                        let answer: serde_json::Value = client.send(path, &request).unwrap();
                        // (what happened, user or rid): "enrolled" / "identity_conflict"
                        // for enrolments, "assess" + the decision for assessments.
                        let what = if path == "/v1/enroll" {
                            answer["outcome"].as_str().unwrap().to_owned()
                        } else {
                            format!("assess:{}", answer["decision"].as_str().unwrap())
                        };
                        acked.push((what, {
                            if path == "/v1/enroll" {
                                user
                            } else {
                                // The test's people share dev faces across accounts (an
                                // identity conflict by construction): any decision will do,
                                // what counts is that it is answered and kept.
                                assert!(answer["decision"].is_string(), "{answer}");
                                answer["rid"].as_str().unwrap().to_owned()
                            }
                        }));
                        i += 1;
                    }
                    acked
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let status = status(&server);
            if !status["rotation"]["completed_at"].is_null() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "rotation did not finish: {status}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        rotating.store(false, Ordering::Relaxed);
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let final_status = status(&server);
    server.stop_cleanly();

    let assessed: Vec<&String> = acknowledged
        .iter()
        .filter(|(op, _)| op.starts_with("assess"))
        .map(|(_, rid)| rid)
        .collect();
    // Only enrolments without an identity conflict are stored; only allowed probes join
    // the history.
    let enrolled = acknowledged
        .iter()
        .filter(|(op, _)| op == "enrolled")
        .count();
    let allowed = acknowledged
        .iter()
        .filter(|(op, _)| op == "assess:allow")
        .count();
    assert!(
        !assessed.is_empty() && enrolled > 0,
        "requests ran during rotation"
    );
    println!(
        "rotated {RECORDS} records in {seconds:.1} s ({:.0} records/s) while answering {} \
         requests",
        RECORDS as f64 / seconds,
        acknowledged.len()
    );

    // Nothing lost, nothing left under the old key: the new key alone opens every record.
    let (user_data, history, logs) = counts_under_new_key(&data);
    assert_eq!(user_data, USERS + enrolled);
    assert_eq!(history, seeded_history + allowed);
    assert_eq!(logs, seeded_history + assessed.len());
    let vault = open(&data, NEW_KEY, &[]);
    let logged: HashSet<String> = vault
        .risk_logs()
        .unwrap()
        .into_iter()
        .map(|l| l.rid.clone())
        .collect();
    for rid in &assessed {
        assert!(logged.contains(*rid), "acknowledged assessment {rid} lost");
    }
    for (op, user) in &acknowledged {
        if op == "enrolled" {
            assert_eq!(vault.templates(&vault.user(user), user).unwrap().len(), 1);
        }
    }
    for (id, features) in people.iter().step_by(97) {
        let templates = vault.templates(&vault.user(id), id).unwrap();
        assert_eq!(&templates[0][..], &features[..], "{id} re-indexed");
    }
    let at_start = &final_status["rotation"]["counts_at_start"];
    assert_eq!(at_start["risk_logs"], seeded_history);
    drop(vault);

    // Operator steps: verify, retire, and the retired key is refused from then on.
    let verify = db(&data, &["verify"], NEW_KEY, None);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert_eq!(stdout_json(&verify)["under_old_keys"], 0);
    let retire = db(
        &data,
        &["retire-key", &key_id(OLD_KEY)],
        NEW_KEY,
        Some(OLD_KEY),
    );
    assert!(
        retire.status.success(),
        "{}",
        String::from_utf8_lossy(&retire.stderr)
    );
    let again = db(&data, &["retire-key", &key_id(OLD_KEY)], NEW_KEY, None);
    assert!(again.status.success(), "re-running is harmless");
    let refused = TestServer::builder(&data, &dir.path().join("keys"))
        .master_key(NEW_KEY)
        .env(&[("DB_MASTER_KEY_PREVIOUS", OLD_KEY)])
        .try_start()
        .err()
        .expect("a retired key is refused");
    assert!(refused.1.contains("was retired"), "{}", refused.1);
    let log = db(&data, &["verify-log"], NEW_KEY, None);
    assert!(log.status.success());
    assert!(String::from_utf8_lossy(&log.stdout).contains("audit log intact"));
    let status = stdout_json(&db(&data, &["status"], NEW_KEY, None));
    let states: BTreeMap<String, String> = status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["id"].as_str().unwrap().to_owned(),
                k["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(states[&key_id(OLD_KEY)], "retired");
    assert_eq!(states[&key_id(NEW_KEY)], "active");
}

/// A small deterministic generator for kill delays (no extra dependency).
struct Lcg(u64);

impl Lcg {
    fn next_below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[test]
fn sigkill_at_random_points_during_rotation_loses_and_duplicates_nothing() {
    const USERS: usize = 6_000;
    const RECORDS: usize = 60_000;
    const KILLS: usize = 22;
    const SWEEPS: [&str; 3] = ["user_data", "feature_history", "risk_logs"];
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let people = seed(&data, USERS, RECORDS);
    let seeded_history = (RECORDS - USERS) / 2;

    let seed_value = std::env::var("KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("kill delays seeded with KILL_SEED={seed_value} (set it to replay)");
    let mut random = Lcg(seed_value);
    let mut kills_during_rotation = 0;
    let mut tables_hit = HashSet::new();
    let mut last_moved = 0;
    const ERASED: [&str; 2] = ["user-0", "user-5999"];
    // Seeded history entries n go to user n % USERS: user-0 has 5, user-5999 has 4.
    const ERASED_HISTORY: usize = 9;
    let mut erased_at = None;
    // Kill until at least KILLS kills have landed mid-rotation, in every table's phase.
    for _ in 0..KILLS * 10 {
        if kills_during_rotation >= KILLS && SWEEPS.iter().all(|t| tables_hit.contains(t)) {
            break;
        }
        let server = start(&data, Some(OLD_KEY));
        // Once the sweep is under way, two users are erased in the middle of it: one whose
        // record the sweep has probably moved already, one it has not reached.
        if erased_at.is_none() && last_moved > 0 {
            let client = server.client();
            for user in ERASED {
                let answer = client.erase(user).unwrap();
                assert_eq!(answer.erased.templates, 1, "{answer}");
            }
            erased_at = Some(last_moved);
        }
        // Anywhere in the first 105 ms after the listening line: the rotation moves about
        // 20,000 records a second here (each batch also advances the high-water mark), so
        // dozens of kills land inside it. (With a 165 ms window about one run in two ended
        // the sweep in 16 to 19 kills, short of the 20 asked for, on the old code as well.)
        let delay = 5 + random.next_below(100);
        std::thread::sleep(Duration::from_millis(delay));
        server.kill();
        // Inspect the state the crash left: it must open, and progress never goes back.
        let store: Arc<dyn Store> = Arc::new(SledStore::open(&data.join("db")).unwrap());
        let vault = Vault::open_keyring(
            store,
            &support::master_key(NEW_KEY),
            &[support::master_key(OLD_KEY)],
            OpenMode::Inspect,
        )
        .unwrap();
        let Some(rotation) = vault.registry_snapshot().rotation else {
            continue;
        };
        assert!(rotation.moved >= last_moved);
        last_moved = rotation.moved;
        if rotation.completed_at.is_some() {
            break;
        }
        kills_during_rotation += 1;
        // Tables are swept in order (users, then history, then logs), so the records moved
        // so far tell which table's sweep the kill interrupted.
        let phase = match rotation.moved as usize {
            0 => "startup",
            n if n < USERS => "user_data",
            n if n < USERS + seeded_history => "feature_history",
            _ => "risk_logs",
        };
        tables_hit.insert(phase);
    }
    println!(
        "{kills_during_rotation} kills landed during the rotation (in {tables_hit:?}), \
         {last_moved} records moved by the last; {ERASED:?} erased after {erased_at:?} moved"
    );
    assert!(erased_at.is_some(), "the erasure ran during the rotation");
    assert!(
        kills_during_rotation >= 20,
        "too few kills landed mid-rotation"
    );
    for table in SWEEPS {
        assert!(
            tables_hit.contains(table),
            "no kill during the {table} sweep"
        );
    }

    let server = start(&data, Some(OLD_KEY));
    let deadline = Instant::now() + Duration::from_secs(300);
    while status(&server)["rotation"]["completed_at"].is_null() {
        assert!(Instant::now() < deadline, "rotation did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    server.stop_cleanly();

    // Exact counts: nothing lost, nothing duplicated, everything under the new key; of the
    // erased users nothing but their scrubbed log entries.
    assert_eq!(
        counts_under_new_key(&data),
        (
            USERS - ERASED.len(),
            seeded_history - ERASED_HISTORY,
            seeded_history
        )
    );
    let vault = open(&data, NEW_KEY, &[]);
    for (id, features) in &people {
        let templates = vault.templates(&vault.user(id), id).unwrap();
        if ERASED.contains(&id.as_str()) {
            assert!(templates.is_empty(), "{id} was erased");
            continue;
        }
        assert_eq!(templates.len(), 1, "{id}");
        assert_eq!(&templates[0][..], &features[..]);
    }
    let logs = vault.risk_logs().unwrap();
    let rids: HashSet<String> = logs.iter().map(|l| l.rid.clone()).collect();
    assert_eq!(rids.len(), seeded_history);
    for log in &logs {
        let n: usize = log.rid.trim_start_matches("seed-").parse().unwrap();
        let person = &people[n % USERS].0;
        if ERASED.contains(&person.as_str()) {
            assert_eq!(log.user, "erased", "{}", log.rid);
            assert!(
                log.features.is_empty() && log.device_id.is_none(),
                "{}",
                log.rid
            );
        } else {
            assert!(!log.features.is_empty(), "{} kept its features", log.rid);
        }
    }
    drop(vault);
    let verify = db(&data, &["verify"], NEW_KEY, None);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[test]
fn offline_commands_dry_run_rotate_verify_and_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    seed(&data, 10, 30);

    let dry = db(&data, &["rotate", "--dry-run"], NEW_KEY, Some(OLD_KEY));
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let dry = stdout_json(&dry);
    assert_eq!(dry["would_move"]["user_data"], 10);
    assert_eq!(dry["would_move"]["feature_history"], 10);
    assert_eq!(dry["would_move"]["risk_logs"], 10);
    // The dry run registered nothing: the old key alone still opens the database.
    let still_old = db(&data, &["status"], OLD_KEY, None);
    assert!(still_old.status.success());

    let retire_active = db(&data, &["retire-key", &key_id(OLD_KEY)], OLD_KEY, None);
    assert_eq!(retire_active.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&retire_active.stderr).contains("active key"));

    let rotate = db(&data, &["rotate"], NEW_KEY, Some(OLD_KEY));
    assert!(
        rotate.status.success(),
        "{}",
        String::from_utf8_lossy(&rotate.stderr)
    );
    assert_eq!(stdout_json(&rotate)["moved"], 30);
    let again = db(&data, &["rotate"], NEW_KEY, Some(OLD_KEY));
    assert_eq!(stdout_json(&again)["moved"], 0, "re-running is harmless");

    let backup_dir = dir.path().join("backup");
    let backup = db(
        &data,
        &["backup", backup_dir.to_str().unwrap()],
        NEW_KEY,
        None,
    );
    assert!(
        backup.status.success(),
        "{}",
        String::from_utf8_lossy(&backup.stderr)
    );
    assert_eq!(stdout_json(&backup)["risk_logs"], 10);
    let not_empty = db(
        &data,
        &["backup", backup_dir.to_str().unwrap()],
        NEW_KEY,
        None,
    );
    assert_eq!(not_empty.status.code(), Some(1));

    // Tampering with the audit log is detected (exit 3).
    {
        let store = SledStore::open(&data.join("db")).unwrap();
        let (key, value) = store.scan(Table::Audit).unwrap().remove(0);
        let edited = String::from_utf8(value)
            .unwrap()
            .replace("rotation_started", "nothing_here");
        store
            .insert(Table::Audit, &key, edited.into_bytes())
            .unwrap();
        store.flush().unwrap();
    }
    let log = db(&data, &["verify-log"], NEW_KEY, None);
    assert_eq!(log.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&log.stderr).contains("audit entry 0 is broken"));

    // A record removed behind the service's back: verify fails with exit 3.
    {
        let store = SledStore::open(&data.join("db")).unwrap();
        let (key, _) = store.scan(Table::RiskLogs).unwrap().remove(0);
        store.remove(Table::RiskLogs, &key).unwrap();
        store.flush().unwrap();
    }
    let verify = db(&data, &["verify"], NEW_KEY, None);
    assert_eq!(verify.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("fewer than the 10"));
    // And with the verification failing, the old key cannot be retired (exit 4).
    let retire = db(&data, &["retire-key", &key_id(OLD_KEY)], NEW_KEY, None);
    assert_eq!(retire.status.code(), Some(4));
    assert!(
        String::from_utf8_lossy(&retire.stderr).contains("fewer than the 10"),
        "{}",
        String::from_utf8_lossy(&retire.stderr)
    );
    let status = stdout_json(&db(&data, &["status"], NEW_KEY, Some(OLD_KEY)));
    assert!(
        status.to_string().contains("decrypt_only"),
        "the old key is still decrypt-only: {status}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A backup taken before a rotation restores: after the rotation and the old key's
/// retirement, the backup (sealed under the old key) is put back in the data folder as the
/// runbook says, the start is refused because the store is behind its high-water mark (sealed
/// under the new key, which this start does not hold), and with `--accept-data-loss` the
/// service starts on the old key and recognises a seeded user.
#[test]
fn a_pre_rotation_backup_restores_and_recognises_its_users() {
    let dir = tempfile::tempdir().unwrap();
    let (data, keys) = (dir.path().join("data"), dir.path().join("keys"));
    let people = seed(&data, 10, 30);
    let backup_dir = dir.path().join("backup");
    let backup = db(
        &data,
        &["backup", backup_dir.to_str().unwrap()],
        OLD_KEY,
        None,
    );
    assert!(
        backup.status.success(),
        "{}",
        String::from_utf8_lossy(&backup.stderr)
    );
    assert_eq!(stdout_json(&backup)["user_data"], 10);

    let rotate = db(&data, &["rotate"], NEW_KEY, Some(OLD_KEY));
    assert!(
        rotate.status.success(),
        "{}",
        String::from_utf8_lossy(&rotate.stderr)
    );
    let retire = db(&data, &["retire-key", &key_id(OLD_KEY)], NEW_KEY, None);
    assert!(
        retire.status.success(),
        "{}",
        String::from_utf8_lossy(&retire.stderr)
    );
    assert!(!db(&data, &["status"], OLD_KEY, None).status.success());

    // Restore: the backup's store replaces the data folder's.
    std::fs::remove_dir_all(data.join("db")).unwrap();
    copy_dir(&backup_dir.join("db"), &data.join("db"));
    let (_, log) = TestServer::builder(&data, &keys)
        .master_key(OLD_KEY)
        .try_start()
        .err()
        .expect("a restored backup is behind the high-water mark");
    assert!(log.contains("high-water mark"), "{log}");
    let server = TestServer::builder(&data, &keys)
        .master_key(OLD_KEY)
        .args(&["--accept-data-loss"])
        .start();
    let (user, face) = &people[3];
    let answer = server
        .client()
        .assess(&support::request(user, &new_capture(face, 1)))
        .unwrap();
    // Recognised: her template is there and matches (the ten seeded users are one person's
    // ten photographs, so the others are named as conflicts).
    let reasons = &answer.reasons;
    for absent in ["no_enrolment", "no_match", "weak_match"] {
        assert!(!reasons.iter().any(|r| r == absent), "{answer}");
    }
    server.stop_cleanly();
    let verify = db(&data, &["verify"], OLD_KEY, None);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

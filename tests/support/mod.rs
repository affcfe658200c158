//! The one support module of the tests and the benches (`benches/*.rs` include it with
//! `#[path]`): start the real `tee-risk` binary on a loopback port, the dev embeddings, the
//! test master key and client, OpenSSL helpers.
#![allow(dead_code)]

pub mod openapi;
pub mod pg;
pub mod wire;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use tee_risk::client::{Client, FeatureRequest, RawResponse, ServerKeys};
use tee_risk::internals::app::config::Config;
use tee_risk::internals::app::server::{LISTENING_PREFIX, OPERATOR_LISTENING_PREFIX};
use tee_risk::internals::lab::Dataset;
use tee_risk::internals::risk::{self, Decision};
use tee_risk::internals::store::{MasterKey, SledStore, Store, Vault};
use tee_risk::protocol::client_auth::ClientCredential;

pub const MASTER_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// A config file (in `dir`) that switches the rate limits off, for tests that send many
/// requests for one user on purpose.
pub fn unlimited_config(dir: &Path) -> String {
    let path = dir.join("unlimited.toml");
    std::fs::write(
        &path,
        "[limits]\nclient_per_minute = 0\nuser_per_minute = 0\n",
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

/// Where the development embeddings are (`../shared` beside the repository; CI has it).
pub fn dev_dataset_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/faces/lfw_dlib128_dev.json")
}

/// The impostor-only distractors (one photo each, identities in no other file) that the
/// shipped calibration's tail is also fitted on.
#[allow(dead_code)]
pub fn distractors_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/faces/lfw_dlib128_distractors.json")
}

/// A file of the shared face embeddings (`lfw_<model>_<split>.json`), e.g.
/// `shared_faces("mobilefacenet192", "dev")`.
#[allow(dead_code)]
pub fn shared_faces(model: &str, split: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../shared/data/faces/lfw_{model}_{split}.json"))
}

/// The development embeddings (never the holdout file).
pub fn dev_dataset() -> Dataset {
    Dataset::load(&dev_dataset_path())
        .expect("../shared/data/faces/lfw_dlib128_dev.json is readable")
}

/// A master key from 64 hex digits (test keys only).
pub fn master_key(hex: &str) -> MasterKey {
    MasterKey::from_hex(hex).expect("64 hex digits")
}

/// Fills a stopped node's sled store (`data/db`) through the vault under `master`, as the
/// service writes it: one enrolment per person, then `logs` accepted assessments cycling
/// over them (risk log `seed-{n}` is person `n % people.len()`'s), with the store's
/// high-water mark beside it. For sweeps that take seconds.
pub fn seed_store(data: &Path, master: &MasterKey, people: &[(String, Vec<f32>)], logs: usize) {
    use tee_risk::internals::store::{LEGACY_FACE_MODEL, OpenMode, RiskLogEntry};
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&data.join("db")).unwrap());
    let mut vault = Vault::open_keyring(store, master, &[], OpenMode::Write).unwrap();
    vault.keep_high_water_mark(data, false).unwrap();
    for (id, features) in people {
        vault.enrol(&vault.user(id), id, features, 1, 5).unwrap();
    }
    for n in 0..logs {
        let (id, features) = &people[n % people.len()];
        let user = vault.user(id);
        let log = RiskLogEntry {
            rid: format!("seed-{n}"),
            at: 1,
            user: hex::encode(user.current()),
            decision: "allow".into(),
            score: 0.0,
            reasons: vec![],
            model: "seed".into(),
            face_model: LEGACY_FACE_MODEL.into(),
            features: features.clone(),
            liveness: None,
            device_id: None,
        };
        vault.record_assessment(user.current(), &log, true).unwrap();
    }
    vault.flush().unwrap();
    vault.sync_high_water_mark().unwrap();
}

pub struct TestServer {
    child: Option<Child>,
    pub url: String,
    pub stderr_log: PathBuf,
    /// The registered test client ("test", every permission).
    pub credential: Arc<ClientCredential>,
    /// The operator listener, when one was configured.
    pub operator_url: Option<String>,
}

/// The test client of a data folder: its key is kept beside the folder, so it survives
/// restarts; the clients file registering it is passed with `--clients`.
fn test_client(data_dir: &Path) -> (Arc<ClientCredential>, PathBuf) {
    let key_file = data_dir.with_extension("client-key.hex");
    let key = tee_risk::internals::crypto::keyfile::load_or_create_sm2_key(&key_file)
        .expect("test client key");
    let clients_file = data_dir.with_extension("clients.toml");
    std::fs::write(
        &clients_file,
        format!(
            "[[client]]\nid = \"test\"\npermissions = [\"enroll\", \"assess\", \"erase\", \"identify\"]\n\
             public_key = \"\"\"\n{}\"\"\"\n",
            key.public().to_pem()
        ),
    )
    .unwrap();
    (
        Arc::new(ClientCredential::new(
            "test",
            tee_risk::internals::crypto::keyfile::load_sm2_key(&key_file).unwrap(),
        )),
        clients_file,
    )
}

/// How to start a [`TestServer`]: its folders, then what differs from the defaults (no
/// master key, no extra arguments or environment, the test client registered).
#[must_use]
pub struct ServerBuilder {
    data_dir: PathBuf,
    keys_dir: PathBuf,
    master_key: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    test_client: bool,
}

#[allow(dead_code)]
impl ServerBuilder {
    /// `DB_MASTER_KEY` (64 hex digits; tests of refusals pass anything).
    pub fn master_key(mut self, hex: &str) -> Self {
        self.master_key = Some(hex.to_owned());
        self
    }

    /// `DB_MASTER_KEY`, or none.
    pub fn master_key_opt(mut self, hex: Option<&str>) -> Self {
        self.master_key = hex.map(str::to_owned);
        self
    }

    /// More arguments to `tee-risk serve`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// More environment variables.
    pub fn env(mut self, env: &[(&str, &str)]) -> Self {
        self.env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// Start without registering the test client (no `--clients` file of ours).
    pub fn without_test_client(mut self) -> Self {
        self.test_client = false;
        self
    }

    /// Starts the server, or panics with its stderr.
    pub fn start(self) -> TestServer {
        self.try_start()
            .unwrap_or_else(|(status, log)| panic!("server did not start ({status:?}):\n{log}"))
    }

    /// Starts the server; on failure returns its exit status and stderr.
    pub fn try_start(self) -> Result<TestServer, (Option<ExitStatus>, String)> {
        TestServer::launch(self)
    }
}

/// A server process; stopped with SIGTERM (or killed) when dropped.
impl TestServer {
    /// A server on these folders: say what differs from the defaults, then `start()`.
    pub fn builder(data_dir: &Path, keys_dir: &Path) -> ServerBuilder {
        ServerBuilder {
            data_dir: data_dir.to_owned(),
            keys_dir: keys_dir.to_owned(),
            master_key: None,
            args: Vec::new(),
            env: Vec::new(),
            test_client: true,
        }
    }

    /// A server on a fresh `data` and `keys` under `dir`, with the test master key and a
    /// config file (in `dir`) holding `overrides` over the defaults.
    /// A server in `dir` for 1:N tests: the clients of `clients` (id, permissions as TOML
    /// list items, key), no enrolment conflict check (galleries enrol look-alikes on
    /// purpose) and no rate limits (they enrol users by the thousand).
    #[allow(dead_code)]
    pub fn start_gallery(
        dir: &Path,
        clients: &[(&str, &str, &tee_risk::internals::crypto::sm2::PublicKey)],
    ) -> Self {
        let file = dir.join("clients.toml");
        let entries: String = clients
            .iter()
            .map(|(id, permissions, key)| {
                format!(
                    "[[client]]\nid = \"{id}\"\npermissions = [{permissions}]\npublic_key = \
                     \"\"\"\n{}\"\"\"\n\n",
                    key.to_pem()
                )
            })
            .collect();
        std::fs::write(&file, entries).unwrap();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            "[risk]\nenrolment_conflict_max_fmr = 1e-300\n[limits]\nuser_per_minute = 0\n\
             client_per_minute = 0\n",
        )
        .unwrap();
        Self::builder(&dir.join("data"), &dir.join("keys"))
            .master_key(MASTER_KEY)
            .args(&[
                "--clients",
                file.to_str().unwrap(),
                "--config",
                config.to_str().unwrap(),
            ])
            .without_test_client()
            .start()
    }

    pub fn start_with_config(dir: &Path, overrides: &str) -> Self {
        let config = dir.join("overrides.toml");
        std::fs::write(&config, overrides).unwrap();
        Self::builder(&dir.join("data"), &dir.join("keys"))
            .master_key(MASTER_KEY)
            .args(&["--config", config.to_str().unwrap()])
            .start()
    }

    fn launch(options: ServerBuilder) -> Result<Self, (Option<ExitStatus>, String)> {
        let ServerBuilder {
            data_dir,
            keys_dir,
            master_key,
            args: extra,
            env,
            test_client: register_client,
        } = options;
        let (data_dir, keys_dir) = (data_dir.as_path(), keys_dir.as_path());
        let stderr_log = data_dir.with_extension(format!(
            "{}.stderr.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let (credential, clients_file) = test_client(data_dir);
        let mut command = Command::new(env!("CARGO_BIN_EXE_tee-risk"));
        command.arg("serve");
        // Any free port, unless the test names one.
        if !extra.iter().any(|a| a == "--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--keys-dir")
            .arg(keys_dir)
            .args(&extra)
            .env_remove("DB_MASTER_KEY")
            .env_remove("TEE_RISK_DEV")
            .env_remove("TEE_RISK_CONFIG")
            .env_remove("DB_MASTER_KEY_PREVIOUS")
            .env_remove("TEE_RISK_ADMIN_TOKEN")
            .env_remove("TEE_RISK_CLIENTS")
            .env_remove("TEE_RISK_DATABASE_URL")
            .env("RUST_LOG", "info")
            .envs(env)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).unwrap());
        if let Some(key) = master_key {
            command.env("DB_MASTER_KEY", key);
        }
        if register_client {
            command.arg("--clients").arg(&clients_file);
        }
        let mut child = command.spawn().expect("spawn tee-risk");
        kill_when_this_process_ends(child.id());
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let operator = Arc::new(std::sync::Mutex::new(None));
        let operator_seen = operator.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix(OPERATOR_LISTENING_PREFIX) {
                    *operator_seen.lock().unwrap() = Some(format!("http://{addr}"));
                }
                if let Some(addr) = line.strip_prefix(LISTENING_PREFIX) {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(addr) = rx.try_recv() {
                // The operator address, if any, was printed (and read) before.
                let operator_url = operator.lock().unwrap().clone();
                return Ok(Self {
                    operator_url,
                    child: Some(child),
                    url: format!("http://{addr}"),
                    stderr_log,
                    credential,
                });
            }
            if let Some(status) = child.try_wait().unwrap() {
                return Err((
                    Some(status),
                    std::fs::read_to_string(&stderr_log).unwrap_or_default(),
                ));
            }
            if Instant::now() > deadline {
                child.kill().ok();
                return Err((
                    None,
                    std::fs::read_to_string(&stderr_log).unwrap_or_default(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client of this server that trusts the keys it presents and signs as the test client.
    pub fn client(&self) -> Client {
        Client::fetch_keys(&self.url)
            .expect("GET /v1/keys")
            .with_credential(self.credential.clone())
    }

    /// A client with `keys`, signing as the test client.
    pub fn client_with_keys(&self, keys: ServerKeys) -> Client {
        Client::with_keys(&self.url, keys).with_credential(self.credential.clone())
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        terminate(&mut child)
    }

    /// SIGTERM, and the exit must be clean; a failure shows what the server wrote on stderr.
    pub fn stop_cleanly(self) {
        let log = self.stderr_log.clone();
        let status = self.stop();
        assert!(
            status.success(),
            "the server exited with {status}; its stderr:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// SIGKILL: no drain, no final flush, as in a crash.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// The server's process id (for CPU accounting).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `GET /metrics` with the operator's bearer token; empty on any failure.
    pub fn metrics(&self, token: &str) -> String {
        let url = self.operator_url.as_deref().unwrap_or(&self.url);
        ureq::get(format!("{url}/metrics"))
            .header("Authorization", format!("Bearer {token}"))
            .call()
            .and_then(|mut r| r.body_mut().read_to_string())
            .unwrap_or_default()
    }

    /// What the server wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

fn terminate(child: &mut Child) -> ExitStatus {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            return child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}

pub struct Faces {
    pub enrol: Vec<f32>,
    pub genuine: Vec<f32>,
    pub impostor: Vec<f32>,
}

/// A genuine pair (the best-matching pair of the first identity) and an impostor, with the
/// decisions the configured policy gives them checked first.
pub fn faces() -> Faces {
    let data = dev_dataset();
    let ids = data.identity_indices();
    let first: Vec<usize> = (0..ids.len()).filter(|&i| ids[i] == ids[0]).collect();
    let enrol = &data.samples[first[0]].embedding;
    let genuine = first[1..]
        .iter()
        .map(|&i| &data.samples[i].embedding)
        .max_by(|a, b| risk::cosine(enrol, a).total_cmp(&risk::cosine(enrol, b)))
        .unwrap();
    let impostor = &data.samples[(0..ids.len()).find(|&i| ids[i] != ids[0]).unwrap()].embedding;
    let policy = Config::builtin().risk_policy().unwrap();
    let decide = |probe: &[f32]| {
        policy
            .decide(&risk::signals::<_, &[f32]>(probe, &[enrol], &[]))
            .decision
    };
    assert_eq!(decide(genuine), Decision::Allow);
    assert_eq!(decide(impostor), Decision::Deny);
    Faces {
        enrol: enrol.clone(),
        genuine: genuine.clone(),
        impostor: impostor.clone(),
    }
}

/// The `n`-th of many distinct synthetic faces (random directions: no two match, so each can
/// be enrolled under its own account without an identity conflict); `new_capture` of one
/// matches it at about 0.995.
pub fn synthetic_face(n: usize) -> Vec<f32> {
    tee_risk::internals::lab::new_capture(&[0.0; 128], n)
        .iter()
        .map(|x| x * 10.0)
        .collect()
}

/// Codes as their wire names, for comparing with a list.
pub fn codes<T: tee_risk::protocol::reply::WireCode>(
    codes: &[tee_risk::protocol::reply::Code<T>],
) -> Vec<&str> {
    codes.iter().map(|c| c.as_str()).collect()
}

pub fn request(user: &str, features: &[f32]) -> FeatureRequest {
    FeatureRequest {
        user_id: user.into(),
        features: features.to_vec(),
        liveness: Some(0.95),
        device_id: Some("phone-1".into()),
        face_model: None,
    }
}

pub fn error_code(raw: &RawResponse) -> (u16, String) {
    let body: serde_json::Value = serde_json::from_slice(&raw.body).unwrap_or_else(|_| {
        panic!(
            "error body is JSON: {:?}",
            String::from_utf8_lossy(&raw.body)
        )
    });
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "every error has a detail"
    );
    (raw.status, body["error"].as_str().unwrap().to_owned())
}

pub fn open_vault(
    data_dir: &std::path::Path,
    key: &str,
) -> Result<Vault, tee_risk::internals::store::VaultError> {
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&data_dir.join("db")).unwrap());
    Vault::open(store, &master_key(key))
}

/// Runs the `openssl` command in `dir`, insisting that it succeeds; returns its stdout.
pub fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command is needed (apt-get install openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A fresh SM2 key pair made by OpenSSL in `dir`: `private` (PKCS#8 PEM) and `public`
/// (SubjectPublicKeyInfo PEM).
pub fn openssl_sm2_keypair(dir: &Path, private: &str, public: &str) {
    openssl(
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:SM2",
            "-out",
            private,
        ],
        dir,
    );
    openssl(&["pkey", "-in", private, "-pubout", "-out", public], dir);
}

/// A server held in a static (one per test binary) is never dropped, and would outlive the
/// test process: a watchdog beside it kills it once this process is gone, as `pg.rs` does
/// for PostgreSQL. It checks the process is still a tee-risk (not a reused pid) first.
fn kill_when_this_process_ends(server: u32) {
    let parent = std::process::id();
    let script = format!(
        "while [ -d /proc/{parent} ] && [ -d /proc/{server} ]; do sleep 0.5; done; \
         if [ ! -d /proc/{parent} ] && grep -q tee-risk /proc/{server}/cmdline 2>/dev/null; \
         then kill -9 {server}; fi"
    );
    let watchdog = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Ok(mut watchdog) = watchdog {
        // Reaped when it ends (the server stopped, or this process is gone).
        std::thread::spawn(move || watchdog.wait());
    }
}

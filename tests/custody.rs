//! Key custody as a bank's key-management officers run it (docs/OPERATIONS.md,
//! "Custodians"), over a real PostgreSQL and real replicas: a service in custodian mode
//! starts sealed (503 `sealed` on every data endpoint, `sealed` on /healthz, `db` commands
//! refuse); `tee-risk admin init` makes the key in the TEE and hands out sealed shares; two
//! of three custodians unseal it with `tee-risk admin unseal`; a restart needs them again;
//! a forged share, an unlisted custodian, a replayed message, a message for an earlier
//! attempt, a share for another database and a share of another k are each refused with
//! their code and leave it sealed; two more replicas join and serve without any custodian; the
//! audit log names each step's custodian. At the end the master key (rebuilt here from the
//! custodians' shares) is in no file under the data and keys folders, in no PostgreSQL dump,
//! in no log line at trace level and in no process environment.
//!
//! One PostgreSQL cluster for the binary; one test, in order.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::{TestServer, openapi, pg, request, synthetic_face};
use tee_risk::client::{Client, ClientError};
use tee_risk::internals::attest::Policy;
use tee_risk::internals::crypto::keyfile::{load_sm2_key_pair, write_private_file};
use tee_risk::internals::crypto::secret::SecretBytes;
use tee_risk::internals::crypto::shamir::{self, Share};
use tee_risk::internals::crypto::sm2::{DecryptionKey, IdentityKey};
use tee_risk::internals::store::{MasterKey, PostgresOptions, PostgresStore, audit};
use tee_risk::protocol::custody::{Approval, Purpose, ShareFile, SharePlain, UnsealRequest};
use tee_risk::protocol::reply::{Code, ErrorCode};

const MEASUREMENT: &str = "c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2";
const CUSTODIANS: [&str; 3] = ["alice", "bob", "carol"];
/// The single node's operator token (its `/admin/db/status` shows the sweep's progress).
const ADMIN_TOKEN: &str = "custody-test-operator";

/// The folders and files every replica and custodian of the test shares.
struct Setup {
    dir: PathBuf,
    /// The PostgreSQL database of the replicas (none: a single node on sled).
    database_url: String,
}

impl Setup {
    fn new(postgres: bool) -> Self {
        let dir = tempfile::tempdir().unwrap().keep();
        let database_url = match postgres {
            true => pg::shared().create_database(),
            false => String::new(),
        };
        let setup = Self { dir, database_url };
        let mut roster = String::from("threshold = 2\n");
        for name in CUSTODIANS.iter().chain(&["mallory"]) {
            let key = setup.make_key(name);
            if *name != "mallory" {
                roster.push_str(&format!(
                    "[[custodian]]\nname = \"{name}\"\npublic_key = \"{name}.pub.pem\"\n"
                ));
            }
            std::fs::write(
                setup.dir.join(format!("{name}.pub.pem")),
                key.public().to_pem(),
            )
            .unwrap();
        }
        std::fs::write(setup.dir.join("custodians.toml"), roster).unwrap();
        // The custodians' policy and the cluster's: this build's sim measurement, the sim
        // platform key every replica shares (written by the first at its start).
        std::fs::write(
            setup.dir.join("policy.toml"),
            format!(
                "allowed_tee = [\"sim\"]\nmeasurements = [\"{MEASUREMENT}\"]\nmax_age_secs = \
                 60\n[sim]\nplatform_key = \"keys1/sim-platform.pub.pem\"\n"
            ),
        )
        .unwrap();
        setup
    }

    /// A custodian's SM2 key file (64 hex digits, mode 0600).
    fn make_key(&self, name: &str) -> IdentityKey {
        let scalar = SecretBytes::<32>::random().unwrap();
        write_private_file(&self.key_file(name), scalar.to_hex_zeroizing().as_bytes()).unwrap();
        IdentityKey::from_scalar(&scalar).unwrap()
    }

    fn key_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    fn keys(&self, name: &str) -> (IdentityKey, DecryptionKey) {
        load_sm2_key_pair(&self.key_file(name)).unwrap()
    }

    fn policy(&self) -> PathBuf {
        self.dir.join("policy.toml")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Replica `n`: custodian mode, PostgreSQL, a cluster replica joining `peer` (none:
    /// it bootstraps), every log line down to trace.
    fn replica(&self, n: u8, peer: Option<&str>) -> TestServer {
        let config = self.dir.join(format!("replica{n}.toml"));
        std::fs::write(
            &config,
            format!(
                "[server]\noperator_listen = \"127.0.0.1:0\"\n[storage]\nbackend = \
                 \"postgres\"\n[keys]\nsource = \"custodians\"\ncustodians_file = \"{}\"\n\
                 [attestation]\nmode = \"sim\"\nsim_measurement = \"{MEASUREMENT}\"\n\
                 [cluster]\nbootstrap = {}\npeers = [{}]\npolicy = \"{}\"\njoin_timeout_secs = 30\n",
                self.dir.join("custodians.toml").display(),
                peer.is_none(),
                peer.map(|p| format!("\"{p}\"")).unwrap_or_default(),
                self.policy().display(),
            ),
        )
        .unwrap();
        TestServer::builder(&self.data_dir(), &self.dir.join(format!("keys{n}")))
            .args(&["--config", config.to_str().unwrap()])
            .env(&[
                ("TEE_RISK_DATABASE_URL", &self.database_url),
                ("RUST_LOG", "trace"),
            ])
            .start()
    }

    /// A single node on sled in custodian mode (the keys folder the policy pins).
    fn single(&self) -> TestServer {
        let config = self.dir.join("single.toml");
        std::fs::write(
            &config,
            format!(
                "[keys]\nsource = \"custodians\"\ncustodians_file = \"{}\"\n[attestation]\n\
                 mode = \"sim\"\nsim_measurement = \"{MEASUREMENT}\"\n",
                self.dir.join("custodians.toml").display(),
            ),
        )
        .unwrap();
        TestServer::builder(&self.data_dir(), &self.dir.join("keys1"))
            .args(&["--config", config.to_str().unwrap()])
            .env(&[("TEE_RISK_ADMIN_TOKEN", ADMIN_TOKEN)])
            .start()
    }

    /// `tee-risk admin …` as a custodian; its exit code and output.
    fn admin(&self, args: &[&str]) -> (i32, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_tee-risk"))
            .arg("admin")
            .args(args)
            .output()
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    }

    fn unseal_cli(&self, server: &TestServer, name: &str) -> (i32, String) {
        self.unseal_cli_from(server, name, "shares")
    }

    /// `admin unseal` with the share in `folder` (`shares`: from the init).
    fn unseal_cli_from(&self, server: &TestServer, name: &str, folder: &str) -> (i32, String) {
        let share = self.dir.join(folder).join(format!("{name}.share.json"));
        self.admin(&[
            "unseal",
            "--url",
            &server.url,
            "--policy",
            self.policy().to_str().unwrap(),
            "--key",
            self.key_file(name).to_str().unwrap(),
            "--share",
            share.to_str().unwrap(),
        ])
    }

    fn share(&self, name: &str) -> ShareFile {
        self.share_from(name, "shares")
    }

    fn share_from(&self, name: &str, folder: &str) -> ShareFile {
        let path = self.dir.join(folder).join(format!("{name}.share.json"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// A client of the service attested under the custodians' policy.
    fn attested(&self, server: &TestServer) -> Client {
        Client::attest(&server.url, &Policy::load(&self.policy()).unwrap())
            .unwrap()
            .0
    }
}

fn status(server: &TestServer) -> Value {
    let (code, _, body) = call(server, "GET", "/v1/custody", b"");
    assert_eq!(code, 200);
    body
}

/// A raw request to `server`, its answer held to docs/openapi.yaml and its code recorded:
/// status, `Retry-After`, body.
fn call(
    server: &TestServer,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, Option<String>, Value) {
    let url = format!("{}{path}", server.url);
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut response = match method {
        "GET" => agent.get(url).call(),
        "DELETE" => agent
            .delete(url)
            .force_send_body()
            .content_type("application/json")
            .send(body),
        _ => agent.post(url).content_type("application/json").send(body),
    }
    .unwrap();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let status = response.status().as_u16();
    let raw = response.body_mut().read_to_vec().unwrap();
    openapi::check(method, path, status, &content_type, &raw);
    (
        status,
        retry,
        serde_json::from_slice(&raw).unwrap_or(Value::Null),
    )
}

/// Every data endpoint answers 503 `sealed` with `Retry-After`; health says sealed; keys
/// and attestation answer.
fn assert_sealed(server: &TestServer) {
    for (method, path) in [
        ("POST", "/v1/enroll"),
        ("POST", "/v1/assess"),
        ("POST", "/v1/identify"),
        ("DELETE", "/v1/users"),
    ] {
        let (code, retry, body) = call(server, method, path, b"{}");
        assert_eq!(
            (code, body["error"].as_str()),
            (503, Some("sealed")),
            "{path}"
        );
        assert!(retry.is_some(), "{path}: Retry-After");
    }
    let (code, _, body) = call(server, "GET", "/healthz", b"");
    assert_eq!((code, body["status"].as_str()), (503, Some("sealed")));
    let (code, _, _) = call(server, "GET", "/v1/keys", b"");
    assert_eq!(code, 200);
    assert_eq!(status(server)["state"], "sealed");
}

/// A refusal by code, and the service left as it was: sealed or not, holding the same
/// shares (`request` runs between the two looks at `GET /v1/custody`).
fn refused<T: std::fmt::Debug>(
    server: &TestServer,
    code: ErrorCode,
    request: impl FnOnce() -> Result<T, ClientError>,
) {
    let before = status(server);
    match request() {
        Err(ClientError::Refused { code: got, .. }) => assert_eq!(got, Code::Known(code)),
        other => panic!("expected {code:?}, got {other:?}"),
    }
    let after = status(server);
    assert_eq!(after["state"], before["state"]);
    assert_eq!(after["received"], before["received"]);
}

/// POSTs an unseal message as is.
fn post_unseal(server: &TestServer, message: &UnsealRequest) -> Result<Value, ClientError> {
    post(
        server,
        "/v1/custody/unseal",
        &serde_json::to_vec(message).unwrap(),
    )
}

/// POSTs a body; a refusal as [`ClientError::Refused`].
fn post(server: &TestServer, path: &str, body: &[u8]) -> Result<Value, ClientError> {
    let (code, _, body) = call(server, "POST", path, body);
    match code {
        200 => Ok(body),
        status => Err(ClientError::Refused {
            status,
            code: serde_json::from_value(body["error"].clone()).unwrap(),
            detail: body["detail"].as_str().unwrap_or_default().to_owned(),
        }),
    }
}

/// A share of another split, sealed to the service, signed by alice.
fn crafted_share(
    setup: &Setup,
    client: &Client,
    key_id: [u8; 8],
    threshold: u8,
    signer: &str,
) -> UnsealRequest {
    let attempt =
        tee_risk::protocol::custody::attempt_bytes(&client.custody_status().unwrap().attempt)
            .unwrap();
    let plain = SharePlain {
        key_id,
        index: 1,
        threshold,
        shares: 3,
        value: SecretBytes::random().unwrap(),
    };
    let (key, _) = setup.keys(signer);
    UnsealRequest::seal(signer, &attempt, &plain, &client.keys().encryption, &key).unwrap()
}

#[test]
fn custodians_unseal_a_cluster_and_the_master_key_never_leaves_the_tee() {
    let setup = Setup::new(true);
    let mut logs = Vec::new();

    // 1. Sealed from the start: no key anywhere, nothing served, `db` refuses.
    let r1 = setup.replica(1, None);
    assert_sealed(&r1);
    let state = status(&r1);
    assert_eq!(state["threshold"], 2);
    assert_eq!(state["custodians"], serde_json::json!(CUSTODIANS));
    let db = Command::new(env!("CARGO_BIN_EXE_tee-risk"))
        .args(["db", "status", "--config"])
        .arg(setup.dir.join("replica1.toml"))
        .env("TEE_RISK_DATABASE_URL", &setup.database_url)
        .output()
        .unwrap();
    assert_eq!(db.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&db.stderr).contains("custodians"));

    // An unseal before the init: the database has no key yet.
    let client = setup.attested(&r1);
    refused(&r1, ErrorCode::DatabaseNotInitialised, || {
        post_unseal(&r1, &crafted_share(&setup, &client, [1; 8], 2, "alice"))
    });

    // 2. The init ceremony: alice asks, each custodian gets a sealed share; it serves.
    let (code, out) = setup.admin(&[
        "init",
        "--url",
        &r1.url,
        "--policy",
        setup.policy().to_str().unwrap(),
        "--name",
        "alice",
        "--key",
        setup.key_file("alice").to_str().unwrap(),
        "--out",
        setup.dir.join("shares").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let unsealed = status(&r1);
    assert_eq!(unsealed["state"], "unsealed");
    let key_id = unsealed["key_id"].as_str().unwrap().to_owned();
    let shares: Vec<ShareFile> = CUSTODIANS.iter().map(|n| setup.share(n)).collect();
    for (share, name) in shares.iter().zip(CUSTODIANS) {
        openapi::check_schema("ShareFile", &serde_json::to_value(share).unwrap());
        assert_eq!(
            (share.custodian.as_str(), share.key_id.as_str()),
            (name, &*key_id)
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(setup.dir.join("shares").join(format!("{name}.share.json")))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o077, 0, "share files are private");
    }
    // Each share opens with its custodian's key only; any two rebuild the key.
    assert!(shares[1].open(&setup.keys("alice").1).is_err());
    let opened: Vec<Share> = shares
        .iter()
        .zip(CUSTODIANS)
        .map(|(share, name)| {
            let plain = share.open(&setup.keys(name).1).unwrap();
            Share {
                index: plain.index,
                value: plain.value,
            }
        })
        .collect();
    let master = MasterKey::from_secret(shamir::combine(&opened[1..]).unwrap());
    assert_eq!(master.key_id().to_string(), key_id);
    let user = "custody-user";
    r1.client()
        .enroll(&request(user, &synthetic_face(1)))
        .expect("serves once initialised");
    // A second init is refused: it is not sealed.
    let (code, out) = setup.admin(&[
        "init",
        "--url",
        &r1.url,
        "--policy",
        setup.policy().to_str().unwrap(),
        "--name",
        "bob",
        "--key",
        setup.key_file("bob").to_str().unwrap(),
        "--out",
        setup.dir.join("again").to_str().unwrap(),
    ]);
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("not_sealed"), "{out}");

    // 3. A restart needs the custodians again.
    logs.push(r1.stderr_log.clone());
    r1.stop_cleanly();
    let r1 = setup.replica(1, None);
    assert_sealed(&r1);
    let client = setup.attested(&r1);
    let (alice, alice_dec) = setup.keys("alice");
    let (mallory, _) = setup.keys("mallory");
    let attempt_of = |client: &Client| {
        tee_risk::protocol::custody::attempt_bytes(&client.custody_status().unwrap().attempt)
            .unwrap()
    };
    let alice_plain = || shares[0].open(&alice_dec).unwrap();
    let encryption = client.keys().encryption;

    // Not the endpoint's JSON; a share sealed to a key the service does not hold; an init
    // of a database that has a key.
    refused(&r1, ErrorCode::BadCustodyRequest, || {
        post(&r1, "/v1/custody/unseal", b"{\"custodian\":1}")
    });
    let stranger = DecryptionKey::generate().unwrap();
    let misaddressed = UnsealRequest::seal(
        "alice",
        &attempt_of(&client),
        &alice_plain(),
        stranger.public(),
        &alice,
    )
    .unwrap();
    refused(&r1, ErrorCode::ShareInvalid, || {
        post_unseal(&r1, &misaddressed)
    });
    let init = Approval::sign(Purpose::Init, "alice", &attempt_of(&client), &alice).unwrap();
    refused(&r1, ErrorCode::DatabaseNotEmpty, || {
        post(&r1, "/v1/custody/init", &serde_json::to_vec(&init).unwrap())
    });
    // A forged share: alice's name, mallory's signature.
    let forged = UnsealRequest::seal(
        "alice",
        &attempt_of(&client),
        &alice_plain(),
        &encryption,
        &mallory,
    )
    .unwrap();
    refused(&r1, ErrorCode::BadCustodianSignature, || {
        post_unseal(&r1, &forged)
    });
    // A share from a key the roster does not list.
    let unlisted = UnsealRequest::seal(
        "mallory",
        &attempt_of(&client),
        &alice_plain(),
        &encryption,
        &mallory,
    )
    .unwrap();
    refused(&r1, ErrorCode::UnknownCustodian, || {
        post_unseal(&r1, &unlisted)
    });
    // A share for another database (another master key).
    refused(&r1, ErrorCode::ShareMismatch, || {
        post_unseal(&r1, &crafted_share(&setup, &client, [9; 8], 2, "alice"))
    });
    // Alice's real message is accepted once; the same message again is a replay.
    let alice_message = UnsealRequest::seal(
        "alice",
        &attempt_of(&client),
        &alice_plain(),
        &encryption,
        &alice,
    )
    .unwrap();
    let accepted = post_unseal(&r1, &alice_message).unwrap();
    assert_eq!(status(&r1)["received"], serde_json::json!(["alice"]));
    assert!(accepted["payload"].is_string(), "a signed answer");
    refused(&r1, ErrorCode::ShareReplayed, || {
        post_unseal(&r1, &alice_message)
    });
    // Bob through the command line: two of three, and it serves what it stored before.
    let (code, out) = setup.unseal_cli(&r1, "bob");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("unsealed"), "{out}");
    let answer = r1
        .client()
        .assess(&request(user, &synthetic_face(1)))
        .expect("the rebuilt key opens the templates");
    assert_eq!(answer.stamp.op, "assess");
    // Alice's message after the unseal, and after another restart (an earlier attempt).
    refused(&r1, ErrorCode::NotSealed, || {
        post_unseal(&r1, &alice_message)
    });

    // 4. A second and a third replica join and serve without any custodian (the third
    //    joins the second).
    let peer = r1.operator_url.clone().unwrap();
    let r2 = setup.replica(2, Some(&peer));
    let r3 = setup.replica(3, Some(r2.operator_url.as_deref().unwrap()));
    for replica in [&r2, &r3] {
        assert_eq!(status(replica)["state"], "unsealed");
        assert_eq!(status(replica)["key_id"], key_id);
        replica
            .client()
            .assess(&request(user, &synthetic_face(1)))
            .expect("a joined replica serves");
    }

    logs.push(r1.stderr_log.clone());
    r1.stop_cleanly();
    let r1 = setup.replica(1, None);
    assert_sealed(&r1);
    refused(&r1, ErrorCode::StaleAttempt, || {
        post_unseal(&r1, &alice_message)
    });
    let (code, out) = setup.unseal_cli(&r1, "carol");
    assert_eq!(code, 0, "{out}");
    // The command line names a refusal and exits 4.
    let (code, out) = setup.unseal_cli(&r1, "carol");
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("share_replayed"), "{out}");
    let (code, out) = setup.unseal_cli(&r1, "alice");
    assert_eq!(code, 0, "{out}");
    assert_eq!(status(&r1)["state"], "unsealed");

    // 5. The audit log names each step's custodian, never a share.
    let store = PostgresStore::open(&PostgresOptions {
        url: zeroize::Zeroizing::new(setup.database_url.clone()),
        pool_size: 1,
        timeout: std::time::Duration::from_secs(10),
        ca_file: None,
    })
    .unwrap();
    let entries = audit::verify(&store).unwrap();
    let has = |event: &str, who: &[&str]| {
        entries
            .iter()
            .any(|e| e.event == event && e.who.iter().map(String::as_str).eq(who.iter().copied()))
    };
    assert!(has("custody_initialised", &["alice"]), "{entries:#?}");
    assert!(has("custody_share_accepted", &["bob"]));
    assert!(has("custody_unsealed", &["alice", "bob"]));
    assert!(has("custody_unsealed", &["carol", "alice"]));
    assert!(has("custody_share_refused", &["mallory"]));
    assert!(has("custody_key_joined", &[]));

    // 6. The key's bytes, raw and in hex, are nowhere the host can look.
    let hex_lower = master.to_hex_zeroizing().to_string();
    let needles: [Vec<u8>; 3] = [
        master.expose_secret().expose().to_vec(),
        hex_lower.as_bytes().to_vec(),
        hex_lower.to_uppercase().into_bytes(),
    ];
    let found = |haystack: &[u8]| {
        needles
            .iter()
            .any(|n| haystack.windows(n.len()).any(|w| w == &n[..]))
    };
    for server in [&r1, &r2, &r3] {
        let environ = std::fs::read(format!("/proc/{}/environ", server.pid())).unwrap();
        assert!(!found(&environ), "the key is in a process environment");
    }
    logs.push(r1.stderr_log.clone());
    logs.push(r2.stderr_log.clone());
    logs.push(r3.stderr_log.clone());
    drop((r1, r2, r3));
    for log in &logs {
        let text = std::fs::read(log).unwrap();
        assert!(
            text.len() > 10_000,
            "trace logs were written: {}",
            log.display()
        );
        assert!(!found(&text), "the key is in {}", log.display());
    }
    let mut files = Vec::new();
    for folder in [
        setup.data_dir(),
        setup.dir.join("keys1"),
        setup.dir.join("keys2"),
        setup.dir.join("keys3"),
    ] {
        walk(&folder, &mut files);
    }
    assert!(!files.is_empty());
    for file in files {
        assert!(
            !found(&std::fs::read(&file).unwrap()),
            "the key is in {}",
            file.display()
        );
    }
    // 7. Every custody code was produced above, as docs/PROTOCOL.md §4 and
    //    docs/openapi.yaml document it (each answer was checked against the latter).
    let protocol =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/PROTOCOL.md"))
            .unwrap();
    let (_, seen) = openapi::covered();
    for (status, code) in [
        (503, "sealed"),
        (400, "bad_custody_request"),
        (400, "share_invalid"),
        (403, "unknown_custodian"),
        (403, "bad_custodian_signature"),
        (409, "not_sealed"),
        (409, "stale_attempt"),
        (409, "share_replayed"),
        (409, "share_mismatch"),
        (409, "database_not_empty"),
        (409, "database_not_initialised"),
    ] {
        assert!(seen.contains(code), "{code} was not produced");
        assert!(
            protocol.contains(&format!("| {status} | `{code}` |")),
            "{status} {code} is not in docs/PROTOCOL.md §4"
        );
    }

    let dump = pg::shared().dump(&setup.database_url);
    assert!(
        dump.contains("custody_unsealed") || dump.contains(&hex::encode("custody_unsealed")),
        "the dump holds the audit log"
    );
    assert!(!found(dump.as_bytes()), "the key is in the PostgreSQL dump");
}

/// A refusal by code from a service that is not sealed.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// The master key rebuilt from two custodians' shares in `folder`.
fn rebuilt(setup: &Setup, folder: &str, names: [&str; 2]) -> MasterKey {
    let shares: Vec<Share> = names
        .iter()
        .map(|name| {
            let plain = setup
                .share_from(name, folder)
                .open(&setup.keys(name).1)
                .unwrap();
            Share {
                index: plain.index,
                value: plain.value,
            }
        })
        .collect();
    MasterKey::from_secret(shamir::combine(&shares).unwrap())
}

#[test]
fn a_rekey_killed_mid_sweep_completes_after_unsealing_with_both_share_sets() {
    let setup = Setup::new(false);
    let policy = setup.policy();
    let policy = policy.to_str().unwrap();
    let admin = |args: &[&str], expect: i32| {
        let (code, out) = setup.admin(args);
        assert_eq!(code, expect, "admin {args:?}: {out}");
        out
    };
    let key = |name: &str| setup.key_file(name).to_str().unwrap().to_owned();

    // A single node, initialised by alice; a store big enough for a sweep of seconds.
    let node = setup.single();
    let url = node.url.clone();
    admin(
        &[
            "init",
            "--url",
            &url,
            "--policy",
            policy,
            "--name",
            "alice",
            "--key",
            &key("alice"),
            "--out",
            setup.dir.join("shares").to_str().unwrap(),
        ],
        0,
    );
    let old = rebuilt(&setup, "shares", ["alice", "bob"]);
    node.stop_cleanly();
    let people: Vec<(String, Vec<f32>)> = (0..4_000)
        .map(|i| (format!("seed-{i}"), synthetic_face(i + 10)))
        .collect();
    support::seed_store(&setup.data_dir(), &old, &people, 36_000);
    let node = setup.single();
    let url = node.url.clone();
    for name in ["alice", "bob"] {
        setup.unseal_cli(&node, name);
    }
    assert_eq!(status(&node)["state"], "unsealed");

    // Two approvals: the first is held, the second rekeys and hands out the new shares.
    let out = admin(
        &[
            "rekey",
            "--url",
            &url,
            "--policy",
            policy,
            "--name",
            "alice",
            "--key",
            &key("alice"),
            "--out",
            setup.dir.join("new-shares").to_str().unwrap(),
        ],
        0,
    );
    assert!(out.contains("\"approving\""), "{out}");
    admin(
        &[
            "rekey",
            "--url",
            &url,
            "--policy",
            policy,
            "--name",
            "carol",
            "--key",
            &key("carol"),
            "--out",
            setup.dir.join("new-shares").to_str().unwrap(),
        ],
        0,
    );
    // Another rekey before this one's sweep is verified is refused.
    let client = setup.attested(&node);
    let again = Approval::sign(
        Purpose::Rekey,
        "bob",
        &tee_risk::protocol::custody::attempt_bytes(&client.custody_status().unwrap().attempt)
            .unwrap(),
        &setup.keys("bob").0,
    )
    .unwrap();
    refused(&node, ErrorCode::RekeyInProgress, || {
        post(
            &node,
            "/v1/custody/rekey",
            &serde_json::to_vec(&again).unwrap(),
        )
    });
    let protocol =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/PROTOCOL.md"))
            .unwrap();
    assert!(
        protocol.contains("| 409 | `rekey_in_progress` |"),
        "docs/PROTOCOL.md §4"
    );
    // SIGKILL in the middle of the sweep, once it has moved some records.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let progress: Value = ureq::get(format!("{url}/admin/db/status"))
            .header("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap();
        let rotation = &progress["rotation"];
        assert!(rotation["completed_at"].is_null(), "the sweep ended first");
        if rotation["moved"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sweep never moved"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    node.kill();
    let new = rebuilt(&setup, "new-shares", ["alice", "carol"]);
    assert_ne!(new.key_id(), old.key_id());
    {
        use tee_risk::internals::store::{OpenMode, SledStore, Store, Vault};
        let store: std::sync::Arc<dyn Store> =
            std::sync::Arc::new(SledStore::open(&setup.data_dir().join("db")).unwrap());
        let vault =
            Vault::open_keyring(store, &new, &[old.duplicate()], OpenMode::Inspect).unwrap();
        let rotation = vault
            .registry_snapshot()
            .rotation
            .expect("a rotation began");
        println!(
            "the kill landed with {} records moved of about 40,000",
            rotation.moved
        );
        assert!(
            rotation.completed_at.is_none() && rotation.moved > 0,
            "the kill landed outside the sweep ({} moved)",
            rotation.moved
        );
    }

    // After the restart the database needs both keys: the old shares alone do not unseal it,
    // nor does a rekey approval.
    let node = setup.single();
    assert_sealed(&node);
    let sealed_rekey = Approval::sign(
        Purpose::Rekey,
        "bob",
        &tee_risk::protocol::custody::attempt_bytes(status(&node)["attempt"].as_str().unwrap())
            .unwrap(),
        &setup.keys("bob").0,
    )
    .unwrap();
    refused(&node, ErrorCode::Sealed, || {
        post(
            &node,
            "/v1/custody/rekey",
            &serde_json::to_vec(&sealed_rekey).unwrap(),
        )
    });
    for name in ["alice", "bob"] {
        let (code, out) = setup.unseal_cli(&node, name);
        assert_eq!(code, 0, "{out}");
    }
    let state = status(&node);
    assert_eq!(
        state["state"], "sealed",
        "the old key's shares alone: {state}"
    );
    let needed = state["needed"].as_array().unwrap();
    assert_eq!(needed.len(), 2, "{state}");
    for name in ["bob", "carol"] {
        let (code, out) = setup.unseal_cli_from(&node, name, "new-shares");
        assert_eq!(code, 0, "{out}");
    }
    let state = status(&node);
    assert_eq!(state["state"], "unsealed", "{state}");
    assert_eq!(state["key_id"], new.key_id().to_string());
    assert_eq!(state["previous_key_id"], old.key_id().to_string());

    // The sweep resumes and completes; the old key is verified away and forgotten.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while status(&node).get("previous_key_id").is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the old key was never retired"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    node.client()
        .assess(&request("seed-7", &synthetic_face(17)))
        .expect("records moved under the new key serve");
    node.stop_cleanly();

    // `db verify` passes with the new key alone; the old one is retired.
    let db = |args: &[&str], key: &MasterKey| {
        Command::new(env!("CARGO_BIN_EXE_tee-risk"))
            .arg("db")
            .args(args)
            .arg("--data-dir")
            .arg(setup.data_dir())
            .env("DB_MASTER_KEY", key.to_hex_zeroizing().as_str())
            .env_remove("DB_MASTER_KEY_PREVIOUS")
            .env_remove("TEE_RISK_CONFIG")
            .output()
            .unwrap()
    };
    let verify = db(&["verify"], &new);
    assert!(
        verify.status.success(),
        "db verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        !db(&["status"], &old).status.success(),
        "the old key is retired"
    );
    let log = db(&["verify-log"], &new);
    let text = String::from_utf8_lossy(&log.stdout).into_owned();
    assert!(log.status.success(), "{text}");
    let store =
        tee_risk::internals::store::SledStore::open_copy(&setup.data_dir().join("db")).unwrap();
    let entries = audit::verify(&store).unwrap();
    let events: Vec<(&str, Vec<&str>)> = entries
        .iter()
        .map(|e| (e.event.as_str(), e.who.iter().map(String::as_str).collect()))
        .collect();
    for expected in [
        ("custody_rekey_approved", vec!["alice"]),
        ("custody_rekeyed", vec!["alice", "carol"]),
        ("rotation_started", vec![]),
        ("custody_unsealed", vec!["alice", "bob", "bob", "carol"]),
        ("rotation_completed", vec![]),
        ("key_retired", vec![]),
        ("custody_previous_key_dropped", vec![]),
    ] {
        assert!(events.contains(&expected), "{expected:?} not in {events:?}");
    }
}

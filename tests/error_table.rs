//! docs/PROTOCOL.md §4, row by row, over real HTTP: each refusal is produced by a request a
//! client could send, and checked for its status, its code, a detail, the `x-request-id`
//! header (and `Retry-After` where the table promises it), the refusal counter of its code,
//! and the store's record counts (unchanged, or one more spent request id where the table
//! says the id is spent). The table in the document is parsed, so a row added there without a
//! case here fails. Then every reason code of an assessment, over HTTP.

mod support;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::wire::{self, WireAnswer as Answer};
use support::{MASTER_KEY, TestServer, codes, faces, openapi, request, synthetic_face};
use tee_risk::client::{Client, FeatureRequest};
use tee_risk::internals::crypto::sm2::{DecryptionKey, IdentityKey, PublicKey};
use tee_risk::internals::lab::new_capture;
use tee_risk::internals::obs::unix_now;
use tee_risk::internals::risk::model::RiskModel;
use tee_risk::internals::store::{SledStore, Store, Table, Vault};
use tee_risk::protocol::b64_encode;
use tee_risk::protocol::client_auth::ClientCredential;
use tee_risk::protocol::reply::AssessReply;
use tee_risk::protocol::request::{ProtectedHeader, seal};

const ADMIN_TOKEN: &str = "error-table-admin-token";

/// Sends `head` (request line and headers, without the blank line) and `body` on a new
/// connection, reads the whole answer, and holds it to docs/openapi.yaml.
fn exchange(address: &str, head: &str, body: &[u8]) -> Answer {
    let answer = wire::exchange(address, &format!("{head}Connection: close\r\n\r\n"), body);
    let mut request_line = head.split_whitespace();
    let (method, target) = (request_line.next().unwrap(), request_line.next().unwrap());
    openapi::check(
        method,
        target,
        answer.status,
        answer
            .headers
            .get("content-type")
            .map_or("", String::as_str),
        &answer.raw,
    );
    answer
}

/// What the cases need: the server, two clients (one may only assess), the model.
struct Ctx {
    server: TestServer,
    address: String,
    full: Arc<ClientCredential>,
    assessor: Arc<ClientCredential>,
    /// What a row's setup leaves for its case.
    scratch: RefCell<Vec<u8>>,
}

impl Ctx {
    fn keys(&self) -> PublicKey {
        Client::fetch_keys(&self.server.url)
            .unwrap()
            .keys()
            .encryption
            .clone()
    }

    /// A request head signed by `who` over `body` (no `Content-Length`).
    fn head(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        who: Option<&ClientCredential>,
    ) -> String {
        let signed_path = path.split('?').next().unwrap();
        let authorization = who
            .map(|c| {
                format!(
                    "Authorization: {}\r\n",
                    c.authorization(method, signed_path, body).unwrap()
                )
            })
            .unwrap_or_default();
        format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             {authorization}"
        )
    }

    /// `POST /v1/enroll` with `body`, signed by the full client.
    fn enrol(&self, body: &[u8]) -> Answer {
        self.send("POST", "/v1/enroll", body)
    }

    /// `method path` with `body`, its length, signed by the full client.
    fn send(&self, method: &str, path: &str, body: &[u8]) -> Answer {
        self.send_as(method, path, body, Some(&self.full))
    }

    fn send_as(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        who: Option<&ClientCredential>,
    ) -> Answer {
        let head = format!(
            "{}Content-Length: {}\r\n",
            self.head(method, path, body, who),
            body.len()
        );
        exchange(&self.address, &head, body)
    }

    fn get(&self, path: &str, token: Option<&str>) -> Answer {
        let authorization = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        exchange(
            &self.address,
            &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{authorization}"),
            b"",
        )
    }

    /// An envelope around `plaintext` to the current key, fresh `rid`.
    fn envelope(&self, plaintext: &[u8]) -> Vec<u8> {
        let key = self.keys();
        seal(
            &key,
            &ProtectedHeader::new(&key.kid(), unix_now()).unwrap(),
            plaintext,
        )
        .unwrap()
    }

    fn sealed(&self, request: &FeatureRequest) -> Vec<u8> {
        self.envelope(&serde_json::to_vec(request).unwrap())
    }

    /// A valid envelope with one field of its JSON changed.
    fn edited(&self, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
        let mut value: Value =
            serde_json::from_slice(&self.sealed(&request("edited", &faces().enrol))).unwrap();
        edit(&mut value);
        serde_json::to_vec(&value).unwrap()
    }

    /// A valid envelope whose protected header has `member` set to `to`.
    fn with_header(&self, member: &str, to: Value) -> Vec<u8> {
        let key = self.keys();
        let header = ProtectedHeader::new(&key.kid(), unix_now()).unwrap();
        let mut header = serde_json::to_value(&header).unwrap();
        header[member] = to;
        let protected = b64_encode(&serde_json::to_vec(&header).unwrap());
        // Sealed as the protocol says (the header is the AAD), by hand so any header goes.
        let envelope: Value =
            serde_json::from_slice(&self.sealed(&request("edited", &faces().enrol))).unwrap();
        let mut envelope = envelope;
        envelope["protected"] = json!(protected);
        serde_json::to_vec(&envelope).unwrap()
    }

    /// (refusals of `code`, records per table).
    fn counters(&self, code: &str) -> (u64, BTreeMap<String, u64>) {
        let metrics = self.get("/metrics", Some(ADMIN_TOKEN));
        assert_eq!(metrics.status, 200);
        let text = String::from_utf8(metrics.raw).unwrap();
        let refusals = tee_risk::internals::obs::metrics::sample(
            &text,
            &format!("tee_risk_refusals_total{{code=\"{code}\"}}"),
        )
        .unwrap_or(0.0) as u64;
        let tables = text
            .lines()
            .filter_map(|l| l.strip_prefix("tee_risk_store_records{table=\""))
            .filter_map(|l| {
                let (table, rest) = l.split_once("\"} ")?;
                Some((table.to_owned(), rest.trim().parse().ok()?))
            })
            .collect();
        (refusals, tables)
    }
}

/// How a refusal leaves the store.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Effect {
    /// Nothing changes.
    Unchanged,
    /// Exactly one more spent request id (the envelope decrypted).
    SpendsRid,
}

/// Whether the refusal counter `tee_risk_refusals_total{code}` counts it (the encrypted
/// endpoints' refusals; a wrong path or an operator endpoint is not a client's request).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Counted {
    Yes,
    No,
}

type Case = Box<dyn Fn(&Ctx) -> Answer>;
type Setup = Box<dyn Fn(&Ctx)>;

struct Row {
    status: u16,
    code: &'static str,
    counted: Counted,
    store: Effect,
    /// Runs before the counters are read (what the refusal needs that is not the refusal).
    setup: Option<Setup>,
    case: Case,
}

fn row(status: u16, code: &'static str, counted: Counted, store: Effect, case: Case) -> Row {
    Row {
        status,
        code,
        counted,
        store,
        setup: None,
        case,
    }
}

impl Row {
    fn after(mut self, setup: Setup) -> Self {
        self.setup = Some(setup);
        self
    }
}

/// Rows of the §4 table in docs/PROTOCOL.md: (status, code).
fn documented_rows() -> Vec<(u16, String)> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/PROTOCOL.md"))
            .unwrap();
    let section = text
        .split("## 4. Errors")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    section
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let status = cells.get(1)?.parse().ok()?;
            Some((status, cells.get(2)?.trim_matches('`').to_owned()))
        })
        .collect()
}

/// Codes the table documents that this file does not produce, and the test that does.
const PRODUCED_ELSEWHERE: [(&str, &str); 13] = [
    (
        "storage_unavailable",
        "tests/storage_faults.rs: a_full_disk_is_refused_with_503_and_recovers_by_itself",
    ),
    ("sealed", CUSTODY_TEST),
    ("bad_custody_request", CUSTODY_TEST),
    ("share_invalid", CUSTODY_TEST),
    ("unknown_custodian", CUSTODY_TEST),
    ("bad_custodian_signature", CUSTODY_TEST),
    ("not_sealed", CUSTODY_TEST),
    ("stale_attempt", CUSTODY_TEST),
    ("share_replayed", CUSTODY_TEST),
    ("share_mismatch", CUSTODY_TEST),
    ("database_not_empty", CUSTODY_TEST),
    ("database_not_initialised", CUSTODY_TEST),
    ("rekey_in_progress", CUSTODY_REKEY_TEST),
];

/// Where a rekey's refusal is produced.
const CUSTODY_REKEY_TEST: &str =
    "tests/custody.rs: a_rekey_killed_mid_sweep_completes_after_unsealing_with_both_share_sets";

/// Where the key-custody codes are produced (a service in custodian mode).
const CUSTODY_TEST: &str =
    "tests/custody.rs: custodians_unseal_a_cluster_and_the_master_key_never_leaves_the_tee";

fn rows() -> Vec<Row> {
    use Counted::*;
    use Effect::*;
    let face = || faces().enrol.clone();
    vec![
        row(
            400,
            "malformed_envelope",
            Yes,
            Unchanged,
            Box::new(|c| c.enrol(b"{\"protected\":1}")),
        ),
        row(
            400,
            "bad_base64",
            Yes,
            Unchanged,
            Box::new(|c| {
                let body = c.edited(|v| v["iv"] = json!("!!!!!!!!!!!!!!!!"));
                c.enrol(&body)
            }),
        ),
        row(
            400,
            "bad_length",
            Yes,
            Unchanged,
            Box::new(|c| {
                let body = c.edited(|v| v["iv"] = json!(b64_encode(&[0u8; 8])));
                c.enrol(&body)
            }),
        ),
        row(
            400,
            "bad_header",
            Yes,
            Unchanged,
            Box::new(|c| {
                let body = c.with_header("extra", json!(1));
                c.enrol(&body)
            }),
        ),
        row(
            400,
            "unsupported_algorithm",
            Yes,
            Unchanged,
            Box::new(|c| {
                let body = c.with_header("alg", json!("RSA-OAEP"));
                c.enrol(&body)
            }),
        ),
        row(
            400,
            "unknown_kid",
            Yes,
            Unchanged,
            Box::new(move |c| {
                let stranger = DecryptionKey::generate().unwrap();
                let key = stranger.public();
                let header = ProtectedHeader::new(&key.kid(), unix_now()).unwrap();
                let body = seal(
                    key,
                    &header,
                    &serde_json::to_vec(&request("k", &face())).unwrap(),
                );
                c.enrol(&body.unwrap())
            }),
        ),
        row(
            400,
            "stale_request",
            Yes,
            Unchanged,
            Box::new(move |c| {
                let key = c.keys();
                let header = ProtectedHeader::new(&key.kid(), unix_now() - 1_000).unwrap();
                let body = seal(
                    &key,
                    &header,
                    &serde_json::to_vec(&request("s", &face())).unwrap(),
                );
                c.enrol(&body.unwrap())
            }),
        ),
        row(
            400,
            "answer_encryption_required",
            Yes,
            Unchanged,
            Box::new(|c| {
                let body = c.envelope(
                    &serde_json::to_vec(&serde_json::json!({ "features": faces().genuine }))
                        .unwrap(),
                );
                c.send("POST", "/v1/identify", &body)
            }),
        ),
        row(
            400,
            "decryption_failed",
            Yes,
            Unchanged,
            Box::new(|c| {
                let body = c.edited(|v| {
                    let tag = v["tag"].as_str().unwrap();
                    let flipped = if tag.starts_with('A') { "B" } else { "A" };
                    v["tag"] = json!(format!("{flipped}{}", &tag[1..]));
                });
                c.enrol(&body)
            }),
        ),
        row(
            400,
            "incomplete_body",
            Yes,
            Unchanged,
            Box::new(|c| {
                let body = c.sealed(&request("cut", &faces().enrol));
                let head = format!(
                    "{}Content-Length: {}\r\n",
                    c.head("POST", "/v1/enroll", &body, Some(&c.full)),
                    body.len()
                );
                exchange(&c.address, &head, &body[..body.len() / 2])
            }),
        ),
        row(
            400,
            "query_not_allowed",
            Yes,
            Unchanged,
            Box::new(|c| {
                let body = c.sealed(&request("q", &faces().enrol));
                c.send("POST", "/v1/enroll?x=1", &body)
            }),
        ),
        row(
            411,
            "length_required",
            Yes,
            Unchanged,
            Box::new(|c| {
                let body = c.sealed(&request("chunked", &faces().enrol));
                let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
                chunked.extend_from_slice(&body);
                chunked.extend_from_slice(b"\r\n0\r\n\r\n");
                let head = format!(
                    "{}Transfer-Encoding: chunked\r\n",
                    c.head("POST", "/v1/enroll", &body, Some(&c.full))
                );
                exchange(&c.address, &head, &chunked)
            }),
        ),
        row(
            409,
            "replayed_request",
            Yes,
            Unchanged,
            Box::new(|c| {
                let body = c.scratch.borrow().clone();
                c.enrol(&body)
            }),
        )
        .after(Box::new(|c| {
            // An id spent by a refusal after decryption (so nothing else was stored).
            let body = c.envelope(br#"{"user_id":"replayed","features":[1]}"#);
            assert_eq!(c.enrol(&body).status, 422);
            *c.scratch.borrow_mut() = body;
        })),
        row(
            409,
            "template_limit",
            Yes,
            SpendsRid,
            Box::new(|c| c.enrol(&c.sealed(&request("full", &faces().enrol)))),
        ),
        row(
            413,
            "body_too_large",
            Yes,
            Unchanged,
            Box::new(|c| c.enrol(&vec![b' '; 70_000])),
        ),
        row(
            422,
            "malformed_payload",
            Yes,
            SpendsRid,
            Box::new(|c| c.enrol(&c.envelope(b"not json"))),
        ),
        row(
            422,
            "wrong_dimension",
            Yes,
            SpendsRid,
            Box::new(|c| {
                let body = c.envelope(br#"{"user_id":"w","features":[0.6,0.8]}"#);
                c.enrol(&body)
            }),
        ),
        row(
            422,
            "non_finite_feature",
            Yes,
            SpendsRid,
            Box::new(|c| {
                let mut values = vec!["0.1"; 128];
                values[5] = "NaN";
                let plaintext = format!(r#"{{"user_id":"n","features":[{}]}}"#, values.join(","));
                c.enrol(&c.envelope(plaintext.as_bytes()))
            }),
        ),
        row(
            422,
            "zero_norm",
            Yes,
            SpendsRid,
            Box::new(|c| {
                let plaintext = format!(
                    r#"{{"user_id":"z","features":[{}]}}"#,
                    vec!["0"; 128].join(",")
                );
                c.enrol(&c.envelope(plaintext.as_bytes()))
            }),
        ),
        row(
            422,
            "invalid_field",
            Yes,
            SpendsRid,
            Box::new(|c| c.enrol(&c.sealed(&request("", &faces().enrol)))),
        ),
        row(
            401,
            "unauthenticated",
            Yes,
            Unchanged,
            Box::new(|c| {
                let body = c.sealed(&request("anonymous", &faces().enrol));
                c.send_as("POST", "/v1/enroll", &body, None)
            }),
        ),
        row(
            403,
            "forbidden",
            Yes,
            Unchanged,
            Box::new(|c| {
                let body = c.sealed(&request("not-allowed", &faces().enrol));
                c.send_as("POST", "/v1/enroll", &body, Some(&c.assessor))
            }),
        ),
        row(
            429,
            "rate_limited",
            Yes,
            SpendsRid,
            Box::new(|c| {
                c.send(
                    "POST",
                    "/v1/assess",
                    &c.sealed(&request("busy", &faces().genuine)),
                )
            }),
        )
        .after(Box::new(|c| {
            // The user's burst (20; one more a minute) spent.
            for _ in 0..=20 {
                let body = c.sealed(&request("busy", &faces().genuine));
                if c.send("POST", "/v1/assess", &body).status == 429 {
                    return;
                }
            }
            panic!("the burst of 20 was never spent");
        })),
        row(
            401,
            "unauthorized",
            No,
            Unchanged,
            Box::new(|c| c.get("/metrics", Some("wrong"))),
        ),
        row(
            404,
            "not_found",
            No,
            Unchanged,
            Box::new(|c| c.get("/v1/nothing-here", None)),
        ),
        row(
            405,
            "method_not_allowed",
            No,
            Unchanged,
            Box::new(|c| c.get("/v1/enroll", None)),
        ),
        row(
            400,
            "bad_nonce",
            No,
            Unchanged,
            Box::new(|c| c.get("/v1/attestation?nonce=short", None)),
        ),
        row(
            503,
            "overloaded",
            Yes,
            Unchanged,
            Box::new(|c| {
                // A stalled upload that holds the whole budget of bodies in flight.
                let mut stalled = TcpStream::connect(&c.address).unwrap();
                stalled
                .write_all(b"POST /v1/enroll HTTP/1.1\r\nHost: localhost\r\nContent-Length: 65536\r\n\r\n{")
                .unwrap();
                std::thread::sleep(Duration::from_millis(300));
                let answer = c.enrol(&c.sealed(&request("o", &faces().enrol)));
                // Let the stalled one go (`incomplete_body`, counted under its own code).
                let _ = stalled.shutdown(std::net::Shutdown::Write);
                let cut = wire::read_answer(&mut stalled);
                assert_eq!(cut.body["error"], "incomplete_body");
                answer
            }),
        ),
    ]
}

/// Starts the server for the table: small bodies budget (for `overloaded`), the operator's
/// token, two clients, and encryption keys that live 60 s with 5 s of grace (for
/// `key_retired`).
fn start(dir: &Path) -> Ctx {
    let full = IdentityKey::generate().unwrap();
    let assessor = IdentityKey::generate().unwrap();
    let clients = dir.join("clients.toml");
    std::fs::write(
        &clients,
        format!(
            "[[client]]\nid = \"full\"\npermissions = [\"enroll\", \"assess\", \"erase\", \"identify\"]\n\
             public_key = \"\"\"\n{}\"\"\"\n\n[[client]]\nid = \"assessor\"\n\
             permissions = [\"assess\"]\npublic_key = \"\"\"\n{}\"\"\"\n",
            full.public().to_pem(),
            assessor.public().to_pem()
        ),
    )
    .unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        "[server]\nmax_body_bytes = 65536\nbodies_in_flight_bytes = 65536\n\
         [keys]\nencryption_key_lifetime_secs = 60\nencryption_key_grace_secs = 5\n\
         [protocol]\niat_window_secs = 5\n\
         [limits]\nuser_per_minute = 1\nuser_burst = 20\n",
    )
    .unwrap();
    launch(
        dir,
        Arc::new(ClientCredential::new("full", full)),
        Arc::new(ClientCredential::new("assessor", assessor)),
    )
}

fn launch(dir: &Path, full: Arc<ClientCredential>, assessor: Arc<ClientCredential>) -> Ctx {
    let (clients, config) = (dir.join("clients.toml"), dir.join("config.toml"));
    let server = TestServer::builder(&dir.join("data"), &dir.join("keys"))
        .master_key(MASTER_KEY)
        .args(&[
            "--clients",
            clients.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ])
        .env(&[("TEE_RISK_ADMIN_TOKEN", ADMIN_TOKEN)])
        .without_test_client()
        .try_start()
        .unwrap_or_else(|(status, log)| panic!("server did not start ({status:?}):\n{log}"));
    let address = server.url.trim_start_matches("http://").to_owned();
    Ctx {
        server,
        address,
        full,
        assessor,
        scratch: RefCell::new(Vec::new()),
    }
}

/// Checks one refusal: status, code, detail, headers; then the counter and the store.
fn check(
    ctx: &Ctx,
    row: &Row,
    answer: &Answer,
    before: &(u64, BTreeMap<String, u64>),
    seen_ids: &mut Vec<String>,
) {
    let what = row.code;
    assert_eq!(
        (answer.status, answer.body["error"].as_str().unwrap_or("?")),
        (row.status, row.code),
        "{what}: {}",
        answer.body
    );
    assert!(
        answer.body["detail"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{what}: a detail"
    );
    let id = answer
        .headers
        .get("x-request-id")
        .unwrap_or_else(|| panic!("{what}: x-request-id"));
    assert!(
        !id.is_empty() && !seen_ids.contains(id),
        "{what}: a fresh x-request-id"
    );
    seen_ids.push(id.clone());
    // RFC 9110 §15.5.6: a 405 names the methods the path answers.
    assert_eq!(
        answer.headers.get("allow").map(String::as_str),
        (row.code == "method_not_allowed").then_some("POST"),
        "{what}: Allow"
    );
    if matches!(row.code, "rate_limited" | "storage_unavailable") {
        let seconds: u64 = answer.headers["retry-after"].parse().unwrap();
        assert!(seconds >= 1, "{what}: Retry-After");
    } else {
        assert!(
            !answer.headers.contains_key("retry-after"),
            "{what}: no Retry-After"
        );
    }
    let (refusals, tables) = ctx.counters(row.code);
    let counted = u64::from(row.counted == Counted::Yes);
    assert_eq!(refusals - before.0, counted, "{what}: refusal counter");
    let mut expected = before.1.clone();
    if row.store == Effect::SpendsRid {
        *expected
            .get_mut("replay")
            .expect("the replay table is counted") += 1;
    }
    assert_eq!(tables, expected, "{what}: store counts");
}

#[test]
fn every_documented_refusal_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = start(dir.path());
    let first_key = ctx.keys();
    // An account at its template limit (5).
    let client = Client::fetch_keys(&ctx.server.url)
        .unwrap()
        .with_credential(ctx.full.clone());
    for i in 0..5 {
        let capture = new_capture(&faces().enrol, 100 + i);
        client.enroll(&request("full", &capture)).unwrap();
    }
    // And an accepted assessment in its history (tampered with at the end).
    let accepted = client.assess(&request("full", &faces().genuine)).unwrap();
    assert_eq!(accepted.decision, "allow", "{accepted}");

    let rows = rows();
    let documented = documented_rows();
    for (status, code) in &documented {
        let here = rows
            .iter()
            .any(|r| (r.status, r.code) == (*status, code.as_str()));
        let elsewhere = PRODUCED_ELSEWHERE.iter().any(|(c, _)| c == code);
        let below = matches!(code.as_str(), "key_retired" | "internal_error");
        assert!(
            here || elsewhere || below,
            "no case for the documented {status} {code}"
        );
    }
    let mut seen_ids = Vec::new();
    for row in &rows {
        assert!(
            documented.contains(&(row.status, row.code.to_owned())),
            "{} {} is not in docs/PROTOCOL.md §4",
            row.status,
            row.code
        );
        if let Some(setup) = &row.setup {
            setup(&ctx);
        }
        let before = ctx.counters(row.code);
        let answer = (row.case)(&ctx);
        check(&ctx, row, &answer, &before, &mut seen_ids);
    }

    every_route_answers_as_documented(&ctx);

    // key_retired: the first key expires at 60 s and is wiped 5 s later. A client still
    // holding it gets the code that tells it to fetch keys again.
    let deadline = Instant::now() + Duration::from_secs(120);
    while ctx.get("/v1/keys", None).body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["kid"] == first_key.kid().as_str())
    {
        assert!(Instant::now() < deadline, "the first key was never retired");
        std::thread::sleep(Duration::from_millis(500));
    }
    let retired = row(
        400,
        "key_retired",
        Counted::Yes,
        Effect::Unchanged,
        Box::new(move |c| {
            let header = ProtectedHeader::new(&first_key.kid(), unix_now()).unwrap();
            let plaintext = serde_json::to_vec(&request("late", &faces().enrol)).unwrap();
            c.enrol(&seal(&first_key, &header, &plaintext).unwrap())
        }),
    );
    let before = ctx.counters(retired.code);
    let answer = (retired.case)(&ctx);
    check(&ctx, &retired, &answer, &before, &mut seen_ids);

    // internal_error: a fault that is not the storage's. A history record of "full" is
    // tampered with while the service is down; the next assessment that reads it fails,
    // and says no more than that (the cause is in the log, under the request id).
    let (full, assessor) = (ctx.full.clone(), ctx.assessor.clone());
    ctx.server.stop_cleanly();
    tamper_history_of(&dir.path().join("data"), "full");
    let ctx = launch(dir.path(), full, assessor);
    let internal = row(
        500,
        "internal_error",
        Counted::Yes,
        Effect::SpendsRid,
        Box::new(|c| {
            c.send(
                "POST",
                "/v1/assess",
                &c.sealed(&request("full", &faces().genuine)),
            )
        }),
    );
    let before = ctx.counters(internal.code);
    let answer = (internal.case)(&ctx);
    check(&ctx, &internal, &answer, &before, &mut seen_ids);
    let id = &answer.headers["x-request-id"];
    let log = ctx.server.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains(id.as_str()) && l.contains("ERROR")),
        "the cause is logged under the request id {id}"
    );
    assert!(!answer.body["detail"].as_str().unwrap().contains("decrypt"));

    // docs/openapi.yaml: every answer above was checked against it; now every route must
    // have answered 200 and every documented error code must have come back.
    let (operations, codes) = openapi::covered();
    for (method, route) in openapi::documented_operations() {
        assert!(
            route.starts_with("/cluster/")
                || route.starts_with("/v1/custody")
                || operations.contains(&(method.clone(), route.clone())),
            "no 200 answer of {method} {route} was checked against docs/openapi.yaml"
        );
    }
    // The protocol's error codes (what the client reads) are exactly the documented ones.
    let typed: std::collections::BTreeSet<String> = tee_risk::protocol::reply::ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    assert_eq!(typed, openapi::documented_codes());
    for code in openapi::documented_codes() {
        let elsewhere = OPENAPI_CODES_ELSEWHERE.iter().any(|(c, _)| *c == code)
            || PRODUCED_ELSEWHERE
                .iter()
                .any(|(c, t)| *c == code && [CUSTODY_TEST, CUSTODY_REKEY_TEST].contains(t));
        assert!(
            elsewhere || codes.contains(&code),
            "the documented error code {code} was never produced here"
        );
    }
}

/// Error codes in docs/openapi.yaml that other tests produce and check against it.
const OPENAPI_CODES_ELSEWHERE: [(&str, &str); 4] = [
    (
        "storage_unavailable",
        "tests/storage_faults.rs (a full disk)",
    ),
    ("join_refused", "tests/cluster.rs (the join refusals)"),
    ("bad_join_request", "tests/cluster.rs"),
    (
        "join_unavailable",
        "a peer whose own attestation fails (a TEE device error): not producible with the \
         simulated platform; service::cluster's unit tests cover the mapping",
    ),
];

/// A 200 answer of every route that is not a cluster one, each checked against
/// docs/openapi.yaml by `exchange`; the payloads of encrypted answers after decryption.
fn every_route_answers_as_documented(ctx: &Ctx) {
    for path in ["/healthz", "/v1/keys"] {
        assert_eq!(ctx.get(path, None).status, 200, "{path}");
    }
    let nonce = b64_encode(&[7u8; 32]);
    let attestation = ctx.get(&format!("/v1/attestation?nonce={nonce}"), None);
    assert_eq!(attestation.status, 200, "{}", attestation.body);
    let status = ctx.get("/admin/db/status", Some(ADMIN_TOKEN));
    assert_eq!(status.status, 200, "{}", status.body);

    let face = synthetic_face(4242);
    let user = request("openapi-user", &face);
    for path in ["/v1/enroll", "/v1/assess"] {
        let answer = ctx.send("POST", path, &ctx.sealed(&user));
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    }
    // Encrypted answers: the wire shape is checked by `exchange`, the payload here.
    let client = Client::fetch_keys(&ctx.server.url).unwrap();
    let identify = tee_risk::client::IdentifyRequest {
        features: face.clone(),
        liveness: None,
        device_id: None,
        top_k: Some(3),
        mode: None,
        face_model: None,
    };
    for (path, sealed) in [
        (
            "/v1/identify",
            client.seal_request(&identify, true).unwrap(),
        ),
        ("/v1/assess", client.seal_request(&user, true).unwrap()),
    ] {
        let answer = ctx.send("POST", path, &sealed.body);
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        let raw = tee_risk::client::RawResponse {
            status: 200,
            body: answer.raw.clone(),
        };
        let payload = client.verify_sealed_answer(&sealed, &raw).unwrap();
        openapi::check_payload("POST", path, &payload);
    }
    let erase = ctx.envelope(br#"{"user_id":"openapi-user"}"#);
    let answer = ctx.send("DELETE", "/v1/users", &erase);
    assert_eq!(answer.status, 200, "{}", answer.body);
}

/// Flips a byte inside the sealed body of one of `user`'s history records.
fn tamper_history_of(data: &Path, user: &str) {
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&data.join("db")).unwrap());
    let vault = Vault::open(store.clone(), &support::master_key(MASTER_KEY)).unwrap();
    let index = *vault.user(user).current();
    drop(vault);
    let records = store
        .scan_prefix_last(Table::FeatureHistory, &index, 1)
        .unwrap();
    let (key, mut value) = records.into_iter().next().expect("a history record");
    let at = value.len() - 20;
    value[at] ^= 0x01;
    store.insert(Table::FeatureHistory, &key, value).unwrap();
    store.flush().unwrap();
}

fn unit(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

/// A unit vector orthogonal to the unit vector `e` (Gram-Schmidt on a synthetic face).
fn orthogonal(e: &[f32], n: usize) -> Vec<f32> {
    let w = synthetic_face(n);
    let along: f32 = w.iter().zip(e).map(|(a, b)| a * b).sum();
    unit(
        &w.iter()
            .zip(e)
            .map(|(a, b)| a - along * b)
            .collect::<Vec<_>>(),
    )
}

/// `cos · e + sin · v`, for unit `e` ⊥ unit `v`: a vector at cosine `cos` from `e`.
fn at_cosine(e: &[f32], v: &[f32], cos: f32) -> Vec<f32> {
    let sin = (1.0 - cos * cos).sqrt();
    e.iter().zip(v).map(|(a, b)| cos * a + sin * b).collect()
}

/// The cosine with one template whose evidence (−log10 FMR, shipped calibration) is
/// `evidence`: bisection, the evidence rising with the cosine.
fn cosine_for_evidence(model: &RiskModel, evidence: f64) -> f32 {
    let (mut low, mut high) = (0.0f32, 1.0f32);
    for _ in 0..40 {
        let mid = (low + high) / 2.0;
        if model.evidence(1, mid) < evidence {
            low = mid;
        } else {
            high = mid;
        }
    }
    high
}

fn has(answer: &AssessReply, reason: &str) -> bool {
    answer.reasons.iter().any(|r| r == reason)
}

/// Every reason code an assessment can give, produced over HTTP by the attempt it names
/// (weak and drifting matches built at the cosines the shipped calibration puts them).
#[test]
fn every_reason_code_comes_back_over_http() {
    let model = RiskModel::builtin();
    let dir = tempfile::tempdir().unwrap();
    let (data, keys) = (dir.path().join("data"), dir.path().join("keys"));
    let server = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .start();
    let client = server.client();
    let mut seen = std::collections::BTreeSet::new();
    let mut note = |answer: &AssessReply| {
        for reason in &answer.reasons {
            seen.insert(reason.to_string());
        }
    };
    // A face per account: unit synthetic vectors, far from each other and from real faces.
    let face = |n: usize| unit(&synthetic_face(1_000 + n));
    let enrol = |user: &str, features: &[f32], device: &str| {
        let mut r = request(user, features);
        r.device_id = Some(device.into());
        let answer = client.enroll(&r).unwrap();
        assert_eq!(answer.outcome, "enrolled", "{user}: {answer}");
    };
    let assess = |user: &str, features: &[f32], device: &str, liveness: f32| {
        let mut r = request(user, features);
        r.device_id = Some(device.into());
        r.liveness = Some(liveness);
        client.assess(&r).unwrap()
    };

    let answer = assess("r-nobody", &face(0), "phone-1", 0.95);
    assert_eq!(answer.reasons, ["no_enrolment"]);
    note(&answer);

    enrol("r-nomatch", &faces().enrol, "phone-1");
    let answer = assess("r-nomatch", &faces().impostor, "phone-1", 0.95);
    assert!(has(&answer, "no_match"), "{answer}");
    note(&answer);

    let e = face(1);
    enrol("r-weak", &e, "phone-1");
    let weak = at_cosine(&e, &orthogonal(&e, 5_001), cosine_for_evidence(&model, 2.5));
    let answer = assess("r-weak", &weak, "phone-1", 0.95);
    assert!(
        has(&answer, "weak_match") && answer.decision != "allow",
        "{answer}"
    );
    note(&answer);

    let e = face(2);
    enrol("r-live", &e, "phone-1");
    let answer = assess("r-live", &new_capture(&e, 1), "phone-1", 0.1);
    assert!(has(&answer, "low_liveness"), "{answer}");
    note(&answer);

    let e = face(3);
    enrol("r-inject", &e, "phone-1");
    let answer = assess("r-inject", &e, "phone-1", 0.95);
    assert_eq!(
        (answer.decision.as_str(), codes(&answer.reasons)),
        ("deny", vec!["template_injection"])
    );
    note(&answer);

    // A device of its own: phone-1 has served five accounts by now (shared_device).
    let e = face(4);
    enrol("r-replay", &e, "phone-replay");
    let probe = new_capture(&e, 1);
    assert_eq!(
        assess("r-replay", &probe, "phone-replay", 0.95).decision,
        "allow"
    );
    let answer = assess("r-replay", &probe, "phone-replay", 0.95);
    assert_eq!(
        (answer.decision.as_str(), codes(&answer.reasons)),
        ("deny", vec!["replayed_probe"])
    );
    note(&answer);

    // One face, two accounts: the face enrolled as r-nomatch, presented for r-conflict.
    enrol("r-conflict", &face(5), "phone-1");
    let answer = assess("r-conflict", &faces().genuine, "phone-1", 0.95);
    assert!(has(&answer, "identity_conflict"), "{answer}");
    note(&answer);

    // A burst of failed attempts on one account.
    enrol("r-burst", &face(6), "phone-1");
    let mut answer = None;
    for i in 0..8 {
        answer = Some(assess(
            "r-burst",
            &new_capture(&face(7), i),
            "phone-1",
            0.95,
        ));
    }
    let answer = answer.unwrap();
    assert!(
        has(&answer, "high_velocity") && has(&answer, "repeated_failures"),
        "{answer}"
    );
    note(&answer);

    // One device, several accounts; and a device new to an account.
    let (a, b) = (face(8), face(9));
    enrol("r-kiosk-a", &a, "phone-a");
    enrol("r-kiosk-b", &b, "phone-b");
    let answer = assess("r-kiosk-a", &new_capture(&a, 1), "kiosk-7", 0.95);
    assert!(has(&answer, "new_device"), "{answer}");
    note(&answer);
    let answer = assess("r-kiosk-b", &new_capture(&b, 1), "kiosk-7", 0.95);
    assert!(has(&answer, "shared_device"), "{answer}");
    note(&answer);

    // Drift: a probe that still matches the template (no weak match) but is far from the
    // user's recent accepted probe. With no other signal, the step-up names the signal that
    // added most to the risk: drift. Velocity windows live in memory, so a restart between
    // the accepted probe and this one leaves drift alone (a burst would otherwise outweigh it).
    let e = face(10);
    let v = orthogonal(&e, 5_010);
    enrol("r-drift", &e, "phone-drift");
    let (near, far) = (
        cosine_for_evidence(&model, 5.0),
        cosine_for_evidence(&model, 3.5),
    );
    let accepted = at_cosine(&e, &v, near);
    let minus_v: Vec<f32> = v.iter().map(|x| -x).collect();
    let drifting = at_cosine(&e, &minus_v, far);
    let to_history: f32 = accepted.iter().zip(&drifting).map(|(a, b)| a * b).sum();
    assert!(
        model.evidence(1, to_history) < 1.0,
        "the probes are far apart"
    );
    let answer = assess("r-drift", &accepted, "phone-drift", 0.95);
    assert_eq!(answer.decision, "allow", "{answer}");
    drop(client);
    server.stop_cleanly();
    let server = TestServer::builder(&data, &keys)
        .master_key(MASTER_KEY)
        .start();
    let mut r = request("r-drift", &drifting);
    r.device_id = Some("phone-drift".into());
    let answer = server.client().assess(&r).unwrap();
    assert_eq!(
        (answer.decision.as_str(), codes(&answer.reasons)),
        ("step_up", vec!["drift"]),
        "{answer}"
    );
    note(&answer);

    let all: std::collections::BTreeSet<String> = tee_risk::internals::risk::Reason::ALL
        .iter()
        .map(|r| r.as_str().to_owned())
        .collect();
    assert_eq!(seen, all, "every reason code came back over HTTP");
    server.stop_cleanly();
}

/// The contract check is not vacuous: answers the document does not allow are refused.
#[test]
fn docs_openapi_refuses_what_it_does_not_document() {
    let refused = |method: &str, path: &str, status: u16, body: Value| {
        let bytes = serde_json::to_vec(&body).unwrap();
        let outcome = std::panic::catch_unwind(|| {
            openapi::check(method, path, status, "application/json", &bytes)
        });
        assert!(outcome.is_err(), "{method} {path} {status} {body} passed");
    };
    let error = |code: &str| json!({ "error": code, "detail": "x" });
    // A code not documented for that route and status, and one documented nowhere.
    refused("POST", "/v1/assess", 409, error("template_limit"));
    refused("POST", "/v1/enroll", 400, error("no_such_code"));
    // An error without its detail; a status the route does not document.
    refused("POST", "/v1/enroll", 400, json!({ "error": "bad_header" }));
    refused("POST", "/v1/enroll", 418, error("bad_header"));
    // A signed answer missing its signature, and one whose payload breaks its schema.
    refused(
        "POST",
        "/v1/assess",
        200,
        json!({ "protected": "e30", "payload": "e30" }),
    );
    let payload = json!({ "op": "assess", "rid": "AA", "req_sm3": "0".repeat(64), "iat": 1,
        "decision": "maybe", "score": 0.5, "reasons": [], "model": "logit-00" });
    let signed = json!({ "protected": "e30", "signature": "AA",
        "payload": b64_encode(&serde_json::to_vec(&payload).unwrap()) });
    refused("POST", "/v1/assess", 200, signed);
    // Identify answers only encrypted; unknown paths only 404.
    refused(
        "POST",
        "/v1/identify",
        200,
        json!({ "protected": "e30", "payload": "e30", "signature": "AA" }),
    );
    refused("GET", "/v2/keys", 200, json!({}));
    // And what it does document passes.
    openapi::check(
        "POST",
        "/v1/assess",
        409,
        "application/json",
        br#"{"error":"replayed_request","detail":"x"}"#,
    );
}

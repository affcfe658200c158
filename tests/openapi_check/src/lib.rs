//! docs/openapi.yaml held to the real server: every answer a test provokes is checked
//! against the document (its route and method exist, its status is documented there, its
//! body validates against that response's JSON Schema, and a signed answer's payload against
//! the route's `x-signed-payload`), and what was seen is recorded so that a test can require
//! every documented route and error code to have been produced.
//!
//! (tests/support/openapi.rs re-exports this crate.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// What was seen: (method, route, status) → error codes (an empty string for a success).
type Seen = BTreeMap<(String, String, u16), BTreeSet<String>>;

fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: Value = serde_norway::from_str(&text).unwrap();
        assert_eq!(doc["openapi"], "3.1.0", "docs/openapi.yaml is OpenAPI 3.1");
        doc
    })
}

fn seen() -> &'static Mutex<Seen> {
    static SEEN: OnceLock<Mutex<Seen>> = OnceLock::new();
    SEEN.get_or_init(Default::default)
}

/// A JSON pointer token.
fn token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// A validator for the schema at `pointer` in the document (`$ref`s resolve inside it).
fn validator(pointer: &str) -> Arc<jsonschema::Validator> {
    static CACHE: OnceLock<Mutex<BTreeMap<String, Arc<jsonschema::Validator>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(v) = cache.lock().unwrap().get(pointer) {
        return v.clone();
    }
    // The whole document as the root schema, with a `$ref` to the part wanted: OpenAPI's own
    // members are unknown keywords to JSON Schema, and `#/components/…` references resolve.
    let mut root = document().clone();
    root["$ref"] = json!(format!("#{pointer}"));
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    let built = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&root)
        .unwrap_or_else(|e| panic!("docs/openapi.yaml {pointer}: not a valid schema: {e}"));
    let built = Arc::new(built);
    cache
        .lock()
        .unwrap()
        .insert(pointer.to_owned(), built.clone());
    built
}

fn validate(pointer: &str, instance: &Value, what: &str) {
    let validator = validator(pointer);
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not match docs/openapi.yaml {pointer}: {errors:?}\n{instance}"
    );
}

/// Follows a `$ref` to a shared response, returning the pointer of the response object.
fn response_pointer(pointer: String) -> String {
    let object = document().pointer(&pointer).unwrap();
    match object.get("$ref").and_then(Value::as_str) {
        Some(reference) => reference.trim_start_matches('#').to_owned(),
        None => pointer,
    }
}

/// Checks one answer: `method` and request `target` as sent, the answer's status,
/// content type and body. Panics with what differs from the document.
pub fn check(method: &str, target: &str, status: u16, content_type: &str, body: &[u8]) {
    let route = target.split('?').next().unwrap_or(target);
    let what = format!("{method} {route} → {status}");
    let operation = format!("/paths/{}/{}", token(route), method.to_ascii_lowercase());
    let pointer = if document()["paths"].get(route).is_none() {
        assert_eq!(
            status, 404,
            "{what}: a path not in docs/openapi.yaml must be 404"
        );
        "/components/responses/NotFound".to_owned()
    } else if document().pointer(&operation).is_none() {
        assert_eq!(
            status, 405,
            "{what}: a method not in docs/openapi.yaml must be 405"
        );
        "/components/responses/MethodNotAllowed".to_owned()
    } else {
        let pointer = format!("{operation}/responses/{status}");
        assert!(
            document().pointer(&pointer).is_some(),
            "{what}: status {status} is not documented in docs/openapi.yaml"
        );
        response_pointer(pointer)
    };
    let media = content_type.split(';').next().unwrap_or("").trim();
    let content = document()
        .pointer(&format!("{pointer}/content"))
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("{what}: no content documented"));
    assert!(
        content.contains_key(media),
        "{what}: content type {media:?} is not documented ({:?})",
        content.keys().collect::<Vec<_>>()
    );
    let mut code = String::new();
    if media == "application/json" {
        let value: Value = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("{what}: the body is not JSON ({e})"));
        validate(
            &format!("{pointer}/content/{}/schema", token(media)),
            &value,
            &what,
        );
        if status >= 400 {
            code = value["error"].as_str().unwrap_or_default().to_owned();
        }
        // A signed answer in the clear: its payload too.
        if status == 200 && value.get("signature").is_some() {
            let payload = &format!("{pointer}/x-signed-payload");
            if document().pointer(payload).is_some() {
                let bytes = URL_SAFE_NO_PAD
                    .decode(value["payload"].as_str().unwrap())
                    .unwrap_or_else(|_| panic!("{what}: the payload is not base64url"));
                let payload_value: Value = serde_json::from_slice(&bytes).unwrap();
                validate(payload, &payload_value, &format!("{what} (signed payload)"));
            }
        }
    } else {
        assert!(std::str::from_utf8(body).is_ok(), "{what}: not text");
    }
    seen()
        .lock()
        .unwrap()
        .entry((method.to_owned(), route.to_owned(), status))
        .or_default()
        .insert(code);
}

/// Checks a payload the test decrypted from an encrypted answer of `method route`.
pub fn check_payload(method: &str, route: &str, payload: &Value) {
    let pointer = format!(
        "/paths/{}/{}/responses/200/x-signed-payload",
        token(route),
        method.to_ascii_lowercase()
    );
    validate(
        &pointer,
        payload,
        &format!("{method} {route} (decrypted payload)"),
    );
}

/// Checks a value against a schema of the document's components (`#/components/schemas/…`).
pub fn check_schema(name: &str, value: &Value) {
    validate(&format!("/components/schemas/{name}"), value, name);
}

/// Every (method, route) the document has.
pub fn documented_operations() -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (route, item) in document()["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.insert((method.to_ascii_uppercase(), route.clone()));
        }
    }
    operations
}

/// Every error code the document names.
pub fn documented_codes() -> BTreeSet<String> {
    document()["components"]["schemas"]["Error"]["properties"]["error"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect()
}

/// Operations answered 200 so far, and error codes seen so far.
pub fn covered() -> (BTreeSet<(String, String)>, BTreeSet<String>) {
    let seen = seen().lock().unwrap();
    let operations = seen
        .iter()
        .filter(|((_, _, status), _)| *status == 200)
        .map(|((method, route, _), _)| (method.clone(), route.clone()))
        .collect();
    let codes = seen
        .values()
        .flatten()
        .filter(|c| !c.is_empty())
        .cloned()
        .collect();
    (operations, codes)
}

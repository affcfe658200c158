//! The service driven in-process, on the in-memory store: no HTTP, no disk. What the HTTP
//! tests check over loopback, checked here at the layer that decides.

use std::sync::Arc;

use super::*;
use crate::obs::Now;
use crate::protocol::reply::ErrorCode;
use crate::protocol::request::seal;
use crate::protocol::response::verify;
use crate::service::access::{Authorized, Permission};
use crate::store::{MasterKey, MemoryStore};

const NOW: i64 = 1_800_000_000;

pub(super) fn service() -> Service {
    // Two face models on the shipped policy: "four" (4-d, the default) and "three".
    let face_models = FaceModels::new(
        "four",
        vec![
            FaceModel::new("three", 3, risk::default_policy()),
            FaceModel::new("four", 4, risk::default_policy()),
        ],
    )
    .unwrap();
    let settings = Settings {
        face_models,
        iat_window_secs: 120,
        replay_cache_capacity: 1000,
        encryption_key_lifetime_secs: 3600,
        encryption_key_grace_secs: 300,
        velocity_window_secs: 600,
        max_devices: 16,
        max_templates: 5,
        user_per_minute: 0,
        user_burst: 1,
    };
    let master = MasterKey::from_hex(&"42".repeat(32)).unwrap();
    let vault = Vault::open(Arc::new(MemoryStore::new()), &master).unwrap();
    Service::new(&settings, vault, NOW).unwrap()
}

/// An envelope for `payload`, encrypted to the service's current key, issued at `iat`.
fn envelope(service: &Service, payload: serde_json::Value, iat: i64) -> Vec<u8> {
    let key = service.encryption_public();
    let header = ProtectedHeader::new(&key.kid(), iat).unwrap();
    seal(&key, &header, &serde_json::to_vec(&payload).unwrap()).unwrap()
}

/// The signed answer's payload, after checking the signature with the identity key.
fn answer(service: &Service, answer: &Answer) -> serde_json::Value {
    let Answer::Signed(signed) = answer else {
        panic!("a signed answer in the clear");
    };
    let payload = verify(service.identity_public(), signed).expect("signed by the identity");
    serde_json::from_slice(&payload).unwrap()
}

#[test]
fn an_identification_is_encrypted_to_its_client_and_logged_sealed() {
    let service = service();
    let enrol = |user: &str, face: serde_json::Value| {
        let body = envelope(
            &service,
            serde_json::json!({"user_id": user, "features": face}),
            NOW,
        );
        answer(&service, &service.enroll(&body, Now::at(NOW)).unwrap());
    };
    enrol("alice", serde_json::json!([0.6, 0.8, 0.0, 0.0]));
    enrol("bob", serde_json::json!([0.0, 0.0, 1.0, 0.0]));
    let key = service.encryption_public();
    let header = ProtectedHeader::new(&key.kid(), NOW)
        .unwrap()
        .with_encrypted_answer();
    let probe = serde_json::json!({"features": [0.6, 0.79, 0.02, 0.0], "top_k": 2});
    let (body, session_key) = crate::protocol::request::seal_keeping_key(
        &key,
        &header,
        &serde_json::to_vec(&probe).unwrap(),
    )
    .unwrap();
    let decider = Authorized {
        id: "bank".into(),
        permissions: vec![Permission::Identify],
    };
    let Answer::Encrypted(sealed) = service.identify(&body, Now::at(NOW), &decider).unwrap() else {
        panic!("identify answers encrypted");
    };
    let signed = crate::protocol::answer::open_answer(&session_key, &header.rid, &sealed).unwrap();
    let signed: SignedResponse = serde_json::from_slice(&signed).unwrap();
    let payload = answer(&service, &Answer::Signed(signed));
    assert_eq!(payload["candidates"][0]["user_id"], "alice", "{payload}");
    assert_eq!(payload["searched"], 2);
    // Logged sealed, under the named user's blind index, with the probe.
    let logs = service.vault().risk_logs().unwrap();
    let logged = logs.iter().find(|l| l.rid == header.rid).unwrap();
    assert_eq!(logged.decision, payload["decision"].as_str().unwrap());
    assert_eq!(logged.features.len(), 4);

    // Without `ans`: refused before anything is decrypted or spent.
    let plain = envelope(&service, probe.clone(), NOW);
    assert!(matches!(
        service.identify(&plain, Now::at(NOW), &decider),
        Err(ServiceError::AnswerEncryptionRequired)
    ));

    // Investigating needs `investigate`: refused after the payload is read (the request
    // id is spent), answered with ranked candidates and no decision once granted.
    let investigate =
        serde_json::json!({"features": [0.6, 0.79, 0.02, 0.0], "mode": "investigate"});
    let seal = |probe: &serde_json::Value| {
        let header = ProtectedHeader::new(&key.kid(), NOW)
            .unwrap()
            .with_encrypted_answer();
        let (body, session_key) = crate::protocol::request::seal_keeping_key(
            &key,
            &header,
            &serde_json::to_vec(probe).unwrap(),
        )
        .unwrap();
        (header, body, session_key)
    };
    let (_, body, _) = seal(&investigate);
    assert!(matches!(
        service.identify(&body, Now::at(NOW), &decider),
        Err(ServiceError::Forbidden(Permission::Investigate))
    ));
    let investigator = Authorized {
        id: "fraud-team".into(),
        permissions: vec![Permission::Investigate],
    };
    let (header, body, session_key) = seal(&investigate);
    let Answer::Encrypted(sealed) = service
        .identify(&body, Now::at(NOW), &investigator)
        .unwrap()
    else {
        panic!("identify answers encrypted");
    };
    let signed = crate::protocol::answer::open_answer(&session_key, &header.rid, &sealed).unwrap();
    let payload = answer(
        &service,
        &Answer::Signed(serde_json::from_slice(&signed).unwrap()),
    );
    assert_eq!(payload["mode"], "investigate", "{payload}");
    assert_eq!(payload["decision"], "candidates");
    assert_eq!(payload["candidates"][0]["rank"], 1);
    assert_eq!(payload["candidates"][0]["user_id"], "alice");
    assert!(payload["candidates"][0]["pair_fmr"].as_f64().unwrap() > 0.0);
    // And an investigator may not decide.
    let (_, body, _) = seal(&probe);
    assert!(matches!(
        service.identify(&body, Now::at(NOW), &investigator),
        Err(ServiceError::Forbidden(Permission::Identify))
    ));
}

#[test]
fn enrol_assess_refuse_and_erase_in_process() {
    let service = service();
    let face = serde_json::json!([0.6, 0.8, 0.0, 0.0]);
    let capture = serde_json::json!([0.6, 0.79, 0.02, 0.0]);
    let request = |features: &serde_json::Value| serde_json::json!({"user_id": "alice", "features": features, "liveness": 0.97});

    let enrol = envelope(&service, request(&face), NOW);
    let enrolled = answer(&service, &service.enroll(&enrol, Now::at(NOW)).unwrap());
    assert_eq!(enrolled["outcome"], "enrolled");
    assert_eq!(enrolled["req_sm3"], sm3_hex(&enrol));

    let assess = envelope(&service, request(&capture), NOW);
    let assessed = answer(&service, &service.assess(&assess, Now::at(NOW)).unwrap());
    assert_eq!(assessed["decision"], "allow", "{assessed}");

    // The same body again: its request id is spent.
    assert!(matches!(
        service.assess(&assess, Now::at(NOW)),
        Err(ServiceError::ReplayedRequest)
    ));
    // Issued too long ago, or for a key never issued.
    let stale = envelope(&service, request(&capture), NOW - 121);
    assert!(matches!(
        service.assess(&stale, Now::at(NOW)),
        Err(ServiceError::StaleRequest(120))
    ));
    let wrong_dimension = envelope(&service, request(&serde_json::json!([1.0, 0.0])), NOW);
    let refused = service.assess(&wrong_dimension, Now::at(NOW)).unwrap_err();
    assert_eq!(refused.code(), ErrorCode::WrongDimension);
    // Decrypted, so spent, though refused: the same body again is a replay.
    assert!(matches!(
        service.assess(&wrong_dimension, Now::at(NOW)),
        Err(ServiceError::ReplayedRequest)
    ));

    let erase = envelope(&service, serde_json::json!({"user_id": "alice"}), NOW);
    let erased = answer(&service, &service.erase(&erase, Now::at(NOW)).unwrap());
    assert_eq!(erased["erased"]["templates"], 1);
    let after = envelope(&service, request(&capture), NOW);
    let assessed = answer(&service, &service.assess(&after, Now::at(NOW)).unwrap());
    assert_eq!(assessed["reasons"], serde_json::json!(["no_enrolment"]));
}

/// PROTOCOL v1.3: a request names its face model (absent: the default); each model's
/// templates are compared only with probes of that model, and the answer says which
/// model decided. An unknown model, or a user enrolled under another model only, is
/// `invalid_field` with a detail that says what would be accepted.
#[test]
fn face_models_never_mix() {
    let service = service();
    let send = |payload: serde_json::Value| envelope(&service, payload, NOW);
    let alice = send(serde_json::json!({"user_id": "alice", "features": [0.6, 0.8, 0.0, 0.0]}));
    let enrolled = answer(&service, &service.enroll(&alice, Now::at(NOW)).unwrap());
    assert_eq!(enrolled["face_model"], "four");
    // The same face under another account, in the other model: no conflict (not
    // compared), and counted in that model only.
    let bob = send(
        serde_json::json!({"user_id": "bob", "features": [0.6, 0.8, 0.0], "face_model": "three"}),
    );
    let enrolled = answer(&service, &service.enroll(&bob, Now::at(NOW)).unwrap());
    assert_eq!(
        (
            &enrolled["outcome"],
            &enrolled["templates"],
            &enrolled["face_model"]
        ),
        (&"enrolled".into(), &1.into(), &"three".into())
    );
    let alice_in_three = send(
        serde_json::json!({"user_id": "alice", "features": [0.6, 0.8, 0.0], "face_model": "three"}),
    );
    let refused = service.assess(&alice_in_three, Now::at(NOW)).unwrap_err();
    assert_eq!(refused.code(), ErrorCode::InvalidField);
    assert!(
        refused.to_string().contains("templates are of four only"),
        "{refused}"
    );
    let unknown =
        send(serde_json::json!({"user_id": "alice", "features": [0.6, 0.8], "face_model": "two"}));
    let refused = service.assess(&unknown, Now::at(NOW)).unwrap_err();
    assert_eq!(refused.code(), ErrorCode::InvalidField);
    assert!(
        refused
            .to_string()
            .contains("accepted: four (4-d, the default), three (3-d)"),
        "{refused}"
    );
    let assessed = answer(
        &service,
        &service
            .assess(
                &send(serde_json::json!({"user_id": "alice", "features": [0.6, 0.79, 0.02, 0.0]})),
                Now::at(NOW),
            )
            .unwrap(),
    );
    assert_eq!(
        (&assessed["decision"], &assessed["face_model"]),
        (&"allow".into(), &"four".into())
    );
    // 1:N in "three" searches bob only.
    let decider = Authorized {
        id: "bank".into(),
        permissions: vec![Permission::Identify],
    };
    let key = service.encryption_public();
    let header = ProtectedHeader::new(&key.kid(), NOW)
        .unwrap()
        .with_encrypted_answer();
    let probe = serde_json::json!({"features": [0.6, 0.79, 0.02], "face_model": "three"});
    let (body, session_key) = crate::protocol::request::seal_keeping_key(
        &key,
        &header,
        &serde_json::to_vec(&probe).unwrap(),
    )
    .unwrap();
    let Answer::Encrypted(sealed) = service.identify(&body, Now::at(NOW), &decider).unwrap() else {
        panic!("identify answers encrypted");
    };
    let signed = crate::protocol::answer::open_answer(&session_key, &header.rid, &sealed).unwrap();
    let payload = answer(
        &service,
        &Answer::Signed(serde_json::from_slice(&signed).unwrap()),
    );
    assert_eq!(
        (&payload["searched"], &payload["face_model"]),
        (&1.into(), &"three".into())
    );
    assert_eq!(payload["candidates"][0]["user_id"], "bob", "{payload}");
    let logged = service.vault().risk_logs().unwrap();
    assert!(
        logged
            .iter()
            .any(|l| l.rid == header.rid && l.face_model == "three")
    );
}

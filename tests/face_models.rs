//! Two face models served side by side over HTTP (PROTOCOL v1.3 §2c), as a bank moving its
//! clients from dlib's 128-d ResNet to MobileFaceNet (192-d) would run them: the shipped
//! configuration accepts both; users enrolled under either are assessed and identified only
//! against templates of their own model, a user re-enrolling holds both, and a request that
//! names no model (a v1.1 client's) is the default model's. The faces are the real dev
//! embeddings of one set of photos by each model. One server for the binary.

mod support;

use tee_risk::client::{Client, ClientError, FeatureRequest, IdentifyRequest};
use tee_risk::internals::lab::Dataset;
use tee_risk::protocol::reply::IdentifyReply;

use support::{TestServer, shared_faces};

const MFN: &str = "mobilefacenet192";

/// The first `n` identities of a file, each with its images in file order.
fn people(file: &str, n: usize) -> Vec<(String, Vec<Vec<f32>>)> {
    let dataset = Dataset::load(&shared_faces(file, "dev")).unwrap();
    let mut groups: Vec<(String, Vec<Vec<f32>>)> = Vec::new();
    for sample in &dataset.samples {
        match groups.iter().position(|(id, _)| *id == sample.identity) {
            Some(at) => groups[at].1.push(sample.embedding.clone()),
            None => groups.push((sample.identity.clone(), vec![sample.embedding.clone()])),
        }
    }
    groups.truncate(n);
    groups
}

fn request(user: &str, features: &[f32], face_model: Option<&str>) -> FeatureRequest {
    FeatureRequest {
        user_id: user.into(),
        features: features.to_vec(),
        liveness: Some(0.95),
        // Each user's own phone: one device for many users is a risk signal of its own.
        device_id: Some(format!("phone-of-{user}")),
        face_model: face_model.map(Into::into),
    }
}

fn identify(client: &Client, features: &[f32], face_model: Option<&str>) -> IdentifyReply {
    client
        .identify(&IdentifyRequest {
            features: features.to_vec(),
            liveness: None,
            device_id: None,
            top_k: Some(2),
            mode: None,
            face_model: face_model.map(Into::into),
        })
        .unwrap()
}

/// The refusal's code and detail.
fn refused<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (String, String) {
    match result {
        Err(ClientError::Refused {
            status: 422,
            code,
            detail,
        }) => (code.to_string(), detail),
        other => panic!("expected a 422 refusal, got {other:?}"),
    }
}

#[test]
fn two_face_models_are_served_side_by_side_without_mixing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with_config(
        dir.path(),
        "[limits]\nuser_per_minute = 0\nclient_per_minute = 0\n",
    );
    let client = server.client();
    // The same photos through each model: people[i] is one person in both files.
    let (dlib, mfn) = (people("dlib128", 8), people("mobilefacenet192", 8));
    assert_eq!(dlib[3].0, mfn[3].0);
    let name = |i: usize| format!("user-{i}");
    let enrol = |i: usize, model: Option<&str>| {
        let images = if model == Some(MFN) { &mfn } else { &dlib };
        for image in &images[i].1[..2] {
            let answer = client.enroll(&request(&name(i), image, model)).unwrap();
            assert_eq!(answer.outcome, "enrolled", "{answer}");
            assert_eq!(answer.face_model, model.unwrap_or("dlib-resnet128"));
        }
    };
    // Users 0–2 enrolled by a v1.1 client (no face_model: the default, dlib), users 3–5
    // under MobileFaceNet; user 0 is re-enrolling under MobileFaceNet too.
    for i in 0..3 {
        enrol(i, None);
    }
    for i in [3, 4, 5, 0] {
        enrol(i, Some(MFN));
    }

    // Assessments: each model against its own templates, decided by its own policy.
    let assess = |i: usize, model: Option<&str>| {
        let images = if model == Some(MFN) { &mfn } else { &dlib };
        client.assess(&request(&name(i), &images[i].1[2], model))
    };
    for (i, model) in [(1, None), (3, Some(MFN)), (0, None), (0, Some(MFN))] {
        let answer = assess(i, model).unwrap();
        assert_eq!(answer.decision, "allow", "user {i} {model:?}: {answer}");
        assert_eq!(answer.face_model, model.unwrap_or("dlib-resnet128"));
    }
    // A user enrolled under MobileFaceNet only, assessed with a dlib embedding: refused,
    // naming the model the user is enrolled under, never compared across scales.
    let (code, detail) = refused(assess(3, None));
    assert_eq!(code, "invalid_field");
    assert!(
        detail.contains("templates are of mobilefacenet192 only"),
        "{detail}"
    );

    // 1:N searches the request's model only: `searched` counts that model's users.
    let found = identify(&client, &mfn[4].1[3], Some(MFN));
    assert_eq!(found.decision, "match", "{found}");
    assert_eq!(found.candidates[0].user_id, name(4));
    assert_eq!((found.searched, found.face_model.as_str()), (4, MFN));
    let found = identify(&client, &dlib[4].1[3], None);
    assert_eq!(found.decision, "no_match", "{found}");
    assert_eq!(
        (found.searched, found.face_model.as_str()),
        (3, "dlib-resnet128")
    );
    let found = identify(&client, &dlib[2].1[3], None);
    assert_eq!(found.candidates[0].user_id, name(2), "{found}");

    // Conflict search at enrolment is per model: user 1's face is enrolled under dlib only,
    // so a MobileFaceNet enrolment of it under another account is not a conflict there …
    let answer = client
        .enroll(&request("second-1", &mfn[1].1[3], Some(MFN)))
        .unwrap();
    assert_eq!(answer.outcome, "enrolled", "{answer}");
    // … but user 4's, enrolled under MobileFaceNet, is.
    let answer = client
        .enroll(&request("second-4", &mfn[4].1[4], Some(MFN)))
        .unwrap();
    assert_eq!(answer.outcome, "identity_conflict", "{answer}");

    // An unknown model, and a vector of another model's dimension: typed refusals that say
    // what would be accepted.
    let (code, detail) = refused(client.enroll(&request("x", &mfn[6].1[0], Some("arcface512"))));
    assert_eq!(code, "invalid_field");
    assert!(
        detail.contains("dlib-resnet128 (128-d, the default), mobilefacenet192 (192-d)"),
        "{detail}"
    );
    let (code, detail) = refused(client.enroll(&request("x", &dlib[6].1[0], Some(MFN))));
    assert_eq!(code, "wrong_dimension");
    assert!(
        detail.contains("192 values for face model mobilefacenet192, got 128"),
        "{detail}"
    );
    let (code, _) = refused(client.enroll(&request("x", &mfn[6].1[0], None)));
    assert_eq!(code, "wrong_dimension");

    // After a restart the galleries are rebuilt from the store, each model's apart.
    let vault_models = server.stop();
    assert!(vault_models.success());
    let server = TestServer::builder(&dir.path().join("data"), &dir.path().join("keys"))
        .master_key(support::MASTER_KEY)
        .args(&[
            "--config",
            dir.path().join("overrides.toml").to_str().unwrap(),
        ])
        .start();
    let client = server.client();
    let found = identify(&client, &mfn[5].1[3], Some(MFN));
    assert_eq!(found.candidates[0].user_id, name(5), "{found}");
    assert_eq!(found.searched, 5);
    let found = identify(&client, &dlib[0].1[3], None);
    assert_eq!(found.candidates[0].user_id, name(0), "{found}");
    assert_eq!(found.searched, 3);
}

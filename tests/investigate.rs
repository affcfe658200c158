//! Investigative 1:N over HTTP (`POST /v1/identify` with `"mode": "investigate"`): the
//! largest gallery `tee-risk eval` measures (docs/EVALUATION.md: 55 dev identities with two
//! images each and 1,034 distractors) enrolled through the API one user at a time, as a bank
//! would, then every mated probe searched: the rank-1 rate over HTTP must be the eval's
//! (within 1 %). The permission is its own: deciding and investigating are refused to a
//! client that holds only the other. One server for the binary.

mod support;

use std::sync::Arc;

use tee_risk::client::{Client, ClientError, FeatureRequest, IdentifyMode, IdentifyRequest};
use tee_risk::internals::crypto::keyfile::load_or_create_sm2_key;
use tee_risk::internals::lab::Dataset;
use tee_risk::protocol::client_auth::ClientCredential;

use support::{TestServer, dev_dataset};

fn request(features: &[f32], mode: Option<IdentifyMode>, top_k: Option<usize>) -> IdentifyRequest {
    IdentifyRequest {
        features: features.to_vec(),
        liveness: None,
        device_id: None,
        top_k,
        mode,
        face_model: None,
    }
}

/// Identities in order of first appearance, each with its images in file order.
fn grouped(dataset: &Dataset) -> Vec<(String, Vec<Vec<f32>>)> {
    let mut groups: Vec<(String, Vec<Vec<f32>>)> = Vec::new();
    for sample in &dataset.samples {
        match groups.iter_mut().find(|(id, _)| *id == sample.identity) {
            Some((_, images)) => images.push(sample.embedding.clone()),
            None => groups.push((sample.identity.clone(), vec![sample.embedding.clone()])),
        }
    }
    groups
}

#[test]
fn investigating_the_largest_gallery_ranks_as_the_eval_does_under_its_own_permission() {
    let dir = tempfile::tempdir().unwrap();
    let key = |name: &str| load_or_create_sm2_key(&dir.path().join(name)).unwrap();
    let (registrar, decider, investigator) = (key("r.hex"), key("d.hex"), key("i.hex"));
    // The eval's gallery has no conflict check (it measures search, not enrolment), and no
    // limit slows the enrolment of a thousand users.
    let server = TestServer::start_gallery(
        dir.path(),
        &[
            ("registrar", r#""enroll""#, registrar.public()),
            ("decider", r#""identify""#, decider.public()),
            ("investigator", r#""investigate""#, investigator.public()),
        ],
    );
    let connect = |id: &str, key| {
        Client::fetch_keys(&server.url)
            .unwrap()
            .with_credential(Arc::new(ClientCredential::new(id, key)))
    };
    let (registrar, decider, investigator) = (
        connect("registrar", registrar),
        connect("decider", decider),
        connect("investigator", investigator),
    );

    // The gallery of src/lab/identification.rs at its largest: the first half of the dev
    // identities (2 images each) and every other distractor, starting with the first.
    let dev = grouped(&dev_dataset());
    let distractors = grouped(&Dataset::load(&support::distractors_path()).unwrap());
    let enrolled = &dev[..dev.len() / 2];
    let enrol = |user: &str, face: &[f32]| {
        let answer = registrar
            .enroll(&FeatureRequest {
                user_id: user.into(),
                features: face.to_vec(),
                liveness: None,
                device_id: None,
                face_model: None,
            })
            .unwrap();
        assert_eq!(answer.outcome, "enrolled", "{answer}");
    };
    for (identity, images) in enrolled {
        enrol(identity, &images[0]);
        enrol(identity, &images[1]);
    }
    for (identity, images) in distractors.iter().step_by(2) {
        enrol(identity, &images[0]);
    }
    let gallery = enrolled.len() + distractors.len().div_ceil(2);

    // Every mated probe, investigated: the right identity at rank 1?
    let (mut searches, mut rank1) = (0usize, 0usize);
    for (identity, images) in enrolled {
        for probe in &images[2..] {
            let answer = investigator
                .identify(&request(probe, Some(IdentifyMode::Investigate), Some(5)))
                .unwrap();
            assert_eq!(answer.mode, "investigate", "{answer}");
            assert_eq!(answer.decision, "candidates", "{answer}");
            assert_eq!(answer.searched, gallery);
            let candidates = &answer.candidates;
            assert_eq!(candidates.len(), 5, "{answer}");
            for (i, c) in candidates.iter().enumerate() {
                assert_eq!(c.rank, Some(i + 1));
                let (fmr, pair) = (c.fmr, c.pair_fmr.unwrap());
                assert!(pair > 0.0 && pair <= fmr && fmr <= 1.0, "{c:?}");
            }
            searches += 1;
            rank1 += usize::from(candidates[0].user_id == identity.as_str());
        }
    }
    let over_http = rank1 as f64 / searches as f64;
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/eval/dev-report.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let largest = report["identification"].as_array().unwrap().last().unwrap();
    assert_eq!(largest["gallery"].as_u64().unwrap() as usize, gallery);
    assert_eq!(
        largest["mated_searches"].as_u64().unwrap() as usize,
        searches
    );
    let eval = largest["rank1_identification_rate"].as_f64().unwrap();
    eprintln!("rank-1 over HTTP {over_http:.4} ({rank1} of {searches}), eval {eval:.4}");
    assert!(
        (over_http - eval).abs() <= 0.01,
        "{over_http} against {eval}"
    );

    // Each mode under its own permission: refused with 403 `forbidden` naming it.
    let probe = &enrolled[0].1[2];
    let refused = |client: &Client, mode, permission: &str| match client
        .identify(&request(probe, mode, None))
    {
        Err(ClientError::Refused {
            status,
            code,
            detail,
        }) => {
            assert_eq!((status, code.as_str()), (403, "forbidden"));
            assert!(detail.contains(permission), "{detail}");
        }
        other => panic!("expected 403, got {other:?}"),
    };
    refused(&decider, Some(IdentifyMode::Investigate), "investigate");
    refused(&investigator, None, "identify");
    refused(&investigator, Some(IdentifyMode::Decide), "identify");
    refused(&registrar, Some(IdentifyMode::Investigate), "identify");
    // A decision for the decider; top_k beyond 10 only when investigating.
    let decided = decider.identify(&request(probe, None, None)).unwrap();
    assert_eq!(decided.mode, "decide");
    assert!(decided.candidates[0].rank.is_none(), "{decided}");
    let many = investigator
        .identify(&request(probe, Some(IdentifyMode::Investigate), Some(50)))
        .unwrap();
    assert_eq!(many.candidates.len(), 50);
    match decider.identify(&request(probe, None, Some(11))) {
        Err(ClientError::Refused { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (422, "invalid_field"))
        }
        other => panic!("expected 422, got {other:?}"),
    }
}

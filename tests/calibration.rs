//! The shipped risk model is what `tee-risk train` makes of the dev embeddings, byte for
//! byte, and a model trained by the command is what the service and `eval` then use.

mod support;

use std::process::Command;

use tee_risk::internals::risk::RiskModel;
use tee_risk::internals::risk::model::{BUILTIN_MODELS, DEFAULT_MODEL_JSON};

/// The shipped model's curves: one per enrolment size, each with a fitted tail. (That the
/// model is what training makes of the dev file and the distractors, byte for byte, is the
/// next test's: training once per binary keeps the suite fast.)
#[test]
fn the_shipped_model_has_a_fitted_tail_for_every_enrolment_size() {
    let shipped = RiskModel::builtin();
    // Per-enrolment-size curves: a centroid of several images sits nearer to every face,
    // impostors included, so at a fixed similarity its false-match rate is higher — the
    // single-image curve would overstate how unusual a centroid match is.
    assert_eq!(shipped.calibration.sizes(), 5);
    let c = &shipped.calibration;
    assert!(c.false_match_rate(3, 0.93) > c.false_match_rate(1, 0.93));
    // Every curve has a fitted tail beyond its measured points, reaching the per-pair FMR a
    // 1 % budget needs in a gallery of a million (10⁻⁸), and it never falls to zero.
    for k in 1..=5 {
        let curve = c.for_templates(k);
        let tail = curve.tail().expect("a fitted tail");
        assert!(tail.shape < 0.0 && tail.scale > 0.0, "k = {k}: {tail:?}");
        assert!(curve.points().len() > curve.measured_points().len());
        assert!(curve.points().last().unwrap().1 <= 1e-8, "k = {k}");
        assert!(curve.false_match_rate(0.99999) > 0.0);
    }
    assert_eq!(shipped.training.distractors.len(), 1);
}

/// Trains as docs/EVALUATION.md runs it (default seed and penalty) and checks that the
/// result is the shipped model file byte for byte, recording the SM3 of the very files on
/// disk; returns what the command printed.
fn reproduce(face_model: &str, files: &str, shipped: &str) -> String {
    let (data, distractors) = (
        support::shared_faces(files, "dev"),
        support::shared_faces(files, "distractors"),
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.json");
    let run = Command::new(env!("CARGO_BIN_EXE_tee-risk"))
        .args(["train", "--face-model", face_model, "--data"])
        .arg(&data)
        .arg("--distractors")
        .arg(&distractors)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        std::fs::read(&out).unwrap() == shipped.as_bytes(),
        "config/models/{face_model}.json is not what `tee-risk train` makes of {files}: retrain"
    );
    let model = RiskModel::from_json(shipped).unwrap();
    let recorded = model.face_model.as_ref().unwrap();
    assert_eq!(recorded.id, face_model);
    assert_eq!(
        model.training.data_sm3,
        tee_risk::internals::crypto::sm3_hex(&std::fs::read(&data).unwrap())
    );
    assert_eq!(
        model.training.distractors[0].data_sm3,
        tee_risk::internals::crypto::sm3_hex(&std::fs::read(&distractors).unwrap())
    );
    String::from_utf8(run.stdout).unwrap()
}

/// dlib's shipped model; the report names the highest impostor pairs it was fitted against.
#[test]
fn the_train_command_reproduces_the_shipped_dlib_model() {
    let printed = reproduce("dlib-resnet128", "dlib128", DEFAULT_MODEL_JSON);
    assert!(printed.contains("Tamara_Mowry"), "{printed}");
    assert!(printed.contains("(128-d)"), "{printed}");
}

/// MobileFaceNet's shipped model: its own calibration (impostors near 0, not 0.83), its own
/// fitted tails, trained on its own dev file and distractors.
#[test]
fn the_train_command_reproduces_the_shipped_mobilefacenet_model() {
    let shipped = BUILTIN_MODELS
        .iter()
        .find(|(id, _)| *id == "mobilefacenet192")
        .unwrap()
        .1;
    let printed = reproduce("mobilefacenet192", "mobilefacenet192", shipped);
    assert!(printed.contains("(192-d)"), "{printed}");
    let model = RiskModel::builtin_for("mobilefacenet192").unwrap();
    assert_eq!(model.face_model.as_ref().unwrap().dimension, 192);
    // Another scale: at dlib's typical impostor similarity (0.83) this model's FMR is far
    // below 10⁻⁶; at 0.3 it is a common impostor score.
    assert!(model.calibration.false_match_rate(2, 0.83) < 1e-6);
    assert!(model.calibration.false_match_rate(2, 0.3) > 1e-2);
    for k in 1..=5 {
        assert!(
            model.calibration.for_templates(k).tail().is_some(),
            "k = {k}"
        );
    }
}

#[test]
fn train_command_writes_a_model_that_eval_and_the_config_accept() {
    let data = support::dev_dataset_path();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.json");
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tee-risk"))
            .args(args)
            .env_remove("TEE_RISK_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // Another seed: another model, with its own version.
    let printed = run(&[
        "train".as_ref(),
        "--face-model".as_ref(),
        "dlib-resnet128".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
        "--out".as_ref(),
        model.as_os_str(),
        "--seed".as_ref(),
        "2".as_ref(),
    ]);
    let trained = RiskModel::from_json(&std::fs::read_to_string(&model).unwrap()).unwrap();
    assert!(printed.contains(&trained.version), "{printed}");
    assert_ne!(trained.version, RiskModel::builtin().version);
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[features]\nmodels = [{{ id = \"dlib-resnet128\", dimension = 128, model_file = {:?} }}]\n",
            model.display().to_string()
        ),
    )
    .unwrap();
    let table = run(&[
        "eval".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
        "--enrol-images".as_ref(),
        "2".as_ref(),
        "--out".as_ref(),
        dir.path().join("report.json").as_os_str(),
    ]);
    assert!(
        table.contains(&format!("model {}", trained.version)),
        "{table}"
    );
    // A damaged model file is refused with its path named.
    std::fs::write(&model, "{\"format\": \"tee-risk-model/1\"}").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tee-risk"))
        .args(["eval", "--data"])
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("model_file of face model dlib-resnet128")
    );
    // Data of another dimension than the face model's is refused, naming both.
    let out = Command::new(env!("CARGO_BIN_EXE_tee-risk"))
        .args(["eval", "--face-model", "dlib-resnet128", "--data"])
        .arg(support::shared_faces("mobilefacenet192", "dev"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("192-d embeddings, but face model dlib-resnet128 is 128-d")
    );
}

//! The shipped risk model is what `tee-risk train` makes of the dev embeddings, byte for
//! byte, and a model trained by the command is what the service and `eval` then use.

mod support;

use std::process::Command;

use tee_risk::risk::RiskModel;
use tee_risk::risk::model::DEFAULT_MODEL_JSON;

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

/// `tee-risk train` as docs/EVALUATION.md runs it (default seed and penalty) writes the
/// shipped model byte for byte, and the model records the SM3 of the very dev file on disk.
#[test]
fn the_train_command_reproduces_the_shipped_model_file() {
    let data = support::dev_dataset_path();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.json");
    let run = Command::new(env!("CARGO_BIN_EXE_tee-risk"))
        .args(["train", "--data"])
        .arg(&data)
        .arg("--distractors")
        .arg(support::distractors_path())
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
        std::fs::read(&out).unwrap() == DEFAULT_MODEL_JSON.as_bytes(),
        "config/risk-model.json is not what `tee-risk train` makes of the dev file: retrain"
    );
    let shipped = RiskModel::builtin();
    assert_eq!(
        shipped.training.data_sm3,
        tee_risk::crypto::sm3_hex(&std::fs::read(&data).unwrap())
    );
    assert_eq!(
        shipped.training.distractors[0].data_sm3,
        tee_risk::crypto::sm3_hex(&std::fs::read(support::distractors_path()).unwrap())
    );
    // The report names the highest impostor pairs it was fitted against.
    let printed = String::from_utf8_lossy(&run.stdout);
    assert!(printed.contains("Tamara_Mowry"), "{printed}");
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
        format!("[risk]\nmodel_file = {:?}\n", model.display().to_string()),
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
    assert!(String::from_utf8_lossy(&out.stderr).contains("risk.model_file"));
}

//! `tee-risk eval` on the development embeddings, as a user runs it: the command replays the
//! protocol of docs/EVALUATION.md through the configured policy and writes its report; the
//! figures are checked against floors (the baseline's, so a regression fails).

mod support;

use std::process::Command;

#[test]
fn eval_on_the_dev_file_meets_the_baseline_floors() {
    let data = support::dev_dataset_path();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.json");
    let run = Command::new(env!("CARGO_BIN_EXE_tee-risk"))
        .args(["eval", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .env_remove("TEE_RISK_CONFIG")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let table = String::from_utf8_lossy(&run.stdout);
    println!("{table}");
    assert!(table.contains("FNMR@FMR0.1%"));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let reports = report["reports"].as_array().unwrap();
    assert_eq!(reports.len(), 3, "k = 1, 2, 3");
    let value = |k: usize, field: &str| reports[k - 1][field].as_f64().unwrap();
    // Every identity of the dev file has 10 images: k enrolled, 10 − k genuine attempts.
    for k in 1..=3 {
        assert_eq!(value(k, "identities"), 110.0);
        assert_eq!(value(k, "genuine_attempts"), 110.0 * (10 - k) as f64);
        assert_eq!(value(k, "impostor_attempts"), 110.0 * 109.0 * 10.0);
    }
    // The operating point keeps its promise at every enrolment size (the score thresholds
    // are read off the dev impostors; 0.01 % of slack for the pooling over k).
    for k in 1..=3 {
        assert!(value(k, "fmr_at_operating_point") <= 0.0011, "k = {k}");
        assert!(value(k, "eer") < 0.012, "k = {k}");
    }
    // Floors: more templates, fewer misses; the centroid of two images halves the
    // single-image FNMR at FMR 0.1 % (8.48 % → 3.52 % on dev).
    assert!(value(1, "fnmr_at_fmr_0_1pct") < 0.09);
    assert!(value(2, "fnmr_at_fmr_0_1pct") < 0.04);
    assert!(value(3, "fnmr_at_fmr_0_1pct") < 0.03);
    assert!(value(2, "fnmr_at_operating_point") < 0.055);
    assert!(value(3, "fnmr_at_operating_point") < value(1, "fnmr_at_operating_point"));
    // No capture of a face repeats another exactly: replays sit above every genuine pair.
    assert!(reports[0]["max_genuine_cosine"].as_f64().unwrap() < 0.9999);
    for k in 1..=3 {
        // Every injected template and every replayed probe is caught, and no genuine attempt
        // is mistaken for either; every presentation attack (liveness 0.2) is refused.
        assert_eq!(value(k, "injections_flagged"), 1.0);
        assert_eq!(value(k, "replays_flagged"), 1.0);
        assert_eq!(value(k, "genuine_flagged_as_replay"), 0.0);
        assert_eq!(value(k, "presentation_attacks_flagged"), 1.0);
        // An enrolled attacker is seen by the identity-conflict search; bursts by velocity.
        assert!(value(k, "fmr_enrolled_impostors") < 0.0001, "k = {k}");
        assert!(value(k, "fmr_in_bursts") < 0.0001, "k = {k}");
        // Conflicting enrolments: at least 94 % flagged, at most 9 % of first enrolments.
        assert!(
            value(k, "conflicting_enrolments_flagged") >= 0.94,
            "k = {k}"
        );
        assert!(value(k, "new_enrolments_flagged") <= 0.09, "k = {k}");
    }
    assert!(value(2, "conflicting_enrolments_flagged") >= 0.95);

    // The evaluation is deterministic: the run equals the committed report, figure for
    // figure, so that any change to the engine or the model shows in docs/eval.
    let committed: serde_json::Value = serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/eval/dev-report.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(report["model"], committed["model"]);
    assert!(
        report["reports"] == committed["reports"],
        "docs/eval/dev-report.json is stale: run `tee-risk eval --data <dev> --out \
         docs/eval/dev-report.json --plots docs/eval` and commit it"
    );
}

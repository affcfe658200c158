//! `tee-risk eval` on the development embeddings, as a user runs it: the command replays the
//! protocol of docs/EVALUATION.md through the configured policy and writes its report. The
//! figures are checked against the documented targets, and the whole report against the
//! committed one (the evaluation is deterministic, so any change shows).

mod support;

use std::process::Command;

#[test]
fn eval_on_the_dev_file_meets_the_documented_targets_and_matches_the_committed_report() {
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
    // The documented targets (docs/EVALUATION.md, "Against the targets"), as targets: not
    // the figures of the last run (the exact comparison below catches any change of those).
    for k in 1..=3 {
        // The operating point is set at FMR 0.1 %; measured on 119,900 impostor attempts
        // the rate carries sampling noise, so the bound is the target plus two binomial
        // standard deviations (0.118 %): beyond it the threshold no longer keeps the promise.
        let n = value(k, "impostor_attempts");
        let bound = 0.001 + 2.0 * (0.001 * 0.999 / n).sqrt();
        let fmr = value(k, "fmr_at_operating_point");
        assert!(
            fmr <= bound,
            "k = {k}: FMR at the operating point {fmr} > {bound}"
        );
        // Every exact replay and every injected copy flagged; at most 0.5 % of genuine
        // attempts taken for a copy; every presentation attack (liveness 0.2) refused.
        assert_eq!(value(k, "injections_flagged"), 1.0, "k = {k}");
        assert_eq!(value(k, "replays_flagged"), 1.0, "k = {k}");
        assert!(value(k, "genuine_flagged_as_replay") <= 0.005, "k = {k}");
        assert_eq!(value(k, "presentation_attacks_flagged"), 1.0, "k = {k}");
        // FMR 0.1 % holds for an enrolled impostor and inside a burst too.
        assert!(value(k, "fmr_enrolled_impostors") <= bound, "k = {k}");
        assert!(value(k, "fmr_in_bursts") <= bound, "k = {k}");
    }
    // ≥ 95 % of conflicting enrolments flagged: met on dev with two or more images (the
    // document says k = 1 reaches 94.5 %; that sentence is checked here too).
    for k in 2..=3 {
        assert!(
            value(k, "conflicting_enrolments_flagged") >= 0.95,
            "k = {k}"
        );
    }
    assert!((value(1, "conflicting_enrolments_flagged") - 0.945).abs() < 0.0005);
    // FNMR ≤ 2 % at the operating point with ≥ 2 images is a holdout target, documented as
    // not met on dev; what the document says of dev is checked: more images, fewer misses,
    // and the centroid of two images more than halves the single-image FNMR at FMR 0.1 %.
    assert!(value(2, "fnmr_at_fmr_0_1pct") < value(1, "fnmr_at_fmr_0_1pct") / 2.0);
    assert!(value(3, "fnmr_at_fmr_0_1pct") < value(2, "fnmr_at_fmr_0_1pct"));
    assert!(value(3, "fnmr_at_operating_point") < value(2, "fnmr_at_operating_point"));
    assert!(value(2, "fnmr_at_operating_point") < value(1, "fnmr_at_operating_point"));
    // "FNMR with genuine context (8–17 % on dev)".
    for k in 1..=3 {
        let with_context = value(k, "fnmr_with_genuine_context");
        assert!(
            (0.08..=0.17).contains(&with_context),
            "k = {k}: {with_context}"
        );
    }
    // No capture of a face repeats another exactly: replays sit above every genuine pair.
    assert!(reports[0]["max_genuine_cosine"].as_f64().unwrap() < 0.9999);

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

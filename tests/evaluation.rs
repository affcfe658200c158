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
        .arg("--distractors")
        .arg(support::distractors_path())
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
    // Conflicting enrolments at the 110 users of the 1:1 protocol, with
    // `enrolment_conflict_max_fmr` chosen for ≤ 2 % honest stops at the largest gallery
    // (docs/EVALUATION.md, "Enrolment conflicts"): k = 2 catches 92.7 % and stops 1.82 %.
    assert!(value(2, "conflicting_enrolments_flagged") >= 0.92);
    assert!(value(2, "new_enrolments_flagged") <= 0.02);
    // FNMR ≤ 2 % at the operating point with ≥ 2 images is a holdout target, documented as
    // not met on dev; what the document says of dev is checked: more images, fewer misses,
    // and the centroid of two images more than halves the single-image FNMR at FMR 0.1 %.
    assert!(value(2, "fnmr_at_fmr_0_1pct") < value(1, "fnmr_at_fmr_0_1pct") / 2.0);
    assert!(value(3, "fnmr_at_fmr_0_1pct") < value(2, "fnmr_at_fmr_0_1pct"));
    assert!(value(3, "fnmr_at_operating_point") < value(2, "fnmr_at_operating_point"));
    assert!(value(2, "fnmr_at_operating_point") < value(1, "fnmr_at_operating_point"));
    // "FNMR with genuine context (6–15 % on dev)".
    for k in 1..=3 {
        let with_context = value(k, "fnmr_with_genuine_context");
        assert!(
            (0.06..=0.15).contains(&with_context),
            "k = {k}: {with_context}"
        );
    }
    // No capture of a face repeats another exactly: replays sit above every genuine pair.
    assert!(reports[0]["max_genuine_cosine"].as_f64().unwrap() < 0.9999);

    // The evaluation is deterministic: the run equals the committed report, figure for
    // figure, so that any change to the engine or the model shows in docs/eval.
    matches_committed(
        &report,
        "docs/eval/dev-report.json",
        "tee-risk eval --data <dev> --distractors <distractors> --out docs/eval/dev-report.json \
         --plots docs/eval",
    );
    decisions_hold_at_every_gallery_size(&report);
    the_tail_agrees_with_the_pairs_it_resolves(&report);
}

/// docs/EVALUATION.md, "Two face models": MobileFaceNet's run meets the targets on
/// its dev file and distractors (1:1 FMR at the operating point; conflict search at the
/// largest gallery ≥ 95 % caught with ≤ 2 % honest stopped; 1:N within its budget), and is
/// the committed report figure for figure.
#[test]
fn eval_of_mobilefacenet_meets_its_targets_and_matches_the_committed_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.json");
    let run = Command::new(env!("CARGO_BIN_EXE_tee-risk"))
        .args(["eval", "--face-model", "mobilefacenet192", "--data"])
        .arg(support::shared_faces("mobilefacenet192", "dev"))
        .arg("--distractors")
        .arg(support::shared_faces("mobilefacenet192", "distractors"))
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
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(report["face_model"], "mobilefacenet192");
    for r in report["reports"].as_array().unwrap() {
        let n = r["impostor_attempts"].as_f64().unwrap();
        let bound = 0.001 + 2.0 * (0.001 * 0.999 / n).sqrt();
        assert!(
            r["fmr_at_operating_point"].as_f64().unwrap() <= bound,
            "{r}"
        );
        assert_eq!(r["replays_flagged"], 1.0);
        assert_eq!(r["injections_flagged"], 1.0);
    }
    decisions_hold(&report, false);
    let largest = report["identification"].as_array().unwrap().last().unwrap();
    let f = |field: &str| largest[field].as_f64().unwrap();
    assert!(f("conflicts_caught") >= 0.95, "{}", f("conflicts_caught"));
    assert!(f("false_conflicts") <= 0.02, "{}", f("false_conflicts"));
    the_tail_agrees_with_the_pairs_it_resolves(&report);
    matches_committed(
        &report,
        "docs/eval/mobilefacenet192/dev-report.json",
        "tee-risk eval --face-model mobilefacenet192 --data <its dev> --distractors <its \
         distractors> --out docs/eval/mobilefacenet192/dev-report.json --plots \
         docs/eval/mobilefacenet192",
    );
}

/// The evaluation is deterministic: a run equals the committed report at `path`, figure for
/// figure, so that any change to the engine or the model shows in docs/eval.
fn matches_committed(report: &serde_json::Value, path: &str, regenerate: &str) {
    let committed: serde_json::Value = serde_json::from_slice(
        &std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap(),
    )
    .unwrap();
    assert_eq!(report["model"], committed["model"]);
    for section in ["reports", "tail", "identification", "top_impostor_pairs"] {
        assert!(
            report[section] == committed[section],
            "{path} is stale ({section}): run `{regenerate}` and commit it"
        );
    }
}

/// docs/EVALUATION.md, "1:N by gallery size": at every gallery size the service's FPIR is
/// within 3× of `identify_max_fmr` (or below it), and its FNIR at most 1.5× what the best
/// threshold reaches at FPIR = `identify_max_fmr`; conflict search at the largest gallery
/// stops at most 2 % of honest first enrolments and catches what the best threshold catches
/// there.
fn decisions_hold_at_every_gallery_size(report: &serde_json::Value) {
    decisions_hold(report, true);
}

/// The 1:N budget at every gallery size; FNIR against the best threshold's at every size
/// (`every_size`) or at the largest only (MobileFaceNet: at 100 users its 18 misses of 440
/// are 1.8× the best threshold's 10, six of them `ambiguous`; docs/EVALUATION.md).
fn decisions_hold(report: &serde_json::Value, every_size: bool) {
    let budget = 0.01; // config/default.toml [risk] identify_max_fmr
    let rows = report["identification"].as_array().unwrap();
    let sizes: Vec<u64> = rows
        .iter()
        .map(|r| r["gallery"].as_u64().unwrap())
        .collect();
    assert_eq!(
        sizes,
        [10, 100, 1000, 1089],
        "gallery sizes 10, 100, 1000 and the largest"
    );
    for (i, r) in rows.iter().enumerate() {
        let f = |field: &str| r[field].as_f64().unwrap();
        let gallery = r["gallery"].as_u64().unwrap();
        assert!(f("non_mated_searches") >= 1500.0);
        let judged = every_size || i + 1 == rows.len();
        assert!(
            f("fpir_at_operating_point") <= 3.0 * budget,
            "G = {gallery}: FPIR {}",
            f("fpir_at_operating_point")
        );
        assert!(
            !judged || f("fnir_at_operating_point") <= 1.5 * f("fnir_at_fpir_budget"),
            "G = {gallery}: FNIR {} against the best {}",
            f("fnir_at_operating_point"),
            f("fnir_at_fpir_budget")
        );
        assert!(f("rank1_identification_rate") >= 0.96, "G = {gallery}");
    }
    let largest = rows.last().unwrap();
    let f = |field: &str| largest[field].as_f64().unwrap();
    assert!(f("false_conflicts") <= 0.021, "{}", f("false_conflicts"));
    assert!(f("conflicts_caught") >= f("conflicts_caught_at_budget"));
}

/// docs/EVALUATION.md, "The tail": at every decade the impostor pairs resolve (at least 5
/// expected above it), down to 10⁻⁶ at least, the measured FMR is within 3× of the model's,
/// for every enrolment size.
fn the_tail_agrees_with_the_pairs_it_resolves(report: &serde_json::Value) {
    let tail = report["tail"].as_array().unwrap();
    assert_eq!(tail.len(), 5, "k = 1 to 5");
    for size in tail {
        let k = size["enrol_images"].as_u64().unwrap();
        let rows = size["rows"].as_array().unwrap();
        let resolved: Vec<_> = rows.iter().filter(|r| r["resolved"] == true).collect();
        let deepest = resolved.last().unwrap()["nominal_fmr"].as_f64().unwrap();
        assert!(
            deepest <= 1.000_001e-6,
            "k = {k}: resolved only to {deepest}"
        );
        assert!(
            rows.iter()
                .any(|r| r["modelled"] == true && r["resolved"] == true),
            "k = {k}: the tail model is checked where it alone decides"
        );
        for r in resolved {
            let ratio = r["measured_fmr"].as_f64().unwrap() / r["nominal_fmr"].as_f64().unwrap();
            assert!(
                (1.0 / 3.0..=3.0).contains(&ratio),
                "k = {k}: measured/nominal {ratio} at {}",
                r["nominal_fmr"]
            );
        }
    }
}

/// The 1:N tables of docs/EVALUATION.md say what the committed reports hold: every figure of
/// each row, as printed (percentages to the decimals the table shows).
#[test]
fn the_documented_1n_tables_are_the_committed_reports() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/EVALUATION.md"))
        .unwrap();
    let section = &doc[doc.find("## 1:N by gallery size").expect("the 1:N section")..];
    let tables: Vec<Vec<Vec<String>>> = section
        .split("\n\n")
        .filter(|block| block.starts_with("| gallery (file + distractors)"))
        .map(|block| {
            block
                .lines()
                .skip(2)
                .map(|line| {
                    line.trim_matches('|')
                        .split('|')
                        .map(|cell| cell.trim().to_owned())
                        .collect()
                })
                .collect()
        })
        .collect();
    assert_eq!(tables.len(), 2, "the dev and the holdout table");
    for (table, report) in tables
        .iter()
        .zip(["dev-report.json", "holdout-report.json"])
    {
        let path = format!("{}/docs/eval/{report}", env!("CARGO_MANIFEST_DIR"));
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let rows = report["identification"].as_array().unwrap();
        assert_eq!(
            table.len(),
            rows.len(),
            "{path}: one table row per gallery size"
        );
        for (cells, r) in table.iter().zip(rows) {
            let int = |field: &str| r[field].as_u64().unwrap();
            let pct = |field: &str, decimals: usize| {
                let value = r[field].as_f64().unwrap() * 100.0;
                if decimals == 0 && value == 100.0 {
                    "100 %".to_owned()
                } else {
                    format!("{value:.decimals$} %")
                }
            };
            let thousands = |n: u64| {
                let s = n.to_string();
                if s.len() > 3 {
                    format!("{},{}", &s[..s.len() - 3], &s[s.len() - 3..])
                } else {
                    s
                }
            };
            let gallery = format!(
                "{} ({} + {})",
                thousands(int("gallery")),
                thousands(int("gallery_from_file")),
                thousands(int("gallery_distractors"))
            );
            let rank1 = match pct("rank1_identification_rate", 1).as_str() {
                "100.0 %" => "100 %".to_owned(),
                other => other.to_owned(),
            };
            let expected = vec![
                gallery,
                int("mated_searches").to_string(),
                rank1,
                pct("fnir_at_fpir_1pct", 1),
                pct("fnir_at_fpir_0_1pct", 1),
                format!(
                    "{} ({})",
                    pct("fpir_at_operating_point", 2),
                    int("named_at_operating_point")
                ),
                pct("fnir_at_operating_point", 1),
                pct("fnir_at_fpir_budget", 1),
                pct("ambiguous_rate", 2),
                pct("wrong_match_rate", 2),
            ];
            assert_eq!(cells, &expected, "{path}");
        }
    }
}

//! `tee-risk train` and `tee-risk eval`: the lab commands.

use std::path::Path;

use anyhow::Context;
use tee_risk::app::Config;
use tee_risk::lab::eval::{self};
use tee_risk::lab::{Dataset, Labelled, identification, plots, train};
use tee_risk::risk::model::TrainingSummary;

pub(crate) fn labelled(dataset: &Dataset) -> Vec<Labelled<'_>> {
    dataset
        .samples
        .iter()
        .zip(dataset.identity_indices())
        .map(|(sample, identity)| Labelled {
            identity,
            embedding: &sample.embedding,
        })
        .collect()
}

pub fn evaluate(
    data: &Path,
    config: Option<&Path>,
    enrol_images: &[usize],
    out: &Path,
    plot_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let policy = Config::load(config)?.risk_policy()?;
    let dataset = Dataset::load(data)?;
    let samples = labelled(&dataset);
    let reports = enrol_images
        .iter()
        .map(|&k| eval::evaluate(&policy, &samples, k).map_err(anyhow::Error::from))
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!(
        "{} ({} images), model {}\n\n\
         k  genuine  impostor  FMR@op    FNMR@op  FNMR@FMR1%  FNMR@FMR0.1%  EER     FMR(enrolled)  FNMR(context)",
        data.display(),
        dataset.samples.len(),
        policy.model_version()
    );
    for r in &reports {
        println!(
            "{}  {:>7}  {:>8}  {:>7.4}%  {:>6.2}%  {:>9.2}%  {:>11.2}%  {:>5.2}%  {:>12.4}%  {:>12.2}%",
            r.enrol_images,
            r.genuine_attempts,
            r.impostor_attempts,
            r.fmr_at_operating_point * 100.0,
            r.fnmr_at_operating_point * 100.0,
            r.fnmr_at_fmr_1pct * 100.0,
            r.fnmr_at_fmr_0_1pct * 100.0,
            r.eer * 100.0,
            r.fmr_enrolled_impostors * 100.0,
            r.fnmr_with_genuine_context * 100.0,
        );
    }
    println!(
        "\nk  replay  inject  conflict  new-enrol-flagged  presentation  burst-FMR   genuine-flagged-as-copy"
    );
    for r in &reports {
        println!(
            "{}  {:>5.1}%  {:>5.1}%  {:>7.1}%  {:>16.2}%  {:>11.1}%  {:>8.4}%  {:>10.2}%",
            r.enrol_images,
            r.replays_flagged * 100.0,
            r.injections_flagged * 100.0,
            r.conflicting_enrolments_flagged * 100.0,
            r.new_enrolments_flagged * 100.0,
            r.presentation_attacks_flagged * 100.0,
            r.fmr_in_bursts * 100.0,
            r.genuine_flagged_as_replay * 100.0,
        );
    }
    // 1:N, two images enrolled per identity, galleries from 10 to every enrollable one.
    let identification =
        identification::evaluate_identification(&policy, &samples, 2, &[10, 30, 100, 0])?;
    println!(
        "\n1:N (2 images enrolled; FPIR/FNIR at the operating point identify_max_fmr = {})\n\
         gallery  mated  non-mated  rank-1   FNIR@FPIR1%  FNIR@FPIR0.1%  FPIR@op  FNIR@op  ambiguous  wrong  conflicts-caught  false-conflicts",
        policy.identify_max_fmr
    );
    for r in &identification {
        println!(
            "{:>7}  {:>5}  {:>9}  {:>5.1}%  {:>10.1}%  {:>12.1}%  {:>6.2}%  {:>6.1}%  {:>8.2}%  {:>4.2}%  {:>15.1}%  {:>14.2}%",
            r.gallery,
            r.mated_searches,
            r.non_mated_searches,
            r.rank1_identification_rate * 100.0,
            r.fnir_at_fpir_1pct * 100.0,
            r.fnir_at_fpir_0_1pct * 100.0,
            r.fpir_at_operating_point * 100.0,
            r.fnir_at_operating_point * 100.0,
            r.ambiguous_rate * 100.0,
            r.wrong_match_rate * 100.0,
            r.conflicts_caught * 100.0,
            r.false_conflicts * 100.0,
        );
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let report = serde_json::json!({
        "data": data.display().to_string(),
        "images": dataset.samples.len(),
        "model": policy.model_version(),
        "reports": reports,
        "identification": identification,
    });
    std::fs::write(out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!("report written to {}", out.display());
    if let Some(dir) = plot_dir {
        for file in plots::write_all(dir, &reports)? {
            eprintln!("plot written to {}", file.display());
        }
        let file = plots::write_identification(dir, &identification)?;
        eprintln!("plot written to {}", file.display());
    }
    Ok(())
}

pub fn train_model(data: &Path, out: &Path, alpha: f64, seed: u64) -> anyhow::Result<()> {
    let bytes = std::fs::read(data).with_context(|| format!("cannot read {}", data.display()))?;
    let dataset = Dataset::load(data)?;
    let samples = labelled(&dataset);
    let summary = TrainingSummary {
        data: data
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        data_sm3: tee_risk::crypto::sm3_hex(&bytes),
        identities: dataset.identity_indices().iter().max().map_or(0, |m| m + 1),
        images: dataset.samples.len(),
        samples: Default::default(),
        alpha,
    };
    let model = train::train(&samples, summary, alpha, seed)?;
    let mut json = serde_json::to_string_pretty(&model)?;
    json.push('\n');
    std::fs::write(out, json).with_context(|| format!("cannot write {}", out.display()))?;
    println!("model {} written to {}", model.version, out.display());
    for (feature, weight) in model.features.iter().zip(&model.weights) {
        println!("  {feature:<18} {weight:>9.4}");
    }
    println!("  {:<18} {:>9.4}", "intercept", model.intercept);
    Ok(())
}

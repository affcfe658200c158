//! `tee-risk train` and `tee-risk eval`: the lab commands.

use std::path::{Path, PathBuf};

use crate::app::Config;
use crate::lab::eval::{self};
use crate::lab::{Dataset, Labelled, identification, plots, tail, train};
use crate::risk::model::{DataFile, FaceModelInfo, TrainingSummary};
use anyhow::Context;

/// The embeddings of a run: the file under test and its distractor files, loaded once;
/// distractor identities numbered after the file's, so that no two files share one.
struct Corpus {
    main: Dataset,
    extra: Vec<Dataset>,
}

impl Corpus {
    fn load(data: &Path, distractors: &[PathBuf]) -> anyhow::Result<Self> {
        Ok(Self {
            main: Dataset::load(data)?,
            extra: distractors
                .iter()
                .map(|p| Dataset::load(p))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Every file of the run must hold embeddings of `dimension` (those of `face_model`).
    fn check_dimension(&self, face_model: &str, dimension: usize) -> anyhow::Result<()> {
        let files = std::iter::once(&self.main).chain(&self.extra);
        if let Some(other) = files.map(|d| d.dim).find(|&d| d != dimension) {
            anyhow::bail!(
                "the data holds {other}-d embeddings, but face model {face_model} is {dimension}-d"
            );
        }
        Ok(())
    }

    fn main(&self) -> Vec<Labelled<'_>> {
        labelled(&self.main, 0)
    }

    fn extra(&self) -> Vec<Labelled<'_>> {
        let mut offset = identity_count(&self.main);
        let mut out = Vec::new();
        for dataset in &self.extra {
            out.extend(labelled(dataset, offset));
            offset += identity_count(dataset);
        }
        out
    }

    /// Identity names by the numbers [`Self::main`] and [`Self::extra`] give them.
    fn identity_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for dataset in std::iter::once(&self.main).chain(&self.extra) {
            let mut own = vec![String::new(); identity_count(dataset)];
            for (sample, i) in dataset.samples.iter().zip(dataset.identity_indices()) {
                own[i] = sample.identity.clone();
            }
            names.extend(own);
        }
        names
    }

    /// (identity, image, embedding) of every sample, for the top impostor pairs.
    fn named(&self) -> Vec<(&str, &str, &[f32])> {
        std::iter::once(&self.main)
            .chain(&self.extra)
            .flat_map(|d| &d.samples)
            .map(|s| {
                (
                    s.identity.as_str(),
                    s.image.as_str(),
                    s.embedding.as_slice(),
                )
            })
            .collect()
    }
}

fn identity_count(dataset: &Dataset) -> usize {
    dataset.identity_indices().iter().max().map_or(0, |m| m + 1)
}

fn labelled(dataset: &Dataset, offset: usize) -> Vec<Labelled<'_>> {
    dataset
        .samples
        .iter()
        .zip(dataset.identity_indices())
        .map(|(sample, identity)| Labelled {
            identity: identity + offset,
            embedding: &sample.embedding,
        })
        .collect()
}

/// What `tee-risk eval` was asked for.
pub struct EvalArgs<'a> {
    /// The face model whose policy decides (`None`: the configuration's default).
    pub face_model: Option<&'a str>,
    pub data: &'a Path,
    pub distractors: &'a [PathBuf],
    pub gallery_sizes: &'a [usize],
    pub enrol_images: &'a [usize],
    pub out: &'a Path,
    pub plots: Option<&'a Path>,
}

/// How many of the highest impostor pairs the reports list.
const TOP_PAIRS: usize = 10;

pub fn evaluate(args: &EvalArgs<'_>, config: Option<&Path>) -> anyhow::Result<()> {
    let face_model = Config::load(config)?.face_model(args.face_model)?;
    let policy = face_model.policy();
    let corpus = Corpus::load(args.data, args.distractors)?;
    corpus.check_dimension(face_model.id(), face_model.dimension())?;
    let (samples, extra) = (corpus.main(), corpus.extra());
    let (data, dataset) = (args.data, &corpus.main);
    let reports = args
        .enrol_images
        .iter()
        .map(|&k| eval::evaluate(policy, &samples, k).map_err(anyhow::Error::from))
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!(
        "{} ({} images), face model {}, model {}\n\n\
         k  genuine  impostor  FMR@op    FNMR@op  FNMR@FMR1%  FNMR@FMR0.1%  EER     FMR(enrolled)  FNMR(context)",
        data.display(),
        dataset.samples.len(),
        face_model.id(),
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
    let tail = tail_checks(policy, &corpus, &samples, &extra);
    let top_pairs = tail::top_impostor_pairs(&corpus.named(), TOP_PAIRS);
    print_tail(&tail, &top_pairs);
    // 1:N, two images enrolled per identity, by gallery size.
    let identification =
        identification::evaluate_identification(policy, &samples, &extra, 2, args.gallery_sizes)?;
    print_identification(policy, &identification);
    let out = args.out;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let report = serde_json::json!({
        "data": data.display().to_string(),
        "images": dataset.samples.len(),
        "distractors": args.distractors.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "distractor_images": extra.len(),
        "face_model": face_model.id(),
        "model": policy.model_version(),
        "reports": reports,
        "tail": tail,
        "top_impostor_pairs": top_pairs,
        "identification": identification,
    });
    std::fs::write(out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!("report written to {}", out.display());
    if let Some(dir) = args.plots {
        for file in plots::write_all(dir, &reports)? {
            eprintln!("plot written to {}", file.display());
        }
        for file in plots::write_identification(dir, &identification)? {
            eprintln!("plot written to {}", file.display());
        }
    }
    Ok(())
}

/// What `tee-risk train` was asked for.
pub struct TrainArgs<'a> {
    pub data: &'a Path,
    pub distractors: &'a [PathBuf],
    /// The id of the face model that made the embeddings.
    pub face_model: &'a str,
    pub out: &'a Path,
    pub alpha: f64,
    pub seed: u64,
}

pub fn train_model(args: &TrainArgs<'_>) -> anyhow::Result<()> {
    let TrainArgs {
        data,
        distractors,
        out,
        alpha,
        seed,
        ..
    } = *args;
    let corpus = Corpus::load(data, distractors)?;
    corpus.check_dimension(args.face_model, corpus.main.dim)?;
    let face_model = FaceModelInfo {
        id: args.face_model.to_owned(),
        dimension: corpus.main.dim,
    };
    let summary = TrainingSummary {
        distractors: distractors
            .iter()
            .zip(&corpus.extra)
            .map(|(path, dataset)| data_file(path, dataset))
            .collect::<anyhow::Result<_>>()?,
        ..summary(data, &corpus.main)?
    };
    let (samples, extra) = (corpus.main(), corpus.extra());
    let model = train::train(&samples, &extra, face_model, summary, alpha, seed)?;
    let mut json = serde_json::to_string_pretty(&model)?;
    json.push('\n');
    std::fs::write(out, json).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "model {} for face model {} ({}-d) written to {}",
        model.version,
        args.face_model,
        corpus.main.dim,
        out.display()
    );
    for (feature, weight) in model.features.iter().zip(&model.weights) {
        println!("  {feature:<18} {weight:>9.4}");
    }
    println!("  {:<18} {:>9.4}", "intercept", model.intercept);
    println!(
        "\ncalibration: measured points, then the fitted tail (GPD above the threshold, upper bound)"
    );
    println!(
        "k  pairs       measured-to  threshold  exceedances  shape     scale     tail-points  FMR 1e-6 at  1e-8 at"
    );
    for k in 1..=model.calibration.sizes() {
        let curve = model.calibration.for_templates(k);
        let measured = curve.measured_points();
        match curve.tail() {
            Some(t) => println!(
                "{k}  {:>10}  {:>11.1e}  {:>9.4}  {:>11}  {:>7.4}  {:>8.5}  {:>11}  {:>11.4}  {:>7.4}",
                t.pairs,
                measured.last().map_or(1.0, |p| p.1),
                t.threshold,
                t.exceedances,
                t.shape,
                t.scale,
                curve.points().len() - measured.len(),
                curve.similarity_at(1e-6),
                curve.similarity_at(1e-8),
            ),
            None => println!("{k}  (no tail: too few pairs)"),
        }
    }
    println!("\nthe highest impostor pairs the calibration was fitted against:");
    for pair in tail::top_impostor_pairs(&corpus.named(), TOP_PAIRS) {
        println!(
            "  {:.4}  {} ({})  ~  {} ({})",
            pair.similarity, pair.a.0, pair.a.1, pair.b.0, pair.b.1
        );
    }
    Ok(())
}

/// The record of a data file: its name, SM3, identities and images.
fn data_file(path: &Path, dataset: &Dataset) -> anyhow::Result<DataFile> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(DataFile {
        data: path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        data_sm3: crate::crypto::sm3_hex(&bytes),
        identities: identity_count(dataset),
        images: dataset.samples.len(),
    })
}

fn summary(path: &Path, dataset: &Dataset) -> anyhow::Result<TrainingSummary> {
    let file = data_file(path, dataset)?;
    Ok(TrainingSummary {
        data: file.data,
        data_sm3: file.data_sm3,
        identities: file.identities,
        images: file.images,
        samples: Default::default(),
        alpha: 0.0,
        distractors: Vec::new(),
    })
}

/// Nominal against measured FMR of every calibrated enrolment size, on every impostor pair
/// of this run (the file under test and its distractors, formed as training forms them).
fn tail_checks(
    policy: &crate::risk::RiskPolicy,
    corpus: &Corpus,
    samples: &[Labelled],
    extra: &[Labelled],
) -> Vec<tail::TailReport> {
    let calibration = &policy.model.calibration;
    let names = corpus.identity_names();
    let name = |i: usize| names.get(i).cloned().unwrap_or_default();
    (1..=calibration.sizes())
        .map(|k| {
            let curve = calibration.for_templates(k);
            let scores = tail::impostor_scores(samples, extra, k, true);
            // Identities of the pairs beyond the 10⁻⁴ point: where the tail is judged.
            let from = curve.similarity_at(1e-4);
            let above = tail::impostor_pairs_above(samples, extra, k, from);
            tail::check_tail(curve, k, &scores, (from, &above), &name)
        })
        .filter(|r| r.pairs > 0)
        .collect()
}

fn print_tail(tail: &[tail::TailReport], top: &[tail::TopPair]) {
    println!(
        "\nThe calibration against this data: at the similarity where the model says FMR = nominal,\n\
         the share of impostor pairs at or above it (measured), and the fit's own estimate there\n\
         k  pairs      nominal  similarity  pairs-above (identity pairs)  measured   measured/nominal  fit      region"
    );
    for r in tail {
        for row in &r.rows {
            println!(
                "{}  {:>9}  {:>7.0e}  {:>10.4}  {:>11} ({:>5})  {:>9.2e}  {:>16.2}  {:>7}  {}",
                r.enrol_images,
                r.pairs,
                row.nominal_fmr,
                row.similarity,
                row.pairs_above,
                row.identity_pairs_above
                    .map_or_else(|| "-".into(), |n| n.to_string()),
                row.measured_fmr,
                row.measured_fmr / row.nominal_fmr,
                row.fit_fmr
                    .map_or_else(|| "-".into(), |f| format!("{f:.1e}")),
                match (row.modelled, row.resolved) {
                    (true, true) => "tail model",
                    (true, false) => "tail model (not resolved)",
                    (false, _) => "measured",
                },
            );
            if row.modelled && !row.top_identity_pairs.is_empty() {
                let from: Vec<String> = row
                    .top_identity_pairs
                    .iter()
                    .map(|(a, b, n)| format!("{a} ~ {b}: {n}"))
                    .collect();
                println!("     most from: {}", from.join("; "));
            }
        }
    }
    println!("\nthe highest impostor pairs of this data:");
    for pair in top {
        println!(
            "  {:.4}  {} ({})  ~  {} ({})",
            pair.similarity, pair.a.0, pair.a.1, pair.b.0, pair.b.1
        );
    }
}

fn print_identification(
    policy: &crate::risk::RiskPolicy,
    identification: &[identification::IdentificationReport],
) {
    println!(
        "\n1:N (2 images enrolled; distractors 1; operating point identify_max_fmr = {})\n\
         gallery  file  distr  mated  non-mated  rank-1   FNIR@FPIR1%  FNIR@FPIR0.1%  FNIR@budget  FPIR@op (n)    FNIR@op  FNIR@FPIR(op)  ambiguous  wrong",
        policy.identify_max_fmr
    );
    for r in identification {
        println!(
            "{:>7}  {:>4}  {:>5}  {:>5}  {:>9}  {:>5.1}%  {:>10.1}%  {:>12.1}%  {:>10.1}%  {:>6.2}% ({:>3})  {:>6.1}%  {:>12.1}%  {:>8.2}%  {:>4.2}%",
            r.gallery,
            r.gallery_from_file,
            r.gallery_distractors,
            r.mated_searches,
            r.non_mated_searches,
            r.rank1_identification_rate * 100.0,
            r.fnir_at_fpir_1pct * 100.0,
            r.fnir_at_fpir_0_1pct * 100.0,
            r.fnir_at_fpir_budget * 100.0,
            r.fpir_at_operating_point * 100.0,
            r.named_at_operating_point,
            r.fnir_at_operating_point * 100.0,
            r.fnir_at_measured_fpir * 100.0,
            r.ambiguous_rate * 100.0,
            r.wrong_match_rate * 100.0,
        );
    }
    println!(
        "\nenrolment conflicts (enrolment_conflict_max_fmr = {}; best threshold at {} % honest stopped)\n\
         gallery  attempts  caught  honest  stopped  caught@{}%-honest",
        policy.enrolment_conflict_max_fmr,
        identification::CONFLICT_HONEST_BUDGET * 100.0,
        identification::CONFLICT_HONEST_BUDGET * 100.0
    );
    for r in identification {
        println!(
            "{:>7}  {:>8}  {:>5.1}%  {:>6}  {:>6.2}%  {:>15.1}%",
            r.gallery,
            r.conflict_attempts,
            r.conflicts_caught * 100.0,
            r.honest_enrolments,
            r.false_conflicts * 100.0,
            r.conflicts_caught_at_budget * 100.0,
        );
    }
}

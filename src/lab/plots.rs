//! PNG plots for `tee-risk eval --plots DIR`: a DET curve (FNMR against FMR, log axes) per
//! enrolment size, and score histograms of genuine and impostor attempts. Text is drawn with
//! ab_glyph from a TrueType font read at run time (`TEE_RISK_FONT`, or DejaVu Sans where
//! Debian puts it), so no system font library is linked.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::LabError;
use super::eval::Report;

/// Where a TTF font is looked for when `TEE_RISK_FONT` is not set.
const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

const SIZE: (u32, u32) = (900, 650);
const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

/// Registers the font once per process.
fn load_font() -> Result<(), LabError> {
    // The outcome is kept (as its message) so that every later call reports it too.
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = std::env::var_os("TEE_RISK_FONT")
                .map(PathBuf::from)
                .or_else(|| FONT_PATHS.iter().map(PathBuf::from).find(|p| p.exists()))
                .ok_or("plots need a TrueType font: set TEE_RISK_FONT to a .ttf file")?;
            let bytes = std::fs::read(&path)
                .map_err(|e| format!("cannot read font {}: {e}", path.display()))?;
            // Leaked once: plotters keeps registered fonts for the life of the process.
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes.leak())
                .map_err(|_| format!("{} is not a TrueType font", path.display()))
        })
        .clone()
        .map_err(LabError::Plot)
}

/// Writes `det.png` and `scores-k<k>.png` for every report into `dir`; returns the files.
pub fn write_all(dir: &Path, reports: &[Report]) -> Result<Vec<PathBuf>, LabError> {
    load_font()?;
    std::fs::create_dir_all(dir).map_err(|source| LabError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut written = vec![dir.join("det.png")];
    det(&written[0], reports).map_err(|e| LabError::Plot(format!("DET plot: {e}")))?;
    for r in reports {
        let path = dir.join(format!("scores-k{}.png", r.enrol_images));
        histogram(&path, r).map_err(|e| LabError::Plot(format!("histogram: {e}")))?;
        written.push(path);
    }
    Ok(written)
}

/// (FMR, FNMR) at every distinct threshold, from ascending sorted scores.
pub fn det_points(genuine: &[f32], impostor: &[f32]) -> Vec<(f64, f64)> {
    let mut thresholds: Vec<f32> = impostor.to_vec();
    thresholds.dedup();
    thresholds
        .iter()
        .rev()
        .map(|&t| {
            let fmr = (impostor.len() - impostor.partition_point(|&s| s <= t)) as f64
                / impostor.len() as f64;
            let fnmr = genuine.partition_point(|&s| s <= t) as f64 / genuine.len() as f64;
            (fmr, fnmr)
        })
        .collect()
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

fn det(path: &Path, reports: &[Report]) -> PlotResult {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "DET: match score, attackers not enrolled",
            ("sans-serif", 24),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d((1e-5f64..1.0f64).log_scale(), (1e-3f64..1.0f64).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("false match rate")
        .y_desc("false non-match rate")
        .label_style(("sans-serif", 15))
        .draw()?;
    for (r, colour) in reports.iter().zip(COLOURS.iter().cycle()) {
        let mut genuine = r.scores.genuine_similarity.clone();
        let mut impostor = r.scores.impostor_similarity.clone();
        genuine.sort_by(f32::total_cmp);
        impostor.sort_by(f32::total_cmp);
        let points: Vec<(f64, f64)> = det_points(&genuine, &impostor)
            .into_iter()
            .map(|(fmr, fnmr)| (fmr.max(1e-5), fnmr.max(1e-3)))
            .collect();
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(format!(
                "k = {} enrolment image{}: FNMR {:.2} % at FMR 0.1 %",
                r.enrol_images,
                if r.enrol_images == 1 { "" } else { "s" },
                r.fnmr_at_fmr_0_1pct * 100.0
            ))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    // The operating point's FMR.
    chart.draw_series(LineSeries::new(
        [(1e-3, 1e-3), (1e-3, 1.0)],
        BLACK.mix(0.4).stroke_width(1),
    ))?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    root.present()?;
    Ok(())
}

/// The 1:N DET-style curve (FNIR against FPIR) for each gallery size, as `det_1n.png` in
/// `dir`.
pub fn write_identification(
    dir: &Path,
    reports: &[crate::lab::identification::IdentificationReport],
) -> Result<Vec<PathBuf>, LabError> {
    load_font()?;
    std::fs::create_dir_all(dir).map_err(|source| LabError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let det = dir.join("det_1n.png");
    det_1n(&det, reports).map_err(|e| LabError::Plot(e.to_string()))?;
    let by_size = dir.join("fnir_by_gallery.png");
    fnir_by_gallery(&by_size, reports).map_err(|e| LabError::Plot(e.to_string()))?;
    Ok(vec![det, by_size])
}

/// FNIR at the operating point against gallery size, beside the best threshold's FNIR at
/// the FPIR budget and at the FPIR the operating point reached.
fn fnir_by_gallery(
    path: &Path,
    reports: &[crate::lab::identification::IdentificationReport],
) -> PlotResult {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let largest = reports
        .iter()
        .map(|r| r.gallery)
        .max()
        .unwrap_or(10)
        .max(10) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption("1:N: FNIR by gallery size", ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d((5f64..largest * 2.0).log_scale(), 0f64..1.0f64)?;
    chart
        .configure_mesh()
        .x_desc("users enrolled (gallery size)")
        .y_desc("false negative identification rate (FNIR)")
        .label_style(("sans-serif", 15))
        .draw()?;
    type Pick = fn(&crate::lab::identification::IdentificationReport) -> f64;
    let lines: [(&str, Pick); 3] = [
        ("the service's decisions (operating point)", |r| {
            r.fnir_at_operating_point
        }),
        ("best threshold at FPIR = identify_max_fmr", |r| {
            r.fnir_at_fpir_budget
        }),
        ("best threshold at the FPIR the service reached", |r| {
            r.fnir_at_measured_fpir
        }),
    ];
    for ((name, pick), colour) in lines.into_iter().zip(COLOURS.iter().cycle()) {
        let points: Vec<(f64, f64)> = reports
            .iter()
            .map(|r| (r.gallery as f64, pick(r)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, colour.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    root.present()?;
    Ok(())
}

fn det_1n(path: &Path, reports: &[crate::lab::identification::IdentificationReport]) -> PlotResult {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "1:N DET: non-mated searches from never-enrolled identities and distractors",
            ("sans-serif", 24),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d((1e-3f64..1.0f64).log_scale(), (1e-3f64..1.0f64).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("false positive identification rate (FPIR)")
        .y_desc("false negative identification rate (FNIR)")
        .label_style(("sans-serif", 15))
        .draw()?;
    for (r, colour) in reports.iter().zip(COLOURS.iter().cycle()) {
        let points: Vec<(f64, f64)> = r
            .det
            .iter()
            .map(|&(fpir, fnir)| (fpir.max(1e-3), fnir.max(1e-3)))
            .collect();
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(format!(
                "gallery {} ({} images each): rank-1 {:.1} %",
                r.gallery,
                r.enrol_images,
                r.rank1_identification_rate * 100.0
            ))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    root.present()?;
    Ok(())
}

fn histogram(path: &Path, r: &Report) -> PlotResult {
    const BINS: usize = 80;
    let (low, high) = (0.5f32, 1.0f32);
    let density = |scores: &[f32]| -> Vec<(f32, f64)> {
        let mut counts = vec![0usize; BINS];
        for &s in scores {
            let bin = (((s - low) / (high - low)) * BINS as f32).floor();
            if (0.0..BINS as f32).contains(&bin) {
                counts[bin as usize] += 1;
            }
        }
        counts
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                (
                    low + (i as f32 + 0.5) * (high - low) / BINS as f32,
                    c as f64 / scores.len().max(1) as f64,
                )
            })
            .collect()
    };
    let genuine = density(&r.scores.genuine_similarity);
    let impostor = density(&r.scores.impostor_similarity);
    let top = genuine
        .iter()
        .chain(&impostor)
        .map(|p| p.1)
        .fold(0.0, f64::max)
        * 1.1;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Similarity to the claimed user's centroid, k = {}",
                r.enrol_images
            ),
            ("sans-serif", 24),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(low..high, 0.0..top.max(1e-3))?;
    chart
        .configure_mesh()
        .x_desc("cosine similarity")
        .y_desc("share of attempts per bin")
        .label_style(("sans-serif", 15))
        .draw()?;
    for (name, points, colour, n) in [
        (
            "genuine",
            genuine,
            COLOURS[2],
            r.scores.genuine_similarity.len(),
        ),
        (
            "impostor",
            impostor,
            COLOURS[3],
            r.scores.impostor_similarity.len(),
        ),
    ] {
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(format!("{name} ({n} attempts)"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn det_points_walk_from_strict_to_lenient() {
        let genuine = [0.6, 0.8, 0.9, 0.95];
        let impostor = [0.1, 0.5, 0.7, 0.85];
        let points = det_points(&genuine, &impostor);
        assert_eq!(points.first(), Some(&(0.0, 0.5)));
        assert_eq!(points.last(), Some(&(0.75, 0.0)));
        assert!(
            points
                .windows(2)
                .all(|w| w[0].0 <= w[1].0 && w[0].1 >= w[1].1)
        );
    }
}

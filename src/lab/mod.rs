//! The laboratory: offline tooling that never runs inside the TEE. Reading labelled
//! embedding files, generating the attacks the service must catch, training the risk model
//! (`tee-risk train`), the evaluation protocol (`tee-risk eval`) and its plots. Behind the
//! cargo feature `lab`, so that a server-only build links no linfa, ndarray or plotters.

pub mod dataset;
pub mod eval;
pub mod identification;
pub mod plots;
pub mod synth;
pub mod tail;
pub mod train;

use std::path::PathBuf;

use crate::protocol::payload::FeatureError;
use crate::risk::calibration::CalibrationError;

pub use dataset::{Dataset, new_capture};
pub use synth::Labelled;

/// Why a lab command could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Not an embeddings file.
    #[error("{path} is not an embeddings file: {source}")]
    NotEmbeddings {
        /// The file.
        path: PathBuf,
        /// What the JSON parser said.
        source: serde_json::Error,
    },
    /// An embedding in the file is unusable.
    #[error("{image}: {source}")]
    BadEmbedding {
        /// The image the embedding came from.
        image: String,
        /// What is wrong with it.
        source: FeatureError,
    },
    /// The data do not support what was asked (too few identities, images or attempts).
    #[error("{0}")]
    TooLittleData(String),
    /// The match calibration could not be measured.
    #[error(transparent)]
    Calibration(#[from] CalibrationError),
    /// linfa's fit failed.
    #[error("logistic regression failed: {0}")]
    Fit(String),
    /// Drawing a plot failed (no font, or the bitmap backend failed).
    #[error("plot: {0}")]
    Plot(String),
}

//! Loads labelled face-embedding files (the format of `shared/data/faces`:
//! `{"dim", "items": [{"identity", "image", "embedding": [..]}]}`), for calibration and tests.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::LabError;
use crate::protocol::payload::normalise;

#[derive(Deserialize)]
struct File {
    /// The face model that made the embeddings, as the file names it.
    #[serde(default)]
    model: String,
    dim: usize,
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    identity: String,
    image: String,
    embedding: Vec<f32>,
}

/// One labelled, unit-length embedding.
#[derive(Debug, Clone)]
pub struct Sample {
    pub identity: String,
    pub image: String,
    pub embedding: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    /// The file's `model` field (free text: the training command names the face model id).
    pub model: String,
    pub dim: usize,
    pub samples: Vec<Sample>,
}

impl Dataset {
    pub fn load(path: &Path) -> Result<Self, LabError> {
        let text = std::fs::read(path).map_err(|source| LabError::Io {
            path: path.to_owned(),
            source,
        })?;
        let file: File =
            serde_json::from_slice(&text).map_err(|source| LabError::NotEmbeddings {
                path: path.to_owned(),
                source,
            })?;
        let samples = file
            .items
            .into_iter()
            .map(|item| {
                let embedding =
                    normalise(&item.embedding, &file.model, file.dim).map_err(|source| {
                        LabError::BadEmbedding {
                            image: item.image.clone(),
                            source,
                        }
                    })?;
                Ok(Sample {
                    identity: item.identity,
                    image: item.image,
                    embedding: embedding.to_vec(),
                })
            })
            .collect::<Result<Vec<_>, LabError>>()?;
        Ok(Self {
            model: file.model,
            dim: file.dim,
            samples,
        })
    }

    /// A dense identity number per sample, for pair labelling.
    pub fn identity_indices(&self) -> Vec<usize> {
        let mut ids: HashMap<&str, usize> = HashMap::new();
        self.samples
            .iter()
            .map(|s| {
                let next = ids.len();
                *ids.entry(s.identity.as_str()).or_insert(next)
            })
            .collect()
    }

    pub fn embeddings(&self) -> Vec<Vec<f32>> {
        self.samples.iter().map(|s| s.embedding.clone()).collect()
    }
}

/// Another "photograph" of the face behind `features`, for tests and load generation: the
/// embedding with uniform noise of ±0.0122 per component from a xorshift seeded by `n`
/// (about 0.08 in norm), so that captures differ from the original and from each other by
/// about 0.003 in cosine: far above the allow threshold, far below the copy threshold.
pub fn new_capture(features: &[f32], n: usize) -> Vec<f32> {
    let mut state = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    features
        .iter()
        .map(|v| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            v + ((state % 2001) as f32 / 1000.0 - 1.0) * 0.0122
        })
        .collect()
}

//! The face models a deployment accepts (`[features] models`): each an id that requests
//! name, an embedding dimension, and its own risk policy (calibration curves with their
//! fitted tails, trained weights). Scores of two models live on different scales, so every
//! decision is made by one model's policy on that model's vectors, and nothing here compares
//! across models.

use super::RiskPolicy;

/// One accepted face model.
#[derive(Debug, Clone)]
pub struct FaceModel {
    id: String,
    dimension: usize,
    policy: RiskPolicy,
}

impl FaceModel {
    pub fn new(id: impl Into<String>, dimension: usize, policy: RiskPolicy) -> Self {
        Self {
            id: id.into(),
            dimension,
            policy,
        }
    }

    /// The id requests name in `face_model` and answers repeat.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// The policy that decides for this model's vectors.
    pub fn policy(&self) -> &RiskPolicy {
        &self.policy
    }
}

/// Why a list of face models was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaceModelsError {
    #[error("features.models is empty: a deployment accepts at least one face model")]
    Empty,
    #[error("features.models names `{0}` twice")]
    Duplicate(String),
    #[error("features.default_model `{0}` is not in features.models")]
    UnknownDefault(String),
}

/// The accepted face models, the default (what a request without `face_model` means) first.
#[derive(Debug, Clone)]
pub struct FaceModels {
    models: Vec<FaceModel>,
}

impl FaceModels {
    pub fn new(default: &str, mut models: Vec<FaceModel>) -> Result<Self, FaceModelsError> {
        if models.is_empty() {
            return Err(FaceModelsError::Empty);
        }
        for (i, model) in models.iter().enumerate() {
            if models[..i].iter().any(|m| m.id == model.id) {
                return Err(FaceModelsError::Duplicate(model.id.clone()));
            }
        }
        let at = models
            .iter()
            .position(|m| m.id == default)
            .ok_or_else(|| FaceModelsError::UnknownDefault(default.to_owned()))?;
        let first = models.remove(at);
        models.insert(0, first);
        Ok(Self { models })
    }

    /// One model, the default (tests, and deployments of a single model).
    pub fn single(model: FaceModel) -> Self {
        Self {
            models: vec![model],
        }
    }

    /// What a request without `face_model` is scored by.
    pub fn default_model(&self) -> &FaceModel {
        &self.models[0]
    }

    pub fn get(&self, id: &str) -> Option<&FaceModel> {
        self.models.iter().find(|m| m.id == id)
    }

    /// Every model, the default first.
    pub fn iter(&self) -> impl Iterator<Item = &FaceModel> {
        self.models.iter()
    }

    /// The model a request asked for (`None`: the default).
    pub fn resolve(&self, requested: Option<&str>) -> Option<&FaceModel> {
        match requested {
            None => Some(self.default_model()),
            Some(id) => self.get(id),
        }
    }

    /// The accepted models for an error's detail: `dlib-resnet128 (128-d, the default),
    /// mobilefacenet192 (192-d)`.
    pub fn describe(&self) -> String {
        self.models
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let default = if i == 0 { ", the default" } else { "" };
                format!("{} ({}-d{default})", m.id, m.dimension)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::risk::default_policy;

    fn model(id: &str, dimension: usize) -> FaceModel {
        FaceModel::new(id, dimension, default_policy())
    }

    #[test]
    fn the_default_comes_first_and_resolves_an_absent_request() {
        let models = FaceModels::new("b", vec![model("a", 128), model("b", 192)]).unwrap();
        assert_eq!(models.default_model().id(), "b");
        assert_eq!(models.resolve(None).unwrap().dimension(), 192);
        assert_eq!(models.resolve(Some("a")).unwrap().dimension(), 128);
        assert!(models.resolve(Some("c")).is_none());
        assert_eq!(models.describe(), "b (192-d, the default), a (128-d)");
    }

    #[test]
    fn an_empty_list_a_duplicate_or_an_unknown_default_is_refused() {
        assert_eq!(
            FaceModels::new("a", vec![]).unwrap_err(),
            FaceModelsError::Empty
        );
        assert_eq!(
            FaceModels::new("a", vec![model("a", 1), model("a", 2)]).unwrap_err(),
            FaceModelsError::Duplicate("a".into())
        );
        assert_eq!(
            FaceModels::new("z", vec![model("a", 1)]).unwrap_err(),
            FaceModelsError::UnknownDefault("z".into())
        );
    }
}

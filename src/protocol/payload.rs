//! The decrypted request: who claims to be whom, with which face embedding.
//! Parsing turns untrusted plaintext into a [`Probe`] whose every field has been checked.

use serde::Deserialize;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

pub const MAX_USER_ID_BYTES: usize = 128;
pub const MAX_DEVICE_ID_BYTES: usize = 128;

/// The plaintext JSON as the client sent it. Wiped on drop.
#[derive(Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
struct FeatureMessage {
    user_id: String,
    features: Vec<f32>,
    #[serde(default)]
    liveness: Option<f32>,
    #[serde(default)]
    device_id: Option<String>,
}

/// Why a decrypted payload was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FeatureError {
    #[error("the payload is not JSON with user_id, features and optional liveness, device_id")]
    MalformedPayload,
    #[error("the payload is not JSON with user_id only")]
    MalformedErasure,
    #[error("features must have {expected} values, got {got}")]
    WrongDimension { expected: usize, got: usize },
    #[error("feature {0} is not a finite number")]
    NonFinite(usize),
    #[error("the feature vector has zero norm")]
    ZeroNorm,
    #[error("{0}")]
    InvalidField(&'static str),
}

/// A checked request: non-empty ids of bounded length, a unit-length embedding of the
/// configured dimension, liveness in [0, 1]. Wiped on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Probe {
    pub user_id: String,
    /// L2-normalised, so cosine similarity is a dot product.
    pub features: Vec<f32>,
    pub liveness: Option<f32>,
    pub device_id: Option<String>,
}

impl Probe {
    /// Parses and validates the decrypted payload.
    pub fn parse(plaintext: &[u8], dimension: usize) -> Result<Self, FeatureError> {
        let mut message: FeatureMessage =
            serde_json::from_slice(plaintext).map_err(|_| FeatureError::MalformedPayload)?;
        check_id(
            &message.user_id,
            MAX_USER_ID_BYTES,
            "user_id must be 1 to 128 bytes without control characters",
        )?;
        if let Some(device) = &message.device_id {
            check_id(
                device,
                MAX_DEVICE_ID_BYTES,
                "device_id must be 1 to 128 bytes without control characters",
            )?;
        }
        if let Some(liveness) = message.liveness
            && !(0.0..=1.0).contains(&liveness)
        {
            return Err(FeatureError::InvalidField(
                "liveness must be a number in [0, 1]",
            ));
        }
        let mut features = normalise(&message.features, dimension)?;
        // Move the values out; `message` and `features` wipe what is left when dropped.
        Ok(Self {
            user_id: std::mem::take(&mut message.user_id),
            features: std::mem::take(&mut *features),
            liveness: message.liveness,
            device_id: message.device_id.take(),
        })
    }
}

/// `DELETE /v1/users`: the user whose data is to be erased. Wiped on drop.
#[derive(Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub struct EraseRequest {
    pub user_id: String,
}

impl EraseRequest {
    pub fn parse(plaintext: &[u8]) -> Result<Self, FeatureError> {
        let request: EraseRequest =
            serde_json::from_slice(plaintext).map_err(|_| FeatureError::MalformedErasure)?;
        check_id(
            &request.user_id,
            MAX_USER_ID_BYTES,
            "user_id must be 1 to 128 bytes without control characters",
        )?;
        Ok(request)
    }
}

fn check_id(id: &str, max: usize, message: &'static str) -> Result<(), FeatureError> {
    if id.is_empty() || id.len() > max || id.chars().any(char::is_control) {
        return Err(FeatureError::InvalidField(message));
    }
    Ok(())
}

/// Checks dimension and finiteness and scales to unit length.
pub fn normalise(values: &[f32], dimension: usize) -> Result<Zeroizing<Vec<f32>>, FeatureError> {
    if values.len() != dimension {
        return Err(FeatureError::WrongDimension {
            expected: dimension,
            got: values.len(),
        });
    }
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(FeatureError::NonFinite(index));
    }
    let norm = values
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt();
    if !(norm.is_finite() && norm > f64::from(f32::MIN_POSITIVE)) {
        return Err(FeatureError::ZeroNorm);
    }
    Ok(Zeroizing::new(
        values
            .iter()
            .map(|&v| (f64::from(v) / norm) as f32)
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(features: &str, extra: &str) -> Vec<u8> {
        format!(r#"{{"user_id":"alice","features":{features}{extra}}}"#).into_bytes()
    }

    #[test]
    fn valid_probe_is_normalised() {
        let probe =
            Probe::parse(&payload("[3,4]", r#","liveness":0.9,"device_id":"d1""#), 2).unwrap();
        assert_eq!(probe.user_id, "alice");
        assert!((probe.features[0] - 0.6).abs() < 1e-6 && (probe.features[1] - 0.8).abs() < 1e-6);
        assert_eq!(probe.liveness, Some(0.9));
        assert_eq!(probe.device_id.as_deref(), Some("d1"));
    }

    #[test]
    fn invalid_probes_are_typed() {
        let cases: Vec<(Vec<u8>, FeatureError)> = vec![
            (b"nope".to_vec(), FeatureError::MalformedPayload),
            (
                payload("[1,2]", r#","x":1"#),
                FeatureError::MalformedPayload,
            ),
            (
                payload("[1,2,3]", ""),
                FeatureError::WrongDimension {
                    expected: 2,
                    got: 3,
                },
            ),
            (payload("[0,0]", ""), FeatureError::ZeroNorm),
            (payload("[1e39,1]", ""), FeatureError::NonFinite(0)),
            (
                payload("[1,2]", r#","liveness":1.5"#),
                FeatureError::InvalidField("liveness must be a number in [0, 1]"),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(Probe::parse(&body, 2).err(), Some(expected));
        }
        let long_user = format!(r#"{{"user_id":"{}","features":[1,2]}}"#, "u".repeat(129));
        assert!(matches!(
            Probe::parse(long_user.as_bytes(), 2),
            Err(FeatureError::InvalidField(_))
        ));
        let empty_user = br#"{"user_id":"","features":[1,2]}"#;
        assert!(matches!(
            Probe::parse(empty_user, 2),
            Err(FeatureError::InvalidField(_))
        ));
        assert_eq!(
            EraseRequest::parse(br#"{"user_id":"bob"}"#)
                .unwrap()
                .user_id,
            "bob"
        );
        for bad in [
            &br#"{"user_id":"bob","x":1}"#[..],
            b"[]",
            br#"{"user_id":""}"#,
        ] {
            assert!(EraseRequest::parse(bad).is_err());
        }
        let control = br#"{"user_id":"a\nb","features":[1,2]}"#;
        assert!(matches!(
            Probe::parse(control, 2),
            Err(FeatureError::InvalidField(_))
        ));
    }
}

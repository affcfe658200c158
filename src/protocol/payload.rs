//! The decrypted request: who claims to be whom, with which face embedding.
//! Parsing turns untrusted plaintext into a [`Probe`] whose every field has been checked.

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Longest user id, in bytes.
pub const MAX_USER_ID_BYTES: usize = 128;
/// Longest device id, in bytes.
pub const MAX_DEVICE_ID_BYTES: usize = 128;
/// Smallest L2 norm a feature vector may have: below it the direction is lost in f32
/// rounding, and a vector of such values is an attempt to probe the normaliser, not a face.
pub const MIN_NORM: f64 = 1e-6;

/// The plaintext JSON as the client sent it. Wiped on drop.
#[derive(Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
struct FeatureMessage {
    user_id: String,
    features: Vec<f32>,
    /// f64, so that a number beyond f32 (1e39) is an out-of-range liveness, not a
    /// malformed payload.
    #[serde(default)]
    liveness: Option<f64>,
    #[serde(default)]
    device_id: Option<String>,
    /// PROTOCOL v1.3: the face model that made `features`; absent means the deployment's
    /// default (what v1.1 and v1.2 clients send).
    #[serde(default)]
    #[zeroize(skip)]
    face_model: Option<String>,
}

/// Resolves a request's `face_model` (`None`: absent) to the accepted model's id and its
/// embedding dimension, or refuses it ([`FeatureError::UnknownFaceModel`]).
pub type FaceModelMenu<'a> = &'a dyn Fn(Option<&str>) -> Result<(String, usize), FeatureError>;

/// Why a decrypted payload was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FeatureError {
    #[error("the payload is not JSON with user_id, features and optional liveness, device_id")]
    MalformedPayload,
    #[error("the payload is not JSON with user_id only")]
    MalformedErasure,
    #[error("the payload is not JSON with features and optional liveness, device_id, top_k")]
    MalformedIdentify,
    #[error("features must have {expected} values for face model {face_model}, got {got}")]
    WrongDimension {
        face_model: String,
        expected: usize,
        got: usize,
    },
    /// A `face_model` the deployment does not accept; `accepted` names those it does.
    #[error("face_model `{requested}` is not accepted here; accepted: {accepted}")]
    UnknownFaceModel { requested: String, accepted: String },
    #[error("feature {0} is not a finite number")]
    NonFinite(usize),
    #[error("the feature vector's norm is too small (zero, or below 1e-6)")]
    ZeroNorm,
    #[error("{0}")]
    InvalidField(&'static str),
}

/// A checked request: non-empty ids of bounded length, a unit-length embedding of its face
/// model's dimension, liveness in [0, 1]. Wiped on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Probe {
    pub user_id: String,
    /// The accepted face model that made `features` (the default when the request named none).
    #[zeroize(skip)]
    pub face_model: String,
    /// L2-normalised, so cosine similarity is a dot product.
    pub features: Vec<f32>,
    pub liveness: Option<f32>,
    pub device_id: Option<String>,
}

impl Probe {
    /// Parses and validates the decrypted payload; `models` resolves its face model.
    pub fn parse(plaintext: &[u8], models: FaceModelMenu<'_>) -> Result<Self, FeatureError> {
        let mut message: FeatureMessage = serde_json::from_slice(plaintext).map_err(|_| {
            // JSON has no NaN or Infinity and serde_json refuses 1e309: name such a value
            // as what it is rather than as a malformed payload.
            match non_finite_feature(plaintext) {
                Some(index) => FeatureError::NonFinite(index),
                None => FeatureError::MalformedPayload,
            }
        })?;
        check_id(
            &message.user_id,
            MAX_USER_ID_BYTES,
            "user_id must be 1 to 128 bytes without control characters",
        )?;
        let liveness = check_context(message.device_id.as_deref(), message.liveness)?;
        let (face_model, dimension) = models(message.face_model.as_deref())?;
        let mut features = normalise(&message.features, &face_model, dimension)?;
        // Move the values out; `message` and `features` wipe what is left when dropped.
        Ok(Self {
            user_id: std::mem::take(&mut message.user_id),
            face_model,
            features: std::mem::take(&mut *features),
            liveness,
            device_id: message.device_id.take(),
        })
    }
}

/// Most candidates an identification may ask for.
pub const MAX_TOP_K: usize = 10;

/// Most candidates an investigative search (`"mode": "investigate"`) may ask for.
pub const MAX_INVESTIGATE_TOP_K: usize = 50;

/// Candidates an investigative search returns when `top_k` is absent.
pub const DEFAULT_INVESTIGATE_TOP_K: usize = 10;

/// What an identification is for (NIST FRTE 1:N's two uses of a gallery search).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentifyMode {
    /// A decision: match / no_match / ambiguous at `[risk] identify_max_fmr` (permission
    /// `identify`).
    #[default]
    Decide,
    /// Leads for a human: the top k candidates ranked with their calibrated FMRs, no
    /// decision (permission `investigate`).
    Investigate,
}

impl IdentifyMode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentifyMode::Decide => "decide",
            IdentifyMode::Investigate => "investigate",
        }
    }
}

/// The plaintext of `POST /v1/identify`, as sent. Wiped on drop.
#[derive(Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
struct IdentifyMessage {
    features: Vec<f32>,
    #[serde(default)]
    liveness: Option<f64>,
    #[serde(default)]
    device_id: Option<String>,
    /// Any JSON value, so that a negative, fractional or non-numeric `top_k` is an invalid
    /// field (with the range in its detail), not a malformed payload.
    #[serde(default)]
    #[zeroize(skip)]
    top_k: Option<serde_json::Value>,
    #[serde(default)]
    #[zeroize(skip)]
    mode: Option<IdentifyMode>,
    #[serde(default)]
    #[zeroize(skip)]
    face_model: Option<String>,
}

/// `POST /v1/identify`: whose face is this? Checked like a [`Probe`], without a user id.
/// Wiped on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct IdentifyProbe {
    /// The accepted face model that made `features`: only its templates are searched.
    #[zeroize(skip)]
    pub face_model: String,
    /// L2-normalised.
    pub features: Vec<f32>,
    pub liveness: Option<f32>,
    pub device_id: Option<String>,
    /// Candidates to return: 1 to [`MAX_TOP_K`] (default 1) to decide, 1 to
    /// [`MAX_INVESTIGATE_TOP_K`] (default [`DEFAULT_INVESTIGATE_TOP_K`]) to investigate.
    pub top_k: usize,
    #[zeroize(skip)]
    pub mode: IdentifyMode,
}

impl IdentifyProbe {
    pub fn parse(plaintext: &[u8], models: FaceModelMenu<'_>) -> Result<Self, FeatureError> {
        let mut message: IdentifyMessage =
            serde_json::from_slice(plaintext).map_err(|_| match non_finite_feature(plaintext) {
                Some(index) => FeatureError::NonFinite(index),
                None => FeatureError::MalformedIdentify,
            })?;
        let liveness = check_context(message.device_id.as_deref(), message.liveness)?;
        let mode = message.mode.unwrap_or_default();
        let (default, most, range) = match mode {
            IdentifyMode::Decide => (1, MAX_TOP_K, "top_k must be an integer from 1 to 10"),
            IdentifyMode::Investigate => (
                DEFAULT_INVESTIGATE_TOP_K,
                MAX_INVESTIGATE_TOP_K,
                "top_k must be an integer from 1 to 50 in investigate mode",
            ),
        };
        let top_k = match &message.top_k {
            None => default,
            Some(value) => value
                .as_u64()
                .and_then(|k| usize::try_from(k).ok())
                .filter(|k| (1..=most).contains(k))
                .ok_or(FeatureError::InvalidField(range))?,
        };
        let (face_model, dimension) = models(message.face_model.as_deref())?;
        let mut features = normalise(&message.features, &face_model, dimension)?;
        Ok(Self {
            face_model,
            features: std::mem::take(&mut *features),
            liveness,
            device_id: message.device_id.take(),
            top_k,
            mode,
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

/// The optional context every probe may carry: a device id, a liveness score in [0, 1]
/// (returned as the f32 the scoring reads).
fn check_context(
    device_id: Option<&str>,
    liveness: Option<f64>,
) -> Result<Option<f32>, FeatureError> {
    if let Some(device) = device_id {
        check_id(
            device,
            MAX_DEVICE_ID_BYTES,
            "device_id must be 1 to 128 bytes without control characters",
        )?;
    }
    if let Some(liveness) = liveness
        && !(0.0..=1.0).contains(&liveness)
    {
        return Err(FeatureError::InvalidField(
            "liveness must be a number in [0, 1]",
        ));
    }
    Ok(liveness.map(|l| l as f32))
}

fn check_id(id: &str, max: usize, message: &'static str) -> Result<(), FeatureError> {
    if id.is_empty() || id.len() > max || id.chars().any(char::is_control) {
        return Err(FeatureError::InvalidField(message));
    }
    Ok(())
}

/// Checks dimension (that of `face_model`) and finiteness and scales to unit length.
pub fn normalise(
    values: &[f32],
    face_model: &str,
    dimension: usize,
) -> Result<Zeroizing<Vec<f32>>, FeatureError> {
    if values.len() != dimension {
        return Err(FeatureError::WrongDimension {
            face_model: face_model.to_owned(),
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
    if !(norm.is_finite() && norm >= MIN_NORM) {
        return Err(FeatureError::ZeroNorm);
    }
    Ok(Zeroizing::new(
        values
            .iter()
            .map(|&v| (f64::from(v) / norm) as f32)
            .collect(),
    ))
}

/// The index of the first element of the top-level `features` array that is a non-finite
/// number token (`NaN`, `Infinity`, `-Infinity`, or a literal beyond f32 such as `1e39`),
/// if the plaintext has one. A small scanner that tracks strings, so that a `"features"`
/// inside a user id is not mistaken for the key; used only after serde_json refused the
/// payload, to give the precise error.
fn non_finite_feature(plaintext: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(plaintext).ok()?;
    let bytes = text.as_bytes();
    let (mut i, mut depth) = (0, 0usize);
    let mut last_string: Option<(usize, usize)> = None;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                last_string = Some((start, i.min(bytes.len())));
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b':' if depth == 1 && last_string.is_some_and(|(a, b)| &text[a..b] == "features") => {
                let rest = text[i + 1..].trim_start();
                let array = rest.strip_prefix('[')?;
                let end = array.find(']').unwrap_or(array.len());
                return array[..end].split(',').map(str::trim).position(|token| {
                    let unsigned = token.trim_start_matches(['-', '+']);
                    // Beyond f32 (`1e39`) is non-finite as a feature whether or not the
                    // JSON parser refused it as out of range for f32 itself.
                    matches!(unsigned, "NaN" | "Infinity" | "inf" | "nan")
                        || token
                            .parse::<f64>()
                            .is_ok_and(|v| !v.is_finite() || v.abs() > f64::from(f32::MAX))
                });
            }
            b',' => last_string = None,
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two accepted models: `m2` (2-d, the default) and `m3` (3-d).
    fn menu(requested: Option<&str>) -> Result<(String, usize), FeatureError> {
        match requested.unwrap_or("m2") {
            "m2" => Ok(("m2".into(), 2)),
            "m3" => Ok(("m3".into(), 3)),
            other => Err(FeatureError::UnknownFaceModel {
                requested: other.into(),
                accepted: "m2 (2-d, the default), m3 (3-d)".into(),
            }),
        }
    }

    /// PROTOCOL v1.3: `face_model` picks the model and so the dimension; absent is the
    /// default; an unknown one is refused naming the accepted ones, before the features are
    /// looked at.
    #[test]
    fn the_face_model_picks_the_dimension() {
        let probe = Probe::parse(&payload("[1,2,2]", r#","face_model":"m3""#), &menu).unwrap();
        assert_eq!((probe.face_model.as_str(), probe.features.len()), ("m3", 3));
        let probe = Probe::parse(&payload("[3,4]", ""), &menu).unwrap();
        assert_eq!(probe.face_model, "m2");
        assert_eq!(
            Probe::parse(&payload("[3,4]", r#","face_model":"m3""#), &menu).err(),
            Some(FeatureError::WrongDimension {
                face_model: "m3".into(),
                expected: 3,
                got: 2
            })
        );
        let unknown = Probe::parse(&payload("[3,4]", r#","face_model":"arcface""#), &menu)
            .err()
            .unwrap();
        assert!(
            unknown
                .to_string()
                .contains("m2 (2-d, the default), m3 (3-d)")
        );
        let identify =
            IdentifyProbe::parse(br#"{"features":[1,2,2],"face_model":"m3"}"#, &menu).unwrap();
        assert_eq!(identify.face_model, "m3");
        assert!(matches!(
            IdentifyProbe::parse(br#"{"features":[1,2],"face_model":7}"#, &menu),
            Err(FeatureError::MalformedIdentify)
        ));
    }

    fn payload(features: &str, extra: &str) -> Vec<u8> {
        format!(r#"{{"user_id":"alice","features":{features}{extra}}}"#).into_bytes()
    }

    /// docs/PROTOCOL.md §2, §2b and §4: a liveness outside [0, 1], however large, and a
    /// `top_k` that is not an integer in its range are `invalid_field`; null is absent.
    #[test]
    fn out_of_range_numbers_are_invalid_fields_not_malformed_payloads() {
        for liveness in ["2", "-0.5", "1e39", "3.5e38", "1e308"] {
            let result = Probe::parse(
                &payload("[3,4]", &format!(r#","liveness":{liveness}"#)),
                &menu,
            );
            assert!(
                matches!(result, Err(FeatureError::InvalidField(_))),
                "liveness {liveness}"
            );
        }
        assert!(
            Probe::parse(&payload("[3,4]", r#","liveness":null"#), &menu)
                .is_ok_and(|p| p.liveness.is_none())
        );
        let identify = |extra: &str| {
            IdentifyProbe::parse(format!(r#"{{"features":[3,4]{extra}}}"#).as_bytes(), &menu)
        };
        for top_k in [
            "0",
            "11",
            "-1",
            "1.0",
            "3.0",
            "1e1",
            "2.5",
            "18446744073709551616",
            "4294967296",
            "true",
            "\"3\"",
        ] {
            assert!(
                matches!(
                    identify(&format!(r#","top_k":{top_k}"#)),
                    Err(FeatureError::InvalidField(_))
                ),
                "top_k {top_k}"
            );
        }
        assert_eq!(identify(r#","top_k":null"#).unwrap().top_k, 1);
        assert_eq!(identify(r#","top_k":10"#).unwrap().top_k, 10);
        assert_eq!(
            identify(r#","mode":"investigate""#).unwrap().top_k,
            DEFAULT_INVESTIGATE_TOP_K
        );
        assert_eq!(
            identify(r#","mode":"investigate","top_k":50"#)
                .unwrap()
                .top_k,
            50
        );
        assert!(matches!(
            identify(r#","mode":"investigate","top_k":51"#),
            Err(FeatureError::InvalidField(_))
        ));
        assert!(matches!(
            identify(r#","mode":"other""#),
            Err(FeatureError::MalformedIdentify)
        ));
        assert!(matches!(
            identify(r#","liveness":1e39"#),
            Err(FeatureError::InvalidField(_))
        ));
    }

    #[test]
    fn valid_probe_is_normalised() {
        let probe = Probe::parse(
            &payload("[3,4]", r#","liveness":0.9,"device_id":"d1""#),
            &menu,
        )
        .unwrap();
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
                    face_model: "m2".into(),
                    expected: 2,
                    got: 3,
                },
            ),
            (payload("[0,0]", ""), FeatureError::ZeroNorm),
            (payload("[1e-40,1e-40]", ""), FeatureError::ZeroNorm),
            (payload("[1e39,1]", ""), FeatureError::NonFinite(0)),
            (payload("[1,NaN]", ""), FeatureError::NonFinite(1)),
            (payload("[Infinity,1]", ""), FeatureError::NonFinite(0)),
            (payload("[1, -Infinity]", ""), FeatureError::NonFinite(1)),
            (payload("[1e309,1]", ""), FeatureError::NonFinite(0)),
            // Only the features array counts: a NaN elsewhere is a malformed payload.
            (
                payload("[1,2]", r#","liveness":NaN"#),
                FeatureError::MalformedPayload,
            ),
            (
                payload("[1,2]", r#","liveness":1.5"#),
                FeatureError::InvalidField("liveness must be a number in [0, 1]"),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(Probe::parse(&body, &menu).err(), Some(expected));
        }
        let long_user = format!(r#"{{"user_id":"{}","features":[1,2]}}"#, "u".repeat(129));
        assert!(matches!(
            Probe::parse(long_user.as_bytes(), &menu),
            Err(FeatureError::InvalidField(_))
        ));
        let empty_user = br#"{"user_id":"","features":[1,2]}"#;
        assert!(matches!(
            Probe::parse(empty_user, &menu),
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
        // A user id that mentions "features" does not fool the scanner.
        let decoy = br#"{"user_id":"features","features":[1,NaN]}"#;
        assert_eq!(
            Probe::parse(decoy, &menu).err(),
            Some(FeatureError::NonFinite(1))
        );
        let decoy = br#"{"user_id":"x\"features\":[NaN]","features":[1,2,3]}"#;
        assert!(Probe::parse(decoy, &menu).is_err());
        let control = br#"{"user_id":"a\nb","features":[1,2]}"#;
        assert!(matches!(
            Probe::parse(control, &menu),
            Err(FeatureError::InvalidField(_))
        ));
    }
}

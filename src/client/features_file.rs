//! Features files for the CLI and the tests.

use super::ClientError;

/// Reads a features file: a JSON array of numbers, or an object with `features` or
/// `embedding` (as in the shipped samples and the LFW embedding files).
pub fn read_features_file(path: &std::path::Path) -> Result<Vec<f32>, ClientError> {
    let fail = |reason: String| ClientError::FeaturesFile {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| fail(format!("not JSON: {e}")))?;
    let array = match &value {
        serde_json::Value::Array(_) => &value,
        serde_json::Value::Object(map) => map
            .get("features")
            .or_else(|| map.get("embedding"))
            .ok_or_else(|| fail("no `features` or `embedding` field".into()))?,
        _ => return Err(fail("must hold an array or an object".into())),
    };
    serde_json::from_value(array.clone())
        .map_err(|_| fail("features must be an array of numbers".into()))
}

//! HTTP for the client (ureq, without TLS: the envelope is end-to-end encrypted and the
//! answer signed): one agent, bounded reads.

use std::time::Duration;

use super::ClientError;

/// Largest response the client reads.
const MAX_RESPONSE_BYTES: u64 = 1 << 20;

/// A raw HTTP answer.
pub struct RawResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

pub(super) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent()
}

pub(super) fn read(
    mut response: ureq::http::Response<ureq::Body>,
) -> Result<RawResponse, ClientError> {
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BYTES)
        .read_to_vec()
        .map_err(|e| ClientError::Http(e.to_string()))?;
    Ok(RawResponse { status, body })
}

/// `GET base_url ‖ path`, expecting 200; returns the body.
pub(super) fn get_ok(
    agent: &ureq::Agent,
    base_url: &str,
    path: &str,
) -> Result<Vec<u8>, ClientError> {
    let raw = read(
        agent
            .get(format!("{base_url}{path}"))
            .call()
            .map_err(|e| ClientError::Http(e.to_string()))?,
    )?;
    if raw.status != 200 {
        let route = path.split('?').next().unwrap_or(path);
        return Err(ClientError::Http(format!(
            "GET {route} answered {}",
            raw.status
        )));
    }
    Ok(raw.body)
}

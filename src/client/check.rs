//! Accepting an answer: a refusal as a typed error, a 200 answer only if its SM2 signature,
//! request id and request hash all check out.

use serde::de::DeserializeOwned;

use super::error::untrusted;
use super::{ClientError, Distrust, RawResponse};
use crate::crypto::sm2::PublicKey;
use crate::crypto::sm3_hex;
use crate::protocol::reply::{Code, ErrorBody, Stamp};
use crate::protocol::response::{SignedResponse, verify};

/// Checks an answer in the clear to the envelope `body` (which may have been built by another
/// program: its request id is read from its protected header) under the service's `identity`
/// key, and returns its payload as `T` (any answer: `serde_json::Value`). A refusal becomes
/// [`ClientError::Refused`]; an encrypted answer cannot be checked here (only the sealer
/// holds its key).
pub fn verify_answer_to<T: DeserializeOwned>(
    identity: &PublicKey,
    body: &[u8],
    raw: &RawResponse,
) -> Result<T, ClientError> {
    let envelope = crate::protocol::request::RequestEnvelope::parse(body)
        .map_err(|e| ClientError::Keys(format!("not a request envelope: {e}")))?;
    check_signed_answer(identity, &envelope.header.rid, body, raw)
}

/// A non-200 answer as [`ClientError::Refused`] (a body that is not `{"error","detail"}`
/// becomes code `unknown` with the body as its detail).
pub(super) fn refusal(raw: &RawResponse) -> ClientError {
    let error: ErrorBody = serde_json::from_slice(&raw.body).unwrap_or(ErrorBody {
        error: Code::Other("unknown".into()),
        detail: String::from_utf8_lossy(&raw.body).into_owned(),
    });
    ClientError::Refused {
        status: raw.status,
        code: error.error,
        detail: error.detail,
    }
}

/// A refusal as a typed error; a 200 answer only if signed by `identity` for request `rid`
/// and the exact `body` (`req_sm3`), then read as `T`.
pub(super) fn check_signed_answer<T: DeserializeOwned>(
    identity: &PublicKey,
    rid: &str,
    body: &[u8],
    raw: &RawResponse,
) -> Result<T, ClientError> {
    if raw.status != 200 {
        return Err(refusal(raw));
    }
    let signed: SignedResponse = serde_json::from_slice(&raw.body)
        .map_err(|_| untrusted(Distrust::Envelope, "not a signed response"))?;
    let payload = verify(identity, &signed).map_err(|e| untrusted(Distrust::Signature, e))?;
    let stamp: Stamp = serde_json::from_slice(&payload)
        .map_err(|e| untrusted(Distrust::Payload, format!("no answer stamp: {e}")))?;
    if stamp.rid != rid {
        return Err(untrusted(
            Distrust::RequestId,
            "the response answers another request id",
        ));
    }
    if stamp.req_sm3 != sm3_hex(body) {
        return Err(untrusted(
            Distrust::RequestHash,
            "the response answers another request body",
        ));
    }
    serde_json::from_slice(&payload).map_err(|e| {
        untrusted(
            Distrust::Payload,
            format!(
                "a signed {} answer that does not read as expected: {e}",
                stamp.op
            ),
        )
    })
}

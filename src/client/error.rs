//! What can go wrong in a client call, by whose fault.

use crate::attest::Check;
use crate::protocol::reply::{Code, ErrorCode};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("HTTP request failed: {0}")]
    Http(String),
    #[error("the service refused the request ({status} {code}): {detail}")]
    Refused {
        status: u16,
        /// The stable code (docs/PROTOCOL.md §4); one this client does not know is kept as
        /// text.
        code: Code<ErrorCode>,
        detail: String,
    },
    /// Evidence, a key certificate or an answer failed a check: trust nothing in it.
    #[error("the response cannot be trusted ({failed}): {detail}")]
    Untrusted {
        /// Which check failed.
        failed: Distrust,
        /// What it found.
        detail: String,
    },
    /// The service presents another identity key than the one this client pinned: it
    /// restarted with a new identity (a single node makes one at every start) or it is not
    /// the service that was pinned. Nothing was sent under the new key.
    #[error(
        "the service's identity changed: it presents identity key {presented}, not the pinned \
         {pinned}. A single node makes a new identity at every start: attest it again (tee-risk \
         client attest) and pin the new key (keys/identity.pub.pem) if the evidence holds"
    )]
    IdentityChanged {
        /// The kid of the pinned identity key.
        pinned: String,
        /// The kid of the identity key the service presents now.
        presented: String,
    },
    #[error("{0}")]
    Keys(String),
    /// A features file the CLI was given is unusable.
    #[error("{path}: {reason}")]
    FeaturesFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Which check an untrusted response failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Distrust {
    /// The attestation evidence failed this check of the policy.
    Attestation(Check),
    /// The evidence does not parse.
    Evidence,
    /// A 200 answer that is not a signed response, or an encrypted answer that does not
    /// open under this request's key (or was not sent encrypted when asked).
    Envelope,
    /// The answer's SM2 signature does not verify under the trusted identity key.
    Signature,
    /// The signed answer answers another request id.
    RequestId,
    /// The signed answer answers another request body (`req_sm3`).
    RequestHash,
    /// The signed payload is not the answer this call expects.
    Payload,
}

impl Distrust {
    /// A stable name: the attestation check's own (`measurement`, `tcb`, …) or `evidence`,
    /// `envelope`, `signature`, `request_id`, `request_hash`, `payload`.
    pub fn code(self) -> &'static str {
        match self {
            Distrust::Attestation(check) => check.as_str(),
            Distrust::Evidence => "evidence",
            Distrust::Envelope => "envelope",
            Distrust::Signature => "signature",
            Distrust::RequestId => "request_id",
            Distrust::RequestHash => "request_hash",
            Distrust::Payload => "payload",
        }
    }
}

impl std::fmt::Display for Distrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Distrust::Attestation(check) => return write!(f, "attestation check `{check}`"),
            Distrust::Evidence => "evidence",
            Distrust::Envelope => "answer envelope",
            Distrust::Signature => "signature",
            Distrust::RequestId => "request id",
            Distrust::RequestHash => "request hash",
            Distrust::Payload => "payload",
        })
    }
}

pub(super) fn untrusted(failed: Distrust, detail: impl ToString) -> ClientError {
    ClientError::Untrusted {
        failed,
        detail: detail.to_string(),
    }
}

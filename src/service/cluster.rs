//! The peer side of the join protocol (`attest::join`): single-use challenges, and the
//! grant of the cluster's secrets to a replica whose evidence passes the cluster policy,
//! sealed to the ephemeral key that evidence binds and signed by the cluster identity.
//!
//! Authenticated by attestation alone: no token, no operator secret. What a caller must
//! prove is that it runs an accepted build in an accepted TEE, right now (a challenge is
//! valid once, for [`CHALLENGE_TTL_SECS`]).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::attest::join::{ChallengeAnswer, ChallengeRequest, JOIN_TYP, JoinGrant, JoinRequest};
use crate::attest::{AttestError, Attester, Binding, NONCE_LEN, Policy};
use crate::crypto::random_array;
use crate::protocol::request::{ProtectedHeader, seal};
use crate::protocol::response::{ResponseSigner, SignedResponse};
use crate::protocol::{b64_decode, b64_encode};

use super::Service;

/// A challenge answers one join within this many seconds.
pub const CHALLENGE_TTL_SECS: i64 = 60;
/// Challenges outstanding at once (a flood of challenge requests cannot grow memory).
const MAX_OUTSTANDING: usize = 1024;

/// Why a join step was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The request is not a join message.
    #[error("{0}")]
    Malformed(&'static str),
    /// The challenge was never issued, was used already, or is older than a minute.
    #[error("the challenge is unknown, already used or expired: ask for a new one")]
    Challenge,
    /// The joiner's evidence failed a check of the cluster policy.
    #[error("{0}")]
    Attestation(#[from] AttestError),
    /// Too many challenges outstanding.
    #[error("too many join challenges outstanding; retry in a minute")]
    Busy,
    /// This replica could not make its evidence or seal the secrets.
    #[error("this replica cannot answer joins now: {0}")]
    Unavailable(String),
}

impl JoinError {
    /// The check that failed, for logs and refusal details.
    pub fn check(&self) -> &'static str {
        match self {
            JoinError::Malformed(_) => "format",
            JoinError::Challenge => "challenge",
            JoinError::Attestation(e) => e.check.as_str(),
            JoinError::Busy => "busy",
            JoinError::Unavailable(_) => "unavailable",
        }
    }
}

/// A replica's side of the join protocol.
pub struct ClusterPeer {
    /// What a joiner must prove (the same policy a joiner checks peers with).
    policy: Policy,
    /// Outstanding challenges and when they expire.
    challenges: Mutex<HashMap<[u8; NONCE_LEN], i64>>,
}

impl ClusterPeer {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            challenges: Mutex::new(HashMap::new()),
        }
    }

    /// `POST /cluster/v1/challenge`: this replica's evidence for the joiner's nonce, and a
    /// fresh challenge for the joiner's own evidence.
    pub fn challenge(
        &self,
        service: &Service,
        attester: &Attester,
        request: &ChallengeRequest,
        now: i64,
    ) -> Result<ChallengeAnswer, JoinError> {
        let nonce: [u8; NONCE_LEN] = b64_decode(&request.nonce)
            .and_then(|n| n.try_into().ok())
            .ok_or(JoinError::Malformed(
                "nonce must be 32 bytes in base64url without padding",
            ))?;
        let evidence = attester
            .evidence(&nonce, service.identity_public(), now)
            .map_err(|e| JoinError::Unavailable(e.to_string()))?;
        let challenge: [u8; NONCE_LEN] =
            random_array().map_err(|e| JoinError::Unavailable(e.to_string()))?;
        {
            let mut challenges = self.lock();
            challenges.retain(|_, expires| *expires >= now);
            if challenges.len() >= MAX_OUTSTANDING {
                return Err(JoinError::Busy);
            }
            challenges.insert(challenge, now + CHALLENGE_TTL_SECS);
        }
        Ok(ChallengeAnswer {
            evidence,
            challenge: b64_encode(&challenge),
        })
    }

    /// `POST /cluster/v1/join`: spends the challenge, verifies the joiner's evidence under
    /// the cluster policy, and grants the secrets sealed to the key that evidence binds.
    pub fn admit(
        &self,
        service: &Service,
        request: &JoinRequest,
        now: i64,
    ) -> Result<SignedResponse, JoinError> {
        let challenge: [u8; NONCE_LEN] = b64_decode(&request.challenge)
            .and_then(|n| n.try_into().ok())
            .ok_or(JoinError::Malformed(
                "challenge must be 32 bytes in base64url without padding",
            ))?;
        // Spent before anything else: a refused attempt cannot be retried with it either.
        match self.lock().remove(&challenge) {
            Some(expires) if expires >= now => {}
            _ => return Err(JoinError::Challenge),
        }
        let verified =
            self.policy
                .verify_bound(Binding::ClusterJoin, &request.evidence, &challenge, now)?;
        let recipient = verified.identity;
        let secrets = service.export_secrets().to_bytes();
        let header = ProtectedHeader::new(&recipient.kid(), now)
            .map_err(|e| JoinError::Unavailable(e.to_string()))?;
        let sealed = seal(&recipient, &header, &secrets)
            .map_err(|e| JoinError::Unavailable(e.to_string()))?;
        let grant = JoinGrant {
            typ: JOIN_TYP.into(),
            challenge: request.challenge.clone(),
            recipient: recipient.kid(),
            sealed: serde_json::from_slice(&sealed).expect("an envelope is JSON"),
        };
        let identity = service.identity();
        let signed = ResponseSigner::new(identity.public())
            .sign(
                identity,
                &serde_json::to_vec(&grant).expect("a grant serialises"),
            )
            .map_err(|e| JoinError::Unavailable(e.to_string()))?;
        tracing::info!(
            tee = %verified.tee,
            measurement = %verified.measurement,
            "cluster secrets granted to an attested replica"
        );
        Ok(signed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; NONCE_LEN], i64>> {
        // Whole entries are inserted and removed; a panic cannot leave one half-made.
        self.challenges.lock().unwrap_or_else(|p| p.into_inner())
    }
}

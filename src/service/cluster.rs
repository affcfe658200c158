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

use super::custody::Gate;

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
    /// This replica is sealed (custodian mode): it holds no master key to give.
    #[error("this replica is sealed: its custodians have not unsealed it yet")]
    Sealed,
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
            JoinError::Sealed => "sealed",
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
        gate: &Gate,
        attester: &Attester,
        request: &ChallengeRequest,
        now: i64,
    ) -> Result<ChallengeAnswer, JoinError> {
        if gate.export_secrets().is_none() {
            return Err(JoinError::Sealed);
        }
        let nonce: [u8; NONCE_LEN] = b64_decode(&request.nonce)
            .and_then(|n| n.try_into().ok())
            .ok_or(JoinError::Malformed(
                "nonce must be 32 bytes in base64url without padding",
            ))?;
        let evidence = attester
            .evidence(&nonce, gate.identity_public(), now)
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
        gate: &Gate,
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
        let secrets = gate.export_secrets().ok_or(JoinError::Sealed)?.to_bytes();
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
        let identity = gate.keys().identity();
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::attest::join::ClusterSecrets;
    use crate::attest::sim::SimPlatform;
    use crate::crypto::sm2::{DecryptionKey, IdentityKey};

    const NOW: i64 = 1_700_000_000;
    const MEASUREMENT: [u8; 32] = [7; 32];

    /// A sim policy pinning `platform`'s key (written into `dir`) and MEASUREMENT.
    fn sim_policy(dir: &Path, platform: &IdentityKey) -> Policy {
        std::fs::write(dir.join("sim.pem"), platform.public().to_pem()).unwrap();
        let path = dir.join("policy.toml");
        std::fs::write(
            &path,
            format!(
                "allowed_tee = [\"sim\"]\nmeasurements = [\"{}\"]\nmax_age_secs = 60\n\
                 [sim]\nplatform_key = \"sim.pem\"\n",
                hex::encode(MEASUREMENT)
            ),
        )
        .unwrap();
        Policy::load(&path).unwrap()
    }

    /// The sim platform every test replica shares (a fixed key).
    fn platform() -> IdentityKey {
        IdentityKey::from_scalar(
            &crate::crypto::secret::SecretBytes::from_slice(&[0x31; 32]).unwrap(),
        )
        .unwrap()
    }

    fn attester(measurement: [u8; 32]) -> Attester {
        Attester::Sim(Box::new(SimPlatform::new(platform(), measurement, false)))
    }

    /// A join request from a joiner attested by `joiner`, for a fresh challenge of `peer`.
    fn join_request(
        peer: &ClusterPeer,
        service: &Gate,
        peer_attester: &Attester,
        joiner: &Attester,
    ) -> (JoinRequest, DecryptionKey) {
        let answer = peer
            .challenge(
                service,
                peer_attester,
                &ChallengeRequest {
                    nonce: b64_encode(&[5; 32]),
                },
                NOW,
            )
            .unwrap();
        let challenge: [u8; NONCE_LEN] = b64_decode(&answer.challenge).unwrap().try_into().unwrap();
        let ephemeral = DecryptionKey::generate().unwrap();
        let evidence = joiner
            .evidence_for(Binding::ClusterJoin, &challenge, ephemeral.public(), NOW)
            .unwrap();
        (
            JoinRequest {
                challenge: answer.challenge,
                evidence,
            },
            ephemeral,
        )
    }

    #[test]
    fn a_production_policy_refuses_a_simulated_joiner() {
        let service = Gate::open(std::sync::Arc::new(crate::service::tests::service()));
        let production = Policy::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("config/attestation-policy.toml"),
        )
        .unwrap();
        let peer = ClusterPeer::new(production);
        let sim = attester(MEASUREMENT);
        let (request, _) = join_request(&peer, &service, &sim, &sim);
        let error = peer.admit(&service, &request, NOW).unwrap_err();
        assert_eq!(error.check(), "tee_kind", "{error}");
    }

    #[test]
    fn a_grant_carries_the_cluster_secrets_once_per_challenge() {
        let dir = tempfile::tempdir().unwrap();
        let service = Gate::open(std::sync::Arc::new(crate::service::tests::service()));
        let peer = ClusterPeer::new(sim_policy(dir.path(), &platform()));
        let sim = attester(MEASUREMENT);
        let (request, ephemeral) = join_request(&peer, &service, &sim, &sim);
        let grant = peer.admit(&service, &request, NOW).unwrap();
        let payload = crate::protocol::response::verify(service.identity_public(), &grant).unwrap();
        let grant: JoinGrant = serde_json::from_slice(&payload).unwrap();
        assert_eq!(grant.recipient, ephemeral.public().kid());
        let sealed = serde_json::to_vec(&grant.sealed).unwrap();
        let plain = crate::protocol::request::RequestEnvelope::parse(&sealed)
            .unwrap()
            .open(&ephemeral)
            .unwrap();
        let secrets = ClusterSecrets::from_bytes(&plain).unwrap();
        let identity = IdentityKey::from_scalar(&secrets.identity).unwrap();
        assert_eq!(identity.public(), service.identity_public());
        // Spent: the same request again is refused, and so is an unknown challenge.
        let again = peer.admit(&service, &request, NOW).unwrap_err();
        assert_eq!(again.check(), "challenge");
        // An expired challenge is refused.
        let (late, _) = join_request(&peer, &service, &sim, &sim);
        let error = peer
            .admit(&service, &late, NOW + CHALLENGE_TTL_SECS + 1)
            .unwrap_err();
        assert_eq!(error.check(), "challenge");
        // Another build is refused by measurement.
        let other = attester([8; 32]);
        let (request, _) = join_request(&peer, &service, &sim, &other);
        assert_eq!(
            peer.admit(&service, &request, NOW).unwrap_err().check(),
            "measurement"
        );
    }

    #[test]
    fn the_joiner_checks_the_peer_too() {
        // The peer's own evidence is checked by the joiner under the same policy: a peer of
        // another build fails it (app::join refuses it before sending its evidence).
        let dir = tempfile::tempdir().unwrap();
        let service = Gate::open(std::sync::Arc::new(crate::service::tests::service()));
        let policy = sim_policy(dir.path(), &platform());
        let peer = ClusterPeer::new(sim_policy(dir.path(), &platform()));
        let other_build = attester([9; 32]);
        let answer = peer
            .challenge(
                &service,
                &other_build,
                &ChallengeRequest {
                    nonce: b64_encode(&[5; 32]),
                },
                NOW,
            )
            .unwrap();
        let error = policy.verify(&answer.evidence, &[5; 32], NOW).unwrap_err();
        assert_eq!(error.check, crate::attest::Check::Measurement);
    }
}

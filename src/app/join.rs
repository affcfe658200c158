//! The joiner side of the join protocol (`attest::join`): before it serves, a replica with
//! `cluster.peers` obtains the cluster's secrets from a peer, each side verifying the
//! other's evidence under the cluster policy.
//!
//! A peer that cannot be reached is tried again until `cluster.join_timeout_secs`; a peer
//! that refuses (or whose own evidence fails the policy) is logged with the failed check. A
//! bootstrap replica generates a new identity only when no peer answered at all: one that
//! answered and refused means a cluster exists that does not admit this build, and forking a
//! second identity would split the service.

use std::time::{Duration, Instant};

use super::AppError;
use super::config::ClusterConfig;
use crate::attest::join::{
    ChallengeAnswer, ChallengeRequest, ClusterSecrets, JOIN_TYP, JoinGrant, JoinRequest,
};
use crate::attest::{Attester, Binding, NONCE_LEN, Policy};
use crate::crypto::random_array;
use crate::crypto::sm2::{DecryptionKey, IdentityKey, PublicKey};
use crate::obs::unix_now;
use crate::protocol::request::RequestEnvelope;
use crate::protocol::response::{self, SignedResponse};
use crate::protocol::{b64_decode, b64_encode};

/// Largest answer read from a peer.
const MAX_ANSWER_BYTES: u64 = 1 << 20;
/// Pause between rounds over the peers.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Why one attempt to join one peer failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinFailure {
    /// The peer did not answer, or is not serving yet: worth trying again.
    #[error("{0}")]
    Unreachable(String),
    /// The peer answered and refused us, or failed our checks: a cluster is there.
    #[error("{0}")]
    Refused(String),
    /// The peer is sealed (custodian mode, not yet unsealed): a cluster is there, and will
    /// admit us once its custodians have unsealed it. Tried again; never a reason to
    /// bootstrap.
    #[error("{0}")]
    Sealed(String),
}

/// How the replica came by its secrets.
pub enum Joined {
    /// From a peer (its URL).
    Peer(String, ClusterSecrets),
    /// No peer answered and this replica may bootstrap: generate.
    Bootstrap,
}

/// Obtains the cluster's secrets from `config.peers`, or says to bootstrap.
pub fn join(
    config: &ClusterConfig,
    policy: &Policy,
    attester: &Attester,
) -> Result<Joined, AppError> {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    let deadline = Instant::now() + Duration::from_secs(config.join_timeout_secs);
    loop {
        let mut refusals = Vec::new();
        let mut sealed = Vec::new();
        for peer in &config.peers {
            let peer = peer.trim_end_matches('/');
            match join_peer(&agent, peer, policy, attester) {
                Ok(secrets) => {
                    tracing::info!(%peer, "joined the cluster");
                    return Ok(Joined::Peer(peer.to_owned(), secrets));
                }
                Err(JoinFailure::Unreachable(why)) => {
                    tracing::info!(%peer, %why, "peer not reachable");
                }
                Err(JoinFailure::Refused(why)) => {
                    tracing::warn!(%peer, %why, "join refused");
                    refusals.push(format!("{peer}: {why}"));
                }
                Err(JoinFailure::Sealed(why)) => {
                    tracing::warn!(%peer, %why, "peer sealed: waiting for its custodians");
                    sealed.push(format!("{peer}: {why}"));
                }
            }
        }
        if config.bootstrap && refusals.is_empty() && sealed.is_empty() {
            return Ok(Joined::Bootstrap);
        }
        let waiting = !sealed.is_empty() && refusals.is_empty();
        if (config.bootstrap && !waiting) || Instant::now() >= deadline {
            refusals.extend(sealed);
            return Err(AppError::Join(if refusals.is_empty() {
                format!(
                    "no peer answered within {} s (cluster.join_timeout_secs)",
                    config.join_timeout_secs
                )
            } else {
                refusals.join("; ")
            }));
        }
        std::thread::sleep(RETRY_PAUSE);
    }
}

/// One attempt against one peer.
pub fn join_peer(
    agent: &ureq::Agent,
    peer: &str,
    policy: &Policy,
    attester: &Attester,
) -> Result<ClusterSecrets, JoinFailure> {
    // 1. The peer proves what it is, for our nonce, and names the cluster identity.
    let nonce: [u8; NONCE_LEN] = random_array().map_err(fault)?;
    let answer: ChallengeAnswer = post(
        agent,
        &format!("{peer}/cluster/v1/challenge"),
        &ChallengeRequest {
            nonce: b64_encode(&nonce),
        },
    )?;
    let peer_verified = policy
        .verify(&answer.evidence, &nonce, unix_now())
        .map_err(|e| JoinFailure::Refused(format!("the peer's evidence: {e}")))?;
    let identity = peer_verified.identity;

    // 2. We prove what we are, binding the peer's challenge and a key made for this join.
    let ephemeral = DecryptionKey::generate().map_err(fault)?;
    let challenge: [u8; NONCE_LEN] = b64_decode(&answer.challenge)
        .and_then(|c| c.try_into().ok())
        .ok_or_else(|| JoinFailure::Refused("the peer's challenge is not 32 bytes".into()))?;
    let evidence = attester
        .evidence_for(
            Binding::ClusterJoin,
            &challenge,
            ephemeral.public(),
            unix_now(),
        )
        .map_err(|e| JoinFailure::Refused(format!("cannot make our evidence: {e}")))?;
    let signed: SignedResponse = post(
        agent,
        &format!("{peer}/cluster/v1/join"),
        &JoinRequest {
            challenge: answer.challenge.clone(),
            evidence,
        },
    )?;

    // 3. The grant is signed by the attested identity, for this challenge and this key.
    open_grant(&signed, &identity, &answer.challenge, &ephemeral)
}

/// Checks a signed grant and unseals the secrets; they must hold the attested identity.
pub fn open_grant(
    signed: &SignedResponse,
    identity: &PublicKey,
    challenge: &str,
    ephemeral: &DecryptionKey,
) -> Result<ClusterSecrets, JoinFailure> {
    let refused = |why: &str| JoinFailure::Refused(format!("the grant {why}"));
    let payload = response::verify(identity, signed)
        .map_err(|e| refused(&format!("is not signed by the attested identity: {e}")))?;
    let grant: JoinGrant =
        serde_json::from_slice(&payload).map_err(|_| refused("is not a join grant"))?;
    if grant.typ != JOIN_TYP
        || grant.challenge != challenge
        || grant.recipient != ephemeral.public().kid()
    {
        return Err(refused("answers another challenge or key"));
    }
    let sealed = serde_json::to_vec(&grant.sealed).map_err(|_| refused("is malformed"))?;
    let plaintext = RequestEnvelope::parse(&sealed)
        .map_err(|_| refused("holds no envelope"))?
        .open(ephemeral)
        .map_err(|_| refused("does not decrypt"))?;
    let secrets = ClusterSecrets::from_bytes(&plaintext)
        .map_err(|e| refused(&format!("holds no secrets: {e}")))?;
    let holds = IdentityKey::from_scalar(&secrets.identity)
        .map(|key| key.public() == identity)
        .unwrap_or(false);
    if !holds {
        return Err(refused("holds another identity than the one attested"));
    }
    Ok(secrets)
}

/// POSTs JSON and reads a JSON answer: 200 parses, 503 or no answer is unreachable (try
/// later), any other status is a refusal with the peer's `{"error","detail"}`.
fn post<T: serde::de::DeserializeOwned>(
    agent: &ureq::Agent,
    url: &str,
    body: &impl serde::Serialize,
) -> Result<T, JoinFailure> {
    let mut response = agent
        .post(url)
        .send_json(body)
        .map_err(|e| JoinFailure::Unreachable(format!("{url}: {e}")))?;
    let status = response.status().as_u16();
    let bytes = response
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER_BYTES)
        .read_to_vec()
        .map_err(|e| JoinFailure::Unreachable(format!("{url}: {e}")))?;
    let code = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned));
    match status {
        503 if code.as_deref() == Some("sealed") => Err(JoinFailure::Sealed(format!(
            "{url} is sealed (its custodians have not unsealed it)"
        ))),
        200 => serde_json::from_slice(&bytes)
            .map_err(|e| JoinFailure::Refused(format!("{url} answered something else: {e}"))),
        502..=504 => Err(JoinFailure::Unreachable(format!("{url} answered {status}"))),
        _ => Err(JoinFailure::Refused(format!(
            "{url} answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        ))),
    }
}

fn fault(error: crate::crypto::CryptoError) -> JoinFailure {
    JoinFailure::Unreachable(format!("cannot make a key or nonce: {error}"))
}

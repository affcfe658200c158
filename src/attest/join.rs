//! The join protocol between replicas (docs/ATTESTATION.md, "Joining a cluster"): how a
//! replica that can prove it runs the accepted build in an accepted TEE receives the
//! cluster's secrets from a peer that can prove the same.
//!
//! ```text
//! joiner → peer  POST /cluster/v1/challenge  {"nonce": b64(32)}
//! peer → joiner  {"evidence": <peer's evidence binding nonce and the cluster identity key>,
//!                 "challenge": b64(32)}
//! joiner → peer  POST /cluster/v1/join  {"challenge": b64(32),
//!                 "evidence": <joiner's evidence binding challenge and an ephemeral SM2 key>}
//! peer → joiner  signed answer (identity key) of
//!                {"typ": "tee-risk-join/v1", "challenge", "recipient": <ephemeral kid>,
//!                 "sealed": <request envelope of the secrets, sealed to the ephemeral key>}
//! ```
//!
//! The secrets travel in the same SM2 + SM4-GCM envelope as requests (`protocol::request`),
//! as 96 bytes: identity scalar (32) ‖ ratchet state (32) ‖ u64be ratchet epoch ‖ i64be
//! genesis ‖ i64be key lifetime ‖ i64be grace; in custodian mode the DB master key (32)
//! follows, then any previous master key a rekey's unfinished sweep still needs (32 each):
//! a replica of a custodian-mode cluster never has them any other way.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::Evidence;
use crate::crypto::ratchet::RatchetState;
use crate::crypto::secret::SecretBytes;

/// The `typ` of a join answer's payload.
pub const JOIN_TYP: &str = "tee-risk-join/v1";
/// Bytes of the sealed secrets (without the master key).
pub const SECRETS_LEN: usize = 96;
/// Bytes of the sealed secrets with the master key (custodian mode).
pub const SECRETS_WITH_MASTER_LEN: usize = SECRETS_LEN + 32;
/// Previous master keys a grant carries at most.
pub const MAX_PREVIOUS_KEYS: usize = 4;

/// When the ratchet's epochs begin and how long their keys are served: the same on every
/// replica, so that they publish the same keys at the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Unix time at which epoch 0 began (the cluster's bootstrap).
    pub genesis: i64,
    /// Seconds an encryption key is published for (`keys.encryption_key_lifetime_secs`).
    pub lifetime: i64,
    /// Seconds after that it still decrypts (`keys.encryption_key_grace_secs`).
    pub grace: i64,
}

impl Schedule {
    /// The epoch whose key is the newest at `now`.
    pub fn epoch_at(&self, now: i64) -> u64 {
        if now <= self.genesis {
            0
        } else {
            ((now - self.genesis) / self.lifetime) as u64
        }
    }

    /// When epoch `epoch`'s key starts to be published.
    pub fn not_before(&self, epoch: u64) -> i64 {
        self.genesis + epoch as i64 * self.lifetime
    }

    /// When it stops being published (it decrypts for `grace` more).
    pub fn not_after(&self, epoch: u64) -> i64 {
        self.not_before(epoch) + self.lifetime
    }
}

/// Everything that makes a replica one of the cluster. Lives only in TEE memory, crosses
/// between replicas only sealed to an attested key; wiped on drop, no `Debug`.
pub struct ClusterSecrets {
    /// The identity key's private scalar.
    pub identity: SecretBytes<32>,
    /// The ratchet at the newest epoch (never an earlier one: forward secrecy).
    pub ratchet: RatchetState,
    pub schedule: Schedule,
    /// The DB master key, in custodian mode (`service::custody`); with the environment's
    /// key, each replica has its own copy and none travels.
    pub master_key: Option<SecretBytes<32>>,
    /// Previous master keys a rekey's unfinished sweep still needs (custodian mode).
    pub previous_keys: Vec<SecretBytes<32>>,
}

/// Why sealed secrets could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the cluster secrets are not {SECRETS_LEN} bytes and whole master keys (at most \
     {MAX_PREVIOUS_KEYS} previous) with a valid schedule"
)]
pub struct SecretsFormatError;

impl ClusterSecrets {
    /// The byte layout that is sealed to a joiner (wiped when dropped).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(SECRETS_WITH_MASTER_LEN));
        out.extend_from_slice(self.identity.expose());
        out.extend_from_slice(self.ratchet.expose_state());
        out.extend_from_slice(&self.ratchet.epoch().to_be_bytes());
        out.extend_from_slice(&self.schedule.genesis.to_be_bytes());
        out.extend_from_slice(&self.schedule.lifetime.to_be_bytes());
        out.extend_from_slice(&self.schedule.grace.to_be_bytes());
        if let Some(master) = &self.master_key {
            out.extend_from_slice(master.expose());
            for previous in &self.previous_keys {
                out.extend_from_slice(previous.expose());
            }
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecretsFormatError> {
        let keys = bytes.len().saturating_sub(SECRETS_LEN);
        if bytes.len() < SECRETS_LEN || keys % 32 != 0 || keys / 32 > 1 + MAX_PREVIOUS_KEYS {
            return Err(SecretsFormatError);
        }
        let number = |at: usize| <[u8; 8]>::try_from(&bytes[at..at + 8]).expect("length checked");
        let schedule = Schedule {
            genesis: i64::from_be_bytes(number(72)),
            lifetime: i64::from_be_bytes(number(80)),
            grace: i64::from_be_bytes(number(88)),
        };
        if schedule.lifetime <= 0 || !(0..=schedule.lifetime).contains(&schedule.grace) {
            return Err(SecretsFormatError);
        }
        Ok(Self {
            identity: SecretBytes::from_slice(&bytes[..32]).expect("length checked"),
            ratchet: RatchetState::from_parts(
                u64::from_be_bytes(number(64)),
                SecretBytes::from_slice(&bytes[32..64]).expect("length checked"),
            ),
            schedule,
            master_key: bytes
                .get(SECRETS_LEN..SECRETS_WITH_MASTER_LEN)
                .and_then(SecretBytes::from_slice),
            previous_keys: bytes
                .get(SECRETS_WITH_MASTER_LEN..)
                .unwrap_or_default()
                .chunks(32)
                .filter_map(SecretBytes::from_slice)
                .collect(),
        })
    }
}

/// `POST /cluster/v1/challenge`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeRequest {
    /// The joiner's nonce for the peer's evidence (base64url, 32 bytes).
    pub nonce: String,
}

/// The peer's answer: its own evidence (binding the joiner's nonce and the cluster identity
/// key) and a single-use challenge for the joiner's evidence.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeAnswer {
    pub evidence: Evidence,
    /// base64url, 32 bytes; valid once, for a minute.
    pub challenge: String,
}

/// `POST /cluster/v1/join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The challenge the peer issued.
    pub challenge: String,
    /// The joiner's evidence binding the challenge and its ephemeral key
    /// (`attest::Binding::ClusterJoin`; the key is in `identity_key`, with use `enc`).
    pub evidence: Evidence,
}

/// The payload of the signed join answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinGrant {
    /// Always [`JOIN_TYP`]: a join answer cannot pass for any other signed document.
    pub typ: String,
    /// The challenge this answers (base64url).
    pub challenge: String,
    /// The kid of the ephemeral key the secrets are sealed to.
    pub recipient: String,
    /// A request envelope (`protocol::request`) of the secrets, sealed to that key.
    pub sealed: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_and_bad_layouts_are_refused() {
        let secrets = ClusterSecrets {
            identity: SecretBytes::from_slice(&[1; 32]).unwrap(),
            ratchet: RatchetState::from_parts(5, SecretBytes::from_slice(&[2; 32]).unwrap()),
            schedule: Schedule {
                genesis: 1_700_000_000,
                lifetime: 3600,
                grace: 300,
            },
            master_key: None,
            previous_keys: Vec::new(),
        };
        let bytes = secrets.to_bytes();
        assert_eq!(bytes.len(), SECRETS_LEN);
        let back = ClusterSecrets::from_bytes(&bytes).unwrap();
        assert_eq!(back.identity.expose(), &[1; 32]);
        assert_eq!(back.ratchet.expose_state(), &[2; 32]);
        assert_eq!(back.ratchet.epoch(), 5);
        assert_eq!(back.schedule, secrets.schedule);
        assert!(back.master_key.is_none());
        assert!(ClusterSecrets::from_bytes(&bytes[..95]).is_err());
        let with_master = ClusterSecrets {
            master_key: Some(SecretBytes::from_slice(&[3; 32]).unwrap()),
            ..ClusterSecrets::from_bytes(&bytes).unwrap()
        };
        let long = with_master.to_bytes();
        assert_eq!(long.len(), SECRETS_WITH_MASTER_LEN);
        let back = ClusterSecrets::from_bytes(&long).unwrap();
        assert_eq!(back.master_key.unwrap().expose(), &[3; 32]);
        assert!(ClusterSecrets::from_bytes(&long[..127]).is_err());
        let with_previous = ClusterSecrets {
            previous_keys: vec![SecretBytes::from_slice(&[4; 32]).unwrap()],
            ..ClusterSecrets::from_bytes(&long).unwrap()
        };
        let longer = with_previous.to_bytes();
        assert_eq!(longer.len(), SECRETS_WITH_MASTER_LEN + 32);
        let back = ClusterSecrets::from_bytes(&longer).unwrap();
        assert_eq!(back.master_key.unwrap().expose(), &[3; 32]);
        assert_eq!(back.previous_keys.len(), 1);
        assert_eq!(back.previous_keys[0].expose(), &[4; 32]);
        let too_many = [&longer[..], &[5; 32 * MAX_PREVIOUS_KEYS]].concat();
        assert!(ClusterSecrets::from_bytes(&too_many).is_err());
        let mut bad = bytes.to_vec();
        bad[80..88].copy_from_slice(&0i64.to_be_bytes());
        assert!(ClusterSecrets::from_bytes(&bad).is_err(), "zero lifetime");
    }

    #[test]
    fn epochs_follow_the_schedule() {
        let s = Schedule {
            genesis: 1_000,
            lifetime: 60,
            grace: 5,
        };
        assert_eq!(s.epoch_at(0), 0);
        assert_eq!(s.epoch_at(1_059), 0);
        assert_eq!(s.epoch_at(1_060), 1);
        assert_eq!((s.not_before(2), s.not_after(2)), (1_120, 1_180));
    }
}

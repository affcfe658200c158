//! Key custody on the wire (docs/PROTOCOL.md §6, docs/OPERATIONS.md "Custodians"): the DB
//! master key made inside the TEE, split k of n, each share sealed to one custodian's SM2
//! key; custodians send their shares back, one by one, to unseal a service that started
//! without the key.
//!
//! ```text
//! GET  /v1/custody          → CustodyStatus (state, the attempt, who has sent)
//! POST /v1/custody/init     Approval      → signed InitReply   (once, empty database)
//! POST /v1/custody/unseal   UnsealRequest → signed UnsealReply (k times per key)
//! POST /v1/custody/rekey    Approval      → signed RekeyReply  (k approvals: a new key)
//! ```
//!
//! Every request is signed by a listed custodian over a domain-separated message that names
//! the service's current *attempt* (32 random bytes a sealed process draws at start and
//! again after a failed attempt): a message made for one replica, or for an earlier
//! attempt, is refused by every other. A share travels SM2-encrypted to the service's
//! current encryption key, which the custodian has checked against the attested identity.
//! Answers are signed by the identity key.

use serde::{Deserialize, Serialize};

use crate::crypto::CryptoError;
use crate::crypto::secret::SecretBytes;
use crate::crypto::sm2::{DecryptionKey, IdentityKey, PublicKey};

use super::{b64_decode, b64_encode};

/// `format` of a share file.
pub const SHARE_FORMAT: &str = "tee-risk-share/1";
/// `typ` of the signed answer to an init.
pub const INIT_TYP: &str = "tee-risk-custody-init/v1";
/// `typ` of the signed answer to an unseal.
pub const UNSEAL_TYP: &str = "tee-risk-custody-unseal/v1";
/// `typ` of the signed answer to a rekey approval.
pub const REKEY_TYP: &str = "tee-risk-custody-rekey/v1";
/// Bytes of an attempt id.
pub const ATTEMPT_LEN: usize = 32;
/// Bytes of a master key id (`store::KeyId`).
pub const KEY_ID_LEN: usize = 8;
/// Bytes of one share's value (the master key's length).
pub const SHARE_LEN: usize = 32;

const SHARE_LABEL: &[u8] = b"tee-risk/share/v1\0";
const INIT_LABEL: &[u8] = b"tee-risk/custody/init/v1\0";
const UNSEAL_LABEL: &[u8] = b"tee-risk/custody/unseal/v1\0";
const REKEY_LABEL: &[u8] = b"tee-risk/custody/rekey/v1\0";
/// Bytes of a share's plaintext: label ‖ key id ‖ index ‖ k ‖ n ‖ value.
pub const SHARE_PLAIN_LEN: usize = SHARE_LABEL.len() + KEY_ID_LEN + 3 + SHARE_LEN;

/// `GET /v1/custody`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustodyStatus {
    /// `sealed` (no master key: data endpoints answer 503) or `unsealed`.
    pub state: String,
    /// The current attempt (base64url, 32 bytes): of the unseal while sealed, of the next
    /// rekey once unsealed.
    pub attempt: String,
    /// Shares needed per key, and approvals needed for a rekey (k).
    pub threshold: u8,
    /// The listed custodians, in the roster's order (n of them).
    pub custodians: Vec<String>,
    /// Custodians whose share (sealed) or rekey approval (unsealed) this attempt holds; a
    /// custodian sending shares of two keys is named once per share.
    pub received: Vec<String>,
    /// Sealed, once a share has arrived: the master key ids the database needs (two while a
    /// rekey's sweep is unfinished), each with the shares held of it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needed: Vec<KeyShares>,
    /// The master key id the database is sealed with, once unsealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Unsealed, during a rekey's sweep: the previous key, kept in memory until the sweep
    /// is verified and the key retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_id: Option<String>,
}

/// Shares held of one master key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyShares {
    pub key_id: String,
    pub received: u8,
}

/// What one custodian keeps: their share, SM2-encrypted to their own public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareFile {
    /// Always [`SHARE_FORMAT`].
    pub format: String,
    /// The custodian it is for (their name in the roster).
    pub custodian: String,
    /// The id of the master key it is a share of (hex, 16 digits).
    pub key_id: String,
    /// The share's number, 1..=n.
    pub index: u8,
    /// Shares needed to rebuild the key (k).
    pub threshold: u8,
    /// Shares made (n).
    pub shares: u8,
    /// base64url of the GM/T 0009 DER SM2 ciphertext of the share's plaintext
    /// ([`SharePlain::to_bytes`]) to the custodian's key.
    pub sealed: String,
}

/// A share in the clear (only in the TEE, and in the custodian's tool between opening it
/// and sealing it to the service). Its metadata is inside the ciphertext too, so that the
/// file's readable copy cannot be edited to pass it for another database.
pub struct SharePlain {
    pub key_id: [u8; KEY_ID_LEN],
    pub index: u8,
    pub threshold: u8,
    pub shares: u8,
    pub value: SecretBytes<SHARE_LEN>,
}

/// Why a custody message could not be read or checked.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CustodyFormatError {
    #[error("not a share: {0}")]
    Share(&'static str),
    #[error("the share does not open with this key (another custodian's, or damaged)")]
    ShareKey,
    #[error("{0} is not base64url")]
    Base64(&'static str),
    #[error("the attempt is not 32 bytes of base64url")]
    Attempt,
    #[error("the custodian's signature is invalid")]
    Signature,
    #[error("signing failed: {0}")]
    Crypto(CryptoError),
}

impl SharePlain {
    /// label ‖ key id ‖ index ‖ k ‖ n ‖ value (wiped when dropped).
    pub fn to_bytes(&self) -> SecretBytes<SHARE_PLAIN_LEN> {
        let mut out = SecretBytes::<SHARE_PLAIN_LEN>::zeroed();
        let bytes = out.expose_mut();
        let mut at = 0;
        for part in [
            SHARE_LABEL,
            &self.key_id[..],
            &[self.index, self.threshold, self.shares],
            self.value.expose(),
        ] {
            bytes[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        out
    }

    pub fn from_bytes(bytes: &SecretBytes<SHARE_PLAIN_LEN>) -> Result<Self, CustodyFormatError> {
        let bytes = bytes.expose();
        let (label, rest) = bytes.split_at(SHARE_LABEL.len());
        if label != SHARE_LABEL {
            return Err(CustodyFormatError::Share("wrong label"));
        }
        let (key_id, rest) = rest.split_at(KEY_ID_LEN);
        let plain = Self {
            key_id: key_id.try_into().expect("length fixed"),
            index: rest[0],
            threshold: rest[1],
            shares: rest[2],
            value: SecretBytes::from_slice(&rest[3..]).expect("length fixed"),
        };
        if plain.index == 0 || plain.index > plain.shares || plain.threshold < 2 {
            return Err(CustodyFormatError::Share("index or threshold out of range"));
        }
        Ok(plain)
    }

    /// Seals the share to a custodian's key, as the file they keep.
    pub fn seal_for(&self, custodian: &str, key: &PublicKey) -> Result<ShareFile, CryptoError> {
        Ok(ShareFile {
            format: SHARE_FORMAT.into(),
            custodian: custodian.into(),
            key_id: hex::encode(self.key_id),
            index: self.index,
            threshold: self.threshold,
            shares: self.shares,
            sealed: b64_encode(&key.encrypt_der(self.to_bytes().expose())?),
        })
    }
}

impl ShareFile {
    /// Opens the file with the custodian's private key; the readable copy must agree with
    /// what was sealed.
    pub fn open(&self, key: &DecryptionKey) -> Result<SharePlain, CustodyFormatError> {
        if self.format != SHARE_FORMAT {
            return Err(CustodyFormatError::Share("unknown format"));
        }
        let sealed = b64_decode(&self.sealed).ok_or(CustodyFormatError::Base64("sealed"))?;
        let bytes = key
            .decrypt_der_exact::<SHARE_PLAIN_LEN>(&sealed)
            .map_err(|_| CustodyFormatError::ShareKey)?;
        let plain = SharePlain::from_bytes(&bytes)?;
        if hex::encode(plain.key_id) != self.key_id
            || (plain.index, plain.threshold, plain.shares)
                != (self.index, self.threshold, self.shares)
        {
            return Err(CustodyFormatError::Share(
                "the readable fields differ from the sealed ones",
            ));
        }
        Ok(plain)
    }
}

/// What a custodian approves: the route an [`Approval`] is sent to, and the label its
/// signature covers (so that an approval of one is never taken for the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `POST /v1/custody/init`: make the master key of an empty, sealed service and split it.
    Init,
    /// `POST /v1/custody/rekey`: replace the master key of an unsealed service (k approvals).
    Rekey,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Init => INIT_LABEL,
            Purpose::Rekey => REKEY_LABEL,
        }
    }
}

/// The body of `POST /v1/custody/init` and `POST /v1/custody/rekey`: a listed custodian's
/// signed approval, for the service's current attempt, of the route's [`Purpose`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    pub custodian: String,
    /// The service's current attempt (base64url).
    pub attempt: String,
    /// base64url DER SM2 signature (default ID) of the custodian over
    /// `label ‖ attempt ‖ custodian`, the label `"tee-risk/custody/init/v1\0"` or
    /// `"tee-risk/custody/rekey/v1\0"`.
    pub signature: String,
}

/// The signed answer to an init: every custodian's share file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitReply {
    /// Always [`INIT_TYP`].
    pub typ: String,
    pub attempt: String,
    /// The new master key's id.
    pub key_id: String,
    pub threshold: u8,
    pub shares: Vec<ShareFile>,
}

/// `POST /v1/custody/unseal`: one custodian's share, for the current attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsealRequest {
    pub custodian: String,
    /// The service's current attempt (base64url).
    pub attempt: String,
    /// The service's encryption key the share is sealed to (from `GET /v1/keys`).
    pub kid: String,
    /// base64url DER SM2 ciphertext of the share's plaintext to that key.
    pub sealed: String,
    /// base64url DER SM2 signature (default ID) of the custodian over
    /// `"tee-risk/custody/unseal/v1\0" ‖ attempt ‖ custodian ‖ 0 ‖ kid ‖ 0 ‖ sealed`.
    pub signature: String,
}

/// The signed answer to an unseal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsealReply {
    /// Always [`UNSEAL_TYP`].
    pub typ: String,
    pub attempt: String,
    /// Whose share was accepted.
    pub custodian: String,
    /// `sealed` (more shares needed) or `unsealed`.
    pub state: String,
    pub received: Vec<String>,
    pub threshold: u8,
    /// The master key id, once unsealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Sealed: the key ids the database needs, with the shares held of each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needed: Vec<KeyShares>,
}

/// The signed answer to a rekey approval: the approvals so far, and at the k-th the new
/// key's share files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RekeyReply {
    /// Always [`REKEY_TYP`].
    pub typ: String,
    pub attempt: String,
    pub custodian: String,
    /// `approving` (more approvals needed) or `rekeyed` (the new key seals everything new;
    /// the sweep moves the rest).
    pub state: String,
    pub approvals: Vec<String>,
    pub threshold: u8,
    /// The new key's id, once rekeyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The key it replaces (kept until the sweep is verified), once rekeyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_id: Option<String>,
    /// The new key's share files, once rekeyed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<ShareFile>,
}

/// Decodes an attempt id.
pub fn attempt_bytes(attempt: &str) -> Result<[u8; ATTEMPT_LEN], CustodyFormatError> {
    b64_decode(attempt)
        .and_then(|a| a.try_into().ok())
        .ok_or(CustodyFormatError::Attempt)
}

fn approval_message(purpose: Purpose, attempt: &[u8; ATTEMPT_LEN], custodian: &str) -> Vec<u8> {
    [purpose.label(), attempt, custodian.as_bytes()].concat()
}

fn unseal_message(
    attempt: &[u8; ATTEMPT_LEN],
    custodian: &str,
    kid: &str,
    sealed: &[u8],
) -> Vec<u8> {
    [
        UNSEAL_LABEL,
        attempt,
        custodian.as_bytes(),
        b"\0",
        kid.as_bytes(),
        b"\0",
        sealed,
    ]
    .concat()
}

impl Approval {
    /// A custodian's signed approval of `purpose` for the attempt.
    pub fn sign(
        purpose: Purpose,
        custodian: &str,
        attempt: &[u8; ATTEMPT_LEN],
        key: &IdentityKey,
    ) -> Result<Self, CustodyFormatError> {
        let signature = key
            .sign_der(&[&approval_message(purpose, attempt, custodian)])
            .map_err(CustodyFormatError::Crypto)?;
        Ok(Self {
            custodian: custodian.into(),
            attempt: b64_encode(attempt),
            signature: b64_encode(&signature),
        })
    }

    /// Checks the signature, as an approval of `purpose`, against the custodian's key;
    /// returns the attempt.
    pub fn verify(
        &self,
        purpose: Purpose,
        key: &PublicKey,
    ) -> Result<[u8; ATTEMPT_LEN], CustodyFormatError> {
        let attempt = attempt_bytes(&self.attempt)?;
        let signature =
            b64_decode(&self.signature).ok_or(CustodyFormatError::Base64("signature"))?;
        let message = approval_message(purpose, &attempt, &self.custodian);
        key.verify(&message, &signature)
            .map_err(|_| CustodyFormatError::Signature)?;
        Ok(attempt)
    }
}

impl UnsealRequest {
    /// Seals `share` to the service's encryption key `to` and signs it for the attempt.
    pub fn seal(
        custodian: &str,
        attempt: &[u8; ATTEMPT_LEN],
        share: &SharePlain,
        to: &PublicKey,
        key: &IdentityKey,
    ) -> Result<Self, CustodyFormatError> {
        let kid = to.kid();
        let sealed = to
            .encrypt_der(share.to_bytes().expose())
            .map_err(CustodyFormatError::Crypto)?;
        let signature = key
            .sign_der(&[&unseal_message(attempt, custodian, &kid, &sealed)])
            .map_err(CustodyFormatError::Crypto)?;
        Ok(Self {
            custodian: custodian.into(),
            attempt: b64_encode(attempt),
            kid,
            sealed: b64_encode(&sealed),
            signature: b64_encode(&signature),
        })
    }

    /// Checks the custodian's signature; returns the attempt and the ciphertext.
    pub fn verify(
        &self,
        key: &PublicKey,
    ) -> Result<([u8; ATTEMPT_LEN], Vec<u8>), CustodyFormatError> {
        let attempt = attempt_bytes(&self.attempt)?;
        let sealed = b64_decode(&self.sealed).ok_or(CustodyFormatError::Base64("sealed"))?;
        let signature =
            b64_decode(&self.signature).ok_or(CustodyFormatError::Base64("signature"))?;
        key.verify(
            &unseal_message(&attempt, &self.custodian, &self.kid, &sealed),
            &signature,
        )
        .map_err(|_| CustodyFormatError::Signature)?;
        Ok((attempt, sealed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> SharePlain {
        SharePlain {
            key_id: [7; KEY_ID_LEN],
            index: 2,
            threshold: 2,
            shares: 3,
            value: SecretBytes::from_slice(&[9; SHARE_LEN]).unwrap(),
        }
    }

    #[test]
    fn a_share_file_opens_only_with_its_custodians_key_and_as_sealed() {
        let alice = DecryptionKey::generate().unwrap();
        let bob = DecryptionKey::generate().unwrap();
        let file = plain().seal_for("alice", alice.public()).unwrap();
        let opened = file.open(&alice).unwrap();
        assert_eq!(opened.value.expose(), &[9; SHARE_LEN]);
        assert_eq!((opened.index, opened.threshold, opened.shares), (2, 2, 3));
        assert_eq!(file.open(&bob).err(), Some(CustodyFormatError::ShareKey));
        let mut edited = file.clone();
        edited.key_id = hex::encode([8u8; KEY_ID_LEN]);
        assert!(matches!(
            edited.open(&alice),
            Err(CustodyFormatError::Share(_))
        ));
        let mut edited = file;
        edited.threshold = 3;
        assert!(matches!(
            edited.open(&alice),
            Err(CustodyFormatError::Share(_))
        ));
    }

    #[test]
    fn signed_messages_bind_attempt_custodian_and_ciphertext() {
        let custodian = IdentityKey::generate().unwrap();
        let service = DecryptionKey::generate().unwrap();
        let attempt = [3u8; ATTEMPT_LEN];
        let request =
            UnsealRequest::seal("alice", &attempt, &plain(), service.public(), &custodian).unwrap();
        let (got, sealed) = request.verify(custodian.public()).unwrap();
        assert_eq!(got, attempt);
        let bytes = service
            .decrypt_der_exact::<SHARE_PLAIN_LEN>(&sealed)
            .unwrap();
        assert_eq!(SharePlain::from_bytes(&bytes).unwrap().index, 2);
        for tamper in [
            |r: &mut UnsealRequest| r.custodian = "bob".into(),
            |r: &mut UnsealRequest| r.attempt = b64_encode(&[4u8; ATTEMPT_LEN]),
            |r: &mut UnsealRequest| r.kid = "other".into(),
        ] {
            let mut changed = request.clone();
            tamper(&mut changed);
            assert_eq!(
                changed.verify(custodian.public()).err(),
                Some(CustodyFormatError::Signature)
            );
        }
        let other = IdentityKey::generate().unwrap();
        assert_eq!(
            request.verify(other.public()).err(),
            Some(CustodyFormatError::Signature)
        );

        for (purpose, other) in [
            (Purpose::Rekey, Purpose::Init),
            (Purpose::Init, Purpose::Rekey),
        ] {
            let approval = Approval::sign(purpose, "alice", &attempt, &custodian).unwrap();
            assert_eq!(
                approval.verify(purpose, custodian.public()).unwrap(),
                attempt
            );
            // An init approval is no rekey approval, nor the reverse (their labels differ).
            assert_eq!(
                approval.verify(other, custodian.public()).err(),
                Some(CustodyFormatError::Signature)
            );
            let mut changed = approval.clone();
            changed.custodian = "bob".into();
            assert_eq!(
                changed.verify(purpose, custodian.public()).err(),
                Some(CustodyFormatError::Signature)
            );
        }
    }
}

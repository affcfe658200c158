//! The service's keys as a client trusts them: the identity key, and the encryption key it
//! certified that is valid now.

use super::ClientError;
use crate::crypto::sm2::PublicKey;
use crate::protocol::keycert::verify_certificate;
use crate::protocol::{KeysDocument, PublicJwk};

/// The service's public keys as the client trusts them: the identity key, and the
/// encryption key it certified that is valid now.
#[derive(Debug, Clone)]
pub struct ServerKeys {
    pub identity: PublicKey,
    pub encryption: PublicKey,
    /// When the encryption key's certificate expires (unix seconds).
    pub encryption_not_after: i64,
}

fn jwk_key(jwk: &PublicJwk) -> Result<PublicKey, ClientError> {
    jwk.key().map_err(|e| ClientError::Keys(e.to_string()))
}

impl ServerKeys {
    /// The identity key of a PEM file the operator distributed (pinning).
    pub fn identity_from_pem(pem: &str) -> Result<PublicKey, ClientError> {
        PublicKey::from_pem(pem)
            .map_err(|_| ClientError::Keys("the identity key PEM is not an SM2 public key".into()))
    }

    /// Keys from a `GET /v1/keys` document. The identity key is the document's own (trust
    /// on first use) unless `pinned` is given, in which case the document must carry that
    /// key. The encryption key is the newest one whose certificate verifies against the
    /// identity key and whose validity holds at `now`.
    pub fn from_document(
        doc: &KeysDocument,
        pinned: Option<&PublicKey>,
        now: i64,
    ) -> Result<Self, ClientError> {
        let sig = doc
            .keys
            .iter()
            .find(|k| k.key_use == "sig" && k.crv == "SM2")
            .ok_or_else(|| ClientError::Keys("no SM2 identity key (use sig)".into()))?;
        let identity = jwk_key(sig)?;
        if let Some(pinned) = pinned.filter(|p| **p != identity) {
            return Err(ClientError::IdentityChanged {
                pinned: pinned.kid(),
                presented: identity.kid(),
            });
        }
        let mut best: Option<(i64, i64, PublicKey)> = None;
        let mut rejected = Vec::new();
        for jwk in doc.keys.iter().filter(|k| k.key_use == "enc") {
            let checked = jwk_key(jwk).and_then(|key| {
                let cert = jwk.cert.as_ref().ok_or_else(|| {
                    ClientError::Keys(format!("encryption key {} has no certificate", jwk.kid))
                })?;
                let statement = verify_certificate(&identity, &key, cert)
                    .map_err(|e| ClientError::Keys(format!("encryption key {}: {e}", jwk.kid)))?;
                Ok((statement, key))
            });
            match checked {
                Ok((statement, key))
                    if statement.not_before <= now && now <= statement.not_after =>
                {
                    if best
                        .as_ref()
                        .is_none_or(|(nbf, _, _)| statement.not_before > *nbf)
                    {
                        best = Some((statement.not_before, statement.not_after, key));
                    }
                }
                Ok(_) => rejected.push(format!("{}: not valid now", jwk.kid)),
                Err(e) => rejected.push(e.to_string()),
            }
        }
        let (_, encryption_not_after, encryption) = best.ok_or_else(|| {
            ClientError::Keys(format!(
                "no certified encryption key valid now ({})",
                rejected.join("; ")
            ))
        })?;
        Ok(Self {
            identity,
            encryption,
            encryption_not_after,
        })
    }
}

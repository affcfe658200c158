//! Encryption-key certificates: the identity key's signed statement that an SM2 point is a
//! service encryption key for a validity window (`docs/PROTOCOL.md`, `GET /v1/keys`). Pure:
//! building, signing and checking a statement; the service decides when to issue one.

use serde::{Deserialize, Serialize};

use super::b64_encode;
use super::response::{ResponseError, ResponseSigner, SignedResponse, verify};
use crate::crypto::CryptoError;
use crate::crypto::sm2::{IdentityKey, PublicKey};

/// `typ` of an encryption-key certificate's statement.
pub const CERT_TYPE: &str = "tee-risk/encryption-key/v1";

/// What the identity key certifies about an encryption key (the certificate's payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyStatement {
    /// Always [`CERT_TYPE`].
    pub typ: String,
    /// The certified key's id.
    pub kid: String,
    /// Always `SM2`.
    pub crv: String,
    /// The certified point's x coordinate (base64url).
    pub x: String,
    /// The certified point's y coordinate (base64url).
    pub y: String,
    /// Unix seconds: clients encrypt to the key only within [not_before, not_after].
    pub not_before: i64,
    /// Unix seconds: end of the validity window.
    pub not_after: i64,
}

/// A published encryption key: its public half and its certificate.
#[derive(Debug, Clone)]
pub struct PublishedKey {
    /// The encryption key clients wrap session keys to.
    pub public: PublicKey,
    /// Start of validity (unix seconds).
    pub not_before: i64,
    /// End of validity (unix seconds).
    pub not_after: i64,
    /// The identity key's signature over the [`KeyStatement`].
    pub certificate: SignedResponse,
}

/// Why a certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// The identity key's signature does not verify.
    #[error("certificate: {0}")]
    Signature(#[from] ResponseError),
    /// The payload is not a statement of this format.
    #[error("certificate: not an encryption-key statement")]
    NotAStatement,
    /// `typ` or `crv` is not ours.
    #[error("certificate: wrong statement type")]
    WrongType,
    /// The statement names another key than the one it came with.
    #[error("certificate: it certifies another key")]
    OtherKey,
}

/// Certifies `public` for [not_before, not_after] with the identity key.
pub fn certify(
    signer: &ResponseSigner,
    identity: &IdentityKey,
    public: &PublicKey,
    not_before: i64,
    not_after: i64,
) -> Result<PublishedKey, CryptoError> {
    let statement = KeyStatement {
        typ: CERT_TYPE.into(),
        kid: public.kid(),
        crv: "SM2".into(),
        x: b64_encode(public.x()),
        y: b64_encode(public.y()),
        not_before,
        not_after,
    };
    let json = serde_json::to_vec(&statement).expect("a statement always serialises");
    Ok(PublishedKey {
        public: public.clone(),
        not_before,
        not_after,
        certificate: signer.sign(identity, &json)?,
    })
}

/// Checks a certificate against the identity key and returns its statement: the signature,
/// the statement's type, and that kid, x and y describe `public`.
pub fn verify_certificate(
    identity: &PublicKey,
    public: &PublicKey,
    certificate: &SignedResponse,
) -> Result<KeyStatement, CertificateError> {
    let payload = verify(identity, certificate)?;
    let statement: KeyStatement =
        serde_json::from_slice(&payload).map_err(|_| CertificateError::NotAStatement)?;
    if statement.typ != CERT_TYPE || statement.crv != "SM2" {
        return Err(CertificateError::WrongType);
    }
    if statement.kid != public.kid()
        || statement.x != b64_encode(public.x())
        || statement.y != b64_encode(public.y())
    {
        return Err(CertificateError::OtherKey);
    }
    Ok(statement)
}

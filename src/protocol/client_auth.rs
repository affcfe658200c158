//! Client request signatures (`docs/PROTOCOL.md`, access control): every request a client
//! posts carries
//! ```text
//! Authorization: TR-SM2 <client id>:<base64url DER signature>
//! signed message = "tee-risk/client-request/v1\0" ‖ client id ‖ "\0" ‖ method ‖ "\0"
//!                  ‖ path ‖ "\0" ‖ SM3(body)
//! ```
//! Why signatures and not API tokens: the host and the network are adversaries. A token
//! would sit in a file the host can read and travel in every request; a client's public key
//! reveals nothing, and a signature binds the exact method, path and body, whose envelope
//! carries a request id the replay cache spends and an `iat` it bounds. So a captured request
//! can be neither replayed nor moved to another endpoint.
//!
//! This module is the wire format only: making a signature ([`ClientCredential`]) and
//! reading the header ([`parse_authorization`]). Who is registered and may do what is the
//! service's business (`service::access`).

use crate::crypto::sm2::{IdentityKey, PublicKey};
use crate::crypto::{CryptoError, sm3};

use super::{b64_decode, b64_encode};

/// The `Authorization` scheme of client signatures.
pub const SCHEME: &str = "TR-SM2";
const LABEL: &[u8] = b"tee-risk/client-request/v1\0";
/// Client ids are 1 to this many bytes of `[A-Za-z0-9._-]`.
pub const MAX_CLIENT_ID_BYTES: usize = 64;

/// Why an `Authorization` header is not a client signature. Each says what to send instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorizationError {
    /// No header, or another scheme.
    #[error("send `Authorization: TR-SM2 <client id>:<signature>`")]
    Missing,
    /// `TR-SM2` without `<id>:<signature>`.
    #[error("malformed TR-SM2 credential")]
    Malformed,
    /// The signature is not base64url.
    #[error("malformed signature")]
    BadSignatureEncoding,
}

/// A parsed `Authorization: TR-SM2 …` header: who claims to sign, and the signature bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientSignature<'a> {
    /// The client id as sent (not yet known to be registered).
    pub client_id: &'a str,
    /// DER-encoded SM2 signature.
    pub signature: Vec<u8>,
}

/// Reads the `Authorization` header value of a request.
pub fn parse_authorization(value: Option<&str>) -> Result<ClientSignature<'_>, AuthorizationError> {
    let credential = value
        .and_then(|value| value.strip_prefix(SCHEME))
        .and_then(|rest| rest.strip_prefix(' '))
        .ok_or(AuthorizationError::Missing)?;
    let (client_id, signature) = credential
        .split_once(':')
        .ok_or(AuthorizationError::Malformed)?;
    let signature = b64_decode(signature).ok_or(AuthorizationError::BadSignatureEncoding)?;
    Ok(ClientSignature {
        client_id,
        signature,
    })
}

/// Whether `id` is a well-formed client id.
pub fn valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CLIENT_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The bytes a client signs for a request.
pub fn signed_message(id: &str, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    [
        LABEL,
        id.as_bytes(),
        b"\0",
        method.as_bytes(),
        b"\0",
        path.as_bytes(),
        b"\0",
        &sm3(body),
    ]
    .concat()
}

/// A client's id and SM2 private key: signs its requests.
pub struct ClientCredential {
    id: String,
    key: IdentityKey,
}

impl ClientCredential {
    /// A credential for the registered client `id` (load the key with `crypto::keyfile`).
    pub fn new(id: &str, key: IdentityKey) -> Self {
        Self {
            id: id.to_owned(),
            key,
        }
    }

    /// The client id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The public key the service registers for this client.
    pub fn public(&self) -> &PublicKey {
        self.key.public()
    }

    /// The `Authorization` header value for a request.
    pub fn authorization(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<String, CryptoError> {
        let signature = self
            .key
            .sign_der(&[&signed_message(&self.id, method, path, body)])?;
        Ok(format!("{SCHEME} {}:{}", self.id, b64_encode(&signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_or_say_what_is_wrong() {
        assert_eq!(parse_authorization(None), Err(AuthorizationError::Missing));
        assert_eq!(
            parse_authorization(Some("Bearer x")),
            Err(AuthorizationError::Missing)
        );
        assert_eq!(
            parse_authorization(Some("TR-SM2 abc")),
            Err(AuthorizationError::Malformed)
        );
        assert_eq!(
            parse_authorization(Some("TR-SM2 abc:+/")),
            Err(AuthorizationError::BadSignatureEncoding)
        );
        assert_eq!(
            parse_authorization(Some("TR-SM2 abc:AAE")),
            Ok(ClientSignature {
                client_id: "abc",
                signature: vec![0, 1]
            })
        );
    }
}

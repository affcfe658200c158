//! The wire, pure: the JWE-shaped request envelope, the JWS-shaped signed response, public
//! keys as JWKs, encryption-key certificates, the decrypted payloads, and client request
//! signatures. No I/O: bytes in, typed values out. Specified in `docs/PROTOCOL.md`; the
//! service and the client library both build on it, so they cannot disagree.

pub mod answer;
pub mod client_auth;
pub mod custody;
pub mod jwk;
pub mod keycert;
pub mod payload;
pub mod reply;
pub mod request;
pub mod response;

pub use jwk::{KeysDocument, PublicJwk};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The file in the service's keys folder holding its identity public key as PEM, for clients
/// that pin it (`tee-risk client … --pin-keys DIR`).
pub const IDENTITY_PEM: &str = "identity.pub.pem";

/// base64url without padding (RFC 4648 §5), as every field of the protocol uses.
pub fn b64_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Strict base64url decoding: no padding, no whitespace, canonical trailing bits.
pub fn b64_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_is_strict() {
        assert_eq!(b64_encode(&[0xfb, 0xff]), "-_8");
        assert_eq!(b64_decode("-_8").unwrap(), vec![0xfb, 0xff]);
        assert!(b64_decode("-_8=").is_none(), "padding is refused");
        assert!(b64_decode("+/8").is_none(), "standard alphabet is refused");
        assert!(b64_decode("-_ 8").is_none(), "whitespace is refused");
        assert!(
            b64_decode("-_9").is_none(),
            "non-canonical trailing bits are refused"
        );
    }
}

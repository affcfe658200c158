//! Wire formats: the JWE-shaped request envelope and the JWS-shaped signed response.
//! Pure code, no I/O: bytes in, typed values out. The format is specified in
//! `docs/PROTOCOL.md`.

pub mod jwk;
pub mod request;
pub mod response;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

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

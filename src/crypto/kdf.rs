//! HMAC-SM3 and HKDF-SM3 (RFC 2104 and RFC 5869 instantiated with SM3).

use hmac::{Hmac, KeyInit, Mac};
use sm3::Sm3;

use super::CryptoError;

type HmacSm3 = Hmac<Sm3>;

/// HMAC-SM3 of `data` under `key`.
pub fn hmac_sm3(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSm3 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// HKDF-SM3: extract with `salt`, expand with `info` into `out` (at most 255 × 32 bytes).
pub fn hkdf_sm3(ikm: &[u8], salt: &[u8], info: &[u8], out: &mut [u8]) -> Result<(), CryptoError> {
    hkdf::Hkdf::<Sm3>::new(Some(salt), ikm)
        .expand(info, out)
        .map_err(|_| CryptoError::TooLong)
}

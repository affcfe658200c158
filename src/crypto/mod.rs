//! The only module that touches raw key bytes: SM2, SM3, SM4-GCM, HMAC/HKDF-SM3.
//!
//! Crate choice (RustCrypto `sm2`/`sm3`/`sm4`/`aes-gcm`/`hkdf`) and the reasons are in
//! `docs/adr/0001-crypto-crates.md`.

pub mod aead;
pub mod kdf;
pub mod keyfile;
pub mod ratchet;
pub mod secret;
#[cfg(feature = "server")]
pub mod shamir;
pub mod sm2;
// `unsafe` in its `ni` part: AES-NI intrinsics for SM4 (see the module comment).
mod sm4_block;
// `unsafe` here (and in sm4_block.rs and risk/gallery/scan.rs only): wiping sm2 key types
// that do not wipe themselves.
#[allow(unsafe_code)]
mod wipe;

use ::sm3::{Digest, Sm3};

/// Errors from the primitives. Deliberately coarse: an attacker learns nothing from them.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    #[error("decryption failed")]
    Decrypt,
    #[error("authentication failed")]
    Authentication,
    #[error("signature is invalid")]
    Signature,
    #[error("key is invalid")]
    InvalidKey,
    #[error("input too long")]
    TooLong,
    #[error("the operating system's random number generator failed")]
    Random,
}

/// SM3 (GB/T 32905) of `data`.
pub fn sm3(data: &[u8]) -> [u8; 32] {
    Sm3::digest(data).into()
}

/// Lowercase hex of SM3(`data`).
pub fn sm3_hex(data: &[u8]) -> String {
    hex::encode(sm3(data))
}

/// `N` random bytes from the operating system (not secret: ids, salts, nonces).
pub fn random_array<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|_| CryptoError::Random)?;
    Ok(bytes)
}

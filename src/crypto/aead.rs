//! SM4-GCM (RFC 8998): SM4 in the GCM mode of NIST SP 800-38D, 96-bit nonces, 128-bit tags.

use aes_gcm::aead::consts::U12;
use aes_gcm::{AeadInOut, AesGcm, KeyInit};

use super::CryptoError;
use super::secret::SecretBytes;
use super::sm4_block::Sm4Block;

pub const KEY_LEN: usize = 16;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// SM4 on AES-NI where the CPU has it, in constant time (`sm4_block`).
type Sm4GcmCipher = AesGcm<Sm4Block, U12>;

/// An SM4-GCM key schedule. Its SM4 round keys and GHASH state are wiped on drop (the
/// `zeroize` features of `sm4` and `aes-gcm`).
pub struct Sm4Gcm(Sm4GcmCipher);

impl Sm4Gcm {
    pub fn new(key: &SecretBytes<KEY_LEN>) -> Self {
        Self(Sm4GcmCipher::new(key.expose().into()))
    }

    /// Encrypts `buffer` in place and returns the tag. The nonce MUST never repeat under
    /// one key: callers use a fresh random nonce per message.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buffer: &mut [u8],
    ) -> Result<[u8; TAG_LEN], CryptoError> {
        let tag = self
            .0
            .encrypt_inout_detached(nonce.into(), aad, buffer.into())
            .map_err(|_| CryptoError::TooLong)?;
        Ok(tag.into())
    }

    /// Checks the tag, then decrypts `buffer` in place. On failure the buffer still holds
    /// ciphertext and the error says nothing about why.
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buffer: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CryptoError> {
        self.0
            .decrypt_inout_detached(nonce.into(), aad, buffer.into(), tag.into())
            .map_err(|_| CryptoError::Authentication)
    }
}

/// Whether SM4 runs on this CPU's AES-NI, in constant time (else on the `sm4` crate's
/// table-based code).
pub fn constant_time_sm4() -> bool {
    super::sm4_block::on_aes_ni()
}

/// A fresh random nonce.
pub fn random_nonce() -> Result<[u8; NONCE_LEN], CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|_| CryptoError::Random)?;
    Ok(nonce)
}

//! Fixed-size secrets that wipe themselves and never print.

use zeroize::{Zeroize, ZeroizeOnDrop};

use super::CryptoError;

/// `N` secret bytes on the heap (so moves copy a pointer, not the key), wiped on drop.
///
/// There is deliberately no `Debug`, `Display`, `Clone` or `Serialize`: the only way to the
/// bytes is [`SecretBytes::expose`], which is easy to grep for.
pub struct SecretBytes<const N: usize>(Box<[u8; N]>);

impl<const N: usize> SecretBytes<N> {
    /// Fresh random bytes from the operating system.
    pub fn random() -> Result<Self, CryptoError> {
        let mut secret = Self(Box::new([0u8; N]));
        getrandom::fill(&mut secret.0[..]).map_err(|_| CryptoError::Random)?;
        Ok(secret)
    }

    /// All zero, to be filled in place ([`SecretBytes::expose_mut`]).
    pub fn zeroed() -> Self {
        Self(Box::new([0u8; N]))
    }

    /// Copies `bytes` when it has exactly `N` bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != N {
            return None;
        }
        let mut secret = Self(Box::new([0u8; N]));
        secret.0.copy_from_slice(bytes);
        Some(secret)
    }

    /// Parses exactly `2 * N` hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut secret = Self(Box::new([0u8; N]));
        hex::decode_to_slice(text.trim(), &mut secret.0[..]).ok()?;
        Some(secret)
    }

    /// The secret bytes. Every call site is a place where key material is used.
    pub fn expose(&self) -> &[u8; N] {
        &self.0
    }

    /// The bytes, to fill in place (a KDF's output); the secret stays in wiping storage.
    pub fn expose_mut(&mut self) -> &mut [u8; N] {
        &mut self.0
    }

    /// Lowercase hex of the secret, wiped on drop; only for writing a dev key file.
    pub fn to_hex_zeroizing(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(hex::encode(&self.0[..]))
    }
}

impl<const N: usize> Drop for SecretBytes<N> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<const N: usize> ZeroizeOnDrop for SecretBytes<N> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_slice_needs_exact_length() {
        assert!(SecretBytes::<16>::from_slice(&[1u8; 16]).is_some());
        assert!(SecretBytes::<16>::from_slice(&[1u8; 15]).is_none());
        assert!(SecretBytes::<16>::from_slice(&[1u8; 17]).is_none());
    }

    #[test]
    fn from_hex_needs_exact_length_and_digits() {
        let key = SecretBytes::<2>::from_hex("0aFF").expect("valid hex");
        assert_eq!(key.expose(), &[0x0a, 0xff]);
        assert!(SecretBytes::<2>::from_hex("0aF").is_none());
        assert!(SecretBytes::<2>::from_hex("0aFF00").is_none());
        assert!(SecretBytes::<2>::from_hex("zzzz").is_none());
    }

    #[test]
    fn random_secrets_differ() {
        let a = SecretBytes::<32>::random().unwrap();
        let b = SecretBytes::<32>::random().unwrap();
        assert_ne!(a.expose(), b.expose());
    }
}

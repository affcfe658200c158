//! SM2 (GB/T 32918) keys: signatures with SM3 and the default distinguishing identifier,
//! public-key encryption with ciphertexts in the GM/T 0009 DER form.

use sm2::dsa::signature::{MultipartSigner, Verifier as _};
use sm2::dsa::{DerSignature, Signature, SigningKey, VerifyingKey};
use sm2::elliptic_curve::Generate;
use sm2::elliptic_curve::common::getrandom::SysRng;
use sm2::elliptic_curve::sec1::ToSec1Point;
use sm2::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey, LineEnding};
use sm2::pke::{Cipher, DecryptingKey, EncryptingKey};
use sm2::{NonZeroScalar, SecretKey};
use zeroize::Zeroizing;

use super::secret::SecretBytes;
use super::wipe::Wiped;
use super::{CryptoError, sm3};

/// The SM2 distinguishing identifier used everywhere (GB/T 35276 default).
pub const DEFAULT_DISTID: &str = "1234567812345678";

/// Length of an uncompressed SEC1 point: 0x04 ‖ x ‖ y.
pub const SEC1_LEN: usize = 65;

/// An SM2 public key, with the encodings the protocol uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    key: sm2::PublicKey,
    sec1: [u8; SEC1_LEN],
}

impl PublicKey {
    fn from_inner(key: sm2::PublicKey) -> Self {
        let point = key.to_sec1_point(false);
        let mut sec1 = [0u8; SEC1_LEN];
        sec1.copy_from_slice(point.as_bytes());
        Self { key, sec1 }
    }

    /// Parses a 65-byte uncompressed SEC1 point; rejects points not on the curve.
    pub fn from_sec1(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != SEC1_LEN || bytes[0] != 0x04 {
            return Err(CryptoError::InvalidKey);
        }
        let key = sm2::PublicKey::from_sec1_bytes(bytes).map_err(|_| CryptoError::InvalidKey)?;
        Ok(Self::from_inner(key))
    }

    /// Builds the key from its 32-byte affine coordinates.
    pub fn from_xy(x: &[u8], y: &[u8]) -> Result<Self, CryptoError> {
        if x.len() != 32 || y.len() != 32 {
            return Err(CryptoError::InvalidKey);
        }
        let mut sec1 = [0u8; SEC1_LEN];
        sec1[0] = 0x04;
        sec1[1..33].copy_from_slice(x);
        sec1[33..].copy_from_slice(y);
        Self::from_sec1(&sec1)
    }

    /// Parses a SubjectPublicKeyInfo PEM (as written by `openssl pkey -pubout`).
    pub fn from_pem(pem: &str) -> Result<Self, CryptoError> {
        let key = sm2::PublicKey::from_public_key_pem(pem).map_err(|_| CryptoError::InvalidKey)?;
        Ok(Self::from_inner(key))
    }

    pub fn to_pem(&self) -> String {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .expect("an SM2 public key always encodes")
    }

    pub fn sec1(&self) -> &[u8; SEC1_LEN] {
        &self.sec1
    }

    pub fn x(&self) -> &[u8] {
        &self.sec1[1..33]
    }

    pub fn y(&self) -> &[u8] {
        &self.sec1[33..]
    }

    /// The key id: lowercase hex of the first 16 bytes of SM3(uncompressed SEC1 point).
    pub fn kid(&self) -> String {
        hex::encode(&sm3(&self.sec1)[..16])
    }

    /// Verifies a DER signature over `message` with the default distinguishing identifier.
    pub fn verify(&self, message: &[u8], der_signature: &[u8]) -> Result<(), CryptoError> {
        self.verifier()?.verify(message, der_signature)
    }

    /// A verifier that computes this key's Z value (SM3 of the default id and the key) once,
    /// for keys that verify many signatures.
    pub fn verifier(&self) -> Result<Verifier, CryptoError> {
        Ok(Verifier(
            VerifyingKey::new(DEFAULT_DISTID, self.key).map_err(|_| CryptoError::InvalidKey)?,
        ))
    }

    /// Encrypts `message` to this key; the result is the GM/T 0009 DER `SM2Cipher`
    /// (x, y, C3 = SM3 hash, C2 = ciphertext).
    pub fn encrypt_der(&self, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        EncryptingKey::new(self.key)
            .encrypt_der(&mut SysRng, message)
            .map_err(|_| CryptoError::Random)
    }
}

// Private-key sources shared by both key roles. `SecretKey` wipes itself on drop.
fn new_secret() -> Result<SecretKey, CryptoError> {
    SecretKey::try_generate().map_err(|_| CryptoError::Random)
}

fn secret_from_pem(pem: &str) -> Result<SecretKey, CryptoError> {
    SecretKey::from_pkcs8_pem(pem).map_err(|_| CryptoError::InvalidKey)
}

fn secret_from_scalar(scalar: &SecretBytes<32>) -> Result<SecretKey, CryptoError> {
    SecretKey::from_slice(scalar.expose()).map_err(|_| CryptoError::InvalidKey)
}

/// Verifies SM2 signatures (default ID) for one public key, its Z value computed once.
pub struct Verifier(VerifyingKey);

impl Verifier {
    pub fn verify(&self, message: &[u8], der_signature: &[u8]) -> Result<(), CryptoError> {
        let signature = Signature::from_der(der_signature).map_err(|_| CryptoError::Signature)?;
        self.0
            .verify(message, &signature)
            .map_err(|_| CryptoError::Signature)
    }
}

/// The service's identity key: signs responses (and, later, attestation statements).
pub struct IdentityKey {
    key: Box<Wiped<SigningKey>>,
    public: PublicKey,
}

impl IdentityKey {
    /// A new random key, generated in memory.
    pub fn generate() -> Result<Self, CryptoError> {
        Self::from_secret_key(&new_secret()?)
    }

    /// Loads a PKCS#8 private key PEM (for interoperability tests and pinned deployments).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, CryptoError> {
        Self::from_secret_key(&secret_from_pem(pem)?)
    }

    /// Loads a 32-byte big-endian private scalar.
    pub fn from_scalar(scalar: &SecretBytes<32>) -> Result<Self, CryptoError> {
        Self::from_secret_key(&secret_from_scalar(scalar)?)
    }

    /// Loads a private scalar written as 64 hex digits (the key files this service makes).
    pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
        let scalar = SecretBytes::<32>::from_hex(text).ok_or(CryptoError::InvalidKey)?;
        Self::from_scalar(&scalar)
    }

    fn from_secret_key(secret: &SecretKey) -> Result<Self, CryptoError> {
        let signing =
            SigningKey::new(DEFAULT_DISTID, secret).map_err(|_| CryptoError::InvalidKey)?;
        let public = PublicKey::from_inner(secret.public_key());
        Ok(Self {
            key: Wiped::new(signing),
            public,
        })
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Signs the concatenation of `parts` (SM3 over Z ‖ message, Z cached in the key) and
    /// returns the DER signature.
    pub fn sign_der(&self, parts: &[&[u8]]) -> Result<Vec<u8>, CryptoError> {
        let signature: Signature = self
            .key
            .try_multipart_sign(parts)
            .map_err(|_| CryptoError::Signature)?;
        let der: DerSignature = signature.to_der();
        Ok(der.to_bytes().to_vec())
    }
}

/// The key that unwraps per-request session keys.
pub struct DecryptionKey {
    key: Box<Wiped<DecryptingKey>>,
    public: PublicKey,
}

impl DecryptionKey {
    pub fn generate() -> Result<Self, CryptoError> {
        Self::from_secret_key(&new_secret()?)
    }

    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, CryptoError> {
        Self::from_secret_key(&secret_from_pem(pem)?)
    }

    pub fn from_scalar(scalar: &SecretBytes<32>) -> Result<Self, CryptoError> {
        Self::from_secret_key(&secret_from_scalar(scalar)?)
    }

    fn from_secret_key(secret: &SecretKey) -> Result<Self, CryptoError> {
        let scalar: NonZeroScalar = secret.to_nonzero_scalar();
        let decrypting =
            DecryptingKey::from_nonzero_scalar(scalar).map_err(|_| CryptoError::InvalidKey)?;
        Ok(Self {
            key: Wiped::new(decrypting),
            public: PublicKey::from_inner(secret.public_key()),
        })
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Decrypts a GM/T 0009 DER ciphertext whose plaintext must be exactly `N` bytes.
    ///
    /// Decoding checks that C1 is on the curve; decryption checks C3 = SM3(x2 ‖ M ‖ y2).
    /// The plaintext is written straight into wiping storage; every failure is one opaque
    /// error.
    pub fn decrypt_der_exact<const N: usize>(
        &self,
        ciphertext: &[u8],
    ) -> Result<SecretBytes<N>, CryptoError> {
        use sm2::pkcs8::der::Decode;
        let cipher =
            Cipher::<sm2::Sm2, sm3::Sm3>::from_der(ciphertext).map_err(|_| CryptoError::Decrypt)?;
        if cipher.c2().len() != N {
            return Err(CryptoError::Decrypt);
        }
        let mut plain = Zeroizing::new([0u8; N]);
        self.key
            .decrypt_cipher_with_buf(&cipher, &mut plain[..])
            .map_err(|_| CryptoError::Decrypt)?;
        SecretBytes::from_slice(&plain[..]).ok_or(CryptoError::Decrypt)
    }

    /// Decrypts a GM/T 0009 DER ciphertext of any length (tests and tools).
    pub fn decrypt_der(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        use sm2::pkcs8::der::Decode;
        let cipher =
            Cipher::<sm2::Sm2, sm3::Sm3>::from_der(ciphertext).map_err(|_| CryptoError::Decrypt)?;
        let mut plain = Zeroizing::new(vec![0u8; cipher.c2().len()]);
        self.key
            .decrypt_cipher_with_buf(&cipher, &mut plain[..])
            .map_err(|_| CryptoError::Decrypt)?;
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kid_is_sm3_prefix_of_sec1() {
        let key = IdentityKey::generate().unwrap();
        let public = key.public();
        assert_eq!(public.kid(), hex::encode(&sm3(public.sec1())[..16]));
        assert_eq!(public.kid().len(), 32);
    }

    #[test]
    fn pem_round_trip() {
        let key = DecryptionKey::generate().unwrap();
        let pem = key.public().to_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(&PublicKey::from_pem(&pem).unwrap(), key.public());
    }

    #[test]
    fn from_xy_rejects_points_off_the_curve() {
        let key = IdentityKey::generate().unwrap();
        let public = key.public();
        assert_eq!(&PublicKey::from_xy(public.x(), public.y()).unwrap(), public);
        let mut bad_y = public.y().to_vec();
        bad_y[31] ^= 1;
        assert!(PublicKey::from_xy(public.x(), &bad_y).is_err());
    }
}

//! SM2 signatures (GB/T 32918.2 §6, A1–A7) with the service's identity key, two ways.
//!
//! - [`IdentityKey::sign_der`]: RustCrypto's `SigningKey`, k derived from the key and the
//!   message (RFC 6979), so a signature is a function of them: replicas sharing the
//!   identity publish byte-identical key certificates, and manifests sign reproducibly.
//! - [`IdentityKey::sign_der_random`], for the answer to every request: the standard's
//!   random k, from the operating system's generator as GB/T 32918.2 specifies. What depends
//!   on the key alone is computed once (Z, and (1 + d)⁻¹, which A6 needs for every signature
//!   and `SigningKey` inverts each time); k and the x of [k]G (A3–A4) depend on neither the
//!   key nor the message, so they are made ahead, a batch at a time, the batch's points
//!   sharing one field inversion to become affine (Montgomery's trick) instead of one each.
//!
//! Constant time, per function, where the key or k is involved: [`Batch::fill`] multiplies
//! with the `sm2` crate's basepoint table (`mul_by_generator`: constant-time table lookups
//! and complete formulas) and normalises with `batch_normalize` (field multiplications and
//! one constant-time inversion, the same for every input); [`SigningSecret::sign_with`] is
//! scalar additions and multiplications (fiat-crypto, constant time) whose only branches
//! test r and s, which the signature makes public anyway. Nothing indexes memory by a
//! secret outside the crate's constant-time lookups.

use std::sync::{Mutex, PoisonError};

use sm2::dsa::signature::MultipartSigner;
use sm2::dsa::{DerSignature, Signature, SigningKey};
use sm2::elliptic_curve::BatchNormalize;
use sm2::elliptic_curve::Generate;
use sm2::elliptic_curve::ff::PrimeField;
use sm2::elliptic_curve::group::Group;
use sm2::elliptic_curve::ops::Reduce;
use sm2::elliptic_curve::point::AffineCoordinates;
use sm2::{FieldBytes, NonZeroScalar, ProjectivePoint, Scalar, SecretKey};
use zeroize::Zeroize;

use super::super::CryptoError;
use super::super::secret::SecretBytes;
use super::super::wipe::Wiped;
use super::{DEFAULT_DISTID, PublicKey, new_secret, secret_from_pem, secret_from_scalar, z_of};

/// Nonces made together: one inversion for this many signatures, and at most this many
/// multiplications of G (about 55 µs each) on the signature that runs out and refills.
const BATCH: usize = 8;

/// The service's identity key: signs responses (and attestation statements, manifests).
pub struct IdentityKey {
    /// RFC 6979 signing (`sign_der`).
    deterministic: Box<Wiped<SigningKey>>,
    /// Signing with nonces made ahead (`sign_der_random`).
    secret: Box<SigningSecret>,
    nonces: Nonces,
    /// Z = SM3(ENTL ‖ ID ‖ a ‖ b ‖ xG ‖ yG ‖ xA ‖ yA) with the default ID.
    z: [u8; 32],
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
        let public = PublicKey::from_inner(secret.public_key());
        let deterministic =
            SigningKey::new(DEFAULT_DISTID, secret).map_err(|_| CryptoError::InvalidKey)?;
        Ok(Self {
            deterministic: Wiped::new(deterministic),
            secret: SigningSecret::new(&secret.to_nonzero_scalar())?,
            nonces: Nonces::default(),
            z: z_of(&public),
            public,
        })
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Signs the concatenation of `parts` (SM3 over Z ‖ message) and returns the DER
    /// signature; the same message always gets the same signature (RFC 6979's k).
    pub fn sign_der(&self, parts: &[&[u8]]) -> Result<Vec<u8>, CryptoError> {
        let signature: Signature = self
            .deterministic
            .try_multipart_sign(parts)
            .map_err(|_| CryptoError::Signature)?;
        Ok(der(&signature))
    }

    /// [`IdentityKey::sign_der`] with a random k made ahead (about 0.7× its CPU): for
    /// signatures nobody needs to reproduce, such as each request's answer.
    pub fn sign_der_random(&self, parts: &[&[u8]]) -> Result<Vec<u8>, CryptoError> {
        let e = self.digest(parts);
        // A nonce is refused with probability about 2⁻²⁵⁵; a run of them means a broken
        // generator, which gets an error rather than a loop.
        for _ in 0..4 {
            let nonce = self.nonces.take()?;
            if let Some((r, s)) = self.secret.sign_with(&e, &nonce) {
                let signature = Signature::from_scalars(r.to_repr(), s.to_repr())
                    .expect("r and s are nonzero scalars");
                return Ok(der(&signature));
            }
        }
        Err(CryptoError::Signature)
    }

    /// A1–A2: e = SM3(Z ‖ M) as a scalar.
    fn digest(&self, parts: &[&[u8]]) -> Scalar {
        use ::sm3::Digest;
        let mut hasher = ::sm3::Sm3::new();
        hasher.update(self.z);
        for part in parts {
            hasher.update(part);
        }
        <Scalar as Reduce<FieldBytes>>::reduce(&hasher.finalize())
    }
}

fn der(signature: &Signature) -> Vec<u8> {
    let der: DerSignature = signature.to_der();
    der.to_bytes().to_vec()
}

/// The private scalar d and (1 + d)⁻¹, boxed so that they never move, wiped on drop.
struct SigningSecret {
    d: Scalar,
    d_plus_1_inv: Scalar,
}

impl SigningSecret {
    fn new(d: &NonZeroScalar) -> Result<Box<Self>, CryptoError> {
        let mut secret = Box::new(Self {
            d: Scalar::ZERO,
            d_plus_1_inv: Scalar::ZERO,
        });
        secret.d = **d;
        // GB/T 32918.1 takes d in [1, n − 2]: d = n − 1 has no (1 + d)⁻¹.
        secret.d_plus_1_inv =
            Option::from((secret.d + Scalar::ONE).invert()).ok_or(CryptoError::InvalidKey)?;
        Ok(secret)
    }

    /// A5–A6 with one nonce: r = e + x₁, s = (1 + d)⁻¹ (k − r d). `None` where the standard
    /// says to pick another k (r = 0, r + k = n, s = 0).
    fn sign_with(&self, e: &Scalar, nonce: &Nonce) -> Option<(Scalar, Scalar)> {
        let r = *e + nonce.x;
        if bool::from(r.is_zero() | (r + nonce.k).is_zero()) {
            return None;
        }
        let s = self.d_plus_1_inv * (nonce.k - r * self.d);
        if bool::from(s.is_zero()) {
            return None;
        }
        Some((r, s))
    }
}

impl Drop for SigningSecret {
    fn drop(&mut self) {
        self.d.zeroize();
        self.d_plus_1_inv.zeroize();
    }
}

/// One signature's nonce: k (secret until it is wiped) and x₁ mod n, (x₁, y₁) = [k]G.
struct Nonce {
    k: Scalar,
    x: Scalar,
}

impl Drop for Nonce {
    fn drop(&mut self) {
        self.k.zeroize();
        self.x.zeroize();
    }
}

/// Nonces not used yet, in place in one allocation; each is wiped as it is taken.
struct Batch {
    k: [Scalar; BATCH],
    x: [Scalar; BATCH],
    left: usize,
}

impl Batch {
    /// A batch of fresh random nonces, built in its box (no copy of k left on the stack
    /// but the one being drawn).
    fn fresh() -> Result<Box<Self>, CryptoError> {
        let mut batch = Box::new(Self {
            k: [Scalar::ZERO; BATCH],
            x: [Scalar::ZERO; BATCH],
            left: 0,
        });
        for k in batch.k.iter_mut() {
            *k = *NonZeroScalar::try_generate().map_err(|_| CryptoError::Random)?;
        }
        batch.fill();
        Ok(batch)
    }

    /// A4 for every k: x₁ of [k]G, the points made affine together.
    fn fill(&mut self) {
        let points: [ProjectivePoint; BATCH] =
            core::array::from_fn(|i| ProjectivePoint::mul_by_generator(&self.k[i]));
        let affine = ProjectivePoint::batch_normalize(&points);
        for (x, point) in self.x.iter_mut().zip(affine.iter()) {
            *x = <Scalar as Reduce<FieldBytes>>::reduce(&point.x());
        }
        self.left = BATCH;
    }

    fn take(&mut self) -> Option<Nonce> {
        self.left = self.left.checked_sub(1)?;
        Some(Nonce {
            k: core::mem::take(&mut self.k[self.left]),
            x: core::mem::take(&mut self.x[self.left]),
        })
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.k.zeroize();
        self.x.zeroize();
    }
}

/// The key's supply of nonces: batches not used up yet. A signer takes from the newest; one
/// that finds none makes a batch outside the lock (others keep signing meanwhile) and adds
/// what it leaves, so that signers refilling at the same time waste no nonce. The batches
/// held are bounded by the signers running at once.
///
/// Each batch is boxed so that the `Vec` growing moves pointers, not nonces: a reallocation
/// would leave copies of unused k in the freed buffer.
#[derive(Default)]
#[allow(clippy::vec_box)] // Boxed on purpose (above).
struct Nonces(Mutex<Vec<Box<Batch>>>);

#[allow(clippy::vec_box)] // Boxed on purpose: see `Nonces`.
impl Nonces {
    fn take(&self) -> Result<Nonce, CryptoError> {
        if let Some(nonce) = self.take_made() {
            return Ok(nonce);
        }
        let mut batch = Batch::fresh()?;
        let nonce = batch.take().expect("a fresh batch is full");
        self.lock().push(batch);
        Ok(nonce)
    }

    fn take_made(&self) -> Option<Nonce> {
        let mut batches = self.lock();
        while let Some(batch) = batches.last_mut() {
            if let Some(nonce) = batch.take() {
                return Some(nonce);
            }
            batches.pop();
        }
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Box<Batch>>> {
        // Taking a nonce cannot leave a batch half-changed: a panic elsewhere while the lock
        // was held leaves it usable.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sm2::dsa::VerifyingKey;
    use sm2::dsa::signature::Verifier as _;

    /// GB/T 32918.5 (GM/T 0003.5) Annex A: the signature example on the recommended curve,
    /// default ID, message "message digest", with the nonce k the standard gives.
    const D: &str = "3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8";
    const K: &str = "59276E27D506861A16680F3AD9C02DCCEF3CC1FA3CDBE4CE6D54B80DEAC1BC21";
    const R: &str = "F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3";
    const S: &str = "B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA";

    fn scalar(hex_text: &str) -> Scalar {
        let bytes: [u8; 32] = hex::decode(hex_text).unwrap().try_into().unwrap();
        Option::from(Scalar::from_repr(bytes.into())).unwrap()
    }

    #[test]
    fn signing_with_the_standards_nonce_gives_the_standards_signature() {
        let key = IdentityKey::from_hex(D).unwrap();
        let mut batch = Batch::fresh().unwrap();
        batch.k = [scalar(K); BATCH];
        batch.fill();
        let nonce = batch.take().unwrap();
        let e = key.digest(&[b"message ", b"digest"]);
        let (r, s) = key.secret.sign_with(&e, &nonce).unwrap();
        assert_eq!((r, s), (scalar(R), scalar(S)));
    }

    #[test]
    fn signatures_verify_with_rustcrypto_and_never_reuse_a_nonce() {
        let key = IdentityKey::generate().unwrap();
        let verifier = VerifyingKey::new(super::super::DEFAULT_DISTID, key.public().key).unwrap();
        // Four threads share the key's nonces, across several batches.
        let signatures: Vec<Vec<u8>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| (0..5 * BATCH).map(|_| key.sign_der_random(&[b"same"]).unwrap()))
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap().collect::<Vec<_>>())
                .collect()
        });
        let mut rs = std::collections::HashSet::new();
        for der in &signatures {
            let signature = Signature::from_der(der).unwrap();
            verifier.verify(b"same", &signature).unwrap();
            // Same message, so the same e: a repeated r would mean a repeated k.
            assert!(rs.insert(signature.r().to_repr()), "nonce reused");
        }
        assert_eq!(rs.len(), 4 * 5 * BATCH);
    }

    #[test]
    fn both_ways_sign_the_same_message_verifiably_and_only_one_repeats_itself() {
        let key = IdentityKey::generate().unwrap();
        let verifier = key.public().verifier().unwrap();
        let parts: [&[u8]; 2] = [b"protected", b".payload"];
        let (a, b) = (key.sign_der(&parts).unwrap(), key.sign_der(&parts).unwrap());
        let (c, d) = (
            key.sign_der_random(&parts).unwrap(),
            key.sign_der_random(&parts).unwrap(),
        );
        assert_eq!(a, b);
        assert_ne!(c, d);
        for der in [&a, &c, &d] {
            verifier.verify(b"protected.payload", der).unwrap();
        }
    }

    #[test]
    fn signers_refilling_at_once_keep_every_nonce_they_made() {
        let nonces = Nonces::default();
        // Two signers found the supply empty and each made a batch.
        for _ in 0..2 {
            nonces.lock().push(Batch::fresh().unwrap());
        }
        let mut taken = std::collections::HashSet::new();
        while let Some(nonce) = nonces.take_made() {
            assert!(taken.insert(nonce.k.to_repr()), "a nonce taken twice");
        }
        assert_eq!(taken.len(), 2 * BATCH);
        assert!(nonces.lock().is_empty());
    }

    #[test]
    fn a_taken_nonce_is_wiped_from_its_batch() {
        let mut batch = Batch::fresh().unwrap();
        let nonce = batch.take().unwrap();
        assert!(!bool::from(nonce.k.is_zero()));
        assert_eq!(batch.k[BATCH - 1], Scalar::ZERO);
        assert_eq!(batch.left, BATCH - 1);
        while batch.take().is_some() {}
        assert!(batch.k.iter().all(|k| bool::from(k.is_zero())));
    }

    #[test]
    fn the_last_scalar_has_no_signing_key() {
        let n_minus_1 = hex::encode((-Scalar::ONE).to_repr());
        assert!(IdentityKey::from_hex(&n_minus_1).is_err());
    }
}

//! SM2 (GB/T 32918) keys: signatures with SM3 and the default distinguishing identifier,
//! public-key encryption with ciphertexts in the GM/T 0009 DER form.

mod curve;
mod signing;
mod unwrap;

pub use signing::IdentityKey;

use primeorder::{Radix16Decomposition, Radix16Digits};
use sm2::dsa::Signature;
use sm2::elliptic_curve::BatchNormalize;
use sm2::elliptic_curve::Generate;
use sm2::elliptic_curve::common::getrandom::SysRng;
use sm2::elliptic_curve::group::Group;
use sm2::elliptic_curve::ops::MulByGeneratorVartime;
use sm2::elliptic_curve::ops::Reduce;
use sm2::elliptic_curve::point::AffineCoordinates;
use sm2::elliptic_curve::sec1::ToSec1Point;
use sm2::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey, LineEnding};
use sm2::pke::{Cipher, DecryptingKey, EncryptingKey};
use sm2::{FieldBytes, ProjectivePoint, Scalar, Sm2};
use sm2::{NonZeroScalar, SecretKey};
use zeroize::Zeroizing;

use self::curve::{Affine, Jacobian};
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
        Verifier::new(self, false).verify(message, der_signature)
    }

    /// A verifier for this key with its Z value and a table of its multiples computed once,
    /// for keys that verify many signatures (the registered clients').
    pub fn verifier(&self) -> Result<Verifier, CryptoError> {
        Ok(Verifier::new(self, true))
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

/// Verifies SM2 signatures (default ID) for one public key, with what depends on the key
/// alone computed once: its Z value (SM3 of the default id, the curve and the key) and a
/// table of its multiples. Verification works on public data only (the key, the message,
/// the signature), so variable-time arithmetic leaks nothing secret.
pub struct Verifier {
    z: [u8; 32],
    key: Multiplier,
}

/// How a verifier multiplies its key: through a table (keys that verify many signatures),
/// or directly (a one-off verification, where building the table would cost more).
enum Multiplier {
    Table(KeyTable),
    Direct(ProjectivePoint),
}

/// Multiples of one point for radix-16 scalar multiplication without doublings: level `i`
/// holds 1..8 × 256^i · P, affine (signed digits give −8..8), as sm2's own generator table
/// does for G (`primeorder::BasepointTable`), but in our Jacobian arithmetic (`curve.rs`) so
/// that each digit costs one mixed addition (7M + 4S) and the result needs no inversion.
/// 33 levels of 8 points: about 17 KiB per key. Public data only: variable time.
struct KeyTable(Vec<[Affine; 8]>);

impl KeyTable {
    fn new(point: ProjectivePoint) -> Self {
        let mut multiples = Vec::with_capacity((FIELD_BYTES + 1) * 8);
        let mut base = point;
        for _ in 0..=FIELD_BYTES {
            let mut multiple = base;
            for _ in 0..8 {
                multiples.push(multiple);
                multiple += base;
            }
            for _ in 0..8 {
                base = base.double();
            }
        }
        let affine = ProjectivePoint::batch_normalize(multiples.as_slice());
        let points: Vec<Affine> = affine
            .iter()
            .map(|p| Affine::from_point(p).expect("multiples of a point of prime order are finite"))
            .collect();
        Self(
            points
                .chunks_exact(8)
                .map(|level| level.try_into().expect("8 points a level"))
                .collect(),
        )
    }

    /// The generator's table, built on first use.
    fn generator() -> &'static KeyTable {
        static TABLE: std::sync::OnceLock<KeyTable> = std::sync::OnceLock::new();
        TABLE.get_or_init(|| KeyTable::new(ProjectivePoint::GENERATOR))
    }

    /// `acc` + digit × 256^level × P.
    fn add_digit(&self, acc: Jacobian, level: usize, digit: i8) -> Jacobian {
        match digit {
            0 => acc,
            d => acc.add_affine_vartime(&self.0[level][usize::from(d.unsigned_abs()) - 1], d < 0),
        }
    }

    /// [a]self + [b]other, in variable time (public scalars only): two accumulators, for
    /// the even and the odd radix-16 digits, and four doublings in all.
    fn lincomb_vartime(&self, a: &Scalar, other: &KeyTable, b: &Scalar) -> Jacobian {
        let da = Radix16Decomposition::<Radix16Digits<Sm2>>::new(a);
        let db = Radix16Decomposition::<Radix16Digits<Sm2>>::new(b);
        let mut even = Jacobian::INFINITY;
        let mut odd = Jacobian::INFINITY;
        for level in (0..=FIELD_BYTES).rev() {
            even = self.add_digit(even, level, da[level * 2]);
            even = other.add_digit(even, level, db[level * 2]);
            if level < FIELD_BYTES {
                odd = self.add_digit(odd, level, da[level * 2 + 1]);
                odd = other.add_digit(odd, level, db[level * 2 + 1]);
            }
        }
        for _ in 0..4 {
            odd = odd.double();
        }
        even.add_vartime(&odd)
    }
}

/// Bytes of an SM2 scalar.
const FIELD_BYTES: usize = 32;

/// SM2's curve parameters a, b, xG, yG (GB/T 32918.5), as they enter Z.
const CURVE_FOR_Z: [&str; 4] = [
    "FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC",
    "28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93",
    "32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7",
    "BC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0",
];

/// ENTL ‖ ID ‖ a ‖ b ‖ xG ‖ yG (ENTL the ID's length in bits), decoded once: every Z (one
/// per verification of a key seen once, such as an answer's) starts with it.
fn z_prefix() -> &'static [u8] {
    static PREFIX: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| {
        let mut prefix = Vec::with_capacity(2 + DEFAULT_DISTID.len() + 4 * 32);
        prefix.extend_from_slice(&((DEFAULT_DISTID.len() * 8) as u16).to_be_bytes());
        prefix.extend_from_slice(DEFAULT_DISTID.as_bytes());
        for parameter in CURVE_FOR_Z {
            prefix.extend_from_slice(&hex::decode(parameter).expect("curve constants are hex"));
        }
        prefix
    })
}

/// Z = SM3(ENTL ‖ ID ‖ a ‖ b ‖ xG ‖ yG ‖ xA ‖ yA) for `key` with the default ID.
fn z_of(key: &PublicKey) -> [u8; 32] {
    let mut input = z_prefix().to_vec();
    input.extend_from_slice(key.x());
    input.extend_from_slice(key.y());
    sm3(&input)
}

impl Verifier {
    fn new(key: &PublicKey, with_table: bool) -> Self {
        Self {
            z: z_of(key),
            key: if with_table {
                Multiplier::Table(KeyTable::new(key.key.to_projective()))
            } else {
                Multiplier::Direct(key.key.to_projective())
            },
        }
    }

    /// GB/T 32918.2 §7 (B1–B7) for a DER signature over `message`.
    pub fn verify(&self, message: &[u8], der_signature: &[u8]) -> Result<(), CryptoError> {
        let signature = Signature::from_der(der_signature).map_err(|_| CryptoError::Signature)?;
        // B1, B2: r and s in [1, n-1] (`NonZeroScalar`s, checked when parsed).
        let (r, s) = (*signature.r(), *signature.s());
        // B3, B4: e = SM3(Z ‖ M).
        let e = {
            let mut input = Vec::with_capacity(32 + message.len());
            input.extend_from_slice(&self.z);
            input.extend_from_slice(message);
            <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(sm3(&input)))
        };
        // B5: t = r + s mod n, not zero.
        let t = r + s;
        if bool::from(t.is_zero()) {
            return Err(CryptoError::Signature);
        }
        // B6: (x1, y1) = [s]G + [t]P, not the point at infinity; B7: R = e + x1 mod n must
        // equal r, i.e. x1 ≡ r − e (mod n).
        let valid = match &self.key {
            Multiplier::Table(table) => {
                let point = KeyTable::generator().lincomb_vartime(&s, table, &t);
                let r_minus_e: [u8; 32] = (r - e).to_bytes().into();
                !bool::from(point.is_infinity()) && point.x_mod_n_is_vartime(&r_minus_e)
            }
            Multiplier::Direct(key) => {
                let point = ProjectivePoint::mul_by_generator_vartime(&s) + key.mul_vartime(&t);
                !bool::from(point.is_identity())
                    && e + <Scalar as Reduce<FieldBytes>>::reduce(&point.to_affine().x()) == r
            }
        };
        if valid {
            Ok(())
        } else {
            Err(CryptoError::Signature)
        }
    }
}

/// The key that unwraps per-request session keys.
pub struct DecryptionKey {
    /// d as the unwrap's own multiplication reads it (`unwrap.rs`).
    digits: unwrap::SecretDigits,
    /// The RustCrypto key: the reference the benches and tests compare with.
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
        let digits = unwrap::SecretDigits::new(&scalar).ok_or(CryptoError::InvalidKey)?;
        Ok(Self {
            digits,
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
        exact_with(ciphertext, |cipher, plain| {
            unwrap::decrypt(&self.digits, cipher, plain).is_some()
        })
    }

    /// [`DecryptionKey::decrypt_der_exact`] by RustCrypto's decryption, as the service did
    /// before issue 31: the reference the crypto floor's old path and the tests use.
    pub fn decrypt_der_exact_rustcrypto<const N: usize>(
        &self,
        ciphertext: &[u8],
    ) -> Result<SecretBytes<N>, CryptoError> {
        exact_with(ciphertext, |cipher, plain| {
            self.key.decrypt_cipher_with_buf(cipher, plain).is_ok()
        })
    }

    /// Decrypts a GM/T 0009 DER ciphertext of any length (tests and tools).
    pub fn decrypt_der(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        use sm2::pkcs8::der::Decode;
        let cipher =
            Cipher::<sm2::Sm2, sm3::Sm3>::from_der(ciphertext).map_err(|_| CryptoError::Decrypt)?;
        let mut plain = Zeroizing::new(vec![0u8; cipher.c2().len()]);
        unwrap::decrypt(&self.digits, &cipher, &mut plain[..]).ok_or(CryptoError::Decrypt)?;
        Ok(plain)
    }
}

/// Decodes a GM/T 0009 DER ciphertext whose C2 must be exactly `N` bytes and decrypts it
/// with `decrypt` straight into wiping storage.
fn exact_with<const N: usize>(
    ciphertext: &[u8],
    decrypt: impl FnOnce(&Cipher<'_, sm2::Sm2, sm3::Sm3>, &mut [u8]) -> bool,
) -> Result<SecretBytes<N>, CryptoError> {
    use sm2::pkcs8::der::Decode;
    let cipher =
        Cipher::<sm2::Sm2, sm3::Sm3>::from_der(ciphertext).map_err(|_| CryptoError::Decrypt)?;
    if cipher.c2().len() != N {
        return Err(CryptoError::Decrypt);
    }
    let mut plain = Zeroizing::new([0u8; N]);
    if !decrypt(&cipher, &mut plain[..]) {
        return Err(CryptoError::Decrypt);
    }
    SecretBytes::from_slice(&plain[..]).ok_or(CryptoError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sm2::dsa::VerifyingKey;
    use sm2::dsa::signature::Verifier as _;

    /// The RustCrypto verifier, as the reference for ours (tables, own Z).
    fn reference(key: &PublicKey, message: &[u8], der: &[u8]) -> bool {
        let Ok(signature) = Signature::from_der(der) else {
            return false;
        };
        VerifyingKey::new(DEFAULT_DISTID, key.key)
            .unwrap()
            .verify(message, &signature)
            .is_ok()
    }

    #[test]
    fn the_table_verifier_agrees_with_rustcrypto_on_good_and_bad_signatures() {
        let other = IdentityKey::generate().unwrap();
        for i in 0..64u32 {
            let key = IdentityKey::generate().unwrap();
            let verifier = key.public().verifier().unwrap();
            let message = format!("message {i}").repeat(i as usize % 7 + 1);
            let good = key.sign_der(&[message.as_bytes()]).unwrap();
            let mut flipped = good.clone();
            let at = 8 + (i as usize % (flipped.len() - 8));
            flipped[at] ^= 1 << (i % 8);
            let foreign = other.sign_der(&[message.as_bytes()]).unwrap();
            let cases: [(&[u8], &[u8]); 4] = [
                (message.as_bytes(), &good),
                (b"another message", &good),
                (message.as_bytes(), &flipped),
                (message.as_bytes(), &foreign),
            ];
            for (n, (m, der)) in cases.into_iter().enumerate() {
                assert_eq!(
                    verifier.verify(m, der).is_ok(),
                    reference(key.public(), m, der),
                    "key {i}, case {n}"
                );
            }
            assert!(verifier.verify(message.as_bytes(), &good).is_ok());
            // The one-off path (no table) agrees too.
            assert!(key.public().verify(message.as_bytes(), &good).is_ok());
            assert!(key.public().verify(message.as_bytes(), &flipped).is_err());
        }
    }

    #[test]
    fn the_key_tables_combine_as_the_curve_does() {
        let key = IdentityKey::generate().unwrap();
        let point = key.public().key.to_projective();
        let table = KeyTable::new(point);
        let minus_one = -Scalar::ONE;
        let mut scalars = vec![Scalar::ZERO, Scalar::ONE, Scalar::from(256u64), minus_one];
        for _ in 0..32 {
            scalars.push(*NonZeroScalar::generate());
        }
        let generator = KeyTable::generator();
        for (i, a) in scalars.iter().enumerate() {
            for b in [scalars[(i + 1) % scalars.len()], Scalar::ZERO, *a, -*a] {
                let ours = generator.lincomb_vartime(a, &table, &b);
                let theirs = ProjectivePoint::GENERATOR * a + point * b;
                if bool::from(theirs.is_identity()) {
                    assert!(bool::from(ours.is_infinity()), "{a:?}, {b:?}");
                    continue;
                }
                let mut xy = [0u8; 64];
                ours.write_affine(&mut xy);
                let expected = theirs.to_affine().to_sec1_point(false);
                assert_eq!(xy[..], expected.as_bytes()[1..], "{a:?}, {b:?}");
            }
        }
        // G + G: the doubling case; G − G: infinity.
        let same = KeyTable::new(ProjectivePoint::GENERATOR);
        let one = Scalar::ONE;
        assert!(!bool::from(
            generator.lincomb_vartime(&one, &same, &one).is_infinity()
        ));
        assert!(bool::from(
            generator
                .lincomb_vartime(&one, &same, &minus_one)
                .is_infinity()
        ));
    }

    #[test]
    fn the_unwrap_agrees_with_rustcrypto_on_good_and_tampered_ciphertexts() {
        let key = DecryptionKey::generate().unwrap();
        // One KDF block, its edges, several blocks (SM2 encrypts no empty message).
        for len in [1usize, 16, 31, 32, 33, 64, 100] {
            let message: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let ciphertext = key.public().encrypt_der(&message).unwrap();
            assert_eq!(key.decrypt_der(&ciphertext).unwrap().as_slice(), message);
            assert_eq!(key.key.decrypt_der(&ciphertext).unwrap(), message);
            for at in [8, ciphertext.len() / 2, ciphertext.len() - 1] {
                let mut tampered = ciphertext.clone();
                tampered[at] ^= 0x10;
                assert_eq!(
                    key.decrypt_der(&tampered).is_ok(),
                    key.key.decrypt_der(&tampered).is_ok(),
                    "length {len}, byte {at}"
                );
            }
        }
        let wrapped = key.public().encrypt_der(&[9u8; 16]).unwrap();
        assert_eq!(
            key.decrypt_der_exact::<16>(&wrapped).unwrap().expose(),
            key.decrypt_der_exact_rustcrypto::<16>(&wrapped)
                .unwrap()
                .expose()
        );
    }

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

//! The session-key unwrap's scalar multiplication, [d]C1 for the service's fixed private key d.
//!
//! Why not the crate's: RustCrypto's `ProjectivePoint * Scalar` uses complete projective
//! formulas (Renes–Costello–Batina: 13 multiplications and 21 additions a doubling) and a
//! field inversion by divsteps; the unwrap was half the request's crypto floor (issue 31).
//! Here the same fiat-crypto field (the crate the `sm2` crate itself uses, formally verified)
//! carries Jacobian coordinates with the a = −3 doubling (3M + 5S), and the inversion is a
//! fixed addition chain.
//!
//! Constant time, function by function (the field and point functions are in `curve.rs`):
//! - field operations are fiat-crypto's (no secret-dependent branch or index);
//!   [`Fe::invert`] is a fixed chain of squarings and multiplications (the exponent p − 2 is
//!   public);
//! - [`SecretDigits`] recodes d into signed radix-16 digits with arithmetic only, once at
//!   key load, and keeps them in wiping storage;
//! - [`Jacobian::lookup`] reads all eight table entries and keeps one with `subtle` selects,
//!   then negates by select;
//! - the loop runs the same 64 × 4 doublings and 65 additions for every d; the two cases the
//!   incomplete addition cannot take (accumulator at infinity, digit 0) are handled by
//!   selects, never branches;
//! - the third case, adding a point to itself or to its negation, cannot happen for any d
//!   below n − 16 and any C1 (C1 has prime order n): with signed digits every prefix of d
//!   is 0 or of absolute value ≥ 1 and below n / 16 + 1, so 16 × prefix ≡ ±digit (mod n)
//!   only at the last step and only when d = n + 2 × digit, i.e. d ∈ {n − 16, …, n − 2}.
//!   [`SecretDigits::new`] refuses those keys (probability 2⁻²⁵² for a random key).
//!
//! Checked against the crate's multiplication on random and edge scalars and points
//! (tests below) and by every decryption test (GB/T 32918.4 example, OpenSSL and gmssl
//! ciphertexts in `tests/openssl_interop.rs`).

use sm2::elliptic_curve::sec1::ToSec1Point;
use sm2::elliptic_curve::subtle::ConstantTimeEq;
use sm2::pke::Cipher;
use sm2::{Scalar, Sm2};
use sm3::{Digest, Sm3};
use zeroize::{Zeroize, Zeroizing};

use super::curve::{Fe, Jacobian};

/// Number of signed radix-16 digits of a scalar below 2²⁵⁶ (the last is 0 or 1).
const DIGITS: usize = 65;

/// The private key d as signed radix-16 digits in −8..8 (and a top digit 0 or 1), made once
/// at key load and wiped on drop.
pub(super) struct SecretDigits(Zeroizing<[i8; DIGITS]>);

impl SecretDigits {
    /// Recodes `d`; `None` for the keys the incomplete addition cannot serve (d ≥ n − 16,
    /// module comment), decided without branching on d.
    pub(super) fn new(d: &Scalar) -> Option<Self> {
        let shifted = Zeroizing::new((*d + Scalar::from(16u64)).to_bytes());
        // d + 16 wrapped past n exactly when d ≥ n − 16: then it is below 16.
        let wrapped = shifted[..31].ct_eq(&[0u8; 31]) & (shifted[31] >> 4).ct_eq(&0);
        // The recoding `primeorder::Radix16Decomposition` does (the verifier uses it on public
        // scalars), written here so that d's bytes and digits never sit in a value that is
        // not wiped (that type derives `Debug` and does not zeroize).
        let be = Zeroizing::new(d.to_bytes());
        let mut digits = Zeroizing::new([0i8; DIGITS]);
        for (i, byte) in be.iter().rev().enumerate() {
            digits[2 * i] = (byte & 0x0f) as i8;
            digits[2 * i + 1] = (byte >> 4) as i8;
        }
        // Carry so that each digit lies in −8..8: arithmetic only.
        for i in 0..DIGITS - 1 {
            let carry = (digits[i] + 8) >> 4;
            digits[i] -= carry << 4;
            digits[i + 1] += carry;
        }
        (!bool::from(wrapped)).then_some(Self(digits))
    }

    /// [d]P for the affine point (x, y) given as big-endian coordinates, written as
    /// x2 ‖ y2 into wiping storage; `None` if a coordinate is not below p. The caller has
    /// checked that (x, y) is on the curve (the crate's ciphertext decoding does).
    pub(super) fn mul(&self, x: &[u8; 32], y: &[u8; 32]) -> Option<Zeroizing<[u8; 64]>> {
        let point = Jacobian::from_affine(Fe::from_be_bytes(x)?, Fe::from_be_bytes(y)?);
        let mut table = [point; 8];
        table[1] = point.double();
        for k in 2..8 {
            table[k] = table[k - 1].add(&point);
        }
        let mut acc = Jacobian::INFINITY;
        for (step, &digit) in self.0.iter().rev().enumerate() {
            if step > 0 {
                acc = acc.double().double().double().double();
            }
            let entry = Jacobian::lookup(&table, digit);
            let sum = acc.add(&entry);
            let sum = Jacobian::select(&sum, &entry, acc.is_infinity());
            acc = Jacobian::select(&sum, &acc, digit.ct_eq(&0));
        }
        // d < n and C1 has order n, so acc is not at infinity: Z is invertible.
        let mut out = Zeroizing::new([0u8; 64]);
        acc.write_affine(&mut out);
        Some(out)
    }
}

/// GB/T 32918.4 decryption, steps B3 to B7, into `out` (exactly C2's length): [d]C1 =
/// (x2, y2) by [`SecretDigits::mul`]; t = KDF(x2 ‖ y2, klen), refused if all zero (B4);
/// M′ = C2 ⊕ t; C3 = SM3(x2 ‖ M′ ‖ y2) compared in constant time. On failure `out` is wiped
/// and nothing says which step failed. The ciphertext's decoding checked C1 on the curve (B1).
pub(super) fn decrypt(
    key: &SecretDigits,
    cipher: &Cipher<'_, Sm2, Sm3>,
    out: &mut [u8],
) -> Option<()> {
    let c2 = cipher.c2();
    // An empty C2 has an empty, so all-zero, t (B4); encryption makes none either.
    if out.len() != c2.len() || c2.is_empty() {
        return None;
    }
    let c1 = cipher.c1().to_sec1_point(false);
    let c1 = c1.as_bytes();
    let x2y2 = key.mul(c1[1..33].try_into().ok()?, c1[33..65].try_into().ok()?)?;
    let mut t_bits = 0u8;
    for (counter, (from, to)) in c2.chunks(32).zip(out.chunks_mut(32)).enumerate() {
        let counter = u32::try_from(counter + 1).ok()?;
        let mut t = Sm3::new()
            .chain_update(&x2y2[..])
            .chain_update(counter.to_be_bytes())
            .finalize();
        for ((o, c), k) in to.iter_mut().zip(from).zip(t.iter()) {
            t_bits |= k;
            *o = c ^ k;
        }
        t.zeroize();
    }
    let u = Sm3::new()
        .chain_update(&x2y2[..32])
        .chain_update(&*out)
        .chain_update(&x2y2[32..])
        .finalize();
    if bool::from(u.as_slice().ct_eq(cipher.c3().as_slice()) & !t_bits.ct_eq(&0)) {
        Some(())
    } else {
        out.zeroize();
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sm2::elliptic_curve::Generate;
    use sm2::elliptic_curve::group::Group;
    use sm2::elliptic_curve::ops::Reduce;
    use sm2::elliptic_curve::sec1::ToSec1Point;
    use sm2::{NonZeroScalar, ProjectivePoint, U256};

    /// The crate's [k]P as x ‖ y.
    fn reference(k: &Scalar, p: &ProjectivePoint) -> [u8; 64] {
        let point = (*p * k).to_affine().to_sec1_point(false);
        point.as_bytes()[1..].try_into().unwrap()
    }

    fn ours(k: &Scalar, p: &ProjectivePoint) -> Option<[u8; 64]> {
        let point = p.to_affine().to_sec1_point(false);
        let bytes = point.as_bytes();
        let digits = SecretDigits::new(k)?;
        let out = digits.mul(
            bytes[1..33].try_into().unwrap(),
            bytes[33..].try_into().unwrap(),
        )?;
        Some(*out)
    }

    fn scalar_hex(hex: &str) -> Scalar {
        Scalar::reduce(&U256::from_be_hex(hex))
    }

    #[test]
    fn multiplies_as_the_crate_does_on_random_and_edge_scalars() {
        let minus = |k: u64| -Scalar::from(k);
        let mut scalars = vec![
            Scalar::ONE,
            Scalar::from(2u64),
            Scalar::from(8u64),
            Scalar::from(9u64),
            Scalar::from(0x88u64),
            Scalar::from(0xf8u64),
            minus(17),
            minus(18),
            scalar_hex("8888888888888888888888888888888888888888888888888888888888888888"),
            scalar_hex("7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
            scalar_hex("0000000000000000000000000000000100000000000000000000000000000000"),
        ];
        for _ in 0..48 {
            scalars.push(*NonZeroScalar::generate());
        }
        for (i, k) in scalars.iter().enumerate() {
            let p = ProjectivePoint::generator() * *NonZeroScalar::generate();
            assert_eq!(ours(k, &p), Some(reference(k, &p)), "scalar {i}");
        }
    }

    #[test]
    fn refuses_exactly_the_keys_the_incomplete_addition_cannot_serve() {
        for k in 1..=16u64 {
            assert!(SecretDigits::new(&-Scalar::from(k)).is_none(), "n - {k}");
        }
        assert!(SecretDigits::new(&-Scalar::from(17u64)).is_some());
        assert!(SecretDigits::new(&Scalar::from(16u64)).is_some());
    }
}

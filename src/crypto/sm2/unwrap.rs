//! The session-key unwrap's scalar multiplication, [d]C1 for the service's fixed private key d.
//!
//! Why not the crate's: RustCrypto's `ProjectivePoint * Scalar` uses complete projective
//! formulas (Renes–Costello–Batina: 13 multiplications and 21 additions a doubling) and a
//! field inversion by divsteps; the unwrap was half the request's crypto floor (issue 31).
//! Here the same fiat-crypto field (the crate the `sm2` crate itself uses, formally verified)
//! carries Jacobian coordinates with the a = −3 doubling (3M + 5S), and the inversion is a
//! fixed addition chain.
//!
//! Constant time, function by function:
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

use fiat_crypto::sm2_64::{
    fiat_sm2_add, fiat_sm2_from_bytes, fiat_sm2_from_montgomery,
    fiat_sm2_montgomery_domain_field_element as Mont, fiat_sm2_mul,
    fiat_sm2_non_montgomery_domain_field_element as Plain, fiat_sm2_nonzero, fiat_sm2_opp,
    fiat_sm2_selectznz, fiat_sm2_set_one, fiat_sm2_square, fiat_sm2_sub, fiat_sm2_to_bytes,
    fiat_sm2_to_montgomery,
};
use sm2::elliptic_curve::sec1::ToSec1Point;
use sm2::elliptic_curve::subtle::{Choice, ConstantTimeEq};
use sm2::pke::Cipher;
use sm2::{Scalar, Sm2};
use sm3::{Digest, Sm3};
use zeroize::{Zeroize, Zeroizing};

/// The field modulus p, big-endian.
const P_BYTES: [u8; 32] = [
    0xff, 0xff, 0xff, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff,
];

/// An element of SM2's base field in fiat-crypto's Montgomery form.
#[derive(Clone, Copy)]
struct Fe(Mont);

impl Fe {
    fn one() -> Self {
        let mut out = Mont([0; 4]);
        fiat_sm2_set_one(&mut out);
        Self(out)
    }

    /// Parses a big-endian coordinate; `None` unless it is below p (public data).
    fn from_be_bytes(bytes: &[u8; 32]) -> Option<Self> {
        if bytes >= &P_BYTES {
            return None;
        }
        let mut le = *bytes;
        le.reverse();
        let mut limbs = [0u64; 4];
        fiat_sm2_from_bytes(&mut limbs, &le);
        let mut out = Mont([0; 4]);
        fiat_sm2_to_montgomery(&mut out, &Plain(limbs));
        Some(Self(out))
    }

    fn write_be_bytes(&self, out: &mut [u8]) {
        let mut plain = Plain([0; 4]);
        fiat_sm2_from_montgomery(&mut plain, &self.0);
        let mut le = Zeroizing::new([0u8; 32]);
        fiat_sm2_to_bytes(&mut le, &plain.0);
        for (o, b) in out.iter_mut().zip(le.iter().rev()) {
            *o = *b;
        }
    }

    fn mul(&self, other: &Self) -> Self {
        let mut out = Mont([0; 4]);
        fiat_sm2_mul(&mut out, &self.0, &other.0);
        Self(out)
    }

    fn square(&self) -> Self {
        let mut out = Mont([0; 4]);
        fiat_sm2_square(&mut out, &self.0);
        Self(out)
    }

    fn squares(&self, times: u32) -> Self {
        let mut out = *self;
        for _ in 0..times {
            out = out.square();
        }
        out
    }

    fn add(&self, other: &Self) -> Self {
        let mut out = Mont([0; 4]);
        fiat_sm2_add(&mut out, &self.0, &other.0);
        Self(out)
    }

    fn sub(&self, other: &Self) -> Self {
        let mut out = Mont([0; 4]);
        fiat_sm2_sub(&mut out, &self.0, &other.0);
        Self(out)
    }

    fn double(&self) -> Self {
        self.add(self)
    }

    fn neg(&self) -> Self {
        let mut out = Mont([0; 4]);
        fiat_sm2_opp(&mut out, &self.0);
        Self(out)
    }

    fn is_zero(&self) -> Choice {
        let mut nonzero = 0u64;
        fiat_sm2_nonzero(&mut nonzero, &self.0.0);
        nonzero.ct_eq(&0)
    }

    /// `b` where `choice` is set, else `a`.
    fn select(a: &Self, b: &Self, choice: Choice) -> Self {
        let mut out = [0u64; 4];
        fiat_sm2_selectznz(&mut out, choice.unwrap_u8(), &a.0.0, &b.0.0);
        Self(Mont(out))
    }

    /// a^(p − 2) by a fixed addition chain: p − 2 is, from the top, 31 ones, a zero, 128
    /// ones, 32 zeros, 32 ones, 30 ones, a zero and a one. 256 squarings, 15 multiplications.
    fn invert(&self) -> Self {
        let x1 = *self;
        let x2 = x1.square().mul(&x1);
        let x3 = x2.square().mul(&x1);
        let x6 = x3.squares(3).mul(&x3);
        let x12 = x6.squares(6).mul(&x6);
        let x15 = x12.squares(3).mul(&x3);
        let x30 = x15.squares(15).mul(&x15);
        let x31 = x30.square().mul(&x1);
        let x32 = x31.square().mul(&x1);
        let mut t = x31.square();
        for _ in 0..4 {
            t = t.squares(32).mul(&x32);
        }
        t = t.squares(32);
        t = t.squares(32).mul(&x32);
        t = t.squares(30).mul(&x30);
        t.squares(2).mul(&x1)
    }
}

/// A point in Jacobian coordinates: (X / Z², Y / Z³); Z = 0 is the point at infinity.
#[derive(Clone, Copy)]
struct Jacobian {
    x: Fe,
    y: Fe,
    z: Fe,
}

impl Jacobian {
    const INFINITY: Self = Self {
        x: Fe(Mont([0; 4])),
        y: Fe(Mont([0; 4])),
        z: Fe(Mont([0; 4])),
    };

    fn from_affine(x: Fe, y: Fe) -> Self {
        Self { x, y, z: Fe::one() }
    }

    fn select(a: &Self, b: &Self, choice: Choice) -> Self {
        Self {
            x: Fe::select(&a.x, &b.x, choice),
            y: Fe::select(&a.y, &b.y, choice),
            z: Fe::select(&a.z, &b.z, choice),
        }
    }

    /// 2P for a = −3 (EFD dbl-2001-b, 3M + 5S); infinity stays infinity (Z3 = 0).
    fn double(&self) -> Self {
        let delta = self.z.square();
        let gamma = self.y.square();
        let beta = self.x.mul(&gamma);
        let t = self.x.sub(&delta).mul(&self.x.add(&delta));
        let alpha = t.double().add(&t);
        let beta4 = beta.double().double();
        let x3 = alpha.square().sub(&beta4.double());
        let z3 = self.y.add(&self.z).square().sub(&gamma).sub(&delta);
        let gamma2x8 = gamma.square().double().double().double();
        let y3 = alpha.mul(&beta4.sub(&x3)).sub(&gamma2x8);
        Self {
            x: x3,
            y: y3,
            z: z3,
        }
    }

    /// P + Q (EFD add-2007-bl, 11M + 5S) for P ≠ ±Q, neither at infinity: the callers
    /// select around the cases it cannot take (module comment).
    fn add(&self, other: &Self) -> Self {
        let z1z1 = self.z.square();
        let z2z2 = other.z.square();
        let u1 = self.x.mul(&z2z2);
        let u2 = other.x.mul(&z1z1);
        let s1 = self.y.mul(&other.z).mul(&z2z2);
        let s2 = other.y.mul(&self.z).mul(&z1z1);
        let h = u2.sub(&u1);
        let i = h.double().square();
        let j = h.mul(&i);
        let r = s2.sub(&s1).double();
        let v = u1.mul(&i);
        let x3 = r.square().sub(&j).sub(&v.double());
        let y3 = r.mul(&v.sub(&x3)).sub(&s1.mul(&j).double());
        let z3 = self.z.add(&other.z).square().sub(&z1z1).sub(&z2z2).mul(&h);
        Self {
            x: x3,
            y: y3,
            z: z3,
        }
    }

    /// `table[|digit| − 1]`, negated when `digit` < 0, read without a secret index; `digit`
    /// is in −8..=8 and nonzero (zero is selected around by the caller).
    fn lookup(table: &[Self; 8], digit: i8) -> Self {
        // |digit| and its sign by masks, not by a branch.
        let mask = digit >> 7;
        let negative = (mask as u8) & 1;
        let magnitude = (digit.wrapping_add(mask) ^ mask) as u8;
        let mut out = table[0];
        for (index, entry) in table.iter().enumerate().skip(1) {
            out = Self::select(&out, entry, magnitude.ct_eq(&(index as u8 + 1)));
        }
        let negated = out.y.neg();
        out.y = Fe::select(&out.y, &negated, Choice::from(negative));
        out
    }
}

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
            let sum = Jacobian::select(&sum, &entry, acc.z.is_zero());
            acc = Jacobian::select(&sum, &acc, digit.ct_eq(&0));
        }
        // d < n and C1 has order n, so acc is not at infinity: Z is invertible.
        let z_inv = acc.z.invert();
        let z_inv2 = z_inv.square();
        let mut out = Zeroizing::new([0u8; 64]);
        acc.x.mul(&z_inv2).write_be_bytes(&mut out[..32]);
        acc.y
            .mul(&z_inv2)
            .mul(&z_inv)
            .write_be_bytes(&mut out[32..]);
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
        let t = Sm3::new()
            .chain_update(&x2y2[..])
            .chain_update(counter.to_be_bytes())
            .finalize();
        for ((o, c), k) in to.iter_mut().zip(from).zip(t.iter()) {
            t_bits |= k;
            *o = c ^ k;
        }
        let mut t = t;
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

    #[test]
    fn inversion_and_parsing_round_trip() {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        let a = Fe::from_be_bytes(&bytes).unwrap();
        let mut back = [0u8; 32];
        a.mul(&a.invert()).write_be_bytes(&mut back);
        let mut one = [0u8; 32];
        one[31] = 1;
        assert_eq!(back, one);
        a.write_be_bytes(&mut back);
        assert_eq!(back[..], bytes[..]);
        assert!(Fe::from_be_bytes(&P_BYTES).is_none());
    }
}

//! SM2's curve over fiat-crypto's field, in Jacobian coordinates: what the session-key
//! unwrap (`unwrap.rs`, constant time) and the verifier (`mod.rs`, public data, variable
//! time) share. The field arithmetic is fiat-crypto's `sm2_64`, the formally verified code
//! the `sm2` crate itself runs (its `FieldElement` is not public); only the point formulas
//! (EFD, cited per function) and the inversion chain are written here. Which functions are
//! constant time is said on each.

use fiat_crypto::sm2_64::{
    fiat_sm2_add, fiat_sm2_from_bytes, fiat_sm2_from_montgomery,
    fiat_sm2_montgomery_domain_field_element as Mont, fiat_sm2_mul,
    fiat_sm2_non_montgomery_domain_field_element as Plain, fiat_sm2_nonzero, fiat_sm2_opp,
    fiat_sm2_selectznz, fiat_sm2_set_one, fiat_sm2_square, fiat_sm2_sub, fiat_sm2_to_bytes,
    fiat_sm2_to_montgomery,
};
use sm2::AffinePoint;
use sm2::elliptic_curve::sec1::ToSec1Point;
use sm2::elliptic_curve::subtle::{Choice, ConstantTimeEq};
use zeroize::Zeroizing;

/// The field modulus p, big-endian.
pub(super) const P_BYTES: [u8; 32] = [
    0xff, 0xff, 0xff, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff,
];

/// The group order n, big-endian.
const N_BYTES: [u8; 32] = [
    0xff, 0xff, 0xff, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x72, 0x03, 0xdf, 0x6b, 0x21, 0xc6, 0x05, 0x2b, 0x53, 0xbb, 0xf4, 0x09, 0x39, 0xd5, 0x41, 0x23,
];

/// p − n, big-endian: an x coordinate below it may stand for x or x + n modulo n.
const P_MINUS_N_BYTES: [u8; 32] = [
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x8d, 0xfc, 0x20, 0x93, 0xde, 0x39, 0xfa, 0xd5, 0xac, 0x44, 0x0b, 0xf6, 0xc6, 0x2a, 0xbe, 0xdc,
];

/// An element of SM2's base field in fiat-crypto's Montgomery form.
#[derive(Clone, Copy)]
pub(super) struct Fe(Mont);

impl Fe {
    pub(super) fn one() -> Self {
        let mut out = Mont([0; 4]);
        fiat_sm2_set_one(&mut out);
        Self(out)
    }

    /// Parses a big-endian coordinate; `None` unless it is below p (public data).
    pub(super) fn from_be_bytes(bytes: &[u8; 32]) -> Option<Self> {
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

    pub(super) fn write_be_bytes(&self, out: &mut [u8]) {
        let mut plain = Plain([0; 4]);
        fiat_sm2_from_montgomery(&mut plain, &self.0);
        let mut le = Zeroizing::new([0u8; 32]);
        fiat_sm2_to_bytes(&mut le, &plain.0);
        for (o, b) in out.iter_mut().zip(le.iter().rev()) {
            *o = *b;
        }
    }

    pub(super) fn mul(&self, other: &Self) -> Self {
        let mut out = Mont([0; 4]);
        fiat_sm2_mul(&mut out, &self.0, &other.0);
        Self(out)
    }

    pub(super) fn square(&self) -> Self {
        let mut out = Mont([0; 4]);
        fiat_sm2_square(&mut out, &self.0);
        Self(out)
    }

    pub(super) fn squares(&self, times: u32) -> Self {
        let mut out = *self;
        for _ in 0..times {
            out = out.square();
        }
        out
    }

    pub(super) fn add(&self, other: &Self) -> Self {
        let mut out = Mont([0; 4]);
        fiat_sm2_add(&mut out, &self.0, &other.0);
        Self(out)
    }

    pub(super) fn sub(&self, other: &Self) -> Self {
        let mut out = Mont([0; 4]);
        fiat_sm2_sub(&mut out, &self.0, &other.0);
        Self(out)
    }

    pub(super) fn double(&self) -> Self {
        self.add(self)
    }

    pub(super) fn neg(&self) -> Self {
        let mut out = Mont([0; 4]);
        fiat_sm2_opp(&mut out, &self.0);
        Self(out)
    }

    pub(super) fn is_zero(&self) -> Choice {
        let mut nonzero = 0u64;
        fiat_sm2_nonzero(&mut nonzero, &self.0.0);
        nonzero.ct_eq(&0)
    }

    /// `b` where `choice` is set, else `a`.
    pub(super) fn select(a: &Self, b: &Self, choice: Choice) -> Self {
        let mut out = [0u64; 4];
        fiat_sm2_selectznz(&mut out, choice.unwrap_u8(), &a.0.0, &b.0.0);
        Self(Mont(out))
    }

    /// a^(p − 2) by a fixed addition chain: p − 2 is, from the top, 31 ones, a zero, 128
    /// ones, 32 zeros, 32 ones, 30 ones, a zero and a one. 256 squarings, 15 multiplications.
    pub(super) fn invert(&self) -> Self {
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

/// An affine point: the verifier's tables (public data).
#[derive(Clone, Copy)]
pub(super) struct Affine {
    x: Fe,
    y: Fe,
}

impl Affine {
    /// The crate's affine point in our field; `None` for the identity.
    pub(super) fn from_point(point: &AffinePoint) -> Option<Self> {
        let encoded = point.to_sec1_point(false);
        let bytes = encoded.as_bytes();
        if bytes.len() != 65 {
            return None;
        }
        Some(Self {
            x: Fe::from_be_bytes(bytes[1..33].try_into().ok()?)?,
            y: Fe::from_be_bytes(bytes[33..].try_into().ok()?)?,
        })
    }
}

/// A point in Jacobian coordinates: (X / Z², Y / Z³); Z = 0 is the point at infinity.
#[derive(Clone, Copy)]
pub(super) struct Jacobian {
    x: Fe,
    y: Fe,
    z: Fe,
}

impl Jacobian {
    pub(super) const INFINITY: Self = Self {
        x: Fe(Mont([0; 4])),
        y: Fe(Mont([0; 4])),
        z: Fe(Mont([0; 4])),
    };

    pub(super) fn from_affine(x: Fe, y: Fe) -> Self {
        Self { x, y, z: Fe::one() }
    }

    pub(super) fn select(a: &Self, b: &Self, choice: Choice) -> Self {
        Self {
            x: Fe::select(&a.x, &b.x, choice),
            y: Fe::select(&a.y, &b.y, choice),
            z: Fe::select(&a.z, &b.z, choice),
        }
    }

    /// Z = 0 (constant time).
    pub(super) fn is_infinity(&self) -> Choice {
        self.z.is_zero()
    }

    /// The affine x ‖ y, big-endian, into `out`; constant time. Not for the point at
    /// infinity (Z has no inverse).
    pub(super) fn write_affine(&self, out: &mut [u8; 64]) {
        let z_inv = self.z.invert();
        let z_inv2 = z_inv.square();
        self.x.mul(&z_inv2).write_be_bytes(&mut out[..32]);
        self.y
            .mul(&z_inv2)
            .mul(&z_inv)
            .write_be_bytes(&mut out[32..]);
    }

    /// 2P for a = −3 (EFD dbl-2001-b, 3M + 5S); infinity stays infinity (Z3 = 0).
    pub(super) fn double(&self) -> Self {
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
    pub(super) fn add(&self, other: &Self) -> Self {
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

    /// P + (±Q) for an affine Q, in variable time (public data only): EFD madd-2007-bl
    /// (7M + 4S), the exceptional cases (P at infinity, P = ±Q) taken by branches.
    pub(super) fn add_affine_vartime(&self, q: &Affine, negate: bool) -> Self {
        let qy = if negate { q.y.neg() } else { q.y };
        if bool::from(self.is_infinity()) {
            return Self::from_affine(q.x, qy);
        }
        let z1z1 = self.z.square();
        let u2 = q.x.mul(&z1z1);
        let s2 = qy.mul(&self.z).mul(&z1z1);
        let h = u2.sub(&self.x);
        let r = s2.sub(&self.y).double();
        if bool::from(h.is_zero()) {
            return if bool::from(r.is_zero()) {
                self.double()
            } else {
                Self::INFINITY
            };
        }
        let hh = h.square();
        let i = hh.double().double();
        let j = h.mul(&i);
        let v = self.x.mul(&i);
        let x3 = r.square().sub(&j).sub(&v.double());
        let y3 = r.mul(&v.sub(&x3)).sub(&self.y.mul(&j).double());
        let z3 = self.z.add(&h).square().sub(&z1z1).sub(&hh);
        Self {
            x: x3,
            y: y3,
            z: z3,
        }
    }

    /// P + Q in variable time, every case included (public data only).
    pub(super) fn add_vartime(&self, other: &Self) -> Self {
        if bool::from(self.is_infinity()) {
            return *other;
        }
        if bool::from(other.is_infinity()) {
            return *self;
        }
        let (z1z1, z2z2) = (self.z.square(), other.z.square());
        let same_x = self.x.mul(&z2z2).sub(&other.x.mul(&z1z1)).is_zero();
        if bool::from(same_x) {
            let s1 = self.y.mul(&other.z).mul(&z2z2);
            let s2 = other.y.mul(&self.z).mul(&z1z1);
            return if bool::from(s1.sub(&s2).is_zero()) {
                self.double()
            } else {
                Self::INFINITY
            };
        }
        self.add(other)
    }

    /// Whether the affine x (X / Z²), as an integer, is ≡ `w` (mod n), for `w` big-endian and
    /// below n: X = w·Z², or X = (w + n)·Z² where w + n < p. Variable time, no inversion
    /// (the verifier's last step, GB/T 32918.2 B7). Not for the point at infinity.
    pub(super) fn x_mod_n_is_vartime(&self, w: &[u8; 32]) -> bool {
        let Some(w_fe) = Fe::from_be_bytes(w) else {
            return false;
        };
        let zz = self.z.square();
        if bool::from(self.x.sub(&w_fe.mul(&zz)).is_zero()) {
            return true;
        }
        let n = Fe::from_be_bytes(&N_BYTES).expect("n < p");
        // w < p − n: w + n is below p, so the field's sum is the integers'.
        w < &P_MINUS_N_BYTES && bool::from(self.x.sub(&w_fe.add(&n).mul(&zz)).is_zero())
    }

    /// `table[|digit| − 1]`, negated when `digit` < 0, read without a secret index; `digit`
    /// is in −8..=8 and nonzero (zero is selected around by the caller).
    pub(super) fn lookup(table: &[Self; 8], digit: i8) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x_is_compared_modulo_n_on_both_sides_of_n() {
        let z = Fe::from_be_bytes(&[7u8; 32]).unwrap();
        let zz = z.square();
        let jacobian = |x: &[u8; 32]| Jacobian {
            x: Fe::from_be_bytes(x).unwrap().mul(&zz),
            y: Fe::one(),
            z,
        };
        let mut five = [0u8; 32];
        five[31] = 5;
        // x = n + 5 (below p): ≡ 5 (mod n).
        let mut n_plus_5 = N_BYTES;
        n_plus_5[31] += 5;
        assert!(jacobian(&five).x_mod_n_is_vartime(&five));
        assert!(jacobian(&n_plus_5).x_mod_n_is_vartime(&five));
        let mut six = five;
        six[31] = 6;
        assert!(!jacobian(&n_plus_5).x_mod_n_is_vartime(&six));
        // w at or above p − n has no second representative below p.
        let mut high = P_MINUS_N_BYTES;
        high[31] += 1;
        let mut x = [0u8; 32];
        x[31] = 1;
        assert!(!jacobian(&x).x_mod_n_is_vartime(&high));
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

//! k-of-n splitting of a 32-byte secret (the DB master key among its custodians): Shamir's
//! scheme over GF(2^8), byte by byte. The field is `vsss-rs`'s `Gf256`, whose multiplication
//! and inversion are constant time (docs/adr/0004-master-key-custody.md says why this crate);
//! the polynomials are evaluated here, a few lines, so that every coefficient, share and
//! rebuilt secret lives in wiping storage (the crate's own `split_array` frees its
//! polynomials unwiped). The unit tests check both directions against the crate's
//! `split_array`/`combine_array`.

use vsss_rs::Gf256;
use vsss_rs::elliptic_curve::ff::Field;
use zeroize::Zeroizing;

use super::secret::SecretBytes;

/// Bytes of the secret.
pub const SECRET_LEN: usize = 32;

/// One custodian's share: its x coordinate (1..=n) and the 32 y values.
pub struct Share {
    /// The share's number (the polynomial's x; never 0, which would be the secret).
    pub index: u8,
    pub value: SecretBytes<SECRET_LEN>,
}

/// Why a split or a combination was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShamirError {
    /// k < 2, k > n or n > 255.
    #[error("a split needs 2 ≤ k ≤ n ≤ 255 (k = {k}, n = {n})")]
    BadThreshold { k: usize, n: usize },
    /// Fewer than two shares, two with one index, or an index 0.
    #[error("the shares cannot be combined: fewer than two, an index twice, or index 0")]
    BadShares,
    /// The operating system's random number generator failed.
    #[error("the random number generator failed")]
    Random,
}

/// Splits `secret` into `n` shares of which any `k` rebuild it (indices 1..=n): for each
/// byte, a polynomial of degree k − 1 whose constant term is the byte and whose other
/// coefficients are uniform over the whole field (zero included).
pub fn split(
    secret: &SecretBytes<SECRET_LEN>,
    k: usize,
    n: usize,
) -> Result<Vec<Share>, ShamirError> {
    if k < 2 || k > n || n > 255 {
        return Err(ShamirError::BadThreshold { k, n });
    }
    // coefficients[j * (k - 1) + i - 1] is byte j's coefficient of x^i.
    let mut coefficients = Zeroizing::new(vec![0u8; SECRET_LEN * (k - 1)]);
    getrandom::fill(&mut coefficients[..]).map_err(|_| ShamirError::Random)?;
    (1..=n as u8)
        .map(|index| {
            let x = Gf256(index);
            let mut value = SecretBytes::<SECRET_LEN>::zeroed();
            for (j, y) in value.expose_mut().iter_mut().enumerate() {
                let byte = &coefficients[j * (k - 1)..(j + 1) * (k - 1)];
                // Horner, from the highest coefficient down to the secret byte.
                let mut acc = Gf256(0);
                for c in byte.iter().rev() {
                    acc = acc * x + Gf256(*c);
                }
                *y = (acc * x + Gf256(secret.expose()[j])).0;
            }
            Ok(Share { index, value })
        })
        .collect()
}

/// Rebuilds the secret from `k` or more shares of one split (Lagrange at 0). Shares of
/// different splits (or fewer than k) give another secret, not an error: the caller checks
/// the result (the master key against its key id).
pub fn combine(shares: &[Share]) -> Result<SecretBytes<SECRET_LEN>, ShamirError> {
    let mut indices: Vec<u8> = shares.iter().map(|s| s.index).collect();
    indices.sort_unstable();
    indices.dedup();
    if shares.len() < 2 || indices.len() != shares.len() || indices[0] == 0 {
        return Err(ShamirError::BadShares);
    }
    let mut secret = SecretBytes::<SECRET_LEN>::zeroed();
    for (j, share) in shares.iter().enumerate() {
        // The basis polynomial of x_j at 0: Π_{m≠j} x_m / (x_m − x_j); − is + in GF(2^8).
        // The indices are public; the division is the field's constant-time inversion.
        let xj = Gf256(share.index);
        let mut basis = Gf256(1);
        for (m, other) in shares.iter().enumerate() {
            if m != j {
                let xm = Gf256(other.index);
                let inverse =
                    Option::<Gf256>::from((xm + xj).invert()).ok_or(ShamirError::BadShares)?;
                basis = basis * xm * inverse;
            }
        }
        for (out, y) in secret.expose_mut().iter_mut().zip(share.value.expose()) {
            *out = (Gf256(*out) + basis * Gf256(*y)).0;
        }
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(byte: u8) -> SecretBytes<SECRET_LEN> {
        SecretBytes::from_slice(&[byte; SECRET_LEN]).unwrap()
    }

    fn pick(shares: &[Share], at: &[usize]) -> Vec<Share> {
        at.iter()
            .map(|&i| Share {
                index: shares[i].index,
                value: SecretBytes::from_slice(shares[i].value.expose()).unwrap(),
            })
            .collect()
    }

    #[test]
    fn any_k_of_n_rebuild_the_secret_and_fewer_do_not() {
        let key = SecretBytes::<SECRET_LEN>::random().unwrap();
        let shares = split(&key, 3, 5).unwrap();
        assert_eq!(
            shares.iter().map(|s| s.index).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        for at in [[0, 1, 2], [0, 2, 4], [4, 3, 1], [1, 2, 3]] {
            assert_eq!(combine(&pick(&shares, &at)).unwrap().expose(), key.expose());
        }
        let four = combine(&pick(&shares, &[0, 1, 2, 3])).unwrap();
        assert_eq!(four.expose(), key.expose());
        let two = combine(&pick(&shares, &[0, 1])).unwrap();
        assert_ne!(
            two.expose(),
            key.expose(),
            "k − 1 shares give another value"
        );
    }

    #[test]
    fn shares_of_two_splits_do_not_mix() {
        let (a, b) = (secret(1), secret(2));
        let (sa, sb) = (split(&a, 2, 3).unwrap(), split(&b, 2, 3).unwrap());
        let mixed = vec![pick(&sa, &[0]).remove(0), pick(&sb, &[1]).remove(0)];
        let rebuilt = combine(&mixed).unwrap();
        assert_ne!(rebuilt.expose(), a.expose());
        assert_ne!(rebuilt.expose(), b.expose());
    }

    #[test]
    fn bad_thresholds_and_share_sets_are_refused() {
        let key = secret(7);
        for (k, n) in [(1, 3), (4, 3), (2, 256), (0, 0)] {
            assert_eq!(
                split(&key, k, n).err(),
                Some(ShamirError::BadThreshold { k, n })
            );
        }
        let shares = split(&key, 2, 3).unwrap();
        assert_eq!(
            combine(&pick(&shares, &[0])).err(),
            Some(ShamirError::BadShares)
        );
        assert_eq!(
            combine(&pick(&shares, &[1, 1])).err(),
            Some(ShamirError::BadShares)
        );
        let zero = vec![
            Share {
                index: 0,
                value: secret(0),
            },
            pick(&shares, &[0]).remove(0),
        ];
        assert_eq!(combine(&zero).err(), Some(ShamirError::BadShares));
    }

    #[test]
    fn the_crates_own_split_and_combine_agree_with_ours() {
        // Ours → the crate's combine, and the crate's split → ours, for several k of n.
        let key = SecretBytes::<SECRET_LEN>::random().unwrap();
        for (k, n) in [(2, 2), (2, 3), (3, 5), (5, 5), (4, 9)] {
            let ours = split(&key, k, n).unwrap();
            let as_crate: Vec<Vec<u8>> = ours[n - k..]
                .iter()
                .map(|s| [&[s.index][..], s.value.expose()].concat())
                .collect();
            assert_eq!(
                Gf256::combine_array(&as_crate).unwrap(),
                key.expose().to_vec(),
                "{k} of {n}: ours, combined by vsss-rs"
            );
            let theirs = Gf256::split_array(k, n, key.expose(), rand_core_06()).unwrap();
            let back: Vec<Share> = theirs[..k]
                .iter()
                .map(|s| Share {
                    index: s[0],
                    value: SecretBytes::from_slice(&s[1..]).unwrap(),
                })
                .collect();
            assert_eq!(
                combine(&back).unwrap().expose(),
                key.expose(),
                "{k} of {n}: vsss-rs's, combined by ours"
            );
        }
    }

    /// The operating system's generator in the `rand_core` version `vsss-rs` takes (tests).
    fn rand_core_06() -> impl vsss_rs::elliptic_curve::rand_core::CryptoRngCore {
        vsss_rs::elliptic_curve::rand_core::OsRng
    }

    #[test]
    fn one_share_says_nothing_of_the_secret() {
        // Each y value of one share is uniform whatever the secret byte: over many splits
        // of an all-zero and an all-0xff secret, share 1's first byte takes (nearly) every
        // value, with about half its low bits set.
        for byte in [0x00, 0xff] {
            let key = secret(byte);
            let mut seen = [0u32; 256];
            for _ in 0..4000 {
                seen[split(&key, 2, 3).unwrap()[0].value.expose()[0] as usize] += 1;
            }
            let distinct = seen.iter().filter(|&&c| c > 0).count();
            let odd: u32 = seen.iter().skip(1).step_by(2).sum();
            assert!(distinct > 240, "{distinct} distinct values");
            assert!((1700..2300).contains(&odd), "{odd} odd of 4000");
        }
    }
}

//! k-of-n splitting of a 32-byte secret (the DB master key among its custodians): Shamir's
//! scheme over GF(2^8), byte by byte, through `vsss-rs` (its field arithmetic is constant
//! time; docs/adr/0004-master-key-custody.md says why this crate). Shares and the rebuilt
//! secret live in wiping storage; the crate's own temporaries are wiped by its `zeroize`
//! feature.

use vsss_rs::Gf256;
use vsss_rs::elliptic_curve::rand_core::{CryptoRng, Error as RandError, RngCore};
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

/// Splits `secret` into `n` shares of which any `k` rebuild it (indices 1..=n).
pub fn split(
    secret: &SecretBytes<SECRET_LEN>,
    k: usize,
    n: usize,
) -> Result<Vec<Share>, ShamirError> {
    if k < 2 || k > n || n > 255 {
        return Err(ShamirError::BadThreshold { k, n });
    }
    let mut random = OsRandom { failed: false };
    let raw = Zeroizing::new(
        Gf256::split_array(k, n, secret.expose(), &mut random).map_err(|_| ShamirError::Random)?,
    );
    if random.failed {
        return Err(ShamirError::Random);
    }
    raw.iter()
        .map(|share| {
            let share = Zeroizing::new(share.clone());
            Ok(Share {
                index: share[0],
                value: SecretBytes::from_slice(&share[1..]).ok_or(ShamirError::BadShares)?,
            })
        })
        .collect()
}

/// Rebuilds the secret from `k` or more shares of one split. Shares of different splits (or
/// fewer than k) give another secret, not an error: the caller checks the result (the
/// master key against its key id).
pub fn combine(shares: &[Share]) -> Result<SecretBytes<SECRET_LEN>, ShamirError> {
    let mut indices: Vec<u8> = shares.iter().map(|s| s.index).collect();
    indices.sort_unstable();
    indices.dedup();
    if shares.len() < 2 || indices.len() != shares.len() || indices[0] == 0 {
        return Err(ShamirError::BadShares);
    }
    let raw: Zeroizing<Vec<Vec<u8>>> = Zeroizing::new(
        shares
            .iter()
            .map(|share| {
                let mut bytes = Vec::with_capacity(1 + SECRET_LEN);
                bytes.push(share.index);
                bytes.extend_from_slice(share.value.expose());
                bytes
            })
            .collect(),
    );
    let secret = Zeroizing::new(Gf256::combine_array(&*raw).map_err(|_| ShamirError::BadShares)?);
    SecretBytes::from_slice(&secret).ok_or(ShamirError::BadShares)
}

/// The operating system's generator, in the `rand_core` version `vsss-rs` takes. Its
/// `fill_bytes` cannot fail: a failure is remembered, and the split that saw it refused.
struct OsRandom {
    failed: bool,
}

impl RngCore for OsRandom {
    fn next_u32(&mut self) -> u32 {
        let mut bytes = [0u8; 4];
        self.fill_bytes(&mut bytes);
        u32::from_le_bytes(bytes)
    }

    fn next_u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        self.fill_bytes(&mut bytes);
        u64::from_le_bytes(bytes)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        if getrandom::fill(dest).is_err() {
            dest.fill(0);
            self.failed = true;
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), RandError> {
        self.fill_bytes(dest);
        match self.failed {
            false => Ok(()),
            true => Err(RandError::from(
                core::num::NonZeroU32::new(RandError::CUSTOM_START).expect("non-zero"),
            )),
        }
    }
}

impl CryptoRng for OsRandom {}

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

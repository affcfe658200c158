//! The encryption-key ratchet: every replica of a cluster derives the same SM2 encryption
//! key for the same epoch without talking to the others, and what is wiped stays gone.
//!
//! ```text
//! state[n+1]        = HKDF-SM3(ikm = state[n], salt = "", info = "tee-risk/ratchet/v1/next")
//! key[n] candidate i = HKDF-SM3(ikm = state[n], salt = "",
//!                               info = "tee-risk/ratchet/v1/encryption-key" ‖ u8 i)
//! key[n]            = the first candidate that is a valid SM2 private scalar (0 < d < n)
//! ```
//!
//! Forward secrecy: [`RatchetState::advance`] replaces the state and wipes the old one, and
//! HKDF cannot be run backwards, so a state captured later derives no earlier key. Built on
//! the crate's HKDF-SM3 (RFC 5869) rather than a hand-made hash chain; the only hand-written
//! part is the rejection loop that turns 32 random-looking bytes into a valid scalar.

use super::CryptoError;
use super::kdf::hkdf_sm3;
use super::secret::SecretBytes;
use super::sm2::DecryptionKey;

const NEXT_INFO: &[u8] = b"tee-risk/ratchet/v1/next";
const KEY_INFO: &[u8] = b"tee-risk/ratchet/v1/encryption-key";
/// Candidates tried before giving up: one fails with probability about 2^-32 (the SM2 order
/// is just below 2^256), so 16 failures in a row do not happen.
const KEY_CANDIDATES: u8 = 16;

/// The ratchet at one epoch: the only secret from which that epoch's and every later
/// epoch's encryption key follow. Wiped on drop; no `Debug`, no `Clone`.
pub struct RatchetState {
    epoch: u64,
    state: SecretBytes<32>,
}

impl RatchetState {
    /// A fresh random ratchet at `epoch` (a cluster's bootstrap).
    pub fn generate(epoch: u64) -> Result<Self, CryptoError> {
        Ok(Self {
            epoch,
            state: SecretBytes::random()?,
        })
    }

    /// The ratchet a peer handed over (the join protocol).
    pub fn from_parts(epoch: u64, state: SecretBytes<32>) -> Self {
        Self { epoch, state }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The state bytes, for sealing to a joining replica. Every call site hands the cluster's
    /// future keys to someone: only the join protocol uses it.
    pub fn expose_state(&self) -> &[u8; 32] {
        self.state.expose()
    }

    /// Moves to the next epoch; the old state is wiped (dropped) here.
    pub fn advance(&mut self) -> Result<(), CryptoError> {
        let mut next = SecretBytes::<32>::zeroed();
        hkdf_sm3(self.state.expose(), b"", NEXT_INFO, next.expose_mut())?;
        self.state = next;
        self.epoch += 1;
        Ok(())
    }

    /// Moves forward until `epoch` (never back: a later state cannot rewind).
    pub fn advance_to(&mut self, epoch: u64) -> Result<(), CryptoError> {
        while self.epoch < epoch {
            self.advance()?;
        }
        Ok(())
    }

    /// The state one epoch ahead, leaving this one as it is (to derive the next key early).
    pub fn peek_next(&self) -> Result<RatchetState, CryptoError> {
        let mut next = Self::from_parts(
            self.epoch,
            SecretBytes::from_slice(self.state.expose()).expect("32 bytes"),
        );
        next.advance()?;
        Ok(next)
    }

    /// This epoch's encryption key.
    pub fn encryption_key(&self) -> Result<DecryptionKey, CryptoError> {
        for candidate in 0..KEY_CANDIDATES {
            let mut scalar = SecretBytes::<32>::zeroed();
            let mut info = KEY_INFO.to_vec();
            info.push(candidate);
            hkdf_sm3(self.state.expose(), b"", &info, scalar.expose_mut())?;
            if let Ok(key) = DecryptionKey::from_scalar(&scalar) {
                return Ok(key);
            }
        }
        Err(CryptoError::InvalidKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: u64, byte: u8) -> RatchetState {
        RatchetState::from_parts(epoch, SecretBytes::from_slice(&[byte; 32]).unwrap())
    }

    #[test]
    fn two_holders_of_one_state_derive_the_same_keys_forever() {
        let (mut a, mut b) = (at(7, 1), at(7, 1));
        for _ in 0..5 {
            assert_eq!(
                a.encryption_key().unwrap().public(),
                b.encryption_key().unwrap().public()
            );
            a.advance().unwrap();
            b.advance().unwrap();
        }
        assert_eq!((a.epoch(), b.epoch()), (12, 12));
        // A late joiner handed state 12 derives what the others derive from then on.
        let mut late = at(12, 0);
        late.state = SecretBytes::from_slice(a.expose_state()).unwrap();
        assert_eq!(
            late.encryption_key().unwrap().public(),
            a.encryption_key().unwrap().public()
        );
    }

    #[test]
    fn the_chain_is_hkdf_sm3_as_documented() {
        let start = at(0, 9);
        let mut next = [0u8; 32];
        hkdf_sm3(&[9; 32], b"", b"tee-risk/ratchet/v1/next", &mut next).unwrap();
        let mut advanced = at(0, 9);
        advanced.advance().unwrap();
        assert_eq!(advanced.expose_state(), &next);
        assert_eq!(advanced.epoch(), 1);
        assert_eq!(start.peek_next().unwrap().expose_state(), &next);
        assert_eq!(start.epoch(), 0, "peeking does not move the ratchet");

        let mut scalar = [0u8; 32];
        hkdf_sm3(
            &[9; 32],
            b"",
            b"tee-risk/ratchet/v1/encryption-key\x00",
            &mut scalar,
        )
        .unwrap();
        let expected =
            DecryptionKey::from_scalar(&SecretBytes::from_slice(&scalar).unwrap()).unwrap();
        assert_eq!(start.encryption_key().unwrap().public(), expected.public());
    }

    #[test]
    fn each_epoch_has_its_own_key_and_the_ratchet_never_goes_back() {
        let mut ratchet = at(0, 3);
        let first = ratchet.encryption_key().unwrap().public().clone();
        ratchet.advance_to(4).unwrap();
        assert_eq!(ratchet.epoch(), 4);
        let fourth = ratchet.encryption_key().unwrap().public().clone();
        assert_ne!(first, fourth);
        ratchet.advance_to(2).unwrap();
        assert_eq!(ratchet.epoch(), 4, "advance_to never rewinds");
        // No state reachable from epoch 4 derives epoch 0's key.
        let mut later = at(4, 0);
        later.state = SecretBytes::from_slice(ratchet.expose_state()).unwrap();
        for _ in 0..8 {
            assert_ne!(later.encryption_key().unwrap().public(), &first);
            later.advance().unwrap();
        }
    }
}

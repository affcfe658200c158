//! Where the vault's records sit in the store: the keys of meta records, canaries, index
//! maps, users and history. One place, so that opening, rotation and erasure agree.

use super::UserIndex;
use crate::store::keys::KeyId;

/// The database salt (plain): present once initialisation completed.
pub(super) const META_SALT: &[u8] = b"salt";
/// The sealed key registry.
pub(super) const META_REGISTRY: &[u8] = b"registry";
/// `meta` key of the rotation lease: which process sweeps, until when.
pub(super) const META_ROTATION_LEASE: &[u8] = b"rotation-lease";
/// The single canary of databases created before the key registry.
pub(super) const META_LEGACY_CANARY: &[u8] = b"canary";
/// What every canary seals.
pub(super) const CANARY_PLAINTEXT: &[u8] = b"tee-risk canary v1";
const CANARY_PREFIX: &str = "canary/";
/// `idxmap/` ‖ old blind index → new blind index, while a rotation re-indexes users.
const INDEX_MAP_PREFIX: &[u8] = b"idxmap/";
/// A `user_data` key: the user's blind index.
pub(super) const USER_KEY_LEN: usize = 32;
/// A `feature_history` key: blind index ‖ 8-byte big-endian sequence number.
pub(super) const HISTORY_KEY_LEN: usize = USER_KEY_LEN + 8;

/// The meta key of master key `id`'s canary.
pub(super) fn canary_key(id: KeyId) -> Vec<u8> {
    format!("{CANARY_PREFIX}{id}").into_bytes()
}

/// The key id a canary's meta key names (`None`: not a canary's key).
pub(super) fn canary_id(key: &[u8]) -> Option<KeyId> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix(CANARY_PREFIX)?
        .parse()
        .ok()
}

/// The meta key of the index map entry for `old`.
pub(super) fn index_map_key(old: &[u8]) -> Vec<u8> {
    [INDEX_MAP_PREFIX, old].concat()
}

/// The old index an index map key names, if `key` is one.
pub(super) fn index_map_old(key: &[u8]) -> Option<&[u8]> {
    key.strip_prefix(INDEX_MAP_PREFIX)
}

/// The feature-history key of the user at `index`, entry `seq`.
pub(super) fn history_key(index: &[u8], seq: u64) -> Vec<u8> {
    [index, &seq.to_be_bytes()].concat()
}

/// Whether `key` is a feature-history key of the user at `index` (index ‖ 8-byte sequence).
pub(super) fn is_history_key_of(key: &[u8], index: &[u8]) -> bool {
    key.len() == index.len() + 8 && key.starts_with(index)
}

/// A history key's (user index, sequence bytes), if it has the history key length.
pub(super) fn split_history_key(key: &[u8]) -> Option<(&[u8], &[u8])> {
    (key.len() == HISTORY_KEY_LEN).then(|| key.split_at(USER_KEY_LEN))
}

/// A `user_data` key as a user index, if it has the right length.
pub(super) fn user_index(key: &[u8]) -> Option<UserIndex> {
    key.try_into().ok()
}

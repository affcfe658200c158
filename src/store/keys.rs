//! The storage key hierarchy.
//!
//! ```text
//! DB master key (env DB_MASTER_KEY, 32 bytes)
//!  ├─ key id      = HMAC-SM3(master, "tee-risk/v1/master-key-id")[..8]   (public fingerprint)
//!  ├─ table key   = HKDF-SM3(master, salt = per-database random salt,
//!  │                          info = "tee-risk/v1/table-key/" ‖ table name)  (16 bytes, SM4)
//!  └─ blind index = HKDF-SM3(master, salt, "tee-risk/v1/blind-index/user_id") (32 bytes, HMAC-SM3)
//! ```

use std::fmt;

use zeroize::Zeroizing;

use super::Table;
use crate::crypto::CryptoError;
use crate::crypto::aead::{KEY_LEN, Sm4Gcm};
use crate::crypto::kdf::{hkdf_sm3, hmac_sm3};
use crate::crypto::secret::SecretBytes;

pub const MASTER_KEY_LEN: usize = 32;
pub const KEY_ID_LEN: usize = 8;
pub const SALT_LEN: usize = 32;

const LABEL_KEY_ID: &[u8] = b"tee-risk/v1/master-key-id";
const LABEL_TABLE_KEY: &str = "tee-risk/v1/table-key/";
const LABEL_BLIND_INDEX: &[u8] = b"tee-risk/v1/blind-index/user_id";

/// The DB master key. Wiped on drop; never printed.
pub struct MasterKey(SecretBytes<MASTER_KEY_LEN>);

impl MasterKey {
    /// Parses 64 hex digits; the error never echoes the input.
    pub fn from_hex(text: &str) -> Result<Self, &'static str> {
        SecretBytes::from_hex(text)
            .map(Self)
            .ok_or("the DB master key must be exactly 64 hex characters (32 bytes)")
    }

    pub fn generate() -> Result<Self, CryptoError> {
        SecretBytes::random().map(Self)
    }

    /// A key rebuilt or received in TEE memory (custodians' shares, a peer's join).
    pub fn from_secret(secret: SecretBytes<MASTER_KEY_LEN>) -> Self {
        Self(secret)
    }

    /// The key's bytes, to split among custodians or seal to a joining replica.
    pub fn expose_secret(&self) -> &SecretBytes<MASTER_KEY_LEN> {
        &self.0
    }

    /// A second copy, in wiping storage (one opens the vault, one stays for joiners).
    pub fn duplicate(&self) -> Self {
        Self(SecretBytes::from_slice(self.0.expose()).expect("same length"))
    }

    /// Parses a comma-separated list of keys (`DB_MASTER_KEY_PREVIOUS`); blanks are ignored.
    /// The error names the position of the bad entry, never its text.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, KeyListError> {
        text.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .enumerate()
            .map(|(i, entry)| Self::from_hex(entry).map_err(|_| KeyListError { entry: i + 1 }))
            .collect()
    }

    /// 64 lowercase hex digits, wiped on drop (for the dev key file only).
    pub fn to_hex_zeroizing(&self) -> zeroize::Zeroizing<String> {
        self.0.to_hex_zeroizing()
    }

    /// The public fingerprint stored in every record header.
    pub fn key_id(&self) -> KeyId {
        let mac = hmac_sm3(self.0.expose(), LABEL_KEY_ID);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&mac[..KEY_ID_LEN]);
        KeyId(id)
    }
}

/// A bad entry in a list of master keys (its position, never its text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "entry {entry} of the list: the DB master key must be exactly 64 hex characters (32 bytes)"
)]
pub struct KeyListError {
    /// 1-based position in the list.
    pub entry: usize,
}

/// Not a key id (16 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a key id (16 hex digits)")]
pub struct KeyIdError(pub String);

/// A master key's public fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::str::FromStr for KeyId {
    type Err = KeyIdError;

    /// 16 hex digits, as printed.
    fn from_str(text: &str) -> Result<Self, KeyIdError> {
        let mut id = [0u8; KEY_ID_LEN];
        hex::decode_to_slice(text.trim(), &mut id).map_err(|_| KeyIdError(text.to_owned()))?;
        Ok(Self(id))
    }
}

/// The master keys a process holds: the current one (seals everything new) and previous
/// ones (open records that still name them), each derived for this database's salt.
pub struct Keyring {
    current: TableKeys,
    previous: Vec<TableKeys>,
}

impl Keyring {
    pub fn new(current: TableKeys, previous: Vec<TableKeys>) -> Self {
        Self { current, previous }
    }

    pub fn current(&self) -> &TableKeys {
        &self.current
    }

    /// The keys that name `id`; the choice is by the id in a record's header, never by trial.
    pub fn get(&self, id: KeyId) -> Option<&TableKeys> {
        self.all().find(|keys| keys.key_id() == id)
    }

    /// Current first.
    pub fn all(&self) -> impl Iterator<Item = &TableKeys> {
        std::iter::once(&self.current).chain(&self.previous)
    }

    pub fn ids(&self) -> Vec<KeyId> {
        self.all().map(TableKeys::key_id).collect()
    }
}

/// Keys derived from one master key for one database.
pub struct TableKeys {
    key_id: KeyId,
    ciphers: Vec<Sm4Gcm>,
    blind_index_key: SecretBytes<32>,
}

impl TableKeys {
    pub fn derive(master: &MasterKey, salt: &[u8; SALT_LEN]) -> Result<Self, CryptoError> {
        let ikm = master.0.expose();
        let ciphers = Table::ALL
            .iter()
            .map(|table| {
                let info = format!("{LABEL_TABLE_KEY}{}", table.name());
                let mut okm = Zeroizing::new([0u8; KEY_LEN]);
                hkdf_sm3(ikm, salt, info.as_bytes(), &mut okm[..])?;
                let key = SecretBytes::<KEY_LEN>::from_slice(&okm[..]).expect("length");
                Ok(Sm4Gcm::new(&key))
            })
            .collect::<Result<Vec<_>, CryptoError>>()?;
        let mut okm = Zeroizing::new([0u8; 32]);
        hkdf_sm3(ikm, salt, LABEL_BLIND_INDEX, &mut okm[..])?;
        Ok(Self {
            key_id: master.key_id(),
            ciphers,
            blind_index_key: SecretBytes::from_slice(&okm[..]).expect("length"),
        })
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    pub fn cipher(&self, table: Table) -> &Sm4Gcm {
        &self.ciphers[table.index()]
    }

    /// The storage key for a user id: HMAC-SM3 under the blind-index key, so the id itself is
    /// never stored and equal ids still find each other.
    pub fn blind_index(&self, user_id: &str) -> [u8; 32] {
        hmac_sm3(self.blind_index_key.expose(), user_id.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_is_stable_and_key_specific() {
        let a = MasterKey::from_hex(&"11".repeat(32)).unwrap();
        let b = MasterKey::from_hex(&"22".repeat(32)).unwrap();
        assert_eq!(
            a.key_id(),
            MasterKey::from_hex(&"11".repeat(32)).unwrap().key_id()
        );
        assert_ne!(a.key_id(), b.key_id());
        assert_eq!(a.key_id().to_string().len(), 16);
    }

    #[test]
    fn bad_master_key_text_is_refused_without_echo() {
        let err = MasterKey::from_hex("deadbeef").err().unwrap();
        assert!(!err.contains("deadbeef"));
        assert!(MasterKey::from_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn key_lists_and_ids_parse() {
        let keys = MasterKey::parse_list(&format!(" {}, ,{} ", "11".repeat(32), "22".repeat(32)));
        assert_eq!(keys.unwrap().len(), 2);
        let err = MasterKey::parse_list(&format!("{},secretish", "11".repeat(32)))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("entry 2") && !err.contains("secretish"),
            "{err}"
        );
        let id = MasterKey::from_hex(&"11".repeat(32)).unwrap().key_id();
        assert_eq!(id.to_string().parse::<KeyId>().unwrap(), id);
        assert!("xyz".parse::<KeyId>().is_err());
    }

    #[test]
    fn blind_index_depends_on_key_and_salt() {
        let master = MasterKey::from_hex(&"11".repeat(32)).unwrap();
        let k1 = TableKeys::derive(&master, &[1; SALT_LEN]).unwrap();
        let k2 = TableKeys::derive(&master, &[2; SALT_LEN]).unwrap();
        assert_eq!(k1.blind_index("alice"), k1.blind_index("alice"));
        assert_ne!(k1.blind_index("alice"), k1.blind_index("bob"));
        assert_ne!(k1.blind_index("alice"), k2.blind_index("alice"));
    }
}

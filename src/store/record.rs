//! The sealed record format. Pure: no I/O.
//!
//! ```text
//! record = version (1 byte, = 1) ‖ master key id (8) ‖ nonce (12) ‖ SM4-GCM ciphertext ‖ tag (16)
//! AAD    = "tee-risk/record/v1" ‖ u8 len ‖ table name ‖ u32be len ‖ record key ‖ header (21 bytes)
//! ```
//! Binding table, key and header into the AAD means a record copied to another key or table,
//! or with an edited header, fails to open.

use zeroize::Zeroizing;

use super::Table;
use super::keys::{KEY_ID_LEN, KeyId};
use crate::crypto::CryptoError;
use crate::crypto::aead::{NONCE_LEN, Sm4Gcm, TAG_LEN, random_nonce};

pub const RECORD_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;
const AAD_LABEL: &[u8] = b"tee-risk/record/v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    #[error("record is too short to be sealed")]
    Truncated,
    #[error("record has unknown format version {0}")]
    UnknownVersion(u8),
    #[error("record was sealed under master key {found}, not {expected}")]
    WrongKey { found: KeyId, expected: KeyId },
    #[error("record failed authentication (tampered, moved, or wrong key)")]
    Authentication,
    #[error("cannot seal record: {0}")]
    Seal(CryptoError),
}

fn aad(table: Table, record_key: &[u8], header: &[u8]) -> Vec<u8> {
    let name = table.name().as_bytes();
    let mut aad =
        Vec::with_capacity(AAD_LABEL.len() + 1 + name.len() + 4 + record_key.len() + header.len());
    aad.extend_from_slice(AAD_LABEL);
    aad.push(name.len() as u8);
    aad.extend_from_slice(name);
    aad.extend_from_slice(&(record_key.len() as u32).to_be_bytes());
    aad.extend_from_slice(record_key);
    aad.extend_from_slice(header);
    aad
}

/// Seals `plaintext` (wiped when this returns) for `table`/`record_key`.
pub fn seal(
    cipher: &Sm4Gcm,
    key_id: KeyId,
    table: Table,
    record_key: &[u8],
    plaintext: Zeroizing<Vec<u8>>,
) -> Result<Vec<u8>, RecordError> {
    let nonce = random_nonce().map_err(RecordError::Seal)?;
    let mut record = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    record.push(RECORD_VERSION);
    record.extend_from_slice(&key_id.0);
    record.extend_from_slice(&nonce);
    record.extend_from_slice(&plaintext);
    let (header, body) = record.split_at_mut(HEADER_LEN);
    let tag = cipher
        .seal_in_place(&nonce, &aad(table, record_key, header), body)
        .map_err(RecordError::Seal)?;
    record.extend_from_slice(&tag);
    Ok(record)
}

/// The master key id named in a record's header.
pub fn key_id_of(record: &[u8]) -> Result<KeyId, RecordError> {
    if record.len() < HEADER_LEN + TAG_LEN {
        return Err(RecordError::Truncated);
    }
    if record[0] != RECORD_VERSION {
        return Err(RecordError::UnknownVersion(record[0]));
    }
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&record[1..1 + KEY_ID_LEN]);
    Ok(KeyId(id))
}

/// Opens a record sealed by [`seal`] for the same table and key under `key_id`.
pub fn open(
    cipher: &Sm4Gcm,
    key_id: KeyId,
    table: Table,
    record_key: &[u8],
    record: &[u8],
) -> Result<Zeroizing<Vec<u8>>, RecordError> {
    let found = key_id_of(record)?;
    if found != key_id {
        return Err(RecordError::WrongKey {
            found,
            expected: key_id,
        });
    }
    let header = &record[..HEADER_LEN];
    let nonce: [u8; NONCE_LEN] = header[1 + KEY_ID_LEN..].try_into().expect("header length");
    let (body, tag) = record[HEADER_LEN..].split_at(record.len() - HEADER_LEN - TAG_LEN);
    let tag: [u8; TAG_LEN] = tag.try_into().expect("tag length");
    let mut plaintext = Zeroizing::new(body.to_vec());
    cipher
        .open_in_place(
            &nonce,
            &aad(table, record_key, header),
            &mut plaintext,
            &tag,
        )
        .map_err(|_| RecordError::Authentication)?;
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::secret::SecretBytes;

    fn cipher(byte: u8) -> Sm4Gcm {
        Sm4Gcm::new(&SecretBytes::from_slice(&[byte; 16]).unwrap())
    }
    const ID: KeyId = KeyId([7; KEY_ID_LEN]);

    fn sealed() -> Vec<u8> {
        seal(
            &cipher(1),
            ID,
            Table::UserData,
            b"key",
            Zeroizing::new(b"secret".to_vec()),
        )
        .unwrap()
    }

    #[test]
    fn round_trip() {
        let record = sealed();
        assert_eq!(record.len(), HEADER_LEN + 6 + TAG_LEN);
        assert_eq!(key_id_of(&record).unwrap(), ID);
        let plain = open(&cipher(1), ID, Table::UserData, b"key", &record).unwrap();
        assert_eq!(&plain[..], b"secret");
    }

    #[test]
    fn moved_tampered_or_wrong_key_records_fail() {
        let record = sealed();
        let fails = |c: &Sm4Gcm, id, table, key: &[u8], rec: &[u8]| {
            open(c, id, table, key, rec).unwrap_err()
        };
        assert_eq!(
            fails(&cipher(1), ID, Table::UserData, b"other", &record),
            RecordError::Authentication
        );
        assert_eq!(
            fails(&cipher(1), ID, Table::RiskLogs, b"key", &record),
            RecordError::Authentication
        );
        assert_eq!(
            fails(&cipher(2), ID, Table::UserData, b"key", &record),
            RecordError::Authentication
        );
        for i in [1, HEADER_LEN, record.len() - 1] {
            let mut bad = record.clone();
            bad[i] ^= 1;
            assert_ne!(
                open(&cipher(1), ID, Table::UserData, b"key", &bad).unwrap_err(),
                RecordError::Truncated
            );
            assert!(open(&cipher(1), ID, Table::UserData, b"key", &bad).is_err());
        }
        let mut version = record.clone();
        version[0] = 9;
        assert_eq!(
            fails(&cipher(1), ID, Table::UserData, b"key", &version),
            RecordError::UnknownVersion(9)
        );
        assert_eq!(
            fails(&cipher(1), ID, Table::UserData, b"key", &record[..20]),
            RecordError::Truncated
        );
        let other = KeyId([8; KEY_ID_LEN]);
        assert!(matches!(
            fails(&cipher(1), other, Table::UserData, b"key", &record),
            RecordError::WrongKey { .. }
        ));
    }
}

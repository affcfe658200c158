//! Private keys in files: SM2 private keys as 64 hex digits (or PKCS#8 PEM) and other
//! secrets written once with mode 0600. The files are the sim platform's and the development
//! client's keys and the development master key, all of which persist beside the data so
//! that what verifiers and clients pinned survives a restart. Production keys never come
//! from here (the identity key lives in TEE memory only; the master key comes from the env).

use std::io::Write;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::secret::SecretBytes;
use super::sm2::{DecryptionKey, IdentityKey};

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be read, created or synced.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file does not hold a key of the expected form.
    #[error("{path} is not an SM2 private key ({expected})")]
    NotAKey {
        /// The key file.
        path: PathBuf,
        /// The forms accepted.
        expected: &'static str,
    },
    /// The random number generator failed.
    #[error("cannot generate a key: {0}")]
    Random(#[from] super::CryptoError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates `path` with mode 0600 (never overwrites an existing file) and syncs it.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), KeyFileError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(contents).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

/// Reads a secret text file into memory that is wiped on drop.
pub fn read_secret_text(path: &Path) -> Result<Zeroizing<String>, KeyFileError> {
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(io(path))
}

/// An SM2 private key from a file: 64 hex digits, or a PKCS#8 PEM (as `openssl genpkey`
/// writes).
pub fn load_sm2_key(path: &Path) -> Result<IdentityKey, KeyFileError> {
    parse_sm2_key(&read_secret_text(path)?).map_err(|_| KeyFileError::NotAKey {
        path: path.to_owned(),
        expected: "64 hex digits or a PKCS#8 PEM",
    })
}

/// An SM2 private key from text: 64 hex digits, or a PKCS#8 PEM (for callers that hold the
/// key in memory, such as the language bindings in `clients/ffi`).
pub fn parse_sm2_key(text: &str) -> Result<IdentityKey, crate::CryptoError> {
    if text.contains("-----BEGIN") {
        IdentityKey::from_pkcs8_pem(text)
    } else {
        IdentityKey::from_hex(text.trim())
    }
}

/// One SM2 private key in both its roles, from a file as [`load_sm2_key`] reads it: to
/// sign, and to decrypt (a key custodian's: `protocol::custody`).
pub fn load_sm2_key_pair(path: &Path) -> Result<(IdentityKey, DecryptionKey), KeyFileError> {
    let text = read_secret_text(path)?;
    let not_a_key = || KeyFileError::NotAKey {
        path: path.to_owned(),
        expected: "64 hex digits or a PKCS#8 PEM",
    };
    let decrypting = if text.contains("-----BEGIN") {
        DecryptionKey::from_pkcs8_pem(&text)
    } else {
        SecretBytes::<32>::from_hex(text.trim())
            .ok_or(crate::CryptoError::InvalidKey)
            .and_then(|scalar| DecryptionKey::from_scalar(&scalar))
    }
    .map_err(|_| not_a_key())?;
    let signing = parse_sm2_key(&text).map_err(|_| not_a_key())?;
    Ok((signing, decrypting))
}

/// An SM2 private key from a file of 64 hex digits, created (mode 0600) when missing.
pub fn load_or_create_sm2_key(path: &Path) -> Result<IdentityKey, KeyFileError> {
    if path.exists() {
        let text = read_secret_text(path)?;
        return IdentityKey::from_hex(text.trim()).map_err(|_| KeyFileError::NotAKey {
            path: path.to_owned(),
            expected: "64 hex digits",
        });
    }
    let (key, scalar) = loop {
        let scalar = SecretBytes::<32>::random()?;
        // A scalar of 0 or ≥ n is no key; draw again (probability ~2^-128).
        if let Ok(key) = IdentityKey::from_scalar(&scalar) {
            break (key, scalar);
        }
    };
    write_private_file(path, scalar.to_hex_zeroizing().as_bytes())?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_key_persists_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.hex");
        let first = load_or_create_sm2_key(&path).unwrap();
        let again = load_or_create_sm2_key(&path).unwrap();
        assert_eq!(first.public(), again.public());
        assert_eq!(load_sm2_key(&path).unwrap().public(), first.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(write_private_file(&path, b"x").is_err(), "never overwrites");
        std::fs::write(dir.path().join("bad"), "zz").unwrap();
        assert!(matches!(
            load_sm2_key(&dir.path().join("bad")),
            Err(KeyFileError::NotAKey { .. })
        ));
    }
}

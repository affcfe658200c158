//! Who may call the encrypted endpoints: registered clients, each with an SM2 key and a set
//! of permissions (`enroll`, `assess`, `erase`, `identify`). The signature format is
//! `protocol::client_auth`; this module checks it against the clients file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::crypto::keyfile::{self, KeyFileError};
use crate::crypto::sm2::{PublicKey, Verifier};
use crate::protocol::client_auth::{
    AuthorizationError, MAX_CLIENT_ID_BYTES, parse_authorization, signed_message, valid_client_id,
};

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// `POST /v1/enroll`.
    Enroll,
    /// `POST /v1/assess`.
    Assess,
    /// `DELETE /v1/users`.
    Erase,
    /// `POST /v1/identify` (1:N: names users, so grant it only to clients that may know).
    Identify,
    /// `POST /v1/identify` with `"mode": "investigate"`: the top candidates of a search with
    /// no decision, leads for a fraud team (grant it more narrowly still).
    Investigate,
}

impl Permission {
    /// The name in clients files and error details.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Enroll => "enroll",
            Permission::Assess => "assess",
            Permission::Erase => "erase",
            Permission::Identify => "identify",
            Permission::Investigate => "investigate",
        }
    }
}

/// Why a request was refused access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// No credential, a malformed one, an unknown client, or a signature that does not
    /// verify (401).
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A known client without the permission (403).
    #[error("this client lacks the `{}` permission", .0.as_str())]
    Forbidden(Permission),
}

impl From<AuthorizationError> for AccessError {
    fn from(error: AuthorizationError) -> Self {
        AccessError::Unauthenticated(match error {
            AuthorizationError::Missing => "send `Authorization: TR-SM2 <client id>:<signature>`",
            AuthorizationError::Malformed => "malformed TR-SM2 credential",
            _ => "malformed signature",
        })
    }
}

/// Why a clients file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientsError {
    /// The clients file could not be read.
    #[error("cannot read the clients file {path}: {source}")]
    Read {
        /// The clients file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// An entry is wrong; `path` names the file.
    #[error("{path}: {source}")]
    Entry {
        /// The clients file.
        path: PathBuf,
        /// What is wrong.
        source: EntryError,
    },
}

/// What is wrong with a clients file's content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// Not TOML of the expected shape (unknown keys and permissions are errors).
    #[error(transparent)]
    Parse(#[from] toml::de::Error),
    /// No `[[client]]` table.
    #[error("the file registers no client")]
    Empty,
    /// A client id outside the allowed alphabet or length.
    #[error("client id `{0}`: use 1 to {MAX_CLIENT_ID_BYTES} letters, digits, '-', '_' or '.'")]
    BadId(String),
    /// A client without permissions.
    #[error("client `{0}` has no permissions")]
    NoPermissions(String),
    /// The same id twice.
    #[error("client `{0}` is registered twice")]
    Duplicate(String),
    /// The key file named by an entry is unreadable.
    #[error("client `{client}`: cannot read {path}: {source}")]
    KeyFile {
        /// The client id.
        client: String,
        /// The key file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The key is not an SM2 public key.
    #[error("client `{0}`: not an SM2 public key PEM")]
    NotAKey(String),
}

/// The clients file: `[[client]]` tables.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientsFile {
    #[serde(default)]
    client: Vec<ClientEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    id: String,
    /// SM2 public key: a PEM file (relative to the clients file) or the PEM text itself.
    public_key: String,
    permissions: Vec<Permission>,
}

struct RegisteredClient {
    /// Holds the client's Z value, computed once.
    verifier: Verifier,
    permissions: Vec<Permission>,
}

/// The registered clients, loaded once at start.
pub struct ClientRegistry {
    clients: HashMap<String, RegisteredClient>,
}

impl ClientRegistry {
    /// Loads a clients file; refuses duplicates, bad ids, bad keys and empty permissions.
    pub fn load(path: &Path) -> Result<Self, ClientsError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClientsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path.parent().unwrap_or(Path::new("."))).map_err(|source| {
            ClientsError::Entry {
                path: path.to_owned(),
                source,
            }
        })
    }

    /// Parses a clients file's text; key files are relative to `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, EntryError> {
        let file: ClientsFile = toml::from_str(text)?;
        let mut registry = Self {
            clients: HashMap::new(),
        };
        for entry in file.client {
            let pem = if entry.public_key.contains("-----BEGIN") {
                entry.public_key.clone()
            } else {
                let key_path = base.join(&entry.public_key);
                std::fs::read_to_string(&key_path).map_err(|source| EntryError::KeyFile {
                    client: entry.id.clone(),
                    path: key_path.clone(),
                    source,
                })?
            };
            let key =
                PublicKey::from_pem(&pem).map_err(|_| EntryError::NotAKey(entry.id.clone()))?;
            registry.add(&entry.id, &key, entry.permissions)?;
        }
        if registry.clients.is_empty() {
            return Err(EntryError::Empty);
        }
        Ok(registry)
    }

    /// A registry of one client (development mode).
    pub fn single(
        id: &str,
        key: &PublicKey,
        permissions: Vec<Permission>,
    ) -> Result<Self, EntryError> {
        let mut registry = Self {
            clients: HashMap::new(),
        };
        registry.add(id, key, permissions)?;
        Ok(registry)
    }

    fn add(
        &mut self,
        id: &str,
        key: &PublicKey,
        permissions: Vec<Permission>,
    ) -> Result<(), EntryError> {
        if !valid_client_id(id) {
            return Err(EntryError::BadId(id.to_owned()));
        }
        if permissions.is_empty() {
            return Err(EntryError::NoPermissions(id.to_owned()));
        }
        let client = RegisteredClient {
            verifier: key
                .verifier()
                .map_err(|_| EntryError::NotAKey(id.to_owned()))?,
            permissions,
        };
        if self.clients.insert(id.to_owned(), client).is_some() {
            return Err(EntryError::Duplicate(id.to_owned()));
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Checks the `Authorization` header of a request and that its client holds `needed`.
    /// Returns the client id.
    pub fn authorize(
        &self,
        authorization: Option<&str>,
        method: &str,
        path: &str,
        body: &[u8],
        needed: Permission,
    ) -> Result<String, AccessError> {
        self.authorize_any(authorization, method, path, body, &[needed])
            .map(|client| client.id)
    }

    /// Checks the `Authorization` header of a request and that its client holds at least
    /// one of `any` (a route whose payload says which it needs, such as identify's mode).
    /// Returns the client and its permissions, for the check the payload then asks for.
    pub fn authorize_any(
        &self,
        authorization: Option<&str>,
        method: &str,
        path: &str,
        body: &[u8],
        any: &[Permission],
    ) -> Result<Authorized, AccessError> {
        let credential = parse_authorization(authorization)?;
        let id = credential.client_id;
        // One answer, and about the same work, for an unknown client and a bad signature:
        // a caller cannot tell which client ids exist.
        const REFUSED: AccessError =
            AccessError::Unauthenticated("no registered client signed this request");
        let message = signed_message(id, method, path, body);
        let Some(client) = self.clients.get(id) else {
            let _ = decoy_verifier().verify(&message, &credential.signature);
            return Err(REFUSED);
        };
        client
            .verifier
            .verify(&message, &credential.signature)
            .map_err(|_| REFUSED)?;
        match any.iter().find(|p| client.permissions.contains(p)) {
            Some(_) => Ok(Authorized {
                id: id.to_owned(),
                permissions: client.permissions.clone(),
            }),
            None => Err(AccessError::Forbidden(any[0])),
        }
    }
}

/// A client whose signature verified, with what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    pub id: String,
    pub permissions: Vec<Permission>,
}

impl Authorized {
    pub fn may(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }
}

/// A verifier no signature passes (a key drawn once per process), checked against for an
/// unknown client id so that it costs what a wrong signature costs.
fn decoy_verifier() -> &'static Verifier {
    static DECOY: std::sync::OnceLock<Verifier> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let key = crate::crypto::sm2::IdentityKey::generate().expect("the OS random generator");
        key.public().verifier().expect("a generated key is valid")
    })
}

/// The development client that dev mode registers: its key is created beside the data, and
/// `tee-risk client` uses it by default.
pub struct DevClient;

impl DevClient {
    /// The development client's id.
    pub const ID: &'static str = "dev";

    /// Where its key is kept (64 hex digits, mode 0600).
    pub fn key_file(data_dir: &Path) -> PathBuf {
        data_dir.join("dev-client-key.hex")
    }

    /// A registry of the development client alone, with every permission; creates its key
    /// when missing.
    pub fn registry(data_dir: &Path) -> Result<ClientRegistry, KeyFileError> {
        let key = keyfile::load_or_create_sm2_key(&Self::key_file(data_dir))?;
        Ok(ClientRegistry::single(
            Self::ID,
            key.public(),
            vec![
                Permission::Enroll,
                Permission::Assess,
                Permission::Erase,
                Permission::Identify,
                Permission::Investigate,
            ],
        )
        .expect("the development client's entry is valid"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::sm2::IdentityKey;
    use crate::protocol::client_auth::ClientCredential;

    fn client(id: &str) -> (ClientCredential, PublicKey) {
        let key = IdentityKey::generate().unwrap();
        let public = key.public().clone();
        (ClientCredential::new(id, key), public)
    }

    #[test]
    fn a_signed_request_passes_and_any_change_fails() {
        let (alice, public) = client("alice");
        let registry = ClientRegistry::single("alice", &public, vec![Permission::Assess]).unwrap();
        let header = alice.authorization("POST", "/v1/assess", b"body").unwrap();
        let check = |header: Option<&str>, method, path, body: &[u8], needed| {
            registry.authorize(header, method, path, body, needed)
        };
        assert_eq!(
            check(
                Some(&header),
                "POST",
                "/v1/assess",
                b"body",
                Permission::Assess
            ),
            Ok("alice".into())
        );
        for (method, path, body) in [
            ("POST", "/v1/assess", &b"bodY"[..]),
            ("POST", "/v1/enroll", b"body"),
            ("DELETE", "/v1/assess", b"body"),
        ] {
            assert!(matches!(
                check(Some(&header), method, path, body, Permission::Assess),
                Err(AccessError::Unauthenticated(_))
            ));
        }
        assert_eq!(
            check(
                Some(&header),
                "POST",
                "/v1/assess",
                b"body",
                Permission::Erase
            ),
            Err(AccessError::Forbidden(Permission::Erase))
        );
        let (mallory, _) = client("alice");
        let forged = mallory
            .authorization("POST", "/v1/assess", b"body")
            .unwrap();
        for bad in [
            None,
            Some(forged.as_str()),
            Some("Bearer x"),
            Some("TR-SM2 alice"),
            Some("TR-SM2 bob:AAAA"),
            Some("TR-SM2 alice:!!"),
        ] {
            assert!(matches!(
                check(bad, "POST", "/v1/assess", b"body", Permission::Assess),
                Err(AccessError::Unauthenticated(_))
            ));
        }
    }

    #[test]
    fn clients_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (_, public) = client("a");
        std::fs::write(dir.path().join("a.pem"), public.to_pem()).unwrap();
        let write = |text: &str| {
            let path = dir.path().join("clients.toml");
            std::fs::write(&path, text).unwrap();
            ClientRegistry::load(&path)
        };
        let good = write(
            "[[client]]\nid = \"bank-1\"\npublic_key = \"a.pem\"\npermissions = [\"assess\"]\n",
        );
        assert_eq!(good.unwrap().len(), 1);
        let errors = [
            ("", "registers no client"),
            (
                "[[client]]\nid = \"a b\"\npublic_key = \"a.pem\"\npermissions = [\"assess\"]\n",
                "client id",
            ),
            (
                "[[client]]\nid = \"a\"\npublic_key = \"a.pem\"\npermissions = []\n",
                "no permissions",
            ),
            (
                "[[client]]\nid = \"a\"\npublic_key = \"a.pem\"\npermissions = [\"root\"]\n",
                "unknown variant",
            ),
            (
                "[[client]]\nid = \"a\"\npublic_key = \"missing.pem\"\npermissions = [\"assess\"]\n",
                "cannot read",
            ),
            (
                "[[client]]\nid = \"a\"\npublic_key = \"a.pem\"\npermissions = [\"assess\"]\n\
                 [[client]]\nid = \"a\"\npublic_key = \"a.pem\"\npermissions = [\"erase\"]\n",
                "twice",
            ),
        ];
        for (text, expected) in errors {
            let error = write(text).err().expect(text);
            let error = error.to_string();
            assert!(error.contains(expected), "{error} should say {expected}");
        }
    }

    #[test]
    fn credentials_load_from_hex_or_pem() {
        let dir = tempfile::tempdir().unwrap();
        let registry = DevClient::registry(dir.path()).unwrap();
        let credential = ClientCredential::new(
            DevClient::ID,
            keyfile::load_sm2_key(&DevClient::key_file(dir.path())).unwrap(),
        );
        let header = credential
            .authorization("DELETE", "/v1/users", b"")
            .unwrap();
        assert!(
            registry
                .authorize(Some(&header), "DELETE", "/v1/users", b"", Permission::Erase)
                .is_ok()
        );
        std::fs::write(dir.path().join("junk"), "not a key").unwrap();
        assert!(keyfile::load_sm2_key(&dir.path().join("junk")).is_err());
    }
}

//! Who may call the encrypted endpoints: registered clients, each with an SM2 key and a set
//! of permissions (`enroll`, `assess`, `erase`).
//!
//! A client signs every request it posts:
//! ```text
//! Authorization: TR-SM2 <client id>:<base64url DER signature>
//! signed message = "tee-risk/client-request/v1\0" ‖ client id ‖ "\0" ‖ method ‖ "\0"
//!                  ‖ path ‖ "\0" ‖ SM3(body)
//! ```
//! Why signatures and not API tokens: the host and the network are adversaries. A token
//! would sit in a file the host can read and travel in every request; a client's public key
//! reveals nothing, and a signature binds the exact method, path and body, whose envelope
//! carries a request id the replay cache spends and an `iat` it bounds. So a captured request
//! can be neither replayed nor moved to another endpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::crypto::sm2::{IdentityKey, PublicKey, Verifier};
use crate::crypto::sm3;
use crate::envelope::{b64_decode, b64_encode};

/// The `Authorization` scheme of client signatures.
pub const SCHEME: &str = "TR-SM2";
const LABEL: &[u8] = b"tee-risk/client-request/v1\0";
const MAX_CLIENT_ID_BYTES: usize = 64;

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Enroll,
    Assess,
    Erase,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Enroll => "enroll",
            Permission::Assess => "assess",
            Permission::Erase => "erase",
        }
    }
}

/// Why a request was refused access.
#[derive(Debug, PartialEq, Eq)]
pub enum AccessError {
    /// No credential, an unknown client, or a signature that does not verify (401).
    Unauthenticated(&'static str),
    /// A known client without the permission (403).
    Forbidden(Permission),
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
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the clients file {}: {e}", path.display()))?;
        Self::from_toml(&text, path.parent().unwrap_or(Path::new(".")))
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses a clients file's text; key files are relative to `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, String> {
        let file: ClientsFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut registry = Self {
            clients: HashMap::new(),
        };
        for entry in file.client {
            let pem = if entry.public_key.contains("-----BEGIN") {
                entry.public_key.clone()
            } else {
                let key_path = base.join(&entry.public_key);
                std::fs::read_to_string(&key_path).map_err(|e| {
                    format!(
                        "client `{}`: cannot read {}: {e}",
                        entry.id,
                        key_path.display()
                    )
                })?
            };
            let key = PublicKey::from_pem(&pem)
                .map_err(|_| format!("client `{}`: not an SM2 public key PEM", entry.id))?;
            registry.add(&entry.id, &key, entry.permissions)?;
        }
        if registry.clients.is_empty() {
            return Err("the file registers no client".into());
        }
        Ok(registry)
    }

    /// A registry of one client (development mode).
    pub fn single(id: &str, key: &PublicKey, permissions: Vec<Permission>) -> Result<Self, String> {
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
    ) -> Result<(), String> {
        if !valid_client_id(id) {
            return Err(format!(
                "client id `{id}`: use 1 to {MAX_CLIENT_ID_BYTES} letters, digits, '-', '_' or '.'"
            ));
        }
        if permissions.is_empty() {
            return Err(format!("client `{id}` has no permissions"));
        }
        let client = RegisteredClient {
            verifier: key
                .verifier()
                .map_err(|_| format!("client `{id}`: bad key"))?,
            permissions,
        };
        if self.clients.insert(id.to_owned(), client).is_some() {
            return Err(format!("client `{id}` is registered twice"));
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
        let credential = authorization
            .and_then(|value| value.strip_prefix(SCHEME))
            .and_then(|rest| rest.strip_prefix(' '))
            .ok_or(AccessError::Unauthenticated(
                "send `Authorization: TR-SM2 <client id>:<signature>`",
            ))?;
        let (id, signature) = credential
            .split_once(':')
            .ok_or(AccessError::Unauthenticated("malformed TR-SM2 credential"))?;
        let client = self
            .clients
            .get(id)
            .ok_or(AccessError::Unauthenticated("unknown client"))?;
        let signature =
            b64_decode(signature).ok_or(AccessError::Unauthenticated("malformed signature"))?;
        client
            .verifier
            .verify(&signed_message(id, method, path, body), &signature)
            .map_err(|_| {
                AccessError::Unauthenticated("the signature does not cover this request")
            })?;
        if !client.permissions.contains(&needed) {
            return Err(AccessError::Forbidden(needed));
        }
        Ok(id.to_owned())
    }
}

fn valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CLIENT_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn signed_message(id: &str, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    [
        LABEL,
        id.as_bytes(),
        b"\0",
        method.as_bytes(),
        b"\0",
        path.as_bytes(),
        b"\0",
        &sm3(body),
    ]
    .concat()
}

/// A client's own credential: its id and private key.
pub struct ClientCredential {
    id: String,
    key: IdentityKey,
}

impl ClientCredential {
    pub fn new(id: &str, key: IdentityKey) -> Self {
        Self {
            id: id.to_owned(),
            key,
        }
    }

    /// Loads the private key from a file of 64 hex digits or a PKCS#8 PEM.
    pub fn load(id: &str, key_file: &Path) -> Result<Self, String> {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(key_file)
                .map_err(|e| format!("cannot read {}: {e}", key_file.display()))?,
        );
        let key = if text.contains("-----BEGIN") {
            IdentityKey::from_pkcs8_pem(&text)
        } else {
            IdentityKey::from_hex(text.trim())
        }
        .map_err(|_| format!("{} is not an SM2 private key", key_file.display()))?;
        Ok(Self::new(id, key))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn public(&self) -> &PublicKey {
        self.key.public()
    }

    /// The `Authorization` header value for `method path` with `body`.
    pub fn authorization(&self, method: &str, path: &str, body: &[u8]) -> Result<String, String> {
        let signature = self
            .key
            .sign_der(&[&signed_message(&self.id, method, path, body)])
            .map_err(|e| e.to_string())?;
        Ok(format!("{SCHEME} {}:{}", self.id, b64_encode(&signature)))
    }
}

/// The development client: its key lives in `<data_dir>/dev-client-key.hex` (created on
/// first start, mode 0600) and it may do everything.
pub struct DevClient;

impl DevClient {
    pub const ID: &'static str = "dev";

    pub fn key_file(data_dir: &Path) -> PathBuf {
        data_dir.join("dev-client-key.hex")
    }

    /// The registry of the development client, creating its key when missing.
    pub fn registry(data_dir: &Path) -> Result<ClientRegistry, String> {
        let key = crate::attest::sim::SimPlatform::load_or_create_key(&Self::key_file(data_dir))?;
        ClientRegistry::single(
            Self::ID,
            key.public(),
            vec![Permission::Enroll, Permission::Assess, Permission::Erase],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert!(error.contains(expected), "{error} should say {expected}");
        }
    }

    #[test]
    fn credentials_load_from_hex_or_pem() {
        let dir = tempfile::tempdir().unwrap();
        let registry = DevClient::registry(dir.path()).unwrap();
        let credential =
            ClientCredential::load(DevClient::ID, &DevClient::key_file(dir.path())).unwrap();
        let header = credential
            .authorization("DELETE", "/v1/users", b"")
            .unwrap();
        assert!(
            registry
                .authorize(Some(&header), "DELETE", "/v1/users", b"", Permission::Erase)
                .is_ok()
        );
        std::fs::write(dir.path().join("junk"), "not a key").unwrap();
        assert!(ClientCredential::load("x", &dir.path().join("junk")).is_err());
    }
}

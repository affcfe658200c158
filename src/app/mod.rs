//! The application: configuration, the master key and key files, start-up of the server with
//! its background tasks, and shutdown. The top of the library: it wires the layers below
//! together and nothing below imports it.

pub mod config;
pub mod join;
pub mod secrets;
pub mod server;
mod tasks;

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::crypto::keyfile::KeyFileError;
use crate::service::StartError;
use crate::service::access::ClientsError;
use crate::store::{StoreError, VaultError};

pub use config::{Config, ConfigError};
pub use secrets::{MasterKeyEnv, open_vault};
pub use server::serve;

/// Why the service could not start or stopped with a fault. Each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `DB_MASTER_KEY` is not set and dev mode is off.
    #[error(
        "DB_MASTER_KEY is not set. Set it to 64 hex characters (for example the output of \
         `openssl rand -hex 32`, kept in your secret store), or run with --dev for a local \
         development key."
    )]
    NoMasterKey,
    /// Custodian mode with a master key in the environment.
    #[error(
        "keys.source = \"custodians\" but DB_MASTER_KEY or DB_MASTER_KEY_PREVIOUS is set: in \
         custodian mode the host must never hold the key; unset them (the custodians unseal \
         the service: docs/OPERATIONS.md, \"Custodians\")"
    )]
    KeyInEnvironment,
    /// The custodians file is wrong.
    #[error(transparent)]
    Roster(#[from] crate::service::custody::RosterError),
    /// A master key (from the env or the dev key file) does not parse; the input is never
    /// echoed.
    #[error("{origin}: {reason}")]
    BadMasterKey {
        /// `DB_MASTER_KEY`, `DB_MASTER_KEY_PREVIOUS` or the dev key file.
        origin: String,
        /// Why.
        reason: String,
    },
    /// Dev mode pointed at a database that has no development key beside it.
    #[error(
        "{0} holds a database but no {dev_key}: it was not created in dev mode. Start it with \
         DB_MASTER_KEY (without --dev), or use another data folder for development.",
        dev_key = secrets::DEV_KEY_FILE
    )]
    NotADevFolder(PathBuf),
    /// A secret file readable or writable by others.
    #[error(
        "{path} has permissions {mode:04o}: it holds the development master key, so no one but \
         its owner may read it. Run `chmod 600 {path}` (as OpenSSH refuses such private keys)."
    )]
    SecretFileOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file could not be read, created or parsed.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// The development client's key file could not be read or created.
    #[error("the development client: {0}")]
    DevClient(KeyFileError),
    /// A folder or file the service writes could not be.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The store could not be opened: in use, or the engine's own cause (corruption, a
    /// data folder that is a file, a read-only file system…).
    #[error(
        "[storage] backend = \"postgres\" needs the database URL in TEE_RISK_DATABASE_URL \
         (postgres://user:password@host:port/database)"
    )]
    NoDatabaseUrl,
    #[error("cannot open the database: {source}")]
    StoreOpen {
        /// The engine's error.
        source: StoreError,
    },
    /// The vault refused to open (wrong key, corruption…): its message says what to do.
    #[error("cannot open the database: {0}")]
    Vault(#[from] VaultError),
    /// The service could not be built.
    #[error("cannot start the service: {0}")]
    Start(#[from] StartError),
    /// The clients file is wrong.
    #[error(transparent)]
    Clients(#[from] ClientsError),
    /// Production without a clients file.
    #[error(
        "no clients registered: set access.clients_file (or --clients / TEE_RISK_CLIENTS) to a \
         clients file (docs/OPERATIONS.md); refusing to serve without client credentials"
    )]
    NoClients,
    /// A hardware attestation mode on a machine without its device.
    #[error("attestation.mode = \"{mode}\" needs {device}: run inside such a guest")]
    NoTeeDevice {
        /// The configured mode.
        mode: &'static str,
        /// The device it needs.
        device: &'static str,
    },
    /// Sim mode on a machine that has a TEE.
    #[error(
        "{0} exists: this machine has a TEE, so simulated attestation is refused (use the \
         hardware attestation mode)"
    )]
    TeeDevicePresent(&'static str),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The HTTP server failed while running.
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    /// `cluster.policy` could not be loaded.
    #[error("cluster.policy: {0}")]
    ClusterPolicy(#[from] crate::attest::PolicyError),
    /// No peer admitted this replica: it does not serve (`app::join`).
    #[error(
        "cannot join the cluster: {0}. A replica serves only with the cluster's identity;          check the peers, the cluster policy (measurement, TEE kind) and the peers' logs"
    )]
    Join(String),
}

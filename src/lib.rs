//! tee-risk: risk scoring of face-verification attempts inside a TEE, with SM2, SM3 and SM4.
//!
//! The layers, top to bottom; each imports only layers below it (docs/ARCHITECTURE.md):
//!
//! ```text
//! app        config, secrets, start-up, background tasks           (feature `server`)
//! http       routes, handlers, service error → status + code      (feature `server`)
//! service    one request's flow, service keys, replay, limits, access (feature `server`)
//! risk · store · attest · protocol
//!            scoring (pure) · sealed storage · attestation · the wire (pure)
//!            (`risk`: features `server` or `lab`; `store`: `server`)
//! crypto     the only code that touches key bytes                 obs: metrics, clock
//! ```
//! Beside them, for callers outside the TEE: `client` (feature `client`) and `lab`
//! (feature `lab`: datasets, training, evaluation, plots).

#![deny(unsafe_code)]

#[cfg(feature = "server")]
pub mod app;
pub mod attest;
#[cfg(feature = "client")]
pub mod client;
pub mod crypto;
#[cfg(feature = "server")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "lab")]
pub mod lab;
pub mod obs;
pub mod protocol;
#[cfg(feature = "engine")]
pub mod risk;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
pub mod store;

pub use attest::{AttestError, Evidence, Policy, TeeKind, Verified};
pub use crypto::CryptoError;
pub use protocol::client_auth::ClientCredential;
#[cfg(feature = "engine")]
pub use risk::{Decision, Reason, RiskPolicy};
#[cfg(feature = "server")]
pub use service::{Service, ServiceError, Settings};
#[cfg(feature = "server")]
pub use store::{MasterKey, Vault, VaultError};

//! tee-risk: risk scoring of face-verification attempts inside a TEE, with SM2, SM3 and SM4.
//!
//! The public API is what runs outside the TEE: [`client`], the client library (attest the
//! service, seal requests, accept only answers that check out; its answers are the typed
//! payloads of [`protocol::reply`]); [`protocol`], the wire; [`cli::main`], the `tee-risk`
//! command; and at the root the attestation policy and the key types a client holds.
//!
//! The service's layers are private to the crate (docs/ARCHITECTURE.md), top to bottom,
//! each importing only layers below it:
//!
//! ```text
//! app        config, secrets, start-up, background tasks           (feature `server`)
//! http       routes, handlers, service error → status + code      (feature `server`)
//! service    one request's flow, service keys, replay, limits, access (feature `server`)
//! risk · store · attest · protocol
//!            scoring (pure) · sealed storage · attestation · the wire (pure)
//!            (`risk`: features `server` or `lab`; `store`: `server`)
//! crypto     key types and primitives; key bytes leave them only through `expose`
//! obs        metrics, the clock                 lab: datasets, training, evaluation (`lab`)
//! ```

#![deny(unsafe_code)]

#[doc(hidden)]
pub mod internals;

#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "client")]
pub mod client;
pub mod protocol;

// The layers, private to the crate (inside it: `crate::store`, …). From outside they are
// reachable only through `internals`, the door for this crate's own tests, benches and fuzz
// targets, with no stability promise.
#[cfg(feature = "lab")]
use internals::lab;
#[cfg(feature = "engine")]
use internals::risk;
#[cfg(feature = "server")]
use internals::{app, http, service, store};
use internals::{attest, crypto, obs};

// The rest of the public API: what a client needs to attest a service and hold its keys.
pub use attest::release::{
    IncompleteReference, LogEntry, Release, ReleaseCheck, ReleaseError, ReleaseLog,
    ReleaseManifest, ReleaseMeasurement, SignedManifest,
};
pub use attest::{
    AttestError, Check, Evidence, PlatformVerified, Policy, PolicyError, TeeKind, Verified,
};
pub use crypto::CryptoError;
pub use crypto::keyfile::{load_sm2_key, parse_sm2_key};
pub use crypto::sm2::{IdentityKey, PublicKey};

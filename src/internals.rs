//! The door to the crate's layers, for its own tests, benches and fuzz targets (hidden from
//! the documentation, no stability promise). Inside the crate the layers are `crate::store`,
//! `crate::service`, …; a program outside that is not this crate's own test code uses the
//! public API at the root (`client`, `protocol`, the attestation policy and the key types).

#[cfg(feature = "server")]
#[path = "app/mod.rs"]
pub mod app;
#[path = "attest/mod.rs"]
pub mod attest;
#[path = "crypto/mod.rs"]
pub mod crypto;
#[cfg(feature = "fuzzing")]
#[path = "fuzzing.rs"]
pub mod fuzzing;
#[cfg(feature = "server")]
#[path = "http/mod.rs"]
pub mod http;
#[cfg(feature = "lab")]
#[path = "lab/mod.rs"]
pub mod lab;
#[path = "obs/mod.rs"]
pub mod obs;
/// The wire (public at the root too).
pub use crate::protocol;
#[cfg(feature = "engine")]
#[path = "risk/mod.rs"]
pub mod risk;
#[cfg(feature = "server")]
#[path = "service/mod.rs"]
pub mod service;
#[cfg(feature = "server")]
#[path = "store/mod.rs"]
pub mod store;

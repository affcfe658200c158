//! tee-risk: risk scoring of face-verification attempts inside a TEE, with SM2, SM3 and SM4.
//!
//! Data flows one way: `api` (HTTP) → `service` (one request's flow) → `risk`, `store`,
//! `envelope` → `crypto` (the only module that touches raw key bytes).

#![deny(unsafe_code)]

pub mod access;
pub mod api;
pub mod attest;
pub mod client;
pub mod config;
pub mod crypto;
pub mod dataset;
pub mod envelope;
pub mod error;
pub mod features;
pub mod fuzzing;
pub mod keyset;
pub mod limits;
pub mod metrics;
pub mod replay;
pub mod risk;
pub mod server;
pub mod service;
pub mod store;
pub mod time;

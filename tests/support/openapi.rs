//! docs/openapi.yaml held to the real server (tests/openapi_check: compiled once, not in
//! every test binary).

// Unused in the test binaries that check no answer against the document.
#[allow(unused_imports)]
pub use tee_risk_openapi_check::*;

//! libFuzzer target: `tee_risk::internals::fuzzing::tdx_quote` must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tee_risk::internals::fuzzing::tdx_quote(data));

//! libFuzzer target: `tee_risk::internals::fuzzing::config` must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tee_risk::internals::fuzzing::config(data));

//! libFuzzer target: `tee_risk::internals::fuzzing::evidence` must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tee_risk::internals::fuzzing::evidence(data));

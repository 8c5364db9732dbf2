#![no_main]
//! See `clusterdns::fuzzing::upstream_response` for what this target drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| clusterdns::fuzzing::upstream_response(data));

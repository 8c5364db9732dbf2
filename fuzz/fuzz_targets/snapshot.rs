#![no_main]
//! See `clusterdns::fuzzing::snapshot` for what this target drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| clusterdns::fuzzing::snapshot(data));

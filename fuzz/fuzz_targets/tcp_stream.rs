#![no_main]
//! See `clusterdns::fuzzing::tcp_stream` for what this target drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| clusterdns::fuzzing::tcp_stream(data));

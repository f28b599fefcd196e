//! The RFC 5321 path parsers: refuse, never panic.
//! The body and its checks: `relayward_fuzz::path` (crates/fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| relayward_fuzz::path::run(input));

//! Whole SMTP sessions in-process: the first byte picks the listener, the rest is the client.
//! The body and its checks: `relayward_fuzz::session` (crates/fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| relayward_fuzz::session::run(input));

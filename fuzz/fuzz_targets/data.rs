//! DATA framing: the same outcome and content however reads split the stream.
//! The body and its checks: `relayward_fuzz::data` (crates/fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| relayward_fuzz::data::run(input));

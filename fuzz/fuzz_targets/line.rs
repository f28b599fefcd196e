//! The line buffer: the same lines however reads split the stream.
//! The body and its checks: `relayward_fuzz::line` (crates/fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| relayward_fuzz::line::run(input));

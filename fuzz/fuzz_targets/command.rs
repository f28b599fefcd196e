//! The command parser: whatever parses reads back the same from its `to_line`.
//! The body and its checks: `relayward_fuzz::command` (crates/fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| relayward_fuzz::command::run(input));

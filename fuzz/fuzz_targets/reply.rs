//! The reply parser, as the probe and the delivery client read hostile servers with it.
//! The body and its checks: `relayward_fuzz::reply` (crates/fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| relayward_fuzz::reply::run(input));

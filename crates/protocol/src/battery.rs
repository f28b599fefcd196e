//! The relay-trick battery: every known way to talk a server into relaying.
//!
//! One list, used by `relayward probe` against live servers and by `relayward check-config`
//! against the relay policy in-process, so the server is always tested with the tester's tricks.
//! (Owned by the probe work: see issue 4.)

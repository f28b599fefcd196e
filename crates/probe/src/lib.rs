//! relayward's open-relay tester (`relayward probe`).
//!
//! It runs the relay-trick battery of [`relayward_protocol::battery`] against live SMTP
//! servers over a careful dialogue, calibrates against accept-all servers, optionally proves
//! relaying by sending a token to its own listener, and reports one verdict per target.
//!
//! - [`cli`]: the command line (`ProbeArgs`, `run`), wired into the `relayward` binary.
//! - [`probe`]: one target; [`scan`]: many, with concurrency and a rate limit.
//! - [`verdict`]: replies → outcomes → verdict, pure.
//! - [`report`]: the report and its JSON schema; [`output`]: table, transcript, JSON lines.
//! - [`conn`], [`session`], [`tls`]: the bounded client dialogue.
//! - [`special`]: the session-level tricks (XCLIENT, PROXY, failed AUTH, pipelining, mixed
//!   recipients) beside the MAIL/RCPT battery.
//! - [`exclude`], [`resume`]: scanning at scale (`--exclude-file`, `--resume`); [`zone`]: the
//!   proven relays as an rbldnsd zone (`--zone-out`).
//! - [`confirm`]: the proof-of-relay listener; [`dnsbl`]: blocklist lookups; [`mx`]: the MX
//!   hosts of a mail domain as targets.

pub mod cli;
pub mod config;
pub mod confirm;
pub mod conn;
pub mod dnsbl;
pub mod exclude;
pub mod mx;
pub mod output;
pub mod probe;
pub mod report;
pub mod resume;
pub mod scan;
pub mod session;
pub mod special;
pub mod target;
pub mod tls;
pub mod transcript;
pub mod verdict;
pub mod zone;

pub use cli::{ProbeArgs, run};
pub use config::{ProbeConfig, Target, TlsMode};
pub use probe::probe_target;
pub use report::{Outcome, TargetReport, Verdict};

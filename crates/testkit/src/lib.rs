//! What relayward's tests share: peers on loopback, the client that speaks to them like a
//! transcript, and the fixtures they need. A dev-dependency only (`publish = false`).
//!
//! - [`dns`]: an authoritative DNS server on `127.0.0.1:0` serving a [`dns::Zone`] built in a
//!   few lines, recording the questions it was asked; DNSSEC-signed on the fly with a test key
//!   ([`dns::DnssecKey`]) for the DANE tests.
//! - [`smtp_server`]: a scripted receiving SMTP server (STARTTLS, AUTH, chosen replies) that
//!   records what it got; async, or on a thread of its own for blocking tests.
//! - [`client`]: [`client::Smtp`], the transcript client (`.send("EHLO x").expect(250)`), over
//!   TCP or over an in-memory pipe to an in-process session.
//! - [`pki`]: a test CA and a server certificate it signed; [`pki::TestCa`] for several.
//! - [`https`]: an HTTPS server serving fixed pages by host (MTA-STS policy servers).
//! - [`config`]: the standard test configuration and the test users' password hash.
//! - [`queue`]: [`queue::MemoryQueue`], a [`relayward_queue::Queue`] in memory, for sessions
//!   run in-process.
//! - [`postgres`]: a throw-away PostgreSQL cluster (initdb, pg_ctl on a loopback port), one
//!   database per test.
//! - [`load`]: load-generator threads for crash and outage tests, and their ledger.
//! - [`net`]: one port free on several loopback addresses (MX hosts share `mx_port`).
//! - [`os`]: whether the tests run as root, and SIGKILL for a child they started.
//! - [`wait`]: bounded waits, and external programs run with a time limit.
//! - [`http`]: a blocking HTTP/1.1 client from a chosen loopback source address, and
//!   [`http::bound_connect`] for any TCP client that must come from one (the probe service's
//!   connect-back door probes the caller's address).
//!
//! It depends on the protocol, configuration and queue crates only, never on the server,
//! delivery or probe crates, so that any of those may use it in its own tests.

pub mod client;
pub mod config;
pub mod dns;
pub mod http;
pub mod https;
pub mod load;
pub mod net;
pub mod os;
pub mod pki;
pub mod postgres;
pub mod queue;
pub mod smtp_server;
pub mod wait;

pub use client::Smtp;
pub use wait::WAIT;

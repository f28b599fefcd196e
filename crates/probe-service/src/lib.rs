//! `relayward probe-service`: the open-relay tester behind two doors, for people who will never
//! install a command-line tool.
//!
//! - a **telnet connect-back door** ([`telnet`]): connect, and the service tests the mail server
//!   at the address you came from, streaming the dialogue into your window, as
//!   `telnet relay-test.mail-abuse.org` once did;
//! - a **web page and JSON API** ([`http`], [`pages`]): a form, a live transcript (server-sent
//!   events, or a self-refreshing page without JavaScript), a results page with a permanent
//!   URL and its JSON twin.
//!
//! The relay test is the probe's engine (`relayward_probe`), unchanged: [`service`] decides
//! what it may run against ([`admission`], [`ranges`]: no private targets, `exclude`), how often
//! ([`limits`]), streams its transcript ([`live`]) and keeps the results ([`store`],
//! [`record`]). [`config`] is the `[probe_service]` file; [`cli`] the subcommand.

pub mod admission;
pub mod cli;
pub mod config;
pub mod http;
pub mod http_listener;
pub mod limits;
pub mod live;
pub mod pages;
pub mod ranges;
pub mod record;
pub mod service;
pub mod store;
pub mod telnet;

pub use cli::{ServiceArgs, run};

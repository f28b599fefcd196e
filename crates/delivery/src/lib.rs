//! relayward's outbound side: the queue runner and everything it needs.
//!
//! - [`runner`]: picks due messages from the [`Queue`](relayward_queue::Queue), groups
//!   recipients per destination, delivers, records each outcome durably, bounces.
//! - [`mx`]: MX resolution with the RFC 5321 §5.1 / RFC 7505 rules (hickory-resolver).
//! - [`client`]: the SMTP client (EHLO, STARTTLS, AUTH, PIPELINING, SIZE, 8BITMIME).
//! - [`tls`]: verifying (smart host) and opportunistic (MX) TLS client configurations.
//! - [`retry`]: the backoff schedule. [`dsn`]: RFC 3464 bounces.
//! - [`admin`]: `relayward queue …` (list, show, retry, delete, hold, release).
//! - [`config`]: [`DeliveryConfig`], which the server maps its TOML onto.

pub mod admin;
pub mod client;
pub mod config;
pub mod dsn;
pub mod mx;
pub mod outcome;
pub mod retry;
pub mod runner;
pub mod tls;

pub use config::{DeliveryConfig, Route, RouteTarget, SmarthostTls, Timeouts};
pub use retry::RetrySchedule;
pub use runner::Runner;

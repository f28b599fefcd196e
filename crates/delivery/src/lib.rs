//! relayward's outbound side: the queue runner and everything it needs.
//!
//! - [`runner`]: picks due messages from the [`Queue`](relayward_queue::Queue), groups
//!   recipients per destination, delivers, records each outcome durably, bounces.
//! - [`mx`]: MX resolution with the RFC 5321 §5.1 / RFC 7505 rules (hickory-resolver).
//! - [`client`]: the SMTP client (EHLO, STARTTLS, AUTH, PIPELINING, SIZE, 8BITMIME, CHUNKING).
//! - [`tls`]: verifying (smart host) and opportunistic (MX) TLS client configurations.
//! - [`tls_policy`]: which TLS each MX host gets (MTA-STS, `[[tls_policy]]`), with
//!   [`mta_sts`] (RFC 8461 discovery, fetch, cache), [`dane`] (RFC 7672 TLSA with DNSSEC)
//!   and [`tls_report`] (outcomes kept); [`tlsrpt`]: RFC 8460 aggregate reports.
//! - [`retry`]: the backoff schedule. [`dsn`]: RFC 3464 bounces and delay notices.
//! - [`delay`]: who is owed a delay notice, and from when (RFC 3461 `NOTIFY=DELAY`).
//! - [`local`]: Maildir delivery, for the runner and for the session's local mail.
//! - [`notice`]: RFC 3461 success notices for mail delivered into a Maildir.
//! - [`prepare`]: fitting a message to a peer (SMTPUTF8, 8BITMIME, long lines, DSN).
//! - [`downgrade`]: 8-bit MIME made 7-bit clean for peers without 8BITMIME (RFC 6152 §3).
//! - [`admin`]: `relayward queue …` (list, show, retry, delete, hold, release).
//! - [`config`]: [`DeliveryConfig`], the runner's settings from `[delivery]` and `[dns]`;
//!   [`context`]: those settings checked and prepared, with the routing table.
//!
//! Where each recipient goes was decided when it was accepted: the queue stores the router's
//! [`Route`](relayward_protocol::route::Route) with it and the runner follows it. The runner
//! reads everything else from the [`DeliveryContext`] of the configuration in force, which a
//! reload replaces (`relayward serve` hands it a `Live` view of its snapshot):
//!
//! ```no_run
//! # async fn demo(queue: std::sync::Arc<dyn relayward_queue::Queue>) -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use relayward_delivery::{DeliveryConfig, DeliveryContext, Runner};
//! let config = relayward_config::Config::load("/etc/relayward/relayward.toml".as_ref())?;
//! let settings = DeliveryConfig::from_config(&config);
//! // Checks the settings; reads the password and CA files.
//! let context = DeliveryContext::new(settings, Arc::new(config.router()))?;
//! let runner = Runner::with_context(queue, context);
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let task = tokio::spawn(runner.run(async move {
//!     let _ = stopped.await;
//! }));
//! // … on shutdown:
//! let _ = stop.send(());
//! task.await?;
//! # Ok(())
//! # }
//! ```

pub mod admin;
pub mod client;
pub mod config;
pub mod context;
pub mod dane;
pub mod delay;
pub mod dkim;
pub mod downgrade;
pub mod dsn;
pub mod due;
pub mod https;
mod journal;
pub mod local;
pub mod loops;
pub mod mta_sts;
pub mod mx;
pub mod notice;
pub mod outcome;
pub mod prepare;
pub mod retry;
pub mod runner;
pub mod shape;
pub mod tls;
pub mod tls_policy;
pub mod tls_report;
pub mod tlsrpt;
pub mod verify;

pub use config::{DeliveryConfig, SmarthostTls, Timeouts};
pub use context::DeliveryContext;
pub use loops::OwnListeners;
pub use retry::RetrySchedule;
pub use runner::Runner;
pub use verify::{RecipientVerifier, VerifyCache};

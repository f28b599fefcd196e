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
//!
//! Starting the runner next to the SMTP listeners (same queue instance):
//!
//! ```no_run
//! # async fn demo(queue: std::sync::Arc<dyn relayward_queue::Queue>) -> anyhow::Result<()> {
//! use relayward_delivery::{DeliveryConfig, Route, RouteTarget, Runner};
//! let mut config = DeliveryConfig::new("mx.example.test", "/var/lib/relayward/mail");
//! config.local_domains = vec!["example.test".into()];
//! config.routes = vec![Route {
//!     domain: "corp.example.test".into(),
//!     to: RouteTarget::parse("smtp://10.0.0.5:25")?,
//! }];
//! config.max_queue_lifetime = humantime::parse_duration("5d")?;
//! let runner = Runner::new(queue, config)?; // validates; reads the password and CA files
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
pub mod dsn;
pub mod mx;
pub mod outcome;
pub mod retry;
pub mod runner;
pub mod tls;

pub use config::{DeliveryConfig, MailboxList, Route, RouteTarget, SmarthostTls, Timeouts};
pub use retry::RetrySchedule;
pub use runner::Runner;

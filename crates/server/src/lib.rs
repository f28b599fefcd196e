//! relayward's receiving relay: configuration, relay policy, authentication, TLS and the SMTP
//! session. "Where is relay decided?" — in [`policy`], and only there.

pub mod auth;
/// The configuration file lives in its own crate (`relayward-config`), shared with delivery.
pub use relayward_config as config;
pub mod conn;
pub mod extensions;
pub mod listener;
pub mod local;
pub mod policy;
pub mod pregreet;
pub mod proxy;
pub mod ratelimit;
pub mod session;
pub mod sign;
pub mod tls;
pub mod trace;
pub mod verify;

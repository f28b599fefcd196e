//! relayward's receiving relay: configuration, relay policy, authentication, TLS and the SMTP
//! session. "Where is relay decided?" — in [`policy`], and only there.

pub mod auth;
pub mod config;
pub mod conn;
pub mod listener;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod session;
pub mod tls;
pub mod trace;

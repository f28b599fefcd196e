//! relayward's receiving relay: configuration, relay policy, authentication, TLS and the SMTP
//! session. "Where is relay decided?" — in [`policy`], and only there.

pub mod auth;
pub mod config;
pub mod policy;
pub mod tls;

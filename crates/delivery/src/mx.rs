//! Where mail for a domain goes: relayward's one MX resolver, shared with the open-relay
//! tester, lives in [`relayward_dns`] (RFC 5321 §5.1 implicit MX and preference order, RFC 7505
//! null MX, temporary and permanent failures told apart). Here: the delivery agent's options.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::ResolverBuilder;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
pub use relayward_dns::{DnsFailure, MxHost, MxResolver};

use crate::config::ConfigError;

/// The delivery agent's resolver options: the configured timeout and cache, one try per query
/// (the runner retries on its own schedule).
pub(crate) fn options(cache_size: u64, timeout: Duration) -> relayward_dns::Options {
    relayward_dns::Options {
        timeout,
        attempts: 1,
        cache_size,
    }
}

/// A resolver builder with those options: where both the MX resolver and the validating DANE
/// resolver ([`crate::dane`]) start from.
pub(crate) fn resolver_builder(
    nameservers: &[SocketAddr],
    cache_size: u64,
    timeout: Duration,
) -> Result<ResolverBuilder<TokioRuntimeProvider>, ConfigError> {
    relayward_dns::resolver_builder(nameservers, options(cache_size, timeout))
        .map_err(|e| ConfigError::Resolver(e.to_string()))
}

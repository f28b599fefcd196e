//! Where mail for a domain goes: MX lookup with the RFC 5321 §5.1 rules.
//!
//! - MX records sorted by preference, hosts of equal preference shuffled (load spreading).
//! - No MX records: the domain itself is the implicit MX (its A/AAAA records).
//! - Null MX (RFC 7505: a single `0 .`): the domain accepts no mail, a permanent failure.
//! - NXDOMAIN: permanent. SERVFAIL, timeouts, refused: temporary (retry later).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{ResolverBuilder, TokioResolver};
use rand::seq::SliceRandom;

use crate::config::ConfigError;

/// One mail exchanger, in the order to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// Host name without the trailing dot.
    pub name: String,
    pub preference: u16,
}

/// Why the hosts (or addresses) of a domain could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsFailure {
    /// Retry later: SERVFAIL, timeout, no answer from any nameserver.
    #[error("temporary DNS failure for {name}: {reason}")]
    Temporary { name: String, reason: String },
    /// The domain does not exist (NXDOMAIN) or has no address at all.
    #[error("{name}: {reason}")]
    NotFound { name: String, reason: String },
    /// RFC 7505 null MX: the domain states it accepts no mail.
    #[error("{0} does not accept mail (null MX)")]
    NullMx(String),
}

/// The DNS resolver the runner uses (hickory, tokio runtime).
#[derive(Clone)]
pub struct MxResolver {
    inner: TokioResolver,
}

impl MxResolver {
    /// Explicit nameservers (UDP and TCP on the given port each) or, when `nameservers` is
    /// empty, the system configuration (`/etc/resolv.conf`).
    pub fn new(
        nameservers: &[SocketAddr],
        cache_size: u64,
        timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let inner = resolver_builder(nameservers, cache_size, timeout)?
            .build()
            .map_err(|e| ConfigError::Resolver(e.to_string()))?;
        Ok(Self { inner })
    }

    /// The mail exchangers of `domain`, in the order to try.
    pub async fn mx_hosts(&self, domain: &str) -> Result<Vec<MxHost>, DnsFailure> {
        let fqdn = absolute(domain);
        match self.inner.lookup(fqdn.as_str(), RecordType::MX).await {
            Ok(lookup) => {
                let records: Vec<(u16, String, bool)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some((
                            mx.preference,
                            trim_dot(&mx.exchange.to_ascii()),
                            mx.exchange.is_root(),
                        )),
                        _ => None,
                    })
                    .collect();
                order_mx(domain, records)
            }
            Err(e) if e.is_nx_domain() => {
                Err(not_found(domain, "domain does not exist (NXDOMAIN)"))
            }
            Err(e) if e.is_no_records_found() => Ok(implicit_mx(domain)),
            Err(e) => Err(temporary(domain, &e)),
        }
    }

    /// The TXT records at `name`, each one's strings joined (RFC 7208 §3.3 style); none for a
    /// name that does not exist or has no TXT record. `Err` only for a temporary failure.
    pub async fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, DnsFailure> {
        let fqdn = absolute(name);
        match self.inner.lookup(fqdn.as_str(), RecordType::TXT).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => Some(txt.txt_data.iter().flatten().copied().collect()),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(temporary(name, &e)),
        }
    }

    /// The addresses of one host (A and AAAA). An IP literal is returned as is.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsFailure> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let fqdn = absolute(host);
        match self.inner.lookup_ip(fqdn.as_str()).await {
            Ok(ips) => {
                let list: Vec<IpAddr> = ips.iter().collect();
                if list.is_empty() {
                    Err(not_found(host, "host has no address"))
                } else {
                    Ok(list)
                }
            }
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => {
                Err(not_found(host, "host has no address (A/AAAA)"))
            }
            Err(e) => Err(temporary(host, &e)),
        }
    }
}

/// A resolver builder for `nameservers` (or the system configuration), tuned: the one place
/// both the MX resolver and the validating DANE resolver ([`crate::dane`]) start from.
pub(crate) fn resolver_builder(
    nameservers: &[SocketAddr],
    cache_size: u64,
    timeout: Duration,
) -> Result<ResolverBuilder<TokioRuntimeProvider>, ConfigError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if nameservers.is_empty() {
        TokioResolver::builder(provider).map_err(|e| ConfigError::Resolver(e.to_string()))?
    } else {
        let servers = nameservers.iter().map(nameserver).collect();
        TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
    };
    tune(builder.options_mut(), cache_size, timeout);
    Ok(builder)
}

fn nameserver(addr: &SocketAddr) -> NameServerConfig {
    let mut config = NameServerConfig::udp_and_tcp(addr.ip());
    for connection in &mut config.connections {
        connection.port = addr.port();
    }
    config
}

fn tune(opts: &mut ResolverOpts, cache_size: u64, timeout: Duration) {
    opts.cache_size = cache_size;
    opts.timeout = timeout;
    opts.attempts = 1;
    // Names we look up are absolute; never append search domains to them.
    opts.ndots = 0;
}

/// Applies the null-MX rule, sorts by preference and shuffles hosts of equal preference.
fn order_mx(domain: &str, records: Vec<(u16, String, bool)>) -> Result<Vec<MxHost>, DnsFailure> {
    if records.is_empty() {
        return Ok(implicit_mx(domain));
    }
    // RFC 7505 §3: a single MX with an empty (root) exchange. A root exchange among other
    // records is a broken zone; skip that record and use the rest.
    if records.len() == 1 && records[0].2 {
        return Err(DnsFailure::NullMx(domain.to_string()));
    }
    let mut hosts: Vec<MxHost> = records
        .into_iter()
        .filter(|(_, _, root)| !root)
        .map(|(preference, name, _)| MxHost { name, preference })
        .collect();
    hosts.shuffle(&mut rand::rng());
    // A stable sort keeps the shuffled order within each preference.
    hosts.sort_by_key(|h| h.preference);
    Ok(hosts)
}

fn implicit_mx(domain: &str) -> Vec<MxHost> {
    vec![MxHost {
        name: domain.to_string(),
        preference: 0,
    }]
}

fn absolute(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

fn trim_dot(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_string()
}

fn not_found(name: &str, reason: &str) -> DnsFailure {
    DnsFailure::NotFound {
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

fn temporary(name: &str, error: &NetError) -> DnsFailure {
    DnsFailure::Temporary {
        name: name.to_string(),
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_by_preference_and_equal_ones_shuffled() {
        let records = vec![
            (20, "c".to_string(), false),
            (10, "a".to_string(), false),
            (10, "b".to_string(), false),
        ];
        let mut seen_b_first = false;
        let mut seen_a_first = false;
        for _ in 0..200 {
            let hosts = order_mx("d.test", records.clone()).unwrap();
            assert_eq!(hosts[2].name, "c");
            seen_a_first |= hosts[0].name == "a";
            seen_b_first |= hosts[0].name == "b";
        }
        assert!(seen_a_first && seen_b_first);
    }

    #[test]
    fn null_mx_and_implicit_mx() {
        assert_eq!(
            order_mx("d.test", vec![(0, String::new(), true)]),
            Err(DnsFailure::NullMx("d.test".into()))
        );
        assert_eq!(order_mx("d.test", vec![]).unwrap()[0].name, "d.test");
        let mixed = order_mx(
            "d.test",
            vec![(0, String::new(), true), (5, "m".into(), false)],
        );
        assert_eq!(mixed.unwrap().len(), 1);
    }
}

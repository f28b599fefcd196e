//! DNS for relayward's two SMTP clients: where mail for a domain goes, asked once, the same way
//! for the delivery agent (which sends the mail) and the open-relay tester (which probes the
//! MX hosts of a domain).
//!
//! - [`resolver`]: a hickory resolver for given nameservers or the system configuration.
//! - [`MxResolver`]: a domain's mail exchangers and a host's addresses by the RFC 5321 §5.1
//!   rules (implicit MX, preference order, equal preferences shuffled) and RFC 7505 (null MX),
//!   TXT records (MTA-STS), every failure classed as temporary or permanent ([`DnsFailure`]).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{ResolverBuilder, TokioResolver};
use rand::seq::SliceRandom;

/// How a resolver asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// How long one query may take.
    pub timeout: Duration,
    /// How many times a query is sent before it fails.
    pub attempts: usize,
    /// Cached answers (0: none, every answer fresh).
    pub cache_size: u64,
}

/// The resolver could not be set up (unreadable `/etc/resolv.conf`, bad options).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ResolverError(String);

/// A resolver asking `nameservers` (UDP and TCP, each on its own port) or, when that is empty,
/// the servers of the system configuration (`/etc/resolv.conf`). Names are always asked as
/// absolute names: search domains are never appended.
pub fn resolver(
    nameservers: &[SocketAddr],
    options: Options,
) -> Result<TokioResolver, ResolverError> {
    resolver_builder(nameservers, options)?
        .build()
        .map_err(|e| ResolverError(e.to_string()))
}

/// [`resolver`] before it is built, for a caller that adds to it (DNSSEC trust anchors).
pub fn resolver_builder(
    nameservers: &[SocketAddr],
    options: Options,
) -> Result<ResolverBuilder<TokioRuntimeProvider>, ResolverError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if nameservers.is_empty() {
        TokioResolver::builder(provider).map_err(|e| ResolverError(e.to_string()))?
    } else {
        let servers = nameservers.iter().map(nameserver).collect();
        TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
    };
    let opts = builder.options_mut();
    opts.timeout = options.timeout;
    opts.attempts = options.attempts;
    opts.cache_size = options.cache_size;
    opts.ndots = 0;
    Ok(builder)
}

fn nameserver(addr: &SocketAddr) -> NameServerConfig {
    let mut config = NameServerConfig::udp_and_tcp(addr.ip());
    for connection in &mut config.connections {
        connection.port = addr.port();
    }
    config
}

/// One mail exchanger, in the order to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// Host name, lower-case, without the trailing dot.
    pub name: String,
    pub preference: u16,
    /// The domain itself, for want of MX records (RFC 5321 §5.1).
    pub implicit: bool,
}

/// Why the hosts (or addresses) of a domain could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsFailure {
    /// Retry later: SERVFAIL, timeout, no answer from any nameserver, MX records that name no
    /// usable host (a broken zone its admin may yet fix).
    #[error("temporary DNS failure for {name}: {reason}")]
    Temporary { name: String, reason: String },
    /// The domain does not exist (NXDOMAIN) or has no address at all.
    #[error("{name}: {reason}")]
    NotFound { name: String, reason: String },
    /// RFC 7505 null MX: the domain states it accepts no mail.
    #[error("{0} does not accept mail (null MX)")]
    NullMx(String),
}

impl DnsFailure {
    /// Whether asking again later cannot help.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, DnsFailure::Temporary { .. })
    }
}

/// Mail exchangers and addresses, from one resolver.
#[derive(Clone)]
pub struct MxResolver {
    inner: TokioResolver,
}

impl MxResolver {
    /// See [`resolver`].
    pub fn new(nameservers: &[SocketAddr], options: Options) -> Result<Self, ResolverError> {
        Ok(Self::with_resolver(resolver(nameservers, options)?))
    }

    /// Over a resolver built elsewhere (shared with other lookups).
    pub fn with_resolver(inner: TokioResolver) -> Self {
        Self { inner }
    }

    /// The mail exchangers of `domain`, in the order to try: by preference, equal preferences
    /// in random order (RFC 5321 §5.1: spread the load). No MX records: the domain itself.
    /// Records naming no valid host name, and repeated hosts, are skipped.
    pub async fn mx_hosts(&self, domain: &str) -> Result<Vec<MxHost>, DnsFailure> {
        let domain = domain.trim_end_matches('.');
        match self
            .inner
            .lookup(absolute(domain).as_str(), RecordType::MX)
            .await
        {
            Ok(lookup) => {
                let records = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                        _ => None,
                    })
                    .collect();
                order_mx(domain, records)
            }
            Err(e) if e.is_nx_domain() => {
                Err(not_found(domain, "domain does not exist (NXDOMAIN)"))
            }
            Err(e) if e.is_no_records_found() => Ok(vec![implicit_mx(domain)]),
            Err(e) => Err(temporary(domain, &e)),
        }
    }

    /// The TXT records at `name`, each one's strings joined (RFC 7208 §3.3 style); none for a
    /// name that does not exist or has no TXT record. `Err` only for a temporary failure.
    pub async fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, DnsFailure> {
        match self
            .inner
            .lookup(absolute(name).as_str(), RecordType::TXT)
            .await
        {
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

    /// Every address of one host (A and AAAA), each once. An IP literal (`192.0.2.1`,
    /// `[2001:db8::1]`) is returned as it is.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsFailure> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        match self.inner.lookup_ip(absolute(host).as_str()).await {
            Ok(ips) => {
                let mut list: Vec<IpAddr> = Vec::new();
                for ip in ips.iter() {
                    if !list.contains(&ip) {
                        list.push(ip);
                    }
                }
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

/// Applies the null-MX rule, drops unusable and repeated hosts, sorts by preference and
/// shuffles hosts of equal preference. `records` are (preference, exchange as in the zone).
fn order_mx(domain: &str, mut records: Vec<(u16, String)>) -> Result<Vec<MxHost>, DnsFailure> {
    if records.is_empty() {
        return Ok(vec![implicit_mx(domain)]);
    }
    // Best preference first, so that a host listed twice keeps its better one.
    records.sort_by_key(|(preference, _)| *preference);
    let mut null_mx = false;
    let mut hosts: Vec<MxHost> = Vec::new();
    for (preference, exchange) in records {
        let name = exchange.trim_end_matches('.').to_ascii_lowercase();
        // RFC 7505 §3: the root as exchange. Beside other records it is a broken zone:
        // skip that record and use the rest.
        if name.is_empty() {
            null_mx = true;
            continue;
        }
        // A name from a hostile zone ends up in SMTP dialogue and logs: only host names.
        if !relayward_protocol::path::is_host_name(&name) || hosts.iter().any(|h| h.name == name) {
            continue;
        }
        hosts.push(MxHost {
            name,
            preference,
            implicit: false,
        });
    }
    if hosts.is_empty() {
        return Err(if null_mx {
            DnsFailure::NullMx(domain.to_string())
        } else {
            DnsFailure::Temporary {
                name: domain.to_string(),
                reason: "no MX record names a usable host".to_string(),
            }
        });
    }
    hosts.shuffle(&mut rand::rng());
    // A stable sort keeps the shuffled order within each preference.
    hosts.sort_by_key(|h| h.preference);
    Ok(hosts)
}

fn implicit_mx(domain: &str) -> MxHost {
    MxHost {
        name: domain.to_ascii_lowercase(),
        preference: 0,
        implicit: true,
    }
}

fn absolute(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
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

    fn records(list: &[(u16, &str)]) -> Vec<(u16, String)> {
        list.iter().map(|(p, n)| (*p, n.to_string())).collect()
    }

    #[test]
    fn sorted_by_preference_and_equal_ones_shuffled() {
        let records = records(&[(20, "c.test."), (10, "a.test."), (10, "b.test.")]);
        let mut seen_b_first = false;
        let mut seen_a_first = false;
        for _ in 0..200 {
            let hosts = order_mx("d.test", records.clone()).unwrap();
            assert_eq!(hosts[2].name, "c.test");
            seen_a_first |= hosts[0].name == "a.test";
            seen_b_first |= hosts[0].name == "b.test";
        }
        assert!(seen_a_first && seen_b_first);
    }

    #[test]
    fn null_mx_and_implicit_mx() {
        assert_eq!(
            order_mx("d.test", records(&[(0, ".")])),
            Err(DnsFailure::NullMx("d.test".into()))
        );
        let implicit = order_mx("d.test", vec![]).unwrap();
        assert_eq!(
            (implicit[0].name.as_str(), implicit[0].implicit),
            ("d.test", true)
        );
        let mixed = order_mx("d.test", records(&[(0, "."), (5, "m.d.test.")]));
        assert_eq!(mixed.unwrap().len(), 1);
    }

    #[test]
    fn unusable_and_repeated_exchanges_are_skipped() {
        let hosts = order_mx(
            "d.test",
            records(&[
                (10, "MX1.d.test."),
                (20, "mx1.d.test."),
                (5, "evil host."),
                (5, "x>y.test."),
            ]),
        )
        .unwrap();
        let names: Vec<(&str, u16)> = hosts
            .iter()
            .map(|h| (h.name.as_str(), h.preference))
            .collect();
        assert_eq!(names, [("mx1.d.test", 10)]);
        let broken = order_mx("d.test", records(&[(10, "a..b.")])).unwrap_err();
        assert!(!broken.is_permanent(), "{broken}");
    }
}

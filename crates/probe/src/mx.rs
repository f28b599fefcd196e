//! A mail domain's MX hosts as targets (`mx:DOMAIN`, `--mx DOMAIN`; research U54: backup MXes
//! are the classic forgotten open relays).
//!
//! The MX records are looked up with the configured resolver (`--nameserver`, else the system
//! one), sorted by preference then name; each host's A and AAAA addresses become targets of
//! their own, labelled `host:port`, carrying the domain (reported as `mx`) and using it as the
//! local domain for the `{local}` tricks. A domain without MX records is its own implicit MX
//! (RFC 5321 §5.1); a null MX (RFC 7505, `MX 0 .`) means the domain takes no mail.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;

use crate::config::Target;
use crate::report::MxInfo;

/// At most this many MX hosts per domain, and addresses per host, are probed.
pub const MAX_MX_HOSTS: usize = 32;
pub const MAX_ADDRESSES_PER_HOST: usize = 16;

/// Resolves MX hosts and their addresses.
pub struct MxResolver {
    resolver: TokioResolver,
}

/// One MX host that could not be turned into a target (its name does not resolve).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxFailure {
    pub label: String,
    pub reason: String,
    pub mx: Option<MxInfo>,
}

impl MxResolver {
    /// `nameservers` empty = the system resolver.
    pub fn new(nameservers: &[SocketAddr], timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            resolver: crate::dnsbl::resolver(nameservers, timeout)?,
        })
    }

    /// The MX hosts of `domain`, best preference first.
    pub async fn mx_hosts(&self, domain: &str) -> Result<Vec<MxInfo>, String> {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let lookup = match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(l) => l,
            Err(e) if e.is_nx_domain() => {
                return Err(format!("{domain} does not exist (NXDOMAIN)"));
            }
            Err(e) if e.is_no_records_found() => {
                return Ok(vec![MxInfo {
                    domain: domain.to_string(),
                    host: domain.to_string(),
                    preference: 0,
                    implicit: true,
                }]);
            }
            Err(e) => return Err(format!("MX lookup for {domain} failed: {e}")),
        };
        let mut hosts: Vec<MxInfo> = Vec::new();
        let mut null_mx = false;
        for record in lookup.answers() {
            let RData::MX(mx) = &record.data else {
                continue;
            };
            let host = mx.exchange.to_ascii();
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            if host.is_empty() {
                null_mx = true;
                continue;
            }
            if !is_host_name(&host) || hosts.iter().any(|h| h.host == host) {
                continue;
            }
            hosts.push(MxInfo {
                domain: domain.to_string(),
                host,
                preference: mx.preference,
                implicit: false,
            });
        }
        if hosts.is_empty() {
            return Err(if null_mx {
                format!("{domain} has a null MX (RFC 7505): it accepts no mail")
            } else {
                format!("{domain} has no usable MX record")
            });
        }
        hosts.sort_by(|a, b| (a.preference, &a.host).cmp(&(b.preference, &b.host)));
        hosts.truncate(MAX_MX_HOSTS);
        Ok(hosts)
    }

    /// Every address of one host (A and AAAA).
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let fqdn = format!("{host}.");
        let lookup = self
            .resolver
            .lookup_ip(fqdn.as_str())
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?;
        let mut out: Vec<IpAddr> = Vec::new();
        for ip in lookup.iter() {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        out.truncate(MAX_ADDRESSES_PER_HOST);
        if out.is_empty() {
            return Err(format!("{host} has no address"));
        }
        Ok(out)
    }

    /// The targets of a host name given by the user (`mail.example.net:25`): one per address,
    /// labelled `name:port`, the name kept for SNI and as a host-name candidate; the DNS
    /// counterpart of [`crate::target::resolve`].
    pub async fn host_targets(&self, name: &str, port: u16) -> Result<Vec<Target>, String> {
        let ips = self.addresses(name).await?;
        Ok(ips
            .into_iter()
            .map(|ip| {
                Target::new(
                    SocketAddr::new(ip, port),
                    Some(name.to_string()),
                    format!("{name}:{port}"),
                )
            })
            .collect())
    }

    /// The targets of a domain, in MX order; an address shared by two MX hosts is probed once
    /// (under the better one). Hosts that do not resolve are returned as failures.
    pub async fn targets(
        &self,
        domain: &str,
        port: u16,
    ) -> Result<Vec<Result<Target, MxFailure>>, String> {
        let hosts = self.mx_hosts(domain).await?;
        let mut out = Vec::new();
        let mut seen: Vec<SocketAddr> = Vec::new();
        for mx in hosts {
            let label = format!("{}:{port}", mx.host);
            match self.addresses(&mx.host).await {
                Ok(ips) => {
                    for ip in ips {
                        let addr = SocketAddr::new(ip, port);
                        if seen.contains(&addr) {
                            continue;
                        }
                        seen.push(addr);
                        let mut t = Target::new(addr, Some(mx.host.clone()), label.clone());
                        t.local_domain = Some(domain.to_string());
                        t.mx = Some(mx.clone());
                        out.push(Ok(t));
                    }
                }
                Err(reason) => out.push(Err(MxFailure {
                    label,
                    reason,
                    mx: Some(mx),
                })),
            }
        }
        Ok(out)
    }
}

fn is_host_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_from_dns_are_checked() {
        assert!(is_host_name("mx1.example.net"));
        assert!(!is_host_name("mx1..example.net"));
        assert!(!is_host_name("evil host"));
        assert!(!is_host_name("x>y.example"));
    }
}

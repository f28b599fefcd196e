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

use relayward_dns::DnsFailure;

use crate::config::Target;
use crate::report::MxInfo;

/// At most this many MX hosts per domain, and addresses per host, are probed.
pub const MAX_MX_HOSTS: usize = 32;
pub const MAX_ADDRESSES_PER_HOST: usize = 16;

/// Resolves MX hosts and their addresses: relayward's one MX resolver ([`relayward_dns`], the
/// delivery agent's), with the tester's order and limits.
pub struct MxResolver {
    resolver: relayward_dns::MxResolver,
}

/// One MX host that could not be turned into a target (its name does not resolve).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxFailure {
    pub label: String,
    pub reason: String,
    pub mx: Option<MxInfo>,
}

impl MxResolver {
    /// `nameservers` empty = the system resolver. No cache: every answer is fresh.
    pub fn new(nameservers: &[SocketAddr], timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            resolver: relayward_dns::MxResolver::new(nameservers, crate::dnsbl::options(timeout))?,
        })
    }

    /// The MX hosts of `domain`, best preference first, equal ones by name (a report lists
    /// them in the same order every time).
    pub async fn mx_hosts(&self, domain: &str) -> Result<Vec<MxInfo>, String> {
        let mut hosts: Vec<MxInfo> = self
            .resolver
            .mx_hosts(domain)
            .await
            .map_err(|e| explain(&e))?
            .into_iter()
            .map(|mx| MxInfo {
                domain: domain.to_string(),
                host: mx.name,
                preference: mx.preference,
                implicit: mx.implicit,
            })
            .collect();
        hosts.sort_by(|a, b| (a.preference, &a.host).cmp(&(b.preference, &b.host)));
        hosts.truncate(MAX_MX_HOSTS);
        Ok(hosts)
    }

    /// Every address of one host (A and AAAA).
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let mut out = self
            .resolver
            .addresses(host)
            .await
            .map_err(|e| explain(&e))?;
        out.truncate(MAX_ADDRESSES_PER_HOST);
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

/// A DNS failure as the report says it.
fn explain(failure: &DnsFailure) -> String {
    match failure {
        DnsFailure::NullMx(domain) => {
            format!("{domain} has a null MX (RFC 7505): it accepts no mail")
        }
        DnsFailure::NotFound { name, reason } | DnsFailure::Temporary { name, reason } => {
            format!("{name}: {reason}")
        }
    }
}

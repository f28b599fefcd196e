//! DNS blocklist lookups (RFC 5782): is the target's address listed?
//!
//! `d.c.b.a.<zone>` (IPv4) or the reversed nibbles (IPv6) is queried for A records; an answer
//! in 127.0.0.0/8 means listed, NXDOMAIN or no record means not listed. Answers in
//! 127.255.255.0/24 are the lists' error codes (Spamhaus refuses queries relayed through big
//! public resolvers) and are reported as errors, not as listings.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use serde::{Deserialize, Serialize};

/// Zones queried when `--dnsbl` is given without `--dnsbl-zone`.
pub const DEFAULT_ZONES: &[&str] = &[
    "zen.spamhaus.org",
    "bl.spamcop.net",
    "b.barracudacentral.org",
];

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsblResult {
    pub zone: String,
    pub query: String,
    pub listed: bool,
    /// The A records returned (the list's return codes).
    pub answers: Vec<String>,
    pub error: Option<String>,
}

pub struct Dnsbl {
    zones: Vec<String>,
    resolver: TokioResolver,
}

impl Dnsbl {
    /// `nameservers` empty = the system resolver (`/etc/resolv.conf`).
    pub fn new(
        zones: Vec<String>,
        nameservers: &[SocketAddr],
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            zones,
            resolver: resolver(nameservers, timeout)?,
        })
    }

    /// One result per zone, looked up concurrently.
    pub async fn check(&self, ip: IpAddr) -> Vec<DnsblResult> {
        let reversed = reverse_name(ip.to_canonical());
        let mut set = tokio::task::JoinSet::new();
        for (i, zone) in self.zones.iter().enumerate() {
            let (resolver, zone, reversed) =
                (self.resolver.clone(), zone.clone(), reversed.clone());
            set.spawn(async move { (i, lookup(&resolver, &zone, &reversed).await) });
        }
        let mut results: Vec<(usize, DnsblResult)> = set.join_all().await;
        results.sort_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, r)| r).collect()
    }
}

/// A resolver for `nameservers` (empty = the system resolver), without cache: blocklist
/// answers and MX lookups must be fresh.
pub fn resolver(nameservers: &[SocketAddr], timeout: Duration) -> anyhow::Result<TokioResolver> {
    Ok(relayward_dns::resolver(nameservers, options(timeout))?)
}

/// The tester's resolver options: no cache, a second try (it asks once per target).
pub fn options(timeout: Duration) -> relayward_dns::Options {
    relayward_dns::Options {
        timeout,
        attempts: 2,
        cache_size: 0,
    }
}

async fn lookup(resolver: &TokioResolver, zone: &str, reversed: &str) -> DnsblResult {
    let query = format!("{reversed}.{zone}.");
    let mut result = DnsblResult {
        zone: zone.to_string(),
        query: query.clone(),
        ..Default::default()
    };
    match resolver.ipv4_lookup(query.as_str()).await {
        Ok(lookup) => {
            let addrs: Vec<Ipv4Addr> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect();
            result.answers = addrs.iter().map(|a| a.to_string()).collect();
            judge(&mut result, &addrs);
        }
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => {}
        Err(e) => result.error = Some(e.to_string()),
    }
    result
}

fn judge(result: &mut DnsblResult, addrs: &[Ipv4Addr]) {
    let is_error_code = |a: &Ipv4Addr| a.octets()[..3] == [127, 255, 255];
    if addrs.iter().any(is_error_code) {
        result.error =
            Some("the list refused the query (error code 127.255.255.x; public resolver?)".into());
    } else {
        result.listed = addrs.iter().any(|a| a.octets()[0] == 127);
    }
}

/// `192.0.2.7` → `7.2.0.192`; IPv6 → 32 reversed nibbles (RFC 5782 §2.4).
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let nibbles: Vec<String> = v6
                .octets()
                .iter()
                .rev()
                .flat_map(|b| [b & 0x0f, b >> 4])
                .map(|n| format!("{n:x}"))
                .collect();
            nibbles.join(".")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reversed_names() {
        assert_eq!(reverse_name("127.0.0.2".parse().unwrap()), "2.0.0.127");
        let v6 = reverse_name("2001:db8::1".parse().unwrap());
        assert!(v6.starts_with("1.0.0.0."), "{v6}");
        assert!(v6.ends_with(".8.b.d.0.1.0.0.2"), "{v6}");
        assert_eq!(v6.split('.').count(), 32);
    }

    #[test]
    fn error_codes_are_not_listings() {
        let mut r = DnsblResult::default();
        judge(&mut r, &["127.0.0.2".parse().unwrap()]);
        assert!(r.listed && r.error.is_none());
        let mut r = DnsblResult::default();
        judge(&mut r, &["127.255.255.254".parse().unwrap()]);
        assert!(!r.listed && r.error.is_some());
    }
}

//! MTA-STS (RFC 8461): a recipient domain's published demand for verified TLS.
//!
//! - Discovery: the TXT record `_mta-sts.DOMAIN` (`v=STSv1; id=…`, parsed by mail-auth).
//! - The policy itself: `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`, fetched over HTTPS
//!   with a verified certificate for that name (web PKI roots plus `tls_policy_ca_file`),
//!   no redirects, `200` and `text/plain` only, at most 64 KiB (§3.3).
//! - [`StsCache`]: policies are kept for their `max_age`; the TXT `id` tells when to fetch
//!   again (§5.1). A domain whose TXT record disappears or whose server is unreachable keeps
//!   its cached policy until it expires: that is what stops an attacker who blocks the fetch.
//! - [`StsPolicy::allows`]: which MX hosts a policy names (`*.` matches one label, §4.1).
//!
//! Applying the policy to a delivery (enforce: matching MX and verified certificate or the
//! mail waits; testing: deliver anyway and report) is [`crate::tls_policy`]'s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::mta_sts::MtaSts;
use relayward_protocol::text::escape_control;
use rustls::ClientConfig;

use crate::mx::{DnsFailure, MxResolver};

/// RFC 8461 §3.2: `max_age` is at most one year.
pub const MAX_AGE_LIMIT: u64 = 31_557_600;
/// RFC 8461 §3.3: senders may limit the policy body; 64 KiB is the suggested size.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// Addresses of `mta-sts.DOMAIN` tried per fetch.
const MAX_ADDRESSES: usize = 4;

/// `mode:` of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StsMode {
    /// Only the listed MX hosts, only with verified TLS; otherwise the mail waits.
    Enforce,
    /// Deliver as without a policy, and report what would have failed.
    Testing,
    /// The domain withdrew its policy (kept in the cache like any other, §8.3).
    None,
}

impl StsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StsMode::Enforce => "enforce",
            StsMode::Testing => "testing",
            StsMode::None => "none",
        }
    }
}

/// A parsed policy (RFC 8461 §3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsPolicy {
    pub mode: StsMode,
    /// MX patterns, lower-case, without a trailing dot: `mx.example.com` or `*.example.net`.
    pub mx: Vec<String>,
    /// Seconds the policy may be cached, capped at [`MAX_AGE_LIMIT`].
    pub max_age: u64,
}

/// Why a policy could not be had; the TLS-RPT result type is [`StsError::result_type`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StsError {
    /// The HTTPS fetch failed (DNS, connection, certificate, status, content type, size).
    #[error("MTA-STS policy fetch from {host} failed: {reason}")]
    Fetch { host: String, reason: String },
    /// The body is not a valid policy.
    #[error("MTA-STS policy of {domain} is invalid: {reason}")]
    Invalid { domain: String, reason: String },
}

impl StsError {
    /// RFC 8460 §4.3 result type.
    pub fn result_type(&self) -> &'static str {
        match self {
            StsError::Fetch { .. } => "sts-policy-fetch-error",
            StsError::Invalid { .. } => "sts-policy-invalid",
        }
    }
}

impl StsPolicy {
    /// Parses a policy body: `key: value` lines (CRLF or LF), `version: STSv1` required,
    /// unknown keys ignored, `mx` repeated, at least one `mx` unless `mode: none`.
    pub fn parse(text: &str) -> Result<StsPolicy, String> {
        let mut version = None;
        let mut mode = None;
        let mut max_age = None;
        let mut mx = Vec::new();
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                return Err(format!(
                    "line {:?} is not \"key: value\"",
                    escape_control(line)
                ));
            };
            let value = value.trim();
            match key.trim() {
                "version" => version = Some(value.to_string()),
                "mode" => {
                    mode = Some(match value {
                        "enforce" => StsMode::Enforce,
                        "testing" => StsMode::Testing,
                        "none" => StsMode::None,
                        other => return Err(format!("unknown mode {:?}", escape_control(other))),
                    })
                }
                "max_age" => {
                    let seconds = value
                        .parse::<u64>()
                        .ok()
                        .filter(|_| value.len() <= 10)
                        .ok_or_else(|| {
                            format!("max_age {:?} is not a number", escape_control(value))
                        })?;
                    max_age = Some(seconds.min(MAX_AGE_LIMIT));
                }
                "mx" => mx.push(mx_pattern(value)?),
                _ => {}
            }
        }
        if version.as_deref() != Some("STSv1") {
            return Err("no \"version: STSv1\"".into());
        }
        let mode = mode.ok_or("no mode")?;
        let max_age = max_age.ok_or("no max_age")?;
        if mx.is_empty() && mode != StsMode::None {
            return Err("no mx".into());
        }
        Ok(StsPolicy { mode, mx, max_age })
    }

    /// Whether `host` (an MX name) is one the policy names (RFC 8461 §4.1): exactly, or by a
    /// `*.` pattern standing for one leftmost label.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => *pattern == host,
            })
    }
}

fn mx_pattern(value: &str) -> Result<String, String> {
    let pattern = value.trim_end_matches('.').to_ascii_lowercase();
    let name = pattern.strip_prefix("*.").unwrap_or(&pattern);
    if name.is_empty() || !relayward_protocol::path::is_host_name(name) {
        return Err(format!("mx {:?} is not a host name", escape_control(value)));
    }
    Ok(pattern)
}

/// The `id` of the domain's `v=STSv1` TXT record. `None` without one — and with more than
/// one, which RFC 8461 §3.1 says to treat as none.
pub fn record_id(records: &[Vec<u8>]) -> Option<String> {
    let ids: Vec<String> = records
        .iter()
        .filter(|r| r.starts_with(b"v=STSv1"))
        .filter_map(|r| MtaSts::parse(r).ok())
        .map(|r| r.id)
        .collect();
    match ids.as_slice() {
        [id] => Some(id.clone()),
        _ => None,
    }
}

/// Where and how policies are fetched.
#[derive(Clone)]
pub struct Fetcher {
    pub resolver: MxResolver,
    /// Verifying configuration (web PKI roots plus `tls_policy_ca_file`).
    pub tls: Arc<ClientConfig>,
    /// 443 except in tests.
    pub port: u16,
    /// For the whole fetch (connect, handshake, request, body).
    pub timeout: Duration,
}

impl Fetcher {
    /// Fetches and parses `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`.
    pub async fn fetch(&self, domain: &str) -> Result<StsPolicy, StsError> {
        let host = format!("mta-sts.{domain}");
        let fail = |reason: String| StsError::Fetch {
            host: host.clone(),
            reason,
        };
        let addresses = self.resolver.addresses(&host).await.map_err(|e| match e {
            DnsFailure::Temporary { reason, .. } => fail(format!("DNS: {reason}")),
            other => fail(other.to_string()),
        })?;
        let mut last = fail("no address".into());
        for ip in addresses.into_iter().take(MAX_ADDRESSES) {
            let addr = SocketAddr::new(ip, self.port);
            let body = match tokio::time::timeout(self.timeout, self.get(&host, addr)).await {
                Ok(Ok(body)) => body,
                Ok(Err(reason)) => {
                    last = fail(format!("{addr}: {reason}"));
                    continue;
                }
                Err(_) => {
                    last = fail(format!("{addr}: timed out after {:?}", self.timeout));
                    continue;
                }
            };
            let text = String::from_utf8(body).map_err(|_| StsError::Invalid {
                domain: domain.to_string(),
                reason: "not UTF-8".into(),
            })?;
            return StsPolicy::parse(&text).map_err(|reason| StsError::Invalid {
                domain: domain.to_string(),
                reason,
            });
        }
        Err(last)
    }

    /// One HTTPS GET; the body when the answer is `200` with `text/plain`.
    async fn get(&self, host: &str, addr: SocketAddr) -> Result<Vec<u8>, String> {
        let (mut sender, driver) = crate::https::open(&self.tls, host, addr).await?;
        let request = hyper::Request::get("/.well-known/mta-sts.txt")
            .header(hyper::header::HOST, host)
            .header(hyper::header::CONNECTION, "close")
            .header(hyper::header::USER_AGENT, "relayward")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        // §3.3: no redirects; only 200 is a policy.
        if response.status() != hyper::StatusCode::OK {
            return Err(format!("HTTP status {}", response.status().as_u16()));
        }
        let media_type = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !media_type
            .split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/plain"))
        {
            return Err(format!(
                "Content-Type {:?}, not text/plain",
                escape_control(media_type)
            ));
        }
        let body = Limited::new(response.into_body(), MAX_POLICY_BYTES)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        drop(driver);
        Ok(body.to_vec())
    }
}

/// What discovery found for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// The policy in force (from the cache or just fetched); `None`: deliver without one.
    pub policy: Option<Arc<StsPolicy>>,
    /// A fetch that failed on the way, for the log and TLS-RPT (the cached policy, if any,
    /// still applies).
    pub error: Option<StsError>,
}

struct Cached {
    id: String,
    policy: Arc<StsPolicy>,
    /// Unix seconds.
    expires: u64,
}

impl Cached {
    /// About what the entry holds in memory, its domain name included.
    fn weight(&self, domain: &str) -> usize {
        const OVERHEAD: usize = 128;
        let patterns: usize = self.policy.mx.iter().map(|p| p.len() + 24).sum();
        OVERHEAD + domain.len() + self.id.len() + patterns
    }
}

/// The most the cached policies may weigh together ([`Cached::weight`]). Each domain's zone
/// decides how big its policy is (up to [`MAX_POLICY_BYTES`]) and for how long it is kept (up
/// to a year), and a relay sends to any domain its users (or its bounces) name: without a
/// bound, domains serving big policies would grow the cache without end. Real policies are a
/// few hundred bytes, so this keeps tens of thousands of them.
const MAX_CACHE_WEIGHT: usize = 16 * 1024 * 1024;

/// The cached policies by domain, and their total weight.
#[derive(Default)]
struct Entries {
    map: HashMap<String, Cached>,
    weight: usize,
}

impl Entries {
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }

    fn get(&self, domain: &str) -> Option<&Cached> {
        self.map.get(domain)
    }

    fn remove(&mut self, domain: &str) {
        if let Some(old) = self.map.remove(domain) {
            self.weight = self.weight.saturating_sub(old.weight(domain));
        }
    }

    /// Keeps `entry` for `domain`; when the cache would weigh too much, expired entries leave
    /// first, then those expiring soonest.
    fn insert(&mut self, domain: String, entry: Cached, now: u64) {
        self.remove(&domain);
        let weight = entry.weight(&domain);
        if self.weight + weight > MAX_CACHE_WEIGHT {
            let expired: Vec<String> = self
                .map
                .iter()
                .filter(|(_, e)| e.expires <= now)
                .map(|(d, _)| d.clone())
                .collect();
            for d in expired {
                self.remove(&d);
            }
        }
        while self.weight + weight > MAX_CACHE_WEIGHT {
            let Some(soonest) = self
                .map
                .iter()
                .min_by_key(|(_, e)| e.expires)
                .map(|(d, _)| d.clone())
            else {
                break;
            };
            self.remove(&soonest);
        }
        self.weight += weight;
        self.map.insert(domain, entry);
    }
}

/// Policies by domain, kept for `max_age` (RFC 8461 §5.1). In memory: it outlives reloads
/// (the runner keeps it), not restarts.
#[derive(Default)]
pub struct StsCache {
    entries: Mutex<Entries>,
    /// One discovery per domain at a time: concurrent deliveries to a new domain wait for
    /// the first one's fetch instead of fetching too.
    discovering: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl StsCache {
    /// The policy for `domain` now, after the TXT lookup and, when the record's `id` is not
    /// the cached one, a fetch. See the module documentation for the fallbacks.
    pub async fn discover(&self, fetcher: &Fetcher, domain: &str, now: u64) -> Discovery {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let turn = Arc::clone(
            self.discovering
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(domain.clone())
                .or_default(),
        );
        let _turn = turn.lock().await;
        let found = self.discover_now(fetcher, &domain, now).await;
        drop(_turn);
        drop(turn);
        // Under the map's lock no one can take a new handle while the count is read.
        self.discovering
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, turn| Arc::strong_count(turn) > 1);
        found
    }

    async fn discover_now(&self, fetcher: &Fetcher, domain: &str, now: u64) -> Discovery {
        let domain = domain.to_string();
        let cached = self.cached(&domain, now);
        let id = match fetcher.resolver.txt(&format!("_mta-sts.{domain}")).await {
            Ok(records) => record_id(&records),
            // Temporary DNS trouble: what we know still holds.
            Err(_) => return only(cached),
        };
        let Some(id) = id else {
            // §5.1: a vanished record does not end a cached policy before max_age.
            return only(cached);
        };
        if let Some((cached_id, policy)) = &cached
            && *cached_id == id
        {
            return only(Some((cached_id.clone(), Arc::clone(policy))));
        }
        match fetcher.fetch(&domain).await {
            Ok(policy) => {
                let policy = Arc::new(policy);
                self.store(&domain, id, Arc::clone(&policy), now);
                Discovery {
                    policy: Some(policy),
                    error: None,
                }
            }
            Err(error) => Discovery {
                policy: cached.map(|(_, policy)| policy),
                error: Some(error),
            },
        }
    }

    fn cached(&self, domain: &str, now: u64) -> Option<(String, Arc<StsPolicy>)> {
        let mut entries = self.lock();
        match entries.get(domain) {
            Some(entry) if entry.expires > now => {
                Some((entry.id.clone(), Arc::clone(&entry.policy)))
            }
            Some(_) => {
                entries.remove(domain);
                None
            }
            None => None,
        }
    }

    fn store(&self, domain: &str, id: String, policy: Arc<StsPolicy>, now: u64) {
        let expires = now.saturating_add(policy.max_age);
        self.lock().insert(
            domain.to_string(),
            Cached {
                id,
                policy,
                expires,
            },
            now,
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn only(cached: Option<(String, Arc<StsPolicy>)>) -> Discovery {
    Discovery {
        policy: cached.map(|(_, policy)| policy),
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_lines_as_rfc_8461_writes_them() {
        let policy = StsPolicy::parse(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com.\r\nmax_age: 604800\r\nextension: ignored\r\n",
        )
        .expect("valid");
        assert_eq!(policy.mode, StsMode::Enforce);
        assert_eq!(policy.max_age, 604_800);
        assert_eq!(
            policy.mx,
            ["mail.example.com", "*.example.net", "backupmx.example.com"]
        );
        let capped =
            StsPolicy::parse("version: STSv1\nmode: testing\nmx: a.example\nmax_age: 99999999\n")
                .expect("valid");
        assert_eq!(capped.max_age, MAX_AGE_LIMIT);
    }

    #[test]
    fn broken_policies_are_refused_with_the_reason() {
        let cases = [
            ("mode: enforce\nmx: a.example\nmax_age: 1\n", "STSv1"),
            (
                "version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n",
                "unknown mode",
            ),
            ("version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx"),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\n",
                "no max_age",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n",
                "not a number",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a b\nmax_age: 1\n",
                "not a host name",
            ),
            ("<html>\n", "key: value"),
        ];
        for (text, why) in cases {
            let error = StsPolicy::parse(text).expect_err(text);
            assert!(error.contains(why), "{text:?}: {error}");
        }
        let none = StsPolicy::parse("version: STSv1\nmode: none\nmax_age: 86400\n").expect("none");
        assert_eq!(none.mode, StsMode::None);
    }

    #[test]
    fn mx_patterns_match_as_section_4_1_says() {
        let policy = StsPolicy {
            mode: StsMode::Enforce,
            mx: vec!["mail.example.com".into(), "*.example.net".into()],
            max_age: 1,
        };
        for (host, allowed) in [
            ("mail.example.com", true),
            ("MAIL.Example.COM.", true),
            ("other.example.com", false),
            ("mx1.example.net", true),
            ("example.net", false),
            ("a.b.example.net", false),
            ("mx1.example.net.evil.test", false),
        ] {
            assert_eq!(policy.allows(host), allowed, "{host}");
        }
    }

    #[test]
    fn one_sts_record_gives_its_id_two_give_none() {
        let one = vec![
            b"v=STSv1; id=20260101T000000;".to_vec(),
            b"v=spf1 -all".to_vec(),
        ];
        assert_eq!(record_id(&one).as_deref(), Some("20260101T000000"));
        let two = vec![b"v=STSv1; id=a;".to_vec(), b"v=STSv1; id=b;".to_vec()];
        assert_eq!(record_id(&two), None);
        assert_eq!(record_id(&[b"v=STSv2; id=a;".to_vec()]), None);
        assert_eq!(record_id(&[]), None);
    }

    /// A zone serving a policy near the 64 KiB limit, kept for a year, under many names: the
    /// cache stays bounded (the entries expiring soonest leave), and keeps the newest.
    #[test]
    fn the_cache_is_bounded_however_big_the_policies() {
        let cache = StsCache::default();
        let mx: Vec<String> = (0..2000).map(|i| format!("mx{i:05}.big.test")).collect();
        let policy = Arc::new(StsPolicy {
            mode: StsMode::Enforce,
            mx,
            max_age: MAX_AGE_LIMIT,
        });
        let domains = 1000;
        for n in 0..domains {
            cache.store(
                &format!("d{n}.big.test"),
                "id1".into(),
                Arc::clone(&policy),
                n,
            );
        }
        let kept = cache.lock().len();
        assert!(kept > 0 && kept < domains as usize / 2, "kept {kept}");
        assert!(cache.cached("d999.big.test", 1000).is_some());
        assert!(cache.cached("d0.big.test", 1000).is_none());
    }
}

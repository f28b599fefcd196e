//! Settings shared by every target of a run, and the connection rate limiter.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::confirm::ConfirmServer;
use crate::dnsbl::Dnsbl;
use crate::exclude::ExcludeList;
use crate::transcript::LineSink;

/// `--tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    /// STARTTLS when offered; if the handshake fails, test in cleartext.
    Auto,
    /// Never STARTTLS (tests the cleartext policy).
    Never,
    /// Only test over TLS: a target without working STARTTLS is INCONCLUSIVE.
    Require,
}

/// One address to test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// The host name the user gave, if any (used as SNI and as a TARGET_HOST candidate).
    pub host: Option<String>,
    /// How the target is shown: `host:port` as given, or the address.
    pub label: String,
    /// A domain this target is known to receive mail for (an MX target's domain); used for
    /// the `{local}` tricks unless `--local-domain` is given.
    pub local_domain: Option<String>,
    /// Set when the target came from an MX lookup.
    pub mx: Option<crate::report::MxInfo>,
}

impl Target {
    /// A target given as an address or a host name, not from an MX lookup.
    pub fn new(addr: SocketAddr, host: Option<String>, label: String) -> Self {
        Self {
            addr,
            host,
            label,
            local_domain: None,
            mx: None,
        }
    }
}

/// Confirm mode settings.
#[derive(Clone)]
pub struct ConfirmSettings {
    pub server: Arc<ConfirmServer>,
    /// How long to wait for the tokens after the last message was sent.
    pub wait: Duration,
}

/// Everything a probe needs besides its target.
#[derive(Clone)]
pub struct ProbeConfig {
    pub from_domain: String,
    /// The external recipient's domain; in confirm mode, the confirm domain.
    pub to_domain: String,
    /// A domain the targets are final for; `None` = guessed from the target's host name.
    pub local_domain: Option<String>,
    pub helo: String,
    pub tls: TlsMode,
    /// TLS from the first byte (also implied by port 465).
    pub implicit_tls: bool,
    /// Time for one test (RSET, MAIL, RCPT), and for connecting plus greeting.
    pub test_timeout: Duration,
    /// Time for one whole target; tests not run by then are skipped.
    pub host_timeout: Duration,
    pub keep_transcript: bool,
    /// Hands every transcript line to this sink as it is written, labelled with its target
    /// (the live dialogue; see [`crate::transcript::LineSink`]). Independent of
    /// `keep_transcript`, which keeps the lines in the report.
    pub live_transcript: Option<LineSink>,
    pub confirm: Option<ConfirmSettings>,
    pub dnsbl: Option<Arc<Dnsbl>>,
    /// Resolver for `mx:DOMAIN` targets (`--nameserver`); `None` = the system resolver,
    /// built when an MX target comes up.
    pub mx_resolver: Option<Arc<crate::mx::MxResolver>>,
    /// Resolver for host-name targets; `None` = the system's (`getaddrinfo`: `/etc/hosts`,
    /// then DNS), which is what `relayward probe` uses. A service that must check every
    /// address before connecting and be tested against its own DNS server sets one.
    pub name_resolver: Option<Arc<crate::mx::MxResolver>>,
    pub rate: Option<Arc<RateLimiter>>,
    /// `--rate-per-net`: new connections per second per /24 (IPv4) or /64 (IPv6).
    pub rate_per_net: Option<Arc<NetRateLimiter>>,
    /// `--exclude-file`: addresses never connected to (nor looked up in DNSBLs).
    pub exclude: Option<Arc<ExcludeList>>,
    /// Targets being probed right now (for the progress bar).
    pub in_flight: Arc<AtomicUsize>,
    pub tls_connector: TlsConnector,
}

impl ProbeConfig {
    /// Defaults for library users and tests: short of nothing but the domains.
    pub fn new(from_domain: &str, to_domain: &str) -> anyhow::Result<Self> {
        Ok(Self {
            from_domain: from_domain.to_string(),
            to_domain: to_domain.to_string(),
            local_domain: None,
            helo: from_domain.to_string(),
            tls: TlsMode::Auto,
            implicit_tls: false,
            test_timeout: Duration::from_secs(20),
            host_timeout: Duration::from_secs(600),
            keep_transcript: false,
            live_transcript: None,
            confirm: None,
            dnsbl: None,
            mx_resolver: None,
            name_resolver: None,
            rate: None,
            rate_per_net: None,
            exclude: None,
            in_flight: Arc::new(AtomicUsize::new(0)),
            tls_connector: crate::tls::connector()?,
        })
    }
}

/// Spaces new connections out to at most `per_second`, across all targets (reconnects count).
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    next: Mutex<Instant>,
}

impl RateLimiter {
    pub fn new(per_second: f64) -> Self {
        Self {
            interval: slot_interval(per_second),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this connection's slot.
    pub async fn acquire(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// The time between two connection slots at `per_second`, kept within one per 1,000 s and a
/// million a second so a mistyped rate neither stalls a run nor divides by zero.
fn slot_interval(per_second: f64) -> Duration {
    Duration::from_secs_f64(1.0 / per_second.clamp(0.001, 1_000_000.0))
}

/// [`RateLimiter`] per network: at most `per_second` new connections per /24 (IPv4) or /64
/// (IPv6), so a scan of many hosts of one provider does not hit that provider's connection
/// limits (or look like an attack), while other networks go at full speed.
#[derive(Debug)]
pub struct NetRateLimiter {
    interval: Duration,
    next: Mutex<HashMap<IpAddr, Instant>>,
}

impl NetRateLimiter {
    pub fn new(per_second: f64) -> Self {
        Self {
            interval: slot_interval(per_second),
            next: Mutex::new(HashMap::new()),
        }
    }

    /// The network an address is counted in: its /24, or its /64 for IPv6.
    pub fn network(ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                IpAddr::V4([a, b, c, 0].into())
            }
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddr::V6([s[0], s[1], s[2], s[3], 0, 0, 0, 0].into())
            }
        }
    }

    /// Waits for this connection's slot in `ip`'s network.
    pub async fn acquire(&self, ip: IpAddr) {
        let slot = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            // Slots in the past free nothing: forget them so the map stays small.
            next.retain(|_, t| *t > now);
            let entry = next.entry(Self::network(ip)).or_insert(now);
            let slot = (*entry).max(now);
            *entry = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn net_rate_limiter_spaces_one_network_only() {
        let limiter = NetRateLimiter::new(10.0);
        let start = Instant::now();
        for i in 0..4u8 {
            limiter.acquire(IpAddr::V4([127, 0, 1, i].into())).await;
        }
        let same_net = start.elapsed();
        assert!(same_net >= Duration::from_millis(290), "{same_net:?}");
        let start = Instant::now();
        for i in 0..4u8 {
            limiter
                .acquire(IpAddr::V4([127, 0, 10 + i, 1].into()))
                .await;
        }
        let other_nets = start.elapsed();
        assert!(other_nets < Duration::from_millis(90), "{other_nets:?}");
        assert_eq!(
            NetRateLimiter::network("2001:db8:1:2:3::9".parse().unwrap()),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
    }

    #[tokio::test]
    async fn rate_limiter_spaces_connections() {
        let limiter = RateLimiter::new(20.0);
        let start = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(190), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    }
}

//! Settings shared by every target of a run, and the connection rate limiter.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::confirm::ConfirmServer;
use crate::dnsbl::Dnsbl;

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
    pub confirm: Option<ConfirmSettings>,
    pub dnsbl: Option<Arc<Dnsbl>>,
    /// Resolver for `mx:DOMAIN` targets (`--nameserver`); `None` = the system resolver,
    /// built when an MX target comes up.
    pub mx_resolver: Option<Arc<crate::mx::MxResolver>>,
    pub rate: Option<Arc<RateLimiter>>,
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
            confirm: None,
            dnsbl: None,
            mx_resolver: None,
            rate: None,
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
        let per_second = per_second.clamp(0.001, 1_000_000.0);
        Self {
            interval: Duration::from_secs_f64(1.0 / per_second),
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

#[cfg(test)]
mod tests {
    use super::*;

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

//! Delivery settings: the runner's view of `[delivery]`, `[dns]` and `hostname`, read from the
//! configuration by [`DeliveryConfig::from_config`] (and settable field by field in tests).
//! Where each recipient goes is not here: the queue stores the router's answer with it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use relayward_config::Config;
pub use relayward_config::SmarthostTls;
pub use relayward_config::tls_policy::{DomainTlsMode, DomainTlsPolicy, TlsPolicyMode};

use crate::retry::RetrySchedule;

/// Everything the runner needs to know. Build it with [`DeliveryConfig::new`] and set fields.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Our name: EHLO argument, `Reporting-MTA` of bounces, `MAILER-DAEMON@hostname`.
    pub hostname: String,
    /// `data_dir/mail`: Maildirs live at `mail_root/<domain>/<local-part>/`.
    pub mail_root: PathBuf,
    /// `host:port` of the smart host; without it, mail goes to the recipients' MX hosts.
    pub smarthost: Option<String>,
    pub smarthost_tls: SmarthostTls,
    pub smarthost_user: Option<String>,
    pub smarthost_password_file: Option<PathBuf>,
    /// Extra trust anchors (PEM) for the smart host, for private CAs and tests. The public
    /// webpki roots are always trusted as well.
    pub smarthost_ca_file: Option<PathBuf>,
    /// Port used for MX hosts (MX records carry no port); 25 in production.
    pub mx_port: u16,
    /// `[delivery] tls_policy`: whether MTA-STS and DANE are honoured on MX delivery.
    pub tls_policy: TlsPolicyMode,
    /// `[[tls_policy]]`: the admin's per-domain overrides.
    pub tls_policies: Vec<DomainTlsPolicy>,
    /// Extra trust anchors (PEM) wherever the TLS policy verifies a certificate (MTA-STS
    /// policy hosts, MX hosts under MTA-STS or `require-verified`).
    pub tls_policy_ca_file: Option<PathBuf>,
    /// Port of the MTA-STS policy servers (`mta-sts.DOMAIN`); 443 in production.
    pub mta_sts_port: u16,
    /// `[tls_report]`: whether TLS-RPT reports are counted and sent, as whom, how often.
    pub tls_report: relayward_config::tls_report::TlsReportSettings,
    /// `[dns] nameservers`; empty means the system resolver configuration.
    pub nameservers: Vec<SocketAddr>,
    /// `[dns] trust_anchor`: DNSSEC trust anchors for DANE; `None`: the IANA root keys.
    pub trust_anchor: Option<PathBuf>,
    /// Resolver cache size in responses; tests use 0 so every lookup hits their DNS server.
    pub dns_cache_size: u64,
    /// Per-query DNS timeout.
    pub dns_timeout: Duration,
    /// A recipient still pending this long after arrival is expired and bounced.
    pub max_queue_lifetime: Duration,
    /// A recipient still pending this long after arrival gets one delay notice, if it asked
    /// (see [`crate::runner`]); `None`: never.
    pub delay_notice_after: Option<Duration>,
    pub retry: RetrySchedule,
    pub timeouts: Timeouts,
    /// Concurrent SMTP/Maildir deliveries in total.
    pub max_connections: usize,
    /// Concurrent deliveries to one destination (a domain, a route target, the smart host).
    pub max_per_destination: usize,
    /// How often the runner lists the whole queue although nothing asked it to: a safety net
    /// under its due index, which the queue's change reports keep up to date.
    pub rescan_interval: Duration,
    /// Idle connections are kept this long for reuse by the next message to the same host
    /// (`[delivery] connection_cache_time`; zero: no reuse).
    pub connection_idle: Duration,
    /// A connection is reused only this long after it was opened (`[delivery]
    /// connection_reuse_time_limit`).
    pub connection_reuse_limit: Duration,
    /// How long `run` waits for in-flight deliveries after shutdown before aborting them.
    pub shutdown_grace: Duration,
}

impl DeliveryConfig {
    /// Production defaults (MX delivery on port 25, RFC 5321 timeouts, 5 days lifetime). The
    /// concurrency limits are the configuration file's defaults (`[delivery]
    /// connections_per_destination`, 20 as Postfix, and `max_connections`), so that a runner
    /// built here and one built from a file without `[delivery]` behave the same.
    pub fn new(hostname: impl Into<String>, mail_root: impl Into<PathBuf>) -> Self {
        let defaults = relayward_config::Delivery::default();
        Self {
            hostname: hostname.into(),
            mail_root: mail_root.into(),
            smarthost: None,
            smarthost_tls: SmarthostTls::Starttls,
            smarthost_user: None,
            smarthost_password_file: None,
            smarthost_ca_file: None,
            mx_port: 25,
            tls_policy: TlsPolicyMode::default(),
            tls_policies: Vec::new(),
            tls_policy_ca_file: None,
            mta_sts_port: 443,
            tls_report: Default::default(),
            nameservers: Vec::new(),
            trust_anchor: None,
            dns_cache_size: 1024,
            dns_timeout: Duration::from_secs(5),
            max_queue_lifetime: Duration::from_secs(5 * 24 * 3600),
            delay_notice_after: Some(Duration::from_secs(4 * 3600)),
            retry: RetrySchedule::default(),
            timeouts: Timeouts::default(),
            max_connections: defaults.max_connections as usize,
            max_per_destination: defaults.connections_per_destination as usize,
            rescan_interval: Duration::from_secs(3600),
            connection_idle: defaults.connection_cache_time,
            connection_reuse_limit: defaults.connection_reuse_time_limit,
            shutdown_grace: Duration::from_secs(20),
        }
    }

    /// The settings a configuration file gives (`hostname`, `data_dir`, `[delivery]`,
    /// `[dns]`); everything the file does not set keeps the defaults of [`DeliveryConfig::new`].
    pub fn from_config(config: &Config) -> DeliveryConfig {
        let delivery = &config.delivery;
        let mut out = DeliveryConfig::new(config.hostname.clone(), config.data_dir.join("mail"));
        out.smarthost = delivery.smarthost.clone();
        out.smarthost_tls = delivery.smarthost_tls;
        out.smarthost_user = delivery.smarthost_user.clone();
        out.smarthost_password_file = delivery.smarthost_password_file.clone();
        out.smarthost_ca_file = delivery.ca_file.clone();
        out.mx_port = delivery.mx_port;
        out.tls_policy = delivery.tls_policy;
        out.tls_policies = config.tls_policies.clone();
        out.tls_policy_ca_file = delivery.tls_policy_ca_file.clone();
        out.mta_sts_port = delivery.mta_sts_port;
        out.tls_report = config.tls_report.clone();
        out.nameservers = config.dns.nameservers.clone();
        out.trust_anchor = config.dns.trust_anchor.clone();
        out.max_queue_lifetime = delivery.max_queue_lifetime;
        out.delay_notice_after = delivery.delay_notice_after;
        out.max_connections = delivery.max_connections as usize;
        out.max_per_destination = delivery.connections_per_destination as usize;
        out.connection_idle = delivery.connection_cache_time;
        out.connection_reuse_limit = delivery.connection_reuse_time_limit;
        out.retry = RetrySchedule::new(delivery.retry_schedule.clone(), RetrySchedule::JITTER);
        out.timeouts = Timeouts::from_settings(
            delivery.connect_timeout,
            delivery.command_timeout,
            delivery.data_timeout,
        );
        out
    }

    /// Refuses settings that would send mail or passwords in clear to a remote host.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(host) = &self.smarthost {
            let (name, _) = smarthost_address(host)?;
            if self.smarthost_tls == SmarthostTls::None {
                if !is_loopback_name(&name) {
                    return Err(ConfigError::CleartextSmarthost(host.clone()));
                }
                if self.smarthost_user.is_some() {
                    return Err(ConfigError::CleartextAuth);
                }
            }
            if self.smarthost_user.is_some() != self.smarthost_password_file.is_some() {
                return Err(ConfigError::IncompleteAuth);
            }
        }
        if self.max_connections == 0 || self.max_per_destination == 0 {
            return Err(ConfigError::ZeroConcurrency);
        }
        Ok(())
    }
}

/// RFC 5321 §4.5.3.2 client timeouts. The defaults are the RFC's minimums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect (the RFC names none; 30 s like common MTAs).
    pub connect: Duration,
    /// Initial 220 greeting: 5 minutes.
    pub greeting: Duration,
    /// EHLO, STARTTLS, AUTH, MAIL, RSET replies: 5 minutes.
    pub command: Duration,
    /// Each RCPT reply: 5 minutes.
    pub rcpt: Duration,
    /// DATA's 354: 2 minutes.
    pub data_init: Duration,
    /// Each write of the content: 3 minutes.
    pub data_block: Duration,
    /// The reply to the final dot: 10 minutes.
    pub data_term: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(30),
            greeting: Duration::from_secs(300),
            command: Duration::from_secs(300),
            rcpt: Duration::from_secs(300),
            data_init: Duration::from_secs(120),
            data_block: Duration::from_secs(180),
            data_term: Duration::from_secs(600),
        }
    }
}

impl Timeouts {
    /// From `[delivery]`: `connect` for the TCP connect, `command` for the greeting and every
    /// reply before the content (EHLO … RCPT, DATA's 354), `data` for each write of the
    /// content and the reply to the final dot.
    pub fn from_settings(connect: Duration, command: Duration, data: Duration) -> Self {
        Self {
            connect,
            greeting: command,
            command,
            rcpt: command,
            data_init: command,
            data_block: data,
            data_term: data,
        }
    }

    /// The same timeout everywhere (tests use a few seconds).
    pub fn uniform(timeout: Duration) -> Self {
        Self {
            connect: timeout,
            greeting: timeout,
            command: timeout,
            rcpt: timeout,
            data_init: timeout,
            data_block: timeout,
            data_term: timeout,
        }
    }
}

/// A delivery setting that cannot work or would be unsafe.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "smarthost_tls = \"none\" is only allowed to a loopback address, not {0}; use \"starttls\" or \"implicit\""
    )]
    CleartextSmarthost(String),
    #[error(
        "smarthost_user needs TLS: the password would cross the network in clear; use smarthost_tls = \"starttls\""
    )]
    CleartextAuth,
    #[error("smarthost_user and smarthost_password_file go together; set both or neither")]
    IncompleteAuth,
    #[error("expected host:port, got {0:?}")]
    BadHostPort(String),
    #[error("concurrency limits must be at least 1")]
    ZeroConcurrency,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no usable certificate in {0}")]
    BadCaFile(PathBuf),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("DNS resolver: {0}")]
    Resolver(String),
    #[error("[dns] trust_anchor: {0}")]
    TrustAnchor(String),
}

/// The smart host's `host:port` (the port is required), by the one host:port parser.
pub fn smarthost_address(value: &str) -> Result<(String, u16), ConfigError> {
    relayward_protocol::route::split_host_port(value, 0)
        .filter(|(_, port)| *port != 0)
        .ok_or_else(|| ConfigError::BadHostPort(value.to_string()))
}

/// A name that can only mean this machine: a loopback IP literal or `localhost`.
pub fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical().is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleartext_smarthost_only_to_loopback() {
        let mut c = DeliveryConfig::new("mx.test", "/tmp/x");
        c.smarthost = Some("smtp.provider.test:25".into());
        c.smarthost_tls = SmarthostTls::None;
        assert!(c.validate().is_err());
        c.smarthost = Some("127.0.0.1:2525".into());
        assert!(c.validate().is_ok());
        c.smarthost = Some("[::1]:2525".into());
        assert!(c.validate().is_ok());
        c.smarthost_user = Some("u".into());
        c.smarthost_password_file = Some("/p".into());
        assert!(c.validate().is_err());
    }

    #[test]
    fn smarthost_needs_a_port() {
        assert_eq!(
            smarthost_address("smtp.provider.test:587").ok(),
            Some(("smtp.provider.test".to_string(), 587))
        );
        assert!(smarthost_address("smtp.provider.test").is_err());
        assert!(smarthost_address("::1:25").is_err());
    }
}

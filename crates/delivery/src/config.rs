//! Delivery settings. The server crate maps its `[delivery]`, `[dns]` and `[[route]]` TOML
//! sections onto these types, so this crate does not depend on the server's configuration.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::retry::RetrySchedule;

/// The set of existing local mailboxes, replaceable while the runner runs.
#[derive(Debug, Clone, Default)]
pub struct MailboxList(std::sync::Arc<std::sync::RwLock<std::collections::HashSet<String>>>);

impl MailboxList {
    /// A list of `local@domain` addresses (compared case-insensitively).
    pub fn new(addresses: impl IntoIterator<Item = String>) -> Self {
        let list = Self::default();
        list.replace(addresses);
        list
    }

    /// Replaces the whole list (on reload).
    pub fn replace(&self, addresses: impl IntoIterator<Item = String>) {
        let fresh = addresses
            .into_iter()
            .map(|a| a.to_ascii_lowercase())
            .collect();
        match self.0.write() {
            Ok(mut set) => *set = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
    }

    pub fn contains(&self, address: &str) -> bool {
        let address = address.to_ascii_lowercase();
        match self.0.read() {
            Ok(set) => set.contains(&address),
            Err(poisoned) => poisoned.into_inner().contains(&address),
        }
    }
}

/// Everything the runner needs to know. Build it with [`DeliveryConfig::new`] and set fields.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Our name: EHLO argument, `Reporting-MTA` of bounces, `MAILER-DAEMON@hostname`.
    pub hostname: String,
    /// Domains delivered into Maildirs under `mail_root` (lower-case).
    pub local_domains: Vec<String>,
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
    /// `[[route]]` entries: checked before the smart host and MX.
    pub routes: Vec<Route>,
    /// Port used for MX hosts (MX records carry no port); 25 in production.
    pub mx_port: u16,
    /// `[dns] nameservers`; empty means the system resolver configuration.
    pub nameservers: Vec<SocketAddr>,
    /// Resolver cache size in responses; tests use 0 so every lookup hits their DNS server.
    pub dns_cache_size: u64,
    /// Per-query DNS timeout.
    pub dns_timeout: Duration,
    /// A recipient still pending this long after arrival is expired and bounced.
    pub max_queue_lifetime: Duration,
    pub retry: RetrySchedule,
    pub timeouts: Timeouts,
    /// Concurrent SMTP/Maildir deliveries in total.
    pub max_connections: usize,
    /// Concurrent deliveries to one destination (a domain, a route target, the smart host).
    pub max_per_destination: usize,
    /// Upper bound on the runner's sleep between queue scans; `changed()` wakes it earlier.
    pub poll_interval: Duration,
    /// Idle connections are kept this long for reuse by the next message to the same host.
    pub connection_idle: Duration,
    /// How long `run` waits for in-flight deliveries after shutdown before aborting them.
    pub shutdown_grace: Duration,
    /// The mailboxes that exist in `local_domains` (lower-case `local@domain`). When set, mail
    /// for any other address there fails permanently instead of creating a Maildir: the
    /// session already refuses unknown users, but a bounce addressed to a forged local sender
    /// reaches the runner without passing a RCPT check. `None` accepts every name. Shared, so
    /// a configuration reload (new users) reaches the running runner.
    pub local_mailboxes: Option<MailboxList>,
}

impl DeliveryConfig {
    /// Production defaults (MX delivery on port 25, RFC 5321 timeouts, 5 days lifetime).
    pub fn new(hostname: impl Into<String>, mail_root: impl Into<PathBuf>) -> Self {
        Self {
            hostname: hostname.into(),
            local_domains: Vec::new(),
            mail_root: mail_root.into(),
            smarthost: None,
            smarthost_tls: SmarthostTls::StartTls,
            smarthost_user: None,
            smarthost_password_file: None,
            smarthost_ca_file: None,
            routes: Vec::new(),
            mx_port: 25,
            nameservers: Vec::new(),
            dns_cache_size: 1024,
            dns_timeout: Duration::from_secs(5),
            max_queue_lifetime: Duration::from_secs(5 * 24 * 3600),
            retry: RetrySchedule::default(),
            timeouts: Timeouts::default(),
            max_connections: 20,
            max_per_destination: 4,
            poll_interval: Duration::from_secs(60),
            connection_idle: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(20),
            local_mailboxes: None,
        }
    }

    /// Whether `local@domain` names a mailbox that exists (always, without a mailbox list, and
    /// for `maildir` routes, whose local parts the relay policy vets).
    pub fn mailbox_exists(&self, local: &str, domain: &str) -> bool {
        let in_local_domains = self
            .local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain));
        match &self.local_mailboxes {
            Some(known) if in_local_domains => known.contains(&format!("{local}@{domain}")),
            _ => true,
        }
    }

    /// Refuses settings that would send mail or passwords in clear to a remote host.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(host) = &self.smarthost {
            let (name, _) = split_host_port(host)?;
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

    /// Is `domain` delivered locally (a local domain, or a route to `maildir`)?
    pub fn is_local(&self, domain: &str) -> bool {
        self.local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
            || self
                .route_for(domain)
                .is_some_and(|r| r.to == RouteTarget::Maildir)
    }

    /// The `[[route]]` for `domain`, if any (exact, case-insensitive match).
    pub fn route_for(&self, domain: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.domain.eq_ignore_ascii_case(domain))
    }
}

/// How to protect the smart-host connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmarthostTls {
    /// Plain connect, then STARTTLS is required, certificate verified (port 587).
    #[serde(rename = "starttls")]
    StartTls,
    /// TLS from the first byte, certificate verified (port 465).
    Implicit,
    /// No TLS at all: only allowed to a loopback address.
    None,
}

impl std::str::FromStr for SmarthostTls {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "starttls" => Ok(Self::StartTls),
            "implicit" => Ok(Self::Implicit),
            "none" => Ok(Self::None),
            other => Err(ConfigError::BadTlsMode(other.to_string())),
        }
    }
}

/// A `[[route]]`: mail for `domain` goes to `to` instead of the smart host or MX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub domain: String,
    pub to: RouteTarget,
}

/// Where a route sends mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// `smtp://host:port`: an internal server; opportunistic STARTTLS, no MX lookup.
    Smtp { host: String, port: u16 },
    /// `maildir`: local Maildirs under `mail_root`.
    Maildir,
}

impl RouteTarget {
    /// Parses the TOML `to` value: `smtp://host:port` (port defaults to 25) or `maildir`.
    pub fn parse(value: &str) -> Result<Self, ConfigError> {
        if value == "maildir" {
            return Ok(Self::Maildir);
        }
        let rest = value
            .strip_prefix("smtp://")
            .ok_or_else(|| ConfigError::BadRoute(value.to_string()))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains('/') {
            return Err(ConfigError::BadRoute(value.to_string()));
        }
        let (host, port) = match split_host_port(rest) {
            Ok(hp) => hp,
            Err(_) => (rest.to_string(), 25),
        };
        Ok(Self::Smtp { host, port })
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
    #[error("smarthost_tls must be \"starttls\", \"implicit\" or \"none\", not {0:?}")]
    BadTlsMode(String),
    #[error("route target must be \"smtp://host:port\" or \"maildir\", not {0:?}")]
    BadRoute(String),
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
}

/// Splits `host:port`, `[v6]:port` or `v6-literal` with port. The port is mandatory.
pub fn split_host_port(value: &str) -> Result<(String, u16), ConfigError> {
    let bad = || ConfigError::BadHostPort(value.to_string());
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok((addr.ip().to_string(), addr.port()));
    }
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || host.contains(':') {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    Ok((host.to_string(), port))
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
    fn route_targets_parse() {
        assert_eq!(
            RouteTarget::parse("maildir").ok(),
            Some(RouteTarget::Maildir)
        );
        assert_eq!(
            RouteTarget::parse("smtp://10.0.0.5:25").ok(),
            Some(RouteTarget::Smtp {
                host: "10.0.0.5".into(),
                port: 25
            })
        );
        assert_eq!(
            RouteTarget::parse("smtp://mail.corp.test").ok(),
            Some(RouteTarget::Smtp {
                host: "mail.corp.test".into(),
                port: 25
            })
        );
        assert!(RouteTarget::parse("http://x").is_err());
        assert!(RouteTarget::parse("smtp://").is_err());
    }

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
}

#[cfg(test)]
mod mailbox_tests {
    use super::*;

    #[test]
    fn only_known_mailboxes_exist_in_local_domains() {
        let mut config = DeliveryConfig::new("mx.example.test", "/tmp/mail");
        config.local_domains = vec!["example.test".into()];
        assert!(
            config.mailbox_exists("Ghost", "example.test"),
            "no list: anything"
        );
        let list = MailboxList::new(["alice@example.test".to_string()]);
        config.local_mailboxes = Some(list.clone());
        assert!(config.mailbox_exists("Alice", "EXAMPLE.test"));
        assert!(!config.mailbox_exists("Ghost.Box", "example.test"));
        assert!(
            config.mailbox_exists("anyone", "other.test"),
            "not a local domain"
        );
        list.replace(["ghost.box@example.test".to_string()]);
        assert!(
            config.mailbox_exists("Ghost.Box", "example.test"),
            "reload reaches the runner"
        );
        assert!(!config.mailbox_exists("alice", "example.test"));
    }
}

//! relayward's configuration file (TOML).
//!
//! Parsing is strict: every table refuses unknown keys (`deny_unknown_fields`), so a typo such as
//! `trusted_network` fails loudly with the key and line instead of silently leaving a default in
//! place. Parsing checks only the shape; [`Config::validate`] then refuses what would make the
//! server an open relay (or otherwise not work), and says for each problem why and what to write
//! instead. `relayward serve` refuses to start on any [`Severity::Error`].
//!
//! The names of keys are a contract with the docs, the tests and admins' files: rename nothing.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
pub use relayward_protocol::route::{RelayDomain, RouteTarget, Router, split_host_port};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub mod dkim;
mod effective;
mod live;
mod locate;
mod password;
pub mod tls_policy;
pub mod tls_report;
pub use effective::Setting;
pub use live::Live;
pub use locate::line_of;
pub use password::{HashError, check_password_hash, hash_password, read_secret_file};

/// The configuration `relayward serve` runs with when given no file: loopback only, local domain
/// `localhost`, no users. It is also the sample shown to admins, so it is written as a file and
/// parsed, never built in code.
pub const EMBEDDED_DEFAULT_TOML: &str = r#"# relayward's embedded default: loopback only, mail for @localhost, no users.
# `relayward serve` runs with exactly this when given no --config. Every other setting is
# listed below, commented out, at its default: uncomment and change what you need, then check
# with `relayward check-config --config FILE` (add --effective to see every value in force).
# Durations are written like "90s", "5m", "2h", "5d".

hostname = "localhost"            # banner, EHLO, Received:, the generated certificate
data_dir = "./relayward-data"     # queue/, mail/ (Maildirs), tls/ (generated pair), admin.sock
# run_as = "relayward"            # started as root: bind the listeners, then run as this user
# run_as_group = "relayward"      # default: run_as's primary group

[[listen]]
address = "127.0.0.1:2525"
kind = "mx"                       # mx | submission | submissions

[[listen]]
address = "127.0.0.1:2587"
kind = "submission"

# [tls]                           # without it a self-signed pair is made in data_dir/tls
# cert = "/etc/relayward/cert.pem"
# key = "/etc/relayward/key.pem"

[relay]
local_domains = ["localhost"]
trusted_networks = ["127.0.0.1/32", "::1/128"]
# mailboxes = []                  # local mailboxes without a login; postmaster@ always exists
# trusted_proxies = []            # peers whose PROXY protocol header is honoured

# Add users with a hash from `relayward hash-password` (reads the password on stdin):
# [[user]]
# login = "alice@localhost"
# password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."
# send_as = ["alice@localhost"]   # default: [login]

# [delivery]
# smarthost = "smtp.provider.example:587"   # without it: MX delivery
# smarthost_tls = "starttls"                # starttls | implicit | none (none only to loopback)
# smarthost_user = "relay@example.test"
# smarthost_password_file = "/etc/relayward/smarthost.secret"
# ca_file = "/etc/relayward/private-ca.pem" # extra trust anchors for the smart host
# mx_port = 25
# max_queue_lifetime = "5d"
# delay_notice_after = "4h"                 # one delay notice to senders that asked; "off": never
# tls_policy = "mta-sts-dane"              # honour MTA-STS and DANE | "opportunistic"
# tls_policy_ca_file = "/etc/relayward/extra-roots.pem"   # extra roots where TLS is verified
# mta_sts_port = 443                        # HTTPS port of mta-sts.DOMAIN (tests only)
# connections_per_destination = 20          # deliveries at once to one destination
# max_connections = 100                     # deliveries at once in total
# connection_cache_time = "10s"             # an idle connection waits this long for the next message; "0s": no reuse
# connection_reuse_time_limit = "5m"        # a connection carries mail only this long after it opened
# retry_schedule = ["1m", "5m", "15m", "30m", "1h", "2h", "4h"]   # the last one repeats
# connect_timeout = "30s"
# command_timeout = "5m"                    # greeting and each reply before DATA
# data_timeout = "10m"                      # each write of the content, and the final reply
# local_before_reply = true                 # mail only for local mailboxes: into them before 250

# [dns]
# nameservers = []                          # e.g. ["127.0.0.1:5353"]; default: the system resolver
# trust_anchor = "/etc/relayward/root.key" # DNSSEC anchors for DANE; default: the IANA root keys

# [[tls_policy]]                            # the admin's rule for one recipient domain
# domain = "bank.example"
# mode = "require-verified"                 # require-verified | none (opportunistic)

# [tls_report]                              # TLS-RPT (RFC 8460) reports to policy domains that ask
# enabled = false                           # count MTA-STS/DANE outcomes, send daily reports
# organization = "Example Ltd"              # organization-name; default: hostname
# contact = "tlsrpt@example.test"           # contact-info; default: the from address
# from = "tlsrpt@example.test"              # sender of mailed reports; default: postmaster@hostname
# interval = "1d"                           # one report per UTC day
# retry_after = "5m"                        # a failed https: report is tried again after
#                                           # 5m, 15m, 45m, ... for up to 24 hours

# [[route]]                                 # a domain relayward fronts: accept, forward
# domain = "corp.example.test"
# to = "smtp://10.0.0.5:25"                 # or "maildir"
# recipients = ["info@corp.example.test"]   # only these exist (default: ask the server)
# verify_recipients = true                  # smtp:// without recipients: RCPT probe first

# [[dkim]]                                  # sign mail relayed for users / trusted networks
# domain = "example.test"                   # d=: mail whose From: is in this domain
# selector = "rw2026"                       # s=: record at rw2026._domainkey.example.test
# private_key_file = "/etc/relayward/dkim-rw2026.pem"   # from `relayward dkim keygen`
# algorithm = "rsa-sha256"                  # rsa-sha256 (default) | ed25519-sha256
# headers = ["From", "Subject", "Date"]     # default: the usual fields, oversigned

# [queue]
# backend = "file"                          # file (data_dir/queue) | postgres (shared by nodes)
# min_free_bytes = 104857600                # refuse new mail (452 4.3.1) below this free space
# commit = "auto"                           # syncfs (one flush per batch) | fdatasync (per
#                                           # message) | auto: syncfs if the spool has its own mount
# postgres_url = "postgres://relayward@db.example.test/relayward"   # no password in it
# postgres_password_file = "/etc/relayward/postgres.secret"
# postgres_tls = "disable"                  # disable | require (verified, like verify-full)
# postgres_ca_file = "/etc/relayward/db-ca.pem"
# lease_timeout = "2m"                      # a dead node's claims are taken over after this
# node_name = "mx1"                         # default: hostname

# [metrics]
# listen = "127.0.0.1:9425"                 # /metrics (Prometheus) and /healthz; no authentication

# [limits]
# max_connections = 1000
# max_connections_per_ip = 20
# connections_per_ip_per_minute = 60
# max_message_size = 26214400               # advertised in SIZE; 552 5.3.4 beyond
# max_recipients = 100                      # 452 4.5.3 beyond
# max_errors = 10                           # then 421 and disconnect
# greet_pause = "300ms"                     # mx listeners: talking before the banner: 554
# greet_pause_ttl = "1d"                   # a client that waited once is not paused again for this long
# messages_per_user_per_hour = 200          # 451 4.7.1 beyond (compromised accounts)
# messages_per_user_per_day = 1000
# recipients_per_user_per_hour = 1000
# recipients_per_user_per_day = 5000
# auth_failures_per_ip = 5                  # then AUTH is refused from that IP (454 4.7.0)
# auth_failures_per_login = 10
# auth_failure_window = "1h"
# auth_ban = "15m"
# greeting_timeout = "5m"
# command_timeout = "5m"
# data_block_timeout = "3m"
# data_end_timeout = "10m"
# session_timeout = "30m"
"#;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Our name in the banner, EHLO reply, `Received:` headers and the self-signed certificate.
    pub hostname: String,
    /// Where the queue, Maildirs and the generated TLS pair live.
    pub data_dir: PathBuf,
    /// The user to run as after binding the listeners, when started as root (e.g.
    /// `"relayward"`). The data directory must be writable by that user.
    #[serde(default)]
    pub run_as: Option<String>,
    /// The group to run as with `run_as`; default: that user's primary group.
    #[serde(default)]
    pub run_as_group: Option<String>,
    /// Listening sockets; at least one is required.
    #[serde(default)]
    pub listen: Vec<Listen>,
    /// Certificate and key files. Without this table a self-signed pair is generated in
    /// `data_dir/tls/` (see `relayward_server::tls`).
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Who may send what where: the input of the router and of `relayward_server::policy`.
    #[serde(default)]
    pub relay: Relay,
    /// Accounts that may authenticate (AUTH, only under TLS).
    #[serde(default, rename = "user")]
    pub users: Vec<User>,
    /// How queued mail leaves: MX lookup or a smart host.
    #[serde(default)]
    pub delivery: Delivery,
    /// Resolver settings for MX delivery.
    #[serde(default)]
    pub dns: Dns,
    /// Domains we front (Postfix's relay_domains): any recipient accepted, forwarded to `to`.
    #[serde(default, rename = "route")]
    pub routes: Vec<Route>,
    /// Abuse limits and timeouts.
    #[serde(default)]
    pub limits: Limits,
    /// Queue storage settings.
    #[serde(default)]
    pub queue: QueueSettings,
    /// DKIM keys for signing mail relayed for users and trusted networks.
    #[serde(default, rename = "dkim")]
    pub dkim: Vec<dkim::DkimKey>,
    /// `[[tls_policy]]`: per-domain overrides of `[delivery] tls_policy`.
    #[serde(default, rename = "tls_policy")]
    pub tls_policies: Vec<tls_policy::DomainTlsPolicy>,
    /// `[tls_report]`: TLS-RPT (RFC 8460) aggregate reports, off by default.
    #[serde(default)]
    pub tls_report: tls_report::TlsReportSettings,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsSettings,
}

/// `[metrics]`: where `/metrics` and `/healthz` are served over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// `ip:port` of the HTTP endpoint, e.g. `"127.0.0.1:9425"`. Without it, no endpoint. It
    /// has no authentication: keep it on loopback or a management network.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

/// One `[[listen]]` socket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// `ip:port` to bind, e.g. `0.0.0.0:25` or `[::]:587`.
    pub address: SocketAddr,
    /// What the listener is for; decides whether MAIL requires AUTH and whether TLS is implicit.
    pub kind: ListenerKind,
}

/// The role of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// Port 25 role: mail for local domains from anyone; relay only for trusted networks or
    /// authenticated users. STARTTLS offered, AUTH offered only after it.
    Mx,
    /// Port 587 role (RFC 6409): STARTTLS, then AUTH, before any MAIL.
    Submission,
    /// Port 465 role (RFC 8314): TLS from the first byte, AUTH before any MAIL.
    Submissions,
}

impl ListenerKind {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Mx => "mx",
            ListenerKind::Submission => "submission",
            ListenerKind::Submissions => "submissions",
        }
    }

    /// True when TLS starts before the banner (no STARTTLS).
    pub fn implicit_tls(self) -> bool {
        self == ListenerKind::Submissions
    }
}

impl fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[tls]`: a certificate chain and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[relay]`: the relay policy's inputs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Relay {
    /// Domains whose mailboxes live here (Maildir). Must not be empty.
    #[serde(default)]
    pub local_domains: Vec<String>,
    /// Clients in these networks may relay without AUTH. Keep it to networks you run: anything
    /// wider than a /8 (IPv6: /32) is refused. Default: loopback only.
    #[serde(default = "default_trusted_networks")]
    pub trusted_networks: Vec<Cidr>,
    /// Extra local mailboxes without a login, e.g. `info@example.test`. Every `[[user]]` whose
    /// login is in a local domain is a mailbox too, and `postmaster@<each local domain>` always
    /// exists (RFC 5321 §4.5.1).
    #[serde(default)]
    pub mailboxes: Vec<String>,
    /// Peers allowed to send a PROXY protocol (v1/v2) header naming the real client, on any
    /// listener; that client then counts for policy, limits and `Received:`. These peers must
    /// send the header before anything else (within `greeting_timeout`, at most 10 s), or the
    /// connection is closed. From anyone else a PROXY line is an unknown command (`500 5.5.1`).
    /// Default: none.
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
}

impl Default for Relay {
    fn default() -> Self {
        Self {
            local_domains: Vec::new(),
            trusted_networks: default_trusted_networks(),
            mailboxes: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

fn default_trusted_networks() -> Vec<Cidr> {
    ["127.0.0.1/32", "::1/128"]
        .iter()
        .filter_map(|text| Cidr::from_str(text).ok())
        .collect()
}

/// A network as written in the file, e.g. `192.0.2.0/24`; a bare address means that one host.
///
/// Kept exactly as written, because ipnet accepts `10.1.2.3/8` (host bits set) without a word and
/// an admin who wrote that probably meant something else: [`Config::validate`] asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    text: String,
    net: IpNet,
}

impl Cidr {
    /// The network with any host bits as written (see [`Cidr::has_host_bits`]).
    pub fn net(&self) -> IpNet {
        self.net
    }

    /// The text from the file.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True for `10.1.2.3/8`: an address part that is not the network address.
    pub fn has_host_bits(&self) -> bool {
        self.net.addr() != self.net.network()
    }

    /// Whether `ip` (already canonical: IPv4-mapped IPv6 as IPv4) is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.net.trunc().contains(&ip)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let net = if text.contains('/') {
            IpNet::from_str(text).map_err(|_| {
                format!(
                    "{text:?} is not a network; write it like \"192.0.2.0/24\" or \"2001:db8::/32\""
                )
            })?
        } else {
            let ip = IpAddr::from_str(text).map_err(|_| {
                format!("{text:?} is not an IP address or network (e.g. \"192.0.2.0/24\")")
            })?;
            IpNet::from(ip)
        };
        Ok(Self {
            text: text.to_string(),
            net,
        })
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Cidr::from_str(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One `[[user]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// The AUTH login; compared case-insensitively. When it is an address in a local domain it
    /// is also that user's mailbox.
    pub login: String,
    /// Argon2 PHC string from `relayward hash-password`; never the password itself.
    pub password_hash: String,
    /// Envelope senders (MAIL FROM) this user may use, compared case-insensitively.
    /// Default: the login alone.
    #[serde(default)]
    pub send_as: Option<Vec<String>>,
}

impl User {
    /// The sender addresses this user may use (`send_as`, or `[login]` when not given).
    pub fn effective_send_as(&self) -> Vec<String> {
        match &self.send_as {
            Some(list) => list.clone(),
            None => vec![self.login.clone()],
        }
    }
}

/// `[delivery]`: how queued mail leaves.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    /// `host:port` of a smart host that takes all non-local mail. Without it: MX delivery.
    #[serde(default)]
    pub smarthost: Option<String>,
    /// TLS to the smart host; always verified. `none` is allowed only to a loopback host.
    #[serde(default)]
    pub smarthost_tls: SmarthostTls,
    /// AUTH login at the smart host.
    #[serde(default)]
    pub smarthost_user: Option<String>,
    /// File holding the smart host password (first line), so the password stays out of this file.
    #[serde(default)]
    pub smarthost_password_file: Option<PathBuf>,
    /// PEM CA bundle to verify the smart host with (a private CA, or tests). Default: the
    /// public web PKI roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Port used for MX hosts (MX records carry none). 25 except in tests.
    #[serde(default = "default_mx_port")]
    pub mx_port: u16,
    /// How long a message may wait for delivery before it bounces, e.g. `"5d"`.
    #[serde(
        default = "default_queue_lifetime",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub max_queue_lifetime: Duration,
    /// How long a message may wait before each recipient that asked (`NOTIFY=DELAY`, or our
    /// own users by default) gets one delay notice, e.g. `"4h"`; `"off"` or `"0"`: never.
    #[serde(
        default = "default_delay_notice_after",
        deserialize_with = "de_duration_or_off",
        serialize_with = "ser_duration_or_off"
    )]
    pub delay_notice_after: Option<Duration>,
    /// What recipient domains may demand of our TLS on MX delivery: `"mta-sts-dane"` (MTA-STS
    /// and DANE honoured) or `"opportunistic"`. Per-domain overrides: `[[tls_policy]]`.
    #[serde(default)]
    pub tls_policy: tls_policy::TlsPolicyMode,
    /// PEM trust anchors added to the public web PKI roots wherever the TLS policy verifies
    /// a certificate: MTA-STS policy hosts (HTTPS) and MX hosts under MTA-STS or
    /// `require-verified`. For private CAs and tests.
    #[serde(default)]
    pub tls_policy_ca_file: Option<PathBuf>,
    /// Port of the HTTPS server `mta-sts.DOMAIN` MTA-STS policies are fetched from: 443
    /// except in tests (as `mx_port`).
    #[serde(default = "default_mta_sts_port")]
    pub mta_sts_port: u16,
    /// Deliveries running at once to one destination (a recipient domain's MX hosts, a
    /// `[[route]]` host, the smart host); Postfix's `default_destination_concurrency_limit`.
    #[serde(default = "default_connections_per_destination")]
    pub connections_per_destination: u32,
    /// Deliveries running at once in total (Postfix's `default_process_limit`), and the most
    /// idle connections kept for reuse.
    #[serde(default = "default_delivery_connections")]
    pub max_connections: u32,
    /// How long an idle connection to a next hop is kept for the next message to the same
    /// host (Postfix's `smtp_connection_cache_time_limit`, 2 s; ours is longer because a
    /// queued message may wait for the runner's next pass). `"0s"`: one connection per delivery.
    #[serde(
        default = "default_connection_cache_time",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub connection_cache_time: Duration,
    /// How long after it was opened a connection may still carry another message (Postfix's
    /// `smtp_connection_reuse_time_limit`, 300 s): a busy destination would otherwise keep one
    /// connection forever, past a change of its MX records or its load balancer's mind.
    #[serde(
        default = "default_connection_reuse_time_limit",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub connection_reuse_time_limit: Duration,
    /// Waits between attempts for a deferred recipient, e.g. `["1m", "5m", "1h"]`; the last
    /// one repeats until `max_queue_lifetime`. Each wait varies by ±10 % so that deferred mail
    /// does not return all at once.
    #[serde(
        default = "default_retry_schedule",
        deserialize_with = "de_durations",
        serialize_with = "ser_durations"
    )]
    pub retry_schedule: Vec<Duration>,
    /// Time to open the TCP connection to a next hop.
    #[serde(
        default = "default_connect_timeout",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub connect_timeout: Duration,
    /// Time for the next hop's greeting and each reply before DATA (RFC 5321 §4.5.3.2: at
    /// least 5 minutes).
    #[serde(
        default = "default_command_timeout",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub command_timeout: Duration,
    /// Time for each write of the content and for the reply to the final dot (RFC 5321
    /// §4.5.3.2.6: 10 minutes).
    #[serde(
        default = "default_data_timeout",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub data_timeout: Duration,
    /// A small message (up to 64 KiB, 16 recipients) whose every recipient is a local mailbox
    /// is written into the Maildirs before the `250` instead of being queued first (one
    /// durable file per copy instead of two): all copies or none, and when not all could be
    /// written the whole message is queued. `false`: all mail through the queue. Mail where a
    /// recipient asked `NOTIFY=SUCCESS` always goes through the queue.
    #[serde(default = "default_true")]
    pub local_before_reply: bool,
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            smarthost: None,
            smarthost_tls: SmarthostTls::default(),
            smarthost_user: None,
            smarthost_password_file: None,
            ca_file: None,
            mx_port: default_mx_port(),
            max_queue_lifetime: default_queue_lifetime(),
            delay_notice_after: default_delay_notice_after(),
            tls_policy: tls_policy::TlsPolicyMode::default(),
            tls_policy_ca_file: None,
            mta_sts_port: default_mta_sts_port(),
            connections_per_destination: default_connections_per_destination(),
            max_connections: default_delivery_connections(),
            connection_cache_time: default_connection_cache_time(),
            connection_reuse_time_limit: default_connection_reuse_time_limit(),
            retry_schedule: default_retry_schedule(),
            connect_timeout: default_connect_timeout(),
            command_timeout: default_command_timeout(),
            data_timeout: default_data_timeout(),
            local_before_reply: true,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_connections_per_destination() -> u32 {
    20
}

fn default_delivery_connections() -> u32 {
    100
}

fn default_retry_schedule() -> Vec<Duration> {
    [1, 5, 15, 30, 60, 120, 240]
        .iter()
        .map(|minutes| Duration::from_secs(minutes * 60))
        .collect()
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_command_timeout() -> Duration {
    Duration::from_secs(5 * 60)
}

fn default_data_timeout() -> Duration {
    Duration::from_secs(10 * 60)
}

fn default_connection_cache_time() -> Duration {
    Duration::from_secs(10)
}

fn default_connection_reuse_time_limit() -> Duration {
    Duration::from_secs(300)
}

fn default_mx_port() -> u16 {
    25
}

fn default_mta_sts_port() -> u16 {
    443
}

fn default_queue_lifetime() -> Duration {
    Duration::from_secs(5 * 24 * 3600)
}

/// Four hours, as sendmail's `Timeout.queuewarn` (Postfix's `delay_warning_time` is off by
/// default, which leaves a sender guessing for the whole queue lifetime).
fn default_delay_notice_after() -> Option<Duration> {
    Some(Duration::from_secs(4 * 3600))
}

/// TLS mode towards the smart host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmarthostTls {
    /// Plain connect, then STARTTLS (required, verified). Port 587 style.
    #[default]
    Starttls,
    /// TLS from the first byte (verified). Port 465 style.
    Implicit,
    /// No TLS: only to a loopback host, where nothing crosses a network.
    None,
}

/// `[dns]`: resolver settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// Nameservers (`ip:port`) to ask instead of the system resolver.
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
    /// DNSSEC trust anchors for DANE (zone-file DNSKEY lines, `. IN DNSKEY 257 3 8 …`);
    /// default: the IANA root zone keys. Tests name their test zone's key here.
    #[serde(default)]
    pub trust_anchor: Option<PathBuf>,
}

/// One `[[route]]`: a domain we relay for, and where its mail goes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The domain (not a local domain). Its recipients are accepted from anyone — only those
    /// that exist there (see `recipients` and `verify_recipients`).
    pub domain: String,
    /// `smtp://host[:port]` or `maildir`.
    #[serde(deserialize_with = "de_route_target", serialize_with = "ser_display")]
    pub to: RouteTarget,
    /// The addresses that exist in the domain (like Postfix's `relay_recipient_maps`): only
    /// these are accepted, and nothing is asked of the internal server at RCPT time.
    #[serde(default)]
    pub recipients: Option<Vec<String>>,
    /// For an `smtp://` route without `recipients`: ask the internal server at RCPT time
    /// whether it takes the recipient (a short MAIL FROM:<> / RCPT probe, cached), so a
    /// stranger's mail for a user who does not exist is refused at once instead of bouncing
    /// to a forged sender later. Default `true`; `false` accepts every local part (and
    /// `check-config` warns that strangers can then cause backscatter).
    #[serde(default)]
    pub verify_recipients: Option<bool>,
}

impl Route {
    /// Whether RCPT must be confirmed by the internal server (the default for SMTP routes
    /// without a recipient list).
    pub fn verifies_recipients(&self) -> bool {
        matches!(self.to, RouteTarget::Smtp { .. })
            && self.recipients.is_none()
            && self.verify_recipients.unwrap_or(true)
    }
}

/// Reads a `[[route]]` `to` value (`"smtp://host:port"` or `"maildir"`).
fn de_route_target<'de, D: Deserializer<'de>>(deserializer: D) -> Result<RouteTarget, D::Error> {
    let text = String::deserialize(deserializer)?;
    RouteTarget::from_str(&text).map_err(serde::de::Error::custom)
}

/// `[limits]`: abuse limits and timeouts. Every field has a default; the defaults suit a small
/// organisation's relay and stop the "compromised account sends 300,000 messages" incident.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Concurrent connections in total; beyond it new ones get `421 4.7.0`.
    pub max_connections: u32,
    /// Concurrent connections from one client IP (IPv6: one /64); beyond it `421 4.7.0`.
    pub max_connections_per_ip: u32,
    /// New connections from one client IP (IPv6: one /64) per minute.
    pub connections_per_ip_per_minute: u32,
    /// Largest message in octets, advertised in EHLO SIZE and enforced while receiving
    /// (`552 5.3.4`). Default 25 MiB.
    pub max_message_size: u64,
    /// Recipients per message; the one after gets `452 4.5.3`. RFC 5321 §4.5.3.1.8 asks for at
    /// least 100.
    pub max_recipients: u32,
    /// Failed commands per session before we answer 421 and disconnect.
    pub max_errors: u32,
    /// Messages one authenticated user may send per hour (then `451 4.7.1` at MAIL; every
    /// accepted MAIL counts, see `relayward_server::ratelimit`). The budget survives SIGHUP.
    pub messages_per_user_per_hour: u32,
    /// Messages one authenticated user may send per day (then `451 4.7.1` at MAIL).
    pub messages_per_user_per_day: u32,
    /// Recipients one authenticated user may address per hour (then `451 4.7.1` at RCPT; every
    /// accepted, distinct RCPT counts).
    pub recipients_per_user_per_hour: u32,
    /// Recipients one authenticated user may address per day (then `451 4.7.1` at RCPT).
    pub recipients_per_user_per_day: u32,
    /// Failed AUTH attempts from one client IP (IPv6: /64) within `auth_failure_window` before
    /// that IP is banned from AUTH for `auth_ban` (`454 4.7.0`). An attempt counts as failed
    /// from the moment it is admitted until its password proves right, so parallel guesses
    /// count. Addresses in `trusted_networks` get the growing delay but are never banned: a
    /// ban there (after a few `relayward probe` runs, say) would lock out every user behind
    /// them.
    pub auth_failures_per_ip: u32,
    /// Failed AUTH attempts for one login within `auth_failure_window` after which that login
    /// is refused (`454 4.7.0`) from IPs that have failed it more than once themselves. One
    /// typo is forgiven and IPs without failures are never refused, so an attacker cannot lock
    /// the real user out from her own address.
    pub auth_failures_per_login: u32,
    /// How long failures are remembered, e.g. `"1h"`.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub auth_failure_window: Duration,
    /// How long an IP stays banned from AUTH, e.g. `"15m"`.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub auth_ban: Duration,
    /// How long an `mx` listener waits before its banner, listening: a client that talks
    /// before the greeting is a spam robot (Postfix postscreen's pregreet test) and gets
    /// `554 5.5.1`. Submission listeners and trusted networks never wait. `"0s"` turns the
    /// test off.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub greet_pause: Duration,
    /// How long a client that waited for the banner is remembered and greeted without the
    /// pause (per IPv4 address / IPv6 /64; postscreen's `postscreen_greet_ttl`), e.g. `"1d"`.
    /// `"0s"` makes every connection wait.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub greet_pause_ttl: Duration,
    /// Everything before the first command: reading a PROXY header (capped at 10 s), the TLS
    /// handshake (implicit TLS and after STARTTLS), and the client's first command after our
    /// banner (RFC 5321 §4.5.3.2.1: 5 minutes).
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub greeting_timeout: Duration,
    /// Wait for the next command (RFC 5321 §4.5.3.2.2–.3, 5 minutes), and for the client to
    /// read the replies we write (a client that stops reading stalls our writes).
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub command_timeout: Duration,
    /// Wait for each chunk of DATA content (RFC 5321 §4.5.3.2.5, 3 minutes).
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub data_block_timeout: Duration,
    /// Time we may take after the final dot before answering, a bound on our own queue write
    /// (RFC 5321 §4.5.3.2.6 gives the client 10 minutes).
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub data_end_timeout: Duration,
    /// Total lifetime of one connection, whatever it does: slowloris clients that send a byte
    /// just before each timeout are still cut off. Applies before TLS too.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub session_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        Self {
            max_connections: 1000,
            max_connections_per_ip: 20,
            connections_per_ip_per_minute: 60,
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_errors: 10,
            messages_per_user_per_hour: 200,
            messages_per_user_per_day: 1000,
            recipients_per_user_per_hour: 1000,
            recipients_per_user_per_day: 5000,
            auth_failures_per_ip: 5,
            auth_failures_per_login: 10,
            auth_failure_window: minutes(60),
            auth_ban: minutes(15),
            greet_pause: Duration::from_millis(300),
            greet_pause_ttl: Duration::from_secs(86_400),
            greeting_timeout: minutes(5),
            command_timeout: minutes(5),
            data_block_timeout: minutes(3),
            data_end_timeout: minutes(10),
            session_timeout: minutes(30),
        }
    }
}

/// `[queue]`: queue storage.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSettings {
    /// Where the queue lives: `file` (the default: a spool under `data_dir/queue`) or
    /// `postgres` (one queue shared by every node that names the same database).
    pub backend: QueueBackend,
    /// Free space (octets) the data directory must keep; below it new mail gets `452 4.3.1`
    /// instead of filling the disk. Default 100 MiB. (File spool only.)
    pub min_free_bytes: u64,
    /// How the file spool makes a batch of new messages durable before their `250`: `syncfs`
    /// (one flush of the spool's filesystem covers every message that finished in the batch;
    /// best when the spool has a filesystem of its own), `fdatasync` (each message file flushed
    /// on its own; for a spool on a filesystem other busy programs write to, whose dirty data a
    /// `syncfs` would wait for), or `auto` (the default: `syncfs` when `data_dir/queue` or
    /// `data_dir` is a mount point, else `fdatasync`). (File spool only.)
    pub commit: SpoolCommit,
    /// `postgres://user@host:port/database` (also `?host=/run/postgresql` for a Unix socket).
    /// Without a password: that comes from `postgres_password_file`.
    pub postgres_url: Option<String>,
    /// File whose first line is the database password, so it stays out of this file.
    pub postgres_password_file: Option<PathBuf>,
    /// TLS to the database: `disable` (the default; for a Unix socket or a private link) or
    /// `require` (encrypted, and the server's certificate verified, like libpq's
    /// `verify-full`).
    pub postgres_tls: PostgresTls,
    /// PEM CA bundle to verify the database server with (a private CA). Default: the public
    /// web PKI roots.
    pub postgres_ca_file: Option<PathBuf>,
    /// How long a node's claim on due mail holds without its heartbeat: after this, a node
    /// that died is taken over by the others. Default `"2m"`.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub lease_timeout: Duration,
    /// This node's name in the shared queue (who accepted what, who holds which lease).
    /// Default: `hostname`.
    pub node_name: Option<String>,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            backend: QueueBackend::File,
            min_free_bytes: 100 * 1024 * 1024,
            commit: SpoolCommit::Auto,
            postgres_url: None,
            postgres_password_file: None,
            postgres_tls: PostgresTls::Disable,
            postgres_ca_file: None,
            lease_timeout: Duration::from_secs(120),
            node_name: None,
        }
    }
}

/// `[queue] commit`: how the file spool flushes a batch of new messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpoolCommit {
    /// `syncfs` when the spool is on a filesystem of its own (a mount point), else `fdatasync`.
    #[default]
    Auto,
    /// One `syncfs(2)` of the spool's filesystem per batch.
    Syncfs,
    /// One `fdatasync(2)` per message file.
    Fdatasync,
}

impl SpoolCommit {
    /// The value as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            SpoolCommit::Auto => "auto",
            SpoolCommit::Syncfs => "syncfs",
            SpoolCommit::Fdatasync => "fdatasync",
        }
    }
}

/// `[queue] backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    /// Fsynced files under `data_dir/queue`, for one node.
    #[default]
    File,
    /// A PostgreSQL database shared by several nodes.
    Postgres,
}

impl QueueBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueBackend::File => "file",
            QueueBackend::Postgres => "postgres",
        }
    }
}

/// `[queue] postgres_tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PostgresTls {
    #[default]
    Disable,
    Require,
}

/// Reads a humantime string such as `"5d"`, `"90s"` or `"1h 30m"`; the error says how to
/// write one. Public for other relayward configuration files (`relayward probe-service`).
pub fn de_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration ({e}); write e.g. \"90s\", \"5m\", \"2h\" or \"5d\""
        ))
    })
}

/// A duration as [`de_duration`] reads it, or `"off"` / `"0"` for none.
pub fn de_duration_or_off<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let duration = humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration ({e}); write e.g. \"30m\", \"4h\" or \"1d\", or \"off\""
        ))
    })?;
    Ok((!duration.is_zero()).then_some(duration))
}

fn de_durations<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Duration>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts
        .iter()
        .map(|text| {
            humantime::parse_duration(text).map_err(|e| {
                serde::de::Error::custom(format!(
                    "{text:?} is not a duration ({e}); write a list like [\"1m\", \"5m\", \"1h\"]"
                ))
            })
        })
        .collect()
}

/// Writes a duration the way the file reads it (`"5m"`, `"1h 30m"`).
fn ser_duration<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&humantime::format_duration(*duration).to_string())
}

/// [`ser_duration`], or `"off"` for none (as [`de_duration_or_off`] reads it).
fn ser_duration_or_off<S: Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => ser_duration(duration, serializer),
        None => serializer.serialize_str("off"),
    }
}

fn ser_durations<S: Serializer>(durations: &[Duration], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(
        durations
            .iter()
            .map(|d| humantime::format_duration(*d).to_string()),
    )
}

fn ser_display<S: Serializer, T: fmt::Display>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// Why a configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, a wrong type. `message` is toml's, which names the key
    /// and shows the line.
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
}

/// How bad a [`ConfigProblem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// `relayward serve` refuses to start.
    Error,
    /// Works, but probably not as intended; printed at start and by `check-config`.
    Warning,
}

/// One finding of [`Config::validate`]: which key, and a message that says why it is a problem
/// and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub severity: Severity,
    /// Dotted path of the key, e.g. `relay.trusted_networks[0]` or `user[2].send_as[1]`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: {}: {}", self.key, self.message)
    }
}

/// Parses TOML text into `T`. `origin` names the text in errors (a file name, or
/// `"<embedded default>"`). The relay's and the probe service's files are read the same way,
/// so their parse errors read the same.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        origin: origin.to_string(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// Reads a configuration file and parses it into `T` (see [`parse_toml`]).
pub fn load_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_toml(&text, &path.display().to_string())
}

impl Config {
    /// Parses TOML text. `origin` names the text in errors (a file name, or `"<embedded>"`).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        parse_toml(text, origin)
    }

    /// Reads and parses a file. Does not validate: call [`Config::validate`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        load_toml(path)
    }

    /// The configuration used without a file: [`EMBEDDED_DEFAULT_TOML`].
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Self::from_toml_str(EMBEDDED_DEFAULT_TOML, "<embedded default>")
    }

    /// Every problem found, errors first.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = checks::all(self);
        problems.sort_by_key(|p| p.severity);
        problems
    }

    /// Checks the configuration. `Ok(warnings)` when there is no error (the list may be empty);
    /// `Err(problems)` with errors first (and any warnings after) otherwise.
    ///
    /// This returns the warnings on success too (rather than `Result<(), _>`), so that `serve`
    /// can print them and `check-config` can show them without a second call.
    pub fn validate(&self) -> Result<Vec<ConfigProblem>, Vec<ConfigProblem>> {
        let problems = self.problems();
        if problems.iter().any(|p| p.severity == Severity::Error) {
            Err(problems)
        } else {
            Ok(problems)
        }
    }

    /// Human-readable effective policy, for `relayward check-config` and the startup log.
    pub fn effective_policy_summary(&self) -> String {
        summary::render(self)
    }

    /// Local domains, lower-case, without duplicates, in file order.
    pub fn normalized_local_domains(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.relay
            .local_domains
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .filter(|d| seen.insert(d.clone()))
            .collect()
    }

    /// Every local mailbox as lower-case `local@domain`, with where it comes from:
    /// postmaster of each local domain, `[relay] mailboxes`, and users whose login is a local
    /// address. Entries whose domain is not local are skipped (validate reports them).
    pub fn local_mailboxes(&self) -> Vec<(String, MailboxSource)> {
        let locals: HashSet<String> = self.normalized_local_domains().into_iter().collect();
        let mut out: Vec<(String, MailboxSource)> = Vec::new();
        let mut push = |address: String, source: MailboxSource| {
            let is_local = address
                .rsplit_once('@')
                .is_some_and(|(_, domain)| locals.contains(domain));
            if is_local && !out.iter().any(|(a, _)| *a == address) {
                out.push((address, source));
            }
        };
        for domain in self.normalized_local_domains() {
            push(format!("postmaster@{domain}"), MailboxSource::Postmaster);
        }
        for mailbox in &self.relay.mailboxes {
            push(mailbox.to_ascii_lowercase(), MailboxSource::Configured);
        }
        for user in &self.users {
            push(user.login.to_ascii_lowercase(), MailboxSource::User);
        }
        out
    }

    /// The routing table this configuration describes: local domains and their mailboxes,
    /// `[[route]]` domains, and whether remote mail goes to the smart host. The one input of
    /// "where does this recipient go?" (see [`relayward_protocol::route`]).
    pub fn router(&self) -> Router {
        let relay_domains = self.routes.iter().map(|route| {
            let domain = RelayDomain {
                target: route.to.clone(),
                recipients: route.recipients.clone(),
                verify: route.verifies_recipients(),
            };
            (route.domain.to_ascii_lowercase(), domain)
        });
        Router::new(
            self.normalized_local_domains(),
            self.local_mailboxes()
                .into_iter()
                .map(|(address, _)| address),
            relay_domains,
            self.delivery.smarthost.is_some(),
        )
    }

    /// `[[route]]` domains (lower-case) and their targets.
    pub fn relay_domains(&self) -> HashMap<String, RouteTarget> {
        self.routes
            .iter()
            .map(|r| (r.domain.to_ascii_lowercase(), r.to.clone()))
            .collect()
    }
}

/// Why a local mailbox exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailboxSource {
    /// `postmaster@<local domain>`, required by RFC 5321 §4.5.1.
    Postmaster,
    /// Listed in `[relay] mailboxes`.
    Configured,
    /// A `[[user]]` login in a local domain.
    User,
}

pub use checks::Findings;

/// The checks behind [`Config::validate`], one function per section.
mod checks {
    use super::*;

    /// Collects problems with their keys. Public so other relayward configuration files
    /// (`relayward probe-service`) report theirs the same way.
    #[derive(Debug, Default)]
    pub struct Findings(Vec<ConfigProblem>);

    impl Findings {
        fn push(&mut self, severity: Severity, key: impl Into<String>, message: impl Into<String>) {
            self.0.push(ConfigProblem {
                severity,
                key: key.into(),
                message: message.into(),
            });
        }
        /// A problem that stops the program from starting.
        pub fn error(&mut self, key: impl Into<String>, message: impl Into<String>) {
            self.push(Severity::Error, key, message);
        }
        /// A problem worth saying that does not stop it.
        pub fn warn(&mut self, key: impl Into<String>, message: impl Into<String>) {
            self.push(Severity::Warning, key, message);
        }
        /// Every problem, errors first.
        pub fn into_problems(mut self) -> Vec<ConfigProblem> {
            self.0.sort_by_key(|p| p.severity);
            self.0
        }
    }

    pub(super) fn all(config: &Config) -> Vec<ConfigProblem> {
        let mut f = Findings::default();
        check_hostname(config, &mut f);
        check_listeners(config, &mut f);
        check_local_domains(config, &mut f);
        check_networks(
            "relay.trusted_networks",
            &config.relay.trusted_networks,
            &mut f,
        );
        check_networks(
            "relay.trusted_proxies",
            &config.relay.trusted_proxies,
            &mut f,
        );
        check_proxies_outside_trust(config, &mut f);
        check_mailboxes(config, &mut f);
        check_users(config, &mut f);
        check_routes(config, &mut f);
        check_delivery(&config.delivery, &mut f);
        check_delivery_concurrency(&config.delivery, &mut f);
        check_limits(&config.limits, &mut f);
        crate::dkim::check(&config.dkim, &mut f);
        check_queue(&config.queue, &mut f);
        crate::tls_policy::check(&config.tls_policies, &mut f);
        crate::tls_report::check(&config.tls_report, &mut f);
        check_run_as(config, &mut f);
        check_metrics(config, &mut f);
        f.0
    }

    /// The PostgreSQL settings: a URL when the backend needs one, never a password in it, and
    /// a warning for settings the chosen backend ignores.
    fn check_queue(queue: &QueueSettings, f: &mut Findings) {
        let postgres_keys = [
            ("queue.postgres_url", queue.postgres_url.is_some()),
            (
                "queue.postgres_password_file",
                queue.postgres_password_file.is_some(),
            ),
            ("queue.postgres_ca_file", queue.postgres_ca_file.is_some()),
            (
                "queue.postgres_tls",
                queue.postgres_tls != PostgresTls::Disable,
            ),
        ];
        if queue.backend == QueueBackend::File {
            for (key, set) in postgres_keys {
                if set {
                    f.warn(key, "ignored: [queue] backend is \"file\" (write backend = \"postgres\" to use the database)");
                }
            }
            return;
        }
        if queue.lease_timeout < Duration::from_secs(1) {
            f.error("queue.lease_timeout", "must be at least 1s: a shorter lease would be taken over while its delivery runs; write e.g. \"2m\"");
        }
        let Some(url) = &queue.postgres_url else {
            f.error("queue.postgres_url", "backend = \"postgres\" needs the database, e.g. postgres_url = \"postgres://relayward@db.example.test/relayward\"");
            return;
        };
        let Some(rest) = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
        else {
            f.error("queue.postgres_url", format!("{url:?} is not a postgres:// URL; write e.g. \"postgres://relayward@db.example.test/relayward\""));
            return;
        };
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let in_userinfo = authority
            .rsplit_once('@')
            .is_some_and(|(userinfo, _)| userinfo.contains(':'));
        let in_query = rest.split_once('?').is_some_and(|(_, query)| {
            query
                .split('&')
                .any(|pair| pair.to_ascii_lowercase().starts_with("password="))
        });
        if in_userinfo || in_query {
            f.error("queue.postgres_url", "holds a password; remove it from the URL and put it in postgres_password_file (this file is often world-readable, the password file need not be)");
        }
    }

    fn check_delivery_concurrency(delivery: &Delivery, f: &mut Findings) {
        for (name, value) in [
            (
                "connections_per_destination",
                delivery.connections_per_destination,
            ),
            ("max_connections", delivery.max_connections),
        ] {
            if value == 0 {
                f.error(
                    format!("delivery.{name}"),
                    "0 would deliver nothing; it must be at least 1 (remove the key for the default)",
                );
            }
        }
        if delivery.connections_per_destination > delivery.max_connections {
            f.warn(
                "delivery.connections_per_destination",
                format!(
                    "larger than delivery.max_connections ({}), so it never applies",
                    delivery.max_connections
                ),
            );
        }
        if delivery.retry_schedule.is_empty() {
            f.error(
                "delivery.retry_schedule",
                "empty: write at least one wait, e.g. [\"5m\", \"1h\"] (remove the key for the default)",
            );
        }
        for (i, step) in delivery.retry_schedule.iter().enumerate() {
            if step.is_zero() {
                f.error(
                    format!("delivery.retry_schedule[{i}]"),
                    "a zero wait would retry a deferred recipient in a tight loop; write e.g. \"1m\"",
                );
            }
        }
        let timeouts = [
            ("connect_timeout", delivery.connect_timeout, None),
            (
                "command_timeout",
                delivery.command_timeout,
                Some(Duration::from_secs(5 * 60)),
            ),
            (
                "data_timeout",
                delivery.data_timeout,
                Some(Duration::from_secs(10 * 60)),
            ),
        ];
        for (name, value, rfc_minimum) in timeouts {
            if value.is_zero() {
                f.error(
                    format!("delivery.{name}"),
                    "a zero timeout would fail every delivery; remove the key for the default",
                );
            } else if rfc_minimum.is_some_and(|minimum| value < minimum) {
                f.warn(
                    format!("delivery.{name}"),
                    format!(
                        "shorter than RFC 5321 §4.5.3.2 asks ({}): slow but working servers will see their mail deferred",
                        humantime::format_duration(rfc_minimum.unwrap_or_default())
                    ),
                );
            }
        }
    }

    /// A user or group name as `getpwnam`/`getgrnam` take it: whether it exists is checked
    /// when `serve` starts (and by `check-config`), not here.
    fn check_run_as(config: &Config, f: &mut Findings) {
        let names = [
            ("run_as", config.run_as.as_deref()),
            ("run_as_group", config.run_as_group.as_deref()),
        ];
        for (key, name) in names {
            let Some(name) = name else { continue };
            let usable = !name.is_empty()
                && name.len() <= 32
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !usable {
                f.error(
                    key,
                    format!("{name:?} is not a user or group name; write the name of a system account, e.g. \"relayward\""),
                );
            } else if key == "run_as" && name == "root" {
                f.warn(key, "running as root gives a mail server more power than it needs; create a dedicated user (e.g. `useradd --system relayward`)");
            }
        }
        if config.run_as_group.is_some() && config.run_as.is_none() {
            f.error(
                "run_as_group",
                "run_as_group needs run_as: set the user to run as, or remove run_as_group",
            );
        }
    }

    fn check_metrics(config: &Config, f: &mut Findings) {
        let Some(address) = config.metrics.listen else {
            return;
        };
        if address.port() != 0 && config.listen.iter().any(|l| l.address == address) {
            f.error(
                "metrics.listen",
                format!("{address} is also a [[listen]] address; give the metrics endpoint its own port, e.g. 127.0.0.1:9425"),
            );
        }
        if !address.ip().is_loopback() {
            f.warn(
                "metrics.listen",
                format!("{address} is not a loopback address and /metrics has no authentication; make sure only your monitoring can reach it"),
            );
        }
    }

    /// A trusted proxy inside a trusted network: every connection the proxy makes for itself,
    /// and every one it forwards as `UNKNOWN`/`LOCAL`, would be trusted to relay — the way
    /// most real open relays behind load balancers happen (research: Mailu#1835).
    fn check_proxies_outside_trust(config: &Config, f: &mut Findings) {
        for (i, proxy) in config.relay.trusted_proxies.iter().enumerate() {
            let inside = config
                .relay
                .trusted_networks
                .iter()
                .find(|net| net.contains(proxy.net().network()));
            if let Some(net) = inside {
                f.warn(
                    format!("relay.trusted_proxies[{i}]"),
                    format!(
                        "proxy {proxy} is inside trusted network {net}: connections it makes or forwards without a client address would be allowed to relay; keep proxies out of trusted_networks"
                    ),
                );
            }
        }
    }

    /// A host name as we accept it in the file: the protocol crate's grammar (LDH labels of
    /// 1–63 octets, no trailing dot, not all-numeric at the end), in its canonical form up to
    /// case. IDNs are written as A-labels: the parser turns every address's domain into its
    /// A-label, and the file's names are compared with that as written, so a U-label (or a
    /// fullwidth spelling) would be taken and never match anything.
    pub(crate) fn valid_domain(name: &str) -> bool {
        relayward_protocol::path::is_host_name(name) && a_label(name).is_none()
    }

    /// The canonical A-label form of `name` when it is a valid IDN written otherwise
    /// (`exämple.test` → `xn--exmple-cua.test`), for the error message; `None` for a name
    /// already in that form (any case) or one that is no name at all.
    pub(crate) fn a_label(name: &str) -> Option<String> {
        relayward_protocol::idn::to_ascii(name)
            .ok()
            .filter(|ascii| *ascii != name.to_ascii_lowercase())
    }

    /// `local@domain` with a dot-atom local part (RFC 5321 §4.1.2) of at most 64 octets.
    /// Quoted local parts are not accepted in the file: nobody needs them for a mailbox.
    pub(super) fn valid_address(address: &str) -> bool {
        let Some((local, domain)) = address.rsplit_once('@') else {
            return false;
        };
        // A dot-atom, UTF-8 letters allowed (RFC 6531): `jürgen@example.test` is a mailbox.
        !local.is_empty()
            && local.len() <= 64
            && relayward_protocol::path::is_dot_atom(local)
            && valid_domain(domain)
    }

    fn check_hostname(config: &Config, f: &mut Findings) {
        if !valid_domain(&config.hostname) {
            f.error(
                "hostname",
                format!(
                    "{:?} is not a host name; write this server's fully qualified name, e.g. \"mx.example.test\"",
                    config.hostname
                ),
            );
        }
    }

    fn check_listeners(config: &Config, f: &mut Findings) {
        if config.listen.is_empty() {
            f.error(
                "listen",
                "no [[listen]] socket: add one, e.g. [[listen]] address = \"0.0.0.0:25\" kind = \"mx\"",
            );
        }
        let mut seen = HashSet::new();
        for (i, listen) in config.listen.iter().enumerate() {
            // Port 0 asks the kernel for a free port each time, so it can repeat.
            if listen.address.port() != 0 && !seen.insert(listen.address) {
                f.error(
                    format!("listen[{i}].address"),
                    format!(
                        "{} is listed twice; each address can be bound only once",
                        listen.address
                    ),
                );
            }
            if listen.kind != ListenerKind::Mx && config.users.is_empty() {
                f.warn(
                    format!("listen[{i}]"),
                    format!(
                        "{} listener {} requires AUTH before MAIL but no [[user]] is configured, so it will refuse every message (530); add a [[user]] with a password_hash from `relayward hash-password`",
                        listen.kind, listen.address
                    ),
                );
            }
        }
    }

    fn check_local_domains(config: &Config, f: &mut Findings) {
        if config.relay.local_domains.is_empty() {
            f.error(
                "relay.local_domains",
                "no local domain: relayward would accept no mail for itself (not even for postmaster); write e.g. local_domains = [\"example.test\"]",
            );
        }
        let mut seen = HashSet::new();
        for (i, domain) in config.relay.local_domains.iter().enumerate() {
            let key = format!("relay.local_domains[{i}]");
            if let Some(ascii) = a_label(domain) {
                f.error(
                    key,
                    format!(
                        "{domain:?} is not written as its A-label; write {ascii:?} (IDNs as xn--…)"
                    ),
                );
            } else if !valid_domain(domain) {
                f.error(
                    key,
                    format!("{domain:?} is not a domain name; write it like \"example.test\" (no @, no trailing dot, IDNs as xn--…)"),
                );
            } else if !seen.insert(domain.to_ascii_lowercase()) {
                f.warn(key, format!("{domain:?} is listed twice"));
            }
        }
    }

    fn check_networks(key: &str, nets: &[Cidr], f: &mut Findings) {
        for (i, cidr) in nets.iter().enumerate() {
            let key = format!("{key}[{i}]");
            // A network inside 6to4 or Teredo is best explained by naming that prefix; one
            // wider than both is just too wide.
            let problem = ipv4_embedding_problem(cidr, Overlap::Inside)
                .or_else(|| network_width_problem(cidr))
                .or_else(|| ipv4_embedding_problem(cidr, Overlap::Any));
            if let Some(message) = problem {
                f.error(key, message);
            } else if cidr.has_host_bits() {
                f.error(key, host_bits_message(cidr));
            } else if is_ipv4_mapped(cidr.net()) {
                f.warn(
                    key,
                    format!(
                        "{cidr} is an IPv4-mapped IPv6 network, which never matches: clients are compared by their IPv4 address; write the IPv4 network instead"
                    ),
                );
            }
        }
    }

    /// `/0`, or wider than a /8 (IPv4) or /32 (IPv6): trusting that many hosts is an open relay.
    /// The two limits compare: an IPv6 /32 is what a whole provider is allocated, as an IPv4 /8
    /// once was; an IPv6 /16 holds tens of thousands of other organisations' networks.
    fn network_width_problem(cidr: &Cidr) -> Option<String> {
        let net = cidr.net();
        let (min_prefix, family, advice) = match net {
            IpNet::V4(_) => (
                8,
                "IPv4",
                "list only networks you operate, e.g. \"192.0.2.0/24\", and let remote users authenticate on a submission listener instead",
            ),
            IpNet::V6(_) => (
                32,
                "IPv6",
                "an IPv6 /32 is a whole provider's allocation, as many hosts as an IPv4 /8; list only the networks you operate, e.g. \"2001:db8:1::/48\" for a site or \"2001:db8:1:2::/64\" for one LAN, and let remote users authenticate on a submission listener instead",
            ),
        };
        if net.prefix_len() == 0 {
            return Some(format!(
                "{cidr} trusts every {family} address on the Internet: that is an open relay; {advice}"
            ));
        }
        (net.prefix_len() < min_prefix).then(|| {
            format!(
                "{cidr} is wider than a /{min_prefix}: trusting that many hosts makes an open relay in all but name; {advice}"
            )
        })
    }

    /// IPv6 prefixes in which every IPv4 host on the Internet has addresses of its own: the
    /// prefix, its length, where the embedded IPv4 address starts, and a name for messages.
    const IPV4_EMBEDDING: [(std::net::Ipv6Addr, u8, u8, &str); 3] = [
        // 6to4 (RFC 3056): 2002:V4ADDR::/48 for every IPv4 host.
        (
            std::net::Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0),
            16,
            16,
            "6to4 (2002::/16)",
        ),
        // Teredo (RFC 4380): anyone can get one; the client's IPv4 is in the last 32 bits.
        (
            std::net::Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
            32,
            96,
            "Teredo (2001::/32)",
        ),
        // NAT64 / SIIT well-known prefix (RFC 6052): IPv4 clients seen as 64:ff9b::V4ADDR.
        (
            std::net::Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
            96,
            96,
            "NAT64 (64:ff9b::/96)",
        ),
    ];

    /// An IPv6 network that overlaps a prefix embedding IPv4 addresses trusts, through it, as
    /// many IPv4 hosts as its bits beyond the IPv4 offset allow: `2002::/16` is every IPv4 host
    /// on the Internet, although as an IPv6 network it is no wider than a /16. Held to the same
    /// /8 as IPv4 networks.
    fn ipv4_embedding_problem(cidr: &Cidr, overlap: Overlap) -> Option<String> {
        let IpNet::V6(net) = cidr.net().trunc() else {
            return None;
        };
        IPV4_EMBEDDING.iter().find_map(|&(prefix, len, offset, name)| {
            let embedding = ipnet::Ipv6Net::new(prefix, len).ok()?;
            let inside = embedding.contains(&net.network()) && net.prefix_len() >= len;
            let overlaps = match overlap {
                Overlap::Inside => inside,
                Overlap::Any => inside || net.contains(&embedding.network()),
            };
            let ipv4_bits = net.prefix_len().saturating_sub(offset);
            (overlaps && ipv4_bits < 8).then(|| {
                format!(
                    "{cidr} covers {name} addresses, which stand for IPv4 hosts anywhere on the Internet (as wide as an IPv4 /{ipv4_bits}): that is an open relay; trust the IPv4 networks themselves instead"
                )
            })
        })
    }

    /// Which networks [`ipv4_embedding_problem`] looks at.
    #[derive(Clone, Copy)]
    enum Overlap {
        /// Only networks inside an IPv4-embedding prefix.
        Inside,
        /// Any network that shares addresses with one.
        Any,
    }

    fn host_bits_message(cidr: &Cidr) -> String {
        let net = cidr.net();
        let host_len = match net {
            IpNet::V4(_) => 32,
            IpNet::V6(_) => 128,
        };
        format!(
            "{cidr} has host bits set after the /{}: did you mean {}? (for the single host, write {}/{host_len})",
            net.prefix_len(),
            net.trunc(),
            net.addr()
        )
    }

    fn is_ipv4_mapped(net: IpNet) -> bool {
        match net {
            IpNet::V6(v6) => v6.prefix_len() >= 96 && v6.network().to_ipv4_mapped().is_some(),
            IpNet::V4(_) => false,
        }
    }

    fn check_mailboxes(config: &Config, f: &mut Findings) {
        let locals: HashSet<String> = config.normalized_local_domains().into_iter().collect();
        for (i, mailbox) in config.relay.mailboxes.iter().enumerate() {
            let key = format!("relay.mailboxes[{i}]");
            match mailbox.rsplit_once('@') {
                _ if !valid_address(mailbox) => f.error(
                    key,
                    format!("{mailbox:?} is not an address; write it as local@domain, e.g. \"info@example.test\""),
                ),
                Some((_, domain)) if !locals.contains(&domain.to_ascii_lowercase()) => f.error(
                    key,
                    format!("{mailbox:?} is not in a local domain; add {domain:?} to relay.local_domains, or use a [[route]] for a domain you forward"),
                ),
                Some((local, _)) if !relayward_protocol::route::is_mailbox_name(local) => f.error(
                    key,
                    format!("{mailbox:?} cannot be a Maildir (its local part names a directory, so no \"/\"); every message to it would bounce"),
                ),
                _ => {}
            }
        }
    }

    fn check_users(config: &Config, f: &mut Findings) {
        let mut logins = HashSet::new();
        for (i, user) in config.users.iter().enumerate() {
            let key = format!("user[{i}]");
            check_login(&key, &user.login, f);
            check_login_mailbox(config, &key, &user.login, f);
            if !logins.insert(user.login.to_ascii_lowercase()) {
                f.error(
                    format!("{key}.login"),
                    format!("login {:?} is configured twice (logins are case-insensitive); merge the entries", user.login),
                );
            }
            if let Err(why) = crate::check_password_hash(&user.password_hash) {
                f.error(
                    format!("{key}.password_hash"),
                    format!("{why}; generate one with `relayward hash-password` (reads the password on stdin)"),
                );
            }
            check_send_as(&key, user, f);
        }
    }

    fn check_login(key: &str, login: &str, f: &mut Findings) {
        let printable = login
            .chars()
            .all(|c| c.is_ascii_graphic() || (!c.is_ascii() && !c.is_control()));
        if login.is_empty() || login.len() > 256 || !printable {
            f.error(
                format!("{key}.login"),
                format!("{login:?} is not a usable login: it must be 1–256 octets without spaces or control characters, e.g. \"alice@example.test\""),
            );
        }
    }

    /// A login in a local domain is also a mailbox (see [`Config::local_mailboxes`]), so it must
    /// be one mail can be delivered to: a login like `../x@example.test` or `a/b@example.test`
    /// would be accepted at RCPT from anyone, fail in delivery and bounce to a forged sender.
    fn check_login_mailbox(config: &Config, key: &str, login: &str, f: &mut Findings) {
        let Some((local, domain)) = login.rsplit_once('@') else {
            return;
        };
        let is_local = config
            .normalized_local_domains()
            .contains(&domain.to_ascii_lowercase());
        if is_local && (!valid_address(login) || !relayward_protocol::route::is_mailbox_name(local))
        {
            f.error(
                format!("{key}.login"),
                format!("{login:?} is in a local domain, so it is also a mailbox, but it cannot be one (write a dot-atom local part without \"/\", e.g. \"alice@{domain}\")"),
            );
        }
    }

    fn check_send_as(key: &str, user: &User, f: &mut Findings) {
        let Some(list) = &user.send_as else {
            if !valid_address(&user.login) {
                f.warn(
                    format!("{key}.send_as"),
                    format!("login {:?} is not an address, so without send_as this user cannot send any mail; add send_as = [\"…@…\"]", user.login),
                );
            }
            return;
        };
        if list.is_empty() {
            f.warn(
                format!("{key}.send_as"),
                "empty: this user may authenticate but not send any mail",
            );
        }
        for (j, address) in list.iter().enumerate() {
            if !valid_address(address) {
                f.error(
                    format!("{key}.send_as[{j}]"),
                    format!("{address:?} is not an address; write it as local@domain, e.g. \"alice@example.test\""),
                );
            }
        }
    }

    fn check_routes(config: &Config, f: &mut Findings) {
        let locals: HashSet<String> = config.normalized_local_domains().into_iter().collect();
        let mut seen = HashSet::new();
        for (i, route) in config.routes.iter().enumerate() {
            let key = format!("route[{i}].domain");
            let domain = route.domain.to_ascii_lowercase();
            if !valid_domain(&route.domain) {
                f.error(
                    key,
                    format!(
                        "{:?} is not a domain name, e.g. \"corp.example.test\"",
                        route.domain
                    ),
                );
            } else if locals.contains(&domain) {
                f.error(
                    key,
                    format!("{domain:?} is also a local domain; a domain is either local (mailboxes here) or routed (forwarded), so remove it from one of relay.local_domains and [[route]]"),
                );
            } else if !seen.insert(domain.clone()) {
                f.error(
                    key,
                    format!("{domain:?} has two [[route]] entries; keep one"),
                );
            }
            check_route_recipients(i, route, &domain, f);
        }
    }

    /// `recipients` must name addresses of the route's own domain; an SMTP route that neither
    /// lists nor verifies its recipients accepts any local part from anyone.
    fn check_route_recipients(i: usize, route: &Route, domain: &str, f: &mut Findings) {
        for (j, address) in route.recipients.iter().flatten().enumerate() {
            let in_domain = address
                .rsplit_once('@')
                .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain));
            if !valid_address(address) || !in_domain {
                f.error(
                    format!("route[{i}].recipients[{j}]"),
                    format!(
                        "{address:?} is not an address in {domain}; write e.g. \"alice@{domain}\""
                    ),
                );
            }
        }
        let smtp = matches!(route.to, RouteTarget::Smtp { .. });
        if !smtp && route.verify_recipients.is_some() {
            f.warn(
                format!("route[{i}].verify_recipients"),
                "applies only to smtp:// routes (a maildir route accepts only mailbox names); remove it",
            );
        }
        if smtp && route.recipients.is_none() && route.verify_recipients == Some(false) {
            f.warn(
                format!("route[{i}].verify_recipients"),
                format!("false: any local part at {domain} is accepted from anyone, and when the internal server refuses it, the bounce goes to whatever sender a stranger wrote (backscatter); list them in recipients = [...] or leave verify_recipients at its default (true)"),
            );
        }
    }

    fn check_delivery(delivery: &Delivery, f: &mut Findings) {
        match &delivery.smarthost {
            Some(smarthost) => check_smarthost(delivery, smarthost, f),
            None => {
                if delivery.smarthost_user.is_some() || delivery.smarthost_password_file.is_some() {
                    f.warn(
                        "delivery.smarthost_user",
                        "smart host credentials are set but delivery.smarthost is not, so they are unused (mail goes by MX)",
                    );
                }
            }
        }
        if delivery.mx_port == 0 {
            f.error("delivery.mx_port", "port 0 cannot be connected to; use 25");
        }
        if delivery.max_queue_lifetime.is_zero() {
            f.error("delivery.max_queue_lifetime", "zero would bounce every message that is not delivered at the first try; write e.g. \"5d\"");
        }
        if let Some(after) = delivery.delay_notice_after
            && after >= delivery.max_queue_lifetime
        {
            f.warn(
                "delivery.delay_notice_after",
                format!("{} is not shorter than max_queue_lifetime ({}), so no delay notice is ever sent (the message bounces first); write a shorter time, or \"off\"", humantime::format_duration(after), humantime::format_duration(delivery.max_queue_lifetime)),
            );
        }
        if delivery.mta_sts_port == 0 {
            f.error(
                "delivery.mta_sts_port",
                "port 0 cannot be connected to; use 443",
            );
        }
    }

    fn check_smarthost(delivery: &Delivery, smarthost: &str, f: &mut Findings) {
        let Some((host, _)) = smarthost
            .contains(':')
            .then(|| split_host_port(smarthost, 0))
            .flatten()
        else {
            f.error(
                "delivery.smarthost",
                format!("{smarthost:?} is not host:port; write e.g. \"smtp.provider.example:587\""),
            );
            return;
        };
        if delivery.smarthost_tls == SmarthostTls::None && !is_loopback_host(&host) {
            f.error(
                "delivery.smarthost_tls",
                format!("\"none\" would send mail and the smart host password in clear text to {host}; write \"starttls\" (port 587) or \"implicit\" (port 465); \"none\" is allowed only to a loopback host"),
            );
        }
        if delivery.smarthost_user.is_some() != delivery.smarthost_password_file.is_some() {
            f.error(
                "delivery.smarthost_user",
                "smarthost_user and smarthost_password_file go together: set both (to authenticate) or neither",
            );
        }
    }

    fn is_loopback_host(host: &str) -> bool {
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.to_canonical().is_loopback())
    }

    fn check_limits(limits: &Limits, f: &mut Findings) {
        let counts = [
            ("max_connections", u64::from(limits.max_connections)),
            (
                "max_connections_per_ip",
                u64::from(limits.max_connections_per_ip),
            ),
            (
                "connections_per_ip_per_minute",
                u64::from(limits.connections_per_ip_per_minute),
            ),
            ("max_message_size", limits.max_message_size),
            ("max_recipients", u64::from(limits.max_recipients)),
            ("max_errors", u64::from(limits.max_errors)),
            (
                "messages_per_user_per_hour",
                u64::from(limits.messages_per_user_per_hour),
            ),
            (
                "messages_per_user_per_day",
                u64::from(limits.messages_per_user_per_day),
            ),
            (
                "recipients_per_user_per_hour",
                u64::from(limits.recipients_per_user_per_hour),
            ),
            (
                "recipients_per_user_per_day",
                u64::from(limits.recipients_per_user_per_day),
            ),
            (
                "auth_failures_per_ip",
                u64::from(limits.auth_failures_per_ip),
            ),
            (
                "auth_failures_per_login",
                u64::from(limits.auth_failures_per_login),
            ),
        ];
        for (name, value) in counts {
            if value == 0 {
                f.error(format!("limits.{name}"), "0 would refuse everything; it must be at least 1 (remove the key for the default)");
            }
        }
        let durations = [
            ("auth_failure_window", limits.auth_failure_window),
            ("greeting_timeout", limits.greeting_timeout),
            ("command_timeout", limits.command_timeout),
            ("data_block_timeout", limits.data_block_timeout),
            ("data_end_timeout", limits.data_end_timeout),
            ("session_timeout", limits.session_timeout),
        ];
        for (name, value) in durations {
            if value.is_zero() {
                f.error(
                    format!("limits.{name}"),
                    "a zero duration would cut every client off; remove the key for the default",
                );
            }
        }
        if limits.max_recipients < 100 {
            f.warn(
                "limits.max_recipients",
                "RFC 5321 §4.5.3.1.8 asks servers to accept at least 100 recipients per message",
            );
        }
        if limits.max_connections_per_ip > limits.max_connections {
            f.warn(
                "limits.max_connections_per_ip",
                "larger than max_connections, so one client can take every connection",
            );
        }
    }
}

/// The text of [`Config::effective_policy_summary`].
mod summary {
    use super::*;
    use std::fmt::Write as _;

    pub(super) fn render(config: &Config) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "relayward {} (data in {})",
            config.hostname,
            config.data_dir.display()
        );
        listeners(config, &mut out);
        local(config, &mut out);
        relaying(config, &mut out);
        outbound_tls(config, &mut out);
        let _ = writeln!(
            out,
            "Everyone else: only local mailboxes and relay domains; any other recipient gets 554 5.7.1 Relay access denied.\n\
             For everyone: recipients with sender-specified routing (%, !, quoted @) are refused; source routes are stripped; address literals are refused."
        );
        out
    }

    fn listeners(config: &Config, out: &mut String) {
        let _ = writeln!(out, "Listeners:");
        for listen in &config.listen {
            let what = match listen.kind {
                ListenerKind::Mx => {
                    "mail for local mailboxes from anyone; relay only for trusted networks or after AUTH; STARTTLS offered, AUTH only under TLS"
                }
                ListenerKind::Submission => "STARTTLS, then AUTH required before MAIL",
                ListenerKind::Submissions => "implicit TLS, AUTH required before MAIL",
            };
            let _ = writeln!(out, "  {} ({}): {what}", listen.address, listen.kind);
        }
        let tls = match &config.tls {
            Some(files) => format!("certificate {}", files.cert.display()),
            None => format!(
                "self-signed pair in {}",
                config.data_dir.join("tls").display()
            ),
        };
        let _ = writeln!(out, "TLS: {tls}");
    }

    fn local(config: &Config, out: &mut String) {
        let _ = writeln!(
            out,
            "Local domains: {}",
            config.normalized_local_domains().join(", ")
        );
        let _ = writeln!(out, "Local mailboxes (anyone may send to these):");
        for (address, source) in config.local_mailboxes() {
            let why = match source {
                MailboxSource::Postmaster => "postmaster",
                MailboxSource::Configured => "relay.mailboxes",
                MailboxSource::User => "user",
            };
            let _ = writeln!(out, "  {address} ({why})");
        }
        let mut routes: Vec<&Route> = config.routes.iter().collect();
        routes.sort_by_key(|r| r.domain.to_ascii_lowercase());
        if !routes.is_empty() {
            let _ = writeln!(
                out,
                "Relay domains (anyone may send to the addresses that exist there):"
            );
            for route in routes {
                let known = match (&route.recipients, &route.to) {
                    (Some(list), _) => format!("{} listed recipient(s)", list.len()),
                    (None, RouteTarget::Maildir) => "any mailbox name".to_string(),
                    (None, _) if route.verifies_recipients() => {
                        "recipients verified with the internal server at RCPT".to_string()
                    }
                    (None, _) => "ANY local part, unverified (backscatter risk)".to_string(),
                };
                let _ = writeln!(
                    out,
                    "  {} -> {} ({known})",
                    route.domain.to_ascii_lowercase(),
                    route.to
                );
            }
        }
    }

    fn relaying(config: &Config, out: &mut String) {
        let nets: Vec<&str> = config
            .relay
            .trusted_networks
            .iter()
            .map(Cidr::as_str)
            .collect();
        let nets = if nets.is_empty() {
            "none".to_string()
        } else {
            nets.join(", ")
        };
        let _ = writeln!(
            out,
            "Trusted networks (relay anywhere without AUTH): {nets}"
        );
        if config.users.is_empty() {
            let _ = writeln!(out, "Users (relay anywhere after AUTH): none");
        } else {
            let _ = writeln!(out, "Users (relay anywhere after AUTH; may send as):");
            for user in &config.users {
                let _ = writeln!(
                    out,
                    "  {}: {}",
                    user.login,
                    user.effective_send_as().join(", ")
                );
            }
        }
        let proxies: Vec<&str> = config
            .relay
            .trusted_proxies
            .iter()
            .map(Cidr::as_str)
            .collect();
        if !proxies.is_empty() {
            let _ = writeln!(out, "PROXY protocol accepted from: {}", proxies.join(", "));
        }
    }

    /// What MX delivery demands of TLS, and the admin's per-domain rules.
    fn outbound_tls(config: &Config, out: &mut String) {
        let what = match config.delivery.tls_policy {
            tls_policy::TlsPolicyMode::MtaStsDane => {
                "MTA-STS and DANE honoured (verified TLS or the mail waits), opportunistic STARTTLS otherwise"
            }
            tls_policy::TlsPolicyMode::Opportunistic => {
                "opportunistic STARTTLS only (MTA-STS and DANE not looked up)"
            }
        };
        let scope = if config.delivery.smarthost.is_some() {
            " (applies to MX delivery; the smart host is verified per smarthost_tls)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "Outbound TLS (tls_policy = \"{}\"): {what}{scope}",
            config.delivery.tls_policy
        );
        for policy in &config.tls_policies {
            let what = match policy.mode {
                tls_policy::DomainTlsMode::RequireVerified => {
                    "verified TLS required (DANE or certificate for the MX name), never clear text"
                }
                tls_policy::DomainTlsMode::None => {
                    "opportunistic STARTTLS, published policies ignored"
                }
            };
            let _ = writeln!(
                out,
                "  {} (mode = \"{}\"): {what}",
                policy.domain.to_ascii_lowercase(),
                policy.mode
            );
        }
        tls_reports(config, out);
    }

    /// Whether TLS-RPT reports are counted and sent, and as whom.
    fn tls_reports(config: &Config, out: &mut String) {
        let settings = &config.tls_report;
        if !settings.enabled {
            let _ = writeln!(
                out,
                "TLS reports (tls_report.enabled = false): none counted or sent"
            );
            return;
        }
        let hostname = &config.hostname;
        let _ = writeln!(
            out,
            "TLS reports (tls_report.enabled = true): RFC 8460 report every {} to each MTA-STS/DANE domain that publishes _smtp._tls, from {} as {:?} (contact {}); a failed https: report is tried again from {} on, for up to 24 hours",
            humantime::format_duration(settings.interval),
            settings.from_address(hostname),
            settings.organization_name(hostname),
            settings.contact_info(hostname),
            humantime::format_duration(settings.retry_after)
        );
    }
}

//! The `[probe_service]` configuration file (TOML).
//!
//! As strict as `relayward serve`'s: every table refuses unknown keys, so a typo such as
//! `tests_per_client_per_hours` fails with the key and the line instead of leaving a default in
//! place; [`ServiceConfig::problems`] then says, per key, why a value cannot work and what to
//! write instead. The names of the keys the issue lists are a contract with admins' files.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use relayward_config::{Cidr, ConfigError, ConfigProblem, Findings, de_duration};
use relayward_protocol::path::is_host_name;
use serde::Deserialize;

/// What `relayward probe-service` runs without `--config`: both doors on loopback, results in
/// `./relayward-probe-data`. It refuses private targets, so from loopback it tests public
/// servers only (the telnet door would refuse its loopback caller): a way to try the web page.
pub const EMBEDDED_DEFAULT_TOML: &str = r#"# relayward probe-service's embedded default: loopback only.
[probe_service]
telnet_listen = "127.0.0.1:2323"
http_listen = "127.0.0.1:8080"
connect_back_port = 25
public_name = "localhost"
data_dir = "./relayward-probe-data"
allow_private_targets = false
max_concurrent_tests = 16
tests_per_client_per_hour = 10
tests_per_target_per_hour = 4
exclude = []
"#;

/// The whole file: one `[probe_service]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub probe_service: ServiceConfig,
}

/// `[probe_service]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The connect-back door: whoever connects is probed on their own address.
    #[serde(default)]
    pub telnet_listen: Option<SocketAddr>,
    /// The web page and the JSON API (plain HTTP; put a TLS proxy in front for HTTPS).
    #[serde(default)]
    pub http_listen: Option<SocketAddr>,
    /// The port probed on a telnet caller's address unless the caller types another.
    #[serde(default = "default_connect_back_port")]
    pub connect_back_port: u16,
    /// The service's name: EHLO argument, sender domain, the page's title.
    pub public_name: String,
    /// Proof of relay (as `relayward probe --confirm`): the listener for the tokens.
    #[serde(default)]
    pub confirm_listen: Option<SocketAddr>,
    /// A domain whose MX points at `confirm_listen`.
    #[serde(default)]
    pub confirm_domain: Option<String>,
    /// Stored results, one JSON file per test under `data_dir/tests/`.
    pub data_dir: PathBuf,
    /// Loopback, private, reserved, documentation and multicast targets are refused unless
    /// this is true (tests, a lab).
    #[serde(default)]
    pub allow_private_targets: bool,
    /// Tests running at once, whoever asked; more are answered "busy, retry".
    #[serde(default = "default_max_concurrent_tests")]
    pub max_concurrent_tests: usize,
    /// Tests one client address (an IPv6 client by its /64) may start per hour.
    #[serde(default = "default_tests_per_client_per_hour")]
    pub tests_per_client_per_hour: u32,
    /// Tests of one target address per hour, whoever asks.
    #[serde(default = "default_tests_per_target_per_hour")]
    pub tests_per_target_per_hour: u32,
    /// Networks whose owners asked never to be probed: refused before any connection or
    /// lookup (a name is checked once it is resolved, before connecting).
    #[serde(default)]
    pub exclude: Vec<Cidr>,

    // Beyond the contract: settings with defaults most services keep.
    /// How the page and the telnet greeting tell a network owner to opt out.
    /// Default: "write to postmaster@PUBLIC_NAME with the network to exclude".
    #[serde(default)]
    pub opt_out: Option<String>,
    /// Base of the result links the telnet door prints. Default: `http://PUBLIC_NAME` (with
    /// the port of `http_listen` unless it is 80).
    #[serde(default)]
    pub public_url: Option<String>,
    /// Stored results kept; past this the oldest are removed (each is tens of kilobytes).
    #[serde(default = "default_max_stored_tests")]
    pub max_stored_tests: usize,
    /// How long a test waits for its tokens with `confirm_listen`.
    #[serde(default = "default_confirm_wait", deserialize_with = "de_duration")]
    pub confirm_wait: Duration,
    /// One relay test (MAIL, RCPT, RSET), and connecting plus greeting.
    #[serde(default = "default_test_timeout", deserialize_with = "de_duration")]
    pub test_timeout: Duration,
    /// One whole target; tests not run by then are skipped.
    #[serde(default = "default_host_timeout", deserialize_with = "de_duration")]
    pub host_timeout: Duration,
    /// After SIGTERM, how long running tests may go on before the service stops anyway.
    #[serde(default = "default_shutdown_grace", deserialize_with = "de_duration")]
    pub shutdown_grace: Duration,
    /// DNS servers for host names, MX and DNSBL lookups (`ip:port`). Default: the system's.
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
    /// DNS blocklists every tested address is looked up in; empty = no DNSBL lookups.
    #[serde(default)]
    pub dnsbl_zones: Vec<String>,
    /// Reverse proxies in front of `http_listen` (a TLS terminator): from these peers the
    /// client is the last `X-Forwarded-For` address that is not itself a trusted proxy, so
    /// budgets count people, not the proxy. From anyone else the header is ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    /// How long a web door connection may go without the service writing to it (the time a
    /// request is being handled does not count). A caller who
    /// connects and says nothing, sends a request a byte at a time (slowloris) or leaves a
    /// kept-alive connection idle is cut off after it, so idle sockets cannot hold every
    /// connection slot; a live transcript stays open (its keep-alive comes more often).
    #[serde(
        default = "default_http_idle_timeout",
        deserialize_with = "de_duration"
    )]
    pub http_idle_timeout: Duration,
}

fn default_connect_back_port() -> u16 {
    25
}
fn default_max_concurrent_tests() -> usize {
    16
}
fn default_tests_per_client_per_hour() -> u32 {
    10
}
fn default_tests_per_target_per_hour() -> u32 {
    4
}
fn default_max_stored_tests() -> usize {
    1000
}
fn default_confirm_wait() -> Duration {
    Duration::from_secs(60)
}
fn default_test_timeout() -> Duration {
    Duration::from_secs(20)
}
fn default_host_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(60)
}
fn default_http_idle_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Upper bound for `max_concurrent_tests`: each test holds a few connections and a transcript.
pub const MAX_CONCURRENT_TESTS: usize = 1024;

impl ServiceConfig {
    /// Parses TOML text. `origin` names the text in errors (a file name or `<embedded default>`).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<ServiceConfig, ConfigError> {
        relayward_config::parse_toml::<File>(text, origin).map(|f| f.probe_service)
    }

    /// Reads and parses a file; call [`ServiceConfig::problems`] next.
    pub fn load(path: &Path) -> Result<ServiceConfig, ConfigError> {
        relayward_config::load_toml::<File>(path).map(|f| f.probe_service)
    }

    pub fn embedded_default() -> Result<ServiceConfig, ConfigError> {
        Self::from_toml_str(EMBEDDED_DEFAULT_TOML, "<embedded default>")
    }

    /// Every problem, errors first. The service refuses to start on any error.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut f = Findings::default();
        self.check_doors(&mut f);
        self.check_names(&mut f);
        self.check_numbers(&mut f);
        self.check_exclude(&mut f);
        f.into_problems()
    }

    /// The opt-out sentence shown on the page and in the telnet greeting.
    pub fn opt_out_text(&self) -> String {
        self.opt_out.clone().unwrap_or_else(|| {
            format!(
                "write to postmaster@{} with the network to exclude",
                self.public_name
            )
        })
    }

    /// Base of absolute result links (no trailing slash).
    pub fn public_base_url(&self) -> String {
        if let Some(url) = &self.public_url {
            return url.trim_end_matches('/').to_string();
        }
        match self.http_listen.map(|a| a.port()) {
            Some(80) | None => format!("http://{}", self.public_name),
            Some(port) => format!("http://{}:{port}", self.public_name),
        }
    }

    fn check_doors(&self, f: &mut Findings) {
        if self.telnet_listen.is_none() && self.http_listen.is_none() {
            f.error(
                "probe_service",
                "neither telnet_listen nor http_listen is set, so nobody could ask for a test; add telnet_listen = \"0.0.0.0:23\" and/or http_listen = \"0.0.0.0:8080\"",
            );
        }
        match (&self.confirm_listen, &self.confirm_domain) {
            (Some(_), None) => f.error(
                "probe_service.confirm_domain",
                "confirm_listen is set but confirm_domain is not: the tokens need a domain whose MX is this machine; add confirm_domain = \"confirm.example.org\" or remove confirm_listen",
            ),
            (None, Some(_)) => f.error(
                "probe_service.confirm_listen",
                "confirm_domain is set but confirm_listen is not: nothing would receive the tokens; add confirm_listen = \"0.0.0.0:25\" or remove confirm_domain",
            ),
            _ => {}
        }
        let listeners = [
            ("probe_service.telnet_listen", self.telnet_listen),
            ("probe_service.http_listen", self.http_listen),
        ];
        if self.allow_private_targets {
            for (key, addr) in listeners {
                if let Some(addr) = addr.filter(|a| !a.ip().to_canonical().is_loopback()) {
                    f.warn(
                        key,
                        format!(
                            "allow_private_targets = true while {addr} is not a loopback address: anyone who reaches it can have this machine probe your internal networks; keep allow_private_targets for tests and labs"
                        ),
                    );
                }
            }
        }
    }

    fn check_names(&self, f: &mut Findings) {
        if !is_host_name(&self.public_name) {
            f.error(
                "probe_service.public_name",
                format!(
                    "{:?} is not a host name; write the name people reach the service by, e.g. \"relay-test.example.org\" (it is also the EHLO argument)",
                    self.public_name
                ),
            );
        }
        if let Some(domain) = &self.confirm_domain
            && !is_host_name(domain)
        {
            f.error(
                "probe_service.confirm_domain",
                format!("{domain:?} is not a domain; write e.g. \"confirm.example.org\""),
            );
        }
        for (i, zone) in self.dnsbl_zones.iter().enumerate() {
            if !is_host_name(zone.trim_end_matches('.')) {
                f.error(
                    format!("probe_service.dnsbl_zones[{i}]"),
                    format!("{zone:?} is not a DNS zone; write e.g. \"zen.spamhaus.org\""),
                );
            }
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            f.error(
                "probe_service.public_url",
                format!(
                    "{url:?} is not an http(s) URL; write e.g. \"https://relay-test.example.org\""
                ),
            );
        }
    }

    fn check_numbers(&self, f: &mut Findings) {
        if self.connect_back_port == 0 {
            f.error(
                "probe_service.connect_back_port",
                "port 0 cannot be probed; write the SMTP port to test on a caller's address, usually 25",
            );
        }
        if !(1..=MAX_CONCURRENT_TESTS).contains(&self.max_concurrent_tests) {
            f.error(
                "probe_service.max_concurrent_tests",
                format!(
                    "{} is out of range; write a number from 1 to {MAX_CONCURRENT_TESTS} (the default is 16)",
                    self.max_concurrent_tests
                ),
            );
        }
        for (key, value, default) in [
            (
                "tests_per_client_per_hour",
                self.tests_per_client_per_hour,
                10,
            ),
            (
                "tests_per_target_per_hour",
                self.tests_per_target_per_hour,
                4,
            ),
        ] {
            if value == 0 {
                f.error(
                    format!("probe_service.{key}"),
                    format!(
                        "0 would refuse every test; write how many tests per hour to allow (the default is {default})"
                    ),
                );
            }
        }
        if self.max_stored_tests == 0 {
            f.error(
                "probe_service.max_stored_tests",
                "0 would remove every result as soon as it is written, so no result page could be shown; write how many to keep (the default is 1000)",
            );
        }
        for (key, value) in [
            ("test_timeout", self.test_timeout),
            ("host_timeout", self.host_timeout),
        ] {
            if value.is_zero() {
                f.error(
                    format!("probe_service.{key}"),
                    "a zero timeout fails every test; write e.g. \"20s\"",
                );
            }
        }
        if self.http_idle_timeout < Duration::from_secs(1) {
            f.error(
                "probe_service.http_idle_timeout",
                "under one second no page could be sent; write e.g. \"30s\" (the default)",
            );
        }
    }

    fn check_exclude(&self, f: &mut Findings) {
        let lists = [
            ("exclude", &self.exclude),
            ("trusted_proxies", &self.trusted_proxies),
        ];
        for (key, list) in lists {
            Self::check_networks(key, list, f);
        }
    }

    fn check_networks(key: &str, list: &[Cidr], f: &mut Findings) {
        for (i, cidr) in list.iter().enumerate() {
            if cidr.has_host_bits() {
                let net = cidr.net();
                f.error(
                    format!("probe_service.{key}[{i}]"),
                    format!(
                        "{cidr} has host bits set after the /{}: did you mean {}? (for the single host, write {})",
                        net.prefix_len(),
                        net.trunc(),
                        net.addr()
                    ),
                );
            }
        }
    }

    /// Whether `ip` is one of `trusted_proxies`.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE_EXAMPLE: &str = r#"
[probe_service]
telnet_listen = "0.0.0.0:23"          # connect-back door; optional
http_listen = "0.0.0.0:8080"          # web page and JSON API; optional
connect_back_port = 25                # the port probed on a connecting client's address
public_name = "relay-test.example.org"
confirm_listen = "0.0.0.0:25"         # optional: proof of relay, as `probe --confirm`
confirm_domain = "confirm.example.org"
data_dir = "/var/lib/relayward-probe" # stored results
allow_private_targets = false         # loopback/private/reserved targets refused unless true (tests)
max_concurrent_tests = 16
tests_per_client_per_hour = 10
tests_per_target_per_hour = 4
exclude = []                          # CIDRs that asked never to be probed
"#;

    fn errors(text: &str) -> Vec<String> {
        ServiceConfig::from_toml_str(text, "t.toml")
            .expect("parses")
            .problems()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_issue_example_is_accepted_as_written() {
        let cfg = ServiceConfig::from_toml_str(ISSUE_EXAMPLE, "t.toml").expect("parses");
        assert_eq!(cfg.problems(), Vec::new());
        assert_eq!(cfg.connect_back_port, 25);
        assert_eq!(cfg.tests_per_target_per_hour, 4);
        assert_eq!(cfg.public_base_url(), "http://relay-test.example.org:8080");
        let default = ServiceConfig::embedded_default().expect("default parses");
        assert_eq!(default.problems(), Vec::new());
    }

    #[test]
    fn the_web_idle_timeout_defaults_to_30s_and_refuses_less_than_a_second() {
        let cfg = ServiceConfig::from_toml_str(ISSUE_EXAMPLE, "t.toml").expect("parses");
        assert_eq!(cfg.http_idle_timeout, Duration::from_secs(30));
        let text = format!("{ISSUE_EXAMPLE}http_idle_timeout = \"0s\"\n");
        let found = errors(&text);
        assert!(
            found
                .iter()
                .any(|e| e.contains("probe_service.http_idle_timeout")),
            "{found:?}"
        );
        let text = format!("{ISSUE_EXAMPLE}http_idle_timeout = \"5s\"\n");
        assert_eq!(errors(&text), Vec::<String>::new());
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let text = ISSUE_EXAMPLE.replace("tests_per_client_per_hour", "tests_per_client_per_hours");
        let e = ServiceConfig::from_toml_str(&text, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tests_per_client_per_hours"), "{e}");
        assert!(e.contains("line 12") || e.contains("12 |"), "{e}");
        let e = ServiceConfig::from_toml_str("[probe]\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("probe"), "{e}");
    }

    #[test]
    fn problems_name_the_key_and_say_what_to_write() {
        let text = r#"
[probe_service]
public_name = "not a name"
data_dir = "/tmp/x"
connect_back_port = 0
max_concurrent_tests = 0
tests_per_client_per_hour = 0
exclude = ["10.1.2.3/8"]
confirm_listen = "127.0.0.1:2525"
"#;
        let all = errors(text).join("\n");
        for needle in [
            "error: probe_service: neither telnet_listen nor http_listen",
            "error: probe_service.public_name: \"not a name\" is not a host name",
            "error: probe_service.connect_back_port: port 0",
            "error: probe_service.max_concurrent_tests: 0 is out of range; write a number from 1 to 1024",
            "error: probe_service.tests_per_client_per_hour: 0 would refuse every test",
            "error: probe_service.exclude[0]: 10.1.2.3/8 has host bits set after the /8: did you mean 10.0.0.0/8?",
            "error: probe_service.confirm_domain: confirm_listen is set but confirm_domain is not",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        let bad_cidr = ServiceConfig::from_toml_str(
            "[probe_service]\npublic_name = \"a.example\"\ndata_dir = \"x\"\nexclude = [\"300.0.0.0/8\"]\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(bad_cidr.contains("is not a network"), "{bad_cidr}");
    }

    #[test]
    fn private_targets_on_a_public_listener_are_warned_about() {
        let text = ISSUE_EXAMPLE.replace(
            "allow_private_targets = false",
            "allow_private_targets = true",
        );
        let all = errors(&text).join("\n");
        assert!(
            all.contains("warning: probe_service.http_listen: allow_private_targets = true while 0.0.0.0:8080"),
            "{all}"
        );
    }
}

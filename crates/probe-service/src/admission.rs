//! What may be tested: the target a door asked for, parsed and checked before anything is sent.
//!
//! Order matters. A literal address is judged here, with no lookup and no connection: `exclude`
//! first, then (unless `allow_private_targets`) the ranges of [`crate::ranges`]. A name is
//! looked up once, its addresses checked the same way, and only the addresses that pass are
//! ever connected to — the probe is handed those, never the name again, so a DNS answer that
//! changes between the check and the connection (rebinding) cannot smuggle a private address in.

use std::net::IpAddr;

use relayward_probe::target::{self, TargetInput};

use crate::config::ServiceConfig;
use crate::ranges;

/// Ports one test may probe on its host (`25,587,465`).
pub const MAX_PORTS: usize = 4;
/// Addresses one test probes; an MX domain with more gets its first ones (in MX order).
pub const MAX_ADDRESSES: usize = 8;
/// Longest target text accepted.
const MAX_TARGET_TEXT: usize = 300;

/// Why a request is not served, and what the door answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
    /// Seconds after which asking again can succeed (rate limits, busy).
    pub retry_after: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Not a target this service understands (400).
    BadRequest,
    /// Loopback, private, reserved… with `allow_private_targets = false` (403).
    Private,
    /// In `exclude` (403).
    Excluded,
    /// Asked for by another web site's page, through a visitor's browser (403).
    CrossSite,
    /// A client or target budget is spent (429).
    RateLimited,
    /// `max_concurrent_tests` are running (503).
    Busy,
    /// The service is shutting down (503).
    Stopping,
}

impl Refusal {
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(RefusalKind::BadRequest, message)
    }
}

/// Parses a target as the form and the API give it — `host`, `host:port`, `192.0.2.7`,
/// `[2001:db8::7]:25`, `mx:example.com[:port]` — with optional ports for a target given without
/// one (default 25). Returns the label shown for the test and the inputs, before any lookup.
pub fn parse_target(text: &str, ports: &[u16]) -> Result<(String, Vec<TargetInput>), Refusal> {
    let text = text.trim();
    if text.is_empty() {
        return Err(Refusal::bad(
            "no target: give a mail server's host name or address (with :port if not 25), or mx:DOMAIN to test a domain's MX hosts",
        ));
    }
    if text.len() > MAX_TARGET_TEXT {
        return Err(Refusal::bad("the target is too long to be a host name"));
    }
    if text.contains('/') {
        return Err(Refusal::bad(format!(
            "{text:?} is an address range: this service tests one server at a time (relayward probe scans ranges)"
        )));
    }
    if text.contains(char::is_whitespace) || text.contains(',') {
        return Err(Refusal::bad(format!(
            "{text:?}: give one target (several ports go in the ports field, e.g. 25,587)"
        )));
    }
    let mut distinct: Vec<u16> = Vec::new();
    for &port in ports {
        if port == 0 {
            return Err(Refusal::bad("port 0 is out of range (1-65535)"));
        }
        if !distinct.contains(&port) {
            distinct.push(port);
        }
    }
    if distinct.len() > MAX_PORTS {
        return Err(Refusal::bad(format!(
            "at most {MAX_PORTS} ports per test (e.g. 25,587,465)"
        )));
    }
    if distinct.is_empty() {
        distinct.push(25);
    }
    let inputs = target::expand_ports(&[text.to_string()], &distinct)
        .map_err(|e| Refusal::bad(e.to_string()))?;
    let label = inputs
        .iter()
        .map(TargetInput::label)
        .collect::<Vec<_>>()
        .join(", ");
    Ok((label, inputs))
}

/// Parses the form's ports field: numbers separated by commas or spaces; empty = port 25.
pub fn parse_ports(text: &str) -> Result<Vec<u16>, Refusal> {
    text.split([',', ' '])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(Refusal::bad(format!(
                "{p:?} is not a port number (1-65535)"
            ))),
        })
        .collect()
}

/// Why `ip` may not be probed: `exclude` always, the non-public ranges unless
/// `allow_private_targets`. `None` = it may.
pub fn address_refusal(ip: IpAddr, cfg: &ServiceConfig) -> Option<(RefusalKind, String)> {
    let ip = ip.to_canonical();
    if let Some(net) = cfg.exclude.iter().find(|net| net.contains(ip)) {
        return Some((
            RefusalKind::Excluded,
            format!("in {net}, a network whose owner asked never to be probed by this service"),
        ));
    }
    if cfg.allow_private_targets {
        return None;
    }
    let why = ranges::non_public(ip).or_else(|| {
        is_own_address(ip).then(|| "an address of the machine this service runs on".to_string())
    })?;
    Some((
        RefusalKind::Private,
        format!("{why}: this service tests mail servers on the public Internet only"),
    ))
}

/// Whether `ip` is an address of this machine (a socket can be bound to it only then): a
/// public address of the service's own host reaches what listens there, firewalled from
/// the outside or not — the doors, a database, an MTA that trusts its own host. Where any
/// address can be bound (`net.ipv4.ip_nonlocal_bind`: a documentation address binds too) this
/// says nothing, and nothing is refused for it.
fn is_own_address(ip: IpAddr) -> bool {
    static ANY_BINDS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let binds = |ip: IpAddr| std::net::UdpSocket::bind(std::net::SocketAddr::new(ip, 0)).is_ok();
    !*ANY_BINDS.get_or_init(|| binds(IpAddr::from([198, 51, 100, 254]))) && binds(ip)
}

/// The refusal for a literal address in the request.
pub fn literal_refusal(ip: IpAddr, cfg: &ServiceConfig) -> Option<Refusal> {
    address_refusal(ip, cfg).map(|(kind, why)| Refusal::new(kind, format!("{ip} is {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> ServiceConfig {
        ServiceConfig::from_toml_str(
            &format!(
                "[probe_service]\nhttp_listen = \"127.0.0.1:0\"\npublic_name = \"t.example\"\ndata_dir = \"x\"\n{extra}"
            ),
            "t",
        )
        .expect("config")
    }

    #[test]
    fn targets_parse_like_the_probe_and_ranges_are_refused() {
        let labels = |text: &str, ports: &[u16]| parse_target(text, ports).map(|(l, _)| l);
        assert_eq!(
            labels("mail.example.com", &[]).unwrap(),
            "mail.example.com:25"
        );
        assert_eq!(
            labels("mail.example.com", &[25, 587]).unwrap(),
            "mail.example.com:25, mail.example.com:587"
        );
        assert_eq!(
            labels("[2001:db8::7]:2525", &[]).unwrap(),
            "[2001:db8::7]:2525"
        );
        assert_eq!(labels("mx:Example.com", &[]).unwrap(), "mx:example.com:25");
        for bad in [
            "",
            "192.0.2.0/24",
            "a b",
            "300.1.1.1",
            "::1:2525",
            "host:99999",
            "a,b",
        ] {
            let e = parse_target(bad, &[]).unwrap_err();
            assert_eq!(e.kind, RefusalKind::BadRequest, "{bad}: {e:?}");
        }
        assert!(
            parse_target("::1:2525", &[])
                .unwrap_err()
                .message
                .contains("[::1]:2525")
        );
        assert!(parse_target("h.example", &[1, 2, 3, 4, 5]).is_err());
        assert_eq!(parse_ports("25, 587 465").unwrap(), [25, 587, 465]);
        assert!(parse_ports("25,smtp").is_err());
        assert_eq!(parse_ports("").unwrap(), Vec::<u16>::new());
    }

    #[test]
    fn private_addresses_are_refused_unless_allowed_and_exclude_always_wins() {
        let strict = cfg("exclude = [\"198.51.100.0/24\", \"2001:db8:1::/48\"]");
        let refused = literal_refusal("127.0.0.1".parse().unwrap(), &strict).unwrap();
        assert_eq!(refused.kind, RefusalKind::Private);
        assert_eq!(
            refused.message,
            "127.0.0.1 is a loopback address (RFC 1122): this service tests mail servers on the public Internet only"
        );
        assert_eq!(
            literal_refusal("::ffff:10.0.0.1".parse().unwrap(), &strict)
                .unwrap()
                .kind,
            RefusalKind::Private
        );
        assert_eq!(literal_refusal("8.8.8.8".parse().unwrap(), &strict), None);
        // The machine's own addresses are found as such (here loopback, the public ones alike).
        assert!(is_own_address("127.0.0.1".parse().unwrap()));
        assert!(!is_own_address("203.0.113.77".parse().unwrap()));
        let lab = cfg("allow_private_targets = true\nexclude = [\"127.0.0.9/32\"]");
        assert_eq!(literal_refusal("127.0.0.1".parse().unwrap(), &lab), None);
        let excluded = literal_refusal("127.0.0.9".parse().unwrap(), &lab).unwrap();
        assert_eq!(excluded.kind, RefusalKind::Excluded);
        assert!(excluded.message.contains("127.0.0.9/32"), "{excluded:?}");
    }
}

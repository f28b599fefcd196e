//! TARGET syntax: `host`, `host:port`, `IP`, `IP:port`, `[v6]`, `[v6]:port`, bare `v6`,
//! `CIDR` and `CIDR:port`. Host names are resolved when their turn comes, inside the scan.
//!
//! Everything that can be wrong with a target is found here, before any lookup or
//! connection: `300.1.1.1` is no host name, port 0 and 70000 are no ports, and `::1:2525` (an
//! IPv6 address that ends in something like a port) is refused with the bracketed forms to
//! choose from.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use relayward_protocol::path::{Domain, parse_domain};

use crate::config::Target;

/// Largest number of addresses one run expands to; a typo like `/8` must not start a
/// 16-million-host scan.
pub const MAX_TARGETS: usize = 65_536;

/// A parsed TARGET, before name resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetInput {
    Addr(Target),
    /// Resolved inside the scan task (all addresses are tested).
    Host {
        name: String,
        port: u16,
    },
    /// `mx:DOMAIN[:port]` / `--mx DOMAIN`: every MX host of the domain, every address of each.
    Mx {
        domain: String,
        port: u16,
    },
}

impl TargetInput {
    pub fn label(&self) -> String {
        match self {
            TargetInput::Addr(t) => t.label.clone(),
            TargetInput::Host { name, port } => format!("{name}:{port}"),
            TargetInput::Mx { domain, port } => format!("mx:{domain}:{port}"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("bad target {0:?}: {1}")]
    Bad(String, &'static str),
    #[error("bad target {0:?}: {1}")]
    Explained(String, String),
    #[error("the targets expand to more than {MAX_TARGETS} addresses")]
    TooMany,
}

/// Parses every spec and expands CIDR ranges, in order.
pub fn expand(specs: &[String], default_port: u16) -> Result<Vec<TargetInput>, TargetError> {
    expand_ports(specs, &[default_port])
}

/// [`expand`] with several ports (`--ports 25,587,465`): a spec without a port of its own
/// becomes one target per port, in the order given.
pub fn expand_ports(
    specs: &[String],
    default_ports: &[u16],
) -> Result<Vec<TargetInput>, TargetError> {
    let mut out = Vec::new();
    for spec in specs {
        parse_one(spec.trim(), default_ports, &mut out)?;
        if out.len() > MAX_TARGETS {
            return Err(TargetError::TooMany);
        }
    }
    Ok(out)
}

/// A port as written after a `:`; 0 and anything above 65535 are refused.
fn parse_port(spec: &str, text: &str) -> Result<u16, TargetError> {
    match text.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        Ok(p) => Err(TargetError::Explained(
            spec.to_string(),
            format!("port {p} is out of range (1-65535)"),
        )),
        Err(_) => Err(TargetError::Explained(
            spec.to_string(),
            format!("{text:?} is not a port number"),
        )),
    }
}

/// A bare IPv6 address whose last group could be a port (`::1:2525`, `2001:db8::1:25`) is
/// ambiguous: refuse it and show both bracketed spellings.
fn ambiguous_v6(spec: &str) -> Option<TargetError> {
    let (head, last) = spec.rsplit_once(':')?;
    let looks_like_port =
        !last.is_empty() && last.len() <= 5 && last.bytes().all(|b| b.is_ascii_digit());
    if !looks_like_port || head.parse::<std::net::Ipv6Addr>().is_err() {
        return None;
    }
    Some(TargetError::Explained(
        spec.to_string(),
        format!(
            "ambiguous IPv6 address; for port {last} of {head} write [{head}]:{last}, for the address itself [{spec}]"
        ),
    ))
}

/// Only digits and dots, yet not an IPv4 address (`300.1.1.1`, `1.2.3`): a typo, not a name.
fn bad_dotted_quad(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Lines of a `--targets-file`: one target per line, `#` comments, blank lines ignored.
pub fn from_file_text(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse_one(
    spec: &str,
    default_ports: &[u16],
    out: &mut Vec<TargetInput>,
) -> Result<(), TargetError> {
    let bad = |why| TargetError::Bad(spec.to_string(), why);
    if spec.is_empty() {
        return Err(bad("empty"));
    }
    if let Some(rest) = strip_prefix_ci(spec, "mx:") {
        let (domain, ports) = match rest.rsplit_once(':') {
            Some((d, p)) => (d, vec![parse_port(spec, p)?]),
            None => (rest, default_ports.to_vec()),
        };
        let Some(domain) = host_name(domain).filter(|d| d.contains('.') && !bad_dotted_quad(d))
        else {
            return Err(bad("mx: needs a mail domain"));
        };
        for port in ports {
            out.push(TargetInput::Mx {
                domain: domain.clone(),
                port,
            });
        }
        return Ok(());
    }
    if spec.contains('/') {
        return parse_cidr(spec, default_ports, out);
    }
    if let Ok(addr) = spec.parse::<SocketAddr>() {
        out.push(addr_target(addr));
        return Ok(());
    }
    if !spec.starts_with('[')
        && let Some(e) = ambiguous_v6(spec)
    {
        return Err(e);
    }
    if let Ok(ip) = spec
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        for &port in default_ports {
            out.push(addr_target(SocketAddr::new(ip, port)));
        }
        return Ok(());
    }
    let (name, ports) = match spec.rsplit_once(':') {
        Some((name, port)) => (name, vec![parse_port(spec, port)?]),
        None => (spec, default_ports.to_vec()),
    };
    if bad_dotted_quad(name) {
        return Err(TargetError::Explained(
            spec.to_string(),
            format!("{name} is not an IPv4 address (four numbers 0-255) nor a host name"),
        ));
    }
    if let Some(rest) = name.strip_prefix('[') {
        let inner = rest.trim_end_matches(']');
        return Err(TargetError::Explained(
            spec.to_string(),
            format!("{inner:?} is not an IPv6 address"),
        ));
    }
    let Some(name) = host_name(name) else {
        return Err(bad("not a host name, address or CIDR range"));
    };
    for port in ports {
        out.push(TargetInput::Host {
            name: name.clone(),
            port,
        });
    }
    Ok(())
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// `name` by the protocol crate's one domain grammar (a trailing dot allowed, as DNS writes
/// it), in its canonical form: lower-case, internationalised names as A-labels.
fn host_name(name: &str) -> Option<String> {
    match parse_domain(name.strip_suffix('.').unwrap_or(name)) {
        Ok(Domain::Name(name)) => Some(name),
        _ => None,
    }
}

/// `10.0.0.0/30`, `10.0.0.0/30:2525`, `[2001:db8::/126]:25`: every address of the range,
/// network and broadcast included (a loopback or lab range uses them all).
fn parse_cidr(
    spec: &str,
    default_ports: &[u16],
    out: &mut Vec<TargetInput>,
) -> Result<(), TargetError> {
    let bad = |why| TargetError::Bad(spec.to_string(), why);
    let (net_text, port) = split_cidr_port(spec).ok_or_else(|| bad("bad port"))?;
    let net: IpNet = net_text.parse().map_err(|_| bad("bad CIDR range"))?;
    let ports = match port {
        Some(0) => return Err(bad("port 0 is out of range (1-65535)")),
        Some(p) => vec![p],
        None => default_ports.to_vec(),
    };
    let bits = net.max_prefix_len() - net.prefix_len();
    if bits >= 17 || out.len() + (1usize << bits) * ports.len() > MAX_TARGETS {
        return Err(TargetError::TooMany);
    }
    let first = ip_to_u128(net.network());
    for i in 0..(1u128 << bits) {
        let ip = u128_to_ip(first + i, net.network());
        for &port in &ports {
            out.push(addr_target(SocketAddr::new(ip, port)));
        }
    }
    Ok(())
}

fn split_cidr_port(spec: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = spec.strip_prefix('[') {
        let (net, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(p) => Some((net, Some(p.parse().ok()?))),
            None if after.is_empty() => Some((net, None)),
            None => None,
        };
    }
    let (addr, prefix) = spec.split_once('/')?;
    match prefix.split_once(':') {
        // IPv4 CIDR with a port; an IPv6 CIDR with a port must use brackets.
        Some((bits, p)) if !addr.contains(':') => {
            let len = addr.len() + 1 + bits.len();
            Some((&spec[..len], Some(p.parse().ok()?)))
        }
        Some(_) => None,
        None => Some((spec, None)),
    }
}

fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn u128_to_ip(n: u128, family: IpAddr) -> IpAddr {
    match family {
        IpAddr::V4(_) => IpAddr::V4((n as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(n.into()),
    }
}

/// Addresses are always shown in the canonical `ip:port` / `[v6]:port` form.
fn addr_target(addr: SocketAddr) -> TargetInput {
    TargetInput::Addr(Target::new(addr, None, addr.to_string()))
}

/// Resolves a host name to every address (each is a target of its own).
pub async fn resolve(name: &str, port: u16) -> Result<Vec<Target>, String> {
    let addrs = tokio::net::lookup_host((name, port))
        .await
        .map_err(|e| format!("cannot resolve {name}: {e}"))?;
    let mut out: Vec<Target> = Vec::new();
    for addr in addrs {
        if !out.iter().any(|t| t.addr == addr) {
            out.push(Target::new(
                addr,
                Some(name.to_string()),
                format!("{name}:{port}"),
            ));
        }
    }
    if out.is_empty() {
        return Err(format!("{name} has no address"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(specs: &[&str]) -> Vec<String> {
        let specs: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
        expand(&specs, 25)
            .unwrap()
            .iter()
            .map(|t| t.label())
            .collect()
    }

    #[test]
    fn forms() {
        assert_eq!(addrs(&["192.0.2.1"]), ["192.0.2.1:25"]);
        assert_eq!(addrs(&["192.0.2.1:2525"]), ["192.0.2.1:2525"]);
        assert_eq!(addrs(&["[::1]:2525"]), ["[::1]:2525"]);
        assert_eq!(addrs(&["::1"]), ["[::1]:25"]);
        assert_eq!(addrs(&["[::1]"]), ["[::1]:25"]);
        assert_eq!(addrs(&["MX.Example.net"]), ["mx.example.net:25"]);
        assert_eq!(addrs(&["mx.example.net:587"]), ["mx.example.net:587"]);
        assert_eq!(addrs(&["mx:Example.NET"]), ["mx:example.net:25"]);
        assert_eq!(addrs(&["MX:example.net:2525"]), ["mx:example.net:2525"]);
    }

    #[test]
    fn cidr() {
        let all = addrs(&["127.0.1.0/24"]);
        assert_eq!(all.len(), 256);
        assert_eq!(all[0], "127.0.1.0:25");
        assert_eq!(all[255], "127.0.1.255:25");
        assert_eq!(
            addrs(&["10.0.0.4/31:2525"]),
            ["10.0.0.4:2525", "10.0.0.5:2525"]
        );
        assert_eq!(
            addrs(&["[2001:db8::/127]:26"]),
            ["[2001:db8::]:26", "[2001:db8::1]:26"]
        );
    }

    #[test]
    fn errors() {
        let e = |s: &str| expand(&[s.to_string()], 25).unwrap_err();
        assert_eq!(e("10.0.0.0/8"), TargetError::TooMany);
        assert!(matches!(e("host:99999"), TargetError::Explained(..)));
        assert!(matches!(e("bad host!"), TargetError::Bad(..)));
        assert!(matches!(e("10.0.0.0/33"), TargetError::Bad(..)));
        assert!(matches!(e(""), TargetError::Bad(..)));
        assert!(matches!(e("mx:"), TargetError::Bad(..)));
        assert!(matches!(e("mx:localhost"), TargetError::Bad(..)));
        assert!(matches!(e("mx:a.example:x"), TargetError::Explained(..)));
    }

    #[test]
    fn typos_are_refused_before_any_lookup() {
        let e = |s: &str| expand(&[s.to_string()], 25).unwrap_err().to_string();
        assert!(
            e("300.1.1.1").contains("not an IPv4 address"),
            "{}",
            e("300.1.1.1")
        );
        assert!(e("300.1.1.1:25").contains("not an IPv4 address"));
        assert!(e("1.2.3").contains("not an IPv4 address"));
        assert!(e("192.0.2.1:70000").contains("port 70000 is out of range"));
        assert!(e("mx.example.net:0").contains("out of range"));
        assert!(e("mx.example.net:smtp").contains("not a port number"));
        let amb = e("::1:2525");
        assert!(amb.contains("[::1]:2525"), "{amb}");
        assert!(amb.contains("[::1:2525]"), "{amb}");
        assert!(e("2001:db8::1:25").contains("[2001:db8::1]:25"));
        // Unambiguous or bracketed IPv6 forms still parse.
        assert_eq!(addrs(&["[::1:2525]"]), ["[::1:2525]:25"]);
        assert_eq!(addrs(&["2001:db8::1"]), ["[2001:db8::1]:25"]);
        assert_eq!(addrs(&["2001:db8::abcd"]), ["[2001:db8::abcd]:25"]);
    }

    /// Names follow the protocol crate's one domain grammar: LDH labels, no empty label, no
    /// `_`; a trailing dot as DNS writes it; internationalised names as their A-labels.
    #[test]
    fn host_names_follow_the_one_domain_grammar() {
        let e = |s: &str| expand(&[s.to_string()], 25).unwrap_err();
        assert_eq!(addrs(&["Mail.Example.NET."]), ["mail.example.net:25"]);
        assert_eq!(addrs(&["mx:bücher.test"]), ["mx:xn--bcher-kva.test:25"]);
        assert_eq!(addrs(&["bücher.test:2525"]), ["xn--bcher-kva.test:2525"]);
        for bad in [
            "under_score.example",
            "-lead.example",
            "a..b.example",
            "mx:a..b.example",
        ] {
            assert!(
                matches!(e(bad), TargetError::Bad(..)),
                "{bad}: {:?}",
                e(bad)
            );
        }
    }

    #[test]
    fn several_ports() {
        let ports = |specs: &[&str]| -> Vec<String> {
            let specs: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
            expand_ports(&specs, &[25, 587, 465])
                .unwrap()
                .iter()
                .map(|t| t.label())
                .collect()
        };
        assert_eq!(
            ports(&["192.0.2.1", "192.0.2.2:2525"]),
            [
                "192.0.2.1:25",
                "192.0.2.1:587",
                "192.0.2.1:465",
                "192.0.2.2:2525"
            ]
        );
        assert_eq!(ports(&["10.0.0.0/31"]).len(), 6);
        assert_eq!(
            ports(&["mx.example.net"]),
            [
                "mx.example.net:25",
                "mx.example.net:587",
                "mx.example.net:465"
            ]
        );
    }

    #[test]
    fn file_lines() {
        assert_eq!(
            from_file_text("# c\n\n a.example \n10.0.0.1:26 # x\n"),
            ["a.example", "10.0.0.1:26"]
        );
    }
}

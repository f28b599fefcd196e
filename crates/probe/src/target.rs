//! TARGET syntax: `host`, `host:port`, `IP`, `IP:port`, `[v6]`, `[v6]:port`, bare `v6`,
//! `CIDR` and `CIDR:port`. Host names are resolved when their turn comes, inside the scan.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

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
    #[error("the targets expand to more than {MAX_TARGETS} addresses")]
    TooMany,
}

/// Parses every spec and expands CIDR ranges, in order.
pub fn expand(specs: &[String], default_port: u16) -> Result<Vec<TargetInput>, TargetError> {
    let mut out = Vec::new();
    for spec in specs {
        parse_one(spec.trim(), default_port, &mut out)?;
        if out.len() > MAX_TARGETS {
            return Err(TargetError::TooMany);
        }
    }
    Ok(out)
}

/// Lines of a `--targets-file`: one target per line, `#` comments, blank lines ignored.
pub fn from_file_text(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse_one(spec: &str, default_port: u16, out: &mut Vec<TargetInput>) -> Result<(), TargetError> {
    let bad = |why| TargetError::Bad(spec.to_string(), why);
    if spec.is_empty() {
        return Err(bad("empty"));
    }
    if let Some(rest) = strip_prefix_ci(spec, "mx:") {
        let (domain, port) = match rest.rsplit_once(':') {
            Some((d, p)) => (d, p.parse::<u16>().map_err(|_| bad("bad port"))?),
            None => (rest, default_port),
        };
        if !is_host_name(domain) || !domain.contains('.') {
            return Err(bad("mx: needs a mail domain"));
        }
        out.push(TargetInput::Mx {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            port,
        });
        return Ok(());
    }
    if spec.contains('/') {
        return parse_cidr(spec, default_port, out);
    }
    if let Ok(addr) = spec.parse::<SocketAddr>() {
        out.push(addr_target(addr));
        return Ok(());
    }
    if let Ok(ip) = spec
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        out.push(addr_target(SocketAddr::new(ip, default_port)));
        return Ok(());
    }
    let (name, port) = match spec.rsplit_once(':') {
        Some((name, port)) => (name, port.parse::<u16>().map_err(|_| bad("bad port"))?),
        None => (spec, default_port),
    };
    if !is_host_name(name) {
        return Err(bad("not a host name, address or CIDR range"));
    }
    out.push(TargetInput::Host {
        name: name.trim_end_matches('.').to_ascii_lowercase(),
        port,
    });
    Ok(())
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Letters, digits, dots and hyphens; at most 253 bytes.
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// `10.0.0.0/30`, `10.0.0.0/30:2525`, `[2001:db8::/126]:25`: every address of the range,
/// network and broadcast included (a loopback or lab range uses them all).
fn parse_cidr(
    spec: &str,
    default_port: u16,
    out: &mut Vec<TargetInput>,
) -> Result<(), TargetError> {
    let bad = |why| TargetError::Bad(spec.to_string(), why);
    let (net_text, port) = split_cidr_port(spec).ok_or_else(|| bad("bad port"))?;
    let net: IpNet = net_text.parse().map_err(|_| bad("bad CIDR range"))?;
    let bits = net.max_prefix_len() - net.prefix_len();
    if bits >= 17 || out.len() + (1usize << bits) > MAX_TARGETS {
        return Err(TargetError::TooMany);
    }
    let port = port.unwrap_or(default_port);
    let first = ip_to_u128(net.network());
    for i in 0..(1u128 << bits) {
        let ip = u128_to_ip(first + i, net.network());
        let addr = SocketAddr::new(ip, port);
        out.push(addr_target(addr));
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
        assert!(matches!(e("host:99999"), TargetError::Bad(..)));
        assert!(matches!(e("bad host!"), TargetError::Bad(..)));
        assert!(matches!(e("10.0.0.0/33"), TargetError::Bad(..)));
        assert!(matches!(e(""), TargetError::Bad(..)));
        assert!(matches!(e("mx:"), TargetError::Bad(..)));
        assert!(matches!(e("mx:localhost"), TargetError::Bad(..)));
        assert!(matches!(e("mx:a.example:x"), TargetError::Bad(..)));
    }

    #[test]
    fn file_lines() {
        assert_eq!(
            from_file_text("# c\n\n a.example \n10.0.0.1:26 # x\n"),
            ["a.example", "10.0.0.1:26"]
        );
    }
}

//! `--exclude-file FILE`: address ranges a scan must never touch (networks whose owners asked
//! not to be scanned, one's own infrastructure). One IP or CIDR per line, `#` comments, like
//! ZMap's and masscan's exclude files. Checked before anything is sent to an address: before
//! the connection, before a DNSBL lookup about it; an expanded range drops excluded addresses
//! before they become targets at all.

use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, Clone, Default)]
pub struct ExcludeList {
    nets: Vec<IpNet>,
}

impl ExcludeList {
    /// Parses the file's text; a bad line is an error naming its number.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let entry = line.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            let net = entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("line {}: {entry:?} is not an IP address or CIDR", i + 1))?;
            nets.push(net.trunc());
        }
        Ok(Self { nets })
    }

    /// Whether `ip` (IPv4-mapped IPv6 counts as IPv4) lies in an excluded range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_addresses_and_comments() {
        let list =
            ExcludeList::parse("# ours\n127.0.2.0/24\n\n192.0.2.7 # one host\n2001:db8::/32\n")
                .expect("parse");
        assert!(list.contains("127.0.2.9".parse().unwrap()));
        assert!(list.contains("::ffff:127.0.2.9".parse().unwrap()));
        assert!(list.contains("192.0.2.7".parse().unwrap()));
        assert!(!list.contains("192.0.2.8".parse().unwrap()));
        assert!(list.contains("2001:db8::1".parse().unwrap()));
        assert!(!list.contains("127.0.3.1".parse().unwrap()));
        let e = ExcludeList::parse("10.0.0.0/8\n300.1.1.1\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }
}

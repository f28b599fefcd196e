//! Where a recipient goes: the one answer to "where does this recipient go?".
//!
//! Postfix's trivial-rewrite maps an address once to (transport, next hop, recipient), and both
//! smtpd's relay check and qmgr's delivery use that answer, so they cannot disagree. This is
//! that mapping for relayward. The session asks the [`Router`] while it decides a RCPT (the
//! policy then only judges *whether this client may send there*), the queue stores the
//! [`Route`] next to the recipient, and the delivery runner delivers by the stored route
//! without working it out again — so a configuration reload, a second process or a bug in one
//! place cannot send an accepted recipient somewhere the RCPT decision never saw.
//!
//! The router is pure: it sees a [`Resolved`] address (source route stripped, quotes looked
//! into, routing flagged; see [`crate::resolve`]) and the routing table built from the
//! configuration, and does no I/O. `tests/data/route.table` pins its answers.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::path::{Domain, is_dot_atom, is_host_name, parse_mailbox, quote_local_part};
use crate::resolve::{Resolved, Routing, resolve_mailbox};

/// What kind of destination a recipient has; decides who may send to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteClass {
    /// A mailbox of a local domain (Maildir here). Anyone may send to it.
    Local,
    /// A `[[route]]` domain relayward fronts (Postfix's `relay_domains`). Anyone may send to it.
    RelayDomain,
    /// Anywhere else. Only authenticated users and trusted networks may send to it.
    Remote,
}

impl RouteClass {
    /// The name used in logs, metrics and the golden table.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Local => "local",
            RouteClass::RelayDomain => "relay_domain",
            RouteClass::Remote => "remote",
        }
    }
}

/// Where the next copy of the message is handed over.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "via", rename_all = "snake_case")]
pub enum NextHop {
    /// `data_dir/mail/<domain>/<mailbox>/`. Both are lower-case dot-atoms without `/`, safe as
    /// path components.
    Maildir { domain: String, mailbox: String },
    /// An SMTP server named by a `[[route]]` (`smtp://host:port`), without MX lookup.
    Smtp { host: String, port: u16 },
    /// The configured smart host (`[delivery] smarthost`), whichever it is at delivery time.
    Smarthost,
    /// The MX hosts of the domain (RFC 5321 §5.1: implicit MX, null MX).
    Mx { domain: String },
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NextHop::Maildir { domain, mailbox } => write!(f, "maildir:{domain}/{mailbox}"),
            NextHop::Smtp { host, port } => {
                write!(f, "smtp:{}", join_host_port(host, *port))
            }
            NextHop::Smarthost => f.write_str("smarthost"),
            NextHop::Mx { domain } => write!(f, "mx:{domain}"),
        }
    }
}

/// A recipient's route: its class and next hop.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Route {
    pub class: RouteClass,
    pub next_hop: NextHop,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} via {}", self.class.as_str(), self.next_hop)
    }
}

/// A recipient the router could place: the address as the next hop will see it, and where
/// it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// `local@domain`: domain lower-case; the local part lower-case for Maildir next hops (the
    /// mailbox name) and as sent otherwise, quoted when it is not a dot-atom (an empty one as
    /// `""`, never as nothing, which would read as a source route downstream).
    pub address: String,
    pub route: Route,
    /// The next hop (an internal server behind a `[[route]]`) must confirm at RCPT time that
    /// it takes this recipient before we accept it.
    pub verify: bool,
}

/// A `[[route]]` domain: where its mail goes, and how its recipients are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayDomain {
    pub target: RouteTarget,
    /// The addresses that exist there, when the configuration lists them; others have no route.
    pub recipients: Option<Vec<String>>,
    /// Recipients must be confirmed by the internal server (see [`Routed::verify`]).
    pub verify: bool,
}

impl RelayDomain {
    /// A relay domain that takes every local part, without asking anyone.
    pub fn to(target: RouteTarget) -> RelayDomain {
        RelayDomain {
            target,
            recipients: None,
            verify: false,
        }
    }
}

/// What a next hop said when asked whether it takes a recipient (recipient verification of
/// `[[route]]` domains: the session asks, the delivery side speaks SMTP to find out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// It accepts the recipient.
    Exists,
    /// It refused the recipient permanently (its reply, for the log).
    Refused(crate::reply::Reply),
    /// It could not be asked, or answered with a temporary error (why, for the log).
    Unavailable(String),
}

/// Why an address has no route. The policy refuses each of these for every client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unroutable {
    /// Sender-specified routing in the local part (`%`, `!`, quoted `@`): honouring it is how
    /// "closed" relays got opened, so such an address goes nowhere.
    SenderRouted(Vec<Routing>),
    /// `user@[192.0.2.1]`: never one of our domains, and never relayed to.
    AddressLiteral,
    /// A local domain (or a Maildir route) without such a mailbox — or a local part that can
    /// never name one.
    NoSuchMailbox,
    /// Valid RFC 5321, but not an address relayward's SMTP client sends on (see
    /// [`is_sendable_address`]): accepting it would only end in a bounce.
    Unsendable,
}

/// Where a `[[route]]` domain's mail goes: its `to` key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RouteTarget {
    /// Into `data_dir/mail/<domain>/<local-part>/`, like a local domain.
    Maildir,
    /// To an SMTP server, e.g. an internal one; port 25 unless given.
    Smtp { host: String, port: u16 },
}

impl FromStr for RouteTarget {
    type Err = String;

    /// `maildir`, `smtp://host`, `smtp://host:port`, `smtp://[v6]:port`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "maildir" {
            return Ok(RouteTarget::Maildir);
        }
        let rest = text.strip_prefix("smtp://").ok_or_else(|| {
            format!("{text:?} is not a route target; write \"smtp://host:port\" or \"maildir\"")
        })?;
        let (host, port) = split_host_port(rest, 25)
            .ok_or_else(|| format!("{text:?}: expected \"smtp://host\" or \"smtp://host:port\""))?;
        Ok(RouteTarget::Smtp { host, port })
    }
}

impl fmt::Display for RouteTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteTarget::Maildir => f.write_str("maildir"),
            RouteTarget::Smtp { host, port } => write!(f, "smtp://{}", join_host_port(host, *port)),
        }
    }
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`; the one host:port parser. `None` on
/// anything else (empty host, port 0 or out of range, a path, user info, a bare IPv6 address
/// without brackets). The host comes back without brackets; a host name lower-case.
pub fn split_host_port(text: &str, default_port: u16) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        None => default_port,
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse::<u16>().ok().filter(|p| *p != 0)?
        }
        Some(_) => return None,
    };
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Some((host.to_string(), port));
    }
    is_host_name(host).then(|| (host.to_ascii_lowercase(), port))
}

/// `host:port`, bracketing an IPv6 address.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The routing table, built from the configuration (see `Config::router` in the config crate)
/// and rebuilt with it on reload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Router {
    /// Lower-case, in file order; the first receives mail for a bare `<Postmaster>`.
    local_domains: Vec<String>,
    /// Lower-case `local@domain` of every mailbox in a local domain.
    mailboxes: HashSet<String>,
    /// `[[route]]` domains (lower-case); recipient lists lower-case.
    relay_domains: HashMap<String, RelayDomain>,
    /// Whether remote mail goes to the smart host instead of the MX hosts.
    smarthost: bool,
}

impl Router {
    /// A table from its parts; names are compared case-insensitively.
    pub fn new(
        local_domains: impl IntoIterator<Item = String>,
        mailboxes: impl IntoIterator<Item = String>,
        relay_domains: impl IntoIterator<Item = (String, RelayDomain)>,
        smarthost: bool,
    ) -> Router {
        let mut domains: Vec<String> = Vec::new();
        for domain in local_domains {
            let domain = domain.to_ascii_lowercase();
            if !domains.contains(&domain) {
                domains.push(domain);
            }
        }
        Router {
            local_domains: domains,
            mailboxes: mailboxes
                .into_iter()
                .map(|m| m.to_ascii_lowercase())
                .collect(),
            relay_domains: relay_domains
                .into_iter()
                .map(|(d, mut relay)| {
                    if let Some(list) = &mut relay.recipients {
                        list.iter_mut().for_each(|a| *a = a.to_ascii_lowercase());
                    }
                    (d.to_ascii_lowercase(), relay)
                })
                .collect(),
            smarthost,
        }
    }

    /// Routes one resolved recipient. The only place a [`Route`] is computed.
    pub fn route(&self, rcpt: &Resolved) -> Result<Routed, Unroutable> {
        if rcpt.is_routed() {
            return Err(Unroutable::SenderRouted(rcpt.routing.clone()));
        }
        match &rcpt.domain {
            None => self.bare_postmaster(),
            Some(Domain::Literal(_)) => Err(Unroutable::AddressLiteral),
            Some(Domain::Name(name)) => self.route_domain(&rcpt.local_part, name),
        }
    }

    /// Routes an address written as `local@domain` (a reverse-path, when a bounce goes back):
    /// parsed and resolved exactly as a RCPT would be. `None` when it does not parse.
    pub fn route_address(&self, address: &str) -> Option<Result<Routed, Unroutable>> {
        let mailbox = parse_mailbox(address).ok()?;
        Some(self.route(&resolve_mailbox(&mailbox)))
    }

    /// Whether `domain` (any case) is one of the local domains.
    pub fn is_local_domain(&self, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        self.local_domains.contains(&domain)
    }

    /// The local domains, lower-case, in file order.
    pub fn local_domains(&self) -> &[String] {
        &self.local_domains
    }

    fn bare_postmaster(&self) -> Result<Routed, Unroutable> {
        let domain = self
            .local_domains
            .first()
            .ok_or(Unroutable::NoSuchMailbox)?;
        Ok(maildir(RouteClass::Local, domain, "postmaster"))
    }

    fn route_domain(&self, local_part: &str, domain: &str) -> Result<Routed, Unroutable> {
        let domain = domain.to_ascii_lowercase();
        if self.local_domains.contains(&domain) {
            let mailbox = local_part.to_ascii_lowercase();
            if !self.mailboxes.contains(&format!("{mailbox}@{domain}")) {
                return Err(Unroutable::NoSuchMailbox);
            }
            return Ok(maildir(RouteClass::Local, &domain, &mailbox));
        }
        let Some(relay) = self.relay_domains.get(&domain) else {
            return self.remote(local_part, domain);
        };
        if let Some(list) = &relay.recipients {
            let address = format!("{}@{domain}", local_part.to_ascii_lowercase());
            if !list.contains(&address) {
                return Err(Unroutable::NoSuchMailbox);
            }
        }
        match &relay.target {
            // A Maildir route files mail under `<domain>/<local part>/`: a local part that can
            // never name a Maildir would be accepted, fail at delivery and bounce to whatever
            // sender the client wrote (backscatter for anyone). It has no route.
            RouteTarget::Maildir if !is_mailbox_name(local_part) => Err(Unroutable::NoSuchMailbox),
            RouteTarget::Maildir => Ok(maildir(
                RouteClass::RelayDomain,
                &domain,
                &local_part.to_ascii_lowercase(),
            )),
            RouteTarget::Smtp { host, port } => Ok(Routed {
                address: sendable(wire_address(local_part, &domain))?,
                route: Route {
                    class: RouteClass::RelayDomain,
                    next_hop: NextHop::Smtp {
                        host: host.clone(),
                        port: *port,
                    },
                },
                verify: relay.verify,
            }),
        }
    }

    fn remote(&self, local_part: &str, domain: String) -> Result<Routed, Unroutable> {
        Ok(Routed {
            address: sendable(wire_address(local_part, &domain))?,
            route: Route {
                class: RouteClass::Remote,
                next_hop: if self.smarthost {
                    NextHop::Smarthost
                } else {
                    NextHop::Mx { domain }
                },
            },
            verify: false,
        })
    }
}

fn sendable(address: String) -> Result<String, Unroutable> {
    if is_sendable_address(&address) {
        Ok(address)
    } else {
        Err(Unroutable::Unsendable)
    }
}

fn maildir(class: RouteClass, domain: &str, mailbox: &str) -> Routed {
    Routed {
        address: format!("{mailbox}@{domain}"),
        route: Route {
            class,
            next_hop: NextHop::Maildir {
                domain: domain.to_string(),
                mailbox: mailbox.to_string(),
            },
        },
        verify: false,
    }
}

/// Whether relayward's SMTP client sends `address` (`local@domain` as queued, the local part
/// quoted where needed) to a next hop: at most 256 octets (the RFC 5321 §4.5.3.1.3 path
/// limit, brackets included), no control characters, and no `<` or `>` even inside a quoted
/// local part. Those are valid RFC 5321, but they are what naive parsers on the way split
/// paths on. The one rule for the session (RCPT and MAIL) and the delivery client, so nothing
/// is accepted that delivery would refuse and bounce.
pub fn is_sendable_address(address: &str) -> bool {
    address.len() + 2 <= crate::limits::MAX_PATH
        && !address
            .chars()
            .any(|c| c.is_control() || c == '<' || c == '>')
}

/// Whether a dequoted local part can name a Maildir directory: a dot-atom (so no leading dot,
/// no `..`, no quotes, spaces or backslashes) without `/`.
pub fn is_mailbox_name(local: &str) -> bool {
    is_dot_atom(local) && !local.contains('/')
}

/// `local@domain` in RFC 5321 form: the local part as is when it is a dot-atom, quoted
/// otherwise (an empty one as `""`).
pub fn wire_address(local: &str, domain: &str) -> String {
    format!("{}@{domain}", wire_local_part(local))
}

/// A dequoted local part in RFC 5321 form (see [`wire_address`]).
pub fn wire_local_part(local: &str) -> String {
    if local.is_empty() {
        return "\"\"".to_string();
    }
    quote_local_part(local).unwrap_or_else(|| local.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        let hp = |t: &str| split_host_port(t, 25);
        assert_eq!(hp("mx.example.test"), Some(("mx.example.test".into(), 25)));
        assert_eq!(
            hp("MX.Example.test:2525"),
            Some(("mx.example.test".into(), 2525))
        );
        assert_eq!(hp("10.0.0.5:587"), Some(("10.0.0.5".into(), 587)));
        assert_eq!(hp("[::1]:2525"), Some(("::1".into(), 2525)));
        assert_eq!(hp("[::1]"), Some(("::1".into(), 25)));
        for bad in [
            "",
            ":25",
            "host:0",
            "host:65536",
            "host:+25",
            "::1:25",
            "host/x:25",
            "u@host:25",
            "[::1]x",
            "host:",
            "-bad-:25",
        ] {
            assert_eq!(hp(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn route_targets_round_trip() {
        for text in ["maildir", "smtp://10.0.0.5:25", "smtp://[::1]:2525"] {
            let target: RouteTarget = text.parse().unwrap();
            assert_eq!(target.to_string(), text);
        }
        assert_eq!(
            "smtp://mail.corp.test".parse::<RouteTarget>(),
            Ok(RouteTarget::Smtp {
                host: "mail.corp.test".into(),
                port: 25
            })
        );
        assert!("http://x".parse::<RouteTarget>().is_err());
        assert!("smtp://".parse::<RouteTarget>().is_err());
    }

    #[test]
    fn routes_serialise_as_tagged_objects() {
        let route = Route {
            class: RouteClass::RelayDomain,
            next_hop: NextHop::Smtp {
                host: "10.0.0.5".into(),
                port: 25,
            },
        };
        let json = serde_json::to_string(&route).unwrap();
        assert_eq!(
            json,
            r#"{"class":"relay_domain","next_hop":{"via":"smtp","host":"10.0.0.5","port":25}}"#
        );
        assert_eq!(serde_json::from_str::<Route>(&json).unwrap(), route);
    }
}

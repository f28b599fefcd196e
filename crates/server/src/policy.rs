//! The relay policy: the one place that decides whether a recipient may be accepted.
//!
//! Shaped after Postfix's split between trivial-rewrite and the relay restrictions: the
//! protocol crate *resolves* an address first (strips source routes, looks inside quotes, flags
//! `%`, `!` and quoted `@` as sender-specified routing); this module only looks at that
//! [`Resolved`] value and never re-parses a string. Spam and HELO rules live elsewhere and
//! cannot open the relay, because the session can queue a recipient only when it holds an
//! [`Accepted`], and only [`Policy::decide`] can create one.
//!
//! A recipient is accepted when, and only when, it carries no routing, is not an address
//! literal, and:
//! (a) its domain is local and it names an existing mailbox, or its domain is a `[[route]]`
//!     relay domain (anyone may send there; for a Maildir route, only local parts that can
//!     name a Maildir, see [`is_mailbox_name`]); or
//! (b) the client authenticated (as a configured user); or
//! (c) the client is in a trusted network.
//!
//! Unknown mailboxes in local domains are refused at RCPT (`550 5.1.1`) for every client,
//! so nothing is ever bounced for them later.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use relayward_protocol::path::{Domain, ReversePath, is_dot_atom, quote_local_part};
use relayward_protocol::reply::Reply;
use relayward_protocol::resolve::{Resolved, Routing};

use crate::auth::Login;
use crate::config::{Config, ConfigProblem, ListenerKind, RouteTarget};

/// Who is asking: the client's address and, after a successful AUTH, its login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    ip: IpAddr,
    authenticated: Option<Login>,
}

impl ClientIdentity {
    /// Canonicalises `ip` (an IPv4-mapped IPv6 peer such as `::ffff:192.0.2.1` becomes
    /// `192.0.2.1`), so that trusted IPv4 networks match on dual-stack sockets.
    pub fn new(ip: IpAddr, authenticated: Option<Login>) -> Self {
        Self {
            ip: ip.to_canonical(),
            authenticated,
        }
    }

    /// A client that has not authenticated.
    pub fn anonymous(ip: IpAddr) -> Self {
        Self::new(ip, None)
    }

    /// The same client after a successful AUTH.
    pub fn authenticated_as(self, login: Login) -> Self {
        Self {
            authenticated: Some(login),
            ..self
        }
    }

    /// The canonical client address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The login, if the client authenticated.
    pub fn login(&self) -> Option<&Login> {
        self.authenticated.as_ref()
    }
}

/// Why a recipient was accepted; goes into logs and decides which per-user limits apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptReason {
    /// An existing mailbox in a local domain.
    LocalMailbox,
    /// Any address in a `[[route]]` domain.
    RelayDomain,
    /// A remote address, from a client in a trusted network.
    TrustedNetwork,
    /// A remote address, from an authenticated user.
    Authenticated(Login),
}

/// Where an accepted recipient's mail goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A local Maildir: `data_dir/mail/<domain>/<local_part>/`. Both are the configured
    /// mailbox's lower-case spelling (safe as path components: validated dot-atoms).
    LocalMailbox { local_part: String, domain: String },
    /// A `[[route]]` domain, forwarded to its target.
    Route { domain: String, target: RouteTarget },
    /// Elsewhere: MX lookup or the smart host.
    Remote { domain: String },
}

/// Proof that a recipient may be accepted. Only [`Policy::decide`] creates one (private fields,
/// no `Clone`), so a session that queues a recipient must have asked the policy.
#[derive(Debug, PartialEq, Eq)]
pub struct Accepted {
    reason: AcceptReason,
    address: String,
    destination: Destination,
}

impl Accepted {
    /// Why the recipient was accepted.
    pub fn reason(&self) -> &AcceptReason {
        &self.reason
    }

    /// The recipient in canonical form for the queue: `local@domain`, domain lower-case, local
    /// part lower-case for local mailboxes and as sent (quoted if needed) otherwise.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Where the mail goes.
    pub fn destination(&self) -> &Destination {
        &self.destination
    }
}

/// Why a recipient was refused. Every variant is permanent (5xx).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not ours, and the client may not relay.
    RelayDenied { address: String },
    /// A local domain, but no such mailbox.
    UnknownUser { address: String },
    /// Sender-specified routing in the local part (`%`, `!`, quoted `@`): refused for every
    /// client, because honouring it is how "closed" relays got opened.
    Routed {
        address: String,
        routing: Vec<Routing>,
    },
    /// `user@[192.0.2.1]`: never local, and not relayed for anyone.
    AddressLiteral { address: String },
}

impl Refusal {
    /// The RCPT reply.
    pub fn reply(&self) -> Reply {
        match self {
            Refusal::RelayDenied { address } | Refusal::AddressLiteral { address } => {
                Reply::enh(554, (5, 7, 1), format!("<{address}>: Relay access denied"))
            }
            Refusal::UnknownUser { address } => Reply::enh(
                550,
                (5, 1, 1),
                format!("<{address}>: Recipient address rejected: User unknown"),
            ),
            Refusal::Routed { address, .. } => Reply::enh(
                554,
                (5, 7, 1),
                format!(
                    "<{address}>: Relay access denied: sender-specified routing (%, !, quoted @) is not accepted"
                ),
            ),
        }
    }

    /// The refused address as shown in the reply.
    pub fn address(&self) -> &str {
        match self {
            Refusal::RelayDenied { address }
            | Refusal::UnknownUser { address }
            | Refusal::Routed { address, .. }
            | Refusal::AddressLiteral { address } => address,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.reply())
    }
}

/// Why a MAIL FROM was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderRefusal {
    /// On a submission listener, MAIL before AUTH.
    AuthRequired,
    /// An authenticated user used an address outside their `send_as`.
    NotOwned { address: String, login: Login },
}

impl SenderRefusal {
    /// `530 5.7.0` or `553 5.7.1`.
    pub fn reply(&self) -> Reply {
        match self {
            SenderRefusal::AuthRequired => Reply::enh(530, (5, 7, 0), "Authentication required"),
            SenderRefusal::NotOwned { address, login } => Reply::enh(
                553,
                (5, 7, 1),
                format!("<{address}>: Sender address rejected: not owned by user {login}"),
            ),
        }
    }
}

/// The relay policy, built once from a validated configuration (and rebuilt on reload).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Lower-case, in file order; the first receives mail for a bare `<Postmaster>`.
    local_domains: Vec<String>,
    /// Lower-case `local@domain`.
    mailboxes: HashSet<String>,
    relay_domains: HashMap<String, RouteTarget>,
    trusted: Vec<IpNet>,
    /// Lower-case login → lower-case `send_as` addresses.
    users: HashMap<String, HashSet<String>>,
}

impl Policy {
    /// Builds the policy. Refuses a configuration with errors (the same list as
    /// [`Config::validate`]), so that no caller can run an open-relay configuration by
    /// forgetting to validate.
    pub fn from_config(config: &Config) -> Result<Policy, Vec<ConfigProblem>> {
        config.validate()?;
        let users = config
            .users
            .iter()
            .map(|u| {
                let send_as = u
                    .effective_send_as()
                    .iter()
                    .map(|a| a.to_ascii_lowercase())
                    .collect();
                (u.login.to_ascii_lowercase(), send_as)
            })
            .collect();
        Ok(Policy {
            local_domains: config.normalized_local_domains(),
            mailboxes: config
                .local_mailboxes()
                .into_iter()
                .map(|(a, _)| a)
                .collect(),
            relay_domains: config.relay_domains(),
            trusted: config
                .relay
                .trusted_networks
                .iter()
                .map(|c| c.net().trunc())
                .collect(),
            users,
        })
    }

    /// Whether MAIL requires a prior AUTH on this kind of listener (submission and
    /// submissions: yes; mx: no). The session answers [`SenderRefusal::AuthRequired`].
    pub fn mail_requires_auth(kind: ListenerKind) -> bool {
        matches!(kind, ListenerKind::Submission | ListenerKind::Submissions)
    }

    /// Whether the client's address is in a trusted network.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// Whether `domain` (any case) is one of ours.
    pub fn is_local_domain(&self, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        self.local_domains.contains(&domain)
    }

    /// Decides one recipient. The only constructor of [`Accepted`].
    pub fn decide(&self, client: &ClientIdentity, rcpt: &Resolved) -> Result<Accepted, Refusal> {
        let address = display_address(rcpt);
        if rcpt.is_routed() {
            return Err(Refusal::Routed {
                address,
                routing: rcpt.routing.clone(),
            });
        }
        match &rcpt.domain {
            None => self.bare_postmaster(address),
            Some(Domain::Literal(_)) => Err(Refusal::AddressLiteral { address }),
            Some(Domain::Name(name)) => {
                self.decide_domain(client, rcpt, &name.to_ascii_lowercase(), address)
            }
        }
    }

    /// MAIL FROM for a client on a listener: AUTH required first on submission listeners,
    /// then [`Policy::check_sender`].
    pub fn check_mail(
        &self,
        kind: ListenerKind,
        client: &ClientIdentity,
        from: &ReversePath,
    ) -> Result<(), SenderRefusal> {
        if Self::mail_requires_auth(kind) && client.login().is_none() {
            return Err(SenderRefusal::AuthRequired);
        }
        self.check_sender(client, from)
    }

    /// Whether the client may use this envelope sender.
    ///
    /// - Authenticated users may use only their `send_as` addresses (case-insensitive), so a
    ///   stolen password cannot send as the CEO.
    /// - The null sender `<>` is allowed for authenticated users: it is how they send delivery
    ///   and read receipts (RFC 3798), it cannot be used to impersonate anyone, and Postfix's
    ///   `reject_sender_login_mismatch` allows it too. Per-user rate limits still apply.
    /// - Unauthenticated clients are not restricted here: which senders to believe is spam
    ///   policy (SPF, DMARC), not relay policy, and the recipients decide relaying.
    pub fn check_sender(
        &self,
        client: &ClientIdentity,
        from: &ReversePath,
    ) -> Result<(), SenderRefusal> {
        let (Some(login), ReversePath::Path { mailbox, .. }) = (client.login(), from) else {
            return Ok(());
        };
        let address = format!(
            "{}@{}",
            mailbox.local.value.to_ascii_lowercase(),
            mailbox.domain.to_string().to_ascii_lowercase()
        );
        let owned = self
            .users
            .get(&login.as_str().to_ascii_lowercase())
            .is_some_and(|send_as| send_as.contains(&address));
        if owned {
            Ok(())
        } else {
            Err(SenderRefusal::NotOwned {
                address: mailbox.to_string(),
                login: login.clone(),
            })
        }
    }

    fn bare_postmaster(&self, address: String) -> Result<Accepted, Refusal> {
        let Some(domain) = self.local_domains.first() else {
            return Err(Refusal::UnknownUser { address });
        };
        Ok(Accepted {
            reason: AcceptReason::LocalMailbox,
            address: format!("postmaster@{domain}"),
            destination: Destination::LocalMailbox {
                local_part: "postmaster".to_string(),
                domain: domain.clone(),
            },
        })
    }

    fn decide_domain(
        &self,
        client: &ClientIdentity,
        rcpt: &Resolved,
        domain: &str,
        address: String,
    ) -> Result<Accepted, Refusal> {
        if self.local_domains.iter().any(|d| d == domain) {
            return self.local_mailbox(rcpt, domain, address);
        }
        if let Some(target) = self.relay_domains.get(domain) {
            // A Maildir route files mail under `<domain>/<local part>/`: a local part that can
            // never name a Maildir would be accepted here, fail at delivery and bounce to
            // whatever sender the client wrote (backscatter for anyone). Refuse it now.
            if *target == RouteTarget::Maildir && !is_mailbox_name(&rcpt.local_part) {
                return Err(Refusal::UnknownUser { address });
            }
            let destination = Destination::Route {
                domain: domain.to_string(),
                target: target.clone(),
            };
            return Ok(remote(AcceptReason::RelayDomain, rcpt, domain, destination));
        }
        let destination = Destination::Remote {
            domain: domain.to_string(),
        };
        if let Some(login) = self.known_login(client) {
            return Ok(remote(
                AcceptReason::Authenticated(login),
                rcpt,
                domain,
                destination,
            ));
        }
        if self.is_trusted(client.ip()) {
            return Ok(remote(
                AcceptReason::TrustedNetwork,
                rcpt,
                domain,
                destination,
            ));
        }
        Err(Refusal::RelayDenied { address })
    }

    fn local_mailbox(
        &self,
        rcpt: &Resolved,
        domain: &str,
        address: String,
    ) -> Result<Accepted, Refusal> {
        let local_part = rcpt.local_part.to_ascii_lowercase();
        let canonical = format!("{local_part}@{domain}");
        if !self.mailboxes.contains(&canonical) {
            return Err(Refusal::UnknownUser { address });
        }
        Ok(Accepted {
            reason: AcceptReason::LocalMailbox,
            address: canonical,
            destination: Destination::LocalMailbox {
                local_part,
                domain: domain.to_string(),
            },
        })
    }

    /// The client's login, if it names a configured user. A login that is no longer configured
    /// (removed by a reload) grants nothing.
    fn known_login(&self, client: &ClientIdentity) -> Option<Login> {
        let login = client.login()?;
        let known = self
            .users
            .contains_key(&login.as_str().to_ascii_lowercase());
        if !known {
            tracing::warn!(login = %login, "authenticated login is not a configured user; not relaying for it");
        }
        known.then(|| login.clone())
    }
}

fn remote(
    reason: AcceptReason,
    rcpt: &Resolved,
    domain: &str,
    destination: Destination,
) -> Accepted {
    Accepted {
        reason,
        address: format!("{}@{domain}", wire_local_part(&rcpt.local_part)),
        destination,
    }
}

/// Whether a dequoted local part can name a Maildir directory: a dot-atom (so no leading dot,
/// no `..`, no quotes, spaces or backslashes) without `/`.
pub fn is_mailbox_name(local: &str) -> bool {
    is_dot_atom(local) && !local.contains('/')
}

/// The recipient as shown in replies: `local@domain`, the local part quoted when it is not a
/// dot-atom; `Postmaster` for the bare form.
fn display_address(rcpt: &Resolved) -> String {
    match &rcpt.domain {
        None => "Postmaster".to_string(),
        Some(domain) => format!("{}@{domain}", wire_local_part(&rcpt.local_part)),
    }
}

/// A dequoted local part in RFC 5321 form: as is when it is a dot-atom, quoted otherwise
/// (an empty one as `""`, never as nothing, which would read as a source route downstream).
fn wire_local_part(local: &str) -> String {
    if local.is_empty() {
        return "\"\"".to_string();
    }
    quote_local_part(local).unwrap_or_else(|| local.to_string())
}

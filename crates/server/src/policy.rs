//! The relay policy: the one place that decides whether a recipient may be accepted.
//!
//! Shaped after Postfix's split between trivial-rewrite and the relay restrictions: the
//! protocol crate *resolves* an address first (strips source routes, looks inside quotes, flags
//! `%`, `!` and quoted `@` as sender-specified routing); this module only looks at that
//! [`Resolved`] value and never re-parses a string. Spam and HELO rules live elsewhere and
//! cannot open the relay, because the session can queue a recipient only when it holds an
//! [`Accepted`], and only [`Policy::decide`] can create one.
//!
//! Where a recipient goes is the [`Router`]'s answer (`relayward_protocol::route`), asked here
//! and carried by the [`Accepted`] into the queue, so the delivery runner sends it exactly
//! where this decision looked. The policy only judges whether *this client* may send there:
//! a recipient is accepted when, and only when, the router found a route for it (no
//! sender-specified routing, no address literal, an existing mailbox in a local domain) and:
//! (a) its route is local or a `[[route]]` relay domain (anyone may send there); or
//! (b) the client authenticated (as a configured user); or
//! (c) the client is in a trusted network.
//!
//! Unknown mailboxes in local domains are refused at RCPT (`550 5.1.1`) for every client,
//! so nothing is ever bounced for them later.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use relayward_protocol::path::ReversePath;
use relayward_protocol::reply::Reply;
use relayward_protocol::resolve::{Resolved, Routing, resolve_mailbox};
use relayward_protocol::route::{
    Route, RouteClass, Router, Unroutable, is_sendable_address, wire_local_part,
};

use crate::auth::Login;
use crate::config::{Config, ConfigProblem, ListenerKind};

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

/// Proof that a recipient may be accepted. Only [`Policy::decide`] creates one (private fields,
/// no `Clone`), so a session that queues a recipient must have asked the policy.
#[derive(Debug, PartialEq, Eq)]
pub struct Accepted {
    reason: AcceptReason,
    address: String,
    route: Route,
    verify: bool,
}

impl Accepted {
    /// Why the recipient was accepted.
    pub fn reason(&self) -> &AcceptReason {
        &self.reason
    }

    /// The recipient in canonical form for the queue: `local@domain`, domain lower-case, local
    /// part lower-case for Maildir mailboxes and as sent (quoted if needed) otherwise.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Where the mail goes: the router's answer, stored with the recipient in the queue.
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// Whether the next hop must confirm the recipient before the session accepts it (see
    /// [`crate::verify`]).
    pub fn needs_verification(&self) -> bool {
        self.verify
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
    /// Valid, but not an address the delivery client passes on (`<`, `>`, controls, length):
    /// accepting it would end in a bounce to whatever sender the client wrote.
    Unsendable { address: String },
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
            Refusal::Unsendable { address } => Reply::enh(
                553,
                (5, 1, 3),
                format!(
                    "<{address}>: Recipient address rejected: not passed on by this server (\"<\", \">\" or control characters)"
                ),
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

    /// The `reason` label of `relayward_recipients_refused_total`.
    pub fn metric_word(&self) -> &'static str {
        match self {
            Refusal::RelayDenied { .. } => "relay_denied",
            Refusal::UnknownUser { .. } => "unknown_user",
            Refusal::Routed { .. } => "sender_routing",
            Refusal::AddressLiteral { .. } => "address_literal",
            Refusal::Unsendable { .. } => "unsendable",
        }
    }

    /// The refused address as shown in the reply.
    pub fn address(&self) -> &str {
        match self {
            Refusal::RelayDenied { address }
            | Refusal::UnknownUser { address }
            | Refusal::Routed { address, .. }
            | Refusal::AddressLiteral { address }
            | Refusal::Unsendable { address } => address,
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
    /// A sender the delivery client would not pass on: every copy relayed would fail.
    Unsendable { address: String },
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
            SenderRefusal::Unsendable { address } => Reply::enh(
                553,
                (5, 1, 7),
                format!(
                    "<{address}>: Sender address rejected: not passed on by this server (\"<\", \">\" or control characters)"
                ),
            ),
        }
    }
}

/// The relay policy, built once from a validated configuration (and rebuilt on reload).
#[derive(Debug, Clone)]
pub struct Policy {
    router: Arc<Router>,
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
            router: Arc::new(config.router()),
            trusted: config
                .relay
                .trusted_networks
                .iter()
                .map(|c| c.net().trunc())
                .collect(),
            users,
        })
    }

    /// The routing table the decisions use; the delivery runner routes bounces by the same.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
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
        self.router.is_local_domain(domain)
    }

    /// Decides one recipient. The only constructor of [`Accepted`].
    pub fn decide(&self, client: &ClientIdentity, rcpt: &Resolved) -> Result<Accepted, Refusal> {
        let address = display_address(rcpt);
        let routed = match self.router.route(rcpt) {
            Ok(routed) => routed,
            Err(Unroutable::SenderRouted(routing)) => {
                return Err(Refusal::Routed { address, routing });
            }
            Err(Unroutable::AddressLiteral) => return Err(Refusal::AddressLiteral { address }),
            Err(Unroutable::NoSuchMailbox) => return Err(Refusal::UnknownUser { address }),
            Err(Unroutable::Unsendable) => return Err(Refusal::Unsendable { address }),
        };
        let reason = match routed.route.class {
            RouteClass::Local => AcceptReason::LocalMailbox,
            RouteClass::RelayDomain => AcceptReason::RelayDomain,
            RouteClass::Remote => self
                .relay_permission(client)
                .ok_or(Refusal::RelayDenied { address })?,
        };
        Ok(Accepted {
            reason,
            address: routed.address,
            route: routed.route,
            verify: routed.verify,
        })
    }

    /// Why this client may relay to remote domains, if it may: authenticated as a configured
    /// user, or in a trusted network.
    fn relay_permission(&self, client: &ClientIdentity) -> Option<AcceptReason> {
        if let Some(login) = self.known_login(client) {
            return Some(AcceptReason::Authenticated(login));
        }
        self.is_trusted(client.ip())
            .then_some(AcceptReason::TrustedNetwork)
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
        if let ReversePath::Path { mailbox, .. } = from {
            let address = resolve_mailbox(mailbox).address();
            if !is_sendable_address(&address) {
                return Err(SenderRefusal::Unsendable { address });
            }
        }
        self.check_sender(client, from)
    }

    /// The addresses `login` may send as (lower-case; empty for an unknown login).
    pub fn send_as(&self, login: &str) -> Vec<String> {
        self.users
            .get(&login.to_ascii_lowercase())
            .map(|send_as| send_as.iter().cloned().collect())
            .unwrap_or_default()
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

/// The recipient as shown in replies: `local@domain`, the local part quoted when it is not a
/// dot-atom; `Postmaster` for the bare form.
fn display_address(rcpt: &Resolved) -> String {
    match &rcpt.domain {
        None => "Postmaster".to_string(),
        Some(domain) => format!("{}@{domain}", wire_local_part(&rcpt.local_part)),
    }
}

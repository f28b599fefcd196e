//! Address resolution: what a parsed path means for routing.
//!
//! Modelled on Postfix's trivial-rewrite: resolve first, then let the relay policy look only at
//! the result. The resolver strips an RFC 821 source route (RFC 5321 §3.3 says to ignore it),
//! looks inside quoted local parts, and records every form of sender-specified routing that a
//! local part can smuggle: `user%other@here`, `other!user@here`, `"user@other"@here`. The policy
//! then refuses routed recipients without re-parsing any string.

use crate::path::{Domain, ForwardPath, Mailbox, quote_local_part};

/// A form of sender-specified routing found in a local part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Routing {
    /// `user%other.test@here`: the "percent hack".
    Percent,
    /// `other.test!user@here`: a UUCP bang path.
    Bang,
    /// `"user@other.test"@here`: an `@` inside a quoted local part.
    QuotedAt,
}

/// The resolved recipient: the final mailbox the message would be delivered to by *us*, plus the
/// routing flags that would make some other server deliver it elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Dequoted local part; `postmaster` for `<Postmaster>`.
    pub local_part: String,
    /// The domain after stripping any source route; `None` for a bare `<Postmaster>`.
    pub domain: Option<Domain>,
    /// Routing found in the local part, in order of appearance. Empty for a plain address.
    pub routing: Vec<Routing>,
    /// Source-route hops that were stripped, for the logs.
    pub stripped_route: Vec<Domain>,
}

impl Resolved {
    /// True when the local part carries sender-specified routing.
    pub fn is_routed(&self) -> bool {
        !self.routing.is_empty()
    }

    /// The bare postmaster address, which every server must accept (RFC 5321 §4.5.1).
    pub fn is_bare_postmaster(&self) -> bool {
        self.domain.is_none()
    }

    /// The canonical address, the key the queue and the Maildir lookup use: `local@domain`, or
    /// `postmaster` for a bare `<Postmaster>`.
    ///
    /// The domain is lower-case (host names are stored so) or a literal in its canonical form
    /// (`[IPv6:::1]`). The local part keeps its case (RFC 5321 §2.4: only the destination host
    /// may fold it) and is re-quoted only when it is not a dot-atom: `"john doe"@example.test`,
    /// `"user@other.test"@example.test`. So `"alice"@example.test` and `alice@example.test`
    /// give the same key.
    pub fn address(&self) -> String {
        let local = quote_local_part(&self.local_part).unwrap_or_else(|| self.local_part.clone());
        match &self.domain {
            Some(domain) => format!("{local}@{domain}"),
            None => local,
        }
    }
}

/// Resolves a parsed forward-path.
///
/// How the classic tricks read (the golden table `tests/data/resolve.table` has a row for each):
/// - `<@local:user@other.test>`, `<@a,@b:user@other.test>`: the route is stripped and recorded;
///   the domain is `other.test`, so the policy sees a remote recipient.
/// - `<"user@other.test"@example.test>`: local part `user@other.test`, domain `example.test`,
///   routed [`Routing::QuotedAt`]. Likewise `user%other.test@…` ([`Routing::Percent`]) and
///   `other.test!user@…` ([`Routing::Bang`]).
/// - `<user@[127.0.0.1]>`, `<user@[IPv6:::1]>`: an address literal is kept as the domain, not
///   routed. The resolver does not know the server's own addresses; whether a literal counts as
///   local is the policy's question.
/// - `<Postmaster>`: local part `postmaster`, no domain (always ours).
///
/// Forms that never get here because the path parser refuses them: `"user@other.test"` and
/// `other.test!user` without a domain (`MissingDomain`), `user%other.test@` (`BadDomain`),
/// `user@other.test@host` and `user%[other.test]@` (`BadLocalPart`), `user@203.0.113.5`
/// (`BadDomain`).
pub fn resolve(path: &ForwardPath) -> Resolved {
    match path {
        ForwardPath::Postmaster => Resolved {
            local_part: "postmaster".to_owned(),
            domain: None,
            routing: Vec::new(),
            stripped_route: Vec::new(),
        },
        ForwardPath::Path { route, mailbox } => Resolved {
            stripped_route: route.clone(),
            ..resolve_mailbox(mailbox)
        },
    }
}

/// Resolves a mailbox (used for senders and for `send_as` checks).
pub fn resolve_mailbox(mailbox: &Mailbox) -> Resolved {
    Resolved {
        local_part: mailbox.local.value.clone(),
        domain: Some(mailbox.domain.clone()),
        routing: routing_in(&mailbox.local.value),
        stripped_route: Vec::new(),
    }
}

/// The routing forms in a dequoted local part, each once, in order of first appearance.
///
/// Looks at the *dequoted* value, so `"a\%b"` is as routed as `a%b`: a downstream MTA that
/// dequotes would route both.
pub fn routing_in(local_part: &str) -> Vec<Routing> {
    let mut found = Vec::new();
    for c in local_part.chars() {
        let routing = match c {
            '%' => Routing::Percent,
            '!' => Routing::Bang,
            '@' => Routing::QuotedAt,
            _ => continue,
        };
        if !found.contains(&routing) {
            found.push(routing);
        }
    }
    found
}

impl Routing {
    /// Short lower-case name for logs and the golden table: `percent`, `bang`, `quoted-at`.
    pub fn name(self) -> &'static str {
        match self {
            Routing::Percent => "percent",
            Routing::Bang => "bang",
            Routing::QuotedAt => "quoted-at",
        }
    }
}

//! Address resolution: what a parsed path means for routing.
//!
//! Modelled on Postfix's trivial-rewrite: resolve first, then let the relay policy look only at
//! the result. The resolver strips an RFC 821 source route (RFC 5321 §3.3 says to ignore it),
//! looks inside quoted local parts, and records every form of sender-specified routing that a
//! local part can smuggle: `user%other@here`, `other!user@here`, `"user@other"@here`. The policy
//! then refuses routed recipients without re-parsing any string.

use crate::path::{Domain, ForwardPath, Mailbox};

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
}

/// Resolves a parsed forward-path.
pub fn resolve(path: &ForwardPath) -> Resolved {
    let _ = path;
    todo!("path helper")
}

/// Resolves a mailbox (used for senders and for `send_as` checks).
pub fn resolve_mailbox(mailbox: &Mailbox) -> Resolved {
    let _ = mailbox;
    todo!("path helper")
}

//! What happened to one recipient in one attempt, in the shape bounces and the queue need.

use relayward_protocol::reply::Reply;

/// The result of one delivery attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the next hop (remote 2xx) or written to a Maildir.
    Delivered,
    /// Try again later (4xx, connection trouble, DNS trouble).
    Deferred(Failure),
    /// Never going to work (5xx, null MX, NXDOMAIN).
    Failed(Failure),
}

impl Outcome {
    pub fn is_delivered(&self) -> bool {
        matches!(self, Outcome::Delivered)
    }
}

/// Why a recipient was not delivered: the pieces of an RFC 3464 per-recipient block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// RFC 3463 status, e.g. `5.1.1` (the `Status:` field).
    pub status: String,
    /// The remote reply (`Diagnostic-Code: smtp; …`), when one was received.
    pub smtp_reply: Option<String>,
    /// The host that answered (`Remote-MTA: dns; …`), when one did.
    pub remote_mta: Option<String>,
    /// One line for people and for the queue's `last_error`.
    pub text: String,
}

impl Failure {
    /// A failure from a remote reply; the status is its enhanced code or `class.0.0`.
    pub fn from_reply(reply: &Reply, remote: &str, context: &str) -> Self {
        let class = reply.code / 100;
        let status = reply
            .enhanced
            .map(|e| e.to_string())
            .unwrap_or_else(|| format!("{class}.0.0"));
        let line = reply.to_string();
        Self {
            status,
            smtp_reply: Some(line.clone()),
            remote_mta: Some(remote.to_string()),
            text: format!("{line} (from {remote}, {context})"),
        }
    }

    /// A failure found locally (DNS, connection, TLS, policy).
    pub fn local(status: &str, text: impl Into<String>) -> Self {
        Self {
            status: status.to_string(),
            smtp_reply: None,
            remote_mta: None,
            text: text.into(),
        }
    }

    /// The outcome for a failure: permanent when its status class is 5.
    pub fn into_outcome(self) -> Outcome {
        if self.status.starts_with('5') {
            Outcome::Failed(self)
        } else {
            Outcome::Deferred(self)
        }
    }
}

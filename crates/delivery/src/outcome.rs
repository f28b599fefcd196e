//! What happened to one recipient in one attempt, in the shape bounces and the queue need.

use relayward_protocol::reply::{EnhancedCode, Reply};

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

/// The most characters of a reply kept (in the queue, the logs, the reports). A reply may
/// have 256 lines of 4 KiB each: a next hop answering every recipient so would store a
/// megabyte per recipient in its queue entry, the mail log and the bounce.
pub const MAX_REPLY_TEXT: usize = 1000;

/// A reply as one line (`code enhanced text`, the lines joined), cut after
/// [`MAX_REPLY_TEXT`] characters with `...` added.
pub fn reply_text(reply: &Reply) -> String {
    let mut line = reply.to_string();
    if let Some((cut, _)) = line.char_indices().nth(MAX_REPLY_TEXT) {
        line.truncate(cut);
        line.push_str("...");
    }
    line
}

/// Why a recipient was not delivered: the pieces of an RFC 3464 per-recipient block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// RFC 3463 status, e.g. `5.1.1` (the `Status:` field); its class decides between
    /// deferral and bounce.
    pub status: EnhancedCode,
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
        // A reply code is 2xx to 5xx, so its class fits a u8.
        let class = u8::try_from(reply.code / 100).unwrap_or(4);
        let status = reply.enhanced.unwrap_or(EnhancedCode::new(class, 0, 0));
        let line = reply_text(reply);
        Self {
            status,
            smtp_reply: Some(line.clone()),
            remote_mta: Some(remote.to_string()),
            text: format!("{line} (from {remote}, {context})"),
        }
    }

    /// A failure found locally (DNS, connection, TLS, policy).
    pub fn local(status: impl Into<EnhancedCode>, text: impl Into<String>) -> Self {
        Self {
            status: status.into(),
            smtp_reply: None,
            remote_mta: None,
            text: text.into(),
        }
    }

    /// The same failure as a temporary one (`5.y.z` becomes `4.y.z`): for a next hop whose
    /// refusal is never the recipient's fault, such as the smart host.
    pub fn as_transient(self) -> Self {
        Self {
            status: self.status.as_transient(),
            ..self
        }
    }

    /// The outcome for a failure: permanent when its status class is 5.
    pub fn into_outcome(self) -> Outcome {
        if self.status.is_permanent() {
            Outcome::Failed(self)
        } else {
            Outcome::Deferred(self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relayward_protocol::reply::ReplyParser;

    fn reply(line: &str) -> Reply {
        ReplyParser::new().feed(line).unwrap().unwrap()
    }

    #[test]
    fn the_status_is_the_reply_s_enhanced_code_or_its_class() {
        let with =
            Failure::from_reply(&reply("550 5.1.1 no such user"), "mx[192.0.2.1]:25", "RCPT");
        assert_eq!(with.status, EnhancedCode::new(5, 1, 1));
        assert!(matches!(with.into_outcome(), Outcome::Failed(_)));
        let without = Failure::from_reply(&reply("451 try later"), "mx[192.0.2.1]:25", "RCPT");
        assert_eq!(without.status, EnhancedCode::new(4, 0, 0));
        assert!(matches!(without.into_outcome(), Outcome::Deferred(_)));
    }

    #[test]
    fn a_transient_failure_keeps_the_reply_and_defers() {
        let refused = Failure::from_reply(
            &reply("554 5.7.1 relay denied"),
            "smart[192.0.2.2]:587",
            "RCPT",
        );
        let deferred = refused.clone().as_transient();
        assert_eq!(deferred.status, EnhancedCode::new(4, 7, 1));
        assert_eq!(deferred.smtp_reply, refused.smtp_reply);
        assert!(matches!(deferred.into_outcome(), Outcome::Deferred(_)));
    }
}

//! Mail for local mailboxes only, delivered into them before the `250`.
//!
//! The writing is the delivery crate's (`relayward_delivery::local`, where the runner's local
//! deliveries happen too); the server crate does not depend on it, so `relayward serve` hands
//! the session this hook when `[delivery] local_before_reply` is on (the default).

use std::future::Future;
use std::pin::Pin;

use relayward_protocol::route::NextHop;
use relayward_queue::{MessageId, NewMessage, NewRecipient};

/// Writes copies of a message into the Maildirs of its recipients, durably: all or none.
pub trait DeliverLocal: Send + Sync {
    /// One answer per recipient, in order: whether its copy is in its Maildir (file and
    /// directory flushed). Those that are not go to the queue. Runs to its end and logs each
    /// copy even if the caller stops waiting.
    fn deliver<'a>(
        &'a self,
        id: &'a MessageId,
        recipients: &'a [NewRecipient],
        content: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Vec<bool>> + Send + 'a>>;
}

/// Largest message delivered before the reply: what the spool keeps in memory until the
/// final dot anyway. Larger mail is queued (it is on disk already, and its copies would make
/// the client wait longer).
pub const MAX_SIZE: u64 = 64 * 1024;

/// Most recipients delivered before the reply: each copy is a flushed file the client waits
/// for, and the runner writes a long list with its own concurrency limits.
pub const MAX_RECIPIENTS: usize = 16;

/// Whether the session may deliver `message` itself: small, for at most [`MAX_RECIPIENTS`],
/// every one of them going to a Maildir and none asking for a success notice (the runner
/// sends those, after its own delivery).
pub fn deliverable_before_reply(message: &NewMessage) -> bool {
    let asks_success = message
        .esmtp
        .recipients
        .iter()
        .any(|dsn| dsn.notify.as_ref().is_some_and(|notify| notify.success));
    (message.content.len() as u64) <= MAX_SIZE
        && (1..=MAX_RECIPIENTS).contains(&message.recipients.len())
        && !asks_success
        && message
            .recipients
            .iter()
            .all(|r| matches!(r.route.next_hop, NextHop::Maildir { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use relayward_protocol::dsn::{Notify, RcptDsn};
    use relayward_protocol::route::{Route, RouteClass};
    use relayward_queue::{Esmtp, Origin};

    fn recipient(address: &str, next_hop: NextHop) -> NewRecipient {
        NewRecipient {
            address: address.into(),
            route: Route {
                class: RouteClass::Local,
                next_hop,
            },
        }
    }

    fn maildir(local: &str) -> NewRecipient {
        let next_hop = NextHop::Maildir {
            domain: "example.test".into(),
            mailbox: local.into(),
        };
        recipient(&format!("{local}@example.test"), next_hop)
    }

    fn message(recipients: Vec<NewRecipient>, size: usize) -> NewMessage {
        NewMessage {
            sender: "s@outside.test".into(),
            recipients,
            content: vec![b'x'; size],
            client_ip: "127.0.0.1".into(),
            auth_login: None,
            origin: Origin::Stranger,
            esmtp: Esmtp::default(),
        }
    }

    #[test]
    fn small_mail_only_for_maildirs_is_delivered_before_the_reply() {
        assert!(deliverable_before_reply(&message(vec![maildir("a")], 100)));
        let most: Vec<NewRecipient> = (0..MAX_RECIPIENTS)
            .map(|i| maildir(&format!("u{i}")))
            .collect();
        assert!(deliverable_before_reply(&message(most, MAX_SIZE as usize)));
    }

    #[test]
    fn anything_else_is_queued() {
        assert!(!deliverable_before_reply(&message(vec![], 100)));
        assert!(!deliverable_before_reply(&message(
            vec![maildir("a")],
            MAX_SIZE as usize + 1
        )));
        let too_many: Vec<NewRecipient> = (0..=MAX_RECIPIENTS)
            .map(|i| maildir(&format!("u{i}")))
            .collect();
        assert!(!deliverable_before_reply(&message(too_many, 100)));
        let remote = recipient(
            "x@other.test",
            NextHop::Mx {
                domain: "other.test".into(),
            },
        );
        assert!(!deliverable_before_reply(&message(
            vec![maildir("a"), remote],
            100
        )));
        let mut asks = message(vec![maildir("a"), maildir("b")], 100);
        asks.esmtp.recipients = vec![
            RcptDsn::default(),
            RcptDsn {
                notify: Some(Notify {
                    success: true,
                    failure: false,
                    delay: false,
                }),
                orcpt: None,
            },
        ];
        assert!(!deliverable_before_reply(&asks));
    }
}

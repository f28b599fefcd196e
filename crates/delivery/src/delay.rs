//! Who is owed a delay notice, and from when (RFC 3461 `NOTIFY=DELAY`, RFC 3464
//! `Action: delayed`).
//!
//! A recipient still pending `[delivery] delay_notice_after` after the message arrived gets
//! one delay notice, at its first deferral from then on (the runner moves its next attempt
//! up to that moment, so the notice is on time however far apart the retries are):
//!
//! - a recipient with `NOTIFY=…DELAY…` gets one, whoever sent the message;
//! - a recipient with `NOTIFY` without `DELAY` (`NEVER`, `FAILURE`, `SUCCESS`) never does;
//! - a recipient without `NOTIFY` gets one when the message came from our own users (a login
//!   or a trusted network), and none when it came from a stranger: RFC 3461 §4.1 leaves it to
//!   the relay whether "no NOTIFY" means `FAILURE` or `FAILURE,DELAY`, and a stranger's
//!   sender may be forged, so a notice he did not ask for would go to a third party.
//!
//! Never for the null sender, nor for a message that is itself a report or an automatic reply
//! (the rules bounces follow), and at most once per recipient (the queue keeps
//! `delay_notified`). A stranger's notice is as small as his bounce (see [`crate::dsn`]).

use relayward_queue::{Origin, QueuedMessage, RecipientState};

use crate::config::DeliveryConfig;

/// Unix seconds from which the recipients of `message` are owed a delay notice, or `None`
/// when notices are off or the message gets none (null sender, automatic message).
pub fn notices_from(
    settings: &DeliveryConfig,
    message: &QueuedMessage,
    content: &[u8],
) -> Option<u64> {
    let after = settings.delay_notice_after?;
    if message.sender.is_empty() || relayward_protocol::header::is_automatic(content) {
        return None;
    }
    Some(message.arrived.saturating_add(after.as_secs()))
}

/// Whether this recipient asked for (or by default gets) a delay notice and has had none.
pub fn wants_notice(message: &QueuedMessage, recipient: &RecipientState) -> bool {
    if recipient.delay_notified {
        return false;
    }
    match recipient.dsn.notify {
        Some(notify) => notify.delay,
        None => matches!(message.origin, Origin::Authenticated | Origin::Trusted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relayward_protocol::dsn::{Notify, RcptDsn};
    use relayward_queue::{MessageId, MessageOptions, RecipientStatus};
    use std::time::Duration;

    fn message(origin: Origin, notify: Option<Notify>) -> QueuedMessage {
        QueuedMessage {
            id: MessageId("0123456789abcdef01234567".into()),
            sender: "alice@example.test".into(),
            recipients: vec![RecipientState {
                address: "bob@far.test".into(),
                status: RecipientStatus::Pending,
                attempts: 1,
                last_error: None,
                next_attempt: 0,
                route: None,
                dsn: RcptDsn {
                    notify,
                    orcpt: None,
                },
                delay_notified: false,
            }],
            arrived: 1000,
            client_ip: "192.0.2.1".into(),
            auth_login: None,
            origin,
            size: 10,
            held: false,
            options: MessageOptions::default(),
        }
    }

    fn delay_only() -> Option<Notify> {
        Notify::parse("DELAY")
    }

    #[test]
    fn who_gets_a_delay_notice() {
        let cases = [
            (Origin::Stranger, delay_only(), true),
            (Origin::Stranger, None, false),
            (Origin::Authenticated, None, true),
            (Origin::Trusted, None, true),
            (Origin::Authenticated, Notify::parse("FAILURE"), false),
            (Origin::Authenticated, Some(Notify::NEVER), false),
            (
                Origin::Trusted,
                Notify::parse("SUCCESS,FAILURE,DELAY"),
                true,
            ),
        ];
        for (origin, notify, expected) in cases {
            let m = message(origin, notify);
            assert_eq!(
                wants_notice(&m, &m.recipients[0]),
                expected,
                "{origin:?} {notify:?}"
            );
        }
        let mut m = message(Origin::Authenticated, delay_only());
        m.recipients[0].delay_notified = true;
        assert!(
            !wants_notice(&m, &m.recipients[0]),
            "only one per recipient"
        );
    }

    #[test]
    fn no_notices_when_off_for_the_null_sender_or_for_reports() {
        let mut settings = DeliveryConfig::new("mx.example.test", "/nonexistent");
        settings.delay_notice_after = Some(Duration::from_secs(60));
        let m = message(Origin::Authenticated, None);
        assert_eq!(
            notices_from(&settings, &m, b"Subject: x\r\n\r\n"),
            Some(1060)
        );
        assert_eq!(
            notices_from(&settings, &m, b"Auto-Submitted: auto-replied\r\n\r\n"),
            None
        );
        let mut null = m.clone();
        null.sender.clear();
        assert_eq!(notices_from(&settings, &null, b"Subject: x\r\n\r\n"), None);
        settings.delay_notice_after = None;
        assert_eq!(notices_from(&settings, &m, b"Subject: x\r\n\r\n"), None);
    }
}

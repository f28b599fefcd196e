//! The delivery log and the delivery metrics, written at one place so they never disagree.
//!
//! One line per recipient per attempt with what a mail admin greps for, like Postfix's
//! `to=<…>, relay=…, delay=…, dsn=…, status=… (reply)`: the queue id, the recipient, its
//! route, the relay that answered (`host[ip]:port`, or the Maildir), the delay since the
//! message arrived, the enhanced status and the remote reply. The relay is learnt during the
//! attempt ([`Journal::answered`], [`Journal::tried`]), the outcome after it.
//!
//! Text from the other side (replies, addresses) goes through the one escaper.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use relayward_protocol::route::{NextHop, Route};
use relayward_protocol::text::Escaped;
use relayward_queue::MessageId;

use crate::outcome::Outcome;

/// Who answered for each recipient of one delivery group.
#[derive(Default)]
pub(crate) struct Journal {
    relays: Mutex<HashMap<String, Relay>>,
}

#[derive(Clone)]
struct Relay {
    /// `host[ip]:port`.
    remote: String,
    /// The reply that settled the transaction (to the final dot), when there was one.
    reply: Option<String>,
}

impl Journal {
    /// `remote` held a transaction for `recipients`; `reply` is its last reply.
    pub(crate) fn answered(&self, recipients: &[String], remote: &str, reply: Option<String>) {
        self.record(recipients, remote, reply);
    }

    /// `remote` was tried for `recipients` but no transaction came of it (connection refused,
    /// TLS failed, the greeting was a 554).
    pub(crate) fn tried(&self, recipients: &[String], remote: &str) {
        self.record(recipients, remote, None);
    }

    fn record(&self, recipients: &[String], remote: &str, reply: Option<String>) {
        let mut relays = self.relays.lock().unwrap_or_else(PoisonError::into_inner);
        for rcpt in recipients {
            relays.insert(
                rcpt.clone(),
                Relay {
                    remote: remote.to_string(),
                    reply: reply.clone(),
                },
            );
        }
    }

    fn relay_of(&self, rcpt: &str) -> Option<Relay> {
        self.relays
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(rcpt)
            .cloned()
    }
}

/// One delivery group's attempt, for its log lines and metrics.
pub(crate) struct Attempt<'a> {
    pub id: &'a MessageId,
    /// Unix seconds when the message arrived (the delay is counted from there).
    pub arrived: u64,
    pub started: Instant,
}

/// The route and, for a Maildir, where it was written: what the log names as the relay when
/// no SMTP server answered.
pub(crate) struct Recipient<'a> {
    pub address: &'a str,
    pub route: Option<&'a Route>,
}

impl Attempt<'_> {
    /// Logs each recipient's outcome and counts it; observes the attempt's duration once.
    pub(crate) fn finish(
        self,
        journal: &Journal,
        recipients: &[Recipient<'_>],
        outcomes: &[Outcome],
    ) {
        let metrics = relayward_metrics::global();
        metrics.delivery_duration(self.started.elapsed().as_secs_f64());
        let delay = Duration::from_secs(crate::runner::unix_now().saturating_sub(self.arrived));
        for (rcpt, outcome) in recipients.iter().zip(outcomes) {
            let class = rcpt.route.map(|r| r.class.as_str()).unwrap_or("none");
            let route = rcpt
                .route
                .map(ToString::to_string)
                .unwrap_or_else(|| "none".into());
            let relay = journal.relay_of(rcpt.address);
            let relay_name = match (&relay, rcpt.route.map(|r| &r.next_hop)) {
                (Some(relay), _) => relay.remote.clone(),
                (None, Some(hop @ NextHop::Maildir { .. })) => hop.to_string(),
                (None, _) => "none".into(),
            };
            let delay = humantime::format_duration(delay).to_string();
            match outcome {
                Outcome::Delivered => {
                    metrics.delivery(class, "delivered");
                    let reply = relay
                        .and_then(|r| r.reply)
                        .unwrap_or_else(|| "250 2.0.0 Ok".into());
                    tracing::info!(
                        id = %self.id,
                        rcpt = %Escaped(rcpt.address),
                        route = %route,
                        relay = %Escaped(&relay_name),
                        delay = %delay,
                        status = %"2.0.0",
                        reply = %Escaped(&reply),
                        "delivered"
                    );
                }
                Outcome::Deferred(failure) | Outcome::Failed(failure) => {
                    let (word, result) = match outcome {
                        Outcome::Deferred(_) => ("deferred", "deferred"),
                        _ => ("failed", "bounced"),
                    };
                    metrics.delivery(class, result);
                    let reply = failure.smtp_reply.as_deref().unwrap_or("none");
                    tracing::info!(
                        id = %self.id,
                        rcpt = %Escaped(rcpt.address),
                        route = %route,
                        relay = %Escaped(&relay_name),
                        delay = %delay,
                        status = %failure.status,
                        reply = %Escaped(reply),
                        error = %Escaped(&failure.text),
                        "{word}"
                    );
                }
            }
        }
    }
}

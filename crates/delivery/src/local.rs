//! Local delivery: a recipient whose route is a Maildir gets its copy written there.
//!
//! Two callers: the runner, for queued mail, one copy at a time ([`write_copy`]), and the
//! session, for a small message whose every recipient is local ([`deliver_before_reply`]).
//! A message that ends in our own Maildirs has nothing to wait for, so the session writes it
//! there before its `250` instead of queueing it first: one durable file per copy instead of
//! the queue's file plus the Maildir's (Dovecot's LMTP does the same). The Maildir write is as
//! durable as the queue's commit (file fsynced, `new/` fsynced), so the `250` keeps its
//! promise; a message whose copies could not all be written goes to the queue whole, as
//! before, and is delivered from there. Both callers log and count through the same
//! [`journal`](crate::journal): the same `delivered` lines, under the message's id.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use relayward_protocol::route::NextHop;
use relayward_protocol::text::Escaped;
use relayward_queue::{MessageId, NewRecipient};

use crate::journal::{self, Journal};
use crate::outcome::{Failure, Outcome};

/// Writes one copy into the Maildir `next_hop` names (blocking I/O off the async threads).
/// An unsafe mailbox name fails for good (5.1.3); anything else is worth another try (4.3.0).
pub(crate) async fn write_copy(
    mail_root: &Path,
    next_hop: Option<&NextHop>,
    content: Arc<Vec<u8>>,
) -> Outcome {
    let Some(NextHop::Maildir { domain, mailbox }) = next_hop else {
        return Outcome::Deferred(Failure::local(
            (4, 3, 0),
            "internal: non-local recipient in the local group",
        ));
    };
    let root = mail_root.to_path_buf();
    let (domain, mailbox) = (domain.clone(), mailbox.clone());
    let result = tokio::task::spawn_blocking(move || {
        relayward_queue::maildir::deliver_to_maildir(&root, &domain, &mailbox, &content)
    })
    .await;
    match result {
        Ok(Ok(_)) => Outcome::Delivered,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidInput => {
            Outcome::Failed(Failure::local((5, 1, 3), format!("local delivery: {e}")))
        }
        Ok(Err(e)) => Outcome::Deferred(Failure::local((4, 3, 0), format!("local delivery: {e}"))),
        Err(e) => Outcome::Deferred(Failure::local(
            (4, 3, 0),
            format!("local delivery task: {e}"),
        )),
    }
}

/// Delivers a message the session is about to answer into the Maildir of each of its
/// `recipients` (all of them local), before the reply: all copies or none
/// ([`deliver_all_or_none`](relayward_queue::maildir::deliver_all_or_none)), so that a message
/// the queue then takes holds no recipient who has it already. Returns, in order, whether each
/// copy is in its Maildir, durably; the caller queues the others. Nothing is written when the
/// copies would leave less than `min_free_bytes` free (`[queue] min_free_bytes`): the queue
/// decides then, and refuses the message if it is short of room too.
///
/// The work runs to its end on a blocking thread even if the session stops waiting (a
/// timeout, a shutdown), and logs there: a copy is never written without its log line.
pub async fn deliver_before_reply(
    mail_root: &Path,
    min_free_bytes: u64,
    id: &MessageId,
    recipients: &[NewRecipient],
    content: Vec<u8>,
) -> Vec<bool> {
    let count = recipients.len();
    let mail_root = mail_root.to_path_buf();
    let id = id.clone();
    let recipients = recipients.to_vec();
    let started = Instant::now();
    let work = tokio::task::spawn_blocking(move || {
        let needed = (content.len() as u64).saturating_mul(recipients.len() as u64);
        if !relayward_queue::maildir::has_room(&mail_root, min_free_bytes, needed) {
            return vec![false; recipients.len()];
        }
        let copies: Option<Vec<(&str, &str)>> = recipients
            .iter()
            .map(|r| match &r.route.next_hop {
                NextHop::Maildir { domain, mailbox } => Some((domain.as_str(), mailbox.as_str())),
                _ => None,
            })
            .collect();
        let Some(copies) = copies else {
            return vec![false; recipients.len()];
        };
        match relayward_queue::maildir::deliver_all_or_none(&mail_root, &copies, &content) {
            Ok(results) => log_copies(&id, started, &recipients, &results),
            Err(err) => {
                tracing::warn!(
                    %id,
                    error = %Escaped(&err.to_string()),
                    "local delivery before the reply failed; the message goes to the queue"
                );
                vec![false; recipients.len()]
            }
        }
    });
    work.await.unwrap_or_else(|_| vec![false; count])
}

/// Logs each copy that is in its Maildir as the runner logs a delivery, and each that is not
/// as left to the queue; whether each was delivered.
fn log_copies(
    id: &MessageId,
    started: Instant,
    recipients: &[NewRecipient],
    results: &[std::io::Result<()>],
) -> Vec<bool> {
    let mut logged = Vec::new();
    for (rcpt, result) in recipients.iter().zip(results) {
        match result {
            Ok(()) => logged.push(journal::Recipient {
                address: &rcpt.address,
                route: Some(&rcpt.route),
            }),
            Err(err) => tracing::warn!(
                %id,
                rcpt = %Escaped(&rcpt.address),
                error = %Escaped(&err.to_string()),
                "local delivery before the reply failed; the copy goes to the queue"
            ),
        }
    }
    if !logged.is_empty() {
        let attempt = journal::Attempt {
            id,
            arrived: crate::runner::unix_now(),
            started,
        };
        let outcomes = vec![Outcome::Delivered; logged.len()];
        attempt.finish(&Journal::default(), &logged, &outcomes);
    }
    let mut delivered: Vec<bool> = results.iter().map(Result::is_ok).collect();
    delivered.resize(recipients.len(), false);
    delivered
}

/// How often the Maildirs' `tmp/` are swept for abandoned copies, after the sweep at start.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(6 * 60 * 60);

/// Removes copies a crash left in the Maildirs' `tmp/` (see
/// [`sweep_abandoned`](relayward_queue::maildir::sweep_abandoned)) at start and every
/// [`SWEEP_EVERY`] until `shutdown` resolves, under the `mail_root` of the configuration in
/// force at each sweep. Without it they stay for good: nothing else writes there.
pub async fn sweep_abandoned_copies(
    live: relayward_config::Live<crate::DeliveryContext>,
    shutdown: impl Future<Output = ()>,
) {
    use relayward_queue::maildir::{ABANDONED_AFTER, sweep_abandoned};
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let root = live.current().settings.mail_root.clone();
        let swept = tokio::task::spawn_blocking(move || {
            let now = std::time::SystemTime::now();
            let cutoff = now.checked_sub(ABANDONED_AFTER).unwrap_or(now);
            (sweep_abandoned(&root, cutoff), root)
        })
        .await;
        match swept {
            Ok((swept, root)) => log_sweep(&root, &swept),
            Err(e) => tracing::warn!("maildir sweep task: {e}"),
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(SWEEP_EVERY) => {}
        }
    }
}

fn log_sweep(root: &Path, swept: &relayward_queue::maildir::Swept) {
    let root = root.display();
    if swept.removed > 0 {
        let hours = relayward_queue::maildir::ABANDONED_AFTER.as_secs() / 3600;
        tracing::info!(
            removed = swept.removed,
            "maildir sweep: removed {} abandoned file(s) older than {hours} h from tmp/ under {root}",
            swept.removed
        );
    }
    if let Some(err) = &swept.first_error {
        tracing::warn!(
            failed = swept.failed,
            "maildir sweep under {root}: {} file(s) or directories could not be read or removed, first: {err}",
            swept.failed
        );
    }
}

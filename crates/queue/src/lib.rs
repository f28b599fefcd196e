//! relayward's durable mail queue.
//!
//! The SMTP session hands an accepted message to [`Queue::enqueue`] and answers `250` only when
//! that returns: by then envelope and content are on disk and fsynced (file and directory), so
//! the message survives `kill -9` and power loss. Concurrent sessions share fsyncs (group commit).
//!
//! The session sees only the [`Queue`] trait, so another store (the shared PostgreSQL queue of
//! `relayward-queue-postgres`) plugs in without touching it. The delivery side (queue runner,
//! `relayward queue …`) uses the richer methods of the same trait; [`Queue::claim`] is how the
//! runner takes due work, so that nodes sharing one store never deliver a recipient twice at
//! once, while a store of one process takes it without leases.
//!
//! The implementation here is [`Spool`], a directory of fsynced files (layout, group commit and
//! the locking protocol shared with a second process are described in [`spool`]), and
//! [`deliver_to_maildir`] for local mailboxes. IDs that come from outside (the CLI) go through
//! [`MessageId::parse`]; every `Spool` method also refuses malformed ids with `NotFound`.

use std::future::Future;
use std::pin::Pin;

pub use relayward_protocol::dsn::{MailDsn, RcptDsn};

mod dir_sync;
pub mod draft;
mod fsutil;
mod id;
pub mod maildir;
pub mod spool;

pub use draft::{Draft, MemoryDraft};
pub use fsutil::replace_durably;
pub use id::InvalidMessageId;
pub use maildir::deliver_to_maildir;
pub use relayward_protocol::route::Route;
pub use spool::{CommitMode, RecoveryReport, Spool, SpoolOptions, SpoolStats};

/// A boxed future, so the trait stays object-safe (`Arc<dyn Queue>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A message as the session accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The reverse-path as `local@domain`, or empty for the null sender `<>`.
    pub sender: String,
    /// Resolved recipients with their routes, in RCPT order, no duplicate addresses.
    pub recipients: Vec<NewRecipient>,
    /// Full content as it will be delivered: trace header(s) first, CRLF line ends.
    pub content: Vec<u8>,
    /// Who gave us the message, for `queue show` and bounces: client IP and, if any, login.
    pub client_ip: String,
    pub auth_login: Option<String>,
    /// How the client stood when it gave us the message; decides what a bounce may carry.
    pub origin: Origin,
    /// What the client asked of delivery beyond the envelope (SMTPUTF8, DSN).
    pub esmtp: Esmtp,
}

impl NewMessage {
    /// Keeps the recipients for which `keep` says so, each with its own `NOTIFY=`/`ORCPT=`
    /// (the two lists stay in step): what is left for the queue after some recipients were
    /// delivered already.
    pub fn retain_recipients(&mut self, mut keep: impl FnMut(usize, &NewRecipient) -> bool) {
        let kept: Vec<bool> = self
            .recipients
            .iter()
            .enumerate()
            .map(|(i, r)| keep(i, r))
            .collect();
        let mut flags = kept.iter();
        self.recipients
            .retain(|_| flags.next().copied().unwrap_or(false));
        if !self.esmtp.recipients.is_empty() {
            let mut flags = kept.iter();
            self.esmtp
                .recipients
                .retain(|_| flags.next().copied().unwrap_or(true));
        }
    }
}

/// How a message arrived: what the client was when the session accepted it. A bounce to a
/// stranger's sender is small (the sender may be forged: the bounce then goes to a third
/// party), while the server's own users get the whole report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Neither authenticated nor in a trusted network: mail for our own domains from anyone.
    /// Also what a spool entry from before origins were recorded reads as.
    #[default]
    Stranger,
    /// From a client in `trusted_networks`.
    Trusted,
    /// From a client that authenticated (AUTH).
    Authenticated,
    /// Made by relayward itself: a bounce.
    Local,
}

/// What a client asked of delivery beyond the envelope: RFC 6531 SMTPUTF8 and the RFC 3461
/// DSN parameters, kept so that delivery can pass them on and honour them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Esmtp {
    /// `MAIL … SMTPUTF8`: the message may hold UTF-8 addresses and header fields.
    pub smtputf8: bool,
    /// `RET=` and `ENVID=`.
    pub dsn: MailDsn,
    /// `NOTIFY=` and `ORCPT=` per recipient, in the order of `recipients` (missing = none).
    pub recipients: Vec<RcptDsn>,
}

/// The message-level ESMTP options as stored (absent from the state file when plain).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MessageOptions {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub smtputf8: bool,
    #[serde(default, skip_serializing_if = "MailDsn::is_empty")]
    pub dsn: MailDsn,
}

impl MessageOptions {
    pub fn is_plain(&self) -> bool {
        !self.smtputf8 && self.dsn.is_empty()
    }
}

/// One recipient of a new message: the address as the next hop will see it (`local@domain`,
/// domain lower-case) and where it goes — the router's answer when the RCPT was accepted,
/// which delivery follows without working it out again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecipient {
    pub address: String,
    pub route: Route,
}

/// Queue identifier: unique, sortable by arrival, safe as a file name.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct MessageId(pub String);

impl MessageId {
    /// Checks an identifier that came from outside (CLI argument, file name). Only the exact
    /// shape this crate generates passes, so a valid id can never name another path.
    pub fn parse(text: &str) -> Result<MessageId, InvalidMessageId> {
        if id::is_valid(text) {
            Ok(MessageId(text.to_owned()))
        } else {
            Err(InvalidMessageId(text.chars().take(64).collect()))
        }
    }

    /// A fresh identifier, later than every one generated before in this process (for other
    /// stores, such as the PostgreSQL queue, that name messages the same way).
    pub fn generate() -> MessageId {
        id::generate()
    }

    /// True when the identifier has the generated shape (24 lower-case hex digits).
    pub fn is_valid(&self) -> bool {
        id::is_valid(&self.0)
    }

    /// `Ok` for an id of the generated shape. Any other id names no message
    /// ([`QueueError::NotFound`], the id cut to 64 characters) and must never reach a path or a
    /// query: every queue checks ids from outside with this.
    pub fn check(&self) -> Result<(), QueueError> {
        if self.is_valid() {
            Ok(())
        } else {
            Err(QueueError::NotFound(self.0.chars().take(64).collect()))
        }
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What [`Queue::changes`] reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Messages enqueued through this handle since the last call, oldest first.
    pub enqueued: Vec<MessageId>,
    /// Messages due now that this handle did not enqueue: in a store shared by several nodes,
    /// another node's mail nobody has claimed, a dead node's work whose lease ran out, or a
    /// message an admin made due. The runner tries to [`Queue::claim`] them like its own.
    pub due: Vec<MessageId>,
    /// Something else changed (or too many enqueues to list): list the queue again.
    pub rescan: bool,
}

impl Changes {
    /// Nothing to report.
    pub fn is_empty(&self) -> bool {
        self.enqueued.is_empty() && self.due.is_empty() && !self.rescan
    }
}

/// Why the queue could not take or update a message. The session answers `452 4.3.1` to
/// [`QueueError::Full`] and [`QueueError::Io`], `451 4.3.0` to [`QueueError::Unavailable`]:
/// never `250`.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue storage is full")]
    Full,
    #[error("queue I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("no such message: {0}")]
    NotFound(String),
    #[error("corrupt queue entry {id}: {reason}")]
    Corrupt { id: String, reason: String },
    /// The store cannot be reached (a database that is down or cut off). Temporary: the store
    /// logs when it goes and when it comes back, so callers need not log each failure.
    #[error("queue storage unavailable: {0}")]
    Unavailable(String),
}

impl QueueError {
    /// No message `id` in the queue.
    pub fn not_found(id: &MessageId) -> Self {
        QueueError::NotFound(id.0.clone())
    }

    /// True for [`QueueError::Unavailable`]: the store itself is away, not this message.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, QueueError::Unavailable(_))
    }
}

/// What [`Queue::claim`] answers for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This handle may deliver it now: its current state. In a shared store, its due pending
    /// recipients are leased to this node until they are updated or [`Queue::release`]d;
    /// pending recipients leased to another node show that lease's end as their next attempt.
    Taken(QueuedMessage),
    /// Not to be delivered now: look again at `at` (Unix seconds: its next attempt, or when
    /// another node's lease ends), or never (`None`: gone, held, or nothing pending).
    Later { id: MessageId, at: Option<u64> },
}

/// Where one recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientStatus {
    /// Not yet delivered; retried at `next_attempt` (a deferred recipient has a `last_error`).
    Pending,
    /// Delivered (remote 250, or written to a Maildir).
    Delivered,
    /// Refused permanently; a bounce was queued (unless the sender was null).
    Bounced,
    /// Still pending when `max_queue_lifetime` ran out; a bounce was queued.
    Expired,
}

impl RecipientStatus {
    /// A final status: nothing more will be tried for this recipient.
    pub fn is_final(self) -> bool {
        !matches!(self, RecipientStatus::Pending)
    }
}

/// One recipient of a queued message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecipientState {
    pub address: String,
    pub status: RecipientStatus,
    pub attempts: u32,
    /// The last error, as `NNN x.y.z text` for SMTP replies or a plain sentence otherwise.
    pub last_error: Option<String>,
    /// Unix seconds of the next attempt (meaningful while `Pending`).
    pub next_attempt: u64,
    /// Where it goes, as decided at RCPT. `None` only in entries written before routes were
    /// stored; the runner routes those once with the current configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Route>,
    /// `NOTIFY=` / `ORCPT=` as the client gave them (RFC 3461).
    #[serde(default, skip_serializing_if = "RcptDsn::is_empty")]
    pub dsn: RcptDsn,
    /// A delay notice (RFC 3464 `Action: delayed`) was queued for this recipient: each
    /// recipient gets at most one. Absent from state files when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delay_notified: bool,
}

/// A queued message's envelope and state (not its content).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueuedMessage {
    pub id: MessageId,
    pub sender: String,
    pub recipients: Vec<RecipientState>,
    /// Unix seconds when the message was accepted.
    pub arrived: u64,
    pub client_ip: String,
    pub auth_login: Option<String>,
    /// How the message arrived; [`Origin::Stranger`] for entries written before it was kept.
    #[serde(default)]
    pub origin: Origin,
    /// Size of the content in octets.
    pub size: u64,
    /// Held messages are never picked by the runner until released.
    pub held: bool,
    /// SMTPUTF8 and `RET=` / `ENVID=`; absent from older state files (plain).
    #[serde(default, skip_serializing_if = "MessageOptions::is_plain")]
    pub options: MessageOptions,
}

impl QueuedMessage {
    /// When the message wants its next attempt: the earliest pending recipient's, unless it is
    /// held (a release makes it due again) or has nothing pending.
    pub fn next_attempt(&self) -> Option<u64> {
        if self.held {
            return None;
        }
        self.recipients
            .iter()
            .filter(|r| !r.status.is_final())
            .map(|r| r.next_attempt)
            .min()
    }

    /// The state of a message just accepted: every recipient pending and due at `now`, with
    /// the route it was accepted for. Every [`Queue`] starts a message from this.
    pub fn accepted(id: MessageId, message: &NewMessage, now: u64) -> QueuedMessage {
        QueuedMessage {
            id,
            sender: message.sender.clone(),
            recipients: message
                .recipients
                .iter()
                .enumerate()
                .map(|(i, recipient)| RecipientState {
                    address: recipient.address.clone(),
                    status: RecipientStatus::Pending,
                    attempts: 0,
                    last_error: None,
                    next_attempt: now,
                    route: Some(recipient.route.clone()),
                    dsn: message.esmtp.recipients.get(i).cloned().unwrap_or_default(),
                    delay_notified: false,
                })
                .collect(),
            arrived: now,
            client_ip: message.client_ip.clone(),
            auth_login: message.auth_login.clone(),
            origin: message.origin,
            size: message.content.len() as u64,
            held: false,
            options: MessageOptions {
                smtputf8: message.esmtp.smtputf8,
                dsn: message.esmtp.dsn.clone(),
            },
        }
    }

    /// Applies attempt results. Final statuses are sticky (a late or repeated report cannot
    /// revive a delivered recipient); unknown addresses are logged and ignored, so the rest
    /// still counts. True when every recipient is now final: the message is done.
    pub fn apply(&mut self, updates: Vec<RecipientUpdate>) -> bool {
        for update in updates {
            let mut matched = false;
            for recipient in self
                .recipients
                .iter_mut()
                .filter(|r| r.address == update.address)
            {
                matched = true;
                if recipient.status.is_final() {
                    continue;
                }
                recipient.status = update.status;
                recipient.last_error = update.last_error.clone();
                recipient.next_attempt = update.next_attempt;
                recipient.delay_notified |= update.delay_notified;
                recipient.attempts = recipient.attempts.saturating_add(1);
            }
            if !matched {
                tracing::warn!(id = %self.id, address = %relayward_protocol::text::Escaped(&update.address), "update for unknown recipient");
            }
        }
        self.recipients.iter().all(|r| r.status.is_final())
    }
}

/// What a delivery attempt learned about one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientUpdate {
    pub address: String,
    pub status: RecipientStatus,
    pub last_error: Option<String>,
    /// Unix seconds of the next attempt, when still `Pending`.
    pub next_attempt: u64,
    /// A delay notice was queued for this recipient in this attempt. Sticky in the store:
    /// `false` never clears an earlier `true`, so at most one notice goes out per recipient.
    pub delay_notified: bool,
}

/// The queue interface. See the crate documentation.
///
/// Every method that changes state is durable when its future resolves. A second process (the
/// `relayward queue` commands) may use the same store while the server runs.
pub trait Queue: Send + Sync + 'static {
    /// Stores a message durably; returns only after the fsyncs.
    fn enqueue(&self, message: NewMessage) -> BoxFuture<'_, Result<MessageId, QueueError>>;

    /// Starts a message whose content is written while it arrives (see [`draft`]):
    /// `message` holds the envelope and the start of the content (the trace header); the
    /// session writes the rest to the draft and ends with [`Queue::commit`]. The default holds
    /// the draft in memory ([`MemoryDraft`]); the spool stages it in a file.
    fn begin(&self, message: NewMessage) -> BoxFuture<'_, Result<Box<dyn Draft>, QueueError>> {
        Box::pin(async move {
            if message.recipients.is_empty() {
                return Err(QueueError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a message needs at least one recipient",
                )));
            }
            Ok(Box::new(MemoryDraft::new(message)) as Box<dyn Draft>)
        })
    }

    /// Stores a draft made by [`Queue::begin`] of this store durably, like
    /// [`Queue::enqueue`]: returns only after the fsyncs. The default enqueues the message
    /// whole.
    fn commit(&self, draft: Box<dyn Draft>) -> BoxFuture<'_, Result<MessageId, QueueError>> {
        Box::pin(async move {
            let message = draft.into_message().await?;
            self.enqueue(message).await
        })
    }

    /// All messages, oldest first.
    fn list(&self) -> BoxFuture<'_, Result<Vec<QueuedMessage>, QueueError>>;

    /// One message's envelope and state.
    fn get<'a>(&'a self, id: &'a MessageId) -> BoxFuture<'a, Result<QueuedMessage, QueueError>>;

    /// One message's content.
    fn content<'a>(&'a self, id: &'a MessageId) -> BoxFuture<'a, Result<Vec<u8>, QueueError>>;

    /// Records attempt results. When every recipient is final the message is removed.
    fn update<'a>(
        &'a self,
        id: &'a MessageId,
        updates: Vec<RecipientUpdate>,
    ) -> BoxFuture<'a, Result<(), QueueError>>;

    /// Holds (`true`) or releases (`false`) a message.
    fn set_held<'a>(
        &'a self,
        id: &'a MessageId,
        held: bool,
    ) -> BoxFuture<'a, Result<(), QueueError>>;

    /// Makes every pending recipient of the message due now.
    fn retry_now<'a>(&'a self, id: &'a MessageId) -> BoxFuture<'a, Result<(), QueueError>>;

    /// Removes a message without delivering or bouncing it.
    fn delete<'a>(&'a self, id: &'a MessageId) -> BoxFuture<'a, Result<(), QueueError>>;

    /// Moves a message whose entry cannot be used (content unreadable) out of the queue, to
    /// a place a person can inspect; it is neither delivered nor bounced.
    fn quarantine<'a>(
        &'a self,
        id: &'a MessageId,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>>;

    /// Waits until the store changed in a way the runner did not cause through `update`, and
    /// says how: messages enqueued through this handle (their ids, due now), or anything else
    /// (an admin command here or in another process: hold, release, retry, delete), which asks
    /// for a rescan. Changes are buffered between calls, so none is lost; the runner keeps its
    /// own index of what is due from these and from its updates, and lists the whole queue only
    /// at start and on a rescan.
    fn changes(&self) -> BoxFuture<'_, Changes>;

    /// Takes the delivery of these messages for this handle, each if it is due at `now` (Unix
    /// seconds). The runner calls this for every message its due index offers, before
    /// delivering it, with one batch per pass.
    ///
    /// A store shared by several nodes leases the due recipients to this node (and answers
    /// [`Claim::Later`] for what another node holds), so that two nodes never deliver the same
    /// recipient at once. A store used by one process needs no lease (the runner never takes a
    /// message twice itself): the default reads each message and looks at its next attempt.
    fn claim<'a>(
        &'a self,
        ids: &'a [MessageId],
        now: u64,
    ) -> BoxFuture<'a, Result<Vec<Claim>, QueueError>> {
        Box::pin(async move {
            let mut claims = Vec::with_capacity(ids.len());
            for id in ids {
                claims.push(claim_by_state(id, self.get(id).await, now)?);
            }
            Ok(claims)
        })
    }

    /// Gives up whatever this handle still holds of a claimed message (its delivery ended
    /// without an update for some recipient), so another node need not wait for the lease to
    /// run out. Nothing to do for a store without leases.
    fn release<'a>(&'a self, id: &'a MessageId) -> BoxFuture<'a, ()> {
        let _ = id;
        Box::pin(async {})
    }
}

/// The claim of a store used by one process (no leases): the message, read just now, is taken
/// when it is due at `now`; one that is gone is not looked at again.
pub fn claim_by_state(
    id: &MessageId,
    state: Result<QueuedMessage, QueueError>,
    now: u64,
) -> Result<Claim, QueueError> {
    match state {
        Ok(message) => Ok(match message.next_attempt() {
            Some(at) if at <= now => Claim::Taken(message),
            at => Claim::Later { id: id.clone(), at },
        }),
        Err(QueueError::NotFound(_)) => Ok(Claim::Later {
            id: id.clone(),
            at: None,
        }),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relayward_protocol::dsn::Notify;
    use relayward_protocol::route::{NextHop, RouteClass};

    fn message(addresses: &[&str], dsn: Vec<RcptDsn>) -> NewMessage {
        NewMessage {
            sender: "s@outside.test".into(),
            recipients: addresses
                .iter()
                .map(|a| NewRecipient {
                    address: (*a).into(),
                    route: Route {
                        class: RouteClass::Local,
                        next_hop: NextHop::Maildir {
                            domain: "example.test".into(),
                            mailbox: (*a).into(),
                        },
                    },
                })
                .collect(),
            content: b"x".to_vec(),
            client_ip: "127.0.0.1".into(),
            auth_login: None,
            origin: Origin::Stranger,
            esmtp: Esmtp {
                recipients: dsn,
                ..Esmtp::default()
            },
        }
    }

    fn notify(success: bool) -> RcptDsn {
        RcptDsn {
            notify: Some(Notify {
                success,
                failure: true,
                delay: false,
            }),
            orcpt: None,
        }
    }

    #[test]
    fn narrowing_keeps_each_recipient_with_its_own_dsn() {
        let mut m = message(
            &["a", "b", "c"],
            vec![notify(true), notify(false), notify(true)],
        );
        m.retain_recipients(|_, r| r.address != "a");
        let kept: Vec<&str> = m.recipients.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(kept, ["b", "c"]);
        assert_eq!(m.esmtp.recipients, [notify(false), notify(true)]);
    }

    #[test]
    fn narrowing_with_fewer_dsn_entries_than_recipients() {
        // Missing entries mean "none": only the present ones move with their recipient.
        let mut m = message(&["a", "b", "c"], vec![notify(true)]);
        m.retain_recipients(|i, _| i != 0);
        assert_eq!(m.recipients.len(), 2);
        assert!(m.esmtp.recipients.is_empty());
        let mut m = message(&["a", "b", "c"], vec![notify(true), notify(false)]);
        m.retain_recipients(|i, _| i != 2);
        assert_eq!(m.esmtp.recipients, [notify(true), notify(false)]);
    }
}

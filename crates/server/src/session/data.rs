//! DATA: receiving the content (dot-unstuffing and the smuggling checks are the protocol
//! crate's) straight into the queue behind the trace header ([`super::content`]), and the
//! durable commit before the `250` — into the queue, or for small mail only for local
//! mailboxes into their Maildirs ([`crate::local`]).

use std::io;
use std::time::SystemTime;

use relayward_protocol::data::{DataError, DataReceiver, DataStatus};
use relayward_protocol::limits::{MAX_ACCEPTED_TEXT_LINE, MAX_HOPS};
use relayward_protocol::reply::Reply;
use relayward_protocol::text::Escaped;
use relayward_queue::{Draft, Esmtp, MessageId, NewMessage, NewRecipient, Origin, QueueError};
use tokio::io::AsyncReadExt;

use super::content::{ContentSink, Finished};
use super::{Ending, Flow, Session, Step, Stream, Transaction};
use crate::sign::{Signing, Submitter, allowed_from};
use crate::trace::{TraceFacts, received_header};
use relayward_protocol::text::escape_control;

impl<S: Stream> Session<S> {
    pub(super) async fn on_data(&mut self) -> Step {
        let Some(txn) = self.txn.as_ref() else {
            return Ok(self.client_error(Reply::enh(503, (5, 5, 1), "Need MAIL command")));
        };
        if txn.recipients.is_empty() {
            return Ok(self.client_error(Reply::enh(554, (5, 5, 1), "No valid recipients")));
        }
        if txn.chunks.is_some() {
            return Ok(self.client_error(Reply::enh(
                503,
                (5, 5, 1),
                "DATA after BDAT: finish with BDAT ... LAST or RSET",
            )));
        }
        self.queue_reply(&Reply::new(354, None, "End data with <CR><LF>.<CR><LF>"));
        self.flush().await?;
        let mut sink = ContentSink::new(self.begin_message().await);
        match self.receive_data(&mut sink).await? {
            DataOutcome::Complete => {}
            DataOutcome::Refused(reply) => {
                self.txn = None;
                return Ok(self.client_error(reply));
            }
            DataOutcome::Answered => {
                self.txn = None;
                return Ok(Flow::Continue);
            }
            DataOutcome::Fatal(reply, why) => {
                self.txn = None;
                return Ok(self.close_with(reply, Ending::Protocol(why)));
            }
            DataOutcome::Closed => return Ok(Flow::Close(Ending::ClientClosed)),
        }
        let Some(txn) = self.txn.take() else {
            return Ok(Flow::Continue);
        };
        self.complete(txn, sink.finish().await).await
    }

    /// The end of the content (DATA's final dot, BDAT's `LAST`): the loop check, then the
    /// signature and the durable commit, or the refusal.
    pub(super) async fn complete(&mut self, txn: Transaction, content: Finished) -> Step {
        if let Some(reply) = too_many_hops(content.hops) {
            tracing::warn!(client = %self.client_ip, "message refused: too many Received: fields (mail loop?)");
            return Ok(self.client_error(reply));
        }
        let reply = match content.draft {
            Ok(draft) => self.enqueue(&txn, draft).await,
            Err(error) => {
                tracing::error!(client = %self.client_ip, "queue refused message: {error}");
                queue_error_reply(&error)
            }
        };
        Ok(self.reply(reply))
    }

    async fn receive_data(&mut self, sink: &mut ContentSink) -> io::Result<DataOutcome> {
        let mut receiver = DataReceiver::new(self.ctx.limits.max_message_size);
        let mut pending = self.lines.take_buffered();
        let mut answered = false;
        loop {
            let mut offset = 0;
            loop {
                match receiver.feed(&pending[offset..], sink.buffer()) {
                    DataStatus::NeedMore => break,
                    // Answer the moment a limit is crossed; the rest is read and dropped up to
                    // the end of data, so the dialogue stays in step.
                    DataStatus::Refused { consumed, error } => {
                        offset += consumed;
                        self.send_now(&data_error_reply(error)).await?;
                        answered = true;
                    }
                    DataStatus::Done { consumed, error } => {
                        self.lines.extend(&pending[offset + consumed..]);
                        return Ok(match error {
                            None => DataOutcome::Complete,
                            Some(_) if answered => DataOutcome::Answered,
                            Some(error) => DataOutcome::Refused(data_error_reply(error)),
                        });
                    }
                    DataStatus::Fatal(error) => {
                        return Ok(DataOutcome::Fatal(
                            data_error_reply(error),
                            "bare line ending in DATA",
                        ));
                    }
                }
            }
            sink.absorb().await;
            pending.clear();
            pending.resize(16 * 1024, 0);
            let read =
                tokio::time::timeout(self.ctx.limits.data_timeout, self.conn.read(&mut pending))
                    .await;
            match read {
                Err(_) => {
                    return Ok(DataOutcome::Fatal(
                        Reply::enh(421, (4, 4, 2), "Timeout during DATA, closing"),
                        "timeout in DATA",
                    ));
                }
                Ok(Ok(0)) => return Ok(DataOutcome::Closed),
                Ok(Ok(n)) => pending.truncate(n),
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    /// How the client stands, recorded with the message: a bounce to a stranger's (possibly
    /// forged) sender must stay small.
    fn origin(&self) -> Origin {
        if self.login.is_some() {
            Origin::Authenticated
        } else if self.ctx.policy.is_trusted(self.client_ip) {
            Origin::Trusted
        } else {
            Origin::Stranger
        }
    }

    /// DKIM-signs the draft's body when this message qualifies (see [`crate::sign`]):
    /// the body is read back from the queue, signed on a blocking thread and written back in
    /// its signed form. Returns what signing did, for the mail log (logged once the queue id
    /// is known). Signing never refuses mail: a message that cannot be signed goes unsigned.
    /// `Err` when the signed form cannot be written (the queue's reply), or the runtime is
    /// shutting down under the signing thread.
    ///
    /// The body is in memory while it is signed (at most `max_message_size`), only for the
    /// mail of authenticated users and trusted networks that leaves.
    async fn sign(
        &self,
        txn: &Transaction,
        draft: &mut Box<dyn Draft>,
    ) -> Result<Option<Signed>, Reply> {
        let Some(signer) = self.ctx.signer.clone() else {
            return Ok(None);
        };
        let submitter = match (&self.login, self.origin()) {
            (Some(login), _) => Submitter::User(self.ctx.policy.send_as(login)),
            (None, Origin::Trusted) => Submitter::TrustedNetwork {
                sender: &txn.sender,
            },
            _ => Submitter::Stranger,
        };
        let classes = txn.recipients.iter().map(|r| &r.route().class);
        let Some(allowed) = allowed_from(submitter, classes) else {
            return Ok(None);
        };
        let body = match draft.read_body().await {
            Ok(body) => body,
            Err(error) => {
                return Ok(Some(Signed::No(format!("cannot read it back: {error}"))));
            }
        };
        let signed = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                signer.sign(&body, &allowed)
            }))
            .unwrap_or_else(|_| Signing::Unsigned {
                reason: "the signer failed (panic)".to_owned(),
            })
        })
        .await;
        match signed {
            Ok(Signing::Signed {
                content,
                signatures,
            }) => {
                if let Err(error) = draft.replace_body(content).await {
                    tracing::error!(client = %self.client_ip, "cannot store the signed message: {error}");
                    return Err(queue_error_reply(&error));
                }
                Ok(Some(Signed::Yes(signatures.join(", "))))
            }
            Ok(Signing::Unsigned { reason }) => Ok(Some(Signed::No(reason))),
            Err(error) => {
                tracing::error!(client = %self.client_ip, "DKIM signing interrupted: {error}");
                Err(Reply::enh(
                    451,
                    (4, 3, 0),
                    "Temporary failure while signing; try again later",
                ))
            }
        }
    }

    /// Begins the message in the queue when its content starts: the envelope of the current
    /// transaction and the `Received:` trace header, dated when the content starts (its
    /// fields are all known then; the content goes to disk behind it as it arrives).
    pub(super) async fn begin_message(&self) -> Result<Box<dyn Draft>, QueueError> {
        let Some(txn) = self.txn.as_ref() else {
            return Err(QueueError::Io(io::Error::other("no transaction")));
        };
        let recipients: Vec<String> = txn
            .recipients
            .iter()
            .map(|r| r.address().to_string())
            .collect();
        let tls = self.conn.tls_facts();
        let helo = self.helo.as_ref();
        let header = received_header(&TraceFacts {
            helo: helo.map(|h| h.name.as_str()).unwrap_or("unknown"),
            client_ip: self.client_ip,
            hostname: &self.ctx.hostname,
            esmtp: helo.is_some_and(|h| h.esmtp),
            tls: tls.as_ref(),
            auth_login: self.login.as_deref(),
            single_recipient: (recipients.len() == 1).then(|| recipients[0].as_str()),
            now: SystemTime::now(),
        });
        let message = NewMessage {
            sender: txn.sender.clone(),
            recipients: txn
                .recipients
                .iter()
                .map(|r| NewRecipient {
                    address: r.address().to_string(),
                    route: r.route().clone(),
                })
                .collect(),
            content: header.into_bytes(),
            client_ip: self.client_ip.to_string(),
            auth_login: self.login.clone(),
            origin: self.origin(),
            esmtp: Esmtp {
                smtputf8: txn.smtputf8,
                dsn: txn.dsn.clone(),
                recipients: txn.rcpt_dsn.clone(),
            },
        };
        self.ctx.queue.begin(message).await
    }

    /// Signs and commits the whole message: `250` only once it is durable — in the queue, or,
    /// for mail only for local mailboxes, in their Maildirs.
    async fn enqueue(&mut self, txn: &Transaction, mut draft: Box<dyn Draft>) -> Reply {
        let signed = match self.sign(txn, &mut draft).await {
            Ok(signed) => signed,
            Err(reply) => return reply,
        };
        let size = draft.size();
        let before = match self.deliver_before_reply(draft.as_mut()).await {
            BeforeReply::All(id) => {
                self.log_accepted(
                    txn,
                    &id,
                    size,
                    signed.as_ref(),
                    txn.recipients.len(),
                    "message delivered",
                );
                self.junk_commands = 0;
                return Reply::enh(250, (2, 0, 0), format!("Ok: delivered as {id}"));
            }
            BeforeReply::Some(id) => Some(id),
            BeforeReply::None => None,
        };
        let left = draft
            .held_mut()
            .map_or(txn.recipients.len(), |m| m.recipients.len());
        let started = std::time::Instant::now();
        let queued = self.ctx.queue.commit(draft).await;
        relayward_metrics::global().spool_commit(started.elapsed().as_secs_f64());
        match queued {
            Ok(id) => {
                if let Some(delivered_as) = &before {
                    tracing::info!(client = %self.client_ip, id = %delivered_as, queued_as = %id, "message delivered in part; the rest queued");
                }
                self.log_accepted(txn, &id, size, signed.as_ref(), left, "message queued");
                self.junk_commands = 0;
                Reply::enh(250, (2, 0, 0), format!("Ok: queued as {id}"))
            }
            Err(error) => {
                tracing::error!(client = %self.client_ip, "queue refused message: {error}");
                if let Some(delivered_as) = &before {
                    tracing::warn!(client = %self.client_ip, id = %delivered_as, "message delivered in part, the rest refused: a retry by the client brings a second copy to those delivered");
                }
                queue_error_reply(&error)
            }
        }
    }

    /// Delivers a small message whose every recipient is a local mailbox into their
    /// Maildirs (see [`crate::local`]): all its copies, or none. What could not be
    /// delivered goes to the queue, without the recipients whose copy is there.
    async fn deliver_before_reply(&mut self, draft: &mut dyn Draft) -> BeforeReply {
        let Some(local) = self.ctx.local_delivery.clone() else {
            return BeforeReply::None;
        };
        let Some(message) = draft.held_mut() else {
            return BeforeReply::None;
        };
        if !crate::local::deliverable_before_reply(message) {
            return BeforeReply::None;
        }
        let id = MessageId::generate();
        let delivered = local
            .deliver(&id, &message.recipients, message.content.clone())
            .await;
        let all = delivered.len() == message.recipients.len() && delivered.iter().all(|d| *d);
        if all {
            return BeforeReply::All(id);
        }
        if !delivered.iter().any(|d| *d) {
            return BeforeReply::None;
        }
        message.retain_recipients(|i, _| !delivered.get(i).copied().unwrap_or(false));
        BeforeReply::Some(id)
    }

    /// The mail log's line for an accepted message (after it was made durable), and the count.
    fn log_accepted(
        &self,
        txn: &Transaction,
        id: &MessageId,
        size: u64,
        signed: Option<&Signed>,
        recipients: usize,
        what: &str,
    ) {
        relayward_metrics::global().message_accepted(self.kind.as_str());
        match signed {
            Some(Signed::Yes(signatures)) => {
                tracing::info!(client = %self.client_ip, %id, %signatures, "message DKIM-signed");
            }
            Some(Signed::No(reason)) => {
                tracing::info!(client = %self.client_ip, %id, "message not DKIM-signed: {}", escape_control(reason));
            }
            None => {}
        }
        tracing::info!(
            client = %self.client_ip,
            %id,
            from = %Escaped(&txn.sender),
            recipients,
            size,
            tls = %self.conn.tls_facts().as_ref().map_or("none", |t| t.version.as_str()),
            login = %Escaped(self.login.as_deref().unwrap_or("none")),
            "{what}"
        );
    }
}

/// What delivery before the reply did (see [`crate::local`]).
enum BeforeReply {
    /// Every copy is in its Maildir, under this id.
    All(MessageId),
    /// Some are (a copy failed after all were written); the draft holds the others.
    Some(MessageId),
    /// None: the message goes to the queue as it is.
    None,
}

/// What DKIM signing did to a message that qualified for it, for the mail log.
enum Signed {
    /// Signed; the signatures as `d=… s=…`, comma-separated.
    Yes(String),
    /// Left unsigned, and why.
    No(String),
}

enum DataOutcome {
    Complete,
    Refused(Reply),
    /// Refused, and the reply was sent when the limit was crossed.
    Answered,
    Fatal(Reply, &'static str),
    Closed,
}

pub(super) fn data_error_reply(error: DataError) -> Reply {
    match error {
        DataError::BareCr => Reply::enh(
            521,
            (5, 5, 2),
            "Bare CR received in DATA; message refused, closing (SMTP smuggling defence)",
        ),
        DataError::BareLf => Reply::enh(
            521,
            (5, 5, 2),
            "Bare LF received in DATA; message refused, closing (SMTP smuggling defence)",
        ),
        DataError::LineTooLong => Reply::enh(
            500,
            (5, 5, 2),
            format!("Message refused: a line is longer than {MAX_ACCEPTED_TEXT_LINE} octets"),
        ),
        DataError::TooBig => Reply::enh(
            552,
            (5, 3, 4),
            "Message size exceeds fixed maximum message size",
        ),
        DataError::Nul => Reply::enh(
            554,
            (5, 6, 0),
            "Message refused: NUL octet in content (not allowed in mail, RFC 5322)",
        ),
    }
}

/// `554 5.4.6` for a message that already passed more than [`MAX_HOPS`] relays: it is
/// looping (RFC 5321 §6.3), and queueing it would send it round once more.
pub(super) fn too_many_hops(hops: usize) -> Option<Reply> {
    (hops > MAX_HOPS).then(|| {
        Reply::enh(
            554,
            (5, 4, 6),
            format!(
                "Too many hops: {hops} Received: header fields, at most {MAX_HOPS} (mail loop?)"
            ),
        )
    })
}

/// Never `250`: a full disk is `452 4.3.1`; a queue database that cannot be reached is
/// `451 4.3.0` (a system problem, not storage: RFC 3463); anything else `452 4.3.1`.
fn queue_error_reply(error: &QueueError) -> Reply {
    match error {
        QueueError::Full => Reply::enh(
            452,
            (4, 3, 1),
            "Insufficient system storage; try again later",
        ),
        QueueError::Unavailable(_) => Reply::enh(
            451,
            (4, 3, 0),
            "Queue temporarily unavailable; try again later",
        ),
        _ => Reply::enh(452, (4, 3, 1), "Temporary queue error; try again later"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_queue_database_is_451_4_3_0() {
        let reply = queue_error_reply(&QueueError::Unavailable("connection refused".into()));
        assert_eq!(reply.code, 451);
        assert_eq!(
            reply.enhanced.map(|e| e.to_string()).as_deref(),
            Some("4.3.0")
        );
        let full = queue_error_reply(&QueueError::Full);
        assert_eq!(
            (full.code, full.enhanced.map(|e| e.to_string())),
            (452, Some("4.3.1".into()))
        );
    }
}

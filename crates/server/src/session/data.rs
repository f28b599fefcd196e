//! DATA: receiving the content (dot-unstuffing and the smuggling checks are the protocol
//! crate's), adding the trace header, and the durable enqueue before the `250`.

use std::io;
use std::time::SystemTime;

use relayward_protocol::data::{DataError, DataReceiver, DataStatus};
use relayward_protocol::header;
use relayward_protocol::limits::{MAX_ACCEPTED_TEXT_LINE, MAX_HOPS};
use relayward_protocol::reply::Reply;
use relayward_protocol::text::Escaped;
use relayward_queue::{Esmtp, NewMessage, NewRecipient, Origin, QueueError};
use tokio::io::AsyncReadExt;

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
        let mut content = Vec::with_capacity(8192);
        match self.receive_data(&mut content).await? {
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
        if let Some(reply) = too_many_hops(&content) {
            tracing::warn!(client = %self.client_ip, "message refused: too many Received: fields (mail loop?)");
            return Ok(self.client_error(reply));
        }
        let reply = self.enqueue(txn, content).await;
        Ok(self.reply(reply))
    }

    async fn receive_data(&mut self, content: &mut Vec<u8>) -> io::Result<DataOutcome> {
        let mut receiver = DataReceiver::new(self.ctx.limits.max_message_size);
        let mut pending = self.lines.take_buffered();
        let mut answered = false;
        loop {
            let mut offset = 0;
            loop {
                match receiver.feed(&pending[offset..], content) {
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

    /// The content DKIM-signed when this message qualifies (see [`crate::sign`]), else as
    /// it came, with what signing did for the mail log (logged once the queue id is known).
    /// Signing never refuses mail: a message that cannot be signed goes unsigned. `Err` only
    /// when the runtime is shutting down under the signing thread.
    async fn sign(
        &self,
        txn: &Transaction,
        body: Vec<u8>,
    ) -> Result<(Vec<u8>, Option<Signed>), Reply> {
        let Some(signer) = self.ctx.signer.clone() else {
            return Ok((body, None));
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
            return Ok((body, None));
        };
        let signed = tokio::task::spawn_blocking(move || {
            let signing = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                signer.sign(&body, &allowed)
            }))
            .unwrap_or_else(|_| Signing::Unsigned {
                reason: "the signer failed (panic)".to_owned(),
            });
            (body, signing)
        })
        .await;
        match signed {
            Ok((
                _,
                Signing::Signed {
                    content,
                    signatures,
                },
            )) => Ok((content, Some(Signed::Yes(signatures.join(", "))))),
            Ok((body, Signing::Unsigned { reason })) => Ok((body, Some(Signed::No(reason)))),
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

    pub(super) async fn enqueue(&mut self, txn: Transaction, body: Vec<u8>) -> Reply {
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
        let (body, signed) = match self.sign(&txn, body).await {
            Ok(signed) => signed,
            Err(reply) => return reply,
        };
        let mut content = Vec::with_capacity(header.len() + body.len());
        content.extend_from_slice(header.as_bytes());
        content.extend_from_slice(&body);
        let message = NewMessage {
            sender: txn.sender,
            recipients: txn
                .recipients
                .iter()
                .map(|r| NewRecipient {
                    address: r.address().to_string(),
                    route: r.route().clone(),
                })
                .collect(),
            content,
            client_ip: self.client_ip.to_string(),
            auth_login: self.login.clone(),
            origin: self.origin(),
            esmtp: Esmtp {
                smtputf8: txn.smtputf8,
                dsn: txn.dsn,
                recipients: txn.rcpt_dsn,
            },
        };
        let sender = message.sender.clone();
        let size = message.content.len();
        let started = std::time::Instant::now();
        let queued = self.ctx.queue.enqueue(message).await;
        let metrics = relayward_metrics::global();
        metrics.spool_commit(started.elapsed().as_secs_f64());
        match queued {
            Ok(id) => {
                metrics.message_accepted(self.kind.as_str());
                match &signed {
                    Some(Signed::Yes(signatures)) => {
                        tracing::info!(client = %self.client_ip, %id, %signatures, "message DKIM-signed");
                    }
                    Some(Signed::No(reason)) => {
                        tracing::info!(client = %self.client_ip, %id, "message not DKIM-signed: {}", escape_control(reason));
                    }
                    None => {}
                }
                // The mail log's line for an accepted message (after its fsync).
                tracing::info!(
                    client = %self.client_ip,
                    %id,
                    from = %Escaped(&sender),
                    recipients = recipients.len(),
                    size,
                    tls = %tls.as_ref().map_or("none", |t| t.version.as_str()),
                    login = %Escaped(self.login.as_deref().unwrap_or("none")),
                    "message queued"
                );
                Reply::enh(250, (2, 0, 0), format!("Ok: queued as {id}"))
            }
            Err(error) => {
                tracing::error!(client = %self.client_ip, "queue refused message: {error}");
                queue_error_reply(&error)
            }
        }
    }
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
pub(super) fn too_many_hops(content: &[u8]) -> Option<Reply> {
    let hops = header::count(content, "Received");
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

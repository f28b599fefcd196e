//! BDAT (RFC 3030 CHUNKING): the content in chunks of announced size, each answered on its
//! own, the message queued at `BDAT … LAST`.
//!
//! Framing is the announced size, so the announced octets are always taken off the stream —
//! also when the chunk is refused (no transaction, no recipients, an earlier chunk refused):
//! otherwise they would be read as commands, which is exactly the smuggling RFC 3030 clients
//! fear. A chunk that would take the message past its size limit is refused before it is
//! read, and the connection closed: reading gigabytes only to drop them is the attacker's win.
//! The content rules are DATA's (see [`relayward_protocol::bdat`]).

use std::io;

use relayward_protocol::bdat::{BdatReceiver, ChunkStatus};
use relayward_protocol::reply::Reply;
use tokio::io::AsyncReadExt;

use super::content::ContentSink;
use super::data::data_error_reply;
use super::{Ending, Flow, Session, Step, Stream};

/// The chunks of the message being received by BDAT, on their way to the queue.
pub(super) struct Chunks {
    receiver: BdatReceiver,
    sink: ContentSink,
}

/// What reading one chunk came to.
enum ChunkOutcome {
    /// All announced octets read; the message so far is fine.
    Complete,
    /// Refused; the reply was sent the moment the limit was crossed.
    Answered,
    /// Framing lost or the client gone quiet: answer (if any) and close.
    Fatal(Option<Reply>, &'static str),
    Closed,
}

impl<S: Stream> Session<S> {
    pub(super) async fn on_bdat(&mut self, size: u64, last: bool) -> Step {
        if let Some(refusal) = self.bdat_refusal() {
            if size > self.ctx.limits.max_message_size {
                return Ok(self.close_with(too_big_closing(), Ending::Protocol("BDAT too big")));
            }
            return match self.skip_octets(size).await? {
                Some(ending) => Ok(Flow::Close(ending)),
                None => Ok(self.client_error(refusal)),
            };
        }
        let max = self.ctx.limits.max_message_size;
        let mut chunks = match self.txn.as_mut().and_then(|t| t.chunks.take()) {
            Some(chunks) => chunks,
            None => Box::new(Chunks {
                receiver: BdatReceiver::new(max),
                sink: ContentSink::new(self.begin_message().await),
            }),
        };
        if chunks.receiver.start_chunk(size, last).is_err() {
            self.txn = None;
            return Ok(self.close_with(too_big_closing(), Ending::Protocol("BDAT too big")));
        }
        let outcome = self.receive_chunk(&mut chunks).await?;
        match outcome {
            ChunkOutcome::Complete => {}
            ChunkOutcome::Answered => {
                self.txn = None;
                return Ok(Flow::Continue);
            }
            ChunkOutcome::Fatal(reply, why) => {
                self.txn = None;
                if let Some(reply) = reply {
                    self.queue_reply(&reply);
                }
                return Ok(Flow::Close(Ending::Protocol(why)));
            }
            ChunkOutcome::Closed => return Ok(Flow::Close(Ending::ClientClosed)),
        }
        if !last {
            if let Some(txn) = self.txn.as_mut() {
                txn.chunks = Some(chunks);
            }
            return Ok(self.reply(Reply::enh(
                250,
                (2, 0, 0),
                format!("{size} octets received"),
            )));
        }
        let Some(txn) = self.txn.take() else {
            return Ok(Flow::Continue);
        };
        let content = chunks.sink.finish().await;
        self.complete(txn, content).await
    }

    /// Why a BDAT cannot be taken now (its octets are skipped all the same).
    fn bdat_refusal(&self) -> Option<Reply> {
        match self.txn.as_ref() {
            None => Some(Reply::enh(503, (5, 5, 1), "Need MAIL command")),
            Some(txn) if txn.recipients.is_empty() => {
                Some(Reply::enh(554, (5, 5, 1), "No valid recipients"))
            }
            Some(_) => None,
        }
    }

    /// Reads the current chunk into `chunks`: first what is already buffered behind the
    /// command line, then from the client, within the DATA timeout.
    async fn receive_chunk(&mut self, chunks: &mut Box<Chunks>) -> io::Result<ChunkOutcome> {
        let Chunks { receiver, sink } = &mut **chunks;
        let mut pending = self.lines.take_buffered();
        let mut answered = false;
        loop {
            let mut offset = 0;
            loop {
                match receiver.feed(&pending[offset..], sink.buffer()) {
                    ChunkStatus::NeedMore => break,
                    ChunkStatus::Refused { consumed, error } => {
                        offset += consumed;
                        self.send_now(&data_error_reply(error)).await?;
                        answered = true;
                    }
                    ChunkStatus::ChunkDone { consumed, error } => {
                        self.lines.extend(&pending[offset + consumed..]);
                        return Ok(match error {
                            None => ChunkOutcome::Complete,
                            Some(_) if answered => ChunkOutcome::Answered,
                            Some(error) => {
                                self.queue_reply(&data_error_reply(error));
                                ChunkOutcome::Answered
                            }
                        });
                    }
                    ChunkStatus::Fatal(error) => {
                        return Ok(ChunkOutcome::Fatal(
                            Some(data_error_reply(error)),
                            "bare line ending in BDAT",
                        ));
                    }
                }
            }
            sink.absorb().await;
            match self.read_chunk_bytes(&mut pending).await? {
                Ok(()) => {}
                Err(outcome) => return Ok(outcome),
            }
        }
    }

    /// Drops exactly `size` octets of a refused chunk. `Some(ending)` when the client went away
    /// or silent on the way.
    async fn skip_octets(&mut self, size: u64) -> io::Result<Option<Ending>> {
        let mut pending = self.lines.take_buffered();
        let mut left = size;
        loop {
            let take = usize::try_from(left)
                .unwrap_or(usize::MAX)
                .min(pending.len());
            left -= take as u64;
            if left == 0 {
                self.lines.extend(&pending[take..]);
                return Ok(None);
            }
            match self.read_chunk_bytes(&mut pending).await? {
                Ok(()) => {}
                Err(ChunkOutcome::Fatal(reply, why)) => {
                    if let Some(reply) = reply {
                        self.queue_reply(&reply);
                    }
                    return Ok(Some(Ending::Protocol(why)));
                }
                Err(_) => return Ok(Some(Ending::ClientClosed)),
            }
        }
    }

    /// Replaces `pending` with the next read from the client, within the DATA timeout.
    async fn read_chunk_bytes(
        &mut self,
        pending: &mut Vec<u8>,
    ) -> io::Result<Result<(), ChunkOutcome>> {
        pending.clear();
        pending.resize(16 * 1024, 0);
        let read =
            tokio::time::timeout(self.ctx.limits.data_timeout, self.conn.read(pending)).await;
        match read {
            Err(_) => Ok(Err(ChunkOutcome::Fatal(
                Some(Reply::enh(421, (4, 4, 2), "Timeout during BDAT, closing")),
                "timeout in BDAT",
            ))),
            Ok(Ok(0)) => Ok(Err(ChunkOutcome::Closed)),
            Ok(Ok(n)) => {
                pending.truncate(n);
                Ok(Ok(()))
            }
            Ok(Err(e)) => Err(e),
        }
    }
}

fn too_big_closing() -> Reply {
    Reply::enh(
        552,
        (5, 3, 4),
        "Message size exceeds fixed maximum message size; closing",
    )
}

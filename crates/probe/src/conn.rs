//! One SMTP client connection: replies read by the clients' one reader
//! ([`relayward_tls::reply::ReplyReader`]), a transcript, deadlines.
//!
//! Everything a hostile server controls is bounded here: line length, lines per reply (via
//! [`relayward_protocol::reply::ReplyParser::MAX_LINES`]), bytes per reply and per target, and
//! time (every read and write has a deadline), so a server that streams garbage or trickles one
//! byte a minute costs at most one timeout.

use std::io;
use std::time::Duration;

use relayward_protocol::reply::{Reply, ReplyError};
use relayward_tls::reply::{ReadError, ReplyReader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::client::TlsStream;

use crate::transcript::Transcript;

/// Longest reply line we read. RFC 5321 allows 512; real servers exceed it a little.
pub const MAX_LINE: usize = 4096;
/// Longest reply (all its lines) we read. A long EHLO reply is a few hundred bytes.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Why a command got no usable reply. Any of these ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("timed out")]
    Timeout,
    #[error("connection closed by server")]
    Closed,
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("reply line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("malformed reply: {0}")]
    Malformed(String),
    #[error("reply longer than {MAX_REPLY_BYTES} bytes")]
    ReplyTooLong,
    #[error("reply has more than {0} lines")]
    TooManyLines(usize),
    #[error("the server sent a reply before the command it would answer (out of step)")]
    OutOfStep,
    #[error(
        "the server sent more than {} bytes of replies to this probe",
        crate::transcript::MAX_TARGET_REPLY_BYTES
    )]
    Flood,
}

impl From<ReadError> for ConnError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Closed => ConnError::Closed,
            ReadError::Io(e) => ConnError::Io(e),
            ReadError::LineTooLong(_) => ConnError::LineTooLong,
            ReadError::Malformed(ReplyError::TooManyLines(n)) => ConnError::TooManyLines(n),
            ReadError::Malformed(e) => ConnError::Malformed(e.to_string()),
        }
    }
}

impl ConnError {
    /// The server sends more than a probe reads: not a network problem, a hostile or broken
    /// server (INCONCLUSIVE, not UNREACHABLE).
    pub fn is_excess(&self) -> bool {
        matches!(
            self,
            ConnError::ReplyTooLong
                | ConnError::Flood
                | ConnError::LineTooLong
                | ConnError::TooManyLines(_)
        )
    }
}

pub use relayward_tls::ClientStream as Stream;

/// A connection with its read buffer. Bytes the server sent ahead (pipelining, or garbage)
/// stay in the buffer; after STARTTLS the buffer must be empty (RFC 3207 §4.2: anything sent
/// before the handshake is an injection attempt), see [`Conn::take_plain`].
pub struct Conn {
    stream: Stream,
    reader: ReplyReader,
    /// No read or write goes past this instant; the session sets it per test (the smaller of
    /// the test's and the host's deadline).
    pub deadline: Instant,
}

impl Conn {
    pub fn new(stream: Stream, deadline: Instant) -> Self {
        Self {
            stream,
            reader: ReplyReader::new(MAX_LINE),
            deadline,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    pub fn tls(&self) -> Option<&TlsStream<TcpStream>> {
        match &self.stream {
            Stream::Tls(s) => Some(s),
            Stream::Plain(_) => None,
        }
    }

    /// Hands the plain stream over for a TLS handshake. Fails if the server already sent
    /// bytes after its 220 to STARTTLS (response injection, CVE-2011-0411 style).
    pub fn take_plain(self) -> Result<TcpStream, ConnError> {
        if self.reader.has_buffered() {
            return Err(ConnError::Malformed(
                "data sent after the STARTTLS reply, before the handshake".into(),
            ));
        }
        match self.stream {
            Stream::Plain(s) => Ok(s),
            Stream::Tls(_) => Err(ConnError::Malformed("STARTTLS inside TLS".into())),
        }
    }

    /// Sends one command line (CRLF appended) and reads its reply. Refused when the server
    /// already sent bytes nobody asked for: they would be read as this command's reply (a
    /// closed server answering MAIL twice would have its second 250 taken for RCPT's).
    pub async fn command(&mut self, line: &str, log: &mut Transcript) -> Result<Reply, ConnError> {
        self.ensure_in_step(log).await?;
        self.send_line(line, log).await?;
        self.read_reply(log).await
    }

    /// `Err(OutOfStep)` when the server has sent bytes (already buffered or waiting in the
    /// socket) that no command sent so far asked for; `Err(Closed)` when it hung up.
    pub async fn ensure_in_step(&mut self, log: &mut Transcript) -> Result<(), ConnError> {
        if self.reply_pending(Duration::ZERO).await? {
            log.note("[the server sent a reply nobody asked for: out of step]");
            return Err(ConnError::OutOfStep);
        }
        Ok(())
    }

    /// Writes one line plus CRLF before the deadline.
    pub async fn send_line(&mut self, line: &str, log: &mut Transcript) -> Result<(), ConnError> {
        log.client(line);
        let mut data = Vec::with_capacity(line.len() + 2);
        data.extend_from_slice(line.as_bytes());
        data.extend_from_slice(b"\r\n");
        self.send_raw(&data).await
    }

    /// Writes bytes as they are (the DATA body in confirm mode).
    pub async fn send_raw(&mut self, data: &[u8]) -> Result<(), ConnError> {
        timeout_at(self.deadline, async {
            self.stream.write_all(data).await?;
            self.stream.flush().await
        })
        .await
        .map_err(|_| ConnError::Timeout)??;
        Ok(())
    }

    /// Reads one complete (possibly multi-line) reply before the deadline, each line into
    /// the transcript, within the reply and per-target byte budgets.
    pub async fn read_reply(&mut self, log: &mut Transcript) -> Result<Reply, ConnError> {
        if log.flooded() {
            return Err(ConnError::Flood);
        }
        let mut bytes = 0usize;
        let read = self.reader.read_reply(&mut self.stream, |line| {
            if log.flooded() {
                return Err(ConnError::Flood);
            }
            bytes += line.len() + 2;
            log.server(line);
            if bytes > MAX_REPLY_BYTES {
                return Err(ConnError::ReplyTooLong);
            }
            Ok(())
        });
        timeout_at(self.deadline, read)
            .await
            .map_err(|_| ConnError::Timeout)?
    }

    /// Whether the server has sent (or sends within `wait`) bytes nobody asked for yet: an
    /// answer to a line we did not expect to be answered (a PROXY header taken as a command),
    /// or replies out of step. `Err` when the server closed the connection meanwhile.
    pub async fn reply_pending(&mut self, wait: Duration) -> Result<bool, ConnError> {
        if self.reader.has_buffered() {
            return Ok(true);
        }
        let until = self.deadline.min(Instant::now() + wait);
        let mut chunk = [0u8; 2048];
        match timeout_at(until, self.stream.read(&mut chunk)).await {
            Err(_) => Ok(false),
            Ok(Ok(0)) => Err(ConnError::Closed),
            Ok(Ok(n)) => {
                self.reader.push(&chunk[..n]);
                Ok(true)
            }
            Ok(Err(e)) => Err(ConnError::Io(e)),
        }
    }

    /// Best-effort QUIT: short wait, errors ignored (we are leaving anyway).
    pub async fn quit(mut self, log: &mut Transcript) {
        self.deadline = self.deadline.min(Instant::now() + Duration::from_secs(2));
        let _ = self.command("QUIT", log).await;
        let _ = timeout_at(self.deadline, self.stream.shutdown()).await;
    }
}

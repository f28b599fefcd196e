//! Replies from a server, read the one way both SMTP clients read them: the delivery agent
//! (whose next hop may be anyone's MX) and the open-relay tester (whose targets may be
//! hostile). Bytes are buffered; lines end at LF, a CR before it dropped (lenient: we are the
//! client); invalid UTF-8 is replaced, since reply text is only shown and classified, never
//! trusted; more than `max_line` octets without a line end is refused, so the buffer stays
//! bounded (at most `max_line` plus one read); lines are assembled into replies by the protocol
//! crate's [`ReplyParser`], which bounds their number. Time limits stay with the callers (they
//! wrap whole reads).

use std::io;

use relayward_protocol::reply::{Reply, ReplyError, ReplyParser};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why no reply could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("connection closed by server")]
    Closed,
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("reply line longer than {0} bytes")]
    LineTooLong(usize),
    #[error("malformed reply: {0}")]
    Malformed(#[from] ReplyError),
}

/// The read side of one client connection: what the server sent and no reply has used yet.
#[derive(Debug)]
pub struct ReplyReader {
    buf: Vec<u8>,
    max_line: usize,
}

impl ReplyReader {
    /// A reader refusing more than `max_line` octets without a line end.
    pub fn new(max_line: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_line,
        }
    }

    /// Whether the server sent bytes no reply has consumed: replies ahead of their commands,
    /// or, after a `220` to STARTTLS, an injection attempt (RFC 3207 §4.2).
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Keeps bytes read elsewhere (a peek for unasked-for replies) for the next read.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// One whole (possibly multi-line) reply. `on_line` sees every line as it is read (a
    /// transcript, a byte budget) and may end the read with its own error.
    pub async fn read_reply<S, E>(
        &mut self,
        stream: &mut S,
        mut on_line: impl FnMut(&str) -> Result<(), E>,
    ) -> Result<Reply, E>
    where
        S: AsyncRead + Unpin,
        E: From<ReadError>,
    {
        let mut parser = ReplyParser::new();
        loop {
            let line = self.read_line(stream).await?;
            on_line(&line)?;
            if let Some(reply) = parser.feed(&line).map_err(ReadError::from)? {
                return Ok(reply);
            }
        }
    }

    /// One line without its line end.
    pub async fn read_line<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> Result<String, ReadError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            if self.buf.len() > self.max_line {
                return Err(ReadError::LineTooLong(self.max_line));
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await? {
                0 => return Err(ReadError::Closed),
                n => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn replies(wire: &[u8], max_line: usize) -> Vec<Result<Reply, String>> {
        let mut reader = ReplyReader::new(max_line);
        let mut stream = wire;
        let mut out = Vec::new();
        loop {
            match reader
                .read_reply(&mut stream, |_| Ok::<(), ReadError>(()))
                .await
            {
                Err(ReadError::Closed) => return out,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
                Ok(reply) => out.push(Ok(reply)),
            }
        }
    }

    #[tokio::test]
    async fn multi_line_replies_split_anywhere_and_bare_lf_accepted() {
        let got = replies(
            b"250-mx greets\r\n250-PIPELINING\n250 SIZE 100\r\n221 bye\r\n",
            64,
        )
        .await;
        let codes: Vec<u16> = got.iter().map(|r| r.as_ref().unwrap().code).collect();
        assert_eq!(codes, [250, 221]);
        assert_eq!(
            got[0].as_ref().unwrap().lines,
            ["mx greets", "PIPELINING", "SIZE 100"]
        );
    }

    /// A stream that hands over at most `step` bytes a read, as a slow server does.
    struct Trickle<'a> {
        bytes: &'a [u8],
        step: usize,
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            let n = self.step.min(self.bytes.len()).min(buf.remaining());
            buf.put_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_line_without_end_past_the_limit_and_a_malformed_line_end_the_read() {
        let long = [b"250 ".as_slice(), &[b'x'; 100], b"\r\n"].concat();
        let mut reader = ReplyReader::new(64);
        let mut slow = Trickle {
            bytes: &long,
            step: 16,
        };
        let read = reader
            .read_reply(&mut slow, |_| Ok::<(), ReadError>(()))
            .await;
        assert!(matches!(read, Err(ReadError::LineTooLong(64))), "{read:?}");
        let got = replies(b"220 ok\r\nHTTP/1.1 400\r\n", 64).await;
        assert!(got[0].is_ok());
        assert!(
            got[1].as_ref().unwrap_err().starts_with("malformed reply"),
            "{got:?}"
        );
    }

    #[derive(Debug)]
    enum Stop {
        Enough,
        Read(ReadError),
    }

    impl From<ReadError> for Stop {
        fn from(e: ReadError) -> Self {
            Stop::Read(e)
        }
    }

    #[tokio::test]
    async fn the_callback_sees_every_line_and_may_stop_the_read() {
        let mut reader = ReplyReader::new(64);
        let mut stream: &[u8] = b"250-a\r\n250-b\r\n250 c\r\n";
        let mut seen = Vec::new();
        let stopped = reader
            .read_reply(&mut stream, |line| {
                seen.push(line.to_string());
                if seen.len() == 2 {
                    Err(Stop::Enough)
                } else {
                    Ok(())
                }
            })
            .await;
        match stopped {
            Err(Stop::Enough) => {}
            Err(Stop::Read(e)) => panic!("read error: {e}"),
            Ok(reply) => panic!("not stopped: {reply:?}"),
        }
        assert_eq!(seen, ["250-a", "250-b"]);
        assert!(reader.has_buffered());
    }
}

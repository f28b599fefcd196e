//! Splits a byte stream into SMTP lines, strictly.
//!
//! A line ends only with CRLF. A bare LF or bare CR is an error, never a line end: accepting a
//! different end-of-line than the next hop is what makes SMTP smuggling work. Lines longer than
//! the limit are refused and skipped up to their CRLF rather than truncated.

/// One event out of the [`LineBuffer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineEvent {
    /// A complete line, CRLF removed.
    Line(Vec<u8>),
    /// A line over the limit ended; its content was discarded.
    TooLong,
    /// A bare CR or bare LF was seen; the bytes up to and including it were discarded.
    BareLineEnding,
}

/// Buffers received bytes and hands out complete lines.
#[derive(Debug)]
pub struct LineBuffer {
    max_line: usize,
    // fields are the helper's
}

impl LineBuffer {
    /// `max_line` counts the CRLF, as RFC 5321 does (512 for commands).
    pub fn new(max_line: usize) -> Self {
        Self { max_line }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        let _ = bytes;
        todo!("command helper")
    }

    /// The next event, or `None` when more bytes are needed.
    pub fn next_event(&mut self) -> Option<LineEvent> {
        let _ = self.max_line;
        todo!("command helper")
    }

    /// Bytes received but not yet returned as a line. After STARTTLS this must be zero, or the
    /// client pipelined plaintext behind STARTTLS (RFC 3207 §6: discard it).
    pub fn buffered(&self) -> usize {
        todo!("command helper")
    }

    /// Drops everything buffered (STARTTLS, and the switch into DATA).
    pub fn clear(&mut self) {
        todo!("command helper")
    }

    /// Takes the raw buffered bytes out (to hand them to the DATA receiver).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        todo!("command helper")
    }
}

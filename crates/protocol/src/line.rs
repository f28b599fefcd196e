//! Splits a byte stream into SMTP lines, strictly.
//!
//! A line ends only with CRLF. A bare LF or bare CR is an error, never a line end: accepting a
//! different end-of-line than the next hop is what makes SMTP smuggling work. Lines longer than
//! the limit are refused and skipped up to their CRLF rather than truncated.

const CR: u8 = b'\r';
const LF: u8 = b'\n';

/// One event out of the [`LineBuffer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineEvent {
    /// A complete line, CRLF removed.
    Line(Vec<u8>),
    /// A line over the limit ended; its content was discarded.
    TooLong,
    /// A bare CR or bare LF was seen; the bytes up to and including it were discarded.
    ///
    /// This also ends the skipping of an over-long line: the bytes after the bare line ending
    /// are framed afresh, and no [`LineEvent::TooLong`] follows for the skipped part.
    BareLineEnding,
}

/// Buffers received bytes and hands out complete lines.
#[derive(Debug)]
pub struct LineBuffer {
    max_line: usize,
    /// Received bytes; `buf[start..]` is not yet handed out.
    buf: Vec<u8>,
    /// Start of the unconsumed part. Consuming only moves this offset, so handing out many
    /// pipelined lines from one read does not shift the buffer once per line.
    start: usize,
    /// Where the next search for CR/LF resumes: everything in `start..scan` is known to hold
    /// neither, so a line arriving byte by byte is scanned once, not once per byte.
    scan: usize,
    /// Inside an over-long line: its bytes are dropped as they arrive, until its line ending.
    discarding: bool,
}

impl LineBuffer {
    /// `max_line` counts the CRLF, as RFC 5321 does (512 for commands).
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line,
            buf: Vec::new(),
            start: 0,
            scan: 0,
            discarding: false,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// The next event, or `None` when more bytes are needed.
    pub fn next_event(&mut self) -> Option<LineEvent> {
        let Some(found) = memchr::memchr2(CR, LF, &self.buf[self.scan..]) else {
            self.scan = self.buf.len();
            self.check_overflow(self.buf.len());
            return None;
        };
        let at = self.scan + found;
        if self.buf[at] == LF {
            // A CR before it would have been found first, so this LF is bare.
            return Some(self.bare_ending(at));
        }
        match self.buf.get(at + 1) {
            None => {
                // A CR at the very end: its LF may be in the next read.
                self.scan = at;
                self.check_overflow(at);
                None
            }
            Some(&LF) => Some(self.complete_line(at)),
            Some(_) => Some(self.bare_ending(at)),
        }
    }

    /// Bytes received but not yet returned as a line. After STARTTLS this must be zero, or the
    /// client pipelined plaintext behind STARTTLS (RFC 3207 §6: discard it).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Drops everything buffered (STARTTLS, and the switch into DATA).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.scan = 0;
        self.discarding = false;
    }

    /// Takes the raw buffered bytes out (to hand them to the DATA receiver).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        let rest = self.buf.split_off(self.start);
        self.clear();
        rest
    }

    /// Hands out the line ending with the CRLF whose CR is at `cr`.
    fn complete_line(&mut self, cr: usize) -> LineEvent {
        let too_long = self.discarding || cr - self.start + 2 > self.max_line;
        let event = if too_long {
            LineEvent::TooLong
        } else {
            LineEvent::Line(self.buf[self.start..cr].to_vec())
        };
        self.consume_through(cr + 1);
        event
    }

    fn bare_ending(&mut self, at: usize) -> LineEvent {
        self.consume_through(at);
        LineEvent::BareLineEnding
    }

    fn consume_through(&mut self, last: usize) {
        self.start = last + 1;
        self.scan = self.start;
        self.discarding = false;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            self.scan = 0;
        }
    }

    /// `end` is where the line's content ends at the latest (so far). Once the line cannot fit
    /// any more, its bytes are dropped instead of kept: a client sending an endless line must
    /// not make us buffer it.
    fn check_overflow(&mut self, end: usize) {
        if !self.discarding && (end - self.start).saturating_add(2) > self.max_line {
            self.discarding = true;
        }
        if self.discarding {
            self.buf.drain(self.start..end);
            self.scan = self.start;
        }
    }

    /// Moves the unconsumed bytes to the front, so the buffer holds at most one read's worth of
    /// already handed-out bytes.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scan -= self.start;
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(max: usize, input: &[u8]) -> Vec<LineEvent> {
        let mut lb = LineBuffer::new(max);
        lb.extend(input);
        std::iter::from_fn(|| lb.next_event()).collect()
    }

    #[test]
    fn cr_at_end_waits_for_more() {
        let mut lb = LineBuffer::new(512);
        lb.extend(b"NOOP\r");
        assert_eq!(lb.next_event(), None);
        assert_eq!(lb.buffered(), 5);
        lb.extend(b"\n");
        assert_eq!(lb.next_event(), Some(LineEvent::Line(b"NOOP".to_vec())));
        assert_eq!(lb.buffered(), 0);
    }

    #[test]
    fn discarding_keeps_memory_bounded() {
        let mut lb = LineBuffer::new(16);
        for _ in 0..1000 {
            lb.extend(&[b'x'; 1024]);
            assert_eq!(lb.next_event(), None);
            assert!(lb.buf.len() <= 1024, "buffer grew to {}", lb.buf.len());
        }
        lb.extend(b"\r\nQUIT\r\n");
        assert_eq!(lb.next_event(), Some(LineEvent::TooLong));
        assert_eq!(lb.next_event(), Some(LineEvent::Line(b"QUIT".to_vec())));
    }

    #[test]
    fn exact_limit_counts_the_crlf() {
        assert_eq!(events(6, b"abcd\r\n"), [LineEvent::Line(b"abcd".to_vec())]);
        assert_eq!(events(6, b"abcde\r\n"), [LineEvent::TooLong]);
    }
}

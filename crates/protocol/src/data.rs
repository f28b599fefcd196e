//! The DATA receiver (RFC 5321 §4.1.4, §4.5.2).
//!
//! Feeds on raw bytes after `354`, writes the dot-unstuffed message to a sink, and ends only on
//! `CRLF.CRLF`. A bare CR or bare LF anywhere in the content is fatal: the server must not guess
//! where a message ends differently from the next hop (SMTP smuggling). Size, line-length and NUL
//! violations are not fatal to framing: the receiver keeps reading to the real end so the session
//! stays in sync — but it reports them the moment they happen ([`DataStatus::Refused`]), so the
//! session can answer at once instead of after a message it will throw away.
//!
//! Lines may be up to [`MAX_ACCEPTED_TEXT_LINE`] octets, more than RFC 5321's 1000: relayward
//! takes what other MTAs take and folds or wraps it on the way out ([`crate::wrap`]).

use std::borrow::Cow;

use crate::limits::MAX_ACCEPTED_TEXT_LINE;

const CR: u8 = b'\r';
const LF: u8 = b'\n';

/// Why a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// Fatal: a CR not followed by LF. The session answers and closes the connection.
    #[error("bare CR in message content")]
    BareCr,
    /// Fatal: an LF not preceded by CR.
    #[error("bare LF in message content")]
    BareLf,
    /// Non-fatal: a line over [`MAX_ACCEPTED_TEXT_LINE`] octets; reported when it crosses the
    /// limit.
    #[error("line longer than 65536 octets")]
    LineTooLong,
    /// Non-fatal: more than the size limit (`552 5.3.4`); reported when it crosses the limit.
    #[error("message exceeds the size limit")]
    TooBig,
    /// Non-fatal: a NUL octet in the content; reported at the end of data. RFC 5322 has no
    /// place for NUL, and a next hop that strips it reads `CRLF NUL . CRLF` as the end of the
    /// message and whatever follows as a second message from us (SMTP smuggling by removal).
    #[error("NUL octet in message content")]
    Nul,
}

impl DataError {
    /// Whether the framing is lost and the connection must be closed.
    pub fn is_fatal(self) -> bool {
        matches!(self, DataError::BareCr | DataError::BareLf)
    }
}

/// Result of one [`DataReceiver::feed`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataStatus {
    /// All input consumed; more is needed.
    NeedMore,
    /// A limit was crossed just now, after `consumed` octets of this input: answer now. The
    /// message is lost; keep feeding the rest (from `consumed` on) until [`DataStatus::Done`],
    /// which repeats the error and needs no second reply. Reported once per message.
    Refused { consumed: usize, error: DataError },
    /// End of data seen after `consumed` octets of this input; the rest belongs to the next
    /// command (pipelining). `error` is a non-fatal violation found along the way.
    Done {
        consumed: usize,
        error: Option<DataError>,
    },
    /// A fatal violation: stop reading, answer, close.
    Fatal(DataError),
}

/// Where the receiver stands in the byte stream. Only the few bytes that decide framing are
/// remembered between calls, so input may be split anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (also the start of the message).
    LineStart,
    /// A `.` opened the line: either a stuffed dot or the start of `.CRLF`.
    Dot,
    /// `.CR` opened the line: only an LF may follow, and it ends the data.
    DotCr,
    /// Inside a line.
    Text,
    /// A CR inside (or opening) a line: only an LF may follow.
    Cr,
    /// `.CRLF` seen; further input belongs to the next command.
    Ended,
    /// Framing lost; nothing more is read.
    Failed(DataError),
}

/// Sans-I/O DATA receiver.
#[derive(Debug)]
pub struct DataReceiver {
    max_size: u64,
    state: State,
    /// Unstuffed octets of content so far, CRLFs included.
    size: u64,
    /// Unstuffed octets of the current line so far, CRLF excluded.
    line_len: usize,
    too_big: bool,
    line_too_long: bool,
    nul: bool,
    /// A limit crossing was already reported through [`DataStatus::Refused`].
    refused: bool,
}

impl DataReceiver {
    /// `max_size` is the unstuffed message size limit in octets.
    pub fn new(max_size: u64) -> Self {
        Self {
            max_size,
            state: State::LineStart,
            size: 0,
            line_len: 0,
            too_big: false,
            line_too_long: false,
            nul: false,
            refused: false,
        }
    }

    /// Feeds received bytes; unstuffed content (with its CRLFs, without the final `.CRLF`) is
    /// appended to `sink` until the size limit is passed.
    ///
    /// Once data has ended, further calls consume nothing and repeat `Done`; once a fatal error
    /// was seen, they repeat it.
    pub fn feed(&mut self, input: &[u8], sink: &mut Vec<u8>) -> DataStatus {
        let mut pos = 0;
        while pos < input.len() {
            match self.state {
                State::Ended => return self.done(pos),
                State::Failed(error) => return DataStatus::Fatal(error),
                State::Text => pos = self.text(input, pos, sink),
                _ => {
                    self.step(input[pos], sink);
                    pos += 1;
                }
            }
            if let Some(error) = self.newly_refused() {
                return DataStatus::Refused {
                    consumed: pos,
                    error,
                };
            }
        }
        match self.state {
            State::Ended => self.done(pos),
            State::Failed(error) => DataStatus::Fatal(error),
            _ => DataStatus::NeedMore,
        }
    }

    /// Unstuffed octets received so far (also past the size limit), for logs and replies.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn done(&self, consumed: usize) -> DataStatus {
        let error = if self.too_big {
            Some(DataError::TooBig)
        } else if self.nul {
            Some(DataError::Nul)
        } else {
            self.limit_error()
        };
        DataStatus::Done { consumed, error }
    }

    /// The crossed limit reported at once: too big wins over a long line. (A NUL is reported
    /// at the end of data.)
    fn limit_error(&self) -> Option<DataError> {
        if self.too_big {
            Some(DataError::TooBig)
        } else if self.line_too_long {
            Some(DataError::LineTooLong)
        } else {
            None
        }
    }

    /// The limit error, the first time it is asked for after a limit was crossed.
    fn newly_refused(&mut self) -> Option<DataError> {
        if self.refused {
            return None;
        }
        let error = self.limit_error()?;
        self.refused = true;
        Some(error)
    }

    /// Copies the run of ordinary bytes starting at `pos` in one go; returns where it stopped.
    fn text(&mut self, input: &[u8], pos: usize, sink: &mut Vec<u8>) -> usize {
        let rest = &input[pos..];
        let run = memchr::memchr2(CR, LF, rest).unwrap_or(rest.len());
        // Stop exactly where a limit is crossed, so the refusal is reported at the same octet
        // however the input was split.
        if let Some(room) = self.room_before_limit()
            && room < run
        {
            self.append(&rest[..room], sink);
            self.line_len = self.line_len.saturating_add(room);
            self.check_line_length();
            return pos + room;
        }
        self.append(&rest[..run], sink);
        self.line_len = self.line_len.saturating_add(run);
        self.check_line_length();
        if let Some(&byte) = rest.get(run) {
            self.step(byte, sink);
            return pos + run + 1;
        }
        pos + run
    }

    /// Advances the state machine by one byte.
    fn step(&mut self, byte: u8, sink: &mut Vec<u8>) {
        self.state = match (self.state, byte) {
            (State::Cr, LF) => {
                self.end_line(sink);
                State::LineStart
            }
            (State::DotCr, LF) => State::Ended,
            (State::Cr | State::DotCr, _) => State::Failed(DataError::BareCr),
            (_, LF) => State::Failed(DataError::BareLf),
            (State::LineStart, b'.') => State::Dot,
            (State::Dot, CR) => State::DotCr,
            (_, CR) => State::Cr,
            (_, other) => {
                // Covers the stuffed dot too: the `.` that led to `Dot` is dropped here.
                self.append(&[other], sink);
                self.line_len += 1;
                self.check_line_length();
                State::Text
            }
        };
    }

    fn end_line(&mut self, sink: &mut Vec<u8>) {
        self.line_len = 0;
        self.append(b"\r\n", sink);
    }

    /// How many more content octets cross the first limit (size or line length), while no
    /// refusal has been reported yet.
    fn room_before_limit(&self) -> Option<usize> {
        if self.refused {
            return None;
        }
        let size_room = self.max_size.saturating_sub(self.size).saturating_add(1);
        let size_room = usize::try_from(size_room).unwrap_or(usize::MAX);
        let line_room = (MAX_ACCEPTED_TEXT_LINE - 2)
            .saturating_sub(self.line_len)
            .saturating_add(1);
        Some(size_room.min(line_room))
    }

    /// Flags the current line once it cannot end within the limit (its CRLF counts): known as
    /// soon as the octet past the limit arrives, not when the line ends.
    fn check_line_length(&mut self) {
        if self.line_len.saturating_add(2) > MAX_ACCEPTED_TEXT_LINE {
            self.line_too_long = true;
        }
    }

    /// Counts content and writes it to the sink while the message is still wanted (within its
    /// size limit, no over-long line).
    fn append(&mut self, bytes: &[u8], sink: &mut Vec<u8>) {
        if !self.nul && memchr::memchr(0, bytes).is_some() {
            self.nul = true;
        }
        self.size = self.size.saturating_add(bytes.len() as u64);
        if self.size > self.max_size {
            self.too_big = true;
        }
        if !self.too_big && !self.line_too_long {
            sink.extend_from_slice(bytes);
        }
    }
}

/// Frames a message for sending after `354`: doubles each dot that opens a line, writes
/// every line end as CRLF, ends the content with CRLF if it does not already, and appends the
/// terminating `.CRLF`.
///
/// Whatever the input, the output is valid SMTP framing: a bare LF or bare CR becomes CRLF
/// (so no next hop can read a different end of data than we meant: SMTP smuggling), and a
/// dot after any of them is stuffed. Content received through [`DataReceiver`] holds no bare
/// line ends, so for it this only stuffs dots.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    write_lines(message, &mut out, true);
    out.extend_from_slice(b".\r\n");
    out
}

/// The octets of a message as a `BDAT` chunk (RFC 3030) carries them: every line end written
/// as CRLF and a final CRLF, as [`dot_stuff`] writes them, but no dot doubled and no end
/// marker (a chunk's length ends it). Borrows the message when it is already so, which is
/// every message the session received and every report relayward writes.
pub fn crlf_line_ends(message: &[u8]) -> Cow<'_, [u8]> {
    if has_only_crlf_line_ends(message) {
        return Cow::Borrowed(message);
    }
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 2);
    write_lines(message, &mut out, false);
    Cow::Owned(out)
}

/// Every CR and LF is part of a CRLF, and the message is empty or ends with one.
fn has_only_crlf_line_ends(message: &[u8]) -> bool {
    let mut from = 0;
    while let Some(i) = memchr::memchr2(CR, LF, &message[from..]) {
        let at = from + i;
        if message[at] != CR || message.get(at + 1) != Some(&LF) {
            return false;
        }
        from = at + 2;
    }
    message.is_empty() || message.ends_with(b"\r\n")
}

/// Writes `message` to `out` with CRLF line ends (a bare CR or bare LF each ends one line)
/// and a final CRLF; with `stuff_dots`, a dot that opens a line is doubled.
fn write_lines(message: &[u8], out: &mut Vec<u8>, stuff_dots: bool) {
    let mut rest = message;
    loop {
        if stuff_dots && rest.first() == Some(&b'.') {
            out.push(b'.');
        }
        let Some(end) = memchr::memchr2(CR, LF, rest) else {
            out.extend_from_slice(rest);
            break;
        };
        out.extend_from_slice(&rest[..end]);
        out.extend_from_slice(b"\r\n");
        // CRLF, bare CR and bare LF each end one line.
        let width = if rest[end] == CR && rest.get(end + 1) == Some(&LF) {
            2
        } else {
            1
        };
        rest = &rest[end + width..];
        if rest.is_empty() {
            break;
        }
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffing_doubles_leading_dots_only() {
        assert_eq!(dot_stuff(b""), b".\r\n");
        assert_eq!(dot_stuff(b"a.b\r\n.\r\n..x"), b"a.b\r\n..\r\n...x\r\n.\r\n");
    }

    #[test]
    fn bare_line_ends_become_crlf_and_their_dots_are_stuffed() {
        assert_eq!(dot_stuff(b".\nx"), b"..\r\nx\r\n.\r\n");
        assert_eq!(dot_stuff(b"x\r"), b"x\r\n.\r\n");
        assert_eq!(dot_stuff(b"a\n.\nb"), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(dot_stuff(b"a\r.\r\nb"), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(dot_stuff(b"\r\n"), b"\r\n.\r\n");
    }

    #[test]
    fn size_counts_past_the_limit() {
        let mut rx = DataReceiver::new(4);
        let mut sink = Vec::new();
        let input = b"abcdefgh\r\n.\r\n";
        let status = rx.feed(input, &mut sink);
        assert_eq!(
            status,
            DataStatus::Refused {
                consumed: 5,
                error: DataError::TooBig
            }
        );
        assert_eq!(
            rx.feed(&input[5..], &mut sink),
            DataStatus::Done {
                consumed: 8,
                error: Some(DataError::TooBig)
            }
        );
        assert_eq!(rx.size(), 10);
        assert!(sink.len() <= 4, "sink holds {} octets", sink.len());
    }
}

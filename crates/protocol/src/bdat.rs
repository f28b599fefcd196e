//! The BDAT receiver (RFC 3030 CHUNKING).
//!
//! `BDAT <size> [LAST]` is followed by exactly `size` octets of content, no dot-stuffing and no
//! terminator: the size is the framing. The session announces each chunk with
//! [`BdatReceiver::start_chunk`] and feeds received bytes; the receiver takes exactly the
//! announced octets and hands back the rest, which belongs to the next command.
//!
//! The same rules as DATA ([`crate::data`]) apply to the content, so that whatever arrives by
//! BDAT can be relayed by DATA (or the other way) without any next hop reading it differently:
//! a bare CR or bare LF is fatal (SMTP smuggling), lines may be up to
//! [`MAX_ACCEPTED_TEXT_LINE`] octets, the message up to its size limit, and a crossed limit is
//! reported the moment it is crossed, and a NUL octet refuses the message at `LAST` (a next hop
//! that strips NUL could read `CRLF NUL . CRLF` as an end of data). A CR at the end of one
//! chunk may be followed by its LF at the start of the next. BINARYMIME is not offered, so
//! binary content is not allowed either.
//!
//! A chunk announced larger than what the message may still hold is refused before any octet
//! is read ([`BdatReceiver::start_chunk`]): the session answers and closes, since skipping
//! gigabytes a client announced only to refuse them would be the attacker's win.

use crate::data::DataError;
use crate::limits::MAX_ACCEPTED_TEXT_LINE;

const CR: u8 = b'\r';
const LF: u8 = b'\n';

/// Result of one [`BdatReceiver::feed`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkStatus {
    /// All input consumed; the chunk needs more octets.
    NeedMore,
    /// A limit was crossed just now, after `consumed` octets of this input: answer now, keep
    /// feeding the rest of the chunk, which is discarded. Reported once per message.
    Refused { consumed: usize, error: DataError },
    /// The chunk is complete after `consumed` octets of this input; the rest is the next
    /// command. `error` repeats a refusal reported earlier in this message.
    ChunkDone {
        consumed: usize,
        error: Option<DataError>,
    },
    /// A bare CR or LF: answer, close.
    Fatal(DataError),
}

/// Sans-I/O receiver for the chunks of one message.
#[derive(Debug)]
pub struct BdatReceiver {
    max_size: u64,
    /// Content octets received so far, all chunks.
    size: u64,
    /// Octets still expected in the current chunk.
    remaining: u64,
    last: bool,
    /// The previous octet was a CR (possibly at the end of the previous chunk).
    after_cr: bool,
    line_len: usize,
    error: Option<DataError>,
    refused: bool,
    fatal: Option<DataError>,
    /// A NUL octet was seen: the message is refused at `LAST`.
    nul: bool,
}

impl BdatReceiver {
    /// `max_size` is the message size limit in octets.
    pub fn new(max_size: u64) -> Self {
        Self {
            max_size,
            size: 0,
            remaining: 0,
            last: false,
            after_cr: false,
            line_len: 0,
            error: None,
            refused: false,
            fatal: None,
            nul: false,
        }
    }

    /// Announces the next chunk. `Err(TooBig)` when it cannot fit in the message: nothing of
    /// it may be read as commands, and nothing is worth reading, so the session closes.
    pub fn start_chunk(&mut self, size: u64, last: bool) -> Result<(), DataError> {
        if self.size.saturating_add(size) > self.max_size {
            return Err(DataError::TooBig);
        }
        self.remaining = size;
        self.last = last;
        Ok(())
    }

    /// Octets still expected in the current chunk.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Whether the current chunk was announced `LAST`.
    pub fn is_last(&self) -> bool {
        self.last
    }

    /// Content octets received so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The error that refuses this message, if any (repeated at every chunk end).
    pub fn error(&self) -> Option<DataError> {
        self.error
    }

    /// Takes up to the rest of the current chunk from `input`, appending content to `sink`
    /// while the message is still wanted.
    pub fn feed(&mut self, input: &[u8], sink: &mut Vec<u8>) -> ChunkStatus {
        if let Some(error) = self.fatal {
            return ChunkStatus::Fatal(error);
        }
        let take = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(input.len());
        let mut pos = 0;
        while pos < take {
            let room = self.room_before_limit();
            let end = take.min(pos.saturating_add(room));
            match self.scan(&input[pos..end], sink) {
                Ok(n) => pos += n,
                Err(error) => {
                    self.fatal = Some(error);
                    return ChunkStatus::Fatal(error);
                }
            }
            if !self.refused
                && let Some(error) = self.error
            {
                self.refused = true;
                self.remaining -= pos as u64;
                return ChunkStatus::Refused {
                    consumed: pos,
                    error,
                };
            }
        }
        self.remaining -= take as u64;
        if self.remaining > 0 {
            return ChunkStatus::NeedMore;
        }
        if self.last {
            if self.after_cr {
                self.fatal = Some(DataError::BareCr);
                return ChunkStatus::Fatal(DataError::BareCr);
            }
            if self.nul && self.error.is_none() {
                self.error = Some(DataError::Nul);
            }
            self.finish_message(sink);
        }
        ChunkStatus::ChunkDone {
            consumed: take,
            error: self.error,
        }
    }

    /// Checks line ends and lengths over `bytes` (all inside the chunk and before the next
    /// limit); returns how many were taken.
    fn scan(&mut self, bytes: &[u8], sink: &mut Vec<u8>) -> Result<usize, DataError> {
        for (i, &byte) in bytes.iter().enumerate() {
            self.nul |= byte == 0;
            match (self.after_cr, byte) {
                (true, LF) => {
                    self.after_cr = false;
                    self.line_len = 0;
                }
                (true, _) => return Err(DataError::BareCr),
                (false, LF) => return Err(DataError::BareLf),
                (false, CR) => self.after_cr = true,
                (false, _) => {
                    self.line_len += 1;
                    if self.line_len.saturating_add(2) > MAX_ACCEPTED_TEXT_LINE {
                        self.error.get_or_insert(DataError::LineTooLong);
                    }
                }
            }
            self.size += 1;
            if self.size > self.max_size {
                self.error = Some(DataError::TooBig);
            }
            if self.error.is_some() {
                return Ok(i + 1);
            }
            sink.push(byte);
        }
        Ok(bytes.len())
    }

    /// How many more octets may be scanned before the next limit could be crossed (at least
    /// one), so a refusal lands on the same octet however the input is split.
    fn room_before_limit(&self) -> usize {
        if self.error.is_some() {
            return usize::MAX;
        }
        let size_room = self.max_size.saturating_sub(self.size).saturating_add(1);
        let line_room = (MAX_ACCEPTED_TEXT_LINE - 2)
            .saturating_sub(self.line_len)
            .saturating_add(1);
        usize::try_from(size_room)
            .unwrap_or(usize::MAX)
            .min(line_room)
            .max(1)
    }

    /// After the `LAST` chunk: a message whose last line has no CRLF gets one (as Postfix
    /// does), so it can be relayed by DATA unchanged. Decided from what was received, not
    /// from `sink`, which the session empties into the queue as the message arrives.
    fn finish_message(&mut self, sink: &mut Vec<u8>) {
        // Every octet went to the sink (no error), and a line is open: it lacks its CRLF.
        if self.error.is_none() && self.line_len > 0 {
            sink.extend_from_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cr_may_end_one_chunk_and_its_lf_start_the_next() {
        let mut rx = BdatReceiver::new(100);
        let mut sink = Vec::new();
        rx.start_chunk(3, false).unwrap();
        assert_eq!(
            rx.feed(b"ab\rBDAT", &mut sink),
            ChunkStatus::ChunkDone {
                consumed: 3,
                error: None
            }
        );
        rx.start_chunk(3, true).unwrap();
        assert_eq!(
            rx.feed(b"\ncd", &mut sink),
            ChunkStatus::ChunkDone {
                consumed: 3,
                error: None
            }
        );
        assert_eq!(sink, b"ab\r\ncd\r\n");
    }

    /// The session empties the sink into the queue while the message arrives: the final CRLF
    /// is still added exactly when the message lacks one.
    #[test]
    fn the_final_crlf_does_not_depend_on_what_the_sink_still_holds() {
        for (chunks, expected) in [
            (&[&b"ab\r\n"[..], b"cd"][..], &b"ab\r\ncd\r\n"[..]),
            (&[&b"ab\r\n"[..], b"cd\r\n"][..], b"ab\r\ncd\r\n"),
            (&[&b"ab\r"[..], b"\n"][..], b"ab\r\n"),
            (&[&b"ab"[..], b""][..], b"ab\r\n"),
            (&[&b"ab\r\n"[..], b""][..], b"ab\r\n"),
            (&[&b""[..]][..], b""),
        ] {
            let mut rx = BdatReceiver::new(100);
            let mut delivered = Vec::new();
            for (i, chunk) in chunks.iter().enumerate() {
                let mut sink = Vec::new();
                rx.start_chunk(chunk.len() as u64, i + 1 == chunks.len())
                    .unwrap();
                let status = rx.feed(chunk, &mut sink);
                assert!(matches!(status, ChunkStatus::ChunkDone { error: None, .. }));
                delivered.extend_from_slice(&sink);
            }
            assert_eq!(delivered, expected, "{chunks:?}");
        }
    }

    #[test]
    fn a_message_ending_in_a_cr_is_a_bare_cr() {
        let mut rx = BdatReceiver::new(100);
        let mut sink = Vec::new();
        rx.start_chunk(3, true).unwrap();
        assert_eq!(
            rx.feed(b"ab\r", &mut sink),
            ChunkStatus::Fatal(DataError::BareCr)
        );
    }
}

//! The DATA receiver (RFC 5321 §4.1.4, §4.5.2).
//!
//! Feeds on raw bytes after `354`, writes the dot-unstuffed message to a sink, and ends only on
//! `CRLF.CRLF`. A bare CR or bare LF anywhere in the content is fatal: the server must not guess
//! where a message ends differently from the next hop (SMTP smuggling). Size and line-length
//! violations are not fatal to framing: the receiver keeps reading to the real end so the session
//! can answer and stay in sync.

/// Why a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// Fatal: a CR not followed by LF. The session answers and closes the connection.
    #[error("bare CR in message content")]
    BareCr,
    /// Fatal: an LF not preceded by CR.
    #[error("bare LF in message content")]
    BareLf,
    /// Non-fatal: a line over 1000 octets; reported at the end of data.
    #[error("line longer than 1000 octets")]
    LineTooLong,
    /// Non-fatal: more than the size limit; reported at the end of data (`552 5.3.4`).
    #[error("message exceeds the size limit")]
    TooBig,
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
    /// End of data seen after `consumed` octets of this input; the rest belongs to the next
    /// command (pipelining). `error` is a non-fatal violation found along the way.
    Done { consumed: usize, error: Option<DataError> },
    /// A fatal violation: stop reading, answer, close.
    Fatal(DataError),
}

/// Sans-I/O DATA receiver.
#[derive(Debug)]
pub struct DataReceiver {
    max_size: u64,
    // fields are the helper's
}

impl DataReceiver {
    /// `max_size` is the unstuffed message size limit in octets.
    pub fn new(max_size: u64) -> Self {
        Self { max_size }
    }

    /// Feeds received bytes; unstuffed content (with its CRLFs, without the final `.CRLF`) is
    /// appended to `sink` until the size limit is passed.
    pub fn feed(&mut self, input: &[u8], sink: &mut Vec<u8>) -> DataStatus {
        let _ = (input, sink, self.max_size);
        todo!("command helper")
    }
}

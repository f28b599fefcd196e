//! The format of a queue entry and the pure rules for changing its state.
//!
//! `msg/<id>.eml` is written once: the line `relayward-queue-v1 <state JSON>\n` (the JSON also
//! holds `content_crc32`, see [`encode_open_header`]), then the content.
//! Carrying the initial state in the content file makes an enqueue one file, one flush and
//! one rename. `msg/<id>.json` (the state JSON alone) appears at the first state change and from
//! then on supersedes the header. Compact JSON never contains a raw newline, so the first `\n`
//! ends the header.

use std::io::{self, BufRead, BufReader, Read};

use crate::{MessageId, QueueError, QueuedMessage, RecipientUpdate};

/// Marks (and versions) a message file.
const MAGIC: &[u8] = b"relayward-queue-v1 ";
/// Largest header accepted: 10,000 recipients with long errors fit; a runaway file does not.
const MAX_HEADER: u64 = 16 * 1024 * 1024;

/// What a state change decided.
pub(super) enum Change {
    Keep,
    Write,
    Remove,
}

/// The header line of a message file as versions before the checksum wrote it.
#[cfg(test)]
fn encode_header(state: &QueuedMessage) -> io::Result<Vec<u8>> {
    let mut header = MAGIC.to_vec();
    serde_json::to_writer(&mut header, state).map_err(io::Error::other)?;
    header.push(b'\n');
    Ok(header)
}

/// A number not known yet: `u64::MAX`, 20 digits, as wide as any value of the header's
/// placeholders can be.
const OPEN_VALUE: &[u8] = b"18446744073709551615";
/// Octets of a placeholder's digits in the header of a message written while it arrives.
pub(super) const SLOT_DIGITS: usize = 20;
/// The header key of the content's CRC-32. Files written before it existed have none: they
/// were flushed before their rename, so they cannot be torn.
const CHECKSUM_KEY: &str = "content_crc32";

/// Where the placeholders of an open header sit (offsets of their digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slots {
    pub(super) size: usize,
    pub(super) checksum: usize,
}

/// The header line of a message whose content is still arriving: its size and its content's
/// checksum are placeholders, whose offsets are returned with the header, to be overwritten in
/// place by [`slot_digits`] when the content is complete. JSON allows the blanks that pad a
/// shorter number, so the header keeps its length.
///
/// The checksum is what lets a commit rename the file into `msg/` *before* its one flush (see
/// the spool's "Enqueue and group commit"): a crash before that flush ends can leave a name whose
/// data never reached the disk, and reading it back finds the mismatch instead of delivering
/// zeros or another file's old blocks. (An older reader ignores the key.)
pub(super) fn encode_open_header(state: &QueuedMessage) -> io::Result<(Vec<u8>, Slots)> {
    let open = QueuedMessage {
        size: u64::MAX,
        ..state.clone()
    };
    let mut header = MAGIC.to_vec();
    serde_json::to_writer(&mut header, &open).map_err(io::Error::other)?;
    // A struct serialises as one JSON object: the checksum joins it before its brace.
    if header.pop() != Some(b'}') {
        return Err(io::Error::other("queue header is not a JSON object"));
    }
    let checksum = header.len() + CHECKSUM_KEY.len() + 4;
    header.extend_from_slice(format!(",\"{CHECKSUM_KEY}\":").as_bytes());
    header.extend_from_slice(OPEN_VALUE);
    header.extend_from_slice(b"}\n");
    // A quote inside a JSON string is escaped, so the key appears only as the size field;
    // counting the matches checks it all the same.
    let open_size = [b"\"size\":".as_slice(), OPEN_VALUE].concat();
    let mut found = header
        .windows(open_size.len())
        .enumerate()
        .filter(|(_, window)| *window == open_size.as_slice())
        .map(|(at, _)| at + open_size.len() - SLOT_DIGITS);
    match (found.next(), found.next()) {
        (Some(size), None) => Ok((header, Slots { size, checksum })),
        _ => Err(io::Error::other("queue header without a single size field")),
    }
}

/// The digits that replace a placeholder of [`encode_open_header`]: `value`, padded with
/// blanks.
pub(super) fn slot_digits(value: u64) -> [u8; SLOT_DIGITS] {
    let mut digits = [b' '; SLOT_DIGITS];
    let text = value.to_string();
    digits[..text.len()].copy_from_slice(text.as_bytes());
    digits
}

/// The CRC-32 a header records for its content.
pub(super) fn content_checksum(content: &[u8]) -> u64 {
    u64::from(crc32fast::hash(content))
}

/// Reads the header of a message file; returns the state and the header's length in octets.
pub(super) fn read_header(
    id: &MessageId,
    reader: impl Read,
) -> Result<(QueuedMessage, u64), QueueError> {
    let mut line = Vec::new();
    let mut limited = BufReader::new(reader.take(MAX_HEADER));
    limited
        .read_until(b'\n', &mut line)
        .map_err(crate::fsutil::queue_error)?;
    let Some(json) = line
        .strip_prefix(MAGIC)
        .and_then(|rest| rest.strip_suffix(b"\n"))
    else {
        return Err(corrupt(id, "message file has no valid header"));
    };
    let state = parse_state(id, json)?;
    Ok((state, line.len() as u64))
}

/// Removes the header from a whole message file, leaving the content, once it has the
/// recorded size and (in files that record one) the recorded checksum.
pub(super) fn strip_header(id: &MessageId, mut file: Vec<u8>) -> Result<Vec<u8>, QueueError> {
    let (state, header_len) = read_header(id, file.as_slice())?;
    let header_len = usize::try_from(header_len).map_err(|_| corrupt(id, "header too long"))?;
    let end = usize::try_from(state.size)
        .ok()
        .and_then(|size| header_len.checked_add(size))
        .filter(|&end| end <= file.len())
        .ok_or_else(|| corrupt(id, "content is shorter than the recorded size"))?;
    // A message written into a preallocated file may be followed by the rest of its zeros.
    if file[end..].iter().any(|&b| b != 0) {
        return Err(corrupt(id, "content is longer than the recorded size"));
    }
    file.truncate(end);
    let json = &file[MAGIC.len()..header_len - 1];
    if let Some(recorded) = recorded_checksum(id, json)?
        && recorded != content_checksum(&file[header_len..])
    {
        return Err(corrupt(
            id,
            "content does not match its checksum (a commit cut short by a crash, \
             never acknowledged, or damage on disk)",
        ));
    }
    file.drain(..header_len);
    Ok(file)
}

/// What a preallocated file (a slot) holds, as far as its header and content tell.
pub(super) enum SlotContent {
    /// Nothing, or a message whose size or checksum was never filled in: its commit never
    /// reached its flush, so nobody was told `250` for it.
    Unfinished,
    /// A whole message: header, and content of the recorded size matching its checksum.
    Complete(MessageId),
    /// Anything else (a finished header whose content does not match it): for a person.
    Damaged(String),
}

/// Reads a slot's bytes (see [`SlotContent`]).
pub(super) fn slot_content(file: Vec<u8>) -> SlotContent {
    #[derive(serde::Deserialize)]
    struct Header {
        id: MessageId,
        size: u64,
        content_crc32: Option<u64>,
    }
    let Some(end) = file.iter().position(|&b| b == b'\n') else {
        // Empty, or the header line itself was never completed.
        return SlotContent::Unfinished;
    };
    let Some(json) = file[..end].strip_prefix(MAGIC) else {
        return SlotContent::Damaged("no queue header".into());
    };
    let header: Header = match serde_json::from_slice(json) {
        Ok(header) => header,
        Err(e) => return SlotContent::Damaged(format!("header: {e}")),
    };
    if header.size == u64::MAX || header.content_crc32.is_none_or(|sum| sum == u64::MAX) {
        return SlotContent::Unfinished;
    }
    if !header.id.is_valid() {
        return SlotContent::Damaged("header names no valid id".into());
    }
    match strip_header(&header.id, file) {
        Ok(_) => SlotContent::Complete(header.id),
        Err(e) => SlotContent::Damaged(e.to_string()),
    }
}

/// The header's checksum field, if it has one.
fn recorded_checksum(id: &MessageId, json: &[u8]) -> Result<Option<u64>, QueueError> {
    #[derive(serde::Deserialize)]
    struct Checksum {
        content_crc32: Option<u64>,
    }
    serde_json::from_slice::<Checksum>(json)
        .map(|c| c.content_crc32)
        .map_err(|e| corrupt(id, &e.to_string()))
}

/// Parses state JSON and checks that it describes the message it is stored for.
pub(super) fn parse_state(id: &MessageId, json: &[u8]) -> Result<QueuedMessage, QueueError> {
    let state: QueuedMessage =
        serde_json::from_slice(json).map_err(|e| corrupt(id, &e.to_string()))?;
    if state.id != *id {
        return Err(corrupt(id, &format!("state names message {}", state.id)));
    }
    if state.recipients.is_empty() {
        return Err(corrupt(id, "no recipients"));
    }
    Ok(state)
}

fn corrupt(id: &MessageId, reason: &str) -> QueueError {
    QueueError::Corrupt {
        id: id.0.clone(),
        reason: reason.to_owned(),
    }
}

/// Applies attempt results ([`QueuedMessage::apply`]); a message whose recipients are all
/// final is removed.
pub(super) fn apply_updates(state: &mut QueuedMessage, updates: Vec<RecipientUpdate>) -> Change {
    if state.apply(updates) {
        Change::Remove
    } else {
        Change::Write
    }
}

/// Makes every pending recipient due at `now`.
pub(super) fn retry_all(state: &mut QueuedMessage, now: u64) -> Change {
    state
        .recipients
        .iter_mut()
        .filter(|r| !r.status.is_final())
        .for_each(|r| r.next_attempt = now);
    Change::Write
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NewMessage, NewRecipient, Route};
    use relayward_protocol::route::{NextHop, RouteClass};

    /// A recipient routed by MX to its domain (the queue stores routes; it does not judge them).
    fn by_mx(address: &str) -> NewRecipient {
        let domain = address.rsplit_once('@').map_or("", |(_, d)| d).to_owned();
        NewRecipient {
            address: address.to_owned(),
            route: Route {
                class: RouteClass::Remote,
                next_hop: NextHop::Mx { domain },
            },
        }
    }

    fn sample() -> (MessageId, NewMessage) {
        let id = MessageId("0123456789abcdef01234567".to_owned());
        let message = NewMessage {
            sender: "a@b.test".to_owned(),
            recipients: vec![by_mx("c@d.test")],
            content: b"Subject: x\r\n\r\nline\nwith newlines\r\n".to_vec(),
            client_ip: "192.0.2.1".to_owned(),
            auth_login: None,
            origin: crate::Origin::Trusted,
            esmtp: Default::default(),
        };
        (id, message)
    }

    #[test]
    fn header_round_trip() {
        let (id, message) = sample();
        let state = QueuedMessage::accepted(id.clone(), &message, 42);
        let mut file = encode_header(&state).unwrap();
        let header_len = file.len() as u64;
        file.extend_from_slice(&message.content);
        let (parsed, len) = read_header(&id, file.as_slice()).unwrap();
        assert_eq!((parsed, len), (state, header_len));
        assert_eq!(strip_header(&id, file).unwrap(), message.content);
    }

    /// A header written before the size and checksum were known, both filled in afterwards,
    /// reads like one written whole.
    #[test]
    fn an_open_header_takes_its_size_and_checksum_in_place() {
        let (id, message) = sample();
        let state = QueuedMessage::accepted(id.clone(), &message, 42);
        let (file, header_len) = completed_file(&state, &message.content);
        let (parsed, len) = read_header(&id, file.as_slice()).unwrap();
        assert_eq!((parsed, len), (state, header_len));
        assert_eq!(strip_header(&id, file).unwrap(), message.content);
        assert_eq!(&slot_digits(7)[..3], b"7  ");
        assert_eq!(slot_digits(u64::MAX).as_slice(), b"18446744073709551615");
    }

    /// An open header completed as the spool does, followed by `content`.
    fn completed_file(state: &QueuedMessage, content: &[u8]) -> (Vec<u8>, u64) {
        let (mut file, slots) = encode_open_header(state).unwrap();
        let header_len = file.len() as u64;
        file[slots.size..slots.size + SLOT_DIGITS].copy_from_slice(&slot_digits(state.size));
        file[slots.checksum..slots.checksum + SLOT_DIGITS]
            .copy_from_slice(&slot_digits(content_checksum(content)));
        file.extend_from_slice(content);
        (file, header_len)
    }

    /// What a crash during the one flush of a commit can leave: the name and the header on
    /// disk, the content's blocks not (zeros, or another file's old data), or the checksum's
    /// in-place write lost. None of it reads as content.
    #[test]
    fn content_that_does_not_match_its_checksum_is_corrupt() {
        let (id, message) = sample();
        let state = QueuedMessage::accepted(id.clone(), &message, 42);
        let (file, header_len) = completed_file(&state, &message.content);
        let header_len = header_len as usize;
        let mut zeroed = file.clone();
        zeroed[header_len..].fill(0);
        let mut stale = file.clone();
        stale[header_len + 3] ^= 0x20;
        let (mut unfilled, slots) = encode_open_header(&state).unwrap();
        unfilled[slots.size..slots.size + SLOT_DIGITS].copy_from_slice(&slot_digits(state.size));
        unfilled.extend_from_slice(&message.content);
        for bytes in [zeroed, stale, unfilled] {
            let result = strip_header(&id, bytes);
            assert!(
                matches!(&result, Err(QueueError::Corrupt { reason, .. }) if reason.contains("checksum")),
                "{result:?}"
            );
        }
    }

    /// A message written into a preallocated file is followed by the rest of its zeros: the
    /// header's size says where the content ends, and anything but zeros after it is damage.
    #[test]
    fn zeros_after_the_content_are_a_slot_padding_anything_else_is_corrupt() {
        let (id, message) = sample();
        let state = QueuedMessage::accepted(id.clone(), &message, 42);
        let (file, _) = completed_file(&state, &message.content);
        let mut padded = file.clone();
        padded.resize(4096, 0);
        assert_eq!(strip_header(&id, padded.clone()).unwrap(), message.content);
        assert!(
            matches!(slot_content(padded.clone()), SlotContent::Complete(found) if found == id)
        );
        let mut trailing = padded;
        trailing[4000] = b'x';
        let result = strip_header(&id, trailing);
        assert!(
            matches!(&result, Err(QueueError::Corrupt { reason, .. }) if reason.contains("longer")),
            "{result:?}"
        );
        let result = strip_header(&id, file[..file.len() - 1].to_vec());
        assert!(
            matches!(&result, Err(QueueError::Corrupt { reason, .. }) if reason.contains("shorter")),
            "{result:?}"
        );
        // A slot that was never written, or whose header is cut short, is unfinished.
        assert!(matches!(
            slot_content(vec![0; 4096]),
            SlotContent::Unfinished
        ));
        let mut cut = vec![0; 4096];
        cut[..30].copy_from_slice(&file[..30]);
        assert!(matches!(slot_content(cut), SlotContent::Unfinished));
    }

    /// Files written before the checksum existed (flushed before their rename) still read.
    #[test]
    fn a_header_without_a_checksum_still_reads() {
        let (id, message) = sample();
        let state = QueuedMessage::accepted(id.clone(), &message, 42);
        let mut file = encode_header(&state).unwrap();
        file.extend_from_slice(&message.content);
        assert_eq!(strip_header(&id, file).unwrap(), message.content);
    }

    /// Spool files written before the origin was recorded still parse, as strangers' mail
    /// (the cautious reading: their bounces are small).
    #[test]
    fn entries_without_an_origin_are_strangers() {
        let (id, message) = sample();
        let mut json =
            serde_json::to_value(QueuedMessage::accepted(id.clone(), &message, 7)).unwrap();
        json.as_object_mut().unwrap().remove("origin");
        let state = parse_state(&id, json.to_string().as_bytes()).unwrap();
        assert_eq!(state.origin, crate::Origin::Stranger);
    }

    #[test]
    fn damaged_files_are_corrupt_not_panics() {
        let (id, message) = sample();
        let mut file = encode_header(&QueuedMessage::accepted(id.clone(), &message, 1)).unwrap();
        file.extend_from_slice(&message.content);
        let other = MessageId("0123456789abcdef01234568".to_owned());
        let truncated = file[..file.len() - 3].to_vec();
        for (which, bytes) in [
            (&id, Vec::new()),
            (&id, b"relayward-queue-v1 {".to_vec()),
            (&id, b"garbage\n".to_vec()),
            (&id, file[..10].to_vec()),
            (&id, truncated),
            (&other, file.clone()),
        ] {
            let result = strip_header(which, bytes);
            assert!(
                matches!(result, Err(QueueError::Corrupt { .. })),
                "{result:?}"
            );
        }
    }
}

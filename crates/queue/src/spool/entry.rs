//! The format of a queue entry and the pure rules for changing its state.
//!
//! `msg/<id>.eml` is written once: the line `relayward-queue-v1 <state JSON>\n`, then the content.
//! Carrying the initial state in the content file makes an enqueue one file, one `fdatasync` and
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

/// The header line of a new message file.
pub(super) fn encode_header(state: &QueuedMessage) -> io::Result<Vec<u8>> {
    let mut header = MAGIC.to_vec();
    serde_json::to_writer(&mut header, state).map_err(io::Error::other)?;
    header.push(b'\n');
    Ok(header)
}

/// The JSON of a size not known yet: `u64::MAX`, 20 digits, as wide as any size can be.
const OPEN_SIZE: &[u8] = b"\"size\":18446744073709551615";
/// Octets of the size's digits in the header of a message written while it arrives.
pub(super) const SIZE_DIGITS: usize = 20;

/// The header line of a message whose content is still arriving: its size is a placeholder,
/// and the offset of the placeholder's digits is returned with the header, to be overwritten
/// in place by [`size_digits`] when the content is complete. JSON allows the blanks that pad
/// a shorter number, so the header keeps its length and the file stays one `fdatasync`.
pub(super) fn encode_open_header(state: &QueuedMessage) -> io::Result<(Vec<u8>, usize)> {
    let open = QueuedMessage {
        size: u64::MAX,
        ..state.clone()
    };
    let header = encode_header(&open)?;
    // A quote inside a JSON string is escaped, so the key appears only as the size field;
    // counting the matches checks it all the same.
    let mut found = header
        .windows(OPEN_SIZE.len())
        .enumerate()
        .filter(|(_, window)| *window == OPEN_SIZE)
        .map(|(at, _)| at + OPEN_SIZE.len() - SIZE_DIGITS);
    match (found.next(), found.next()) {
        (Some(at), None) => Ok((header, at)),
        _ => Err(io::Error::other("queue header without a single size field")),
    }
}

/// The digits that replace the placeholder of [`encode_open_header`]: `size`, padded with
/// blanks.
pub(super) fn size_digits(size: u64) -> [u8; SIZE_DIGITS] {
    let mut digits = [b' '; SIZE_DIGITS];
    let text = size.to_string();
    digits[..text.len()].copy_from_slice(text.as_bytes());
    digits
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

/// Removes the header from a whole message file, leaving the content.
pub(super) fn strip_header(id: &MessageId, mut file: Vec<u8>) -> Result<Vec<u8>, QueueError> {
    let (state, header_len) = read_header(id, file.as_slice())?;
    let header_len = usize::try_from(header_len).map_err(|_| corrupt(id, "header too long"))?;
    if (file.len() - header_len) as u64 != state.size {
        return Err(corrupt(id, "content length differs from the recorded size"));
    }
    file.drain(..header_len);
    Ok(file)
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

    /// A header written before the size was known, its size filled in afterwards, reads
    /// like one written whole (older readers included: the format is unchanged).
    #[test]
    fn an_open_header_takes_its_size_in_place() {
        let (id, message) = sample();
        let state = QueuedMessage::accepted(id.clone(), &message, 42);
        let (mut file, slot) = encode_open_header(&state).unwrap();
        let header_len = file.len() as u64;
        file[slot..slot + SIZE_DIGITS].copy_from_slice(&size_digits(state.size));
        file.extend_from_slice(&message.content);
        let (parsed, len) = read_header(&id, file.as_slice()).unwrap();
        assert_eq!((parsed, len), (state, header_len));
        assert_eq!(strip_header(&id, file).unwrap(), message.content);
        assert_eq!(&size_digits(7)[..3], b"7  ");
        assert_eq!(size_digits(u64::MAX).as_slice(), b"18446744073709551615");
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

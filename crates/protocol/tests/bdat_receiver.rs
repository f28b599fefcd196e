//! The BDAT receiver (RFC 3030): exact chunk framing, and the DATA rules for the content —
//! fed whole, split at every byte, and one byte at a time.

use relayward_protocol::bdat::{BdatReceiver, ChunkStatus};
use relayward_protocol::data::DataError;
use relayward_protocol::limits::MAX_ACCEPTED_TEXT_LINE;

/// What receiving `chunks` (each `(content, last)`) followed by `after` came to: the event of
/// every chunk, in order, with `Refused` positions counted from the start of its chunk, the
/// message and the bytes left over for the command reader.
#[derive(Debug, PartialEq, Eq)]
struct Received {
    events: Vec<String>,
    message: Vec<u8>,
    left_over: Vec<u8>,
}

/// Feeds the wire (each chunk's bytes then `after`) cut into pieces of at most `piece` octets.
fn receive(max_size: u64, chunks: &[(&[u8], bool)], after: &[u8], piece: usize) -> Received {
    let mut rx = BdatReceiver::new(max_size);
    let mut message = Vec::new();
    let mut events = Vec::new();
    let mut wire: Vec<u8> = chunks.iter().flat_map(|(c, _)| c.iter().copied()).collect();
    wire.extend_from_slice(after);
    let mut pos: usize = 0;
    'chunks: for (content, last) in chunks {
        if let Err(error) = rx.start_chunk(content.len() as u64, *last) {
            events.push(format!("start {error:?}"));
            break;
        }
        let chunk_start = pos;
        loop {
            let end = wire.len().min(pos.saturating_add(piece));
            match rx.feed(&wire[pos..end], &mut message) {
                ChunkStatus::NeedMore => pos = end,
                ChunkStatus::Refused { consumed, error } => {
                    pos += consumed;
                    events.push(format!("refused at {} {error:?}", pos - chunk_start));
                }
                ChunkStatus::ChunkDone { consumed, error } => {
                    pos += consumed;
                    events.push(format!("done {error:?}"));
                    break;
                }
                ChunkStatus::Fatal(error) => {
                    events.push(format!("fatal {error:?}"));
                    break 'chunks;
                }
            }
        }
    }
    Received {
        events,
        message,
        left_over: wire[pos..].to_vec(),
    }
}

/// The same outcome whole, in every piece size from 1 to 7, and at a large piece size.
fn outcome(max_size: u64, chunks: &[(&[u8], bool)], after: &[u8]) -> Received {
    let whole = receive(max_size, chunks, after, usize::MAX);
    for piece in 1..=7 {
        let split = receive(max_size, chunks, after, piece);
        assert_eq!(split.events, whole.events, "piece {piece}");
        if !whole.events.iter().any(|e| e.starts_with("fatal")) {
            assert_eq!(split, whole, "piece {piece}");
        }
    }
    whole
}

fn events(list: &[&str]) -> Vec<String> {
    list.iter().map(|e| e.to_string()).collect()
}

#[test]
fn the_announced_size_is_the_framing_and_the_rest_is_the_next_command() {
    let got = outcome(1000, &[(b"Subject: hi\r\n\r\nbody\r\n", true)], b"QUIT\r\n");
    assert_eq!(got.events, events(&["done None"]));
    assert_eq!(got.message, b"Subject: hi\r\n\r\nbody\r\n");
    assert_eq!(got.left_over, b"QUIT\r\n");
}

#[test]
fn pipelined_chunks_join_into_one_message() {
    let got = outcome(
        1000,
        &[
            (b"Subject: a\r\n", false),
            (b"\r\nbo", false),
            (b"dy\r\n", true),
        ],
        b"",
    );
    assert_eq!(got.events, events(&["done None", "done None", "done None"]));
    assert_eq!(got.message, b"Subject: a\r\n\r\nbody\r\n");
}

#[test]
fn no_dot_unstuffing_and_no_terminator_inside_a_chunk() {
    // In BDAT, CRLF.CRLF is content: a DATA terminator smuggled into a chunk ends nothing.
    let content: &[u8] = b"a\r\n.\r\nMAIL FROM:<x@evil.test>\r\n..b\r\n";
    let got = outcome(1000, &[(content, true)], b"RSET\r\n");
    assert_eq!(got.events, events(&["done None"]));
    assert_eq!(got.message, content);
    assert_eq!(got.left_over, b"RSET\r\n");
}

#[test]
fn smuggling_vectors_are_fatal_as_in_data() {
    for content in [
        &b"a\n.\nb\r\n"[..],
        b"a\r.\rb\r\n",
        b"a\r\n.\nb\r\n",
        b"a\n.\r\nb\r\n",
        b"\n",
        b"a\rb",
    ] {
        let got = outcome(1000, &[(content, true)], b"");
        let fatal = got
            .events
            .last()
            .is_some_and(|e| e == "fatal BareLf" || e == "fatal BareCr");
        assert!(
            fatal,
            "{:?}: {:?}",
            content.escape_ascii().to_string(),
            got.events
        );
    }
}

#[test]
fn a_final_cr_without_lf_is_a_bare_cr_but_a_missing_crlf_is_added() {
    assert_eq!(
        outcome(1000, &[(b"a\r\nb\r", true)], b"").events,
        events(&["fatal BareCr"])
    );
    let got = outcome(1000, &[(b"a\r\nb", true)], b"");
    assert_eq!(got.events, events(&["done None"]));
    assert_eq!(got.message, b"a\r\nb\r\n");
}

#[test]
fn a_chunk_too_big_for_the_message_is_refused_before_it_is_read() {
    let got = outcome(10, &[(b"0123456", false), (b"789ab", true)], b"QUIT\r\n");
    assert_eq!(got.events, events(&["done None", "start TooBig"]));
    let mut rx = BdatReceiver::new(1 << 20);
    assert_eq!(rx.start_chunk(u64::MAX, true), Err(DataError::TooBig));
}

#[test]
fn an_over_long_line_is_refused_when_it_crosses_the_limit_and_the_chunk_is_still_read() {
    let long = vec![b'x'; MAX_ACCEPTED_TEXT_LINE + 100];
    let got = outcome(
        1 << 30,
        &[(&long, false), (b"\r\nmore\r\n", true)],
        b"QUIT\r\n",
    );
    assert_eq!(
        got.events,
        events(&[
            &format!("refused at {} LineTooLong", MAX_ACCEPTED_TEXT_LINE - 1),
            "done Some(LineTooLong)",
            "done Some(LineTooLong)",
        ])
    );
    assert_eq!(got.left_over, b"QUIT\r\n");
    assert!(got.message.len() < MAX_ACCEPTED_TEXT_LINE);
    let fits = [vec![b'x'; 1500], b"\r\n".to_vec()].concat();
    assert_eq!(
        outcome(1 << 20, &[(&fits, true)], b"").events,
        events(&["done None"])
    );
}

#[test]
fn the_empty_last_chunk_ends_the_message() {
    let got = outcome(100, &[(b"a\r\n", false), (b"", true)], b"NOOP\r\n");
    assert_eq!(got.events, events(&["done None", "done None"]));
    assert_eq!(got.message, b"a\r\n");
    assert_eq!(got.left_over, b"NOOP\r\n");
}

#[test]
fn a_nul_anywhere_refuses_the_message_at_last_as_in_data() {
    let got = outcome(
        100,
        &[(b"a\r\n\x00.\r\n", false), (b"b\r\n", true)],
        b"QUIT\r\n",
    );
    assert_eq!(got.events, events(&["done None", "done Some(Nul)"]));
    assert_eq!(got.left_over, b"QUIT\r\n");
}

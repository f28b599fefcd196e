//! The DATA receiver on well-formed and oversized input: unstuffing, pipelining, limits.

use relayward_protocol::data::{DataError, DataReceiver, DataStatus, crlf_line_ends, dot_stuff};
use relayward_protocol::limits::MAX_ACCEPTED_TEXT_LINE;

/// Feeds `input` as the session does (going on after a refusal) and returns the final status,
/// with `consumed` counted from the start of `input`, and the sink.
fn receive(max_size: u64, input: &[u8]) -> (DataStatus, Vec<u8>) {
    let mut rx = DataReceiver::new(max_size);
    let mut sink = Vec::new();
    let mut offset = 0;
    loop {
        match rx.feed(&input[offset..], &mut sink) {
            DataStatus::Refused { consumed, .. } => offset += consumed,
            DataStatus::Done { consumed, error } => {
                return (done(offset + consumed, error), sink);
            }
            other => return (other, sink),
        }
    }
}

fn done(consumed: usize, error: Option<DataError>) -> DataStatus {
    DataStatus::Done { consumed, error }
}

#[test]
fn a_lone_dot_line_is_the_empty_message() {
    assert_eq!(receive(100, b".\r\n"), (done(3, None), Vec::new()));
}

#[test]
fn message_keeps_crlf_and_drops_the_terminator() {
    let input = b"Subject: hi\r\n\r\nbody\r\n.\r\n";
    assert_eq!(
        receive(100, input),
        (
            done(input.len(), None),
            b"Subject: hi\r\n\r\nbody\r\n".to_vec()
        )
    );
}

#[test]
fn leading_dots_are_unstuffed_once() {
    let (status, sink) = receive(100, b"..\r\n...x\r\na.b\r\n.\r\n");
    assert_eq!(status, done(18, None));
    assert_eq!(sink, b".\r\n..x\r\na.b\r\n");
}

#[test]
fn pipelined_commands_after_the_end_are_left_unconsumed() {
    let input = b"hi\r\n.\r\nMAIL FROM:<a@b.test>\r\nQUIT\r\n";
    let (status, sink) = receive(100, input);
    assert_eq!(status, done(7, None));
    assert_eq!(sink, b"hi\r\n");
    // Bare line endings after the end are the next command's business, not DATA's.
    assert_eq!(receive(100, b".\r\n\nQUIT").0, done(3, None));
}

#[test]
fn a_finished_receiver_consumes_nothing_more() {
    let mut rx = DataReceiver::new(100);
    let mut sink = Vec::new();
    assert_eq!(rx.feed(b"x\r\n.\r\n", &mut sink), done(6, None));
    assert_eq!(rx.feed(b"QUIT\r\n", &mut sink), done(0, None));
    assert_eq!(sink, b"x\r\n");
}

#[test]
fn size_counts_unstuffed_octets_and_crlf() {
    // "..\r\n" unstuffs to ".\r\n": 3 octets.
    assert_eq!(receive(3, b"..\r\n.\r\n").0, done(7, None));
    assert_eq!(
        receive(2, b"..\r\n.\r\n").0,
        done(7, Some(DataError::TooBig))
    );
}

#[test]
fn too_big_keeps_reading_to_the_real_end_and_stops_filling_the_sink() {
    let mut input = Vec::new();
    for _ in 0..1000 {
        input.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
    }
    input.extend_from_slice(b".\r\nQUIT\r\n");
    let (status, sink) = receive(1000, &input);
    assert_eq!(status, done(input.len() - 6, Some(DataError::TooBig)));
    assert!(sink.len() <= 1000, "sink grew to {}", sink.len());
}

/// Feeds all of `input`, going on after a [`DataStatus::Refused`] as the session does; returns
/// every status seen.
fn receive_all(max_size: u64, input: &[u8]) -> Vec<DataStatus> {
    let mut rx = DataReceiver::new(max_size);
    let mut sink = Vec::new();
    let mut statuses = Vec::new();
    let mut rest = input;
    loop {
        let status = rx.feed(rest, &mut sink);
        statuses.push(status);
        match status {
            DataStatus::Refused { consumed, .. } => rest = &rest[consumed..],
            _ => return statuses,
        }
    }
}

#[test]
fn lines_longer_than_rfc_5321_allows_are_accepted_up_to_the_documented_limit() {
    let rfc_limit = [vec![b'a'; 998], b"\r\n.\r\n".to_vec()].concat();
    assert_eq!(receive(1 << 20, &rfc_limit).0, done(rfc_limit.len(), None));
    let longer = [vec![b'a'; 1500], b"\r\n.\r\n".to_vec()].concat();
    let (status, sink) = receive(1 << 20, &longer);
    assert_eq!(status, done(longer.len(), None));
    assert_eq!(sink.len(), 1502);
    let at_limit = [
        vec![b'a'; MAX_ACCEPTED_TEXT_LINE - 2],
        b"\r\n.\r\n".to_vec(),
    ]
    .concat();
    assert_eq!(receive(1 << 20, &at_limit).0, done(at_limit.len(), None));
}

#[test]
fn a_line_over_the_limit_is_reported_the_moment_it_crosses_it() {
    // The line never ends in this input: the refusal must not wait for its CRLF, nor for the
    // end of the data.
    let endless = vec![b'a'; MAX_ACCEPTED_TEXT_LINE + 5000];
    let statuses = receive_all(1 << 30, &endless);
    assert_eq!(
        statuses,
        [
            DataStatus::Refused {
                consumed: MAX_ACCEPTED_TEXT_LINE - 1,
                error: DataError::LineTooLong
            },
            DataStatus::NeedMore
        ]
    );
    assert!(!DataError::LineTooLong.is_fatal());
    // Fed on to its end, the message ends where it really ends, with the same error.
    let whole = [endless, b"\r\n.\r\nQUIT\r\n".to_vec()].concat();
    assert_eq!(receive_all(1 << 30, &whole).len(), 2);
    assert_eq!(
        receive(1 << 30, &whole).0,
        done(whole.len() - 6, Some(DataError::LineTooLong))
    );
}

#[test]
fn a_refused_message_leaves_nothing_in_the_sink_past_the_refusal() {
    let input = [
        vec![b'a'; MAX_ACCEPTED_TEXT_LINE + 10],
        b"\r\nmore\r\n.\r\n".to_vec(),
    ]
    .concat();
    let mut rx = DataReceiver::new(1 << 30);
    let mut sink = Vec::new();
    let DataStatus::Refused { consumed, .. } = rx.feed(&input, &mut sink) else {
        panic!("not refused");
    };
    let held = sink.len();
    assert!(matches!(
        rx.feed(&input[consumed..], &mut sink),
        DataStatus::Done { .. }
    ));
    assert_eq!(sink.len(), held, "content after the refusal was kept");
}

#[test]
fn the_stuffed_dot_does_not_count_towards_line_length() {
    let input = [
        b".".to_vec(),
        vec![b'.'; MAX_ACCEPTED_TEXT_LINE - 2],
        b"\r\n.\r\n".to_vec(),
    ]
    .concat();
    assert_eq!(receive(1 << 20, &input).0, done(input.len(), None));
}

#[test]
fn too_big_is_reported_at_once_and_wins_over_line_too_long() {
    let input = [
        vec![b'a'; MAX_ACCEPTED_TEXT_LINE + 10],
        b"\r\n.\r\n".to_vec(),
    ]
    .concat();
    let statuses = receive_all(100, &input);
    assert_eq!(
        statuses,
        [
            DataStatus::Refused {
                consumed: 101,
                error: DataError::TooBig
            },
            done(input.len() - 101, Some(DataError::TooBig))
        ]
    );
}

#[test]
fn too_big_wins_over_nul_and_nul_over_line_too_long() {
    let nul_and_long = [b"\0".to_vec(), vec![b'a'; 2000], b"\r\n.\r\n".to_vec()].concat();
    assert_eq!(
        receive(100, &nul_and_long).0,
        done(nul_and_long.len(), Some(DataError::TooBig))
    );
    assert_eq!(
        receive(1 << 20, &nul_and_long).0,
        done(nul_and_long.len(), Some(DataError::Nul))
    );
}

/// A BDAT chunk's octets: CRLF line ends and a final CRLF, dots left alone; a message that is
/// already so is not copied.
#[test]
fn crlf_line_ends_for_bdat_keep_dots_and_borrow_clean_messages() {
    let clean = b"Subject: x\r\n\r\n.\r\n..b\r\n";
    assert!(matches!(
        crlf_line_ends(clean),
        std::borrow::Cow::Borrowed(_)
    ));
    assert_eq!(&*crlf_line_ends(clean), clean);
    assert_eq!(&*crlf_line_ends(b""), b"");
    assert_eq!(&*crlf_line_ends(b"no newline"), b"no newline\r\n");
    assert_eq!(&*crlf_line_ends(b"a\nb\rc\r\n.d"), b"a\r\nb\r\nc\r\n.d\r\n");
    assert_eq!(&*crlf_line_ends(b"\r\r\n\n"), b"\r\n\r\n\r\n");
}

#[test]
fn dot_stuff_frames_what_the_receiver_unframes() {
    assert_eq!(dot_stuff(b""), b".\r\n");
    assert_eq!(dot_stuff(b".\r\n"), b"..\r\n.\r\n");
    assert_eq!(dot_stuff(b"no newline"), b"no newline\r\n.\r\n");
    let message = b"a\r\n.\r\n..b\r\n";
    let (status, sink) = receive(100, &dot_stuff(message));
    assert!(matches!(status, DataStatus::Done { error: None, .. }));
    assert_eq!(sink, message);
}

//! SMTP smuggling (issue 5): every end-of-data look-alike a lenient next hop might honour must be
//! fatal here, never an end of data — fed whole, split at every byte, and one byte at a time.

use relayward_protocol::data::{DataError, DataReceiver, DataStatus};

/// What a whole DATA exchange came to, independent of how the input was split.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Still waiting after all the input.
    NeedMore,
    /// Ended; `at` counts octets from the start of the input.
    Done {
        at: usize,
        error: Option<DataError>,
    },
    Fatal(DataError),
}

fn run(chunks: &[&[u8]]) -> (Outcome, Vec<u8>) {
    let mut rx = DataReceiver::new(1 << 20);
    let mut sink = Vec::new();
    let mut offset = 0;
    for chunk in chunks {
        let mut rest: &[u8] = chunk;
        let mut status = rx.feed(rest, &mut sink);
        // A limit crossing is answered at once; the rest of the input is still fed.
        while let DataStatus::Refused { consumed, .. } = status {
            offset += consumed;
            rest = &rest[consumed..];
            status = rx.feed(rest, &mut sink);
        }
        match status {
            DataStatus::NeedMore => offset += rest.len(),
            DataStatus::Refused { .. } => unreachable!("handled above"),
            DataStatus::Done { consumed, error } => {
                return (
                    Outcome::Done {
                        at: offset + consumed,
                        error,
                    },
                    sink,
                );
            }
            DataStatus::Fatal(error) => return (Outcome::Fatal(error), sink),
        }
    }
    (Outcome::NeedMore, sink)
}

/// Runs `input` whole, split in two at every position, and byte by byte; all must agree.
fn outcome(input: &[u8]) -> Outcome {
    let (whole, whole_sink) = run(&[input]);
    for split in 0..=input.len() {
        let (head, tail) = input.split_at(split);
        let (split_outcome, sink) = run(&[head, tail]);
        assert_eq!(
            split_outcome,
            whole,
            "split at {split} of {:?}",
            show(input)
        );
        if matches!(whole, Outcome::Done { .. }) {
            assert_eq!(sink, whole_sink, "split at {split} of {:?}", show(input));
        }
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(run(&bytes).0, whole, "byte by byte: {:?}", show(input));
    whole
}

fn show(input: &[u8]) -> String {
    input.escape_ascii().to_string()
}

/// The smuggled second message a vector tries to slip past the first one's end.
const SMUGGLED: &[u8] =
    b"MAIL FROM:<evil@outside.test>\r\nRCPT TO:<victim@other.test>\r\nDATA\r\nspoofed\r\n.\r\n";

fn vector(body: &[u8], fake_end: &[u8]) -> Vec<u8> {
    [body, fake_end, SMUGGLED].concat()
}

#[test]
fn lf_dot_lf_is_bare_lf() {
    assert_eq!(
        outcome(&vector(b"hello", b"\n.\n")),
        Outcome::Fatal(DataError::BareLf)
    );
}

#[test]
fn lf_dot_crlf_is_bare_lf() {
    assert_eq!(
        outcome(&vector(b"hello", b"\n.\r\n")),
        Outcome::Fatal(DataError::BareLf)
    );
}

#[test]
fn cr_dot_crlf_is_bare_cr() {
    assert_eq!(
        outcome(&vector(b"hello", b"\r.\r\n")),
        Outcome::Fatal(DataError::BareCr)
    );
}

#[test]
fn crlf_dot_cr_is_bare_cr() {
    assert_eq!(
        outcome(&vector(b"hello", b"\r\n.\r")),
        Outcome::Fatal(DataError::BareCr)
    );
}

#[test]
fn crlf_dot_lf_is_bare_lf() {
    assert_eq!(
        outcome(&vector(b"hello", b"\r\n.\n")),
        Outcome::Fatal(DataError::BareLf)
    );
}

#[test]
fn fake_ends_at_the_very_start_are_fatal_too() {
    assert_eq!(
        outcome(&vector(b"", b"\n.\r\n")),
        Outcome::Fatal(DataError::BareLf)
    );
    assert_eq!(
        outcome(&vector(b"", b".\n")),
        Outcome::Fatal(DataError::BareLf)
    );
    assert_eq!(
        outcome(&vector(b"", b".\rX")),
        Outcome::Fatal(DataError::BareCr)
    );
    assert_eq!(
        outcome(&vector(b"", b"\r.\r\n")),
        Outcome::Fatal(DataError::BareCr)
    );
}

#[test]
fn bare_cr_inside_a_line_is_fatal() {
    assert_eq!(outcome(b"a\rb\r\n.\r\n"), Outcome::Fatal(DataError::BareCr));
    assert_eq!(outcome(b"a\r\r\n.\r\n"), Outcome::Fatal(DataError::BareCr));
}

#[test]
fn bare_lf_inside_a_line_is_fatal() {
    assert_eq!(outcome(b"a\nb\r\n.\r\n"), Outcome::Fatal(DataError::BareLf));
    assert_eq!(outcome(b"a\r\n\n.\r\n"), Outcome::Fatal(DataError::BareLf));
}

#[test]
fn bare_cr_and_lf_after_a_stuffed_dot_are_fatal() {
    assert_eq!(outcome(b"..\n.\r\n"), Outcome::Fatal(DataError::BareLf));
    assert_eq!(outcome(b"..\r.\r\n"), Outcome::Fatal(DataError::BareCr));
}

#[test]
fn dot_cr_at_the_end_of_input_waits_for_the_next_byte() {
    assert_eq!(outcome(b"hello\r\n.\r"), Outcome::NeedMore);
    assert_eq!(outcome(b"hello\r\n."), Outcome::NeedMore);
    assert_eq!(outcome(b"hello\r"), Outcome::NeedMore);
}

#[test]
fn the_real_end_is_still_found_after_look_alikes_that_are_content() {
    // `.x` and `..` open lines with content; neither is an end.
    let input = b"a\r\n.x\r\n..\r\n.\r\nQUIT\r\n";
    assert_eq!(
        outcome(input),
        Outcome::Done {
            at: input.len() - 6,
            error: None
        }
    );
    assert_eq!(run(&[input]).1, b"a\r\nx\r\n.\r\n");
}

#[test]
fn a_fatal_receiver_stays_fatal() {
    let mut rx = DataReceiver::new(1000);
    let mut sink = Vec::new();
    assert_eq!(
        rx.feed(b"a\n", &mut sink),
        DataStatus::Fatal(DataError::BareLf)
    );
    assert_eq!(
        rx.feed(b"\r\n.\r\n", &mut sink),
        DataStatus::Fatal(DataError::BareLf)
    );
    assert!(DataError::BareLf.is_fatal() && DataError::BareCr.is_fatal());
}

/// `CRLF NUL . CRLF` (and a NUL anywhere else) is content to us, but a next hop that strips NUL
/// would see the end of data there and the rest as a second message from our trusted address.
/// The receiver reads on to the real end, whose verdict is the non-fatal [`DataError::Nul`]:
/// the session refuses the message and stays in sync.
#[test]
fn nul_before_or_after_the_dot_is_content_then_refused_at_the_real_end() {
    for fake_end in [&b"\r\n\0.\r\n"[..], b"\r\n.\0\r\n", b"\r\n\0.\0\r\n"] {
        let input = [&vector(b"hello", fake_end)[..], b"QUIT\r\n"].concat();
        assert_eq!(
            outcome(&input),
            Outcome::Done {
                at: input.len() - 6,
                error: Some(DataError::Nul)
            },
            "{:?}",
            show(fake_end)
        );
    }
}

#[test]
fn a_nul_anywhere_is_reported_and_framing_errors_still_win() {
    for input in [
        &b"\0\r\n.\r\n"[..],
        b"Subject: x\0y\r\n\r\nbody\r\n.\r\n",
        b"body\r\nlast\0\r\n.\r\n",
        b"..\0\r\n.\r\n",
    ] {
        assert_eq!(
            outcome(input),
            Outcome::Done {
                at: input.len(),
                error: Some(DataError::Nul)
            },
            "{:?}",
            show(input)
        );
    }
    assert_eq!(
        outcome(b"a\0\nb\r\n.\r\n"),
        Outcome::Fatal(DataError::BareLf)
    );
    assert!(!DataError::Nul.is_fatal());
}

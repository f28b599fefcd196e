//! Command-line framing: only CRLF ends a line; bare CR/LF and over-long lines are refused.

use relayward_protocol::line::{LineBuffer, LineEvent};

fn line(text: &str) -> LineEvent {
    LineEvent::Line(text.as_bytes().to_vec())
}

/// All events from `input` fed whole, checked against every two-way split and byte-by-byte.
fn events(max_line: usize, input: &[u8]) -> Vec<LineEvent> {
    let whole = feed(max_line, &[input]);
    for split in 0..=input.len() {
        let (head, tail) = input.split_at(split);
        assert_eq!(feed(max_line, &[head, tail]), whole, "split at {split}");
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(feed(max_line, &bytes), whole, "byte by byte");
    whole
}

fn feed(max_line: usize, chunks: &[&[u8]]) -> Vec<LineEvent> {
    let mut buffer = LineBuffer::new(max_line);
    let mut out = Vec::new();
    for chunk in chunks {
        buffer.extend(chunk);
        while let Some(event) = buffer.next_event() {
            out.push(event);
        }
    }
    out
}

#[test]
fn pipelined_lines_come_out_in_order() {
    assert_eq!(
        events(512, b"EHLO a.test\r\nMAIL FROM:<>\r\n\r\nQUIT\r\n"),
        [
            line("EHLO a.test"),
            line("MAIL FROM:<>"),
            line(""),
            line("QUIT")
        ]
    );
}

#[test]
fn bare_lf_is_not_a_line_end() {
    assert_eq!(
        events(512, b"NOOP\nQUIT\r\n"),
        [LineEvent::BareLineEnding, line("QUIT")]
    );
}

#[test]
fn bare_cr_is_not_a_line_end() {
    assert_eq!(
        events(512, b"NOOP\rQUIT\r\n"),
        [LineEvent::BareLineEnding, line("QUIT")]
    );
    assert_eq!(
        events(512, b"NOOP\r\r\n"),
        [LineEvent::BareLineEnding, line("")]
    );
}

#[test]
fn lf_cr_is_two_bare_endings() {
    assert_eq!(
        events(512, b"A\n\rB\r\n"),
        [
            LineEvent::BareLineEnding,
            LineEvent::BareLineEnding,
            line("B")
        ]
    );
}

#[test]
fn trailing_cr_waits_for_more() {
    let mut buffer = LineBuffer::new(512);
    buffer.extend(b"QUIT\r");
    assert_eq!(buffer.next_event(), None);
    assert_eq!(buffer.buffered(), 5);
}

#[test]
fn over_long_line_is_skipped_to_its_crlf_and_reported_once() {
    let long = [vec![b'x'; 600], b"\r\nNOOP\r\n".to_vec()].concat();
    assert_eq!(events(512, &long), [LineEvent::TooLong, line("NOOP")]);
}

#[test]
fn the_limit_counts_the_crlf() {
    let fits = [vec![b'x'; 510], b"\r\n".to_vec()].concat();
    assert!(matches!(events(512, &fits)[..], [LineEvent::Line(ref l)] if l.len() == 510));
    let over = [vec![b'x'; 511], b"\r\n".to_vec()].concat();
    assert_eq!(events(512, &over), [LineEvent::TooLong]);
}

#[test]
fn a_bare_line_ending_inside_an_over_long_line_ends_the_skip() {
    let input = [vec![b'x'; 600], b"\nNOOP\r\n".to_vec()].concat();
    assert_eq!(
        events(512, &input),
        [LineEvent::BareLineEnding, line("NOOP")]
    );
}

#[test]
fn plaintext_pipelined_behind_starttls_is_visible_and_clearable() {
    let mut buffer = LineBuffer::new(512);
    let injected = b"MAIL FROM:<evil@outside.test>\r\n";
    buffer.extend(&[b"STARTTLS\r\n".as_slice(), injected].concat());
    assert_eq!(buffer.next_event(), Some(line("STARTTLS")));
    assert_eq!(buffer.buffered(), injected.len());
    buffer.clear();
    assert_eq!(buffer.buffered(), 0);
    assert_eq!(buffer.next_event(), None);
}

#[test]
fn take_buffered_hands_over_raw_bytes_for_data() {
    let mut buffer = LineBuffer::new(512);
    buffer.extend(b"DATA\r\nSubject: x\n\r");
    assert_eq!(buffer.next_event(), Some(line("DATA")));
    assert_eq!(buffer.take_buffered(), b"Subject: x\n\r");
    assert_eq!(buffer.buffered(), 0);
    buffer.extend(b"QUIT\r\n");
    assert_eq!(buffer.next_event(), Some(line("QUIT")));
}

#[test]
fn clear_forgets_a_skip_in_progress() {
    let mut buffer = LineBuffer::new(16);
    buffer.extend(&[b'x'; 100]);
    assert_eq!(buffer.next_event(), None);
    buffer.clear();
    buffer.extend(b"NOOP\r\n");
    assert_eq!(buffer.next_event(), Some(line("NOOP")));
}

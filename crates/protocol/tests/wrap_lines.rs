//! Folding and wrapping on the way out: every line ≤ 998 octets, header values unchanged by
//! RFC 5322 unfolding, body text kept (only CRLF SP inserted), whatever the input.

use proptest::prelude::*;
use relayward_protocol::wrap::{MAX_LINE_OUT, has_long_line, wrap_long_lines};

fn lines(message: &[u8]) -> Vec<&[u8]> {
    message.split(|&b| b == b'\n').collect()
}

fn longest_line(message: &[u8]) -> usize {
    lines(message)
        .iter()
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).len())
        .max()
        .unwrap_or(0)
}

/// RFC 5322 §2.2.3 unfolding: remove every CRLF that precedes a blank.
fn unfold(header: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < header.len() {
        if header[i..].starts_with(b"\r\n") && matches!(header.get(i + 2), Some(b' ' | b'\t')) {
            i += 2;
            continue;
        }
        out.push(header[i]);
        i += 1;
    }
    out
}

#[test]
fn a_1500_octet_header_is_folded_at_blanks_and_unfolds_to_itself() {
    let words: Vec<String> = (0..150)
        .map(|i| format!("<id{i:05}@example.test>"))
        .collect();
    let field = format!("References: {}", words.join(" "));
    assert!(field.len() > 1500, "{}", field.len());
    let message = format!("{field}\r\nSubject: x\r\n\r\nbody\r\n");
    let wrapped = wrap_long_lines(message.as_bytes());
    assert!(longest_line(&wrapped) <= MAX_LINE_OUT);
    let text = std::str::from_utf8(&wrapped).unwrap();
    let (header, body) = text.split_once("\r\n\r\n").unwrap();
    assert_eq!(body, "body\r\n");
    assert!(
        header.lines().nth(1).unwrap().starts_with(' '),
        "not folded:\n{header}"
    );
    assert_eq!(
        unfold(header.as_bytes()),
        format!("{field}\r\nSubject: x").into_bytes()
    );
}

#[test]
fn a_header_without_blanks_is_broken_with_crlf_space() {
    let field = format!("X-Token:{}", "a".repeat(2500));
    let message = format!("{field}\r\n\r\nb\r\n");
    let wrapped = wrap_long_lines(message.as_bytes());
    assert!(longest_line(&wrapped) <= MAX_LINE_OUT);
    let text = String::from_utf8(wrapped.into_owned()).unwrap();
    let header = text.split_once("\r\n\r\n").unwrap().0;
    assert_eq!(header.matches("\r\n ").count(), 2);
    assert_eq!(header.replace("\r\n ", ""), field);
}

#[test]
fn a_long_body_line_is_broken_with_crlf_space_and_nothing_is_lost() {
    let body = "x".repeat(3000);
    let message = format!("Subject: y\r\n\r\n{body}\r\nend\r\n");
    let wrapped = wrap_long_lines(message.as_bytes());
    assert!(longest_line(&wrapped) <= MAX_LINE_OUT);
    let text = String::from_utf8(wrapped.into_owned()).unwrap();
    assert_eq!(text.replace("\r\n ", ""), message);
    assert!(text.ends_with("\r\nend\r\n"));
}

#[test]
fn the_fold_never_falls_in_the_field_name() {
    let field = format!("{}: v", "N".repeat(1200));
    let wrapped = wrap_long_lines(format!("{field}\r\n\r\n").as_bytes()).into_owned();
    assert!(longest_line(&wrapped) <= MAX_LINE_OUT);
    assert!(!wrapped.starts_with(b"\r\n"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any bytes: no output line over 998 octets, and removing the inserted CRLF SP and
    /// folding CRLFs gives back the input.
    #[test]
    fn every_line_fits_and_only_breaks_were_inserted(
        head in prop::collection::vec(prop_oneof![Just(b' '), Just(b':'), Just(b'a'), any::<u8>()], 0..3000),
        body in prop::collection::vec(prop_oneof![Just(b' '), Just(b'\n'), Just(b'b'), any::<u8>()], 0..3000),
    ) {
        let head: Vec<u8> = head.into_iter().filter(|&b| b != b'\n' && b != b'\r').collect();
        let mut message = head.clone();
        message.extend_from_slice(b"\r\n\r\n");
        message.extend_from_slice(&body);
        let wrapped = wrap_long_lines(&message).into_owned();
        prop_assert!(!has_long_line(&wrapped));
        prop_assert_eq!(unfold(&wrapped), unfold(&message));
    }
}

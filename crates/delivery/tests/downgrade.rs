//! 8BITMIME downgrade round trips: the result is 7-bit clean, and mail-parser decodes every
//! part of it to the octets the original part held.

use mail_parser::{MessageParser, PartType};
use proptest::prelude::*;
use relayward_delivery::downgrade::{DowngradeError, downgrade};

/// Every leaf part's decoded content, depth first (nested messages included).
fn decoded_parts(raw: &[u8]) -> Vec<Vec<u8>> {
    let message = MessageParser::default().parse(raw).expect("parses");
    let mut out = Vec::new();
    for part in &message.parts {
        match &part.body {
            PartType::Multipart(_) => {}
            PartType::Message(_) => {
                let body = &raw[part.offset_body as usize..part.offset_end as usize];
                out.extend(decoded_parts(body));
            }
            _ => out.push(part.contents().to_vec()),
        }
    }
    out
}

fn assert_round_trip(original: &[u8]) -> Vec<u8> {
    let converted = downgrade(original).expect("convertible").into_owned();
    assert!(
        converted.is_ascii(),
        "not 7-bit:\n{}",
        String::from_utf8_lossy(&converted)
    );
    assert_eq!(decoded_parts(&converted), decoded_parts(original));
    converted
}

#[test]
fn a_plain_8bit_message_gets_mime_headers_and_quoted_printable() {
    let original =
        "From: a@example.test\r\nSubject: plain\r\n\r\nGrüße aus Köln.\r\nZweite Zeile: ½ €\r\n";
    let converted = assert_round_trip(original.as_bytes());
    let text = String::from_utf8(converted).unwrap();
    assert!(text.contains("MIME-Version: 1.0\r\n"), "{text}");
    assert!(
        text.contains("Content-Type: text/plain; charset=utf-8\r\n"),
        "{text}"
    );
    assert!(
        text.contains("Content-Transfer-Encoding: quoted-printable\r\n\r\n"),
        "{text}"
    );
    assert!(
        text.contains("Gr=C3=BC=C3=9Fe aus K=C3=B6ln.\r\n"),
        "{text}"
    );
    assert!(text.starts_with("From: a@example.test\r\nSubject: plain\r\n"));
}

#[test]
fn a_multipart_message_converts_each_8bit_part_and_leaves_the_rest() {
    let original: &[u8] = b"From: a@example.test\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
preamble\r\n--b1\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
h\xc3\xa9llo w\xc3\xb6rld\r\nline two\r\n\
--b1\r\nContent-Type: text/plain\r\n\r\nplain ascii part\r\n\
--b1\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
Subject: inner\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\nb\xf6dy\r\n\
--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding:\r\n  binary\r\n\r\n\
\x00\xff\xfe\x80 bytes\r\n\
--b1--\r\nepilogue\r\n";
    let converted = assert_round_trip(original);
    let text = String::from_utf8(converted).unwrap();
    assert!(text.contains("plain ascii part"), "{text}");
    assert_eq!(
        text.matches("Content-Transfer-Encoding: quoted-printable")
            .count(),
        2,
        "{text}"
    );
    assert_eq!(
        text.matches("Content-Transfer-Encoding: base64").count(),
        1,
        "{text}"
    );
    assert!(
        text.contains("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"),
        "{text}"
    );
    assert!(
        !text.contains("8bit\r\n") && !text.contains("binary"),
        "{text}"
    );
    assert!(text.contains("preamble\r\n--b1\r\n") && text.ends_with("--b1--\r\nepilogue\r\n"));
}

#[test]
fn seven_bit_mail_is_passed_untouched() {
    let original = b"Subject: ascii\r\n\r\nnothing to do\r\n";
    assert!(matches!(
        downgrade(original),
        Ok(std::borrow::Cow::Borrowed(_))
    ));
}

#[test]
fn what_cannot_be_converted_is_refused_with_a_reason() {
    let header = b"Subject: Gr\xc3\xbc\xc3\x9fe\r\n\r\nbody\r\n";
    assert_eq!(
        downgrade(header).map(|_| ()),
        Err(DowngradeError(
            "8-bit octets in a header field (that needs SMTPUTF8)"
        ))
    );
    let lying = b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n\xff\xfe\r\n";
    assert!(downgrade(lying).is_err());
    let preamble = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\npr\xc3\xa9\r\n--b\r\n\r\nx\r\n--b--\r\n";
    assert!(downgrade(preamble).is_err());
}

#[test]
fn nesting_is_bounded() {
    let mut message = b"Subject: leaf\r\n\r\n\xc3\xa9\r\n".to_vec();
    for _ in 0..12 {
        let mut outer = b"MIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n".to_vec();
        outer.extend_from_slice(&message);
        message = outer;
    }
    assert!(downgrade(&message).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any UTF-8 text body, with any mix of long lines, trailing blanks and dots: the
    /// quoted-printable result decodes to it exactly.
    #[test]
    fn any_8bit_text_body_round_trips(
        lines in prop::collection::vec("[a-zA-Z0-9 .=\t\u{e9}\u{20ac}\u{1F600}]{0,200}", 1..20),
    ) {
        let body: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
        prop_assume!(!body.is_ascii());
        let original = format!("Subject: p\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}");
        let converted = downgrade(original.as_bytes()).expect("convertible").into_owned();
        prop_assert!(converted.is_ascii());
        prop_assert!(converted.split(|&b| b == b'\n').all(|l| l.len() <= 78));
        prop_assert_eq!(decoded_parts(&converted), decoded_parts(original.as_bytes()));
    }
}

//! Any lines a hostile server may send (the probe and the delivery client read them with
//! `ReplyParser`): no panic, and every reply assembled is consistent — a code in 200..=599, an
//! enhanced code of the same class, at most `MAX_LINES` lines — and reads back the same from
//! its own wire form.

use relayward_protocol::reply::{Reply, ReplyParser};

pub fn run(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let mut parser = ReplyParser::new();
    for line in text.split('\n') {
        if let Ok(Some(reply)) = parser.feed(line) {
            check(&reply);
        }
    }
}

fn check(reply: &Reply) {
    assert!((200..600).contains(&reply.code), "{reply:?}");
    assert!(!reply.lines.is_empty() && reply.lines.len() <= ReplyParser::MAX_LINES);
    if let Some(enhanced) = reply.enhanced {
        assert_eq!(u16::from(enhanced.class), reply.code / 100, "{reply:?}");
    }
    let wire = reply.to_wire();
    let mut again = ReplyParser::new();
    let mut parsed = None;
    for line in wire.split_terminator("\r\n") {
        parsed = again.feed(line).expect("our own wire form parses");
    }
    assert_eq!(parsed.as_ref(), Some(reply), "wire form {wire:?}");
}

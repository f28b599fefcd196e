//! Any DATA stream: no panic, and the outcome and content do not depend on where reads split
//! it. The first byte says where the second read starts.

use relayward_protocol::data::{DataReceiver, DataStatus};

pub fn run(input: &[u8]) {
    crate::same_however_split(input, receive);
}

/// The outcome, with every position counted from the start of the stream, and the sink: a
/// `Refused` is reported at once, and the rest of its chunk fed on to the real end.
fn receive(chunks: &[&[u8]]) -> (Vec<String>, Vec<u8>) {
    let mut rx = DataReceiver::new(4096);
    let mut sink = Vec::new();
    let mut events = Vec::new();
    let mut offset = 0;
    for chunk in chunks {
        let mut rest: &[u8] = chunk;
        loop {
            match rx.feed(rest, &mut sink) {
                DataStatus::NeedMore => {
                    offset += rest.len();
                    break;
                }
                DataStatus::Refused { consumed, error } => {
                    offset += consumed;
                    events.push(format!("refused {offset} {error:?}"));
                    rest = &rest[consumed..];
                }
                DataStatus::Done { consumed, error } => {
                    events.push(format!("done {} {error:?}", offset + consumed));
                    return (events, sink);
                }
                DataStatus::Fatal(error) => {
                    events.push(format!("fatal {error:?}"));
                    return (events, Vec::new());
                }
            }
        }
    }
    events.push("more".into());
    (events, sink)
}

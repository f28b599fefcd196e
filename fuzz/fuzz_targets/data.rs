//! Any DATA stream: no panic, and the outcome and content do not depend on where reads split it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relayward_protocol::data::{DataReceiver, DataStatus};

fuzz_target!(|input: &[u8]| {
    let Some((&cut, stream)) = input.split_first() else {
        return;
    };
    let whole = receive(&[stream]);
    let (head, tail) = stream.split_at(usize::from(cut).min(stream.len()));
    assert_eq!(receive(&[head, tail]), whole);
});

/// The outcome, with `Done` counted from the start of the stream, and the sink.
fn receive(chunks: &[&[u8]]) -> (String, Vec<u8>) {
    let mut rx = DataReceiver::new(4096);
    let mut sink = Vec::new();
    let mut offset = 0;
    for chunk in chunks {
        match rx.feed(chunk, &mut sink) {
            DataStatus::NeedMore => offset += chunk.len(),
            DataStatus::Done { consumed, error } => {
                return (format!("done {} {error:?}", offset + consumed), sink);
            }
            DataStatus::Fatal(error) => return (format!("fatal {error:?}"), Vec::new()),
        }
    }
    ("more".into(), sink)
}

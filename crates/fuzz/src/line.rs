//! Any byte stream: no panic, and the same lines however reads split it. The first byte says
//! where the second read starts.

use relayward_protocol::line::{LineBuffer, LineEvent};

pub fn run(input: &[u8]) {
    crate::same_however_split(input, events);
}

fn events(chunks: &[&[u8]]) -> Vec<LineEvent> {
    let mut buffer = LineBuffer::new(64);
    let mut out = Vec::new();
    for chunk in chunks {
        buffer.extend(chunk);
        out.extend(std::iter::from_fn(|| buffer.next_event()));
    }
    out
}

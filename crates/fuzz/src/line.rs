//! Any byte stream: no panic, and the same lines however reads split it. The first byte says
//! where the second read starts.

use relayward_protocol::line::{LineBuffer, LineEvent};

pub fn run(input: &[u8]) {
    let Some((&cut, stream)) = input.split_first() else {
        return;
    };
    let whole = events(&[stream]);
    let (head, tail) = stream.split_at(usize::from(cut).min(stream.len()));
    assert_eq!(events(&[head, tail]), whole);
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

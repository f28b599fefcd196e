//! Any path text: the path parsers must refuse, never panic.

use relayward_protocol::path::{parse_forward_path, parse_reverse_path};

pub fn run(input: &[u8]) {
    if let Ok(text) = std::str::from_utf8(input) {
        let _ = parse_forward_path(text);
        let _ = parse_reverse_path(text);
    }
}

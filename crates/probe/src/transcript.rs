//! The dialogue as the classic relay-test printed it: `>>>` client, `<<<` server,
//! `:Relay test: <id>` headings. Capped, so a chatty hostile server cannot exhaust memory.

use relayward_protocol::text::escape_control;

/// At most this many lines are kept per target; later ones are counted, not stored.
pub const MAX_TRANSCRIPT_LINES: usize = 20_000;
/// Longest line kept; the rest is cut (the full line is never needed to judge).
const MAX_KEPT_LINE: usize = 512;

/// Reply bytes one target may send in all, over all its connections. A normal run reads a
/// few tens of kilobytes; a server that answers every command with 255 lines of 4 KB would
/// cost hundreds of megabytes. Past this the target is INCONCLUSIVE.
pub const MAX_TARGET_REPLY_BYTES: usize = 2 << 20;

#[derive(Debug, Default, Clone)]
pub struct Transcript {
    lines: Vec<String>,
    dropped: usize,
    /// Bytes of server lines seen (kept or not), for [`MAX_TARGET_REPLY_BYTES`].
    received: usize,
}

impl Transcript {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn client(&mut self, line: &str) {
        self.push(format!(">>> {}", printable(line)));
    }

    pub fn server(&mut self, line: &str) {
        self.received = self.received.saturating_add(line.len() + 2);
        self.push(format!("<<< {}", printable(line)));
    }

    /// The server has sent more reply bytes than one target may.
    pub fn flooded(&self) -> bool {
        self.received > MAX_TARGET_REPLY_BYTES
    }

    /// A heading or a note from the tester itself.
    pub fn note(&mut self, text: &str) {
        self.push(escape_control(text).into_owned());
    }

    pub fn heading(&mut self, test_id: &str) {
        self.push(format!(":Relay test: {test_id}"));
    }

    fn push(&mut self, line: String) {
        if self.lines.len() < MAX_TRANSCRIPT_LINES {
            self.lines.push(line);
        } else {
            self.dropped += 1;
        }
    }

    /// The kept lines, with a last line counting the dropped ones.
    pub fn into_lines(mut self) -> Vec<String> {
        if self.dropped > 0 {
            self.lines
                .push(format!("[{} more lines not kept]", self.dropped));
        }
        self.lines
    }
}

/// Control characters (a server's ESC sequences) are shown escaped by the project's one
/// escaper, never sent to the terminal; the line is cut to [`MAX_KEPT_LINE`] characters.
fn printable(line: &str) -> String {
    let mut out = escape_control(line).into_owned();
    if let Some((cut, _)) = out.char_indices().nth(MAX_KEPT_LINE) {
        out.truncate(cut);
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_control_characters_and_caps() {
        let mut t = Transcript::new();
        t.server("220 \u{1b}[31mred");
        assert_eq!(t.clone().into_lines(), ["<<< 220 \\x1b[31mred"]);
        for _ in 0..MAX_TRANSCRIPT_LINES + 3 {
            t.client("NOOP");
        }
        let lines = t.into_lines();
        assert_eq!(lines.len(), MAX_TRANSCRIPT_LINES + 1);
        assert_eq!(lines.last().unwrap(), "[4 more lines not kept]");
    }
}

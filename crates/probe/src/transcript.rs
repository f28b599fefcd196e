//! The dialogue as the classic relay-test printed it: `>>>` client, `<<<` server,
//! `:Relay test: <id>` headings. Capped, so a chatty hostile server cannot exhaust memory.
//!
//! A transcript can also hand every line to a [`LineSink`] the moment it is written: the live
//! dialogue of `relayward probe-service` (telnet door, web page) and of `relayward probe -v`
//! when one target is probed at a time. The sink sees exactly the kept lines (escaped and cut
//! like them, and within the same cap), so a live reader can never get more from a hostile
//! server than the report would hold.

use std::sync::Arc;

use relayward_protocol::text::escape_control;

use crate::config::Target;

/// Receives each transcript line as it is written, with the target it belongs to (two
/// addresses of one host name share a label, not an address). Called on the probe's task, so
/// it must be quick (push to a buffer, send on a channel), never block.
pub type LineSink = Arc<dyn Fn(&Target, &str) + Send + Sync>;

/// At most this many lines are kept per target; later ones are counted, not stored.
pub const MAX_TRANSCRIPT_LINES: usize = 20_000;
/// Longest line kept; the rest is cut (the full line is never needed to judge).
const MAX_KEPT_LINE: usize = 512;

/// Reply bytes one target may send in all, over all its connections. A normal run reads a
/// few tens of kilobytes; a server that answers every command with 255 lines of 4 KB would
/// cost hundreds of megabytes. Past this the target is INCONCLUSIVE.
pub const MAX_TARGET_REPLY_BYTES: usize = 2 << 20;

#[derive(Default, Clone)]
pub struct Transcript {
    lines: Vec<String>,
    dropped: usize,
    /// Bytes of server lines seen (kept or not), for [`MAX_TARGET_REPLY_BYTES`].
    received: usize,
    /// Where lines go live, with the target they belong to.
    live: Option<(Target, LineSink)>,
    /// The report will not carry the lines ([`Transcript::discarding`]): they go to the live
    /// sink, if any, and are not stored.
    discard: bool,
    /// Lines written (stored or not), for [`MAX_TRANSCRIPT_LINES`].
    written: usize,
}

impl std::fmt::Debug for Transcript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcript")
            .field("lines", &self.lines.len())
            .field("dropped", &self.dropped)
            .field("received", &self.received)
            .field("live", &self.live.as_ref().map(|(t, _)| t.addr))
            .finish()
    }
}

impl Transcript {
    pub fn new() -> Self {
        Self::default()
    }

    /// A transcript that keeps no line, for a report without a dialogue (no `-v`): it only
    /// counts the server's bytes for [`MAX_TARGET_REPLY_BYTES`]. Kept lines of a hostile
    /// server cost up to [`MAX_TRANSCRIPT_LINES`] × [`MAX_KEPT_LINE`] characters (escapes
    /// make each control byte four), about 10 MB per target, for nothing.
    pub fn counting() -> Self {
        Self::new().discarding()
    }

    /// This transcript, storing no line: they still go to the live sink (within the same
    /// cap), and the server's bytes are still counted.
    pub fn discarding(self) -> Self {
        Self {
            discard: true,
            ..self
        }
    }

    /// Whether a line written now would be seen by anyone.
    fn wanted(&self) -> bool {
        !self.discard || self.live.is_some()
    }

    /// A transcript that also hands each line of `target`'s dialogue to `sink` as it is
    /// written.
    pub fn streaming(target: &Target, sink: LineSink) -> Self {
        Self {
            live: Some((target.clone(), sink)),
            ..Self::default()
        }
    }

    pub fn client(&mut self, line: &str) {
        if self.wanted() {
            self.push(format!(">>> {}", printable(line)));
        }
    }

    pub fn server(&mut self, line: &str) {
        self.received = self.received.saturating_add(line.len() + 2);
        if self.wanted() {
            self.push(format!("<<< {}", printable(line)));
        }
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
        if !self.wanted() {
            return;
        }
        if self.written < MAX_TRANSCRIPT_LINES {
            self.written += 1;
            if let Some((target, sink)) = &self.live {
                sink(target, &line);
            }
            if !self.discard {
                self.lines.push(line);
            }
        } else {
            if self.dropped == 0
                && let Some((target, sink)) = &self.live
            {
                sink(target, "[further lines not kept]");
            }
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

    /// Without `-v` nobody reads the dialogue: a counting transcript keeps no line of it, yet
    /// still ends a flood at the per-target budget.
    #[test]
    fn a_counting_transcript_keeps_nothing_but_still_counts_the_flood() {
        let mut t = Transcript::counting();
        let line = format!("250-{}", "\u{1}".repeat(4000));
        while !t.flooded() {
            t.server(&line);
            t.client("NOOP");
            t.note("[a note]");
        }
        assert!(t.lines.is_empty() && t.dropped == 0);
        assert!(t.into_lines().is_empty());
    }

    /// A live reader without `-v` (the probe service's page): every line streams, within the
    /// cap, and none is stored a second time in the transcript.
    #[test]
    fn a_discarding_streaming_transcript_streams_within_the_cap_and_stores_nothing() {
        let seen = Arc::new(std::sync::Mutex::new(0usize));
        let sink_seen = Arc::clone(&seen);
        let sink: LineSink = Arc::new(move |_: &Target, _: &str| {
            *sink_seen.lock().unwrap() += 1;
        });
        let addr = "192.0.2.7:25".parse().unwrap();
        let target = Target::new(addr, None, "mx:25".into());
        let mut t = Transcript::streaming(&target, sink).discarding();
        for _ in 0..MAX_TRANSCRIPT_LINES + 5 {
            t.server("250 ok");
        }
        assert_eq!(*seen.lock().unwrap(), MAX_TRANSCRIPT_LINES + 1);
        assert!(t.lines.is_empty());
    }

    #[test]
    fn a_streaming_transcript_hands_over_the_kept_lines_as_they_are_written() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let sink_seen = Arc::clone(&seen);
        let sink: LineSink = Arc::new(move |target: &Target, line: &str| {
            sink_seen
                .lock()
                .unwrap()
                .push(format!("{}|{line}", target.addr));
        });
        let addr = "192.0.2.7:25".parse().unwrap();
        let mut t = Transcript::streaming(&Target::new(addr, None, "mx:25".into()), sink);
        t.note("Connecting to 192.0.2.7:25 ...");
        assert_eq!(seen.lock().unwrap().len(), 1, "handed over at once");
        t.server("220 \u{1b}[2Jmx");
        t.client("EHLO example.org");
        for _ in 0..MAX_TRANSCRIPT_LINES {
            t.client("NOOP");
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen[1], "192.0.2.7:25|<<< 220 \\x1b[2Jmx");
        assert_eq!(seen[2], "192.0.2.7:25|>>> EHLO example.org");
        // The cap holds for the live reader too: kept lines, then one note.
        assert_eq!(seen.len(), MAX_TRANSCRIPT_LINES + 1);
        assert_eq!(
            seen.last().unwrap(),
            "192.0.2.7:25|[further lines not kept]"
        );
    }
}

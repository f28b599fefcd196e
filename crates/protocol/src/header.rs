//! The header section of a message (RFC 5322 §2.2), read the few ways relayward needs it:
//! counting `Received:` fields against mail loops, recognising automatic replies that must not
//! be bounced, quoting headers in a bounce, and showing them in `queue show`.
//!
//! Lenient on purpose: the content is whatever a client sent, and every function here returns
//! something sensible for any bytes (no header section at all, bare LF line ends, invalid UTF-8).

/// The header section of `content`: every line before the first empty line, with their line
/// ends. All of `content` when there is no empty line; nothing when it starts with one.
pub fn header_section(content: &[u8]) -> &[u8] {
    let mut pos = 0;
    while pos < content.len() {
        let end = memchr::memchr(b'\n', &content[pos..]).map_or(content.len(), |i| pos + i + 1);
        let line = &content[pos..end];
        if line == b"\r\n" || line == b"\n" {
            return &content[..pos];
        }
        pos = end;
    }
    content
}

/// One header field, unfolded (continuation lines joined with a space), as lossy UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub value: String,
}

/// The header fields of `content`, in order. Lines that are neither `name: value` nor a
/// continuation are skipped.
pub fn fields(content: &[u8]) -> Vec<Field> {
    let mut fields: Vec<Field> = Vec::new();
    for line in lines(header_section(content)) {
        if matches!(line.first(), Some(b' ' | b'\t')) {
            if let Some(last) = fields.last_mut() {
                last.value.push(' ');
                last.value.push_str(String::from_utf8_lossy(line).trim());
            }
            continue;
        }
        if let Some(colon) = memchr::memchr(b':', line) {
            fields.push(Field {
                name: String::from_utf8_lossy(&line[..colon]).trim().to_string(),
                value: String::from_utf8_lossy(&line[colon + 1..])
                    .trim()
                    .to_string(),
            });
        }
    }
    fields
}

/// How many fields called `name` (case-insensitively) the header section holds. Cheaper than
/// [`fields`]: nothing is copied, so counting `Received:` in a 25 MB message costs one scan.
pub fn count(content: &[u8], name: &str) -> usize {
    let mut counter = FieldCounter::new(name);
    counter.feed(content);
    counter.count()
}

/// [`count`] over content that arrives in pieces (a message streamed to the queue): the same
/// answer, whatever the split, without keeping the header section. Stops looking at the
/// first empty line.
#[derive(Debug, Clone)]
pub struct FieldCounter {
    name: Vec<u8>,
    state: CounterState,
    count: usize,
}

/// Where the counter stands in the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CounterState {
    /// At the start of a line.
    LineStart,
    /// A CR opened the line: an LF now ends the header section.
    StartCr,
    /// This many octets of the name matched so far.
    Name(usize),
    /// The whole name matched: blanks, then `:` makes it a field of that name.
    Blanks,
    /// Nothing more to learn from this line.
    Skip,
    /// The header section ended.
    Body,
}

impl FieldCounter {
    pub fn new(name: &str) -> FieldCounter {
        FieldCounter {
            name: name.as_bytes().to_ascii_lowercase(),
            state: CounterState::LineStart,
            count: 0,
        }
    }

    /// Fields of the name seen so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Takes the next piece of the content.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while let Some((&byte, rest)) = bytes.split_first() {
            match self.state {
                CounterState::Body => return,
                // The rest of the line says nothing: jump to its end.
                CounterState::Skip => match memchr::memchr(b'\n', bytes) {
                    Some(lf) => {
                        self.state = CounterState::LineStart;
                        bytes = &bytes[lf + 1..];
                        continue;
                    }
                    None => return,
                },
                _ => self.step(byte),
            }
            bytes = rest;
        }
    }

    fn step(&mut self, byte: u8) {
        use CounterState::*;
        self.state = match (self.state, byte) {
            (LineStart | StartCr, b'\n') => Body,
            (LineStart, b'\r') => StartCr,
            (LineStart, _) if self.name.is_empty() => self.after_name(byte),
            (LineStart, _) => self.name_byte(0, byte),
            (Name(matched), _) => self.name_byte(matched, byte),
            (Blanks, _) => self.after_name(byte),
            (_, b'\n') => LineStart,
            _ => Skip,
        };
    }

    fn name_byte(&self, matched: usize, byte: u8) -> CounterState {
        if byte == b'\n' {
            CounterState::LineStart
        } else if byte.to_ascii_lowercase() != self.name[matched] {
            CounterState::Skip
        } else if matched + 1 == self.name.len() {
            CounterState::Blanks
        } else {
            CounterState::Name(matched + 1)
        }
    }

    fn after_name(&mut self, byte: u8) -> CounterState {
        match byte {
            b' ' | b'\t' => CounterState::Blanks,
            b':' => {
                self.count += 1;
                CounterState::Skip
            }
            b'\n' => CounterState::LineStart,
            _ => CounterState::Skip,
        }
    }
}

/// The first field called `name`, unfolded.
pub fn first(content: &[u8], name: &str) -> Option<String> {
    fields(content)
        .into_iter()
        .find(|f| f.name.eq_ignore_ascii_case(name))
        .map(|f| f.value)
}

/// Whether the message is itself an automatic one: a delivery report or other
/// `multipart/report` (RFC 6522), or anything with `Auto-Submitted:` other than `no` (RFC
/// 3834). Such mail is never bounced, so two mail systems cannot bounce each other's
/// notifications back and forth.
pub fn is_automatic(content: &[u8]) -> bool {
    let auto_submitted = first(content, "Auto-Submitted").is_some_and(|value| {
        let keyword = value.split([';', '(', ' ', '\t']).next().unwrap_or("");
        !keyword.is_empty() && !keyword.eq_ignore_ascii_case("no")
    });
    let report = first(content, "Content-Type").is_some_and(|value| {
        let media_type = value.split(';').next().unwrap_or("").trim();
        media_type.eq_ignore_ascii_case("multipart/report")
    });
    auto_submitted || report
}

/// The lines of a header section without their line ends.
fn lines(section: &[u8]) -> impl Iterator<Item = &[u8]> {
    section
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-piece rule the streaming counter must agree with.
    /// `line` opens a field called `name`: `name` then optional blanks then `:`.
    fn is_field(line: &[u8], name: &str) -> bool {
        let Some(head) = line.get(..name.len()) else {
            return false;
        };
        head.eq_ignore_ascii_case(name.as_bytes())
            && line[name.len()..]
                .iter()
                .find(|&&b| b != b' ' && b != b'\t')
                .is_some_and(|&b| b == b':')
    }

    #[test]
    fn the_section_ends_at_the_first_empty_line() {
        assert_eq!(
            header_section(b"A: 1\r\nB: 2\r\n\r\nbody\r\n"),
            b"A: 1\r\nB: 2\r\n"
        );
        assert_eq!(header_section(b"A: 1\n\nbody"), b"A: 1\n");
        assert_eq!(header_section(b"\r\nbody\r\n\r\nmore"), b"");
        assert_eq!(header_section(b"A: 1\r\nno end"), b"A: 1\r\nno end");
    }

    #[test]
    fn fields_are_unfolded_and_stop_at_the_body() {
        let f = fields(b"Subject: a\r\n  b\r\nFrom: x@y.test\r\n\r\nNot: header\r\n");
        assert_eq!(
            f,
            vec![
                Field {
                    name: "Subject".into(),
                    value: "a b".into()
                },
                Field {
                    name: "From".into(),
                    value: "x@y.test".into()
                },
            ]
        );
    }

    #[test]
    fn counting_sees_names_not_values_continuations_or_the_body() {
        let content = b"Received: a\r\n  from x\r\nreceived : b\r\nX-Received: c\r\n\
Subject: Received: d\r\nReceivedX: e\r\n\r\nReceived: in the body\r\n";
        assert_eq!(count(content, "Received"), 2);
    }

    /// The streaming counter gives the one-piece answer however the content is split.
    #[test]
    fn counting_in_pieces_matches_counting_whole() {
        let samples: [&[u8]; 7] = [
            b"Received: a\r\n  from x\r\nreceived : b\r\nX-Received: c\r\n\
Subject: Received: d\r\nReceivedX: e\r\n\r\nReceived: in the body\r\n",
            b"Received:x\nReceived\t:y\n\nReceived: z\n",
            b"\r\nReceived: body only\r\n",
            b"\rReceived: not at a line start\r\nReceived: yes\r\n",
            b"Receive: no\r\nReceived\r\nReceived \r:\r\nRECEIVED:\r\n",
            b"Received: no end",
            b"",
        ];
        for content in samples {
            let whole = lines(header_section(content))
                .filter(|line| is_field(line, "Received"))
                .count();
            assert_eq!(
                count(content, "Received"),
                whole,
                "{}",
                content.escape_ascii()
            );
            for split in 0..=content.len() {
                let mut counter = FieldCounter::new("Received");
                counter.feed(&content[..split]);
                counter.feed(&content[split..]);
                assert_eq!(
                    counter.count(),
                    whole,
                    "split at {split}: {}",
                    content.escape_ascii()
                );
            }
        }
    }

    #[test]
    fn automatic_mail_is_recognised() {
        for content in [
            &b"Auto-Submitted: auto-replied\r\n\r\nx"[..],
            b"auto-submitted: Auto-Generated; owner-email=\"a@b\"\r\n\r\n",
            b"Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=x\r\n\r\n",
            b"Content-Type: Multipart/Report\r\n\r\n",
        ] {
            assert!(is_automatic(content), "{}", content.escape_ascii());
        }
        for content in [
            &b"Auto-Submitted: no\r\n\r\n"[..],
            b"Auto-Submitted: No (a person wrote this)\r\n\r\n",
            b"Content-Type: multipart/mixed\r\n\r\n",
            b"Subject: hi\r\n\r\nAuto-Submitted: auto-replied\r\n",
            b"",
        ] {
            assert!(!is_automatic(content), "{}", content.escape_ascii());
        }
    }
}

//! Properties of the command side: no input panics, splitting never changes a result, and what
//! a client writes is what the server reads back.

use proptest::prelude::*;
use relayward_protocol::command::{Command, Param, parse_command};
use relayward_protocol::data::{DataError, DataReceiver, DataStatus, crlf_line_ends, dot_stuff};
use relayward_protocol::line::{LineBuffer, LineEvent};
use relayward_protocol::path::{parse_forward_path, parse_reverse_path};

/// Bytes rich in the octets that decide framing, so splits land on interesting places.
fn framing_bytes(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => Just(b'\r'),
        4 => Just(b'\n'),
        4 => Just(b'.'),
        4 => Just(b'a'),
        1 => any::<u8>(),
    ];
    prop::collection::vec(byte, 0..max_len)
}

/// Cuts `input` at the given (unsorted, possibly repeated) positions.
fn chunks(input: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for cut in cuts.into_iter().chain([input.len()]) {
        out.push(input[start..cut].to_vec());
        start = cut;
    }
    out
}

fn line_events(max_line: usize, chunks: &[Vec<u8>]) -> (Vec<LineEvent>, usize) {
    let mut buffer = LineBuffer::new(max_line);
    let mut events = Vec::new();
    for chunk in chunks {
        buffer.extend(chunk);
        events.extend(std::iter::from_fn(|| buffer.next_event()));
    }
    (events, buffer.buffered())
}

/// A DATA outcome with `Done` positions counted from the start of the whole input.
fn data_outcome(chunks: &[Vec<u8>]) -> (String, Vec<u8>) {
    let mut rx = DataReceiver::new(300);
    let mut sink = Vec::new();
    let mut offset = 0;
    let mut refused = String::new();
    for chunk in chunks {
        let mut rest: &[u8] = chunk;
        loop {
            match rx.feed(rest, &mut sink) {
                DataStatus::NeedMore => {
                    offset += rest.len();
                    break;
                }
                // Where the refusal comes must not depend on how the input was split.
                DataStatus::Refused { consumed, error } => {
                    offset += consumed;
                    rest = &rest[consumed..];
                    refused = format!("refused at {offset} {error:?}, ");
                }
                DataStatus::Done { consumed, error } => {
                    return (
                        format!("{refused}done at {} {error:?}", offset + consumed),
                        sink,
                    );
                }
                DataStatus::Fatal(error) => {
                    return (format!("{refused}fatal {error:?}"), Vec::new());
                }
            }
        }
    }
    (format!("{refused}need more"), sink)
}

/// Dot-stuffing written out independently of `dot_stuff`, so the two check each other.
fn stuff_lines(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

const VERBS: &[&str] = &[
    "EHLO ",
    "HELO ",
    "MAIL FROM:",
    "MAIL FROM:<",
    "RCPT TO:",
    "RCPT TO:<",
    "AUTH ",
    "BDAT ",
    "VRFY ",
    "HELP ",
    "DATA",
    "NOOP ",
];

fn mailbox() -> impl Strategy<Value = String> {
    let local = prop_oneof![
        "[a-z0-9]{1,10}(\\.[a-z0-9+=_-]{1,8}){0,2}",
        "\"[a-z <>@,:]{0,12}\"",
    ];
    (local, "[a-z0-9]{1,10}(\\.[a-z0-9]{1,8}){0,2}").prop_map(|(l, d)| format!("{l}@{d}.test"))
}

fn mail_params() -> impl Strategy<Value = Vec<Param>> {
    let size = proptest::option::of("[0-9]{1,20}".prop_map(|v| param("SIZE", &v)));
    let body =
        proptest::option::of(prop_oneof!["7BIT", "8BITMIME"].prop_map(|v| param("BODY", &v)));
    let auth = proptest::option::of(
        prop_oneof!["<>", "[a-z]{1,8}\\+40[a-z]{1,8}"].prop_map(|v| param("AUTH", &v)),
    );
    (size, body, auth).prop_map(|(s, b, a)| [s, b, a].into_iter().flatten().collect())
}

fn param(keyword: &str, value: &str) -> Param {
    Param {
        keyword: keyword.into(),
        value: Some(value.into()),
    }
}

/// Valid commands, in the form a client would build them.
fn command() -> impl Strategy<Value = Command> {
    let word = "[A-Za-z0-9]{1,10}( [A-Za-z0-9]{1,10}){0,3}";
    prop_oneof![
        "[a-z0-9_-]{1,20}(\\.[a-z0-9-]{1,10}){0,3}".prop_map(Command::Ehlo),
        "\\[192\\.0\\.2\\.[0-9]{1,2}\\]".prop_map(Command::Helo),
        (proptest::option::of(mailbox()), mail_params()).prop_filter_map("path", |(m, params)| {
            let wire = m.map_or("<>".to_owned(), |m| format!("<{m}>"));
            Some(Command::mail(parse_reverse_path(&wire).ok()?, params))
        }),
        mailbox().prop_filter_map("path", |m| {
            Some(Command::rcpt(
                parse_forward_path(&format!("<{m}>")).ok()?,
                Vec::new(),
            ))
        }),
        (any::<u64>(), any::<bool>()).prop_map(|(size, last)| Command::Bdat { size, last }),
        Just(Command::Data),
        Just(Command::Rset),
        Just(Command::Noop),
        Just(Command::Quit),
        Just(Command::StartTls),
        word.prop_map(Command::Vrfy),
        word.prop_map(Command::Expn),
        proptest::option::of(word).prop_map(Command::Help),
        (
            "[A-Z0-9_-]{1,20}",
            proptest::option::of(prop::collection::vec(any::<u8>(), 0..40))
        )
            .prop_map(|(mechanism, response)| Command::Auth {
                mechanism,
                initial_response: response.map(base64_or_empty),
            }),
    ]
}

fn base64_or_empty(bytes: Vec<u8>) -> String {
    use base64::Engine as _;
    if bytes.is_empty() {
        "=".into()
    } else {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn parse_command_never_panics_on_bytes(line in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_command(&line);
    }

    #[test]
    fn parse_command_never_panics_on_near_commands(
        verb in prop::sample::select(VERBS),
        rest in "[ -~\t]{0,300}",
    ) {
        let _ = parse_command(format!("{verb}{rest}").as_bytes());
    }

    #[test]
    fn valid_commands_round_trip_through_their_line(command in command()) {
        let line = command.to_line();
        prop_assert_eq!(parse_command(line.as_bytes()), Ok(command), "line {:?}", line);
    }

    #[test]
    fn line_buffer_ignores_how_input_is_split(
        input in framing_bytes(400),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        max_line in 1usize..40,
    ) {
        let whole = line_events(max_line, std::slice::from_ref(&input));
        prop_assert_eq!(line_events(max_line, &chunks(&input, &cuts)), whole);
    }

    #[test]
    fn line_buffer_only_hands_out_clean_lines_within_the_limit(
        input in framing_bytes(400),
        max_line in 2usize..40,
    ) {
        for event in line_events(max_line, &[input]).0 {
            if let LineEvent::Line(line) = event {
                prop_assert!(line.len() + 2 <= max_line);
                prop_assert!(!line.contains(&b'\r') && !line.contains(&b'\n'));
            }
        }
    }

    #[test]
    fn data_receiver_ignores_how_input_is_split(
        input in framing_bytes(600),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let whole = data_outcome(std::slice::from_ref(&input));
        prop_assert_eq!(data_outcome(&chunks(&input, &cuts)), whole);
    }

    #[test]
    fn data_receiver_undoes_dot_stuffing(
        lines in prop::collection::vec(
            prop::collection::vec(prop_oneof![Just(b'.'), any::<u8>()], 0..50)
                .prop_map(|l| l.into_iter().filter(|b| *b != b'\r' && *b != b'\n').collect::<Vec<u8>>()),
            0..20,
        ),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let text: Vec<u8> = lines.iter().flat_map(|l| [l.as_slice(), b"\r\n"].concat()).collect();
        let wire = stuff_lines(&lines);
        prop_assert_eq!(&dot_stuff(&text), &wire);
        let mut rx = DataReceiver::new(u64::MAX);
        let mut sink = Vec::new();
        let mut statuses = Vec::new();
        for chunk in chunks(&wire, &cuts).iter().filter(|c| !c.is_empty()) {
            statuses.push(rx.feed(chunk, &mut sink));
        }
        let last = statuses.pop();
        prop_assert!(statuses.iter().all(|s| *s == DataStatus::NeedMore));
        // A NUL is content to the framing, refused only at the end (see DataError::Nul).
        let verdict = text.contains(&0).then_some(DataError::Nul);
        let ended_cleanly = matches!(last, Some(DataStatus::Done { error, .. }) if error == verdict);
        prop_assert!(ended_cleanly, "last status {:?}", last);
        prop_assert_eq!(sink, text);
    }

    /// Whatever bytes go in, `dot_stuff` frames them so that a strict receiver (ours) ends the
    /// data exactly at the terminator and never sees a bare CR or LF: what the delivery agent
    /// sends can never be read as two messages by the next hop.
    #[test]
    fn dot_stuff_of_any_bytes_is_valid_framing(
        input in prop::collection::vec(prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), any::<u8>()], 0..400),
    ) {
        let wire = dot_stuff(&input);
        let mut rx = DataReceiver::new(u64::MAX);
        let mut sink = Vec::new();
        let status = rx.feed(&wire, &mut sink);
        let consumed_all = matches!(
            status,
            DataStatus::Done { consumed, error: None | Some(DataError::LineTooLong | DataError::Nul) } if consumed == wire.len()
        );
        prop_assert!(consumed_all, "status {:?} for {:?}", status, input);
    }

    /// What `BDAT` sends of any bytes is what `DATA` sends once the receiver has undone its
    /// framing, and a strict BDAT receiver (ours) finds no bare CR or LF in it.
    #[test]
    fn crlf_line_ends_is_dot_stuffs_content_and_valid_bdat(
        input in prop::collection::vec(prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), any::<u8>()], 0..400),
    ) {
        let chunk = crlf_line_ends(&input);
        let mut rx = DataReceiver::new(u64::MAX);
        let mut unframed = Vec::new();
        rx.feed(&dot_stuff(&input), &mut unframed);
        if rx_kept_everything(&input) {
            prop_assert_eq!(&unframed, &*chunk);
        }
        let mut bdat = relayward_protocol::bdat::BdatReceiver::new(u64::MAX);
        prop_assert!(bdat.start_chunk(chunk.len() as u64, true).is_ok());
        let mut sink = Vec::new();
        let status = bdat.feed(&chunk, &mut sink);
        let accepted = matches!(
            status,
            relayward_protocol::bdat::ChunkStatus::ChunkDone { consumed, .. } if consumed == chunk.len()
        ) || (chunk.is_empty() && status == relayward_protocol::bdat::ChunkStatus::NeedMore);
        prop_assert!(accepted, "status {:?} for {:?}", status, input);
    }
}

/// The DATA receiver stops keeping content after a NUL or an over-long line; only inputs
/// without either are compared octet for octet.
fn rx_kept_everything(input: &[u8]) -> bool {
    !input.contains(&0) && input.len() < relayward_protocol::limits::MAX_ACCEPTED_TEXT_LINE
}

//! The command parser, as tables: what a client sends → what the parser makes of it.

use relayward_protocol::command::{Command, CommandError, Param, parse_command};
use relayward_protocol::path::{ForwardPath, PathError, ReversePath};

/// An error as a short name, so the tables read like the reply the session will send.
fn kind(error: &CommandError) -> String {
    match error {
        CommandError::Unrecognized => "Unrecognized".into(),
        CommandError::Syntax(_) => "Syntax".into(),
        CommandError::BadPath(e) => format!("BadPath({e:?})"),
        CommandError::BadParam(k) => format!("BadParam({k})"),
        CommandError::BadCharacter => "BadCharacter".into(),
    }
}

fn parse(line: &str) -> Result<Command, CommandError> {
    parse_command(line.as_bytes())
}

/// Accepted lines and their canonical form (`to_line`) — verb upper-cased, spacing normalised.
const ACCEPTED: &[(&str, &str)] = &[
    ("EHLO mx.example.test", "EHLO mx.example.test"),
    ("ehlo mx.example.test", "EHLO mx.example.test"),
    ("EHLO   localhost  ", "EHLO localhost"),
    ("EHLO my_host", "EHLO my_host"),
    ("EHLO 1234", "EHLO 1234"),
    ("EHLO [192.0.2.1]", "EHLO [192.0.2.1]"),
    ("EHLO [IPv6:2001:db8::1]", "EHLO [IPv6:2001:db8::1]"),
    ("HeLo client.test", "HELO client.test"),
    ("EHLO\tclient.test", "EHLO client.test"),
    (
        "MAIL FROM:\t<a@example.test>\tBODY=7bit",
        "MAIL FROM:<a@example.test> BODY=7BIT",
    ),
    ("MAIL FROM:<>", "MAIL FROM:<>"),
    ("mail from:<a@example.test>", "MAIL FROM:<a@example.test>"),
    ("MAIL FROM: <a@example.test>", "MAIL FROM:<a@example.test>"),
    (
        "MAIL FROM:   <a@example.test>",
        "MAIL FROM:<a@example.test>",
    ),
    (
        "MAIL FROM:<a@example.test> SIZE=1000",
        "MAIL FROM:<a@example.test> SIZE=1000",
    ),
    (
        "MAIL FROM:<a@example.test>  size=1000   body=8bitmime",
        "MAIL FROM:<a@example.test> SIZE=1000 BODY=8BITMIME",
    ),
    (
        "MAIL FROM:<a@example.test> BODY=7BIT",
        "MAIL FROM:<a@example.test> BODY=7BIT",
    ),
    (
        "MAIL FROM:<a@example.test> AUTH=<>",
        "MAIL FROM:<a@example.test> AUTH=<>",
    ),
    (
        "MAIL FROM:<a@example.test> AUTH=alice+40example.test",
        "MAIL FROM:<a@example.test> AUTH=alice+40example.test",
    ),
    (
        "MAIL FROM:<a@example.test> SIZE=99999999999999999999",
        "MAIL FROM:<a@example.test> SIZE=99999999999999999999",
    ),
    (
        "MAIL FROM:<a@example.test> smtputf8",
        "MAIL FROM:<a@example.test> SMTPUTF8",
    ),
    (
        "MAIL FROM:<jürgen@exämple.test> SMTPUTF8",
        "MAIL FROM:<jürgen@exämple.test> SMTPUTF8",
    ),
    (
        "MAIL FROM:<a@example.test> RET=HDRS ENVID=QQ+2B123",
        "MAIL FROM:<a@example.test> RET=HDRS ENVID=QQ+2B123",
    ),
    (
        "MAIL FROM:<a@example.test> ret=full",
        "MAIL FROM:<a@example.test> RET=full",
    ),
    ("RCPT TO:<b@example.test>", "RCPT TO:<b@example.test>"),
    ("RCPT TO:<bøb@example.test>", "RCPT TO:<bøb@example.test>"),
    (
        r#"RCPT TO:<"a b>c"@x.test> NOTIFY=NEVER"#,
        r#"RCPT TO:<"a b>c"@x.test> NOTIFY=NEVER"#,
    ),
    (
        "RCPT TO:<b@example.test> NOTIFY=success,failure,delay ORCPT=rfc822;b+2Bx@example.test",
        "RCPT TO:<b@example.test> NOTIFY=success,failure,delay ORCPT=rfc822;b+2Bx@example.test",
    ),
    (
        "RCPT TO:<bøb@example.test> ORCPT=utf-8;b\\x{F8}b@example.test",
        "RCPT TO:<bøb@example.test> ORCPT=utf-8;b\\x{F8}b@example.test",
    ),
    ("rcpt to: <b@example.test>", "RCPT TO:<b@example.test>"),
    ("RCPT TO:<Postmaster>", "RCPT TO:<Postmaster>"),
    (
        r#"RCPT TO:<"a b>c"@example.test>"#,
        r#"RCPT TO:<"a b>c"@example.test>"#,
    ),
    (
        "RCPT TO:<@relay.test:b@example.test>",
        "RCPT TO:<@relay.test:b@example.test>",
    ),
    ("DATA", "DATA"),
    ("data ", "DATA"),
    ("BDAT 1000", "BDAT 1000"),
    ("BDAT 0 last", "BDAT 0 LAST"),
    ("RSET", "RSET"),
    ("NOOP", "NOOP"),
    ("NOOP anything at all", "NOOP"),
    ("QUIT", "QUIT"),
    ("VRFY alice", "VRFY alice"),
    ("EXPN staff", "EXPN staff"),
    ("HELP", "HELP"),
    ("HELP MAIL", "HELP MAIL"),
    ("STARTTLS", "STARTTLS"),
    ("AUTH PLAIN", "AUTH PLAIN"),
    (
        "auth plain AGFsaWNlAHNlY3JldA==",
        "AUTH PLAIN AGFsaWNlAHNlY3JldA==",
    ),
    ("AUTH PLAIN =", "AUTH PLAIN ="),
    ("AUTH login", "AUTH LOGIN"),
    ("AUTH CRAM-MD5", "AUTH CRAM-MD5"),
];

/// Refused lines and why.
const REFUSED: &[(&str, &str)] = &[
    ("", "Unrecognized"),
    ("FOO", "Unrecognized"),
    ("MAILFROM:<a@example.test>", "Unrecognized"),
    ("PROXY TCP4 192.0.2.1 192.0.2.2 12345 25", "Unrecognized"),
    ("XCLIENT ADDR=192.0.2.1", "Unrecognized"),
    ("XFORWARD ADDR=192.0.2.1", "Unrecognized"),
    ("GET / HTTP/1.1", "Unrecognized"),
    ("EHLO", "Syntax"),
    ("HELO ", "Syntax"),
    ("EHLO two words", "Syntax"),
    ("EHLO bad/name", "Syntax"),
    ("EHLO [192.0.2.1", "Syntax"),
    ("EHLO []", "Syntax"),
    ("EHLO a\tb", "Syntax"),
    ("MAIL", "Syntax"),
    ("MAIL TO:<a@example.test>", "Syntax"),
    ("MAIL FROM:", "Syntax"),
    ("MAIL FROM <a@example.test>", "Syntax"),
    ("MAIL FROM:a@example.test", "BadPath(MissingBrackets)"),
    ("MAIL FROM:<a@example.test", "BadPath(MissingBrackets)"),
    ("MAIL FROM:<a@example.test>SIZE=10", "Syntax"),
    ("MAIL FROM:<a@example.test> SIZE", "BadParam(SIZE)"),
    ("MAIL FROM:<a@example.test> SIZE=", "BadParam(SIZE)"),
    ("MAIL FROM:<a@example.test> SIZE=12k", "BadParam(SIZE)"),
    ("MAIL FROM:<a@example.test> SIZE=-1", "BadParam(SIZE)"),
    (
        "MAIL FROM:<a@example.test> SIZE=123456789012345678901",
        "BadParam(SIZE)",
    ),
    ("MAIL FROM:<a@example.test> SIZE=1 SIZE=2", "BadParam(SIZE)"),
    ("MAIL FROM:<a@example.test> size=1 SIZE=1", "BadParam(SIZE)"),
    (
        "MAIL FROM:<a@example.test> BODY=BINARYMIME",
        "BadParam(BODY)",
    ),
    ("MAIL FROM:<a@example.test> BODY", "BadParam(BODY)"),
    ("MAIL FROM:<a@example.test> AUTH=", "BadParam(AUTH)"),
    ("MAIL FROM:<a@example.test> AUTH=a+4", "BadParam(AUTH)"),
    ("MAIL FROM:<a@example.test> AUTH=a=b", "BadParam(AUTH)"),
    (
        "MAIL FROM:<a@example.test> SMTPUTF8=yes",
        "BadParam(SMTPUTF8)",
    ),
    ("MAIL FROM:<a@example.test> RET=ALL", "BadParam(RET)"),
    ("MAIL FROM:<a@example.test> RET", "BadParam(RET)"),
    ("MAIL FROM:<a@example.test> ENVID=a+4", "BadParam(ENVID)"),
    (
        "MAIL FROM:<a@example.test> NOTIFY=NEVER",
        "BadParam(NOTIFY)",
    ),
    (
        "MAIL FROM:<a@example.test> BODY=8BITMIME BODY=7BIT",
        "BadParam(BODY)",
    ),
    ("MAIL FROM:<jürgen@exämple.test> BODY=ü", "BadParam(BODY)"),
    (
        "MAIL FROM:<a@xn--example-.test> SMTPUTF8",
        "BadPath(BadDomain)",
    ),
    ("MAIL FROM:<a@example.test> -X=1", "Syntax"),
    ("MAIL FROM:<a@example.test> X_Y=1", "Syntax"),
    ("RCPT TO:b@example.test", "BadPath(MissingBrackets)"),
    ("RCPT TO:", "Syntax"),
    ("RCPT FROM:<b@example.test>", "Syntax"),
    (
        "RCPT TO:<b@example.test> NOTIFY=NEVER,SUCCESS",
        "BadParam(NOTIFY)",
    ),
    ("RCPT TO:<b@example.test> NOTIFY=", "BadParam(NOTIFY)"),
    (
        "RCPT TO:<b@example.test> NOTIFY=SOMETIMES",
        "BadParam(NOTIFY)",
    ),
    (
        "RCPT TO:<b@example.test> ORCPT=b@example.test",
        "BadParam(ORCPT)",
    ),
    ("RCPT TO:<b@example.test> ORCPT=rfc822;", "BadParam(ORCPT)"),
    ("RCPT TO:<b@example.test> RET=FULL", "BadParam(RET)"),
    ("RCPT TO:<b@example.test> SMTPUTF8", "BadParam(SMTPUTF8)"),
    ("DATA now", "Syntax"),
    ("RSET all", "Syntax"),
    ("QUIT now", "Syntax"),
    ("STARTTLS please", "Syntax"),
    ("VRFY", "Syntax"),
    ("EXPN ", "Syntax"),
    ("BDAT", "Syntax"),
    ("BDAT -1", "Syntax"),
    ("BDAT 10 LAST more", "Syntax"),
    ("BDAT 10 FIRST", "Syntax"),
    ("BDAT 99999999999999999999999", "Syntax"),
    ("AUTH", "Syntax"),
    ("AUTH PLAIN abc def", "Syntax"),
    ("AUTH PLAIN !!!!", "Syntax"),
    ("AUTH PLAIN AGFsaWNl=AA", "Syntax"),
    ("AUTH MECHANISM-NAME-TOO-LONG", "Syntax"),
    ("AUTH PL/AIN", "Syntax"),
];

#[test]
fn accepted_lines_parse_to_their_canonical_form() {
    for (line, canonical) in ACCEPTED {
        match parse(line) {
            Ok(command) => assert_eq!(command.to_line(), *canonical, "{line:?}"),
            Err(e) => panic!("{line:?} refused: {e:?}"),
        }
    }
}

#[test]
fn refused_lines_say_why() {
    for (line, expected) in REFUSED {
        match parse(line) {
            Ok(command) => panic!("{line:?} accepted as {command:?}"),
            Err(e) => assert_eq!(kind(&e), *expected, "{line:?}"),
        }
    }
}

#[test]
fn forbidden_octets_are_bad_characters() {
    for line in [
        &b"NOOP\0"[..],
        b"MAIL FROM:<a\0@example.test>",
        b"EHLO caf\xc3\xa9.test",
        b"VRFY j\xc3\xbcrgen",
        b"NOOP \xc3\xbc",
        b"RCPT TO:<\xff@example.test>",
        b"MAIL FROM:<a\xc2\x85@example.test>",
        b"RCPT TO:<j\xc3\xbcrgen@example.test\x00>",
        b"NOOP\x1b[31m",
        b"NOOP\x7f",
        b"QUIT\r",
        b"QUIT\nRSET",
    ] {
        assert_eq!(
            parse_command(line),
            Err(CommandError::BadCharacter),
            "{:?}",
            line.escape_ascii().to_string()
        );
    }
    assert_eq!(parse_command(b"NOOP\tx"), Ok(Command::Noop));
}

#[test]
fn mail_and_rcpt_lines_may_carry_their_extensions() {
    let orcpt = format!(
        "RCPT TO:<b@example.test> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;{}",
        "b".repeat(480)
    );
    assert!(orcpt.len() > 512);
    assert!(parse(&orcpt).is_ok(), "{}", orcpt.len());
    let too_long = format!("RCPT TO:<b@example.test> {}", "X".repeat(1100));
    assert!(matches!(parse(&too_long), Err(CommandError::Syntax(_))));
}

#[test]
fn lines_over_512_octets_with_crlf_are_refused() {
    let fits = format!("NOOP {}", "x".repeat(505));
    assert_eq!(fits.len(), 510);
    assert_eq!(parse(&fits), Ok(Command::Noop));
    let over = format!("NOOP {}", "x".repeat(506));
    assert!(matches!(parse(&over), Err(CommandError::Syntax(_))));
}

#[test]
fn mail_keeps_the_wire_path_and_its_parsed_form() {
    let Ok(Command::Mail { wire, from, params }) = parse("MAIL FROM: <Alice@Example.TEST> SIZE=42")
    else {
        panic!("not a MAIL command");
    };
    assert_eq!(wire, "<Alice@Example.TEST>");
    let ReversePath::Path { route, mailbox } = from else {
        panic!("null sender");
    };
    assert!(route.is_empty());
    assert_eq!(mailbox.local.wire, "Alice");
    assert_eq!(
        params,
        [Param {
            keyword: "SIZE".into(),
            value: Some("42".into())
        }]
    );
}

#[test]
fn null_sender_and_postmaster() {
    assert!(matches!(
        parse("MAIL FROM:<>"),
        Ok(Command::Mail {
            from: ReversePath::Null,
            ..
        })
    ));
    assert!(matches!(
        parse("RCPT TO:<postmaster>"),
        Ok(Command::Rcpt {
            to: ForwardPath::Postmaster,
            ..
        })
    ));
}

#[test]
fn quoted_local_part_with_space_and_bracket_stays_one_path() {
    let Ok(Command::Rcpt { wire, to, params }) =
        parse(r#"RCPT TO:<"victim@other.test> x"@example.test>"#)
    else {
        panic!("not an RCPT command");
    };
    assert_eq!(wire, r#"<"victim@other.test> x"@example.test>"#);
    assert!(params.is_empty());
    let ForwardPath::Path { mailbox, .. } = to else {
        panic!("postmaster")
    };
    assert_eq!(mailbox.local.value, "victim@other.test> x");
    assert!(mailbox.local.quoted);
}

#[test]
fn a_malformed_path_is_reported_by_the_path_parser() {
    assert!(matches!(
        parse("RCPT TO:<a b@example.test>"),
        Err(CommandError::BadPath(_))
    ));
    assert!(matches!(parse("RCPT TO:<>"), Err(CommandError::BadPath(_))));
    assert!(matches!(
        parse("MAIL FROM:< a@example.test>"),
        Err(CommandError::BadPath(_))
    ));
    assert_eq!(
        parse(&format!("RCPT TO:<{}@example.test>", "a".repeat(65))),
        Err(CommandError::BadPath(PathError::LocalPartTooLong))
    );
}

#[test]
fn parameters_are_checked_before_the_path() {
    assert_eq!(
        parse("RCPT TO:<a b> NOTIFY=SOMETIMES"),
        Err(CommandError::BadParam("NOTIFY".into()))
    );
}

#[test]
fn auth_keeps_the_initial_response_as_sent() {
    assert_eq!(
        parse("AUTH plain dGVzdAB0ZXN0AHRlc3Q="),
        Ok(Command::Auth {
            mechanism: "PLAIN".into(),
            initial_response: Some("dGVzdAB0ZXN0AHRlc3Q=".into())
        })
    );
}

#[test]
fn bdat_size_and_last() {
    assert_eq!(
        parse("BDAT 18446744073709551615 LAST"),
        Ok(Command::Bdat {
            size: u64::MAX,
            last: true
        })
    );
}

#[test]
fn verbs_for_logs() {
    let verbs: Vec<&str> = ACCEPTED
        .iter()
        .filter_map(|(line, _)| parse(line).ok())
        .map(|c| c.verb())
        .collect();
    for verb in [
        "EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "EXPN",
        "HELP", "STARTTLS", "AUTH",
    ] {
        assert!(verbs.contains(&verb), "{verb} missing");
    }
}

#[test]
fn declared_size_reads_the_size_parameter() {
    let size = |line: &str| parse(line).ok().and_then(|c| c.declared_size());
    assert_eq!(size("MAIL FROM:<> SIZE=1000"), Some(1000));
    assert_eq!(
        size("MAIL FROM:<> SIZE=99999999999999999999"),
        Some(u64::MAX)
    );
    assert_eq!(size("MAIL FROM:<>"), None);
}

#[test]
fn client_constructors_write_the_wire_from_the_path() {
    let Ok(Command::Rcpt { to, .. }) = parse("RCPT TO:<@a.test,@b.test:c@example.test>") else {
        panic!("not an RCPT command");
    };
    let rcpt = Command::rcpt(to, Vec::new());
    assert_eq!(rcpt.to_line(), "RCPT TO:<@a.test,@b.test:c@example.test>");
    assert_eq!(parse(&rcpt.to_line()), Ok(rcpt));
    let mail = Command::mail(
        ReversePath::Null,
        vec![Param {
            keyword: "BODY".into(),
            value: Some("8BITMIME".into()),
        }],
    );
    assert_eq!(mail.to_line(), "MAIL FROM:<> BODY=8BITMIME");
    assert_eq!(parse(&mail.to_line()), Ok(mail));
}

//! SASL PLAIN (RFC 4616) and LOGIN decoding, as transcripts: client line → step or reply.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use relayward_server::auth::{
    Credentials, MAX_SASL_LINE, SaslError, SaslExchange, SaslMechanism, SaslStep, decode_plain,
};

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn creds(login: &str, password: &str) -> SaslStep {
    SaslStep::Done(Credentials {
        login: login.into(),
        password: password.as_bytes().to_vec(),
    })
}

/// `code enhanced` of an error's reply.
fn code(err: &SaslError) -> String {
    let reply = err.reply();
    format!(
        "{} {}",
        reply.code,
        reply.enhanced.map(|e| e.to_string()).unwrap_or_default()
    )
}

#[test]
fn plain_initial_response_table() {
    let rows: Vec<(String, Result<SaslStep, &str>)> = vec![
        (
            b64(b"\0alice@example.test\0secret"),
            Ok(creds("alice@example.test", "secret")),
        ),
        (
            b64(b"alice@example.test\0alice@example.test\0secret"),
            Ok(creds("alice@example.test", "secret")),
        ),
        (
            b64(b"ALICE@example.test\0alice@example.test\0secret"),
            Ok(creds("alice@example.test", "secret")),
        ),
        (
            b64(b"\0alice\0pass with spaces and \xc3\xa9"),
            Ok(creds("alice", "pass with spaces and é")),
        ),
        // Unpadded base64 is accepted (some clients omit the padding).
        (
            b64(b"\0alice\0secret1").trim_end_matches('=').to_string(),
            Ok(creds("alice", "secret1")),
        ),
        (
            b64(b"bob@example.test\0alice@example.test\0secret"),
            Err("535 5.7.8"),
        ),
        (b64(b"\0alice@example.test"), Err("501 5.5.2")),
        (b64(b"alice\0secret"), Err("501 5.5.2")),
        (b64(b"\0alice\0secret\0extra"), Err("501 5.5.2")),
        (b64(b"\0\0secret"), Err("501 5.5.2")),
        (b64(b"\0alice\0"), Err("501 5.5.2")),
        (b64(b"\0\xff\xfe\0secret"), Err("501 5.5.2")),
        ("=".to_string(), Err("501 5.5.2")),
        ("!!!!".to_string(), Err("501 5.5.2")),
        ("AGFsaWNlAHNlY3JldA=x".to_string(), Err("501 5.5.2")),
        ("AGFsa WNlAHNlY3JldA==".to_string(), Err("501 5.5.2")),
        ("*".to_string(), Err("501 5.0.0")),
        ("A".repeat(MAX_SASL_LINE + 4), Err("500 5.5.6")),
    ];
    for (line, expected) in rows {
        let got = SaslExchange::start(SaslMechanism::Plain, Some(&line)).map(|(_, step)| step);
        match (got, expected) {
            (Ok(step), Ok(want)) => assert_eq!(step, want, "{line}"),
            (Err(e), Err(want)) => assert_eq!(code(&e), want, "{line}: {e}"),
            (got, want) => panic!("{line}: got {got:?}, expected {want:?}"),
        }
    }
}

#[test]
fn plain_without_initial_response_asks_with_empty_challenge() {
    let (mut exchange, step) = SaslExchange::start(SaslMechanism::Plain, None).unwrap();
    assert_eq!(step, SaslStep::Challenge(String::new()));
    assert_eq!(
        exchange.respond(&b64(b"\0alice\0secret")).unwrap(),
        creds("alice", "secret")
    );
    // One exchange, one answer.
    assert_eq!(
        exchange.respond(&b64(b"\0alice\0secret")),
        Err(SaslError::Finished)
    );
}

#[test]
fn plain_cancel_after_challenge() {
    let (mut exchange, _) = SaslExchange::start(SaslMechanism::Plain, None).unwrap();
    let err = exchange.respond("*").unwrap_err();
    assert_eq!(code(&err), "501 5.0.0");
}

#[test]
fn login_transcript() {
    let (mut exchange, step) = SaslExchange::start(SaslMechanism::Login, None).unwrap();
    assert_eq!(step, SaslStep::Challenge("VXNlcm5hbWU6".into())); // "Username:"
    let step = exchange.respond(&b64(b"alice@example.test")).unwrap();
    assert_eq!(step, SaslStep::Challenge("UGFzc3dvcmQ6".into())); // "Password:"
    assert_eq!(
        exchange.respond(&b64(b"secret")).unwrap(),
        creds("alice@example.test", "secret")
    );
}

#[test]
fn login_with_initial_username() {
    let (mut exchange, step) =
        SaslExchange::start(SaslMechanism::Login, Some(&b64(b"alice"))).unwrap();
    assert_eq!(step, SaslStep::Challenge("UGFzc3dvcmQ6".into()));
    assert_eq!(exchange.respond(&b64(b"pw")).unwrap(), creds("alice", "pw"));
}

#[test]
fn login_errors() {
    let rows: &[(&[&str], &str)] = &[
        (&["%%%"], "501 5.5.2"),
        (&["*"], "501 5.0.0"),
        (&["="], "501 5.5.2"),
        (&["/w=="], "501 5.5.2"), // 0xff: not UTF-8
        (&["YWxpY2U=", "*"], "501 5.0.0"),
        (&["YWxpY2U=", "not base64!"], "501 5.5.2"),
    ];
    for (lines, expected) in rows {
        let (mut exchange, _) = SaslExchange::start(SaslMechanism::Login, None).unwrap();
        let mut result = Ok(SaslStep::Challenge(String::new()));
        for line in *lines {
            result = exchange.respond(line);
            if result.is_err() {
                break;
            }
        }
        let err = result.expect_err(&format!("{lines:?}"));
        assert_eq!(code(&err), *expected, "{lines:?}");
    }
}

#[test]
fn mechanisms() {
    assert_eq!(SaslMechanism::from_name("plain"), Ok(SaslMechanism::Plain));
    assert_eq!(SaslMechanism::from_name("LOGIN"), Ok(SaslMechanism::Login));
    for name in ["CRAM-MD5", "XOAUTH2", "", "PLAIN "] {
        let err = SaslMechanism::from_name(name).unwrap_err();
        assert_eq!(code(&err), "504 5.5.4", "{name}");
    }
}

#[test]
fn credentials_never_print_the_password() {
    let creds = decode_plain(b"\0alice\0hunter2").unwrap();
    let debug = format!("{creds:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(debug.contains("alice"), "{debug}");
}

#[test]
fn only_authzid_mismatch_counts_as_a_failure() {
    assert!(SaslError::AuthzidMismatch.counts_as_failure());
    assert!(!SaslError::BadBase64.counts_as_failure());
    assert!(!SaslError::Cancelled.counts_as_failure());
}

/// No `[[user]]` login is longer than 256 octets (the configuration refuses one), but a SASL
/// login could be 9 KiB, and every failed one was kept by the limiter, twice (per login and per
/// address–login pair), up to 65,536 of each: about 1.2 GB held by guessers with many
/// addresses. A login that can never succeed is refused before it is counted or checked.
#[test]
fn logins_longer_than_any_user_are_refused_by_both_mechanisms() {
    let fits = "a".repeat(256);
    let long = "a".repeat(257);
    let plain = |login: &str| {
        let response = b64(format!("\0{login}\0secret").as_bytes());
        SaslExchange::start(SaslMechanism::Plain, Some(&response)).map(|(_, step)| step)
    };
    assert_eq!(plain(&fits), Ok(creds(&fits, "secret")));
    assert_eq!(plain(&long).map_err(|e| code(&e)), Err("501 5.5.2".into()));
    assert_eq!(
        plain(&"a".repeat(9000)).map_err(|e| code(&e)),
        Err("501 5.5.2".into())
    );
    let login =
        |login: &str| SaslExchange::start(SaslMechanism::Login, Some(&b64(login.as_bytes())));
    assert!(login(&fits).is_ok());
    assert_eq!(
        login(&long).map(|_| ()).map_err(|e| code(&e)),
        Err("501 5.5.2".into())
    );
}

//! The tester against real servers on loopback: scripted servers that each fall for one class
//! of trick, a closed one, an error-limiting one, AUTH, nothing listening, a silent listener,
//! a hostile one, STARTTLS, and the confirm-mode round trip.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Kind, Spec, config, dump, start, target};
use relayward_probe::report::Outcome;
use relayward_probe::{TargetReport, Verdict, probe_target};

async fn probe(kind: Kind) -> TargetReport {
    let addr = start(Spec::new(kind), "127.0.0.1:0").await;
    run(addr).await
}

async fn run(addr: std::net::SocketAddr) -> TargetReport {
    common::probe_addr(addr, config()).await
}

/// The trick class is detected by exactly the expected ids (all of them, nothing else).
async fn detects(kind: Kind, expected: &[&str]) {
    let r = probe(kind).await;
    assert_eq!(r.verdict, Verdict::Open, "{}", dump(&r));
    let mut got = r.accepted.clone();
    got.sort();
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "{:?}: {}", kind, r.reason);
}

#[tokio::test]
async fn percent_hack() {
    detects(
        Kind::PercentHack,
        &[
            "percent-hack-ip-literal",
            "percent-hack-host-name",
            "percent-hack-local-domain",
            "percent-hack-unqualified",
        ],
    )
    .await;
}

#[tokio::test]
async fn bang_path() {
    detects(
        Kind::BangPath,
        &[
            "bang-path",
            "bang-path-ip-literal",
            "bang-path-host-name",
            "bang-path-local-domain",
            "bang-path-two-hops",
        ],
    )
    .await;
}

#[tokio::test]
async fn quoted_at() {
    detects(
        Kind::QuotedAt,
        &[
            "quoted-at",
            "quoted-at-ip-literal",
            "quoted-at-host-name",
            "quoted-at-local-domain",
            "maps-quote-test",
        ],
    )
    .await;
}

#[tokio::test]
async fn source_route() {
    detects(
        Kind::SourceRoute,
        &[
            "source-route-ip-literal",
            "source-route-host-name",
            "source-route-local-domain",
            "source-route-two-literals",
            "source-route-two-hops",
            "source-route-three-hops",
        ],
    )
    .await;
}

#[tokio::test]
async fn extra_at() {
    detects(
        Kind::ExtraAt,
        &[
            "double-at-ip-literal",
            "double-at-host-name",
            "double-at-local-domain",
        ],
    )
    .await;
}

#[tokio::test]
async fn ip_literal_sender() {
    detects(Kind::IpLiteralSender, &["ip-literal-sender"]).await;
}

#[tokio::test]
async fn literal_recipient() {
    // It relays to any address literal it does not recognise as its own, so the
    // IPv6-literal spellings of its own address fall through to the relay path too.
    detects(
        Kind::LiteralRecipient,
        &[
            "ip-literal-external",
            "percent-hack-ipv6-literal",
            "double-at-ipv6-literal",
            "quoted-at-ipv6-literal",
            "bang-path-ipv6-literal",
        ],
    )
    .await;
}

#[tokio::test]
async fn null_sender() {
    detects(Kind::NullSender, &["null-sender"]).await;
}

#[tokio::test]
async fn local_sender() {
    detects(
        Kind::LocalSender,
        &[
            "local-domain-sender",
            "local-postmaster-sender",
            "local-mailer-daemon-sender",
        ],
    )
    .await;
}

#[tokio::test]
async fn plain_open_relay() {
    let r = probe(Kind::PlainOpen).await;
    assert_eq!(r.verdict, Verdict::Open, "{}", dump(&r));
    for id in [
        "plain-external",
        "null-sender",
        "space-before-bracket",
        "lowercase-verbs",
        "bare-ip-external",
    ] {
        assert!(
            r.accepted.iter().any(|a| a == id),
            "{id} not accepted: {:?}",
            r.accepted
        );
    }
}

#[tokio::test]
async fn accept_all_local_is_accept_all() {
    let r = probe(Kind::AcceptAllLocal).await;
    assert_eq!(r.verdict, Verdict::AcceptAll, "{}", dump(&r));
    assert!(!r.accepted.is_empty());
    for id in &r.accepted {
        let trick = relayward_protocol::battery::trick(id).expect("known id");
        assert!(trick.looks_local, "{id} accepted by a mere catch-all");
    }
    let calib = r
        .calibration
        .iter()
        .find(|c| c.id == "calib-random-local-user")
        .expect("calibrated");
    assert_eq!(calib.outcome, Outcome::Accepted);
}

#[tokio::test]
async fn closed_server() {
    let r = probe(Kind::Closed).await;
    assert_eq!(r.verdict, Verdict::Closed, "{}", dump(&r));
    assert!(r.accepted.is_empty());
    let ran = r
        .tests
        .iter()
        .filter(|t| t.outcome != Outcome::Skipped)
        .count();
    assert_eq!(
        ran,
        relayward_protocol::battery::battery().len() + relayward_probe::special::specials().len()
            - 1,
        "host and local domain known, nothing skipped but failed-auth (no AUTH offered)"
    );
    assert_eq!(r.findings.host_names, ["mx.example.test"]);
    let transcript = r.transcript.clone().unwrap_or_default();
    assert!(
        transcript
            .iter()
            .any(|l| l == ":Relay test: percent-hack-ip-literal")
    );
    assert!(
        transcript
            .iter()
            .any(|l| l == ">>> RCPT TO:<relaytest%to.test@[127.0.0.1]>")
    );
    assert!(transcript.iter().any(|l| l == ">>> RSET"));
    assert!(transcript.iter().any(|l| l == ">>> QUIT"));
    assert!(
        !transcript.iter().any(|l| l == ">>> DATA"),
        "DATA only in confirm mode"
    );
    assert!(
        !transcript.iter().any(|l| l.contains("@ESMTP")),
        "never the word ESMTP as a host"
    );
}

#[tokio::test]
async fn error_limit_reconnects_and_runs_every_test() {
    let mut spec = Spec::new(Kind::Closed);
    spec.max_errors = Some(3);
    let addr = start(spec, "127.0.0.1:0").await;
    let r = run(addr).await;
    assert_eq!(r.verdict, Verdict::Closed, "{}", dump(&r));
    assert!(
        r.findings.reconnects >= 10,
        "reconnects: {}",
        r.findings.reconnects
    );
    let not_run: Vec<&str> = r
        .tests
        .iter()
        .filter(|t| matches!(t.outcome, Outcome::Error | Outcome::Skipped))
        // No AUTH offered: that session-level trick does not apply.
        .filter(|t| t.id != "failed-auth-then-relay")
        .map(|t| t.id.as_str())
        .collect();
    assert!(not_run.is_empty(), "not run: {not_run:?}");
}

/// A server that stops greeting the probe part-way (a per-address connection limit) has not
/// been tested by the tricks that could no longer be sent: they are tests without a usable
/// answer, not skipped ones, so the target is INCONCLUSIVE, never CLOSED on the few that ran.
#[tokio::test]
async fn a_server_that_stops_taking_connections_is_not_closed() {
    let mut spec = Spec::new(Kind::Closed);
    spec.max_errors = Some(3);
    spec.max_sessions = Some(3);
    let addr = start(spec, "127.0.0.1:0").await;
    let r = run(addr).await;
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", dump(&r));
    assert!(r.reason.contains("no usable answer"), "{}", r.reason);
    let unreachable: Vec<&Outcome> = r
        .tests
        .iter()
        .filter(|t| {
            t.note
                .as_deref()
                .is_some_and(|n| n.contains("unreachable after repeated reconnects"))
        })
        .map(|t| &t.outcome)
        .collect();
    assert!(!unreachable.is_empty(), "{}", dump(&r));
    assert!(
        unreachable.iter().all(|o| **o == Outcome::Error),
        "{unreachable:?}"
    );
}

/// A server that drops clients after 10 errors (relayward's default; Postfix slows down there)
/// never gets to: the probe starts a fresh connection on its own before the limit.
#[tokio::test]
async fn probe_stays_under_a_ten_error_limit() {
    let mut spec = Spec::new(Kind::Closed);
    spec.max_errors = Some(10);
    let addr = start(spec, "127.0.0.1:0").await;
    let r = run(addr).await;
    assert_eq!(r.verdict, Verdict::Closed, "{}", dump(&r));
    assert_eq!(
        r.findings.reconnects,
        0,
        "the server had to drop the probe: {}",
        dump(&r)
    );
    let not_run = r
        .tests
        .iter()
        .filter(|t| matches!(t.outcome, Outcome::Error | Outcome::Skipped))
        .filter(|t| t.id != "failed-auth-then-relay")
        .count();
    assert_eq!(not_run, 0, "{}", dump(&r));
}

#[tokio::test]
async fn error_limit_does_not_hide_a_relay() {
    let mut spec = Spec::new(Kind::PercentHack);
    spec.max_errors = Some(2);
    let addr = start(spec, "127.0.0.1:0").await;
    let r = run(addr).await;
    assert_eq!(r.verdict, Verdict::Open, "{}", dump(&r));
    assert!(r.accepted.iter().any(|a| a == "percent-hack-local-domain"));
}

#[tokio::test]
async fn auth_required() {
    let r = probe(Kind::AuthRequired).await;
    assert_eq!(r.verdict, Verdict::AuthRequired, "{}", dump(&r));
    // The MAIL rejection did not hide the RCPT test: RCPT was sent and recorded.
    let t = r
        .tests
        .iter()
        .find(|t| t.id == "percent-hack-ip-literal")
        .expect("test");
    assert_eq!(t.mail_reply.as_ref().map(|m| m.code), Some(530));
    assert!(t.rcpt_reply.is_some());
}

#[tokio::test]
async fn nothing_listening_is_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let r = run(addr).await;
    assert_eq!(r.verdict, Verdict::Unreachable, "{}", r.reason);
}

#[tokio::test]
async fn silent_listener_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut cfg = config();
    cfg.test_timeout = Duration::from_millis(500);
    let started = std::time::Instant::now();
    let r = probe_target(target(addr), Arc::new(cfg)).await;
    assert!(
        matches!(r.verdict, Verdict::Unreachable | Verdict::Inconclusive),
        "{}",
        r.reason
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn hostile_endless_reply_is_bounded() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"220 hostile ready\r\n").await;
                let line = vec![b'A'; 100_000];
                for _ in 0..100 {
                    if s.write_all(b"250-").await.is_err() || s.write_all(&line).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let r = run(addr).await;
    assert!(
        matches!(r.verdict, Verdict::Unreachable | Verdict::Inconclusive),
        "{}",
        r.reason
    );
}

#[tokio::test]
async fn starttls_and_auth_before_tls_are_findings() {
    let mut spec = Spec::new(Kind::Closed);
    spec.tls = Some(common::tls_acceptor());
    spec.advertise_auth = true;
    let addr = start(spec, "127.0.0.1:0").await;
    let r = run(addr).await;
    assert_eq!(r.verdict, Verdict::Closed, "{}", dump(&r));
    assert!(r.findings.starttls_offered);
    let tls = r.findings.tls.as_ref().expect("battery ran over TLS");
    let cert = tls.certificate.as_ref().expect("certificate recorded");
    assert!(!cert.expired);
    assert!(cert.not_after_unix > 0);
    assert_eq!(r.findings.auth_before_tls, ["PLAIN", "LOGIN"]);
    let transcript = r.transcript.clone().unwrap_or_default();
    assert!(transcript.iter().any(|l| l == ">>> STARTTLS"));
}

#[tokio::test]
async fn tls_never_stays_in_cleartext() {
    let mut spec = Spec::new(Kind::Closed);
    spec.tls = Some(common::tls_acceptor());
    let addr = start(spec, "127.0.0.1:0").await;
    let mut cfg = config();
    cfg.tls = relayward_probe::TlsMode::Never;
    let r = probe_target(target(addr), Arc::new(cfg)).await;
    assert_eq!(r.verdict, Verdict::Closed);
    assert!(r.findings.starttls_offered && r.findings.tls.is_none());
}

#[tokio::test]
async fn tls_require_without_starttls_is_inconclusive() {
    let addr = start(Spec::new(Kind::PlainOpen), "127.0.0.1:0").await;
    let mut cfg = config();
    cfg.tls = relayward_probe::TlsMode::Require;
    let r = probe_target(target(addr), Arc::new(cfg)).await;
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", r.reason);
}

#[tokio::test]
async fn json_report_has_the_documented_fields() {
    let r = probe(Kind::PercentHack).await;
    let line = relayward_probe::output::json_line(&r);
    assert!(!line.contains('\n'));
    let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
    for field in [
        "target",
        "ip",
        "port",
        "verdict",
        "reason",
        "accepted",
        "confirmed",
        "tests",
        "calibration",
        "confirm",
        "findings",
        "mx",
        "duration_ms",
        "transcript",
    ] {
        assert!(v.get(field).is_some(), "missing {field}");
    }
    assert!(v["mx"].is_null());
    assert_eq!(v["verdict"], "OPEN");
    let test = &v["tests"][0];
    for field in [
        "id",
        "kind",
        "description",
        "mail_from",
        "rcpt_to",
        "mail_reply",
        "rcpt_reply",
        "outcome",
        "attempts",
        "setup",
    ] {
        assert!(test.get(field).is_some(), "test missing {field}");
    }
    let session = v["tests"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["id"] == "local-then-external"))
        .expect("session-level test in the JSON");
    assert_eq!(session["kind"], "session");
    assert_eq!(
        session["setup"][0]["sent"],
        "RCPT TO:<postmaster@example.test>"
    );
    assert_eq!(test["id"], "plain-external");
    assert_eq!(test["outcome"], "refused");
    assert_eq!(test["rcpt_reply"]["code"], 554);
    assert_eq!(test["rcpt_reply"]["enhanced"], "5.7.1");
    for field in [
        "banner",
        "host_names",
        "starttls_offered",
        "auth_before_tls",
        "vrfy",
        "dnsbl",
        "reconnects",
    ] {
        assert!(
            v["findings"].get(field).is_some(),
            "findings missing {field}"
        );
    }
}

/// A hostile server puts terminal control codes in every reply (the banner included): the
/// table, the findings and the `-v` block show them escaped, so the server cannot redraw its
/// own OPEN row as CLOSED. JSON escapes them by itself.
#[tokio::test]
async fn control_codes_from_the_server_are_escaped_in_every_output_form() {
    let mut spec = Spec::new(Kind::PlainOpen);
    // Cursor up, erase line, then a fake row.
    spec.reply_suffix = Some("\u{1b}[1A\u{1b}[2K\r127.0.0.1:25 CLOSED 0/60".into());
    let addr = start(spec, "127.0.0.1:0").await;
    let r = run(addr).await;
    assert_eq!(r.verdict, Verdict::Open, "{}", dump(&r));
    let banner = r.findings.banner.clone().unwrap_or_default();
    assert!(banner.contains('\u{1b}'), "the raw banner is kept for JSON");
    let text = format!(
        "{}{}\n{}",
        relayward_probe::output::transcript_block(&r),
        relayward_probe::output::table_header(),
        relayward_probe::output::table_row(&r)
    );
    assert!(
        !text.contains('\u{1b}'),
        "raw ESC reached the terminal output"
    );
    assert!(!text.contains('\r'), "raw CR reached the terminal output");
    assert!(
        text.contains("\\x1b[1A\\x1b[2K\\r127.0.0.1:25 CLOSED"),
        "{text}"
    );
    let json = relayward_probe::output::json_line(&r);
    assert!(
        !json.contains('\u{1b}') && json.contains("\\u001b"),
        "{json}"
    );
}

/// Every reply is 255 lines of 4 KB: the probe stops reading past its per-reply limit and
/// calls the target INCONCLUSIVE, instead of buffering a megabyte per command.
#[tokio::test]
async fn huge_replies_make_the_target_inconclusive() {
    let r = flooding_server(255).await;
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", r.reason);
    assert!(
        r.reason.contains("exceed the probe's limits"),
        "{}",
        r.reason
    );
    assert!(r.reason.contains("reply longer than"), "{}", r.reason);
}

/// Replies just under the per-reply limit, to every command: the per-target limit ends it.
#[tokio::test]
async fn a_target_that_floods_is_cut_off_at_the_per_target_limit() {
    let r = flooding_server(15).await;
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", r.reason);
    assert!(
        r.reason.contains("more than 2048 KiB of replies"),
        "{}",
        r.reason
    );
    let transcript = r.transcript.clone().unwrap_or_default();
    let server_bytes: usize = transcript
        .iter()
        .filter(|l| l.starts_with("<<< "))
        .map(|l| l.len())
        .sum();
    // Lines are kept cut to 512 characters; the count of lines shows how much was read.
    let lines = transcript.iter().filter(|l| l.starts_with("<<< ")).count();
    assert!(lines < 1200, "{lines} reply lines read");
    assert!(server_bytes < 1_000_000, "{server_bytes}");
}

/// A server answering every command (banner included) with `lines` lines of 4000 bytes.
async fn flooding_server(lines: usize) -> TargetReport {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut reply = String::new();
    for _ in 1..lines {
        reply.push_str("250-");
        reply.push_str(&"A".repeat(4000));
        reply.push_str("\r\n");
    }
    reply.push_str("250 ok\r\n");
    let banner = reply.replace("250", "220");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (reply, banner) = (reply.clone(), banner.clone());
            tokio::spawn(async move {
                let (read, mut write) = s.into_split();
                let mut read = BufReader::new(read);
                if write.write_all(banner.as_bytes()).await.is_err() {
                    return;
                }
                let mut line = String::new();
                while read.read_line(&mut line).await.is_ok_and(|n| n > 0) {
                    line.clear();
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    run(addr).await
}

/// A server scripted line by line: `banner` first, then `answer(line, pipelined)` for every
/// command line (`pipelined`: more bytes had already arrived behind it); `None` hangs up.
async fn scripted(
    banner: &'static [u8],
    answer: fn(&str, bool) -> Option<Vec<u8>>,
) -> std::net::SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = s.into_split();
                let mut read = BufReader::new(read);
                if write.write_all(banner).await.is_err() {
                    return;
                }
                let mut line = String::new();
                while read.read_line(&mut line).await.is_ok_and(|n| n > 0) {
                    let pipelined = !read.buffer().is_empty();
                    let Some(reply) = answer(line.trim_end(), pipelined) else {
                        return;
                    };
                    line.clear();
                    if write.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A closed server's answers to everything but MAIL.
fn closed_answer(line: &str) -> Option<Vec<u8>> {
    let verb = line
        .split([' ', ':'])
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    Some(match verb.as_str() {
        "EHLO" => b"250-mx.example.test\r\n250 PIPELINING\r\n".to_vec(),
        "RCPT" => b"554 5.7.1 Relay access denied\r\n".to_vec(),
        "QUIT" => return None,
        _ => b"250 2.0.0 Ok\r\n".to_vec(),
    })
}

/// A closed server that answers every MAIL twice: its second 250 must not be taken for the
/// answer to RCPT (the old probe called it ACCEPT-ALL, exit 1, from replies to commands it
/// never sent). Every test is then without a usable answer: INCONCLUSIVE.
#[tokio::test]
async fn a_reply_nobody_asked_for_is_never_taken_for_the_next_command() {
    let addr = scripted(b"220 mx.example.test ESMTP\r\n", |line, _| {
        if line.to_ascii_uppercase().starts_with("MAIL") {
            return Some(b"250 2.1.0 Ok\r\n250 2.1.0 Ok\r\n".to_vec());
        }
        closed_answer(line)
    })
    .await;
    let r = run(addr).await;
    assert!(r.accepted.is_empty(), "{}", dump(&r));
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", dump(&r));
    let transcript = r.transcript.clone().unwrap_or_default();
    assert!(
        transcript.iter().any(|l| l.contains("out of step")),
        "{}",
        dump(&r)
    );
}

/// The same desynchronisation only when the commands arrive pipelined: the three replies
/// read for MAIL, RCPT and RSET are 250, the extra 250, and RCPT's real 554; the fourth
/// reply still waiting shows they were out of step, so `pipelined-relay` is not accepted.
#[tokio::test]
async fn an_extra_reply_to_pipelined_commands_does_not_make_the_relay_accepted() {
    let addr = scripted(b"220 mx.example.test ESMTP\r\n", |line, pipelined| {
        if pipelined && line.to_ascii_uppercase().starts_with("MAIL") {
            return Some(b"250 2.1.0 Ok\r\n250 2.1.0 Ok\r\n".to_vec());
        }
        closed_answer(line)
    })
    .await;
    let r = run(addr).await;
    assert!(r.accepted.is_empty(), "{}", dump(&r));
    assert_eq!(r.verdict, Verdict::Closed, "{}", dump(&r));
    let t = r
        .tests
        .iter()
        .find(|t| t.id == "pipelined-relay")
        .expect("pipelined-relay ran");
    assert_eq!(t.outcome, Outcome::Error, "{t:?}");
}

/// Endless `250-` lines answer EHLO: the 256-line cap ends the read, and the target is
/// INCONCLUSIVE like any server past the reply caps (docs/probe.md, Bounds), not UNREACHABLE.
#[tokio::test]
async fn endless_continuation_lines_make_the_target_inconclusive() {
    let addr = scripted(b"220 mx.example.test ESMTP\r\n", |line, _| {
        if line.to_ascii_uppercase().starts_with("EHLO") {
            return Some(b"250-x\r\n".repeat(1000));
        }
        closed_answer(line)
    })
    .await;
    let r = run(addr).await;
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", dump(&r));
    assert!(
        r.reason.contains("exceed the probe's limits"),
        "{}",
        r.reason
    );
    assert!(r.reason.contains("256 lines"), "{}", r.reason);
}

/// Bytes after the 220 to STARTTLS, before the handshake (RFC 3207 §4.2): STARTTLS is
/// unusable, as after a failed handshake, so `--tls=auto` tests the server in cleartext
/// instead of calling it UNREACHABLE; `--tls=require` makes it INCONCLUSIVE.
#[tokio::test]
async fn bytes_injected_after_the_starttls_reply_fall_back_to_cleartext() {
    let addr = scripted(b"220 mx.example.test ESMTP\r\n", |line, _| {
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            return Some(b"250-mx.example.test\r\n250 STARTTLS\r\n".to_vec());
        }
        if upper == "STARTTLS" {
            return Some(b"220 2.0.0 go ahead\r\n250 injected\r\n".to_vec());
        }
        closed_answer(line)
    })
    .await;
    let r = run(addr).await;
    assert_eq!(r.verdict, Verdict::Closed, "{}", dump(&r));
    let tls_error = r.findings.tls_error.clone().unwrap_or_default();
    assert!(tls_error.contains("before the handshake"), "{tls_error}");
    let mut cfg = config();
    cfg.tls = relayward_probe::TlsMode::Require;
    let r = probe_target(target(addr), Arc::new(cfg)).await;
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", r.reason);
}

/// Durations past what a clock instant holds (`--test-timeout 1000000000y`) mean "no limit":
/// the old probe panicked adding them to the clock and reported the target UNREACHABLE
/// ("probe task failed"); `--confirm-wait` the same once a token was sent.
#[tokio::test]
async fn timeouts_too_long_for_the_clock_mean_no_limit_not_a_panic() {
    let addr = start(Spec::new(Kind::Closed), "127.0.0.1:0").await;
    let mut cfg = config();
    cfg.test_timeout = Duration::MAX;
    cfg.host_timeout = Duration::MAX;
    let r = run_with(addr, cfg).await;
    assert_eq!(r.verdict, Verdict::Closed, "{}", dump(&r));

    let (mut cfg, listen) = common::confirm_config(Duration::MAX).await;
    cfg.test_timeout = Duration::MAX;
    let mut spec = Spec::new(Kind::PlainOpen);
    spec.forward_to = Some(listen);
    let relay = start(spec, "127.0.0.1:0").await;
    let r = run_with(relay, cfg).await;
    assert_eq!(r.verdict, Verdict::ConfirmedOpen, "{}", dump(&r));
}

/// [`run`] with a configuration of its own, in a task: a panic is the test's failure, not
/// the test harness's.
async fn run_with(addr: std::net::SocketAddr, cfg: relayward_probe::ProbeConfig) -> TargetReport {
    tokio::spawn(common::probe_addr(addr, cfg))
        .await
        .expect("the probe did not panic")
}

/// The target's own name (the command line's, an MX record's) is a host-name candidate only
/// if it looks like a domain, like the names from the banner and EHLO (docs/probe.md,
/// TARGET_HOST): an MX name from a hostile DNS (`ev\>il…`, as the resolver escapes it) was
/// written into the host-name tricks' command lines as it was.
#[tokio::test]
async fn a_target_name_that_is_no_domain_is_never_written_into_a_command() {
    let addr = scripted(b"220 ESMTP ready\r\n", |line, _| {
        if line.to_ascii_uppercase().starts_with("EHLO") {
            return Some(b"250-ESMTP\r\n250 PIPELINING\r\n".to_vec());
        }
        closed_answer(line)
    })
    .await;
    let bogus = "ev\\>il.example.test";
    let t = relayward_probe::Target::new(addr, Some(bogus.into()), format!("{bogus}:25"));
    let r = probe_target(t, Arc::new(config())).await;
    assert_eq!(r.verdict, Verdict::Closed, "{}", dump(&r));
    assert!(
        r.findings.host_names.is_empty(),
        "{:?}",
        r.findings.host_names
    );
    let transcript = r.transcript.clone().unwrap_or_default();
    assert!(
        !transcript
            .iter()
            .any(|l| l.starts_with(">>> ") && l.contains("il.example.test")),
        "{}",
        dump(&r)
    );
}

/// A connection opened after the host timeout cannot be used, so no `--rate` slot is waited
/// for past it: the old probe waited for two (a reconnect just before the timeout, then
/// VRFY/EXPN after it), one per five seconds here, and ran ten seconds past a 1.5 s host
/// timeout.
#[tokio::test]
async fn no_rate_slot_is_waited_for_after_the_host_timeout() {
    let mut spec = Spec::new(Kind::Closed);
    spec.reply_delay = Some(Duration::from_millis(400));
    let addr = start(spec, "127.0.0.1:0").await;
    let mut cfg = config();
    cfg.test_timeout = Duration::from_secs(1);
    cfg.host_timeout = Duration::from_millis(1500);
    cfg.rate = Some(Arc::new(relayward_probe::config::RateLimiter::new(0.2)));
    let started = std::time::Instant::now();
    let r = run_with(addr, cfg).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}: {}",
        started.elapsed(),
        dump(&r)
    );
}

/// A relay's answer to RCPT: every recipient taken but the accept-all check's invented ones.
fn relay_rcpt_reply(upper: &str) -> Vec<u8> {
    let invented = upper.contains("RW-") || upper.contains(".INVALID");
    if invented {
        b"550 5.1.1 No such user\r\n".to_vec()
    } else {
        b"250 2.1.5 Ok\r\n".to_vec()
    }
}

/// Confirm row C4: a relay that accepts at RCPT and refuses DATA itself sent no proof
/// message — "no proof message could be sent", not "refused every message at the end of
/// DATA" (C2), which the session-level tricks' refused DATA used to be counted as.
#[tokio::test]
async fn a_relay_refusing_data_itself_could_send_no_proof_message() {
    let addr = scripted(b"220 mx.example.test ESMTP\r\n", |line, _| {
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("RCPT") {
            return Some(relay_rcpt_reply(&upper));
        }
        if upper == "DATA" {
            return Some(b"554 5.7.1 No DATA for you\r\n".to_vec());
        }
        closed_answer(line)
    })
    .await;
    let (cfg, _) = common::confirm_config(Duration::from_millis(300)).await;
    let r = run_with(addr, cfg).await;
    assert_eq!(r.verdict, Verdict::Unconfirmed, "{}", dump(&r));
    assert!(
        r.accepted.iter().any(|a| a == "local-then-external"),
        "{}",
        dump(&r)
    );
    assert!(
        r.reason.contains("no proof message could be sent"),
        "{}",
        r.reason
    );
    assert!(
        r.confirm.iter().all(|c| c.data_reply.is_none()),
        "{:?}",
        r.confirm
    );
}

/// A relay that answers DATA with 354 and, at once, a 250 for a message it never received:
/// that 250 must not be read as the reply to the final dot (the message would count as taken,
/// C3, "taken with 250 but no token came back"); no proof message was sent (C4).
#[tokio::test]
async fn a_reply_ahead_of_the_message_is_not_taken_for_the_final_dot_reply() {
    let addr = scripted(b"220 mx.example.test ESMTP\r\n", |line, _| {
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("RCPT") {
            return Some(relay_rcpt_reply(&upper));
        }
        if upper == "DATA" {
            return Some(b"354 go ahead\r\n250 2.0.0 queued\r\n".to_vec());
        }
        let verbs = [
            "EHLO", "HELO", "MAIL", "RSET", "QUIT", "VRFY", "EXPN", "XCLIENT", "PROXY",
        ];
        if !verbs.iter().any(|v| upper.starts_with(v)) {
            return Some(Vec::new()); // a line of the message: no reply
        }
        closed_answer(line)
    })
    .await;
    let (cfg, _) = common::confirm_config(Duration::from_millis(300)).await;
    let r = run_with(addr, cfg).await;
    assert_eq!(r.verdict, Verdict::Unconfirmed, "{}", dump(&r));
    assert!(r.confirm.iter().all(|c| !c.sent), "{:?}", r.confirm);
    assert!(
        r.reason.contains("no proof message could be sent"),
        "{}",
        r.reason
    );
}

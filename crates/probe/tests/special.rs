//! The session-level tricks (XCLIENT, PROXY header, failed AUTH, pipelining, local then
//! external recipient) against scripted loopback servers that fall for exactly one of them,
//! a closed server that falls for none, and confirm mode through each.

mod common;

use std::time::Duration;

use common::{Kind, Spec, config, dump, probe_spec as run};
use relayward_probe::report::{Outcome, TestResult};
use relayward_probe::special;
use relayward_probe::{TargetReport, Verdict};

fn test<'a>(r: &'a TargetReport, id: &str) -> &'a TestResult {
    r.tests
        .iter()
        .find(|t| t.id == id)
        .unwrap_or_else(|| panic!("no test {id}"))
}

/// OPEN, and the only accepted test is `id`.
async fn detects(kind: Kind, id: &str) -> TargetReport {
    let r = run(Spec::new(kind), config()).await;
    assert_eq!(r.verdict, Verdict::Open, "{}", dump(&r));
    assert_eq!(r.accepted, [id], "{kind:?}: {}", dump(&r));
    let t = test(&r, id);
    assert_eq!(t.kind, "session");
    assert_eq!(t.mail_from, "MAIL FROM:<antispam@example.org>");
    assert_eq!(t.rcpt_to, "RCPT TO:<relaytest@to.test>");
    assert!(r.reason.contains(id), "{}", r.reason);
    r
}

#[tokio::test]
async fn xclient_spoof() {
    let r = detects(Kind::XclientTrusting, special::XCLIENT_SPOOF).await;
    let t = test(&r, special::XCLIENT_SPOOF);
    assert_eq!(t.setup[0].sent, "XCLIENT ADDR=127.0.0.1 NAME=localhost");
    assert_eq!(t.setup[0].reply.as_ref().map(|r| r.code), Some(220));
    assert!(t.setup.iter().any(|s| s.sent == "EHLO example.org"));
    assert!(t.note.is_none(), "advertised: {:?}", t.note);
    // The trust XCLIENT won stays in its own session: the battery's plain test was refused.
    assert_eq!(test(&r, "plain-external").outcome, Outcome::Refused);
}

#[tokio::test]
async fn proxy_header_spoof() {
    let r = detects(Kind::ProxyTrusting, special::PROXY_HEADER_SPOOF).await;
    let t = test(&r, special::PROXY_HEADER_SPOOF);
    assert!(
        t.setup[0]
            .sent
            .starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 12345 "),
        "{:?}",
        t.setup
    );
    assert!(t.setup[0].reply.is_none(), "honoured silently");
    let transcript = r.transcript.clone().unwrap_or_default();
    let proxy = transcript
        .iter()
        .position(|l| l.starts_with(">>> PROXY "))
        .expect("PROXY sent");
    assert!(
        transcript[proxy + 1].starts_with("<<< 220"),
        "PROXY goes before the banner: {:?}",
        &transcript[proxy..proxy + 2]
    );
}

#[tokio::test]
async fn failed_auth_then_relay() {
    let r = detects(Kind::FailedAuthTrusting, special::FAILED_AUTH_THEN_RELAY).await;
    let t = test(&r, special::FAILED_AUTH_THEN_RELAY);
    // Exactly one failed login (servers ban after a few), with a login that cannot exist.
    let sent: Vec<&str> = t.setup.iter().map(|s| s.sent.as_str()).collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].starts_with("AUTH PLAIN "), "{sent:?}");
    let codes: Vec<u16> = t
        .setup
        .iter()
        .filter_map(|s| s.reply.as_ref().map(|r| r.code))
        .collect();
    assert_eq!(codes, [535]);
    let transcript = r.transcript.clone().unwrap_or_default();
    let auth_lines = transcript
        .iter()
        .filter(|l| l.starts_with(">>> AUTH"))
        .count();
    assert_eq!(auth_lines, 1, "one AUTH per probe run");
    // Run last among the tests (servers may ban after failed logins).
    assert_eq!(
        r.tests.last().map(|t| t.id.as_str()),
        Some(special::FAILED_AUTH_THEN_RELAY)
    );
}

#[tokio::test]
async fn pipelined_relay() {
    let r = detects(Kind::PipelineBlind, special::PIPELINED_RELAY).await;
    let t = test(&r, special::PIPELINED_RELAY);
    assert_eq!(t.setup[0].sent, "RSET (same write)");
    assert_eq!(t.setup[0].reply.as_ref().map(|r| r.code), Some(250));
}

#[tokio::test]
async fn local_then_external() {
    let r = detects(Kind::PerTransaction, special::LOCAL_THEN_EXTERNAL).await;
    let t = test(&r, special::LOCAL_THEN_EXTERNAL);
    assert_eq!(t.setup[0].sent, "RCPT TO:<postmaster@example.test>");
    assert_eq!(t.setup[0].reply.as_ref().map(|r| r.code), Some(250));
    assert_eq!(test(&r, "plain-external").outcome, Outcome::Refused);
}

#[tokio::test]
async fn closed_server_refuses_every_session_trick() {
    let mut spec = Spec::new(Kind::Closed);
    spec.advertise_auth = true;
    let r = run(spec, config()).await;
    assert_eq!(r.verdict, Verdict::Closed, "{}", dump(&r));
    for s in special::specials() {
        let t = test(&r, s.id);
        assert_eq!(t.outcome, Outcome::Refused, "{}: {:?}", s.id, t);
    }
    let x = test(&r, special::XCLIENT_SPOOF);
    assert!(
        x.note
            .as_deref()
            .is_some_and(|n| n.contains("XCLIENT refused") && n.contains("not advertised")),
        "{:?}",
        x.note
    );
    assert!(
        x.rcpt_reply.is_none(),
        "no relay attempt after a refused XCLIENT"
    );
    let p = test(&r, special::PROXY_HEADER_SPOOF);
    assert_eq!(p.setup[0].reply.as_ref().map(|r| r.code), Some(502));
    assert!(
        p.note
            .as_deref()
            .is_some_and(|n| n.contains("answered as a command")),
        "{:?}",
        p.note
    );
    // The probe's own sessions are not counted as reconnects.
    assert_eq!(r.findings.reconnects, 0);
    assert!(
        !r.transcript
            .unwrap_or_default()
            .iter()
            .any(|l| l == ">>> DATA")
    );
}

#[tokio::test]
async fn tricks_that_do_not_apply_are_skipped() {
    // No AUTH advertised: failed-auth is skipped, the rest run.
    let r = run(Spec::new(Kind::Closed), config()).await;
    let t = test(&r, special::FAILED_AUTH_THEN_RELAY);
    assert_eq!(t.outcome, Outcome::Skipped);
    assert_eq!(t.note.as_deref(), Some("AUTH not offered"));
    assert_eq!(test(&r, special::PIPELINED_RELAY).outcome, Outcome::Refused);
}

#[tokio::test]
async fn server_hanging_up_on_proxy_refused_it() {
    let r = run(Spec::new(Kind::ProxyHangup), config()).await;
    assert_eq!(r.verdict, Verdict::Closed, "{}", dump(&r));
    let t = test(&r, special::PROXY_HEADER_SPOOF);
    assert_eq!(t.outcome, Outcome::Refused, "{t:?}");
}

#[tokio::test]
async fn confirm_mode_proves_each_session_trick() {
    let cases = [
        (Kind::XclientTrusting, special::XCLIENT_SPOOF),
        (Kind::ProxyTrusting, special::PROXY_HEADER_SPOOF),
        (Kind::FailedAuthTrusting, special::FAILED_AUTH_THEN_RELAY),
        (Kind::PipelineBlind, special::PIPELINED_RELAY),
        (Kind::PerTransaction, special::LOCAL_THEN_EXTERNAL),
    ];
    for (kind, id) in cases {
        let (cfg, listen) = common::confirm_config(Duration::from_secs(10)).await;
        let mut spec = Spec::new(kind);
        spec.forward_to = Some(listen);
        let r = run(spec, cfg).await;
        assert_eq!(r.verdict, Verdict::ConfirmedOpen, "{id}: {}", dump(&r));
        assert_eq!(r.confirmed, [id], "{id}");
        let transcript = r.transcript.unwrap_or_default();
        let heading = format!(":Relay test: {id} (confirm)");
        assert!(transcript.contains(&heading), "{id}");
    }
}

/// A closed server that takes the PROXY header for a command (500 at once) and then needs
/// longer than the probe's wait to answer EHLO, as one that tarpits after an unknown command
/// does: its late replies answered the relay attempt a step behind (RCPT read MAIL's 250) and
/// the old probe called it OPEN by `proxy-header-spoof`. QUIT, answered 221 by no other
/// command, got RCPT's 554: not in step, so the trick is an error, not accepted.
#[tokio::test]
async fn a_server_slow_to_answer_ehlo_after_the_proxy_header_is_not_taken_for_honouring_it() {
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
                let _ = write.write_all(b"220 mx.example.test ESMTP\r\n").await;
                let (mut line, mut after_proxy) = (String::new(), false);
                while read.read_line(&mut line).await.is_ok_and(|n| n > 0) {
                    let upper = line.trim_end().to_ascii_uppercase();
                    line.clear();
                    let reply: &[u8] = if upper.starts_with("PROXY ") {
                        after_proxy = true;
                        b"500 5.5.2 Error: command not recognized\r\n"
                    } else if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                        if std::mem::take(&mut after_proxy) {
                            tokio::time::sleep(Duration::from_millis(2500)).await;
                        }
                        b"250-mx.example.test\r\n250 PIPELINING\r\n"
                    } else if upper.starts_with("RCPT") {
                        b"554 5.7.1 Relay access denied\r\n"
                    } else if upper == "QUIT" {
                        let _ = write.write_all(b"221 2.0.0 Bye\r\n").await;
                        return;
                    } else {
                        b"250 2.0.0 Ok\r\n"
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let r = common::probe_addr(addr, config()).await;
    assert!(r.accepted.is_empty(), "{}", dump(&r));
    assert_eq!(r.verdict, Verdict::Closed, "{}", dump(&r));
    let t = test(&r, special::PROXY_HEADER_SPOOF);
    assert_eq!(t.outcome, Outcome::Error, "{t:?}");
    assert!(t.note.as_deref().unwrap_or("").contains("not 221"), "{t:?}");
}

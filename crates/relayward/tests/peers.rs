//! Real clients against the real server: swaks (Debian package) and Python's smtplib.
//! A mock proves the mock; a peer proves the protocol.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{PASSWORD, TestServer, run_with_timeout, standard_config};

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// scripts/test installs the peers; a missing one fails the test rather than skipping it, so
/// a broken set-up cannot pass silently.
fn require(program: &str) {
    assert!(
        have(program),
        "{program} is not installed: run scripts/test, which installs it"
    );
}

/// Runs swaks against `server` (a listener address) with `args`; (exit code, transcript).
fn swaks(server: std::net::SocketAddr, args: &[&str]) -> (Option<i32>, String) {
    require("swaks");
    let server = server.to_string();
    let mut command = Command::new("swaks");
    command.args(["--server", &server]).args(args);
    run_with_timeout(&mut command, Duration::from_secs(20))
}

#[test]
fn swaks_delivers_to_a_local_mailbox() {
    let server = TestServer::start(&standard_config(""));
    let (code, out) = swaks(
        server.addr("mx"),
        &[
            "--from",
            "friend@other.test",
            "--to",
            "alice@example.test",
            "--helo",
            "swaks.other.test",
            "--header",
            "Subject: from swaks",
        ],
    );
    assert_eq!(code, Some(0), "swaks failed:\n{out}");
    let mail = server.wait_for_mail("example.test", "alice", 1);
    assert!(mail[0].contains("Subject: from swaks"), "{}", mail[0]);
}

#[test]
fn swaks_relay_attempt_from_a_stranger_is_refused() {
    let server = TestServer::start(&standard_config(""));
    let (code, out) = swaks(
        server.addr("mx"),
        &[
            "--from",
            "spammer@other.test",
            "--to",
            "victim@elsewhere.test",
            "--quit-after",
            "RCPT",
        ],
    );
    // swaks exits 24 when the server refuses the recipient.
    assert_eq!(code, Some(24), "expected a refused RCPT:\n{out}");
    assert!(
        out.contains("554 5.7.1 <victim@elsewhere.test>: Relay access denied"),
        "{out}"
    );
}

#[test]
fn swaks_starttls_and_auth_relay_through_submission() {
    let server = TestServer::start(&standard_config(""));
    let (code, out) = swaks(
        server.addr("submission"),
        &[
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice@example.test",
            "--auth-password",
            PASSWORD,
            "--from",
            "alice@example.test",
            "--to",
            "friend@elsewhere.test",
        ],
    );
    assert_eq!(code, Some(0), "swaks failed:\n{out}");
    assert!(out.contains("235 2.7.0 Authentication successful"), "{out}");
    assert!(out.contains("250 2.0.0 Ok: queued as"), "{out}");
    // The EHLO reply before STARTTLS must not offer AUTH; the one after must.
    let (before_tls, after_tls) = out
        .split_once("-> STARTTLS")
        .unwrap_or_else(|| panic!("swaks sent no STARTTLS:\n{out}"));
    assert!(
        !before_tls.contains("AUTH"),
        "AUTH offered in clear:\n{out}"
    );
    assert!(after_tls.contains("AUTH PLAIN LOGIN"), "{out}");
}

/// Python's smtplib verifies the server's certificate against the pair relayward generated,
/// authenticates with LOGIN, relays one message, and sees a stranger's relay refused.
#[test]
fn python_smtplib_starttls_auth_and_relay() {
    require("python3");
    let server = TestServer::start(&standard_config(""));
    let script = r#"
import smtplib, ssl, sys
host, sub, mx, ca, password = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=ca)
with smtplib.SMTP(host, sub, timeout=10) as s:
    s.ehlo("laptop.example.test")
    assert not s.has_extn("auth"), "AUTH offered before TLS"
    s.starttls(context=ctx)
    s.ehlo("laptop.example.test")
    assert "LOGIN" in s.esmtp_features["auth"], s.esmtp_features
    s.login("alice@example.test", password)
    refused = s.sendmail("alice@example.test", ["friend@elsewhere.test"], "Subject: py\r\n\r\nrelayed\r\n")
    assert refused == {}, refused
with smtplib.SMTP(host, mx, timeout=10) as s:
    try:
        s.sendmail("spammer@other.test", ["victim@elsewhere.test"], "Subject: spam\r\n\r\nx\r\n")
        print("RELAYED FOR A STRANGER"); sys.exit(1)
    except smtplib.SMTPRecipientsRefused as e:
        code, text = e.recipients["victim@elsewhere.test"]
        assert code == 554 and b"5.7.1" in text, (code, text)
print("ok")
"#;
    let sub = server.addr("submission");
    let mx = server.addr("mx");
    let ca = server.data_dir().join("tls").join("cert.pem");
    let (code, out) = run_with_timeout(
        Command::new("python3")
            .args(["-c", script, "127.0.0.1"])
            .arg(sub.port().to_string())
            .arg(mx.port().to_string())
            .arg(&ca)
            .arg(PASSWORD),
        Duration::from_secs(30),
    );
    assert_eq!(
        code,
        Some(0),
        "smtplib script failed:\n{out}\nserver log:\n{}",
        server.log()
    );
    assert!(out.trim_end().ends_with("ok"), "{out}");
}

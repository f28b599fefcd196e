//! ESMTP completeness against real peers: SMTPUTF8 and BDAT from Python's smtplib, SMTPUTF8
//! mail relayed by a real Postfix through relayward's submission listener, the 8BITMIME
//! downgrade and long-line folding seen by Postfix's `smtp-sink`, BDAT smuggling and
//! immediate long-line refusals in transcripts, and a smart host whose self-signed CA:TRUE
//! certificate is pinned by `ca_file`.

#[path = "support/postfix.rs"]
mod postfix;
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use postfix::{SmtpSink, dumped_message};
use support::{PASSWORD, TestServer, WAIT, password_hash, run_with_timeout, standard_config};

/// The standard configuration plus an IDN local domain and UTF-8 mailboxes, and `extra`.
fn utf8_config(extra: &str) -> String {
    standard_config(extra).replace(
        r#"local_domains = ["example.test"]"#,
        r#"local_domains = ["example.test", "xn--exmple-cua.test"]
mailboxes = ["jürgen@example.test", "bøb@xn--exmple-cua.test", "carol@example.test"]"#,
    )
}

fn python(script: &str, args: &[String]) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).args(args);
    let (code, out) = run_with_timeout(&mut cmd, Duration::from_secs(60));
    assert_eq!(code, Some(0), "python3 failed:\n{out}");
    out
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

// ------------------------------------------------------------------ SMTPUTF8 and BDAT: smtplib

const SMTPLIB_UTF8: &str = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10)
s.ehlo("client.outside.test")
assert s.has_extn("smtputf8") and s.has_extn("chunking") and s.has_extn("dsn"), s.esmtp_features
msg = ("From: Ålice <ålice@outside.test>\r\nTo: Bøb <bøb@exämple.test>\r\n"
       "Subject: Grüße aus Köln\r\n\r\nHallo Bøb, 你好 ✓\r\n").encode("utf-8")
refused = s.sendmail("ålice@outside.test", ["bøb@exämple.test", "jürgen@EXAMPLE.test"], msg,
                     mail_options=["SMTPUTF8"])
assert refused == {}, refused
s.quit()
print("sent")
"#;

/// smtplib sends a message with UTF-8 addresses and headers (SMTPUTF8): a U-label domain and
/// its A-label form are one local domain, and the message lands intact in Maildirs named by
/// the UTF-8 local parts.
#[test]
fn smtplib_sends_smtputf8_mail_that_lands_intact_in_utf8_maildirs() {
    let server = TestServer::start(&utf8_config(""));
    let port = server.addr("mx").port().to_string();
    python(SMTPLIB_UTF8, &[port]);
    for (domain, local) in [("xn--exmple-cua.test", "bøb"), ("example.test", "jürgen")] {
        let mail = server.wait_for_mail(domain, local, 1);
        assert!(
            mail[0].contains("\r\nSubject: Grüße aus Köln\r\n"),
            "{}",
            mail[0]
        );
        assert!(
            mail[0].contains("\r\n\r\nHallo Bøb, 你好 ✓\r\n"),
            "{}",
            mail[0]
        );
        assert!(
            mail[0].contains("To: Bøb <bøb@exämple.test>"),
            "{}",
            mail[0]
        );
    }
}

const SMTPLIB_BDAT: &str = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10)
s.ehlo("client.outside.test")
assert s.has_extn("chunking"), s.esmtp_features
assert s.mail("sender@outside.test")[0] == 250
assert s.rcpt("carol@example.test")[0] == 250
one = b"Subject: in chunks\r\n\r\nfirst "
two = b"second\r\n.\r\nRSET\r\nMAIL FROM:<x@evil.test>\r\n"
# Both chunks in one write (pipelined), then the two replies.
s.send(b"BDAT %d\r\n" % len(one) + one + b"BDAT %d LAST\r\n" % len(two) + two)
first, second = s.getreply(), s.getreply()
print(first[0], first[1].decode())
print(second[0], second[1].decode())
assert first[0] == 250 and second[0] == 250 and b"delivered as" in second[1], (first, second)
assert s.noop()[0] == 250
s.quit()
"#;

/// smtplib sends two pipelined BDAT chunks: each is answered, the message is queued at LAST,
/// and a DATA terminator and commands inside a chunk are only content.
#[test]
fn smtplib_sends_pipelined_bdat_chunks() {
    let server = TestServer::start(&utf8_config(""));
    let out = python(SMTPLIB_BDAT, &[server.addr("mx").port().to_string()]);
    assert!(out.contains("250 2.0.0 28 octets received"), "{out}");
    let mail = server.wait_for_mail("example.test", "carol", 1);
    assert!(
        mail[0].ends_with("\r\n\r\nfirst second\r\n.\r\nRSET\r\nMAIL FROM:<x@evil.test>\r\n"),
        "{}",
        mail[0]
    );
}

// ------------------------------------------------------------------ transcripts

/// The octets of a BDAT without a transaction are skipped, not read as commands; a chunk
/// larger than the message limit closes the session; a bare LF in a chunk is smuggling.
#[test]
fn bdat_octets_are_never_read_as_commands() {
    let server = TestServer::start(&utf8_config(""));
    let smuggled = "RSET\r\nQUIT\r\nNOOP\r\n";
    server
        .smtp("mx")
        .send("EHLO client.outside.test")
        .expect(250)
        .raw(format!("BDAT {} LAST\r\n{smuggled}", smuggled.len()).as_bytes())
        .expect_text(503, "5.5.1")
        .send("NOOP")
        .expect(250)
        .send("MAIL FROM:<a@outside.test>")
        .expect(250)
        .send("RCPT TO:<carol@example.test>")
        .expect(250)
        .send("BDAT 5")
        .raw(b"ab\ncd")
        .expect_text(521, "5.5.2")
        .expect_closed();
    server
        .smtp("mx")
        .send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<a@outside.test>")
        .expect(250)
        .send("RCPT TO:<carol@example.test>")
        .expect(250)
        .send("BDAT 99999999999 LAST")
        .expect_text(552, "5.3.4")
        .expect_closed();
}

/// UTF-8 addresses need SMTPUTF8 on MAIL; the DSN parameters are taken.
#[test]
fn utf8_addresses_need_smtputf8_and_dsn_parameters_are_accepted() {
    let server = TestServer::start(&utf8_config(""));
    server
        .smtp("mx")
        .send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<ålice@outside.test>")
        .expect_text(553, "5.6.7")
        .send("MAIL FROM:<alice@outside.test> RET=HDRS ENVID=Q+2B1")
        .expect(250)
        .send("RCPT TO:<bøb@exämple.test>")
        .expect_text(553, "5.6.7")
        .send("RCPT TO:<carol@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;carol@example.test")
        .expect(250)
        .send("RSET")
        .expect(250)
        .send("MAIL FROM:<ålice@outside.test> SMTPUTF8")
        .expect(250)
        .send("RCPT TO:<bøb@EXÄMPLE.test>")
        .expect(250)
        .send("RCPT TO:<relaytest@еxample.test>")
        .expect_text(554, "5.7.1");
}

/// A line longer than RFC 5321's 1000 octets is taken; one past relayward's limit is refused
/// the moment it crosses it — the reply arrives before the client has finished the line —
/// and the rest of the message is read and dropped, so the dialogue stays in step.
#[test]
fn long_lines_are_taken_and_an_endless_one_is_refused_at_once() {
    let server = TestServer::start(&utf8_config(""));
    let long_header = format!("X-Long: {}", "y".repeat(1500));
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<a@outside.test>")
        .expect(250)
        .send("RCPT TO:<carol@example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(format!("{long_header}\r\n\r\n{}\r\n.\r\n", "z".repeat(3000)).as_bytes())
        .expect_text(250, "delivered as");
    let mail = server.wait_for_mail("example.test", "carol", 1);
    assert!(mail[0].contains(&format!("\r\n{long_header}\r\n")));
    smtp.send("MAIL FROM:<a@outside.test>")
        .expect(250)
        .send("RCPT TO:<carol@example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        // 70,000 octets and no line end yet: the refusal must not wait for one.
        .raw("x".repeat(70_000).as_bytes())
        .expect_text(500, "5.5.2")
        .raw(b"\r\nmore\r\n.\r\n")
        .send("NOOP")
        .expect(250);
}

// ------------------------------------------------------------------ smtp-sink

/// The first transaction with `needle` that reached `sink`, waiting (bounded) for it.
fn dump_with(sink: &SmtpSink, needle: &str, server: &TestServer) -> Vec<u8> {
    sink.wait_for(needle, WAIT).unwrap_or_else(|| {
        panic!(
            "nothing with {needle:?} reached smtp-sink\n{}",
            server.log()
        )
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// relayward with a `[[route]]` to the sink (any client may send to a route domain).
fn routed_to(sink: &SmtpSink, domain: &str) -> TestServer {
    TestServer::start(&utf8_config(&format!(
        "[[route]]\ndomain = \"{domain}\"\nto = \"smtp://127.0.0.1:{}\"\n",
        sink.port
    )))
}

fn send_data(server: &TestServer, mail_from: &str, rcpt: &str, content: &[u8]) {
    server
        .smtp("mx")
        .send("EHLO client.outside.test")
        .expect(250)
        .send(mail_from)
        .expect(250)
        .send(rcpt)
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(content)
        .raw(b"\r\n.\r\n")
        .expect_text(250, "queued as")
        .send("QUIT")
        .expect(221);
}

/// 8-bit mail to an smtp-sink that does not announce 8BITMIME arrives 7-bit clean, and
/// decodes to the original text and attachment.
#[test]
fn eight_bit_mail_to_a_peer_without_8bitmime_arrives_7bit_and_decodes_to_the_original() {
    let sink = SmtpSink::start(&["-8"]);
    let server = routed_to(&sink, "sink.test");
    let text = "Grüße aus Köln — ½ € ✓";
    let original = format!(
        "From: a@outside.test\r\nSubject: downgrade\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}\r\n--b\r\n\
Content-Type: application/octet-stream\r\n\r\nbytes: \u{00ff}\u{00fe}\r\n--b--"
    );
    send_data(
        &server,
        "MAIL FROM:<a@outside.test> BODY=8BITMIME",
        "RCPT TO:<rcpt@sink.test>",
        original.as_bytes(),
    );
    let dump = dump_with(&sink, "Subject: downgrade", &server);
    let message = dumped_message(&dump);
    assert!(
        message.is_ascii(),
        "not 7-bit clean:\n{}",
        String::from_utf8_lossy(&message)
    );
    let parsed = mail_parser::MessageParser::default()
        .parse(&message)
        .expect("parses");
    let decoded_text = parsed.body_text(0).unwrap_or_default().to_string();
    assert!(decoded_text.starts_with(text), "{decoded_text:?}");
    let attachment = parsed.attachment(0).expect("attachment");
    assert_eq!(attachment.contents(), "bytes: \u{00ff}\u{00fe}".as_bytes());
}

/// A 1500-octet header reaches smtp-sink folded into lines of at most 998 octets, and
/// unfolds to the original field.
#[test]
fn a_1500_octet_header_arrives_folded() {
    let sink = SmtpSink::start(&[]);
    let server = routed_to(&sink, "sink.test");
    let ids: Vec<String> = (0..70)
        .map(|i| format!("<msg{i:04}@outside.test>"))
        .collect();
    let references = format!("References: {}", ids.join(" "));
    assert!(references.len() >= 1500, "{}", references.len());
    let original =
        format!("From: a@outside.test\r\nSubject: folded\r\n{references}\r\n\r\nbody\r\n");
    send_data(
        &server,
        "MAIL FROM:<a@outside.test>",
        "RCPT TO:<rcpt@sink.test>",
        original.as_bytes(),
    );
    let dump = dump_with(&sink, "Subject: folded", &server);
    let message = String::from_utf8(dumped_message(&dump)).expect("text");
    assert!(
        message
            .lines()
            .all(|l| l.trim_end_matches('\r').len() <= 998),
        "a line over 998 octets:\n{message}"
    );
    let header = message
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .replace('\r', "");
    assert!(
        header.contains("\nReferences: <msg0000@outside.test>"),
        "{header}"
    );
    assert!(header.contains("\n <msg"), "not folded:\n{header}");
    let unfolded = header.replace("\n ", " ");
    assert!(unfolded.contains(&references), "{unfolded}");
}

/// A peer without SMTPUTF8: a U-label domain alone goes as its A-label; a UTF-8 local part
/// cannot, and bounces with 5.6.7 to the sender.
#[test]
fn smtputf8_to_a_peer_without_it_goes_as_a_labels_or_bounces() {
    let sink = SmtpSink::start(&[]);
    let server = routed_to(&sink, "xn--snk-zma.test");
    send_data(
        &server,
        "MAIL FROM:<carol@example.test> SMTPUTF8",
        "RCPT TO:<rcpt@sïnk.test>",
        b"From: carol@example.test\r\nSubject: a-label only\r\n\r\nplain\r\n",
    );
    let dump = dump_with(&sink, "Subject: a-label only", &server);
    assert!(
        contains(&dump, b"rcpt@xn--snk-zma.test"),
        "{}",
        String::from_utf8_lossy(&dump)
    );
    send_data(
        &server,
        "MAIL FROM:<carol@example.test> SMTPUTF8",
        "RCPT TO:<bøb@sïnk.test>",
        b"From: carol@example.test\r\nSubject: needs utf8\r\n\r\nplain\r\n",
    );
    let bounce = server.wait_for_mail("example.test", "carol", 1);
    assert!(bounce[0].contains("Status: 5.6.7"), "{}", bounce[0]);
    // The sender is a stranger here, so the bounce keeps the detail to itself; the log has it.
    assert!(
        server
            .log()
            .contains("SMTPUTF8 is required, but was not offered by host"),
        "{}",
        server.log()
    );
}

// ------------------------------------------------------------------ pinned smart host

/// A smart host (a second relayward) whose certificate is a self-signed CA:TRUE certificate,
/// as `openssl req -x509` makes, given to the sender as `ca_file`: the mail arrives.
#[test]
fn a_smart_host_with_a_pinned_self_signed_ca_true_certificate_receives_mail() {
    let secrets = tempfile::tempdir().expect("tempdir");
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mx.b.test");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    let cert_path = secrets.path().join("b-cert.pem");
    let key_path = secrets.path().join("b-key.pem");
    std::fs::write(&cert_path, cert.pem()).expect("cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("key");
    let b = TestServer::start(&format!(
        r#"hostname = "mx.b.test"
data_dir = "DATA_DIR"

[[listen]]
address = "127.0.0.1:0"
kind = "submission"

[tls]
cert = "{cert}"
key = "{key}"

[relay]
local_domains = ["b.test"]
trusted_networks = []
mailboxes = ["someone@b.test"]

[[user]]
login = "relay@a.test"
password_hash = "{hash}"
send_as = ["alice@example.test"]
"#,
        cert = cert_path.display(),
        key = key_path.display(),
        hash = password_hash()
    ));
    let password_file = secrets.path().join("smarthost.secret");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("password file");
    let a = TestServer::start(&standard_config(&format!(
        "[delivery]\nsmarthost = \"127.0.0.1:{port}\"\nsmarthost_tls = \"starttls\"\nsmarthost_user = \"relay@a.test\"\nsmarthost_password_file = \"{password}\"\nca_file = \"{ca}\"\n",
        port = b.addr("submission").port(),
        password = password_file.display(),
        ca = cert_path.display(),
    )));
    a.submit_as_alice("someone@b.test", "pinned");
    let mail = b.wait_for_mail("b.test", "someone", 1);
    assert!(mail[0].contains("\r\nSubject: pinned\r\n"), "{}", mail[0]);
}

// ------------------------------------------------------------------ Postfix relays SMTPUTF8

const SMTPLIB_TO_POSTFIX: &str = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20)
s.ehlo("laptop.example.test")
assert s.has_extn("smtputf8"), s.esmtp_features
msg = ("From: Alice <alice@example.test>\r\nTo: Bøb <bøb@exämple.test>\r\n"
       "Subject: Über Postfix → relayward ✓\r\nMessage-ID: <pf1@example.test>\r\n\r\n"
       "Grüße, 你好, ½ €\r\n").encode("utf-8")
refused = s.sendmail("alice@example.test", ["bøb@exämple.test"], msg, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
assert refused == {}, refused
s.quit()
"#;

/// A real Postfix (private instance) relays SMTPUTF8 mail through relayward's submission
/// listener — STARTTLS, AUTH PLAIN, SMTPUTF8 — and it arrives intact in the UTF-8 Maildir.
#[test]
fn postfix_relays_smtputf8_mail_through_the_submission_port_intact() {
    if !postfix::available() {
        eprintln!(
            "SKIPPED: needs root and {} (scripts/test installs postfix)",
            postfix::POSTFIX
        );
        return;
    }
    let server = TestServer::start(&utf8_config(""));
    let submission = server.addr("submission").port();
    let ca = server.data_dir().join("tls").join("cert.pem");
    let pf = postfix::Postfix::start(
        &format!(
            "myhostname = postfix.example.test
mydestination =
mynetworks = 127.0.0.0/8
smtputf8_enable = yes
relayhost = [127.0.0.1]:{submission}
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = texthash:{{dir}}/etc/sasl_passwd
smtp_sasl_security_options = noanonymous
smtp_tls_security_level = encrypt
smtp_tls_CAfile = {ca}
smtpd_tls_security_level = none",
            ca = ca.display()
        ),
        &[("127.0.0.1", "")],
    );
    std::fs::write(
        pf.etc().join("sasl_passwd"),
        format!("[127.0.0.1]:{submission} alice@example.test:{PASSWORD}\n"),
    )
    .expect("sasl_passwd");
    python(SMTPLIB_TO_POSTFIX, &[pf.ports[0].to_string()]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mail = loop {
        let files = server.maildir_new("xn--exmple-cua.test", "bøb");
        if let Some(file) = files.first() {
            break std::fs::read_to_string(file).expect("read");
        }
        assert!(
            Instant::now() < deadline,
            "nothing arrived through Postfix\nPostfix log:\n{}\nrelayward log:\n{}",
            pf.maillog(),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        mail.contains("\r\nSubject: Über Postfix → relayward ✓\r\n"),
        "{mail}"
    );
    assert!(
        mail.contains("\r\nTo: Bøb <bøb@exämple.test>\r\n"),
        "{mail}"
    );
    assert!(mail.contains("\r\n\r\nGrüße, 你好, ½ €\r\n"), "{mail}");
    assert!(mail.contains("by postfix.example.test (Postfix)"), "{mail}");
    assert!(
        mail.contains("authenticated as alice@example.test"),
        "{mail}"
    );
}

// ------------------------------------------------------------------ DSN

/// Alice submits one message with the MAIL and RCPT lines given (DSN parameters and all).
fn submit_with(server: &TestServer, mail_from: &str, rcpt: &str, subject: &str) {
    submit_to(server, mail_from, &[rcpt], subject, "body\r\n");
}

/// Alice submits one message: the MAIL line, RCPT lines and body given.
fn submit_to(server: &TestServer, mail_from: &str, rcpts: &[&str], subject: &str, body: &str) {
    let ca = server.data_dir().join("tls").join("cert.pem");
    let mut smtp = server.smtp("submission");
    smtp.send("EHLO laptop.example.test")
        .expect(250)
        .starttls(&ca)
        .send("EHLO laptop.example.test")
        .expect_text(250, "DSN")
        .auth_plain("alice@example.test", PASSWORD)
        .expect(235)
        .send(mail_from)
        .expect(250);
    for rcpt in rcpts {
        smtp.send(rcpt).expect(250);
    }
    smtp.send("DATA")
        .expect(354)
        .raw(
            format!("From: alice@example.test\r\nSubject: {subject}\r\n\r\n{body}.\r\n").as_bytes(),
        )
        .expect_text(250, "queued as")
        .send("QUIT")
        .expect(221);
}

/// A stranger (the mx listener, no login) sends one message.
fn stranger_sends(server: &TestServer, mail_from: &str, rcpts: &[&str], subject: &str, body: &str) {
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO stranger.outside.test")
        .expect(250)
        .send(mail_from)
        .expect(250);
    for rcpt in rcpts {
        smtp.send(rcpt).expect(250);
    }
    smtp.send("DATA")
        .expect(354)
        .raw(format!("Subject: {subject}\r\n\r\n{body}.\r\n").as_bytes())
        .expect_text(250, "queued as")
        .send("QUIT")
        .expect(221);
}

/// `[[route]] corp.test` to `sink` (recipients not verified) plus `delivery`, the lines of a
/// `[delivery]` table.
fn corp_route_config(sink: &relayward_testkit::smtp_server::SmtpServer, delivery: &str) -> String {
    utf8_config(&format!(
        "[[route]]\ndomain = \"corp.test\"\nto = \"smtp://127.0.0.1:{}\"\nverify_recipients = false\n\n[delivery]\n{delivery}\n",
        sink.addr.port()
    ))
}

/// `NOTIFY=SUCCESS` for a recipient delivered into a Maildir: a success notice (RFC 3464,
/// Action: delivered) comes back to the sender, with her ENVID and ORCPT.
#[test]
fn notify_success_produces_a_success_notice() {
    let server = TestServer::start(&utf8_config(""));
    submit_with(
        &server,
        "MAIL FROM:<alice@example.test> ENVID=env+2B42",
        "RCPT TO:<carol@example.test> NOTIFY=SUCCESS ORCPT=rfc822;Carol@example.test",
        "please confirm",
    );
    server.wait_for_mail("example.test", "carol", 1);
    let notice = server.wait_for_mail("example.test", "alice", 1);
    let notice = &notice[0];
    assert!(
        notice.contains("Subject: Successful Mail Delivery Report"),
        "{notice}"
    );
    assert!(
        notice.contains("Original-Envelope-Id: env+42\r\n"),
        "{notice}"
    );
    assert!(
        notice.contains("Original-Recipient: rfc822; Carol@example.test\r\nFinal-Recipient: rfc822; carol@example.test\r\nAction: delivered\r\nStatus: 2.0.0\r\n"),
        "{notice}"
    );
    assert!(notice.contains("Subject: please confirm\r\n"), "{notice}");
}

/// `NOTIFY=NEVER`: a recipient the next hop refuses is not bounced; without it, it is.
#[test]
fn notify_never_suppresses_the_bounce() {
    let sink = support::rejecting_sink("127.0.0.1", "550 5.1.1 no such user");
    let server = TestServer::start(&utf8_config(&format!(
        "[[route]]\ndomain = \"corp.test\"\nto = \"smtp://127.0.0.1:{}\"\nverify_recipients = false\n",
        sink.addr.port()
    )));
    submit_with(
        &server,
        "MAIL FROM:<alice@example.test>",
        "RCPT TO:<gone@corp.test> NOTIFY=NEVER",
        "no news wanted",
    );
    submit_with(
        &server,
        "MAIL FROM:<alice@example.test>",
        "RCPT TO:<gone@corp.test>",
        "news wanted",
    );
    let bounces = server.wait_for_mail("example.test", "alice", 1);
    assert!(
        bounces[0].contains("Subject: news wanted"),
        "{}",
        bounces[0]
    );
    support::wait_queue_empty(&server);
    let all = server.maildir_new("example.test", "alice");
    assert_eq!(all.len(), 1, "a bounce for NOTIFY=NEVER arrived");
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Waits (bounded) until the queue has recorded `count` attempts for `address` (the next
/// hop having seen one is not enough: a retry asked for before the runner recorded it would be
/// overwritten by that record).
fn wait_attempts(server: &TestServer, address: &str, count: u64) {
    let attempts = || {
        let list = support::queue_json(server, &["list"]);
        list.as_array()
            .into_iter()
            .flatten()
            .flat_map(|m| m["recipients"].as_array().cloned().unwrap_or_default())
            .find(|r| r["address"] == address)
            .and_then(|r| r["attempts"].as_u64())
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(30), || attempts() >= count),
        "{address}: {} attempts recorded, not {count}:\n{}",
        attempts(),
        server.log()
    );
}

/// The queue entry of the one message in the queue (`queue list --json`).
fn only_entry(server: &TestServer) -> serde_json::Value {
    let list = support::queue_json(server, &["list"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list:#}");
    list[0].clone()
}

/// `[delivery] delay_notice_after`: a recipient that asked `NOTIFY=DELAY` and is still being
/// retried after that time gets one delay notice (RFC 3464 `Action: delayed`, with
/// `Will-Retry-Until`, ENVID and ORCPT, the next hop's reply for our own user); one that
/// asked `NOTIFY=FAILURE` only gets none; and later retries send no second notice.
#[test]
fn a_delay_notice_comes_once_after_delay_notice_after_to_who_asked() {
    let sink = support::rejecting_sink("127.0.0.1", "451 4.7.1 not today at inside.corp.test");
    let server = TestServer::start(&corp_route_config(&sink, "delay_notice_after = \"2s\""));
    submit_to(
        &server,
        "MAIL FROM:<alice@example.test> ENVID=env-7",
        &[
            "RCPT TO:<late@corp.test> NOTIFY=DELAY,FAILURE ORCPT=rfc822;Late@corp.test",
            "RCPT TO:<quiet@corp.test> NOTIFY=FAILURE",
        ],
        "slow going",
        "body\r\n",
    );
    let arrived = only_entry(&server)["arrived"].as_u64().expect("arrived");
    let notice = server.wait_for_mail("example.test", "alice", 1);
    let notice = &notice[0];
    // Not before the documented time: the first attempt (at once) was deferred without one.
    let entry = only_entry(&server);
    assert!(
        unix_now() >= arrived + 2,
        "notice before delay_notice_after"
    );
    for expected in [
        "Subject: Delayed Mail (still being retried)\r\n",
        "Auto-Submitted: auto-replied\r\n",
        "Original-Envelope-Id: env-7\r\n",
        "Original-Recipient: rfc822; Late@corp.test\r\nFinal-Recipient: rfc822; late@corp.test\r\nAction: delayed\r\nStatus: 4.7.1\r\n",
        "Diagnostic-Code: smtp; 451 4.7.1 not today at inside.corp.test\r\n",
        "Subject: slow going\r\n",
    ] {
        assert!(notice.contains(expected), "{expected:?} missing:\n{notice}");
    }
    let until = relayward_protocol::date::rfc5322_date(arrived + 5 * 24 * 3600);
    assert!(
        notice.contains(&format!("Will-Retry-Until: {until}\r\n")),
        "{until}:\n{notice}"
    );
    assert!(!notice.contains("quiet@corp.test"), "{notice}");
    assert!(
        !notice.contains("\r\n\r\nbody\r\n"),
        "a delay notice returns headers only"
    );
    let late = &entry["recipients"][0];
    assert_eq!(late["address"], "late@corp.test");
    assert_eq!(late["delay_notified"], true, "{entry:#}");
    assert_eq!(late["status"], "pending");

    // More deferrals: no second notice, and still none for the recipient that did not ask.
    let tried = late["attempts"].as_u64().expect("attempts");
    support::queue_cmd(&server, &["retry", "--all"]);
    wait_attempts(&server, "late@corp.test", tried + 1);
    support::queue_cmd(&server, &["retry", "--all"]);
    wait_attempts(&server, "late@corp.test", tried + 2);
    wait_attempts(&server, "quiet@corp.test", 3);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        server.maildir_new("example.test", "alice").len(),
        1,
        "a second delay notice:\n{}",
        server.log()
    );
}

/// A stranger's delay notice: only for a recipient that asked `NOTIFY=DELAY` (none by
/// default: his sender may be forged), and as small as his bounce — no reply text, no host.
#[test]
fn a_strangers_delay_notice_comes_only_when_asked_and_says_no_more_than_his_bounce() {
    let sink = support::rejecting_sink("127.0.0.1", "451 4.7.1 not today at inside.corp.test");
    let server = TestServer::start(&corp_route_config(&sink, "delay_notice_after = \"2s\""));
    stranger_sends(
        &server,
        "MAIL FROM:<carol@example.test>",
        &[
            "RCPT TO:<asked@corp.test> NOTIFY=DELAY",
            "RCPT TO:<silent@corp.test>",
        ],
        "from afar",
        "body\r\n",
    );
    let notice = server.wait_for_mail("example.test", "carol", 1);
    let notice = &notice[0];
    assert!(
        notice.contains("Final-Recipient: rfc822; asked@corp.test\r\nAction: delayed\r\nStatus: 4.7.1\r\nDiagnostic-Code: smtp; 451 4.7.1\r\n"),
        "{notice}"
    );
    for secret in [
        "not today",
        "inside.corp.test",
        "Remote-MTA",
        "silent@corp.test",
    ] {
        assert!(!notice.contains(secret), "{secret} in:\n{notice}");
    }
    // The recipient without NOTIFY is past the time too, and got none.
    wait_attempts(&server, "asked@corp.test", 2);
    support::queue_cmd(&server, &["retry", "--all"]);
    wait_attempts(&server, "silent@corp.test", 2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        server.maildir_new("example.test", "carol").len(),
        1,
        "{}",
        server.log()
    );
}

/// `delay_notice_after = "off"`: no delay notice even for `NOTIFY=DELAY`.
#[test]
fn delay_notices_can_be_turned_off() {
    let sink = support::rejecting_sink("127.0.0.1", "451 4.7.1 not today");
    let server = TestServer::start(&corp_route_config(&sink, "delay_notice_after = \"off\""));
    submit_with(
        &server,
        "MAIL FROM:<alice@example.test>",
        "RCPT TO:<late@corp.test> NOTIFY=DELAY",
        "no notice wanted",
    );
    wait_attempts(&server, "late@corp.test", 1);
    std::thread::sleep(Duration::from_secs(3));
    support::queue_cmd(&server, &["retry", "--all"]);
    wait_attempts(&server, "late@corp.test", 2);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        server.maildir_new("example.test", "alice").is_empty(),
        "{}",
        server.log()
    );
}

/// relayward's own bounces carry the client's ENVID and ORCPT (RFC 3464) and return what
/// `RET` asks: the whole message for `RET=FULL`, the header section for `RET=HDRS`; a
/// stranger's `RET=FULL` bounce returns only his header section (within 16 KiB), never the
/// body: a small message bounced whole was his text mailed to a forged third party.
#[test]
fn bounces_carry_envid_and_orcpt_and_honour_ret() {
    let sink = support::rejecting_sink("127.0.0.1", "550 5.1.1 no such user at inside.corp.test");
    let server = TestServer::start(&corp_route_config(&sink, ""));
    submit_to(
        &server,
        "MAIL FROM:<alice@example.test> RET=FULL ENVID=full+2B1",
        &["RCPT TO:<gone@corp.test> ORCPT=rfc822;Gone@corp.test"],
        "return it all",
        "the whole body\r\n",
    );
    let full = server.wait_for_mail("example.test", "alice", 1).remove(0);
    for expected in [
        "Original-Envelope-Id: full+1\r\n",
        "Original-Recipient: rfc822; Gone@corp.test\r\nFinal-Recipient: rfc822; gone@corp.test\r\nAction: failed\r\nStatus: 5.1.1\r\n",
        "Content-Type: message/rfc822\r\n",
        "Subject: return it all\r\n\r\nthe whole body\r\n",
    ] {
        assert!(full.contains(expected), "{expected:?} missing:\n{full}");
    }
    submit_to(
        &server,
        "MAIL FROM:<alice@example.test> RET=HDRS",
        &["RCPT TO:<gone@corp.test>"],
        "headers only",
        "the hidden body\r\n",
    );
    let both = server.wait_for_mail("example.test", "alice", 2);
    let hdrs = both
        .iter()
        .find(|m| m.contains("Subject: headers only"))
        .expect("the RET=HDRS bounce");
    assert!(
        hdrs.contains("Content-Type: text/rfc822-headers\r\n"),
        "{hdrs}"
    );
    assert!(!hdrs.contains("the hidden body"), "{hdrs}");
    assert!(
        !hdrs.contains("Original-Envelope-Id"),
        "no ENVID given:\n{hdrs}"
    );

    let big_body = format!("{}\r\n", "x".repeat(900)).repeat(20);
    stranger_sends(
        &server,
        "MAIL FROM:<carol@example.test> RET=FULL",
        &["RCPT TO:<gone@corp.test>"],
        "big from afar",
        &big_body,
    );
    let big = server.wait_for_mail("example.test", "carol", 1).remove(0);
    assert!(big.contains("Subject: big from afar\r\n"), "{big}");
    assert!(
        big.contains("Content-Type: text/rfc822-headers\r\n"),
        "{big}"
    );
    assert!(
        !big.contains(&"x".repeat(900)),
        "a stranger's bounce returned 18 KB"
    );
    stranger_sends(
        &server,
        "MAIL FROM:<carol@example.test> RET=FULL",
        &["RCPT TO:<gone@corp.test>"],
        "small from afar",
        "a small body\r\n",
    );
    let two = server.wait_for_mail("example.test", "carol", 2);
    let small = two
        .iter()
        .find(|m| m.contains("Subject: small from afar"))
        .expect("the small bounce");
    assert!(
        small.contains("Content-Type: text/rfc822-headers\r\n"),
        "{small}"
    );
    assert!(!small.contains("a small body"), "{small}");
    assert!(!small.contains("no such user"), "{small}");
}

// ------------------------------------------------------------------ CHUNKING on the way out

/// relayward relays to a real Postfix smtpd, which offers CHUNKING: the message goes as BDAT
/// (Postfix counts `bdat=1` and no `data` for the session) and arrives intact, a line that
/// opens with a dot included (BDAT is not dot-stuffed).
#[test]
fn a_postfix_next_hop_offering_chunking_gets_bdat_and_the_message_intact() {
    if !postfix::available() {
        eprintln!(
            "SKIPPED: needs root and {} (scripts/test installs postfix)",
            postfix::POSTFIX
        );
        return;
    }
    let sink = relayward_testkit::smtp_server::SmtpServer::bind(
        "127.0.0.1:0",
        relayward_testkit::smtp_server::Script::default(),
    );
    let pf = postfix::Postfix::start(
        &format!(
            "myhostname = postfix.example.test
mydestination =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{}
smtp_tls_security_level = none
smtpd_tls_security_level = none",
            sink.addr.port()
        ),
        &[("127.0.0.1", "")],
    );
    let server = TestServer::start(&utf8_config(&format!(
        "[[route]]\ndomain = \"corp.test\"\nto = \"smtp://127.0.0.1:{}\"\nverify_recipients = false\n",
        pf.ports[0]
    )));
    send_data(
        &server,
        "MAIL FROM:<sender@outside.test>",
        "RCPT TO:<eve@corp.test>",
        // Dot-stuffed for DATA: relayward queues ".a line with a dot" and "..and two".
        b"Subject: in one chunk\r\n\r\n..a line with a dot\r\n...and two\r\nend",
    );
    assert!(
        wait_until(Duration::from_secs(60), || !sink.messages().is_empty()),
        "nothing came through Postfix\nPostfix log:\n{}\nrelayward log:\n{}",
        pf.maillog(),
        server.log()
    );
    let text = sink.messages()[0].text();
    assert!(
        text.contains("\r\nSubject: in one chunk\r\n")
            && text.ends_with("\r\n\r\n.a line with a dot\r\n..and two\r\nend\r\n"),
        "{text}"
    );
    // Postfix logs the session's command counts when relayward hangs up: on shutdown, which
    // closes the pooled connection with QUIT.
    let (code, _dir) = server.terminate();
    assert_eq!(code, Some(0));
    pf.wait_for_log(" mail=1 ", Duration::from_secs(30));
    let log = pf.maillog();
    let session = log
        .lines()
        .find(|l| l.contains("disconnect from") && l.contains(" mail=1 "))
        .unwrap_or_else(|| panic!("no disconnect line for relayward's session:\n{log}"));
    assert!(
        session.contains(" bdat=1 ") && !session.contains(" data="),
        "{session}"
    );
}

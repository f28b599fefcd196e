//! End-to-end delivery through the real binary (issue 3): `relayward serve` accepts mail on
//! loopback and its queue runner sends it on — through another relayward's submission listener
//! (STARTTLS + AUTH), through Postfix's `smtp-sink`, to MX hosts found by a test DNS server, and
//! along a `[[route]]` — while `relayward queue …` watches and steers the live queue.
//!
//! The peers are real where it matters (a second relayward, smtp-sink, a DNS server speaking
//! the wire protocol) and scripted where a test needs a chosen answer (250, 451, 550, a slow
//! final reply). Everything listens on 127.0.0.0/8 (and `::1` when the host has it).

#[path = "support/postfix.rs"]
mod postfix;
mod support;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postfix::SmtpSink;
use relayward_testkit::dns::{DnsServer, Zone};
use relayward_testkit::net::listeners_on_one_port;
use relayward_testkit::smtp_server::{Received, Script, SmtpServer};
use relayward_testkit::wait::eventually;
use serde_json::Value;
use support::{PASSWORD, TestServer, password_hash, queue_cmd, queue_json, standard_config};

/// Bound on waits that include a queue rescan by the running server (every 5 s).
const RESCAN_WAIT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------ helpers

/// Waits (bounded) until `receiver` took `count` messages; returns them.
#[track_caller]
fn wait_for_messages(
    receiver: &SmtpServer,
    count: usize,
    limit: Duration,
    server: &TestServer,
) -> Vec<Received> {
    let ok = eventually(limit, || receiver.messages().len() >= count);
    assert!(
        ok,
        "receiver {} got {} messages, expected {count}; RCPTs seen: {:?}\nserver log:\n{}",
        receiver.addr,
        receiver.messages().len(),
        receiver.rcpts(),
        server.log()
    );
    receiver.messages()
}

fn ipv6_loopback_works() -> bool {
    TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Test data that must outlive the servers using it (password files, smtp-sink dumps).
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// A message's content: headers the tests look for, then a body.
fn content(from: &str, rcpts: &[&str], subject: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: {}\r\nSubject: {subject}\r\nMessage-ID: <{}@client.test>\r\n\r\nbody of {subject}\r\n.\r\n",
        rcpts.join(", "),
        subject.replace(' ', "-"),
    )
}

/// Alice submits a message: submission listener, STARTTLS, AUTH PLAIN, one transaction.
fn submit(server: &TestServer, rcpts: &[&str], subject: &str) {
    let from = "alice@example.test";
    let mut smtp = server.smtp("submission");
    smtp.send("EHLO laptop.example.test")
        .expect(250)
        .starttls(server.ca())
        .send("EHLO laptop.example.test")
        .expect(250)
        .auth_plain(from, PASSWORD)
        .expect(235)
        .send(&format!("MAIL FROM:<{from}>"))
        .expect(250);
    for rcpt in rcpts {
        smtp.send(&format!("RCPT TO:<{rcpt}>")).expect(250);
    }
    smtp.send("DATA")
        .expect(354)
        .raw(content(from, rcpts, subject).as_bytes())
        .expect_text(250, "queued as")
        .send("QUIT")
        .expect(221);
}

fn queue_list(server: &TestServer) -> Vec<Value> {
    match queue_json(server, &["list"]) {
        Value::Array(entries) => entries,
        other => panic!("queue list --json is not an array: {other}"),
    }
}

/// Waits (bounded) until the server's queue is empty.
#[track_caller]
fn wait_queue_empty(server: &TestServer, limit: Duration) {
    let mut last = Vec::new();
    let empty = eventually(limit, || {
        last = queue_list(server);
        last.is_empty()
    });
    assert!(
        empty,
        "queue not empty: {last:#?}\nserver log:\n{}",
        server.log()
    );
}

/// Waits (bounded) until the queue holds one message whose recipients satisfy `check`.
#[track_caller]
fn wait_queue_entry(server: &TestServer, limit: Duration, check: impl Fn(&Value) -> bool) -> Value {
    let mut last = Vec::new();
    let found = eventually(limit, || {
        last = queue_list(server);
        last.len() == 1 && check(&last[0])
    });
    assert!(
        found,
        "queue never reached the expected state: {last:#?}\nserver log:\n{}",
        server.log()
    );
    last.remove(0)
}

fn str_field<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {value:#}"))
}

fn u64_field(value: &Value, key: &str) -> u64 {
    value[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {value:#}"))
}

/// The header section of a message, unfolded, as (lower-case name, value) in order.
fn headers(message: &str) -> Vec<(String, String)> {
    let head = message.split("\r\n\r\n").next().unwrap_or("");
    let mut out: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    out
}

fn header<'a>(message_headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    message_headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

// ------------------------------------------------------------------ RFC 3464

/// A parsed delivery status notification: per-recipient fields and the returned headers.
#[derive(Debug)]
struct Dsn {
    /// Final-Recipient address → (Action, Status).
    recipients: HashMap<String, (String, String)>,
    per_message: Vec<(String, String)>,
    returned_headers: String,
}

/// Checks the RFC 3464 / RFC 6522 structure of `message` and returns its contents: a
/// multipart/report with report-type=delivery-status whose parts are a human-readable text,
/// a message/delivery-status (per-message fields with Reporting-MTA, then one block per
/// recipient with Final-Recipient, Action and a valid Status), and the original headers.
#[track_caller]
fn parse_dsn(message: &str) -> Dsn {
    let top = headers(message);
    let content_type = header(&top, "content-type").unwrap_or_else(|| panic!("{message}"));
    let lower = content_type.to_ascii_lowercase();
    assert!(lower.starts_with("multipart/report"), "{content_type}");
    assert!(
        lower.contains("report-type=delivery-status")
            || lower.contains("report-type=\"delivery-status\""),
        "{content_type}"
    );
    let boundary = content_type
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .next()
        .unwrap_or_else(|| panic!("no boundary in {content_type}"))
        .trim_matches('"')
        .to_string();
    assert!(
        header(&top, "from").is_some_and(|f| f.to_ascii_lowercase().contains("mailer-daemon")),
        "{top:?}"
    );
    let body = &message[message.find("\r\n\r\n").expect("body") + 4..];
    let delimiter = format!("--{boundary}");
    assert!(
        body.contains(&format!("{delimiter}--")),
        "no closing delimiter:\n{message}"
    );
    let parts: Vec<&str> = body
        .split(&delimiter)
        .skip(1)
        .take_while(|p| !p.starts_with("--"))
        .map(|p| p.trim_start_matches("\r\n"))
        .collect();
    assert_eq!(parts.len(), 3, "parts of the report:\n{message}");
    let part_type = |part: &str| {
        header(&headers(part), "content-type")
            .unwrap_or("text/plain")
            .to_ascii_lowercase()
    };
    assert!(
        part_type(parts[0]).starts_with("text/plain"),
        "{}",
        parts[0]
    );
    assert!(
        part_type(parts[1]).starts_with("message/delivery-status"),
        "{}",
        parts[1]
    );
    assert!(
        part_type(parts[2]).starts_with("text/rfc822-headers")
            || part_type(parts[2]).starts_with("message/rfc822"),
        "{}",
        parts[2]
    );

    // message/delivery-status: blocks of fields separated by blank lines.
    let status_body = &parts[1][parts[1].find("\r\n\r\n").expect("status body") + 4..];
    let blocks: Vec<Vec<(String, String)>> = status_body
        .split("\r\n\r\n")
        .map(headers_of_block)
        .filter(|b| !b.is_empty())
        .collect();
    assert!(blocks.len() >= 2, "no per-recipient block:\n{}", parts[1]);
    let per_message = blocks[0].clone();
    assert!(
        header(&per_message, "reporting-mta").is_some_and(|v| v.starts_with("dns;")),
        "{per_message:?}"
    );
    let mut recipients = HashMap::new();
    for block in &blocks[1..] {
        let final_rcpt = header(block, "final-recipient").unwrap_or_else(|| panic!("{block:?}"));
        let (kind, address) = final_rcpt.split_once(';').expect("type; address");
        assert_eq!(kind.trim().to_ascii_lowercase(), "rfc822");
        let action = header(block, "action").expect("Action").to_string();
        let status = header(block, "status").expect("Status").to_string();
        assert!(valid_status(&status), "Status {status:?}");
        recipients.insert(address.trim().to_string(), (action, status));
    }
    let returned = &parts[2][parts[2].find("\r\n\r\n").map_or(0, |i| i + 4)..];
    Dsn {
        recipients,
        per_message,
        returned_headers: returned.to_string(),
    }
}

fn headers_of_block(block: &str) -> Vec<(String, String)> {
    headers(&format!("{block}\r\n\r\n"))
}

/// `class.subject.detail` with class 2, 4 or 5 (RFC 3463).
fn valid_status(status: &str) -> bool {
    let parts: Vec<&str> = status.split('.').collect();
    parts.len() == 3
        && ["2", "4", "5"].contains(&parts[0])
        && parts[1..]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

// ------------------------------------------------------------------ 1. smart host: relayward

/// Instance B: local domain `b.test`, a user `relay@a.test` that may send as Alice of A.
fn smarthost_b() -> TestServer {
    TestServer::start(&format!(
        r#"hostname = "mx.b.test"
data_dir = "DATA_DIR"

[[listen]]
address = "127.0.0.1:0"
kind = "mx"

[[listen]]
address = "127.0.0.1:0"
kind = "submission"

[relay]
local_domains = ["b.test"]
mailboxes = ["someone@b.test"]
trusted_networks = []

[[user]]
login = "relay@a.test"
password_hash = "{hash}"
send_as = ["alice@example.test"]
"#,
        hash = password_hash()
    ))
}

/// Instance A: the standard configuration, relaying through B's submission listener with
/// STARTTLS (trusting `ca_file`) and AUTH as `relay@a.test`.
fn relaying_through(b: &TestServer, ca_file: &Path, secrets: &Path) -> TestServer {
    let password_file = secrets.join("smarthost.secret");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("password file");
    TestServer::start(&standard_config(&format!(
        r#"
[delivery]
smarthost = "127.0.0.1:{port}"
smarthost_tls = "starttls"
smarthost_user = "relay@a.test"
smarthost_password_file = "{password}"
ca_file = "{ca}"
"#,
        port = b.addr("submission").port(),
        password = password_file.display(),
        ca = ca_file.display(),
    )))
}

/// Instance A relays through instance B's submission listener: STARTTLS verified against B's
/// self-signed certificate (by IP address, 127.0.0.1), AUTH as B's user, and the message lands
/// in B's Maildir with both trace headers.
#[test]
fn smarthost_is_another_relayward_submission_listener_with_starttls_and_auth() {
    let b = smarthost_b();
    let secrets = scratch();
    let a = relaying_through(&b, &b.ca(), secrets.path());

    submit(&a, &["someone@b.test"], "through the smart host");

    let mail = b.wait_for_mail("b.test", "someone", 1);
    let message = &mail[0];
    let trace: Vec<String> = headers(message)
        .into_iter()
        .filter(|(n, _)| n == "received")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(trace.len(), 2, "A's and B's Received headers:\n{message}");
    // Newest first: B's, recording A's relay login over TLS; then A's, recording Alice's.
    assert!(trace[0].contains("by mx.b.test"), "{}", trace[0]);
    assert!(
        trace[0].contains("authenticated as relay@a.test"),
        "{}",
        trace[0]
    );
    assert!(trace[0].contains("with ESMTPSA"), "{}", trace[0]);
    assert!(trace[0].contains("TLS"), "{}", trace[0]);
    assert!(
        trace[1].contains("from laptop.example.test"),
        "{}",
        trace[1]
    );
    assert!(trace[1].contains("by mx.example.test"), "{}", trace[1]);
    assert!(
        trace[1].contains("authenticated as alice@example.test"),
        "{}",
        trace[1]
    );
    assert!(message.contains("\r\nSubject: through the smart host\r\n"));
    assert!(message.contains("\r\nbody of through the smart host\r\n"));
    assert!(
        !message.contains(PASSWORD),
        "a password leaked into the mail"
    );
    wait_queue_empty(&a, support::WAIT);
    wait_queue_empty(&b, support::WAIT);
}

/// The same set-up trusting another certificate: A must not talk to B (the password would
/// follow), so the message stays queued with a certificate error and B receives nothing.
#[test]
fn smarthost_with_an_untrusted_certificate_gets_neither_password_nor_mail() {
    let b = smarthost_b();
    let stranger = TestServer::start(&standard_config(""));
    let secrets = scratch();
    let a = relaying_through(&b, &stranger.ca(), secrets.path());

    submit(&a, &["someone@b.test"], "must not leave");

    let entry = wait_queue_entry(&a, support::WAIT, |e| {
        e["recipients"][0]["attempts"].as_u64() == Some(1)
    });
    let rcpt = &entry["recipients"][0];
    assert_eq!(
        str_field(rcpt, "status"),
        "pending",
        "deferred, not bounced"
    );
    let error = str_field(rcpt, "last_error").to_ascii_lowercase();
    assert!(
        error.contains("certificate") || error.contains("tls"),
        "{rcpt:#}"
    );
    assert!(b.maildir_new("b.test", "someone").is_empty());
    assert!(
        !b.log().contains("relay@a.test"),
        "B saw a login:\n{}",
        b.log()
    );
}

// ------------------------------------------------------------------ 2. smart host: smtp-sink

#[test]
fn smarthost_is_postfix_smtp_sink_in_clear_on_loopback() {
    let sink = SmtpSink::start(&[]);
    let a = TestServer::start(&standard_config(&format!(
        r#"
[delivery]
smarthost = "127.0.0.1:{}"
smarthost_tls = "none"
"#,
        sink.port
    )));
    submit(&a, &["carol@far.test", "dave@far.test"], "into the sink");

    let dumped = sink
        .wait_for("Subject: into the sink", support::WAIT)
        .map(|dump| String::from_utf8_lossy(&dump).into_owned())
        .unwrap_or_else(|| panic!("nothing reached smtp-sink\nserver log:\n{}", a.log()));
    // smtp-sink's dump records the envelope it was given.
    assert!(dumped.contains("alice@example.test"), "{dumped}");
    assert!(dumped.contains("carol@far.test"), "{dumped}");
    assert!(dumped.contains("dave@far.test"), "{dumped}");
    wait_queue_empty(&a, support::WAIT);
}

// ------------------------------------------------------------------ 3. MX delivery

fn mx_config(dns: &DnsServer, mx_port: u16) -> String {
    standard_config(&format!(
        r#"
[delivery]
mx_port = {mx_port}

[dns]
nameservers = ["{dns}"]
"#,
        dns = dns.addr
    ))
}

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn rcpt_domains(got: &[Received]) -> Vec<String> {
    let mut rcpts: Vec<String> = got.iter().flat_map(|g| g.rcpts.clone()).collect();
    rcpts.sort();
    rcpts
}

/// MX order (the lower preference wins, whatever order the records come in), the next MX
/// after a 4xx from the first, implicit MX from an A record, and AAAA-only MX hosts.
#[test]
fn mx_delivery_follows_preference_falls_back_on_4xx_and_uses_implicit_mx() {
    let with_v6 = ipv6_loopback_works();
    let mut ips = vec![v4(2), v4(3), v4(4)];
    if with_v6 {
        ips.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
    } else {
        eprintln!("NOTE: no IPv6 loopback here; the AAAA-only MX host is not tested");
    }
    let (port, mut listeners) = listeners_on_one_port(&ips);
    let v6 = with_v6.then(|| {
        SmtpServer::spawn(
            listeners.pop().expect("::1"),
            Script::default().rcpt_reply("250 2.1.5 ok"),
        )
    });
    let busy = SmtpServer::spawn(
        listeners.pop().expect(".4"),
        Script::default().rcpt_reply("451 4.3.0 busy, try the next MX"),
    );
    let secondary = SmtpServer::spawn(
        listeners.pop().expect(".3"),
        Script::default().rcpt_reply("250 2.1.5 ok"),
    );
    let primary = SmtpServer::spawn(
        listeners.pop().expect(".2"),
        Script::default().rcpt_reply("250 2.1.5 ok"),
    );

    let mut zone = Zone::new()
        // Listed worst first: the order must come from the preference, not the answer.
        .mx("order.test", 20, "mx2.order.test")
        .mx("order.test", 10, "mx1.order.test")
        .a("mx2.order.test", Ipv4Addr::new(127, 0, 0, 3))
        .a("mx1.order.test", Ipv4Addr::new(127, 0, 0, 2))
        .mx("fallback.test", 10, "busy.fallback.test")
        .mx("fallback.test", 20, "backup.fallback.test")
        .a("busy.fallback.test", Ipv4Addr::new(127, 0, 0, 4))
        .a("backup.fallback.test", Ipv4Addr::new(127, 0, 0, 3))
        .a("implicit.test", Ipv4Addr::new(127, 0, 0, 3));
    let mut rcpts = vec![
        "user@order.test",
        "user@fallback.test",
        "user@implicit.test",
    ];
    if with_v6 {
        zone = zone
            .mx("v6.test", 10, "mx.v6.test")
            .aaaa("mx.v6.test", Ipv6Addr::LOCALHOST);
        rcpts.push("user@v6.test");
    }
    let dns = DnsServer::start(zone);
    let server = TestServer::start(&mx_config(&dns, port));

    submit(&server, &rcpts, "by MX");

    let on_primary = wait_for_messages(&primary, 1, support::WAIT, &server);
    assert_eq!(rcpt_domains(&on_primary), ["user@order.test"]);
    let on_secondary = wait_for_messages(&secondary, 1, support::WAIT, &server);
    eventually(support::WAIT, || {
        rcpt_domains(&secondary.messages()).len() >= 2
    });
    assert_eq!(
        rcpt_domains(&secondary.messages()),
        ["user@fallback.test", "user@implicit.test"],
        "the backup MX of fallback.test and the implicit MX of implicit.test: {on_secondary:?}"
    );
    assert!(
        busy.rcpts()
            .iter()
            .any(|(r, reply)| r == "user@fallback.test" && reply.starts_with("451")),
        "the preferred MX of fallback.test was tried first: {:?}",
        busy.rcpts()
    );
    assert!(busy.messages().is_empty());
    if let Some(v6) = &v6 {
        let got = wait_for_messages(v6, 1, support::WAIT, &server);
        assert_eq!(rcpt_domains(&got), ["user@v6.test"]);
    }
    for got in primary.messages().iter().chain(&secondary.messages()) {
        assert_eq!(got.from, "alice@example.test");
        assert!(
            got.text().contains("\r\nSubject: by MX\r\n"),
            "{}",
            got.text()
        );
        assert!(
            got.text().starts_with("Received: from laptop.example.test"),
            "{}",
            got.text()
        );
    }
    wait_queue_empty(&server, support::WAIT);
    let asked = dns.queries();
    assert!(asked.iter().any(|q| q == "order.test. MX"), "{asked:?}");
    assert!(asked.iter().any(|q| q == "implicit.test. A"), "{asked:?}");
}

/// A 4xx from the only MX leaves the recipient pending with its error and a later attempt;
/// `relayward queue retry --all` on the live server makes it due, and the next attempt
/// delivers.
#[test]
fn mx_delivery_retries_after_4xx() {
    let (port, mut listeners) = listeners_on_one_port(&[v4(2)]);
    let open = Arc::new(AtomicBool::new(false));
    let gate = Arc::clone(&open);
    let mx = SmtpServer::spawn(
        listeners.pop().expect("listener"),
        Script::default().rcpt_by(move |_| {
            if gate.load(Ordering::SeqCst) {
                "250 2.1.5 ok".into()
            } else {
                "451 4.3.0 greylisted, come back later".into()
            }
        }),
    );
    let dns = DnsServer::start(
        Zone::new()
            .mx("retry.test", 10, "mx.retry.test")
            .a("mx.retry.test", Ipv4Addr::new(127, 0, 0, 2)),
    );
    let server = TestServer::start(&mx_config(&dns, port));

    submit(&server, &["later@retry.test"], "retry me");

    let entry = wait_queue_entry(&server, support::WAIT, |e| {
        e["recipients"][0]["attempts"].as_u64() == Some(1)
    });
    let rcpt = &entry["recipients"][0];
    assert_eq!(str_field(rcpt, "status"), "pending");
    assert!(
        str_field(rcpt, "last_error").starts_with("451 4.3.0 greylisted"),
        "{rcpt:#}"
    );
    assert!(
        u64_field(rcpt, "next_attempt") >= now() + 30,
        "the first retry is about a minute away: {rcpt:#}"
    );
    assert!(mx.messages().is_empty());

    open.store(true, Ordering::SeqCst);
    let retried = queue_json(&server, &["retry", "--all"]);
    assert_eq!(retried["action"], "retry");
    assert_eq!(retried["ids"][0], entry["id"]);

    let got = wait_for_messages(&mx, 1, RESCAN_WAIT, &server);
    assert_eq!(got[0].rcpts, ["later@retry.test"]);
    assert!(got[0].text().contains("Subject: retry me"));
    assert_eq!(mx.rcpts().len(), 2, "one 451, one 250: {:?}", mx.rcpts());
    wait_queue_empty(&server, support::WAIT);
}

/// A 550 from the MX and a null MX (RFC 7505) both bounce at once: the sender's local mailbox
/// receives an RFC 3464 report for exactly the failed recipients, with the original headers;
/// the recipient the MX took is delivered and not reported.
#[test]
fn mx_delivery_bounces_5xx_and_null_mx_into_the_senders_mailbox() {
    let (port, mut listeners) = listeners_on_one_port(&[v4(2)]);
    let mx = SmtpServer::spawn(
        listeners.pop().expect("listener"),
        Script::default().rcpt_by(|rcpt| {
            if rcpt.starts_with("nobody@") {
                format!("550 5.1.1 <{rcpt}>: no such user")
            } else {
                "250 2.1.5 ok".into()
            }
        }),
    );
    let dns = DnsServer::start(
        Zone::new()
            .mx("reject.test", 10, "mx.reject.test")
            .a("mx.reject.test", Ipv4Addr::new(127, 0, 0, 2))
            .null_mx("nullmx.test"),
    );
    let server = TestServer::start(&mx_config(&dns, port));

    submit(
        &server,
        &["nobody@reject.test", "ok@reject.test"],
        "partly refused",
    );
    submit(&server, &["anyone@nullmx.test"], "to a null MX");

    let got = wait_for_messages(&mx, 1, support::WAIT, &server);
    assert_eq!(got[0].rcpts, ["ok@reject.test"]);
    let bounces = server.wait_for_mail("example.test", "alice", 2);
    let find = |subject: &str| {
        bounces
            .iter()
            .find(|b| b.contains(&format!("Subject: {subject}\r\n")))
            .unwrap_or_else(|| panic!("no bounce for {subject:?} in {bounces:#?}"))
            .clone()
    };

    let refused = find("partly refused");
    let dsn = parse_dsn(&refused);
    assert_eq!(
        dsn.recipients.len(),
        1,
        "only the refused recipient: {dsn:?}"
    );
    let (action, status) = &dsn.recipients["nobody@reject.test"];
    assert_eq!(action, "failed");
    assert_eq!(status, "5.1.1", "the status of the 550 reply");
    assert!(
        refused.contains("550 5.1.1 <nobody@reject.test>: no such user"),
        "{refused}"
    );
    assert!(
        dsn.returned_headers
            .contains("Message-ID: <partly-refused@client.test>")
    );
    assert!(
        !refused.contains("body of partly refused"),
        "only headers come back"
    );
    assert!(
        header(&dsn.per_message, "reporting-mta").is_some_and(|v| v.contains("mx.example.test")),
        "{dsn:?}"
    );

    let null = find("to a null MX");
    let dsn = parse_dsn(&null);
    let (action, status) = &dsn.recipients["anyone@nullmx.test"];
    assert_eq!(action, "failed");
    assert!(status.starts_with("5."), "{status}");
    assert!(dsn.returned_headers.contains("Subject: to a null MX"));

    for bounce in &bounces {
        // Sent with the null sender (it can never bounce in turn) to Alice.
        let h = headers(bounce);
        assert!(
            header(&h, "to").is_some_and(|t| t.contains("alice@example.test")),
            "{bounce}"
        );
        assert!(
            header(&h, "auto-submitted").is_some_and(|v| v.starts_with("auto-replied")),
            "{bounce}"
        );
    }
    let asked = dns.queries();
    assert!(
        !asked
            .iter()
            .any(|q| q.starts_with("nullmx.test. A") || q.starts_with("nullmx.test. AAAA")),
        "a null MX must not fall back to the address records: {asked:?}"
    );
    wait_queue_empty(&server, support::WAIT);
}

// ------------------------------------------------------------------ 4. route

/// A route that takes any local part without asking the internal server at RCPT time
/// (`verify_recipients = false`), so these tests see only what delivery sends;
/// tests/redteam_delivery.rs covers recipient verification.
fn route_config(receiver: &SmtpServer) -> String {
    standard_config(&format!(
        r#"
[[route]]
domain = "corp.example.test"
to = "smtp://127.0.0.1:{port}"
verify_recipients = false
"#,
        port = receiver.addr.port()
    ))
}

/// The stranger's message for anyone@corp.example.test, then QUIT: DATA → 354, content → 250,
/// QUIT → 221.
fn data_for_corp_then_quit(smtp: &mut support::Smtp, subject: &str) {
    smtp.send("DATA")
        .expect(354)
        .raw(
            content(
                "stranger@outside.test",
                &["anyone@corp.example.test"],
                subject,
            )
            .as_bytes(),
        )
        .expect(250)
        .send("QUIT")
        .expect(221);
}

/// A `[[route]]` domain takes mail from strangers and forwards it to the internal server;
/// recipients that hide another destination inside it are refused.
#[test]
fn route_forwards_its_domain_and_refuses_tricked_recipients() {
    let internal = SmtpServer::bind("127.0.0.1:0", Script::default().rcpt_reply("250 2.1.5 ok"));
    let server = TestServer::start(&route_config(&internal));

    let mut smtp = server.smtp("mx");
    smtp.send("EHLO stranger.outside.test")
        .expect(250)
        .send("MAIL FROM:<stranger@outside.test>")
        .expect(250)
        .send("RCPT TO:<victim%other.test@corp.example.test>")
        .expect_text(554, "5.7.1")
        .send("RCPT TO:<\"victim@other.test\"@corp.example.test>")
        .expect_text(554, "5.7.1")
        .send("RCPT TO:<other.test!victim@corp.example.test>")
        .expect_text(554, "5.7.1")
        .send("RCPT TO:<@corp.example.test:victim@other.test>")
        .expect_text(554, "5.7.1")
        .send("RCPT TO:<anyone@corp.example.test>")
        .expect_text(250, "2.1.5");
    data_for_corp_then_quit(&mut smtp, "for corp");

    let got = wait_for_messages(&internal, 1, support::WAIT, &server);
    assert_eq!(got[0].from, "stranger@outside.test");
    assert_eq!(
        got[0].rcpts,
        ["anyone@corp.example.test"],
        "no tricked recipient forwarded"
    );
    assert!(
        got[0]
            .text()
            .starts_with("Received: from stranger.outside.test ([127.0.0.1])")
    );
    assert!(got[0].text().contains("Subject: for corp"));
    assert_eq!(
        internal.rcpts().len(),
        1,
        "only the one recipient was offered: {:?}",
        internal.rcpts()
    );
    wait_queue_empty(&server, support::WAIT);
}

/// Messages delivered one after another to the same next hop share one connection, and its TLS
/// outcome is logged once, when the connection is opened (as Postfix logs TLS once per
/// connection), not once per message.
#[test]
fn a_reused_connection_logs_its_tls_outcome_once() {
    let internal = SmtpServer::bind("127.0.0.1:0", Script::default().rcpt_reply("250 2.1.5 ok"));
    let server = TestServer::start(&route_config(&internal));
    for n in 1..=3 {
        let mut smtp = server.smtp("mx");
        smtp.send("EHLO stranger.outside.test")
            .expect(250)
            .send("MAIL FROM:<stranger@outside.test>")
            .expect(250)
            .send("RCPT TO:<anyone@corp.example.test>")
            .expect(250);
        data_for_corp_then_quit(&mut smtp, &format!("message {n}"));
        wait_for_messages(&internal, n, support::WAIT, &server);
    }
    assert_eq!(internal.connections(), 1, "one connection for the three");
    let log = server.log();
    let tls_lines = log
        .lines()
        .filter(|l| l.contains(" TLS domain=127.0.0.1 "))
        .count();
    assert_eq!(tls_lines, 1, "{log}");
}

// ------------------------------------------------------------------ 5. queue commands

/// `relayward queue list/show/hold/release/retry/delete` against the queue of a running server
/// whose only delivery path answers 451.
#[test]
fn queue_commands_work_on_a_live_queue() {
    let internal = SmtpServer::bind(
        "127.0.0.1:0",
        Script::default().rcpt_reply("451 4.7.1 not today"),
    );
    let server = TestServer::start(&route_config(&internal));
    let started = now();

    let mut smtp = server.smtp("mx");
    smtp.send("EHLO stranger.outside.test")
        .expect(250)
        .send("MAIL FROM:<stranger@outside.test>")
        .expect(250)
        .send("RCPT TO:<stuck@corp.example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(
            content(
                "stranger@outside.test",
                &["stuck@corp.example.test"],
                "stuck",
            )
            .as_bytes(),
        )
        .expect(250)
        .send("QUIT")
        .expect(221);

    // The first attempt happens at once and is deferred.
    let entry = wait_queue_entry(&server, support::WAIT, |e| {
        e["recipients"][0]["attempts"].as_u64() == Some(1)
    });
    eprintln!(
        "queue list --json:\n{}",
        queue_cmd(&server, &["list", "--json"])
    );
    let id = str_field(&entry, "id").to_string();
    assert!(!id.is_empty());
    let arrived = u64_field(&entry, "arrived");
    assert!((started..=now()).contains(&arrived), "arrived {arrived}");
    assert!(u64_field(&entry, "age_seconds") <= now() - started + 1);
    assert_eq!(str_field(&entry, "sender"), "stranger@outside.test");
    assert!(
        u64_field(&entry, "size") > 100,
        "content with a Received header"
    );
    assert_eq!(entry["held"], false);
    let rcpt = &entry["recipients"][0];
    assert_eq!(str_field(rcpt, "address"), "stuck@corp.example.test");
    assert_eq!(str_field(rcpt, "status"), "pending");
    assert_eq!(u64_field(rcpt, "attempts"), 1);
    assert!(
        str_field(rcpt, "last_error").starts_with("451 4.7.1 not today"),
        "{rcpt:#}"
    );
    let next = u64_field(rcpt, "next_attempt");
    assert!(
        next >= now() + 30,
        "next attempt about a minute away: {rcpt:#}"
    );
    assert_eq!(entry["next_attempt"], rcpt["next_attempt"]);
    assert_eq!(entry["last_error"], rcpt["last_error"]);

    let table = queue_cmd(&server, &["list"]);
    eprintln!("queue list:\n{table}");
    assert!(table.contains(&id), "{table}");
    assert!(table.contains("stuck@corp.example.test"), "{table}");
    assert!(table.contains("451"), "{table}");

    let detail = queue_json(&server, &["show", &id]);
    eprintln!(
        "queue show --json:\n{}",
        queue_cmd(&server, &["show", &id, "--json"])
    );
    assert_eq!(detail["id"], entry["id"]);
    assert_eq!(str_field(&detail, "client_ip"), "127.0.0.1");
    assert_eq!(detail["auth_login"], Value::Null);
    assert_eq!(detail["recipients"], entry["recipients"]);
    let shown: Vec<(String, String)> = detail["headers"]
        .as_array()
        .expect("headers array")
        .iter()
        .map(|h| {
            (
                str_field(h, "name").to_string(),
                str_field(h, "value").to_string(),
            )
        })
        .collect();
    assert_eq!(shown[0].0, "Received", "{shown:?}");
    assert!(
        shown.contains(&("Subject".into(), "stuck".into())),
        "{shown:?}"
    );
    assert!(
        shown.contains(&("Message-ID".into(), "<stuck@client.test>".into())),
        "{shown:?}"
    );
    let table = queue_cmd(&server, &["show", &id]);
    eprintln!("queue show:\n{table}");
    assert!(
        table.contains(&id) && table.contains("Subject: stuck"),
        "{table}"
    );

    // Held: listed as held, skipped by `retry --all`, and not attempted even when due.
    let held = queue_json(&server, &["hold", &id]);
    eprintln!(
        "queue hold --json:\n{}",
        queue_cmd(&server, &["hold", &id, "--json"])
    );
    assert_eq!(held, serde_json::json!({"action": "hold", "ids": [id]}));
    assert_eq!(queue_list(&server)[0]["held"], true);
    let all = queue_json(&server, &["retry", "--all"]);
    assert_eq!(all, serde_json::json!({"action": "retry", "ids": []}));
    queue_json(&server, &["retry", &id]);
    let offered = internal.rcpts().len();
    std::thread::sleep(Duration::from_secs(7)); // longer than one rescan of the server
    assert_eq!(
        internal.rcpts().len(),
        offered,
        "a held message was attempted"
    );
    let listed = queue_list(&server);
    assert_eq!(listed[0]["recipients"][0]["attempts"], 1);

    // Released and retried: the running server attempts it again at its next scan.
    let released = queue_json(&server, &["release", &id]);
    assert_eq!(
        released,
        serde_json::json!({"action": "release", "ids": [id]})
    );
    let retried = queue_json(&server, &["retry", &id]);
    assert_eq!(retried, serde_json::json!({"action": "retry", "ids": [id]}));
    // The `retry` while held already made it due, so the release alone may start the second
    // attempt and this `retry` a third: at least one more attempt is what is promised.
    let entry = wait_queue_entry(&server, RESCAN_WAIT, |e| {
        e["recipients"][0]["attempts"].as_u64() >= Some(2)
    });
    assert_eq!(entry["held"], false);
    assert!(internal.rcpts().len() >= 2, "{:?}", internal.rcpts());

    let deleted = queue_json(&server, &["delete", &id]);
    assert_eq!(
        deleted,
        serde_json::json!({"action": "delete", "ids": [id]})
    );
    assert_eq!(queue_list(&server), Vec::<Value>::new());
    let table = queue_cmd(&server, &["list"]);
    assert!(!table.contains(&id), "{table}");
    assert!(internal.messages().is_empty());
}

// ------------------------------------------------------------------ crash during delivery

/// `kill -9` while the receiving server holds the final reply: after a restart on the same data
/// directory, every recipient is delivered (at least once) and the queue empties.
#[test]
fn kill_9_during_delivery_loses_no_recipient() {
    let internal = SmtpServer::bind(
        "127.0.0.1:0",
        Script {
            data_delay: Duration::from_secs(3),
            ..Script::default()
        },
    );
    let config = route_config(&internal);
    let server = TestServer::start(&config);
    let rcpts = ["one@corp.example.test", "two@corp.example.test"];
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO stranger.outside.test")
        .expect(250)
        .send("MAIL FROM:<stranger@outside.test>")
        .expect(250)
        .send(&format!("RCPT TO:<{}>", rcpts[0]))
        .expect(250)
        .send(&format!("RCPT TO:<{}>", rcpts[1]))
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(content("stranger@outside.test", &rcpts, "crash").as_bytes())
        .expect(250)
        .send("QUIT")
        .expect(221);
    assert!(
        eventually(support::WAIT, || internal.data_read() >= 1),
        "delivery did not start\n{}",
        server.log()
    );
    let dir = server.kill9();
    let before = internal.connections();

    let server = TestServer::start_in(dir, &config);
    let got = wait_for_messages(&internal, 2, RESCAN_WAIT, &server);
    assert!(
        internal.connections() > before,
        "the restarted server delivered again"
    );
    let last = got.last().expect("message");
    let mut delivered = last.rcpts.clone();
    delivered.sort();
    assert_eq!(delivered, rcpts, "every recipient, in the redelivery");
    wait_queue_empty(&server, RESCAN_WAIT);
}

//! Red-team findings against the delivery side, end to end through the real binary: what a
//! stranger's message can make the runner do after it was accepted.

mod support;

use std::time::{Duration, Instant};

use relayward_testkit::dns::{DnsServer, Zone};
use support::{TestServer, spooled, standard_config, wait_queue_empty};

/// A `[[route]]` to a port where nothing listens: every attempt (and every recipient check)
/// fails to connect.
fn unreachable_route() -> String {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    format!("[[route]]\ndomain = \"corp.example.test\"\nto = \"smtp://{addr}\"\n")
}

/// The same, taking any local part without asking (so mail is queued and then defers).
fn unreachable_route_unverified() -> String {
    unreachable_route() + "verify_recipients = false\n"
}

fn queue_one_for_the_route(server: &TestServer) -> String {
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<friend@outside.test>")
        .expect(250)
        .send("RCPT TO:<eve@corp.example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: stuck\r\n\r\nwaits for the route\r\n.\r\n")
        .expect_text(250, "queued as");
    let reply = smtp.last_lines().join(" ");
    smtp.send("QUIT").expect(221);
    reply
        .rsplit(' ')
        .next()
        .expect("queue id in the reply")
        .to_string()
}

/// Finding 7: a message past its lifetime whose content could not be read was tried about a
/// thousand times a second, forever (the expired recipients were dropped from the update, so
/// the next attempt never moved). It is moved aside now, with one log line.
#[test]
fn an_unreadable_message_is_moved_aside_not_retried_in_a_loop() {
    let config = standard_config(&format!(
        "{}\n[delivery]\nmax_queue_lifetime = \"3s\"\n",
        unreachable_route_unverified()
    ));
    let server = TestServer::start(&config);
    let id = queue_one_for_the_route(&server);
    // Once the deferral is recorded, its file is damaged (as a disk error or a careless admin
    // would) before the next attempt, which comes when the lifetime ends.
    let msg = server.data_dir().join("queue").join("msg");
    let recorded = Instant::now() + Duration::from_secs(10);
    while !msg.join(format!("{id}.json")).exists() {
        assert!(
            Instant::now() < recorded,
            "deferral not recorded:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let file = msg.join(format!("{id}.eml"));
    let text = std::fs::read(&file).expect("queued file");
    std::fs::write(&file, &text[..text.len() - 10]).expect("truncate");

    let deadline = Instant::now() + Duration::from_secs(15);
    let corrupt = server.data_dir().join("queue").join("corrupt");
    while !corrupt.join(format!("{id}.eml")).exists() {
        assert!(
            Instant::now() < deadline,
            "not moved aside; log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_queue_empty(&server);
    assert_eq!(spooled(&server), 0);
    std::thread::sleep(Duration::from_millis(500));
    let log = server.log();
    let reads = log.matches("cannot read message content").count()
        + log.matches("message moved to").count();
    assert!(
        reads <= 2,
        "{reads} attempts on an unreadable message:\n{log}"
    );
    assert!(
        std::fs::read_to_string(corrupt.join(format!("{id}.reason")))
            .expect("reason")
            .contains("content"),
    );
}

/// Finding 1, first half: `"a>b"@corp.example.test` is valid RFC 5321, so a `[[route]]` took
/// it from a stranger; the delivery client then refused `<`/`>` as a permanent 5.1.3 and the
/// bounce went to the stranger's forged sender. One rule now decides both: refused at RCPT.
/// The same holds for senders (MAIL), whose every relayed copy would fail the same way.
#[test]
fn addresses_the_client_would_refuse_are_refused_at_rcpt_and_mail() {
    let server = TestServer::start(&standard_config(&unreachable_route()));
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO attacker.outside.test")
        .expect(250)
        .send("MAIL FROM:<\"v>w\"@third.test>")
        .expect_text(553, "5.1.7")
        .send("MAIL FROM:<victim@third.test>")
        .expect(250)
        .send("RCPT TO:<\"a>b\"@corp.example.test>")
        .expect_text(553, "5.1.3")
        .send("RCPT TO:<\"<x>\"@corp.example.test>")
        .expect_text(553, "5.1.3")
        .send("DATA")
        .expect_text(554, "5.5.1")
        .send("QUIT")
        .expect(221);
    assert_eq!(spooled(&server), 0);
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Finding 2: nothing stopped a message from going round. With loopback trusted (the
/// embedded default), mail for a domain whose MX is this very server was delivered to its own
/// listener, which queued it again — 2,493 times in 12 seconds. The runner now skips its own
/// listeners as next hops, and when nothing else is left the mail "loops back to myself" and
/// bounces; the session accepted it exactly once.
#[test]
fn an_mx_pointing_back_to_this_server_bounces_instead_of_looping() {
    let port = free_port();
    let dns = DnsServer::start(
        Zone::new()
            .mx("loop.test", 10, "mx.loop.test")
            .a("mx.loop.test", std::net::Ipv4Addr::LOCALHOST),
    );
    let config = standard_config(&format!(
        "[delivery]\nmx_port = {port}\n\n[dns]\nnameservers = [\"{}\"]\n",
        dns.addr
    ))
    .replacen(
        "address = \"127.0.0.1:0\"",
        &format!("address = \"127.0.0.1:{port}\""),
        1,
    )
    .replace(
        "trusted_networks = []",
        "trusted_networks = [\"127.0.0.1/32\"]",
    );
    let server = TestServer::start(&config);
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO app.example.test")
        .expect(250)
        .send("MAIL FROM:<alice@example.test>")
        .expect(250)
        .send("RCPT TO:<someone@loop.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: round and round\r\n\r\nhello\r\n.\r\n")
        .expect_text(250, "queued as")
        .send("QUIT")
        .expect(221);
    let bounce = server.wait_for_mail("example.test", "alice", 1);
    assert!(bounce[0].contains("loops back to myself"), "{}", bounce[0]);
    wait_queue_empty(&server);
    let accepted = server.log().matches("message queued").count();
    assert_eq!(accepted, 1, "accepted {accepted} times:\n{}", server.log());
}

/// The internal server behind a `[[route]]`: a second relayward for `corp.example.test`
/// with the single mailbox eve, which refuses every other local part (550 5.1.1).
fn internal_server() -> TestServer {
    TestServer::start(
        &standard_config("")
            .replace("mx.example.test", "internal.corp.example.test")
            .replace(
                "local_domains = [\"example.test\"]",
                "local_domains = [\"corp.example.test\"]\nmailboxes = [\"eve@corp.example.test\"]",
            ),
    )
}

fn route_to(addr: std::net::SocketAddr, extra: &str) -> String {
    format!("[[route]]\ndomain = \"corp.example.test\"\nto = \"smtp://{addr}\"\n{extra}")
}

/// Finding 1, second half: a route took any local part from anyone, and when the internal
/// server refused it later the stranger's forged sender got the bounce. Now, by default, the
/// internal server is asked at RCPT time: a user it does not have is refused right there, and
/// no DSN with the stranger's content goes anywhere.
#[test]
fn a_route_refuses_at_rcpt_the_users_its_internal_server_does_not_have() {
    let internal = internal_server();
    let server = TestServer::start(&standard_config(&route_to(internal.addr("mx"), "")));
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO attacker.outside.test")
        .expect(250)
        .send("MAIL FROM:<victim@third.test>")
        .expect(250)
        .send("RCPT TO:<nobody@corp.example.test>")
        .expect_text(550, "5.1.1")
        .send("RCPT TO:<NOBODY@corp.example.test>")
        .expect_text(550, "5.1.1")
        .send("RCPT TO:<eve@corp.example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: for eve\r\n\r\nonly eve exists\r\n.\r\n")
        .expect_text(250, "queued as")
        .send("QUIT")
        .expect(221);
    let mail = internal.wait_for_mail("corp.example.test", "eve", 1);
    assert!(mail[0].contains("only eve exists"), "{}", mail[0]);
    wait_queue_empty(&server);
    assert!(!server.log().contains("bounce queued"), "{}", server.log());
    // The second spelling of nobody was answered from the cache: one question each.
    let asked = internal.log().matches("RCPT").count();
    assert!(asked <= 4, "asked {asked} times:\n{}", internal.log());
}

/// With the internal server down the answer is "try again later", never an unverified 250.
#[test]
fn a_route_whose_internal_server_is_down_defers_at_rcpt() {
    let server = TestServer::start(&standard_config(&unreachable_route()));
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<friend@outside.test>")
        .expect(250)
        .send("RCPT TO:<eve@corp.example.test>")
        .expect_text(451, "4.4.1")
        .send("DATA")
        .expect_text(554, "5.5.1")
        .send("QUIT")
        .expect(221);
    assert_eq!(spooled(&server), 0);
}

/// `recipients = [...]` lists the addresses that exist: only those are accepted, and nothing
/// is asked of the internal server at RCPT time.
#[test]
fn a_route_with_a_recipient_list_asks_nobody() {
    let sink = support::rejecting_sink("127.0.0.1", "250 ok");
    let server = TestServer::start(&standard_config(&route_to(
        sink.addr,
        "recipients = [\"eve@corp.example.test\"]\n",
    )));
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<friend@outside.test>")
        .expect(250)
        .send("RCPT TO:<mallory@corp.example.test>")
        .expect_text(550, "5.1.1")
        .send("RCPT TO:<Eve@corp.example.test>")
        .expect(250)
        .send("QUIT")
        .expect(221);
    assert_eq!(
        sink.connections(),
        0,
        "the sink was asked: {:?}",
        sink.lines()
    );
}

/// `verify_recipients = false` takes any local part again, and check-config says what that
/// costs.
#[test]
fn verify_recipients_false_accepts_anything_and_check_config_warns() {
    let sink = support::rejecting_sink("127.0.0.1", "550 5.1.1 no such user here");
    let route = route_to(sink.addr, "verify_recipients = false\n");
    let (code, out) = support::check_config(&standard_config(&route));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("backscatter"), "{out}");
    let server = TestServer::start(&standard_config(&route));
    server
        .smtp("mx")
        .send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<friend@outside.test>")
        .expect(250)
        .send("RCPT TO:<anyone@corp.example.test>")
        .expect(250)
        .send("QUIT")
        .expect(221);
}

/// One message from `smtp` (after EHLO) to eve of the route, asking its next hop for a
/// success notice and the whole message back, as RFC 3461 lets any client ask.
fn ask_for_notices(smtp: &mut support::Smtp, from: &str) {
    smtp.send(&format!("MAIL FROM:<{from}> RET=FULL ENVID=e1"))
        .expect(250)
        .send("RCPT TO:<eve@corp.example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;eve@corp.example.test")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: reflect me\r\n\r\nthe stranger's text\r\n.\r\n")
        .expect_text(250, "queued as")
        .send("QUIT")
        .expect(221);
}

/// The MAIL and RCPT lines the internal server got for the message from `from`.
fn envelope_lines(
    sink: &relayward_testkit::smtp_server::SmtpServer,
    from: &str,
) -> (String, String) {
    let lines = sink.lines();
    let at = lines
        .iter()
        .position(|l| l.starts_with(&format!("MAIL FROM:<{from}>")))
        .unwrap_or_else(|| panic!("no MAIL from {from}: {lines:?}"));
    (lines[at].clone(), lines[at + 1].clone())
}

/// A stranger's `NOTIFY=SUCCESS` and `RET=FULL` were passed on to a `[[route]]`'s internal
/// server that offers DSN: relayward itself sends success notices only to its own users and
/// small bounces to strangers, but the internal server was asked to mail the whole message
/// back to whatever sender the stranger wrote (a third party) once delivered — a relay by
/// reflection. A stranger's mail now goes on with `SUCCESS` dropped from `NOTIFY` and
/// `RET=HDRS`; our own users' parameters are passed on as they gave them.
#[test]
fn a_strangers_success_notice_request_is_not_passed_on_to_a_route() {
    let sink = relayward_testkit::smtp_server::SmtpServer::bind(
        "127.0.0.1:0",
        relayward_testkit::smtp_server::Script {
            dsn: true,
            ..Default::default()
        },
    );
    let server = TestServer::start(&standard_config(&route_to(
        sink.addr,
        "recipients = [\"eve@corp.example.test\"]\n",
    )));
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO attacker.outside.test").expect(250);
    ask_for_notices(&mut smtp, "victim@third.test");
    let mut smtp = server.smtp("submission");
    smtp.send("EHLO laptop.example.test")
        .expect(250)
        .starttls(server.ca())
        .send("EHLO laptop.example.test")
        .expect(250)
        .auth_plain("alice@example.test", support::PASSWORD)
        .expect(235);
    ask_for_notices(&mut smtp, "alice@example.test");
    assert!(
        relayward_testkit::wait::eventually(Duration::from_secs(20), || sink.messages().len() == 2),
        "{:?}\n{}",
        sink.lines(),
        server.log()
    );
    let (mail, rcpt) = envelope_lines(&sink, "victim@third.test");
    assert!(
        mail.contains(" RET=HDRS") && !mail.contains("FULL"),
        "{mail}"
    );
    assert!(mail.contains(" ENVID=e1"), "{mail}");
    assert!(
        rcpt.contains(" NOTIFY=FAILURE ") && !rcpt.contains("SUCCESS"),
        "{rcpt}"
    );
    assert!(
        rcpt.contains(" ORCPT=rfc822;eve@corp.example.test"),
        "{rcpt}"
    );
    let (mail, rcpt) = envelope_lines(&sink, "alice@example.test");
    assert!(mail.contains(" RET=FULL"), "{mail}");
    assert!(rcpt.contains(" NOTIFY=SUCCESS,FAILURE "), "{rcpt}");
}

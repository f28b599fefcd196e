//! SIGHUP reloads everything the configuration file says, for the listeners, new sessions and
//! the delivery runner at once (one snapshot, swapped whole): routes and local domains added
//! by a reload receive mail where the new file sends it, a renewed TLS certificate is served
//! without a restart, listeners come and go, and settings that need a restart are named.

mod support;

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use relayward_testkit::net::common_port;
use relayward_testkit::pki::self_signed;
use support::{Smtp, TestServer, standard_config};

/// A stranger's transaction on the mx listener, up to MAIL.
fn stranger(server: &TestServer) -> Smtp {
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<friend@outside.test>")
        .expect(250);
    smtp
}

fn send_one(smtp: &mut Smtp, subject: &str) {
    smtp.send("DATA")
        .expect(354)
        .raw(format!("Subject: {subject}\r\n\r\nbody of {subject}\r\n.\r\n").as_bytes())
        .expect_text(250, "queued as")
        .send("QUIT")
        .expect(221);
}

/// The internal server a `[[route]]` points at: a second relayward for `corp.example.test`.
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

#[test]
fn a_route_and_a_local_domain_added_by_reload_get_mail_where_the_new_file_says() {
    let internal = internal_server();
    let server = TestServer::start(&standard_config(""));
    // Before: neither domain is ours, so a stranger may not send there.
    let mut smtp = stranger(&server);
    smtp.send("RCPT TO:<eve@corp.example.test>")
        .expect_text(554, "5.7.1")
        .send("RCPT TO:<frank@new.example.test>")
        .expect_text(554, "5.7.1");

    let route = format!(
        "[[route]]\ndomain = \"corp.example.test\"\nto = \"smtp://{}\"\n",
        internal.addr("mx")
    );
    server.reload_with(|text| {
        text.replace(
            "local_domains = [\"example.test\"]",
            "local_domains = [\"example.test\", \"new.example.test\"]\nmailboxes = [\"frank@new.example.test\"]",
        ) + &route
    });
    server.wait_for_log("configuration reloaded");

    // After: the session accepts both, and the runner delivers each where the new file says
    // (the route's internal server; the new local domain's Maildir) — not by MX.
    let mut smtp = stranger(&server);
    smtp.send("RCPT TO:<eve@corp.example.test>")
        .expect(250)
        .send("RCPT TO:<frank@new.example.test>")
        .expect(250);
    send_one(&mut smtp, "after reload");
    let eve = internal.wait_for_mail("corp.example.test", "eve", 1);
    assert!(eve[0].contains("body of after reload"), "{}", eve[0]);
    let frank = server.wait_for_mail("new.example.test", "frank", 1);
    assert!(frank[0].contains("body of after reload"), "{}", frank[0]);
    assert!(!server.log().contains("bounce queued"), "{}", server.log());
}

/// A self-signed certificate for `localhost` with its own name in the subject.
fn certificate(common_name: &str) -> (String, String) {
    let pair = self_signed(&["localhost"], common_name);
    (pair.cert_pem, pair.key_pem)
}

#[test]
fn a_certificate_renewed_on_disk_is_served_after_sighup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let (first, first_key) = certificate("first.example.test");
    std::fs::write(&cert, &first).expect("cert");
    std::fs::write(&key, &first_key).expect("key");
    let first_ca = dir.path().join("first.pem");
    std::fs::write(&first_ca, &first).expect("ca");
    let tls = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let server = TestServer::start(&standard_config(&tls));
    server
        .smtp("mx")
        .send("EHLO client.outside.test")
        .expect(250)
        .starttls(&first_ca)
        .send("EHLO client.outside.test")
        .expect(250);

    let (second, second_key) = certificate("second.example.test");
    std::fs::write(&cert, &second).expect("cert");
    std::fs::write(&key, &second_key).expect("key");
    let second_ca = dir.path().join("second.pem");
    std::fs::write(&second_ca, &second).expect("ca");
    server.reload_with(|text| text);
    server.wait_for_log("configuration reloaded");
    server.wait_for_log("second.example.test");
    // A client that trusts only the new certificate gets through: the new one is served.
    server
        .smtp("mx")
        .send("EHLO client.outside.test")
        .expect(250)
        .starttls(&second_ca)
        .send("EHLO client.outside.test")
        .expect(250)
        .send("QUIT")
        .expect(221);
}

fn connects(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

#[test]
fn listeners_added_and_removed_by_reload() {
    let server = TestServer::start(&standard_config(""));
    let loopback = IpAddr::from([127, 0, 0, 1]);
    let extra = SocketAddr::new(loopback, common_port(&[loopback]));
    let listener = format!("\n[[listen]]\naddress = \"{extra}\"\nkind = \"mx\"\n");
    let insert_at = "[relay]";
    server.reload_with(|text| text.replacen(insert_at, &format!("{listener}\n{insert_at}"), 1));
    server.wait_for_log("listener added");
    Smtp::connect(extra)
        .send("EHLO client.outside.test")
        .expect(250)
        .send("QUIT")
        .expect(221);

    server.reload_with(|text| text.replacen(&listener, "", 1));
    server.wait_for_log("listener closed");
    assert!(!connects(extra), "{extra} still accepts after its removal");
    // The others still serve.
    server.smtp("mx").send("QUIT").expect(221);
}

#[test]
fn a_refused_reload_keeps_the_running_configuration_and_restart_settings_are_named() {
    let server = TestServer::start(&standard_config(""));
    server.reload_with(|text| {
        text.replace(
            "trusted_networks = []",
            "trusted_networks = [\"0.0.0.0/0\"]",
        )
    });
    server.wait_for_log("reload refused");
    // Still closed to strangers.
    stranger(&server)
        .send("RCPT TO:<victim@outside.test>")
        .expect_text(554, "5.7.1");

    server.reload_with(|text| {
        text.replace(
            "trusted_networks = [\"0.0.0.0/0\"]",
            "trusted_networks = []",
        )
        .replacen("data\"", "data-elsewhere\"", 1)
    });
    server.wait_for_log("data_dir (");
    server.wait_for_log("takes effect only after a restart");
}

/// The pregreet memory outlives a reload: a client that waited for the banner before the
/// SIGHUP is still greeted without the test after it (here: it talks first and is answered,
/// where a client never seen is refused `554 5.5.1`).
#[test]
fn clients_that_passed_the_pregreet_test_are_remembered_across_sighup() {
    let server = TestServer::start(&standard_config("[limits]\ngreet_pause = \"1s\""));
    let mx = server.addr("mx");
    Smtp::connect(mx).send("QUIT").expect(221);
    server.reload_with(|text| text);
    server.wait_for_log("configuration reloaded");
    Smtp::connect_silent(mx)
        .raw(b"EHLO busy.mta.test\r\n")
        .expect(220)
        .expect(250)
        .send("QUIT")
        .expect(221);
    let stranger: IpAddr = "127.0.0.9".parse().expect("ip");
    Smtp::over(relayward_testkit::client::TcpLink::connect_from(
        mx, stranger,
    ))
    .raw(b"EHLO impatient.robot.test\r\n")
    .expect_text(554, "5.5.1");
}

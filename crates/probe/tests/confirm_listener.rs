//! The confirm listener as a relay sees it: an ESMTP sink for the confirm domain that takes
//! internationalised mail, so a relay that maps a fullwidth or UTF-8 spelling of the confirm
//! domain to the real one can deliver the token (and is proven open) instead of bouncing it.

use std::time::Duration;

use relayward_probe::confirm::ConfirmServer;
use relayward_testkit::client::Smtp;

const TOKEN: &str = "rw-token-idn-0001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_speaking_smtputf8_delivers_a_token_for_a_fullwidth_confirm_domain() {
    let server = ConfirmServer::bind("127.0.0.1:0".parse().unwrap(), "confirm.test")
        .await
        .expect("bind confirm listener");
    server.expect(TOKEN);
    let addr = server.local_addr();

    let transcript = tokio::task::spawn_blocking(move || {
        let mut smtp = Smtp::connect(addr);
        smtp.send("EHLO relay.example.test")
            .expect_text(250, "SMTPUTF8")
            .send("MAIL FROM:<prober@probe.example.test> SMTPUTF8 BODY=8BITMIME")
            .expect(250)
            .send("RCPT TO:<nobody@elsewhere.test>")
            .expect(550)
            // U+FF43 … U+FF0E: "confirm.test" in fullwidth letters and full stop.
            .send("RCPT TO:<rcpt@ｃｏｎｆｉｒｍ．ｔｅｓｔ>")
            .expect(250)
            .send("RCPT TO:<rcpt@CONFIRM.TEST.>")
            .expect(250)
            .send("DATA")
            .expect(354)
            .send("Subject: relay test")
            .send("")
            .send(TOKEN)
            .send(".")
            .expect(250)
            .send("QUIT")
            .expect(221);
        smtp.transcript()
    })
    .await
    .expect("client");

    let arrived = server
        .wait_for(&[TOKEN.to_string()], Duration::from_secs(5))
        .await;
    assert!(
        arrived.contains_key(TOKEN),
        "token not recorded:\n{transcript}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helo_gets_one_line_and_other_domains_stay_refused() {
    let server = ConfirmServer::bind("127.0.0.1:0".parse().unwrap(), "confirm.test")
        .await
        .expect("bind confirm listener");
    let addr = server.local_addr();
    tokio::task::spawn_blocking(move || {
        let mut smtp = Smtp::connect(addr);
        smtp.send("HELO relay.example.test")
            .expect(250)
            .send("MAIL FROM:<>")
            .expect(250)
            // Look-alike (Cyrillic о), not the same domain: refused.
            .send("RCPT TO:<rcpt@cоnfirm.test>")
            .expect(550)
            .send("RCPT TO:<rcpt@confirm.test.evil.test>")
            .expect(550)
            .send("QUIT")
            .expect(221);
        let helo = smtp.transcript();
        assert!(
            !helo.contains("250-"),
            "HELO must get a one-line reply:\n{helo}"
        );
    })
    .await
    .expect("client");
}

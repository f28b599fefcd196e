//! The outbound TLS policy through the real binary (issue 18): `relayward serve` relays mail to
//! MX hosts of domains that publish MTA-STS policies (a test DNS server with the `_mta-sts`
//! TXT records, an HTTPS server with a private CA serving the policies), and the mail log
//! and `relayward queue show` say what the policy did.

mod support;

use std::collections::HashMap;
use std::net::Ipv4Addr;

use relayward_testkit::dns::{DnsServer, Zone};
use relayward_testkit::https::{HttpsServer, Page};
use relayward_testkit::net::listeners_on_one_port;
use relayward_testkit::pki::{TestCa, self_signed};
use relayward_testkit::smtp_server::{Script, SmtpServer};
use relayward_testkit::wait::eventually;
use support::{TestServer, queue_cmd, standard_config};

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 60, 0, last)
}

/// `strict.test` publishes `enforce` for `mx.strict.test` (a certificate from the private CA),
/// `trial.test` publishes `testing` for `mx.trial.test` (a self-signed certificate), and
/// `hijacked.test` publishes `enforce` for `mx.hijacked.test` while its MX record names
/// `mx.trial.test`.
#[test]
fn policies_are_enforced_tested_and_logged_by_the_running_server() {
    let ca = TestCa::new();
    let scratch = tempfile::tempdir().expect("tempdir");
    let ca_file = scratch.path().join("policy-ca.pem");
    ca.write(&ca_file);

    let (https_port, mut https_listeners) = listeners_on_one_port(&[ip(4)]);
    let enforce =
        |mx: &str| format!("version: STSv1\r\nmode: enforce\r\nmx: {mx}\r\nmax_age: 86400\r\n");
    let pages = HashMap::from([
        (
            "mta-sts.strict.test".to_string(),
            Page::policy(&enforce("mx.strict.test")),
        ),
        (
            "mta-sts.hijacked.test".to_string(),
            Page::policy(&enforce("mx.hijacked.test")),
        ),
        (
            "mta-sts.trial.test".to_string(),
            Page::policy(
                "version: STSv1\r\nmode: testing\r\nmx: mx.trial.test\r\nmax_age: 86400\r\n",
            ),
        ),
    ]);
    let policy_names = [
        "mta-sts.strict.test",
        "mta-sts.trial.test",
        "mta-sts.hijacked.test",
    ];
    let https = HttpsServer::spawn(
        https_listeners.remove(0),
        ca.leaf(&policy_names).server,
        pages,
    );

    let (mx_port, mut listeners) = listeners_on_one_port(&[ip(2), ip(3)]);
    let trial_cert = self_signed(&["mx.trial.test"], "self-signed trial").acceptor();
    let trial = SmtpServer::spawn(
        listeners.pop().expect(".3"),
        Script {
            tls: Some(trial_cert.config().clone()),
            ..Script::default()
        },
    );
    let strict = SmtpServer::spawn(
        listeners.pop().expect(".2"),
        Script {
            tls: Some(ca.leaf(&["mx.strict.test"]).server),
            ..Script::default()
        },
    );
    let mut zone = Zone::new()
        .mx("strict.test", 10, "mx.strict.test")
        .a("mx.strict.test", ip(2))
        .mx("trial.test", 10, "mx.trial.test")
        .mx("hijacked.test", 10, "mx.trial.test")
        .a("mx.trial.test", ip(3));
    for domain in ["strict.test", "trial.test", "hijacked.test"] {
        zone = zone
            .txt(&format!("_mta-sts.{domain}"), "v=STSv1; id=20261201;")
            .a(&format!("mta-sts.{domain}"), ip(4));
    }
    let dns = DnsServer::start_on(ip(1), zone);
    let server = TestServer::start(&standard_config(&format!(
        "[delivery]\nmx_port = {mx_port}\nmta_sts_port = {https_port}\ntls_policy_ca_file = \"{}\"\n\n[dns]\nnameservers = [\"{}\"]\n",
        ca_file.display(),
        dns.addr
    )));

    server.submit_as_alice("bob@strict.test", "enforced");
    server.submit_as_alice("carol@trial.test", "tested");
    server.submit_as_alice("dave@hijacked.test", "refused");

    assert!(
        eventually(support::WAIT, || strict.messages().len() == 1
            && trial.messages().len() == 1),
        "strict got {}, trial got {}\n{}",
        strict.messages().len(),
        trial.messages().len(),
        server.log()
    );
    assert!(strict.messages()[0].tls && trial.messages()[0].tls);
    assert_eq!(
        trial.messages()[0].rcpts,
        ["carol@trial.test"],
        "hijacked.test's mail never went there"
    );
    server.wait_for_log("not named by the MTA-STS policy of hijacked.test");
    // Outcomes are logged just after the transactions the receivers saw.
    server.wait_for_log(
        "domain=strict.test host=mx.strict.test policy=\"mta-sts\" result=\"verified\"",
    );
    server.wait_for_log("domain=trial.test host=mx.trial.test policy=\"mta-sts-testing\"");
    let log = server.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TLS") || l.contains("MTA-STS"))
        .collect();
    // Printed for the README's samples (cargo test -- --nocapture).
    println!("{}", lines.join("\n"));
    assert!(
        lines.iter().any(|l| l.contains("domain=strict.test")
            && l.contains("policy=\"mta-sts\"")
            && l.contains("result=\"verified\"")),
        "{log}"
    );
    assert!(
        lines.iter().any(|l| l.contains("domain=trial.test")
            && l.contains("policy=\"mta-sts-testing\"")
            && l.contains("result_type=\"certificate-not-trusted\"")),
        "{log}"
    );
    let listing = queue_cmd(&server, &["list"]);
    assert!(listing.contains("dave@hijacked.test"), "{listing}");
    assert!(
        listing.contains("not named by the MTA-STS policy of hijacked.test"),
        "the deferral says why:\n{listing}"
    );
    let shown = queue_cmd(
        &server,
        &["show", &queued_id(&listing, "dave@hijacked.test")],
    );
    println!("{shown}");
    assert!(
        shown.contains(
            "TLS policy=mta-sts result=failed host=mx.trial.test type=validation-failure"
        ),
        "the queue entry keeps the TLS outcome:\n{shown}"
    );
    assert_eq!(
        https.requests().len(),
        3,
        "one fetch per domain: {:?}",
        https.requests()
    );
}

/// DANE through the binary: a DNSSEC-signed test zone (its key is the relay's `[dns]
/// trust_anchor`) with TLSA records for two MX hosts, one matching its certificate, one not.
#[test]
fn dane_verifies_by_tlsa_and_defers_on_a_mismatch() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let key = relayward_testkit::dns::DnssecKey::generate();
    let anchor = scratch.path().join("trust-anchor");
    std::fs::write(&anchor, key.trust_anchor()).expect("write trust anchor");
    let ip = |last| Ipv4Addr::new(127, 61, 0, last);
    let (mx_port, mut listeners) = listeners_on_one_port(&[ip(2), ip(3)]);
    let published = TestCa::new().leaf(&["mx.wrong.test"]);
    let wrong = SmtpServer::spawn(
        listeners.pop().expect(".3"),
        Script {
            tls: Some(TestCa::new().leaf(&["mx.wrong.test"]).server),
            ..Script::default()
        },
    );
    let good_leaf = TestCa::new().leaf(&["mx.signed.test"]);
    let good_spki = good_leaf.spki_der.clone();
    let good = SmtpServer::spawn(
        listeners.pop().expect(".2"),
        Script {
            tls: Some(good_leaf.server),
            ..Script::default()
        },
    );
    let sha256 = |b: &[u8]| {
        ring::digest::digest(&ring::digest::SHA256, b)
            .as_ref()
            .to_vec()
    };
    let zone = Zone::new()
        .mx("signed.test", 10, "mx.signed.test")
        .a("mx.signed.test", ip(2))
        .tlsa(
            &format!("_{mx_port}._tcp.mx.signed.test"),
            3,
            1,
            1,
            sha256(&good_spki),
        )
        .mx("wrong.test", 10, "mx.wrong.test")
        .a("mx.wrong.test", ip(3))
        .tlsa(
            &format!("_{mx_port}._tcp.mx.wrong.test"),
            3,
            1,
            1,
            sha256(&published.spki_der),
        )
        .signed_by(&key);
    let dns = DnsServer::start_on(ip(1), zone);
    let server = TestServer::start(&standard_config(&format!(
        "[delivery]\nmx_port = {mx_port}\n\n[dns]\nnameservers = [\"{}\"]\ntrust_anchor = \"{}\"\n",
        dns.addr,
        anchor.display()
    )));

    server.submit_as_alice("bob@signed.test", "dane");
    server.submit_as_alice("carol@wrong.test", "dane mismatch");

    assert!(
        eventually(support::WAIT, || good.messages().len() == 1),
        "{}",
        server.log()
    );
    assert!(good.messages()[0].tls);
    server.wait_for_log("rcpt=carol@wrong.test");
    // The outcome is logged just after the transaction the receiver saw.
    server
        .wait_for_log("domain=signed.test host=mx.signed.test policy=\"dane\" result=\"verified\"");
    assert!(
        wrong.messages().is_empty(),
        "nothing for the mismatching host"
    );
    assert!(!wrong.lines().iter().any(|l| l.starts_with("MAIL")));
    let log = server.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TLS") || l.contains("DANE") || l.contains("deferred"))
        .collect();
    println!("{}", lines.join("\n"));
    assert!(
        lines.iter().any(|l| l.contains("domain=signed.test")
            && l.contains("policy=\"dane\"")
            && l.contains("result=\"verified\"")),
        "{log}"
    );
    assert!(
        lines.iter().any(|l| l.contains("domain=wrong.test")
            && l.contains("policy=\"dane\"")
            && l.contains("result=\"failed\"")),
        "{log}"
    );
    let listing = queue_cmd(&server, &["list"]);
    assert!(listing.contains("carol@wrong.test"), "{listing}");
    let shown = queue_cmd(&server, &["show", &queued_id(&listing, "carol@wrong.test")]);
    assert!(
        shown.contains("TLS policy=dane result=failed host=mx.wrong.test"),
        "the queue entry keeps the TLS outcome:\n{shown}"
    );
}

/// The queue id on the `queue list` line that names `rcpt` (the id is its first word).
fn queued_id(listing: &str, rcpt: &str) -> String {
    listing
        .lines()
        .find(|l| l.contains(rcpt))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{rcpt} not in the queue:\n{listing}"))
        .to_string()
}

//! TLS-RPT (RFC 8460) aggregate reports through the real binary (issue 18, item 4): mail to
//! domains under MTA-STS and DANE, a restart, `relayward tls-report send-now`, and the
//! reports as the domains receive them — by mail at a Postfix `smtp-sink`, by HTTPS POST at
//! the test HTTPS server — decoded from gzip and checked field by field against RFC 8460 §4.

#[path = "support/postfix.rs"]
mod postfix;
mod support;

use std::collections::HashMap;
use std::io::Read as _;
use std::net::Ipv4Addr;
use std::time::Duration;

use mail_parser::MimeHeaders as _;
use postfix::{SmtpSink, dumped_message};
use relayward_testkit::dns::{DnsServer, DnssecKey, Zone};
use relayward_testkit::https::{HttpsServer, Page};
use relayward_testkit::net::listeners_on_one_port;
use relayward_testkit::pki::{TestCa, self_signed};
use relayward_testkit::smtp_server::{Script, SmtpServer};
use relayward_testkit::wait::eventually;
use serde_json::Value;
use support::{TestServer, relayward_cmd, standard_config};

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 63, 0, last)
}

fn enforce(mx: &[&str]) -> Page {
    let lines: String = mx.iter().map(|m| format!("mx: {m}\r\n")).collect();
    Page::policy(&format!(
        "version: STSv1\r\nmode: enforce\r\n{lines}max_age: 86400\r\n"
    ))
}

/// The fields RFC 8460 §4.4 requires, with their types; the policy types it defines.
fn assert_rfc8460_report(report: &Value) {
    for key in ["organization-name", "contact-info", "report-id"] {
        assert!(report[key].is_string(), "{key} missing: {report:#}");
    }
    for key in ["start-datetime", "end-datetime"] {
        let text = report["date-range"][key].as_str().unwrap_or("");
        assert!(
            text.len() == 20 && text.ends_with('Z') && text.as_bytes()[10] == b'T',
            "date-range.{key} is not an RFC 3339 UTC time: {text:?}"
        );
    }
    let policies = report["policies"].as_array().expect("policies");
    assert!(!policies.is_empty());
    for policy in policies {
        let details = &policy["policy"];
        assert!(
            ["sts", "tlsa", "no-policy-found"]
                .contains(&details["policy-type"].as_str().unwrap_or("")),
            "{details}"
        );
        assert!(details["policy-string"].is_array(), "{details}");
        assert!(details["policy-domain"].is_string(), "{details}");
        for key in [
            "total-successful-session-count",
            "total-failure-session-count",
        ] {
            assert!(policy["summary"][key].is_u64(), "summary.{key}: {policy}");
        }
        for failure in policy["failure-details"]
            .as_array()
            .expect("failure-details")
        {
            assert!(failure["result-type"].is_string(), "{failure}");
            assert!(failure["receiving-mx-hostname"].is_string(), "{failure}");
            assert!(failure["failed-session-count"].is_u64(), "{failure}");
        }
    }
}

fn gunzip(bytes: &[u8]) -> Value {
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut json)
        .expect("the report is gzip");
    serde_json::from_slice(&json).expect("the report is JSON")
}

/// `strict.test` (MTA-STS enforce; its first MX host has a self-signed certificate, its
/// second one a good one) asks for reports by mail, `signed.test` (DANE) by HTTPS,
/// `silent.test` (MTA-STS enforce) not at all; `reports.test`, where the mailed reports go,
/// has an MTA-STS policy its smtp-sink (no STARTTLS) cannot meet, and asks for reports too.
#[test]
fn daily_reports_reach_the_domains_that_ask_and_survive_a_restart() {
    let ca = TestCa::new();
    let scratch = tempfile::tempdir().expect("tempdir");
    let ca_file = scratch.path().join("ca.pem");
    ca.write(&ca_file);
    let key = DnssecKey::generate();
    let anchor = scratch.path().join("trust-anchor");
    std::fs::write(&anchor, key.trust_anchor()).expect("write trust anchor");

    let (https_port, mut https_listeners) = listeners_on_one_port(&[ip(5)]);
    let https = HttpsServer::spawn(
        https_listeners.remove(0),
        ca.leaf(&[
            "mta-sts.strict.test",
            "mta-sts.silent.test",
            "mta-sts.reports.test",
            "tlsrpt.reports.test",
        ])
        .server,
        HashMap::from([
            (
                "mta-sts.strict.test".to_string(),
                enforce(&["mx1.strict.test", "mx2.strict.test"]),
            ),
            (
                "mta-sts.silent.test".to_string(),
                enforce(&["mx.silent.test"]),
            ),
            (
                "mta-sts.reports.test".to_string(),
                enforce(&["mx.reports.test"]),
            ),
        ]),
    );

    let (mx_port, mut listeners) = listeners_on_one_port(&[ip(2), ip(3), ip(4), ip(6), ip(7)]);
    drop(listeners.pop()); // .7: smtp-sink binds it itself
    let serve = |listener, tls| {
        SmtpServer::spawn(
            listener,
            Script {
                tls: Some(tls),
                ..Script::default()
            },
        )
    };
    let silent = serve(
        listeners.pop().expect(".6"),
        ca.leaf(&["mx.silent.test"]).server,
    );
    let signed_leaf = ca.leaf(&["mx.signed.test"]);
    let signed_spki = signed_leaf.spki_der.clone();
    let signed = serve(listeners.pop().expect(".4"), signed_leaf.server);
    let good = serve(
        listeners.pop().expect(".3"),
        ca.leaf(&["mx2.strict.test"]).server,
    );
    let bad_cert = self_signed(&["mx1.strict.test"], "self-signed").acceptor();
    let bad = serve(listeners.pop().expect(".2"), bad_cert.config().clone());
    let sink = SmtpSink::start_at(&ip(7).to_string(), mx_port, &[]);

    let sha256 = |b: &[u8]| {
        ring::digest::digest(&ring::digest::SHA256, b)
            .as_ref()
            .to_vec()
    };
    let mut zone = Zone::new()
        .mx("strict.test", 10, "mx1.strict.test")
        .mx("strict.test", 20, "mx2.strict.test")
        .a("mx1.strict.test", ip(2))
        .a("mx2.strict.test", ip(3))
        .txt(
            "_smtp._tls.strict.test",
            "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test",
        )
        .mx("signed.test", 10, "mx.signed.test")
        .a("mx.signed.test", ip(4))
        .tlsa(
            &format!("_{mx_port}._tcp.mx.signed.test"),
            3,
            1,
            1,
            sha256(&signed_spki),
        )
        .txt(
            "_smtp._tls.signed.test",
            &format!("v=TLSRPTv1; rua=https://tlsrpt.reports.test:{https_port}/v1/report"),
        )
        .mx("silent.test", 10, "mx.silent.test")
        .a("mx.silent.test", ip(6))
        .mx("reports.test", 10, "mx.reports.test")
        .a("mx.reports.test", ip(7))
        .a("tlsrpt.reports.test", ip(5))
        .txt(
            "_smtp._tls.reports.test",
            "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test",
        );
    for domain in ["strict.test", "silent.test", "reports.test"] {
        zone = zone
            .txt(&format!("_mta-sts.{domain}"), "v=STSv1; id=20261201;")
            .a(&format!("mta-sts.{domain}"), ip(5));
    }
    // Only signed.test's records are signed; the MTA-STS domains are unsigned zones below
    // the signed root (their hosts have no DANE).
    for domain in ["strict.test", "silent.test", "reports.test"] {
        zone = zone.insecure_delegation(domain);
    }
    let dns = DnsServer::start_on(ip(1), zone.signed_by(&key));
    let config = standard_config(&format!(
        "[delivery]\nmx_port = {mx_port}\nmta_sts_port = {https_port}\ntls_policy_ca_file = \"{}\"\n\n\
         [dns]\nnameservers = [\"{}\"]\ntrust_anchor = \"{}\"\n\n\
         [tls_report]\nenabled = true\norganization = \"Relayward Test\"\ncontact = \"tls-admin@example.test\"\nfrom = \"tlsrpt@example.test\"\n",
        ca_file.display(),
        dns.addr,
        anchor.display()
    ));
    let server = TestServer::start(&config);

    server.submit_as_alice("bob@strict.test", "hi");
    server.submit_as_alice("carol@signed.test", "hi");
    server.submit_as_alice("dave@silent.test", "hi");
    assert!(
        eventually(support::WAIT, || good.messages().len() == 1
            && signed.messages().len() == 1
            && silent.messages().len() == 1),
        "good {}, signed {}, silent {}\n{}",
        good.messages().len(),
        signed.messages().len(),
        silent.messages().len(),
        server.log()
    );
    assert!(
        bad.messages().is_empty(),
        "nothing over the untrusted certificate"
    );
    server.wait_for_log(
        "domain=strict.test host=mx2.strict.test policy=\"mta-sts\" result=\"verified\"",
    );
    server
        .wait_for_log("domain=signed.test host=mx.signed.test policy=\"dane\" result=\"verified\"");
    server.wait_for_log(
        "domain=silent.test host=mx.silent.test policy=\"mta-sts\" result=\"verified\"",
    );

    // The period's counts outlive a restart (saved when the server stops).
    let (code, dir) = server.terminate();
    assert_eq!(code, Some(0));
    let server = TestServer::start_in(dir, &config);

    let (code, out) = relayward_cmd(&server, &["tls-report", "send-now"]);
    println!("{out}");
    assert_eq!(code, Some(0), "{out}\n{}", server.log());
    assert!(
        out.contains("strict.test: 1 successful, 1 failed session(s); report "),
        "{out}"
    );
    assert!(
        out.contains("sent to mailto:tlsrpt@reports.test (queued as "),
        "{out}"
    );
    assert!(
        out.contains("signed.test: 1 successful, 0 failed session(s)"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "sent to https://tlsrpt.reports.test:{https_port}/v1/report (HTTP 200)"
        )),
        "{out}"
    );
    assert!(
        out.contains("silent.test: 1 successful, 0 failed session(s); not sent: no TLSRPT record at _smtp._tls.silent.test"),
        "{out}"
    );

    // By mail: a multipart/report to the strict.test report address, over the queue, although
    // reports.test's policy cannot be met (RFC 8460 §5.3: reports go despite TLS failures).
    let dump = sink
        .wait_for("TLS-Report-Domain: strict.test", support::WAIT)
        .unwrap_or_else(|| panic!("no report reached smtp-sink\n{}", server.log()));
    let raw = dumped_message(&dump);
    let message = mail_parser::MessageParser::default()
        .parse(&raw)
        .expect("a message");
    let subject = message.subject().expect("subject");
    assert!(
        subject.starts_with("Report Domain: strict.test Submitter: example.test Report-ID: <"),
        "{subject}"
    );
    let text = String::from_utf8_lossy(&raw);
    // Printed for the README's samples (cargo test -- --nocapture).
    let log = server.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("TLS report")).collect();
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    println!("{}\n{head}", lines.join("\n"));
    assert!(
        text.contains("TLS-Report-Submitter: example.test"),
        "{text}"
    );
    assert!(text.contains("report-type=\"tlsrpt\""), "{text}");
    let attachment = message
        .attachments()
        .find(|part| part.is_content_type("application", "tlsrpt+gzip"))
        .expect("an application/tlsrpt+gzip part");
    let report = gunzip(attachment.contents());
    println!("{report:#}");
    assert_rfc8460_report(&report);
    assert_eq!(report["organization-name"], "Relayward Test");
    assert_eq!(report["contact-info"], "tls-admin@example.test");
    let start = report["date-range"]["start-datetime"]
        .as_str()
        .expect("start");
    assert!(start.ends_with("T00:00:00Z"), "a UTC day: {start}");
    let policies = report["policies"].as_array().expect("policies");
    assert_eq!(policies.len(), 1, "{report:#}");
    let sts = &policies[0];
    assert_eq!(sts["policy"]["policy-type"], "sts");
    assert_eq!(sts["policy"]["policy-domain"], "strict.test");
    let lines: Vec<&str> = sts["policy"]["policy-string"]
        .as_array()
        .expect("policy-string")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        lines,
        [
            "version: STSv1",
            "mode: enforce",
            "mx: mx1.strict.test",
            "mx: mx2.strict.test",
            "max_age: 86400"
        ]
    );
    assert_eq!(sts["summary"]["total-successful-session-count"], 1);
    assert_eq!(sts["summary"]["total-failure-session-count"], 1);
    let failures = sts["failure-details"].as_array().expect("failure-details");
    assert_eq!(failures.len(), 1, "{report:#}");
    assert_eq!(failures[0]["result-type"], "certificate-not-trusted");
    assert_eq!(failures[0]["receiving-mx-hostname"], "mx1.strict.test");
    assert_eq!(failures[0]["receiving-ip"], "127.63.0.2");
    let sending: std::net::IpAddr = failures[0]["sending-mta-ip"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("sending-mta-ip");
    assert!(sending.is_loopback(), "{sending}");
    assert_eq!(failures[0]["failed-session-count"], 1);

    // By HTTPS: one POST with the compressed report on signed.test's TLSA policy.
    assert!(
        eventually(support::WAIT, || !https.posts().is_empty()),
        "{}",
        server.log()
    );
    let posts = https.posts();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(posts[0].path, "/v1/report");
    assert_eq!(posts[0].content_type, "application/tlsrpt+gzip");
    let report = gunzip(&posts[0].body);
    println!("{report:#}");
    assert_rfc8460_report(&report);
    let tlsa = &report["policies"][0];
    assert_eq!(tlsa["policy"]["policy-type"], "tlsa");
    assert_eq!(tlsa["policy"]["policy-domain"], "signed.test");
    let record = tlsa["policy"]["policy-string"][0].as_str().unwrap_or("");
    assert!(
        record.starts_with(&format!("_{mx_port}._tcp.mx.signed.test. IN TLSA 3 1 1 ")),
        "{record}"
    );
    assert_eq!(tlsa["summary"]["total-successful-session-count"], 1);
    assert_eq!(tlsa["summary"]["total-failure-session-count"], 0);

    // The report mail's own delivery is not counted: the next period has nothing, and
    // silent.test (no record) got nothing anywhere.
    server.wait_for_log("rcpt=tlsrpt@reports.test");
    let (code, out) = relayward_cmd(&server, &["tls-report", "send-now"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("No TLS report to send"),
        "reported on its own report:\n{out}"
    );
    assert_eq!(sink.dumps().len(), 1, "one report by mail");
    assert!(
        sink.dumps()
            .iter()
            .all(|d| !String::from_utf8_lossy(d).contains("silent.test"))
    );
    assert_eq!(https.posts().len(), 1);
}

/// Off by default: nothing is counted, `send-now` says how to turn it on, and check-config
/// shows the setting.
#[test]
fn reports_are_off_by_default_and_check_config_shows_the_setting() {
    let server = TestServer::start(&standard_config(""));
    let (code, out) = relayward_cmd(&server, &["tls-report", "send-now"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("set [tls_report] enabled = true"), "{out}");

    let (code, out) = support::check_config(&standard_config(""));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("TLS reports (tls_report.enabled = false): none counted or sent"),
        "{out}"
    );
    let (code, out) = support::check_config(&standard_config(
        "[tls_report]\nenabled = true\nfrom = \"tlsrpt@example.test\"\n",
    ));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("TLS reports (tls_report.enabled = true): RFC 8460 report every 1day to each MTA-STS/DANE domain that publishes _smtp._tls, from tlsrpt@example.test"),
        "{out}"
    );
}

/// `send-now` when the period's files cannot be written (here `sending.json` is a directory,
/// which even root cannot rename over): an error and exit 1, not "No TLS report to send".
#[test]
fn send_now_says_so_when_the_period_cannot_be_written() {
    let server = TestServer::start(&standard_config(
        "[tls_report]\nenabled = true\nfrom = \"tlsrpt@example.test\"\n",
    ));
    let blocker = server.data_dir().join("tls-report/sending.json");
    std::fs::create_dir_all(&blocker).expect("mkdir");
    std::fs::write(blocker.join("keep"), b"x").expect("write");
    let (code, out) = relayward_cmd(&server, &["tls-report", "send-now"]);
    assert_eq!(code, Some(1), "{out}\n{}", server.log());
    assert!(out.contains("cannot close the TLS report period"), "{out}");
    assert!(!out.contains("No TLS report to send"), "{out}");
}

/// One domain under an enforced MTA-STS policy whose TLSRPT record names an HTTPS
/// destination, on 127.`net`.0.0/24: DNS at .1, its MX at .2, the policy and report server at
/// .3; the report server answers `rua_status` to a POST. `config` is relayward's.
struct HttpsReportedDomain {
    https: HttpsServer,
    https_port: u16,
    mx: SmtpServer,
    config: String,
    _dns: DnsServer,
    _scratch: tempfile::TempDir,
}

fn https_reported_domain(net: u8, domain: &str, rua_status: u16) -> HttpsReportedDomain {
    https_reported_domains(net, &[domain], rua_status)
}

/// `domains`, each with an MTA-STS `enforce` policy and a TLSRPT record, all served by one
/// MX host (`mx.<first domain>`, as a hosting provider's domains share theirs) and one
/// HTTPS server for the policies and the reports (`rpt.<first domain>`).
fn https_reported_domains(net: u8, domains: &[&str], rua_status: u16) -> HttpsReportedDomain {
    let ip = |last| Ipv4Addr::new(127, net, 0, last);
    let ca = TestCa::new();
    let scratch = tempfile::tempdir().expect("tempdir");
    let ca_file = scratch.path().join("ca.pem");
    ca.write(&ca_file);
    let first = domains[0];
    let (rpt, mx_name) = (format!("rpt.{first}"), format!("mx.{first}"));
    let sts: Vec<String> = domains.iter().map(|d| format!("mta-sts.{d}")).collect();
    let (https_port, mut https_listeners) = listeners_on_one_port(&[ip(3)]);
    let answer = Page {
        status: rua_status,
        content_type: "text/plain".into(),
        body: String::new(),
    };
    let mut pages: HashMap<String, Page> = sts
        .iter()
        .map(|name| (name.clone(), enforce(&[mx_name.as_str()])))
        .collect();
    pages.insert(rpt.clone(), answer);
    let mut names: Vec<&str> = sts.iter().map(String::as_str).collect();
    names.push(&rpt);
    let https = HttpsServer::spawn(https_listeners.remove(0), ca.leaf(&names).server, pages);
    let (mx_port, mut listeners) = listeners_on_one_port(&[ip(2)]);
    let mx = SmtpServer::spawn(
        listeners.remove(0),
        Script {
            tls: Some(ca.leaf(&[mx_name.as_str()]).server),
            ..Script::default()
        },
    );
    let mut zone = Zone::new().a(&mx_name, ip(2)).a(&rpt, ip(3));
    for (domain, sts) in domains.iter().zip(&sts) {
        zone = zone
            .mx(domain, 10, &mx_name)
            .txt(&format!("_mta-sts.{domain}"), "v=STSv1; id=1;")
            .a(sts, ip(3))
            .txt(
                &format!("_smtp._tls.{domain}"),
                &format!("v=TLSRPTv1; rua=https://{rpt}:{https_port}/tlsrpt"),
            );
    }
    let dns = DnsServer::start_on(ip(1), zone);
    let config = standard_config(&format!(
        "[delivery]\nmx_port = {mx_port}\nmta_sts_port = {https_port}\ntls_policy_ca_file = \"{}\"\n\n\
         [dns]\nnameservers = [\"{}\"]\n\n[tls_report]\nenabled = true\n",
        ca_file.display(),
        dns.addr
    ));
    HttpsReportedDomain {
        https,
        https_port,
        mx,
        config,
        _dns: dns,
        _scratch: scratch,
    }
}

/// One message to `rcpt` through the domain's MX (a session the report counts), then
/// `tls-report send-now`, which must exit 0; its output.
fn deliver_one_then_send_now(
    server: &TestServer,
    domain: &HttpsReportedDomain,
    rcpt: &str,
) -> String {
    server.submit_as_alice(rcpt, "hi");
    assert!(
        eventually(support::WAIT, || domain.mx.messages().len() == 1),
        "{}",
        server.log()
    );
    let (code, out) = relayward_cmd(server, &["tls-report", "send-now"]);
    assert_eq!(code, Some(0), "{out}\n{}", server.log());
    out
}

/// A report server that answers `503`: `send-now` names the destination as NOT sent, with the
/// status, and the POST did reach it.
#[test]
fn a_report_server_that_refuses_is_named_as_not_sent() {
    let domain = https_reported_domain(65, "refuse.test", 503);
    let server = TestServer::start(&domain.config);
    let out = deliver_one_then_send_now(&server, &domain, "erin@refuse.test");
    assert!(
        out.contains("refuse.test: 1 successful, 0 failed session(s); report "),
        "{out}"
    );
    let port = domain.https_port;
    assert!(
        out.contains(&format!(
            "  NOT sent: https://rpt.refuse.test:{port}/tlsrpt: "
        )) && out.contains("HTTP status 503"),
        "{out}"
    );
    assert!(!out.contains("  sent to "), "{out}");
    assert_eq!(domain.https.posts().len(), 1, "the POST reached the server");
}

/// A report server that fails (`503`) and comes back gets the report on a later attempt
/// (RFC 8460 §5.3: retry for up to 24 hours): `send-now` says when it is tried next, the
/// running server POSTs it again after `retry_after` (then 3×, 9× … longer), the same report,
/// and forgets it once delivered.
#[test]
fn a_report_server_that_fails_gets_the_report_when_it_comes_back() {
    let mut domain = https_reported_domain(66, "later.test", 503);
    domain.config = domain.config.replace(
        "[tls_report]\nenabled = true\n",
        "[tls_report]\nenabled = true\nretry_after = \"1s\"\n",
    );
    assert!(domain.config.contains("retry_after"), "{}", domain.config);
    let server = TestServer::start(&domain.config);
    let out = deliver_one_then_send_now(&server, &domain, "erin@later.test");
    assert!(
        out.contains("HTTP status 503") && out.contains("tried again from "),
        "{out}"
    );
    // (The running server may have tried once more already, and been refused again.)
    let refused = domain.https.posts().len();
    assert!(refused >= 1);
    let retry_dir = server.data_dir().join("tls-report/retry");
    let kept = |dir: &std::path::Path| {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|ext| ext == "json"))
                .count()
        })
    };
    assert_eq!(kept(&retry_dir), 1, "one report for one URL");

    domain.https.answer_posts("rpt.later.test", 200);
    // Retries come 1 s, 3 s, 9 s … apart, looked for every 5 s.
    let delivered = eventually(Duration::from_secs(40), || kept(&retry_dir) == 0);
    assert!(
        delivered,
        "the report was not delivered on a retry\n{}",
        server.log()
    );
    let posts = domain.https.posts();
    assert!(posts.len() > refused, "{}", server.log());
    assert_eq!(
        gunzip(&posts[posts.len() - 1].body),
        gunzip(&posts[0].body),
        "the same report"
    );
    assert!(server.log().contains("TLS report sent"), "{}", server.log());
}

/// A crash (SIGKILL) loses no more than the counts not yet saved: once the running server has
/// written its counts (within a few seconds of the session), a killed and restarted server
/// still reports them.
#[test]
fn counts_saved_before_a_crash_are_reported_after_it() {
    let domain = https_reported_domain(64, "crash.test", 200);
    let (https, mx, config) = (&domain.https, &domain.mx, &domain.config);
    let server = TestServer::start(config);
    server.submit_as_alice("erin@crash.test", "hi");
    assert!(
        eventually(support::WAIT, || mx.messages().len() == 1),
        "{}",
        server.log()
    );
    let saved = server.data_dir().join("tls-report/current.json");
    assert!(
        eventually(support::WAIT, || std::fs::read_to_string(&saved)
            .is_ok_and(|text| text.contains("crash.test"))),
        "the counts were not saved\n{}",
        server.log()
    );

    let dir = server.kill9();
    let server = TestServer::start_in(dir, config);
    let (code, out) = relayward_cmd(&server, &["tls-report", "send-now"]);
    assert_eq!(code, Some(0), "{out}\n{}", server.log());
    assert!(
        out.contains("crash.test: 1 successful, 0 failed session(s); report "),
        "{out}"
    );
    let posts = https.posts();
    assert_eq!(posts.len(), 1, "{out}");
    let report = gunzip(&posts[0].body);
    assert_rfc8460_report(&report);
    assert_eq!(
        report["organization-name"], "mx.example.test",
        "default: hostname"
    );
    assert_eq!(report["contact-info"], "postmaster@mx.example.test");
    assert_eq!(
        report["policies"][0]["summary"]["total-successful-session-count"],
        1
    );
}

/// RFC 8460 counts sessions, that is TLS connections, not messages: three messages one after
/// the other go over one connection, reused, and the report counts one successful session.
/// ```text
/// 3 messages to erin@reuse.test     -> 1 connection to its MX (reused twice)
/// tls-report send-now               -> "reuse.test: 1 successful, 0 failed session(s)"
/// ```
#[test]
fn messages_over_a_reused_connection_count_as_one_session() {
    let domain = https_reported_domain(67, "reuse.test", 200);
    let server = TestServer::start(&domain.config);
    for n in 1..=3 {
        server.submit_as_alice("erin@reuse.test", &format!("message {n}"));
        assert!(
            eventually(support::WAIT, || domain.mx.messages().len() == n),
            "{}",
            server.log()
        );
    }
    assert_eq!(domain.mx.connections(), 1, "{}", server.log());
    let (code, out) = relayward_cmd(&server, &["tls-report", "send-now"]);
    assert_eq!(code, Some(0), "{out}\n{}", server.log());
    assert!(
        out.contains("reuse.test: 1 successful, 0 failed session(s); report "),
        "{out}"
    );
}

/// Domains that share one MX host share its pooled connections, but each domain's report
/// counts the sessions that carried its mail: a connection opened for one and reused for the
/// other is one session in each report.
/// ```text
/// one.test and two.test: MX mx.one.test, MTA-STS enforce, TLSRPT
/// mail to erin@one.test, then to finn@two.test -> 1 connection (reused)
/// tls-report send-now -> "one.test: 1 successful", "two.test: 1 successful"
/// ```
#[test]
fn a_connection_shared_by_two_domains_counts_once_in_each_report() {
    let domains = https_reported_domains(68, &["one.test", "two.test"], 200);
    let server = TestServer::start(&domains.config);
    for (n, rcpt) in ["erin@one.test", "finn@two.test"].iter().enumerate() {
        server.submit_as_alice(rcpt, "hi");
        assert!(
            eventually(support::WAIT, || domains.mx.messages().len() == n + 1),
            "{}",
            server.log()
        );
    }
    assert_eq!(domains.mx.connections(), 1, "{}", server.log());
    let (code, out) = relayward_cmd(&server, &["tls-report", "send-now"]);
    assert_eq!(code, Some(0), "{out}\n{}", server.log());
    for domain in ["one.test", "two.test"] {
        assert!(
            out.contains(&format!(
                "{domain}: 1 successful, 0 failed session(s); report "
            )),
            "{domain}: {out}"
        );
    }
}

//! Metrics and health (issue 14, item 1): `[metrics] listen` serves Prometheus text at
//! `/metrics` and `/healthz`; the counters move with real sessions and deliveries, and
//! `/healthz` answers 503 with the reason when the queue stops taking mail.

mod support;

use relayward_testkit::config::PASSWORD;
use relayward_testkit::http::Http;
use support::{TestServer, rejecting_sink, standard_config};

/// The value of one sample line (`name{labels} value`), 0 when the series is absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn scrape(server: &TestServer) -> String {
    let response = Http::new(server.addr("metrics")).get("/metrics");
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.contains("openmetrics-text") || t.contains("text/plain")),
        "{:?}",
        response.headers
    );
    response.body
}

const METRICS: &str = "\n[metrics]\nlisten = \"127.0.0.1:0\"\n";

#[test]
fn metrics_move_with_real_sessions_and_deliveries() {
    let internal = rejecting_sink("127.0.0.1", "451 4.7.1 not today");
    let sink = internal.addr;
    let server = TestServer::start(&standard_config(&format!(
        "{METRICS}\n[[route]]\ndomain = \"corp.example.test\"\nto = \"smtp://{sink}\"\nrecipients = [\"stuck@corp.example.test\"]\n"
    )));
    let before = scrape(&server);
    for name in [
        "relayward_connections_total",
        "relayward_sessions",
        "relayward_messages_accepted_total",
        "relayward_recipients_refused_total",
        "relayward_auth_failures_total",
        "relayward_auth_bans",
        "relayward_queue_messages",
        "relayward_queue_oldest_seconds",
        "relayward_deliveries_total",
        "relayward_delivery_seconds",
        "relayward_tls_sessions_total",
        "relayward_spool_commit_seconds",
    ] {
        assert!(
            before.contains(&format!("# HELP {name} "))
                || before.contains(&format!("# HELP {} ", name.trim_end_matches("_total"))),
            "{name} is not exported:\n{before}"
        );
    }

    server
        .smtp("mx")
        .send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<someone@outside.test>")
        .expect(250)
        .send("RCPT TO:<someone@elsewhere.test>")
        .expect(554)
        .send("RCPT TO:<nobody@example.test>")
        .expect(550)
        .send("RCPT TO:<postmaster@example.test>")
        .expect(250)
        .send("RCPT TO:<stuck@corp.example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: counted\r\n\r\nhello\r\n.\r\n")
        .expect_text(250, "queued as")
        .send("QUIT")
        .expect(221);
    server
        .smtp("submission")
        .send("EHLO client.outside.test")
        .expect(250)
        .starttls(server.ca())
        .send("EHLO client.outside.test")
        .expect(250)
        .auth_plain("alice@example.test", "wrong password")
        .expect(535)
        .auth_plain("alice@example.test", PASSWORD)
        .expect(235)
        .send("QUIT")
        .expect(221);
    server.wait_for_mail("example.test", "postmaster", 1);
    server.wait_for_log("deferred");

    let after = scrape(&server);
    let moved = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(
        moved("relayward_connections_total{listener=\"mx\",result=\"accepted\"}"),
        1.0
    );
    assert_eq!(
        moved("relayward_connections_total{listener=\"submission\",result=\"accepted\"}"),
        1.0
    );
    assert_eq!(
        moved("relayward_messages_accepted_total{listener=\"mx\"}"),
        1.0
    );
    assert_eq!(
        moved("relayward_recipients_refused_total{reason=\"relay_denied\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(
        moved("relayward_recipients_refused_total{reason=\"unknown_user\"}"),
        1.0
    );
    assert_eq!(moved("relayward_auth_failures_total"), 1.0);
    assert_eq!(
        moved("relayward_tls_sessions_total{direction=\"inbound\",version=\"TLSv1.3\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(
        moved("relayward_deliveries_total{route_class=\"local\",result=\"delivered\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(
        moved("relayward_deliveries_total{route_class=\"relay_domain\",result=\"deferred\"}"),
        1.0,
        "{after}"
    );
    assert!(moved("relayward_delivery_seconds_count") >= 2.0, "{after}");
    assert_eq!(moved("relayward_spool_commit_seconds_count"), 1.0);
    assert_eq!(sample(&after, "relayward_sessions{listener=\"mx\"}"), 0.0);
    // The message waits for its retry: one deferred message, as old as it is.
    assert_eq!(
        sample(&after, "relayward_queue_messages{state=\"deferred\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, "relayward_queue_messages{state=\"held\"}"),
        0.0
    );
    // The age of the oldest message grows while it waits.
    let oldest = sample(&after, "relayward_queue_oldest_seconds");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let later = sample(&scrape(&server), "relayward_queue_oldest_seconds");
    assert!(later >= oldest + 2.0, "oldest {oldest} s, then {later} s");
}

/// `relayward_auth_bans` is the number of addresses banned from AUTH now: 0, 1 after a client
/// reaches `auth_failures_per_ip`, 0 again once an admin lifts the ban.
#[test]
fn the_auth_ban_gauge_follows_bans() {
    let server = TestServer::start(&standard_config(&format!(
        "{METRICS}\n[limits]\nauth_failures_per_ip = 2\nauth_ban = \"1h\"\n"
    )));
    assert_eq!(sample(&scrape(&server), "relayward_auth_bans"), 0.0);
    server.get_banned_from_auth(2);
    assert_eq!(sample(&scrape(&server), "relayward_auth_bans"), 1.0);

    let (code, out) = support::relayward_cmd(&server, &["bans", "clear", "127.0.0.1"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(sample(&scrape(&server), "relayward_auth_bans"), 0.0);
}

#[test]
fn healthz_is_200_while_everything_works_and_503_with_the_reason_otherwise() {
    let server = TestServer::start(&standard_config(METRICS));
    let http = Http::new(server.addr("metrics"));
    let ok = http.get("/healthz");
    assert_eq!((ok.status, ok.body.as_str()), (200, "ok\n"));
    // The queue refuses new mail below min_free_bytes: no filesystem has this much free.
    server.reload_with(|text| {
        text.replace(
            METRICS,
            &format!("{METRICS}\n[queue]\nmin_free_bytes = 1000000000000000000\n"),
        )
    });
    let sick = http.get("/healthz");
    assert_eq!(sick.status, 503, "{}", sick.body);
    assert!(sick.body.contains("min_free_bytes"), "{}", sick.body);
    assert!(
        sick.body.contains("452 4.3.1"),
        "says what clients see: {}",
        sick.body
    );
    assert_eq!(http.get("/nothing").status, 404);
}

/// Idle connections to the metrics endpoint cannot take the file descriptors the SMTP
/// listeners need: the endpoint holds a few per client and a few dozen in all (the rest wait
/// in the kernel's backlog or get `503`), so mail is still accepted and a scraper from
/// elsewhere still gets its page.
///
/// ```text
/// (relayward limited to 256 descriptors)
/// 300 connections to [metrics] listen, held idle
/// connect to mx, EHLO                        -> 220, 250
/// GET /metrics from 127.0.0.5                -> 200
/// ```
#[test]
fn idle_connections_to_the_metrics_endpoint_cannot_starve_the_smtp_listener() {
    let server = TestServer::start(&standard_config(METRICS));
    let limited = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", server.pid()))
        .arg("--nofile=256:256")
        .status()
        .expect("run prlimit (util-linux)");
    assert!(limited.success(), "prlimit: {limited}");
    let metrics = server.addr("metrics");
    let held: Vec<std::net::TcpStream> = (0..300)
        .filter_map(|_| std::net::TcpStream::connect(metrics).ok())
        .collect();
    assert!(held.len() > 256, "only {} connections opened", held.len());
    // Time for the endpoint to take what it will of them.
    std::thread::sleep(std::time::Duration::from_millis(500));

    let mut smtp = server.smtp("mx");
    smtp.send("EHLO client.outside.test").expect(250);
    smtp.send("QUIT").expect(221);
    let page = Http::new(metrics).from("127.0.0.5").get("/metrics");
    assert_eq!(page.status, 200, "{}", page.body);
    drop(held);
}

//! Delivery concurrency, connection reuse and pipelining, end to end on loopback: the runner
//! delivers many queued messages to scripted MX hosts that count how many connections are open
//! at once and whether MAIL arrived pipelined with RCPT and DATA.
//!
//! The scripted host holds every final reply for `HOLD` so that deliveries overlap: the peak is
//! then the limit itself, not whatever the timing happened to give. Each test uses its own
//! 127.N.0.0/16 addresses.

mod support;

use std::time::Duration;

use relayward_config::Config;
use relayward_delivery::{DeliveryConfig, Runner};
use relayward_queue::Queue;
use support::*;

/// How long the scripted host waits before answering each final dot.
const HOLD: Duration = Duration::from_millis(400);

/// A scripted MX host for `domains` at `mx`, answering as `script`, with the test DNS at
/// `dns_ip`; returns the host and the DNS server's address.
async fn mx_for(
    domains: &[&str],
    dns_ip: std::net::Ipv4Addr,
    mx: std::net::Ipv4Addr,
    script: Script,
) -> (SmtpServer, std::net::SocketAddr) {
    let srv = start_smtp(sock(mx, 0), script).await;
    let mut zone = Zone::default().a("mx.shared.test", mx);
    for domain in domains {
        zone = zone.mx(domain, 10, "mx.shared.test");
    }
    let dns = DnsServer::start_on(dns_ip, zone).addr;
    (srv, dns)
}

fn holding() -> Script {
    Script {
        data_delay: HOLD,
        ..Script::default()
    }
}

/// Queues `count` one-recipient messages to `domain`.
async fn enqueue_many(relay: &Relay, domain: &str, count: usize) {
    for i in 0..count {
        let rcpt = format!("user{i}@{domain}");
        relay
            .enqueue("alice@local.test", &[rcpt.as_str()], "hello")
            .await;
    }
}

/// Runs one pass of `runner` (bounded) and checks the queue is empty after it.
async fn deliver_all(relay: &Relay, runner: Runner) {
    tokio::time::timeout(Duration::from_secs(60), runner.run_once())
        .await
        .expect("the pass ends");
    let left = relay.queue.list().await.expect("list");
    assert!(left.is_empty(), "undelivered: {left:?}");
}

/// The settings a configuration file gives with `delivery` as its `[delivery]` table, pointed
/// at the test DNS and MX port.
fn from_file(
    relay: &Relay,
    delivery: &str,
    dns: std::net::SocketAddr,
    port: u16,
) -> DeliveryConfig {
    let text =
        format!("hostname = \"relay.test\"\ndata_dir = \"/nonexistent\"\n[delivery]\n{delivery}\n");
    let config = Config::from_toml_str(&text, "<test>").expect("configuration");
    let file = DeliveryConfig::from_config(&config);
    let mut settings = relay.config(Some(dns), port);
    settings.max_connections = file.max_connections;
    settings.max_per_destination = file.max_per_destination;
    settings.connection_idle = file.connection_idle;
    settings.connection_reuse_limit = file.connection_reuse_limit;
    settings
}

/// Postfix's `default_destination_concurrency_limit`: without any setting, 20 deliveries run
/// at once to one destination (it was 4).
#[tokio::test]
async fn twenty_connections_at_once_to_one_destination_by_default() {
    let (srv, dns) = mx_for(
        &["far.test"],
        ip(127, 50, 0, 1),
        ip(127, 50, 0, 2),
        holding(),
    )
    .await;
    let relay = Relay::new();
    enqueue_many(&relay, "far.test", 40).await;

    let settings = relay.config(Some(dns), srv.addr.port());
    deliver_all(&relay, relay.runner(settings)).await;

    assert_eq!(srv.messages().len(), 40);
    assert_eq!(srv.peak_connections(), 20, "connections open at once");
}

/// `[delivery] connections_per_destination = 3` from a configuration file: never more than
/// three connections to the destination, and the three are reused for all twelve messages.
#[tokio::test]
async fn connections_per_destination_caps_one_destination_and_connections_are_reused() {
    let (srv, dns) = mx_for(
        &["far.test"],
        ip(127, 51, 0, 1),
        ip(127, 51, 0, 2),
        holding(),
    )
    .await;
    let relay = Relay::new();
    enqueue_many(&relay, "far.test", 12).await;

    let settings = from_file(
        &relay,
        "connections_per_destination = 3",
        dns,
        srv.addr.port(),
    );
    deliver_all(&relay, relay.runner(settings)).await;

    assert_eq!(srv.messages().len(), 12);
    assert_eq!(srv.peak_connections(), 3, "connections open at once");
    assert_eq!(
        srv.connections(),
        3,
        "every later message reused one of them"
    );
}

/// `[delivery] max_connections = 3` caps deliveries to all destinations together: two
/// domains on one MX host, twenty allowed to each, three in total; once done, the limits of
/// both destinations are forgotten.
#[tokio::test]
async fn max_connections_caps_all_destinations_together() {
    let domains = ["one.test", "two.test"];
    let (srv, dns) = mx_for(&domains, ip(127, 52, 0, 1), ip(127, 52, 0, 2), holding()).await;
    let relay = Relay::new();
    enqueue_many(&relay, "one.test", 8).await;
    enqueue_many(&relay, "two.test", 8).await;

    let settings = from_file(
        &relay,
        "connections_per_destination = 20\nmax_connections = 3",
        dns,
        srv.addr.port(),
    );
    let runner = relay.runner(settings);
    deliver_all(&relay, runner.clone()).await;

    assert_eq!(srv.messages().len(), 16);
    assert_eq!(srv.peak_connections(), 3, "connections open at once");
    // Nothing runs any more: no destination keeps a limit (the table used to keep one per
    // destination ever sent to, for the life of the process).
    assert_eq!(runner.destinations_tracked(), 0);
}

/// Idle pooled connections count against `max_connections` too: each holds a descriptor
/// here and a session slot on its server. Eight domains, each on its own MX host, one
/// message each, `max_connections = 3`: once the pass is over (well inside the 10 s idle
/// time) at most three connections are still open, the oldest idle ones closed with QUIT.
#[tokio::test]
async fn idle_pooled_connections_stay_within_max_connections() {
    let ips: Vec<std::net::Ipv4Addr> = (0..8).map(|n| ip(127, 56, 0, 10 + n)).collect();
    let port = common_port(&ips);
    let mut zone = Zone::default();
    let mut hosts = Vec::new();
    for (n, mx) in ips.iter().enumerate() {
        let (host, domain) = (format!("mx{n}.spread.test"), format!("d{n}.test"));
        zone = zone.a(&host, *mx).mx(&domain, 10, &host);
        hosts.push(SmtpServer::bind(
            &sock(*mx, port).to_string(),
            Script::default(),
        ));
    }
    let dns = DnsServer::start_on(ip(127, 56, 0, 1), zone).addr;
    let relay = Relay::new();
    for n in 0..ips.len() {
        enqueue_many(&relay, &format!("d{n}.test"), 1).await;
    }

    let settings = from_file(&relay, "max_connections = 3", dns, port);
    // Kept alive: dropping the runner would close its pool.
    let runner = relay.runner(settings);
    deliver_all(&relay, runner.clone()).await;

    let delivered: usize = hosts.iter().map(|srv| srv.messages().len()).sum();
    assert_eq!(delivered, 8);
    let open_now = || -> Vec<usize> { hosts.iter().map(SmtpServer::open_connections).collect() };
    // The closes reach the hosts asynchronously.
    let within = eventually_async(Duration::from_secs(5), || {
        open_now().iter().sum::<usize>() <= 3
    })
    .await;
    assert!(within, "connections still open per host: {:?}", open_now());
    drop(runner);
}

/// A server that takes only so many messages per connection (Exim's
/// `smtp_accept_max_per_connection`) answers the next MAIL with `421` and closes: on a
/// reused connection nothing of the message was taken, so it goes on a new connection at
/// once instead of waiting a retry.
/// ```text
/// conn 1: MAIL 250 … 250   MAIL 250 … 250   RSET 250  MAIL 421 (closed)
/// conn 2: MAIL 250 … 250   …
/// ```
#[tokio::test]
async fn a_421_to_mail_on_a_reused_connection_sends_the_message_on_a_new_one() {
    for (offered, net) in [(true, 0), (false, 1)] {
        let script = Script {
            pipelining: offered,
            messages_per_connection: Some(2),
            ..Script::default()
        };
        let (dns_ip, mx) = (ip(127, 57, net, 1), ip(127, 57, net, 2));
        let srv = one_connection_at_a_time(script, dns_ip, mx, 5).await;

        let case = format!("PIPELINING offered: {offered}");
        assert_eq!(srv.messages().len(), 5, "{case}");
        assert_eq!(srv.connections(), 3, "two messages per connection: {case}");
    }
}

/// `[delivery] connection_cache_time` (how long an idle connection waits for the next
/// message, 10 s) and `connection_reuse_time_limit` (how long after it opened it may carry
/// one, 300 s as Postfix's `smtp_connection_reuse_time_limit`), from a configuration file.
/// Three messages, one connection at a time: with the defaults they share one connection;
/// with either time at zero every message has a connection of its own.
#[tokio::test]
async fn connection_reuse_follows_the_cache_time_and_the_reuse_time_limit() {
    let cases = [
        ("", 1),
        ("connection_reuse_time_limit = \"0s\"", 3),
        ("connection_cache_time = \"0s\"", 3),
    ];
    for (net, (keys, connections)) in (0u8..).zip(cases) {
        let (srv, dns) = mx_for(
            &["far.test"],
            ip(127, 58, net, 1),
            ip(127, 58, net, 2),
            Script::default(),
        )
        .await;
        let relay = Relay::new();
        enqueue_many(&relay, "far.test", 3).await;
        let delivery = format!("connections_per_destination = 1\n{keys}");
        let settings = from_file(&relay, &delivery, dns, srv.addr.port());
        deliver_all(&relay, relay.runner(settings)).await;

        assert_eq!(srv.messages().len(), 3, "[delivery] {keys:?}");
        assert_eq!(srv.connections(), connections, "[delivery] {keys:?}");
    }
}

/// A pooled connection that outlived the reuse time limit while it waited is not taken
/// for the next message: that one gets a new connection, and the old one a QUIT, so its
/// server is not left waiting for a word.
/// ```text
/// message 1 -> conn 1 (pooled)      … 0.5 s, past a 0.3 s limit …
/// message 2 -> conn 2;  conn 1: QUIT
/// ```
#[tokio::test]
async fn a_pooled_connection_past_the_reuse_time_limit_is_closed_with_quit() {
    let (srv, dns) = mx_for(
        &["far.test"],
        ip(127, 59, 0, 1),
        ip(127, 59, 0, 2),
        Script::default(),
    )
    .await;
    let relay = Relay::new();
    let mut settings = relay.config(Some(dns), srv.addr.port());
    settings.connection_reuse_limit = Duration::from_millis(300);
    let runner = relay.runner(settings);
    enqueue_many(&relay, "far.test", 1).await;
    deliver_all(&relay, runner.clone()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    enqueue_many(&relay, "far.test", 1).await;
    deliver_all(&relay, runner.clone()).await;

    assert_eq!(srv.messages().len(), 2);
    assert_eq!(srv.connections(), 2, "the old connection was not reused");
    let quit = eventually_async(Duration::from_secs(5), || {
        srv.lines().iter().any(|line| line == "QUIT")
    })
    .await;
    assert!(quit, "no QUIT for the old connection: {:?}", srv.lines());
    drop(runner);
}

/// Delivers `count` messages to far.test at a scripted MX host at `mx`, one connection to it
/// at a time (so that every later message may reuse the first connection); returns the host.
async fn one_connection_at_a_time(
    script: Script,
    dns_ip: std::net::Ipv4Addr,
    mx: std::net::Ipv4Addr,
    count: usize,
) -> SmtpServer {
    let (srv, dns) = mx_for(&["far.test"], dns_ip, mx, script).await;
    let relay = Relay::new();
    enqueue_many(&relay, "far.test", count).await;
    let mut settings = relay.config(Some(dns), srv.addr.port());
    settings.max_per_destination = 1;
    deliver_all(&relay, relay.runner(settings)).await;
    srv
}

/// RFC 2920: to a peer that offers PIPELINING, MAIL, RCPT and DATA go in one write, on new
/// and on reused connections alike; to one that does not, one command per reply.
#[tokio::test]
async fn pipelining_only_to_peers_that_offer_it() {
    for (offered, dns_ip, mx) in [
        (true, ip(127, 53, 0, 1), ip(127, 53, 0, 2)),
        (false, ip(127, 53, 1, 1), ip(127, 53, 1, 2)),
    ] {
        let script = Script {
            pipelining: offered,
            ..Script::default()
        };
        let srv = one_connection_at_a_time(script, dns_ip, mx, 5).await;

        assert_eq!(srv.messages().len(), 5);
        assert_eq!(srv.connections(), 1, "one connection reused");
        let expected = if offered { 5 } else { 0 };
        assert_eq!(
            srv.pipelined_mail(),
            expected,
            "pipelined MAIL commands with PIPELINING offered: {offered}; lines: {:?}",
            srv.lines()
        );
    }
}

/// A reused connection is reset in the same write as the next envelope (RSET, MAIL, RCPT,
/// DATA: one round trip, as KumoMTA does), not checked with a lockstep RSET of its own first;
/// to a peer without PIPELINING the RSET still goes alone.
///
/// ```text
/// message 1:  MAIL RCPT DATA             -> 250 250 354
/// message 2:  RSET MAIL RCPT DATA        -> 250 250 250 354   (one write)
/// ```
#[tokio::test]
async fn a_reused_connection_sends_its_rset_with_the_next_envelope() {
    for (offered, dns_ip, mx) in [
        (true, ip(127, 54, 0, 1), ip(127, 54, 0, 2)),
        (false, ip(127, 54, 1, 1), ip(127, 54, 1, 2)),
    ] {
        let script = Script {
            pipelining: offered,
            ..Script::default()
        };
        let srv = one_connection_at_a_time(script, dns_ip, mx, 4).await;

        assert_eq!(srv.messages().len(), 4);
        assert_eq!(srv.connections(), 1, "one connection reused");
        let lines = srv.lines();
        let rsets = lines.iter().filter(|l| *l == "RSET").count();
        assert_eq!(rsets, 3, "one RSET before each reuse: {lines:?}");
        let expected = if offered { 3 } else { 0 };
        assert_eq!(
            srv.pipelined_rset(),
            expected,
            "RSETs sent with the envelope after them, PIPELINING offered: {offered}; {lines:?}"
        );
    }
}

/// A pooled connection that the server closed while it waited (its idle timeout), or whose
/// server answers RSET with `421` (shutting down), is found unusable by the RSET sent ahead
/// of the next envelope: the message goes on a new connection in the same attempt,
/// delivered, not deferred — whether or not the peer pipelines.
#[tokio::test]
async fn a_pooled_connection_closed_by_the_server_is_replaced_without_a_deferral() {
    let closed = Script {
        close_after_message: true,
        ..Script::default()
    };
    let refusing = Script {
        rset_reply: "421 4.3.2 shutting down".into(),
        ..Script::default()
    };
    for (ending, base, octet) in [("closed", closed, 55), ("421 to RSET", refusing, 56)] {
        for (offered, net) in [(true, 0), (false, 1)] {
            let script = Script {
                pipelining: offered,
                ..base.clone()
            };
            let (dns_ip, mx) = (ip(127, octet, net, 1), ip(127, octet, net, 2));
            let srv = one_connection_at_a_time(script, dns_ip, mx, 3).await;

            let case = format!("{ending}, PIPELINING offered: {offered}");
            assert_eq!(srv.messages().len(), 3, "{case}");
            assert_eq!(
                srv.connections(),
                3,
                "a new connection for each message: {case}"
            );
            assert_eq!(
                srv.data_read(),
                3,
                "no content sent on a dead connection: {case}"
            );
        }
    }
}

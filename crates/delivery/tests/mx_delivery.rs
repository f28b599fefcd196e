//! MX delivery end to end on loopback: a test DNS server, scripted receiving servers, the real
//! file spool and the runner. Each test uses its own 127.N.0.0/16 addresses.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use relayward_delivery::Runner;
use relayward_queue::{Queue, RecipientStatus};
use support::*;
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(15);

/// Starts `runner.run` in a task; dropping the sender stops it.
fn start(runner: Runner) -> (tokio::task::JoinHandle<()>, oneshot::Sender<()>) {
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(runner.run(async move {
        let _ = rx.await;
    }));
    (handle, tx)
}

async fn queue_is_empty(relay: &Relay) -> bool {
    relay
        .queue
        .list()
        .await
        .map(|l| l.is_empty())
        .unwrap_or(false)
}

async fn wait_empty(relay: &Relay) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if queue_is_empty(relay).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn mail_reaches_the_most_preferred_mx_and_reuses_the_connection() {
    let (a, b) = (ip(127, 10, 0, 2), ip(127, 10, 0, 3));
    let port = common_port(&[a, b]);
    let best = start_smtp(sock(a, port), Script::default()).await;
    let other = start_smtp(sock(b, port), Script::default()).await;
    let zone = Zone::default()
        .mx("far.test", 20, "mx2.far.test")
        .mx("far.test", 10, "mx1.far.test")
        .a("mx1.far.test", a)
        .a("mx2.far.test", b);
    let dns = DnsServer::start_on(ip(127, 10, 0, 1), zone).addr;
    let relay = Relay::new();
    let mut config = relay.config(Some(dns), port);
    config.max_per_destination = 1;
    relay
        .enqueue(
            "alice@local.test",
            &["bob@far.test", "carol@far.test"],
            "one",
        )
        .await;
    relay
        .enqueue("alice@local.test", &["dave@far.test"], "two")
        .await;

    let runner = relay.runner(config);
    runner.run_once().await;

    assert!(queue_is_empty(&relay).await, "everything delivered");
    let got = best.messages();
    assert_eq!(got.len(), 2, "both messages at the preference-10 host");
    let both = got
        .iter()
        .find(|m| m.rcpts.len() == 2)
        .expect("one transaction for two rcpts");
    assert_eq!(both.rcpts, ["bob@far.test", "carol@far.test"]);
    assert_eq!(both.from, "alice@local.test");
    assert!(text(&both.data).contains("Subject: test message"));
    assert_eq!(
        best.connections(),
        1,
        "second message reused the connection"
    );
    assert!(other.messages().is_empty() && other.connections() == 0);
}

#[tokio::test]
async fn falls_back_to_the_next_mx_on_refusal_and_4xx() {
    let (dead, busy, good) = (ip(127, 11, 0, 4), ip(127, 11, 0, 2), ip(127, 11, 0, 3));
    let port = common_port(&[dead, busy, good]);
    let busy_srv = start_smtp(
        sock(busy, port),
        Script::default().rcpt_reply("451 4.3.0 busy"),
    )
    .await;
    let good_srv = start_smtp(sock(good, port), Script::default()).await;
    let zone = Zone::default()
        .mx("far.test", 5, "dead.far.test")
        .mx("far.test", 10, "busy.far.test")
        .mx("far.test", 20, "good.far.test")
        .a("dead.far.test", dead)
        .a("busy.far.test", busy)
        .a("good.far.test", good);
    let dns = DnsServer::start_on(ip(127, 11, 0, 1), zone).addr;
    let relay = Relay::new();
    relay
        .enqueue("alice@local.test", &["bob@far.test"], "hi")
        .await;

    let runner = relay.runner(relay.config(Some(dns), port));
    runner.run_once().await;

    assert!(queue_is_empty(&relay).await);
    assert_eq!(busy_srv.connections(), 1, "the 4xx host was tried");
    assert!(busy_srv.messages().is_empty());
    assert_eq!(good_srv.messages().len(), 1, "the next MX got it");
}

#[tokio::test]
async fn retries_after_4xx_until_accepted() {
    let mx = ip(127, 12, 0, 2);
    let tries = Arc::new(AtomicUsize::new(0));
    let counter = tries.clone();
    let script = Script {
        rcpt: Arc::new(move |_| {
            if counter.fetch_add(1, Ordering::SeqCst) < 2 {
                "450 4.2.0 mailbox busy".into()
            } else {
                "250 2.1.5 ok".into()
            }
        }),
        ..Script::default()
    };
    let srv = start_smtp(sock(mx, 0), script).await;
    let zone = Zone::default()
        .mx("far.test", 10, "mx.far.test")
        .a("mx.far.test", mx);
    let dns = DnsServer::start_on(ip(127, 12, 0, 1), zone).addr;
    let relay = Relay::new();
    let id = relay
        .enqueue("alice@local.test", &["bob@far.test"], "hi")
        .await;
    let runner = relay.runner(relay.config(Some(dns), srv.addr.port()));

    // Whole seconds: the attempt's "now" is at least this; the check after it may already be
    // in the next second, so the backoff is compared with the time before the attempt.
    let before = support_now();
    runner.run_once().await;
    let state = relay.queue.get(&id).await.expect("still queued");
    let r = &state.recipients[0];
    assert_eq!(r.status, RecipientStatus::Pending);
    assert_eq!(r.attempts, 1);
    assert!(
        r.last_error.as_deref().unwrap_or("").contains("450 4.2.0"),
        "{r:?}"
    );
    assert!(r.next_attempt > before, "backoff scheduled in the future");

    let (task, stop) = start(runner);
    assert!(wait_empty(&relay).await, "delivered after retries");
    assert_eq!(srv.messages().len(), 1);
    assert_eq!(tries.load(Ordering::SeqCst), 3);
    drop(stop);
    let _ = task.await;
}

fn support_now() -> u64 {
    relayward_delivery::runner::unix_now()
}

#[tokio::test]
async fn bounce_after_5xx_is_one_rfc3464_report_in_the_senders_maildir() {
    let mx = ip(127, 13, 0, 2);
    let script = Script {
        rcpt: Arc::new(|r: &str| {
            if r.starts_with("carol") {
                "250 2.1.5 ok".into()
            } else {
                "550 5.1.1 no such user".into()
            }
        }),
        ..Script::default()
    };
    let srv = start_smtp(sock(mx, 0), script).await;
    let zone = Zone::default()
        .mx("far.test", 10, "mx.far.test")
        .a("mx.far.test", mx);
    let dns = DnsServer::start_on(ip(127, 13, 0, 1), zone).addr;
    let relay = Relay::new();
    relay
        .enqueue(
            "alice@local.test",
            &["bob@far.test", "carol@far.test", "dave@far.test"],
            "hi",
        )
        .await;
    let runner = relay.runner(relay.config(Some(dns), srv.addr.port()));
    let (task, stop) = start(runner);

    assert!(eventually_async(WAIT, || !relay.maildir("local.test", "alice").is_empty()).await);
    assert!(wait_empty(&relay).await, "original and DSN both done");
    drop(stop);
    let _ = task.await;

    assert_eq!(srv.messages().len(), 1);
    assert_eq!(srv.messages()[0].rcpts, ["carol@far.test"]);
    let inbox = relay.maildir("local.test", "alice");
    assert_eq!(
        inbox.len(),
        1,
        "one DSN for the batch, not one per recipient"
    );
    let dsn = text(&inbox[0]);
    check_dsn(&dsn);
    assert!(
        dsn.contains(
            "Final-Recipient: rfc822; bob@far.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        )
    );
    assert!(dsn.contains("Final-Recipient: rfc822; dave@far.test"));
    assert!(!dsn.contains("Final-Recipient: rfc822; carol@far.test"));
    assert!(dsn.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user"));
    assert!(dsn.contains("Remote-MTA: dns; mx.far.test"));
}

/// The structure RFC 3464 asks for; loose on whitespace, strict on the parts and their order.
fn check_dsn(dsn: &str) {
    let headers_end = dsn.find("\r\n\r\n").expect("header/body separator");
    let top = &dsn[..headers_end];
    assert!(
        top.contains("Content-Type: multipart/report; report-type=delivery-status;"),
        "{top}"
    );
    assert!(top.contains("To: <alice@local.test>"));
    assert!(top.contains("Auto-Submitted: auto-replied"));
    let boundary = top
        .split("boundary=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("boundary");
    let parts: Vec<&str> = dsn.split(&format!("--{boundary}")).collect();
    assert_eq!(parts.len(), 5, "preamble, three parts, epilogue");
    assert!(
        parts[1]
            .trim_start()
            .starts_with("Content-Type: text/plain")
    );
    assert!(
        parts[2]
            .trim_start()
            .starts_with("Content-Type: message/delivery-status")
    );
    assert!(parts[2].contains("Reporting-MTA: dns; relay.test\r\n"));
    assert!(parts[2].contains("Arrival-Date: "));
    assert!(
        parts[3]
            .trim_start()
            .starts_with("Content-Type: text/rfc822-headers")
    );
    assert!(parts[3].contains("Subject: test message"));
    assert!(!parts[3].contains("\r\nhi\r\n"), "body not included");
    assert!(parts[4].starts_with("--"), "closing delimiter");
}

#[tokio::test]
async fn null_mx_bounces_at_once_without_connecting() {
    let zone = Zone::default().null_mx("nomail.test");
    let dns = DnsServer::start_on(ip(127, 14, 0, 1), zone).addr;
    let relay = Relay::new();
    relay
        .enqueue("alice@local.test", &["bob@nomail.test"], "hi")
        .await;
    let runner = relay.runner(relay.config(Some(dns), 25));
    runner.run_once().await; // original: bounced, DSN queued
    runner.run_once().await; // DSN: into alice's Maildir
    assert!(queue_is_empty(&relay).await);
    let inbox = relay.maildir("local.test", "alice");
    assert_eq!(inbox.len(), 1);
    let dsn = text(&inbox[0]);
    check_dsn(&dsn);
    assert!(dsn.contains("Status: 5.1.10"), "{dsn}");
    assert!(dsn.contains("null MX"));
}

#[tokio::test]
async fn null_sender_is_never_bounced() {
    let mx = ip(127, 15, 0, 2);
    let srv = start_smtp(sock(mx, 0), Script::default().rcpt_reply("550 5.1.1 gone")).await;
    let zone = Zone::default()
        .mx("far.test", 10, "mx.far.test")
        .a("mx.far.test", mx);
    let dns = DnsServer::start_on(ip(127, 15, 0, 1), zone).addr;
    let relay = Relay::new();
    relay.enqueue("", &["bob@far.test"], "a bounce").await;
    let runner = relay.runner(relay.config(Some(dns), srv.addr.port()));
    runner.run_once().await;
    runner.run_once().await;
    assert!(queue_is_empty(&relay).await, "no DSN queued");
    assert_eq!(srv.connections(), 1);
    let lines = srv.lines();
    assert!(
        lines
            .iter()
            .any(|l| l == "MAIL FROM:<> SIZE=106" || l.starts_with("MAIL FROM:<>"))
    );
}

#[tokio::test]
async fn nxdomain_bounces_and_servfail_defers() {
    let zone = Zone::default()
        .servfail("broken.test")
        .a("other.test", ip(127, 16, 0, 9));
    let dns = DnsServer::start_on(ip(127, 16, 0, 1), zone).addr;
    let relay = Relay::new();
    relay
        .enqueue("alice@local.test", &["x@nowhere.test"], "hi")
        .await;
    let sf = relay
        .enqueue("alice@local.test", &["y@broken.test"], "hi")
        .await;
    let runner = relay.runner(relay.config(Some(dns), 25));
    runner.run_once().await;
    let left = relay.queue.list().await.expect("list");
    let ids: Vec<_> = left.iter().map(|m| m.id.clone()).collect();
    assert!(ids.contains(&sf), "SERVFAIL: still queued");
    let sf_state = left.iter().find(|m| m.id == sf).expect("sf");
    assert_eq!(sf_state.recipients[0].status, RecipientStatus::Pending);
    assert!(
        sf_state.recipients[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("temporary DNS failure")
    );
    // NXDOMAIN: gone, with a DSN queued to alice.
    let dsn = left
        .iter()
        .find(|m| m.sender.is_empty())
        .expect("DSN queued");
    assert_eq!(dsn.recipients[0].address, "alice@local.test");
    assert_eq!(left.len(), 2);
}

/// RFC 6533: the bounce of a message sent with SMTPUTF8 is an internationalised report
/// (`message/global-delivery-status`, `message/global-headers`) and is itself queued with
/// SMTPUTF8, so it is relayed to the sender's server as such (it used to go as a plain
/// RFC 3464 report, with UTF-8 in parts that forbid it, and without SMTPUTF8).
#[tokio::test]
async fn the_bounce_of_an_smtputf8_message_is_a_global_report_sent_with_smtputf8() {
    let dns = DnsServer::start_on(ip(127, 27, 0, 1), Zone::default()).addr;
    let relay = Relay::new();
    let esmtp = relayward_queue::Esmtp {
        smtputf8: true,
        ..Default::default()
    };
    relay
        .enqueue_esmtp("alice@local.test", &["x@nowhere.test"], "Grüße", esmtp)
        .await;
    let plain = relay
        .enqueue("alice@local.test", &["y@nowhere.test"], "hi")
        .await;
    let runner = relay.runner(relay.config(Some(dns), 25));
    runner.run_once().await;

    let left = relay.queue.list().await.expect("list");
    let dsns: Vec<_> = left.iter().filter(|m| m.sender.is_empty()).collect();
    assert_eq!(dsns.len(), 2, "{left:?}");
    for dsn in dsns {
        let content = text(&relay.queue.content(&dsn.id).await.expect("content"));
        let about_plain = content.contains(&plain.0);
        assert_eq!(dsn.options.smtputf8, !about_plain, "{content}");
        let status = if about_plain {
            "message/delivery-status"
        } else {
            "message/global-delivery-status"
        };
        assert!(
            content.contains(&format!("Content-Type: {status}\r\n")),
            "{content}"
        );
    }
}

#[tokio::test]
async fn implicit_mx_when_there_is_no_mx_record() {
    let host = ip(127, 17, 0, 2);
    let srv = start_smtp(sock(host, 0), Script::default()).await;
    let zone = Zone::default().a("plain.test", host);
    let dns = DnsServer::start_on(ip(127, 17, 0, 1), zone).addr;
    let relay = Relay::new();
    relay
        .enqueue("alice@local.test", &["bob@plain.test"], "hi")
        .await;
    let runner = relay.runner(relay.config(Some(dns), srv.addr.port()));
    runner.run_once().await;
    assert!(queue_is_empty(&relay).await);
    assert_eq!(srv.messages().len(), 1);
}

#[tokio::test]
async fn expired_messages_bounce_with_4_4_7() {
    let mx = ip(127, 18, 0, 2);
    let srv = start_smtp(
        sock(mx, 0),
        Script::default().rcpt_reply("421 4.3.2 closing"),
    )
    .await;
    let zone = Zone::default()
        .mx("far.test", 10, "mx.far.test")
        .a("mx.far.test", mx);
    let dns = DnsServer::start_on(ip(127, 18, 0, 1), zone).addr;
    let relay = Relay::new();
    relay
        .enqueue("alice@local.test", &["bob@far.test"], "hi")
        .await;
    let mut config = relay.config(Some(dns), srv.addr.port());
    config.max_queue_lifetime = Duration::ZERO;
    let runner = relay.runner(config);
    runner.run_once().await;
    runner.run_once().await;
    assert!(queue_is_empty(&relay).await);
    let inbox = relay.maildir("local.test", "alice");
    assert_eq!(inbox.len(), 1);
    let dsn = text(&inbox[0]);
    check_dsn(&dsn);
    assert!(dsn.contains("Status: 4.4.7"), "{dsn}");
    assert!(dsn.contains("maximum queue lifetime"));
}

#[tokio::test]
async fn size_limit_is_checked_before_sending() {
    let mx = ip(127, 19, 0, 2);
    let script = Script {
        size: Some(50),
        ..Script::default()
    };
    let srv = start_smtp(sock(mx, 0), script).await;
    let zone = Zone::default()
        .mx("far.test", 10, "mx.far.test")
        .a("mx.far.test", mx);
    let dns = DnsServer::start_on(ip(127, 19, 0, 1), zone).addr;
    let relay = Relay::new();
    relay
        .enqueue("alice@local.test", &["bob@far.test"], &"x".repeat(200))
        .await;
    let runner = relay.runner(relay.config(Some(dns), srv.addr.port()));
    runner.run_once().await;
    runner.run_once().await;
    assert!(
        srv.lines().iter().all(|l| !l.starts_with("MAIL")),
        "nothing sent"
    );
    let inbox = relay.maildir("local.test", "alice");
    assert_eq!(inbox.len(), 1);
    assert!(text(&inbox[0]).contains("Status: 5.3.4"));
}

//! Several `relayward serve` nodes sharing one queue in PostgreSQL (issue 16), end to end on
//! loopback with a real PostgreSQL server (a throw-away cluster: initdb, pg_ctl) and a real
//! SMTP peer behind a `[[route]]`:
//!
//! - mail accepted by node A is delivered by node B while A is stopped, and `relayward queue`
//!   sees and changes the shared queue from any node's configuration;
//! - `kill -9` of a node holding leases under load: every acknowledged message is delivered at
//!   least once (duplicates counted and reported), none lost;
//! - PostgreSQL restarted under load: no `250` while it is down (`451 4.3.0` instead), no
//!   acknowledged message lost, one log line each way.

mod support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use relayward_testkit::load::{Envelope, Ledger, load, token_of};
use relayward_testkit::postgres::{Cluster, Database};
use relayward_testkit::smtp_server::{Script, SmtpServer};
use relayward_testkit::wait::eventually;
use support::{TestServer, queue_cmd, queue_json, standard_config, wait_queue_empty};

/// A node of the shared queue: the standard test configuration, `sink.test` routed to
/// 127.0.0.1:`port` with its one recipient listed (so RCPT does not ask the sink, which may not
/// be up yet), short leases so that takeover fits in a test.
fn node_config(db: &Database, node: &str, port: u16) -> String {
    standard_config(&format!(
        r#"
[[route]]
domain = "sink.test"
to = "smtp://127.0.0.1:{port}"
recipients = ["rcpt@sink.test"]

[limits]
max_connections_per_ip = 1000
connections_per_ip_per_minute = 100000
greet_pause = "0s"

{queue}"#,
        queue = db.queue_table(&format!("lease_timeout = \"2s\"\nnode_name = \"{node}\""))
    ))
}

fn sink_envelope() -> Envelope {
    Envelope {
        sender: "load@other.test".into(),
        recipient: "rcpt@sink.test".into(),
    }
}

/// How often each token reached the sink.
fn received_tokens(sink: &SmtpServer) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for message in sink.messages() {
        if let Some(token) = token_of(&message.text()) {
            *counts.entry(token).or_insert(0) += 1;
        }
    }
    counts
}

/// Acknowledged tokens the sink has not received.
fn missing(ledger: &Ledger, received: &BTreeMap<String, usize>) -> Vec<String> {
    ledger
        .acked
        .iter()
        .filter(|t| !received.contains_key(*t))
        .cloned()
        .collect()
}

/// Sends one message to `server`'s mx listener; returns the final-dot reply code.
fn send_token(server: &TestServer, token: &str) -> u16 {
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<friend@other.test>")
        .expect(250)
        .send("RCPT TO:<rcpt@sink.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(format!("Subject: {token}\r\n\r\nToken: {token}\r\n.\r\n").as_bytes());
    let reply = smtp.read_reply().expect("reply to the final dot");
    smtp.send("QUIT");
    reply.0
}

/// Node A accepts a message it cannot deliver (the route's host is not up yet) and is
/// stopped; node B, started afterwards on the same database, delivers it after an admin's
/// `queue retry --all` given through B's configuration. `queue list` and `queue show` read
/// the shared queue while A is stopped.
#[test]
fn mail_accepted_by_one_node_is_delivered_by_another_while_the_first_is_stopped() {
    let db = Cluster::shared().database();
    let port = relayward_testkit::net::common_port(&[Ipv4Addr::LOCALHOST]);
    let mut a = TestServer::start(&node_config(&db, "node-a", port));
    assert_eq!(send_token(&a, "accepted-by-a"), 250);
    // A tries once (nothing listens on the route's port) and defers.
    let deferred = eventually(support::WAIT, || {
        let list = queue_json(&a, &["list"]);
        list[0]["recipients"][0]["attempts"].as_u64() == Some(1)
    });
    assert!(deferred, "A never tried the message:\n{}", a.log());
    a.signal("TERM");
    assert_eq!(
        a.wait_exit(),
        Some(0),
        "A did not stop cleanly:\n{}",
        a.log()
    );
    assert!(a.log().contains("leases given back"), "{}", a.log());

    // The queue, read through A's configuration while A is stopped.
    let list = queue_json(&a, &["list"]);
    let id = list[0]["id"].as_str().expect("id").to_string();
    assert_eq!(list[0]["recipients"][0]["address"], "rcpt@sink.test");
    assert!(
        list[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("127.0.0.1")),
        "{list}"
    );
    let show = queue_json(&a, &["show", &id]);
    assert_eq!(show["origin"], "stranger");

    let sink = SmtpServer::bind(&format!("127.0.0.1:{port}"), Script::default());
    let b = TestServer::start(&node_config(&db, "node-b", port));
    // B found the schema A made: nothing to migrate, and nothing about it in the log.
    assert!(!b.log().contains("already exists"), "{}", b.log());
    let retried = queue_json(&b, &["retry", "--all"]);
    assert_eq!(retried["ids"][0], id.as_str());
    let delivered = eventually(support::WAIT, || {
        received_tokens(&sink).contains_key("accepted-by-a")
    });
    assert!(delivered, "B did not deliver A's message:\n{}", b.log());
    wait_queue_empty(&b);
}

/// Two nodes take load; one of them is killed with SIGKILL while it holds leases (its
/// deliveries to the slow sink are in flight). The other takes its work over after
/// `lease_timeout`: every acknowledged message reaches the sink at least once.
#[test]
fn kill_9_of_a_node_holding_leases_loses_no_acknowledged_message() {
    let db = Cluster::shared().database();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind sink");
    let port = listener.local_addr().expect("addr").port();
    let sink = SmtpServer::spawn(
        listener,
        Script {
            data_delay: Duration::from_millis(40),
            ..Script::default()
        },
    );
    let a = TestServer::start(&node_config(&db, "node-a", port));
    let b = TestServer::start(&node_config(&db, "node-b", port));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let envelope = sink_envelope();
    let mut threads = load(a.addr("mx"), &envelope, 0, 3, &stop, &ledger);
    threads.extend(load(b.addr("mx"), &envelope, 1, 3, &stop, &ledger));
    std::thread::sleep(Duration::from_millis(1500));
    // A holds leases on what it is delivering and on what waits for a connection slot.
    let killed = Instant::now();
    drop(a.kill9());
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("load thread");
    }
    let acked = ledger.lock().expect("ledger").acked.len();
    let all_delivered = eventually(Duration::from_secs(60), || {
        missing(&ledger.lock().expect("ledger"), &received_tokens(&sink)).is_empty()
    });
    let received = received_tokens(&sink);
    let ledger = ledger.lock().expect("ledger");
    let duplicates: usize = received.values().map(|n| n - 1).sum();
    eprintln!(
        "kill -9 test: {} sent, {acked} acknowledged, {} delivered, {duplicates} duplicates \
         (at-least-once: deliveries node A had in flight), taken over and drained {:?} after the kill",
        ledger.sent.len(),
        received.len(),
        killed.elapsed()
    );
    assert!(acked >= 20, "too little load to mean anything: {acked}");
    let lost = missing(&ledger, &received);
    assert!(
        all_delivered && lost.is_empty(),
        "{} acknowledged messages never delivered: {:?}\nnode B:\n{}",
        lost.len(),
        lost.iter().take(10).collect::<Vec<_>>(),
        b.log()
    );
    let phantom: Vec<&String> = received
        .keys()
        .filter(|t| !ledger.sent.contains(*t))
        .collect();
    assert!(phantom.is_empty(), "delivered but never sent: {phantom:?}");
    // A duplicate needs a delivery of A's that reached the sink before A could record it.
    assert!(
        duplicates <= 25,
        "{duplicates} duplicates: more than one kill can leave in flight"
    );
    wait_queue_empty(&b);
}

/// PostgreSQL stops (immediate shutdown: a crash) and starts again while a node takes load:
/// no `250` while it is down, `451 4.3.0` instead; everything acknowledged is delivered; the
/// node says once that the database went and once that it came back.
#[test]
fn postgres_restarted_under_load_loses_nothing_and_never_says_250_while_down() {
    let cluster = Cluster::start();
    let db = cluster.database();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind sink");
    let port = listener.local_addr().expect("addr").port();
    let sink = SmtpServer::spawn(listener, Script::default());
    let node = TestServer::start(&node_config(&db, "node-a", port));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let threads = load(node.addr("mx"), &sink_envelope(), 0, 4, &stop, &ledger);
    std::thread::sleep(Duration::from_millis(1000));
    cluster.stop_immediately();
    let down = Instant::now();
    std::thread::sleep(Duration::from_millis(2000));
    let up = Instant::now();
    cluster.start_again();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("load thread");
    }
    let all_delivered = eventually(Duration::from_secs(30), || {
        missing(&ledger.lock().expect("ledger"), &received_tokens(&sink)).is_empty()
    });
    let ledger = ledger.lock().expect("ledger");
    let received = received_tokens(&sink);
    // A commit acknowledged by the database happened before it died; its 250 may reach the
    // client a moment later, so allow a margin after the stop.
    let while_down: Vec<&(Instant, u16)> = ledger
        .replies
        .iter()
        .filter(|(at, code)| *code == 250 && *at > down + Duration::from_millis(500) && *at < up)
        .collect();
    let log = node.log();
    let went = log.matches("queue database unreachable").count();
    let came = log.matches("queue database reachable again").count();
    eprintln!(
        "restart test: {} sent, {} acknowledged, refusals {:?}, {} delivered, log lines down/up {went}/{came}",
        ledger.sent.len(),
        ledger.acked.len(),
        ledger.refused,
        received.len()
    );
    assert!(
        while_down.is_empty(),
        "{} messages got 250 while the database was down",
        while_down.len()
    );
    assert!(
        ledger.refused.get(&451).copied().unwrap_or(0) > 0,
        "the outage never reached a client: {:?}",
        ledger.refused
    );
    assert!(
        ledger.refused.keys().all(|code| *code == 451),
        "refusals other than 451: {:?}",
        ledger.refused
    );
    let lost = missing(&ledger, &received);
    assert!(
        all_delivered && lost.is_empty(),
        "{} acknowledged messages lost: {:?}\n{log}",
        lost.len(),
        lost.iter().take(10).collect::<Vec<_>>()
    );
    assert!(
        went >= 1 && came >= 1,
        "no log line for the outage ({went}) or the return ({came}):\n{log}"
    );
    assert!(
        went <= 2 && came <= 2,
        "the outage flooded the log: {went} down, {came} up lines"
    );
    // The queue still works after the outage.
    assert_eq!(send_token(&node, "after-the-restart"), 250);
    wait_queue_empty(&node);
    let _ = queue_cmd(&node, &["list"]);
}

/// SIGHUP on a node of the shared queue: what a reload may change takes effect (a recipient
/// added to the route's list is accepted and delivered through the database), and a change to
/// `[queue]` is named as needing a restart while the node keeps the database it has.
#[test]
fn sighup_on_a_node_reloads_and_keeps_its_database() {
    let db = Cluster::shared().database();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind sink");
    let port = listener.local_addr().expect("addr").port();
    let sink = SmtpServer::spawn(listener, Script::default());
    let node = TestServer::start(&node_config(&db, "node-a", port));
    let mut smtp = node.smtp("mx");
    smtp.send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<friend@other.test>")
        .expect(250)
        .send("RCPT TO:<new@sink.test>")
        .expect_text(550, "5.1.1")
        .send("QUIT")
        .expect(221);

    node.reload_with(|text| {
        text.replace(
            r#"recipients = ["rcpt@sink.test"]"#,
            r#"recipients = ["rcpt@sink.test", "new@sink.test"]"#,
        )
        .replace(r#"node_name = "node-a""#, r#"node_name = "node-renamed""#)
    });
    node.wait_for_log("[queue] backend or database settings");
    node.wait_for_log("takes effect only after a restart");

    let mut smtp = node.smtp("mx");
    smtp.send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<friend@other.test>")
        .expect(250)
        .send("RCPT TO:<new@sink.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .send("Subject: after the reload\r\n\r\nToken: after-the-reload\r\n.")
        .expect(250)
        .send("QUIT")
        .expect(221);
    let delivered = eventually(support::WAIT, || {
        received_tokens(&sink).contains_key("after-the-reload")
    });
    assert!(delivered, "not delivered after the reload:\n{}", node.log());
    // Still the node that opened the database: its name changes only with a restart.
    let owners = Cluster::shared().psql(&db.name, "SELECT name FROM relayward_nodes");
    assert_eq!(owners, "node-a");
}

/// `relayward queue` through one node's configuration steers the mail of another, running,
/// node: a message A accepted is held and another deleted through B's configuration; a retry
/// of everything (through A's) leaves both alone while the sink is up; a release through A's
/// and a retry through B's then get the held one delivered, once.
#[test]
fn queue_commands_through_one_node_steer_the_mail_another_node_holds() {
    let db = Cluster::shared().database();
    let port = relayward_testkit::net::common_port(&[Ipv4Addr::LOCALHOST]);
    let a = TestServer::start(&node_config(&db, "node-a", port));
    let b = TestServer::start(&node_config(&db, "node-b", port));
    assert_eq!(send_token(&a, "to-hold"), 250);
    assert_eq!(send_token(&a, "to-delete"), 250);
    let tried = eventually(support::WAIT, || {
        let list = queue_json(&b, &["list"]);
        list.as_array()
            .is_some_and(|l| l.len() == 2 && l.iter().all(|m| m["recipients"][0]["attempts"] == 1))
    });
    assert!(tried, "the messages were never tried:\n{}", a.log());
    // Oldest first: the first message sent is the first listed.
    let list = queue_json(&a, &["list"]);
    let (to_hold, to_delete) = (
        list[0]["id"].as_str().expect("id").to_string(),
        list[1]["id"].as_str().expect("id").to_string(),
    );

    assert_eq!(
        queue_json(&b, &["hold", &to_hold])["ids"][0],
        to_hold.as_str()
    );
    assert_eq!(
        queue_json(&b, &["delete", &to_delete])["ids"][0],
        to_delete.as_str()
    );
    let sink = SmtpServer::bind(&format!("127.0.0.1:{port}"), Script::default());
    let retried = queue_json(&a, &["retry", "--all"]);
    assert_eq!(retried["ids"], serde_json::json!([]), "{retried}");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        received_tokens(&sink).is_empty(),
        "a held or deleted message went out: {:?}",
        received_tokens(&sink)
    );
    let list = queue_json(&a, &["list"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(queue_json(&b, &["show", &to_hold])["held"], true);

    queue_json(&a, &["release", &to_hold]);
    queue_json(&b, &["retry", &to_hold]);
    let delivered = eventually(support::WAIT, || {
        received_tokens(&sink).contains_key("to-hold")
    });
    assert!(
        delivered,
        "released message not delivered:\n{}\n{}",
        a.log(),
        b.log()
    );
    wait_queue_empty(&a);
    assert_eq!(
        received_tokens(&sink),
        BTreeMap::from([("to-hold".to_string(), 1)]),
        "delivered once, and nothing else"
    );
}

/// Database failover: the primary dies under load and its synchronous streaming replica is
/// promoted. The node names both (`target_session_attrs=read-write`): while neither accepts
/// writes it answers 451 (never 250); once the replica is promoted it accepts and delivers
/// there; everything acknowledged before, during and after is delivered.
#[test]
fn failover_to_a_promoted_synchronous_replica_loses_no_acknowledged_message() {
    let primary = Cluster::start();
    let mut db = primary.database();
    let standby = primary.start_standby(true);
    db.url = format!(
        "postgres://relayward@127.0.0.1:{},127.0.0.1:{}/{}?target_session_attrs=read-write",
        primary.port(),
        standby.port(),
        db.name
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind sink");
    let port = listener.local_addr().expect("addr").port();
    let sink = SmtpServer::spawn(listener, Script::default());
    let node = TestServer::start(&node_config(&db, "node-a", port));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let threads = load(node.addr("mx"), &sink_envelope(), 0, 4, &stop, &ledger);
    std::thread::sleep(Duration::from_millis(1000));
    primary.stop_immediately();
    let down = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    let promoting = Instant::now();
    standby.promote();
    std::thread::sleep(Duration::from_millis(2000));
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("load thread");
    }
    let all_delivered = eventually(Duration::from_secs(30), || {
        missing(&ledger.lock().expect("ledger"), &received_tokens(&sink)).is_empty()
    });
    let ledger = ledger.lock().expect("ledger");
    let received = received_tokens(&sink);
    let while_down = ledger
        .replies
        .iter()
        .filter(|(at, code)| {
            *code == 250 && *at > down + Duration::from_millis(500) && *at < promoting
        })
        .count();
    let after = ledger
        .replies
        .iter()
        .filter(|(at, code)| *code == 250 && *at > promoting)
        .count();
    eprintln!(
        "failover test: {} sent, {} acknowledged ({after} after the promotion), refusals {:?}, {} delivered",
        ledger.sent.len(),
        ledger.acked.len(),
        ledger.refused,
        received.len()
    );
    assert_eq!(while_down, 0, "250 while no database accepted writes");
    assert!(
        ledger.refused.get(&451).copied().unwrap_or(0) > 0,
        "the outage never reached a client: {:?}",
        ledger.refused
    );
    assert!(
        after > 0,
        "nothing accepted on the promoted replica:\n{}",
        node.log()
    );
    let lost = missing(&ledger, &received);
    assert!(
        all_delivered && lost.is_empty(),
        "{} acknowledged messages lost: {:?}\n{}",
        lost.len(),
        lost.iter().take(10).collect::<Vec<_>>(),
        node.log()
    );
    wait_queue_empty(&node);
}

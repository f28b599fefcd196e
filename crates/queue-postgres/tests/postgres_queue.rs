//! The PostgreSQL queue against a real server: a throw-away cluster (initdb, pg_ctl on a
//! loopback port) shared by this binary, one database per test; tests that stop the server
//! start a cluster of their own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use relayward_protocol::dsn::{Notify, Orcpt, Ret};
use relayward_protocol::route::NextHop;
use relayward_queue::{
    Claim, Esmtp, MailDsn, MessageId, NewMessage, Origin, Queue, QueueError, RcptDsn,
    RecipientStatus, RecipientUpdate,
};
use relayward_queue_postgres::{PgOptions, PgQueue};
use relayward_testkit::postgres::{Cluster, Database};
use relayward_testkit::queue::by_mx;

fn options(db: &Database, node: &str) -> PgOptions {
    let mut options = PgOptions::new(&db.url, node);
    options.password = Some(relayward_testkit::postgres::PASSWORD.into());
    options.lease_timeout = Duration::from_secs(2);
    options
}

async fn open(db: &Database, node: &str) -> PgQueue {
    PgQueue::open(options(db, node))
        .await
        .unwrap_or_else(|e| panic!("open {node}: {e}"))
}

fn message(token: &str, recipients: &[&str]) -> NewMessage {
    NewMessage {
        sender: "sender@example.test".into(),
        recipients: recipients.iter().map(|r| by_mx(r)).collect(),
        content: format!("Subject: {token}\r\n\r\nToken: {token}\r\n").into_bytes(),
        client_ip: "192.0.2.7".into(),
        auth_login: Some("alice@example.test".into()),
        origin: Origin::Authenticated,
        esmtp: Esmtp::default(),
    }
}

/// SMTPUTF8, `RET=HDRS ENVID=…`, and `NOTIFY=SUCCESS,FAILURE ORCPT=…` on the second recipient.
fn esmtp_options() -> Esmtp {
    Esmtp {
        smtputf8: true,
        dsn: MailDsn {
            ret: Some(Ret::Hdrs),
            envid: Some("env-42".into()),
        },
        recipients: vec![
            RcptDsn::default(),
            RcptDsn {
                notify: Some(Notify {
                    success: true,
                    failure: true,
                    delay: false,
                }),
                orcpt: Some(Orcpt {
                    addr_type: "utf-8".into(),
                    address: "c\u{e9}@z.test".into(),
                }),
            },
        ],
    }
}

fn delivered(address: &str) -> RecipientUpdate {
    RecipientUpdate {
        address: address.into(),
        status: RecipientStatus::Delivered,
        last_error: None,
        next_attempt: 0,
        delay_notified: false,
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_round_trips_with_envelope_routes_and_content() {
    let db = Cluster::shared().database();
    let queue = open(&db, "mx1").await;
    let mut new = message("round-trip", &["b@y.test", "c@z.test"]);
    new.esmtp = esmtp_options();
    let id = queue.enqueue(new).await.expect("enqueue");
    let state = queue.get(&id).await.expect("get");
    assert_eq!(state.sender, "sender@example.test");
    assert_eq!(state.origin, Origin::Authenticated);
    assert_eq!(state.auth_login.as_deref(), Some("alice@example.test"));
    assert_eq!(state.recipients.len(), 2);
    assert_eq!(state.recipients[1].address, "c@z.test");
    assert!(state.options.smtputf8);
    assert_eq!(state.options.dsn, esmtp_options().dsn);
    assert_eq!(state.recipients[0].dsn, RcptDsn::default());
    assert_eq!(state.recipients[1].dsn, esmtp_options().recipients[1]);
    assert_eq!(
        state.recipients[1].route.as_ref().map(|r| &r.next_hop),
        Some(&NextHop::Mx {
            domain: "z.test".into()
        })
    );
    assert!(
        state
            .recipients
            .iter()
            .all(|r| r.status == RecipientStatus::Pending)
    );
    let content = queue.content(&id).await.expect("content");
    assert_eq!(content, message("round-trip", &[]).content);
    assert_eq!(state.size, content.len() as u64);
    let list = queue.list().await.expect("list");
    assert_eq!(list.iter().map(|m| &m.id).collect::<Vec<_>>(), vec![&id]);

    // One recipient delivered, one deferred (a delay notice sent) with an error holding a NUL
    // (text from outside).
    queue
        .update(
            &id,
            vec![
                delivered("b@y.test"),
                RecipientUpdate {
                    address: "c@z.test".into(),
                    status: RecipientStatus::Pending,
                    last_error: Some("451 4.7.1 not\0today".into()),
                    next_attempt: now() + 60,
                    delay_notified: true,
                },
            ],
        )
        .await
        .expect("update");
    let state = queue.get(&id).await.expect("get after update");
    assert_eq!(state.recipients[0].status, RecipientStatus::Delivered);
    assert!(!state.recipients[0].delay_notified);
    assert_eq!(state.recipients[1].attempts, 1);
    assert!(state.recipients[1].delay_notified);
    assert_eq!(
        state.recipients[1].last_error.as_deref(),
        Some("451 4.7.1 not\u{fffd}today")
    );
    // The delay notice is sticky: a later deferral without one does not clear it.
    queue
        .update(
            &id,
            vec![RecipientUpdate {
                address: "c@z.test".into(),
                status: RecipientStatus::Pending,
                last_error: Some("451 4.7.1 still not".into()),
                next_attempt: now() + 60,
                delay_notified: false,
            }],
        )
        .await
        .expect("second deferral");
    let state = queue.get(&id).await.expect("get after the second deferral");
    assert_eq!(state.recipients[1].attempts, 2);
    assert!(state.recipients[1].delay_notified);
    // A late report cannot revive a delivered recipient.
    queue
        .update(
            &id,
            vec![RecipientUpdate {
                address: "b@y.test".into(),
                status: RecipientStatus::Pending,
                last_error: Some("late".into()),
                next_attempt: 1,
                delay_notified: false,
            }],
        )
        .await
        .expect("late update");
    assert_eq!(
        queue.get(&id).await.expect("get").recipients[0].status,
        RecipientStatus::Delivered
    );
    // The last final status removes the message.
    queue
        .update(&id, vec![delivered("c@z.test")])
        .await
        .expect("final");
    assert!(matches!(queue.get(&id).await, Err(QueueError::NotFound(_))));
    assert!(matches!(
        queue.update(&id, vec![delivered("c@z.test")]).await,
        Err(QueueError::NotFound(_))
    ));
    assert!(matches!(
        queue.get(&MessageId("../etc/passwd".into())).await,
        Err(QueueError::NotFound(_))
    ));
    queue.shutdown().await;
}

/// 100 sessions enqueue at once: every one is acknowledged, and they share commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_share_commits() {
    let db = Cluster::shared().database();
    let queue = Arc::new(open(&db, "mx1").await);
    let mut tasks = Vec::new();
    for n in 0..100 {
        let queue = Arc::clone(&queue);
        tasks.push(tokio::spawn(async move {
            queue
                .enqueue(message(&format!("m{n}"), &["b@y.test"]))
                .await
        }));
    }
    for task in tasks {
        task.await.expect("join").expect("enqueue");
    }
    let stats = queue.stats();
    assert_eq!(stats.committed, 100);
    assert!(
        stats.batches < 100,
        "no commit was shared: {} batches for 100 messages",
        stats.batches
    );
    assert_eq!(queue.list().await.expect("list").len(), 100);
    eprintln!("100 enqueues in {} commits", stats.batches);
}

/// Two nodes claim the same due message at the same moment: exactly one gets it; the other
/// hears when the lease ends. After the winner records its result, nothing is left to claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_never_hold_the_same_recipient() {
    let db = Cluster::shared().database();
    let a = open(&db, "mx1").await;
    let b = open(&db, "mx2").await;
    // Accepted by a third node that stops cleanly (giving back the leases its inserts took),
    // so that the messages are due for both and neither knows them from memory.
    let accepting = open(&db, "mx3").await;
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(
            accepting
                .enqueue(message(&format!("c{n}"), &["b@y.test"]))
                .await
                .expect("enqueue"),
        );
    }
    accepting.shutdown().await;
    let t = now();
    let (from_a, from_b) = tokio::join!(a.claim(&ids, t), b.claim(&ids, t));
    let (from_a, from_b) = (from_a.expect("claim a"), from_b.expect("claim b"));
    let taken = |claims: &[Claim]| -> Vec<MessageId> {
        claims
            .iter()
            .filter_map(|c| match c {
                Claim::Taken(m) => Some(m.id.clone()),
                Claim::Later { .. } => None,
            })
            .collect()
    };
    let (ta, tb) = (taken(&from_a), taken(&from_b));
    assert_eq!(ta.len() + tb.len(), 20, "a took {ta:?}, b took {tb:?}");
    assert!(ta.iter().all(|id| !tb.contains(id)), "both took one");
    // Each loser's answer says when to look again: the winner's lease end, or (when the
    // winner had not committed its claim yet as the loser read) the message's own due time;
    // never "never", and never later than the lease.
    for claims in [&from_a, &from_b] {
        for claim in claims {
            if let Claim::Later { at, .. } = claim {
                let at = at.expect("a leased message is due later, not never");
                assert!(at <= t + 5, "look again at {at}, now {t}, lease 2 s");
            }
        }
    }
    for (queue, ids) in [(&a, &ta), (&b, &tb)] {
        for id in ids {
            queue
                .update(id, vec![delivered("b@y.test")])
                .await
                .expect("update");
        }
    }
    assert!(a.list().await.expect("list").is_empty());
    a.shutdown().await;
    b.shutdown().await;
}

/// Another node is claiming one recipient of a two-recipient message at this very moment (its
/// row lock is held, its lease not committed): this node's claim skips that row and takes the
/// other, and the message it gets back does not offer the skipped recipient for delivery now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_another_claim_holds_is_not_delivered_by_this_one() {
    let db = Cluster::shared().database();
    let a = open(&db, "mx1").await;
    // Accepted by a node that stops cleanly, so the rows are unleased and a claims by SQL.
    let accepting = open(&db, "mx3").await;
    let id = accepting
        .enqueue(message("split", &["one@y.test", "two@y.test"]))
        .await
        .expect("enqueue");
    accepting.shutdown().await;

    let mut config: tokio_postgres::Config = db.url.parse().expect("url");
    config.password(relayward_testkit::postgres::PASSWORD);
    let (mut other, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let other_claim = other.transaction().await.expect("begin");
    other_claim
        .execute(
            "SELECT 1 FROM relayward_recipients WHERE message_id = $1 AND address = 'two@y.test' FOR UPDATE",
            &[&id.0],
        )
        .await
        .expect("lock the second recipient");

    let t = now();
    let claims = a.claim(std::slice::from_ref(&id), t).await.expect("claim");
    let Some(Claim::Taken(taken)) = claims.first() else {
        panic!("the first recipient was free to take: {claims:?}");
    };
    let due_now: Vec<&str> = taken
        .recipients
        .iter()
        .filter(|r| !r.status.is_final() && r.next_attempt <= t)
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(due_now, ["one@y.test"], "{:?}", taken.recipients);
    other_claim.rollback().await.expect("rollback");
    a.shutdown().await;
}

/// A node that dies holding leases (no shutdown, no more heartbeats) is taken over after
/// `lease_timeout`: the other node's `changes` reports the message due and its claim wins.
/// While the holder lives, its heartbeat keeps the lease past `lease_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_leases_are_taken_over_after_lease_timeout() {
    let db = Cluster::shared().database();
    let a = open(&db, "mx1").await;
    let b = open(&db, "mx2").await;
    let id = a
        .enqueue(message("takeover", &["b@y.test"]))
        .await
        .expect("enqueue");
    let claims = a
        .claim(std::slice::from_ref(&id), now())
        .await
        .expect("claim");
    assert!(matches!(claims[0], Claim::Taken(_)));

    // Alive: 3 s (longer than the 2 s lease) and b still cannot take it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let claims = b
        .claim(std::slice::from_ref(&id), now())
        .await
        .expect("claim");
    assert!(
        matches!(claims[0], Claim::Later { at: Some(_), .. }),
        "the heartbeat did not keep the lease: {claims:?}"
    );

    // Dead: dropped without shutdown, as by kill -9.
    let died = Instant::now();
    drop(a);
    let due = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let changes = b.changes().await;
            if changes.due.contains(&id) {
                return;
            }
        }
    })
    .await;
    assert!(due.is_ok(), "b never saw the dead node's message due");
    let claims = b
        .claim(std::slice::from_ref(&id), now())
        .await
        .expect("claim");
    assert!(
        matches!(claims[0], Claim::Taken(_)),
        "not taken over: {claims:?}"
    );
    eprintln!("taken over {:?} after the holder died", died.elapsed());
    b.shutdown().await;
}

/// Mail a node accepts is leased to that node by its insert: its own claim and content read
/// are answered from memory (no SQL), and no other node may take it while that node lives.
/// If the node dies before delivering it (no shutdown, no more heartbeats, as by kill -9),
/// another node takes it over once the lease has run out, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_mail_is_leased_to_the_node_that_accepted_it_until_that_node_dies() {
    let db = Cluster::shared().database();
    let a = open(&db, "mx1").await;
    let b = open(&db, "mx2").await;
    let id = a
        .enqueue(message("fresh", &["b@y.test"]))
        .await
        .expect("enqueue");
    let t = now();
    let claims = b
        .claim(std::slice::from_ref(&id), t)
        .await
        .expect("claim b");
    match &claims[..] {
        [Claim::Later { at: Some(at), .. }] => {
            assert!(
                *at >= t && *at <= t + 3,
                "look again at {at}, now {t}, lease 2 s"
            )
        }
        other => panic!("another node took the new mail of a live node: {other:?}"),
    }
    let claims = a
        .claim(std::slice::from_ref(&id), now())
        .await
        .expect("claim a");
    assert!(
        matches!(&claims[..], [Claim::Taken(m)] if m.id == id
            && m.recipients[0].status == RecipientStatus::Pending
            && m.recipients[0].route.is_some()),
        "{claims:?}"
    );
    assert_eq!(
        a.content(&id).await.expect("content"),
        message("fresh", &[]).content
    );
    let stats = a.stats();
    assert_eq!(
        (stats.fresh_claims, stats.fresh_contents),
        (1, 1),
        "claim and content of the new mail from memory"
    );

    let died = Instant::now();
    drop(a);
    let due = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if b.changes().await.due.contains(&id) {
                return;
            }
        }
    })
    .await;
    let waited = died.elapsed();
    assert!(due.is_ok(), "b never saw the dead node's new mail due");
    assert!(
        waited >= Duration::from_secs(1),
        "taken over {waited:?} after the death, before the lease could run out"
    );
    let claims = b
        .claim(std::slice::from_ref(&id), now())
        .await
        .expect("claim b after the death");
    assert!(
        matches!(&claims[..], [Claim::Taken(_)]),
        "not taken over: {claims:?}"
    );
    assert_eq!(
        b.content(&id).await.expect("content from the database"),
        message("fresh", &[]).content
    );
    b.update(&id, vec![delivered("b@y.test")])
        .await
        .expect("update");
    eprintln!("new mail of a dead node taken over {waited:?} after the death");
    b.shutdown().await;
}

/// A message held right after its commit is not delivered from memory: held through the
/// accepting node's own handle it is forgotten at once; held through another handle (another
/// node, `relayward queue`) the claim goes to the database once the moment in which memory
/// answers is over. The accepting node gives back the lease its insert took, so a release
/// makes the message due for every node at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_held_after_its_commit_is_not_claimed_from_memory() {
    let db = Cluster::shared().database();
    let a = open(&db, "mx1").await;
    let b = open(&db, "mx2").await;
    let here = a
        .enqueue(message("held-here", &["b@y.test"]))
        .await
        .expect("enqueue");
    a.set_held(&here, true).await.expect("hold");
    assert_eq!(
        a.claim(std::slice::from_ref(&here), now())
            .await
            .expect("claim"),
        vec![Claim::Later {
            id: here.clone(),
            at: None
        }]
    );

    let there = a
        .enqueue(message("held-there", &["b@y.test"]))
        .await
        .expect("enqueue");
    b.set_held(&there, true).await.expect("hold through b");
    // Memory answers for a quarter of the 2 s lease at most.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        a.claim(std::slice::from_ref(&there), now())
            .await
            .expect("claim"),
        vec![Claim::Later {
            id: there.clone(),
            at: None
        }]
    );
    assert_eq!(a.stats().fresh_claims, 0, "nothing claimed from memory");

    b.set_held(&there, false).await.expect("release through b");
    let claims = b
        .claim(std::slice::from_ref(&there), now())
        .await
        .expect("claim b");
    assert!(
        matches!(&claims[..], [Claim::Taken(_)]),
        "a kept the lease of a held message: {claims:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Fresh mail's content in memory stays within its bound when many messages arrive at once;
/// what did not fit is read from the database, the same octets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_content_in_memory_stays_within_its_bound() {
    let db = Cluster::shared().database();
    let mut bounded = options(&db, "mx1");
    bounded.fresh_content_limit = 8_000;
    let queue = Arc::new(PgQueue::open(bounded).await.expect("open"));
    let body = |n: usize| format!("Subject: m{n}\r\n\r\n{}\r\n", "x".repeat(1000)).into_bytes();
    let mut tasks = Vec::new();
    for n in 0..40 {
        let queue = Arc::clone(&queue);
        let mut new = message(&format!("m{n}"), &["b@y.test"]);
        new.content = body(n);
        tasks.push(tokio::spawn(async move { queue.enqueue(new).await }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.expect("join").expect("enqueue"));
    }
    let held = queue.stats().fresh_content_bytes;
    assert!(
        held > 0 && held <= 8_000,
        "{held} octets of content in memory, bound 8000"
    );
    let contents: Vec<Vec<u8>> = {
        let mut all = Vec::new();
        for id in &ids {
            all.push(queue.content(id).await.expect("content"));
        }
        all
    };
    let mut expected: Vec<Vec<u8>> = (0..40).map(body).collect();
    let mut got = contents;
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "every content, from memory or the database");
    let stats = queue.stats();
    assert!(
        (1..=7).contains(&stats.fresh_contents),
        "{} contents from memory: at most what fits in 8000 octets",
        stats.fresh_contents
    );
    assert_eq!(stats.fresh_content_bytes, 0, "taken contents are dropped");
    queue.shutdown().await;
}

/// Held messages are never claimed; a release makes them due again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_are_not_claimed() {
    let db = Cluster::shared().database();
    let queue = open(&db, "mx1").await;
    let id = queue
        .enqueue(message("held", &["b@y.test"]))
        .await
        .expect("enqueue");
    queue.set_held(&id, true).await.expect("hold");
    let claims = queue
        .claim(std::slice::from_ref(&id), now())
        .await
        .expect("claim");
    assert_eq!(
        claims,
        vec![Claim::Later {
            id: id.clone(),
            at: None
        }]
    );
    queue.set_held(&id, false).await.expect("release");
    let claims = queue
        .claim(std::slice::from_ref(&id), now())
        .await
        .expect("claim");
    assert!(matches!(claims[0], Claim::Taken(_)), "{claims:?}");
    assert!(matches!(
        queue.set_held(&MessageId("0".repeat(24)), true).await,
        Err(QueueError::NotFound(_))
    ));
    queue.delete(&id).await.expect("delete");
    assert!(matches!(
        queue.delete(&id).await,
        Err(QueueError::NotFound(_))
    ));
}

/// A database migrated by a newer relayward is refused with a message that says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused() {
    let cluster = Cluster::shared();
    let db = cluster.database();
    open(&db, "mx1").await.shutdown().await;
    cluster.psql(&db.name, "UPDATE relayward_schema SET version = 99");
    let error = match PgQueue::open(options(&db, "mx1")).await {
        Ok(_) => panic!("a newer schema was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("schema version 99") && error.contains("upgrade this node"),
        "{error}"
    );
}

/// TLS to the database: verified against the configured CA (and refused with another).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_database_is_verified() {
    let db = Cluster::shared().database();
    let mut tls = options(&db, "mx1");
    tls.tls = Some(relayward_tls::verifying(Some(&db.ca_file)).expect("TLS config"));
    let queue = PgQueue::open(tls).await.expect("open over TLS");
    queue
        .enqueue(message("tls", &["b@y.test"]))
        .await
        .expect("enqueue over TLS");
    queue.shutdown().await;

    let mut untrusted = options(&db, "mx1");
    untrusted.tls = Some(relayward_tls::verifying(None).expect("TLS config"));
    let error = match PgQueue::open(untrusted).await {
        Ok(_) => panic!("a certificate from an unknown CA was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("cannot connect"), "{error}");
}

/// The database stops: new mail is `Unavailable` (the session's 451 4.3.0), never accepted;
/// when it is back, mail is accepted again without reopening the queue, and nothing
/// acknowledged before the stop is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_refuses_mail_and_recovers() {
    let cluster = Cluster::start();
    let db = cluster.database();
    let queue = open(&db, "mx1").await;
    let before = queue
        .enqueue(message("before", &["b@y.test"]))
        .await
        .expect("enqueue");
    cluster.stop_immediately();
    let refused = queue.enqueue(message("during", &["b@y.test"])).await;
    assert!(
        matches!(refused, Err(QueueError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(matches!(
        queue.claim(std::slice::from_ref(&before), now()).await,
        Err(QueueError::Unavailable(_))
    ));
    cluster.start_again();
    let mut accepted = None;
    for _ in 0..50 {
        match queue.enqueue(message("after", &["b@y.test"])).await {
            Ok(id) => {
                accepted = Some(id);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let after = accepted.expect("mail accepted again after the database came back");
    let ids: Vec<MessageId> = queue
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, vec![before, after]);
    queue.shutdown().await;
}

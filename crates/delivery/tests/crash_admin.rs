//! Crash safety of the runner (at-least-once) and the queue administration functions on a
//! live queue.

mod support;

use std::time::Duration;

use relayward_delivery::admin::{self, Render, RetryTarget};
use relayward_queue::{Queue, RecipientStatus};
use support::*;
use tokio::sync::oneshot;

#[tokio::test]
async fn a_runner_aborted_mid_transaction_loses_no_recipient() {
    let mx = ip(127, 30, 0, 2);
    // The reply to the final dot comes late: the runner is aborted while waiting for it.
    let script = Script {
        data_delay: Duration::from_millis(1500),
        ..Script::default()
    };
    let srv = start_smtp(sock(mx, 0), script).await;
    let zone = Zone::default()
        .mx("far.test", 10, "mx.far.test")
        .a("mx.far.test", mx);
    let dns = DnsServer::start_on(ip(127, 30, 0, 1), zone).addr;
    let relay = Relay::new();
    let id = relay
        .enqueue(
            "alice@local.test",
            &["bob@far.test", "carol@far.test", "x@local.test"],
            "hi",
        )
        .await;
    let config = relay.config(Some(dns), srv.addr.port());

    let runner = relay.runner(config.clone());
    let (_stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(runner.run(async move {
        let _ = rx.await;
    }));
    let in_data = eventually_async(Duration::from_secs(10), || {
        srv.lines().iter().any(|l| l.starts_with("RCPT TO:<carol"))
    })
    .await;
    assert!(in_data, "runner reached the transaction");
    tokio::time::sleep(Duration::from_millis(300)).await;
    task.abort(); // like kill -9 for this runner: no cleanup code runs
    let _ = task.await;

    let state = relay
        .queue
        .get(&id)
        .await
        .expect("message must still be queued");
    for address in ["bob@far.test", "carol@far.test"] {
        let r = state
            .recipients
            .iter()
            .find(|r| r.address == address)
            .expect("recipient kept");
        assert_eq!(
            r.status,
            RecipientStatus::Pending,
            "{address} not lost, not marked done"
        );
    }

    // A new runner (after the "restart") delivers them: at least once.
    let runner = relay.runner(config);
    runner.run_once().await;
    assert!(
        relay.queue.list().await.expect("list").is_empty(),
        "all delivered now"
    );
    let delivered: Vec<String> = srv.messages().into_iter().flat_map(|m| m.rcpts).collect();
    assert!(delivered.contains(&"bob@far.test".to_string()));
    assert!(delivered.contains(&"carol@far.test".to_string()));
    assert!(!relay.maildir("local.test", "x").is_empty());
}

#[tokio::test]
async fn admin_functions_on_a_live_queue() {
    let mx = ip(127, 31, 0, 2);
    let srv = start_smtp(
        sock(mx, 0),
        Script::default().rcpt_reply("451 4.7.1 greylisted"),
    )
    .await;
    let zone = Zone::default()
        .mx("far.test", 10, "mx.far.test")
        .a("mx.far.test", mx);
    let dns = DnsServer::start_on(ip(127, 31, 0, 1), zone).addr;
    let relay = Relay::new();
    let first = relay
        .enqueue("alice@local.test", &["bob@far.test"], "one")
        .await;
    let second = relay
        .enqueue("alice@local.test", &["carol@far.test"], "two")
        .await;
    let mut config = relay.config(Some(dns), srv.addr.port());
    config.retry = relayward_delivery::RetrySchedule::new(vec![Duration::from_secs(3600)], 0.0);
    let runner = relay.runner(config);
    runner.run_once().await;
    let queue: &dyn Queue = relay.queue.as_ref();

    // list: JSON array with the documented fields.
    let list = admin::list(queue).await.expect("list");
    let json: serde_json::Value = serde_json::from_str(&list.json()).expect("json");
    let rows = json.as_array().expect("array");
    assert_eq!(rows.len(), 2);
    let row = &rows[0];
    for key in [
        "id",
        "arrived",
        "age_seconds",
        "sender",
        "size",
        "held",
        "recipients",
        "next_attempt",
        "last_error",
    ] {
        assert!(row.get(key).is_some(), "list row lacks {key}: {row}");
    }
    assert_eq!(row["id"], first.0.as_str());
    assert_eq!(row["sender"], "alice@local.test");
    assert_eq!(row["recipients"][0]["status"], "pending");
    assert_eq!(row["recipients"][0]["attempts"], 1);
    assert!(
        row["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("451 4.7.1 greylisted")
    );
    assert!(
        row["next_attempt"].as_u64().unwrap_or(0) > relayward_delivery::runner::unix_now() + 3000
    );
    let table = list.table();
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains("bob@far.test") && table.contains("greylisted"));

    // show: envelope, recipients, headers.
    let detail = admin::show(queue, &first).await.expect("show");
    let json: serde_json::Value = serde_json::from_str(&detail.json()).expect("json");
    assert_eq!(json["client_ip"], "127.0.0.1");
    assert!(json["auth_login"].is_null());
    let headers = json["headers"].as_array().expect("headers");
    assert!(
        headers
            .iter()
            .any(|h| h["name"] == "Subject" && h["value"] == "test message")
    );
    assert!(detail.table().contains("Subject: test message"));

    // hold: the runner skips it even when due; release + retry: picked again.
    let report = admin::hold(queue, &second).await.expect("hold");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&report.json()).expect("json"),
        serde_json::json!({"action": "hold", "ids": [second.0.clone()]})
    );
    let retried = admin::retry(queue, RetryTarget::All).await.expect("retry");
    assert_eq!(
        retried.ids,
        vec![first.clone()],
        "held messages are not retried by --all"
    );
    let rcpts = |srv: &SmtpServer| srv.lines().iter().filter(|l| l.starts_with("RCPT")).count();
    let before = rcpts(&srv);
    runner.run_once().await;
    assert_eq!(rcpts(&srv), before + 1, "only the retried one was tried");
    let held = relay.queue.get(&second).await.expect("second");
    assert!(held.held);
    assert_eq!(held.recipients[0].attempts, 1, "held message untouched");

    admin::release(queue, &second).await.expect("release");
    admin::retry(queue, RetryTarget::One(second.clone()))
        .await
        .expect("retry one");
    let after = relay.queue.get(&second).await.expect("second");
    assert!(!after.held);
    assert!(after.recipients[0].next_attempt <= relayward_delivery::runner::unix_now());

    // delete: gone, and an unknown id is an error, not a panic.
    let deleted = admin::delete(queue, &first).await.expect("delete");
    assert_eq!(deleted.table(), format!("{first}: deleted\n"));
    assert!(admin::show(queue, &first).await.is_err());
    assert_eq!(admin::list(queue).await.expect("list").0.len(), 1);
}

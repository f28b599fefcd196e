//! Behaviour of the file spool through the `Queue` trait, as the session, runner and CLI use it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use relayward_queue::{
    Changes, MessageId, NewMessage, Queue, QueueError, QueuedMessage, RecipientStatus,
    RecipientUpdate, Spool, SpoolOptions,
};
use relayward_testkit::queue::by_mx;

fn options() -> SpoolOptions {
    SpoolOptions {
        min_free_bytes: 0,
        ..SpoolOptions::default()
    }
}

fn open(dir: &Path) -> Spool {
    match Spool::open(dir, options()) {
        Ok(spool) => spool,
        Err(err) => panic!("open {}: {err}", dir.display()),
    }
}

fn message(recipients: &[&str], body: &str) -> NewMessage {
    NewMessage {
        sender: "alice@sender.test".to_owned(),
        recipients: recipients.iter().map(|r| by_mx(r)).collect(),
        content: format!("Subject: test\r\n\r\n{body}\r\n").into_bytes(),
        client_ip: "192.0.2.7".to_owned(),
        auth_login: Some("alice@sender.test".to_owned()),
        origin: relayward_queue::Origin::Authenticated,
        esmtp: Default::default(),
    }
}

fn pending(address: &str, error: &str, next_attempt: u64) -> RecipientUpdate {
    RecipientUpdate {
        address: address.to_owned(),
        status: RecipientStatus::Pending,
        last_error: Some(error.to_owned()),
        next_attempt,
        delay_notified: false,
    }
}

fn final_update(address: &str, status: RecipientStatus) -> RecipientUpdate {
    RecipientUpdate {
        address: address.to_owned(),
        status,
        last_error: None,
        next_attempt: 0,
        delay_notified: false,
    }
}

/// The files in `msg/` but free preallocated ones (`slot-*.new` holding zeros only), which a
/// spool keeps ready for messages to come.
fn queued_in(msg: &Path) -> Vec<String> {
    files_in(msg)
        .into_iter()
        .filter(|name| {
            let free = name.starts_with("slot-")
                && std::fs::read(msg.join(name)).is_ok_and(|b| b.iter().all(|&x| x == 0));
            !free
        })
        .collect()
}

/// The drafts in `tmp/`: its files but the preallocated ones the spool's background thread is
/// making there at that moment (`slot-*.new`, renamed into `msg/` when locked and written).
fn drafts_in(tmp: &Path) -> Vec<String> {
    files_in(tmp)
        .into_iter()
        .filter(|name| !name.starts_with("slot-"))
        .collect()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn enqueue_then_list_get_content_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let new = message(&["bob@example.test", "carol@example.test"], "hello");
    let id = spool.enqueue(new.clone()).await.unwrap();
    assert!(id.is_valid(), "{id}");

    let listed = spool.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    let got = spool.get(&id).await.unwrap();
    assert_eq!(listed[0], got);
    assert_eq!(got.id, id);
    assert_eq!(got.sender, new.sender);
    assert_eq!(got.client_ip, new.client_ip);
    assert_eq!(got.auth_login, new.auth_login);
    assert_eq!(got.origin, new.origin);
    assert_eq!(got.size, new.content.len() as u64);
    assert!(!got.held);
    let addresses: Vec<&str> = got.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(addresses, ["bob@example.test", "carol@example.test"]);
    assert!(
        got.recipients
            .iter()
            .all(|r| r.status == RecipientStatus::Pending && r.attempts == 0)
    );
    assert_eq!(spool.content(&id).await.unwrap(), new.content);
    assert!(drafts_in(&dir.path().join("tmp")).is_empty());
}

#[tokio::test]
async fn list_is_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            spool
                .enqueue(message(&["bob@example.test"], &n.to_string()))
                .await
                .unwrap(),
        );
    }
    let listed: Vec<MessageId> = spool
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(listed, ids);
}

#[tokio::test]
async fn updates_are_recorded_and_final_recipients_remove_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let id = spool
        .enqueue(message(&["bob@example.test", "carol@example.test"], "x"))
        .await
        .unwrap();

    let updates = vec![
        final_update("bob@example.test", RecipientStatus::Delivered),
        pending("carol@example.test", "451 4.7.1 try later", 4_000_000_000),
    ];
    spool.update(&id, updates).await.unwrap();
    let state = spool.get(&id).await.unwrap();
    assert_eq!(state.recipients[0].status, RecipientStatus::Delivered);
    assert_eq!(state.recipients[1].status, RecipientStatus::Pending);
    assert_eq!(state.recipients[1].attempts, 1);
    assert_eq!(state.recipients[1].next_attempt, 4_000_000_000);
    assert_eq!(
        state.recipients[1].last_error.as_deref(),
        Some("451 4.7.1 try later")
    );

    // A late report cannot revive a delivered recipient.
    spool
        .update(&id, vec![pending("bob@example.test", "421", 1)])
        .await
        .unwrap();
    assert_eq!(
        spool.get(&id).await.unwrap().recipients[0].status,
        RecipientStatus::Delivered
    );

    spool
        .update(
            &id,
            vec![final_update("carol@example.test", RecipientStatus::Bounced)],
        )
        .await
        .unwrap();
    assert!(matches!(spool.get(&id).await, Err(QueueError::NotFound(_))));
    assert!(matches!(
        spool.content(&id).await,
        Err(QueueError::NotFound(_))
    ));
    assert!(spool.list().await.unwrap().is_empty());
    assert!(
        queued_in(&dir.path().join("msg")).is_empty(),
        "content or state left behind"
    );
}

/// A recipient's delay notice is recorded once and stays recorded: a later update without it,
/// and reopening the spool, keep it, so the runner never sends a second one.
#[tokio::test]
async fn a_delay_notice_once_recorded_stays_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let id = spool
        .enqueue(message(&["bob@example.test", "carol@example.test"], "x"))
        .await
        .unwrap();
    let mut notified = pending("bob@example.test", "451 4.7.1 try later", 4_000_000_000);
    notified.delay_notified = true;
    spool
        .update(
            &id,
            vec![
                notified,
                pending("carol@example.test", "451 4.7.1 try later", 4_000_000_000),
            ],
        )
        .await
        .unwrap();
    spool
        .update(
            &id,
            vec![pending(
                "bob@example.test",
                "451 4.7.1 again",
                4_000_000_100,
            )],
        )
        .await
        .unwrap();
    drop(spool);
    let state = open(dir.path()).get(&id).await.unwrap();
    assert!(
        state.recipients[0].delay_notified,
        "{:?}",
        state.recipients[0]
    );
    assert_eq!(state.recipients[0].attempts, 2);
    assert!(
        !state.recipients[1].delay_notified,
        "{:?}",
        state.recipients[1]
    );
}

#[tokio::test]
async fn hold_release_retry_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let id = spool
        .enqueue(message(&["bob@example.test"], "x"))
        .await
        .unwrap();
    spool
        .update(
            &id,
            vec![pending("bob@example.test", "451 later", 4_000_000_000)],
        )
        .await
        .unwrap();

    spool.set_held(&id, true).await.unwrap();
    assert!(spool.get(&id).await.unwrap().held);
    spool.set_held(&id, false).await.unwrap();
    assert!(!spool.get(&id).await.unwrap().held);

    let before = now();
    spool.retry_now(&id).await.unwrap();
    let state = spool.get(&id).await.unwrap();
    assert!(
        state.recipients[0].next_attempt >= before && state.recipients[0].next_attempt <= now()
    );
    assert_eq!(
        state.recipients[0].attempts, 1,
        "retry_now is not an attempt"
    );

    spool.delete(&id).await.unwrap();
    assert!(matches!(spool.get(&id).await, Err(QueueError::NotFound(_))));
    assert!(matches!(
        spool.delete(&id).await,
        Err(QueueError::NotFound(_))
    ));
    assert!(matches!(
        spool.set_held(&id, true).await,
        Err(QueueError::NotFound(_))
    ));
    assert!(matches!(
        spool.retry_now(&id).await,
        Err(QueueError::NotFound(_))
    ));
    assert!(matches!(
        spool.update(&id, vec![]).await,
        Err(QueueError::NotFound(_))
    ));
    assert!(queued_in(&dir.path().join("msg")).is_empty());
}

#[tokio::test]
async fn changes_name_enqueued_messages_and_ask_for_a_rescan_after_admin_changes() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(open(dir.path()));
    let first = spool
        .enqueue(message(&["bob@example.test"], "1"))
        .await
        .unwrap();
    let second = spool
        .enqueue(message(&["bob@example.test"], "2"))
        .await
        .unwrap();
    // Buffered between calls: both ids, in order, and nothing else.
    let changes = next_changes(&spool).await;
    assert_eq!(changes.enqueued, [first.clone(), second]);
    assert!(!changes.rescan);

    let waiter = {
        let spool = Arc::clone(&spool);
        tokio::spawn(async move { next_changes(&spool).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    spool.retry_now(&first).await.unwrap();
    let changes = waiter.await.unwrap();
    assert!(
        changes.rescan,
        "an admin change asks for a rescan: {changes:?}"
    );
    assert!(changes.enqueued.is_empty());
}

/// The CLI is another process with its own `Spool`: its admin changes reach the server's
/// `changes` through the marker file, without the server listing the queue.
#[tokio::test]
async fn another_processs_admin_change_reaches_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(open(dir.path()));
    let id = server
        .enqueue(message(&["bob@example.test"], "x"))
        .await
        .unwrap();
    assert_eq!(
        next_changes(&server).await.enqueued,
        std::slice::from_ref(&id)
    );
    let cli = open(dir.path());
    cli.set_held(&id, true).await.unwrap();
    let changes = next_changes(&server).await;
    assert!(changes.rescan, "{changes:?}");
}

async fn next_changes(spool: &Spool) -> Changes {
    tokio::time::timeout(Duration::from_secs(5), spool.changes())
        .await
        .expect("changes() did not report")
}

#[tokio::test]
async fn ids_from_outside_cannot_reach_other_paths() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("queue");
    let spool = open(&spool_dir);
    // A file a traversal through msg/ would reach: <dir>/secret.{json,eml}.
    let evil = MessageId("../../secret".to_owned());
    let fake = serde_json::json!({
        "id": "../../secret", "sender": "", "recipients": [{"address": "x@y.test",
        "status": "pending", "attempts": 0, "last_error": null, "next_attempt": 0}],
        "arrived": 0, "client_ip": "", "auth_login": null, "size": 3, "held": false
    });
    std::fs::write(dir.path().join("secret.json"), fake.to_string()).unwrap();
    std::fs::write(dir.path().join("secret.eml"), b"abc").unwrap();

    assert!(matches!(
        spool.get(&evil).await,
        Err(QueueError::NotFound(_))
    ));
    assert!(matches!(
        spool.content(&evil).await,
        Err(QueueError::NotFound(_))
    ));
    assert!(matches!(
        spool.delete(&evil).await,
        Err(QueueError::NotFound(_))
    ));
    assert!(matches!(
        spool.set_held(&evil, true).await,
        Err(QueueError::NotFound(_))
    ));
    assert!(
        dir.path().join("secret.eml").exists(),
        "delete followed a traversal"
    );
    assert!(MessageId::parse("../../secret").is_err());
    assert!(MessageId::parse("0123456789abcdef01234567").is_ok());
}

#[tokio::test]
async fn a_message_without_recipients_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    assert!(spool.enqueue(message(&[], "x")).await.is_err());
    assert!(spool.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn open_recovers_temp_files_orphans_and_corrupt_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (good, bad, bad_state) = {
        let spool = open(dir.path());
        let good = spool
            .enqueue(message(&["bob@example.test"], "good"))
            .await
            .unwrap();
        let bad = spool
            .enqueue(message(&["bob@example.test"], "bad"))
            .await
            .unwrap();
        let bad_state = spool
            .enqueue(message(&["bob@example.test"], "state"))
            .await
            .unwrap();
        spool
            .update(&bad, vec![pending("bob@example.test", "451", 9)])
            .await
            .unwrap();
        spool
            .update(&bad_state, vec![pending("bob@example.test", "451", 9)])
            .await
            .unwrap();
        (good, bad, bad_state)
    };
    let msg = dir.path().join("msg");
    // A message file cut short (inside its content, not just a preallocated file's trailing
    // zeros): quarantined with its state.
    let bad_file = msg.join(format!("{bad}.eml"));
    let bytes = std::fs::read(&bad_file).unwrap();
    let content_end = bytes.windows(5).rposition(|w| w == b"bad\r\n").unwrap() + 5;
    std::fs::write(&bad_file, &bytes[..content_end - 2]).unwrap();
    // A damaged state file: only it goes; the message falls back to its header.
    std::fs::write(msg.join(format!("{bad_state}.json")), b"{ not json").unwrap();
    // A state without its message (a removal cut short): removed.
    std::fs::write(msg.join("0000000000000100000000aa.json"), b"{}").unwrap();
    // A message file without a header, and a stray name: quarantined.
    std::fs::write(msg.join("0000000000000200000000bb.eml"), b"Subject: x\r\n").unwrap();
    std::fs::write(msg.join("junk.txt"), b"?").unwrap();
    // A write that was never committed: removed.
    std::fs::write(
        dir.path().join("tmp").join("0000000000000300000000cc.eml"),
        b"half",
    )
    .unwrap();

    let spool = open(dir.path());
    let report = spool.recovery_report().cloned().unwrap();
    assert_eq!(report.messages, 2, "{report:?}");
    assert_eq!(report.temp_removed, 1);
    assert_eq!(report.orphans_removed, 1);
    let mut quarantined = report.quarantined.clone();
    quarantined.sort();
    let mut expected = vec![
        format!("{bad}.eml"),
        format!("{bad}.json"),
        format!("{bad_state}.json"),
        "0000000000000200000000bb.eml".to_owned(),
        "junk.txt".to_owned(),
    ];
    expected.sort();
    assert_eq!(quarantined, expected);
    assert_eq!(files_in(&dir.path().join("corrupt")), expected);
    assert_eq!(
        queued_in(&msg),
        [format!("{good}.eml"), format!("{bad_state}.eml")]
    );
    assert!(drafts_in(&dir.path().join("tmp")).is_empty());

    let listed: Vec<MessageId> = spool
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(listed, [good.clone(), bad_state.clone()]);
    let fallback = spool.get(&bad_state).await.unwrap();
    assert_eq!(fallback.recipients[0].attempts, 0, "header state expected");
    assert_eq!(
        spool.content(&good).await.unwrap(),
        message(&[], "good").content
    );
}

#[tokio::test]
async fn a_second_instance_skips_recovery_and_list_skips_corrupt_entries() {
    let dir = tempfile::tempdir().unwrap();
    let server = open(dir.path());
    let id = server
        .enqueue(message(&["bob@example.test"], "x"))
        .await
        .unwrap();
    let other = "0000000000000300000000cc";
    std::fs::write(
        dir.path().join("msg").join(format!("{other}.json")),
        b"garbage",
    )
    .unwrap();
    std::fs::write(dir.path().join("msg").join(format!("{other}.eml")), b"x").unwrap();
    let in_flight = dir.path().join("tmp").join("0000000000000400000000dd.eml");
    std::fs::write(&in_flight, b"being written by the server").unwrap();

    let cli = open(dir.path());
    assert!(
        cli.recovery_report().is_none(),
        "recovered while another instance was open"
    );
    assert!(in_flight.exists(), "removed another process's temp file");
    let listed = cli.list().await.unwrap();
    assert_eq!(listed.iter().map(|m| &m.id).collect::<Vec<_>>(), [&id]);
    assert!(matches!(
        cli.get(&MessageId(other.to_owned())).await,
        Err(QueueError::Corrupt { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_interleaving_updates_lose_nothing() {
    const WRITERS: usize = 8;
    const ROUNDS: u32 = 20;
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(open(dir.path()));
    let cli = Arc::new(open(dir.path()));
    let recipients: Vec<String> = (0..WRITERS).map(|n| format!("r{n}@example.test")).collect();
    let refs: Vec<&str> = recipients.iter().map(String::as_str).collect();
    let id = server.enqueue(message(&refs, "x")).await.unwrap();

    let mut tasks = Vec::new();
    for (n, address) in recipients.iter().enumerate() {
        let spool = Arc::clone(if n % 2 == 0 { &server } else { &cli });
        let (id, address) = (id.clone(), address.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                let update = pending(&address, &format!("451 round {round}"), 4_000_000_000);
                spool.update(&id, vec![update]).await.unwrap();
                spool.set_held(&id, round % 2 == 0).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let state: QueuedMessage = cli.get(&id).await.unwrap();
    for recipient in &state.recipients {
        assert_eq!(recipient.attempts, ROUNDS, "lost an update: {recipient:?}");
        assert_eq!(
            recipient.last_error.as_deref(),
            Some(format!("451 round {}", ROUNDS - 1).as_str())
        );
    }
    assert!(!state.held);
}

/// One session, one message at a time — what a single client waits for: each commit is one
/// flush. The first, before any preallocated file is ready, is one `syncfs` (content and new
/// name together); after that a small message committed alone is written over a preallocated
/// file's zeros and `fdatasync`ed — data only, no `syncfs`, no directory fsync — and reads
/// back exactly.
#[tokio::test]
async fn a_commit_is_one_flush() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    enqueue_first_then_wait_for_slots(&spool).await;
    let first = spool.stats();
    assert_eq!(
        (
            first.batches,
            first.fs_syncs,
            first.dir_fsyncs,
            first.message_syncs
        ),
        (1, 1, 0, 0),
        "{first:?}"
    );
    let mut ids = Vec::new();
    for n in 0..3 {
        let id = spool
            .enqueue(message(&["bob@example.test"], &n.to_string()))
            .await
            .unwrap();
        ids.push(id);
    }
    let stats = spool.stats();
    assert_eq!(
        (
            stats.batches,
            stats.fs_syncs,
            stats.dir_fsyncs,
            stats.message_syncs
        ),
        (1, 1, 0, 3),
        "{stats:?}"
    );
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(
            spool.content(id).await.unwrap(),
            message(&[], &n.to_string()).content
        );
    }
}

/// The first message of a spool asks for preallocated files (and takes `tmp/` meanwhile);
/// returns once they are ready.
async fn enqueue_first_then_wait_for_slots(spool: &Spool) -> MessageId {
    let first = spool
        .enqueue(message(&["bob@example.test"], "first"))
        .await
        .unwrap();
    wait_for_slots(spool).await;
    first
}

/// A message larger than a preallocated file takes the `syncfs` commit even when it is
/// alone: its flush would commit the journal for the file's growth anyway.
#[tokio::test]
async fn a_large_message_alone_takes_the_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    enqueue_first_then_wait_for_slots(&spool).await;
    let large = "x".repeat(8 * 1024);
    let id = spool
        .enqueue(message(&["bob@example.test"], &large))
        .await
        .unwrap();
    let stats = spool.stats();
    assert_eq!((stats.fs_syncs, stats.message_syncs), (2, 0), "{stats:?}");
    assert_eq!(
        spool.content(&id).await.unwrap(),
        message(&[], &large).content
    );
}

/// What a power loss during a commit's one flush can leave (the name and header on disk, the
/// content's blocks not — read back as zeros): the message was never acknowledged, and its
/// content is refused as corrupt (the runner then moves it aside) instead of being delivered.
#[tokio::test]
async fn content_a_crash_left_unwritten_is_corrupt_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let (torn, whole) = {
        let spool = open(dir.path());
        let torn = spool
            .enqueue(message(&["bob@example.test"], "lost in the crash"))
            .await
            .unwrap();
        let whole = spool
            .enqueue(message(&["bob@example.test"], "made it"))
            .await
            .unwrap();
        (torn, whole)
    };
    let file = dir.path().join("msg").join(format!("{torn}.eml"));
    let mut bytes = std::fs::read(&file).unwrap();
    let header_end = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    bytes[header_end..].fill(0);
    std::fs::write(&file, &bytes).unwrap();

    let spool = open(dir.path());
    let result = spool.content(&torn).await;
    assert!(
        matches!(&result, Err(QueueError::Corrupt { reason, .. }) if reason.contains("checksum")),
        "{result:?}"
    );
    assert_eq!(
        spool.content(&whole).await.unwrap(),
        message(&[], "made it").content
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_enqueues_share_flushes() {
    const MESSAGES: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(open(dir.path()));
    let tasks: Vec<_> = (0..MESSAGES)
        .map(|n| {
            let spool = Arc::clone(&spool);
            tokio::spawn(async move {
                spool
                    .enqueue(message(&["bob@example.test"], &n.to_string()))
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let stats = spool.stats();
    assert_eq!(stats.committed, MESSAGES as u64);
    assert!(
        stats.batches < MESSAGES as u64,
        "no group commit: {stats:?}"
    );
    // One syncfs per batch covers the content and the names of every message in it; no
    // directory is flushed, and a message file only when its commit was alone.
    assert_eq!(
        (stats.fs_syncs, stats.dir_fsyncs),
        (stats.batches, 0),
        "{stats:?}"
    );
    assert!(
        stats.batches + stats.message_syncs < MESSAGES as u64,
        "no group commit: {stats:?}"
    );
    assert_eq!(spool.list().await.unwrap().len(), MESSAGES);
}

/// `CommitMode::EachFile` (for a spool on a busy shared filesystem) flushes each message's
/// file and never the whole filesystem.
#[tokio::test]
async fn each_file_mode_flushes_files_not_the_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(
        dir.path(),
        SpoolOptions {
            commit: relayward_queue::CommitMode::EachFile,
            ..options()
        },
    )
    .unwrap();
    for n in 0..3 {
        let id = spool
            .enqueue(message(&["bob@example.test"], &n.to_string()))
            .await
            .unwrap();
        assert!(spool.content(&id).await.is_ok());
    }
    let stats = spool.stats();
    assert_eq!((stats.message_syncs, stats.fs_syncs), (3, 0), "{stats:?}");
}

fn each_file_options() -> SpoolOptions {
    SpoolOptions {
        commit: relayward_queue::CommitMode::EachFile,
        ..options()
    }
}

/// Names in `msg/` of the preallocated files.
fn slots_in(dir: &Path) -> Vec<String> {
    files_in(&dir.join("msg"))
        .into_iter()
        .filter(|name| name.starts_with("slot-"))
        .collect()
}

/// Waits (bounded) until the spool has preallocated files ready.
async fn wait_for_slots(spool: &Spool) {
    for _ in 0..100 {
        if spool.stats().preallocated >= 3 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no preallocated queue files after 2 s");
}

/// With per-file commits a message is written into a preallocated file whose name is durable
/// already: one flush (its fdatasync) and no directory fsync, no hand-over to the committer.
#[tokio::test]
async fn a_per_file_commit_is_one_flush_into_a_preallocated_file() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), each_file_options()).unwrap();
    // The first message asks for the pool (and takes the tmp/ path meanwhile).
    spool
        .enqueue(message(&["bob@example.test"], "first"))
        .await
        .unwrap();
    wait_for_slots(&spool).await;
    let before = spool.stats();
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            spool
                .enqueue(message(&["bob@example.test"], &n.to_string()))
                .await
                .unwrap(),
        );
    }
    let after = spool.stats();
    assert_eq!(
        (
            after.message_syncs - before.message_syncs,
            after.batches - before.batches,
            after.dir_fsyncs - before.dir_fsyncs,
            after.committed - before.committed,
        ),
        (3, 0, 0, 3),
        "{before:?} -> {after:?}"
    );
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(
            spool.content(id).await.unwrap(),
            message(&[], &n.to_string()).content
        );
        assert!(dir.path().join("msg").join(format!("{id}.eml")).exists());
    }
    assert_eq!(spool.list().await.unwrap().len(), 4, "slots are not listed");
    drop(spool);
    assert!(slots_in(dir.path()).is_empty(), "free slots left at close");
}

/// What a crash leaves in `msg/` under per-file commits, and what recovery makes of it: a
/// message whose rename to its id never reached the disk (still under its slot's name) is
/// named and kept; a free slot and one whose header was never finished (never acknowledged)
/// go; one with a finished header whose content does not match it is quarantined. The kept
/// one was written into a preallocated file of zeros, so its content is followed by the rest
/// of them, which recovery and readers take for what they are.
#[tokio::test]
async fn recovery_names_complete_slots_and_removes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let msg = dir.path().join("msg");
    let (first, kept, torn) = {
        let spool = Spool::open(dir.path(), each_file_options()).unwrap();
        let first = enqueue_first_then_wait_for_slots(&spool).await;
        let kept = spool
            .enqueue(message(&["bob@example.test"], "kept"))
            .await
            .unwrap();
        let torn = spool
            .enqueue(message(&["bob@example.test"], "torn"))
            .await
            .unwrap();
        (first, kept, torn)
    };
    let kept_len = std::fs::metadata(msg.join(format!("{kept}.eml")))
        .unwrap()
        .len();
    assert_eq!(kept_len, 4096, "written into a preallocated file of zeros");
    std::fs::rename(
        msg.join(format!("{kept}.eml")),
        msg.join("slot-00000000000000aa.new"),
    )
    .unwrap();
    let mut bytes = std::fs::read(msg.join(format!("{torn}.eml"))).unwrap();
    let header_end = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    bytes[header_end..].fill(0);
    std::fs::remove_file(msg.join(format!("{torn}.eml"))).unwrap();
    std::fs::write(msg.join("slot-00000000000000bb.new"), &bytes).unwrap();
    std::fs::write(msg.join("slot-00000000000000cc.new"), b"").unwrap();
    std::fs::write(msg.join("slot-00000000000000ee.new"), vec![0; 4096]).unwrap();
    std::fs::write(
        msg.join("slot-00000000000000dd.new"),
        b"relayward-queue-v1 {\"id\":",
    )
    .unwrap();

    let spool = Spool::open(dir.path(), each_file_options()).unwrap();
    let report = spool.recovery_report().cloned().unwrap();
    assert_eq!((report.messages, report.temp_removed), (2, 3), "{report:?}");
    assert_eq!(
        report.quarantined,
        ["slot-00000000000000bb.new"],
        "{report:?}"
    );
    let mut expected = vec![format!("{first}.eml"), format!("{kept}.eml")];
    expected.sort();
    assert_eq!(queued_in(&msg), expected);
    assert_eq!(
        spool.content(&kept).await.unwrap(),
        message(&[], "kept").content
    );
}

/// A slot left by a process that died is settled even when recovery does not run (another
/// process holds the spool, as `relayward queue` may while the server starts): the message
/// it holds is named and listed; the slots of the living process, which it holds locked, are
/// left alone.
#[tokio::test]
async fn a_slot_left_by_a_dead_process_is_settled_while_another_holds_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let msg = dir.path().join("msg");
    let lost = {
        let spool = Spool::open(dir.path(), each_file_options()).unwrap();
        spool
            .enqueue(message(&["bob@example.test"], "lost"))
            .await
            .unwrap()
    };
    // The living process, holding slots of its own.
    let living = Spool::open(dir.path(), each_file_options()).unwrap();
    assert!(living.recovery_report().is_some());
    living
        .enqueue(message(&["bob@example.test"], "x"))
        .await
        .unwrap();
    wait_for_slots(&living).await;
    // What a process that died in a power loss left: its message back under the slot's name
    // (the rename was lost), and a free slot.
    std::fs::rename(
        msg.join(format!("{lost}.eml")),
        msg.join("slot-00000000000000ee.new"),
    )
    .unwrap();
    std::fs::write(msg.join("slot-00000000000000ff.new"), b"").unwrap();
    let held = slots_in(dir.path()).len() - 2;

    let second = Spool::open(dir.path(), each_file_options()).unwrap();
    assert!(second.recovery_report().is_none(), "the spool is shared");
    assert!(
        second.list().await.unwrap().iter().any(|m| m.id == lost),
        "the lost message is not listed"
    );
    assert_eq!(
        second.content(&lost).await.unwrap(),
        message(&[], "lost").content
    );
    assert_eq!(
        slots_in(dir.path()).len(),
        held,
        "a living process's slot was touched"
    );
}

#[tokio::test]
async fn min_free_bytes_refuses_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(
        dir.path(),
        SpoolOptions {
            min_free_bytes: u64::MAX / 2,
            ..options()
        },
    )
    .unwrap();
    let refused = spool.enqueue(message(&["bob@example.test"], "x")).await;
    assert!(matches!(refused, Err(QueueError::Full)), "{refused:?}");
    assert!(spool.list().await.unwrap().is_empty());
    assert!(drafts_in(&dir.path().join("tmp")).is_empty());

    spool.set_min_free_bytes(1024 * 1024);
    let id = spool
        .enqueue(message(&["bob@example.test"], "x"))
        .await
        .unwrap();
    assert_eq!(spool.list().await.unwrap()[0].id, id);
}

#[tokio::test]
async fn an_unwritable_spool_fails_without_acknowledging() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let tmp = dir.path().join("tmp");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o500)).unwrap();
    // Root ignores directory permissions; only check the error path where they apply.
    let probe = std::fs::write(tmp.join("probe"), b"");
    let result = spool.enqueue(message(&["bob@example.test"], "x")).await;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700)).unwrap();
    if probe.is_err() {
        assert!(matches!(result, Err(QueueError::Io(_))), "{result:?}");
        assert!(spool.list().await.unwrap().is_empty());
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A real ENOSPC. Needs a small filesystem, so it runs only when `RELAYWARD_QUEUE_SMALL_FS`
/// names a directory on one (e.g. `mount -t tmpfs -o size=256k tmpfs /tmp/small`).
#[tokio::test]
async fn a_full_disk_answers_full_and_recovers_when_space_returns() {
    let Some(base) = std::env::var_os("RELAYWARD_QUEUE_SMALL_FS") else {
        return;
    };
    let dir = tempfile::tempdir_in(base).unwrap();
    let spool = open(dir.path());
    let big = |n: usize| NewMessage {
        content: vec![b'x'; 48 * 1024 + n],
        ..message(&["bob@example.test"], "")
    };
    let mut accepted = Vec::new();
    let refusal = loop {
        match spool.enqueue(big(accepted.len())).await {
            Ok(id) => accepted.push(id),
            Err(err) => break err,
        }
        assert!(accepted.len() < 10_000, "the filesystem never filled up");
    };
    assert!(matches!(refusal, QueueError::Full), "{refusal:?}");
    assert!(
        drafts_in(&dir.path().join("tmp")).is_empty(),
        "half-written temp file left"
    );
    let listed = spool.list().await.unwrap();
    assert_eq!(listed.len(), accepted.len());
    for id in &accepted {
        assert_eq!(
            spool.content(id).await.unwrap().len(),
            48 * 1024 + accepted.iter().position(|a| a == id).unwrap()
        );
    }

    spool.delete(&accepted[0]).await.unwrap();
    spool.delete(&accepted[1]).await.unwrap();
    assert!(
        spool.enqueue(big(0)).await.is_ok(),
        "did not recover after space returned"
    );
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(meta) => meta.permissions().mode() & 0o777,
        Err(err) => panic!("{}: {err}", path.display()),
    }
}

/// Queued mail is other people's mail: directories 0700 and files 0600 whatever the umask of
/// the writing process, and a spool left readable by an older version is tightened at open.
#[tokio::test]
async fn queued_mail_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("queue");
    std::fs::create_dir_all(root.join("msg")).expect("mkdir");
    for old in [&root, &root.join("msg")] {
        std::fs::set_permissions(old, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let spool = open(&root);
    let id = spool
        .enqueue(message(&["bob@rcpt.test"], "private"))
        .await
        .expect("enqueue");
    spool
        .update(&id, vec![pending("bob@rcpt.test", "451 later", 0)])
        .await
        .expect("update");
    for sub in ["", "msg", "tmp", "corrupt"] {
        assert_eq!(mode(&root.join(sub)), 0o700, "queue/{sub}");
    }
    for file in ["lock", &format!("msg/{id}.eml"), &format!("msg/{id}.json")] {
        assert_eq!(mode(&root.join(file)), 0o600, "queue/{file}");
    }
}

/// A message written while it arrives: past 64 KiB staged in `tmp/` only, never listed before
/// its commit, byte-identical after it, and its state (size included) right.
#[tokio::test]
async fn a_draft_is_invisible_until_committed_and_then_whole() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let mut envelope = message(&["bob@far.test"], "");
    envelope.content = b"Received: from x\r\n".to_vec();
    let mut draft = spool.begin(envelope).await.unwrap();
    let mut body = Vec::new();
    for i in 0..2000 {
        let piece = format!("line {i:05} {}\r\n", "x".repeat(i % 90)).into_bytes();
        draft.write(&piece).await.unwrap();
        body.extend_from_slice(&piece);
    }
    assert_eq!(spool.list().await.unwrap(), Vec::<QueuedMessage>::new());
    assert_eq!(drafts_in(&dir.path().join("tmp")).len(), 1);
    assert_eq!(draft.read_body().await.unwrap(), body);

    let id = spool.commit(draft).await.unwrap();
    let mut expected = b"Received: from x\r\n".to_vec();
    expected.extend_from_slice(&body);
    assert_eq!(spool.content(&id).await.unwrap(), expected);
    assert_eq!(spool.get(&id).await.unwrap().size, expected.len() as u64);
    assert!(drafts_in(&dir.path().join("tmp")).is_empty());
    // The file reads as a whole message after a restart too (reading checks the size). The
    // old instance's committer thread may still hold the spool for a moment, so this does not
    // count on recovery running.
    drop(spool);
    let spool = open(dir.path());
    assert_eq!(spool.list().await.unwrap().len(), 1);
    assert_eq!(spool.content(&id).await.unwrap(), expected);
}

/// A small message stays in memory until its commit: no file is created for it before (one
/// blocking call at the end instead of one per step), and it is queued whole, signed body
/// included. One write more and it moves to its file.
#[tokio::test]
async fn a_small_draft_touches_the_disk_only_at_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let mut envelope = message(&["bob@far.test"], "");
    envelope.content = b"Received: from x\r\n".to_vec();
    let mut draft = spool.begin(envelope.clone()).await.unwrap();
    draft.write(b"Subject: small\r\n\r\n").await.unwrap();
    draft.write(&[b's'; 2048]).await.unwrap();
    assert!(
        drafts_in(&dir.path().join("tmp")).is_empty(),
        "no file before the commit"
    );
    assert_eq!(draft.read_body().await.unwrap().len(), 18 + 2048);
    draft
        .replace_body(b"Subject: signed\r\n\r\nbody\r\n".to_vec())
        .await
        .unwrap();
    assert_eq!(draft.size(), 18 + 25);
    let id = spool.commit(draft).await.unwrap();
    assert_eq!(
        spool.content(&id).await.unwrap(),
        b"Received: from x\r\nSubject: signed\r\n\r\nbody\r\n"
    );
    assert_eq!(spool.get(&id).await.unwrap().size, 18 + 25);

    // Growing past the limit: the file appears at that write, holding everything so far.
    let mut draft = spool.begin(envelope).await.unwrap();
    draft.write(&[b'a'; 60 * 1024]).await.unwrap();
    assert!(drafts_in(&dir.path().join("tmp")).is_empty());
    draft.write(&[b'b'; 8 * 1024]).await.unwrap();
    assert_eq!(drafts_in(&dir.path().join("tmp")).len(), 1);
    let body = draft.read_body().await.unwrap();
    assert_eq!(body.len(), 68 * 1024);
    assert!(
        body[..60 * 1024].iter().all(|&b| b == b'a')
            && body[60 * 1024..].iter().all(|&b| b == b'b')
    );
    let id = spool.commit(draft).await.unwrap();
    assert_eq!(spool.content(&id).await.unwrap().len(), 18 + 68 * 1024);
}

/// The runner's first read of a small message just committed is served from memory (once):
/// with the file taken away behind the spool's back, the first read still answers, the second
/// goes to the disk and finds nothing. A removal forgets the copy.
#[tokio::test]
async fn the_first_read_of_a_fresh_message_needs_no_disk() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let id = spool
        .enqueue(message(&["bob@far.test"], "fresh"))
        .await
        .unwrap();
    let on_disk = dir.path().join("msg").join(format!("{}.eml", id.0));
    std::fs::remove_file(&on_disk).unwrap();
    assert_eq!(
        spool.content(&id).await.unwrap(),
        b"Subject: test\r\n\r\nfresh\r\n"
    );
    assert!(matches!(
        spool.content(&id).await,
        Err(QueueError::NotFound(_))
    ));

    let id = spool
        .enqueue(message(&["bob@far.test"], "gone"))
        .await
        .unwrap();
    spool.delete(&id).await.unwrap();
    assert!(matches!(
        spool.content(&id).await,
        Err(QueueError::NotFound(_))
    ));
}

/// A delivered message's removal is not flushed (like Postfix: a crash may bring it back, to be
/// delivered once more, never lost); an administrator's delete is.
#[tokio::test]
async fn only_an_admin_delete_flushes_a_removal() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let delivered = spool
        .enqueue(message(&["bob@far.test"], "x"))
        .await
        .unwrap();
    let deleted = spool
        .enqueue(message(&["bob@far.test"], "y"))
        .await
        .unwrap();
    let before = spool.stats().dir_fsyncs;
    spool
        .update(
            &delivered,
            vec![final_update("bob@far.test", RecipientStatus::Delivered)],
        )
        .await
        .unwrap();
    assert!(matches!(
        spool.get(&delivered).await,
        Err(QueueError::NotFound(_))
    ));
    assert_eq!(
        spool.stats().dir_fsyncs,
        before,
        "delivered removal was flushed"
    );
    spool.delete(&deleted).await.unwrap();
    assert_eq!(
        spool.stats().dir_fsyncs,
        before + 1,
        "admin delete was not flushed"
    );
    assert!(queued_in(&dir.path().join("msg")).is_empty());
}

/// A dropped draft (the client went away mid-DATA) leaves no file behind, and a replaced
/// body (the signed form) is what gets queued, shorter or longer.
#[tokio::test]
async fn a_dropped_draft_leaves_nothing_and_a_replaced_body_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let mut draft = spool.begin(message(&["bob@far.test"], "")).await.unwrap();
    draft.write(&vec![b'a'; 1 << 20]).await.unwrap();
    drop(draft);
    assert!(drafts_in(&dir.path().join("tmp")).is_empty());
    assert!(queued_in(&dir.path().join("msg")).is_empty());

    for replacement in [&b"short\r\n"[..], &[b'L'; 100_000][..]] {
        let mut envelope = message(&["bob@far.test"], "");
        envelope.content = b"Received: y\r\n".to_vec();
        let mut draft = spool.begin(envelope).await.unwrap();
        draft.write(&[b'o'; 5000]).await.unwrap();
        draft.replace_body(replacement.to_vec()).await.unwrap();
        let id = spool.commit(draft).await.unwrap();
        let content = spool.content(&id).await.unwrap();
        assert_eq!(&content[..13], b"Received: y\r\n");
        assert_eq!(&content[13..], replacement);
    }
}

/// A draft of one spool cannot be committed by another (it names another directory).
#[tokio::test]
async fn a_draft_is_committed_only_by_its_own_spool() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (first, second) = (open(one.path()), open(two.path()));
    let draft = first.begin(message(&["bob@far.test"], "x")).await.unwrap();
    assert!(second.commit(draft).await.is_err());
    assert!(drafts_in(&one.path().join("tmp")).is_empty());
    assert!(queued_in(&two.path().join("msg")).is_empty());
}

/// Small messages that arrive while another commit is under way are staged on the session's
/// own thread (no blocking-pool hand-off: the committer's syncfs covers them anyway), and
/// every one of them is queued whole: read back from memory first, then from its file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arriving_during_a_commit_skip_the_blocking_pool() {
    const SESSIONS: usize = 32;
    const ROUNDS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(open(dir.path()));
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|session| {
            let spool = Arc::clone(&spool);
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for round in 0..ROUNDS {
                    let body = format!("session {session} round {round}");
                    let id = spool
                        .enqueue(message(&["bob@far.test"], &body))
                        .await
                        .unwrap();
                    ids.push((id, body));
                }
                ids
            })
        })
        .collect();
    let mut sent = Vec::new();
    for session in sessions {
        sent.extend(session.await.unwrap());
    }
    let stats = spool.stats();
    assert_eq!(stats.committed, (SESSIONS * ROUNDS) as u64, "{stats:?}");
    assert!(stats.staged_on_caller > 0, "{stats:?}");
    for (id, body) in &sent {
        let expected = format!("Subject: test\r\n\r\n{body}\r\n").into_bytes();
        // The first read is the copy kept in memory, the second the file.
        assert_eq!(spool.content(id).await.unwrap(), expected, "{id}");
        assert_eq!(spool.content(id).await.unwrap(), expected, "{id}");
    }
    assert!(drafts_in(&dir.path().join("tmp")).is_empty());
}

/// With per-file commits every message flushes its own file, which must never happen on a
/// session's thread: nothing is staged there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_file_commits_never_stage_on_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(dir.path(), each_file_options()).unwrap());
    let tasks: Vec<_> = (0..32)
        .map(|n| {
            let spool = Arc::clone(&spool);
            tokio::spawn(async move {
                spool
                    .enqueue(message(&["bob@far.test"], &n.to_string()))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let stats = spool.stats();
    assert_eq!(
        (stats.committed, stats.staged_on_caller),
        (32, 0),
        "{stats:?}"
    );
}

/// The runner delivers a message it just committed from memory; its result is applied on the
/// runner's thread when the lock is free: a removal at once, a pending state written durably.
#[tokio::test]
async fn results_for_a_message_delivered_from_memory_apply_on_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let retried = spool
        .enqueue(message(&["bob@far.test", "carol@far.test"], "one"))
        .await
        .unwrap();
    let delivered = spool
        .enqueue(message(&["dave@far.test"], "two"))
        .await
        .unwrap();
    for id in [&retried, &delivered] {
        spool.content(id).await.unwrap();
    }
    spool
        .update(
            &retried,
            vec![
                final_update("bob@far.test", RecipientStatus::Delivered),
                pending("carol@far.test", "451 try later", 4_000_000_000),
            ],
        )
        .await
        .unwrap();
    spool
        .update(
            &delivered,
            vec![final_update("dave@far.test", RecipientStatus::Delivered)],
        )
        .await
        .unwrap();
    assert_eq!(spool.stats().updated_on_caller, 2, "{:?}", spool.stats());
    drop(spool);

    let spool = open(dir.path());
    let queued = spool.list().await.unwrap();
    assert_eq!(queued.len(), 1, "{queued:?}");
    let carol = queued[0]
        .recipients
        .iter()
        .find(|r| r.address == "carol@far.test")
        .unwrap();
    assert_eq!(
        (
            carol.status,
            carol.last_error.as_deref(),
            carol.next_attempt
        ),
        (
            RecipientStatus::Pending,
            Some("451 try later"),
            4_000_000_000
        )
    );
    assert!(matches!(
        spool.get(&delivered).await,
        Err(QueueError::NotFound(_))
    ));
}

/// Another process (the queue CLI) holds a fresh message's lock: the runner's update does not
/// take it on its own thread, it waits in a blocking one and then applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_waits_for_a_lock_held_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(open(dir.path()));
    let id = spool
        .enqueue(message(&["bob@far.test"], "locked"))
        .await
        .unwrap();
    spool.content(&id).await.unwrap();
    let held = std::fs::File::open(dir.path().join("msg").join(format!("{}.eml", id.0))).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).unwrap();

    let update = tokio::spawn({
        let spool = Arc::clone(&spool);
        let id = id.clone();
        async move {
            spool
                .update(
                    &id,
                    vec![final_update("bob@far.test", RecipientStatus::Delivered)],
                )
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !update.is_finished(),
        "the update did not wait for the lock"
    );
    drop(held);
    tokio::time::timeout(Duration::from_secs(10), update)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(spool.get(&id).await, Err(QueueError::NotFound(_))));
    assert_eq!(spool.stats().updated_on_caller, 0);
}

/// A message given whole is written with its final size and checksum in one piece: what a
/// later process reads from disk (not the copy kept in memory) checks out against both, for
/// the first message (staged in `tmp/`, before any preallocated file exists), for one
/// written into a preallocated file and for one larger than a preallocated file, under
/// `syncfs` and per-file commits alike.
#[tokio::test]
async fn a_whole_message_reads_back_from_disk_with_its_final_size_and_checksum() {
    for options in [options(), each_file_options()] {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), options.clone()).unwrap();
        let mut sent = Vec::new();
        // The third, larger than a slot: written with placeholders, filled in at the commit.
        for (n, size) in [(0, 3000), (1, 200), (2, 10_000)] {
            let message = message(&["bob@far.test"], &n.to_string().repeat(size));
            let id = spool.enqueue(message.clone()).await.unwrap();
            sent.push((id, message.content));
            wait_for_slots(&spool).await;
        }
        drop(spool);

        let reopened = Spool::open(dir.path(), options).unwrap();
        for (id, content) in sent {
            let file = std::fs::read(dir.path().join("msg").join(format!("{}.eml", id.0))).unwrap();
            let header_end = file.iter().position(|&b| b == b'\n').unwrap();
            let header: serde_json::Value =
                serde_json::from_slice(&file[b"relayward-queue-v1 ".len()..header_end]).unwrap();
            assert_eq!(header["size"], content.len() as u64);
            assert_eq!(
                header["content_crc32"],
                u64::from(crc32fast::hash(&content))
            );
            assert_eq!(reopened.get(&id).await.unwrap().size, content.len() as u64);
            assert_eq!(reopened.content(&id).await.unwrap(), content);
        }
    }
}

/// The removal of a message delivered from memory fails (its file cannot be unlinked): the
/// runner hears an error, the message stays queued — delivered again later rather than lost
/// from sight — and once the file can go, the same result removes it.
#[tokio::test]
async fn a_removal_that_fails_on_the_callers_thread_reports_it_and_keeps_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    let id = spool
        .enqueue(message(&["dave@far.test"], "stuck"))
        .await
        .unwrap();
    spool.content(&id).await.unwrap();
    let file = dir.path().join("msg").join(format!("{}.eml", id.0));
    let clear = relayward_testkit::os::Immutable::set(&file);

    let delivered = || vec![final_update("dave@far.test", RecipientStatus::Delivered)];
    let failed = spool.update(&id, delivered()).await;
    assert!(matches!(failed, Err(QueueError::Io(_))), "{failed:?}");
    assert_eq!(spool.stats().updated_on_caller, 1, "{:?}", spool.stats());
    assert_eq!(spool.get(&id).await.unwrap().id, id);
    assert_eq!(
        spool.list().await.unwrap().len(),
        1,
        "the message is still queued"
    );

    drop(clear);
    spool.update(&id, delivered()).await.unwrap();
    assert!(spool.list().await.unwrap().is_empty());
    assert!(!file.exists());
}

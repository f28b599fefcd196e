//! Crash safety: every enqueue that returned survives SIGKILL, whole.
//!
//! The test re-runs its own binary as a child (selected by an environment variable) that enqueues
//! from several tasks in a loop and prints `ACK <id> <worker> <n>` only after `enqueue` returned.
//! The parent kills it with SIGKILL at a random moment, reopens the spool and checks that every
//! acknowledged id is present with exactly the content and envelope the child derived from
//! `(worker, n)`, that every other queued message is whole too, that recovery found nothing
//! half-written, and that no draft dropped before its commit was ever queued. Half the workers
//! write their messages as drafts in pieces, as a session does while content arrives.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use relayward_queue::Route;
use relayward_queue::{CommitMode, MessageId, NewMessage, Queue, Spool, SpoolOptions};
use relayward_testkit::queue::by_mx;

const CHILD_ENV: &str = "RELAYWARD_QUEUE_CRASH_CHILD";
/// Set to `each-file` for the child to commit each file on its own (into preallocated slots).
const MODE_ENV: &str = "RELAYWARD_QUEUE_CRASH_MODE";
const WORKERS: u64 = 8;
const ROUNDS: usize = 5;

/// The message worker `worker` sends as its `n`-th; sizes vary so writes span several blocks.
fn expected(worker: u64, n: u64) -> NewMessage {
    // Up to 100 KB: drafts beyond 64 KiB go to a file while they arrive.
    let size = 64 + ((worker * 7_919 + n * 104_729) % 100_000) as usize;
    let mut content = format!("Subject: {worker}/{n}\r\n\r\n").into_bytes();
    content.extend((0..size).map(|i| b'a' + ((i as u64 + worker + n) % 26) as u8));
    content.extend_from_slice(b"\r\n");
    NewMessage {
        sender: format!("w{worker}@sender.test"),
        recipients: vec![
            by_mx(&format!("n{n}@example.test")),
            by_mx("x@example.test"),
        ],
        content,
        client_ip: "192.0.2.1".to_owned(),
        auth_login: None,
        origin: relayward_queue::Origin::Stranger,
        esmtp: Default::default(),
    }
}

fn options(commit: CommitMode) -> SpoolOptions {
    SpoolOptions {
        min_free_bytes: 0,
        commit,
        ..SpoolOptions::default()
    }
}

fn mode_name(commit: CommitMode) -> &'static str {
    match commit {
        CommitMode::EachFile => "each-file",
        CommitMode::Filesystem => "syncfs",
    }
}

/// The child's body; a no-op in a normal test run.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let commit = match std::env::var(MODE_ENV).as_deref() {
        Ok("each-file") => CommitMode::EachFile,
        _ => CommitMode::Filesystem,
    };
    runtime.block_on(enqueue_forever(Path::new(&dir), commit));
}

/// The worker whose drafts are never committed (a client that goes away mid-DATA).
const ABANDONING_WORKER: u64 = 99;

/// Even workers enqueue whole messages; odd ones write drafts in pieces, as the session does
/// while content arrives; one more worker begins drafts and drops them half-written.
async fn enqueue_forever(dir: &Path, commit: CommitMode) {
    let spool = Arc::new(Spool::open(dir, options(commit)).unwrap());
    let mut tasks: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let spool = Arc::clone(&spool);
            tokio::spawn(async move {
                for n in 0.. {
                    let id = if worker % 2 == 0 {
                        spool.enqueue(expected(worker, n)).await.unwrap()
                    } else {
                        send_in_pieces(&spool, expected(worker, n)).await
                    };
                    println!("ACK {id} {worker} {n}");
                    let stats = spool.stats();
                    println!("STATS {} {}", stats.batches, stats.committed);
                }
            })
        })
        .collect();
    let abandoning = Arc::clone(&spool);
    tasks.push(tokio::spawn(async move {
        for n in 0.. {
            let mut message = expected(ABANDONING_WORKER, n);
            let content = std::mem::take(&mut message.content);
            let mut draft = abandoning.begin(message).await.unwrap();
            draft.write(&content[..content.len() / 2]).await.unwrap();
            drop(draft);
        }
    }));
    for task in tasks {
        task.await.unwrap();
    }
}

/// A message written as a draft in three pieces, then committed.
async fn send_in_pieces(spool: &Spool, mut message: NewMessage) -> MessageId {
    let content = std::mem::take(&mut message.content);
    let mut draft = spool.begin(message).await.unwrap();
    let third = content.len() / 3;
    for piece in [
        &content[..third],
        &content[third..2 * third],
        &content[2 * third..],
    ] {
        draft.write(piece).await.unwrap();
        tokio::task::yield_now().await;
    }
    spool.commit(draft).await.unwrap()
}

/// One acknowledged message as the child reported it.
struct Ack {
    id: MessageId,
    worker: u64,
    n: u64,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut parts = line.strip_prefix("ACK ")?.split(' ');
    let id = MessageId::parse(parts.next()?).ok()?;
    let worker = parts.next()?.parse().ok()?;
    let n = parts.next()?.parse().ok()?;
    Some(Ack { id, worker, n })
}

/// Runs the child until a random moment after its first acknowledgement, kills it, returns acks.
/// `(batches, committed)` of the child's spool as it last printed them.
fn parse_stats(line: &str) -> Option<(u64, u64)> {
    let mut parts = line.strip_prefix("STATS ")?.split(' ');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn run_and_kill(dir: &Path, commit: CommitMode) -> (Vec<Ack>, Option<(u64, u64)>) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env(MODE_ENV, mode_name(commit))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // Wait for the first acknowledgement (libtest prints its own lines first), then a bit more.
    let mut acks = Vec::new();
    let mut stats = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while acks.is_empty() && Instant::now() < deadline {
        match received.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                stats = parse_stats(&line).or(stats);
                acks.extend(parse_ack(&line));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    std::thread::sleep(Duration::from_millis(rand::random_range(0..400)));
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    for line in received.try_iter() {
        stats = parse_stats(&line).or(stats);
        acks.extend(parse_ack(&line));
    }
    (acks, stats)
}

/// Reopens the spool and checks every acknowledged message and the recovery report.
async fn verify(dir: &Path, acks: &[Ack], commit: CommitMode) {
    let spool = Spool::open(dir, options(commit)).unwrap();
    let report = spool.recovery_report().cloned().unwrap();
    assert!(
        report.quarantined.is_empty(),
        "half-written entries: {report:?}"
    );
    assert!(std::fs::read_dir(dir.join("tmp")).unwrap().next().is_none());
    let slots_left: Vec<String> = std::fs::read_dir(dir.join("msg"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("slot-"))
        .collect();
    assert!(slots_left.is_empty(), "recovery left {slots_left:?}");
    for ack in acks {
        let want = expected(ack.worker, ack.n);
        let state = match spool.get(&ack.id).await {
            Ok(state) => state,
            Err(err) => panic!(
                "acknowledged {} ({}/{}) lost: {err}",
                ack.id, ack.worker, ack.n
            ),
        };
        assert_eq!(state.sender, want.sender);
        let stored: Vec<(String, Option<Route>)> = state
            .recipients
            .iter()
            .map(|r| (r.address.clone(), r.route.clone()))
            .collect();
        let wanted: Vec<(String, Option<Route>)> = want
            .recipients
            .iter()
            .map(|r| (r.address.clone(), Some(r.route.clone())))
            .collect();
        assert_eq!(stored, wanted, "envelope of {}", ack.id);
        let content = spool.content(&ack.id).await.unwrap();
        assert!(content == want.content, "content of {} differs", ack.id);
    }
    // Whatever else is queued (committed just before the kill, not yet acknowledged) is whole
    // too, and no abandoned draft was ever queued.
    for state in spool.list().await.unwrap() {
        let worker: u64 = state.sender[1..state.sender.find('@').unwrap()]
            .parse()
            .unwrap();
        assert_ne!(worker, ABANDONING_WORKER, "an abandoned draft was queued");
        let rcpt = &state.recipients[0].address;
        let n: u64 = rcpt[1..rcpt.find('@').unwrap()].parse().unwrap();
        let content = spool.content(&state.id).await.unwrap();
        assert!(
            content == expected(worker, n).content,
            "{} ({worker}/{n}) is queued half-written",
            state.id
        );
    }
}

#[test]
fn acknowledged_messages_survive_sigkill() {
    survive_sigkill(CommitMode::Filesystem);
}

/// The same with per-file commits, where messages are written into preallocated slots in
/// `msg/` and renamed after their flush: a kill leaves free slots and slots being written
/// (never acknowledged) for recovery to remove. (A kill cannot undo a rename the kernel did;
/// the slot a power loss leaves under its old name is `recovery_names_complete_slots_…`'s.)
#[test]
fn acknowledged_messages_survive_sigkill_with_per_file_commits() {
    survive_sigkill(CommitMode::EachFile);
}

fn survive_sigkill(commit: CommitMode) {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut all = Vec::new();
    let mut slot_commits = 0;
    for round in 0..ROUNDS {
        let (acks, stats) = run_and_kill(dir.path(), commit);
        if commit == CommitMode::EachFile {
            // Most commits went into preallocated files, without the committer.
            let (batches, committed) = stats.unwrap_or_default();
            slot_commits += committed.saturating_sub(batches);
        }
        assert!(
            !acks.is_empty(),
            "round {round}: the child acknowledged nothing"
        );
        eprintln!(
            "round {round}: {} acks at {:?}",
            acks.len(),
            started.elapsed()
        );
        all.extend(acks);
        runtime.block_on(verify(dir.path(), &all, commit));
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "crash test too slow"
        );
    }
    if commit == CommitMode::EachFile {
        assert!(
            slot_commits > 0,
            "no message was committed into a preallocated file"
        );
    }
}

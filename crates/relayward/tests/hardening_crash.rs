//! Crash and fault safety of the real `relayward serve` (issue 5, item 5), end to end on
//! loopback:
//!
//! - SIGKILL at random moments under concurrent load loses no acknowledged message, and
//!   SIGKILL while large messages stream into the spool delivers none of them cut short;
//! - a full data directory gets `452 4.3.1`, never `250`, and the server recovers when space
//!   returns;
//! - SIGTERM drains (DATA in progress finishes, idle sessions get `421`, exit 0);
//! - SIGHUP reloads users without dropping connections, and a bad file changes nothing;
//! - SIGKILL in the middle of a remote delivery loses no recipient.
//!
//! Every wait is bounded; the whole file runs in well under a minute.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use relayward_testkit::load::{Envelope, Ledger, load, token_of};
use relayward_testkit::smtp_server::{Script, SmtpServer};
use relayward_testkit::wait::eventually;
use support::{PASSWORD, TestServer, standard_config};

/// Limits raised so that the load generator is never mistaken for an abusive client.
const GENEROUS_LIMITS: &str = r#"
[limits]
max_connections_per_ip = 1000
connections_per_ip_per_minute = 100000
"#;

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/// A tiny xorshift generator: random kill moments without a dependency. The seed is printed
/// so a failing run can be replayed (`RELAYWARD_CRASH_SEED`).
struct Rng(u64);

impl Rng {
    fn from_env_or_clock() -> Rng {
        let seed = std::env::var("RELAYWARD_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0x9e37_79b9_7f4a_7c15)
            });
        eprintln!("crash test seed: RELAYWARD_CRASH_SEED={seed}");
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform-ish in `low..high` milliseconds.
    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.next() % (high - low))
    }
}

/// Waits (bounded) until the server log contains `needle`.
#[track_caller]
fn wait_for_log(server: &TestServer, needle: &str) {
    assert!(
        eventually(support::WAIT, || server.log().contains(needle)),
        "server log never said {needle:?} (process state: {})\n{}",
        process_state(server.pid()),
        server.log()
    );
}

/// The state letter of a process from /proc (`Z` = exited, not yet reaped), for diagnostics.
fn process_state(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = stat.rsplit_once(") ")?.1;
            after.split_whitespace().next().map(str::to_string)
        })
        .unwrap_or_else(|| "gone".into())
}

/// Sends `signal` (e.g. "TERM", "HUP") to the server once it has installed its handlers.
///
/// The server prints "ready" (and serves) before its signal loop registers the SIGTERM/SIGHUP
/// handlers, so a signal sent in that window takes the default action and kills the process.
/// Until that is fixed, wait for the handlers to show in `/proc/PID/status` (`SigCgt`).
fn signal_when_handled(server: &TestServer, signal: &str) {
    let number: u32 = match signal {
        "HUP" => 1,
        "INT" => 2,
        "TERM" => 15,
        other => panic!("unknown signal {other}"),
    };
    let caught = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).ok()?;
        let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
        let mask = u64::from_str_radix(mask.trim(), 16).ok()?;
        Some(mask & (1 << (number - 1)) != 0)
    };
    let handled = eventually(support::WAIT, || caught().unwrap_or(true));
    assert!(handled, "the server never installed a SIG{signal} handler");
    server.signal(signal);
}

/// `relayward queue --config FILE list --json` for the server's configuration, parsed.
fn queue_list(server: &TestServer) -> Vec<serde_json::Value> {
    let (code, output) = support::run_with_timeout(
        Command::new(support::binary())
            .args(["queue", "--config"])
            .arg(&server.config_path)
            .args(["list", "--json"]),
        support::WAIT,
    );
    assert_eq!(code, Some(0), "queue list failed: {output}");
    let start = output.find('[').unwrap_or(0);
    match serde_json::from_str::<serde_json::Value>(&output[start..]) {
        Ok(serde_json::Value::Array(entries)) => entries,
        other => panic!("queue list --json is not an array: {other:?}\n{output}"),
    }
}

/// Message files (`*.eml`) in the spool.
fn spooled_messages(data_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data_dir.join("queue").join("msg"))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "eml"))
                .collect()
        })
        .unwrap_or_default()
}

/// Counts tokens over a set of files (each file holds one message).
fn count_tokens(files: &[PathBuf]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for file in files {
        // A file may vanish between listing and reading (the runner removes delivered ones).
        let Ok(bytes) = std::fs::read(file) else {
            continue;
        };
        if let Some(token) = token_of(&String::from_utf8_lossy(&bytes)) {
            *counts.entry(token).or_insert(0) += 1;
        }
    }
    counts
}

// ---------------------------------------------------------------------------------------------
// 1. SIGKILL under load
// ---------------------------------------------------------------------------------------------

/// 8 clients send to a local mailbox while the server is SIGKILLed at random moments, four
/// times. After a final restart every token that got `250` must be delivered (or, bounded by
/// the wait, still queued). Small local mail is written into the Maildir before its `250`
/// (`local_before_reply`); [`sigkill_under_load_through_the_queue_loses_no_acknowledged_message`]
/// runs the same with it off, so that the queue and the runner are what the kills hit.
///
/// Duplicates: delivery is at-least-once. A message whose Maildir copy was fsynced but whose
/// queue update was not when the kill came is delivered again after the restart. For the same
/// message to be caught that way twice, two kills would have to hit its tiny
/// delivered-but-not-recorded window in consecutive rounds, so the bound asserted is: no token
/// is delivered more than twice, and all duplicates together are no more than the deliveries
/// the four kills can catch in flight (`MAX_UNRECORDED_PER_KILL` each).
#[test]
fn sigkill_under_concurrent_load_loses_no_acknowledged_message() {
    sigkill_under_load(GENEROUS_LIMITS);
}

/// [`sigkill_under_concurrent_load_loses_no_acknowledged_message`] with every message queued
/// first and delivered by the runner.
#[test]
fn sigkill_under_load_through_the_queue_loses_no_acknowledged_message() {
    sigkill_under_load(&format!(
        "{GENEROUS_LIMITS}\n[delivery]\nlocal_before_reply = false\n"
    ));
}

fn sigkill_under_load(extra_config: &str) {
    const ROUNDS: usize = 4;
    const CLIENTS: usize = 8;
    // Deliveries one kill can catch between "Maildir copy fsynced" and "queue updated": the
    // runner's 20 connection slots (max_connections), with room for updates waiting on the
    // group commit (the slot is released before the update). Observed: 0-13 over four kills.
    const MAX_UNRECORDED_PER_KILL: usize = 25;
    let config = standard_config(extra_config);
    let mut rng = Rng::from_env_or_clock();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let started = Instant::now();

    let mut dir = None;
    for round in 0..ROUNDS {
        let server = match dir.take() {
            None => TestServer::start(&config),
            Some(dir) => TestServer::start_in(dir, &config),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let threads = load(
            server.addr("mx"),
            &Envelope::default(),
            round,
            CLIENTS,
            &stop,
            &ledger,
        );
        std::thread::sleep(rng.millis(400, 1600));
        // SIGKILL while the clients are mid-transaction and the runner mid-delivery.
        dir = Some(server.kill9());
        stop.store(true, Ordering::Relaxed);
        for thread in threads {
            thread.join().expect("load thread");
        }
    }

    // Final restart: the runner scans the queue at start and delivers what is left.
    let server = TestServer::start_in(dir.take().expect("data dir"), &config);
    let data_dir = server.data_dir();
    let drained = eventually(Duration::from_secs(15), || {
        spooled_messages(&data_dir).is_empty()
    });
    let delivered = count_tokens(&server.maildir_new("example.test", "alice"));
    let queued = count_tokens(&spooled_messages(&data_dir));
    let ledger = ledger.lock().expect("ledger");
    let twice_or_more: Vec<(&String, &usize)> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    let duplicates: usize = twice_or_more.iter().map(|(_, n)| **n - 1).sum();
    eprintln!(
        "crash test: {} sent, {} acknowledged, {} delivered ({duplicates} duplicates), \
         {} still queued, final-dot refusals {:?}, {:?}",
        ledger.sent.len(),
        ledger.acked.len(),
        delivered.len(),
        queued.len(),
        ledger.refused,
        started.elapsed()
    );

    assert!(
        ledger.acked.len() >= 20,
        "too few messages acknowledged for the test to mean anything: {}\n{}",
        ledger.acked.len(),
        server.log()
    );
    let lost: Vec<&String> = ledger
        .acked
        .iter()
        .filter(|t| !delivered.contains_key(*t) && !queued.contains_key(*t))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged messages are neither delivered nor queued: {:?}",
        lost.len(),
        lost.iter().take(20).collect::<Vec<_>>()
    );
    assert!(
        drained,
        "queue not drained after the final restart: {} messages left\n{}",
        queued.len(),
        server.log()
    );
    let phantom: Vec<&String> = delivered
        .keys()
        .filter(|t| !ledger.sent.contains(*t))
        .collect();
    assert!(phantom.is_empty(), "delivered but never sent: {phantom:?}");
    let too_many: Vec<&(&String, &usize)> = twice_or_more.iter().filter(|(_, n)| **n > 2).collect();
    assert!(
        too_many.is_empty(),
        "delivered more than twice: {too_many:?}"
    );
    assert!(
        duplicates <= ROUNDS * MAX_UNRECORDED_PER_KILL,
        "{duplicates} duplicate deliveries for {ROUNDS} kills: more than in-flight retries \
         allow: {twice_or_more:?}"
    );
}

/// Octets of each large message of the streaming crash test (many 64 KiB writes to its draft).
const LARGE: usize = 3 * 1024 * 1024;

/// A large message: its token, then lines to [`LARGE`] octets, then `End: <token>`, so a
/// delivered copy cut anywhere shows. Returns the octets as sent (no line opens with a dot).
fn large_message(token: &str) -> Vec<u8> {
    let mut body = format!("Subject: {token}\r\n\r\nToken: {token}\r\n").into_bytes();
    let mut n = 0u64;
    while body.len() < LARGE {
        body.extend_from_slice(format!("{token} {n:08} {}\r\n", "x".repeat(60)).as_bytes());
        n += 1;
    }
    body.extend_from_slice(format!("End: {token}\r\n").as_bytes());
    body
}

/// Sends large messages one after another until `stop`, recording the tokens that got `250`.
/// Errors (the server being killed) end the current message and the next one starts.
fn send_large_until(
    addr: SocketAddr,
    prefix: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let token = format!("{prefix}-{n}");
        n += 1;
        let Ok(mut client) = relayward_testkit::load::LoadClient::connect(addr) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let reply = client.send_content(&Envelope::default(), &large_message(&token));
        if matches!(reply, Ok(250)) {
            acked.lock().expect("acked").push(token);
        }
    }
}

/// SIGKILL while several clients stream 3 MB messages into their drafts, three times. After
/// a final restart: every acknowledged one is delivered whole, nothing is delivered cut short
/// (each delivered copy ends with its own `End:` line at the right length), and no draft is
/// left in `tmp/`.
#[test]
fn sigkill_while_large_messages_stream_in_delivers_none_half_written() {
    const ROUNDS: usize = 3;
    const CLIENTS: usize = 4;
    // The batch commit by syncfs (`auto` picks it only for a spool with a mount of its own).
    let config = standard_config(&format!(
        "{GENEROUS_LIMITS}\n[queue]\ncommit = \"syncfs\"\n"
    ));
    let mut rng = Rng::from_env_or_clock();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut dir = None;
    for round in 0..ROUNDS {
        let server = match dir.take() {
            None => TestServer::start(&config),
            Some(dir) => TestServer::start_in(dir, &config),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let senders: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (addr, stop, acked) =
                    (server.addr("mx"), Arc::clone(&stop), Arc::clone(&acked));
                std::thread::spawn(move || {
                    send_large_until(addr, format!("large-{round}-{client}"), stop, acked)
                })
            })
            .collect();
        std::thread::sleep(rng.millis(500, 2500));
        dir = Some(server.kill9());
        stop.store(true, Ordering::Relaxed);
        for sender in senders {
            sender.join().expect("sender");
        }
    }
    let server = TestServer::start_in(dir.take().expect("data dir"), &config);
    let data_dir = server.data_dir();
    let drained = eventually(Duration::from_secs(30), || {
        spooled_messages(&data_dir).is_empty()
    });
    assert!(
        drained,
        "queue not drained after the final restart\n{}",
        server.log()
    );
    let staged: Vec<_> = std::fs::read_dir(data_dir.join("queue").join("tmp"))
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(staged.is_empty(), "drafts left in tmp/: {staged:?}");

    let mut delivered = BTreeSet::new();
    for file in server.maildir_new("example.test", "alice") {
        let bytes = std::fs::read(&file).expect("read mail");
        let text = String::from_utf8_lossy(&bytes);
        let token = token_of(&text).unwrap_or_else(|| panic!("{} has no token", file.display()));
        let sent = large_message(&token);
        assert!(
            bytes.ends_with(&sent),
            "{token} delivered cut short or altered: {} octets, {} sent",
            bytes.len(),
            sent.len()
        );
        delivered.insert(token);
    }
    let acked = acked.lock().expect("acked");
    eprintln!(
        "large crash test: {} acknowledged, {} delivered",
        acked.len(),
        delivered.len()
    );
    let lost: Vec<&String> = acked.iter().filter(|t| !delivered.contains(*t)).collect();
    assert!(lost.is_empty(), "acknowledged but not delivered: {lost:?}");
}

// ---------------------------------------------------------------------------------------------
// 2. Disk full
// ---------------------------------------------------------------------------------------------

/// Sends one message to alice and returns the reply to the final dot (via the transcript
/// client, which fails the test on anything unexpected before that).
fn send_one(server: &TestServer, token: &str, body_size: usize) -> (u16, Vec<String>) {
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<friend@other.test>")
        .expect(250)
        .send("RCPT TO:<alice@example.test>")
        .expect(250)
        .send("DATA")
        .expect(354);
    let mut body = format!("Subject: {token}\r\n\r\nToken: {token}\r\n");
    while body.len() < body_size {
        body.push_str("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n");
    }
    body.push_str(".\r\n");
    smtp.raw(body.as_bytes());
    let reply = smtp
        .read_reply()
        .unwrap_or_else(|| panic!("no reply to the final dot\n{}", smtp.transcript()));
    smtp.send("QUIT");
    reply
}

#[track_caller]
fn assert_452_431(reply: &(u16, Vec<String>)) {
    assert!(
        reply.0 == 452 && reply.1.iter().any(|l| l.contains("4.3.1")),
        "expected 452 4.3.1 when the disk is full, got {reply:?}"
    );
}

/// `min_free_bytes` above the free space of any disk: every message is refused with
/// `452 4.3.1`, never `250`, and nothing reaches the queue.
#[test]
fn too_little_free_space_answers_452_and_queues_nothing() {
    let server = TestServer::start(&standard_config(
        "[queue]\nmin_free_bytes = 1000000000000000\n",
    ));
    for i in 0..3 {
        let reply = send_one(&server, &format!("full-{i}"), 1000);
        assert_452_431(&reply);
    }
    // The session survives the refusal: the client may try again later on the same connection.
    server
        .smtp("mx")
        .send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<friend@other.test>")
        .expect(250)
        .send("RCPT TO:<alice@example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: x\r\n\r\nx\r\n.\r\n")
        .expect_text(452, "4.3.1")
        .send("RSET")
        .expect(250)
        .send("QUIT")
        .expect(221);
    assert!(spooled_messages(&server.data_dir()).is_empty());
    assert_eq!(queue_list(&server), Vec::<serde_json::Value>::new());
    std::thread::sleep(Duration::from_millis(200));
    assert!(server.maildir_new("example.test", "alice").is_empty());
}

/// Lowering `min_free_bytes` and sending SIGHUP should let mail in again without a restart.
#[test]
fn sighup_applies_a_lower_min_free_bytes() {
    let server = TestServer::start(&standard_config(
        "[queue]\nmin_free_bytes = 1000000000000000\n",
    ));
    assert_452_431(&send_one(&server, "before-reload", 1000));
    let config = std::fs::read_to_string(&server.config_path).expect("read config");
    let lowered = config.replace("min_free_bytes = 1000000000000000", "min_free_bytes = 1");
    assert_ne!(config, lowered);
    std::fs::write(&server.config_path, lowered).expect("write config");
    signal_when_handled(&server, "HUP");
    wait_for_log(&server, "configuration reloaded");
    let reply = send_one(&server, "after-reload", 1000);
    assert_eq!(reply.0, 250, "{reply:?}\n{}", server.log());
}

/// A tmpfs mounted on the data directory; unmounted (lazily) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the filesystem is full (ENOSPC).
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0x5au8; 64 * 1024];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    // Top up the last partial page.
    while matches!(file.write(&chunk[..512]), Ok(n) if n > 0) {}
    let _ = file.sync_all();
}

/// A real ENOSPC: the data directory is a 4 MiB tmpfs, filled to the last page. DATA gets
/// `452 4.3.1`, never `250`; after the filler is deleted the same running server accepts
/// and delivers again. Needs `mount` (root); skipped with a note where it is not permitted.
#[test]
fn real_enospc_answers_452_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let Some(mount) = Tmpfs::mount(&data, "4m") else {
        eprintln!(
            "SKIPPED real_enospc_answers_452_and_recovers_when_space_returns: cannot mount a \
             tmpfs here (needs root); the min_free_bytes variant still runs"
        );
        return;
    };
    // `min_free_bytes = 0`: no early refusal, so the write itself must hit ENOSPC.
    let server = TestServer::start_in(dir, &standard_config("[queue]\nmin_free_bytes = 0\n"));
    let reply = send_one(&server, "before-full", 1000);
    assert_eq!(reply.0, 250, "{reply:?}");
    server.wait_for_mail("example.test", "alice", 1);

    let filler = server.data_dir().join("filler");
    fill(&filler);
    for i in 0..3 {
        let reply = send_one(&server, &format!("while-full-{i}"), 32 * 1024);
        assert_452_431(&reply);
    }
    // Past 64 KiB the content goes to its file while it arrives: ENOSPC there too is a 452.
    let reply = send_one(&server, "while-full-large", 512 * 1024);
    assert_452_431(&reply);
    assert!(
        spooled_messages(&server.data_dir()).is_empty(),
        "a refused message was left in the queue"
    );

    std::fs::remove_file(&filler).expect("remove filler");
    let reply = send_one(&server, "after-space-returns", 32 * 1024);
    assert_eq!(reply.0, 250, "no recovery: {reply:?}\n{}", server.log());
    let mail = server.wait_for_mail("example.test", "alice", 2);
    let tokens: BTreeSet<String> = mail.iter().filter_map(|m| token_of(m)).collect();
    assert_eq!(
        tokens,
        BTreeSet::from(["before-full".to_string(), "after-space-returns".to_string()]),
        "only acknowledged messages are delivered"
    );
    drop(server);
    drop(mount);
}

// ---------------------------------------------------------------------------------------------
// 3. SIGTERM drains
// ---------------------------------------------------------------------------------------------

/// What a connection attempt to a stopping server got.
#[derive(Debug, PartialEq)]
enum NewConnection {
    Refused,
    Closed,
    Reply(String),
    Silent,
}

fn try_new_connection(addr: SocketAddr) -> NewConnection {
    let Ok(mut tcp) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return NewConnection::Refused;
    };
    tcp.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut buf = [0u8; 512];
    let result = match tcp.read(&mut buf) {
        Ok(0) => NewConnection::Closed,
        Ok(n) => NewConnection::Reply(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            NewConnection::Silent
        }
        Err(_) => NewConnection::Closed,
    };
    let _ = tcp.shutdown(Shutdown::Both);
    result
}

/// An idle session after SIGTERM: its next command gets `421 4.3.2`, then the connection
/// closes. The "shutting down" log line comes just before the sessions are told, so a command
/// racing that moment may still be served once (250); the one after it must get the 421.
#[track_caller]
fn expect_421_on_next_command(idle: &mut support::Smtp) {
    idle.send("NOOP");
    if let Some((250, _)) = idle.read_reply() {
        std::thread::sleep(Duration::from_millis(100));
        idle.send("NOOP");
        idle.read_reply();
    }
    let last = idle.last.clone();
    assert!(
        matches!(&last, Some((421, lines)) if lines.iter().any(|l| l.contains("4.3.2"))),
        "expected 421 4.3.2 after SIGTERM, got {last:?}\n{}",
        idle.transcript()
    );
    idle.expect_closed();
}

#[test]
fn sigterm_finishes_data_in_progress_and_turns_idle_sessions_away() {
    let mut server = TestServer::start(&standard_config(""));
    let mut busy = server.smtp("mx");
    busy.send("EHLO busy.outside.test")
        .expect(250)
        .send("MAIL FROM:<friend@other.test>")
        .expect(250)
        .send("RCPT TO:<alice@example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: drain\r\n\r\nToken: drained\r\nfirst half\r\n");
    let mut idle = server.smtp("mx");
    idle.send("EHLO idle.outside.test").expect(250);

    let signalled = Instant::now();
    signal_when_handled(&server, "TERM");
    // The signal is handled asynchronously; a command sent before that is still served.
    wait_for_log(&server, "shutting down");
    // The idle session's next command is answered 421, then it is closed.
    expect_421_on_next_command(&mut idle);

    // The message in progress is finished and acknowledged.
    busy.raw(b"second half\r\n.\r\n").expect_text(250, "2.0.0");
    busy.send("QUIT");
    match busy.read_reply() {
        None => {}
        Some((code, _)) => assert!(code == 221 || code == 421, "after QUIT: {code}"),
    }

    let code = server.wait_exit();
    assert_eq!(code, Some(0), "exit status\n{}", server.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "took {:?} to stop",
        signalled.elapsed()
    );

    // Delivered before exit, or at the latest right after a restart.
    let mail = if server.maildir_new("example.test", "alice").is_empty() {
        let dir = server.kill9();
        let server = TestServer::start_in(dir, &standard_config(""));
        server.wait_for_mail("example.test", "alice", 1)
    } else {
        server.wait_for_mail("example.test", "alice", 1)
    };
    assert_eq!(mail.len(), 1);
    assert!(
        mail[0].contains("first half\r\nsecond half\r\n"),
        "{}",
        mail[0]
    );
}

/// Once stopping, the server must not leave new clients hanging: their connection is refused
/// (listener closed) or answered `421`. Today the listening socket stays open while sessions
/// drain, so the kernel completes the handshake and the client waits for a banner that never
/// comes (until it times out or the process exits).
#[test]
fn sigterm_refuses_new_connections_while_draining() {
    let server = TestServer::start(&standard_config(""));
    let mx = server.addr("mx");
    // A session mid-DATA keeps the process draining.
    let mut busy = server.smtp("mx");
    busy.send("EHLO busy.outside.test")
        .expect(250)
        .send("MAIL FROM:<friend@other.test>")
        .expect(250)
        .send("RCPT TO:<alice@example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: drain\r\n\r\nstill typing\r\n");
    let mut idle = server.smtp("mx");
    idle.send("EHLO idle.outside.test").expect(250);
    signal_when_handled(&server, "TERM");
    // The signal is handled asynchronously; a command sent before that is still served.
    wait_for_log(&server, "shutting down");
    // Once the idle session has its 421, the server is certainly stopping.
    expect_421_on_next_command(&mut idle);

    let newcomer = try_new_connection(mx);
    assert!(
        match &newcomer {
            NewConnection::Refused | NewConnection::Closed => true,
            NewConnection::Reply(text) => text.starts_with("421"),
            NewConnection::Silent => false,
        },
        "a new connection while draining got {newcomer:?} (expected refused or 421)"
    );
    busy.raw(b".\r\n").expect(250);
}

// ---------------------------------------------------------------------------------------------
// 4. SIGHUP reload
// ---------------------------------------------------------------------------------------------

/// A new session on the submission listener: STARTTLS, EHLO, AUTH PLAIN as `login`; returns
/// the AUTH reply code.
fn auth_code(server: &TestServer, login: &str) -> u16 {
    let mut smtp = server.smtp("submission");
    smtp.send("EHLO laptop.example.test")
        .expect(250)
        .starttls(server.ca())
        .send("EHLO laptop.example.test")
        .expect(250)
        .auth_plain(login, PASSWORD);
    let code = smtp
        .read_reply()
        .map(|(code, _)| code)
        .unwrap_or_else(|| panic!("no reply to AUTH\n{}", smtp.transcript()));
    smtp.send("QUIT");
    code
}

#[test]
fn sighup_adds_a_user_without_dropping_connections_and_refuses_a_bad_file() {
    let server = TestServer::start(&standard_config(""));
    assert_eq!(
        auth_code(&server, "carol@example.test"),
        535,
        "carol unknown"
    );

    // A session from before the reload, in the middle of a transaction.
    let mut old = server.smtp("mx");
    old.send("EHLO old.outside.test")
        .expect(250)
        .send("MAIL FROM:<friend@other.test>")
        .expect(250)
        .send("RCPT TO:<alice@example.test>")
        .expect(250);

    let original = std::fs::read_to_string(&server.config_path).expect("read config");
    let with_carol = format!(
        "{original}\n[[user]]\nlogin = \"carol@example.test\"\npassword_hash = \"{}\"\n",
        support::password_hash()
    );
    std::fs::write(&server.config_path, &with_carol).expect("write config");
    signal_when_handled(&server, "HUP");
    wait_for_log(&server, "configuration reloaded");

    assert_eq!(auth_code(&server, "carol@example.test"), 235, "new user");
    assert_eq!(auth_code(&server, "alice@example.test"), 235, "old user");
    // The old session was not dropped: it still answers and completes its message.
    old.send("NOOP")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: across a reload\r\n\r\nToken: reload\r\n.\r\n")
        .expect(250)
        .send("NOOP")
        .expect(250);
    server.wait_for_mail("example.test", "alice", 1);

    // A file that does not parse: refused, the running configuration (with carol) stays.
    std::fs::write(
        &server.config_path,
        format!("{with_carol}\nthis is not toml\n"),
    )
    .expect("write config");
    signal_when_handled(&server, "HUP");
    wait_for_log(&server, "reload failed");
    assert_eq!(auth_code(&server, "carol@example.test"), 235);

    // A file that parses but would make an open relay: refused, still no relaying.
    let open = with_carol.replace(
        "trusted_networks = []",
        "trusted_networks = [\"0.0.0.0/0\"]",
    );
    assert_ne!(open, with_carol);
    std::fs::write(&server.config_path, open).expect("write config");
    signal_when_handled(&server, "HUP");
    wait_for_log(&server, "reload refused");
    server
        .smtp("mx")
        .send("EHLO probe.outside.test")
        .expect(250)
        .send("MAIL FROM:<spammer@other.test>")
        .expect(250)
        .send("RCPT TO:<victim@other.test>")
        .expect_text(554, "5.7.1");
    assert_eq!(auth_code(&server, "carol@example.test"), 235);
    old.send("NOOP").expect(250).send("QUIT").expect(221);
}

// ---------------------------------------------------------------------------------------------
// 5. SIGKILL during a remote delivery
// ---------------------------------------------------------------------------------------------

/// A scripted next hop that accepts everything; while `stall` is set it never answers the
/// final dot (the sender sits mid-delivery).
fn stalling_next_hop(stall: &Arc<AtomicBool>) -> SmtpServer {
    let script = Script {
        stall_final_dot: Some(Arc::clone(stall)),
        ..Script::default()
    };
    SmtpServer::bind("127.0.0.1:0", script)
}

#[test]
fn sigkill_during_remote_delivery_loses_no_recipient() {
    let stall = Arc::new(AtomicBool::new(true));
    let hop = stalling_next_hop(&stall);
    let config = standard_config(&format!(
        "[[route]]\ndomain = \"corp.example.test\"\nto = \"smtp://{}\"\nverify_recipients = false\n",
        hop.addr
    ));
    let server = TestServer::start(&config);
    server
        .smtp("mx")
        .send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<friend@other.test>")
        .expect(250)
        .send("RCPT TO:<x@corp.example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: routed\r\n\r\nToken: routed-through-a-crash\r\n.\r\n")
        .expect_text(250, "2.0.0")
        .send("QUIT")
        .expect(221);

    // The runner has sent the whole message and waits for our reply to the dot.
    assert!(
        eventually(support::WAIT, || hop.data_read() >= 1),
        "the runner never delivered\n{}",
        server.log()
    );
    let listed = queue_list(&server);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["recipients"][0]["address"], "x@corp.example.test");
    assert_eq!(listed[0]["recipients"][0]["status"], "pending");

    let dir = server.kill9();
    stall.store(false, Ordering::SeqCst);
    let server = TestServer::start_in(dir, &config);
    assert!(
        eventually(support::WAIT, || hop.data_read() >= 2),
        "no redelivery after the restart\n{}",
        server.log()
    );
    assert!(
        eventually(support::WAIT, || queue_list(&server).is_empty()),
        "queue not empty after the redelivery: {:?}\n{}",
        queue_list(&server),
        server.log()
    );
    let accepted = hop.messages();
    assert!(!accepted.is_empty(), "nothing reached the next hop");
    for message in &accepted {
        assert_eq!(message.rcpts, ["x@corp.example.test"]);
        let content = message.text();
        assert_eq!(
            token_of(&content).as_deref(),
            Some("routed-through-a-crash"),
            "{content}"
        );
    }
    assert!(hop.connections() >= 2);
}

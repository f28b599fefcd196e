//! Mail only for local mailboxes is written into their Maildirs before the `250`
//! (`[delivery] local_before_reply`, on by default); everything else, and every copy that
//! could not be written, goes through the queue as before.

mod support;

use std::time::Duration;

use relayward_testkit::os::Immutable;
use support::{Smtp, TestServer, queue_json, spooled, standard_config};

/// A stranger's message for alice, up to the reply to its final dot.
fn stranger_sends(smtp: &mut Smtp, rcpts: &[&str], body: &[u8]) -> (u16, Vec<String>) {
    smtp.send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<friend@outside.test>")
        .expect(250);
    for rcpt in rcpts {
        smtp.send(&format!("RCPT TO:{rcpt}")).expect(250);
    }
    smtp.send("DATA").expect(354).raw(body);
    smtp.read_reply()
        .unwrap_or_else(|| panic!("no reply to the final dot\n{}", smtp.transcript()))
}

/// A whole session from a stranger: one message, then QUIT; the reply to its final dot.
fn send_one(server: &TestServer, rcpts: &[&str], body: &[u8]) -> (u16, Vec<String>) {
    let mut smtp = server.smtp("mx");
    let reply = stranger_sends(&mut smtp, rcpts, body);
    smtp.send("QUIT").expect(221);
    reply
}

fn id_after(reply: &(u16, Vec<String>), words: &str) -> String {
    let line = reply.1.join(" ");
    let Some(at) = line.find(words) else {
        panic!("expected 250 \"… {words} <id>\", got {reply:?}");
    };
    line[at + words.len()..].trim().to_string()
}

#[test]
fn mail_for_a_local_mailbox_is_in_its_maildir_before_the_250() {
    let server = TestServer::start(&standard_config(""));
    let mut smtp = server.smtp("mx");
    let reply = stranger_sends(
        &mut smtp,
        &["<alice@example.test>", "<Bob@Example.Test>"],
        b"Subject: at once\r\n\r\nhello\r\n.\r\n",
    );
    assert_eq!(reply.0, 250, "{reply:?}");
    let id = id_after(&reply, "delivered as");
    // No waiting: the copies are there when the client hears 250, and nothing was queued.
    for local in ["alice", "bob"] {
        let new = server.maildir_new("example.test", local);
        assert_eq!(new.len(), 1, "{local}: {new:?}");
        let text = std::fs::read_to_string(&new[0]).expect("read the copy");
        assert!(
            text.starts_with("Received: from client.outside.test"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\nhello\r\n"), "{text:?}");
    }
    assert_eq!(spooled(&server), 0);
    assert_eq!(queue_json(&server, &["list"]), serde_json::json!([]));
    smtp.send("QUIT").expect(221);
    // The mail log reads as for a queued message delivered by the runner.
    server.wait_for_log("message delivered");
    let log = server.log();
    let accepted = log
        .lines()
        .find(|l| l.contains("message delivered") && l.contains(&id))
        .unwrap_or_else(|| panic!("no 'message delivered' line for {id}:\n{log}"));
    assert!(accepted.contains("recipients=2"), "{accepted}");
    let delivered = log
        .lines()
        .find(|l| {
            l.contains(": delivered id=") && l.contains(&id) && l.contains("alice@example.test")
        })
        .unwrap_or_else(|| panic!("no delivery line for alice under {id}:\n{log}"));
    for field in [
        "route=local",
        "relay=maildir:example.test/alice",
        "status=2.0.0",
    ] {
        assert!(delivered.contains(field), "{field} missing: {delivered}");
    }
    assert!(!log.contains("message queued"), "{log}");
    // An operator who looks the id up in the queue is told where to look instead.
    let (code, out) = support::relayward_cmd(&server, &["queue", "show", &id]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("no message {id} in the queue")),
        "{out}"
    );
    assert!(out.contains("delivered as"), "{out}");
    assert!(out.contains("mail log"), "{out}");
}

/// All copies or none: had alice's been written before bob's failed, a message refused by the
/// queue then (and sent again by the client) would bring her a second one.
#[test]
fn a_copy_that_cannot_be_written_sends_the_whole_message_to_the_queue() {
    let server = TestServer::start(&standard_config(""));
    // bob's Maildir cannot be made: a file stands where its directory would be.
    let domain = server.data_dir().join("mail").join("example.test");
    std::fs::create_dir_all(&domain).expect("mail/example.test");
    std::fs::write(domain.join("bob"), b"in the way").expect("block bob's Maildir");
    let reply = send_one(
        &server,
        &["<alice@example.test>", "<bob@example.test>"],
        b"Subject: half\r\n\r\nhello\r\n.\r\n",
    );
    assert_eq!(reply.0, 250, "{reply:?}");
    let id = id_after(&reply, "queued as");
    // The runner delivers alice's copy (one, not two) and keeps bob's.
    assert_eq!(server.wait_for_mail("example.test", "alice", 1).len(), 1);
    let deadline = std::time::Instant::now() + support::WAIT;
    let statuses = loop {
        let shown = queue_json(&server, &["show", &id]);
        let statuses: Vec<(String, String)> = shown["recipients"]
            .as_array()
            .unwrap_or_else(|| panic!("recipients in {shown}"))
            .iter()
            .map(|r| {
                let field = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                (field("address"), field("status"))
            })
            .collect();
        if statuses[0].1 == "delivered" || std::time::Instant::now() > deadline {
            break statuses;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        statuses[0],
        ("alice@example.test".into(), "delivered".into())
    );
    assert_eq!(statuses[1].0, "bob@example.test");
    assert_ne!(statuses[1].1, "delivered");
    let alice = domain.join("alice");
    assert_eq!(server.maildir_new("example.test", "alice").len(), 1);
    let staged = std::fs::read_dir(alice.join("tmp")).map_or(0, |rd| rd.count());
    assert_eq!(staged, 0, "a staged copy was left in alice's tmp/");
    let log = server.log();
    assert!(
        log.contains("local delivery before the reply failed"),
        "{log}"
    );
}

#[test]
fn mail_that_is_not_only_local_or_asks_for_a_success_notice_is_queued() {
    let sink = support::rejecting_sink("127.0.0.1", "451 4.3.0 later").addr;
    let server = TestServer::start(&standard_config(&format!(
        "[[route]]\ndomain = \"corp.example.net\"\nto = \"smtp://{sink}\"\nverify_recipients = false\n"
    )));
    // A local and a routed recipient: the message is queued whole.
    let mixed = send_one(
        &server,
        &["<alice@example.test>", "<stuck@corp.example.net>"],
        b"Subject: mixed\r\n\r\nhello\r\n.\r\n",
    );
    id_after(&mixed, "queued as");
    // NOTIFY=SUCCESS: the runner delivers it, and is the one to send the notice.
    let notify = send_one(
        &server,
        &["<bob@example.test> NOTIFY=SUCCESS"],
        b"Subject: tell me\r\n\r\nhello\r\n.\r\n",
    );
    id_after(&notify, "queued as");
    // Larger than what a draft keeps in memory (64 KiB): through the queue's file.
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..1000 {
        big.extend_from_slice(&[b'x'; 98]);
        big.extend_from_slice(b"\r\n");
    }
    big.extend_from_slice(b".\r\n");
    let large = send_one(&server, &["<alice@example.test>"], &big);
    id_after(&large, "queued as");
    assert_eq!(server.wait_for_mail("example.test", "alice", 2).len(), 2);
    assert_eq!(server.wait_for_mail("example.test", "bob", 1).len(), 1);
}

#[test]
fn local_before_reply_off_queues_local_mail_too() {
    let server = TestServer::start(&standard_config("[delivery]\nlocal_before_reply = false\n"));
    let reply = send_one(
        &server,
        &["<alice@example.test>"],
        b"Subject: queued\r\n\r\nhello\r\n.\r\n",
    );
    id_after(&reply, "queued as");
    assert_eq!(server.wait_for_mail("example.test", "alice", 1).len(), 1);
}

/// The setting follows a reload (SIGHUP) like the rest of `[delivery]`.
#[test]
fn a_reload_turns_local_before_reply_off_and_on() {
    let server = TestServer::start(&standard_config(""));
    let send = |subject: &str| {
        let body = format!("Subject: {subject}\r\n\r\nhello\r\n.\r\n");
        send_one(&server, &["<alice@example.test>"], body.as_bytes())
    };
    id_after(&send("before"), "delivered as");
    server.reload_with(|config| format!("{config}\n[delivery]\nlocal_before_reply = false\n"));
    id_after(&send("off"), "queued as");
    server.reload_with(|config| {
        config.replace("local_before_reply = false", "local_before_reply = true")
    });
    id_after(&send("on again"), "delivered as");
    assert_eq!(server.wait_for_mail("example.test", "alice", 3).len(), 3);
}

/// A file in a Maildir's `tmp/` last written `age` ago.
fn left_in_tmp(path: &std::path::Path, age: Duration) {
    std::fs::write(path, b"Subject: half of it\r\n").expect("write");
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open");
    file.set_modified(std::time::SystemTime::now() - age)
        .expect("set mtime");
}

/// alice's Maildir `tmp/` in the data directory of a server still to start, made.
fn alice_tmp(dir: &std::path::Path) -> std::path::PathBuf {
    let tmp = dir.join("data/mail/example.test/alice/tmp");
    std::fs::create_dir_all(&tmp).expect("make tmp/");
    tmp
}

/// After a sweep, alice's mailbox goes on taking mail: a stranger's message lands in it.
fn alice_still_takes_mail(server: &TestServer) {
    let reply = send_one(
        server,
        &["<alice@example.test>"],
        b"Subject: after the sweep\r\n\r\nhello\r\n.\r\n",
    );
    assert_eq!(reply.0, 250, "{reply:?}");
    assert_eq!(server.maildir_new("example.test", "alice").len(), 1);
}

/// A copy a crash left in `tmp/` between its write and its rename (never acknowledged from
/// there) is removed at start once it is older than the Maildir convention's 36 hours; a
/// younger one, which another deliverer may still be writing, stays.
#[test]
fn copies_a_crash_left_in_tmp_are_swept_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tmp = alice_tmp(dir.path());
    let crashed = tmp.join("1764000000.M1P42Q7.crashed");
    let young = tmp.join("1764000001.M1P43Q1.being-written");
    left_in_tmp(&crashed, Duration::from_secs(37 * 3600));
    left_in_tmp(&young, Duration::from_secs(35 * 3600));
    let server = TestServer::start_in(dir, &standard_config(""));
    server.wait_for_log("maildir sweep: removed 1 abandoned file");
    assert!(!crashed.exists(), "{}", server.log());
    assert!(young.exists(), "{}", server.log());
    alice_still_takes_mail(&server);
}

/// A copy the sweep cannot remove is reported with the reason, in a warning, and the other
/// abandoned copies go all the same; the server starts and takes mail.
#[test]
fn a_copy_the_sweep_cannot_remove_is_reported_and_the_others_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tmp = alice_tmp(dir.path());
    let crashed = tmp.join("1764000000.M1P42Q7.crashed");
    let stuck = tmp.join("1764000002.M1P44Q1.stuck");
    left_in_tmp(&crashed, Duration::from_secs(37 * 3600));
    left_in_tmp(&stuck, Duration::from_secs(37 * 3600));
    let immutable = Immutable::set(&stuck);
    let server = TestServer::start_in(dir, &standard_config(""));
    // Dropped before the server, which removes the data directory.
    let _clear = immutable;
    server.wait_for_log("maildir sweep: removed 1 abandoned file");
    server.wait_for_log("1 file(s) or directories could not be read or removed");
    let log = server.log();
    let warning = log
        .lines()
        .find(|l| l.contains("could not be read or removed"))
        .expect("the warning");
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("Operation not permitted"), "{warning}");
    assert!(!crashed.exists(), "{log}");
    assert!(stuck.exists(), "{log}");
    alice_still_takes_mail(&server);
}

/// Every copy written, then one rename fails (bob's `new/` is immutable): alice's copy is
/// hers already, so only bob's goes to the queue, and the client hears "queued as", once.
/// ```text
/// RCPT TO:<alice@example.test>, RCPT TO:<bob@example.test>, DATA … .
///                                 -> 250 queued as Q   (alice's copy in her new/)
/// queue show Q                    -> bob@example.test only, not delivered
/// ```
#[test]
fn a_rename_that_fails_after_every_copy_was_written_queues_only_the_rest() {
    let server = TestServer::start(&standard_config(""));
    let bob = server.data_dir().join("mail/example.test/bob");
    for part in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(bob.join(part)).expect("bob's Maildir");
    }
    let _clear = Immutable::set(bob.join("new"));

    let reply = send_one(
        &server,
        &["<alice@example.test>", "<bob@example.test>"],
        b"Subject: in part\r\n\r\nhello\r\n.\r\n",
    );
    assert_eq!(reply.0, 250, "{reply:?}");
    let id = id_after(&reply, "queued as");
    assert_eq!(server.maildir_new("example.test", "alice").len(), 1);
    let shown = queue_json(&server, &["show", &id]);
    let recipients = shown["recipients"]
        .as_array()
        .unwrap_or_else(|| panic!("recipients in {shown}"));
    assert_eq!(recipients.len(), 1, "{shown}");
    assert_eq!(recipients[0]["address"], "bob@example.test", "{shown}");
    assert_ne!(recipients[0]["status"], "delivered", "{shown}");
    server.wait_for_log("message delivered in part; the rest queued");
    // The runner's own attempt for bob (its journal line; the session's warning names no
    // relay) fails the same way and keeps him queued; alice gets no second copy.
    server.wait_for_log("relay=maildir:example.test/bob");
    assert_eq!(server.maildir_new("example.test", "alice").len(), 1);
}

//! DATA and BDAT content goes to the spool while it arrives (issue 15, item 2), end to end
//! through the real `relayward serve`:
//!
//! - a message of many megabytes is on disk (in the spool: `tmp/`, or a preallocated file in
//!   `msg/`) before its final dot, and is delivered byte-identical (dot-unstuffed, behind one
//!   `Received:`);
//! - a session cut off mid-DATA leaves no file behind and delivers nothing;
//! - the smuggling and line-length refusals still fire many megabytes into a message, and
//!   leave nothing behind either.
//!
//! The bulk is sent over a plain socket: the transcript client would keep megabytes of it in
//! its transcript. Memory staying flat is measured by `scripts/bench` (the memory case), not
//! here.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use relayward_testkit::wait::eventually;
use support::{TestServer, standard_config};

/// One megabyte of content lines: 76 octets each, every 10th opening with a dot (sent
/// stuffed, received unstuffed).
fn megabyte(index: usize) -> (Vec<u8>, Vec<u8>) {
    let (mut wire, mut content) = (Vec::new(), Vec::new());
    let mut line = 0;
    while content.len() < 1024 * 1024 {
        let text = format!("{index:04}-{line:06} {}\r\n", "abcdefghij".repeat(6));
        if line % 10 == 0 {
            wire.extend_from_slice(b"..");
            content.push(b'.');
        }
        wire.extend_from_slice(text.as_bytes());
        content.extend_from_slice(text.as_bytes());
        line += 1;
    }
    (wire, content)
}

/// A plain SMTP client for bulk content: commands and replies, no transcript.
struct Bulk {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Bulk {
    /// Connected, greeted, and in DATA after `354` (one local recipient).
    fn in_data(server: &TestServer) -> Bulk {
        let stream = TcpStream::connect(server.addr("mx")).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut bulk = Bulk {
            reader: BufReader::new(stream.try_clone().expect("clone")),
            writer: stream,
        };
        bulk.expect(220);
        for (command, code) in [
            ("EHLO client.outside.test", 250),
            ("MAIL FROM:<friend@other.test>", 250),
            ("RCPT TO:<alice@example.test>", 250),
            ("DATA", 354),
        ] {
            bulk.send(command.as_bytes());
            bulk.send(b"\r\n");
            bulk.expect(code);
        }
        bulk
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send");
    }

    /// The next reply's code and last line; `None` when the server closed.
    fn reply(&mut self) -> Option<(u16, String)> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let code = line.get(..3)?.parse().ok()?;
            if line.as_bytes().get(3) != Some(&b'-') {
                return Some((code, line.trim_end().to_owned()));
            }
        }
    }

    #[track_caller]
    fn expect(&mut self, code: u16) -> String {
        match self.reply() {
            Some((got, text)) if got == code => text,
            other => panic!("expected {code}, got {other:?}"),
        }
    }
}

fn spool_dir(server: &TestServer, part: &str) -> PathBuf {
    server.data_dir().join("queue").join(part)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// Whether a spool file is a preallocated one (`msg/slot-*.new`), where drafts are written
/// with per-file commits (the default on a shared filesystem).
fn is_slot(path: &Path) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.starts_with("slot-") && name.ends_with(".new"))
}

/// Octets of the drafts staged in the spool: in `tmp/` or in preallocated files in `msg/`.
fn staged_octets(server: &TestServer) -> u64 {
    let slots = files(&spool_dir(server, "msg"))
        .into_iter()
        .filter(|f| is_slot(f));
    files(&spool_dir(server, "tmp"))
        .into_iter()
        .chain(slots)
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// What the spool holds beyond free preallocated files (empty slots).
fn spool_contents(server: &TestServer) -> Vec<PathBuf> {
    files(&spool_dir(server, "tmp"))
        .into_iter()
        .chain(
            files(&spool_dir(server, "msg"))
                .into_iter()
                .filter(|f| !support::is_free_slot(f)),
        )
        .collect()
}

#[track_caller]
fn assert_nothing_left(server: &TestServer) {
    let clean = eventually(Duration::from_secs(10), || {
        spool_contents(server).is_empty()
    });
    assert!(
        clean,
        "files left in the spool: {:?}\n{}",
        spool_contents(server),
        server.log()
    );
    assert!(server.maildir_new("example.test", "alice").is_empty());
}

/// 20 MB arrive; half-way the first 8 MB are already in the spool (not in memory); after the
/// dot the mailbox gets exactly the content sent, unstuffed, behind one `Received:`.
#[test]
fn a_multi_megabyte_message_is_on_disk_before_its_dot_and_delivered_byte_identical() {
    let server = TestServer::start(&standard_config(""));
    let mut bulk = Bulk::in_data(&server);
    let mut expected = b"Subject: twenty megabytes\r\n\r\n".to_vec();
    bulk.send(&expected);
    for index in 0..20 {
        let (wire, content) = megabyte(index);
        bulk.send(&wire);
        expected.extend_from_slice(&content);
        if index == 9 {
            let streamed = eventually(Duration::from_secs(10), || {
                staged_octets(&server) >= 8 * 1024 * 1024
            });
            assert!(
                streamed,
                "only {} octets staged after 10 MB sent",
                staged_octets(&server)
            );
        }
    }
    bulk.send(b".\r\n");
    let queued = bulk.expect(250);
    assert!(queued.contains("queued as"), "{queued}");
    bulk.send(b"QUIT\r\n");
    bulk.expect(221);

    let delivered = server.wait_for_mail_bytes("example.test", "alice", 1);
    let received_len = delivered[0].len() - expected.len();
    let (trace, content) = delivered[0].split_at(received_len);
    assert!(
        content == expected.as_slice(),
        "content differs from what was sent ({} octets delivered, {} sent)",
        content.len(),
        expected.len()
    );
    let trace = String::from_utf8_lossy(trace);
    assert!(
        trace.starts_with("Received: from client.outside.test ([127.0.0.1])")
            && trace.matches("Received:").count() == 1,
        "{trace}"
    );
    assert!(files(&spool_dir(&server, "tmp")).is_empty());
}

/// A client that goes away after 6 MB without the final dot leaves no draft in the spool, no
/// message in `msg/`, and nothing in the mailbox.
#[test]
fn a_session_cut_off_mid_data_leaves_nothing_in_the_spool() {
    let server = TestServer::start(&standard_config(""));
    let mut bulk = Bulk::in_data(&server);
    bulk.send(b"Subject: never finished\r\n\r\n");
    for index in 0..6 {
        bulk.send(&megabyte(index).0);
    }
    assert!(
        eventually(Duration::from_secs(10), || staged_octets(&server)
            >= 5 * 1024 * 1024),
        "the draft is not on disk"
    );
    drop(bulk);
    assert_nothing_left(&server);
}

/// Many megabytes into a message, a bare LF (and, in another session, a bare CR) still
/// closes the session with `521 5.5.2`, and an over-long line still gets `500 5.5.2` the
/// moment it is crossed; the session then stays usable. Nothing is queued or left behind.
#[test]
fn smuggling_and_line_length_refusals_fire_on_streamed_content() {
    let server = TestServer::start(&standard_config(""));
    for bare in [
        &b"smuggled\nMAIL FROM:<x@y.test>\r\n"[..],
        b"smuggled\r.\r\n",
    ] {
        let mut bulk = Bulk::in_data(&server);
        bulk.send(b"Subject: smuggling\r\n\r\n");
        for index in 0..8 {
            bulk.send(&megabyte(index).0);
        }
        bulk.send(bare);
        let refusal = bulk.expect(521);
        assert!(refusal.contains("5.5.2"), "{refusal}");
        assert_eq!(bulk.reply(), None, "the session must close");
    }

    let mut bulk = Bulk::in_data(&server);
    bulk.send(b"Subject: long line\r\n\r\n");
    for index in 0..8 {
        bulk.send(&megabyte(index).0);
    }
    bulk.send(&vec![b'x'; 70_000]);
    let refusal = bulk.expect(500);
    assert!(refusal.contains("5.5.2"), "{refusal}");
    bulk.send(b"\r\nmore\r\n.\r\nRSET\r\n");
    bulk.expect(250);
    bulk.send(b"QUIT\r\n");
    bulk.expect(221);
    assert_nothing_left(&server);
}

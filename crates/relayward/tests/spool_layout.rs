//! A spool written by an earlier relayward is taken over on first start (issue 15, item 3).
//!
//! `tests/data/spool-v1/` holds a message exactly as relayward wrote it before the content was
//! streamed and commits were grouped by `syncfs` (captured from that build: one delivery
//! attempt failed, so it has both its `.eml` and its `.json` state). The spool's format did not
//! change since (docs/benchmarks.md, "The spool"; the header's JSON has gained a content
//! checksum, which files without one do without), so taking it over needs no conversion: this
//! test proves it — the queue CLI lists it before the server ever ran, recovery keeps it, the runner
//! delivers it intact, and its files go away.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use relayward_testkit::smtp_server::{Script, SmtpServer};
use relayward_testkit::wait::eventually;
use support::{TestServer, binary, standard_config, wait_queue_empty};

const OLD_ID: &str = "0661962fa78b330f874117e9";

/// Copies the old spool into `queue`, pointing its stored route (a closed port when it was
/// captured) at `port`, and leaves a stray draft in `tmp/` as a crash would.
fn install_old_spool(queue: &Path, port: u16) {
    install_spool(queue, port, |eml| eml);
}

/// [`install_old_spool`] with the message file changed by `edit` first.
fn install_spool(queue: &Path, port: u16, edit: impl Fn(String) -> String) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/spool-v1/msg");
    std::fs::create_dir_all(queue.join("msg")).expect("msg dir");
    std::fs::create_dir_all(queue.join("tmp")).expect("tmp dir");
    for ext in ["eml", "json"] {
        let name = format!("{OLD_ID}.{ext}");
        let text = std::fs::read_to_string(fixture.join(&name)).expect("fixture");
        let routed = text.replace("\"port\":9}", &format!("\"port\":{port}}}"));
        assert_ne!(text, routed, "the fixture names its route");
        let routed = if ext == "eml" { edit(routed) } else { routed };
        std::fs::write(queue.join("msg").join(&name), routed).expect("install");
    }
    std::fs::write(
        queue.join("tmp").join("0661962fa78b330f874117ff.eml"),
        "relayward-queue-v1 {\"half",
    )
    .expect("stray draft");
}

#[test]
fn a_spool_written_by_the_previous_version_is_listed_recovered_and_delivered() {
    let sink = SmtpServer::bind("127.0.0.1:0", Script::default().rcpt_reply("250 2.1.5 ok"));
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    install_old_spool(&data.join("queue"), sink.addr.port());

    // The CLI reads the old entry before any server has opened the spool.
    let config = standard_config("").replace("DATA_DIR", &data.display().to_string());
    let config_path = dir.path().join("cli.toml");
    std::fs::write(&config_path, config).expect("config");
    let listed = Command::new(binary())
        .args(["queue", "list", "--json", "--config"])
        .arg(&config_path)
        .output()
        .expect("relayward queue list");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains(OLD_ID) && listed.contains("Connection refused"),
        "{listed}"
    );

    // First start: recovery removes the stray draft, keeps the message; the runner delivers it.
    let server = TestServer::start_in(dir, &standard_config(""));
    let delivered = eventually(Duration::from_secs(20), || sink.messages().len() == 1);
    assert!(
        delivered,
        "the old message was not delivered\n{}",
        server.log()
    );
    let message = &sink.messages()[0];
    assert_eq!(
        (message.from.as_str(), message.rcpts.as_slice()),
        ("old-sender@example.test", &["bob@far.test".to_owned()][..])
    );
    let data = String::from_utf8_lossy(&message.data);
    assert!(
        data.contains("Received: from old.client.test ([127.0.0.1])")
            && data.ends_with("\r\nOLD-LAYOUT-TOKEN\r\n.leading dot line\r\n"),
        "{data}"
    );
    wait_queue_empty(&server);
    let queue = server.data_dir().join("queue");
    for part in ["msg", "tmp"] {
        let left: Vec<_> = std::fs::read_dir(queue.join(part))
            .expect("spool dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{part}/ still holds {left:?}");
    }
}

/// What a power loss during a commit's one flush can leave (issue 15: the rename comes before
/// the flush, so the name and the header may reach the disk without the content): the header
/// as this version writes it, checksum included, and the content's blocks read back as zeros.
/// Nobody was told `250` for it; the runner must move it to `corrupt/`, never deliver it.
#[test]
fn a_message_whose_content_a_crash_left_unwritten_is_moved_aside_not_delivered() {
    let sink = SmtpServer::bind("127.0.0.1:0", Script::default().rcpt_reply("250 2.1.5 ok"));
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = dir.path().join("data").join("queue");
    install_spool(&queue, sink.addr.port(), |eml| {
        let (header, content) = eml.split_once('\n').expect("a header line");
        let sum = crc32fast::hash(content.as_bytes());
        let header = header.replace(
            "\"held\":false}",
            &format!("\"held\":false,\"content_crc32\":{sum}}}"),
        );
        assert!(header.contains("content_crc32"), "{header}");
        format!("{header}\n{}", "\0".repeat(content.len()))
    });

    let server = TestServer::start_in(dir, &standard_config(""));
    let corrupt = server.data_dir().join("queue").join("corrupt");
    let moved = eventually(Duration::from_secs(20), || {
        corrupt.join(format!("{OLD_ID}.eml")).exists()
    });
    assert!(
        moved,
        "the torn message was not moved aside\n{}",
        server.log()
    );
    let reason = std::fs::read_to_string(corrupt.join(format!("{OLD_ID}.reason")))
        .expect("the reason beside it");
    assert!(reason.contains("checksum"), "{reason}");
    wait_queue_empty(&server);
    assert!(
        sink.messages().is_empty(),
        "delivered: {:?}",
        sink.messages()
    );
}

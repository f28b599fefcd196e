//! A spool written by an earlier relayward is taken over on first start (issue 15, item 3).
//!
//! `tests/data/spool-v1/` holds a message exactly as relayward wrote it before the content was
//! streamed and commits were grouped by `syncfs` (captured from that build: one delivery
//! attempt failed, so it has both its `.eml` and its `.json` state). The spool's format did not
//! change (docs/benchmarks.md, "The spool"), so taking it over needs no conversion: this test
//! proves it — the queue CLI lists it before the server ever ran, recovery keeps it, the runner
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
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/spool-v1/msg");
    std::fs::create_dir_all(queue.join("msg")).expect("msg dir");
    std::fs::create_dir_all(queue.join("tmp")).expect("tmp dir");
    for ext in ["eml", "json"] {
        let name = format!("{OLD_ID}.{ext}");
        let text = std::fs::read_to_string(fixture.join(&name)).expect("fixture");
        let routed = text.replace("\"port\":9}", &format!("\"port\":{port}}}"));
        assert_ne!(text, routed, "the fixture names its route");
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

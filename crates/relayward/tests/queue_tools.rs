//! Queue tools (issue 14, item 9): `queue cat ID` prints the message as stored (like
//! postcat), `queue list` filters by sender, recipient, age and state, `queue summary` counts
//! pending recipients by domain and age (like qshape); tables escape control characters.

mod support;

use support::{TestServer, queue_cmd, queue_json, rejecting_sink, relayward_cmd, standard_config};

/// Two deferred messages for corp.example.test: one from a stranger whose Subject carries
/// an escape sequence, one bounce (null sender).
fn server_with_two_deferred() -> (TestServer, relayward_testkit::smtp_server::SmtpServer) {
    let internal = rejecting_sink("127.0.0.1", "451 4.7.1 not today");
    let sink = internal.addr;
    let server = TestServer::start(&standard_config(&format!(
        "[[route]]\ndomain = \"corp.example.test\"\nto = \"smtp://{sink}\"\nrecipients = [\"stuck@corp.example.test\", \"other@corp.example.test\"]\n\n[delivery]\nretry_schedule = [\"1h\"]\n"
    )));
    for (from, to, body) in [
        (
            "someone@outside.test",
            "stuck@corp.example.test",
            &b"Subject: \x1b[31mred\x1b[0m\r\n\r\nhello\r\n.\r\n"[..],
        ),
        (
            "",
            "other@corp.example.test",
            &b"Subject: bounce\r\n\r\nsorry\r\n.\r\n"[..],
        ),
    ] {
        server
            .smtp("mx")
            .send("EHLO client.outside.test")
            .expect(250)
            .send(&format!("MAIL FROM:<{from}>"))
            .expect(250)
            .send(&format!("RCPT TO:<{to}>"))
            .expect(250)
            .send("DATA")
            .expect(354)
            .raw(body)
            .expect(250)
            .send("QUIT")
            .expect(221);
    }
    server.wait_for_log_count("deferred id=", 2);
    (server, internal)
}

fn ids(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .expect("array")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect()
}

#[test]
fn list_filters_by_sender_recipient_age_and_state() {
    let (server, _internal) = server_with_two_deferred();
    let all = ids(&queue_json(&server, &["list"]));
    assert_eq!(all.len(), 2);
    let stranger = ids(&queue_json(&server, &["list", "--from", "OUTSIDE.test"]));
    assert_eq!(stranger, vec![all[0].clone()]);
    let bounce = ids(&queue_json(&server, &["list", "--from", "<>"]));
    assert_eq!(bounce, vec![all[1].clone()]);
    let other = ids(&queue_json(&server, &["list", "--to", "other@"]));
    assert_eq!(other, vec![all[1].clone()]);
    assert!(ids(&queue_json(&server, &["list", "--older-than", "1h"])).is_empty());
    assert_eq!(
        ids(&queue_json(&server, &["list", "--older-than", "0s"])).len(),
        2
    );
    assert_eq!(
        ids(&queue_json(&server, &["list", "--state", "deferred"])).len(),
        2
    );
    queue_cmd(&server, &["hold", &all[0]]);
    assert_eq!(
        ids(&queue_json(&server, &["list", "--state", "held"])),
        vec![all[0].clone()]
    );
    assert_eq!(
        ids(&queue_json(
            &server,
            &["list", "--state", "deferred", "--to", "corp"]
        )),
        vec![all[1].clone()]
    );
    let (code, out) = relayward_cmd(&server, &["queue", "list", "--state", "stuck"]);
    assert_eq!(code, Some(2), "a bad state is a usage error:\n{out}");
    assert!(out.contains("due") && out.contains("deferred"), "{out}");
    // Nothing matching is not an empty queue.
    let none = queue_cmd(&server, &["list", "--older-than", "1h"]);
    assert_eq!(
        none, "No message matches the filters (2 message(s) in the queue).\n",
        "{none}"
    );
}

/// Without the server's `--config` the queue commands read the embedded default, whose
/// `data_dir` is `./relayward-data` under the current directory: where no queue is, they say
/// so (and which configuration they read) instead of creating an empty queue there and
/// answering "Queue is empty.".
#[test]
fn queue_commands_where_no_queue_is_say_so_and_create_nothing() {
    let cwd = tempfile::tempdir().expect("tempdir");
    for args in [&["list"][..], &["summary"], &["retry", "--all"]] {
        let (code, out) = support::run_with_timeout(
            std::process::Command::new(support::binary())
                .arg("queue")
                .args(args)
                .current_dir(cwd.path())
                .env_remove("RELAYWARD_CONFIG"),
            support::WAIT,
        );
        assert_eq!(code, Some(1), "queue {args:?}:\n{out}");
        assert!(
            out.contains("no queue in ./relayward-data/queue")
                && out.contains("embedded default")
                && out.contains("--config FILE"),
            "queue {args:?}:\n{out}"
        );
        assert!(
            !cwd.path().join("relayward-data").exists(),
            "queue {args:?} created ./relayward-data"
        );
    }
    let data = cwd.path().join("never-served");
    let config = cwd.path().join("relayward.toml");
    std::fs::write(
        &config,
        standard_config("").replace("DATA_DIR", &data.display().to_string()),
    )
    .expect("config");
    // A named configuration that has not been served yet has an empty queue; looking at it
    // creates nothing either.
    for (args, code_wanted, says) in [
        (&["list"][..], 0, "Queue is empty."),
        (&["list", "--json"], 0, "[]"),
        (&["summary"], 0, "TOTAL   0"),
        (
            &["retry", "--all"],
            0,
            "No message scheduled for immediate retry.",
        ),
        (
            &["show", "0661d2e2e74888efb82987f5"],
            1,
            "no message 0661d2e2e74888efb82987f5 in the queue",
        ),
    ] {
        let (code, out) = support::run_with_timeout(
            std::process::Command::new(support::binary())
                .arg("queue")
                .args(args)
                .arg("--config")
                .arg(&config),
            support::WAIT,
        );
        assert_eq!(code, Some(code_wanted), "queue {args:?}:\n{out}");
        assert!(out.contains(says), "queue {args:?}:\n{out}");
        assert!(!data.exists(), "queue {args:?} created {}", data.display());
    }
}

#[test]
fn cat_prints_the_message_as_stored_and_escapes_it_for_the_terminal() {
    let (server, _internal) = server_with_two_deferred();
    let id = ids(&queue_json(&server, &["list", "--from", "outside.test"]))[0].clone();
    let shown = queue_cmd(&server, &["cat", &id]);
    assert!(
        shown.starts_with("Received: from client.outside.test"),
        "{shown}"
    );
    assert!(shown.contains("Subject: \\x1b[31mred\\x1b[0m\n"), "{shown}");
    assert!(
        !shown.contains('\u{1b}'),
        "no raw escape reaches the terminal"
    );
    assert!(!shown.contains('\r'));
    let raw = queue_cmd(&server, &["cat", "--raw", &id]);
    assert!(
        raw.contains("Subject: \u{1b}[31mred\u{1b}[0m\r\n"),
        "{raw:?}"
    );
    assert!(raw.ends_with("hello\r\n"), "{raw:?}");
    let json = queue_json(&server, &["cat", &id]);
    assert_eq!(json["id"], id.as_str());
    assert_eq!(json["size"].as_u64(), Some(raw.len() as u64));
    assert!(
        json["content"]
            .as_str()
            .is_some_and(|c| c.contains("\u{1b}[31mred"))
    );
}

#[test]
fn summary_counts_pending_recipients_by_domain_and_age() {
    let (server, _internal) = server_with_two_deferred();
    let table = queue_cmd(&server, &["summary"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(
        header,
        [
            "DOMAIN", "T", "5m", "10m", "20m", "40m", "80m", "160m", "320m", "640m", "1280m",
            "1280m+"
        ]
    );
    let total: Vec<&str> = lines.next().expect("total").split_whitespace().collect();
    assert_eq!(total[..4], ["TOTAL", "2", "2", "0"], "{table}");
    let corp: Vec<&str> = lines.next().expect("a domain").split_whitespace().collect();
    assert_eq!(corp[..3], ["corp.example.test", "2", "2"], "{table}");
    let json = queue_json(&server, &["summary"]);
    assert_eq!(json["total"]["total"], 2);
    assert_eq!(json["domains"][0]["domain"], "corp.example.test");
    assert_eq!(json["buckets"].as_array().map(Vec::len), Some(10));
}

//! The admin socket (issue 14, item 8): `data_dir/admin.sock`, mode 0600. `relayward status`
//! shows the running server, `relayward bans list|clear` shows and lifts AUTH and connection
//! bans, and `relayward queue …` tells the server about its changes at once.

mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use relayward_testkit::client::Smtp;
use relayward_testkit::config::PASSWORD;
use support::{TestServer, queue_json, relayward_cmd, standard_config};

#[test]
fn the_socket_is_private_and_status_shows_the_running_server() {
    let server = TestServer::start(&standard_config(""));
    let socket = server.data_dir().join("admin.sock");
    let meta = std::fs::metadata(&socket).expect("admin.sock exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let (code, out) = relayward_cmd(&server, &["status"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Configuration: "), "{out}");
    assert!(out.contains("relayward.toml, loaded "), "{out}");
    assert!(
        out.contains(&format!("{} (mx): accepting", server.addr("mx"))),
        "{out}"
    );
    assert!(out.contains("Queue: 0 message(s)"), "{out}");

    let (code, out) = relayward_cmd(&server, &["status", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(status["pid"], server.pid());
    assert_eq!(status["listeners"].as_array().map(Vec::len), Some(3));
    assert_eq!(status["queue"]["total"], 0);
    assert!(
        status["config"]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("relayward.toml"))
    );
    assert!(status["config"]["loaded"].as_u64().is_some_and(|t| t > 0));
}

#[test]
fn status_without_a_server_says_so() {
    let server = TestServer::start(&standard_config(""));
    let (code, dir) = server.terminate();
    assert_eq!(code, Some(0));
    let (code, out) = support::run_with_timeout(
        std::process::Command::new(support::binary())
            .args(["status", "--config"])
            .arg(dir.path().join("relayward.toml")),
        support::WAIT,
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no server is running"), "{out}");
    // Without --config it looked where the embedded default keeps its data, and says so.
    let cwd = tempfile::tempdir().expect("tempdir");
    for args in [&["status"][..], &["bans", "list"]] {
        let (code, out) = support::run_with_timeout(
            std::process::Command::new(support::binary())
                .args(args)
                .current_dir(cwd.path())
                .env_remove("RELAYWARD_CONFIG"),
            support::WAIT,
        );
        assert_eq!(code, Some(1), "{args:?}: {out}");
        assert!(
            out.contains("no server is running on ./relayward-data")
                && out.contains("embedded default")
                && out.contains("--config FILE"),
            "{args:?}: {out}"
        );
    }
}

#[test]
fn auth_bans_are_listed_and_lifted() {
    let server = TestServer::start(&standard_config(
        "[limits]\nauth_failures_per_ip = 2\nauth_ban = \"1h\"\n",
    ));
    server.get_banned_from_auth(2);

    let (code, out) = relayward_cmd(&server, &["bans", "list"]);
    assert_eq!(code, Some(0), "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with("127.0.0.1 "))
        .unwrap_or_else(|| panic!("127.0.0.1 is not listed:\n{out}"));
    assert!(row.contains("auth"), "{row}");
    let (_, json) = relayward_cmd(&server, &["bans", "list", "--json"]);
    let bans: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(bans["bans"][0]["address"], "127.0.0.1");
    assert_eq!(bans["bans"][0]["kind"], "auth");
    assert!(
        bans["bans"][0]["remaining_seconds"]
            .as_u64()
            .is_some_and(|s| s > 3000)
    );

    let (code, out) = relayward_cmd(&server, &["bans", "clear", "127.0.0.1"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("1 ban(s) lifted"), "{out}");
    let (_, out) = relayward_cmd(&server, &["bans", "list"]);
    assert!(out.contains("No bans in force."), "{out}");
    server
        .smtp("submission")
        .send("EHLO client.outside.test")
        .expect(250)
        .starttls(server.ca())
        .send("EHLO client.outside.test")
        .expect(250)
        .auth_plain("alice@example.test", PASSWORD)
        .expect(235)
        .send("QUIT")
        .expect(221);
}

#[test]
fn connection_bans_are_listed_and_lifted_all_at_once() {
    let server = TestServer::start(&standard_config(
        "[limits]\nconnections_per_ip_per_minute = 2\n",
    ));
    for _ in 0..2 {
        server.smtp("mx").send("QUIT").expect(221);
    }
    let mut refused = Smtp::connect_silent(server.addr("mx"));
    refused.expect(421);
    let (_, out) = relayward_cmd(&server, &["bans", "list"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("127.0.0.1 ") && l.contains("connection")),
        "{out}"
    );
    let (code, out) = relayward_cmd(&server, &["bans", "clear", "--all"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("1 ban(s) lifted"), "{out}");
    server.smtp("mx").send("QUIT").expect(221);
}

/// Every `relayward queue` change reaches the runner through the socket (the server logs
/// the rescan it was asked for), and a retry is attempted at once although the schedule
/// says an hour.
#[test]
fn queue_changes_reach_the_running_server_through_the_socket() {
    let internal = support::rejecting_sink("127.0.0.1", "451 4.7.1 not today");
    let sink = internal.addr;
    let server = TestServer::start(&standard_config(&format!(
        "[[route]]\ndomain = \"corp.example.test\"\nto = \"smtp://{sink}\"\nrecipients = [\"stuck@corp.example.test\"]\n\n[delivery]\nretry_schedule = [\"1h\"]\n"
    )));
    server
        .smtp("mx")
        .send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<someone@outside.test>")
        .expect(250)
        .send("RCPT TO:<stuck@corp.example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: told\r\n\r\nhello\r\n.\r\n")
        .expect(250)
        .send("QUIT")
        .expect(221);
    server.wait_for_log_count("deferred id=", 1);
    let id = queue_json(&server, &["list"])[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    for (action, count) in [("hold", 1), ("release", 2), ("retry", 3)] {
        support::queue_cmd(&server, &[action, &id]);
        server.wait_for_log_count("queue changed by an admin command", count);
    }
    server.wait_for_log_count("deferred id=", 2);
}

/// A second `serve` on the same data directory would take the first one's socket away: it
/// refuses to start instead, naming the one that runs.
#[test]
fn a_second_server_on_the_same_data_dir_refuses_to_start() {
    let server = TestServer::start(&standard_config(""));
    let config = server
        .data_dir()
        .parent()
        .expect("dir")
        .join("relayward.toml");
    let (code, out) = support::run_with_timeout(
        std::process::Command::new(support::binary())
            .args(["serve", "--config"])
            .arg(&config),
        support::WAIT,
    );
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("another relayward serve is running"), "{out}");
    let (code, out) = relayward_cmd(&server, &["status"]);
    assert_eq!(code, Some(0), "the first one still answers:\n{out}");
}

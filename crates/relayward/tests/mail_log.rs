//! The mail log (issue 14, item 2): one line per event a mail admin greps for — connect and
//! disconnect, each accepted message (queue id, client, sender, recipient count, size, TLS,
//! login), each refused recipient with its reason, each delivery attempt (queue id,
//! recipient, route, relay host:port, delay, status, remote reply), Maildir deliveries and
//! bounces with their DSN id. `--log-json` writes JSON lines only.

mod support;

use relayward_testkit::config::PASSWORD;
use support::{TestServer, rejecting_sink, standard_config};

/// The one log line that contains every needle.
fn line_with(log: &str, needles: &[&str]) -> String {
    log.lines()
        .find(|line| needles.iter().all(|n| line.contains(n)))
        .unwrap_or_else(|| panic!("no line with {needles:?} in:\n{log}"))
        .to_string()
}

#[test]
fn every_event_of_a_message_has_its_line() {
    let internal = rejecting_sink("127.0.0.1", "451 4.7.1 not today");
    let sink = internal.addr;
    let server = TestServer::start(&standard_config(&format!(
        "[[route]]\ndomain = \"corp.example.test\"\nto = \"smtp://{sink}\"\nrecipients = [\"stuck@corp.example.test\"]\n"
    )));
    let mut client = server.smtp("submission");
    client
        .send("EHLO client.outside.test")
        .expect(250)
        .starttls(server.ca())
        .send("EHLO client.outside.test")
        .expect(250)
        .auth_plain("alice@example.test", PASSWORD)
        .expect(235)
        .send("MAIL FROM:<alice@example.test>")
        .expect(250)
        .send("RCPT TO:<nobody@example.test>")
        .expect(550)
        .send("RCPT TO:<postmaster@example.test>")
        .expect(250)
        .send("RCPT TO:<stuck@corp.example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: logged\r\n\r\nhello\r\n.\r\n")
        .expect_text(250, "queued as");
    let reply = client.last_lines().join(" ");
    let id = reply
        .split("queued as ")
        .nth(1)
        .expect("queue id")
        .trim()
        .to_string();
    client.send("QUIT").expect(221);
    server.wait_for_mail("example.test", "postmaster", 1);
    server.wait_for_log("deferred");
    server.wait_for_log("disconnect");
    let log = server.log();

    line_with(
        &log,
        &["connect", "client=127.0.0.1", "listener=submission"],
    );
    let refused = line_with(&log, &["recipient refused", "nobody@example.test"]);
    assert!(refused.contains("reason=unknown_user"), "{refused}");
    assert!(refused.contains("550 5.1.1"), "{refused}");
    let queued = line_with(&log, &["message queued", &id]);
    for field in [
        "client=127.0.0.1",
        "from=alice@example.test",
        "recipients=2",
        "size=",
        "tls=TLSv1.3",
        "login=alice@example.test",
    ] {
        assert!(queued.contains(field), "{field} missing: {queued}");
    }
    let maildir = line_with(&log, &["delivered", &id, "postmaster@example.test"]);
    for field in [
        "route=local",
        "relay=maildir:example.test/postmaster",
        "delay=",
        "status=2.0.0",
    ] {
        assert!(maildir.contains(field), "{field} missing: {maildir}");
    }
    let deferred = line_with(&log, &["deferred", &id, "stuck@corp.example.test"]);
    for field in [
        "route=relay_domain",
        &format!("relay=127.0.0.1[127.0.0.1]:{}", sink.port()),
        "delay=",
        "status=4.7.1",
        "reply=451 4.7.1 not today",
    ] {
        assert!(deferred.contains(field), "{field} missing: {deferred}");
    }
    line_with(&log, &["disconnect", "client=127.0.0.1", "duration="]);
    assert_eq!(
        log.lines().filter(|l| l.contains("message queued")).count(),
        1,
        "one line per event"
    );
}

#[test]
fn a_bounce_is_logged_with_its_dsn_id() {
    let internal = rejecting_sink("127.0.0.1", "550 5.1.1 no such user here");
    let sink = internal.addr;
    let server = TestServer::start(&standard_config(&format!(
        "[[route]]\ndomain = \"corp.example.test\"\nto = \"smtp://{sink}\"\nrecipients = [\"gone@corp.example.test\"]\n"
    )));
    server
        .smtp("mx")
        .send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<postmaster@example.test>")
        .expect(250)
        .send("RCPT TO:<gone@corp.example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: bounced\r\n\r\nhello\r\n.\r\n")
        .expect(250)
        .send("QUIT")
        .expect(221);
    server.wait_for_log("bounce queued");
    // The bounce itself is delivered to the sender's Maildir under the id the log gave it.
    server.wait_for_mail("example.test", "postmaster", 1);
    server.wait_for_log_count("delivered id=", 1);
    let log = server.log();
    let failed = line_with(&log, &["failed", "gone@corp.example.test"]);
    for field in [
        "route=relay_domain",
        &format!("relay=127.0.0.1[127.0.0.1]:{}", sink.port()),
        "delay=",
        "status=5.1.1",
        "reply=550 5.1.1 no such user here",
    ] {
        assert!(failed.contains(field), "{field} missing: {failed}");
    }
    let original = field(&failed, "id");
    let bounce = line_with(&log, &["bounce queued", &format!("id={original}")]);
    let dsn = field(&bounce, "dsn");
    assert_ne!(dsn, original, "the bounce is a message of its own");
    line_with(
        &log,
        &[
            "delivered",
            &format!("id={dsn}"),
            "rcpt=postmaster@example.test",
        ],
    );
}

/// The value of `name=` in a text log line.
fn field(line: &str, name: &str) -> String {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {line}"))
        .to_string()
}

/// With `--log-json`, stderr is JSON lines only — configuration warnings included — and the
/// accepted message's line carries its fields as JSON fields.
#[test]
fn log_json_writes_only_json_lines() {
    // A warning at start: a delivery command timeout below RFC 5321's 5 minutes.
    let server = TestServer::start_with(
        &standard_config("[delivery]\ncommand_timeout = \"1m\"\n"),
        |command| {
            command.arg("--log-json");
        },
    );
    server
        .smtp("mx")
        .send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<someone@outside.test>")
        .expect(250)
        .send("RCPT TO:<postmaster@example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: json\r\n\r\nhello\r\n.\r\n")
        .expect(250)
        .send("QUIT")
        .expect(221);
    server.wait_for_log("message delivered");
    let log = server.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{log}"))
        })
        .collect();
    let warning = lines
        .iter()
        .find(|l| l["fields"]["key"] == "delivery.command_timeout")
        .unwrap_or_else(|| panic!("the configuration warning is a JSON line:\n{log}"));
    assert_eq!(warning["level"], "WARN");
    let queued = lines
        .iter()
        .find(|l| l["fields"]["message"] == "message delivered")
        .expect("message delivered");
    assert_eq!(queued["fields"]["from"], "someone@outside.test");
    assert_eq!(queued["fields"]["recipients"], 1);
}

//! Seeing and trusting the configuration (issue 14, items 5–7): `check-config --effective`
//! shows every setting and whether it is the default, `--show-default` is the complete
//! commented file, `check-config` finds what `serve` would refuse (naming file, line, key and
//! fix), and the `[delivery]` concurrency, retry and timeout settings are read, checked and
//! reloadable.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use relayward_testkit::pki::self_signed;
use support::{
    TestServer, WAIT, binary, queue_json, rejecting_sink, run_with_timeout, standard_config,
};

/// Writes `body` after a minimal valid head into `dir/relayward.toml`.
fn config_file(dir: &tempfile::TempDir, body: &str) -> std::path::PathBuf {
    let path = dir.path().join("relayward.toml");
    let text = format!(
        "hostname = \"mx.example.test\"\ndata_dir = \"{}\"\n\n[[listen]]\naddress = \"127.0.0.1:0\"\nkind = \"mx\"\n\n[relay]\nlocal_domains = [\"example.test\"]\n\n{body}",
        dir.path().join("data").display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn check(args: &[&str], file: &std::path::Path) -> (Option<i32>, String) {
    run_with_timeout(
        Command::new(binary())
            .arg("check-config")
            .args(args)
            .arg(file),
        WAIT,
    )
}

#[test]
fn effective_shows_every_setting_with_its_value_and_whether_it_is_the_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = config_file(
        &dir,
        "[limits]\nmax_errors = 3\n\n[delivery]\nsmarthost = \"127.0.0.1:2525\"\nsmarthost_tls = \"none\"\nconnections_per_destination = 5\n\n[[route]]\ndomain = \"corp.example.test\"\nto = \"smtp://127.0.0.1:25\"\n",
    );
    let (code, out) = check(&["--effective"], &file);
    assert_eq!(code, Some(0), "{out}");
    let line = |key: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
            .to_string()
    };
    assert!(!line("limits.max_errors").contains("# default"), "{out}");
    assert!(line("limits.max_errors").starts_with("limits.max_errors = 3"));
    assert!(
        line("limits.max_connections").ends_with("# default"),
        "{out}"
    );
    assert!(line("delivery.connections_per_destination").contains("= 5"));
    assert!(line("delivery.max_connections").contains("= 100"));
    assert!(line("delivery.retry_schedule").contains("[\"1m\", \"5m\""));
    assert!(line("delivery.data_timeout").contains("\"10m\""));
    assert!(line("listen[0].kind").contains("\"mx\""));
    assert!(line("metrics.listen").contains("(not set)"));
    // A key of a `[[table]]` the file leaves out is at its default as much as any other.
    assert!(
        line("route[0].verify_recipients").ends_with("# default"),
        "{out}"
    );
    assert!(!line("route[0].to").contains("# default"), "{out}");
    assert!(
        out.contains("# Delivery: smart host 127.0.0.1:2525 (no TLS)"),
        "the delivery mode is named:\n{out}"
    );
    // MX delivery names the TLS policy in force (the default honours MTA-STS and DANE).
    for (policy, says) in [
        (
            "",
            "STARTTLS when offered, verified where MTA-STS or DANE demands it",
        ),
        (
            "[delivery]\ntls_policy = \"opportunistic\"\n",
            "opportunistic STARTTLS,",
        ),
    ] {
        let mx_dir = tempfile::tempdir().expect("tempdir");
        let mx = config_file(&mx_dir, policy);
        let (code, out) = check(&["--effective"], &mx);
        assert_eq!(code, Some(0), "{out}");
        assert!(
            out.contains(&format!("# Delivery: MX lookup, port 25, {says}")),
            "{policy}:\n{out}"
        );
    }

    let (code, out) = check(&["--effective", "--json"], &file);
    assert_eq!(code, Some(0), "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let settings = json["settings"].as_array().expect("settings");
    let setting = |key: &str| {
        settings
            .iter()
            .find(|s| s["key"] == key)
            .unwrap_or_else(|| panic!("no {key}"))
    };
    assert_eq!(setting("limits.max_errors")["value"], 3);
    assert_eq!(setting("limits.max_errors")["default"], false);
    assert_eq!(setting("limits.greet_pause")["value"], "300ms");
    assert_eq!(setting("limits.greet_pause")["default"], true);
    assert!(
        json["delivery_mode"]
            .as_str()
            .is_some_and(|m| m.contains("smart host"))
    );
    assert_eq!(json["problems"], serde_json::json!([]), "{out}");
    // The problems --effective reports after the settings are in its JSON too.
    let broken_dir = tempfile::tempdir().expect("tempdir");
    let broken = config_file(
        &broken_dir,
        "[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n",
    );
    let (code, out) = check(&["--effective", "--json"], &broken);
    assert_eq!(code, Some(78), "{out}");
    let json_start = out.find('{').expect("JSON");
    let json_end = out.rfind('}').expect("JSON");
    let json: serde_json::Value = serde_json::from_str(&out[json_start..=json_end]).expect("JSON");
    let problems = json["problems"].as_array().expect("problems");
    assert!(
        problems
            .iter()
            .any(|p| p["key"] == "tls.cert" && p["severity"] == "error" && p["line"] == 12),
        "{out}"
    );
}

#[test]
fn show_default_is_the_complete_commented_file() {
    let (code, out) = run_with_timeout(
        Command::new(binary()).args(["check-config", "--show-default"]),
        WAIT,
    );
    assert_eq!(code, Some(0), "{out}");
    for section in [
        "[[listen]]",
        "[tls]",
        "[relay]",
        "[[user]]",
        "[delivery]",
        "[dns]",
        "[[route]]",
        "[queue]",
        "[metrics]",
        "[limits]",
    ] {
        assert!(out.contains(section), "{section} missing:\n{out}");
    }
    for key in [
        "run_as",
        "connections_per_destination",
        "retry_schedule",
        "data_timeout",
        "min_free_bytes",
        "session_timeout",
        "auth_ban",
    ] {
        assert!(out.contains(&format!("{key} = ")), "{key} missing:\n{out}");
    }
    assert!(out.lines().count() > 60, "{out}");
    // The file a reader starts from writes each duration as README's Configuration does.
    let durations = |text: &str| -> Vec<(String, String)> {
        text.lines()
            .filter_map(|line| {
                let line = line.trim_start_matches('#').trim_start();
                let (key, rest) = line.split_once(" = ")?;
                let value = rest.split_whitespace().next()?;
                let inner = value.strip_prefix('"')?.strip_suffix('"')?;
                let is_duration = inner.starts_with(|c: char| c.is_ascii_digit())
                    && inner.ends_with(|c: char| c.is_ascii_alphabetic());
                (key.chars().all(|c| c.is_ascii_lowercase() || c == '_') && is_duration)
                    .then(|| (key.to_string(), value.to_string()))
            })
            .collect()
    };
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let section = &readme[readme.find("## Configuration").expect("section")..];
    let block = &section[section.find("```toml").expect("toml block")..];
    let block = &block[..block[7..].find("```").expect("block end") + 7];
    let documented = durations(block);
    let mut compared = 0;
    for (key, value) in durations(&out) {
        for (_, readme_value) in documented.iter().filter(|(k, _)| *k == key) {
            assert_eq!(&value, readme_value, "{key} in --show-default and README");
            compared += 1;
        }
    }
    assert!(compared >= 15, "only {compared} durations compared");
}

#[test]
fn check_config_finds_a_missing_certificate_and_names_file_line_key_and_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = config_file(
        &dir,
        "[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n",
    );
    let (code, out) = check(&[], &file);
    assert_eq!(code, Some(78), "{out}");
    let place = format!("{}:12: tls.cert:", file.display());
    assert!(out.contains(&place), "{place} expected:\n{out}");
    assert!(out.contains("/nonexistent/cert.pem"), "{out}");
    assert!(
        out.contains("point tls.cert and tls.key at"),
        "says the fix:\n{out}"
    );
    assert!(out.contains("relayward serve would refuse it"), "{out}");
    // ... and serve refuses it with the same words, before binding anything.
    let (code, served) = run_with_timeout(
        Command::new(binary())
            .args(["serve", "--config"])
            .arg(&file),
        WAIT,
    );
    assert_eq!(code, Some(78), "{served}");
    assert!(served.contains(&place), "{served}");
}

#[test]
fn check_config_finds_a_key_that_does_not_match_its_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let one = self_signed(&["mx.example.test"], "mx.example.test");
    let two = self_signed(&["other.example.test"], "other.example.test");
    std::fs::write(&cert, one.cert_pem).expect("write cert");
    std::fs::write(&key, two.key_pem).expect("write key");
    let file = config_file(
        &dir,
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    let (code, out) = check(&[], &file);
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("tls."), "{out}");
    assert!(
        out.to_lowercase().contains("match"),
        "says the key does not match:\n{out}"
    );
}

#[test]
fn check_config_finds_an_unreadable_smarthost_password_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = config_file(
        &dir,
        "[delivery]\nsmarthost = \"127.0.0.1:2525\"\nsmarthost_tls = \"none\"\nsmarthost_user = \"relay@example.test\"\nsmarthost_password_file = \"/nonexistent/smarthost.secret\"\n",
    );
    let (code, out) = check(&[], &file);
    assert_eq!(code, Some(78), "{out}");
    let place = format!("{}:15: delivery.smarthost_password_file:", file.display());
    assert!(out.contains(&place), "{place} expected:\n{out}");
    assert!(out.contains("/nonexistent/smarthost.secret"), "{out}");
}

#[test]
fn check_config_finds_a_data_dir_that_cannot_be_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "not a directory").expect("write");
    let path = dir.path().join("relayward.toml");
    std::fs::write(
        &path,
        format!(
            "hostname = \"mx.example.test\"\ndata_dir = \"{}\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nkind = \"mx\"\n[relay]\nlocal_domains = [\"example.test\"]\n",
            blocker.join("data").display()
        ),
    )
    .expect("write config");
    let (code, out) = check(&[], &path);
    assert_eq!(code, Some(78), "{out}");
    assert!(
        out.contains(&format!("{}:2: data_dir:", path.display())),
        "{out}"
    );
    assert!(out.contains("not a directory"), "{out}");
}

/// As root with `run_as = "nobody"`, a data directory only root may enter is refused, with
/// the command that fixes it.
#[test]
fn check_config_finds_a_data_dir_the_run_as_user_cannot_write() {
    if !nix_is_root() {
        eprintln!("skipped: needs root to judge another account's access");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    let file = dir.path().join("relayward.toml");
    std::fs::write(
        &file,
        format!(
            "hostname = \"mx.example.test\"\ndata_dir = \"{}\"\nrun_as = \"nobody\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nkind = \"mx\"\n[relay]\nlocal_domains = [\"example.test\"]\n",
            data.display()
        ),
    )
    .expect("write config");
    let (code, out) = check(&[], &file);
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("data_dir:"), "{out}");
    assert!(out.contains("nobody"), "{out}");
    assert!(
        out.contains("chown") || out.contains("cannot enter"),
        "says what to do:\n{out}"
    );
}

/// The delivery side's files are read after the switch to `run_as`: a TLS-policy CA file or
/// DNSSEC trust anchors only root can read are named with their key and who cannot read them.
#[test]
fn check_config_finds_delivery_files_the_run_as_user_cannot_read() {
    if !nix_is_root() {
        eprintln!("skipped: needs root to judge another account's access");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .expect("chmod");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::os::unix::fs::chown(&data, Some(65534), Some(65534)).expect("chown data to nobody");
    let ca = self_signed(&["ca.example.test"], "ca.example.test");
    let ca_file = dir.path().join("policy-ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).expect("write CA");
    let anchors = dir.path().join("root.key");
    // Never parsed here: a file the account cannot read is reported before its content.
    std::fs::write(&anchors, ". IN DNSKEY 257 3 8 AwEAAQ==\n").expect("write anchors");
    for file in [&ca_file, &anchors] {
        std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
    }
    let file = dir.path().join("relayward.toml");
    std::fs::write(
        &file,
        format!(
            "hostname = \"mx.example.test\"\ndata_dir = \"{}\"\nrun_as = \"nobody\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nkind = \"mx\"\n[relay]\nlocal_domains = [\"example.test\"]\n[delivery]\ntls_policy_ca_file = \"{}\"\n[dns]\ntrust_anchor = \"{}\"\n",
            data.display(),
            ca_file.display(),
            anchors.display()
        ),
    )
    .expect("write config");
    let (code, out) = check(&[], &file);
    assert_eq!(code, Some(78), "{out}");
    for key in ["delivery.tls_policy_ca_file:", "dns.trust_anchor:"] {
        let line = out
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("nothing about {key}\n{out}"));
        assert!(
            line.contains("not readable by nobody") && line.contains("chmod g+r"),
            "says who cannot read it and what to do: {line}"
        );
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn check_config_finds_duplicate_listen_addresses_with_their_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = config_file(
        &dir,
        "[[listen]]\naddress = \"127.0.0.1:2599\"\nkind = \"mx\"\n\n[[listen]]\naddress = \"127.0.0.1:2599\"\nkind = \"submission\"\n",
    );
    let (code, out) = check(&[], &file);
    assert_eq!(code, Some(78), "{out}");
    let place = format!("{}:16: listen[2].address:", file.display());
    assert!(out.contains(&place), "{place} expected:\n{out}");
    assert!(out.contains("listed twice"), "{out}");
}

#[test]
fn delivery_settings_are_checked_with_the_key_and_what_to_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = config_file(
        &dir,
        "[delivery]\nconnections_per_destination = 0\nretry_schedule = []\ncommand_timeout = \"0s\"\n",
    );
    let (code, out) = check(&[], &file);
    assert_eq!(code, Some(78), "{out}");
    for key in [
        "delivery.connections_per_destination",
        "delivery.retry_schedule",
        "delivery.command_timeout",
    ] {
        assert!(out.contains(&format!("{key}:")), "{key} not named:\n{out}");
    }
    let file = config_file(&dir, "[delivery]\nretry_schedule = [\"soon\"]\n");
    let (code, out) = check(&[], &file);
    assert_eq!(code, Some(78), "{out}");
    assert!(
        out.contains("retry_schedule") && out.contains("not a duration"),
        "{out}"
    );
}

/// Queues one message from a stranger for `rcpt` (a `[[route]]` recipient).
fn queue_for(server: &TestServer, rcpt: &str) {
    server
        .smtp("mx")
        .send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<someone@outside.test>")
        .expect(250)
        .send(&format!("RCPT TO:<{rcpt}>"))
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: slow peer\r\n\r\nhello\r\n.\r\n")
        .expect_text(250, "queued as")
        .send("QUIT")
        .expect(221);
}

/// `command_timeout` and `data_timeout` bound the wait for a next hop's replies: a peer
/// that answers EHLO after 3 s, or the final dot after 3 s, is given up on after the 1 s
/// the file says (the defaults, 5 and 10 minutes, would wait far beyond this test).
#[test]
fn delivery_timeouts_bound_the_wait_for_a_slow_next_hop() {
    use relayward_testkit::smtp_server::{Script, SmtpServer};
    let slow = Duration::from_secs(3);
    let slow_commands = SmtpServer::bind(
        "127.0.0.1:0",
        Script {
            reply_delay: slow,
            ..Script::default()
        },
    );
    let slow_data = SmtpServer::bind(
        "127.0.0.1:0",
        Script {
            data_delay: slow,
            ..Script::default()
        },
    );
    let server = TestServer::start(&standard_config(&format!(
        "[[route]]\ndomain = \"commands.example.test\"\nto = \"smtp://{}\"\nrecipients = [\"a@commands.example.test\"]\n\n\
         [[route]]\ndomain = \"data.example.test\"\nto = \"smtp://{}\"\nrecipients = [\"b@data.example.test\"]\n\n\
         [delivery]\ncommand_timeout = \"1s\"\ndata_timeout = \"1s\"\n",
        slow_commands.addr, slow_data.addr
    )));
    queue_for(&server, "a@commands.example.test");
    queue_for(&server, "b@data.example.test");
    server.wait_for_log_count("deferred id=", 2);
    let log = server.log();
    for rcpt in ["a@commands.example.test", "b@data.example.test"] {
        let line = log
            .lines()
            .find(|l| l.contains("deferred id=") && l.contains(rcpt))
            .unwrap_or_else(|| panic!("no deferred line for {rcpt}:\n{log}"));
        assert!(
            line.contains("within 1s") || line.contains("after 1s"),
            "{rcpt} was not given up on after 1 s: {line}"
        );
    }
    assert!(
        slow_data.data_read() >= 1,
        "the content reached the slow peer before the wait for its reply"
    );
}

/// `retry_schedule` takes effect on SIGHUP: a recipient deferred under `["1h"]` is next tried
/// an hour later; after a reload to `["20s"]`, the retry that fails again is set 20 s out.
#[test]
fn retry_schedule_is_reloadable() {
    let internal = rejecting_sink("127.0.0.1", "451 4.7.1 not today");
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
        .raw(b"Subject: stuck\r\n\r\nhello\r\n.\r\n")
        .expect_text(250, "queued as")
        .send("QUIT")
        .expect(221);
    let wait_in = |attempts: u64| -> (String, u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let list = queue_json(&server, &["list"]);
            let entry = &list[0];
            let recipient = &entry["recipients"][0];
            if recipient["attempts"].as_u64() == Some(attempts) {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_secs();
                let next = recipient["next_attempt"].as_u64().expect("next_attempt");
                return (
                    entry["id"].as_str().expect("id").to_string(),
                    next.saturating_sub(now),
                );
            }
            assert!(
                Instant::now() < deadline,
                "no attempt {attempts}:\n{list}\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (id, wait) = wait_in(1);
    assert!(
        (3000..=4000).contains(&wait),
        "first retry in {wait}s, expected ~1h"
    );
    server.reload_with(|text| {
        text.replace("retry_schedule = [\"1h\"]", "retry_schedule = [\"20s\"]")
    });
    support::queue_cmd(&server, &["retry", &id]);
    let (_, wait) = wait_in(2);
    assert!(
        wait <= 25,
        "after the reload the retry is {wait}s out, expected ~20s"
    );
}

#[test]
fn check_config_finds_a_dkim_key_serve_could_not_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("dkim.pem");
    std::fs::write(&key, "not a key").expect("write");
    let file = config_file(
        &dir,
        &format!(
            "[[dkim]]\ndomain = \"example.test\"\nselector = \"s1\"\nprivate_key_file = \"{}\"\n",
            key.display()
        ),
    );
    let (code, out) = check(&[], &file);
    assert_eq!(code, Some(78), "{out}");
    assert!(
        out.contains(&format!("{}:14: dkim[0].private_key_file:", file.display())),
        "{out}"
    );
    assert!(out.contains("dkim keygen"), "says the fix:\n{out}");
}

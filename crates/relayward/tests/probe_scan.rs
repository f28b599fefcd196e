//! `relayward probe` scanning like a blocklist operator, end to end through the binary: a
//! scan killed half way and resumed (`--resume`), targets from stdin (`-`), `--exclude-file`,
//! `--ports`. The targets are small closed SMTP responders on loopback addresses started by
//! the test, each counting the connections it got.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use relayward_testkit::smtp_server::{Script, SmtpServer};
use support::{binary, run_with_timeout};

/// A closed relay that answers every command after `delay` (so a scan takes long enough to be
/// killed half way), and counts its connections.
fn responder(bind: &str, delay: Duration) -> SmtpServer {
    let script = Script {
        greeting: "220 closed.example.test ESMTP test".into(),
        reply_delay: delay,
        ..Script::default()
    };
    SmtpServer::bind(bind, script.rcpt_reply("554 5.7.1 Relay access denied"))
}

/// Runs `probe` (a `relayward probe … -`, or a wrapper around one) with `targets` on its
/// stdin, and collects its output.
fn run_with_targets_on_stdin(mut probe: Command, targets: &[u8]) -> std::process::Output {
    let mut child = probe
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {probe:?}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(targets)
        .expect("write targets");
    child.wait_with_output().expect("probe output")
}

/// The JSON reports in a probe's stdout, by target.
fn reports(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn count_by_target(reports: &[serde_json::Value]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in reports {
        *counts
            .entry(r["target"].as_str().unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    counts
}

#[test]
fn a_killed_scan_resumed_gives_every_target_exactly_one_result() {
    // Eight slow closed servers on 127.0.4.1-8, one port; the rest of 127.0.4.0/28 has none.
    let delay = Duration::from_millis(8);
    let first = responder("127.0.4.1:0", delay);
    let port = first.addr.port();
    let mut servers = vec![first];
    for i in 2..=8 {
        servers.push(responder(&format!("127.0.4.{i}:{port}"), delay));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("scan.state");
    let state_arg = state.display().to_string();
    let range = format!("127.0.4.0/28:{port}");
    let args = [
        "probe",
        "--json",
        "-j",
        "2",
        "--test-timeout",
        "5s",
        "--resume",
        &state_arg,
        &range,
    ];

    // First run: killed once a few results are out.
    let mut child = Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn probe");
    let stdout = child.stdout.take().expect("stdout");
    let mut first_run = Vec::new();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    while first_run.len() < 4 && Instant::now() < deadline {
        match lines.next() {
            Some(Ok(line)) => first_run.push(line),
            _ => break,
        }
    }
    child.kill().expect("kill the scan");
    let _ = child.wait();
    assert!(
        first_run.len() >= 4,
        "the first run ended before it could be killed: {first_run:?}"
    );
    let done_before = state_lines(&state);
    assert!(
        (4..16).contains(&done_before),
        "killed half way: {done_before} inputs recorded"
    );

    // Second run, same arguments: finishes, and its output has every target once.
    let mut cmd = Command::new(binary());
    cmd.args(args);
    let (code, out) = run_with_timeout(&mut cmd, Duration::from_secs(120));
    assert_eq!(code, Some(0), "{out}");
    let all = reports(&out);
    let counts = count_by_target(&all);
    assert_eq!(counts.len(), 16, "{counts:?}");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    for s in &servers {
        let r = all
            .iter()
            .find(|r| r["target"] == s.addr.to_string())
            .expect("report of a server");
        assert_eq!(r["verdict"], "CLOSED", "{r}");
    }
    assert!(out.contains("resuming from"), "{out}");
    // The state file now records every input once.
    assert_eq!(state_lines(&state), 16);

    // A third run has nothing left to probe: every server keeps its count.
    let before: Vec<usize> = servers.iter().map(SmtpServer::connections).collect();
    let (code, out) = run_with_timeout(&mut cmd, Duration::from_secs(60));
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(count_by_target(&reports(&out)).len(), 16);
    let after: Vec<usize> = servers.iter().map(SmtpServer::connections).collect();
    assert_eq!(before, after, "a finished target was probed again");

    // Other arguments with the same state file: refused, nothing probed.
    let mut other = Command::new(binary());
    other.args([
        "probe",
        "--json",
        "--resume",
        &state_arg,
        &format!("127.0.4.0/29:{port}"),
    ]);
    let (code, out) = run_with_timeout(&mut other, Duration::from_secs(30));
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("other targets or options"), "{out}");
}

/// Finished inputs in a state file (its lines after the header).
fn state_lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| l.ends_with('}'))
        .count()
}

#[test]
fn targets_from_stdin_exclusions_and_several_ports() {
    let delay = Duration::from_millis(0);
    let a = responder("127.0.4.20:0", delay);
    let port = a.addr.port();
    let excluded = responder(&format!("127.0.4.21:{port}"), delay);
    // A second port on the first address.
    let a2 = responder("127.0.4.20:0", delay);
    let dir = tempfile::tempdir().expect("tempdir");
    let exclude = dir.path().join("exclude.txt");
    std::fs::write(&exclude, "# never these\n127.0.4.21/32\n").expect("write");

    let ports = format!("{port},{}", a2.addr.port());
    let mut probe = Command::new(binary());
    probe
        .args([
            "probe",
            "--json",
            "--test-timeout",
            "5s",
            "--ports",
            &ports,
            "--exclude-file",
        ])
        .arg(&exclude)
        .arg("-");
    let out = run_with_targets_on_stdin(probe, b"# from zmap\n127.0.4.20\n127.0.4.21\n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let counts = count_by_target(&reports(&stdout));
    let mut targets: Vec<&String> = counts.keys().collect();
    targets.sort();
    let mut want = [a.addr.to_string(), a2.addr.to_string()];
    want.sort();
    assert_eq!(targets, want.iter().collect::<Vec<_>>(), "{stdout}");
    assert_eq!(
        excluded.connections(),
        0,
        "an excluded address was connected to"
    );
    assert!(
        stderr.contains("2 address(es) skipped by --exclude-file"),
        "{stderr}"
    );
}

#[test]
fn target_typos_are_usage_errors_with_a_suggestion() {
    for (target, needle) in [
        ("300.1.1.1", "not an IPv4 address"),
        ("192.0.2.1:70000", "port 70000 is out of range"),
        ("::1:2525", "[::1]:2525"),
    ] {
        let mut cmd = Command::new(binary());
        cmd.args(["probe", target]);
        let (code, out) = run_with_timeout(&mut cmd, Duration::from_secs(30));
        assert_eq!(code, Some(2), "{target}: {out}");
        assert!(out.contains(needle), "{target}: {out}");
    }
}

/// A scan asked to run more targets at once than the open files limit allows is fitted to
/// the limit (and says so) instead of failing connects with EMFILE and calling live servers
/// unreachable.
///
/// ```text
/// prlimit --nofile=40:40 -- relayward probe --json -j 1000 -   (32 closed servers)
///   -> stderr "probing N targets at once, not 1000"; 32 × CLOSED, no UNREACHABLE
/// ```
#[test]
fn a_scan_wider_than_the_open_files_limit_is_fitted_to_it() {
    let first = responder("127.0.6.1:0", Duration::from_millis(2));
    let port = first.addr.port();
    let mut servers = vec![first];
    for i in 2..=32 {
        servers.push(responder(
            &format!("127.0.6.{i}:{port}"),
            Duration::from_millis(2),
        ));
    }
    let targets: String = (1..=32).map(|i| format!("127.0.6.{i}:{port}\n")).collect();
    let mut probe = Command::new("prlimit");
    probe.args(["--nofile=40:40", "--"]).arg(binary()).args([
        "probe",
        "--json",
        "-j",
        "1000",
        "--test-timeout",
        "5s",
        "-",
    ]);
    let out = run_with_targets_on_stdin(probe, targets.as_bytes());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let found = reports(&stdout);
    assert_eq!(found.len(), 32, "{stdout}\n{stderr}");
    let not_closed: Vec<String> = found
        .iter()
        .filter(|r| r["verdict"] != "CLOSED")
        .map(|r| format!("{} {} {}", r["target"], r["verdict"], r["reason"]))
        .collect();
    assert!(not_closed.is_empty(), "{not_closed:#?}\n{stderr}");
    assert!(stderr.contains("targets at once, not 1000"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    drop(servers);
}

//! The two halves against each other: `relayward probe` on `relayward serve`.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{PASSWORD, TestServer, binary, run_with_timeout, standard_config};

fn probe_json(target: &str) -> (Option<i32>, serde_json::Value, String) {
    let (code, out) = run_with_timeout(
        Command::new(binary()).args([
            "probe",
            "--json",
            "--tls",
            "auto",
            "--test-timeout",
            "5s",
            "--local-domain",
            "example.test",
            target,
        ]),
        Duration::from_secs(60),
    );
    let line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON object in probe output:\n{out}"));
    let json: serde_json::Value = serde_json::from_str(line).expect("probe JSON");
    (code, json, out)
}

#[test]
fn relayward_serve_is_closed_to_every_trick() {
    let server = TestServer::start(&standard_config(""));
    let (code, json, out) = probe_json(&server.addr("mx").to_string());
    assert_eq!(json["verdict"], "CLOSED", "{out}");
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(json["accepted"].as_array().map(Vec::len), Some(0), "{out}");
    let tests = json["tests"].as_array().expect("tests");
    let ran = tests.iter().filter(|t| t["outcome"] != "skipped").count();
    assert!(ran >= 50, "only {ran} tricks ran:\n{out}");
    let findings = &json["findings"];
    assert_eq!(findings["starttls_offered"], true, "{out}");
    assert_eq!(
        findings["auth_before_tls"].as_array().map(Vec::len),
        Some(0),
        "{out}"
    );
    assert_eq!(
        findings["vrfy_answers"], false,
        "VRFY must not verify users: {out}"
    );
}

#[test]
fn a_server_that_trusts_the_prober_is_reported_open() {
    // The classic mistake of the incident: the admin trusts the network the stranger is in.
    let config = standard_config("").replace(
        "trusted_networks = []",
        "trusted_networks = [\"127.0.0.0/8\"]",
    );
    let server = TestServer::start(&config);
    let (code, json, out) = probe_json(&server.addr("mx").to_string());
    assert_eq!(code, Some(1), "{out}");
    // Invented local users are refused, so the accepted external recipients make it OPEN;
    // on a loopback target the reason says the prober is probably trusted.
    assert_eq!(json["verdict"], "OPEN", "{out}");
    let reason = json["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("trusted networks"), "{reason}");
    let accepted: Vec<&str> = json["accepted"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    assert!(accepted.contains(&"plain-external"), "{accepted:?}");
    // Even for a trusted client, sender-specified routing is never honoured.
    for routed in [
        "percent-hack-local-domain",
        "quoted-at-local-domain",
        "bang-path-local-domain",
    ] {
        assert!(!accepted.contains(&routed), "{routed} accepted:\n{out}");
    }
}

fn tests_of<'a>(json: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    json["tests"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["id"] == id))
        .unwrap_or_else(|| panic!("no test {id}"))
}

/// The admin probes her own server from her own (trusted) address, five times in a row: the
/// probe spends no failed login on a server that relays for it anyway, so her users can still
/// log in from that address afterwards (the server's ban would otherwise lock them out).
#[test]
fn five_probe_runs_from_a_trusted_address_leave_auth_working() {
    // Five whole batteries from one address open more connections than the default
    // per-minute cap allows; the cap is not what this test is about.
    let config = standard_config("[limits]\nconnections_per_ip_per_minute = 1000\n").replace(
        "trusted_networks = []",
        "trusted_networks = [\"127.0.0.1/32\"]",
    );
    let server = TestServer::start(&config);
    let target = server.addr("mx").to_string();
    for run in 1..=5 {
        let (code, json, out) = probe_json(&target);
        assert_eq!(code, Some(1), "run {run}: {out}");
        let auth = tests_of(&json, "failed-auth-then-relay");
        assert_eq!(auth["outcome"], "skipped", "run {run}: {auth}");
    }
    let ca = server.data_dir().join("tls").join("cert.pem");
    server
        .smtp("submission")
        .send("EHLO laptop.example.test")
        .expect(250)
        .starttls(&ca)
        .send("EHLO laptop.example.test")
        .expect(250)
        .auth_plain("alice@example.test", PASSWORD)
        .expect_text(235, "2.7.0");
}

/// From an untrusted address the trick runs, and costs the server exactly one failed login,
/// with a login that cannot exist.
#[test]
fn failed_auth_trick_is_one_attempt_with_an_impossible_login() {
    let server = TestServer::start(&standard_config(""));
    let mut cmd = Command::new(binary());
    cmd.args([
        "probe",
        "-v",
        "--test-timeout",
        "5s",
        "--local-domain",
        "example.test",
    ])
    .arg(server.addr("mx").to_string());
    let (code, out) = run_with_timeout(&mut cmd, Duration::from_secs(60));
    assert_eq!(code, Some(0), "{out}");
    let auth: Vec<&str> = out.lines().filter(|l| l.starts_with(">>> AUTH")).collect();
    assert_eq!(auth.len(), 1, "{auth:?}\n{out}");
    assert!(auth[0].starts_with(">>> AUTH PLAIN "), "{auth:?}");
}

/// `-v` on one target prints the dialogue as it happens, like the old telnet relay test. The
/// target greets and then stalls until the test has read the banner line from the probe's
/// stdout: a probe that printed the dialogue only at the end could not show it in time.
#[test]
fn verbose_probe_of_one_target_streams_the_dialogue_as_it_happens() {
    use std::io::{BufRead, Write};
    use std::sync::mpsc;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = listener.local_addr().expect("addr").to_string();
    let (release, released) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        drop(listener);
        stream
            .write_all(b"220 stall.example.test ESMTP\r\n")
            .expect("banner");
        // Held here until the test has seen the banner line; then the server hangs up.
        let _ = released.recv_timeout(Duration::from_secs(30));
    });
    let mut child = Command::new(binary())
        .args(["probe", "-v", "--test-timeout", "20s"])
        .arg(&target)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn probe");
    let stdout = child.stdout.take().expect("stdout");
    let (line_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut next = || lines.recv_timeout(Duration::from_secs(10)).ok();
    assert_eq!(
        next().as_deref(),
        Some(format!("=== {target} ===").as_str())
    );
    assert_eq!(
        next().as_deref(),
        Some(format!("Connecting to {target} ...").as_str())
    );
    assert_eq!(
        next().as_deref(),
        Some("<<< 220 stall.example.test ESMTP"),
        "the banner line must be printed while the server still holds the session"
    );
    assert_eq!(next().as_deref(), Some(">>> EHLO example.org"));
    release.send(()).expect("release the server");
    let rest: Vec<String> = std::iter::from_fn(&mut next).collect();
    assert_eq!(child.wait().expect("exit").code(), Some(2), "{rest:?}");
    let closing = rest
        .iter()
        .position(|l| l == "System could not be tested")
        .unwrap_or_else(|| panic!("no closing line:\n{}", rest.join("\n")));
    assert!(
        rest[closing + 1].starts_with("Verdict: UNREACHABLE - "),
        "{rest:?}"
    );
    assert!(rest[closing + 2].starts_with("TARGET "), "{rest:?}");
    assert_eq!(
        rest.iter().filter(|l| l.starts_with("=== ")).count(),
        0,
        "one heading"
    );
}

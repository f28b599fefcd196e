//! The two halves against each other: `relayward probe` on `relayward serve`.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{TestServer, binary, run_with_timeout, standard_config};

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
    let verdict = json["verdict"].as_str().unwrap_or_default();
    assert!(
        verdict == "OPEN" || verdict == "ACCEPT-ALL",
        "verdict {verdict}:\n{out}"
    );
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

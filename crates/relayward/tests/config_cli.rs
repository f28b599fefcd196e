//! The configuration contract from the command line: `serve` refuses open-relay
//! configurations and says what to write instead; `check-config` replays the battery.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{binary, run_with_timeout};

fn write_config(dir: &tempfile::TempDir, body: &str) -> std::path::PathBuf {
    let path = dir.path().join("relayward.toml");
    let data = dir.path().join("data");
    let text = format!(
        "hostname = \"mx.example.test\"\ndata_dir = \"{}\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nkind = \"mx\"\n{body}",
        data.display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn relayward(args: &[&str], config: &std::path::Path) -> (Option<i32>, String) {
    run_with_timeout(
        Command::new(binary()).args(args).arg(config),
        Duration::from_secs(20),
    )
}

#[test]
fn serve_refuses_open_relay_configurations_and_says_what_to_write() {
    let cases: &[(&str, &str)] = &[
        ("\"0.0.0.0/0\"", "0.0.0.0/0"),
        ("\"::/0\"", "::/0"),
        ("\"10.0.0.0/7\"", "/8"),
        ("\"10.1.2.3/8\"", "10.0.0.0/8"),
    ];
    for (networks, hint) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = write_config(
            &dir,
            &format!(
                "[relay]\nlocal_domains = [\"example.test\"]\ntrusted_networks = [{networks}]\n"
            ),
        );
        let (code, out) = relayward(&["serve", "--config"], &config);
        assert_eq!(code, Some(78), "serve should refuse {networks}:\n{out}");
        assert!(out.contains("refusing to start"), "{out}");
        assert!(
            out.contains(hint),
            "message for {networks} should mention {hint}:\n{out}"
        );
        assert!(
            out.contains("relay.trusted_networks"),
            "message should name the key:\n{out}"
        );
    }
}

#[test]
fn unknown_keys_are_errors_that_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        &dir,
        "[relay]\nlocal_domains = [\"example.test\"]\nopen_relay = true\n",
    );
    let (code, out) = relayward(&["serve", "--config"], &config);
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("open_relay"), "{out}");
}

#[test]
fn check_config_replays_the_battery_and_passes_a_safe_configuration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        &dir,
        "[relay]\nlocal_domains = [\"example.test\"]\ntrusted_networks = [\"127.0.0.1/32\"]\n",
    );
    let (code, out) = relayward(&["check-config"], &config);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("PASS: no relay trick was relayed."), "{out}");
    assert!(
        out.contains("percent-hack-local-domain"),
        "battery lines expected:\n{out}"
    );
    assert!(out.contains("Relay access denied"), "{out}");
    assert!(!out.contains("RELAYED"), "{out}");
}

#[test]
fn check_config_fails_an_open_relay_configuration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        &dir,
        "[relay]\nlocal_domains = [\"example.test\"]\ntrusted_networks = [\"0.0.0.0/0\"]\n",
    );
    let (code, out) = relayward(&["check-config"], &config);
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("FAIL"), "{out}");
}

#[test]
fn the_embedded_default_is_valid_and_shown() {
    let (code, out) = run_with_timeout(
        Command::new(binary()).args(["check-config", "--show-default"]),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("127.0.0.1:2525"), "{out}");
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, out) = run_with_timeout(
        Command::new(binary())
            .arg("check-config")
            .current_dir(dir.path()),
        Duration::from_secs(20),
    );
    assert_eq!(
        code,
        Some(0),
        "embedded default must pass its own check:\n{out}"
    );
}

#[test]
fn hash_password_reads_stdin_and_prints_argon2id() {
    let hash = support::password_hash();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains(support::PASSWORD));
}

#[test]
fn check_config_shows_the_outbound_tls_policy_and_its_overrides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay =
        "[relay]\nlocal_domains = [\"example.test\"]\ntrusted_networks = [\"127.0.0.1/32\"]\n";
    let config = write_config(
        &dir,
        &format!(
            "{relay}\n[[tls_policy]]\ndomain = \"bank.example\"\nmode = \"require-verified\"\n\n[[tls_policy]]\ndomain = \"Broken.example\"\nmode = \"none\"\n"
        ),
    );
    let (code, out) = relayward(&["check-config"], &config);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("Outbound TLS (tls_policy = \"mta-sts-dane\"): MTA-STS and DANE honoured"),
        "the default is shown:\n{out}"
    );
    assert!(
        out.contains("  bank.example (mode = \"require-verified\"): verified TLS required"),
        "{out}"
    );
    assert!(
        out.contains("  broken.example (mode = \"none\"): opportunistic STARTTLS"),
        "{out}"
    );

    let config = write_config(
        &dir,
        &format!(
            "{relay}\n[delivery]\ntls_policy = \"opportunistic\"\n\n[[tls_policy]]\ndomain = \"a.example\"\nmode = \"none\"\n\n[[tls_policy]]\ndomain = \"A.example\"\nmode = \"none\"\n"
        ),
    );
    let (code, out) = relayward(&["check-config"], &config);
    assert_eq!(code, Some(78), "a domain named twice is an error:\n{out}");
    assert!(out.contains("tls_policy[1].domain"), "{out}");
    assert!(
        out.contains("Outbound TLS (tls_policy = \"opportunistic\"): opportunistic STARTTLS only"),
        "{out}"
    );
}

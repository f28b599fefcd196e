//! README's commands run as written (issue 14, "Done when"): every `relayward …` command in
//! the code blocks of the operator's sections (Command line, Checking a configuration, DKIM
//! signing, Running as a service, Status and bans, The queue) is extracted and run through `sh -c`
//! against a running test server, with README's placeholders (`FILE`, `ID`, `ADDR`, the
//! sample file names) replaced by the test's, and without `RELAYWARD_CONFIG`: a command that
//! needs the server's configuration must name it. Each must exit 0.
//!
//! Left out: `serve` (it runs until stopped; every test starts it), the tester's and the probe
//! service's commands (they reach hosts on the Internet; their own tests run them against
//! local servers), and system commands (`systemctl`, `useradd`; the unit file is checked by
//! `systemd-analyze verify` in `service.rs`).

mod support;

use std::process::Command;

use support::{TestServer, queue_json, rejecting_sink, run_with_timeout, standard_config};

const SECTIONS: [&str; 7] = [
    "## Quick start",
    "## Command line",
    "### Checking a configuration",
    "## DKIM signing",
    "## Running as a service",
    "### Status and bans",
    "## The queue",
];

/// `(section, command)` for every `relayward` command in README's code blocks: lines of shell
/// blocks (an `echo … | relayward …` pipeline whole), and `$ ` lines of text blocks; comments cut off, `A  /  queue B` split in two,
/// `X | --all --config FILE` taken as `X --config FILE`, optional `[--flag]` given.
fn readme_commands() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let mut out = Vec::new();
    let (mut section, mut block) = (String::new(), None::<String>);
    for line in readme.lines() {
        if let Some(fence) = line.strip_prefix("```") {
            block = match block {
                Some(_) => None,
                None => Some(fence.to_string()),
            };
            continue;
        }
        let Some(language) = &block else {
            if line.starts_with("## ") || line.starts_with("### ") {
                section = line.to_string();
            }
            continue;
        };
        if !SECTIONS.contains(&section.as_str()) {
            continue;
        }
        // `echo '…' | relayward hash-password`: the pipeline runs as it stands.
        if language == "sh" && line.starts_with("echo ") && line.contains(" | relayward ") {
            let pipeline = line.split("  #").next().unwrap_or(line).trim();
            out.push((section.clone(), pipeline.to_string()));
            continue;
        }
        let command = match language.as_str() {
            "sh" => line.strip_prefix("relayward "),
            _ => line.strip_prefix("$ relayward "),
        };
        let Some(command) = command else { continue };
        let command = command.split("  #").next().unwrap_or(command).trim();
        for part in command.split("  /  ") {
            // `X | --all --config FILE`: X with what follows the alternative.
            let part = match part.split_once(" | ") {
                Some((left, right)) => match right.split_once(' ') {
                    Some((_, rest)) => format!("{left} {rest}"),
                    None => left.to_string(),
                },
                None => part.to_string(),
            };
            let part = part
                .replace("[--json]", "--json")
                .replace("[--raw]", "--raw");
            out.push((section.clone(), format!("relayward {}", part.trim())));
        }
    }
    out
}

#[test]
fn the_readme_commands_run_as_written() {
    let internal = rejecting_sink("127.0.0.1", "451 4.7.1 not today");
    let sink = internal.addr;
    let server = TestServer::start(&standard_config(&format!(
        "[[route]]\ndomain = \"corp.example.test\"\nto = \"smtp://{sink}\"\nrecipients = [\"sales@corp.example.test\"]\n"
    )));
    for _ in 0..3 {
        server
            .smtp("mx")
            .send("EHLO client.outside.test")
            .expect(250)
            .send("MAIL FROM:<someone@outside.test>")
            .expect(250)
            .send("RCPT TO:<sales@corp.example.test>")
            .expect(250)
            .send("DATA")
            .expect(354)
            .raw(b"Subject: readme\r\n\r\nhello\r\n.\r\n")
            .expect(250)
            .send("QUIT")
            .expect(221);
    }
    server.wait_for_log_count("deferred id=", 3);
    let config = server
        .data_dir()
        .parent()
        .expect("dir")
        .join("relayward.toml");
    let work = tempfile::tempdir().expect("tempdir");
    let scratch = work.path().join("scratch.toml");
    let bin_dir = support::binary().parent().expect("bin dir").to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let commands = readme_commands();
    for wanted in [
        "queue cat",
        "queue summary",
        "status",
        "bans list",
        "check-config --effective",
        "dkim keygen",
        "check-config --show-default > /etc/relayward/relayward.toml",
        "queue retry ID --config FILE",
    ] {
        assert!(
            commands.iter().any(|(_, c)| c.contains(wanted)),
            "README shows no `relayward {wanted}`: {commands:#?}"
        );
    }
    let mut ran = 0;
    for (section, command) in &commands {
        if command.starts_with("relayward serve") {
            continue;
        }
        let id = queue_json(&server, &["list"])[0]["id"]
            .as_str()
            .expect("a queued message")
            .to_string();
        let concrete = command
            .replace(
                "/etc/relayward/relayward.toml",
                &scratch.display().to_string(),
            )
            .replace(
                "/etc/relayward/dkim-",
                &format!("{}/dkim-", work.path().display()),
            )
            .replace(" FILE", &format!(" {}", config.display()))
            .replace(" relayward.toml", &format!(" {}", config.display()))
            .replace(" ID", &format!(" {id}"))
            .replace(" ADDR", " 127.0.0.1");
        // The file `--show-default > …` writes is where the next `check-config` reads.
        if !scratch.exists() {
            std::fs::copy(&config, &scratch).expect("scratch copy");
        }
        let (code, out) = run_with_timeout(
            Command::new("sh")
                .arg("-c")
                .arg(&concrete)
                .current_dir(work.path())
                .env("PATH", &path)
                // As a reader runs them: each names its configuration, or needs none.
                .env_remove("RELAYWARD_CONFIG"),
            support::WAIT,
        );
        assert_eq!(
            code,
            Some(0),
            "README {section}: `{command}` (run as `{concrete}`) failed:\n{out}"
        );
        ran += 1;
    }
    assert!(ran >= 15, "only {ran} commands found in README");
}

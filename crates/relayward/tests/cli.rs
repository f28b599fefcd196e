//! The command line does what its documentation says: `--config` and `--json` anywhere,
//! `check-config FILE` and `check-config --config FILE` alike, completions and manual pages
//! generated from the same definition, and `--help` that names the environment it reads.

mod support;

use std::process::Command;

use support::{WAIT, binary, run_with_timeout};

/// A valid configuration file in `dir` (loopback, ephemeral port, data in `dir/data`).
fn config_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("relayward.toml");
    let text = format!(
        "hostname = \"mx.example.test\"\ndata_dir = \"{}\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nkind = \"mx\"\n[relay]\nlocal_domains = [\"example.test\"]\n",
        dir.path().join("data").display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn relayward(args: &[&str]) -> (Option<i32>, String) {
    run_with_timeout(Command::new(binary()).args(args), WAIT)
}

#[test]
fn config_and_json_are_accepted_after_the_subcommand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = config_file(&dir);
    let file = file.to_str().expect("utf-8 path");
    for args in [
        vec!["queue", "list", "--json", "--config", file],
        vec!["queue", "--config", file, "list", "--json"],
        vec!["--config", file, "--json", "queue", "list"],
        vec!["queue", "list", "-c", file, "--json"],
    ] {
        let (code, out) = relayward(&args);
        assert_eq!(code, Some(0), "relayward {args:?}:\n{out}");
        assert_eq!(
            out.trim(),
            "[]",
            "relayward {args:?} prints the empty queue as JSON"
        );
    }
}

#[test]
fn check_config_takes_the_file_as_argument_or_with_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = config_file(&dir);
    let file = file.to_str().expect("utf-8 path");
    for args in [
        vec!["check-config", file],
        vec!["check-config", "--config", file],
        vec!["--config", file, "check-config"],
        vec!["check-config", file, "--config", file],
    ] {
        let (code, out) = relayward(&args);
        assert_eq!(code, Some(0), "relayward {args:?}:\n{out}");
        assert!(out.contains("PASS: no relay trick was relayed."), "{out}");
        assert!(
            out.contains("mx.example.test"),
            "checked the file, not the default:\n{out}"
        );
    }
    let (code, out) = relayward(&["check-config", file, "--config", "/elsewhere.toml"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("two files given"), "{out}");
}

#[test]
fn completions_are_generated_for_every_shell() {
    for (shell, marker) in [
        ("bash", "_relayward()"),
        ("zsh", "#compdef relayward"),
        ("fish", "complete -c relayward"),
        ("elvish", "relayward"),
        ("powershell", "relayward"),
    ] {
        let (code, out) = relayward(&["completions", shell]);
        assert_eq!(code, Some(0), "completions {shell}:\n{out}");
        assert!(out.contains(marker), "completions {shell}:\n{out}");
        assert!(
            out.contains("check-config"),
            "{shell} completes subcommands"
        );
    }
    let (code, out) = relayward(&["completions", "tcsh"]);
    assert_eq!(code, Some(2), "an unknown shell is a usage error:\n{out}");
}

#[test]
fn man_prints_a_page_and_writes_one_per_subcommand() {
    let (code, out) = relayward(&["man"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(".TH relayward 1"), "{out}");
    assert!(
        out.contains("RUST_LOG"),
        "the page names the environment:\n{out}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let pages = dir.path().join("man1");
    let (code, out) = relayward(&["man", "--out-dir", pages.to_str().expect("utf-8")]);
    assert_eq!(code, Some(0), "{out}");
    for page in ["relayward.1", "relayward-serve.1", "relayward-queue.1"] {
        let text = std::fs::read_to_string(pages.join(page))
            .unwrap_or_else(|e| panic!("{page} not written: {e}"));
        assert!(text.contains(".TH"), "{page}:\n{text}");
    }
}

#[test]
fn help_names_the_environment_it_reads() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["queue", "--help"],
    ] {
        let (code, out) = relayward(&args);
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("RUST_LOG"), "relayward {args:?}:\n{out}");
        assert!(
            out.contains("RELAYWARD_CONFIG"),
            "relayward {args:?}:\n{out}"
        );
    }
    // The probe service reads RELAYWARD_PROBE_SERVICE_CONFIG (its --config says so), and its
    // environment note must not send the reader to the relay's variable instead.
    let (code, out) = relayward(&["probe-service", "--help"]);
    assert_eq!(code, Some(0), "{out}");
    let environment = out.split("Environment:").nth(1).unwrap_or_default();
    assert!(
        environment.contains("RELAYWARD_PROBE_SERVICE_CONFIG  configuration file"),
        "{out}"
    );
    assert!(environment.contains("RUST_LOG"), "{out}");
}

#[test]
fn hash_password_prints_json_with_json() {
    use std::io::Write as _;
    let mut child = Command::new(binary())
        .args(["hash-password", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start hash-password");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"a long passphrase\n")
        .expect("write password");
    drop(stdin);
    let output = child.wait_with_output().expect("hash-password finishes");
    assert!(output.status.success(), "{output:?}");
    let out = String::from_utf8_lossy(&output.stdout);
    let value: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    let hash = value["password_hash"].as_str().expect("password_hash");
    assert!(hash.starts_with("$argon2id$"), "{hash}");
}

/// Typed at a terminal (`relayward hash-password` and Enter, as its help invites), the
/// command asks for the password twice with echo off; it used to wait without a word while
/// the password appeared on the screen as it was typed.
#[test]
fn hash_password_on_a_terminal_prompts_twice_without_echo() {
    use std::io::{Read as _, Write as _};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave = std::fs::File::from(pty.slave);
    let child = Command::new(binary())
        .arg("hash-password")
        .stdin(slave.try_clone().expect("slave"))
        .stderr(slave)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start hash-password");
    // A failed wait below must not leave the command blocked on the terminal for ever.
    struct KillOnPanic(Option<u32>);
    impl Drop for KillOnPanic {
        fn drop(&mut self) {
            let pid = self.0.filter(|_| std::thread::panicking());
            if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
    let mut guard = KillOnPanic(Some(child.id()));
    let mut master = std::fs::File::from(pty.master);
    let screen = Arc::new(Mutex::new(Vec::new()));
    let mut reader = master.try_clone().expect("master");
    let seen = Arc::clone(&screen);
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            seen.lock().expect("screen").extend_from_slice(&buf[..n]);
        }
    });
    let wait_for = |text: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let shown = String::from_utf8_lossy(&screen.lock().expect("screen")).into_owned();
            if shown.contains(text) {
                return shown;
            }
            assert!(
                Instant::now() < deadline,
                "no {text:?} on the terminal; it shows: {shown:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("Password");
    master.write_all(b"tty secret\n").expect("type");
    wait_for("again");
    master.write_all(b"tty secret\n").expect("type");
    let output = child.wait_with_output().expect("hash-password finishes");
    guard.0 = None;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.starts_with("$argon2id$"), "{stdout}");
    let shown = String::from_utf8_lossy(&screen.lock().expect("screen")).into_owned();
    assert!(
        !shown.contains("tty secret"),
        "the password was echoed: {shown:?}"
    );
}

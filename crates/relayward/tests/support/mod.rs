//! Test support: runs the real `relayward` binary on loopback, and talks SMTP to it with the
//! testkit's transcript client:
//!
//! ```ignore
//! server.smtp("mx")
//!     .send("EHLO probe.outside.test").expect(250)
//!     .send("RCPT TO:<a@other.test>").expect_text(554, "5.7.1");
//! ```
//!
//! What is not about the binary (the client, the configuration, peers, certificates) is in
//! `relayward-testkit`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

// Re-exported for the tests; each test binary uses some of them.
#[allow(unused_imports)]
pub use relayward_testkit::client::base64;
#[allow(unused_imports)]
pub use relayward_testkit::config::{PASSWORD, password_hash, standard_config};
use relayward_testkit::smtp_server::{Script, SmtpServer};
#[allow(unused_imports)]
pub use relayward_testkit::wait::run_with_timeout;
#[allow(unused_imports)]
pub use relayward_testkit::{Smtp, WAIT};

/// Path of the binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_relayward"))
}

/// A running `relayward serve` with its own data directory.
pub struct TestServer {
    child: Child,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub listeners: Vec<(String, SocketAddr)>,
    stderr_lines: Arc<std::sync::Mutex<Vec<String>>>,
    /// The thread that collects stderr; it ends when the process's stderr closes.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

/// [`standard_config`] with one network in `[relay] trusted_networks` or (with `key` =
/// `"trusted_proxies"`) in `trusted_proxies`.
pub fn standard_config_with_network(key: &str, net: &str) -> String {
    let relay = match key {
        "trusted_networks" => format!("trusted_networks = [\"{net}\"]"),
        _ => format!("trusted_networks = []\n{key} = [\"{net}\"]"),
    };
    relayward_testkit::config::config_with_relay(&relay, "")
}

impl TestServer {
    /// Starts the server on `config` (the text `DATA_DIR` is replaced by a fresh directory) and
    /// waits until it has printed every listening address.
    pub fn start(config: &str) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, config)
    }

    pub fn start_in(dir: tempfile::TempDir, config: &str) -> TestServer {
        Self::spawn("serve", dir, config)
    }

    /// [`TestServer::start`] with the command adjusted first (more arguments, environment).
    pub fn start_with(config: &str, adjust: impl FnOnce(&mut Command)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::spawn_adjusted("serve", dir, config, adjust)
    }

    /// Starts `relayward probe-service` on `config` (`DATA_DIR` replaced as for `serve`); its
    /// doors are `addr("telnet")`, `addr("http")`, `addr("confirm")`.
    pub fn start_probe_service(config: &str) -> TestServer {
        Self::spawn(
            "probe-service",
            tempfile::tempdir().expect("tempdir"),
            config,
        )
    }

    /// [`TestServer::start_probe_service`] again on the data directory of a stopped one.
    pub fn restart_probe_service(dir: tempfile::TempDir, config: &str) -> TestServer {
        Self::spawn("probe-service", dir, config)
    }

    /// Runs `relayward SUBCOMMAND --config FILE` and waits for its listening lines and
    /// `ready`.
    fn spawn(subcommand: &str, dir: tempfile::TempDir, config: &str) -> TestServer {
        Self::spawn_adjusted(subcommand, dir, config, |_| {})
    }

    /// [`TestServer::start`] under a wrapper command, e.g. `["prlimit", "--nofile=256:4096",
    /// "--"]`: the wrapper runs the binary with the usual arguments.
    #[allow(dead_code)]
    pub fn start_under(wrapper: &[&str], config: &str) -> TestServer {
        Self::spawn_under(wrapper, "serve", config)
    }

    /// [`TestServer::start_probe_service`] under a wrapper command, as [`TestServer::start_under`].
    #[allow(dead_code)]
    pub fn start_probe_service_under(wrapper: &[&str], config: &str) -> TestServer {
        Self::spawn_under(wrapper, "probe-service", config)
    }

    fn spawn_under(wrapper: &[&str], subcommand: &str, config: &str) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut command = Command::new(wrapper[0]);
        command.args(&wrapper[1..]).arg(binary());
        Self::spawn_command(command, subcommand, dir, config, |_| {})
    }

    fn spawn_adjusted(
        subcommand: &str,
        dir: tempfile::TempDir,
        config: &str,
        adjust: impl FnOnce(&mut Command),
    ) -> TestServer {
        Self::spawn_command(Command::new(binary()), subcommand, dir, config, adjust)
    }

    fn spawn_command(
        mut command: Command,
        subcommand: &str,
        dir: tempfile::TempDir,
        config: &str,
        adjust: impl FnOnce(&mut Command),
    ) -> TestServer {
        let data_dir = dir.path().join("data");
        let config = config.replace("DATA_DIR", &data_dir.display().to_string());
        let config_path = dir.path().join("relayward.toml");
        std::fs::write(&config_path, &config).expect("write config");
        command
            .args([subcommand, "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "relayward=debug,info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        adjust(&mut command);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start relayward {subcommand}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let stderr_lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&stderr_lines);
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("lock").push(line);
            }
        });
        let listeners = read_listeners(stdout, &mut child, &stderr_lines);
        TestServer {
            child,
            dir,
            config_path,
            listeners,
            stderr_lines,
            stderr_reader: Some(stderr_reader),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's generated self-signed certificate: the CA a client trusts to talk TLS to it.
    pub fn ca(&self) -> PathBuf {
        self.data_dir().join("tls").join("cert.pem")
    }

    pub fn addr(&self, kind: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no {kind} listener in {:?}", self.listeners))
    }

    pub fn smtp(&self, kind: &str) -> Smtp {
        Smtp::connect(self.addr(kind))
    }

    /// Gets 127.0.0.1 banned from AUTH under `auth_failures_per_ip = failures`: on one
    /// submission session, that many wrong passwords (`535`), then the right one is refused
    /// with `454`.
    pub fn get_banned_from_auth(&self, failures: usize) {
        let mut client = self.smtp("submission");
        client
            .send("EHLO client.outside.test")
            .expect(250)
            .starttls(self.ca())
            .send("EHLO client.outside.test")
            .expect(250);
        for _ in 0..failures {
            client.auth_plain("alice@example.test", "wrong").expect(535);
        }
        client
            .auth_plain("alice@example.test", PASSWORD)
            .expect_text(454, "");
        client.send("QUIT").expect(221);
    }

    /// Alice, the standard configuration's user, submits one short message to `rcpt` the way a
    /// mail client does: submission, STARTTLS, AUTH PLAIN, then From/To/Subject and a line of
    /// body. The end of DATA must answer 250 "queued as".
    pub fn submit_as_alice(&self, rcpt: &str, subject: &str) {
        let from = "alice@example.test";
        self.smtp("submission")
            .send("EHLO laptop.example.test")
            .expect(250)
            .starttls(self.ca())
            .send("EHLO laptop.example.test")
            .expect(250)
            .auth_plain(from, PASSWORD)
            .expect(235)
            .send(&format!("MAIL FROM:<{from}>"))
            .expect(250)
            .send(&format!("RCPT TO:<{rcpt}>"))
            .expect(250)
            .send("DATA")
            .expect(354)
            .raw(
                format!("From: <{from}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n\r\nhi\r\n.\r\n")
                    .as_bytes(),
            )
            .expect_text(250, "queued as")
            .send("QUIT")
            .expect(221);
    }

    pub fn log(&self) -> String {
        self.stderr_lines.lock().expect("lock").join("\n")
    }

    /// Files delivered to a local mailbox's Maildir `new/`.
    pub fn maildir_new(&self, domain: &str, local: &str) -> Vec<PathBuf> {
        let dir = self
            .data_dir()
            .join("mail")
            .join(domain)
            .join(local)
            .join("new");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Waits (bounded) until the mailbox holds `count` messages, and returns their contents.
    pub fn wait_for_mail(&self, domain: &str, local: &str, count: usize) -> Vec<String> {
        self.wait_for_mail_bytes(domain, local, count)
            .into_iter()
            .map(|bytes| String::from_utf8(bytes).expect("mail is UTF-8"))
            .collect()
    }

    /// [`TestServer::wait_for_mail`] as the octets on disk.
    pub fn wait_for_mail_bytes(&self, domain: &str, local: &str, count: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + WAIT;
        loop {
            let files = self.maildir_new(domain, local);
            if files.len() >= count {
                return files
                    .iter()
                    .map(|f| std::fs::read(f).expect("read mail"))
                    .collect();
            }
            assert!(
                Instant::now() < deadline,
                "mailbox {local}@{domain} has {} messages, expected {count}\nserver log:\n{}",
                files.len(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) until the server's log contains `needle`.
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "log never said {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) until the server's log contains `needle` at least `count` times.
    pub fn wait_for_log_count(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + WAIT;
        while self.log().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "log never said {needle:?} {count} times:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Rewrites the configuration file through `edit` and sends SIGHUP; waits until the
    /// server has logged the outcome (`reloaded` or `refused`) once more than before.
    pub fn reload_with(&self, edit: impl FnOnce(String) -> String) {
        let before = self.log().matches("configuration reloaded").count()
            + self.log().matches("reload refused").count();
        let text = std::fs::read_to_string(&self.config_path).expect("read config");
        std::fs::write(&self.config_path, edit(text)).expect("rewrite config");
        self.signal("HUP");
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.log();
            let after = log.matches("configuration reloaded").count()
                + log.matches("reload refused").count();
            if after > before {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no reload outcome in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit by itself; returns its exit code. The log then holds
    /// every line the process wrote (the last ones are often what the test checks).
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.finish_log();
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) until the stderr reader has read to the end: a child the server left
    /// behind could hold the pipe open, so this gives up after a while instead of hanging.
    fn finish_log(&mut self) {
        let Some(reader) = self.stderr_reader.take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !reader.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if reader.is_finished() {
            let _ = reader.join();
        }
    }

    /// Sends SIGTERM, waits for the exit and returns the exit code and the directory (for a
    /// restart on the same data).
    pub fn terminate(mut self) -> (Option<i32>, tempfile::TempDir) {
        self.signal("TERM");
        let code = self.wait_exit();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        (code, dir)
    }

    /// Kills the server hard (SIGKILL) and returns its data directory for a restart.
    pub fn kill9(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the server's stdout until it says it is ready; collects `listening on ADDR (kind)`.
fn read_listeners(
    stdout: std::process::ChildStdout,
    child: &mut Child,
    stderr: &Arc<std::sync::Mutex<Vec<String>>>,
) -> Vec<(String, SocketAddr)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut listeners = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(found) = parse_listening(&line) {
                    listeners.push(found);
                }
                if line.contains("ready") {
                    return listeners;
                }
            }
            Err(_) => {
                let status = child.try_wait().ok().flatten();
                panic!(
                    "server not ready (exit: {status:?})\nstderr:\n{}",
                    stderr.lock().expect("lock").join("\n")
                );
            }
        }
    }
}

/// `relayward: listening on 127.0.0.1:2525 (mx: ...)` → ("mx", addr).
fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    let rest = line.split("listening on ").nth(1)?;
    let (addr, rest) = rest.split_once(" (")?;
    let kind: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    Some((kind, addr.parse().ok()?))
}

// ---- Shared by the red-team tests: the queue from outside, configurations, internal servers ----

/// Runs `relayward ARGS… --config <server's file>` (bounded); returns the exit code and
/// stdout with stderr.
pub fn relayward_cmd(server: &TestServer, args: &[&str]) -> (Option<i32>, String) {
    run_with_timeout(
        Command::new(binary())
            .args(args)
            .arg("--config")
            .arg(&server.config_path),
        WAIT,
    )
}

/// Runs `relayward queue --config <server's file> ARGS…` (bounded); returns stdout.
#[track_caller]
pub fn queue_cmd(server: &TestServer, args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new(binary())
        .arg("queue")
        .arg("--config")
        .arg(&server.config_path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("out"))
        .stderr(std::fs::File::create(&err_path).expect("err"))
        .spawn()
        .expect("run relayward queue");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("relayward queue {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        status.success(),
        "relayward queue {args:?} failed ({status}):\n{stdout}\n{stderr}"
    );
    stdout
}

#[track_caller]
pub fn queue_json(server: &TestServer, args: &[&str]) -> serde_json::Value {
    let mut args = args.to_vec();
    args.push("--json");
    let out = queue_cmd(server, &args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("queue {args:?}: not JSON ({e}):\n{out}"))
}

/// `relayward queue list --json`, as text.
pub fn queue_list(server: &TestServer) -> String {
    queue_cmd(server, &["list", "--json"])
}

/// Waits (bounded) until the queue is empty; fails with the queue and the log otherwise.
pub fn wait_queue_empty(server: &TestServer) {
    let deadline = Instant::now() + WAIT;
    loop {
        let list = queue_list(server);
        let json = &list[list.find('[').unwrap_or(0)..];
        if json.trim() == "[]" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "queue never emptied:\n{list}\nlog:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Messages spooled right now (nothing acknowledged behind the test's back): the files in
/// `queue/msg/` but the free preallocated ones.
pub fn spooled(server: &TestServer) -> usize {
    std::fs::read_dir(server.data_dir().join("queue").join("msg"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| !is_free_slot(&e.path()))
                .count()
        })
        .unwrap_or(0)
}

/// Whether `path` is a free preallocated spool file (`msg/slot-*.new`, zeros only), which the
/// spool keeps ready for messages to come.
pub fn is_free_slot(path: &Path) -> bool {
    let named = path
        .file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.starts_with("slot-") && name.ends_with(".new"));
    named && std::fs::read(path).is_ok_and(|bytes| bytes.iter().all(|&b| b == 0))
}

/// Runs `relayward check-config` on `config` (with `DATA_DIR` filled in); exit code and output.
pub fn check_config(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config.replace("DATA_DIR", &dir.path().join("data").display().to_string());
    let path = dir.path().join("relayward.toml");
    std::fs::write(&path, text).expect("write config");
    run_with_timeout(Command::new(binary()).arg("check-config").arg(&path), WAIT)
}

/// Runs `relayward serve` on `config` and expects it to refuse to start (exit status 78).
pub fn serve_refuses(config: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config.replace("DATA_DIR", &dir.path().join("data").display().to_string());
    let path = dir.path().join("relayward.toml");
    std::fs::write(&path, text).expect("write config");
    let (code, output) = run_with_timeout(
        Command::new(binary())
            .args(["serve", "--config"])
            .arg(&path),
        WAIT,
    );
    assert_eq!(
        code,
        Some(78),
        "serve did not refuse the configuration:\n{output}"
    );
    output
}

/// A server standing in for an internal host behind a `[[route]]`, listening on `ip` (a
/// loopback address): it refuses every recipient with `rcpt_reply` and records each MAIL FROM
/// it sees ([`SmtpServer::senders`]).
pub fn rejecting_sink(ip: &str, rcpt_reply: &str) -> SmtpServer {
    SmtpServer::bind(&format!("{ip}:0"), Script::default().rcpt_reply(rcpt_reply))
}

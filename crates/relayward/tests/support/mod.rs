//! Test support: runs the real `relayward` binary on loopback and talks SMTP to it with a
//! client whose calls read like a transcript:
//!
//! ```ignore
//! server.smtp_mx()
//!     .send("EHLO probe.outside.test").expect(250)
//!     .send("RCPT TO:<a@other.test>").expect_text(554, "5.7.1");
//! ```
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before the test fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(10);

/// Path of the binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_relayward"))
}

/// Password used for every test user; its argon2 hash is computed once per run.
pub const PASSWORD: &str = "correct horse battery staple";

/// Argon2 PHC hash of [`PASSWORD`], made by the binary itself (`relayward hash-password`).
pub fn password_hash() -> String {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        let mut child = Command::new(binary())
            .arg("hash-password")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run relayward hash-password");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{PASSWORD}\n").as_bytes())
            .expect("write password");
        let out = child.wait_with_output().expect("hash-password output");
        assert!(out.status.success(), "hash-password failed");
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_string()
    })
    .clone()
}

/// A running `relayward serve` with its own data directory.
pub struct TestServer {
    child: Child,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub listeners: Vec<(String, SocketAddr)>,
    stderr_lines: Arc<std::sync::Mutex<Vec<String>>>,
}

/// The standard test configuration: local domain `example.test`, user alice, no trusted
/// networks (so the loopback client is a stranger), three listeners on ephemeral ports.
pub fn standard_config(extra: &str) -> String {
    format!(
        r#"hostname = "mx.example.test"
data_dir = "DATA_DIR"

[[listen]]
address = "127.0.0.1:0"
kind = "mx"

[[listen]]
address = "127.0.0.1:0"
kind = "submission"

[[listen]]
address = "127.0.0.1:0"
kind = "submissions"

[relay]
local_domains = ["example.test"]
trusted_networks = []

[[user]]
login = "alice@example.test"
password_hash = "{hash}"

[[user]]
login = "bob@example.test"
password_hash = "{hash}"
send_as = ["bob@example.test", "sales@example.test"]

{extra}
"#,
        hash = password_hash()
    )
}

/// [`standard_config`] with one network in `[relay] trusted_networks` or (with `key` =
/// `"trusted_proxies"`) in `trusted_proxies`.
pub fn standard_config_with_network(key: &str, net: &str) -> String {
    let relay = match key {
        "trusted_networks" => format!("trusted_networks = [\"{net}\"]"),
        _ => format!("trusted_networks = []\n{key} = [\"{net}\"]"),
    };
    standard_config("").replace("trusted_networks = []", &relay)
}

impl TestServer {
    /// Starts the server on `config` (the text `DATA_DIR` is replaced by a fresh directory) and
    /// waits until it has printed every listening address.
    pub fn start(config: &str) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, config)
    }

    pub fn start_in(dir: tempfile::TempDir, config: &str) -> TestServer {
        let data_dir = dir.path().join("data");
        let config = config.replace("DATA_DIR", &data_dir.display().to_string());
        let config_path = dir.path().join("relayward.toml");
        std::fs::write(&config_path, &config).expect("write config");
        let mut child = Command::new(binary())
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "relayward=debug,info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start relayward serve");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let stderr_lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&stderr_lines);
        std::thread::spawn(move || {
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
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
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
        let deadline = Instant::now() + WAIT;
        loop {
            let files = self.maildir_new(domain, local);
            if files.len() >= count {
                return files
                    .iter()
                    .map(|f| std::fs::read_to_string(f).expect("read mail"))
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

    /// Waits for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
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

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A blocking SMTP client for transcript tests. Every call records the dialogue, and a failed
/// expectation prints the whole transcript.
pub struct Smtp {
    stream: Option<Box<dyn Stream>>,
    tcp: Option<TcpStream>,
    buffer: Vec<u8>,
    transcript: Vec<String>,
    pub last: Option<(u16, Vec<String>)>,
    pub banner: (u16, Vec<String>),
}

impl Smtp {
    /// Connects and reads the banner (which must be 220).
    pub fn connect(addr: SocketAddr) -> Smtp {
        let tcp = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
        tcp.set_read_timeout(Some(WAIT)).expect("timeout");
        tcp.set_write_timeout(Some(WAIT)).expect("timeout");
        let stream: Box<dyn Stream> = Box::new(tcp.try_clone().expect("clone"));
        let mut smtp = Smtp {
            stream: Some(stream),
            tcp: Some(tcp),
            buffer: Vec::new(),
            transcript: Vec::new(),
            last: None,
            banner: (0, Vec::new()),
        };
        let banner = smtp.read_reply().unwrap_or_else(|| panic!("no banner"));
        smtp.banner = banner.clone();
        assert_eq!(banner.0, 220, "banner: {banner:?}");
        smtp
    }

    /// Connects from `source` (another loopback address, e.g. `127.0.1.7`), so that one test
    /// can be many clients, and reads the banner.
    pub fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> Smtp {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let tcp = runtime
            .block_on(async {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(source, 0))?;
                tokio::time::timeout(WAIT, socket.connect(addr)).await?
            })
            .and_then(|tcp| tcp.into_std())
            .expect("connect");
        tcp.set_nonblocking(false).expect("blocking");
        tcp.set_read_timeout(Some(WAIT)).expect("timeout");
        tcp.set_write_timeout(Some(WAIT)).expect("timeout");
        let mut smtp = Smtp::connect_silent_over(tcp);
        smtp.expect(220);
        smtp
    }

    /// How long a read may wait, on this connection, before the test fails (default [`WAIT`]).
    /// Set it before STARTTLS: the TLS stream keeps the socket's timeout.
    pub fn read_timeout(&mut self, limit: Duration) -> &mut Self {
        if let Some(tcp) = &self.tcp {
            tcp.set_read_timeout(Some(limit)).expect("timeout");
        }
        self
    }

    /// Connects with implicit TLS (the `submissions` listener), trusting `ca_pem`.
    pub fn connect_tls(addr: SocketAddr, ca_pem: &Path) -> Smtp {
        let tcp = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
        tcp.set_read_timeout(Some(WAIT)).expect("timeout");
        let tls = tls_client(tcp, ca_pem);
        let mut smtp = Smtp {
            stream: Some(Box::new(tls)),
            tcp: None,
            buffer: Vec::new(),
            transcript: Vec::new(),
            last: None,
            banner: (0, Vec::new()),
        };
        let banner = smtp.read_reply().unwrap_or_else(|| panic!("no banner"));
        smtp.banner = banner.clone();
        assert_eq!(banner.0, 220);
        smtp
    }

    /// Sends one command line (CRLF added).
    pub fn send(&mut self, line: &str) -> &mut Self {
        self.transcript.push(format!(">>> {line}"));
        let mut bytes = line.as_bytes().to_vec();
        bytes.extend_from_slice(b"\r\n");
        self.write(&bytes);
        self
    }

    /// Sends raw bytes exactly as given.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.transcript
            .push(format!(">>> (raw) {:?}", String::from_utf8_lossy(bytes)));
        self.write(bytes);
        self
    }

    fn write(&mut self, bytes: &[u8]) {
        let stream = self.stream.as_mut().expect("connected");
        if let Err(e) = stream.write_all(bytes).and_then(|_| stream.flush()) {
            self.transcript.push(format!("!!! write failed: {e}"));
        }
    }

    /// Expects the next reply to have `code`.
    #[track_caller]
    pub fn expect(&mut self, code: u16) -> &mut Self {
        let reply = self.read_reply();
        match reply {
            Some((got, _)) if got == code => self,
            other => panic!(
                "expected {code}, got {other:?}\ntranscript:\n{}",
                self.transcript.join("\n")
            ),
        }
    }

    /// Expects `code` and a text containing `needle` (e.g. an enhanced code "5.7.1").
    #[track_caller]
    pub fn expect_text(&mut self, code: u16, needle: &str) -> &mut Self {
        let reply = self.read_reply();
        match &reply {
            Some((got, lines)) if *got == code && lines.iter().any(|l| l.contains(needle)) => self,
            other => panic!(
                "expected {code} containing {needle:?}, got {other:?}\ntranscript:\n{}",
                self.transcript.join("\n")
            ),
        }
    }

    /// Expects the server to close the connection (after any final reply).
    #[track_caller]
    pub fn expect_closed(&mut self) -> &mut Self {
        if let Some(reply) = self.read_reply() {
            panic!(
                "expected the connection to close, got {reply:?}\ntranscript:\n{}",
                self.transcript.join("\n")
            );
        }
        self
    }

    /// The lines of the last reply (e.g. EHLO keywords).
    pub fn last_lines(&self) -> Vec<String> {
        self.last
            .as_ref()
            .map(|(_, l)| l.clone())
            .unwrap_or_default()
    }

    /// STARTTLS: expects 220, then runs the TLS handshake trusting `ca_pem`.
    #[track_caller]
    pub fn starttls(&mut self, ca_pem: &Path) -> &mut Self {
        self.send("STARTTLS").expect(220);
        self.buffer.clear();
        let tcp = self.tcp.take().expect("plain connection");
        self.stream = Some(Box::new(tls_client(tcp, ca_pem)));
        self.transcript.push("=== TLS established".to_string());
        self
    }

    /// Switches to TLS after a `220` to STARTTLS that was already read (for tests that send
    /// STARTTLS as raw bytes).
    pub fn upgrade_without_command(&mut self, ca_pem: &Path) -> &mut Self {
        self.buffer.clear();
        let tcp = self.tcp.take().expect("plain connection");
        self.stream = Some(Box::new(tls_client(tcp, ca_pem)));
        self.transcript.push("=== TLS established".to_string());
        self
    }

    /// `AUTH PLAIN` with an initial response.
    pub fn auth_plain(&mut self, login: &str, password: &str) -> &mut Self {
        let token = base64_encode(format!("\0{login}\0{password}").as_bytes());
        self.send(&format!("AUTH PLAIN {token}"))
    }

    /// Reads one reply; `None` when the connection closed or timed out.
    pub fn read_reply(&mut self) -> Option<(u16, Vec<String>)> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line()?;
            self.transcript.push(format!("<<< {line}"));
            let code: u16 = line.get(..3)?.parse().ok()?;
            lines.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                self.last = Some((code, lines.clone()));
                return Some((code, lines));
            }
        }
    }

    fn read_line(&mut self) -> Option<String> {
        loop {
            if let Some(pos) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buffer.drain(..pos + 2).collect();
                return Some(String::from_utf8_lossy(&line[..pos]).into_owned());
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.as_mut()?.read(&mut chunk).ok()?;
            if n == 0 {
                self.transcript
                    .push("=== connection closed by server".to_string());
                return None;
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn transcript(&self) -> String {
        self.transcript.join("\n")
    }
}

fn tls_client(
    tcp: TcpStream,
    ca_pem: &Path,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca_pem).expect("read CA") {
        roots.add(cert.expect("CA cert")).expect("add CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("TLS client");
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    // Drive the handshake now so a failure shows here, not at the first command.
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .expect("TLS handshake");
    }
    stream
}

pub fn base64_encode(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Runs an external program with a time limit; returns (exit code, stdout+stderr).
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> (Option<i32>, String) {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out_path = out_dir.path().join("out");
    let out = std::fs::File::create(&out_path).expect("out file");
    let err = out.try_clone().expect("clone");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + limit;
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, std::fs::read_to_string(&out_path).unwrap_or_default())
}

// ---- Additions for tests/hardening_session.rs: talking before the banner (pregreet, PROXY) ----

impl Smtp {
    /// Connects without reading the banner, so a test can send first (pregreet) or send a
    /// PROXY header; read the banner with `.expect(220)`.
    pub fn connect_silent(addr: SocketAddr) -> Smtp {
        let tcp = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
        tcp.set_read_timeout(Some(WAIT)).expect("timeout");
        tcp.set_write_timeout(Some(WAIT)).expect("timeout");
        Smtp::connect_silent_over(tcp)
    }

    fn connect_silent_over(tcp: TcpStream) -> Smtp {
        let stream: Box<dyn Stream> = Box::new(tcp.try_clone().expect("clone"));
        Smtp {
            stream: Some(stream),
            tcp: Some(tcp),
            buffer: Vec::new(),
            transcript: Vec::new(),
            last: None,
            banner: (0, Vec::new()),
        }
    }

    /// Connects, sends `preamble` in clear (a PROXY header), then starts implicit TLS trusting
    /// `ca_pem` and reads the banner.
    pub fn connect_tls_after(addr: SocketAddr, preamble: &[u8], ca_pem: &Path) -> Smtp {
        let mut tcp = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
        tcp.set_read_timeout(Some(WAIT)).expect("timeout");
        tcp.write_all(preamble).expect("write preamble");
        let tls = tls_client(tcp, ca_pem);
        let mut smtp = Smtp {
            stream: Some(Box::new(tls)),
            tcp: None,
            buffer: Vec::new(),
            transcript: vec![format!(">>> (raw) {:?}", String::from_utf8_lossy(preamble))],
            last: None,
            banner: (0, Vec::new()),
        };
        smtp.expect(220);
        smtp
    }
}

// ---- Shared by the red-team tests: the queue from outside, configurations, internal servers ----

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

/// Messages spooled right now (nothing acknowledged behind the test's back).
pub fn spooled(server: &TestServer) -> usize {
    std::fs::read_dir(server.data_dir().join("queue").join("msg"))
        .map(|rd| rd.filter_map(Result::ok).count())
        .unwrap_or(0)
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

/// A tiny SMTP server standing in for an internal host behind a `[[route]]`, listening on `ip`
/// (a loopback address): it refuses every recipient with `rcpt_reply` and records each MAIL
/// FROM it sees.
pub fn rejecting_sink(
    ip: &str,
    rcpt_reply: &'static str,
) -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind((ip, 0)).expect("bind sink");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let record = Arc::clone(&record);
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(WAIT));
                let mut out = stream.try_clone().expect("clone");
                let mut lines = BufReader::new(stream);
                let _ = out.write_all(b"220 sink.corp.test\r\n");
                let mut line = String::new();
                while lines.read_line(&mut line).unwrap_or(0) > 0 {
                    let upper = line.to_ascii_uppercase();
                    let reply = if upper.starts_with("MAIL") {
                        let path = line.split(['<', '>']).nth(1).unwrap_or("?");
                        record.lock().expect("lock").push(format!("<{path}>"));
                        "250 ok\r\n".to_string()
                    } else if upper.starts_with("RCPT") {
                        format!("{rcpt_reply}\r\n")
                    } else if upper.starts_with("QUIT") {
                        let _ = out.write_all(b"221 bye\r\n");
                        return;
                    } else {
                        "250 sink\r\n".to_string()
                    };
                    if out.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    (addr, seen)
}

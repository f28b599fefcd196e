//! A private Postfix instance for a test (`postfix -c DIR`: its own main.cf, master.cf, queue
//! and data directories in a temporary directory), started with the settings and smtpd
//! listeners a test gives, and stopped when the guard is dropped, pass or fail.
//!
//! Include with `#[path = "support/postfix.rs"] mod postfix;`. Needs root (the daemons drop to
//! `mail_owner = postfix`) and the Debian package postfix.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const POSTFIX: &str = "/usr/sbin/postfix";

/// Whether this machine can run a private Postfix (root and the binary); tests skip otherwise.
pub fn available() -> bool {
    Path::new(POSTFIX).exists() && relayward_testkit::os::is_root()
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub struct Postfix {
    pub dir: tempfile::TempDir,
    /// The smtpd listeners, in the order given to [`Postfix::start`].
    pub ports: Vec<u16>,
}

impl Postfix {
    /// Starts an instance with `main_extra` appended to a minimal main.cf (loopback only,
    /// logging to a file in the directory) and one smtpd listener per entry of `listeners`:
    /// a loopback address to listen on and extra `-o name=value` options for that smtpd.
    /// `{dir}` in `main_extra` is the instance's directory.
    pub fn start(main_extra: &str, listeners: &[(&str, &str)]) -> Postfix {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        set_mode(&root, 0o755);
        for sub in ["etc", "queue", "data"] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        chown_postfix(&root.join("data"));
        let ports: Vec<u16> = listeners.iter().map(|_| free_port()).collect();
        let pf = Postfix { dir, ports };
        let main = format!(
            "{}\n{}\n",
            base_main_cf(&root),
            main_extra.replace("{dir}", &root.display().to_string())
        );
        std::fs::write(pf.etc().join("main.cf"), main).expect("main.cf");
        std::fs::write(pf.etc().join("master.cf"), master_cf(&pf.ports, listeners))
            .expect("master.cf");
        pf.run("check");
        pf.run("start");
        for (&port, (ip, _)) in pf.ports.iter().zip(listeners) {
            pf.wait_listening(ip, port);
        }
        pf
    }

    pub fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    fn run(&self, verb: &str) {
        let out = Command::new(POSTFIX)
            .arg("-c")
            .arg(self.etc())
            .arg(verb)
            .output()
            .expect("postfix");
        assert!(
            out.status.success(),
            "postfix {verb}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.maillog()
        );
    }

    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// Waits (bounded) until the mail log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.maillog().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn master_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.path().join("queue/pid/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn wait_listening(&self, ip: &str, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect((ip, port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("Postfix smtpd not listening on {port}:\n{}", self.maillog());
    }
}

impl Drop for Postfix {
    /// `postfix stop`, then `abort` and a SIGKILL for a master that did not go.
    fn drop(&mut self) {
        let pid = self.master_pid();
        let _ = Command::new(POSTFIX)
            .arg("-c")
            .arg(self.etc())
            .arg("stop")
            .output();
        let Some(pid) = pid else { return };
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if alive(pid) {
            let _ = Command::new(POSTFIX)
                .arg("-c")
                .arg(self.etc())
                .arg("abort")
                .output();
            relayward_testkit::os::kill(pid);
        }
    }
}

/// Alive and not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn base_main_cf(root: &Path) -> String {
    let d = root.display();
    format!(
        "compatibility_level = 3.6
config_directory = {d}/etc
queue_directory = {d}/queue
data_directory = {d}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
syslog_name = postfix-test
inet_interfaces = loopback-only
inet_protocols = ipv4
alias_maps =
alias_database =
biff = no
smtpd_banner = $myhostname ESMTP"
    )
}

fn master_cf(ports: &[u16], listeners: &[(&str, &str)]) -> String {
    let mut out = String::from("# service type private unpriv chroot wakeup maxproc command\n");
    for (port, (ip, options)) in ports.iter().zip(listeners) {
        out.push_str(&format!("{ip}:{port} inet n - n - - smtpd {options}\n"));
    }
    out.push_str(
        "pickup    unix  n - n 60   1 pickup
cleanup   unix  n - n -    0 cleanup
qmgr      unix  n - n 300  1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n -    - trivial-rewrite
bounce    unix  - - n -    0 bounce
defer     unix  - - n -    0 bounce
trace     unix  - - n -    0 bounce
verify    unix  - - n -    1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -    - proxymap
smtp      unix  - - n -    - smtp
relay     unix  - - n -    - smtp
error     unix  - - n -    - error
retry     unix  - - n -    - error
discard   unix  - - n -    - discard
local     unix  - n n -    - local
anvil     unix  - - n -    1 anvil
scache    unix  - - n -    1 scache
postlog   unix-dgram n - n - 1 postlogd
",
    );
    out
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

pub fn chown_postfix(path: &Path) {
    let status = Command::new("chown")
        .arg("postfix")
        .arg(path)
        .status()
        .expect("chown");
    assert!(status.success(), "chown postfix {}", path.display());
}

/// Postfix's `smtp-sink` on a random loopback port, dumping each message it receives to a
/// file (`-d`); killed on drop. `options` are extra smtp-sink flags (e.g. `-8` hides
/// 8BITMIME).
pub struct SmtpSink {
    child: std::process::Child,
    pub port: u16,
    dumps: tempfile::TempDir,
}

impl SmtpSink {
    pub fn start(options: &[&str]) -> SmtpSink {
        SmtpSink::start_at("127.0.0.1", free_port(), options)
    }

    /// On a given loopback address and port (an MX host of a test zone: every MX host of a
    /// test shares `mx_port`, see [`relayward_testkit::net::common_port`]).
    pub fn start_at(ip: &str, port: u16, options: &[&str]) -> SmtpSink {
        let sink = Path::new("/usr/sbin/smtp-sink");
        assert!(
            sink.exists(),
            "/usr/sbin/smtp-sink is missing: install the Debian package postfix (scripts/test does)"
        );
        let dumps = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(sink);
        if relayward_testkit::os::is_root() {
            // As root smtp-sink insists on a user to switch to after binding.
            cmd.args(["-u", "root"]);
        }
        let child = cmd
            .args(options)
            .arg("-d")
            .arg(format!("{}/%M.", dumps.path().display()))
            .arg(format!("{ip}:{port}"))
            .arg("10")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start smtp-sink");
        let sink = SmtpSink { child, port, dumps };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((ip, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "smtp-sink did not listen on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sink
    }

    /// Every dump so far.
    pub fn dumps(&self) -> Vec<Vec<u8>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dumps.path())
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        files.iter().filter_map(|f| std::fs::read(f).ok()).collect()
    }

    /// The first dump containing `needle`, waiting up to `limit` for it.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + limit;
        loop {
            let found = self
                .dumps()
                .into_iter()
                .find(|dump| dump.windows(needle.len()).any(|w| w == needle.as_bytes()));
            if found.is_some() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The message in an smtp-sink dump, as it was on the wire (after smtp-sink's own
/// `Received:` field): the dump starts with smtp-sink's envelope lines (`X-Client-Addr:`,
/// `X-Mail-Args:`, …) and stores lines with LF alone, so those are dropped and CRLF put back.
pub fn dumped_message(dump: &[u8]) -> Vec<u8> {
    const ENVELOPE: &[&str] = &[
        "X-Client-Addr:",
        "X-Client-Proto:",
        "X-Helo-Args:",
        "X-Mail-Args:",
        "X-Rcpt-Args:",
    ];
    let text = String::from_utf8_lossy(dump);
    let message: Vec<&str> = text
        .split('\n')
        .skip_while(|line| ENVELOPE.iter().any(|field| line.starts_with(field)))
        .collect();
    message.join("\r\n").into_bytes()
}

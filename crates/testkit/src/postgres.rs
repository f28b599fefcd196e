//! A throw-away PostgreSQL cluster for tests: no mock, no external database.
//!
//! [`Cluster::start`] runs Debian's `initdb` in a temp dir (as the `postgres` user when the
//! tests run as root: `initdb` and `pg_ctl` refuse root), then `pg_ctl start` on a free loopback
//! port with its Unix socket in the same temp dir, TLS on (a certificate from a test CA for
//! `127.0.0.1` and `localhost`), and a login role `relayward` with a password (SCRAM over TCP).
//! [`Cluster::database`] makes a fresh database per test, so tests in one binary share one
//! cluster ([`Cluster::shared`]) without seeing each other's queues.
//!
//! Stopping: `Drop` stops the server (`pg_ctl stop -m immediate`) and removes the directory.
//! A cluster in a `static` is never dropped, and a test process may also die by a signal, so
//! every cluster also has a watchdog: a small shell loop that stops the server and removes the
//! directory as soon as the test process is gone, however it ended.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The password of the `relayward` role in every test cluster.
pub const PASSWORD: &str = "relayward-test-password";
/// The login role tests connect as.
pub const ROLE: &str = "relayward";

/// A running throw-away cluster. See the module documentation.
pub struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    ca_pem: String,
    watchdog: Option<Child>,
}

/// One database of a [`Cluster`], owned by [`ROLE`].
#[derive(Debug, Clone)]
pub struct Database {
    pub name: String,
    /// `postgres://relayward@127.0.0.1:PORT/NAME` (TCP, no password in it).
    pub url: String,
    /// A file holding [`PASSWORD`], for `postgres_password_file`.
    pub password_file: PathBuf,
    /// The test CA that signed the server's certificate, for `postgres_ca_file`.
    pub ca_file: PathBuf,
}

impl Database {
    /// The `[queue]` table of a relayward configuration using this database.
    pub fn queue_table(&self, extra: &str) -> String {
        format!(
            "[queue]\nbackend = \"postgres\"\npostgres_url = \"{}\"\npostgres_password_file = \"{}\"\n{extra}\n",
            self.url,
            self.password_file.display()
        )
    }
}

impl Cluster {
    /// One cluster for the whole test binary, started on first use (each test then takes its
    /// own [`Cluster::database`]). Stopped by its watchdog when the process ends.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(Cluster::start)
    }

    /// Starts a new cluster of its own (for a test that stops or restarts the server).
    pub fn start() -> Cluster {
        let bin = bin_dir();
        let owner = postgres_owner();
        let dir = tempfile::Builder::new()
            .prefix("relayward-pg.")
            .tempdir()
            .expect("temp dir for PostgreSQL");
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown temp dir");
        }
        let pki = crate::pki::test_pki(&["127.0.0.1", "localhost"]);
        let mut cluster = Cluster {
            dir,
            port: 0,
            bin,
            owner,
            ca_pem: pki.ca_pem.clone(),
            watchdog: None,
        };
        cluster.initdb(&pki);
        cluster.watchdog = Some(cluster.spawn_watchdog());
        cluster.start_on_free_port();
        cluster.psql(
            "postgres",
            &format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'"),
        );
        cluster
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A fresh, empty database owned by [`ROLE`].
    pub fn database(&self) -> Database {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("t{}_{n}", std::process::id());
        self.psql("postgres", &format!("CREATE DATABASE {name} OWNER {ROLE}"));
        // Beside the cluster (which the watchdog removes), readable by the test's user.
        let password_file = self.dir.path().join(format!("{name}.password"));
        std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("password file");
        let ca_file = self.dir.path().join("ca.pem");
        std::fs::write(&ca_file, &self.ca_pem).expect("CA file");
        Database {
            url: format!("postgres://{ROLE}@127.0.0.1:{}/{name}", self.port),
            name,
            password_file,
            ca_file,
        }
    }

    /// Runs SQL as the superuser over the Unix socket; returns psql's output (unaligned, tuples
    /// only). Panics with the server log when it fails.
    #[track_caller]
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
            ])
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-d", database, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "psql {sql:?} failed: {}\nserver log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Stops the server the hard way (`pg_ctl stop -m immediate`: no checkpoint, like a crash;
    /// recovery replays the WAL at the next start).
    pub fn stop_immediately(&self) {
        self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "30"]);
    }

    /// Starts the server again on the same port after [`Cluster::stop_immediately`].
    pub fn start_again(&self) {
        let started = self.try_start(self.port);
        assert!(started, "PostgreSQL did not start again:\n{}", self.log());
    }

    /// A streaming replica of this cluster (`pg_basebackup -R` over the socket, its own temp
    /// dir and loopback port), running as a hot standby until [`Cluster::promote`]. With
    /// `synchronous`, the primary's commits wait for the standby to flush them
    /// (`synchronous_standby_names = '*'`), so what was acknowledged survives a failover.
    pub fn start_standby(&self, synchronous: bool) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("relayward-pg-standby.")
            .tempdir()
            .expect("temp dir for the standby");
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown temp dir");
        }
        let mut standby = Cluster {
            dir,
            port: 0,
            bin: self.bin.clone(),
            owner: self.owner,
            ca_pem: self.ca_pem.clone(),
            watchdog: None,
        };
        let status = standby
            .as_owner(Command::new(self.bin.join("pg_basebackup")))
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-D"])
            .arg(standby.data_dir())
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run pg_basebackup");
        assert!(status.success(), "pg_basebackup failed ({status})");
        // Its own socket directory; the primary's settings otherwise (TLS, fsync, ...).
        let conf = standby.data_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("standby conf");
        text.push_str(&format!(
            "\nunix_socket_directories = '{}'\nhot_standby = on\n",
            standby.socket_dir().display()
        ));
        std::fs::write(&conf, text).expect("standby conf");
        standby.watchdog = Some(standby.spawn_watchdog());
        standby.start_on_free_port();
        if synchronous {
            self.psql(
                "postgres",
                "ALTER SYSTEM SET synchronous_standby_names = '*'",
            );
            self.psql("postgres", "SELECT pg_reload_conf()");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while self.psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
            ) != "1"
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the standby never became synchronous:\n{}",
                    standby.log()
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        standby
    }

    /// Promotes a standby to primary (`pg_ctl promote`, waiting until it accepts writes). It
    /// was copied before its primary named it synchronous, so it commits without waiting for
    /// a standby of its own.
    pub fn promote(&self) {
        self.pg_ctl(&["promote", "-w", "-t", "30"]);
        assert_eq!(
            self.psql("postgres", "SELECT pg_is_in_recovery()"),
            "f",
            "the standby was not promoted:\n{}",
            self.log()
        );
    }

    fn initdb(&self, pki: &crate::pki::TestPki) {
        let status = self
            .as_owner(Command::new(self.bin.join("initdb")))
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(status.success(), "initdb failed ({status})");
        let data = self.data_dir();
        std::fs::write(data.join("server.crt"), &pki.cert_pem).expect("server.crt");
        std::fs::write(data.join("server.key"), &pki.key_pem).expect("server.key");
        std::fs::set_permissions(data.join("server.key"), PermissionsExt::from_mode(0o600))
            .expect("chmod key");
        self.chown(&data.join("server.crt"));
        self.chown(&data.join("server.key"));
        // Superuser over the socket without a password (the test helper); the relayward role
        // over TCP with SCRAM, as in production.
        let hba = "local all all trust\nlocal replication postgres trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n";
        std::fs::write(data.join("pg_hba.conf"), hba).expect("pg_hba.conf");
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nssl = on\nmax_connections = 300\nshared_buffers = 32MB\nfsync = on\nsynchronous_commit = on\nlogging_collector = off\n",
            self.socket_dir().display()
        );
        let mut text = std::fs::read_to_string(data.join("postgresql.conf")).expect("conf");
        text.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), text).expect("conf");
    }

    /// Starts on a port that is free right now; another process may take it in between, so a
    /// failed start is tried again on another.
    fn start_on_free_port(&mut self) {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("free port");
            if self.try_start(port) {
                self.port = port;
                return;
            }
        }
        panic!("PostgreSQL did not start:\n{}", self.log());
    }

    fn try_start(&self, port: u16) -> bool {
        let log = self.dir.path().join("server.log");
        self.as_owner(Command::new(self.bin.join("pg_ctl")))
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &format!("-p {port}"), "start"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn pg_ctl(&self, args: &[&str]) {
        let _ = self
            .as_owner(Command::new(self.bin.join("pg_ctl")))
            .arg("-D")
            .arg(self.data_dir())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Stops the server and removes the directory once this process is gone.
    fn spawn_watchdog(&self) -> Child {
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 0.5; done; '{pg_ctl}' -D '{data}' stop -m immediate -w -t 30 >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            pg_ctl = self.bin.join("pg_ctl").display(),
            data = self.data_dir().display(),
            dir = self.dir.path().display(),
        );
        let mut command = Command::new("sh");
        command
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        self.as_owner(command).spawn().expect("start the watchdog")
    }

    /// Runs `command` as the cluster's owner (the `postgres` user when we are root).
    fn as_owner(&self, mut command: Command) -> Command {
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
            command.env("HOME", self.dir.path());
        }
        command
    }

    fn chown(&self, path: &Path) {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "30"]);
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

/// Where Debian keeps the server programs: the newest `/usr/lib/postgresql/N/bin`
/// (`RELAYWARD_PG_BIN` overrides).
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("RELAYWARD_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").exists().then_some((version, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!("no PostgreSQL server found in /usr/lib/postgresql/*/bin: scripts/test installs Debian's postgresql")
    })
}

/// The `postgres` user's uid and gid when we are root (initdb and pg_ctl refuse root).
fn postgres_owner() -> Option<(u32, u32)> {
    let output = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&output.stdout).trim() != "0" {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("no postgres user: scripts/test installs Debian's postgresql");
    let fields: Vec<&str> = line.split(':').collect();
    Some((
        fields[2].parse().expect("uid"),
        fields[3].parse().expect("gid"),
    ))
}

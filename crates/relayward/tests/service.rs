//! Running as a service (issue 14, item 3): started as root with `run_as`, `serve` binds its
//! listeners, then works as that user, and mail still lands.

mod support;

use std::os::unix::fs::PermissionsExt;

use support::{TestServer, standard_config};

fn is_root() -> bool {
    uid_of("self").is_some_and(|uid| uid == 0)
}

/// The effective uid of a process, from `/proc/PID/status` (`Uid: real effective saved fs`).
fn uid_of(pid: &str) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn all_uids_of(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .filter_map(|u| u.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn started_as_root_with_run_as_it_serves_as_that_user_and_mail_lands() {
    if !is_root() {
        eprintln!("skipped: run_as needs the test to run as root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // nobody must reach and own its data directory, as an admin (or systemd's
    // StateDirectory=) would arrange.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir data");
    std::os::unix::fs::chown(&data, Some(65534), Some(65534)).expect("chown data to nobody");
    let config = format!("run_as = \"nobody\"\n{}", standard_config(""));
    let server = TestServer::start_in(dir, &config);

    assert_eq!(
        all_uids_of(server.pid()),
        vec![65534, 65534, 65534, 65534],
        "real, effective, saved and filesystem uid are nobody's\n{}",
        server.log()
    );
    assert!(
        server.log().contains("now running as nobody"),
        "{}",
        server.log()
    );
    server
        .smtp("mx")
        .send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<someone@outside.test>")
        .expect(250)
        .send("RCPT TO:<postmaster@example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"Subject: as nobody\r\n\r\nhello\r\n.\r\n")
        .expect_text(250, "delivered as")
        .send("QUIT")
        .expect(221);
    let mail = server.wait_for_mail("example.test", "postmaster", 1);
    assert!(mail[0].contains("Subject: as nobody"));
    let delivered = &server.maildir_new("example.test", "postmaster")[0];
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(delivered).expect("stat"));
    assert_eq!(owner, 65534, "the Maildir file belongs to nobody");
}

#[test]
fn run_as_without_root_is_refused_with_a_clear_message() {
    if !is_root() {
        eprintln!("skipped: needs root to start a child as another user");
        return;
    }
    // Started as nobody, asked to become "daemon": it cannot, and says why (exit 78).
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let config = format!("run_as = \"daemon\"\n{}", standard_config(""))
        .replace("DATA_DIR", &dir.path().join("data").display().to_string());
    let file = dir.path().join("relayward.toml");
    std::fs::write(&file, config).expect("write config");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut command = std::process::Command::new(support::binary());
    command.args(["serve", "--config"]).arg(&file);
    std::os::unix::process::CommandExt::uid(&mut command, 65534);
    std::os::unix::process::CommandExt::gid(&mut command, 65534);
    let (code, out) = support::run_with_timeout(&mut command, support::WAIT);
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("run_as"), "{out}");
    assert!(
        out.contains("needs relayward serve to be started as root"),
        "{out}"
    );
}

/// A file the server reads when it builds its delivery side — after it has become the
/// `run_as` account — that only root can read: `serve` refuses to start with exit status 78,
/// as for every configuration it refuses (the unit's `RestartPreventExitStatus=78` relies on
/// it), and names the file.
#[test]
fn a_file_the_run_as_account_cannot_read_is_refused_with_exit_78() {
    if !is_root() {
        eprintln!("skipped: run_as needs the test to run as root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir data");
    std::os::unix::fs::chown(&data, Some(65534), Some(65534)).expect("chown data to nobody");
    let ca = rcgen::generate_simple_self_signed(vec!["ca.example.test".to_string()])
        .expect("certificate");
    let ca_file = dir.path().join("policy-ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).expect("write CA");
    std::fs::set_permissions(&ca_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let config = format!(
        "run_as = \"nobody\"\n{}",
        standard_config(&format!(
            "[delivery]\ntls_policy_ca_file = \"{}\"\n",
            ca_file.display()
        ))
    )
    .replace("DATA_DIR", &data.display().to_string());
    let file = dir.path().join("relayward.toml");
    std::fs::write(&file, config).expect("write config");
    let mut command = std::process::Command::new(support::binary());
    command.args(["serve", "--config"]).arg(&file);
    let (code, out) = support::run_with_timeout(&mut command, support::WAIT);
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains(&ca_file.display().to_string()), "{out}");
}

/// `Type=notify`: READY=1 reaches `$NOTIFY_SOCKET` once the listeners are bound, so systemd
/// orders dependants after a server that really accepts; a session works at that moment.
#[test]
fn ready_is_sent_to_systemd_after_the_listeners_are_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket
        .set_read_timeout(Some(support::WAIT))
        .expect("timeout");
    let server = TestServer::start_with(&standard_config(""), |command| {
        command.env("NOTIFY_SOCKET", &socket_path);
    });
    let mut buffer = [0u8; 256];
    let n = socket.recv(&mut buffer).expect("a notification");
    let message = String::from_utf8_lossy(&buffer[..n]).to_string();
    assert!(message.contains("READY=1"), "{message}");
    server.smtp("mx").send("QUIT").expect(221);
    // A reload is announced and ends ready again.
    server.signal("HUP");
    let n = socket.recv(&mut buffer).expect("RELOADING=1");
    assert!(String::from_utf8_lossy(&buffer[..n]).contains("RELOADING=1"));
    let n = socket.recv(&mut buffer).expect("READY=1 again");
    assert!(String::from_utf8_lossy(&buffer[..n]).contains("READY=1"));
}

/// `contrib/relayward.service` is what README's "Running as a service" installs: it has the
/// settings issue 14 names, and `systemd-analyze verify` accepts it (with the binary path
/// pointed at the one under test, since verify checks that ExecStart exists).
#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/relayward.service");
    let unit = std::fs::read_to_string(&unit_path).expect("contrib/relayward.service");
    for line in [
        "Type=notify",
        "User=relayward",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/relayward",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecStart=/usr/local/bin/relayward serve --config /etc/relayward/relayward.toml",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "{line} missing from the unit"
        );
    }
    // A refused configuration must stop the unit, not loop: RestartPreventExitStatus= applies
    // to the main process only (systemd issue 11868), so a check-config in ExecStartPre=
    // exiting 78 would be restarted every RestartSec. serve runs the same checks and exits 78.
    assert!(
        unit.lines().any(|l| l == "RestartPreventExitStatus=78"),
        "RestartPreventExitStatus=78 missing from the unit"
    );
    assert!(
        !unit.lines().any(|l| l.starts_with("ExecStartPre=")),
        "an ExecStartPre= that exits 78 is restarted despite RestartPreventExitStatus=78"
    );
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(analyze) = analyze else {
        eprintln!("skipped: systemd-analyze is not installed (Debian package systemd)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("relayward.service");
    let binary = support::binary();
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/relayward", &binary.display().to_string()),
    )
    .expect("write unit");
    let (code, out) = support::run_with_timeout(
        std::process::Command::new(analyze).arg("verify").arg(&copy),
        support::WAIT,
    );
    assert_eq!(code, Some(0), "systemd-analyze verify:\n{out}");
    assert!(
        !out.contains("relayward.service"),
        "systemd-analyze has remarks about the unit:\n{out}"
    );
}

/// The soft and hard "Max open files" of a process, from `/proc/PID/limits`.
fn descriptor_limit_of(pid: u32) -> Option<(String, String)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut words = line["Max open files".len()..].split_whitespace();
    Some((words.next()?.to_string(), words.next()?.to_string()))
}

/// A shell's soft limit (often 1,024) is lower than the sessions `max_connections` allows
/// (1,000) plus deliveries; `serve` raises it to the hard limit at start and says so.
///
/// ```text
/// prlimit --nofile=256:4096 -- relayward serve   -> /proc/PID/limits: 4096 4096; log: raised
/// ```
#[test]
fn serve_raises_its_open_files_limit_to_the_hard_limit() {
    let server = TestServer::start_under(
        &["prlimit", "--nofile=256:4096", "--"],
        &standard_config(""),
    );
    assert_eq!(
        descriptor_limit_of(server.pid()),
        Some(("4096".to_string(), "4096".to_string()))
    );
    server.wait_for_log("open files limit raised to the hard limit");
    // And it serves.
    let mut smtp = server.smtp("mx");
    smtp.send("EHLO client.outside.test").expect(250);
    smtp.send("QUIT").expect(221);
}

/// When even the hard limit is below what the configured sessions and deliveries need,
/// `check-config` and `serve` warn, naming the key and the fix; `serve` still starts.
///
/// ```text
/// prlimit --nofile=256:256 -- relayward check-config  -> exit 0, warning: limits.max_connections: …
/// ```
#[test]
fn a_hard_open_files_limit_too_low_for_max_connections_is_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text =
        standard_config("").replace("DATA_DIR", &dir.path().join("data").display().to_string());
    let path = dir.path().join("relayward.toml");
    std::fs::write(&path, text).expect("write config");
    let output = std::process::Command::new("prlimit")
        .args(["--nofile=256:256", "--"])
        .arg(support::binary())
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("run check-config under prlimit (util-linux)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    let all = format!("{stdout}{stderr}");
    let warning = all
        .lines()
        .find(|l| l.contains("limits.max_connections") && l.contains("open files limit is 256"))
        .unwrap_or_else(|| panic!("no warning about the open files limit:\n{all}"));
    assert!(warning.contains("warning"), "{warning}");
    assert!(warning.contains("LimitNOFILE"), "{warning}");

    let server =
        TestServer::start_under(&["prlimit", "--nofile=256:256", "--"], &standard_config(""));
    server.wait_for_log("open files limit is 256");
}

//! `relayward probe` against a real Postfix started by the test: a private instance
//! (`postfix -c DIR`, its own main.cf, master.cf, queue and data directories in a temporary
//! directory) with two smtpd listeners on random loopback ports —
//!
//! - one with `mynetworks = 0.0.0.0/0` and Postfix's default `local_recipient_maps` (an open
//!   relay that refuses invented local users with 550 5.1.1 and takes `x@<random>.invalid`),
//! - one with Postfix's default relay restrictions (`permit_mynetworks,
//!   permit_sasl_authenticated, defer_unauth_destination`) and a `mynetworks` the prober is
//!   not in —
//!
//! relaying everything that is not local to `relayhost`, the probe's own confirm listener.
//! The instance is stopped when the test ends, pass or fail (a Drop guard). The second test
//! publishes the proven relay with `--zone-out` and serves the zone with the real `rbldnsd`.

#[path = "support/postfix.rs"]
mod postfix;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use postfix::{POSTFIX, free_port, set_mode};
use support::{binary, run_with_timeout};

/// The private Postfix: an open listener and one with default relay restrictions,
/// relaying everything not local to `relayhost_port` (the probe's confirm listener).
struct Postfix {
    instance: postfix::Postfix,
    open_port: u16,
    closed_port: u16,
}

impl Postfix {
    fn start(relayhost_port: u16) -> Postfix {
        let instance = postfix::Postfix::start(
            &format!(
                "myhostname = mx.example.test
mydomain = example.test
mydestination = $myhostname, example.test, localhost
# Nobody the prober is: the closed listener gets Postfix's default relay restrictions.
mynetworks = 192.0.2.0/24
# Everything not local goes to the probe's confirm listener, never out.
relayhost = [127.0.0.1]:{relayhost_port}
smtp_tls_security_level = none
smtpd_tls_security_level = none"
            ),
            &[("127.0.0.1", "-o mynetworks=0.0.0.0/0"), ("127.0.0.2", "")],
        );
        Postfix {
            open_port: instance.ports[0],
            closed_port: instance.ports[1],
            instance,
        }
    }

    fn maillog(&self) -> String {
        self.instance.maillog()
    }
}

/// `relayward probe --json ARGS…`: exit status, the report, and all output for messages.
fn probe(args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let mut cmd = Command::new(binary());
    cmd.args(["probe", "--json", "--test-timeout", "10s"])
        .args(args);
    let (code, out) = run_with_timeout(&mut cmd, Duration::from_secs(240));
    let line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON object in probe output:\n{out}"));
    let json = serde_json::from_str(line).expect("probe JSON");
    (code, json, out)
}

fn outcome<'a>(list: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    list.as_array()
        .and_then(|a| a.iter().find(|t| t["id"] == id))
        .map(|t| &t["outcome"])
        .unwrap_or_else(|| panic!("no {id} in {list}"))
}

#[test]
fn real_postfix_open_relay_is_open_confirmed_open_and_closed_when_closed() {
    if !postfix::available() {
        eprintln!(
            "SKIPPED: needs root and {} (scripts/test installs the Debian package postfix)",
            postfix::POSTFIX
        );
        return;
    }
    let confirm_port = postfix::free_port();
    let pf = Postfix::start(confirm_port);
    let open = format!("127.0.0.1:{}", pf.open_port);
    let closed = format!("127.0.0.2:{}", pf.closed_port);

    // Without --confirm: OPEN, though Postfix takes x@<random>.invalid (it does not look
    // recipient domains up), because it refuses invented local users.
    let (code, json, out) = probe(&[&open]);
    assert_eq!(json["verdict"], "OPEN", "{out}\n{}", pf.maillog());
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        outcome(&json["calibration"], "calib-random-local-user"),
        "refused",
        "{out}"
    );
    assert_eq!(
        outcome(&json["calibration"], "calib-invalid-domain"),
        "accepted",
        "{out}"
    );
    assert_eq!(outcome(&json["tests"], "plain-external"), "accepted");
    let reason = json["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("trusted networks"), "{reason}");

    // With --confirm: the tokens come back through Postfix's queue and smtp client.
    let listen = format!("127.0.0.1:{confirm_port}");
    let (code, json, out) = probe(&[
        "--confirm",
        "--confirm-listen",
        &listen,
        "--confirm-domain",
        "confirm.test",
        "--confirm-wait",
        "60s",
        &open,
    ]);
    assert_eq!(json["verdict"], "CONFIRMED-OPEN", "{out}\n{}", pf.maillog());
    assert_eq!(code, Some(1), "{out}");
    let confirmed: Vec<&str> = json["confirmed"]
        .as_array()
        .map(|c| c.iter().filter_map(|id| id.as_str()).collect())
        .unwrap_or_default();
    assert!(confirmed.contains(&"plain-external"), "{out}");
    // Postfix passes the fullwidth spelling of confirm.test on with SMTPUTF8; the confirm
    // listener takes it (it offers SMTPUTF8 and compares domains in their UTS 46 form), so
    // the internationalised trick is proven, not bounced with 5.6.7.
    assert!(
        confirmed.contains(&"idn-fullwidth-external"),
        "{out}\n{}",
        pf.maillog()
    );
    let arrived = json["confirm"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["arrived"] == true))
        .expect("an arrived token");
    assert_eq!(arrived["delivered_by"], "127.0.0.1", "{arrived}");
    let received = arrived["received"].as_array().expect("received chain");
    assert!(
        received.iter().any(|r| r
            .as_str()
            .unwrap_or_default()
            .contains("by mx.example.test (Postfix)")),
        "{arrived}"
    );

    // Default relay restrictions, prober not in mynetworks: CLOSED.
    let (code, json, out) = probe(&[&closed]);
    assert_eq!(json["verdict"], "CLOSED", "{out}\n{}", pf.maillog());
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        outcome(&json["tests"], "plain-external"),
        "refused-temporary",
        "defer_unauth_destination answers 454: {out}"
    );
}

const RBLDNSD: &str = "/usr/sbin/rbldnsd";
const DIG: &str = "/usr/bin/dig";

/// A running rbldnsd; killed on drop.
struct Rbldnsd {
    child: std::process::Child,
    port: u16,
}

impl Rbldnsd {
    /// Serves `zone` (an ip4set file in `dir`) as `relays.test` on a random loopback port.
    fn start(dir: &Path, zone_file: &str) -> Rbldnsd {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .expect("free udp port");
        let child = Command::new(RBLDNSD)
            .arg("-n")
            .arg("-b")
            .arg(format!("127.0.0.1/{port}"))
            .arg("-w")
            .arg(dir)
            .arg(format!("relays.test:ip4set:{zone_file}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start rbldnsd");
        Rbldnsd { child, port }
    }

    /// `dig +short` for `name`/`rtype` through this server.
    fn dig(&self, name: &str, rtype: &str) -> String {
        let out = Command::new(DIG)
            .args(["+short", "+time=1", "+tries=1", "-p"])
            .arg(self.port.to_string())
            .arg("@127.0.0.1")
            .args([name, rtype])
            .output()
            .expect("dig");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Rbldnsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn zone_out_lists_the_proven_relay_and_rbldnsd_serves_it() {
    let missing: Vec<&str> = [POSTFIX, RBLDNSD, DIG]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if !missing.is_empty() || !postfix::available() {
        eprintln!(
            "SKIPPED: needs root and {missing:?} (scripts/test installs postfix, rbldnsd, dnsutils)"
        );
        return;
    }
    let confirm_port = free_port();
    let pf = Postfix::start(confirm_port);
    let open = format!("127.0.0.1:{}", pf.open_port);
    let closed = format!("127.0.0.2:{}", pf.closed_port);
    let dir = tempfile::tempdir().expect("tempdir");
    // rbldnsd drops to its own user; it must be able to read the zone.
    set_mode(dir.path(), 0o755);
    let zone = dir.path().join("relays.zone");
    let listen = format!("127.0.0.1:{confirm_port}");
    let zone_arg = zone.display().to_string();
    let mut cmd = Command::new(binary());
    cmd.args([
        "probe",
        "--confirm",
        "--confirm-listen",
        &listen,
        "--confirm-domain",
        "confirm.test",
        "--confirm-wait",
        "60s",
        "--test-timeout",
        "10s",
        "--zone-out",
        &zone_arg,
        &open,
        &closed,
    ]);
    let (code, out) = run_with_timeout(&mut cmd, Duration::from_secs(240));
    assert_eq!(code, Some(1), "{out}\n{}", pf.maillog());
    assert!(out.contains("CONFIRMED-OPEN"), "{out}");
    assert!(out.contains("1 proven open relay(s) written to"), "{out}");
    let text = std::fs::read_to_string(&zone).expect("zone file");
    let entries: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with(['#', ':']))
        .collect();
    assert_eq!(entries.len(), 1, "{text}");
    assert!(
        entries[0].starts_with("127.0.0.1 :127.0.0.2:open relay: tests plain-external"),
        "{text}"
    );
    assert!(
        entries[0].contains("token delivered by 127.0.0.1"),
        "{text}"
    );

    let dns = Rbldnsd::start(dir.path(), "relays.zone");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut listed = String::new();
    while Instant::now() < deadline {
        listed = dns.dig("1.0.0.127.relays.test", "A");
        if !listed.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        listed, "127.0.0.2",
        "rbldnsd does not list the proven relay"
    );
    let txt = dns.dig("1.0.0.127.relays.test", "TXT");
    assert!(txt.contains("open relay: tests plain-external"), "{txt}");
    assert!(txt.contains("confirmed 20"), "{txt}");
    // The closed Postfix (127.0.0.2) is not listed.
    assert_eq!(dns.dig("2.0.0.127.relays.test", "A"), "");
    assert_eq!(dns.dig("2.0.0.127.relays.test", "TXT"), "");
}

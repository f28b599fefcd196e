//! Confirm mode, many hosts, DNSBL, Postfix's smtp-sink and the command line.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use common::{Kind, Spec, config, confirm_config, start, target};
use relayward_probe::confirm::ConfirmServer;
use relayward_probe::dnsbl::Dnsbl;
use relayward_probe::target::TargetInput;
use relayward_probe::{ProbeArgs, Verdict, probe_target};
use relayward_testkit::dns::{DnsServer, Zone};
use relayward_testkit::os::is_root;

#[tokio::test]
async fn confirm_mode_proves_a_real_relay() {
    let (cfg, listen) = confirm_config(Duration::from_secs(10)).await;
    let server = cfg
        .confirm
        .as_ref()
        .map(|c| Arc::clone(&c.server))
        .expect("confirm");
    let mut spec = Spec::new(Kind::PlainOpen);
    spec.forward_to = Some(listen);
    let relay = start(spec, "127.0.0.1:0").await;
    let r = probe_target(target(relay), Arc::new(cfg)).await;
    assert_eq!(r.verdict, Verdict::ConfirmedOpen, "{}", r.reason);
    // The listener forgets a target's tokens once its proof is over (a service's listener
    // serves probes for months).
    assert_eq!(server.tracked_tokens(), 0);
    assert!(
        r.confirmed.iter().any(|id| id == "plain-external"),
        "{:?}",
        r.confirmed
    );
    let c = r
        .confirm
        .iter()
        .find(|c| c.id == "plain-external")
        .expect("confirm result");
    assert!(c.sent && c.arrived && c.token.starts_with("rw"));
    let transcript = r.transcript.unwrap_or_default();
    assert!(transcript.iter().any(|l| l == ">>> DATA"));
}

#[tokio::test]
async fn confirm_mode_does_not_confirm_a_sink() {
    let (cfg, _) = confirm_config(Duration::from_millis(700)).await;
    let server = cfg
        .confirm
        .as_ref()
        .map(|c| Arc::clone(&c.server))
        .expect("confirm");
    let sink = start(Spec::new(Kind::AcceptEverything), "127.0.0.1:0").await;
    let r = probe_target(target(sink), Arc::new(cfg)).await;
    assert_eq!(
        server.tracked_tokens(),
        0,
        "tokens that never came are forgotten too"
    );
    // Accepted at RCPT, taken at the end of DATA, never delivered: not proven.
    assert_eq!(r.verdict, Verdict::Unconfirmed, "{}", r.reason);
    assert!(r.confirmed.is_empty());
    assert!(r.confirm.iter().any(|c| c.sent && !c.arrived));
    assert!(r.reason.contains("no token came back"), "{}", r.reason);
}

#[tokio::test]
async fn scan_of_a_loopback_range() {
    // Servers on a few 127.0.1.x addresses, all on one port; Linux routes 127/8 to lo.
    let first = start(Spec::new(Kind::Closed), "127.0.1.10:0").await;
    let port = first.port();
    let open = start(Spec::new(Kind::PercentHack), &format!("127.0.1.20:{port}")).await;
    let auth = start(Spec::new(Kind::AuthRequired), &format!("127.0.1.30:{port}")).await;
    let all = start(
        Spec::new(Kind::AcceptAllLocal),
        &format!("127.0.1.40:{port}"),
    )
    .await;
    let inputs =
        relayward_probe::target::expand(&["127.0.1.0/24".to_string()], port).expect("expand");
    assert_eq!(inputs.len(), 256);
    let mut cfg = config();
    cfg.test_timeout = Duration::from_secs(2);
    cfg.keep_transcript = false;
    let started = std::time::Instant::now();
    let mut streamed = 0;
    let summary = tokio::time::timeout(
        Duration::from_secs(60),
        relayward_probe::scan::scan(inputs, Arc::new(cfg), 64, std::future::pending(), |_| {
            streamed += 1
        }),
    )
    .await
    .expect("scan finished in time");
    assert_eq!(summary.reports.len(), 256);
    assert_eq!(streamed, 256);
    assert!(started.elapsed() < Duration::from_secs(30));
    let verdict = |addr: SocketAddr| {
        summary
            .reports
            .iter()
            .find(|r| r.target == addr.to_string())
            .map(|r| r.verdict)
    };
    assert_eq!(verdict(first), Some(Verdict::Closed));
    assert_eq!(verdict(open), Some(Verdict::Open));
    assert_eq!(verdict(auth), Some(Verdict::AuthRequired));
    assert_eq!(verdict(all), Some(Verdict::AcceptAll));
    let unreachable = summary
        .reports
        .iter()
        .filter(|r| r.verdict == Verdict::Unreachable)
        .count();
    assert_eq!(unreachable, 252);
    assert_eq!(relayward_probe::scan::exit_code(&summary.reports), 1);
}

#[tokio::test]
async fn stop_reports_what_is_done() {
    let closed = start(Spec::new(Kind::Closed), "127.0.0.1:0").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let inputs = vec![
        TargetInput::Addr(target(closed)),
        TargetInput::Addr(target(silent)),
    ];
    let mut cfg = config();
    cfg.test_timeout = Duration::from_secs(30);
    let summary = relayward_probe::scan::scan(
        inputs,
        Arc::new(cfg),
        2,
        tokio::time::sleep(Duration::from_secs(2)),
        |_| {},
    )
    .await;
    assert!(summary.interrupted);
    assert_eq!(summary.reports.len(), 1);
    assert_eq!(summary.reports[0].verdict, Verdict::Closed);
}

/// A DNS blocklist `listed.test` on which 127.0.0.2 is listed.
fn dns_server() -> SocketAddr {
    let zone = Zone::new().a("2.0.0.127.listed.test", Ipv4Addr::new(127, 0, 0, 2));
    DnsServer::start(zone).addr
}

#[tokio::test]
async fn dnsbl_lookups_against_a_local_dns_server() {
    let ns = dns_server();
    let zones = vec!["listed.test".to_string(), "clean.test".to_string()];
    let dnsbl = Dnsbl::new(zones, &[ns], Duration::from_secs(2)).expect("resolver");
    let listed = dnsbl.check("127.0.0.2".parse().unwrap()).await;
    assert_eq!(listed.len(), 2);
    assert!(listed[0].listed, "{listed:?}");
    assert_eq!(listed[0].answers, ["127.0.0.2"]);
    assert_eq!(listed[0].query, "2.0.0.127.listed.test.");
    assert!(!listed[1].listed && listed[1].error.is_none(), "{listed:?}");
    let clean = dnsbl.check("127.0.0.3".parse().unwrap()).await;
    assert!(
        clean.iter().all(|r| !r.listed && r.error.is_none()),
        "{clean:?}"
    );

    // And as a finding of a probe.
    let server = start(Spec::new(Kind::Closed), "127.0.0.2:0").await;
    let mut cfg = config();
    cfg.dnsbl = Some(Arc::new(dnsbl));
    let r = probe_target(target(server), Arc::new(cfg)).await;
    assert!(
        r.findings
            .dnsbl
            .iter()
            .any(|d| d.zone == "listed.test" && d.listed)
    );
    assert!(relayward_probe::output::findings_line(&r).contains("LISTED in listed.test"));
}

#[tokio::test]
async fn postfix_smtp_sink_is_accept_all() {
    let sink_bin = "/usr/sbin/smtp-sink";
    if !std::path::Path::new(sink_bin).exists() {
        eprintln!("SKIPPED: {sink_bin} missing (install the Debian package postfix)");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut command = tokio::process::Command::new(sink_bin);
    // smtp-sink refuses to run as root without a user to drop to.
    if is_root() {
        command.args(["-u", "nobody"]);
    }
    let mut child = command
        .args(["-c", &format!("127.0.0.1:{port}"), "100"])
        .kill_on_drop(true)
        .spawn()
        .expect("start smtp-sink");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = probe_target(target(addr), Arc::new(config())).await;
    let _ = child.kill().await;
    assert_eq!(r.verdict, Verdict::AcceptAll, "{}", r.reason);
    assert!(r.accepted.iter().any(|a| a == "plain-external"));
    let calib = r
        .calibration
        .iter()
        .find(|c| c.id == "calib-invalid-domain")
        .expect("calibrated");
    assert_eq!(calib.outcome, relayward_probe::Outcome::Accepted);
    // A real implementation of the session-level dialogue: smtp-sink takes XCLIENT, and
    // answers a PROXY header as an unknown command. It relays plain-external (as far as RCPT
    // shows), so the failed login is not spent on it.
    let outcome = |id: &str| r.tests.iter().find(|t| t.id == id).map(|t| t.outcome);
    use relayward_probe::Outcome::{Accepted, Refused};
    assert_eq!(outcome("xclient-spoof"), Some(Accepted));
    assert_eq!(outcome("pipelined-relay"), Some(Accepted));
    assert_eq!(outcome("proxy-header-spoof"), Some(Refused));
    let auth = r
        .tests
        .iter()
        .find(|t| t.id == "failed-auth-then-relay")
        .expect("failed-auth");
    assert_eq!(auth.outcome, relayward_probe::Outcome::Skipped);
    assert!(
        auth.note
            .as_deref()
            .is_some_and(|n| n.contains("plain-external was accepted")),
        "{:?}",
        auth.note
    );
}

#[derive(Parser)]
struct Harness {
    #[command(flatten)]
    args: ProbeArgs,
}

fn args(list: &[&str]) -> ProbeArgs {
    let mut argv = vec!["probe"];
    argv.extend_from_slice(list);
    Harness::try_parse_from(argv).expect("parse").args
}

#[tokio::test]
async fn command_line_exit_codes() {
    let closed = start(Spec::new(Kind::Closed), "127.0.0.1:0").await;
    let open = start(Spec::new(Kind::BangPath), "127.0.0.1:0").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let c = closed.to_string();
    let o = open.to_string();
    let d = dead.to_string();
    let fast = ["--test-timeout", "3s", "--json"];
    let with = |t: &[&str]| {
        let mut v: Vec<&str> = fast.to_vec();
        v.extend_from_slice(t);
        args(&v)
    };
    assert_eq!(relayward_probe::run(with(&[&c])).await, 0);
    assert_eq!(relayward_probe::run(with(&[&c, &d])).await, 0);
    assert_eq!(relayward_probe::run(with(&[&c, &o])).await, 1);
    assert_eq!(relayward_probe::run(with(&[&d])).await, 2);
    assert_eq!(relayward_probe::run(with(&["not a target!"])).await, 2);
    assert_eq!(
        relayward_probe::run(with(&["--confirm", &c])).await,
        2,
        "--confirm needs --confirm-domain"
    );
    assert_eq!(relayward_probe::run(args(&[])).await, 2);
    let file = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(file.path(), format!("# targets\n{c}\n\n{o} # open\n")).expect("write");
    let path = file.path().to_string_lossy().to_string();
    assert_eq!(
        relayward_probe::run(with(&["--targets-file", &path])).await,
        1
    );
}

#[test]
fn defaults_are_the_documented_ones() {
    let a = args(&["192.0.2.1"]);
    assert_eq!(a.port, 25);
    assert_eq!(a.concurrency, 64);
    assert_eq!(a.from_domain, "example.org");
    assert_eq!(a.to_domain, "example.net");
    assert_eq!(a.tls, relayward_probe::TlsMode::Auto);
    assert_eq!(a.confirm_wait, Duration::from_secs(60));
    assert_eq!(a.test_timeout, Duration::from_secs(20));
    assert_eq!(a.host_timeout, Duration::from_secs(600));
    let b = args(&[
        "-j",
        "8",
        "--rate",
        "5",
        "--dnsbl-zone",
        "a.test,b.test",
        "--nameserver",
        "127.0.0.1:5353",
        "-v",
        "x",
    ]);
    assert_eq!(b.concurrency, 8);
    assert_eq!(b.dnsbl_zones, ["a.test", "b.test"]);
    assert!(b.verbose);
}

/// The confirm listener serves at most MAX_CONNECTIONS sessions at once (more get 421) and
/// refuses a message past MAX_MESSAGE with 552 instead of reading on. The sessions come from
/// several loopback addresses: one sender holds at most MAX_CONNECTIONS_PER_SENDER.
#[tokio::test]
async fn confirm_listener_caps_sessions_and_message_size() {
    use relayward_probe::confirm::{MAX_CONNECTIONS, MAX_CONNECTIONS_PER_SENDER, MAX_MESSAGE};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let server = ConfirmServer::bind("127.0.0.1:0".parse().unwrap(), "confirm.test")
        .await
        .expect("confirm listener");
    let addr = server.local_addr();
    let banner = |s: tokio::net::TcpStream| async move {
        let mut r = BufReader::new(s);
        let mut line = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await;
        (r, line)
    };
    let from = |i: usize| async move {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        let source = Ipv4Addr::new(127, 0, 9, 1 + (i / MAX_CONNECTIONS_PER_SENDER) as u8);
        socket
            .bind(SocketAddr::from((source, 0)))
            .expect("bind source");
        socket.connect(addr).await.expect("connect")
    };
    let mut held = Vec::new();
    for i in 0..MAX_CONNECTIONS {
        let (r, line) = banner(from(i).await).await;
        assert!(line.starts_with("220 "), "{line}");
        held.push(r);
    }
    let (_, line) = banner(from(MAX_CONNECTIONS).await).await;
    assert!(
        line.starts_with("421 4.7.0 too many connections,"),
        "{line}"
    );
    drop(held);

    // Sessions are free again; a message that will not end is cut off at MAX_MESSAGE.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut r, line) = banner(s).await;
    assert!(line.starts_with("220 "), "{line}");
    let mut reply = String::new();
    for cmd in [
        "HELO x",
        "MAIL FROM:<a@x.test>",
        "RCPT TO:<t@confirm.test>",
        "DATA",
    ] {
        r.get_mut()
            .write_all(format!("{cmd}\r\n").as_bytes())
            .await
            .expect("write");
        reply.clear();
        r.read_line(&mut reply).await.expect("reply");
    }
    assert!(reply.starts_with("354"), "{reply}");
    let chunk = format!("{}\r\n", "x".repeat(998));
    let mut sent = 0;
    while sent <= MAX_MESSAGE + chunk.len() {
        if r.get_mut().write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    reply.clear();
    let _ = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut reply)).await;
    assert!(reply.starts_with("552 "), "{reply}");
}

/// What a scan keeps of the reports it has streamed: `relayward probe` passes
/// `TargetReport::into_summary`, so a scan of 65 536 targets holds a few hundred bytes per
/// target until its totals, not every test, finding and dialogue line (2 995 closed servers
/// on loopback: 225 MB resident before, 35 MB after). Verdicts, the exit status and the
/// `--zone-out` proof are the same as from the whole reports.
#[tokio::test]
async fn a_scan_keeps_only_a_summary_of_the_reports_it_streamed() {
    let (cfg, listen) = confirm_config(Duration::from_secs(10)).await;
    let mut spec = Spec::new(Kind::PlainOpen);
    spec.forward_to = Some(listen);
    let relay = start(spec, "127.0.0.1:0").await;
    let closed = start(Spec::new(Kind::Closed), "127.0.0.1:0").await;
    let inputs = vec![
        TargetInput::Addr(target(relay)),
        TargetInput::Addr(target(closed)),
    ];
    let mut streamed = Vec::new();
    let summary = tokio::time::timeout(
        Duration::from_secs(60),
        relayward_probe::scan::scan_inputs(
            inputs,
            Arc::new(cfg),
            2,
            std::future::pending(),
            |done| streamed.extend(done.reports.iter().cloned()),
            relayward_probe::TargetReport::into_summary,
        ),
    )
    .await
    .expect("scan finished in time");
    streamed.sort_by(|a, b| a.target.cmp(&b.target));
    let mut kept = summary.reports;
    kept.sort_by(|a, b| a.target.cmp(&b.target));
    assert_eq!(kept.len(), 2);
    assert!(streamed.iter().all(|r| !r.tests.is_empty()));
    assert!(streamed.iter().any(|r| r.transcript.is_some()));
    for (full, slim) in streamed.iter().zip(&kept) {
        assert_eq!((&slim.target, slim.verdict), (&full.target, full.verdict));
        assert!(slim.tests.is_empty() && slim.calibration.is_empty());
        assert!(slim.transcript.is_none() && slim.findings.banner.is_none());
    }
    assert!(streamed.iter().any(|r| r.verdict == Verdict::ConfirmedOpen));
    let zone = relayward_probe::zone::zone_text;
    assert_eq!(zone(&kept), zone(&streamed));
    assert!(zone(&kept).contains("127.0.0.1 :127.0.0.2:open relay"));
    let exit = relayward_probe::scan::exit_code;
    assert_eq!(exit(&kept), exit(&streamed));
}

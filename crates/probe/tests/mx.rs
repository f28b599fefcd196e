//! `mx:DOMAIN` targets: the MX hosts of a domain, looked up through a DNS responder started
//! in the test, each probed as a target of its own (research U54: the backup MX relays).

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use common::{Kind, Spec, config, start};
use relayward_probe::mx::MxResolver;
use relayward_probe::{ProbeArgs, Verdict, scan, target};
use relayward_testkit::dns::{DnsServer, Zone};

/// The zone the test DNS server serves.
fn zone() -> Zone {
    let ip = |last: u8| Ipv4Addr::new(127, 0, 3, last);
    Zone::new()
        .mx("example.test", 20, "mx2.example.test")
        .mx("example.test", 10, "mx1.example.test")
        .mx("example.test", 30, "gone.example.test")
        .a("mx1.example.test", ip(1))
        .a("mx2.example.test", ip(2))
        .null_mx("nullmx.test")
        .a("nomx.test", ip(3))
        .mx("pair.test", 10, "mxa.pair.test")
        .mx("pair.test", 20, "mxb.pair.test")
        .a("mxa.pair.test", ip(11))
        .a("mxb.pair.test", ip(12))
}

fn dns_server() -> SocketAddr {
    DnsServer::start(zone()).addr
}

#[tokio::test]
async fn mx_hosts_are_looked_up_in_order() {
    let ns = dns_server();
    let r = MxResolver::new(&[ns], Duration::from_secs(2)).expect("resolver");
    let hosts = r.mx_hosts("example.test").await.expect("mx");
    let names: Vec<(&str, u16)> = hosts
        .iter()
        .map(|m| (m.host.as_str(), m.preference))
        .collect();
    assert_eq!(
        names,
        [
            ("mx1.example.test", 10),
            ("mx2.example.test", 20),
            ("gone.example.test", 30)
        ]
    );
    let null = r.mx_hosts("nullmx.test").await.unwrap_err();
    assert!(null.contains("null MX"), "{null}");
    let missing = r.mx_hosts("missing.test").await.unwrap_err();
    assert!(missing.contains("NXDOMAIN"), "{missing}");
    let implicit = r.mx_hosts("nomx.test").await.expect("implicit MX");
    assert!(implicit[0].implicit && implicit[0].host == "nomx.test");
    assert_eq!(
        r.addresses("mx2.example.test").await.expect("address"),
        [std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 3, 2))]
    );
}

#[tokio::test]
async fn every_mx_is_probed_and_the_open_backup_found() {
    let ns = dns_server();
    // Primary MX closed, backup MX an open relay, both on one port.
    let primary = start(Spec::new(Kind::Closed), "127.0.3.1:0").await;
    let port = primary.port();
    start(Spec::new(Kind::PlainOpen), &format!("127.0.3.2:{port}")).await;

    let mut cfg = config();
    cfg.mx_resolver = Some(Arc::new(
        MxResolver::new(&[ns], Duration::from_secs(2)).expect("resolver"),
    ));
    let specs = vec![
        format!("mx:example.test:{port}"),
        "mx:nullmx.test".to_string(),
    ];
    let inputs = target::expand(&specs, 25).expect("targets");
    let summary = scan::scan(inputs, Arc::new(cfg), 4, std::future::pending(), |_| {}).await;
    let find = |label: &str| {
        summary
            .reports
            .iter()
            .find(|r| r.target == label)
            .unwrap_or_else(|| panic!("no report for {label}"))
    };
    let mx1 = find(&format!("mx1.example.test:{port}"));
    assert_eq!(mx1.verdict, Verdict::Closed, "{}", mx1.reason);
    let info = mx1.mx.as_ref().expect("mx info");
    assert_eq!(
        (info.domain.as_str(), info.preference),
        ("example.test", 10)
    );
    let mx2 = find(&format!("mx2.example.test:{port}"));
    assert_eq!(mx2.verdict, Verdict::Open, "{}", mx2.reason);
    assert_eq!(mx2.ip, "127.0.3.2");
    assert_eq!(mx2.mx.as_ref().map(|m| m.preference), Some(20));
    // The MX's domain is the local domain of the {local} tricks.
    assert!(
        mx2.tests
            .iter()
            .any(|t| t.rcpt_to == "RCPT TO:<relaytest%to.test@example.test>")
    );
    assert!(relayward_probe::output::findings_line(mx2).contains("MX 20 of example.test"));
    let gone = find(&format!("gone.example.test:{port}"));
    assert_eq!(gone.verdict, Verdict::Unreachable);
    assert_eq!(gone.mx.as_ref().map(|m| m.preference), Some(30));
    let null = find("mx:nullmx.test:25");
    assert_eq!(null.verdict, Verdict::Unreachable);
    assert!(null.reason.contains("null MX"), "{}", null.reason);
    assert_eq!(summary.reports.len(), 4);
    assert_eq!(scan::exit_code(&summary.reports), 1);
}

/// The MX hosts of one domain are probed at the same time, not one after another: sessions
/// to the two hosts overlap.
#[tokio::test]
async fn mx_hosts_of_a_domain_are_probed_in_parallel() {
    let ns = dns_server();
    let (a, b) = common::Overlap::pair();
    let slow = |kind, overlap| {
        let mut spec = Spec::new(kind);
        spec.reply_delay = Some(Duration::from_millis(3));
        spec.overlap = Some(overlap);
        spec
    };
    let primary = start(slow(Kind::Closed, a), "127.0.3.11:0").await;
    let port = primary.port();
    start(slow(Kind::Closed, b.clone()), &format!("127.0.3.12:{port}")).await;
    let mut cfg = config();
    cfg.mx_resolver = Some(Arc::new(
        MxResolver::new(&[ns], Duration::from_secs(2)).expect("resolver"),
    ));
    let inputs = target::expand(&[format!("mx:pair.test:{port}")], 25).expect("targets");
    let summary = scan::scan(inputs, Arc::new(cfg), 4, std::future::pending(), |_| {}).await;
    let verdicts: Vec<Verdict> = summary.reports.iter().map(|r| r.verdict).collect();
    assert_eq!(verdicts, [Verdict::Closed, Verdict::Closed]);
    assert!(
        b.overlapped.load(std::sync::atomic::Ordering::SeqCst),
        "the two MX hosts were probed one after the other"
    );
}

#[derive(Parser)]
struct Harness {
    #[command(flatten)]
    args: ProbeArgs,
}

#[tokio::test]
async fn mx_flag_on_the_command_line() {
    let ns = dns_server();
    // An address of its own, so the servers of the other test cannot answer here.
    let implicit = start(Spec::new(Kind::Closed), "127.0.3.3:0").await;
    let port = implicit.port().to_string();
    let ns = ns.to_string();
    let argv = [
        "probe",
        "--json",
        "--test-timeout",
        "3s",
        "--nameserver",
        &ns,
        "--port",
        &port,
        "--mx",
        "nomx.test",
    ];
    let args = Harness::try_parse_from(argv).expect("parse").args;
    assert_eq!(args.mx_domains, ["nomx.test"]);
    // No MX records: the domain's own address is the implicit MX, and it is closed.
    assert_eq!(relayward_probe::run(args.clone()).await, 0);
    let mut null = args;
    null.mx_domains = vec!["nullmx.test".into()];
    // A null MX takes no mail: nothing could be tested.
    assert_eq!(relayward_probe::run(null).await, 2);
}

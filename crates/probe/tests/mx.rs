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

/// The zone the responder serves.
fn records(name: &str, qtype: u16) -> Option<Vec<Vec<u8>>> {
    const A: u16 = 1;
    const MX: u16 = 15;
    let mx = |pref: u16, host: &str| {
        let mut rdata = pref.to_be_bytes().to_vec();
        rdata.extend(encode_name(host));
        (MX, rdata)
    };
    let a = |ip: [u8; 4]| (A, ip.to_vec());
    let all: Vec<(&str, (u16, Vec<u8>))> = vec![
        ("example.test", mx(20, "mx2.example.test")),
        ("example.test", mx(10, "mx1.example.test")),
        ("example.test", mx(30, "gone.example.test")),
        ("mx1.example.test", a([127, 0, 3, 1])),
        ("mx2.example.test", a([127, 0, 3, 2])),
        ("nullmx.test", mx(0, "")),
        ("nomx.test", a([127, 0, 3, 3])),
        ("pair.test", mx(10, "mxa.pair.test")),
        ("pair.test", mx(20, "mxb.pair.test")),
        ("mxa.pair.test", a([127, 0, 3, 11])),
        ("mxb.pair.test", a([127, 0, 3, 12])),
    ];
    let known = all.iter().any(|(n, _)| *n == name);
    if !known {
        return None; // NXDOMAIN
    }
    Some(
        all.into_iter()
            .filter(|(n, (t, _))| *n == name && *t == qtype)
            .map(|(_, (_, rdata))| rdata)
            .collect(),
    )
}

fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

fn answer(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    while *query.get(i)? != 0 {
        let len = query[i] as usize;
        labels.push(String::from_utf8_lossy(query.get(i + 1..i + 1 + len)?).to_ascii_lowercase());
        i += 1 + len;
    }
    let qtype = u16::from_be_bytes([*query.get(i + 1)?, *query.get(i + 2)?]);
    let question_end = i + 5;
    let name = labels.join(".");
    let mut out = query.get(..question_end)?.to_vec();
    out[2] = 0x84 | (query[2] & 0x01);
    let answers = records(&name, qtype);
    out[3] = if answers.is_some() { 0 } else { 3 };
    let answers = answers.unwrap_or_default();
    out[6..12].copy_from_slice(&[0, answers.len() as u8, 0, 0, 0, 0]);
    for rdata in answers {
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(&rdata);
    }
    Some(out)
}

async fn dns_server() -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind udp");
    let addr = socket.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            if let Some(reply) = answer(&buf[..n]) {
                let _ = socket.send_to(&reply, peer).await;
            }
        }
    });
    addr
}

#[tokio::test]
async fn mx_hosts_are_looked_up_in_order() {
    let ns = dns_server().await;
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
    let ns = dns_server().await;
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
    let ns = dns_server().await;
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
    let ns = dns_server().await;
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

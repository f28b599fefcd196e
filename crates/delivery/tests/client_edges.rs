//! Client edge cases: HELO fallback, IPv6 loopback, hostile servers (endless or overlong
//! replies) cost a deferral, never a panic or unbounded memory.

mod support;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use relayward_queue::{Queue, RecipientStatus};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

#[tokio::test]
async fn falls_back_to_helo_and_sends_without_pipelining() {
    let mx = ip(127, 40, 0, 2);
    let script = Script {
        no_ehlo: true,
        ..Script::default()
    };
    let srv = start_smtp(sock(mx, 0), script).await;
    let zone = Zone::default()
        .mx("far.test", 10, "mx.far.test")
        .a("mx.far.test", mx);
    let dns = DnsServer::start_on(ip(127, 40, 0, 1), zone).addr;
    let relay = Relay::new();
    relay
        .enqueue("alice@local.test", &["bob@far.test"], ".leading dot\r\n.")
        .await;
    let runner = relay.runner(relay.config(Some(dns), srv.addr.port()));
    runner.run_once().await;
    assert!(relay.queue.list().await.expect("list").is_empty());
    let lines = srv.lines();
    assert!(lines.iter().any(|l| l == "HELO relay.test"), "{lines:?}");
    assert!(
        lines.iter().any(|l| l == "MAIL FROM:<alice@local.test>"),
        "no SIZE without EHLO"
    );
    let got = srv.messages();
    let body = String::from_utf8_lossy(&got[0].data).into_owned();
    assert!(
        body.contains("\r\n.leading dot\r\n.\r\n"),
        "dot-stuffing undone by the server: {body:?}"
    );
}

#[tokio::test]
async fn delivers_to_an_ipv6_loopback_mx() {
    let listener = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).await;
    let Ok(listener) = listener else {
        eprintln!("SKIPPED: no IPv6 loopback here");
        return;
    };
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let srv = start_smtp(addr, Script::default()).await;
    let zone = Zone::default().aaaa("v6.test", Ipv6Addr::LOCALHOST);
    let dns = DnsServer::start_on(ip(127, 41, 0, 1), zone).addr;
    let relay = Relay::new();
    relay
        .enqueue("alice@local.test", &["bob@v6.test"], "hi")
        .await;
    let runner = relay.runner(relay.config(Some(dns), addr.port()));
    runner.run_once().await;
    assert_eq!(srv.messages().len(), 1, "implicit MX via AAAA on ::1");
}

/// A server that sends `greeting` bytes and then keeps the connection open.
async fn hostile(ip: std::net::Ipv4Addr, payload: Vec<u8>, repeat: usize) -> SocketAddr {
    let listener = TcpListener::bind((IpAddr::V4(ip), 0)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let payload = payload.clone();
            tokio::spawn(async move {
                for _ in 0..repeat {
                    if tcp.write_all(&payload).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    addr
}

async fn deferred_by(
    server: SocketAddr,
    dns_ip: std::net::Ipv4Addr,
    mx: std::net::Ipv4Addr,
) -> String {
    let zone = Zone::default()
        .mx("far.test", 10, "mx.far.test")
        .a("mx.far.test", mx);
    let dns = DnsServer::start_on(dns_ip, zone).addr;
    let relay = Relay::new();
    let id = relay
        .enqueue("alice@local.test", &["bob@far.test"], "hi")
        .await;
    let runner = relay.runner(relay.config(Some(dns), server.port()));
    tokio::time::timeout(Duration::from_secs(20), runner.run_once())
        .await
        .expect("bounded");
    let state = relay.queue.get(&id).await.expect("still queued");
    assert_eq!(state.recipients[0].status, RecipientStatus::Pending);
    state.recipients[0].last_error.clone().unwrap_or_default()
}

#[tokio::test]
async fn endless_multiline_greeting_is_cut_off() {
    let mx = ip(127, 42, 0, 2);
    let server = hostile(mx, b"220-still greeting\r\n".to_vec(), 100_000).await;
    let error = deferred_by(server, ip(127, 42, 0, 1), mx).await;
    assert!(error.contains("more than 256 lines"), "{error}");
}

#[tokio::test]
async fn overlong_reply_line_is_cut_off() {
    let mx = ip(127, 43, 0, 2);
    let server = hostile(mx, vec![b'2'; 1024], 1_000).await;
    let error = deferred_by(server, ip(127, 43, 0, 1), mx).await;
    assert!(error.contains("reply line too long"), "{error}");
}

//! Client edge cases: HELO fallback, IPv6 loopback, BDAT to a peer that offers CHUNKING,
//! hostile servers (endless or overlong replies) cost a deferral, never a panic or unbounded
//! memory.

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

/// A next hop at `mx` (with DNS at `dns_ip`) answering as `script`; one message with `body`
/// from alice to `rcpts`, delivered once. Returns the server and what the queue holds after.
async fn deliver_once(
    dns_ip: std::net::Ipv4Addr,
    mx: std::net::Ipv4Addr,
    script: Script,
    rcpts: &[&str],
    body: &str,
) -> (SmtpServer, Vec<relayward_queue::QueuedMessage>) {
    let srv = start_smtp(sock(mx, 0), script).await;
    let zone = Zone::default()
        .mx("far.test", 10, "mx.far.test")
        .a("mx.far.test", mx);
    let dns = DnsServer::start_on(dns_ip, zone).addr;
    let relay = Relay::new();
    relay.enqueue("alice@local.test", rcpts, body).await;
    let runner = relay.runner(relay.config(Some(dns), srv.addr.port()));
    tokio::time::timeout(Duration::from_secs(20), runner.run_once())
        .await
        .expect("bounded");
    (srv, relay.queue.list().await.expect("list"))
}

/// RFC 3030: to a peer that offers CHUNKING the message goes as one `BDAT n LAST` chunk — no
/// DATA, no dot-stuffing (the scripted peer takes chunk octets as they are, so a stuffed dot
/// would show) — after the pipelined MAIL and RCPT, and it is delivered.
#[tokio::test]
async fn a_peer_offering_chunking_gets_one_bdat_last_chunk_unstuffed() {
    let script = Script {
        chunking: true,
        ..Script::default()
    };
    let body = ".leading dot\r\n..two dots\r\nlast line";
    let (srv, left) = deliver_once(
        ip(127, 44, 0, 1),
        ip(127, 44, 0, 2),
        script,
        &["bob@far.test"],
        body,
    )
    .await;
    assert!(left.is_empty(), "not delivered: {left:?}");
    let got = srv.messages();
    assert_eq!(got.len(), 1);
    let data = String::from_utf8_lossy(&got[0].data).into_owned();
    assert!(
        data.ends_with("\r\n\r\n.leading dot\r\n..two dots\r\nlast line\r\n"),
        "{data:?}"
    );
    let lines = srv.lines();
    assert!(
        lines.contains(&format!("BDAT {} LAST", got[0].data.len())),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l == "DATA"), "{lines:?}");
}

/// With CHUNKING, a refused recipient does not stop the chunk for the accepted one, and when
/// every recipient is refused no chunk is sent at all (nothing to send it for).
#[tokio::test]
async fn bdat_goes_only_when_a_recipient_was_accepted() {
    let script = Script {
        chunking: true,
        ..Script::default()
    }
    .rcpt_by(|rcpt| {
        if rcpt.starts_with("gone") {
            "550 5.1.1 no such user".into()
        } else {
            "250 2.1.5 ok".into()
        }
    });
    let (srv, _) = deliver_once(
        ip(127, 45, 0, 1),
        ip(127, 45, 0, 2),
        script.clone(),
        &["bob@far.test", "gone@far.test"],
        "hi",
    )
    .await;
    assert_eq!(srv.messages().len(), 1);
    assert_eq!(srv.messages()[0].rcpts, ["bob@far.test"]);
    let (srv, _) = deliver_once(
        ip(127, 45, 0, 3),
        ip(127, 45, 0, 4),
        script,
        &["gone@far.test"],
        "hi",
    )
    .await;
    let lines = srv.lines();
    assert!(
        !lines.iter().any(|l| l.starts_with("BDAT") || l == "DATA"),
        "{lines:?}"
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

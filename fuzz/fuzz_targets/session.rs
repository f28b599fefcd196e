//! Whole SMTP sessions: arbitrary client bytes into an in-process session (the listener's
//! `serve_connection` over an in-memory pipe, the standard test configuration, an in-memory
//! queue, a paused clock). The first byte picks the listener: `mx`, `submission` (both in
//! clear), or `submissions`, for which the harness runs a real TLS handshake first so that the
//! rest (AUTH included) is fuzzed over TLS.
//!
//! Beyond "no panic, the session ends": every line the server writes is a well-formed reply,
//! and a message is queued exactly when a `250 … queued as` says so.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use relayward_protocol::reply::ReplyParser;
use relayward_server::auth::{AuthLimitSettings, AuthLimiter};
use relayward_server::config::{Config, ListenerKind};
use relayward_server::listener::serve_connection;
use relayward_server::policy::Policy;
use relayward_server::ratelimit::{UserLimitSettings, UserRateLimiter};
use relayward_server::session::SessionContext;
use relayward_testkit::pki::{TestPki, test_pki};
use relayward_testkit::queue::MemoryQueue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What every input shares: the parsed configuration and the certificate.
struct Fixture {
    config: Config,
    pki: TestPki,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // No greet pause: the whole input arrives at once, and the pregreet test would end
        // nearly every mx session before its first command.
        let text = relayward_testkit::config::standard_config(
            "[limits]\ngreet_pause = \"0s\"\nmax_recipients = 5\nmax_message_size = 4096",
        )
        .replace("DATA_DIR", "/nonexistent/relayward-fuzz");
        let config = Config::from_toml_str(&text, "fuzz.toml").expect("fuzz configuration");
        Fixture {
            config,
            pki: test_pki(&["localhost"]),
        }
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&selector, client_bytes)) = input.split_first() else {
        return;
    };
    let kind = match selector % 3 {
        0 => ListenerKind::Mx,
        1 => ListenerKind::Submission,
        _ => ListenerKind::Submissions,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(converse(kind, client_bytes));
});

async fn converse(kind: ListenerKind, client_bytes: &[u8]) {
    let fixture = fixture();
    let queue = Arc::new(MemoryQueue::new());
    let limits = &fixture.config.limits;
    let ctx = SessionContext::from_config(
        &fixture.config,
        Policy::from_config(&fixture.config).expect("policy"),
        Some(fixture.pki.acceptor()),
        Arc::clone(&queue) as _,
        Arc::new(AuthLimiter::new(AuthLimitSettings::from_limits(limits))),
        Arc::new(UserRateLimiter::new(UserLimitSettings::from_limits(limits))),
    );
    let ctx = Arc::new(ctx);
    let (client, server) = tokio::io::duplex(64 * 1024);
    let peer: SocketAddr = "192.0.2.7:40000".parse().expect("address");
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let deadline = tokio::time::Instant::now() + ctx.limits.session_timeout;
    let session = tokio::spawn(serve_connection(server, peer, kind, ctx, shutdown, deadline));
    let heard = if kind == ListenerKind::Submissions {
        let connector = tokio_rustls::TlsConnector::from(fixture.pki.ca().client_config());
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        match connector.connect(name, client).await {
            Ok(tls) => talk(tls, client_bytes).await,
            Err(_) => return,
        }
    } else {
        talk(client, client_bytes).await
    };
    let ending = tokio::time::timeout(Duration::from_secs(7200), session)
        .await
        .expect("the session ends")
        .expect("the session does not panic");
    assert!(ending.is_some() || kind == ListenerKind::Submissions);
    check_replies(&heard, queue.len());
}

/// Sends everything, closes the sending half, and reads what the server says until it closes.
async fn talk<S: AsyncRead + AsyncWrite + Unpin>(stream: S, bytes: &[u8]) -> Vec<u8> {
    let (mut read, mut write) = tokio::io::split(stream);
    let send = async {
        // The server may close before reading it all: that is its right.
        let _ = write.write_all(bytes).await;
        let _ = write.shutdown().await;
    };
    let mut heard = Vec::new();
    let receive = async {
        let _ = read.read_to_end(&mut heard).await;
    };
    tokio::join!(send, receive);
    heard
}

/// Every line is part of a well-formed reply, and the queue holds one message per
/// `250 … queued as`.
fn check_replies(heard: &[u8], queued: usize) {
    let text = std::str::from_utf8(heard).expect("the server writes UTF-8");
    let mut parser = ReplyParser::new();
    let mut acknowledged = 0;
    for line in text.split_terminator("\r\n") {
        assert!(!line.contains(['\r', '\n']), "bare CR or LF in {line:?}");
        if let Some(reply) = parser.feed(line).expect("a well-formed reply line") {
            if reply.code == 250 && reply.text().contains("queued as") {
                acknowledged += 1;
            }
        }
    }
    assert!(text.is_empty() || text.ends_with("\r\n"), "unterminated {text:?}");
    assert_eq!(acknowledged, queued, "250 replies and queued messages differ");
}

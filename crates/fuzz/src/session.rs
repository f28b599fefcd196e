//! Whole SMTP sessions: arbitrary client bytes into an in-process session (the listener's
//! `serve_connection` over an in-memory pipe, the standard test configuration, an in-memory
//! queue, a paused clock). The first byte picks the listener and the client's pace; the rest
//! is what the client sends.
//!
//! - Listener, `(first - b'0') % 3`: `0` mx, `1` submission (both in clear), `2` submissions,
//!   for which the harness runs a real TLS handshake first, so that the rest (AUTH included)
//!   is fuzzed over TLS.
//! - Pace, `(first - b'0') / 3 % 3`: `0` in step (each line sent once the server has gone
//!   quiet, as a client that waits for every reply), `1` pipelined (the first line in step, the
//!   rest at once, as an RFC 2920 client after EHLO), `2` all at once (a robot that does not
//!   wait). A session whose client sends before it may is closed by the server at once, so the
//!   pace decides how deep an input can reach: the seeds `0…`, `1…`, `2…` are in step.
//!
//! Beyond "no panic, the session ends": every line the server writes is a well-formed reply,
//! and a message is queued exactly when a `250 … queued as` says so.
//!
//! [`replay`] returns what the client heard, so that the seed test can show that its seeds
//! reach what they are meant to (a queued message, a refused relay, AUTH over TLS).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

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

/// What the client heard in one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heard {
    /// The code of every reply, in order (the banner first).
    pub codes: Vec<u16>,
    /// How many messages the session queued.
    pub queued: usize,
}

/// The fuzz target: one session, checked (see the module documentation).
pub fn run(input: &[u8]) {
    let _ = replay(input);
}

/// How the client paces what it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// Each line once the server has gone quiet.
    InStep,
    /// The first line in step, the rest at once.
    Pipelined,
    /// Everything at once, before the banner.
    AllAtOnce,
}

/// Long enough on the paused clock for the session to answer what it can (it waits for the
/// client only on timers of seconds or more), short of every session timer.
const QUIET: Duration = Duration::from_millis(200);

/// One session: the first byte picks the listener and the pace (see the module
/// documentation), the rest is what the client sends before it closes its side. `None` for an
/// empty input. Panics when a check fails.
pub fn replay(input: &[u8]) -> Option<Heard> {
    let (&first, client_bytes) = input.split_first()?;
    let selector = first.wrapping_sub(b'0');
    let kind = match selector % 3 {
        0 => ListenerKind::Mx,
        1 => ListenerKind::Submission,
        _ => ListenerKind::Submissions,
    };
    let pace = match selector / 3 % 3 {
        0 => Pace::InStep,
        1 => Pace::Pipelined,
        _ => Pace::AllAtOnce,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    Some(runtime.block_on(converse(kind, pace, client_bytes)))
}

async fn converse(kind: ListenerKind, pace: Pace, client_bytes: &[u8]) -> Heard {
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
    let sessions = relayward_server::config::Live::fixed(ctx);
    let session = tokio::spawn(serve_connection(
        server, peer, kind, sessions, shutdown, deadline,
    ));
    let heard = if kind == ListenerKind::Submissions {
        let connector = tokio_rustls::TlsConnector::from(fixture.pki.ca().client_config());
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        // Our own client and our own CA: a failed handshake is a bug, not the input's fault.
        let tls = connector
            .connect(name, client)
            .await
            .expect("TLS handshake with the test CA");
        talk(tls, pace, client_bytes).await
    } else {
        talk(client, pace, client_bytes).await
    };
    let ending = tokio::time::timeout(Duration::from_secs(7200), session)
        .await
        .expect("the session ends")
        .expect("the session does not panic");
    assert!(ending.is_some(), "the session ended without an ending");
    let queued = queue.len();
    Heard {
        codes: check_replies(&heard, queued),
        queued,
    }
}

/// Sends `bytes` at `pace`, closes the sending half, and reads what the server says until it
/// closes.
async fn talk<S: AsyncRead + AsyncWrite + Unpin>(stream: S, pace: Pace, bytes: &[u8]) -> Vec<u8> {
    let (mut read, mut write) = tokio::io::split(stream);
    let mut heard = Vec::new();
    let mut rest = bytes;
    if pace != Pace::AllAtOnce {
        let mut lines = bytes.split_inclusive(|&b| b == b'\n');
        let in_step = if pace == Pace::InStep { usize::MAX } else { 1 };
        for line in lines.by_ref().take(in_step) {
            // The server closed, or refuses to read on: it has said all it will.
            if !listen(&mut read, &mut heard).await || write.write_all(line).await.is_err() {
                return finish(read, heard).await;
            }
            rest = &rest[line.len()..];
        }
        if !listen(&mut read, &mut heard).await {
            return finish(read, heard).await;
        }
    }
    let send = async {
        // The server may close before reading it all: that is its right.
        let _ = write.write_all(rest).await;
        let _ = write.shutdown().await;
    };
    let receive = async {
        let _ = read.read_to_end(&mut heard).await;
    };
    tokio::join!(send, receive);
    heard
}

/// Reads what the server says until it has been quiet for [`QUIET`]; false once it closed.
async fn listen<R: AsyncRead + Unpin>(read: &mut R, heard: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(QUIET, read.read(&mut chunk)).await {
            Err(_) => return true,
            Ok(Ok(0) | Err(_)) => return false,
            Ok(Ok(n)) => heard.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The rest of what the server says, until it closes.
async fn finish<R: AsyncRead + Unpin>(mut read: R, mut heard: Vec<u8>) -> Vec<u8> {
    let _ = read.read_to_end(&mut heard).await;
    heard
}

/// Every line is part of a well-formed reply, and the queue holds one message per
/// `250 … queued as`. Returns the reply codes. What follows a `220` to STARTTLS is the TLS
/// handshake (with a client that sends no TLS: the server's alert), not for this check.
fn check_replies(heard: &[u8], queued: usize) -> Vec<u16> {
    let mut parser = ReplyParser::new();
    let mut acknowledged = 0;
    let mut codes: Vec<u16> = Vec::new();
    let mut rest = heard;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or_else(|| panic!("unterminated {:?}", String::from_utf8_lossy(rest)));
        let line = std::str::from_utf8(&rest[..end]).expect("the server writes UTF-8");
        rest = &rest[end + 2..];
        assert!(!line.contains(['\r', '\n']), "bare CR or LF in {line:?}");
        if let Some(reply) = parser.feed(line).expect("a well-formed reply line") {
            if reply.code == 250 && reply.text().contains("queued as") {
                acknowledged += 1;
            }
            let starts_tls = reply.code == 220 && !codes.is_empty();
            codes.push(reply.code);
            if starts_tls {
                break;
            }
        }
    }
    assert_eq!(
        acknowledged, queued,
        "250 replies and queued messages differ"
    );
    codes
}

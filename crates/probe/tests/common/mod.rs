//! Scripted SMTP servers for the probe's tests: each falls for one class of relay trick, the
//! way real MTAs did (the relay check looks at one form of the address, delivery at another).
//!
//! Names: host `mx.example.test`, local domain `example.test`, literal `[127.0.0.1]` (or the
//! bound address); real local users `postmaster` and `user`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use relayward_probe::config::ProbeConfig;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub const HOST: &str = "mx.example.test";
pub const LOCAL: &str = "example.test";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Closed,
    PercentHack,
    BangPath,
    QuotedAt,
    SourceRoute,
    ExtraAt,
    IpLiteralSender,
    LiteralRecipient,
    NullSender,
    LocalSender,
    /// Relays anything to a domain that "resolves" (not `.invalid`).
    PlainOpen,
    /// Catch-all for local domains, no relay.
    AcceptAllLocal,
    /// Accepts every recipient and discards the mail (a sink).
    AcceptEverything,
    /// 530 to MAIL.
    AuthRequired,
    /// Advertises and honours XCLIENT from anyone; a session claiming 127.0.0.1 is trusted.
    XclientTrusting,
    /// Honours a PROXY v1 header from anyone; a session claiming 127.0.0.1 is trusted.
    ProxyTrusting,
    /// Advertises AUTH; a failed or cancelled AUTH leaves the session trusted.
    FailedAuthTrusting,
    /// Skips the relay check when RCPT arrived in the same read as MAIL (pipelined).
    PipelineBlind,
    /// Decides relay per transaction: once a local recipient is accepted, any recipient is.
    PerTransaction,
    /// Closed, and hangs up on a PROXY header taken as a command.
    ProxyHangup,
    /// Relays to any domain, `.invalid` included, and refuses invented local users: Postfix
    /// with `mynetworks = 0.0.0.0/0` and its default `local_recipient_maps`.
    OpenNoDomainCheck,
    /// Catch-all for local users and a relay for every domain but `.invalid`.
    CatchAllOpen,
    /// Answers 530 at RCPT for external recipients; local ones as usual.
    AuthAtRcpt,
    /// 451 to every RCPT (greylisting).
    Greylist,
    /// 421 and hang up at every RCPT.
    DropsAtRcpt,
    /// Relays at RCPT like `PlainOpen`, then refuses every message after the final dot.
    RefuseAtDataEnd,
    /// Closed, but hands routed local parts (`"user@other"@local`, `user%other@local`) to a
    /// local backend that takes them and delivers nowhere (the Haraka case).
    LocalBackendRoutedParts,
}

#[derive(Clone)]
pub struct Spec {
    pub kind: Kind,
    /// 421 and close after this many error replies on one connection.
    pub max_errors: Option<usize>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub advertise_auth: bool,
    /// Relayed mail is really forwarded here (an open relay that delivers).
    pub forward_to: Option<SocketAddr>,
    /// Forward from this source address (a relay that hands mail to a second hop).
    pub forward_from: Option<std::net::IpAddr>,
    /// Every reply line gets this text appended (a hostile server drawing on the terminal).
    pub reply_suffix: Option<String>,
    /// Wait this long before every reply (a slow server).
    pub reply_delay: Option<Duration>,
    /// Sessions open right now on this server, and on another one: `overlapped` is set when a
    /// session starts here while the other server has one open (the two were probed at once).
    pub overlap: Option<Overlap>,
    /// Greet only this many connections; every later one gets `421` and is closed (a server
    /// that limits connections per client address, as relayward's
    /// `connections_per_ip_per_minute` does).
    pub max_sessions: Option<usize>,
}

#[derive(Clone, Default)]
pub struct Overlap {
    pub mine: Arc<std::sync::atomic::AtomicUsize>,
    pub other: Arc<std::sync::atomic::AtomicUsize>,
    pub overlapped: Arc<std::sync::atomic::AtomicBool>,
}

impl Overlap {
    /// Two watchers for two servers, sharing one `overlapped` flag.
    pub fn pair() -> (Overlap, Overlap) {
        let a = Overlap::default();
        let b = Overlap {
            mine: Arc::clone(&a.other),
            other: Arc::clone(&a.mine),
            overlapped: Arc::clone(&a.overlapped),
        };
        (a, b)
    }
}

impl Spec {
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            max_errors: None,
            tls: None,
            advertise_auth: false,
            forward_to: None,
            forward_from: None,
            reply_suffix: None,
            reply_delay: None,
            overlap: None,
            max_sessions: None,
        }
    }
}

/// Starts a server on `bind` (port 0 = any); returns its address.
pub async fn start(spec: Spec, bind: &str) -> SocketAddr {
    let listener = TcpListener::bind(bind).await.expect("bind test server");
    let addr = listener.local_addr().expect("local addr");
    let spec = Arc::new(spec);
    tokio::spawn(async move {
        let mut sessions = 0;
        while let Ok((mut stream, _)) = listener.accept().await {
            sessions += 1;
            if spec.max_sessions.is_some_and(|max| sessions > max) {
                use tokio::io::AsyncWriteExt as _;
                let _ = stream
                    .write_all(b"421 4.7.0 Too many connections from your address\r\n")
                    .await;
                continue;
            }
            let spec = Arc::clone(&spec);
            tokio::spawn(async move {
                use std::sync::atomic::Ordering::SeqCst;
                if let Some(o) = &spec.overlap {
                    o.mine.fetch_add(1, SeqCst);
                    if o.other.load(SeqCst) > 0 {
                        o.overlapped.store(true, SeqCst);
                    }
                }
                let _ = tokio::time::timeout(
                    Duration::from_secs(60),
                    session(stream, Arc::clone(&spec), addr),
                )
                .await;
                if let Some(o) = &spec.overlap {
                    o.mine.fetch_sub(1, SeqCst);
                }
            });
        }
    });
    addr
}

/// A config with short timeouts for loopback tests.
pub fn config() -> ProbeConfig {
    let mut cfg = ProbeConfig::new("example.org", "to.test").expect("config");
    cfg.test_timeout = Duration::from_secs(3);
    cfg.host_timeout = Duration::from_secs(60);
    cfg.keep_transcript = true;
    cfg
}

pub fn target(addr: SocketAddr) -> relayward_probe::Target {
    relayward_probe::Target::new(addr, None, addr.to_string())
}

/// Starts a server for `spec` on 127.0.0.1 and probes it with `cfg`, within a minute.
pub async fn probe_spec(spec: Spec, cfg: ProbeConfig) -> relayward_probe::TargetReport {
    let addr = start(spec, "127.0.0.1:0").await;
    probe_addr(addr, cfg).await
}

/// Probes `addr` with `cfg`, within a minute.
pub async fn probe_addr(addr: SocketAddr, cfg: ProbeConfig) -> relayward_probe::TargetReport {
    tokio::time::timeout(
        Duration::from_secs(60),
        relayward_probe::probe_target(target(addr), Arc::new(cfg)),
    )
    .await
    .expect("probe finished in time")
}

/// Verdict, reason, accepted ids and the dialogue, for assertion messages.
pub fn dump(r: &relayward_probe::TargetReport) -> String {
    format!(
        "{} {}: {:?}\n{}",
        r.verdict.as_str(),
        r.reason,
        r.accepted,
        r.transcript.clone().unwrap_or_default().join("\n")
    )
}

/// [`config`] in confirm mode: a confirm listener for `confirm.test` on 127.0.0.1; returns
/// the config and the listener's address (for relays that forward there).
pub async fn confirm_config(wait: Duration) -> (ProbeConfig, SocketAddr) {
    let server = relayward_probe::confirm::ConfirmServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        "confirm.test",
    )
    .await
    .expect("confirm listener");
    let listen = server.local_addr();
    let mut cfg = config();
    cfg.to_domain = "confirm.test".into();
    cfg.confirm = Some(relayward_probe::config::ConfirmSettings { server, wait });
    (cfg, listen)
}

/// The address a spoofing client claims and these servers trust (their "mynetworks").
const TRUSTED: &str = "127.0.0.1";

async fn session(stream: TcpStream, spec: Arc<Spec>, addr: SocketAddr) -> std::io::Result<()> {
    let mut plain = BufReader::new(stream);
    let mut trusted = false;
    if spec.kind == Kind::ProxyTrusting {
        // A PROXY header comes before the banner; wait a moment for one.
        let ready = tokio::time::timeout(Duration::from_millis(300), plain.fill_buf()).await;
        if let Ok(Ok(buf)) = ready
            && buf.starts_with(b"PROXY ")
        {
            let mut raw = Vec::new();
            (&mut plain).take(200).read_until(b'\n', &mut raw).await?;
            let line = String::from_utf8_lossy(&raw).trim_end().to_string();
            let words: Vec<&str> = line.split(' ').collect();
            trusted = words.len() == 6 && words[2] == TRUSTED;
        }
    }
    let suffix = spec.reply_suffix.clone().unwrap_or_default();
    plain
        .get_mut()
        .write_all(format!("220 {HOST} ESMTP scripted{suffix}\r\n").as_bytes())
        .await?;
    let literal = format!("[{}]", addr.ip());
    if dialogue(&mut plain, &spec, &literal, false, &mut trusted).await? {
        let Some(acceptor) = spec.tls.clone() else {
            return Ok(());
        };
        let tls = acceptor.accept(plain.into_inner()).await?;
        let mut tls = BufReader::new(tls);
        dialogue(&mut tls, &spec, &literal, true, &mut trusted).await?;
    }
    Ok(())
}

#[derive(Default)]
struct Txn {
    mail: Option<String>,
    relayed: Vec<String>,
    accepted: usize,
    /// RCPT arrived in the same read as MAIL.
    pipelined: bool,
    /// The session is trusted (XCLIENT, PROXY, or the failed-AUTH bug).
    trusted: bool,
}

/// Returns `true` when the client asked for STARTTLS and got 220.
async fn dialogue<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    spec: &Spec,
    literal: &str,
    tls_active: bool,
    trusted: &mut bool,
) -> std::io::Result<bool> {
    let mut txn = Txn::default();
    let mut errors = 0;
    loop {
        let mut raw = Vec::new();
        let n = (&mut *io).take(2000).read_until(b'\n', &mut raw).await?;
        if n == 0 {
            return Ok(false);
        }
        let line = String::from_utf8_lossy(&raw).trim_end().to_string();
        let upper = line.to_ascii_uppercase();
        let more_buffered = !io.buffer().is_empty();
        let auth = spec.advertise_auth || spec.kind == Kind::FailedAuthTrusting;
        let reply = if upper.starts_with("EHLO") {
            let mut r = format!("250-{HOST}\r\n250-PIPELINING\r\n");
            if spec.tls.is_some() && !tls_active {
                r.push_str("250-STARTTLS\r\n");
            }
            if auth {
                r.push_str("250-AUTH PLAIN LOGIN\r\n");
            }
            if spec.kind == Kind::XclientTrusting {
                r.push_str("250-XCLIENT ADDR NAME\r\n");
            }
            r.push_str("250 8BITMIME");
            r
        } else if upper.starts_with("HELO") {
            format!("250 {HOST}")
        } else if upper == "STARTTLS" && spec.tls.is_some() && !tls_active {
            io.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await?;
            io.get_mut().flush().await?;
            return Ok(true);
        } else if upper.starts_with("PROXY ") && spec.kind == Kind::ProxyHangup {
            return Ok(false);
        } else if upper.starts_with("XCLIENT ") && spec.kind == Kind::XclientTrusting {
            *trusted = upper.split(' ').any(|w| w == format!("ADDR={TRUSTED}"));
            format!("220 {HOST} ESMTP scripted")
        } else if auth && upper.starts_with("AUTH ") {
            let mut r = "535 5.7.8 authentication failed".to_string();
            if upper.starts_with("AUTH LOGIN") {
                io.get_mut().write_all(b"334 VXNlcm5hbWU6\r\n").await?;
                let mut raw = Vec::new();
                (&mut *io).take(2000).read_until(b'\n', &mut raw).await?;
                if raw.starts_with(b"*") {
                    r = "501 5.7.0 authentication cancelled".to_string();
                }
            }
            if spec.kind == Kind::FailedAuthTrusting {
                *trusted = true;
            }
            r
        } else if upper.starts_with("MAIL FROM:") {
            txn = Txn::default();
            txn.pipelined = more_buffered && spec.kind == Kind::PipelineBlind;
            txn.trusted = *trusted;
            mail(spec, &line, &mut txn)
        } else if upper.starts_with("RCPT TO:") {
            rcpt(spec, &line, &mut txn, literal)
        } else if upper == "DATA" {
            if txn.accepted == 0 {
                "554 5.5.1 no valid recipients".to_string()
            } else {
                io.get_mut().write_all(b"354 go on\r\n").await?;
                let body = read_body(io).await?;
                let relayed = std::mem::take(&mut txn.relayed);
                let mail = txn.mail.take().unwrap_or_default();
                txn = Txn::default();
                if spec.kind == Kind::RefuseAtDataEnd {
                    "554 5.7.1 message refused".to_string()
                } else {
                    if let Some(to) = spec.forward_to
                        && !relayed.is_empty()
                    {
                        let _ = forward(to, spec.forward_from, &mail, &relayed, &body).await;
                    }
                    "250 2.0.0 queued".to_string()
                }
            }
        } else if upper == "RSET" || upper == "NOOP" {
            txn = Txn::default();
            "250 2.0.0 ok".to_string()
        } else if upper.starts_with("VRFY") {
            "252 2.0.0 cannot verify".to_string()
        } else if upper == "QUIT" {
            io.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(false);
        } else {
            "502 5.5.1 not implemented".to_string()
        };
        if reply.starts_with('4') || reply.starts_with('5') {
            errors += 1;
            if spec.max_errors.is_some_and(|max| errors > max) {
                io.get_mut()
                    .write_all(b"421 4.7.0 too many errors\r\n")
                    .await?;
                return Ok(false);
            }
        }
        if let Some(d) = spec.reply_delay {
            tokio::time::sleep(d).await;
        }
        let reply = match &spec.reply_suffix {
            Some(suffix) => reply.replace("\r\n", &format!("{suffix}\r\n")) + suffix,
            None => reply,
        };
        io.get_mut()
            .write_all(format!("{reply}\r\n").as_bytes())
            .await?;
    }
}

fn path_of(line: &str) -> Option<String> {
    let args = line.split_once(':')?.1.trim();
    let start = args.find('<')?;
    let end = args.rfind('>')?;
    (end > start).then(|| args[start + 1..end].to_string())
}

fn mail(spec: &Spec, line: &str, txn: &mut Txn) -> String {
    if spec.kind == Kind::AuthRequired {
        return "530 5.7.0 Authentication required".into();
    }
    match path_of(line) {
        Some(p) => {
            txn.mail = Some(p);
            "250 2.1.0 ok".into()
        }
        None => "501 5.5.4 syntax: MAIL FROM:<address>".into(),
    }
}

/// Splits `local@domain` at the last `@` outside quotes. `None` domain = unqualified.
fn split(addr: &str) -> Option<(String, bool, Option<String>)> {
    if let Some(rest) = addr.strip_prefix('"') {
        let close = rest.find('"')?;
        let local = rest[..close].to_string();
        let after = &rest[close + 1..];
        return match after.strip_prefix('@') {
            Some(d) => Some((local, true, Some(d.to_string()))),
            None if after.is_empty() => Some((local, true, None)),
            None => None,
        };
    }
    match addr.rsplit_once('@') {
        Some((l, d)) => Some((l.to_string(), false, Some(d.to_string()))),
        None => Some((addr.to_string(), false, None)),
    }
}

fn is_local(domain: &Option<String>, literal: &str) -> bool {
    match domain {
        None => true,
        Some(d) => [LOCAL, HOST, literal]
            .iter()
            .any(|l| d.eq_ignore_ascii_case(l)),
    }
}

fn domain_of(path: &str) -> String {
    path.rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

fn rcpt(spec: &Spec, line: &str, txn: &mut Txn, literal: &str) -> String {
    let Some(mail) = txn.mail.clone() else {
        return "503 5.5.1 need MAIL first".into();
    };
    match spec.kind {
        Kind::Greylist => return "451 4.7.1 greylisted, try again later".into(),
        Kind::DropsAtRcpt => return "421 4.3.2 going down".into(),
        _ => {}
    }

    let Some(path) = path_of(line) else {
        return "501 5.5.4 syntax: RCPT TO:<address>".into();
    };
    let (route, addr) = match path.strip_prefix('@') {
        Some(rest) => match rest.split_once(':') {
            Some((hops, a)) => (
                Some(
                    hops.split(',')
                        .next()
                        .unwrap_or("")
                        .trim_start_matches('@')
                        .to_string(),
                ),
                a.to_string(),
            ),
            None => return "501 5.1.3 bad route".into(),
        },
        None => (None, path.clone()),
    };
    let Some((local, quoted, domain)) = split(&addr) else {
        return "501 5.1.3 bad address".into();
    };
    if domain.as_deref() == Some("") {
        return "501 5.1.3 empty domain".into();
    }
    let relay = |txn: &mut Txn, to: String| {
        txn.accepted += 1;
        txn.relayed.push(to);
        "250 2.1.5 ok".to_string()
    };
    if spec.kind == Kind::SourceRoute
        && route
            .as_ref()
            .is_some_and(|h| is_local(&Some(h.clone()), literal))
    {
        return relay(txn, addr);
    }
    if is_local(&domain, literal) {
        let rewritten = match spec.kind {
            Kind::PercentHack if !quoted && local.contains('%') => {
                local.rsplit_once('%').map(|(u, d)| format!("{u}@{d}"))
            }
            Kind::BangPath if !quoted && local.contains('!') => {
                local.rsplit_once('!').map(|(h, u)| format!("{u}@{h}"))
            }
            Kind::QuotedAt if quoted && local.contains('@') => Some(local.clone()),
            Kind::ExtraAt if !quoted && local.contains('@') => Some(local.clone()),
            _ => None,
        };
        if let Some(to) = rewritten {
            return relay(txn, to);
        }
        if spec.kind == Kind::LocalBackendRoutedParts && local.contains(['@', '%', '!']) {
            // Handed to the local backend as it is: accepted, delivered nowhere.
            txn.accepted += 1;
            return "250 2.1.5 ok".into();
        }
        let known = ["postmaster", "user"]
            .iter()
            .any(|u| local.eq_ignore_ascii_case(u));
        if known
            || matches!(
                spec.kind,
                Kind::AcceptAllLocal | Kind::AcceptEverything | Kind::CatchAllOpen
            )
        {
            txn.accepted += 1;
            return "250 2.1.5 ok".into();
        }
        return "550 5.1.1 unknown user".into();
    }
    let d = domain.unwrap_or_default().to_ascii_lowercase();
    let relays = match spec.kind {
        Kind::PlainOpen | Kind::CatchAllOpen | Kind::RefuseAtDataEnd => !d.ends_with(".invalid"),
        Kind::OpenNoDomainCheck => true,
        Kind::LiteralRecipient => d.starts_with('['),
        Kind::NullSender => mail.is_empty(),
        Kind::LocalSender => domain_of(&mail) == LOCAL,
        Kind::IpLiteralSender => domain_of(&mail) == literal,
        Kind::AcceptEverything => true,
        _ => false,
    };
    let relays = relays
        || txn.trusted
        || txn.pipelined
        || (spec.kind == Kind::PerTransaction && txn.accepted > 0);
    if relays {
        return relay(txn, addr);
    }
    if spec.kind == Kind::AuthAtRcpt {
        return "530 5.7.0 Authentication required".into();
    }
    "554 5.7.1 Relay access denied".into()
}

async fn read_body<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
) -> std::io::Result<String> {
    let mut body = String::new();
    loop {
        let mut raw = Vec::new();
        let n = (&mut *io).take(2000).read_until(b'\n', &mut raw).await?;
        if n == 0 {
            return Err(std::io::Error::other("eof in DATA"));
        }
        let line = String::from_utf8_lossy(&raw).trim_end().to_string();
        if line == "." {
            return Ok(body);
        }
        body.push_str(&line);
        body.push_str("\r\n");
    }
}

/// The "open relay really delivers" part: a minimal SMTP client to the next hop.
async fn forward(
    to: SocketAddr,
    source: Option<std::net::IpAddr>,
    from: &str,
    rcpts: &[String],
    body: &str,
) -> std::io::Result<()> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(to).await?;
    let mut io = BufReader::new(stream);
    let mut line = String::new();
    io.read_line(&mut line).await?;
    let mut cmds = vec![
        "EHLO mx.example.test".to_string(),
        format!("MAIL FROM:<{from}>"),
    ];
    cmds.extend(rcpts.iter().map(|r| format!("RCPT TO:<{r}>")));
    cmds.push("DATA".into());
    for cmd in cmds {
        io.get_mut()
            .write_all(format!("{cmd}\r\n").as_bytes())
            .await?;
        loop {
            line.clear();
            io.read_line(&mut line).await?;
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                break;
            }
        }
    }
    io.get_mut()
        .write_all(format!("Received: by mx.example.test\r\n{body}.\r\nQUIT\r\n").as_bytes())
        .await?;
    line.clear();
    io.read_line(&mut line).await?;
    Ok(())
}

/// A TLS acceptor with a fresh self-signed certificate for `mx.example.test`.
pub fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    relayward_testkit::pki::self_signed(&[HOST], HOST).acceptor()
}

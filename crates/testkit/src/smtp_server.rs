//! A scripted receiving SMTP server: the next hop, MX host, smart host or internal server a
//! test needs, answering what the [`Script`] says and recording what it got in a [`Log`].
//!
//! It speaks enough SMTP for a sending client: EHLO/HELO (PIPELINING, SIZE, 8BITMIME,
//! STARTTLS, AUTH, CHUNKING as scripted), STARTTLS, AUTH PLAIN and LOGIN (under TLS only), MAIL,
//! RCPT, DATA (dot-unstuffed), BDAT (RFC 3030 chunks, taken as they are), RSET, NOOP, QUIT. Commands are answered one by one in order, so
//! pipelined commands work.
//!
//! Async tests start it on their runtime ([`start_smtp`]); blocking tests on a thread of its
//! own ([`SmtpServer::spawn`], [`SmtpServer::bind`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The reply to one RCPT TO, by address.
pub type RcptAnswer = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// How a scripted server answers.
#[derive(Clone)]
pub struct Script {
    /// The banner line; a non-2xx banner ends the session after it.
    pub greeting: String,
    /// Reply to each RCPT TO, by address.
    pub rcpt: RcptAnswer,
    /// Reply to the final dot.
    pub data_final: String,
    /// Delay before the reply to the final dot (to catch the sender mid-transaction).
    pub data_delay: Duration,
    /// While set, the final dot is never answered: the server reads until the client goes
    /// away (a sender killed mid-delivery). Shared, so a test can release later messages.
    pub stall_final_dot: Option<Arc<AtomicBool>>,
    /// Delay before every reply (a slow server).
    pub reply_delay: Duration,
    pub pipelining: bool,
    pub size: Option<u64>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// (user, password) accepted by AUTH PLAIN and LOGIN (offered only under TLS).
    pub auth: Option<(String, String)>,
    /// The AUTH mechanisms announced (under TLS, when `auth` is set).
    pub auth_mechs: &'static str,
    /// Answer EHLO with 502 (an old server): the client must fall back to HELO.
    pub no_ehlo: bool,
    /// Announce CHUNKING (RFC 3030): `BDAT` is taken either way.
    pub chunking: bool,
    /// Announce DSN (RFC 3461), so a client passes NOTIFY, RET, ENVID and ORCPT on (they
    /// are recorded with the command lines and otherwise ignored).
    pub dsn: bool,
    /// Close the connection right after answering a message's end, without a word (a server
    /// whose idle timeout ends a session the client keeps for its next message).
    pub close_after_message: bool,
    /// Reply to RSET (a server shutting down answers `421`).
    pub rset_reply: String,
    /// After this many MAIL commands on one connection, the next gets `421` and the
    /// connection is closed (Exim's `smtp_accept_max_per_connection`, 1,000 by default).
    pub messages_per_connection: Option<usize>,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            greeting: "220 test.server ESMTP scripted".into(),
            rcpt: Arc::new(|_| "250 2.1.5 ok".into()),
            data_final: "250 2.0.0 queued".into(),
            data_delay: Duration::ZERO,
            stall_final_dot: None,
            reply_delay: Duration::ZERO,
            pipelining: true,
            size: None,
            tls: None,
            auth: None,
            auth_mechs: "PLAIN LOGIN",
            no_ehlo: false,
            chunking: false,
            dsn: false,
            close_after_message: false,
            rset_reply: "250 2.0.0 ok".into(),
            messages_per_connection: None,
        }
    }
}

impl Script {
    /// Every RCPT gets `reply`.
    pub fn rcpt_reply(mut self, reply: &str) -> Self {
        let reply = reply.to_string();
        self.rcpt = Arc::new(move |_| reply.clone());
        self
    }

    /// Each RCPT gets what `answer` says for its address.
    pub fn rcpt_by(mut self, answer: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        self.rcpt = Arc::new(answer);
        self
    }
}

/// A message the server accepted (final 2xx).
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub rcpts: Vec<String>,
    /// The content, dot-unstuffed, without the final dot.
    pub data: Vec<u8>,
    pub tls: bool,
    /// The login that authenticated, if any.
    pub auth: Option<String>,
}

impl Received {
    /// The content as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// What the server saw.
#[derive(Default)]
pub struct Log {
    pub connections: usize,
    /// Connections open right now, and the most that were open at once.
    pub open: usize,
    pub peak_open: usize,
    /// MAIL commands that arrived together with the next command (in one read): the client
    /// pipelined (RFC 2920) instead of waiting for each reply.
    pub pipelined_mail: usize,
    /// RSET commands that arrived together with the next command.
    pub pipelined_rset: usize,
    pub messages: Vec<Received>,
    /// Every command line seen (AUTH lines included), for assertions on what was sent.
    pub lines: Vec<String>,
    /// Every MAIL FROM path (`""` for `<>`), accepted or not.
    pub senders: Vec<String>,
    /// Every RCPT TO address and the reply it got.
    pub rcpts: Vec<(String, String)>,
    /// Message contents read to the final dot (whether or not the reply reached the client).
    pub data_read: usize,
}

/// A running scripted server.
#[derive(Clone)]
pub struct SmtpServer {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Log>>,
}

impl SmtpServer {
    /// Serves `listener` on a thread of its own (blocking tests), until the process ends.
    pub fn spawn(listener: std::net::TcpListener, script: Script) -> SmtpServer {
        let addr = listener.local_addr().expect("server address");
        let log = Arc::new(Mutex::new(Log::default()));
        let server = SmtpServer {
            addr,
            log: Arc::clone(&log),
        };
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("tokio listener");
                accept_loop(listener, Arc::new(script), log).await;
            });
        });
        server
    }

    /// Binds `addr` (port 0 picks one) and serves it on a thread of its own.
    pub fn bind(addr: &str, script: Script) -> SmtpServer {
        let listener = std::net::TcpListener::bind(addr).expect("bind scripted server");
        Self::spawn(listener, script)
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().expect("log")
    }

    pub fn messages(&self) -> Vec<Received> {
        self.log().messages.clone()
    }

    pub fn connections(&self) -> usize {
        self.log().connections
    }

    /// Connections open right now (a client's idle pooled connection included).
    pub fn open_connections(&self) -> usize {
        self.log().open
    }

    /// The most connections that were open at the same time.
    pub fn peak_connections(&self) -> usize {
        self.log().peak_open
    }

    /// How many RSET commands came pipelined with what followed them.
    pub fn pipelined_rset(&self) -> usize {
        self.log().pipelined_rset
    }

    /// How many MAIL commands came pipelined with what followed them.
    pub fn pipelined_mail(&self) -> usize {
        self.log().pipelined_mail
    }

    pub fn lines(&self) -> Vec<String> {
        self.log().lines.clone()
    }

    pub fn senders(&self) -> Vec<String> {
        self.log().senders.clone()
    }

    pub fn rcpts(&self) -> Vec<(String, String)> {
        self.log().rcpts.clone()
    }

    pub fn data_read(&self) -> usize {
        self.log().data_read
    }
}

/// Starts a scripted server on `addr` (port 0 picks one) on the current runtime.
pub async fn start_smtp(addr: SocketAddr, script: Script) -> SmtpServer {
    let listener = TcpListener::bind(addr).await.expect("bind scripted server");
    serve_on(listener, script)
}

/// Serves an already bound `listener` (see [`crate::net::listeners_on_one_port`]) on the
/// current runtime.
pub fn start_smtp_on(listener: std::net::TcpListener, script: Script) -> SmtpServer {
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    serve_on(
        TcpListener::from_std(listener).expect("tokio listener"),
        script,
    )
}

fn serve_on(listener: TcpListener, script: Script) -> SmtpServer {
    let addr = listener.local_addr().expect("server address");
    let log = Arc::new(Mutex::new(Log::default()));
    let server = SmtpServer {
        addr,
        log: Arc::clone(&log),
    };
    tokio::spawn(accept_loop(listener, Arc::new(script), log));
    server
}

async fn accept_loop(listener: TcpListener, script: Arc<Script>, log: Arc<Mutex<Log>>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let open = OpenConnection::new(Arc::clone(&log));
        let (script, log) = (Arc::clone(&script), Arc::clone(&log));
        tokio::spawn(async move {
            // Bounded, so a client that never leaves cannot keep a test's thread forever.
            let _ = tokio::time::timeout(Duration::from_secs(120), serve(tcp, script, log)).await;
            drop(open);
        });
    }
}

/// Counts one connection as open in the log for as long as it lives.
struct OpenConnection(Arc<Mutex<Log>>);

impl OpenConnection {
    fn new(log: Arc<Mutex<Log>>) -> Self {
        {
            let mut l = log.lock().expect("log");
            l.connections += 1;
            l.open += 1;
            l.peak_open = l.peak_open.max(l.open);
        }
        Self(log)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Ok(mut l) = self.0.lock() {
            l.open -= 1;
        }
    }
}

async fn serve(tcp: TcpStream, script: Arc<Script>, log: Arc<Mutex<Log>>) -> std::io::Result<()> {
    let mut plain = BufReader::new(tcp);
    plain
        .get_mut()
        .write_all(format!("{}\r\n", script.greeting).as_bytes())
        .await?;
    if !script.greeting.starts_with('2') {
        return Ok(());
    }
    let upgrade = session(&mut plain, &script, &log, false).await?;
    let (Some(config), true) = (script.tls.clone(), upgrade) else {
        return Ok(());
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let tls = acceptor.accept(plain.into_inner()).await?;
    let mut tls = BufReader::new(tls);
    session(&mut tls, &script, &log, true).await?;
    Ok(())
}

#[derive(Default)]
struct Txn {
    from: Option<String>,
    rcpts: Vec<String>,
    /// BDAT chunks so far.
    chunks: Vec<u8>,
}

impl Txn {
    /// The message is complete: kept when the script accepts it; the transaction ends.
    fn finish(
        &mut self,
        data: Vec<u8>,
        script: &Script,
        log: &Mutex<Log>,
        tls: bool,
        auth: &Option<String>,
    ) -> String {
        if script.data_final.starts_with('2') {
            log.lock().expect("log").messages.push(Received {
                from: self.from.take().unwrap_or_default(),
                rcpts: std::mem::take(&mut self.rcpts),
                data,
                tls,
                auth: auth.clone(),
            });
        }
        *self = Txn::default();
        script.data_final.clone()
    }
}

/// Runs commands until QUIT/EOF (returns false) or an accepted STARTTLS (returns true).
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    script: &Script,
    log: &Arc<Mutex<Log>>,
    tls: bool,
) -> std::io::Result<bool> {
    let mut txn = Txn::default();
    let mut auth: Option<String> = None;
    let mut mails = 0;
    loop {
        let mut line = String::new();
        if io.read_line(&mut line).await? == 0 {
            return Ok(false);
        }
        let line = line.trim_end().to_string();
        log.lock().expect("log").lines.push(line.clone());
        let mut ended = false;
        tokio::time::sleep(script.reply_delay).await;
        let upper = line.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") && script.no_ehlo {
            "502 5.5.1 what is EHLO".into()
        } else if upper.starts_with("EHLO") {
            ehlo(script, tls)
        } else if upper.starts_with("HELO") {
            "250 test.server".into()
        } else if upper == "STARTTLS" && script.tls.is_some() && !tls {
            io.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await?;
            return Ok(true);
        } else if upper.starts_with("AUTH PLAIN ") {
            let (reply, user) = check_plain(script, &line[11..], tls);
            auth = user.or(auth);
            reply
        } else if upper == "AUTH LOGIN" && tls {
            let (reply, user) = auth_login(io, script).await?;
            auth = user.or(auth);
            reply
        } else if upper.starts_with("MAIL FROM:")
            && script
                .messages_per_connection
                .is_some_and(|most| mails >= most)
        {
            io.get_mut()
                .write_all(b"421 4.7.0 too many messages on this connection\r\n")
                .await?;
            return Ok(false);
        } else if upper.starts_with("MAIL FROM:") {
            mails += 1;
            let from = path(&line[10..]);
            let pipelined = !io.buffer().is_empty();
            let mut l = log.lock().expect("log");
            l.senders.push(from.clone());
            l.pipelined_mail += usize::from(pipelined);
            drop(l);
            txn = Txn {
                from: Some(from),
                ..Txn::default()
            };
            "250 2.1.0 ok".into()
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = path(&line[8..]);
            let reply = (script.rcpt)(&rcpt);
            log.lock()
                .expect("log")
                .rcpts
                .push((rcpt.clone(), reply.clone()));
            if reply.starts_with('2') {
                txn.rcpts.push(rcpt);
            }
            reply
        } else if upper == "DATA" {
            if txn.from.is_none() || txn.rcpts.is_empty() {
                "554 5.5.1 no valid recipients".into()
            } else {
                io.get_mut().write_all(b"354 go on\r\n").await?;
                let data = read_data(io).await?;
                log.lock().expect("log").data_read += 1;
                if script
                    .stall_final_dot
                    .as_ref()
                    .is_some_and(|stall| stall.load(Ordering::SeqCst))
                {
                    // Mid-delivery: hold the reply until the sender goes away.
                    let mut rest = Vec::new();
                    let _ = tokio::io::AsyncReadExt::read_to_end(io, &mut rest).await;
                    return Ok(false);
                }
                tokio::time::sleep(script.data_delay).await;
                ended = true;
                txn.finish(data, script, log, tls, &auth)
            }
        } else if let Some(args) = upper.strip_prefix("BDAT ") {
            let mut words = args.split_ascii_whitespace();
            let size: usize = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            let last = words.next() == Some("LAST");
            let mut chunk = vec![0; size];
            tokio::io::AsyncReadExt::read_exact(io, &mut chunk).await?;
            if txn.from.is_none() || txn.rcpts.is_empty() {
                "554 5.5.1 no valid recipients".into()
            } else if last {
                txn.chunks.extend_from_slice(&chunk);
                log.lock().expect("log").data_read += 1;
                tokio::time::sleep(script.data_delay).await;
                let data = std::mem::take(&mut txn.chunks);
                ended = true;
                txn.finish(data, script, log, tls, &auth)
            } else {
                txn.chunks.extend_from_slice(&chunk);
                format!("250 2.0.0 {size} octets")
            }
        } else if upper == "RSET" {
            log.lock().expect("log").pipelined_rset += usize::from(!io.buffer().is_empty());
            txn = Txn::default();
            script.rset_reply.clone()
        } else if upper == "NOOP" {
            "250 2.0.0 ok".into()
        } else if upper == "QUIT" {
            io.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(false);
        } else {
            "502 5.5.2 unknown".into()
        };
        io.get_mut()
            .write_all(format!("{reply}\r\n").as_bytes())
            .await?;
        if ended && script.close_after_message {
            return Ok(false);
        }
    }
}

fn ehlo(script: &Script, tls: bool) -> String {
    let mut lines = vec!["test.server".to_string()];
    if script.pipelining {
        lines.push("PIPELINING".into());
    }
    if let Some(size) = script.size {
        lines.push(format!("SIZE {size}"));
    }
    lines.push("8BITMIME".into());
    if script.chunking {
        lines.push("CHUNKING".into());
    }
    if script.dsn {
        lines.push("DSN".into());
    }
    if script.tls.is_some() && !tls {
        lines.push("STARTTLS".into());
    }
    if script.auth.is_some() && tls {
        lines.push(format!("AUTH {}", script.auth_mechs));
    }
    let last = lines.len() - 1;
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| format!("250{}{l}", if i == last { ' ' } else { '-' }))
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn check_plain(script: &Script, token: &str, tls: bool) -> (String, Option<String>) {
    let Some((user, pass)) = &script.auth else {
        return ("502 5.5.1 no auth".into(), None);
    };
    if !tls {
        return ("538 5.7.11 encryption required".into(), None);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .unwrap_or_default();
    let expected = format!("\0{user}\0{pass}").into_bytes();
    if decoded == expected {
        ("235 2.7.0 ok".into(), Some(user.clone()))
    } else {
        ("535 5.7.8 bad credentials".into(), None)
    }
}

/// The AUTH LOGIN exchange: two base64 challenges, user then password.
async fn auth_login<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    script: &Script,
) -> std::io::Result<(String, Option<String>)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut answers = Vec::new();
    for challenge in ["334 VXNlcm5hbWU6\r\n", "334 UGFzc3dvcmQ6\r\n"] {
        io.get_mut().write_all(challenge.as_bytes()).await?;
        let mut line = String::new();
        io.read_line(&mut line).await?;
        answers.push(b64.decode(line.trim()).unwrap_or_default());
    }
    let Some((user, pass)) = &script.auth else {
        return Ok(("535 5.7.8 no".into(), None));
    };
    if answers[0] == user.as_bytes() && answers[1] == pass.as_bytes() {
        Ok(("235 2.7.0 ok".into(), Some(user.clone())))
    } else {
        Ok(("535 5.7.8 bad credentials".into(), None))
    }
}

fn path(arg: &str) -> String {
    let arg = arg.trim();
    let inner = arg.strip_prefix('<').unwrap_or(arg);
    inner.split('>').next().unwrap_or("").to_string()
}

/// Reads DATA content up to CRLF.CRLF, undoing dot-stuffing.
async fn read_data<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut line = Vec::new();
        if io.read_until(b'\n', &mut line).await? == 0 {
            return Err(std::io::Error::other("connection closed in DATA"));
        }
        if line == b".\r\n" {
            return Ok(out);
        }
        let start = usize::from(line.starts_with(b".."));
        out.extend_from_slice(&line[start..]);
    }
}

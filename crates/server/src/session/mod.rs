//! One SMTP session, from banner to QUIT (RFC 5321, RFC 2920 pipelining, RFC 3207 STARTTLS,
//! RFC 4954 AUTH).
//!
//! The session owns the dialogue and nothing else: syntax comes from the protocol crate, every
//! "may this recipient be accepted?" from [`crate::policy`], durability from the queue. Replies
//! are buffered and flushed only when the session needs more input, which is exactly what
//! pipelining requires.
//!
//! The session is generic over its byte stream ([`Stream`]): the listener gives it a TCP
//! socket, tests an in-memory pipe (`tokio::io::duplex`), so whole dialogues run in-process.
//! This file holds the state, the read loop and the reply plumbing; each verb has its own
//! file: [`hello`] (EHLO/HELO), [`mail`], [`rcpt`], [`data`], [`bdat`], [`starttls`], [`auth`].

mod auth;
mod bdat;
mod content;
mod data;
mod hello;
mod mail;
mod rcpt;
mod replies;
mod starttls;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use relayward_config::Live;
use relayward_protocol::command::{Command, parse_command};
use relayward_protocol::dsn::{MailDsn, RcptDsn};
use relayward_protocol::limits::{MAX_AUTH_LINE, command_line_limit};
use relayward_protocol::line::{LineBuffer, LineEvent};
use relayward_protocol::reply::Reply;
use relayward_queue::Queue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant as Deadline;
use tokio_rustls::TlsAcceptor;

use crate::auth::{AuthLimiter, Login, UserDb};
use crate::config::{Config, Limits, ListenerKind};
use crate::conn::Conn;
pub use crate::conn::Stream;
use crate::policy::{Accepted, ClientIdentity, Policy};
use crate::ratelimit::UserRateLimiter;
use replies::command_error_reply;

/// Limits the session enforces; built from `[limits]`.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Silence required before the banner on `mx` listeners (pregreet test); zero disables.
    pub greet_pause: Duration,
    pub greet_pause_ttl: Duration,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_errors: u32,
    pub greeting_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub session_timeout: Duration,
}

/// Everything a session needs from the server; one snapshot per session, so a reload (SIGHUP)
/// affects new sessions and never changes the rules under a running transaction.
pub struct SessionContext {
    pub hostname: String,
    pub policy: Arc<Policy>,
    pub users: Arc<UserDb>,
    /// Shared across sessions and reloads: a SIGHUP must not forgive an attacker.
    pub auth_limiter: Arc<AuthLimiter>,
    /// Per-login sending budgets; shared across sessions and reloads like `auth_limiter`.
    pub user_limits: Arc<UserRateLimiter>,
    /// Peers whose PROXY protocol header names the real client (see [`crate::proxy`]).
    pub trusted_proxies: Vec<IpNet>,
    pub tls: Option<TlsAcceptor>,
    pub queue: Arc<dyn Queue>,
    pub limits: SessionLimits,
    /// Asks internal servers about recipients of `[[route]]` domains that verify them; without
    /// it such recipients get `451` (never an unverified `250`).
    pub verifier: Option<Arc<dyn crate::verify::VerifyRecipients>>,
    /// Clients that passed the pregreet test; shared across sessions and reloads.
    pub pregreet: Arc<crate::pregreet::PregreetCache>,
    /// DKIM-signs relayed mail (see [`crate::sign`]); `None` when no `[[dkim]]` key is set.
    pub signer: Option<Arc<dyn crate::sign::SignOutbound>>,
    /// Delivers mail whose every recipient is local before the `250` (see [`crate::local`]);
    /// `None`: all mail is queued.
    pub local_delivery: Option<Arc<dyn crate::local::DeliverLocal>>,
}

impl SessionLimits {
    pub fn from_limits(limits: &Limits) -> Self {
        SessionLimits {
            greet_pause: limits.greet_pause,
            greet_pause_ttl: limits.greet_pause_ttl,
            max_message_size: limits.max_message_size,
            max_recipients: limits.max_recipients as usize,
            max_errors: limits.max_errors,
            greeting_timeout: limits.greeting_timeout,
            command_timeout: limits.command_timeout,
            data_timeout: limits.data_block_timeout,
            session_timeout: limits.session_timeout,
        }
    }
}

impl SessionContext {
    /// The session side of one configuration: its policy, users, limits and proxies, with the
    /// state that outlives a configuration (the queue and the abuse counters) passed in. The
    /// server builds it at start and on every reload; tests build it from a TOML string.
    pub fn from_config(
        config: &Config,
        policy: Policy,
        tls: Option<TlsAcceptor>,
        queue: Arc<dyn Queue>,
        auth_limiter: Arc<AuthLimiter>,
        user_limits: Arc<UserRateLimiter>,
    ) -> SessionContext {
        SessionContext {
            hostname: config.hostname.clone(),
            policy: Arc::new(policy),
            users: Arc::new(UserDb::from_config(config)),
            auth_limiter,
            user_limits,
            trusted_proxies: config
                .relay
                .trusted_proxies
                .iter()
                .map(|cidr| cidr.net().trunc())
                .collect(),
            tls,
            queue,
            limits: SessionLimits::from_limits(&config.limits),
            verifier: None,
            pregreet: Arc::default(),
            signer: None,
            local_delivery: None,
        }
    }
}

/// Why the session ended; for the connection log line.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    Quit,
    ClientClosed,
    Timeout,
    TooManyErrors,
    /// Talked before the banner (pregreet).
    Pregreet,
    /// Pipelined commands without having seen PIPELINING.
    ImproperPipelining,
    Protocol(&'static str),
    ShuttingDown,
}

/// How long the last words of a session (a final reply, TLS close_notify, draining) may take:
/// a client that does not read must not hold the connection past its limits.
const FAREWELL: Duration = Duration::from_secs(2);
/// Most octets read and dropped after we decided to close, so that a pipelining client's
/// unread commands do not turn our close into a reset that destroys the final reply.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// Runs one session to its end. `client` is the real client (the peer, or what a trusted
/// proxy said); `deadline` ends the session whatever it is doing (`session_timeout`, counted
/// from the accept, so PROXY and TLS handshakes are inside it). I/O errors end the session;
/// they are not the client's fault to be told about. The session takes the context in force
/// from `sessions` when it starts and again at each MAIL (see [`Session::follow_reload`]).
pub async fn run<S: Stream>(
    sessions: Live<SessionContext>,
    kind: ListenerKind,
    conn: Conn<S>,
    client: SocketAddr,
    shutdown: watch::Receiver<bool>,
    deadline: Deadline,
) -> Ending {
    let mut session = Session::new(sessions, kind, conn, client, shutdown);
    let ending = match tokio::time::timeout_at(deadline, session.serve()).await {
        Ok(Ok(ending)) => ending,
        Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => Ending::Timeout,
        Ok(Err(_)) => Ending::ClientClosed,
        Err(_) => {
            let reply = Reply::enh(421, (4, 4, 2), "Session time limit exceeded, closing");
            let _ = tokio::time::timeout(FAREWELL, session.send_now(&reply)).await;
            Ending::Timeout
        }
    };
    let _ = tokio::time::timeout(FAREWELL, session.conn.shutdown()).await;
    // Not when stopping: an idle session has nothing to drain, and shutdown should be quick.
    if !matches!(
        ending,
        Ending::Quit | Ending::ClientClosed | Ending::ShuttingDown
    ) {
        let _ = tokio::time::timeout(FAREWELL, session.drain()).await;
    }
    ending
}

struct Helo {
    name: String,
    esmtp: bool,
}

struct Transaction {
    sender: String,
    recipients: Vec<Accepted>,
    /// `MAIL … SMTPUTF8`: UTF-8 addresses (and headers) are allowed.
    smtputf8: bool,
    /// `RET=` / `ENVID=` of MAIL.
    dsn: MailDsn,
    /// `NOTIFY=` / `ORCPT=` of each accepted recipient, in the order of `recipients`.
    rcpt_dsn: Vec<RcptDsn>,
    /// The chunks received so far when the content comes by BDAT (then DATA is refused).
    chunks: Option<Box<bdat::Chunks>>,
    /// Recipients refused with `452` for passing `max_recipients` (see [`rcpt`]).
    overshoot: usize,
}

enum Flow {
    Continue,
    Close(Ending),
}

/// What waiting for the client produced.
enum Input {
    Event(LineEvent),
    Gone(Ending),
}

pub(super) struct Session<S> {
    ctx: Arc<SessionContext>,
    /// Where a reloaded context comes from.
    sessions: Live<SessionContext>,
    kind: ListenerKind,
    conn: Conn<S>,
    client_ip: IpAddr,
    lines: LineBuffer,
    out: Vec<u8>,
    helo: Option<Helo>,
    login: Option<String>,
    txn: Option<Transaction>,
    errors: u32,
    /// NOOP, RSET, VRFY and HELP since the last accepted message (see [`JUNK_COMMAND_LIMIT`]).
    junk_commands: u32,
    /// Whether the client has sent anything since the banner (greeting vs command timeout).
    commands_seen: bool,
    shutdown: watch::Receiver<bool>,
}

type Step = io::Result<Flow>;

/// Commands that move no mail a session may send between two accepted messages before each
/// further one counts as an error (Postfix's `smtpd_junk_command_limit`, 100).
const JUNK_COMMAND_LIMIT: u32 = 100;

impl<S: Stream> Session<S> {
    fn new(
        sessions: Live<SessionContext>,
        kind: ListenerKind,
        conn: Conn<S>,
        client: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            ctx: sessions.current(),
            sessions,
            kind,
            conn,
            client_ip: client.ip().to_canonical(),
            // Long enough for an RFC 4954 AUTH response; command lines are held to 512 below.
            lines: LineBuffer::new(MAX_AUTH_LINE + 2),
            out: Vec::with_capacity(1024),
            helo: None,
            login: None,
            txn: None,
            errors: 0,
            junk_commands: 0,
            commands_seen: false,
            shutdown,
        }
    }

    async fn serve(&mut self) -> io::Result<Ending> {
        if self.pregreeted().await? {
            tracing::warn!(client = %self.client_ip, "client talked before the greeting");
            let reply = Reply::enh(
                554,
                (5, 5, 1),
                format!(
                    "{} Protocol error: data sent before greeting",
                    self.ctx.hostname
                ),
            );
            self.send_now(&reply).await?;
            return Ok(Ending::Pregreet);
        }
        self.queue_reply(&Reply::new(
            220,
            None,
            format!("{} ESMTP relayward", self.ctx.hostname),
        ));
        loop {
            let event = match self.next_event(self.command_timeout()).await? {
                Input::Event(event) => event,
                Input::Gone(ending) => return Ok(ending),
            };
            self.commands_seen = true;
            let flow = match event {
                LineEvent::Line(_) if self.improperly_pipelined() => {
                    // A robot after all: it must pass the pregreet test again.
                    self.ctx.pregreet.forget(self.client_ip);
                    self.close_with(
                    Reply::enh(
                        554,
                        (5, 5, 1),
                        "Improper use of SMTP command pipelining (send EHLO and wait for PIPELINING)",
                    ),
                    Ending::ImproperPipelining,
                )
                }
                LineEvent::Line(line) => self.on_line(&line).await?,
                LineEvent::TooLong => self.client_error(Reply::enh(
                    500,
                    (5, 5, 2),
                    "Line too long (RFC 5321 limit is 512 octets)",
                )),
                LineEvent::BareLineEnding => self.close_with(
                    Reply::enh(
                        521,
                        (5, 5, 2),
                        "Bare CR or LF received; closing (SMTP smuggling defence)",
                    ),
                    Ending::Protocol("bare line ending in command"),
                ),
            };
            if let Flow::Close(ending) = flow {
                self.flush().await?;
                return Ok(ending);
            }
        }
    }

    /// The pregreet test (`mx` listeners): listens for `greet_pause` before the banner. A
    /// client that talks first is a robot that does not wait for replies; real MTAs wait, and
    /// one that waited is remembered for `greet_pause_ttl` ([`crate::pregreet`]).
    /// Trusted networks are not tested (like postscreen's mynetworks): the admin vouches for
    /// them, and their applications should not pay the pause on every message.
    async fn pregreeted(&mut self) -> io::Result<bool> {
        let pause = match self.kind {
            ListenerKind::Mx if !self.ctx.policy.is_trusted(self.client_ip) => {
                self.ctx.limits.greet_pause
            }
            _ => Duration::ZERO,
        };
        let ttl = self.ctx.limits.greet_pause_ttl;
        if pause.is_zero() || self.ctx.pregreet.has_passed(self.client_ip, ttl) {
            return Ok(false);
        }
        let mut probe = [0u8; 512];
        match tokio::time::timeout(pause, self.conn.read(&mut probe)).await {
            Err(_) => {
                self.ctx.pregreet.record_pass(self.client_ip, ttl);
                Ok(false)
            }
            Ok(Ok(0)) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(Ok(_)) => {
                self.ctx.pregreet.forget(self.client_ip);
                Ok(true)
            }
            Ok(Err(e)) => Err(e),
        }
    }

    /// RFC 5321 §4.5.3.2.1 gives the greeting its own timeout; after that, the command timeout.
    fn command_timeout(&self) -> Duration {
        if self.commands_seen {
            self.ctx.limits.command_timeout
        } else {
            self.ctx.limits.greeting_timeout
        }
    }

    /// True when the line just taken was followed by more input although the client has not
    /// seen PIPELINING in an EHLO reply (RFC 2920 §3.1; a HELO session never gets it). Such a
    /// client does not wait for replies: a robot, or an attempt to slip commands past a
    /// decision (Postfix's reject_unauth_pipelining).
    fn improperly_pipelined(&self) -> bool {
        let pipelining_offered = self.helo.as_ref().is_some_and(|h| h.esmtp);
        !pipelining_offered && self.lines.buffered() > 0
    }

    /// Reads and drops what the client still sends after we closed our side, up to a limit, so
    /// the kernel does not answer its unread bytes with a reset that would destroy our last reply.
    async fn drain(&mut self) {
        // On the heap: an array here would be part of every session's future, idle or not.
        let mut sink = vec![0u8; 16 * 1024];
        let mut total = 0;
        while total < DRAIN_LIMIT {
            match self.conn.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    }

    fn ending_for_silence(&self) -> Ending {
        if *self.shutdown.borrow() {
            Ending::ShuttingDown
        } else {
            Ending::ClientClosed
        }
    }

    /// The next line event. Flushes pending replies first, then waits for input with a timeout.
    /// [`Input::Gone`] means the client closed, went silent past the timeout, or the server is
    /// stopping (the reason has already been told to the client).
    async fn next_event(&mut self, timeout: Duration) -> io::Result<Input> {
        loop {
            if let Some(event) = self.lines.next_event() {
                return Ok(Input::Event(event));
            }
            self.flush().await?;
            let mut buf = [0u8; 4096];
            let mut shutdown = self.shutdown.clone();
            let read = tokio::select! {
                read = tokio::time::timeout(timeout, self.conn.read(&mut buf)) => read,
                () = stopping(&mut shutdown) => {
                    self.send_now(&Reply::enh(421, (4, 3, 2), format!("{} Service shutting down", self.ctx.hostname))).await?;
                    return Ok(Input::Gone(Ending::ShuttingDown));
                }
            };
            match read {
                Err(_) => {
                    let reply = Reply::enh(
                        421,
                        (4, 4, 2),
                        format!("{} Timeout, closing", self.ctx.hostname),
                    );
                    self.send_now(&reply).await?;
                    return Ok(Input::Gone(Ending::Timeout));
                }
                Ok(Ok(0)) => return Ok(Input::Gone(self.ending_for_silence())),
                Ok(Ok(n)) => self.lines.extend(&buf[..n]),
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    async fn on_line(&mut self, line: &[u8]) -> Step {
        let parsed = parse_command(line);
        if is_bdat(line) && !matches!(parsed, Ok(Command::Bdat { .. })) {
            // Its chunk follows, and where it ends cannot be known: reading on would take the
            // chunk's octets for commands (RFC 3030 framing is the size alone).
            return Ok(self.close_with(
                Reply::enh(
                    501,
                    (5, 5, 4),
                    "Syntax error: BDAT needs a chunk size and at most LAST; closing, its chunk cannot be told from commands",
                ),
                Ending::Protocol("malformed BDAT"),
            ));
        }
        if line.len() + 2 > command_line_limit(line) {
            return Ok(self.client_error(Reply::enh(
                500,
                (5, 5, 2),
                "Line too long (RFC 5321 limit is 512 octets)",
            )));
        }
        match parsed {
            Ok(command) => self.on_command(command).await,
            Err(error) => Ok(self.client_error(command_error_reply(&error))),
        }
    }

    async fn on_command(&mut self, command: Command) -> Step {
        match command {
            Command::Ehlo(name) => Ok(self.on_hello(name, true)),
            Command::Helo(name) => Ok(self.on_hello(name, false)),
            Command::Mail { wire, from, params } => Ok(self.on_mail(&wire, from, &params)),
            Command::Rcpt { wire, to, params } => Ok(self.on_rcpt(&wire, &to, &params).await),
            Command::Data => self.on_data().await,
            Command::Bdat { size, last } => self.on_bdat(size, last).await,
            Command::Rset => {
                self.txn = None;
                Ok(self.junk_reply(Reply::enh(250, (2, 0, 0), "Ok")))
            }
            Command::Noop => Ok(self.junk_reply(Reply::enh(250, (2, 0, 0), "Ok"))),
            Command::Quit => Ok(self.close_with(
                Reply::enh(
                    221,
                    (2, 0, 0),
                    format!("{} closing connection", self.ctx.hostname),
                ),
                Ending::Quit,
            )),
            // No address verification: it only helps harvesters (RFC 5321 §3.5.3 allows 252).
            Command::Vrfy(_) => Ok(self.junk_reply(Reply::enh(
                252,
                (2, 5, 2),
                "Cannot VRFY user, but will accept message and attempt delivery",
            ))),
            Command::Expn(_) => {
                Ok(self.client_error(Reply::enh(502, (5, 5, 1), "EXPN not available")))
            }
            Command::Help(_) => Ok(self.junk_reply(Reply::enh(
                214,
                (2, 0, 0),
                "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
            ))),
            Command::StartTls => self.on_starttls().await,
            Command::Auth {
                mechanism,
                initial_response,
            } => self.on_auth(&mechanism, initial_response).await,
        }
    }

    fn identity(&self) -> ClientIdentity {
        ClientIdentity::new(self.client_ip, self.login.clone().map(Login::new))
    }

    fn reply(&mut self, reply: Reply) -> Flow {
        self.queue_reply(&reply);
        Flow::Continue
    }

    /// The reply to a command that moves no mail (NOOP, RSET, VRFY, HELP): past
    /// [`JUNK_COMMAND_LIMIT`] of them since the last accepted message, each counts as an
    /// error, so a client cannot hold a session (and a connection slot) open with them.
    fn junk_reply(&mut self, reply: Reply) -> Flow {
        self.junk_commands = self.junk_commands.saturating_add(1);
        if self.junk_commands > JUNK_COMMAND_LIMIT {
            return self.client_error(reply);
        }
        self.reply(reply)
    }

    /// A reply to a client mistake: counted, and after too many the session ends (the way
    /// Postfix's hard error limit stops dictionary attacks and confused robots).
    fn client_error(&mut self, reply: Reply) -> Flow {
        self.queue_reply(&reply);
        self.errors += 1;
        if self.errors >= self.ctx.limits.max_errors {
            let bye = Reply::enh(
                421,
                (4, 7, 0),
                format!("{} Too many errors, closing", self.ctx.hostname),
            );
            self.queue_reply(&bye);
            return Flow::Close(Ending::TooManyErrors);
        }
        Flow::Continue
    }

    fn close_with(&mut self, reply: Reply, ending: Ending) -> Flow {
        self.queue_reply(&reply);
        Flow::Close(ending)
    }

    fn queue_reply(&mut self, reply: &Reply) {
        self.out.extend_from_slice(reply.to_wire().as_bytes());
    }

    async fn send_now(&mut self, reply: &Reply) -> io::Result<()> {
        self.queue_reply(reply);
        self.flush().await
    }

    /// Writes the replies queued so far. A client that sends commands and stops reading the
    /// replies stalls this write once the socket buffers are full; the wait for it to read is
    /// bounded like the wait for its next command (Postfix's `smtpd_timeout` covers both), or
    /// it would hold its connection slot until `session_timeout`. Fails with `TimedOut` then.
    async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let limit = self.command_timeout();
        let (conn, out) = (&mut self.conn, &self.out);
        let write = async move {
            conn.write_all(out).await?;
            conn.flush().await
        };
        let result = match tokio::time::timeout(limit, write).await {
            Ok(written) => written,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read none of our replies within the command timeout",
            )),
        };
        self.out.clear();
        result
    }
}

/// Whether the line is a `BDAT` command, well-formed or not (verb in any case, then a blank or
/// nothing).
fn is_bdat(line: &[u8]) -> bool {
    line.len() >= 4
        && line[..4].eq_ignore_ascii_case(b"BDAT")
        && matches!(line.get(4), None | Some(b' ' | b'\t'))
}

/// Resolves when the server starts shutting down (never, if the sender is gone).
pub(crate) async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

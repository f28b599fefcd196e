//! One SMTP session, from banner to QUIT (RFC 5321, RFC 2920 pipelining, RFC 3207 STARTTLS,
//! RFC 4954 AUTH).
//!
//! The session owns the dialogue and nothing else: syntax comes from the protocol crate, every
//! "may this recipient be accepted?" from [`crate::policy`], durability from the queue. Replies
//! are buffered and flushed only when the session needs more input, which is exactly what
//! pipelining requires.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use relayward_protocol::command::{Command, CommandError, Param, parse_command};
use relayward_protocol::data::{DataError, DataReceiver, DataStatus};
use relayward_protocol::limits::{MAX_AUTH_LINE, command_line_limit};
use relayward_protocol::line::{LineBuffer, LineEvent};
use relayward_protocol::path::{PathError, ReversePath};
use relayward_protocol::reply::Reply;
use relayward_protocol::resolve::resolve;
use relayward_queue::{NewMessage, Queue, QueueError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant as Deadline;
use tokio_rustls::TlsAcceptor;

use crate::auth::{
    AuthLimiter, Credentials, Login, SaslError, SaslExchange, SaslMechanism, SaslStep, UserDb,
    bad_credentials_reply,
};
use crate::config::ListenerKind;
use crate::conn::Conn;
use crate::policy::{Accepted, ClientIdentity, Policy};
use crate::ratelimit::UserRateLimiter;
use crate::trace::{TraceFacts, received_header};

/// Limits the session enforces; built from `[limits]`.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Silence required before the banner on `mx` listeners (pregreet test); zero disables.
    pub greet_pause: Duration,
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
/// they are not the client's fault to be told about.
pub async fn run(
    ctx: Arc<SessionContext>,
    kind: ListenerKind,
    conn: Conn,
    client: SocketAddr,
    shutdown: watch::Receiver<bool>,
    deadline: Deadline,
) -> Ending {
    let mut session = Session::new(ctx, kind, conn, client, shutdown);
    let ending = match tokio::time::timeout_at(deadline, session.serve()).await {
        Ok(Ok(ending)) => ending,
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

struct Session {
    ctx: Arc<SessionContext>,
    kind: ListenerKind,
    conn: Conn,
    client_ip: IpAddr,
    lines: LineBuffer,
    out: Vec<u8>,
    helo: Option<Helo>,
    login: Option<String>,
    txn: Option<Transaction>,
    errors: u32,
    /// Whether the client has sent anything since the banner (greeting vs command timeout).
    commands_seen: bool,
    shutdown: watch::Receiver<bool>,
}

type Step = io::Result<Flow>;

impl Session {
    fn new(
        ctx: Arc<SessionContext>,
        kind: ListenerKind,
        conn: Conn,
        client: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            ctx,
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
                LineEvent::Line(_) if self.improperly_pipelined() => self.close_with(
                    Reply::enh(
                        554,
                        (5, 5, 1),
                        "Improper use of SMTP command pipelining (send EHLO and wait for PIPELINING)",
                    ),
                    Ending::ImproperPipelining,
                ),
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
    /// client that talks first is a robot that does not wait for replies; real MTAs wait.
    /// Trusted networks are not tested (like postscreen's mynetworks): the admin vouches for
    /// them, and their applications should not pay the pause on every message.
    async fn pregreeted(&mut self) -> io::Result<bool> {
        let pause = match self.kind {
            ListenerKind::Mx if !self.ctx.policy.is_trusted(self.client_ip) => {
                self.ctx.limits.greet_pause
            }
            _ => Duration::ZERO,
        };
        if pause.is_zero() {
            return Ok(false);
        }
        let mut probe = [0u8; 512];
        match tokio::time::timeout(pause, self.conn.read(&mut probe)).await {
            Err(_) => Ok(false),
            Ok(Ok(0)) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(Ok(_)) => Ok(true),
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
        let mut sink = [0u8; 16 * 1024];
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
        if line.len() + 2 > command_line_limit(line) {
            return Ok(self.client_error(Reply::enh(
                500,
                (5, 5, 2),
                "Line too long (RFC 5321 limit is 512 octets)",
            )));
        }
        match parse_command(line) {
            Ok(command) => self.on_command(command).await,
            Err(error) => Ok(self.client_error(command_error_reply(&error))),
        }
    }

    async fn on_command(&mut self, command: Command) -> Step {
        match command {
            Command::Ehlo(name) => Ok(self.on_hello(name, true)),
            Command::Helo(name) => Ok(self.on_hello(name, false)),
            Command::Mail { wire, from, params } => Ok(self.on_mail(&wire, from, &params)),
            Command::Rcpt { wire, to, .. } => Ok(self.on_rcpt(&wire, &to)),
            Command::Data => self.on_data().await,
            Command::Bdat { .. } => {
                Ok(self.client_error(Reply::enh(502, (5, 5, 1), "BDAT not implemented; use DATA")))
            }
            Command::Rset => {
                self.txn = None;
                Ok(self.reply(Reply::enh(250, (2, 0, 0), "Ok")))
            }
            Command::Noop => Ok(self.reply(Reply::enh(250, (2, 0, 0), "Ok"))),
            Command::Quit => Ok(self.close_with(
                Reply::enh(
                    221,
                    (2, 0, 0),
                    format!("{} closing connection", self.ctx.hostname),
                ),
                Ending::Quit,
            )),
            // No address verification: it only helps harvesters (RFC 5321 §3.5.3 allows 252).
            Command::Vrfy(_) => Ok(self.reply(Reply::enh(
                252,
                (2, 5, 2),
                "Cannot VRFY user, but will accept message and attempt delivery",
            ))),
            Command::Expn(_) => {
                Ok(self.client_error(Reply::enh(502, (5, 5, 1), "EXPN not available")))
            }
            Command::Help(_) => Ok(self.reply(Reply::enh(
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

    fn on_hello(&mut self, name: String, esmtp: bool) -> Flow {
        self.txn = None;
        let reply = if esmtp {
            Reply::multiline(250, None, self.ehlo_lines(&name))
        } else {
            Reply::new(250, None, self.ctx.hostname.clone())
        };
        self.helo = Some(Helo { name, esmtp });
        self.reply(reply)
    }

    fn ehlo_lines(&self, name: &str) -> Vec<String> {
        let mut lines = vec![
            format!("{} greets {} [{}]", self.ctx.hostname, name, self.client_ip),
            "PIPELINING".to_string(),
            format!("SIZE {}", self.ctx.limits.max_message_size),
            "8BITMIME".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
        ];
        if self.ctx.tls.is_some() && !self.conn.is_tls() {
            lines.push("STARTTLS".to_string());
        }
        if self.auth_available() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        lines
    }

    /// AUTH is offered only under TLS (passwords never cross in clear), only once, and only when
    /// there are users to authenticate.
    fn auth_available(&self) -> bool {
        self.conn.is_tls() && self.login.is_none() && !self.ctx.users.is_empty()
    }

    fn on_mail(&mut self, wire: &str, from: ReversePath, params: &[Param]) -> Flow {
        if self.helo.is_none() {
            return self.client_error(Reply::enh(503, (5, 5, 1), "Send HELO/EHLO first"));
        }
        if self.txn.is_some() {
            return self.client_error(Reply::enh(503, (5, 5, 1), "Nested MAIL command"));
        }
        if let Some(size) = declared_size(params)
            && size > self.ctx.limits.max_message_size
        {
            return self.client_error(Reply::enh(
                552,
                (5, 3, 4),
                "Message size exceeds fixed maximum message size",
            ));
        }
        if let Err(refusal) = self
            .ctx
            .policy
            .check_mail(self.kind, &self.identity(), &from)
        {
            return self.client_error(refusal.reply());
        }
        if let Err(reply) = self.spend_budget(Budget::Message) {
            return self.client_error(reply);
        }
        let sender = match &from {
            ReversePath::Null => String::new(),
            ReversePath::Path { mailbox, .. } => {
                relayward_protocol::resolve::resolve_mailbox(mailbox).address()
            }
        };
        tracing::debug!(client = %self.client_ip, sender = wire, "MAIL accepted");
        self.txn = Some(Transaction {
            sender,
            recipients: Vec::new(),
        });
        self.reply(Reply::enh(250, (2, 1, 0), "Ok"))
    }

    fn on_rcpt(&mut self, wire: &str, to: &relayward_protocol::path::ForwardPath) -> Flow {
        let identity = self.identity();
        let Some(txn) = self.txn.as_mut() else {
            return self.client_error(Reply::enh(503, (5, 5, 1), "Need MAIL before RCPT"));
        };
        if txn.recipients.len() >= self.ctx.limits.max_recipients {
            return self.client_error(Reply::enh(452, (4, 5, 3), "Too many recipients"));
        }
        let resolved = resolve(to);
        match self.ctx.policy.decide(&identity, &resolved) {
            Ok(accepted) => {
                let duplicate = txn
                    .recipients
                    .iter()
                    .any(|r| r.address() == accepted.address());
                if !duplicate {
                    if let Err(reply) = self.spend_budget(Budget::Recipient) {
                        return self.client_error(reply);
                    }
                    if let Some(txn) = self.txn.as_mut() {
                        txn.recipients.push(accepted);
                    }
                }
                self.reply(Reply::enh(250, (2, 1, 5), "Ok"))
            }
            Err(refusal) => {
                tracing::info!(client = %self.client_ip, rcpt = wire, "recipient refused: {}", refusal.reply());
                let reply = refusal.reply();
                self.client_error(reply)
            }
        }
    }

    async fn on_data(&mut self) -> Step {
        let Some(txn) = self.txn.as_ref() else {
            return Ok(self.client_error(Reply::enh(503, (5, 5, 1), "Need MAIL command")));
        };
        if txn.recipients.is_empty() {
            return Ok(self.client_error(Reply::enh(554, (5, 5, 1), "No valid recipients")));
        }
        self.queue_reply(&Reply::new(354, None, "End data with <CR><LF>.<CR><LF>"));
        self.flush().await?;
        let mut content = Vec::with_capacity(8192);
        match self.receive_data(&mut content).await? {
            DataOutcome::Complete => {}
            DataOutcome::Refused(reply) => {
                self.txn = None;
                return Ok(self.client_error(reply));
            }
            DataOutcome::Fatal(reply, why) => {
                self.txn = None;
                return Ok(self.close_with(reply, Ending::Protocol(why)));
            }
            DataOutcome::Closed => return Ok(Flow::Close(Ending::ClientClosed)),
        }
        let Some(txn) = self.txn.take() else {
            return Ok(Flow::Continue);
        };
        let reply = self.enqueue(txn, content).await;
        Ok(self.reply(reply))
    }

    async fn receive_data(&mut self, content: &mut Vec<u8>) -> io::Result<DataOutcome> {
        let mut receiver = DataReceiver::new(self.ctx.limits.max_message_size);
        let mut pending = self.lines.take_buffered();
        loop {
            match receiver.feed(&pending, content) {
                DataStatus::NeedMore => {}
                DataStatus::Done { consumed, error } => {
                    self.lines.extend(&pending[consumed..]);
                    return Ok(match error {
                        None => DataOutcome::Complete,
                        Some(error) => DataOutcome::Refused(data_error_reply(error)),
                    });
                }
                DataStatus::Fatal(error) => {
                    return Ok(DataOutcome::Fatal(
                        data_error_reply(error),
                        "bare line ending in DATA",
                    ));
                }
            }
            pending.clear();
            pending.resize(16 * 1024, 0);
            let read =
                tokio::time::timeout(self.ctx.limits.data_timeout, self.conn.read(&mut pending))
                    .await;
            match read {
                Err(_) => {
                    return Ok(DataOutcome::Fatal(
                        Reply::enh(421, (4, 4, 2), "Timeout during DATA, closing"),
                        "timeout in DATA",
                    ));
                }
                Ok(Ok(0)) => return Ok(DataOutcome::Closed),
                Ok(Ok(n)) => pending.truncate(n),
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    async fn enqueue(&mut self, txn: Transaction, body: Vec<u8>) -> Reply {
        let recipients: Vec<String> = txn
            .recipients
            .iter()
            .map(|r| r.address().to_string())
            .collect();
        let tls = self.conn.tls_facts();
        let helo = self.helo.as_ref();
        let header = received_header(&TraceFacts {
            helo: helo.map(|h| h.name.as_str()).unwrap_or("unknown"),
            client_ip: self.client_ip,
            hostname: &self.ctx.hostname,
            esmtp: helo.is_some_and(|h| h.esmtp),
            tls: tls.as_ref(),
            auth_login: self.login.as_deref(),
            single_recipient: (recipients.len() == 1).then(|| recipients[0].as_str()),
            now: SystemTime::now(),
        });
        let mut content = Vec::with_capacity(header.len() + body.len());
        content.extend_from_slice(header.as_bytes());
        content.extend_from_slice(&body);
        let message = NewMessage {
            sender: txn.sender,
            recipients,
            content,
            client_ip: self.client_ip.to_string(),
            auth_login: self.login.clone(),
        };
        match self.ctx.queue.enqueue(message).await {
            Ok(id) => {
                tracing::info!(client = %self.client_ip, %id, "message queued");
                Reply::enh(250, (2, 0, 0), format!("Ok: queued as {id}"))
            }
            Err(error) => {
                tracing::error!(client = %self.client_ip, "queue refused message: {error}");
                queue_error_reply(&error)
            }
        }
    }

    async fn on_starttls(&mut self) -> Step {
        let Some(acceptor) = self.ctx.tls.clone() else {
            return Ok(self.client_error(Reply::enh(454, (4, 7, 0), "TLS not available")));
        };
        if self.conn.is_tls() {
            return Ok(self.client_error(Reply::enh(503, (5, 5, 1), "TLS already active")));
        }
        self.queue_reply(&Reply::enh(220, (2, 0, 0), "Ready to start TLS"));
        self.flush().await?;
        // RFC 3207 §6: anything the client sent after STARTTLS in plaintext is an injection.
        let injected = self.lines.buffered();
        if injected > 0 {
            tracing::warn!(client = %self.client_ip, octets = injected, "discarding plaintext pipelined after STARTTLS");
            self.lines.clear();
        }
        // A client that asked for TLS and then sends no ClientHello is held no longer than one
        // that never greets: the handshake is bounded like the greeting.
        let handshake = tokio::time::timeout(
            self.ctx.limits.greeting_timeout,
            self.conn.upgrade(&acceptor),
        )
        .await;
        match handshake {
            Ok(Ok(())) => {
                // RFC 3207 §4.2: forget everything learned before TLS.
                self.helo = None;
                self.txn = None;
                self.login = None;
                Ok(Flow::Continue)
            }
            Ok(Err(e)) => {
                tracing::info!(client = %self.client_ip, "TLS handshake failed: {e}");
                Ok(Flow::Close(Ending::Protocol("TLS handshake failed")))
            }
            Err(_) => Ok(Flow::Close(Ending::Timeout)),
        }
    }

    async fn on_auth(&mut self, mechanism: &str, initial: Option<String>) -> Step {
        if let Some(reply) = self.auth_refusal() {
            return Ok(self.client_error(reply));
        }
        let mechanism = match SaslMechanism::from_name(mechanism) {
            Ok(mechanism) => mechanism,
            Err(e) => return Ok(self.client_error(e.reply())),
        };
        if let Err(refusal) = self
            .ctx
            .auth_limiter
            .check(self.client_ip, None, Instant::now())
        {
            return Ok(self.client_error(refusal.reply()));
        }
        let credentials = match self.run_sasl(mechanism, initial.as_deref()).await? {
            Ok(credentials) => credentials,
            Err(error) => {
                if error.counts_as_failure() {
                    self.ctx
                        .auth_limiter
                        .record_failure(self.client_ip, None, Instant::now());
                }
                return Ok(self.client_error(error.reply()));
            }
        };
        if let Err(refusal) =
            self.ctx
                .auth_limiter
                .check(self.client_ip, Some(&credentials.login), Instant::now())
        {
            return Ok(self.client_error(refusal.reply()));
        }
        match self
            .ctx
            .users
            .verify(&credentials.login, &credentials.password)
            .await
        {
            Some(login) => {
                self.ctx
                    .auth_limiter
                    .record_success(self.client_ip, Instant::now());
                tracing::info!(client = %self.client_ip, login = %login.as_str(), "authenticated");
                self.login = Some(login.as_str().to_string());
                Ok(self.reply(Reply::enh(235, (2, 7, 0), "Authentication successful")))
            }
            None => {
                let delay = self.ctx.auth_limiter.record_failure(
                    self.client_ip,
                    Some(&credentials.login),
                    Instant::now(),
                );
                tracing::warn!(client = %self.client_ip, login = %credentials.login, "authentication failed");
                // The delay slows guessing; it is bounded by the limiter.
                tokio::time::sleep(delay).await;
                Ok(self.client_error(bad_credentials_reply()))
            }
        }
    }

    fn auth_refusal(&self) -> Option<Reply> {
        if !self.helo.as_ref().is_some_and(|h| h.esmtp) {
            return Some(Reply::enh(503, (5, 5, 1), "Send EHLO first"));
        }
        if self.login.is_some() {
            return Some(Reply::enh(503, (5, 5, 1), "Already authenticated"));
        }
        if self.txn.is_some() {
            return Some(Reply::enh(
                503,
                (5, 5, 1),
                "AUTH not permitted during a mail transaction",
            ));
        }
        if !self.conn.is_tls() {
            return Some(Reply::enh(
                538,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism",
            ));
        }
        if self.ctx.users.is_empty() {
            return Some(Reply::enh(503, (5, 5, 1), "Authentication not enabled"));
        }
        None
    }

    /// Runs the SASL exchange to its credentials; `Err` for a cancelled or malformed exchange.
    async fn run_sasl(
        &mut self,
        mechanism: SaslMechanism,
        initial: Option<&str>,
    ) -> io::Result<Result<Credentials, SaslError>> {
        let (mut exchange, mut step) = match SaslExchange::start(mechanism, initial) {
            Ok(started) => started,
            Err(e) => return Ok(Err(e)),
        };
        loop {
            let challenge = match step {
                SaslStep::Done(credentials) => return Ok(Ok(credentials)),
                SaslStep::Challenge(challenge) => challenge,
            };
            self.queue_reply(&Reply::new(334, None, challenge));
            let Input::Event(event) = self.next_event(self.ctx.limits.command_timeout).await?
            else {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "client gone during AUTH",
                ));
            };
            let line = match event {
                LineEvent::Line(line) => line,
                LineEvent::TooLong => return Ok(Err(SaslError::TooLong)),
                LineEvent::BareLineEnding => {
                    return Ok(Err(SaslError::Malformed("bare CR or LF")));
                }
            };
            let Ok(text) = String::from_utf8(line) else {
                return Ok(Err(SaslError::BadBase64));
            };
            step = match exchange.respond(&text) {
                Ok(step) => step,
                Err(e) => return Ok(Err(e)),
            };
        }
    }

    /// Spends one message or recipient of the authenticated user's budget (see
    /// [`crate::ratelimit`]); unauthenticated clients have no per-user budget. Over the limit:
    /// `451 4.7.1`, and a warning naming the user, since it usually means a stolen password.
    fn spend_budget(&self, budget: Budget) -> Result<(), Reply> {
        let Some(login) = self.login.as_deref() else {
            return Ok(());
        };
        let limiter = &self.ctx.user_limits;
        let spent = match budget {
            Budget::Message => limiter.try_message(login, Instant::now()),
            Budget::Recipient => limiter.try_recipient(login, Instant::now()),
        };
        spent.map_err(|exceeded| {
            tracing::warn!(
                login = %login,
                client = %self.client_ip,
                limit = %exceeded,
                "user sending limit reached (compromised account?)"
            );
            exceeded.reply()
        })
    }

    fn identity(&self) -> ClientIdentity {
        ClientIdentity::new(self.client_ip, self.login.clone().map(Login::new))
    }

    fn reply(&mut self, reply: Reply) -> Flow {
        self.queue_reply(&reply);
        Flow::Continue
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

    async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let result = self.conn.write_all(&self.out).await;
        self.out.clear();
        result?;
        self.conn.flush().await
    }
}

/// Resolves when the server starts shutting down (never, if the sender is gone).
pub(crate) async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[derive(Clone, Copy)]
enum Budget {
    Message,
    Recipient,
}

enum DataOutcome {
    Complete,
    Refused(Reply),
    Fatal(Reply, &'static str),
    Closed,
}

fn declared_size(params: &[Param]) -> Option<u64> {
    params
        .iter()
        .find(|p| p.keyword == "SIZE")
        .and_then(|p| p.value.as_deref())
        .and_then(|v| v.parse().ok())
}

fn command_error_reply(error: &CommandError) -> Reply {
    match error {
        CommandError::Unrecognized => Reply::enh(500, (5, 5, 1), "Command unrecognized"),
        CommandError::Syntax(what) => Reply::enh(501, (5, 5, 4), format!("Syntax error: {what}")),
        CommandError::BadPath(path_error) => path_error_reply(path_error),
        CommandError::BadParam(keyword) => Reply::enh(
            555,
            (5, 5, 4),
            format!("Unsupported or invalid parameter {keyword}"),
        ),
        CommandError::BadCharacter => Reply::enh(500, (5, 5, 2), "Invalid character in command"),
    }
}

fn path_error_reply(error: &PathError) -> Reply {
    Reply::enh(501, (5, 1, 3), format!("Bad address syntax: {error}"))
}

fn data_error_reply(error: DataError) -> Reply {
    match error {
        DataError::BareCr => Reply::enh(
            521,
            (5, 5, 2),
            "Bare CR received in DATA; message refused, closing (SMTP smuggling defence)",
        ),
        DataError::BareLf => Reply::enh(
            521,
            (5, 5, 2),
            "Bare LF received in DATA; message refused, closing (SMTP smuggling defence)",
        ),
        DataError::LineTooLong => Reply::enh(
            500,
            (5, 5, 2),
            "Message refused: line longer than 1000 octets (RFC 5321 §4.5.3.1.6)",
        ),
        DataError::TooBig => Reply::enh(
            552,
            (5, 3, 4),
            "Message size exceeds fixed maximum message size",
        ),
    }
}

fn queue_error_reply(error: &QueueError) -> Reply {
    match error {
        QueueError::Full => Reply::enh(
            452,
            (4, 3, 1),
            "Insufficient system storage; try again later",
        ),
        _ => Reply::enh(452, (4, 3, 1), "Temporary queue error; try again later"),
    }
}

//! The SMTP client: one connection to one next-hop address, several transactions on it.
//!
//! Replies are read by the one reader both SMTP clients use
//! ([`relayward_tls::reply::ReplyReader`], over the protocol crate's `ReplyParser`); lines are
//! bounded in length and number so a hostile server cannot make us buffer without end. Every read and write
//! has an RFC 5321 §4.5.3.2 timeout. No error path panics: a misbehaving server costs at most
//! a deferral.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use relayward_protocol::data::{crlf_line_ends, dot_stuff};
use relayward_protocol::ehlo::EhloKeywords;
use relayward_protocol::reply::{EnhancedCode, Reply};
use relayward_tls::reply::{ReadError, ReplyReader};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::Timeouts;
use crate::outcome::{Failure, Outcome};
use crate::prepare::{Prepared, prepare};
use relayward_protocol::dsn::{MailDsn, RcptDsn};

/// Longest reply line we buffer (RFC 5321 allows 512; real servers send a little more).
pub const MAX_REPLY_LINE: usize = 4096;

/// How to use TLS on a connection.
#[derive(Clone)]
pub enum TlsPolicy {
    /// STARTTLS when offered, without certificate checks; clear text otherwise.
    Opportunistic(Arc<ClientConfig>),
    /// STARTTLS must succeed with a verified certificate for `server_name`, else no mail.
    Required {
        config: Arc<ClientConfig>,
        server_name: String,
    },
    /// TLS from the first byte, verified (port 465).
    Implicit {
        config: Arc<ClientConfig>,
        server_name: String,
    },
    /// Clear text (smart host on loopback, or the fallback after a failed opportunistic
    /// handshake).
    None,
}

/// AUTH credentials for the smart host.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <password hidden>)", self.user)
    }
}

/// What is needed to open a session.
#[derive(Clone)]
pub struct ConnectParams {
    pub addr: SocketAddr,
    /// The host name we meant (MX name or configured name), for logs, SNI and bounces.
    pub host_name: String,
    /// Our EHLO name.
    pub helo: String,
    pub tls: TlsPolicy,
    pub credentials: Option<Credentials>,
    pub timeouts: Timeouts,
}

/// A connection-level failure: the host could not be used (try the next one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .failure.text)]
pub struct SessionError {
    pub failure: Failure,
    /// A TLS handshake failed during opportunistic STARTTLS: retrying in clear may work.
    pub tls_handshake: bool,
    /// The host could not give the TLS the policy asked for (not offered, refused, handshake
    /// or certificate failure), as an RFC 8460 result type; `None` for any other failure.
    pub tls_fault: Option<&'static str>,
    /// Our side's address of the connection, once it was made (TLS-RPT's `sending-mta-ip`).
    pub local_ip: Option<IpAddr>,
}

impl SessionError {
    fn local(status: impl Into<EnhancedCode>, text: impl Into<String>) -> Self {
        Self {
            failure: Failure::local(status, text),
            tls_handshake: false,
            tls_fault: None,
            local_ip: None,
        }
    }

    fn tls(mut self, result_type: &'static str) -> Self {
        self.tls_fault = Some(result_type);
        self
    }
}

/// A failed handshake in words; a verifier's own reason (DANE's) is shown as its text, not
/// as rustls's debug form of it.
fn handshake_error_text(error: &std::io::Error) -> String {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => {
            format!("invalid peer certificate: {}", other.0)
        }
        _ => error.to_string(),
    }
}

/// The RFC 8460 §4.3 result type of a failed handshake: what the certificate check said.
fn handshake_result_type(error: &std::io::Error) -> &'static str {
    use rustls::CertificateError as C;
    let Some(rustls::Error::InvalidCertificate(cert)) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return "validation-failure";
    };
    match cert {
        C::NotValidForName | C::NotValidForNameContext { .. } => "certificate-host-mismatch",
        C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
            "certificate-expired"
        }
        C::UnknownIssuer | C::BadSignature => "certificate-not-trusted",
        _ => "validation-failure",
    }
}

/// ESMTP extensions the server announced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    /// `SIZE n`; `Some(0)` means announced without a limit.
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub starttls: bool,
    /// AUTH mechanisms, upper-case.
    pub auth: Vec<String>,
    /// RFC 6531: UTF-8 addresses and header fields.
    pub smtputf8: bool,
    /// RFC 3461: NOTIFY, RET, ENVID, ORCPT are passed on.
    pub dsn: bool,
    /// RFC 3030 BDAT.
    pub chunking: bool,
}

impl Extensions {
    /// Reads the EHLO reply's keyword lines (the first line is the greeting text).
    pub fn parse(reply: &Reply) -> Self {
        let keywords = EhloKeywords::parse(reply);
        Self {
            pipelining: keywords.has("PIPELINING"),
            size: keywords
                .args("SIZE")
                .map(|args| args.first().and_then(|n| n.parse().ok()).unwrap_or(0)),
            eight_bit_mime: keywords.has("8BITMIME"),
            starttls: keywords.has("STARTTLS"),
            smtputf8: keywords.has("SMTPUTF8"),
            dsn: keywords.has("DSN"),
            chunking: keywords.has("CHUNKING"),
            auth: keywords.args("AUTH").unwrap_or_default().to_vec(),
        }
    }
}

use relayward_tls::ClientStream as Stream;

/// One message to send on a connection.
pub struct Envelope<'a> {
    /// Reverse-path without brackets; empty for the null sender.
    pub sender: &'a str,
    pub recipients: &'a [String],
    /// Content with CRLF line ends (bare LF is converted), not yet dot-stuffed.
    pub content: &'a [u8],
    /// SMTPUTF8 and DSN as the original client asked for them.
    pub options: EnvelopeOptions<'a>,
}

/// What the original client asked for beyond the envelope; the default is a plain message.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvelopeOptions<'a> {
    /// The client sent `SMTPUTF8`: addresses and header fields may be UTF-8.
    pub smtputf8: bool,
    pub dsn: Option<&'a MailDsn>,
    /// `NOTIFY=` / `ORCPT=` per recipient, in the order of `recipients` (may be shorter).
    pub recipient_dsn: &'a [RcptDsn],
    /// The message came from a stranger, whose sender may be forged: the next hop is not
    /// asked for a success notice or for the whole message back (see [`crate::prepare`]).
    pub from_stranger: bool,
}

/// What became of a message given to [`Connection::send`].
#[derive(Debug)]
pub enum Sent {
    /// One outcome per recipient, in order.
    Outcomes(Vec<Outcome>),
    /// The connection came from the pool and was found closed (its `RSET` got no positive
    /// reply, or its first `MAIL` a `421`) before any of the message was taken: send it
    /// again on a new connection.
    Stale,
}

impl Sent {
    /// The outcomes; a stale connection defers every one of the `recipients` (for callers
    /// that never reuse connections, where it cannot happen).
    pub fn outcomes(self, recipients: usize) -> Vec<Outcome> {
        match self {
            Sent::Outcomes(outcomes) => outcomes,
            Sent::Stale => vec![
                Outcome::Deferred(Failure::local(
                    (4, 4, 2),
                    "connection closed before the message was sent",
                ));
                recipients
            ],
        }
    }
}

/// A `421` to the first MAIL on a connection taken from the pool: the server closes it
/// (a limit of messages per connection, as Exim's `smtp_accept_max_per_connection`, or a
/// shutdown) before taking any of the message, which can go on a new connection at once,
/// as for one that closed while pooled ([`Interrupted::Stale`]).
fn refuse_reused(reused: bool, mail_reply: &Reply) -> Result<(), Interrupted> {
    if reused && mail_reply.code == 421 {
        return Err(Interrupted::Stale);
    }
    Ok(())
}

/// Why a transaction stopped short.
enum Interrupted {
    /// See [`Sent::Stale`].
    Stale,
    Session(SessionError),
}

impl From<SessionError> for Interrupted {
    fn from(error: SessionError) -> Self {
        Interrupted::Session(error)
    }
}

/// An open SMTP session, ready for `MAIL`.
pub struct Connection {
    stream: Option<Stream>,
    reader: ReplyReader,
    /// `name[ip]:port`, for logs and `Remote-MTA`.
    pub remote: String,
    pub extensions: Extensions,
    pub tls: bool,
    /// Our side's address (TLS-RPT's `sending-mta-ip`).
    pub local_ip: Option<IpAddr>,
    timeouts: Timeouts,
    /// A transaction ended half-way: `RSET` before the next one.
    dirty: bool,
    /// Taken from the pool ([`Connection::reuse`]): the next transaction starts with an
    /// `RSET` in its pipelined group, whose reply tells whether the server is still there.
    unproven: bool,
    /// Taken from the pool, for the next transaction's MAIL: a `421` to it (a server that
    /// takes so many messages per connection) means nothing of the message was taken.
    reused: bool,
    /// The connection is unusable (I/O error, timeout, 421).
    broken: bool,
    /// The last reply read, for the delivery log (after a transaction: the reply to its end).
    last_reply: Option<Reply>,
    /// When the session was opened (the reuse time limit counts from here).
    opened: std::time::Instant,
    /// The recipient domains whose TLS report counted this session already.
    reported_for: std::collections::HashSet<String>,
}

/// Opens a session: connect, greeting, EHLO (or HELO), STARTTLS and AUTH as the policy says.
pub async fn connect(params: &ConnectParams) -> Result<Connection, SessionError> {
    let remote = params.remote();
    let tcp = with_timeout(params.timeouts.connect, TcpStream::connect(params.addr))
        .await
        .map_err(|e| SessionError::local((4, 4, 1), format!("connect to {remote}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let local_ip = tcp.local_addr().ok().map(|a| a.ip());
    session(params, remote, tcp, local_ip)
        .await
        .map_err(|mut e| {
            e.local_ip = local_ip;
            e
        })
}

/// The session on a connected socket: [`connect`] after the TCP connect.
async fn session(
    params: &ConnectParams,
    remote: String,
    tcp: TcpStream,
    local_ip: Option<IpAddr>,
) -> Result<Connection, SessionError> {
    let stream = match &params.tls {
        TlsPolicy::Implicit {
            config,
            server_name,
        } => Stream::Tls(Box::new(handshake(params, config, server_name, tcp).await?)),
        _ => Stream::Plain(tcp),
    };
    let implicit = matches!(params.tls, TlsPolicy::Implicit { .. });
    let mut conn = Connection {
        stream: Some(stream),
        reader: ReplyReader::new(MAX_REPLY_LINE),
        remote,
        extensions: Extensions::default(),
        tls: implicit,
        local_ip,
        timeouts: params.timeouts,
        dirty: false,
        unproven: false,
        reused: false,
        broken: false,
        last_reply: None,
        opened: std::time::Instant::now(),
        reported_for: std::collections::HashSet::new(),
    };
    let before_tls = async {
        conn.greeting().await?;
        conn.hello(&params.helo).await?;
        conn.negotiate_tls(params).await
    };
    if let Err(mut error) = before_tls.await {
        // Under a policy that requires TLS, what the next hop says in clear text (a 5xx
        // greeting, EHLO or STARTTLS reply) is not authenticated: a man in the middle forges
        // it as easily as he strips STARTTLS. The mail waits for TLS; it never bounces on it.
        if matches!(params.tls, TlsPolicy::Required { .. }) && !conn.tls {
            error.failure = error.failure.as_transient();
        }
        return Err(error);
    }
    if let Some(credentials) = &params.credentials {
        conn.authenticate(credentials).await?;
    }
    Ok(conn)
}

async fn handshake(
    params: &ConnectParams,
    config: &Arc<ClientConfig>,
    server_name: &str,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, SessionError> {
    let name = ServerName::try_from(server_name.to_string()).map_err(|_| {
        SessionError::local(
            (4, 7, 5),
            format!("{server_name:?} is not a valid TLS server name"),
        )
    })?;
    let connector = TlsConnector::from(config.clone());
    let handshake = connector.connect(name, tcp);
    let fault = match tokio::time::timeout(params.timeouts.command, handshake).await {
        Ok(Ok(tls)) => return Ok(tls),
        Ok(Err(e)) => (handshake_error_text(&e), handshake_result_type(&e)),
        Err(_) => (
            format!("timed out after {}s", params.timeouts.command.as_secs_f64()),
            "validation-failure",
        ),
    };
    Err(SessionError {
        failure: Failure::local(
            (4, 7, 5),
            format!("TLS handshake with {}: {}", params.host_name, fault.0),
        ),
        tls_handshake: true,
        tls_fault: Some(fault.1),
        local_ip: None,
    })
}

async fn with_timeout<T, E: std::fmt::Display>(
    limit: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("timed out after {}s", limit.as_secs_f64())),
    }
}

impl ConnectParams {
    /// `name[ip]:port`: how logs, `Remote-MTA` and the delivery log name the next hop.
    pub fn remote(&self) -> String {
        format!(
            "{}[{}]:{}",
            self.host_name,
            self.addr.ip(),
            self.addr.port()
        )
    }
}

impl Connection {
    /// The last reply the next hop sent (after `send`: its answer to the transaction).
    pub fn last_reply(&self) -> Option<&Reply> {
        self.last_reply.as_ref()
    }

    /// The TLS version in use (`TLSv1_3`, as rustls names it), or `None` in clear text.
    pub fn tls_version(&self) -> Option<&'static str> {
        let Some(Stream::Tls(tls)) = &self.stream else {
            return None;
        };
        tls.get_ref().1.protocol_version().and_then(|v| v.as_str())
    }

    /// Whether the connection may carry another message: not broken, and out of step with
    /// nothing (bytes the server sent that no reply of ours used would be read as the answers
    /// to the next message's commands).
    pub fn reusable(&self) -> bool {
        !self.broken && self.stream.is_some() && !self.reader.has_buffered()
    }

    /// How long ago the session was opened.
    pub fn age(&self) -> Duration {
        self.opened.elapsed()
    }

    /// Whether this is the first message of `domain` on this session (and from now on it is
    /// not): a TLS report counts each session once per domain (RFC 8460), and domains that
    /// share an MX host share its pooled sessions. The set is bounded by the messages one
    /// session carries in its reuse time.
    pub fn first_session_for(&mut self, domain: &str) -> bool {
        self.reported_for.insert(domain.to_ascii_lowercase())
    }

    /// The server's greeting. Anything but `220` fails the host, and never permanently: a
    /// 5xx greeting says nothing about the message or its recipients (a misconfigured MX, a
    /// server refusing our address), so the next host is tried and the mail waits rather than
    /// bounces — Postfix's `smtp_skip_5xx_greeting`.
    async fn greeting(&mut self) -> Result<(), SessionError> {
        let reply = self.read_reply(self.timeouts.greeting).await?;
        if reply.code == 220 {
            return Ok(());
        }
        self.broken = true;
        let mut error = self.reply_error(&reply, "greeting");
        error.failure = error.failure.as_transient();
        Err(error)
    }

    /// EHLO, falling back to HELO when the server does not know EHLO.
    async fn hello(&mut self, helo: &str) -> Result<(), SessionError> {
        let reply = self
            .command(&format!("EHLO {helo}"), self.timeouts.command)
            .await?;
        if reply.is_positive_completion() {
            self.extensions = Extensions::parse(&reply);
            return Ok(());
        }
        if reply.code == 421 {
            return Err(self.closing(&reply, "EHLO"));
        }
        let reply = self
            .command(&format!("HELO {helo}"), self.timeouts.command)
            .await?;
        if reply.is_positive_completion() {
            self.extensions = Extensions::default();
            return Ok(());
        }
        self.broken = true;
        Err(self.reply_error(&reply, "HELO"))
    }

    async fn negotiate_tls(&mut self, params: &ConnectParams) -> Result<(), SessionError> {
        let (config, server_name, required) = match &params.tls {
            TlsPolicy::Opportunistic(config) => (config, tls_name(params), false),
            TlsPolicy::Required {
                config,
                server_name,
            } => (config, server_name.clone(), true),
            TlsPolicy::Implicit { .. } | TlsPolicy::None => return Ok(()),
        };
        if !self.extensions.starttls {
            if required {
                self.broken = true;
                return Err(SessionError::local(
                    (4, 7, 4),
                    format!("{} does not offer STARTTLS, which is required", self.remote),
                )
                .tls("starttls-not-supported"));
            }
            return Ok(());
        }
        let reply = self.command("STARTTLS", self.timeouts.command).await?;
        if reply.code != 220 {
            if required || reply.code == 421 {
                self.broken = true;
                // A 5xx refusal is made transient by `session`, as for STARTTLS not offered.
                return Err(self
                    .reply_error(&reply, "STARTTLS")
                    .tls("starttls-not-supported"));
            }
            return Ok(());
        }
        self.upgrade(params, config, &server_name).await?;
        self.hello(&params.helo).await
    }

    /// Replaces the plain stream by a TLS stream. Bytes the server sent after its `220` (a
    /// response-injection attempt) make us give up the connection.
    async fn upgrade(
        &mut self,
        params: &ConnectParams,
        config: &Arc<ClientConfig>,
        server_name: &str,
    ) -> Result<(), SessionError> {
        self.broken = true;
        if self.reader.has_buffered() {
            return Err(SessionError::local(
                (4, 7, 0),
                format!("{} sent data after its STARTTLS reply", self.remote),
            ));
        }
        let Some(Stream::Plain(tcp)) = self.stream.take() else {
            return Err(SessionError::local(
                (4, 7, 0),
                "STARTTLS on a TLS connection",
            ));
        };
        let tls = handshake(params, config, server_name, tcp).await?;
        self.stream = Some(Stream::Tls(Box::new(tls)));
        self.tls = true;
        self.broken = false;
        Ok(())
    }

    /// AUTH PLAIN (preferred) or LOGIN, only over TLS: the password never travels in clear.
    async fn authenticate(&mut self, credentials: &Credentials) -> Result<(), SessionError> {
        if !self.tls {
            self.broken = true;
            return Err(SessionError::local(
                (4, 7, 0),
                "refusing to send the smart-host password without TLS",
            ));
        }
        let mechs = &self.extensions.auth;
        let reply = if mechs.iter().any(|m| m == "PLAIN") {
            let token = B64.encode(format!("\0{}\0{}", credentials.user, credentials.password));
            self.command_secret("AUTH PLAIN", &format!("AUTH PLAIN {token}"))
                .await?
        } else if mechs.iter().any(|m| m == "LOGIN") {
            self.auth_login(credentials).await?
        } else {
            self.broken = true;
            return Err(SessionError::local(
                (4, 7, 0),
                format!("{} offers neither AUTH PLAIN nor AUTH LOGIN", self.remote),
            ));
        };
        if reply.code == 235 {
            return Ok(());
        }
        self.broken = true;
        // An authentication failure is a configuration problem on our side: defer, so that
        // the admin can fix the password before the messages expire.
        let mut error = self.reply_error(&reply, "AUTH");
        error.failure.status = EnhancedCode::new(4, 7, 8);
        Err(error)
    }

    async fn auth_login(&mut self, credentials: &Credentials) -> Result<Reply, SessionError> {
        let reply = self.command("AUTH LOGIN", self.timeouts.command).await?;
        if reply.code != 334 {
            return Ok(reply);
        }
        let user = B64.encode(&credentials.user);
        let reply = self.command_secret("<user>", &user).await?;
        if reply.code != 334 {
            return Ok(reply);
        }
        let password = B64.encode(&credentials.password);
        self.command_secret("<password>", &password).await
    }

    /// Sends one message. Returns one outcome per recipient, in order, or
    /// [`Sent::Stale`] when a connection taken from the pool turned out closed before the
    /// server took any of the message. Never fails otherwise: connection trouble defers the
    /// recipients not yet decided.
    pub async fn send(&mut self, envelope: &Envelope<'_>) -> Sent {
        let n = envelope.recipients.len();
        if let Some(bad) = check_envelope(envelope) {
            return Sent::Outcomes(vec![bad.into_outcome(); n]);
        }
        let prepared = match prepare(envelope, &self.extensions, &self.remote) {
            Ok(prepared) => prepared,
            Err(failure) => return Sent::Outcomes(vec![failure.into_outcome(); n]),
        };
        if let Some(limit) = self.extensions.size.filter(|&l| l > 0)
            && prepared.content.len() as u64 > limit
        {
            let f = Failure::local(
                (5, 3, 4),
                format!(
                    "message size {} exceeds the limit of {limit} announced by {}",
                    prepared.content.len(),
                    self.remote
                ),
            );
            return Sent::Outcomes(vec![f.into_outcome(); n]);
        }
        match self.transaction(&prepared).await {
            Ok(outcomes) => Sent::Outcomes(outcomes),
            Err(Interrupted::Stale) => {
                self.broken = true;
                Sent::Stale
            }
            Err(Interrupted::Session(error)) => {
                self.broken = true;
                Sent::Outcomes(vec![Outcome::Deferred(error.failure); n])
            }
        }
    }

    /// Marks a connection taken from the pool: with PIPELINING its `RSET` (the check that
    /// it still answers, and the reset after a transaction ended half-way) travels with the
    /// next envelope instead of costing a round trip of its own, as KumoMTA does; without,
    /// it is checked at once ([`Connection::still_alive`]). False: the connection is dead.
    pub async fn reuse(&mut self) -> bool {
        if self.broken {
            return false;
        }
        self.reused = true;
        if self.extensions.pipelining {
            self.unproven = true;
            return true;
        }
        self.still_alive().await
    }

    async fn transaction(&mut self, envelope: &Prepared<'_>) -> Result<Vec<Outcome>, Interrupted> {
        let pipelining = self.extensions.pipelining;
        if self.dirty && !pipelining {
            let reply = self.command("RSET", self.timeouts.command).await?;
            if !reply.is_positive_completion() {
                return Err(self.closing(&reply, "RSET").into());
            }
        }
        let reset = pipelining && (self.dirty || self.unproven);
        self.dirty = true;
        let reused = std::mem::take(&mut self.reused);
        let mail = envelope.mail_line.clone();
        let rcpts = envelope.rcpt_lines.clone();
        let (mail_reply, rcpt_replies, data_reply) = if pipelining {
            // With CHUNKING the content goes as BDAT once a recipient is accepted: the same
            // two round trips as a pipelined DATA, without its 354.
            let with_data = !self.extensions.chunking;
            self.pipelined(reset, reused, &mail, &rcpts, with_data)
                .await?
        } else {
            self.lockstep(reused, &mail, &rcpts).await?
        };
        Ok(self
            .finish(envelope, mail_reply, rcpt_replies, data_reply)
            .await?)
    }

    async fn finish(
        &mut self,
        envelope: &Prepared<'_>,
        mail_reply: Reply,
        rcpt_replies: Vec<Option<Reply>>,
        data_reply: Option<Reply>,
    ) -> Result<Vec<Outcome>, SessionError> {
        if !mail_reply.is_positive_completion() {
            self.abandon_data(data_reply.as_ref()).await?;
            let outcome = self.reply_outcome(&mail_reply, "MAIL FROM");
            return Ok(vec![outcome; envelope.rcpt_lines.len()]);
        }
        let mut outcomes: Vec<Option<Outcome>> = rcpt_replies
            .iter()
            .map(|r| match r {
                Some(r) if r.is_positive_completion() => None,
                Some(r) => Some(self.reply_outcome(r, "RCPT TO")),
                None => Some(Outcome::Deferred(Failure::local(
                    (4, 5, 3),
                    "RCPT not sent",
                ))),
            })
            .collect();
        if outcomes.iter().all(Option::is_some) {
            self.abandon_data(data_reply.as_ref()).await?;
            return Ok(outcomes.into_iter().flatten().collect());
        }
        let final_outcome = if self.extensions.chunking {
            let reply = self.send_bdat(&envelope.content).await?;
            self.final_outcome(&reply, "BDAT LAST")
        } else {
            let data_reply = match data_reply {
                Some(reply) => reply,
                None => self.command("DATA", self.timeouts.data_init).await?,
            };
            if data_reply.code == 354 {
                let reply = self.send_content(&envelope.content).await?;
                self.final_outcome(&reply, "end of DATA")
            } else {
                self.reply_outcome(&data_reply, "DATA")
            }
        };
        for slot in outcomes.iter_mut().filter(|o| o.is_none()) {
            *slot = Some(final_outcome.clone());
        }
        Ok(outcomes.into_iter().flatten().collect())
    }

    /// The outcome of the reply to the end of the content; a delivered message leaves the
    /// connection clean for the next one.
    fn final_outcome(&mut self, reply: &Reply, context: &str) -> Outcome {
        if reply.is_positive_completion() {
            self.dirty = false;
            Outcome::Delivered
        } else {
            self.reply_outcome(reply, context)
        }
    }

    /// After a pipelined DATA got `354` although no recipient was accepted, RFC 2920 §3.1
    /// says to send an empty message (just the dot) and ignore its reply.
    async fn abandon_data(&mut self, data_reply: Option<&Reply>) -> Result<(), SessionError> {
        if data_reply.is_some_and(|r| r.code == 354) {
            self.write(b".\r\n", self.timeouts.data_block).await?;
            self.read_reply(self.timeouts.data_term).await?;
        }
        Ok(())
    }

    /// (`reset`) RSET, MAIL, every RCPT and (`with_data`) DATA in one write, then the
    /// replies in order (RFC 2920). An RSET that gets no positive reply means a connection
    /// that closed while pooled (or a server in no state to take mail): the content was not
    /// sent, so [`Interrupted::Stale`] lets the caller send the message on a new one.
    async fn pipelined(
        &mut self,
        reset: bool,
        reused: bool,
        mail: &str,
        rcpts: &[String],
        with_data: bool,
    ) -> Result<(Reply, Vec<Option<Reply>>, Option<Reply>), Interrupted> {
        let mut batch = String::new();
        if reset {
            batch.push_str("RSET\r\n");
        }
        batch.push_str(mail);
        batch.push_str("\r\n");
        for rcpt in rcpts {
            batch.push_str(rcpt);
            batch.push_str("\r\n");
        }
        if with_data {
            batch.push_str("DATA\r\n");
        }
        let proven = !self.unproven;
        self.unproven = false;
        let written = self.write(batch.as_bytes(), self.timeouts.command).await;
        if reset {
            self.reset_reply(written, proven).await?;
        } else {
            written?;
        }
        let mail_reply = self.read_reply(self.timeouts.command).await?;
        refuse_reused(reused, &mail_reply)?;
        let mut rcpt_replies = Vec::with_capacity(rcpts.len());
        for _ in rcpts {
            rcpt_replies.push(Some(self.read_reply(self.timeouts.rcpt).await?));
        }
        if !with_data {
            return Ok((mail_reply, rcpt_replies, None));
        }
        let data_reply = self.read_reply(self.timeouts.data_init).await?;
        Ok((mail_reply, rcpt_replies, Some(data_reply)))
    }

    /// The reply to the RSET that opened a pipelined group. On a connection not yet proven
    /// (fresh from the pool) any failure is [`Interrupted::Stale`]: none of the message went
    /// out; on one already in use it ends the transaction like a failed lockstep RSET.
    async fn reset_reply(
        &mut self,
        written: Result<(), SessionError>,
        proven: bool,
    ) -> Result<(), Interrupted> {
        let reply = match written {
            Ok(()) => self.read_reply(self.check_limit()).await,
            Err(e) => Err(e),
        };
        match reply {
            Ok(reply) if reply.is_positive_completion() => Ok(()),
            _ if !proven => Err(Interrupted::Stale),
            Ok(reply) => Err(self.closing(&reply, "RSET").into()),
            Err(e) => Err(e.into()),
        }
    }

    /// One command at a time; stops after a failed MAIL.
    async fn lockstep(
        &mut self,
        reused: bool,
        mail: &str,
        rcpts: &[String],
    ) -> Result<(Reply, Vec<Option<Reply>>, Option<Reply>), Interrupted> {
        let mail_reply = self.command(mail, self.timeouts.command).await?;
        refuse_reused(reused, &mail_reply)?;
        if !mail_reply.is_positive_completion() {
            return Ok((mail_reply, vec![None; rcpts.len()], None));
        }
        let mut rcpt_replies = Vec::with_capacity(rcpts.len());
        for rcpt in rcpts {
            let reply = self.command(rcpt, self.timeouts.rcpt).await?;
            if reply.code == 421 {
                return Err(self.closing(&reply, "RCPT TO").into());
            }
            rcpt_replies.push(Some(reply));
        }
        Ok((mail_reply, rcpt_replies, None))
    }

    /// Before the content goes: the server must have said nothing beyond the replies read so
    /// far. A reply ahead of its turn (a final `250` sent with the `354`) would be taken for
    /// the answer to the dot, counting delivered a message the server may refuse: the
    /// transaction is given up instead (deferred, so the message goes at least once).
    fn in_step(&mut self) -> Result<(), SessionError> {
        if self.reader.has_buffered() {
            return Err(self.io_error("read", "replies out of turn (pipelining out of step)"));
        }
        Ok(())
    }

    /// Writes the dot-stuffed content and the final dot; returns the final reply.
    async fn send_content(&mut self, content: &[u8]) -> Result<Reply, SessionError> {
        self.in_step()?;
        let wire = dot_stuff(content);
        for chunk in wire.chunks(64 * 1024) {
            self.write(chunk, self.timeouts.data_block).await?;
        }
        self.read_reply(self.timeouts.data_term).await
    }

    /// RFC 3030: the whole message as one `BDAT n LAST` chunk, its octets as they are (no
    /// dot-stuffing, no end marker; line ends CRLF as for DATA); returns the reply.
    async fn send_bdat(&mut self, content: &[u8]) -> Result<Reply, SessionError> {
        const PIECE: usize = 64 * 1024;
        self.in_step()?;
        let chunk = crlf_line_ends(content);
        // The command and the first piece in one write: one segment for a small message.
        let (first, rest) = chunk.split_at(chunk.len().min(PIECE));
        let mut head = format!("BDAT {} LAST\r\n", chunk.len()).into_bytes();
        head.extend_from_slice(first);
        self.write(&head, self.timeouts.data_block).await?;
        for piece in rest.chunks(PIECE) {
            self.write(piece, self.timeouts.data_block).await?;
        }
        self.read_reply(self.timeouts.data_term).await
    }

    /// Asks whether the server takes `address` as a recipient: `MAIL FROM:<>`, `RCPT TO:`,
    /// then `RSET`, and no message. Returns the RCPT reply; an error when the server would not
    /// even start the transaction or the connection failed.
    pub async fn probe_recipient(&mut self, address: &str) -> Result<Reply, SessionError> {
        let mail = self.command("MAIL FROM:<>", self.timeouts.command).await?;
        if !mail.is_positive_completion() {
            return Err(self.reply_error(&mail, "MAIL FROM:<> (recipient check)"));
        }
        let rcpt = self
            .command(&format!("RCPT TO:<{address}>"), self.timeouts.rcpt)
            .await?;
        if self.command("RSET", self.timeouts.command).await.is_err() {
            self.broken = true;
        }
        Ok(rcpt)
    }

    /// Ends the session politely; errors do not matter any more.
    pub async fn quit(mut self) {
        if self.broken {
            return;
        }
        let short = self.check_limit();
        let _ = self.command("QUIT", short).await;
        if let Some(mut stream) = self.stream.take() {
            let _ = tokio::time::timeout(short, stream.shutdown()).await;
        }
    }

    /// Checks that an idle pooled connection still answers, before reusing it (lockstep:
    /// for servers without PIPELINING).
    pub async fn still_alive(&mut self) -> bool {
        if self.broken {
            return false;
        }
        let short = self.check_limit();
        match self.command("RSET", short).await {
            Ok(reply) if reply.is_positive_completion() => {
                self.dirty = false;
                true
            }
            _ => {
                self.broken = true;
                false
            }
        }
    }

    /// The limit for a liveness check or a goodbye: short, since nothing waits on the answer
    /// but the next message or the end of the session.
    fn check_limit(&self) -> Duration {
        Duration::from_secs(5).min(self.timeouts.command)
    }

    async fn command(&mut self, line: &str, limit: Duration) -> Result<Reply, SessionError> {
        self.write(format!("{line}\r\n").as_bytes(), limit).await?;
        let reply = self.read_reply(limit).await?;
        if reply.code == 421 {
            self.broken = true;
        }
        Ok(reply)
    }

    /// Like `command`, but errors name `label` instead of the line (which holds a secret).
    async fn command_secret(&mut self, label: &str, line: &str) -> Result<Reply, SessionError> {
        let limit = self.timeouts.command;
        match self.write(format!("{line}\r\n").as_bytes(), limit).await {
            Ok(()) => self.read_reply(limit).await,
            Err(_) => Err(self.io_error(&format!("sending {label}"), "write failed")),
        }
    }

    async fn write(&mut self, bytes: &[u8], limit: Duration) -> Result<(), SessionError> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(SessionError::local((4, 4, 2), "connection already closed"));
        };
        let result = tokio::time::timeout(limit, async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
        .await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.io_error("write", &e.to_string())),
            Err(_) => Err(self.io_error("write", "timed out")),
        }
    }

    /// Reads one complete (possibly multi-line) reply within `limit`.
    async fn read_reply(&mut self, limit: Duration) -> Result<Reply, SessionError> {
        match tokio::time::timeout(limit, self.read_reply_inner()).await {
            Ok(result) => result,
            Err(_) => {
                Err(self.io_error("read", &format!("no reply within {}s", limit.as_secs_f64())))
            }
        }
    }

    async fn read_reply_inner(&mut self) -> Result<Reply, SessionError> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(SessionError::local((4, 4, 2), "connection already closed"));
        };
        let read = self
            .reader
            .read_reply(stream, |_| Ok::<(), ReadError>(()))
            .await;
        let reply = read.map_err(|e| match e {
            ReadError::Malformed(e) => self.io_error("read", &format!("bad reply: {e}")),
            ReadError::LineTooLong(_) => self.io_error("read", "reply line too long"),
            ReadError::Closed => self.io_error("read", "connection closed by server"),
            ReadError::Io(e) => self.io_error("read", &e.to_string()),
        })?;
        self.last_reply = Some(reply.clone());
        Ok(reply)
    }

    fn io_error(&mut self, what: &str, detail: &str) -> SessionError {
        self.broken = true;
        SessionError::local((4, 4, 2), format!("{what} {}: {detail}", self.remote))
    }

    fn closing(&mut self, reply: &Reply, context: &str) -> SessionError {
        self.broken = true;
        self.reply_error(reply, context)
    }

    fn reply_error(&self, reply: &Reply, context: &str) -> SessionError {
        SessionError {
            failure: Failure::from_reply(reply, &self.remote, context),
            tls_handshake: false,
            tls_fault: None,
            local_ip: self.local_ip,
        }
    }

    fn reply_outcome(&self, reply: &Reply, context: &str) -> Outcome {
        Failure::from_reply(reply, &self.remote, context).into_outcome()
    }
}

/// The name to present in SNI for opportunistic TLS: the host name if it is one.
fn tls_name(params: &ConnectParams) -> String {
    if ServerName::try_from(params.host_name.clone()).is_ok() {
        params.host_name.clone()
    } else {
        params.addr.ip().to_string()
    }
}

/// Refuses addresses that could inject commands (CR, LF, brackets, controls) or are too long:
/// the protocol crate's one rule, which the session already applied at MAIL and RCPT, so this
/// catches only entries that came from elsewhere (an older spool, a hand-edited file).
fn check_envelope(envelope: &Envelope<'_>) -> Option<Failure> {
    let bad = |a: &str| !relayward_protocol::route::is_sendable_address(a);
    if bad(envelope.sender) {
        return Some(Failure::local(
            (5, 1, 7),
            "unusable sender address in the queue",
        ));
    }
    if envelope.recipients.is_empty() || envelope.recipients.iter().any(|r| bad(r) || r.is_empty())
    {
        return Some(Failure::local(
            (5, 1, 3),
            "unusable recipient address in the queue",
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_from_ehlo() {
        let reply = Reply::multiline(
            250,
            None,
            vec![
                "mx.test".into(),
                "PIPELINING".into(),
                "SIZE 1000".into(),
                "8BITMIME".into(),
                "STARTTLS".into(),
                "AUTH login PLAIN".into(),
            ],
        );
        let ext = Extensions::parse(&reply);
        assert!(ext.pipelining && ext.eight_bit_mime && ext.starttls);
        assert_eq!(ext.size, Some(1000));
        assert_eq!(ext.auth, ["LOGIN", "PLAIN"]);
    }

    #[test]
    fn injected_addresses_are_refused() {
        let rcpts = vec!["a@b.test>\r\nRCPT TO:<c@d.test".to_string()];
        let env = Envelope {
            sender: "s@x.test",
            recipients: &rcpts,
            content: b"",
            options: EnvelopeOptions::default(),
        };
        assert!(check_envelope(&env).is_some());
    }
}

//! Opening an SMTP session: connect, banner, EHLO (fallback HELO), STARTTLS, EHLO again.

use relayward_protocol::ehlo::EhloKeywords;
use relayward_protocol::reply::Reply;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use crate::config::{ProbeConfig, Target, TlsMode};
use crate::conn::{Conn, ConnError, Stream};
use crate::tls::{self, TlsInfo};
use crate::transcript::Transcript;

/// What the greeting phase showed.
#[derive(Debug, Clone)]
pub struct Greeting {
    pub banner: Reply,
    /// The last EHLO/HELO reply (after STARTTLS when it happened).
    pub hello: Reply,
    /// The cleartext EHLO reply when STARTTLS followed.
    pub hello_before_tls: Option<Reply>,
    pub esmtp: bool,
    pub starttls_offered: bool,
    pub tls: Option<TlsInfo>,
    /// STARTTLS offered but refused or failed (auto mode then goes on in cleartext).
    pub tls_error: Option<String>,
    /// With a preamble (a PROXY header): the reply the server gave to it, i.e. it took the
    /// line as a command instead of honouring it. `None` = the line drew no reply.
    pub preamble_reply: Option<Reply>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("server refused the session: {0}")]
    Refused(Reply),
    #[error("{0}")]
    Conn(#[from] ConnError),
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("--tls=require but the server offers no working STARTTLS")]
    TlsRequired,
}

impl OpenError {
    /// Whether the connection failed for want of something on this machine — descriptors,
    /// socket buffers, memory — rather than because of the target.
    pub fn is_local_shortage(&self) -> bool {
        use rustix::io::Errno;
        let OpenError::Connect(e) = self else {
            return false;
        };
        [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM]
            .iter()
            .any(|errno| e.raw_os_error() == Some(errno.raw_os_error()))
    }
}

/// Waits for this connection's turn under `--rate-per-net` and `--rate`. Called before the
/// caller computes the connection's deadline, so time spent waiting for a slot never counts
/// as the server's slowness.
pub async fn wait_for_slot(target: &Target, cfg: &ProbeConfig) {
    if let Some(per_net) = &cfg.rate_per_net {
        per_net.acquire(target.addr.ip()).await;
    }
    if let Some(rate) = &cfg.rate {
        rate.acquire().await;
    }
}

/// Opens a session ready for MAIL. `try_starttls` is false after a failed handshake in auto
/// mode, so reconnects go straight to cleartext.
pub async fn open(
    target: &Target,
    cfg: &ProbeConfig,
    try_starttls: bool,
    deadline: Instant,
    log: &mut Transcript,
) -> Result<(Conn, Greeting), OpenError> {
    open_with(target, cfg, try_starttls, deadline, log, None).await
}

/// [`open`], but writes `preamble` (one line, CRLF added) right after connecting, before the
/// banner and before any TLS: a PROXY protocol v1 header. Whether the server answered it as
/// a command is in [`Greeting::preamble_reply`].
pub async fn open_with(
    target: &Target,
    cfg: &ProbeConfig,
    try_starttls: bool,
    deadline: Instant,
    log: &mut Transcript,
    preamble: Option<&str>,
) -> Result<(Conn, Greeting), OpenError> {
    log.note(&format!("Connecting to {} ...", target.addr));
    let tcp = timeout_at(deadline, TcpStream::connect(target.addr))
        .await
        .map_err(|_| OpenError::ConnectTimeout)?
        .map_err(OpenError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let mut tcp = tcp;
    if let Some(line) = preamble {
        log.client(line);
        let data = format!("{line}\r\n");
        timeout_at(deadline, tcp.write_all(data.as_bytes()))
            .await
            .map_err(|_| OpenError::Conn(ConnError::Timeout))?
            .map_err(|e| OpenError::Conn(ConnError::Io(e)))?;
    }
    let implicit = cfg.implicit_tls || target.addr.port() == 465;
    let (stream, mut tls_info) = if implicit {
        let s = handshake(target, cfg, tcp, deadline).await?;
        let info = tls::tls_info(&s);
        (Stream::Tls(Box::new(s)), Some(info))
    } else {
        (Stream::Plain(tcp), None)
    };
    let mut conn = Conn::new(stream, deadline);
    let banner = conn.read_reply(log).await?;
    if banner.code != 220 {
        return Err(OpenError::Refused(banner));
    }
    let (hello, esmtp, preamble_reply) = if preamble.is_some() {
        hello_after_preamble(&mut conn, &cfg.helo, log).await?
    } else {
        let (hello, esmtp) = hello(&mut conn, &cfg.helo, log).await?;
        (hello, esmtp, None)
    };
    let starttls_offered = esmtp && has_keyword(&hello, "STARTTLS");
    let mut greeting = Greeting {
        banner,
        hello,
        hello_before_tls: None,
        esmtp,
        starttls_offered,
        tls: None,
        tls_error: None,
        preamble_reply,
    };
    let want_tls = cfg.tls != TlsMode::Never && try_starttls && !conn.is_tls();
    if want_tls && starttls_offered {
        conn = starttls(conn, target, cfg, &mut greeting, log).await?;
        if let Some(s) = conn.tls() {
            tls_info = Some(tls::tls_info(s));
        }
    }
    greeting.tls = tls_info;
    if cfg.tls == TlsMode::Require && !conn.is_tls() {
        return Err(OpenError::TlsRequired);
    }
    Ok((conn, greeting))
}

async fn handshake(
    target: &Target,
    cfg: &ProbeConfig,
    tcp: TcpStream,
    deadline: Instant,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, OpenError> {
    let name = tls::server_name(target.host.as_deref(), target.addr.ip());
    timeout_at(deadline, tls::handshake(&cfg.tls_connector, name, tcp))
        .await
        .map_err(|_| OpenError::Tls("timed out".into()))?
        .map_err(|e| OpenError::Tls(e.to_string()))
}

/// STARTTLS then EHLO again. A refused STARTTLS leaves the cleartext session usable; a failed
/// handshake does not (the caller reconnects without STARTTLS in auto mode).
async fn starttls(
    mut conn: Conn,
    target: &Target,
    cfg: &ProbeConfig,
    greeting: &mut Greeting,
    log: &mut Transcript,
) -> Result<Conn, OpenError> {
    let reply = conn.command("STARTTLS", log).await?;
    if reply.code != 220 {
        greeting.tls_error = Some(format!("STARTTLS refused: {reply}"));
        return Ok(conn);
    }
    let deadline = conn.deadline;
    // Bytes injected before the handshake (RFC 3207 §4.2) make STARTTLS unusable, like a
    // failed handshake: in auto mode the probe goes on in cleartext instead of giving up.
    let tcp = conn
        .take_plain()
        .map_err(|e| OpenError::Tls(e.to_string()))?;
    let tls = handshake(target, cfg, tcp, deadline).await?;
    log.note("[TLS handshake done]");
    let mut conn = Conn::new(Stream::Tls(Box::new(tls)), deadline);
    let (hello, _) = hello(&mut conn, &cfg.helo, log).await?;
    greeting.hello_before_tls = Some(std::mem::replace(&mut greeting.hello, hello));
    Ok(conn)
}

/// EHLO, or HELO when EHLO is refused with 5xx (RFC 5321 §3.2).
pub async fn hello(
    conn: &mut Conn,
    name: &str,
    log: &mut Transcript,
) -> Result<(Reply, bool), OpenError> {
    let reply = conn.command(&format!("EHLO {name}"), log).await?;
    after_ehlo(conn, name, reply, log).await
}

/// How long to wait for a second reply after EHLO when a preamble preceded it: short when the
/// first reply looks like EHLO's own (250), longer when it looks like a refusal of the preamble.
const PREAMBLE_WAIT_OK: Duration = Duration::from_millis(500);
const PREAMBLE_WAIT_ERR: Duration = Duration::from_secs(2);

/// EHLO after a preamble line. A server that honours the preamble answers EHLO only; one that
/// takes it for a command answers it too, so two replies arrive: the first belongs to the
/// preamble. A server that closes the connection after answering the preamble refused it.
async fn hello_after_preamble(
    conn: &mut Conn,
    name: &str,
    log: &mut Transcript,
) -> Result<(Reply, bool, Option<Reply>), OpenError> {
    conn.send_line(&format!("EHLO {name}"), log).await?;
    let first = conn.read_reply(log).await?;
    let wait = if first.code == 250 {
        PREAMBLE_WAIT_OK
    } else {
        PREAMBLE_WAIT_ERR
    };
    match conn.reply_pending(wait).await {
        Ok(true) => {
            let second = conn.read_reply(log).await?;
            let (hello, esmtp) = after_ehlo(conn, name, second, log).await?;
            Ok((hello, esmtp, Some(first)))
        }
        Ok(false) => {
            let (hello, esmtp) = after_ehlo(conn, name, first, log).await?;
            Ok((hello, esmtp, None))
        }
        Err(ConnError::Closed) => Err(OpenError::Refused(first)),
        Err(e) => Err(e.into()),
    }
}

async fn after_ehlo(
    conn: &mut Conn,
    name: &str,
    reply: Reply,
    log: &mut Transcript,
) -> Result<(Reply, bool), OpenError> {
    if reply.code == 250 {
        return Ok((reply, true));
    }
    if reply.is_permanent() {
        let reply = conn.command(&format!("HELO {name}"), log).await?;
        if reply.code == 250 {
            return Ok((reply, false));
        }
        return Err(OpenError::Refused(reply));
    }
    Err(OpenError::Refused(reply))
}

/// An EHLO keyword line (`STARTTLS`, `AUTH PLAIN LOGIN`, …), case-insensitive.
pub fn has_keyword(ehlo: &Reply, keyword: &str) -> bool {
    keyword_args(ehlo, keyword).is_some()
}

/// The arguments of an EHLO keyword line, e.g. the mechanisms of `AUTH`.
pub fn keyword_args(ehlo: &Reply, keyword: &str) -> Option<Vec<String>> {
    EhloKeywords::parse(ehlo)
        .args(keyword)
        .map(<[String]>::to_vec)
}

/// The name a server gives in a banner or EHLO reply: the first word, only if it looks like a
/// domain (letters, digits, hyphens, at least one dot, not all numeric). Never the word
/// "ESMTP" (nmap's bug): a banner `220 ESMTP Postfix` names no host.
pub fn host_name_from(reply: &Reply) -> Option<String> {
    domain_name(reply.lines.first()?.split_whitespace().next()?)
}

/// `name`, lower-cased and without a trailing dot, if it looks like a domain (letters,
/// digits, hyphens, at least one dot, not all numeric): what a host name from a banner, an
/// EHLO reply, the command line or an MX record must be before the tricks write it into a
/// command line.
pub fn domain_name(name: &str) -> Option<String> {
    let name = name.trim_end_matches('.');
    let labels: Vec<&str> = name.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let looks_like_domain = labels.len() >= 2
        && name.len() <= 253
        && labels.iter().all(label_ok)
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    looks_like_domain.then(|| name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(lines: &[&str]) -> Reply {
        Reply::multiline(250, None, lines.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn host_names_are_domains_only() {
        assert_eq!(
            host_name_from(&reply(&["mx.example.net ESMTP Postfix"])).as_deref(),
            Some("mx.example.net")
        );
        assert_eq!(host_name_from(&reply(&["ESMTP Postfix (Debian)"])), None);
        assert_eq!(host_name_from(&reply(&["localhost ESMTP"])), None);
        assert_eq!(host_name_from(&reply(&["192.0.2.1 ready"])), None);
        assert_eq!(
            host_name_from(&reply(&["Mail.Example.NET. hi"])).as_deref(),
            Some("mail.example.net")
        );
        assert_eq!(host_name_from(&reply(&["ev<il>.x ok"])), None);
        assert_eq!(host_name_from(&reply(&[""])), None);
        // An MX name from a hostile DNS, as the resolver escapes it.
        assert_eq!(domain_name("ev\\>il.example.test"), None);
        assert_eq!(domain_name("localhost"), None);
        assert_eq!(
            domain_name("MX2.Example.TEST.").as_deref(),
            Some("mx2.example.test")
        );
    }

    #[test]
    fn keywords() {
        let ehlo = reply(&[
            "mx.example.net",
            "PIPELINING",
            "auth=LOGIN",
            "starttls",
            "AUTH plain login",
        ]);
        assert!(has_keyword(&ehlo, "STARTTLS"));
        assert_eq!(keyword_args(&ehlo, "AUTH"), Some(vec!["LOGIN".to_string()]));
        assert!(!has_keyword(&reply(&["mx STARTTLS"]), "STARTTLS"));
    }
}

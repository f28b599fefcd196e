//! The confirm listener: a minimal SMTP receiver for `--confirm-domain` that watches for the
//! tokens the probe sent through the targets. A token arriving here is proof of relay; a 250
//! at RCPT is not.
//!
//! It is a sink, not a relay: it accepts recipients at the confirm domain only, keeps nothing
//! but the fact that a token arrived, and bounds everything a sender controls.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, timeout_at};

const MAX_LINE: u64 = 1001;
const MAX_MESSAGE: usize = 1 << 20;
const MAX_COMMANDS: usize = 200;
const SESSION_TIME: Duration = Duration::from_secs(120);

pub struct ConfirmServer {
    domain: String,
    local_addr: SocketAddr,
    expected: Mutex<HashSet<String>>,
    arrived: Mutex<HashSet<String>>,
    /// Bumped on every arrival; waiters watch it (no lost wake-ups).
    changed: watch::Sender<u64>,
}

impl ConfirmServer {
    /// Binds the listener and starts accepting in the background.
    pub async fn bind(addr: SocketAddr, domain: &str) -> std::io::Result<Arc<Self>> {
        let listener = TcpListener::bind(addr).await?;
        let server = Arc::new(Self {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            local_addr: listener.local_addr()?,
            expected: Mutex::new(HashSet::new()),
            arrived: Mutex::new(HashSet::new()),
            changed: watch::channel(0).0,
        });
        let weak = Arc::downgrade(&server);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let Some(server) = weak.upgrade() else { break };
                tokio::spawn(async move { server.session(stream).await });
            }
        });
        Ok(server)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Registers a token before its message is sent.
    pub fn expect(&self, token: &str) {
        if let Ok(mut set) = self.expected.lock() {
            set.insert(token.to_string());
        }
    }

    /// Waits until all `tokens` arrived or `wait` passed; returns those that arrived.
    pub async fn wait_for(&self, tokens: &[String], wait: Duration) -> HashSet<String> {
        let deadline = Instant::now() + wait;
        let mut rx = self.changed.subscribe();
        loop {
            let arrived = self.arrived_of(tokens);
            if arrived.len() == tokens.len() {
                return arrived;
            }
            match timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return self.arrived_of(tokens),
            }
        }
    }

    fn arrived_of(&self, tokens: &[String]) -> HashSet<String> {
        let Ok(arrived) = self.arrived.lock() else {
            return HashSet::new();
        };
        tokens
            .iter()
            .filter(|t| arrived.contains(*t))
            .cloned()
            .collect()
    }

    /// Marks every expected token found in `body`.
    fn scan(&self, body: &str) {
        let found: Vec<String> = match self.expected.lock() {
            Ok(set) => set
                .iter()
                .filter(|t| body.contains(t.as_str()))
                .cloned()
                .collect(),
            Err(_) => return,
        };
        if found.is_empty() {
            return;
        }
        if let Ok(mut arrived) = self.arrived.lock() {
            arrived.extend(found);
        }
        self.changed.send_modify(|n| *n += 1);
    }

    async fn session(&self, stream: TcpStream) {
        let deadline = Instant::now() + SESSION_TIME;
        let _ = timeout_at(deadline, self.dialogue(stream)).await;
    }

    async fn dialogue(&self, stream: TcpStream) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        write
            .write_all(
                format!("220 {} relayward probe confirm listener\r\n", self.domain).as_bytes(),
            )
            .await?;
        for _ in 0..MAX_COMMANDS {
            let Some(line) = read_line(&mut read, true).await? else {
                return Ok(());
            };
            let verb = line
                .split([' ', ':'])
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            let reply = match verb.as_str() {
                "EHLO" | "HELO" => format!("250 {}", self.domain),
                "MAIL" | "RSET" | "NOOP" => "250 2.0.0 ok".to_string(),
                "RCPT" if self.is_ours(&line) => "250 2.1.5 ok".to_string(),
                "RCPT" => "550 5.7.1 not a confirm address".to_string(),
                "DATA" => {
                    write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                    let body = read_body(&mut read).await?;
                    self.scan(&body);
                    "250 2.0.0 received".to_string()
                }
                "QUIT" => {
                    write.write_all(b"221 2.0.0 bye\r\n").await?;
                    return Ok(());
                }
                _ => "502 5.5.1 not implemented".to_string(),
            };
            write.write_all(format!("{reply}\r\n").as_bytes()).await?;
        }
        Ok(())
    }

    /// `RCPT TO:<anything@confirm.domain>`, compared on the domain after the last `@`.
    fn is_ours(&self, line: &str) -> bool {
        let Some(start) = line.find('<') else {
            return false;
        };
        let Some(end) = line.rfind('>') else {
            return false;
        };
        if end <= start {
            return false;
        }
        let path = &line[start + 1..end];
        path.rsplit_once('@')
            .is_some_and(|(_, d)| d.trim_end_matches('.').eq_ignore_ascii_case(&self.domain))
    }
}

/// One line, without line ending; `None` at end of stream. Longer lines are an error.
/// In DATA (`strict` false) an over-long line is returned in pieces instead: a relay may have
/// re-encoded the message, and the token must still be found.
async fn read_line<R: AsyncRead + Unpin>(
    read: &mut BufReader<R>,
    strict: bool,
) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = (&mut *read)
        .take(MAX_LINE)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if strict && buf.last() != Some(&b'\n') {
        return Err(std::io::Error::other("line too long"));
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// The message up to the lone dot, at most [`MAX_MESSAGE`] bytes kept.
async fn read_body<R: AsyncRead + Unpin>(read: &mut BufReader<R>) -> std::io::Result<String> {
    let mut body = String::new();
    loop {
        let Some(line) = read_line(read, false).await? else {
            return Err(std::io::Error::other("closed in DATA"));
        };
        if line == "." {
            return Ok(body);
        }
        if body.len() < MAX_MESSAGE {
            body.push_str(line.strip_prefix('.').unwrap_or(&line));
            body.push('\n');
        }
    }
}

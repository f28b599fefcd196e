//! The confirm listener: a minimal SMTP receiver for `--confirm-domain` that watches for the
//! tokens the probe sent through the targets. A token arriving here is proof of relay; a 250
//! at RCPT is not.
//!
//! It speaks ESMTP with `8BITMIME` and `SMTPUTF8`, so that a relay carrying an
//! internationalised trick (a UTF-8 or fullwidth spelling of the confirm domain) can hand the
//! token over instead of bouncing it (`5.6.7` without `SMTPUTF8`): a recipient domain that
//! maps under UTS 46 to the confirm domain is ours.
//!
//! It is a sink, not a relay: it accepts recipients at the confirm domain only, keeps per token
//! only who delivered it and the message's `Received:` chain (the evidence a blocklist
//! publishes: DSBL listed a host only when a test message really arrived), and bounds
//! everything a sender controls: connections at once (16 per sender), commands, line length, message size,
//! session time.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relayward_protocol::idn;
use relayward_protocol::text::escape_control;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, timeout_at};

/// What every proof-of-relay token starts with.
pub const TOKEN_PREFIX: &str = "rw";
/// Lower-case letters and digits after [`TOKEN_PREFIX`] in a token (and in the probe's other
/// nonces).
pub const NONCE_LEN: usize = 12;

/// A new proof-of-relay token: [`TOKEN_PREFIX`] and [`NONCE_LEN`] random lower-case letters
/// and digits, which nothing else in a transcript looks like.
pub fn new_token() -> String {
    format!("{TOKEN_PREFIX}{}", nonce())
}

/// [`NONCE_LEN`] random lower-case letters and digits.
pub fn nonce() -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..NONCE_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// `line` with every proof-of-relay token ([`new_token`]'s shape, as a word, in any case: a
/// server may echo the Message-ID) written `rw[hidden]`. For the probe service, whose caller
/// watches the transcript while the test waits for the tokens to come back: one who read a
/// token could mail it to the confirm listener and have a server that merely accepts at RCPT
/// stored as CONFIRMED-OPEN. The report's own `confirm` list keeps the tokens, but it is
/// only filled in once the wait is over and the tokens are forgotten.
pub fn hide_tokens(line: &str) -> std::borrow::Cow<'_, str> {
    let bytes = line.as_bytes();
    let is_word = |b: u8| b.is_ascii_alphanumeric();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i + 2 + NONCE_LEN <= bytes.len() {
        let end = i + 2 + NONCE_LEN;
        let token = bytes[i..i + 2].eq_ignore_ascii_case(TOKEN_PREFIX.as_bytes())
            && (i == 0 || !is_word(bytes[i - 1]))
            && bytes[i + 2..end].iter().all(|&b| is_word(b))
            && bytes.get(end).is_none_or(|&b| !is_word(b));
        if token {
            let hidden = out.get_or_insert_with(|| String::with_capacity(line.len()));
            // `i` and `end` sit next to ASCII bytes: both are character boundaries.
            hidden.push_str(&line[copied..i + 2]);
            hidden.push_str("[hidden]");
            copied = end;
            i = end;
        } else {
            i += 1;
        }
    }
    match out {
        Some(mut hidden) => {
            hidden.push_str(&line[copied..]);
            std::borrow::Cow::Owned(hidden)
        }
        None => std::borrow::Cow::Borrowed(line),
    }
}

const MAX_LINE: u64 = 1001;
/// Largest message read; a longer one is refused with 552 and the session closed.
pub const MAX_MESSAGE: usize = 1 << 20;
const MAX_COMMANDS: usize = 200;
/// Sessions served at once; more are answered 421 and closed. A relay delivers a handful of
/// tokens; a flood of connections is someone else.
pub const MAX_CONNECTIONS: usize = 64;
/// Sessions one sender (address, IPv6 /64) may hold at once: one sender must not hold all
/// [`MAX_CONNECTIONS`] and turn the relays' proofs away. A relay delivering its tokens opens
/// a few connections at most (and one arrival is proof).
pub const MAX_CONNECTIONS_PER_SENDER: usize = 16;
const SESSION_TIME: Duration = Duration::from_secs(120);
/// `Received:` headers kept per token, and the longest value kept.
const MAX_RECEIVED: usize = 20;
const MAX_RECEIVED_LEN: usize = 512;

/// How one token arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    /// The client that delivered the message to this listener.
    pub delivered_by: IpAddr,
    /// `Received:` values, newest first, escaped and capped.
    pub received: Vec<String>,
}

pub struct ConfirmServer {
    domain: String,
    local_addr: SocketAddr,
    expected: Mutex<HashSet<String>>,
    arrived: Mutex<HashMap<String, Arrival>>,
    /// Bumped on every arrival; waiters watch it (no lost wake-ups).
    changed: watch::Sender<u64>,
    sessions: Arc<Semaphore>,
    /// Sessions held per sender key ([`sender_key`]).
    per_sender: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ConfirmServer {
    /// Binds the listener and starts accepting in the background.
    pub async fn bind(addr: SocketAddr, domain: &str) -> std::io::Result<Arc<Self>> {
        let listener = TcpListener::bind(addr).await?;
        let server = Arc::new(Self {
            domain: canonical_domain(domain).unwrap_or_else(|| domain.to_ascii_lowercase()),
            local_addr: listener.local_addr()?,
            expected: Mutex::new(HashSet::new()),
            arrived: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
            sessions: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            per_sender: Arc::default(),
        });
        let weak = Arc::downgrade(&server);
        tokio::spawn(async move {
            while let Ok((mut stream, peer)) = listener.accept().await {
                let Some(server) = weak.upgrade() else { break };
                let Some(share) = SenderShare::take(&server.per_sender, peer.ip()) else {
                    tokio::spawn(async move {
                        let _ = stream
                            .write_all(b"421 4.7.0 too many connections from your address, try again later\r\n")
                            .await;
                    });
                    continue;
                };
                let Ok(permit) = Arc::clone(&server.sessions).try_acquire_owned() else {
                    tokio::spawn(async move {
                        let _ = stream
                            .write_all(b"421 4.7.0 too many connections, try again later\r\n")
                            .await;
                    });
                    continue;
                };
                tokio::spawn(async move {
                    server.session(stream, peer.ip().to_canonical()).await;
                    drop((permit, share));
                });
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

    /// Stops watching for `tokens` (their target's proof is over): a listener that serves many
    /// probes, as the probe service's does, would otherwise keep every token it ever expected.
    /// A token that arrives later is no longer recorded.
    pub fn forget(&self, tokens: &[String]) {
        if let Ok(mut set) = self.expected.lock() {
            for token in tokens {
                set.remove(token);
            }
        }
        if let Ok(mut arrived) = self.arrived.lock() {
            for token in tokens {
                arrived.remove(token);
            }
        }
    }

    /// Tokens expected or arrived and not yet forgotten.
    pub fn tracked_tokens(&self) -> usize {
        let expected = self.expected.lock().map(|s| s.len()).unwrap_or(0);
        let arrived = self.arrived.lock().map(|a| a.len()).unwrap_or(0);
        expected + arrived
    }

    /// Waits until all `tokens` arrived or `wait` passed; returns those that arrived, with how.
    pub async fn wait_for(&self, tokens: &[String], wait: Duration) -> HashMap<String, Arrival> {
        let deadline = crate::probe::instant_after(Instant::now(), wait);
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

    fn arrived_of(&self, tokens: &[String]) -> HashMap<String, Arrival> {
        let Ok(arrived) = self.arrived.lock() else {
            return HashMap::new();
        };
        tokens
            .iter()
            .filter_map(|t| arrived.get(t).map(|a| (t.clone(), a.clone())))
            .collect()
    }

    /// Marks every expected token found in `body` as delivered by `peer`. The first arrival
    /// of a token is kept.
    fn scan(&self, body: &str, peer: IpAddr) {
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
        let arrival = Arrival {
            delivered_by: peer,
            received: received_chain(body),
        };
        if let Ok(mut arrived) = self.arrived.lock() {
            for token in found {
                arrived.entry(token).or_insert_with(|| arrival.clone());
            }
        }
        self.changed.send_modify(|n| *n += 1);
    }

    async fn session(&self, stream: TcpStream, peer: IpAddr) {
        let deadline = Instant::now() + SESSION_TIME;
        let _ = timeout_at(deadline, self.dialogue(stream, peer)).await;
    }

    async fn dialogue(&self, stream: TcpStream, peer: IpAddr) -> std::io::Result<()> {
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
                "EHLO" => format!(
                    "250-{}\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES",
                    self.domain
                ),
                "HELO" => format!("250 {}", self.domain),
                "MAIL" | "RSET" | "NOOP" => "250 2.0.0 ok".to_string(),
                "RCPT" if self.is_ours(&line) => "250 2.1.5 ok".to_string(),
                "RCPT" => "550 5.7.1 not a confirm address".to_string(),
                "DATA" => {
                    write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                    match read_body(&mut read).await? {
                        Some(body) => {
                            self.scan(&body, peer);
                            "250 2.0.0 received".to_string()
                        }
                        None => {
                            write
                                .write_all(b"552 5.3.4 message too big for a relay test\r\n")
                                .await?;
                            return Ok(());
                        }
                    }
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

    /// `RCPT TO:<anything@confirm.domain>`, compared on the canonical (UTS 46, A-label) form
    /// of the domain after the last `@`: `ｃｏｎｆｉｒｍ．ｔｅｓｔ` is `confirm.test`.
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
            .and_then(|(_, d)| canonical_domain(d))
            .is_some_and(|d| d == self.domain)
    }
}

/// A sender's address, an IPv6 sender's /64 (one host owns a whole /64).
fn sender_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6([s[0], s[1], s[2], s[3], 0, 0, 0, 0].into())
        }
        v4 => v4,
    }
}

/// One session of a sender's [`MAX_CONNECTIONS_PER_SENDER`]; given back when dropped.
struct SenderShare {
    key: IpAddr,
    shares: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl SenderShare {
    fn take(shares: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr) -> Option<SenderShare> {
        let key = sender_key(ip);
        // Plain counters: a panic elsewhere cannot leave them half-changed.
        let mut map = shares.lock().unwrap_or_else(|e| e.into_inner());
        let held = map.entry(key).or_insert(0);
        if *held >= MAX_CONNECTIONS_PER_SENDER {
            return None;
        }
        *held += 1;
        Some(SenderShare {
            key,
            shares: Arc::clone(shares),
        })
    }
}

impl Drop for SenderShare {
    fn drop(&mut self) {
        let mut map = self.shares.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = map.get_mut(&self.key) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// The A-label form of `domain` without a trailing dot (in any of the spellings UTS 46 maps
/// to a dot); `None` when it is no valid name. The listener and the probe's choice of which
/// tricks can be proven both use it, so they cannot disagree on what "the confirm domain" is.
pub(crate) fn canonical_domain(domain: &str) -> Option<String> {
    let name = domain.trim_end_matches(['.', '\u{ff0e}', '\u{3002}', '\u{ff61}']);
    idn::to_ascii(name).ok()
}

/// The `Received:` header values of a message (header section only, folded lines joined),
/// newest first as they stand, each escaped and cut to [`MAX_RECEIVED_LEN`].
fn received_chain(message: &str) -> Vec<String> {
    let mut headers: Vec<String> = Vec::new();
    for line in message.lines() {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut()
                && last.len() < MAX_RECEIVED_LEN * 2
            {
                last.push(' ');
                last.push_str(line.trim());
            }
            continue;
        }
        if headers.len() >= MAX_RECEIVED * 4 {
            break;
        }
        headers.push(line.to_string());
    }
    headers
        .iter()
        .filter_map(|h| {
            let (name, value) = h.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("received")
                .then(|| value.trim())
        })
        .take(MAX_RECEIVED)
        .map(|v| {
            let mut v = escape_control(v).into_owned();
            v.truncate(v.floor_char_boundary(MAX_RECEIVED_LEN));
            v
        })
        .collect()
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

/// The message up to the lone dot; `None` when it grows past [`MAX_MESSAGE`] (the caller
/// answers 552 and hangs up rather than read on).
async fn read_body<R: AsyncRead + Unpin>(
    read: &mut BufReader<R>,
) -> std::io::Result<Option<String>> {
    let mut body = String::new();
    loop {
        let Some(line) = read_line(read, false).await? else {
            return Err(std::io::Error::other("closed in DATA"));
        };
        if line == "." {
            return Ok(Some(body));
        }
        if body.len() + line.len() > MAX_MESSAGE {
            return Ok(None);
        }
        body.push_str(line.strip_prefix('.').unwrap_or(&line));
        body.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_tokens_are_hidden_and_nothing_else() {
        assert_eq!(
            hide_tokens(">>> Subject: relayward relay test rw1v4hfq5soule"),
            ">>> Subject: relayward relay test rw[hidden]"
        );
        assert_eq!(
            hide_tokens(">>> Message-ID: <rwujiwb93qci6f@relay-test.example.org>"),
            ">>> Message-ID: <rw[hidden]@relay-test.example.org>"
        );
        assert_eq!(
            hide_tokens("<<< 250 queued as RWUJIWB93QCI6F, rw000000000000"),
            "<<< 250 queued as RW[hidden], rw[hidden]"
        );
        for kept in [
            ">>> RCPT TO:<relaytest@example.net>",
            "<<< 250 throwaway1234567",
            "<<< 250 rwabc",
            "<<< 250 xrwujiwb93qci6f rwujiwb93qci6fx",
            "<<< 250 é rw",
        ] {
            assert!(
                matches!(hide_tokens(kept), std::borrow::Cow::Borrowed(_)),
                "{kept}"
            );
        }
        assert_eq!(hide_tokens("é rwujiwb93qci6f é"), "é rw[hidden] é");
    }

    #[test]
    fn received_chain_is_unfolded_escaped_and_stops_at_the_body() {
        let msg = "Received: from a.example ([192.0.2.9])\n\tby b.example; Mon, 1 Dec 2026\n\
                   Subject: x\nreceived: from evil\u{1b}[2J\n\nReceived: in the body\n";
        assert_eq!(
            received_chain(msg),
            [
                "from a.example ([192.0.2.9]) by b.example; Mon, 1 Dec 2026",
                "from evil\\x1b[2J"
            ]
        );
    }
}

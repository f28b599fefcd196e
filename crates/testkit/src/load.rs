//! A load generator for crash and outage tests: client threads that send numbered messages
//! (`Token: r0-c3-m17`) to a server that dies or stalls under them on purpose, and a
//! [`Ledger`] of what was sent, what got `250` (must never be lost) and what was refused.
//! The client never panics: a dead server is an error it reconnects after.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the load generator learnt.
#[derive(Default)]
pub struct Ledger {
    /// Tokens whose final dot was answered `250`: these must never be lost.
    pub acked: BTreeSet<String>,
    /// Tokens whose final dot was sent (acknowledged or not).
    pub sent: BTreeSet<String>,
    /// Final-dot replies other than 250 (e.g. 452 while recovering), by code.
    pub refused: BTreeMap<u16, usize>,
    /// Every final-dot reply with the moment it arrived, in order.
    pub replies: Vec<(Instant, u16)>,
}

/// The envelope the load sends.
#[derive(Clone)]
pub struct Envelope {
    pub sender: String,
    pub recipient: String,
}

impl Default for Envelope {
    fn default() -> Self {
        Envelope {
            sender: "load@other.test".into(),
            recipient: "alice@example.test".into(),
        }
    }
}

/// A non-panicking SMTP client: the server dies under it on purpose.
pub struct LoadClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl LoadClient {
    pub fn connect(addr: SocketAddr) -> io::Result<LoadClient> {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut client = LoadClient {
            reader: BufReader::new(tcp.try_clone()?),
            writer: tcp,
        };
        client.expect(220)?;
        client.command("EHLO load.example.test", 250)?;
        Ok(client)
    }

    /// Reads one (possibly multi-line) reply and returns its code.
    fn reply(&mut self) -> io::Result<u16> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let code = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| io::Error::other(format!("bad reply {line:?}")))?;
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(code);
            }
        }
    }

    fn expect(&mut self, code: u16) -> io::Result<()> {
        match self.reply()? {
            got if got == code => Ok(()),
            got => Err(io::Error::other(format!("expected {code}, got {got}"))),
        }
    }

    fn command(&mut self, line: &str, code: u16) -> io::Result<()> {
        self.writer.write_all(format!("{line}\r\n").as_bytes())?;
        self.expect(code)
    }

    /// One transaction; `Ok(code)` is the reply to the final dot.
    pub fn send_message(&mut self, envelope: &Envelope, token: &str) -> io::Result<u16> {
        let body = format!(
            "Subject: crash test {token}\r\n\r\nToken: {token}\r\n{}\r\n",
            "filler line to give the fsync something to write\r\n".repeat(20)
        );
        self.send_content(envelope, body.as_bytes())
    }

    /// One transaction with `content` (CRLF line ends, already dot-stuffed); `Ok(code)` is
    /// the reply to the final dot.
    pub fn send_content(&mut self, envelope: &Envelope, content: &[u8]) -> io::Result<u16> {
        self.command(&format!("MAIL FROM:<{}>", envelope.sender), 250)?;
        self.command(&format!("RCPT TO:<{}>", envelope.recipient), 250)?;
        self.command("DATA", 354)?;
        self.writer.write_all(content)?;
        self.writer.write_all(b".\r\n")?;
        self.reply()
    }
}

/// Sends messages from `clients` threads until `stop`; each thread reconnects after errors.
/// Tokens are `r{round}-c{thread}-m{n}`.
pub fn load(
    addr: SocketAddr,
    envelope: &Envelope,
    round: usize,
    clients: usize,
    stop: &Arc<AtomicBool>,
    ledger: &Arc<Mutex<Ledger>>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..clients)
        .map(|thread| {
            let stop = Arc::clone(stop);
            let ledger = Arc::clone(ledger);
            let envelope = envelope.clone();
            std::thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut client) = LoadClient::connect(addr) else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let token = format!("r{round}-c{thread}-m{n}");
                        ledger.lock().expect("ledger").sent.insert(token.clone());
                        match client.send_message(&envelope, &token) {
                            Ok(code) => {
                                let mut ledger = ledger.lock().expect("ledger");
                                ledger.replies.push((Instant::now(), code));
                                if code == 250 {
                                    ledger.acked.insert(token);
                                } else {
                                    *ledger.refused.entry(code).or_insert(0) += 1;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
            })
        })
        .collect()
}

/// The `Token: …` line of a message, if any.
pub fn token_of(text: &str) -> Option<String> {
    let start = text.find("\r\nToken: ")? + "\r\nToken: ".len();
    let rest = &text[start..];
    let end = rest.find("\r\n").unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

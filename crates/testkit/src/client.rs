//! [`Smtp`], the transcript client: every call records the dialogue, and a failed expectation
//! prints the whole transcript.
//!
//! ```ignore
//! smtp.send("EHLO probe.outside.test").expect(250)
//!     .send("MAIL FROM:<a@outside.test>").expect(250)
//!     .send("RCPT TO:<\"victim@other.test\"@example.test>").expect_text(554, "5.7.1");
//! ```
//!
//! It speaks over a [`Link`]: a TCP connection to a real server ([`Smtp::connect`] and
//! friends), or an in-memory pipe to a session running in-process ([`PipeLink`]). Either can
//! switch to TLS in the middle (STARTTLS), trusting a [`Ca`].

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::runtime::Runtime;

pub use crate::pki::Ca;
use crate::wait::WAIT;

/// The name a test client asks TLS for: every test certificate carries it.
const TLS_NAME: &str = "localhost";

/// Standard base64 (RFC 4648), for SASL responses written by hand.
pub fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A byte stream a transcript client can speak over.
pub trait Link: Send {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Runs a TLS client handshake over the stream, trusting `ca`.
    fn start_tls(&mut self, ca: &Ca) -> io::Result<()>;
    /// How long a read may wait before it fails.
    fn set_read_timeout(&mut self, limit: Duration);
    /// Waits `limit` on the clock the peer runs on (a paused test clock advances at once).
    fn idle(&mut self, limit: Duration);
}

/// The transcript client. See the module documentation.
pub struct Smtp {
    link: Box<dyn Link>,
    buffer: Vec<u8>,
    transcript: Vec<String>,
    closed: bool,
    /// The last reply read: code and text lines.
    pub last: Option<(u16, Vec<String>)>,
    /// The banner, when the constructor read it.
    pub banner: (u16, Vec<String>),
}

impl Smtp {
    /// A client over `link` that has read nothing yet (read the banner with `.expect(220)`).
    pub fn over(link: impl Link + 'static) -> Smtp {
        Smtp {
            link: Box::new(link),
            buffer: Vec::new(),
            transcript: Vec::new(),
            closed: false,
            last: None,
            banner: (0, Vec::new()),
        }
    }

    /// A client over `link` that has read the banner, which must be 220.
    #[track_caller]
    pub fn greeted(link: impl Link + 'static) -> Smtp {
        let mut smtp = Smtp::over(link);
        smtp.read_banner();
        smtp
    }

    #[track_caller]
    fn read_banner(&mut self) {
        match self.read_reply() {
            Some(banner) if banner.0 == 220 => self.banner = banner,
            other => panic!(
                "expected a 220 banner, got {other:?}\ntranscript:\n{}",
                self.transcript()
            ),
        }
    }

    /// Connects over TCP and reads the banner (which must be 220).
    #[track_caller]
    pub fn connect(addr: SocketAddr) -> Smtp {
        Smtp::greeted(TcpLink::connect(addr))
    }

    /// Connects without reading the banner, so a test can send first (pregreet) or send a
    /// PROXY header; read the banner with `.expect(220)`.
    pub fn connect_silent(addr: SocketAddr) -> Smtp {
        Smtp::over(TcpLink::connect(addr))
    }

    /// Connects from `source` (another loopback address, e.g. `127.0.1.7`), so that one test
    /// can be many clients, and reads the banner.
    #[track_caller]
    pub fn connect_from(addr: SocketAddr, source: IpAddr) -> Smtp {
        Smtp::greeted(TcpLink::connect_from(addr, source))
    }

    /// Connects with implicit TLS (the `submissions` listener), trusting `ca`.
    #[track_caller]
    pub fn connect_tls(addr: SocketAddr, ca: impl Into<Ca>) -> Smtp {
        Smtp::connect_tls_after(addr, b"", ca)
    }

    /// Connects, sends `preamble` in clear (a PROXY header), then starts implicit TLS trusting
    /// `ca` and reads the banner.
    #[track_caller]
    pub fn connect_tls_after(addr: SocketAddr, preamble: &[u8], ca: impl Into<Ca>) -> Smtp {
        let mut link = TcpLink::connect(addr);
        let mut transcript = Vec::new();
        if !preamble.is_empty() {
            link.write_all(preamble).expect("write preamble");
            transcript.push(format!(">>> (raw) {:?}", String::from_utf8_lossy(preamble)));
        }
        link.start_tls(&ca.into()).expect("TLS handshake");
        let mut smtp = Smtp::over(link);
        smtp.transcript = transcript;
        smtp.transcript.push("=== TLS established".to_string());
        smtp.read_banner();
        smtp
    }

    /// How long a read may wait, on this connection, before the test fails (default [`WAIT`]).
    pub fn read_timeout(&mut self, limit: Duration) -> &mut Self {
        self.link.set_read_timeout(limit);
        self
    }

    /// Sends one command line (CRLF added).
    pub fn send(&mut self, line: &str) -> &mut Self {
        self.transcript.push(format!(">>> {line}"));
        let mut bytes = line.as_bytes().to_vec();
        bytes.extend_from_slice(b"\r\n");
        self.write(&bytes);
        self
    }

    /// Sends raw bytes exactly as given.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.transcript
            .push(format!(">>> (raw) {:?}", String::from_utf8_lossy(bytes)));
        self.write(bytes);
        self
    }

    fn write(&mut self, bytes: &[u8]) {
        if let Err(e) = self.link.write_all(bytes) {
            self.transcript.push(format!("!!! write failed: {e}"));
        }
    }

    /// Says nothing for `limit` (on the server's clock: instant under a paused test clock).
    pub fn idle(&mut self, limit: Duration) -> &mut Self {
        self.transcript.push(format!("... silent for {limit:?}"));
        self.link.idle(limit);
        self
    }

    /// Expects the next reply to have `code`.
    #[track_caller]
    pub fn expect(&mut self, code: u16) -> &mut Self {
        match self.read_reply() {
            Some((got, _)) if got == code => self,
            other => panic!(
                "expected {code}, got {other:?}\ntranscript:\n{}",
                self.transcript()
            ),
        }
    }

    /// Expects `code` and a text containing `needle` (e.g. an enhanced code "5.7.1").
    #[track_caller]
    pub fn expect_text(&mut self, code: u16, needle: &str) -> &mut Self {
        match self.read_reply() {
            Some((got, lines)) if got == code && lines.iter().any(|l| l.contains(needle)) => self,
            other => panic!(
                "expected {code} containing {needle:?}, got {other:?}\ntranscript:\n{}",
                self.transcript()
            ),
        }
    }

    /// Expects the server to close the connection (after any final reply).
    #[track_caller]
    pub fn expect_closed(&mut self) -> &mut Self {
        if let Some(reply) = self.read_reply() {
            panic!(
                "expected the connection to close, got {reply:?}\ntranscript:\n{}",
                self.transcript()
            );
        }
        self
    }

    /// The lines of the last reply (e.g. EHLO keywords).
    pub fn last_lines(&self) -> Vec<String> {
        self.last
            .as_ref()
            .map(|(_, l)| l.clone())
            .unwrap_or_default()
    }

    /// STARTTLS: expects 220, then runs the TLS handshake trusting `ca`.
    #[track_caller]
    pub fn starttls(&mut self, ca: impl Into<Ca>) -> &mut Self {
        self.send("STARTTLS").expect(220);
        self.upgrade_without_command(ca)
    }

    /// Switches to TLS after a `220` to STARTTLS that was already read (for tests that send
    /// STARTTLS as raw bytes). Whatever was read but not yet taken is dropped, as RFC 3207
    /// asks of a client.
    #[track_caller]
    pub fn upgrade_without_command(&mut self, ca: impl Into<Ca>) -> &mut Self {
        self.buffer.clear();
        if let Err(e) = self.link.start_tls(&ca.into()) {
            panic!(
                "TLS handshake failed: {e}\ntranscript:\n{}",
                self.transcript()
            );
        }
        self.transcript.push("=== TLS established".to_string());
        self
    }

    /// `AUTH PLAIN` with an initial response.
    pub fn auth_plain(&mut self, login: &str, password: &str) -> &mut Self {
        let token = base64(format!("\0{login}\0{password}").as_bytes());
        self.send(&format!("AUTH PLAIN {token}"))
    }

    /// Reads one reply; `None` when the connection closed or a read failed (timed out).
    pub fn read_reply(&mut self) -> Option<(u16, Vec<String>)> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line()?;
            self.transcript.push(format!("<<< {line}"));
            let code: u16 = line.get(..3)?.parse().ok()?;
            lines.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                self.last = Some((code, lines.clone()));
                return Some((code, lines));
            }
        }
    }

    fn read_line(&mut self) -> Option<String> {
        loop {
            if let Some(pos) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buffer.drain(..pos + 2).collect();
                return Some(String::from_utf8_lossy(&line[..pos]).into_owned());
            }
            let mut chunk = [0u8; 4096];
            match self.link.read(&mut chunk) {
                Ok(0) => {
                    if !self.closed {
                        self.transcript
                            .push("=== connection closed by server".to_string());
                    }
                    self.closed = true;
                    return None;
                }
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) => {
                    self.transcript.push(format!("=== read failed: {e}"));
                    return None;
                }
            }
        }
    }

    /// True once a read found the connection closed by the server (a timed-out read is not
    /// a close).
    pub fn closed(&self) -> bool {
        self.closed
    }

    pub fn transcript(&self) -> String {
        self.transcript.join("\n")
    }
}

// ---------------------------------------------------------------------------------------------
// TCP
// ---------------------------------------------------------------------------------------------

type TlsOverTcp = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A blocking TCP connection, plaintext until [`Link::start_tls`].
pub struct TcpLink {
    plain: Option<TcpStream>,
    tls: Option<Box<TlsOverTcp>>,
}

impl TcpLink {
    #[track_caller]
    pub fn connect(addr: SocketAddr) -> TcpLink {
        let tcp = TcpStream::connect_timeout(&addr, WAIT)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        Self::over(tcp)
    }

    /// Connects from `source` (a loopback address of the test's choosing).
    #[track_caller]
    pub fn connect_from(addr: SocketAddr, source: IpAddr) -> TcpLink {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let tcp = runtime
            .block_on(async {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(source, 0))?;
                tokio::time::timeout(WAIT, socket.connect(addr)).await?
            })
            .and_then(|tcp| tcp.into_std())
            .unwrap_or_else(|e| panic!("connect to {addr} from {source}: {e}"));
        tcp.set_nonblocking(false).expect("blocking");
        Self::over(tcp)
    }

    fn over(tcp: TcpStream) -> TcpLink {
        tcp.set_read_timeout(Some(WAIT)).expect("timeout");
        tcp.set_write_timeout(Some(WAIT)).expect("timeout");
        TcpLink {
            plain: Some(tcp),
            tls: None,
        }
    }

    fn stream(&mut self) -> io::Result<&mut dyn ReadWrite> {
        if let Some(tls) = self.tls.as_mut() {
            return Ok(tls.as_mut());
        }
        match self.plain.as_mut() {
            Some(tcp) => Ok(tcp),
            None => Err(io::Error::new(io::ErrorKind::NotConnected, "no stream")),
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

impl Link for TcpLink {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream()?.read(buf)
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let stream = self.stream()?;
        stream.write_all(bytes)?;
        stream.flush()
    }

    fn start_tls(&mut self, ca: &Ca) -> io::Result<()> {
        let tcp = self
            .plain
            .take()
            .ok_or_else(|| io::Error::other("TLS is already active"))?;
        let name = ServerName::try_from(TLS_NAME).map_err(io::Error::other)?;
        let conn =
            rustls::ClientConnection::new(ca.client_config(), name).map_err(io::Error::other)?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        // Drive the handshake now so a failure shows here, not at the first command.
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        self.tls = Some(Box::new(stream));
        Ok(())
    }

    fn set_read_timeout(&mut self, limit: Duration) {
        let tcp = match (&self.plain, &self.tls) {
            (Some(tcp), _) => tcp,
            (None, Some(tls)) => &tls.sock,
            (None, None) => return,
        };
        tcp.set_read_timeout(Some(limit)).expect("timeout");
    }

    fn idle(&mut self, limit: Duration) {
        std::thread::sleep(limit);
    }
}

// ---------------------------------------------------------------------------------------------
// In-memory pipe to an in-process session
// ---------------------------------------------------------------------------------------------

/// The client's end of an in-memory pipe (`tokio::io::duplex`) to a session running on
/// `runtime`. Each call blocks on the runtime, which also drives the session: nothing runs on
/// the server side while the test is not waiting for it, so dialogues are deterministic, and
/// under a paused clock (`start_paused`) timeouts pass as soon as both sides are idle.
pub struct PipeLink<S> {
    runtime: Arc<Runtime>,
    stream: Option<PipeStream<S>>,
    read_timeout: Duration,
}

enum PipeStream<S> {
    Plain(S),
    Tls(Box<tokio_rustls::client::TlsStream<S>>),
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> PipeLink<S> {
    pub fn new(runtime: Arc<Runtime>, stream: S) -> Self {
        Self {
            runtime,
            stream: Some(PipeStream::Plain(stream)),
            read_timeout: WAIT,
        }
    }

    fn stream(&mut self) -> io::Result<&mut PipeStream<S>> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "no stream"))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Link for PipeLink<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (runtime, limit) = (Arc::clone(&self.runtime), self.read_timeout);
        let stream = self.stream()?;
        runtime.block_on(async {
            let read = async {
                match stream {
                    PipeStream::Plain(s) => s.read(buf).await,
                    PipeStream::Tls(s) => s.read(buf).await,
                }
            };
            tokio::time::timeout(limit, read)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "read timed out"))?
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let runtime = Arc::clone(&self.runtime);
        let stream = self.stream()?;
        runtime.block_on(async {
            let write = async {
                match stream {
                    PipeStream::Plain(s) => {
                        s.write_all(bytes).await?;
                        s.flush().await
                    }
                    PipeStream::Tls(s) => {
                        s.write_all(bytes).await?;
                        s.flush().await
                    }
                }
            };
            tokio::time::timeout(WAIT, write)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))?
        })
    }

    fn start_tls(&mut self, ca: &Ca) -> io::Result<()> {
        let Some(PipeStream::Plain(plain)) = self.stream.take() else {
            return Err(io::Error::other("TLS is already active"));
        };
        let name = ServerName::try_from(TLS_NAME).map_err(io::Error::other)?;
        let connector = tokio_rustls::TlsConnector::from(ca.client_config());
        let handshake = connector.connect(name, plain);
        let tls = self.runtime.block_on(async {
            tokio::time::timeout(WAIT, handshake)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
        })?;
        self.stream = Some(PipeStream::Tls(Box::new(tls)));
        Ok(())
    }

    fn set_read_timeout(&mut self, limit: Duration) {
        self.read_timeout = limit;
    }

    fn idle(&mut self, limit: Duration) {
        self.runtime
            .block_on(async move { tokio::time::sleep(limit).await });
    }
}

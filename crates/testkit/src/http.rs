//! A small blocking HTTP/1.1 client for the probe service's tests: one request per connection
//! (`Connection: close`), from a chosen loopback source address, so a test can be several
//! clients at once (per-client budgets) without a client library.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

/// A response: status, headers (lower-case names) and the body as text.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// The client side of one request.
pub struct Http {
    pub server: SocketAddr,
    /// Source address to bind (a loopback address), or the system's choice.
    pub from: Option<IpAddr>,
}

impl Http {
    pub fn new(server: SocketAddr) -> Http {
        Http { server, from: None }
    }

    /// The same server, seen from another loopback address.
    pub fn from(&self, ip: &str) -> Http {
        Http {
            server: self.server,
            from: Some(ip.parse().expect("source address")),
        }
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, None)
    }

    pub fn post_json(&self, path: &str, body: &str) -> Response {
        self.request("POST", path, Some(("application/json", body)))
    }

    pub fn post_form(&self, path: &str, body: &str) -> Response {
        self.request(
            "POST",
            path,
            Some(("application/x-www-form-urlencoded", body)),
        )
    }

    pub fn request(&self, method: &str, path: &str, body: Option<(&str, &str)>) -> Response {
        self.request_with(method, path, body, "")
    }

    /// [`Http::request`] with more header lines (`"Origin: http://x\r\n"`).
    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &str)>,
        extra_headers: &str,
    ) -> Response {
        let mut stream = self.connect();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{extra_headers}Connection: close\r\n",
            self.server
        );
        if let Some((kind, text)) = body {
            head.push_str(&format!(
                "Content-Type: {kind}\r\nContent-Length: {}\r\n",
                text.len()
            ));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).expect("send request");
        if let Some((_, text)) = body {
            stream.write_all(text.as_bytes()).expect("send body");
        }
        read_response(stream)
    }

    /// Opens a connection and sends a GET, returning the reader for a streamed body (SSE).
    pub fn stream(&self, path: &str, extra_headers: &str) -> BufReader<TcpStream> {
        let mut stream = self.connect();
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n{extra_headers}Connection: close\r\n\r\n",
            self.server
        );
        stream.write_all(head.as_bytes()).expect("send request");
        BufReader::new(stream)
    }

    fn connect(&self) -> TcpStream {
        let stream = match self.from {
            None => TcpStream::connect_timeout(&self.server, Duration::from_secs(10))
                .expect("connect to the service"),
            Some(ip) => bound_connect(ip, self.server),
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        stream
    }
}

/// A TCP connection from `source` (port chosen by the system) to `server`: std cannot bind
/// before connecting, socket2 can.
pub fn bound_connect(source: IpAddr, server: SocketAddr) -> TcpStream {
    connect_from(source, server, None)
}

/// [`bound_connect`] with a receive buffer of about `bytes` (set before the connection, so
/// the window the server sees stays that small): a caller that stops reading stalls the
/// server's writes after a few kilobytes instead of megabytes.
pub fn bound_connect_with_receive_buffer(
    source: IpAddr,
    server: SocketAddr,
    bytes: usize,
) -> TcpStream {
    connect_from(source, server, Some(bytes))
}

fn connect_from(source: IpAddr, server: SocketAddr, receive_buffer: Option<usize>) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(server), Type::STREAM, None).expect("socket");
    if let Some(bytes) = receive_buffer {
        socket
            .set_recv_buffer_size(bytes)
            .expect("set the receive buffer");
    }
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .unwrap_or_else(|e| panic!("bind {source}: {e}"));
    socket
        .connect_timeout(&server.into(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect from {source} to {server}: {e}"));
    socket.into()
}

fn read_response(stream: TcpStream) -> Response {
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let mut raw = Vec::new();
    reader.read_to_end(&mut raw).expect("body");
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(&raw) } else { raw };
    Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..pos]);
        let Ok(size) = usize::from_str_radix(size_text.trim(), 16) else {
            break;
        };
        let start = pos + 2;
        if size == 0 || raw.len() < start + size {
            break;
        }
        out.extend_from_slice(&raw[start..start + size]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
    out
}

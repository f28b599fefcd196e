//! A test HTTPS server on loopback that serves fixed pages by `Host` header: MTA-STS policy
//! servers (`mta-sts.DOMAIN`, RFC 8461 §3.3) for the delivery tests. It also takes POSTs
//! (TLS-RPT reports, RFC 8460 §5.2), keeps their bodies and answers `200` — or, for a host
//! that has a page, that page's status (a report server that refuses), until
//! [`HttpsServer::answer_posts`] changes it. One request per
//! connection; it records every request (`host path`). Runs on a thread of its own until the
//! test process ends.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::{ServerConfig, ServerConnection, StreamOwned};

/// One page: status, `Content-Type`, body.
#[derive(Debug, Clone)]
pub struct Page {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Page {
    /// `200`, `text/plain`: an MTA-STS policy as a domain publishes it.
    pub fn policy(body: &str) -> Page {
        Page {
            status: 200,
            content_type: "text/plain".into(),
            body: body.into(),
        }
    }
}

/// One POST the server took.
#[derive(Debug, Clone)]
pub struct Post {
    /// The `Host` header, lower-case (with the port, if the client sent one).
    pub host: String,
    pub path: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// Largest POST body kept.
const MAX_POST: usize = 1 << 20;

/// A running server.
#[derive(Clone)]
pub struct HttpsServer {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    posts: Arc<Mutex<Vec<Post>>>,
    /// POST statuses set while running, by host; they win over the pages'.
    post_status: Arc<Mutex<HashMap<String, u16>>>,
}

impl HttpsServer {
    /// Serves `pages` (by lower-case host name; any path gives the host's page, except that
    /// a path other than `/.well-known/mta-sts.txt` is 404) on `listener` with `tls`.
    pub fn spawn(
        listener: TcpListener,
        tls: Arc<ServerConfig>,
        pages: HashMap<String, Page>,
    ) -> HttpsServer {
        let addr = listener.local_addr().expect("server address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        let posts = Arc::new(Mutex::new(Vec::new()));
        let posted = Arc::clone(&posts);
        let pages = Arc::new(pages);
        let post_status = Arc::new(Mutex::new(HashMap::new()));
        let answers = Arc::clone(&post_status);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (tls, pages, seen) = (Arc::clone(&tls), Arc::clone(&pages), Arc::clone(&seen));
                let posted = Arc::clone(&posted);
                let answers = Arc::clone(&answers);
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let Ok(connection) = ServerConnection::new(tls) else {
                        return;
                    };
                    let mut stream = StreamOwned::new(connection, stream);
                    let _ = serve_one(&mut stream, &pages, &seen, &posted, &answers);
                });
            }
        });
        HttpsServer {
            addr,
            requests,
            posts,
            post_status,
        }
    }

    /// From now on, answer POSTs for `host` with `status` (a report server that comes back).
    pub fn answer_posts(&self, host: &str, status: u16) {
        self.post_status
            .lock()
            .expect("post statuses")
            .insert(host.to_ascii_lowercase(), status);
    }

    /// The POSTs so far, in order.
    pub fn posts(&self) -> Vec<Post> {
        self.posts.lock().expect("posts").clone()
    }

    /// Requests so far, e.g. `"mta-sts.good.test /.well-known/mta-sts.txt"`.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests").clone()
    }
}

fn serve_one(
    stream: &mut StreamOwned<ServerConnection, std::net::TcpStream>,
    pages: &HashMap<String, Page>,
    seen: &Mutex<Vec<String>>,
    posted: &Mutex<Vec<Post>>,
    answers: &Mutex<HashMap<String, u16>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(&mut *stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut words = request_line.split_whitespace();
    let method = words.next().unwrap_or("").to_string();
    let path = words.next().unwrap_or("").to_string();
    let mut host = String::new();
    let mut content_type = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "host" => host = value.to_ascii_lowercase(),
                "content-type" => content_type = value.to_string(),
                "content-length" => length = value.parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    if method == "POST" {
        let name = host
            .rsplit_once(':')
            .map_or(host.as_str(), |(name, _)| name);
        let set = answers.lock().expect("post statuses").get(name).copied();
        let status = set.unwrap_or_else(|| pages.get(name).map_or(200, |page| page.status));
        let mut body = vec![0; length.min(MAX_POST)];
        reader.read_exact(&mut body)?;
        seen.lock()
            .expect("requests")
            .push(format!("{host} {path}"));
        posted.lock().expect("posts").push(Post {
            host,
            path,
            content_type,
            body,
        });
        let response =
            format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        stream.write_all(response.as_bytes())?;
        stream.conn.send_close_notify();
        return stream.flush();
    }
    seen.lock()
        .expect("requests")
        .push(format!("{host} {path}"));
    let not_found = Page {
        status: 404,
        content_type: "text/plain".into(),
        body: "not found\n".into(),
    };
    let page = match pages.get(&host) {
        Some(page) if path == "/.well-known/mta-sts.txt" => page,
        _ => &not_found,
    };
    let response = format!(
        "HTTP/1.1 {} X\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        page.status,
        page.content_type,
        page.body.len(),
        page.body
    );
    stream.write_all(response.as_bytes())?;
    stream.conn.send_close_notify();
    stream.flush()
}

//! Test peers on loopback: a DNS responder, scripted SMTP servers, a test CA, a spool.
//!
//! The DNS responder is hand-written on top of hickory-proto's message codec rather than
//! hickory-server's authority API, because the tests need answers an authoritative zone
//! cannot give on demand (SERVFAIL for one name) and per-test zones in a few lines.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use relayward_delivery::{DeliveryConfig, DeliveryContext, RetrySchedule, Runner, Timeouts};
use relayward_protocol::route::{RouteTarget, Router};
use relayward_queue::spool::{Spool, SpoolOptions};
use relayward_queue::{MessageId, NewMessage, NewRecipient, Queue};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

// ---------------------------------------------------------------- DNS

/// A tiny authoritative zone: records by (name, type), names answering SERVFAIL.
#[derive(Default, Clone)]
pub struct Zone {
    records: HashMap<(String, RecordType), Vec<RData>>,
    servfail: Vec<String>,
}

fn key(name: &str) -> String {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    format!("{n}.")
}

impl Zone {
    pub fn mx(mut self, domain: &str, preference: u16, exchange: &str) -> Self {
        let exchange = Name::from_ascii(key(exchange)).expect("test name");
        self.push(
            domain,
            RecordType::MX,
            RData::MX(MX::new(preference, exchange)),
        );
        self
    }
    pub fn null_mx(mut self, domain: &str) -> Self {
        self.push(domain, RecordType::MX, RData::MX(MX::new(0, Name::root())));
        self
    }
    pub fn a(mut self, name: &str, ip: Ipv4Addr) -> Self {
        self.push(name, RecordType::A, RData::A(A(ip)));
        self
    }
    pub fn aaaa(mut self, name: &str, ip: std::net::Ipv6Addr) -> Self {
        self.push(name, RecordType::AAAA, RData::AAAA(AAAA(ip)));
        self
    }
    pub fn servfail(mut self, name: &str) -> Self {
        self.servfail.push(key(name));
        self
    }
    fn push(&mut self, name: &str, rtype: RecordType, data: RData) {
        self.records
            .entry((key(name), rtype))
            .or_default()
            .push(data);
    }
    fn name_exists(&self, name: &str) -> bool {
        self.records.keys().any(|(n, _)| n == name)
    }
}

/// Starts the responder on `ip:0` (UDP); returns its address. Runs until the test ends.
pub async fn start_dns(ip: Ipv4Addr, zone: Zone) -> SocketAddr {
    let socket = UdpSocket::bind((ip, 0)).await.expect("bind DNS");
    let addr = socket.local_addr().expect("dns addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if let Some(bytes) = answer(&zone, &query) {
                let _ = socket.send_to(&bytes, peer).await;
            }
        }
    });
    addr
}

fn answer(zone: &Zone, query: &Message) -> Option<Vec<u8>> {
    let q = query.queries.first()?.clone();
    let name = key(&q.name().to_ascii());
    let mut response = Message::response(query.metadata.id, query.metadata.op_code);
    response.metadata.message_type = MessageType::Response;
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(q.clone());
    if zone.servfail.contains(&name) {
        response.metadata.response_code = ResponseCode::ServFail;
        return response.to_vec().ok();
    }
    match zone.records.get(&(name.clone(), q.query_type())) {
        Some(list) => {
            for data in list {
                response.add_answer(Record::from_rdata(q.name().clone(), 60, data.clone()));
            }
        }
        None => {
            if !zone.name_exists(&name) {
                response.metadata.response_code = ResponseCode::NXDomain;
            }
            response.add_authority(soa());
        }
    }
    response.to_vec().ok()
}

fn soa() -> Record {
    let origin = Name::from_ascii("test.").expect("name");
    let mname = Name::from_ascii("ns.test.").expect("name");
    let rname = Name::from_ascii("hostmaster.test.").expect("name");
    Record::from_rdata(
        origin,
        60,
        RData::SOA(SOA::new(mname, rname, 1, 60, 60, 600, 0)),
    )
}

// ---------------------------------------------------------------- SMTP servers

/// How a scripted receiving server answers.
#[derive(Clone)]
pub struct Script {
    pub greeting: String,
    /// Reply to each RCPT TO, by address.
    pub rcpt: Arc<dyn Fn(&str) -> String + Send + Sync>,
    pub data_final: String,
    /// Delay before the reply to the final dot (to catch the runner mid-transaction).
    pub data_delay: Duration,
    pub pipelining: bool,
    pub size: Option<u64>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// (user, password) accepted by AUTH PLAIN (offered only under TLS).
    pub auth: Option<(String, String)>,
    /// The AUTH mechanisms announced (under TLS, when `auth` is set).
    pub auth_mechs: &'static str,
    /// Answer EHLO with 502 (an old server): the client must fall back to HELO.
    pub no_ehlo: bool,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            greeting: "220 test ESMTP".into(),
            rcpt: Arc::new(|_| "250 2.1.5 ok".into()),
            data_final: "250 2.0.0 queued".into(),
            data_delay: Duration::ZERO,
            pipelining: true,
            size: None,
            tls: None,
            auth: None,
            no_ehlo: false,
            auth_mechs: "PLAIN LOGIN",
        }
    }
}

impl Script {
    pub fn rcpt_reply(mut self, reply: &str) -> Self {
        let reply = reply.to_string();
        self.rcpt = Arc::new(move |_| reply.clone());
        self
    }
}

/// A message the server accepted (final 2xx).
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
    pub tls: bool,
    pub auth: Option<String>,
}

#[derive(Default)]
pub struct Log {
    pub connections: usize,
    pub messages: Vec<Received>,
    /// Every command line seen (AUTH lines included), for assertions on what was sent.
    pub lines: Vec<String>,
}

#[derive(Clone)]
pub struct SmtpServer {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Log>>,
}

impl SmtpServer {
    pub fn messages(&self) -> Vec<Received> {
        self.log.lock().expect("log").messages.clone()
    }
    pub fn connections(&self) -> usize {
        self.log.lock().expect("log").connections
    }
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().expect("log").lines.clone()
    }
}

/// Starts a scripted server on `addr` (port 0 picks one).
pub async fn start_smtp(addr: SocketAddr, script: Script) -> SmtpServer {
    let listener = TcpListener::bind(addr).await.expect("bind smtp");
    let addr = listener.local_addr().expect("addr");
    let log = Arc::new(Mutex::new(Log::default()));
    let server = SmtpServer {
        addr,
        log: log.clone(),
    };
    let script = Arc::new(script);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            log.lock().expect("log").connections += 1;
            let (script, log) = (script.clone(), log.clone());
            tokio::spawn(async move {
                let _ = serve(tcp, script, log).await;
            });
        }
    });
    server
}

async fn serve(tcp: TcpStream, script: Arc<Script>, log: Arc<Mutex<Log>>) -> std::io::Result<()> {
    let mut plain = BufReader::new(tcp);
    plain
        .get_mut()
        .write_all(format!("{}\r\n", script.greeting).as_bytes())
        .await?;
    if !script.greeting.starts_with('2') {
        return Ok(());
    }
    let upgrade = session(&mut plain, &script, &log, false).await?;
    let (Some(config), true) = (script.tls.clone(), upgrade) else {
        return Ok(());
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let tls = acceptor.accept(plain.into_inner()).await?;
    let mut tls = BufReader::new(tls);
    session(&mut tls, &script, &log, true).await?;
    Ok(())
}

#[derive(Default)]
struct Txn {
    from: Option<String>,
    rcpts: Vec<String>,
}

/// Runs commands until QUIT/EOF (returns false) or an accepted STARTTLS (returns true).
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    script: &Script,
    log: &Arc<Mutex<Log>>,
    tls: bool,
) -> std::io::Result<bool> {
    let mut txn = Txn::default();
    let mut auth: Option<String> = None;
    loop {
        let mut line = String::new();
        if io.read_line(&mut line).await? == 0 {
            return Ok(false);
        }
        let line = line.trim_end().to_string();
        log.lock().expect("log").lines.push(line.clone());
        let upper = line.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") && script.no_ehlo {
            "502 5.5.1 what is EHLO".into()
        } else if upper.starts_with("EHLO") {
            ehlo(script, tls)
        } else if upper.starts_with("HELO") {
            "250 hello".into()
        } else if upper == "STARTTLS" && script.tls.is_some() && !tls {
            io.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await?;
            return Ok(true);
        } else if upper.starts_with("AUTH PLAIN ") {
            let (reply, user) = check_plain(script, &line[11..], tls);
            auth = user.or(auth);
            reply
        } else if upper == "AUTH LOGIN" && tls {
            let (reply, user) = auth_login(io, script).await?;
            auth = user.or(auth);
            reply
        } else if upper.starts_with("MAIL FROM:") {
            txn = Txn {
                from: Some(path(&line[10..])),
                rcpts: vec![],
            };
            "250 2.1.0 ok".into()
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = path(&line[8..]);
            let reply = (script.rcpt)(&rcpt);
            if reply.starts_with('2') {
                txn.rcpts.push(rcpt);
            }
            reply
        } else if upper == "DATA" {
            if txn.from.is_none() || txn.rcpts.is_empty() {
                "554 5.5.1 no valid recipients".into()
            } else {
                io.get_mut().write_all(b"354 go on\r\n").await?;
                let data = read_data(io).await?;
                tokio::time::sleep(script.data_delay).await;
                if script.data_final.starts_with('2') {
                    log.lock().expect("log").messages.push(Received {
                        from: txn.from.take().unwrap_or_default(),
                        rcpts: std::mem::take(&mut txn.rcpts),
                        data,
                        tls,
                        auth: auth.clone(),
                    });
                }
                txn = Txn::default();
                script.data_final.clone()
            }
        } else if upper == "RSET" {
            txn = Txn::default();
            "250 2.0.0 ok".into()
        } else if upper == "QUIT" {
            io.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(false);
        } else {
            "502 5.5.2 unknown".into()
        };
        io.get_mut()
            .write_all(format!("{reply}\r\n").as_bytes())
            .await?;
    }
}

fn ehlo(script: &Script, tls: bool) -> String {
    let mut lines = vec!["test.server".to_string()];
    if script.pipelining {
        lines.push("PIPELINING".into());
    }
    if let Some(size) = script.size {
        lines.push(format!("SIZE {size}"));
    }
    lines.push("8BITMIME".into());
    if script.tls.is_some() && !tls {
        lines.push("STARTTLS".into());
    }
    if script.auth.is_some() && tls {
        lines.push(format!("AUTH {}", script.auth_mechs));
    }
    let last = lines.len() - 1;
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| format!("250{}{l}", if i == last { ' ' } else { '-' }))
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn check_plain(script: &Script, token: &str, tls: bool) -> (String, Option<String>) {
    use base64::Engine;
    let Some((user, pass)) = &script.auth else {
        return ("502 5.5.1 no auth".into(), None);
    };
    if !tls {
        return ("538 5.7.11 encryption required".into(), None);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .unwrap_or_default();
    let expected = format!("\0{user}\0{pass}").into_bytes();
    if decoded == expected {
        ("235 2.7.0 ok".into(), Some(user.clone()))
    } else {
        ("535 5.7.8 bad credentials".into(), None)
    }
}

/// The AUTH LOGIN exchange: two base64 challenges, user then password.
async fn auth_login<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    script: &Script,
) -> std::io::Result<(String, Option<String>)> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut answers = Vec::new();
    for challenge in ["334 VXNlcm5hbWU6\r\n", "334 UGFzc3dvcmQ6\r\n"] {
        io.get_mut().write_all(challenge.as_bytes()).await?;
        let mut line = String::new();
        io.read_line(&mut line).await?;
        answers.push(b64.decode(line.trim()).unwrap_or_default());
    }
    let Some((user, pass)) = &script.auth else {
        return Ok(("535 5.7.8 no".into(), None));
    };
    if answers[0] == user.as_bytes() && answers[1] == pass.as_bytes() {
        Ok(("235 2.7.0 ok".into(), Some(user.clone())))
    } else {
        Ok(("535 5.7.8 bad credentials".into(), None))
    }
}

fn path(arg: &str) -> String {
    let arg = arg.trim();
    let inner = arg.strip_prefix('<').unwrap_or(arg);
    inner.split('>').next().unwrap_or("").to_string()
}

/// Reads DATA content up to CRLF.CRLF, undoing dot-stuffing.
async fn read_data<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut line = Vec::new();
        if io.read_until(b'\n', &mut line).await? == 0 {
            return Err(std::io::Error::other("eof in data"));
        }
        if line == b".\r\n" {
            return Ok(out);
        }
        let start = usize::from(line.starts_with(b".."));
        out.extend_from_slice(&line[start..]);
    }
}

/// A port that is free on every given address (best effort: bind, read, release).
pub async fn common_port(ips: &[Ipv4Addr]) -> u16 {
    for _ in 0..50 {
        let Ok(first) = TcpListener::bind((ips[0], 0)).await else {
            continue;
        };
        let port = first.local_addr().expect("addr").port();
        let mut ok = true;
        for ip in &ips[1..] {
            ok &= TcpListener::bind((*ip, port)).await.is_ok();
        }
        drop(first);
        if ok {
            return port;
        }
    }
    panic!("no common free port");
}

// ---------------------------------------------------------------- TLS

/// A test CA and a server certificate it signed for `names`.
pub struct TestPki {
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
}

pub fn test_pki(names: &[&str]) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "relayward test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let leaf = CertificateParams::new(names)
        .expect("leaf params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf cert");
    let key_der =
        rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).expect("key der");
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key_der)
    .expect("server config");
    TestPki {
        ca_pem: ca_cert.pem(),
        server: Arc::new(server),
    }
}

// ---------------------------------------------------------------- relay side

/// The local mailboxes of the test relay's local domain `local.test`.
const LOCAL_MAILBOXES: [&str; 6] = ["postmaster", "alice", "gina", "relay", "u", "x"];

pub struct Relay {
    pub dir: tempfile::TempDir,
    pub queue: Arc<Spool>,
    /// Where recipients go, as the session would have routed them at RCPT.
    router: Mutex<Arc<Router>>,
}

impl Relay {
    /// A relay for `local.test` that delivers remote mail by MX.
    pub fn new() -> Self {
        Self::routed(Vec::new(), false)
    }

    /// A relay whose remote mail goes to the smart host.
    pub fn via_smarthost() -> Self {
        Self::routed(Vec::new(), true)
    }

    /// A relay with `[[route]]` domains.
    pub fn with_routes(routes: Vec<(&str, RouteTarget)>) -> Self {
        let routes = routes
            .into_iter()
            .map(|(d, t)| (d.to_string(), t))
            .collect();
        Self::routed(routes, false)
    }

    fn routed(routes: Vec<(String, RouteTarget)>, smarthost: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = SpoolOptions {
            min_free_bytes: 0,
            ..SpoolOptions::default()
        };
        let queue = Arc::new(Spool::open(dir.path().join("queue"), options).expect("spool"));
        let mailboxes = LOCAL_MAILBOXES.iter().map(|m| format!("{m}@local.test"));
        let router = Router::new(["local.test".to_string()], mailboxes, routes, smarthost);
        Self {
            dir,
            queue,
            router: Mutex::new(Arc::new(router)),
        }
    }

    pub fn router(&self) -> Arc<Router> {
        Arc::clone(&self.router.lock().expect("router"))
    }

    /// A runner with `config` and this relay's routing table.
    pub fn runner(&self, config: DeliveryConfig) -> Runner {
        let context = DeliveryContext::new(config, self.router()).expect("delivery context");
        Runner::with_context(self.dyn_queue(), context)
    }

    pub fn mail_root(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    pub fn dyn_queue(&self) -> Arc<dyn Queue> {
        self.queue.clone()
    }

    /// A configuration for tests: short timeouts and retries, the test DNS, no cache.
    pub fn config(&self, dns: Option<SocketAddr>, mx_port: u16) -> DeliveryConfig {
        let mut c = DeliveryConfig::new("relay.test", self.mail_root());
        c.mx_port = mx_port;
        c.nameservers = dns.into_iter().collect();
        c.dns_cache_size = 0;
        c.dns_timeout = Duration::from_secs(2);
        c.timeouts = Timeouts::uniform(Duration::from_secs(5));
        c.retry = RetrySchedule::new(vec![Duration::from_secs(1)], 0.0);
        c.shutdown_grace = Duration::from_millis(100);
        c
    }

    pub async fn enqueue(&self, sender: &str, rcpts: &[&str], body: &str) -> MessageId {
        let content = format!(
            "From: <{sender}>\r\nTo: {}\r\nSubject: test message\r\nMessage-ID: <t@relay.test>\r\n\r\n{body}\r\n",
            rcpts.join(", ")
        );
        let router = self.router();
        let recipients = rcpts
            .iter()
            .map(|rcpt| {
                let routed = router
                    .route_address(rcpt)
                    .expect("a test address")
                    .expect("a routable test address");
                NewRecipient {
                    address: routed.address,
                    route: routed.route,
                }
            })
            .collect();
        self.queue
            .enqueue(NewMessage {
                sender: sender.into(),
                recipients,
                content: content.into_bytes(),
                client_ip: "127.0.0.1".into(),
                auth_login: None,
                origin: relayward_queue::Origin::Trusted,
            })
            .await
            .expect("enqueue")
    }

    /// Messages in a local Maildir's `new/`.
    pub fn maildir(&self, domain: &str, local: &str) -> Vec<Vec<u8>> {
        read_maildir(&self.mail_root().join(domain).join(local).join("new"))
    }
}

pub fn read_maildir(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path()).ok())
        .collect()
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}

pub fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

pub fn sock(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

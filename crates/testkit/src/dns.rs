//! A test DNS server on loopback (UDP), authoritative for a [`Zone`] written in a few lines.
//!
//! Built on hickory-proto's message codec rather than hickory-server's authority API: tests
//! want answers an authoritative zone cannot give on demand (SERVFAIL for one name), a zone in
//! a few lines, and a record of the questions asked. It answers the records asked for, NOERROR
//! with no answers for a name that exists with other types, NXDOMAIN otherwise (with an SOA whose
//! minimum is 0, so a resolver may not cache the negative answer, RFC 2308).
//!
//! The server runs on a thread of its own, so blocking and async tests use it alike; it lives
//! until the test process ends.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// Records by (lower-case name with a final dot, type), and names that answer SERVFAIL.
#[derive(Default, Clone)]
pub struct Zone {
    records: HashMap<(String, RecordType), Vec<RData>>,
    servfail: Vec<String>,
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.').to_ascii_lowercase())
}

fn name(text: &str) -> Name {
    Name::from_ascii(fqdn(text)).expect("a test DNS name")
}

impl Zone {
    pub fn new() -> Self {
        Self::default()
    }

    /// `domain MX preference exchange`.
    pub fn mx(mut self, domain: &str, preference: u16, exchange: &str) -> Self {
        let mx = MX::new(preference, name(exchange));
        self.add(domain, RecordType::MX, RData::MX(mx));
        self
    }

    /// RFC 7505 null MX: `domain MX 0 .`.
    pub fn null_mx(mut self, domain: &str) -> Self {
        self.add(domain, RecordType::MX, RData::MX(MX::new(0, Name::root())));
        self
    }

    pub fn a(mut self, name: &str, ip: Ipv4Addr) -> Self {
        self.add(name, RecordType::A, RData::A(A(ip)));
        self
    }

    pub fn aaaa(mut self, name: &str, ip: Ipv6Addr) -> Self {
        self.add(name, RecordType::AAAA, RData::AAAA(AAAA(ip)));
        self
    }

    /// `name TXT "text"` (one string; long texts are split into 255-octet strings).
    pub fn txt(mut self, name: &str, text: &str) -> Self {
        let strings: Vec<String> = text
            .as_bytes()
            .chunks(255)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        self.add(name, RecordType::TXT, RData::TXT(TXT::new(strings)));
        self
    }

    /// Every question about `name` answers SERVFAIL (a temporary DNS failure).
    pub fn servfail(mut self, name: &str) -> Self {
        self.servfail.push(fqdn(name));
        self
    }

    fn add(&mut self, name: &str, rtype: RecordType, data: RData) {
        self.records
            .entry((fqdn(name), rtype))
            .or_default()
            .push(data);
    }

    fn exists(&self, name: &str) -> bool {
        self.records.keys().any(|(n, _)| n == name)
    }
}

/// A running server: its address and every question it was asked (`name TYPE`).
#[derive(Clone)]
pub struct DnsServer {
    pub addr: SocketAddr,
    queries: Arc<Mutex<Vec<String>>>,
}

impl DnsServer {
    /// Binds `127.0.0.1:0` (UDP) and answers from `zone`.
    pub fn start(zone: Zone) -> DnsServer {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), zone)
    }

    /// Binds `ip:0` (a loopback address) and answers from `zone`.
    pub fn start_on(ip: impl Into<IpAddr>, zone: Zone) -> DnsServer {
        let socket = UdpSocket::bind((ip.into(), 0)).expect("bind test DNS");
        let addr = socket.local_addr().expect("DNS address");
        let queries = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&queries);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                if let Some(q) = query.queries.first() {
                    let question = format!("{} {}", fqdn(&q.name().to_ascii()), q.query_type());
                    seen.lock().expect("queries").push(question);
                }
                if let Some(bytes) = respond(&zone, &query) {
                    let _ = socket.send_to(&bytes, peer);
                }
            }
        });
        DnsServer { addr, queries }
    }

    /// Questions asked so far, e.g. `"mx1.order.test. A"`.
    pub fn queries(&self) -> Vec<String> {
        self.queries.lock().expect("queries").clone()
    }
}

fn respond(zone: &Zone, query: &Message) -> Option<Vec<u8>> {
    let question = query.queries.first()?.clone();
    let name = fqdn(&question.name().to_ascii());
    let mut response = Message::response(query.metadata.id, query.metadata.op_code);
    response.metadata.message_type = MessageType::Response;
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(question.clone());
    if zone.servfail.contains(&name) {
        response.metadata.response_code = ResponseCode::ServFail;
        return response.to_vec().ok();
    }
    match zone.records.get(&(name.clone(), question.query_type())) {
        Some(list) => {
            for data in list {
                let record = Record::from_rdata(question.name().clone(), 60, data.clone());
                response.add_answer(record);
            }
        }
        None => {
            if !zone.exists(&name) {
                response.metadata.response_code = ResponseCode::NXDomain;
            }
            response.add_authority(soa());
        }
    }
    response.to_vec().ok()
}

fn soa() -> Record {
    let soa = SOA::new(name("ns.test"), name("hostmaster.test"), 1, 60, 60, 600, 0);
    Record::from_rdata(name("test"), 60, RData::SOA(soa))
}

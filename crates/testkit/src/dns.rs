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
//!
//! DNSSEC ([`Zone::signed_by`]): the whole zone is the root zone `.`, signed on the fly with a
//! test key ([`DnssecKey`], whose [`DnssecKey::trust_anchor`] a validating resolver is given)
//! for queries with the DO bit: every answer RRset gets its RRSIG and `. DNSKEY` is served.
//! [`Zone::insecure_delegation`] cuts an unsigned zone out of it the way a real signed parent
//! does: `NS` at the cut and a signed NSEC proving there is no DS. Limitation: negative answers
//! inside the signed part carry no NSEC proof (a validator calls them bogus), so tests put
//! only positive answers there.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::dnssec::crypto::Ed25519SigningKey;
use hickory_proto::dnssec::rdata::{DNSKEY, DNSSECRData, NSEC, RRSIG, SigInput};
use hickory_proto::dnssec::{DnssecSigner, SigningKey, TBS};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_proto::rr::rdata::{A, AAAA, MX, NS, SOA, TLSA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, SerialNumber};

/// Records by (lower-case name with a final dot, type), and names that answer SERVFAIL.
#[derive(Default, Clone)]
pub struct Zone {
    records: HashMap<(String, RecordType), Vec<RData>>,
    servfail: Vec<String>,
    /// Signs the zone (as the root zone) for DO queries.
    signer: Option<Arc<DnssecSigner>>,
    /// Unsigned zones cut out of the signed one.
    insecure: Vec<String>,
}

/// A test zone-signing key for the root zone `.` (Ed25519).
#[derive(Clone)]
pub struct DnssecKey {
    signer: Arc<DnssecSigner>,
}

impl DnssecKey {
    pub fn generate() -> DnssecKey {
        let pkcs8 = Ed25519SigningKey::generate_pkcs8().expect("DNSSEC key");
        let key = Ed25519SigningKey::from_pkcs8(&pkcs8).expect("DNSSEC key");
        let public = key.to_public_key().expect("public key");
        let dnskey = DNSKEY::from_key(&public);
        let signer = DnssecSigner::new(
            dnskey,
            Box::new(key),
            Name::root(),
            Duration::from_secs(3600),
        );
        DnssecKey {
            signer: Arc::new(signer),
        }
    }

    /// The trust anchor naming this key, in the zone-file form resolvers read
    /// (`. IN DNSKEY 257 3 15 …`).
    pub fn trust_anchor(&self) -> String {
        format!(". IN DNSKEY {}\n", self.signer.dnskey())
    }
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

    /// `name TLSA usage selector matching data` (RFC 6698), e.g. `_25._tcp.mx.example.test`.
    pub fn tlsa(
        mut self,
        name: &str,
        usage: u8,
        selector: u8,
        matching: u8,
        data: Vec<u8>,
    ) -> Self {
        let tlsa = TLSA::new(
            CertUsage::from(usage),
            Selector::from(selector),
            Matching::from(matching),
            data,
        );
        self.add(name, RecordType::TLSA, RData::TLSA(tlsa));
        self
    }

    /// Signs the zone, as the root zone `.`, with `key`.
    pub fn signed_by(mut self, key: &DnssecKey) -> Self {
        self.signer = Some(Arc::clone(&key.signer));
        self
    }

    /// Makes `name` and everything below it an unsigned zone delegated from the signed one.
    pub fn insecure_delegation(mut self, name: &str) -> Self {
        let ns = NS(self::name(&format!("ns.{name}")));
        self.add(name, RecordType::NS, RData::NS(ns));
        self.insecure.push(fqdn(name));
        self
    }

    /// The unsigned zone `name` is in, if any.
    fn insecure_zone(&self, name: &str) -> Option<&str> {
        self.insecure
            .iter()
            .find(|cut| name == cut.as_str() || name.ends_with(&format!(".{cut}")))
            .map(String::as_str)
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
    let dnssec_ok = query.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
    let insecure = zone.insecure_zone(&name);
    // Signs an RRset when the zone is signed, the name is in its signed part and DO is set.
    let signer = zone
        .signer
        .as_deref()
        .filter(|_| dnssec_ok && insecure.is_none());
    let qtype = question.query_type();
    if let (Some(key), ".", RecordType::DNSKEY) = (zone.signer.as_deref(), name.as_str(), qtype) {
        let dnskey = Record::from_rdata(
            Name::root(),
            3600,
            RData::DNSSEC(DNSSECRData::DNSKEY(key.dnskey().clone())),
        );
        let rrsig = sign(key, std::slice::from_ref(&dnskey));
        response.add_answer(dnskey);
        response.add_answers(rrsig);
        return response.to_vec().ok();
    }
    if let (Some(key), RecordType::DS) = (zone.signer.as_deref(), qtype)
        && zone.insecure.contains(&name)
    {
        // The signed parent's proof that the delegation has no DS: NSEC at the cut, listing
        // only NS.
        let nsec = NSEC::new_cover_self(Name::root(), [RecordType::NS]);
        let nsec = Record::from_rdata(
            question.name().clone(),
            60,
            RData::DNSSEC(DNSSECRData::NSEC(nsec)),
        );
        let soa = root_soa();
        for record in [soa, nsec] {
            let rrsig = sign(key, std::slice::from_ref(&record));
            response.add_authority(record);
            if let Some(sig) = rrsig {
                response.add_authority(sig);
            }
        }
        return response.to_vec().ok();
    }
    match zone.records.get(&(name.clone(), qtype)) {
        Some(list) => {
            let records: Vec<Record> = list
                .iter()
                .map(|data| Record::from_rdata(question.name().clone(), 60, data.clone()))
                .collect();
            let rrsig = signer.and_then(|key| sign(key, &records));
            response.add_answers(records);
            response.add_answers(rrsig);
        }
        None => {
            if !zone.exists(&name) {
                response.metadata.response_code = ResponseCode::NXDomain;
            }
            let soa = match (insecure, zone.signer.is_some()) {
                (Some(cut), _) => soa_at(cut),
                (None, true) => root_soa(),
                (None, false) => soa(),
            };
            let rrsig = signer.and_then(|key| sign(key, std::slice::from_ref(&soa)));
            response.add_authority(soa);
            if let Some(sig) = rrsig {
                response.add_authority(sig);
            }
        }
    }
    response.to_vec().ok()
}

/// The RRSIG of one RRset (all `records` have the same name and type), valid from an hour ago
/// to an hour from now.
fn sign(key: &DnssecSigner, records: &[Record]) -> Option<Record> {
    let first = records.first()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs() as u32;
    let input = SigInput {
        type_covered: first.record_type(),
        algorithm: key.key().algorithm(),
        num_labels: first.name.num_labels(),
        original_ttl: first.ttl,
        sig_expiration: SerialNumber::new(now.wrapping_add(3600)),
        sig_inception: SerialNumber::new(now.wrapping_sub(3600)),
        key_tag: key.calculate_key_tag().ok()?,
        signer_name: Name::root(),
    };
    let tbs = TBS::from_input(&first.name, DNSClass::IN, &input, records.iter()).ok()?;
    let signature = key.sign(&tbs).ok()?;
    let rrsig = RRSIG::from_sig(input, signature);
    Some(Record::from_rdata(
        first.name.clone(),
        first.ttl,
        RData::DNSSEC(DNSSECRData::RRSIG(rrsig)),
    ))
}

fn root_soa() -> Record {
    soa_at(".")
}

/// The SOA of the zone whose apex is `apex`.
fn soa_at(apex: &str) -> Record {
    let soa = SOA::new(name("ns.test"), name("hostmaster.test"), 1, 60, 60, 600, 0);
    let apex = if apex == "." {
        Name::root()
    } else {
        name(apex)
    };
    Record::from_rdata(apex, 60, RData::SOA(soa))
}

fn soa() -> Record {
    let soa = SOA::new(name("ns.test"), name("hostmaster.test"), 1, 60, 60, 600, 0);
    Record::from_rdata(name("test"), 60, RData::SOA(soa))
}

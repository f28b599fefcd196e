//! DANE (RFC 7672) on MX delivery, end to end on loopback: a DNSSEC-signed test zone served by
//! the test DNS server (signed on the fly with a test key, which the relay is given as its
//! `[dns] trust_anchor`), TLSA records for scripted MX servers, the real spool and the runner.
//! Each test uses its own 127.N.0.0/16 addresses.

mod support;

use std::net::Ipv4Addr;
use std::sync::Arc;

use relayward_delivery::config::TlsPolicyMode;
use relayward_delivery::tls_policy::{PolicyKind, TlsResult};
use relayward_delivery::{DeliveryConfig, Runner};
use relayward_queue::{MessageId, Queue, RecipientStatus};
use relayward_testkit::dns::DnssecKey;
use relayward_testkit::net::listeners_on_one_port;
use relayward_testkit::pki::TestCa;
use support::*;

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

/// DNS at .1 (signed with `key` unless a test says otherwise), the MX host at .2.
struct World {
    relay: Relay,
    key: DnssecKey,
    anchor_file: std::path::PathBuf,
    net: u8,
    port: u16,
    listener: Option<std::net::TcpListener>,
}

impl World {
    fn new(net: u8) -> World {
        let relay = Relay::new();
        let key = DnssecKey::generate();
        let anchor_file = relay.dir.path().join("trust-anchor");
        std::fs::write(&anchor_file, key.trust_anchor()).expect("write trust anchor");
        let (port, mut listeners) = listeners_on_one_port(&[ip(127, net, 0, 2)]);
        World {
            relay,
            key,
            anchor_file,
            net,
            port,
            listener: listeners.pop(),
        }
    }

    fn ip(&self, host: u8) -> Ipv4Addr {
        ip(127, self.net, 0, host)
    }

    /// `domain` MX `mx.domain` at .2, with `tlsa` at `_PORT._tcp.mx.domain`.
    fn zone(&self, domain: &str, tlsa: &[(u8, u8, u8, Vec<u8>)]) -> Zone {
        let mx = format!("mx.{domain}");
        let mut zone = Zone::default().mx(domain, 10, &mx).a(&mx, self.ip(2));
        for (usage, selector, matching, data) in tlsa {
            zone = zone.tlsa(
                &format!("_{}._tcp.{mx}", self.port),
                *usage,
                *selector,
                *matching,
                data.clone(),
            );
        }
        zone
    }

    /// Starts the DNS server and the MX (with `tls`, or without STARTTLS); the runner.
    fn start(
        &mut self,
        zone: Zone,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> (SmtpServer, Runner) {
        let dns = DnsServer::start_on(self.ip(1), zone).addr;
        let listener = self.listener.take().expect("one MX per world");
        let mx = relayward_testkit::smtp_server::start_smtp_on(
            listener,
            Script {
                tls,
                ..Script::default()
            },
        );
        let runner = self.relay.runner(self.config(dns));
        (mx, runner)
    }

    fn config(&self, dns: std::net::SocketAddr) -> DeliveryConfig {
        let mut config = self.relay.config(Some(dns), self.port);
        config.tls_policy = TlsPolicyMode::MtaStsDane;
        config.trust_anchor = Some(self.anchor_file.clone());
        config
    }

    async fn send(&self, rcpt: &str) -> MessageId {
        self.relay.enqueue("alice@local.test", &[rcpt], "hi").await
    }

    async fn pending_error(&self, id: &MessageId) -> String {
        let message = self.relay.queue.get(id).await.expect("still queued");
        let r = &message.recipients[0];
        assert_eq!(r.status, RecipientStatus::Pending, "{r:?}");
        r.last_error.clone().unwrap_or_default()
    }
}

fn outcomes(runner: &Runner) -> Vec<(PolicyKind, TlsResult)> {
    runner
        .tls_outcomes()
        .iter()
        .map(|o| (o.policy, o.result))
        .collect()
}

#[tokio::test]
async fn a_matching_dane_ee_record_delivers_to_a_self_signed_certificate() {
    let mut world = World::new(50);
    // No CA vouches for it: the signed TLSA record does (3 1 1: the key's SHA-256).
    let leaf = TestCa::new().leaf(&["some.other.name"]);
    let zone = world
        .zone("dane.test", &[(3, 1, 1, sha256(&leaf.spki_der))])
        .signed_by(&world.key);
    let (mx, runner) = world.start(zone, Some(leaf.server));
    world.send("bob@dane.test").await;

    runner.run_once().await;

    let got = mx.messages();
    assert_eq!(got.len(), 1, "{:?}", runner.tls_outcomes());
    assert!(got[0].tls);
    assert_eq!(outcomes(&runner), [(PolicyKind::Dane, TlsResult::Verified)]);
}

#[tokio::test]
async fn a_mismatching_tlsa_record_defers_and_nothing_goes_in_clear() {
    let mut world = World::new(51);
    let presented = TestCa::new().leaf(&["mx.dane.test"]);
    let published = TestCa::new().leaf(&["mx.dane.test"]);
    let zone = world
        .zone("dane.test", &[(3, 1, 1, sha256(&published.spki_der))])
        .signed_by(&world.key);
    let (mx, runner) = world.start(zone, Some(presented.server));
    let id = world.send("bob@dane.test").await;

    runner.run_once().await;

    let error = world.pending_error(&id).await;
    assert!(error.contains("TLS handshake with mx.dane.test"), "{error}");
    assert!(mx.messages().is_empty());
    assert!(
        !mx.lines().iter().any(|l| l.starts_with("MAIL")),
        "no clear-text retry: {:?}",
        mx.lines()
    );
    assert_eq!(outcomes(&runner), [(PolicyKind::Dane, TlsResult::Failed)]);
}

#[tokio::test]
async fn a_host_with_tlsa_records_but_no_starttls_gets_no_mail() {
    let mut world = World::new(52);
    let leaf = TestCa::new().leaf(&["mx.dane.test"]);
    let zone = world
        .zone("dane.test", &[(3, 1, 1, sha256(&leaf.spki_der))])
        .signed_by(&world.key);
    let (mx, runner) = world.start(zone, None);
    let id = world.send("bob@dane.test").await;

    runner.run_once().await;

    let error = world.pending_error(&id).await;
    assert!(error.contains("does not offer STARTTLS"), "{error}");
    assert!(!mx.lines().iter().any(|l| l.starts_with("MAIL")));
    assert_eq!(
        runner.tls_outcomes()[0].result_type,
        Some("starttls-not-supported")
    );
}

#[tokio::test]
async fn dane_ta_anchors_a_chain_that_must_name_the_mx_host() {
    // 2 0 1: the CA certificate's SHA-256; the server sends it after its own.
    let ca = TestCa::new();
    let mut world = World::new(53);
    let zone = world
        .zone("dane.test", &[(2, 0, 1, sha256(ca.ca_der.as_ref()))])
        .signed_by(&world.key);
    let (mx, runner) = world.start(zone, Some(ca.leaf(&["mx.dane.test"]).chained));
    world.send("bob@dane.test").await;
    runner.run_once().await;
    assert_eq!(mx.messages().len(), 1, "{:?}", runner.tls_outcomes());
    assert_eq!(outcomes(&runner), [(PolicyKind::Dane, TlsResult::Verified)]);

    // The same anchor, a certificate for another name: refused.
    let mut world = World::new(54);
    let zone = world
        .zone("dane.test", &[(2, 0, 1, sha256(ca.ca_der.as_ref()))])
        .signed_by(&world.key);
    let (mx, runner) = world.start(zone, Some(ca.leaf(&["elsewhere.test"]).chained));
    let id = world.send("bob@dane.test").await;
    runner.run_once().await;
    assert!(mx.messages().is_empty());
    world.pending_error(&id).await;
    assert_eq!(outcomes(&runner), [(PolicyKind::Dane, TlsResult::Failed)]);
}

#[tokio::test]
async fn an_unsigned_zone_falls_back_to_opportunistic_tls() {
    let mut world = World::new(55);
    // plain.test is an insecure delegation from the signed root: its TLSA record (which
    // would not match) is not authenticated, so it is not used.
    let leaf = TestCa::new().leaf(&["mx.plain.test"]);
    let zone = world
        .zone("plain.test", &[(3, 1, 1, vec![0; 32])])
        .insecure_delegation("plain.test")
        .signed_by(&world.key);
    let (mx, runner) = world.start(zone, Some(leaf.server));
    world.send("bob@plain.test").await;

    runner.run_once().await;

    let got = mx.messages();
    assert_eq!(got.len(), 1, "{:?}", runner.tls_outcomes());
    assert!(got[0].tls, "STARTTLS, unauthenticated");
    assert_eq!(
        outcomes(&runner),
        [(PolicyKind::Opportunistic, TlsResult::Encrypted)]
    );
}

#[tokio::test]
async fn without_dnssec_through_the_resolver_dane_is_not_applied() {
    // The zone is not signed at all (a resolver that strips DNSSEC looks the same): the root
    // keys cannot be validated, so TLSA records are not trusted and not even asked for.
    let mut world = World::new(56);
    let leaf = TestCa::new().leaf(&["mx.dane.test"]);
    let zone = world.zone("dane.test", &[(3, 1, 1, vec![0; 32])]);
    let (mx, runner) = world.start(zone, Some(leaf.server));
    world.send("bob@dane.test").await;

    runner.run_once().await;

    assert_eq!(mx.messages().len(), 1);
    assert_eq!(
        outcomes(&runner),
        [(PolicyKind::Opportunistic, TlsResult::Encrypted)]
    );
}

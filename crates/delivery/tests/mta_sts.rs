//! MTA-STS (RFC 8461) and `[[tls_policy]]` on MX delivery, end to end on loopback: a test DNS
//! server with the `_mta-sts` TXT records, an HTTPS server with a private CA serving the
//! policies as `mta-sts.DOMAIN`, scripted MX servers with certificates from that CA (or
//! not), the real spool and the runner. Each test uses its own 127.N.0.0/16 addresses.

mod support;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use relayward_config::Live;
use relayward_delivery::config::{DomainTlsMode, DomainTlsPolicy, TlsPolicyMode};
use relayward_delivery::tls_policy::{PolicyKind, TlsResult};
use relayward_delivery::{DeliveryConfig, DeliveryContext, Runner};
use relayward_queue::{Queue, RecipientStatus};
use relayward_testkit::https::{HttpsServer, Page};
use relayward_testkit::net::listeners_on_one_port;
use relayward_testkit::pki::TestCa;
use support::*;

const ENFORCE_GOOD_MX: &str =
    "version: STSv1\r\nmode: enforce\r\nmx: mx.good.test\r\nmax_age: 86400\r\n";

/// One test's world: DNS at .1, MX hosts at .2 (`mx.good.test`) and .3 (`mx.other.test`),
/// policy server at .4; everything for `good.test` unless a test says otherwise.
struct World {
    relay: Relay,
    ca: TestCa,
    ca_file: std::path::PathBuf,
    net: u8,
    dns: Option<std::net::SocketAddr>,
    https: Option<HttpsServer>,
    https_port: u16,
}

impl World {
    fn new(net: u8) -> World {
        let relay = Relay::new();
        let ca = TestCa::new();
        let ca_file = relay.dir.path().join("policy-ca.pem");
        ca.write(&ca_file);
        World {
            relay,
            ca,
            ca_file,
            net,
            dns: None,
            https: None,
            https_port: 0,
        }
    }

    fn ip(&self, host: u8) -> Ipv4Addr {
        ip(127, self.net, 0, host)
    }

    /// Serves `policies` (domain → policy text) as `https://mta-sts.DOMAIN/…` at .4.
    fn serve_policies(&mut self, policies: &[(&str, &str)]) {
        let names: Vec<String> = policies
            .iter()
            .map(|(d, _)| format!("mta-sts.{d}"))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let leaf = self.ca.leaf(&names);
        let (port, mut listeners) = listeners_on_one_port(&[self.ip(4)]);
        let pages: HashMap<String, Page> = policies
            .iter()
            .map(|(d, text)| (format!("mta-sts.{d}"), Page::policy(text)))
            .collect();
        self.https = Some(HttpsServer::spawn(listeners.remove(0), leaf.server, pages));
        self.https_port = port;
    }

    /// The zone every test starts from: `good.test` MX `mx.good.test` (.2), with its
    /// `_mta-sts` record (id `id`) and `mta-sts.good.test` at .4.
    fn zone(&self, mx: &str, id: &str) -> Zone {
        Zone::default()
            .mx("good.test", 10, mx)
            .a("mx.good.test", self.ip(2))
            .a("mx.other.test", self.ip(3))
            .txt("_mta-sts.good.test", &format!("v=STSv1; id={id};"))
            .a("mta-sts.good.test", self.ip(4))
    }

    fn start_dns(&mut self, zone: Zone) {
        self.dns = Some(DnsServer::start_on(self.ip(1), zone).addr);
    }

    fn config(&self, mx_port: u16) -> DeliveryConfig {
        let mut config = self.relay.config(self.dns, mx_port);
        config.tls_policy = TlsPolicyMode::MtaStsDane;
        config.tls_policy_ca_file = Some(self.ca_file.clone());
        config.mta_sts_port = self.https_port;
        config
    }

    /// A scripted MX at .2 and .3 on one port, each with `tls` (or no STARTTLS).
    async fn mx_servers(
        &self,
        tls_good: Option<Arc<rustls::ServerConfig>>,
        tls_other: Option<Arc<rustls::ServerConfig>>,
    ) -> (u16, SmtpServer, SmtpServer) {
        let (port, mut listeners) = listeners_on_one_port(&[self.ip(2), self.ip(3)]);
        let other = listeners.pop().expect("listener");
        let good = listeners.pop().expect("listener");
        let script = |tls| Script {
            tls,
            ..Script::default()
        };
        (
            port,
            start_smtp_on_async(good, script(tls_good)),
            start_smtp_on_async(other, script(tls_other)),
        )
    }

    /// The certificate `mx.good.test` presents when it is set up right.
    fn good_certificate(&self) -> Arc<rustls::ServerConfig> {
        self.ca.leaf(&["mx.good.test"]).server
    }
}

fn start_smtp_on_async(listener: std::net::TcpListener, script: Script) -> SmtpServer {
    relayward_testkit::smtp_server::start_smtp_on(listener, script)
}

async fn status_of(
    relay: &Relay,
    id: &relayward_queue::MessageId,
) -> Option<(RecipientStatus, String)> {
    let message = relay.queue.get(id).await.ok()?;
    let r = &message.recipients[0];
    Some((r.status, r.last_error.clone().unwrap_or_default()))
}

fn outcomes(runner: &Runner) -> Vec<(PolicyKind, TlsResult, String)> {
    runner
        .tls_outcomes()
        .into_iter()
        .map(|o| (o.policy, o.result, o.host))
        .collect()
}

#[tokio::test]
async fn enforce_with_a_matching_mx_and_a_valid_certificate_delivers_over_verified_tls() {
    let mut world = World::new(40);
    world.serve_policies(&[("good.test", ENFORCE_GOOD_MX)]);
    world.start_dns(world.zone("mx.good.test", "1"));
    let (port, good, _) = world.mx_servers(Some(world.good_certificate()), None).await;
    let runner = world.relay.runner(world.config(port));
    world
        .relay
        .enqueue("alice@local.test", &["bob@good.test"], "one")
        .await;
    world
        .relay
        .enqueue("alice@local.test", &["carol@good.test"], "two")
        .await;

    runner.run_once().await;

    let got = good.messages();
    assert_eq!(got.len(), 2, "both delivered");
    assert!(got.iter().all(|m| m.tls), "over TLS");
    assert!(world.relay.queue.list().await.expect("list").is_empty());
    assert!(
        outcomes(&runner).iter().all(|o| *o
            == (
                PolicyKind::MtaSts,
                TlsResult::Verified,
                "mx.good.test".into()
            )),
        "{:?}",
        runner.tls_outcomes()
    );
    let https = world.https.as_ref().expect("policy server");
    assert_eq!(
        https.requests(),
        ["mta-sts.good.test /.well-known/mta-sts.txt"],
        "fetched once, then cached (same id)"
    );
}

#[tokio::test]
async fn enforce_with_an_mx_the_policy_does_not_name_defers_without_connecting() {
    let mut world = World::new(41);
    world.serve_policies(&[("good.test", ENFORCE_GOOD_MX)]);
    // An attacker's MX record: a host of their own, with a certificate that is valid for it.
    world.start_dns(world.zone("mx.other.test", "1"));
    let other_cert = world.ca.leaf(&["mx.other.test"]).server;
    let (port, _, other) = world.mx_servers(None, Some(other_cert)).await;
    let runner = world.relay.runner(world.config(port));
    let id = world
        .relay
        .enqueue("alice@local.test", &["bob@good.test"], "hi")
        .await;

    runner.run_once().await;

    let (status, error) = status_of(&world.relay, &id).await.expect("still queued");
    assert_eq!(status, RecipientStatus::Pending, "deferred, not bounced");
    assert!(
        error.contains("not named by the MTA-STS policy of good.test"),
        "{error}"
    );
    assert!(
        error.starts_with(
            "TLS policy=mta-sts result=failed host=mx.other.test type=validation-failure"
        ),
        "the queue entry keeps the outcome: {error}"
    );
    assert_eq!(other.connections(), 0, "the unlisted MX is never contacted");
    assert_eq!(
        outcomes(&runner),
        [(
            PolicyKind::MtaSts,
            TlsResult::Failed,
            "mx.other.test".into()
        )]
    );
}

#[tokio::test]
async fn enforce_never_falls_back_to_clear_text() {
    let mut world = World::new(42);
    world.serve_policies(&[("good.test", ENFORCE_GOOD_MX)]);
    world.start_dns(world.zone("mx.good.test", "1"));
    // First a certificate for another name (from the right CA), then no STARTTLS at all.
    let wrong_name = world.ca.leaf(&["mx.elsewhere.test"]).server;
    let (port, good, _) = world.mx_servers(Some(wrong_name), None).await;
    let runner = world.relay.runner(world.config(port));
    let id = world
        .relay
        .enqueue("alice@local.test", &["bob@good.test"], "hi")
        .await;

    runner.run_once().await;

    let (status, error) = status_of(&world.relay, &id).await.expect("still queued");
    assert_eq!(status, RecipientStatus::Pending);
    assert!(
        error.contains("TLS handshake") && error.contains("not valid for name"),
        "{error}"
    );
    assert!(good.messages().is_empty(), "nothing sent");
    assert!(
        !good.lines().iter().any(|l| l.starts_with("MAIL")),
        "no MAIL in clear after the failed handshake: {:?}",
        good.lines()
    );
    let recorded = runner.tls_outcomes();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].result_type, Some("certificate-host-mismatch"));

    // The same host without STARTTLS: still nothing in clear.
    let mut world = World::new(43);
    world.serve_policies(&[("good.test", ENFORCE_GOOD_MX)]);
    world.start_dns(world.zone("mx.good.test", "1"));
    let (port, plain, _) = world.mx_servers(None, None).await;
    let runner = world.relay.runner(world.config(port));
    let id = world
        .relay
        .enqueue("alice@local.test", &["bob@good.test"], "hi")
        .await;
    runner.run_once().await;
    let (_, error) = status_of(&world.relay, &id).await.expect("still queued");
    assert!(error.contains("does not offer STARTTLS"), "{error}");
    assert!(!plain.lines().iter().any(|l| l.starts_with("MAIL")));
    assert_eq!(
        runner.tls_outcomes()[0].result_type,
        Some("starttls-not-supported")
    );
}

#[tokio::test]
async fn testing_delivers_and_records_the_failure() {
    let mut world = World::new(44);
    world.serve_policies(&[(
        "good.test",
        "version: STSv1\nmode: testing\nmx: mx.good.test\nmax_age: 600\n",
    )]);
    world.start_dns(world.zone("mx.good.test", "1"));
    // A self-signed certificate no CA vouches for.
    let self_signed = relayward_testkit::pki::self_signed(&["mx.good.test"], "self").acceptor();
    let (port, good, _) = world
        .mx_servers(Some(self_signed.config().clone()), None)
        .await;
    let runner = world.relay.runner(world.config(port));
    world
        .relay
        .enqueue("alice@local.test", &["bob@good.test"], "hi")
        .await;

    runner.run_once().await;

    let got = good.messages();
    assert_eq!(got.len(), 1, "delivered despite the failure");
    assert!(
        got[0].tls,
        "opportunistic TLS after the failed verification"
    );
    let recorded = runner.tls_outcomes();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(
        (recorded[0].policy, recorded[0].result),
        (PolicyKind::MtaStsTesting, TlsResult::Failed)
    );
    assert_eq!(recorded[0].result_type, Some("certificate-not-trusted"));
    assert_eq!(
        runner.tls_counts(),
        [((PolicyKind::MtaStsTesting, TlsResult::Failed), 1)]
    );
}

#[tokio::test]
async fn overrides_win_over_published_policies() {
    // `none`: the enforce policy is ignored, the unlisted MX gets the mail.
    let mut world = World::new(45);
    world.serve_policies(&[("good.test", ENFORCE_GOOD_MX)]);
    world.start_dns(world.zone("mx.other.test", "1"));
    let (port, _, other) = world.mx_servers(None, None).await;
    let mut config = world.config(port);
    config.tls_policies = vec![DomainTlsPolicy {
        domain: "good.test".into(),
        mode: DomainTlsMode::None,
    }];
    let runner = world.relay.runner(config);
    world
        .relay
        .enqueue("alice@local.test", &["bob@good.test"], "hi")
        .await;
    runner.run_once().await;
    assert_eq!(other.messages().len(), 1);
    assert!(
        world.https.as_ref().expect("https").requests().is_empty(),
        "no policy fetched"
    );
    assert_eq!(
        outcomes(&runner),
        [(
            PolicyKind::Opportunistic,
            TlsResult::Cleartext,
            "mx.other.test".into()
        )]
    );

    // `require-verified` for a domain that publishes nothing: an unverifiable certificate
    // defers, the right one delivers.
    let mut world = World::new(46);
    world.start_dns(
        Zone::default()
            .mx("strict.test", 10, "mx.good.test")
            .a("mx.good.test", world.ip(2)),
    );
    let self_signed = relayward_testkit::pki::self_signed(&["mx.good.test"], "self").acceptor();
    let (port, bad, _) = world
        .mx_servers(Some(self_signed.config().clone()), None)
        .await;
    let mut config = world.config(port);
    config.tls_policies = vec![DomainTlsPolicy {
        domain: "strict.test".into(),
        mode: DomainTlsMode::RequireVerified,
    }];
    let runner = world.relay.runner(config.clone());
    let id = world
        .relay
        .enqueue("alice@local.test", &["bob@strict.test"], "hi")
        .await;
    runner.run_once().await;
    let (status, error) = status_of(&world.relay, &id).await.expect("still queued");
    assert_eq!(status, RecipientStatus::Pending);
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert!(bad.messages().is_empty());
    assert_eq!(
        outcomes(&runner),
        [(
            PolicyKind::RequireVerified,
            TlsResult::Failed,
            "mx.good.test".into()
        )]
    );
}

#[tokio::test]
async fn opportunistic_setting_fetches_no_policy_and_a_new_id_refetches() {
    let mut world = World::new(47);
    world.serve_policies(&[("good.test", ENFORCE_GOOD_MX)]);
    world.start_dns(world.zone("mx.other.test", "1"));
    let (port, _, other) = world.mx_servers(None, None).await;
    let mut config = world.config(port);
    config.tls_policy = TlsPolicyMode::Opportunistic;
    let runner = world.relay.runner(config);
    world
        .relay
        .enqueue("alice@local.test", &["bob@good.test"], "hi")
        .await;
    runner.run_once().await;
    assert_eq!(
        other.messages().len(),
        1,
        "delivered as if nothing were published"
    );
    let https = world.https.clone().expect("https");
    assert!(https.requests().is_empty());

    // With policies honoured: fetched once per id; when the DNS changes the id (a reload
    // pointing at another nameserver here), fetched again, by the same runner and its cache.
    let mut world = World::new(48);
    world.serve_policies(&[("good.test", ENFORCE_GOOD_MX)]);
    world.start_dns(world.zone("mx.good.test", "1"));
    let (port, good, _) = world.mx_servers(Some(world.good_certificate()), None).await;
    let config = world.config(port);
    let router = world.relay.router();
    let context = |config: DeliveryConfig| {
        Arc::new(DeliveryContext::new(config, Arc::clone(&router)).expect("context"))
    };
    let slot = Arc::new(Mutex::new(context(config.clone())));
    let reader = Arc::clone(&slot);
    let runner = Runner::new(
        world.relay.dyn_queue(),
        Live::new(move || Arc::clone(&reader.lock().expect("slot"))),
    );
    let https = world.https.clone().expect("https");
    for body in ["one", "two"] {
        world
            .relay
            .enqueue("alice@local.test", &["bob@good.test"], body)
            .await;
        runner.run_once().await;
    }
    assert_eq!(good.messages().len(), 2);
    assert_eq!(https.requests().len(), 1, "same id: the cached policy");
    world.start_dns(world.zone("mx.good.test", "2"));
    let mut moved = config;
    moved.nameservers = world.dns.into_iter().collect();
    *slot.lock().expect("slot") = context(moved);
    world
        .relay
        .enqueue("alice@local.test", &["bob@good.test"], "three")
        .await;
    runner.run_once().await;
    assert_eq!(good.messages().len(), 3);
    assert_eq!(https.requests().len(), 2, "a new id: fetched again");
}

#[tokio::test]
async fn a_policy_that_cannot_be_fetched_securely_is_no_policy_and_is_reported() {
    let mut world = World::new(49);
    // The policy server's certificate comes from a CA relayward does not trust.
    let stranger = TestCa::new().leaf(&["mta-sts.good.test"]);
    let (port, mut listeners) = listeners_on_one_port(&[world.ip(4)]);
    let pages = HashMap::from([(
        "mta-sts.good.test".to_string(),
        Page::policy(ENFORCE_GOOD_MX),
    )]);
    let https = HttpsServer::spawn(listeners.remove(0), stranger.server, pages);
    world.https_port = port;
    world.start_dns(world.zone("mx.other.test", "1"));
    let (port, _, other) = world.mx_servers(None, None).await;
    let runner = world.relay.runner(world.config(port));
    world
        .relay
        .enqueue("alice@local.test", &["bob@good.test"], "hi")
        .await;

    runner.run_once().await;

    assert_eq!(
        https.requests().len(),
        0,
        "no request over an untrusted connection"
    );
    assert_eq!(
        other.messages().len(),
        1,
        "delivered as without a policy (RFC 8461 §5)"
    );
    let recorded = runner.tls_outcomes();
    let fetch = recorded
        .iter()
        .find(|o| o.host == "mta-sts.good.test")
        .expect("the fetch failure is recorded");
    assert_eq!(fetch.result_type, Some("sts-policy-fetch-error"));
    assert!(
        fetch
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("invalid peer certificate"),
        "{fetch:?}"
    );
}

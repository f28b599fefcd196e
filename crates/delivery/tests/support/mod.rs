//! The relay side of the delivery tests: a spool, a routing table and a runner configured
//! for loopback. The peers (DNS, scripted SMTP servers, certificates) are the testkit's.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relayward_delivery::{DeliveryConfig, DeliveryContext, RetrySchedule, Runner, Timeouts};
use relayward_protocol::route::{RelayDomain, RouteTarget, Router};
use relayward_queue::spool::{Spool, SpoolOptions};
use relayward_queue::{MessageId, NewMessage, NewRecipient, Queue};
// Each test binary uses some of these.
#[allow(unused_imports)]
pub use relayward_testkit::dns::{DnsServer, Zone};
#[allow(unused_imports)]
pub use relayward_testkit::net::common_port;
#[allow(unused_imports)]
pub use relayward_testkit::pki::{TestPki, test_pki};
#[allow(unused_imports)]
pub use relayward_testkit::smtp_server::{Received, Script, SmtpServer, start_smtp};
#[allow(unused_imports)]
pub use relayward_testkit::wait::eventually_async;

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
            .map(|(d, t)| (d.to_string(), RelayDomain::to(t)))
            .collect();
        Self::routed(routes, false)
    }

    fn routed(routes: Vec<(String, RelayDomain)>, smarthost: bool) -> Self {
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
        self.enqueue_esmtp(sender, rcpts, body, Default::default())
            .await
    }

    /// [`Relay::enqueue`] with the MAIL parameters `esmtp` (SMTPUTF8, DSN).
    pub async fn enqueue_esmtp(
        &self,
        sender: &str,
        rcpts: &[&str],
        body: &str,
        esmtp: relayward_queue::Esmtp,
    ) -> MessageId {
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
                esmtp,
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

pub fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

pub fn sock(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

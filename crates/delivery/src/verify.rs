//! Asking an internal server whether it takes a recipient (recipient verification for
//! `[[route]]` domains; see `relayward_server::verify` for why). One short session per
//! question — connect, EHLO, STARTTLS when offered, `MAIL FROM:<>`, `RCPT TO:`, `RSET`,
//! `QUIT`, never a message — made the way the runner delivers to the same host, and cached:
//! a recipient that exists for [`POSITIVE_TTL`], one that does not for [`NEGATIVE_TTL`], and
//! "could not ask" for [`UNAVAILABLE_TTL`], so a stranger sending to many names cannot make
//! relayward hammer the internal server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use relayward_protocol::route::Verification;

use crate::client::{self, ConnectParams, TlsPolicy};
use crate::config::Timeouts;
use crate::context::DeliveryContext;

/// How long "the recipient exists" is believed.
pub const POSITIVE_TTL: Duration = Duration::from_secs(3600);
/// How long "no such recipient" is believed.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(600);
/// How long "the internal server could not be asked" stands before the next try.
pub const UNAVAILABLE_TTL: Duration = Duration::from_secs(30);
/// Most answers kept; beyond, expired ones go first, then the cache starts afresh.
const MAX_ENTRIES: usize = 50_000;
/// Bound on one check (each step; the whole check is at most a few of these).
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers kept across configuration reloads (keyed by host, port and address, so a changed
/// route asks again).
#[derive(Debug, Clone, Default)]
pub struct VerifyCache(Arc<Mutex<HashMap<Question, (Instant, Verification)>>>);

/// Host, port and recipient address (lower-case).
type Question = (String, u16, String);

impl VerifyCache {
    fn get(&self, key: &Question) -> Option<Verification> {
        let cache = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (until, verdict) = cache.get(key)?;
        (Instant::now() < *until).then(|| verdict.clone())
    }

    fn put(&self, key: Question, verdict: Verification) {
        let ttl = match verdict {
            Verification::Exists => POSITIVE_TTL,
            Verification::Refused(_) => NEGATIVE_TTL,
            Verification::Unavailable(_) => UNAVAILABLE_TTL,
        };
        let mut cache = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_ENTRIES {
            let now = Instant::now();
            cache.retain(|_, (until, _)| *until > now);
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, (Instant::now() + ttl, verdict));
    }
}

/// Verifies recipients with one configuration's delivery settings and a shared cache.
pub struct RecipientVerifier {
    context: Arc<DeliveryContext>,
    cache: VerifyCache,
}

impl RecipientVerifier {
    pub fn new(context: Arc<DeliveryContext>, cache: VerifyCache) -> Self {
        Self { context, cache }
    }

    /// Whether `host:port` takes `address` as a recipient (cached).
    pub async fn verify(&self, host: &str, port: u16, address: &str) -> Verification {
        let key = (
            host.to_ascii_lowercase(),
            port,
            address.to_ascii_lowercase(),
        );
        if let Some(verdict) = self.cache.get(&key) {
            return verdict;
        }
        let verdict = self.ask(host, port, address).await;
        self.cache.put(key, verdict.clone());
        verdict
    }

    async fn ask(&self, host: &str, port: u16, address: &str) -> Verification {
        let ctx = &self.context;
        let addresses = match ctx.resolver.addresses(host).await {
            Ok(addresses) => addresses,
            Err(e) => return Verification::Unavailable(e.to_string()),
        };
        let mut why = format!("{host} has no address");
        for ip in addresses.into_iter().take(2) {
            let addr = SocketAddr::new(ip, port);
            if ctx.own.contains(addr) {
                why = format!("{host} is this server itself (mail would loop)");
                continue;
            }
            let params = ConnectParams {
                addr,
                host_name: host.to_string(),
                helo: ctx.settings.hostname.clone(),
                tls: TlsPolicy::Opportunistic(ctx.opportunistic.clone()),
                credentials: None,
                timeouts: Timeouts::uniform(CHECK_TIMEOUT),
            };
            // As the runner does for its next hops: a broken STARTTLS is tried again in clear.
            let connected = match client::connect(&params).await {
                Err(e) if e.tls_handshake => {
                    let clear = ConnectParams {
                        tls: TlsPolicy::None,
                        ..params
                    };
                    client::connect(&clear).await
                }
                other => other,
            };
            let mut conn = match connected {
                Ok(conn) => conn,
                Err(e) => {
                    why = e.failure.text;
                    continue;
                }
            };
            let answer = conn.probe_recipient(address).await;
            conn.quit().await;
            match answer {
                Ok(reply) if reply.is_positive_completion() => return Verification::Exists,
                Ok(reply) if reply.code >= 500 => return Verification::Refused(reply),
                Ok(reply) => return Verification::Unavailable(reply.to_string()),
                Err(e) => why = e.failure.text,
            }
        }
        Verification::Unavailable(why)
    }
}

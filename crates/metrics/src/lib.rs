//! relayward's Prometheus metrics.
//!
//! One set of metrics per process ([`global`]), counted where each event happens: the listener
//! counts connections, the session counts sessions, messages, refused recipients, AUTH failures
//! and TLS, the delivery runner counts deliveries, the spool times its commits. Nothing keeps a
//! second tally to be copied in later; what is a state rather than an event (the queue's
//! contents, the bans in force) is read from its owner when `/metrics` is scraped and set with
//! the `set_*` methods just before [`Metrics::encode`].
//!
//! A global rather than a handle passed down: every crate that counts would otherwise need it
//! in its contexts and constructors, and a process has one `/metrics` anyway. Tests that count
//! in-process compare before and after.
//!
//! The names and labels are a contract (README.md documents each); label values are fixed
//! words, never text from outside, so a client cannot grow the series.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    listener: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    route_class: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsPolicyLabels {
    policy: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsLabels {
    direction: &'static str,
    version: &'static str,
}

/// The listener kinds (`listener` label).
pub const LISTENERS: [&str; 3] = ["mx", "submission", "submissions"];

/// The `reason` values of `relayward_recipients_refused_total`.
pub const REFUSAL_REASONS: [&str; 9] = [
    "relay_denied",
    "unknown_user",
    "sender_routing",
    "address_literal",
    "unsendable",
    "too_many_recipients",
    "rate_limit",
    "verification_unavailable",
    "bad_parameters",
];

/// The `route_class` values of `relayward_deliveries_total`.
pub const ROUTE_CLASSES: [&str; 3] = ["local", "relay_domain", "remote"];

/// The `result` values of `relayward_deliveries_total`.
pub const DELIVERY_RESULTS: [&str; 3] = ["delivered", "deferred", "bounced"];

/// The states `relayward_queue_messages` reports, in the order README lists them.
pub const QUEUE_STATES: [&str; 4] = ["active", "due", "deferred", "held"];

/// Every metric relayward exports. See README.md ("Metrics") for what each counts.
pub struct Metrics {
    registry: Registry,
    connections: Family<ConnectionLabels, Counter>,
    sessions: Family<ListenerLabel, Gauge>,
    messages_accepted: Family<ListenerLabel, Counter>,
    recipients_refused: Family<ReasonLabel, Counter>,
    auth_failures: Counter,
    auth_bans: Gauge,
    queue_messages: Family<StateLabel, Gauge>,
    queue_oldest_seconds: Gauge,
    deliveries: Family<DeliveryLabels, Counter>,
    delivery_seconds: Histogram,
    tls_sessions: Family<TlsLabels, Counter>,
    tls_policy: Family<TlsPolicyLabels, Counter>,
    spool_commit_seconds: Histogram,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let connections = Family::<ConnectionLabels, Counter>::default();
        let sessions = Family::<ListenerLabel, Gauge>::default();
        let messages_accepted = Family::<ListenerLabel, Counter>::default();
        let recipients_refused = Family::<ReasonLabel, Counter>::default();
        let auth_failures = Counter::default();
        let auth_bans = Gauge::default();
        let queue_messages = Family::<StateLabel, Gauge>::default();
        let queue_oldest_seconds = Gauge::default();
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        // 10 ms to ~5.5 min: a Maildir write to a slow remote MX.
        let delivery_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 16));
        let tls_sessions = Family::<TlsLabels, Counter>::default();
        let tls_policy = Family::<TlsPolicyLabels, Counter>::default();
        // 0.1 ms to ~3.3 s: fdatasync plus the shared directory fsync.
        let spool_commit_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        // prometheus-client adds `_total` to counters itself.
        registry.register(
            "relayward_connections",
            "Connections to a listener, by listener kind and how they ended before the session (accepted, or why not)",
            connections.clone(),
        );
        registry.register(
            "relayward_sessions",
            "SMTP sessions in progress, by listener kind",
            sessions.clone(),
        );
        registry.register(
            "relayward_messages_accepted",
            "Messages accepted (250 after DATA, fsynced), by listener kind",
            messages_accepted.clone(),
        );
        registry.register(
            "relayward_recipients_refused",
            "RCPT TO refused, by reason",
            recipients_refused.clone(),
        );
        registry.register(
            "relayward_auth_failures",
            "Failed AUTH attempts (wrong password, unknown login, refused while banned or busy)",
            auth_failures.clone(),
        );
        registry.register(
            "relayward_auth_bans",
            "Client addresses (IPv6: /64) banned from AUTH right now",
            auth_bans.clone(),
        );
        registry.register(
            "relayward_queue_messages",
            "Messages in the queue, by state (active: being delivered; due: waiting for a delivery slot; deferred: waiting for a retry; held)",
            queue_messages.clone(),
        );
        registry.register(
            "relayward_queue_oldest_seconds",
            "Age of the oldest message in the queue (0 when empty)",
            queue_oldest_seconds.clone(),
        );
        registry.register(
            "relayward_deliveries",
            "Delivery outcomes per recipient, by route class (local, relay_domain, remote) and result (delivered, deferred, bounced)",
            deliveries.clone(),
        );
        registry.register(
            "relayward_delivery_seconds",
            "Time one delivery attempt took: one transaction to one destination, or one Maildir write",
            delivery_seconds.clone(),
        );
        registry.register(
            "relayward_tls_sessions",
            "TLS handshakes completed, by direction (inbound, outbound) and protocol version",
            tls_sessions.clone(),
        );
        registry.register(
            "relayward_tls_policy",
            "Outbound MX connections by the TLS policy that applied (mta-sts, mta-sts-testing, dane, require-verified, opportunistic) and the result (verified, encrypted, cleartext, failed)",
            tls_policy.clone(),
        );
        registry.register(
            "relayward_spool_commit_seconds",
            "Time from a message's end of DATA to its durable commit (file and directory fsynced)",
            spool_commit_seconds.clone(),
        );
        // Zero series for the usual label values, so that a dashboard or an alert on rate()
        // sees 0 rather than nothing before the first event.
        for state in QUEUE_STATES {
            queue_messages.get_or_create(&StateLabel { state }).set(0);
        }
        for listener in LISTENERS {
            drop(sessions.get_or_create(&ListenerLabel { listener }));
            drop(messages_accepted.get_or_create(&ListenerLabel { listener }));
            drop(connections.get_or_create(&ConnectionLabels {
                listener,
                result: "accepted",
            }));
        }
        for reason in REFUSAL_REASONS {
            drop(recipients_refused.get_or_create(&ReasonLabel { reason }));
        }
        for route_class in ROUTE_CLASSES {
            for result in DELIVERY_RESULTS {
                drop(deliveries.get_or_create(&DeliveryLabels {
                    route_class,
                    result,
                }));
            }
        }
        for direction in ["inbound", "outbound"] {
            for version in ["TLSv1.2", "TLSv1.3"] {
                drop(tls_sessions.get_or_create(&TlsLabels { direction, version }));
            }
        }
        Metrics {
            registry,
            connections,
            sessions,
            messages_accepted,
            recipients_refused,
            auth_failures,
            auth_bans,
            queue_messages,
            queue_oldest_seconds,
            deliveries,
            delivery_seconds,
            tls_sessions,
            tls_policy,
            spool_commit_seconds,
        }
    }

    /// A connection to a `listener` (its kind: `mx`, `submission`, `submissions`) ended its
    /// admission with `result`: `accepted`, `too_many_connections`, `too_many_from_address`,
    /// `too_fast`, `proxy_header_failed` or `tls_handshake_failed`.
    pub fn connection(&self, listener: &'static str, result: &'static str) {
        self.connections
            .get_or_create(&ConnectionLabels { listener, result })
            .inc();
    }

    /// A session started on `listener`; it counts in `relayward_sessions` until the returned
    /// guard is dropped.
    pub fn session(&'static self, listener: &'static str) -> SessionGauge {
        let gauge = self
            .sessions
            .get_or_create(&ListenerLabel { listener })
            .clone();
        gauge.inc();
        SessionGauge { gauge }
    }

    /// A message was accepted (after its fsync) on `listener`.
    pub fn message_accepted(&self, listener: &'static str) {
        self.messages_accepted
            .get_or_create(&ListenerLabel { listener })
            .inc();
    }

    /// A RCPT was refused; `reason` is one of the words README lists.
    pub fn recipient_refused(&self, reason: &'static str) {
        self.recipients_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// An AUTH attempt failed.
    pub fn auth_failure(&self) {
        self.auth_failures.inc();
    }

    /// A TLS handshake completed; `direction` is `inbound` or `outbound`, `version` as
    /// rustls names it (`TLSv1_3` or `TLSv1.3`); versions other than 1.2 and 1.3 count as
    /// `other`, so the label has a fixed set of values.
    pub fn tls_session(&self, direction: &'static str, version: &str) {
        let version = match version {
            "TLSv1_3" | "TLSv1.3" => "TLSv1.3",
            "TLSv1_2" | "TLSv1.2" => "TLSv1.2",
            _ => "other",
        };
        self.tls_sessions
            .get_or_create(&TlsLabels { direction, version })
            .inc();
    }

    /// One recipient's delivery outcome.
    pub fn delivery(&self, route_class: &'static str, result: &'static str) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                route_class,
                result,
            })
            .inc();
    }

    /// How long one delivery attempt took.
    pub fn delivery_duration(&self, seconds: f64) {
        self.delivery_seconds.observe(seconds);
    }

    /// How long one spool commit took.
    pub fn spool_commit(&self, seconds: f64) {
        self.spool_commit_seconds.observe(seconds);
    }

    /// The delivery runner's TLS policy counts (`(policy, result, connections)`, totals since
    /// start), read at scrape time: each counter is moved up to its total.
    pub fn set_tls_policy_counts(&self, counts: &[(&'static str, &'static str, u64)]) {
        for &(policy, result, total) in counts {
            let counter = self
                .tls_policy
                .get_or_create(&TlsPolicyLabels { policy, result })
                .clone();
            let seen = counter.get();
            if total > seen {
                counter.inc_by(total - seen);
            }
        }
    }

    /// The bans in force, read from the AUTH limiter at scrape time.
    pub fn set_auth_bans(&self, bans: usize) {
        self.auth_bans.set(saturating_i64(bans));
    }

    /// The queue's contents, read from the queue at scrape time: how many messages are in
    /// each of [`QUEUE_STATES`], and the oldest one's age.
    pub fn set_queue(&self, counts: [usize; 4], oldest_seconds: u64) {
        for (state, count) in QUEUE_STATES.into_iter().zip(counts) {
            self.queue_messages
                .get_or_create(&StateLabel { state })
                .set(saturating_i64(count));
        }
        self.queue_oldest_seconds
            .set(i64::try_from(oldest_seconds).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            text = format!("# relayward: cannot encode the metrics: {e}\n");
        }
        text
    }
}

fn saturating_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Counts one session in `relayward_sessions` while it lives.
pub struct SessionGauge {
    gauge: Gauge,
}

impl Drop for SessionGauge {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_name_is_exported() {
        let metrics = global();
        metrics.connection("mx", "accepted");
        let session = metrics.session("mx");
        metrics.message_accepted("mx");
        metrics.recipient_refused("relay_denied");
        metrics.auth_failure();
        metrics.tls_session("inbound", "TLSv1_3");
        metrics.delivery("local", "delivered");
        metrics.delivery_duration(0.2);
        metrics.spool_commit(0.002);
        metrics.set_auth_bans(1);
        metrics.set_queue([1, 2, 3, 4], 60);
        metrics.set_tls_policy_counts(&[("mta-sts", "verified", 3)]);
        metrics.set_tls_policy_counts(&[("mta-sts", "verified", 5)]);
        let text = metrics.encode();
        for needle in [
            "relayward_connections_total{listener=\"mx\",result=\"accepted\"} ",
            "relayward_sessions{listener=\"mx\"} 1",
            "relayward_messages_accepted_total{listener=\"mx\"} ",
            "relayward_recipients_refused_total{reason=\"relay_denied\"} ",
            "relayward_auth_failures_total ",
            "relayward_auth_bans 1",
            "relayward_queue_messages{state=\"held\"} 4",
            "relayward_queue_oldest_seconds 60",
            "relayward_deliveries_total{route_class=\"local\",result=\"delivered\"} ",
            "relayward_delivery_seconds_bucket",
            "relayward_tls_sessions_total{direction=\"inbound\",version=\"TLSv1.3\"} ",
            "relayward_spool_commit_seconds_count ",
            "relayward_tls_policy_total{policy=\"mta-sts\",result=\"verified\"} 5",
        ] {
            assert!(text.contains(needle), "{needle:?} missing in:\n{text}");
        }
        drop(session);
        assert!(
            metrics
                .encode()
                .contains("relayward_sessions{listener=\"mx\"} 0")
        );
    }
}

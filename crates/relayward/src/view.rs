//! The running server as its operator sees it: what `/healthz` judges, what `/metrics` reads
//! at scrape time (the queue's contents, the AUTH bans) and what `relayward status` prints.
//! One view, so the three never disagree.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use relayward_delivery::Runner;
use relayward_delivery::admin::MessageState;
use relayward_queue::QueuedMessage;
use relayward_server::auth::AuthLimiter;
use relayward_server::config::ListenerKind;
use relayward_server::listener::{AcceptHealth, Gate};

use crate::queue_backend::OpenQueue;
use crate::snapshot::Current;

/// One listener as the view reports it.
#[derive(Clone)]
pub struct ListenerView {
    pub address: SocketAddr,
    pub kind: ListenerKind,
    pub health: AcceptHealth,
}

/// Messages in the queue by state (`relayward_queue_messages{state}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueCounts {
    /// Being delivered right now.
    pub active: usize,
    /// Waiting for a delivery slot: some recipient's next attempt is due.
    pub due: usize,
    /// Waiting for a retry: every pending recipient's next attempt is later.
    pub deferred: usize,
    /// Held by an admin (`relayward queue hold`).
    pub held: usize,
    /// Age of the oldest message in seconds (0 when the queue is empty).
    pub oldest_seconds: u64,
}

impl QueueCounts {
    /// Sorts every message into one state at `now` (Unix seconds).
    pub fn of(messages: &[QueuedMessage], active: &[relayward_queue::MessageId], now: u64) -> Self {
        let mut counts = QueueCounts::default();
        for message in messages {
            match MessageState::of(message, now) {
                MessageState::Held => counts.held += 1,
                _ if active.contains(&message.id) => counts.active += 1,
                MessageState::Due => counts.due += 1,
                MessageState::Deferred => counts.deferred += 1,
            }
        }
        counts.oldest_seconds = messages
            .iter()
            .map(|m| now.saturating_sub(m.arrived))
            .max()
            .unwrap_or(0);
        counts
    }

    pub fn total(&self) -> usize {
        self.active + self.due + self.deferred + self.held
    }
}

/// The running server's parts that the operator asks about.
pub struct ServerView {
    current: Current,
    queue: OpenQueue,
    auth: Arc<AuthLimiter>,
    gate: Arc<Gate>,
    runner: Runner,
    listeners: Mutex<Vec<ListenerView>>,
    started: SystemTime,
}

impl ServerView {
    pub fn new(
        current: Current,
        queue: OpenQueue,
        auth: Arc<AuthLimiter>,
        gate: Arc<Gate>,
        runner: Runner,
    ) -> Self {
        Self {
            current,
            queue,
            auth,
            gate,
            runner,
            listeners: Mutex::new(Vec::new()),
            started: SystemTime::now(),
        }
    }

    /// The listeners in force (after start and after each reload).
    pub fn set_listeners(&self, listeners: Vec<ListenerView>) {
        *self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = listeners;
    }

    pub fn listeners(&self) -> Vec<ListenerView> {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn auth(&self) -> &AuthLimiter {
        &self.auth
    }

    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// `relayward queue …` changed the queue: the file spool's runner looks at once (the
    /// PostgreSQL queue's nodes see changes in the database themselves).
    pub fn queue_changed(&self) {
        if let OpenQueue::File(spool) = &self.queue {
            spool.external_change();
        }
    }

    pub fn current(&self) -> &Current {
        &self.current
    }

    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// Ends the TLS report period now and sends its reports (`relayward tls-report
    /// send-now`).
    pub async fn send_tls_reports(&self) -> Result<Vec<relayward_delivery::tlsrpt::Sent>, String> {
        match self.runner.tls_reporter() {
            Some(reporter) => reporter.send_now().await,
            None => Err("this server counts no TLS reports".into()),
        }
    }

    /// The queue by state, read now.
    pub async fn queue_counts(&self) -> Result<QueueCounts, relayward_queue::QueueError> {
        let messages = self.queue.queue().list().await?;
        Ok(QueueCounts::of(
            &messages,
            &self.runner.in_flight(),
            unix_seconds(SystemTime::now()),
        ))
    }

    /// Sets the metrics that are states rather than events, just before a scrape.
    pub async fn refresh_metrics(&self) {
        let metrics = relayward_metrics::global();
        metrics.set_auth_bans(self.auth.bans(Instant::now()).len());
        let tls: Vec<(&'static str, &'static str, u64)> = self
            .runner
            .tls_counts()
            .into_iter()
            .map(|((policy, result), n)| (policy.as_str(), result.as_str(), n))
            .collect();
        metrics.set_tls_policy_counts(&tls);
        match self.queue_counts().await {
            Ok(c) => metrics.set_queue([c.active, c.due, c.deferred, c.held], c.oldest_seconds),
            Err(e) => tracing::warn!("metrics: cannot list the queue: {e}"),
        }
    }

    /// `Ok` when every listener accepts connections and the queue takes writes; otherwise
    /// one sentence per reason.
    pub async fn health(&self) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        for listener in self.listeners() {
            if let Err(why) = listener.health.check() {
                reasons.push(format!(
                    "listener {} ({}) is not accepting connections: {why}",
                    listener.address, listener.kind
                ));
            }
        }
        if reasons.is_empty() && self.listeners().is_empty() {
            reasons.push("no listener is running".to_string());
        }
        if let Err(why) = self.queue_takes_mail().await {
            reasons.push(why);
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

impl ServerView {
    /// The file spool: [`queue_writable`]; the PostgreSQL queue: it answers within 5 s.
    async fn queue_takes_mail(&self) -> Result<(), String> {
        match &self.queue {
            OpenQueue::File(spool) => {
                let root = spool.root().to_path_buf();
                let min_free = self.current.load().config.queue.min_free_bytes;
                tokio::task::spawn_blocking(move || queue_writable(&root, min_free))
                    .await
                    .unwrap_or_else(|e| Err(format!("queue check failed: {e}")))
            }
            OpenQueue::Postgres(_) => {
                let queue = self.queue.queue();
                match tokio::time::timeout(std::time::Duration::from_secs(5), queue.list()).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("the PostgreSQL queue refuses: {e}")),
                    Err(_) => Err("the PostgreSQL queue does not answer within 5 s".into()),
                }
            }
        }
    }
}

/// The queue takes new mail: a file can be created (and removed) in its `tmp/`, and at
/// least `min_free` octets are free there (below it every message gets `452 4.3.1`).
fn queue_writable(root: &Path, min_free: u64) -> Result<(), String> {
    let probe = root
        .join("tmp")
        .join(format!(".healthz-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .map_err(|e| format!("queue is not writable: {}: {e}", probe.display()))?;
    let _ = std::fs::remove_file(&probe);
    let stats = nix::sys::statvfs::statvfs(root)
        .map_err(|e| format!("cannot read free space of {}: {e}", root.display()))?;
    let free = stats
        .blocks_available()
        .saturating_mul(stats.fragment_size());
    if free < min_free {
        return Err(format!(
            "queue filesystem has {free} octets free, below [queue] min_free_bytes = {min_free}: new mail is refused with 452 4.3.1"
        ));
    }
    Ok(())
}

pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use relayward_queue::{MessageId, RecipientState, RecipientStatus};

    fn message(id: &str, held: bool, arrived: u64, next_attempt: u64) -> QueuedMessage {
        QueuedMessage {
            id: MessageId(id.into()),
            sender: "a@example.test".into(),
            recipients: vec![RecipientState {
                address: "b@example.test".into(),
                status: RecipientStatus::Pending,
                attempts: 1,
                last_error: None,
                next_attempt,
                route: None,
                dsn: Default::default(),
                delay_notified: Default::default(),
            }],
            arrived,
            client_ip: "192.0.2.1".into(),
            auth_login: None,
            origin: Default::default(),
            size: 10,
            held,
            options: Default::default(),
        }
    }

    #[test]
    fn every_message_is_in_exactly_one_state() {
        let messages = [
            message("a", true, 100, 0),
            message("b", false, 200, 0),
            message("c", false, 300, 2000),
            message("d", false, 400, 500),
        ];
        let counts = QueueCounts::of(&messages, &[MessageId("d".into())], 1000);
        assert_eq!(
            counts,
            QueueCounts {
                active: 1,
                due: 1,
                deferred: 1,
                held: 1,
                oldest_seconds: 900
            }
        );
        assert_eq!(counts.total(), 4);
    }
}

//! relayward's shared queue on PostgreSQL: several nodes, one queue, no lost mail when a node
//! dies.
//!
//! [`PgQueue`] implements [`relayward_queue::Queue`], so the SMTP session, the delivery runner
//! and `relayward queue …` work on it unchanged. Every node (a `relayward serve` with
//! `[queue] backend = "postgres"`) names the same database.
//!
//! # Schema ([`schema`])
//!
//! `relayward_messages` holds one row per message: envelope, origin, `held`, the node that
//! accepted it, and the content as `bytea` (TOAST keeps it out of line and compressed; the
//! limit of 1 GB per value is far above any `max_message_size` worth setting, so there are no
//! large objects to clean up). `relayward_recipients` holds one row per recipient: its stored
//! route, status, attempts, next attempt, last error, and its lease (`lease_owner`,
//! `lease_expires`). `relayward_nodes` has one row per running node with its heartbeat;
//! `relayward_quarantine` keeps entries moved out of the queue. Migrations are built in and
//! run at open; a database whose schema is newer than the binary is refused.
//!
//! # Accepting: group commit ([`writer`])
//!
//! `enqueue` hands the message to a committer task; committers put every write that is waiting
//! into one transaction (batch `INSERT`s from arrays) and commit once, with `synchronous_commit`
//! at least `on`; the session answers `250` only after that commit. Delivery results
//! (`update`) share the same commits, so acknowledgements are batched too.
//!
//! A message arriving by DATA or BDAT is held in memory until its commit (the trait's default
//! [`relayward_queue::MemoryDraft`]): the whole content goes into the transaction as one
//! `bytea`, so each session in DATA holds up to `max_message_size` (25 MB by default). The
//! file spool streams content to disk instead and holds a bounded buffer per session.
//!
//! # Delivering on several nodes: claims and leases ([`lease`])
//!
//! The runner is the same for both backends: it keeps its own index of what is due (fed by
//! [`Queue::changes`]) and, before delivering, asks [`Queue::claim`]. Here a claim is one
//! `UPDATE … FOR UPDATE SKIP LOCKED` that leases the due, unleased recipients of a batch of
//! messages to this node for `lease_timeout`, so two nodes never deliver the same recipient at
//! once, and neither waits for the other's locks; the messages' states are read in the same
//! transaction. `changes` reports the ids this node accepted and, every second, what the
//! database says is due and unleased: another node's mail nobody took, deferred mail that came
//! due, an admin's `queue retry`, and the expired leases of a node that died. A heartbeat every
//! quarter lease touches the node's row and extends the leases of deliveries still running here,
//! so a slow delivery keeps its lease and a dead node's leases run out within `lease_timeout`.
//! An update gives up the lease of each recipient it records; [`Queue::release`] gives up
//! what is left when a delivery ends; shutdown gives back everything. Lease bookkeeping does
//! not wait for the WAL flush (a crash of the database may lose a lease, which at worst means
//! one more delivery: see [`lease`]); new mail and results do.
//!
//! # This node's own new mail ([`fresh`])
//!
//! The insert that stores a message leases its recipients to the node that accepted it, and
//! that node keeps the message's state and (if small) its content in memory until its runner
//! takes it, a moment later: the claim and the content read of fresh mail cost no SQL, so a
//! message delivered at its first attempt costs its share of two group commits (the insert and
//! the result) and nothing else. What this changes:
//!
//! - A node that dies before delivering its new mail leaves it leased until `lease_timeout`
//!   runs out (2 minutes by default), then another node takes it; before, it was due for any
//!   node within about a second. A node that stops cleanly gives its leases back at once.
//! - A hold or delete through another node or `relayward queue` within a second of the
//!   commit may not stop the first attempt (see [`fresh`] for why that is safe).
//!
//! No `LISTEN`/`NOTIFY`: a notifying commit takes a database-wide lock in PostgreSQL, which
//! would serialise exactly the commits group commit exists to overlap, and the one-second look
//! for due work costs one index scan.
//!
//! # Against bloat
//!
//! A message delivered at its first attempt costs one insert per row (leased to its node by
//! the insert), one result update and a delete; a retry adds a lease update (HOT: the lease
//! columns are in no index, and `fillfactor` leaves room on the page). Dead rows
//! are what vacuum cleans, and it can only clean rows older than the oldest snapshot in the
//! database: every transaction here is short (a batch, a claim, a snapshot read of the queue),
//! sessions set `idle_in_transaction_session_timeout`, and the tables ask autovacuum to come
//! at 1% dead rows instead of 20%. What remains is the administrator's side: no long-running
//! transactions or abandoned replication slots on the same database (they hold the horizon for
//! everyone).
//!
//! # When the database is away ([`health`])
//!
//! Every failure to reach the database becomes [`QueueError::Unavailable`]: the session answers
//! `451 4.3.0` (never `250`), claims fail so delivery pauses, and one log line says so; the
//! first success after it logs one line more, and both resume. A commit whose outcome is
//! unknown (the connection broke during `COMMIT`) is answered `451`: the client sends again,
//! and at worst the message is delivered twice, never lost.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use deadpool_postgres::Pool;
use relayward_queue::{
    BoxFuture, Changes, Claim, MessageId, NewMessage, Queue, QueueError, QueuedMessage,
    RecipientUpdate,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

mod connect;
pub mod fresh;
pub mod health;
pub mod lease;
mod rows;
pub mod schema;
pub mod writer;

use crate::fresh::Fresh;
use crate::health::{Failure, Health};
use crate::rows::{Which, signed, storable};
use crate::writer::Op;

/// How long one database operation may take before it counts as "the database is away".
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How often `changes` looks for due work nobody holds.
const DUE_POLL: Duration = Duration::from_secs(1);
/// Enqueued ids kept for the runner between two calls of `changes`; beyond, it rescans.
const MAX_PENDING: usize = 100_000;
/// Longest time after its commit that a claim of fresh mail is answered from memory (and at
/// most a quarter of `lease_timeout`: the lease taken at the commit is then surely still
/// this node's). See [`fresh`].
const FRESH_WINDOW: Duration = Duration::from_secs(1);

/// How to reach the database and how this node behaves in it.
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://user@host:port/db` (or key=value form). No password: see `password`.
    pub url: String,
    /// The password, read from `postgres_password_file`.
    pub password: Option<String>,
    /// TLS to the database (a verifying rustls configuration), or `None` for none.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// This node's name (logs, `relayward_nodes`, `accepted_by`).
    pub node_name: String,
    /// How long a claim holds without a heartbeat (`[queue] lease_timeout`).
    pub lease_timeout: Duration,
    /// Most connections this node opens.
    pub pool_size: usize,
    /// Committer tasks (transactions in flight at once for new mail and results).
    pub committers: usize,
    /// Most writes one commit covers.
    pub max_batch: usize,
    /// Octets of fresh mail's content kept in memory for its delivery (see [`fresh`]).
    pub fresh_content_limit: usize,
}

impl PgOptions {
    pub fn new(url: impl Into<String>, node_name: impl Into<String>) -> Self {
        PgOptions {
            url: url.into(),
            password: None,
            tls: None,
            node_name: node_name.into(),
            lease_timeout: Duration::from_secs(120),
            pool_size: 16,
            committers: 2,
            max_batch: 512,
            fresh_content_limit: fresh::DEFAULT_CONTENT_LIMIT,
        }
    }
}

/// Why [`PgQueue::open`] failed; each says what to check.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("postgres_url: {0}")]
    Url(String),
    #[error("cannot set up the connection pool: {0}")]
    Pool(String),
    #[error("cannot connect to the queue database: {0}")]
    Connect(String),
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
}

/// Counters for tests and metrics (this node only, since it was opened).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PgStats {
    /// Messages acknowledged by `enqueue`.
    pub committed: u64,
    /// Group commits (transactions of the committers).
    pub batches: u64,
    /// Claims of this node's fresh mail answered from memory (no SQL).
    pub fresh_claims: u64,
    /// Contents of fresh mail read from memory (no SQL).
    pub fresh_contents: u64,
    /// Octets of fresh mail's content in memory now (at most `fresh_content_limit`).
    pub fresh_content_bytes: u64,
}

/// The shared queue. See the crate documentation.
pub struct PgQueue {
    inner: Arc<Inner>,
    writer: mpsc::UnboundedSender<Op>,
    tasks: Vec<JoinHandle<()>>,
}

/// State shared by the queue's front and its tasks.
pub struct Inner {
    pool: Pool,
    /// This process's lease owner id: the node name and a random part, new at every start
    /// (a restarted node does not inherit the leases of its previous life: they run out).
    owner: String,
    node: String,
    lease_secs: f64,
    health: Health,
    pending: Mutex<Changes>,
    notify: Notify,
    last_due_poll: Mutex<Option<Instant>>,
    /// Recipients this node holds leases on, by message.
    held: Mutex<HashMap<MessageId, HashSet<String>>>,
    /// This node's new mail, until the runner takes it (see [`fresh`]).
    fresh: Mutex<Fresh>,
    committed: AtomicU64,
    batches: AtomicU64,
    fresh_claims: AtomicU64,
    fresh_contents: AtomicU64,
}

/// An operation's failure: the database's (sorted by [`Failure`]) or the queue's own answer.
#[derive(Debug)]
pub enum OpError {
    Db(tokio_postgres::Error),
    Pool(deadpool_postgres::PoolError),
    Queue(QueueError),
}

impl From<tokio_postgres::Error> for OpError {
    fn from(e: tokio_postgres::Error) -> Self {
        OpError::Db(e)
    }
}

impl From<deadpool_postgres::PoolError> for OpError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        OpError::Pool(e)
    }
}

impl PgQueue {
    /// Connects, checks and migrates the schema, registers this node and starts its tasks.
    /// Fails (with what to check) when the database cannot be reached at start.
    pub async fn open(options: PgOptions) -> Result<PgQueue, OpenError> {
        let pool = connect::pool(&options)?;
        let mut client = pool
            .get()
            .await
            .map_err(|e| OpenError::Connect(failure_text(Failure::from(e))))?;
        schema::migrate(&mut client, &options.node_name).await?;
        warn_about_durability(&client).await;
        drop(client);
        let owner = format!("{}/{:08x}", options.node_name, rand::random::<u32>());
        let inner = Arc::new(Inner {
            pool,
            owner,
            node: options.node_name.clone(),
            lease_secs: options.lease_timeout.as_secs_f64(),
            health: Health::default(),
            pending: Mutex::new(Changes::default()),
            notify: Notify::new(),
            last_due_poll: Mutex::new(None),
            held: Mutex::new(HashMap::new()),
            fresh: Mutex::new(Fresh::new(
                FRESH_WINDOW.min(options.lease_timeout / 4),
                options.fresh_content_limit,
            )),
            committed: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            fresh_claims: AtomicU64::new(0),
            fresh_contents: AtomicU64::new(0),
        });
        lease::heartbeat(&inner)
            .await
            .map_err(|e| OpenError::Connect(failure_text(op_failure(e))))?;
        let (writer, mut tasks) = writer::spawn(&inner, options.committers, options.max_batch);
        tasks.push(spawn_heartbeat(&inner, options.lease_timeout));
        tracing::info!(node = %inner.node, owner = %inner.owner, "queue: PostgreSQL, shared with the nodes that use the same database");
        Ok(PgQueue {
            inner,
            writer,
            tasks,
        })
    }

    /// This process's lease owner id (`NODE/RANDOM`).
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    pub fn stats(&self) -> PgStats {
        PgStats {
            committed: self.inner.committed.load(Ordering::Relaxed),
            batches: self.inner.batches.load(Ordering::Relaxed),
            fresh_claims: self.inner.fresh_claims.load(Ordering::Relaxed),
            fresh_contents: self.inner.fresh_contents.load(Ordering::Relaxed),
            fresh_content_bytes: self.inner.lock_fresh().content_bytes() as u64,
        }
    }

    /// Orderly shutdown: gives back every lease this node holds (others need not wait for them
    /// to run out) and removes the node's row. Call after the runner stopped.
    pub async fn shutdown(&self) {
        for task in &self.tasks {
            task.abort();
        }
        let released = tokio::time::timeout(OPERATION_TIMEOUT, lease::release_all(&self.inner));
        match released.await {
            Ok(Ok(())) => tracing::info!("queue: leases given back"),
            Ok(Err(e)) => {
                tracing::warn!(error = %failure_text(op_failure(e)), "queue: cannot give back leases; other nodes take them over after lease_timeout")
            }
            Err(_) => tracing::warn!(
                "queue: giving back leases timed out; other nodes take them over after lease_timeout"
            ),
        }
    }

    async fn enqueue_message(&self, message: NewMessage) -> Result<MessageId, QueueError> {
        if message.recipients.is_empty() {
            return Err(QueueError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a message needs at least one recipient",
            )));
        }
        let id = MessageId::generate();
        let (reply, answer) = oneshot::channel();
        let op = Op::Enqueue {
            id: id.clone(),
            message,
            arrived: unix_now(),
            reply,
        };
        self.submit(op, answer).await?;
        Ok(id)
    }

    async fn submit(
        &self,
        op: Op,
        answer: oneshot::Receiver<Result<(), QueueError>>,
    ) -> Result<(), QueueError> {
        if self.writer.send(op).is_err() {
            return Err(QueueError::Unavailable("queue committer stopped".into()));
        }
        match answer.await {
            Ok(result) => result,
            Err(_) => Err(QueueError::Unavailable("queue committer stopped".into())),
        }
    }

    async fn update_message(
        &self,
        id: &MessageId,
        updates: Vec<RecipientUpdate>,
    ) -> Result<(), QueueError> {
        id.check()?;
        let (reply, answer) = oneshot::channel();
        let op = Op::Update {
            id: id.clone(),
            updates,
            reply,
        };
        self.submit(op, answer).await
    }

    /// The next [`Changes`]: what this node enqueued, else (once a second) what is due and
    /// unleased in the database. The time of the last look is kept across calls, because the
    /// runner drops this future whenever something else wakes it.
    async fn next_changes(&self) -> Changes {
        loop {
            let taken = std::mem::take(&mut *self.inner.lock_pending());
            if !taken.is_empty() {
                return taken;
            }
            let wait = self.inner.until_due_poll();
            tokio::select! {
                () = self.inner.notify.notified() => continue,
                () = tokio::time::sleep(wait) => {}
            }
            let now = unix_now();
            let found = self.inner.run(lease::due(&self.inner, now)).await;
            self.inner.polled();
            if let Ok(due) = found
                && !due.is_empty()
            {
                return Changes {
                    due,
                    ..Changes::default()
                };
            }
        }
    }

    async fn simple<T, F>(&self, op: F) -> Result<T, QueueError>
    where
        F: Future<Output = Result<T, OpError>>,
    {
        self.inner.run(op).await
    }

    /// After an admin change: look for due work at once (a release or retry makes mail due).
    fn admin_changed(&self) {
        *self
            .inner
            .last_due_poll
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        self.inner.notify.notify_one();
    }
}

impl Drop for PgQueue {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Inner {
    /// Runs one operation with the time limit, reporting the outcome to [`Health`].
    async fn run<T>(&self, op: impl Future<Output = Result<T, OpError>>) -> Result<T, QueueError> {
        match tokio::time::timeout(OPERATION_TIMEOUT, op).await {
            Ok(Ok(value)) => {
                self.health.up();
                Ok(value)
            }
            Ok(Err(OpError::Queue(e))) => {
                self.health.up();
                Err(e)
            }
            Ok(Err(e)) => Err(self.health.failed(op_failure(e))),
            Err(_) => Err(self.health.failed(Failure::Unavailable(format!(
                "no answer within {} s",
                OPERATION_TIMEOUT.as_secs()
            )))),
        }
    }

    fn lock_pending(&self) -> MutexGuard<'_, Changes> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_held(&self) -> MutexGuard<'_, HashMap<MessageId, HashSet<String>>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_fresh(&self) -> MutexGuard<'_, Fresh> {
        self.fresh.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Messages just committed by this node: leased to it by their insert (the heartbeat
    /// extends those leases like any other), their state and content kept for the runner.
    fn note_fresh(&self, accepted: Vec<(QueuedMessage, Vec<u8>)>) {
        let now = Instant::now();
        let mut held = self.lock_held();
        let mut fresh = self.lock_fresh();
        for (message, content) in accepted {
            held.insert(
                message.id.clone(),
                message
                    .recipients
                    .iter()
                    .map(|r| r.address.clone())
                    .collect(),
            );
            fresh.insert(message, content, now);
        }
    }

    /// Splits a claim: the fresh mail memory can answer for, and the ids left for the
    /// database. While the database is unreachable everything goes to the database (and
    /// fails): delivery pauses for fresh mail too.
    fn claim_fresh(&self, ids: &[MessageId]) -> (Vec<Claim>, Vec<MessageId>) {
        if self.health.is_down() {
            return (Vec::new(), ids.to_vec());
        }
        let now = Instant::now();
        let mut fresh = self.lock_fresh();
        let mut claims = Vec::new();
        let mut rest = Vec::new();
        for id in ids {
            match fresh.take_message(id, now) {
                Some(message) => claims.push(Claim::Taken(message)),
                None => rest.push(id.clone()),
            }
        }
        drop(fresh);
        self.fresh_claims
            .fetch_add(claims.len() as u64, Ordering::Relaxed);
        (claims, rest)
    }

    /// Tells the runner about committed messages (before their clients hear `250`).
    fn note_enqueued(&self, ids: Vec<MessageId>) {
        let mut pending = self.lock_pending();
        if pending.enqueued.len() + ids.len() > MAX_PENDING {
            pending.enqueued.clear();
            pending.rescan = true;
        } else if !pending.rescan {
            pending.enqueued.extend(ids);
        }
        drop(pending);
        self.notify.notify_one();
    }

    fn lease_taken(&self, id: &str, address: String) {
        self.lock_held()
            .entry(MessageId(id.to_owned()))
            .or_default()
            .insert(address);
    }

    fn leases_given_up<'a>(&self, id: &MessageId, addresses: impl Iterator<Item = &'a str>) {
        let mut held = self.lock_held();
        if let Some(set) = held.get_mut(id) {
            for address in addresses {
                set.remove(address);
            }
            if set.is_empty() {
                held.remove(id);
            }
        }
    }

    fn leases_dropped(&self, id: &str) {
        self.lock_held().remove(&MessageId(id.to_owned()));
    }

    /// Ids of messages this node holds leases on.
    fn held_messages(&self) -> Vec<String> {
        self.lock_held().keys().map(|id| id.0.clone()).collect()
    }

    fn until_due_poll(&self) -> Duration {
        match *self
            .last_due_poll
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            None => Duration::ZERO,
            Some(at) => DUE_POLL.saturating_sub(at.elapsed()),
        }
    }

    fn polled(&self) {
        *self
            .last_due_poll
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }
}

impl Queue for PgQueue {
    fn enqueue(&self, message: NewMessage) -> BoxFuture<'_, Result<MessageId, QueueError>> {
        Box::pin(self.enqueue_message(message))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<QueuedMessage>, QueueError>> {
        Box::pin(self.simple(async {
            let mut client = self.inner.pool.get().await?;
            let loaded = rows::load(&mut client, Which::All).await?;
            Ok(loaded.into_iter().map(|l| l.message).collect())
        }))
    }

    fn get<'a>(&'a self, id: &'a MessageId) -> BoxFuture<'a, Result<QueuedMessage, QueueError>> {
        Box::pin(self.simple(async move {
            id.check().map_err(OpError::Queue)?;
            let mut client = self.inner.pool.get().await?;
            let ids = [id.0.clone()];
            let loaded = rows::load(&mut client, Which::Ids(&ids)).await?;
            loaded
                .into_iter()
                .next()
                .map(|l| l.message)
                .ok_or_else(|| OpError::Queue(QueueError::not_found(id)))
        }))
    }

    fn content<'a>(&'a self, id: &'a MessageId) -> BoxFuture<'a, Result<Vec<u8>, QueueError>> {
        let kept = self.inner.lock_fresh().take_content(id);
        if let Some(content) = kept {
            self.inner.fresh_contents.fetch_add(1, Ordering::Relaxed);
            return Box::pin(async move { Ok(content) });
        }
        Box::pin(self.simple(async move {
            id.check().map_err(OpError::Queue)?;
            let client = self.inner.pool.get().await?;
            let statement = client
                .prepare_cached("SELECT content FROM relayward_messages WHERE id = $1")
                .await?;
            let row = client.query_opt(&statement, &[&id.0]).await?;
            row.map(|r| r.get::<_, Vec<u8>>(0))
                .ok_or_else(|| OpError::Queue(QueueError::not_found(id)))
        }))
    }

    fn update<'a>(
        &'a self,
        id: &'a MessageId,
        updates: Vec<RecipientUpdate>,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(self.update_message(id, updates))
    }

    fn set_held<'a>(
        &'a self,
        id: &'a MessageId,
        held: bool,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            self.inner.lock_fresh().forget(id);
            self.simple(admin_write(
                &self.inner,
                id,
                "UPDATE relayward_messages SET held = $2 WHERE id = $1",
                Some(held),
            ))
            .await?;
            self.admin_changed();
            Ok(())
        })
    }

    fn retry_now<'a>(&'a self, id: &'a MessageId) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            self.simple(async move {
                id.check().map_err(OpError::Queue)?;
                let client = self.inner.pool.get().await?;
                let changed = client
                    .execute(
                        "UPDATE relayward_recipients SET next_attempt = $2
                         WHERE message_id = $1 AND status = 'pending'",
                        &[&id.0, &signed(unix_now())],
                    )
                    .await?;
                if changed == 0 {
                    let exists = client
                        .query_opt("SELECT 1 FROM relayward_messages WHERE id = $1", &[&id.0])
                        .await?;
                    if exists.is_none() {
                        return Err(OpError::Queue(QueueError::not_found(id)));
                    }
                }
                Ok(())
            })
            .await?;
            self.admin_changed();
            Ok(())
        })
    }

    fn delete<'a>(&'a self, id: &'a MessageId) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            self.inner.lock_fresh().forget(id);
            self.simple(admin_write(
                &self.inner,
                id,
                "DELETE FROM relayward_messages WHERE id = $1",
                None,
            ))
            .await?;
            self.admin_changed();
            Ok(())
        })
    }

    fn quarantine<'a>(
        &'a self,
        id: &'a MessageId,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        self.inner.lock_fresh().forget(id);
        Box::pin(self.simple(async move {
            id.check().map_err(OpError::Queue)?;
            let mut client = self.inner.pool.get().await?;
            let tx = client.transaction().await?;
            let moved = tx
                .execute(
                    "INSERT INTO relayward_quarantine (id, reason, moved_by, envelope, content)
                     SELECT m.id, $2, $3,
                            json_build_object('sender', m.sender, 'arrived', m.arrived,
                                'client_ip', m.client_ip, 'auth_login', m.auth_login,
                                'origin', m.origin, 'options', m.options::json,
                                'recipients', (SELECT json_agg(json_build_object(
                                    'address', r.address, 'route', r.route, 'status', r.status,
                                    'attempts', r.attempts, 'last_error', r.last_error,
                                    'dsn', r.dsn::json, 'delay_notified', r.delay_notified)
                                    ORDER BY r.position)
                                  FROM relayward_recipients r WHERE r.message_id = m.id))::text,
                            m.content
                     FROM relayward_messages m WHERE m.id = $1
                     ON CONFLICT (id) DO UPDATE SET reason = EXCLUDED.reason",
                    &[&id.0, &storable(reason).as_ref(), &self.inner.node],
                )
                .await?;
            if moved == 0 {
                return Err(OpError::Queue(QueueError::not_found(id)));
            }
            tx.execute("DELETE FROM relayward_messages WHERE id = $1", &[&id.0])
                .await?;
            tx.commit().await?;
            tracing::error!(%id, reason = %relayward_protocol::text::Escaped(reason), "message moved to relayward_quarantine");
            Ok(())
        }))
    }

    fn changes(&self) -> BoxFuture<'_, Changes> {
        Box::pin(self.next_changes())
    }

    fn claim<'a>(
        &'a self,
        ids: &'a [MessageId],
        now: u64,
    ) -> BoxFuture<'a, Result<Vec<Claim>, QueueError>> {
        Box::pin(async move {
            let (mut claims, rest) = self.inner.claim_fresh(ids);
            if !rest.is_empty() {
                claims.extend(self.simple(lease::claim(&self.inner, &rest, now)).await?);
            }
            Ok(claims)
        })
    }

    fn release<'a>(&'a self, id: &'a MessageId) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let still_held = self.inner.lock_held().remove(id).is_some();
            if still_held {
                let _ = self.simple(lease::release(&self.inner, &id.0)).await;
            }
        })
    }
}

/// One-statement admin change of one message (`$1` = id, `$2` = `value` if any); `NotFound`
/// when no row changed.
async fn admin_write(
    inner: &Inner,
    id: &MessageId,
    sql: &str,
    value: Option<bool>,
) -> Result<(), OpError> {
    id.check().map_err(OpError::Queue)?;
    let client = inner.pool.get().await?;
    let changed = match value {
        Some(value) => client.execute(sql, &[&id.0, &value]).await?,
        None => client.execute(sql, &[&id.0]).await?,
    };
    if changed == 0 {
        return Err(OpError::Queue(QueueError::not_found(id)));
    }
    Ok(())
}

/// Starts the heartbeat; it runs until the queue is shut down or dropped.
fn spawn_heartbeat(inner: &Arc<Inner>, lease_timeout: Duration) -> JoinHandle<()> {
    let inner = Arc::clone(inner);
    let every = lease::heartbeat_interval(lease_timeout);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let _ = inner.run(lease::heartbeat(&inner)).await;
        }
    })
}

/// A server that acknowledges commits before they are on disk loses acknowledged mail in a
/// crash; say so loudly at start (the administrator may have reasons, e.g. a test bed).
async fn warn_about_durability(client: &tokio_postgres::Client) {
    if let Ok(row) = client.query_one("SHOW fsync", &[]).await {
        let fsync: String = row.get(0);
        if fsync == "off" {
            tracing::warn!(
                "the queue database runs with fsync = off: a crash of the database server can lose mail relayward has acknowledged"
            );
        }
    }
}

fn op_failure(error: OpError) -> Failure {
    match error {
        OpError::Db(e) => Failure::from(e),
        OpError::Pool(e) => Failure::from(e),
        OpError::Queue(e) => Failure::Other(e.to_string()),
    }
}

fn failure_text(failure: Failure) -> String {
    match failure {
        Failure::Unavailable(t) | Failure::Other(t) => t,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

//! The queue runner: takes due messages from the queue and delivers them.
//!
//! Durability rule (at-least-once): a recipient's status changes in the queue only *after*
//! the next hop accepted it (remote 2xx, Maildir fsynced) or after its bounce was queued.
//! A crash at any point leaves the recipient pending, so it is tried again: it may arrive
//! twice, it is never lost. Every group's outcomes are written with `Queue::update` before
//! the next group starts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use relayward_config::Live;
use relayward_protocol::route::{NextHop, Route, Routed, Unroutable};
use relayward_protocol::text::Escaped;
use relayward_queue::{
    Changes, Claim, MessageId, NewMessage, NewRecipient, Origin, Queue, QueueError, QueuedMessage,
    RcptDsn, RecipientState, RecipientStatus, RecipientUpdate,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::{
    self, ConnectParams, Connection, Envelope, EnvelopeOptions, Sent, SessionError, TlsPolicy,
};
use crate::config::{DeliveryConfig, DomainTlsMode, TlsPolicyMode};
use crate::context::DeliveryContext;
use crate::delay;
use crate::dsn::{self, FailedRecipient};
use crate::due::{self, DueIndex};
use crate::journal::{self, Journal};
use crate::mta_sts::StsCache;
use crate::mx::DnsFailure;
use crate::notice::{Delivered, SuccessReport, build_success};
use crate::outcome::{Failure, Outcome};
use crate::tls_policy::{DomainTls, HostPlan, PolicyKind, TlsOutcome, TlsResult};
use crate::tls_report::TlsLog;
use crate::tlsrpt::{FailureKey, ReportBook, ReportPolicy, TlsReporter};

/// Seconds before a queue entry that could not be read is looked at again.
const RETRY_READ_SECS: u64 = 5;

/// Most messages claimed in one call of [`Queue::claim`] (one round trip to a shared store).
const CLAIM_BATCH: usize = 256;

/// Most MX hosts, and addresses per host, tried in one attempt.
const MAX_HOSTS: usize = 10;
const MAX_ADDRESSES_PER_HOST: usize = 4;

/// Most SMTP sessions (connections that were made, whatever came of them) in one attempt to
/// one destination. Each may take its timeouts in full (five minutes for the greeting, as
/// many for each command), so 40 addresses of a destination whose hosts accept and then say
/// nothing would hold a delivery slot for hours; the recipients left wait for the next
/// retry. Postfix's `smtp_mx_session_limit` is 2.
const MAX_SESSIONS: usize = 3;

/// The queue runner. Construct with [`Runner::new`], start with [`Runner::run`].
#[derive(Clone)]
pub struct Runner {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Arc<dyn Queue>,
    /// The delivery side of the current configuration snapshot; taken once per message.
    live: Live<DeliveryContext>,
    total: Mutex<Limit>,
    per_destination: Mutex<HashMap<String, Limit>>,
    pool: Mutex<HashMap<String, Vec<(Connection, Instant)>>>,
    in_flight: Mutex<HashSet<MessageId>>,
    /// What is due when (see [`crate::due`]).
    due: Mutex<DueIndex>,
    /// When the queue was last listed whole.
    listed: Mutex<Instant>,
    /// MTA-STS policies by domain; outlives reloads.
    sts_cache: StsCache,
    /// TLS outcomes of MX connections (see [`crate::tls_report`]).
    tls_log: TlsLog,
    /// TLS-RPT counts, when the runner was given a book (see [`crate::tlsrpt`]).
    tls_book: Option<Arc<ReportBook>>,
}

/// What a delivery leaves in the queue, for the due index.
enum Left {
    /// Every recipient is final and the queue recorded it: the queue removed the message
    /// ([`Queue::update`]), so there is nothing to look up again.
    Nothing,
    /// Something may still be pending: the queue says when (see [`Runner::reindex`]), not
    /// before `not_before`.
    Pending { not_before: u64 },
}

/// A concurrency limit whose size a reload may change. A new size takes a new semaphore:
/// deliveries holding permits of the old one finish under it, so for a moment both count.
#[derive(Clone)]
struct Limit {
    size: usize,
    semaphore: Arc<Semaphore>,
}

impl Limit {
    fn new(size: usize) -> Self {
        Self {
            size,
            semaphore: Arc::new(Semaphore::new(size)),
        }
    }

    /// The semaphore for `size` permits, replacing this one if the size changed.
    fn resized(&mut self, size: usize) -> Arc<Semaphore> {
        if self.size != size {
            *self = Limit::new(size);
        }
        Arc::clone(&self.semaphore)
    }
}

/// A delivery's place in its destination's limit. Dropped (however the delivery ends), it
/// gives the permit back and removes the table entry if nobody else holds or waits for that
/// semaphore: every holder got its clone under the table's lock, so none can appear behind
/// our back. An entry whose size a reload changed is dropped the same way.
struct DestinationSlot {
    shared: Arc<Shared>,
    key: String,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for DestinationSlot {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut table = lock_destinations(&self.shared);
        if table
            .get(&self.key)
            .is_some_and(|limit| Arc::strong_count(&limit.semaphore) == 1)
        {
            table.remove(&self.key);
        }
    }
}

fn lock_destinations(shared: &Shared) -> std::sync::MutexGuard<'_, HashMap<String, Limit>> {
    shared
        .per_destination
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where a group of recipients goes: their stored next hop, with every Maildir one handled
/// by the same local group (each recipient still goes to its own Maildir).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Destination {
    Local,
    Smarthost,
    Route {
        host: String,
        port: u16,
    },
    Mx(String),
    /// No route: an entry from an older spool whose address the current router cannot place.
    Nowhere,
}

impl Destination {
    fn of(next_hop: Option<&NextHop>) -> Destination {
        let Some(next_hop) = next_hop else {
            return Destination::Nowhere;
        };
        match next_hop {
            NextHop::Maildir { .. } => Destination::Local,
            NextHop::Smtp { host, port } => Destination::Route {
                host: host.clone(),
                port: *port,
            },
            NextHop::Smarthost => Destination::Smarthost,
            NextHop::Mx { domain } => Destination::Mx(domain.clone()),
        }
    }

    fn key(&self) -> String {
        match self {
            Destination::Local => "local".into(),
            Destination::Smarthost => "smarthost".into(),
            Destination::Route { host, port } => format!("route:{host}:{port}"),
            Destination::Mx(domain) => format!("mx:{domain}"),
            Destination::Nowhere => "nowhere".into(),
        }
    }
}

/// What one group's outcomes mean for the queue (see [`Runner::classify`]).
#[derive(Default)]
struct Classified {
    /// To record now.
    updates: Vec<RecipientUpdate>,
    /// To bounce, then record as final.
    failed: Vec<FailedRecipient>,
    /// Deferred and owed a delay notice: recorded once the notice is queued.
    delayed: Vec<Delayed>,
}

/// A deferred recipient owed a delay notice: its deferral, and what the notice says of it.
struct Delayed {
    update: RecipientUpdate,
    report: FailedRecipient,
}

/// A due recipient and where it goes.
struct Due {
    address: String,
    next_hop: Option<NextHop>,
    /// The whole route (class and next hop), for the delivery log and metrics.
    route: Option<Route>,
}

/// One transaction's result: the recipients' outcomes, whether the connection was encrypted,
/// and our address on it.
struct Attempted {
    outcomes: Vec<Outcome>,
    encrypted: bool,
    local_ip: Option<std::net::IpAddr>,
    /// What the connection had done before this message.
    earlier: Earlier,
}

/// What a connection had done before the message whose TLS outcome is recorded.
#[derive(Clone, Copy, Debug, Default)]
struct Earlier {
    /// Taken from the pool: its TLS outcome was logged when it was opened.
    reused: bool,
    /// Already counted in the report of this outcome's domain: RFC 8460 counts sessions
    /// (connections), once each, and domains that share an MX host share its connections.
    reported: bool,
}

/// Removes a message from the in-flight set even when its task is aborted.
struct InFlight {
    shared: Arc<Shared>,
    id: MessageId,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut set) = self.shared.in_flight.lock() {
            set.remove(&self.id);
        }
    }
}

impl Runner {
    /// A runner that delivers with whatever context `live` holds when it takes up a message
    /// (see [`DeliveryContext`], already checked when it was built).
    pub fn new(queue: Arc<dyn Queue>, live: Live<DeliveryContext>) -> Self {
        Self::build(queue, live, None)
    }

    /// A runner that also counts TLS outcomes for TLS-RPT reports in `book` (while
    /// `[tls_report] enabled`); [`Runner::tls_reporter`] sends them.
    pub fn with_tls_reports(
        queue: Arc<dyn Queue>,
        live: Live<DeliveryContext>,
        book: Arc<ReportBook>,
    ) -> Self {
        Self::build(queue, live, Some(book))
    }

    fn build(
        queue: Arc<dyn Queue>,
        live: Live<DeliveryContext>,
        tls_book: Option<Arc<ReportBook>>,
    ) -> Self {
        let total = Mutex::new(Limit::new(live.current().settings.max_connections));
        let shared = Shared {
            queue,
            live,
            total,
            per_destination: Mutex::new(HashMap::new()),
            pool: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashSet::new()),
            due: Mutex::new(DueIndex::default()),
            listed: Mutex::new(Instant::now()),
            sts_cache: StsCache::default(),
            tls_log: TlsLog::default(),
            tls_book,
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// A runner for one fixed context (tests, one-shot commands).
    pub fn with_context(queue: Arc<dyn Queue>, context: DeliveryContext) -> Self {
        Self::new(queue, Live::fixed(Arc::new(context)))
    }

    fn context(&self) -> Arc<DeliveryContext> {
        self.shared.live.current()
    }

    /// Runs until `shutdown` resolves. Lists the queue once, then delivers from its due index,
    /// woken by the queue's [`Changes`], by the next due time and when a delivery finishes; it
    /// lists the whole queue again only when the queue asks for a rescan (an admin change) and
    /// every `rescan_interval` as a safety net. After shutdown, in-flight deliveries get
    /// `shutdown_grace` to finish, then are aborted (safe: their recipients are still pending).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        self.rescan().await;
        loop {
            self.prune_pool();
            let next_due = self.dispatch(&mut tasks).await;
            let sleep = self.sleep_until_next(next_due);
            tokio::select! {
                _ = &mut shutdown => break,
                changes = self.shared.queue.changes() => self.apply(changes).await,
                _ = tokio::time::sleep(sleep) => {
                    if self.rescan_is_due() {
                        self.rescan().await;
                    }
                }
                Some(_) = tasks.join_next() => {}
            }
        }
        let grace = self.context().settings.shutdown_grace;
        let _ =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        tasks.shutdown().await;
        self.close_pool().await;
    }

    /// One pass: lists the queue, delivers every due message and waits for all of them. For
    /// tests and for a `queue flush`-style command; `run` is the normal entry point.
    pub async fn run_once(&self) {
        let mut tasks = JoinSet::new();
        self.rescan().await;
        self.dispatch(&mut tasks).await;
        while tasks.join_next().await.is_some() {}
    }

    /// The TLS outcomes of MX connections so far (the most recent ones; see
    /// [`crate::tls_report`]).
    pub fn tls_outcomes(&self) -> Vec<TlsOutcome> {
        self.shared.tls_log.recent()
    }

    /// The sender of TLS-RPT reports from this runner's counts (`None` without a book).
    pub fn tls_reporter(&self) -> Option<TlsReporter> {
        let book = self.shared.tls_book.clone()?;
        Some(TlsReporter::new(
            Arc::clone(&self.shared.queue),
            self.shared.live.clone(),
            book,
        ))
    }

    /// Connections per (policy, result) since start: `relayward_tls_policy_total`.
    pub fn tls_counts(&self) -> Vec<((PolicyKind, TlsResult), u64)> {
        self.shared.tls_log.counts()
    }

    /// The messages being delivered right now (`relayward_queue_messages{state="active"}`).
    pub fn in_flight(&self) -> Vec<MessageId> {
        self.shared
            .in_flight
            .lock()
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How many entries the due index holds (stale ones included); for tests and metrics.
    pub fn due_entries(&self) -> usize {
        self.due().len()
    }

    fn due(&self) -> std::sync::MutexGuard<'_, DueIndex> {
        self.shared
            .due
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Rebuilds the due index from a full listing of the queue.
    async fn rescan(&self) {
        match self.shared.queue.list().await {
            Ok(messages) => {
                self.due().rebuild(&messages);
                tracing::debug!(messages = messages.len(), "queue listed");
            }
            Err(e) => log_queue_error(None, "cannot list the queue", &e),
        }
        if let Ok(mut listed) = self.shared.listed.lock() {
            *listed = Instant::now();
        }
    }

    fn rescan_is_due(&self) -> bool {
        let interval = self.context().settings.rescan_interval;
        self.shared
            .listed
            .lock()
            .map(|listed| listed.elapsed() >= interval)
            .unwrap_or(true)
    }

    /// Until the next due entry or the next safety rescan, whichever is first.
    fn sleep_until_next(&self, next_due: Option<u64>) -> Duration {
        let interval = self.context().settings.rescan_interval;
        let since = self
            .shared
            .listed
            .lock()
            .map(|listed| listed.elapsed())
            .unwrap_or_default();
        let until_rescan = interval.saturating_sub(since);
        let until_due = next_due.map_or(Duration::MAX, |at| {
            Duration::from_secs(at.saturating_sub(unix_now()))
        });
        until_due.min(until_rescan).max(Duration::from_millis(50))
    }

    /// Takes in what the queue reported: new messages, and those it says are due, are due
    /// now; anything else rescans.
    async fn apply(&self, changes: Changes) {
        if changes.rescan {
            self.rescan().await;
            return;
        }
        let now = unix_now();
        let mut due = self.due();
        for id in changes.enqueued.into_iter().chain(changes.due) {
            due.push(now, id);
        }
    }

    /// Starts a delivery for every message whose index entry is due and that the queue lets
    /// this runner claim (the entry may be stale, and in a shared queue another node may hold
    /// it: the claim answers with the current state or when to look again). Returns when the
    /// next entry falls due.
    async fn dispatch(&self, tasks: &mut JoinSet<()>) -> Option<u64> {
        let now = unix_now();
        // A message in flight is skipped: its task puts it back in the index when it ends.
        let due: Vec<MessageId> = self
            .due()
            .take_due(now)
            .into_iter()
            .filter(|id| !self.is_in_flight(id))
            .collect();
        for batch in due.chunks(CLAIM_BATCH) {
            match self.shared.queue.claim(batch, now).await {
                Ok(claims) => {
                    for claim in claims {
                        match claim {
                            Claim::Taken(message) => self.spawn(tasks, message),
                            // Never earlier than the next second: a clock that differs from
                            // the store's must not make the runner spin.
                            Claim::Later { id, at: Some(at) } => {
                                self.due().push(at.max(now + 1), id);
                            }
                            Claim::Later { at: None, .. } => {}
                        }
                    }
                }
                Err(e) => {
                    log_queue_error(None, "cannot claim due messages; trying again later", &e);
                    let later = now.saturating_add(RETRY_READ_SECS);
                    let mut index = self.due();
                    for id in batch {
                        index.push(later, id.clone());
                    }
                }
            }
        }
        self.due().next_at()
    }

    /// After a delivery: puts the message back in the index at its next attempt (not before
    /// `not_before`), if it still has one.
    async fn reindex(&self, id: &MessageId, not_before: u64) {
        match self.shared.queue.get(id).await {
            Ok(message) => {
                if let Some(at) = due::next_attempt(&message) {
                    self.due().push(at.max(not_before), id.clone());
                }
            }
            Err(QueueError::NotFound(_)) => {}
            // Not readable just now: look again soon rather than lose it from the index.
            Err(_) => {
                let later = unix_now().saturating_add(RETRY_READ_SECS);
                self.due().push(later.max(not_before), id.clone());
            }
        }
    }

    fn is_in_flight(&self, id: &MessageId) -> bool {
        self.shared
            .in_flight
            .lock()
            .map(|s| s.contains(id))
            .unwrap_or(true)
    }

    fn spawn(&self, tasks: &mut JoinSet<()>, message: QueuedMessage) {
        if let Ok(mut set) = self.shared.in_flight.lock() {
            set.insert(message.id.clone());
        }
        let guard = InFlight {
            shared: self.shared.clone(),
            id: message.id.clone(),
        };
        let runner = self.clone();
        tasks.spawn(async move {
            let id = message.id.clone();
            let left = runner.deliver_message(message).await;
            // Before the message leaves the in-flight set: once it has, `dispatch` may claim it
            // again, and a release after that would give up the new claim.
            runner.shared.queue.release(&id).await;
            drop(guard);
            if let Left::Pending { not_before } = left {
                runner.reindex(&id, not_before).await;
            }
        });
    }

    /// Delivers the due recipients of one message, group by group, then bounces the failed
    /// ones in a single DSN and sends one delay notice for those that are owed one (see
    /// [`crate::delay`]).
    ///
    /// Returns whether the message may still be in the queue ([`Left`]), and if so a time
    /// before which it must not be tried again although its stored state may say otherwise
    /// (the state could not be written): every path that fails to deliver moves the next
    /// attempt forward, in the queue or at least in the index.
    async fn deliver_message(&self, message: QueuedMessage) -> Left {
        let ctx = self.context();
        let retry_later = || Left::Pending {
            not_before: unix_now().saturating_add(RETRY_READ_SECS),
        };
        let content = match self.shared.queue.content(&message.id).await {
            Ok(content) => content,
            Err(QueueError::NotFound(_)) => return Left::Pending { not_before: 0 },
            Err(QueueError::Corrupt { reason, .. }) => {
                // It will never read better: out of the queue, for a person to look at.
                let why = format!("content unreadable: {reason}");
                if let Err(e) = self.shared.queue.quarantine(&message.id, &why).await {
                    tracing::error!(id = %message.id, error = %Escaped(&e.to_string()), "cannot move an unreadable message aside");
                    return retry_later();
                }
                return Left::Pending { not_before: 0 };
            }
            // The store is away (it said so in the log): try again when it is back, without
            // counting an attempt against the message.
            Err(e) if e.is_unavailable() => return retry_later(),
            Err(e) => {
                tracing::error!(id = %message.id, error = %Escaped(&e.to_string()), "cannot read message content");
                let failure = Failure::local((4, 3, 0), format!("queue read error: {e}"));
                self.defer_all(&ctx, &message, failure).await;
                return retry_later();
            }
        };
        let mut failed = Vec::new();
        let mut delivered_here = Vec::new();
        let mut delayed = Vec::new();
        // Recipients whose final status the queue has recorded in this delivery.
        let mut recorded_final: HashSet<String> = HashSet::new();
        let notices_from = delay::notices_from(&ctx.settings, &message, &content);
        for (destination, due) in self.groups(&ctx, &message) {
            let outcomes = self
                .deliver_group(&ctx, &destination, &message, &content, &due)
                .await;
            let recipients: Vec<String> = due.into_iter().map(|d| d.address).collect();
            if destination == Destination::Local {
                delivered_here.extend(delivered_asking_for_success(
                    &message,
                    &recipients,
                    &outcomes,
                ));
            }
            let mut classified = self.classify(&ctx, &message, &recipients, outcomes, notices_from);
            let finals: Vec<String> = classified
                .updates
                .iter()
                .filter(|u| u.status.is_final())
                .map(|u| u.address.clone())
                .collect();
            if let Err(e) = self
                .shared
                .queue
                .update(&message.id, classified.updates)
                .await
            {
                log_queue_error(Some(&message.id), "cannot record delivery results", &e);
                return retry_later();
            }
            recorded_final.extend(finals);
            failed.append(&mut classified.failed);
            delayed.append(&mut classified.delayed);
        }
        // Bounces and delay notices record their recipients themselves, and may fail to: for
        // those the queue says what is left.
        let settled = failed.is_empty()
            && delayed.is_empty()
            && message
                .recipients
                .iter()
                .all(|r| r.status.is_final() || recorded_final.contains(&r.address));
        if !delivered_here.is_empty() {
            self.notify_success(&ctx, &message, &content, &delivered_here)
                .await;
        }
        if !failed.is_empty() {
            self.bounce(&ctx, &message, &content, failed).await;
        }
        if !delayed.is_empty() {
            self.notify_delay(&ctx, &message, &content, delayed).await;
        }
        if settled {
            Left::Nothing
        } else {
            Left::Pending { not_before: 0 }
        }
    }

    /// Due pending recipients, grouped by destination (one transaction per group), each going
    /// where its stored route says.
    fn groups(
        &self,
        ctx: &DeliveryContext,
        message: &QueuedMessage,
    ) -> BTreeMap<Destination, Vec<Due>> {
        let now = unix_now();
        let mut groups: BTreeMap<Destination, Vec<Due>> = BTreeMap::new();
        for r in &message.recipients {
            if r.status.is_final() || r.next_attempt > now {
                continue;
            }
            let route = stored_route(ctx, &message.id, r);
            let next_hop = route.as_ref().map(|route| route.next_hop.clone());
            groups
                .entry(Destination::of(next_hop.as_ref()))
                .or_default()
                .push(Due {
                    address: r.address.clone(),
                    next_hop,
                    route,
                });
        }
        groups
    }

    /// One outcome per recipient, in order, within the concurrency limits.
    async fn deliver_group(
        &self,
        ctx: &DeliveryContext,
        destination: &Destination,
        message: &QueuedMessage,
        content: &[u8],
        due: &[Due],
    ) -> Vec<Outcome> {
        let _total = self.total_permit(ctx).acquire_owned().await;
        let _dest = self.destination_slot(ctx, destination).await;
        let recipients: Vec<String> = due.iter().map(|d| d.address.clone()).collect();
        let recipient_dsn: Vec<RcptDsn> = recipients
            .iter()
            .map(|address| recipient_dsn(message, address))
            .collect();
        let envelope = Envelope {
            sender: &message.sender,
            recipients: &recipients,
            content,
            options: EnvelopeOptions {
                smtputf8: message.options.smtputf8,
                dsn: Some(&message.options.dsn),
                recipient_dsn: &recipient_dsn,
                from_stranger: message.origin == Origin::Stranger,
            },
        };
        let attempt = journal::Attempt {
            id: &message.id,
            arrived: message.arrived,
            started: Instant::now(),
        };
        let journal = Journal::default();
        let outcomes = match destination {
            Destination::Local => self.deliver_local(ctx, due, content).await,
            Destination::Nowhere => {
                let failure = Failure::local((5, 1, 1), "no route to this recipient");
                vec![Outcome::Failed(failure); due.len()]
            }
            Destination::Smarthost => self.deliver_smarthost(ctx, &envelope, &journal).await,
            Destination::Route { host, port } => {
                // A route's target is the admin's, not the recipient domain's: no published
                // policy applies to it.
                let hosts = vec![host.clone()];
                let tls = DomainTls::Opportunistic;
                self.deliver_hosts(ctx, host, &hosts, *port, &tls, false, &envelope, &journal)
                    .await
            }
            Destination::Mx(domain) => {
                let report = crate::tlsrpt::is_report(message, content);
                self.deliver_mx(ctx, domain, report, &envelope, &journal)
                    .await
            }
        };
        let logged: Vec<journal::Recipient<'_>> = due
            .iter()
            .map(|d| journal::Recipient {
                address: &d.address,
                route: d.route.as_ref(),
            })
            .collect();
        attempt.finish(&journal, &logged, &outcomes);
        outcomes
    }

    fn total_permit(&self, ctx: &DeliveryContext) -> Arc<Semaphore> {
        self.shared
            .total
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .resized(ctx.settings.max_connections)
    }

    /// A place among the deliveries running to `destination` (waits for one). The table
    /// entry is made on demand and forgotten when its last holder is done (see
    /// [`DestinationSlot`]), so a relay that has sent to millions of domains over its life
    /// keeps entries only for those it is sending to now.
    async fn destination_slot(
        &self,
        ctx: &DeliveryContext,
        destination: &Destination,
    ) -> DestinationSlot {
        let size = ctx.settings.max_per_destination;
        let key = destination.key();
        let semaphore = lock_destinations(&self.shared)
            .entry(key.clone())
            .or_insert_with(|| Limit::new(size))
            .resized(size);
        let mut slot = DestinationSlot {
            shared: Arc::clone(&self.shared),
            key,
            permit: None,
        };
        slot.permit = semaphore.acquire_owned().await.ok();
        slot
    }

    /// Destinations with a concurrency limit in use (deliveries running or waiting); for
    /// tests and metrics.
    pub fn destinations_tracked(&self) -> usize {
        lock_destinations(&self.shared).len()
    }

    /// Writes each recipient's copy into the Maildir its route names (see [`crate::local`]).
    async fn deliver_local(
        &self,
        ctx: &DeliveryContext,
        due: &[Due],
        content: &[u8],
    ) -> Vec<Outcome> {
        let content = Arc::new(content.to_vec());
        let mut outcomes = Vec::with_capacity(due.len());
        for rcpt in due {
            let copy = Arc::clone(&content);
            let outcome =
                crate::local::write_copy(&ctx.settings.mail_root, rcpt.next_hop.as_ref(), copy)
                    .await;
            outcomes.push(outcome);
        }
        outcomes
    }

    /// MX delivery under the domain's TLS policy; a TLS report of ours (`tls_report`) goes
    /// with opportunistic TLS whatever the domain publishes (RFC 8460 §5.3: reports are
    /// delivered despite TLS failures), so it is never held to a policy nor reported on.
    async fn deliver_mx(
        &self,
        ctx: &DeliveryContext,
        domain: &str,
        tls_report: bool,
        envelope: &Envelope<'_>,
        journal: &Journal,
    ) -> Vec<Outcome> {
        let n = envelope.recipients.len();
        match ctx.resolver.mx_hosts(domain).await {
            Ok(hosts) => {
                let names: Vec<String> = hosts.into_iter().map(|h| h.name).collect();
                let (tls, dane) = if tls_report {
                    (DomainTls::Opportunistic, false)
                } else {
                    (
                        self.domain_tls(ctx, domain).await,
                        dane_applies(ctx, domain),
                    )
                };
                let port = ctx.settings.mx_port;
                self.deliver_hosts(ctx, domain, &names, port, &tls, dane, envelope, journal)
                    .await
            }
            Err(failure) => vec![dns_outcome(&failure); n],
        }
    }

    /// The TLS policy of `domain` for this attempt: the admin's `[[tls_policy]]`, else (with
    /// `tls_policy = "mta-sts-dane"`) its published MTA-STS policy.
    async fn domain_tls(&self, ctx: &DeliveryContext, domain: &str) -> DomainTls {
        let settings = &ctx.settings;
        match relayward_config::tls_policy::override_for(&settings.tls_policies, domain) {
            Some(DomainTlsMode::RequireVerified) => return DomainTls::RequireVerified,
            Some(DomainTlsMode::None) => return DomainTls::Opportunistic,
            None => {}
        }
        if settings.tls_policy == TlsPolicyMode::Opportunistic {
            return DomainTls::Opportunistic;
        }
        let found = self
            .shared
            .sts_cache
            .discover(&ctx.sts_fetcher, domain, unix_now())
            .await;
        if let Some(error) = &found.error {
            tracing::warn!(domain = %Escaped(domain), error = %Escaped(&error.to_string()), cached = found.policy.is_some(), "MTA-STS policy not fetched");
            let outcome = self.shared.tls_log.policy_error(domain, error);
            if let Some(book) = self.report_book(ctx) {
                let policy = match &found.policy {
                    Some(policy) => ReportPolicy::sts(domain, policy),
                    None => ReportPolicy::none_found(domain),
                };
                book.record(policy, FailureKey::of(&outcome));
            }
        }
        if let Some(policy) = &found.policy {
            tracing::debug!(domain = %Escaped(domain), mode = policy.mode.as_str(), "MTA-STS policy in force");
        }
        DomainTls::from_sts(found.policy)
    }

    /// Tries hosts in order; recipients deferred by one host (4xx, connection failure) are
    /// tried on the next. Final outcomes (2xx, 5xx) stop there.
    ///
    /// Addresses of our own listeners are skipped; when they are all there was, the mail for
    /// `destination` "loops back to myself" (5.4.6, as Postfix says) and bounces.
    ///
    /// Each host is used as `tls` plans it, after its TLSA lookup when `dane` applies.
    #[allow(clippy::too_many_arguments)]
    async fn deliver_hosts(
        &self,
        ctx: &DeliveryContext,
        destination: &str,
        hosts: &[String],
        port: u16,
        tls: &DomainTls,
        dane: bool,
        envelope: &Envelope<'_>,
        journal: &Journal,
    ) -> Vec<Outcome> {
        let n = envelope.recipients.len();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
        let mut last = Failure::local((4, 4, 4), "no mail exchanger could be tried");
        let (mut looped, mut tried) = (false, false);
        let mut sessions = 0;
        for host in hosts.iter().take(MAX_HOSTS) {
            if sessions >= MAX_SESSIONS {
                break;
            }
            let mut plan = tls.plan(destination, host);
            if dane {
                let answer = ctx.dane.tlsa(host, port).await;
                plan = HostPlan::with_dane(answer, destination, host, plan);
            }
            let plan = match plan {
                HostPlan::Refused {
                    mut failure,
                    outcome,
                } => {
                    // The queue entry keeps the outcome in the form `queue show` prints.
                    failure.text = format!("TLS {}", outcome.summary());
                    let refused = HostPlan::Refused {
                        failure: failure.clone(),
                        outcome: outcome.clone(),
                    };
                    self.record_tls(ctx, outcome, tls, &refused, Earlier::default());
                    last = failure;
                    continue;
                }
                plan => plan,
            };
            let addresses = match ctx.resolver.addresses(host).await {
                Ok(a) => a,
                Err(e) => {
                    last = dns_failure(&e);
                    continue;
                }
            };
            for ip in addresses.into_iter().take(MAX_ADDRESSES_PER_HOST) {
                let open: Vec<usize> = (0..n).filter(|&i| !is_final(&outcomes[i])).collect();
                if open.is_empty() {
                    return settle(outcomes, &last);
                }
                let rcpts: Vec<String> = open
                    .iter()
                    .map(|&i| envelope.recipients[i].clone())
                    .collect();
                let sub_dsn: Vec<RcptDsn> = open
                    .iter()
                    .map(|&i| {
                        envelope
                            .options
                            .recipient_dsn
                            .get(i)
                            .cloned()
                            .unwrap_or_default()
                    })
                    .collect();
                let sub = Envelope {
                    sender: envelope.sender,
                    recipients: &rcpts,
                    content: envelope.content,
                    options: EnvelopeOptions {
                        recipient_dsn: &sub_dsn,
                        ..envelope.options
                    },
                };
                let addr = SocketAddr::new(ip, port);
                if ctx.own.contains(addr) {
                    tracing::warn!(destination = %Escaped(destination), host = %Escaped(host), %addr, "next hop is this server's own listener; skipped");
                    looped = true;
                    continue;
                }
                if sessions >= MAX_SESSIONS {
                    break;
                }
                tried = true;
                match self
                    .attempt_under_policy(ctx, destination, host, addr, &plan, tls, &sub, journal)
                    .await
                {
                    Ok(results) => {
                        sessions += 1;
                        for (&i, outcome) in open.iter().zip(results) {
                            outcomes[i] = Some(outcome);
                        }
                    }
                    Err(e) => {
                        // A connection that was made (it has our side's address) is a session.
                        if e.local_ip.is_some() {
                            sessions += 1;
                        }
                        last = e.failure;
                    }
                }
            }
        }
        if looped && !tried {
            last = Failure::local(
                (5, 4, 6),
                format!("mail for {destination} loops back to myself"),
            );
        }
        settle(outcomes, &last)
    }

    async fn deliver_smarthost(
        &self,
        ctx: &DeliveryContext,
        envelope: &Envelope<'_>,
        journal: &Journal,
    ) -> Vec<Outcome> {
        let n = envelope.recipients.len();
        let Some(smarthost) = &ctx.smarthost else {
            // Routed to the smart host when accepted, and the reloaded configuration has none:
            // wait for the admin (set one again, or let the lifetime run out) rather than guess.
            let failure = Failure::local(
                (4, 3, 5),
                "routed to the smart host, but [delivery] smarthost is no longer configured",
            );
            return vec![Outcome::Deferred(failure); n];
        };
        let addresses = match ctx.resolver.addresses(&smarthost.host).await {
            Ok(a) => a,
            Err(e) => return vec![Outcome::Deferred(dns_failure(&e)); n],
        };
        let mut last = Failure::local((4, 4, 1), "smart host has no usable address");
        for ip in addresses.into_iter().take(MAX_ADDRESSES_PER_HOST) {
            if ctx.own.contains(SocketAddr::new(ip, smarthost.port)) {
                last = Failure::local(
                    (4, 4, 6),
                    format!(
                        "the smart host {} is this server itself: mail loops back to myself",
                        smarthost.host
                    ),
                );
                continue;
            }
            if matches!(smarthost.tls, TlsPolicy::None) && !ip.to_canonical().is_loopback() {
                last = Failure::local(
                    (4, 7, 0),
                    format!("refusing clear text to the non-loopback smart host address {ip}"),
                );
                continue;
            }
            let params = ConnectParams {
                addr: SocketAddr::new(ip, smarthost.port),
                host_name: smarthost.host.clone(),
                helo: ctx.settings.hostname.clone(),
                tls: smarthost.tls.clone(),
                credentials: smarthost.credentials.clone(),
                timeouts: ctx.settings.timeouts,
            };
            match self.attempt(params, envelope, journal, None).await {
                // The smart host decides for every recipient; a 4xx there is not improved
                // by another address of the same service.
                Ok(attempted) => return attempted.outcomes,
                Err(e) => last = e.failure,
            }
        }
        // A smart host's problems are never the recipient's fault: always retry.
        vec![Outcome::Deferred(last.as_transient()); n]
    }

    /// One transaction with one MX address, with the TLS its host's plan demands; every
    /// connection's TLS outcome is recorded. Under MTA-STS `testing` a failed verification is
    /// recorded and the host used opportunistically.
    #[allow(clippy::too_many_arguments)]
    async fn attempt_under_policy(
        &self,
        ctx: &DeliveryContext,
        domain: &str,
        host: &str,
        addr: SocketAddr,
        plan: &HostPlan,
        tls: &DomainTls,
        envelope: &Envelope<'_>,
        journal: &Journal,
    ) -> Result<Vec<Outcome>, SessionError> {
        let outcome = |policy,
                       result,
                       fault: Option<(&'static str, String)>,
                       sending_ip: Option<std::net::IpAddr>| {
            let (result_type, detail) = fault.unzip();
            TlsOutcome {
                domain: domain.to_string(),
                host: host.to_string(),
                policy,
                result,
                result_type,
                detail,
                sending_ip,
                receiving_ip: Some(addr.ip()),
            }
        };
        // (connection parameters, policy, result on success, whether a failure stops here)
        let strict = match plan {
            HostPlan::Verified(kind) => Some((
                verified_params(ctx, host, addr),
                *kind,
                TlsResult::Verified,
                true,
            )),
            HostPlan::VerifiedOrReport(kind) if !tls.testing_mismatch(host) => Some((
                verified_params(ctx, host, addr),
                *kind,
                TlsResult::Verified,
                false,
            )),
            HostPlan::Dane(records) => Some((
                dane_params(ctx, host, addr, records)?,
                PolicyKind::Dane,
                TlsResult::Verified,
                true,
            )),
            HostPlan::EncryptedOnly => Some((
                encrypted_params(ctx, host, addr),
                PolicyKind::Dane,
                TlsResult::Encrypted,
                true,
            )),
            HostPlan::VerifiedOrReport(_) | HostPlan::Opportunistic | HostPlan::Refused { .. } => {
                None
            }
        };
        if let Some((params, kind, success, enforced)) = strict {
            match self.attempt(params, envelope, journal, Some(domain)).await {
                Ok(attempted) => {
                    self.record_tls(
                        ctx,
                        outcome(kind, success, None, attempted.local_ip),
                        tls,
                        plan,
                        attempted.earlier,
                    );
                    return Ok(attempted.outcomes);
                }
                Err(mut e) => {
                    let Some(result_type) = e.tls_fault else {
                        return Err(e);
                    };
                    let failed = outcome(
                        kind,
                        TlsResult::Failed,
                        Some((result_type, e.failure.text.clone())),
                        e.local_ip,
                    );
                    // The queue entry keeps the outcome in the form `queue show` prints.
                    e.failure.text = format!("TLS {}", failed.summary());
                    self.record_tls(ctx, failed, tls, plan, Earlier::default());
                    if enforced {
                        return Err(e);
                    }
                }
            }
        }
        let attempted = self
            .attempt(mx_params(ctx, host, addr), envelope, journal, Some(domain))
            .await;
        if let HostPlan::VerifiedOrReport(kind) = plan
            && tls.testing_mismatch(host)
        {
            // Recorded once the connection says from which address it was made.
            let detail = format!(
                "MX host {host} is not named by the MTA-STS policy of {domain} (mode testing: delivered anyway)"
            );
            let (sending_ip, earlier) = match &attempted {
                Ok(attempted) => (attempted.local_ip, attempted.earlier),
                Err(e) => (e.local_ip, Earlier::default()),
            };
            let failed = outcome(
                *kind,
                TlsResult::Failed,
                Some(("validation-failure", detail)),
                sending_ip,
            );
            self.record_tls(ctx, failed, tls, plan, earlier);
        }
        let attempted = attempted?;
        let result = if attempted.encrypted {
            TlsResult::Encrypted
        } else {
            TlsResult::Cleartext
        };
        // Under MTA-STS testing the failure is what was recorded.
        if *plan == HostPlan::Opportunistic {
            let opportunistic =
                outcome(PolicyKind::Opportunistic, result, None, attempted.local_ip);
            self.record_tls(ctx, opportunistic, tls, plan, attempted.earlier);
        }
        Ok(attempted.outcomes)
    }

    /// Logs, counts and keeps one TLS outcome; with `[tls_report]` on, an outcome under a
    /// published policy (MTA-STS, DANE) is also counted for the domain's report, once per
    /// connection and domain ([`Earlier::reported`]): RFC 8460 counts sessions. A success on
    /// a reused connection is logged at debug level only: its TLS was logged when it was
    /// opened (like Postfix's one TLS line per connection), and a line per message would
    /// double the mail log of a busy relay.
    fn record_tls(
        &self,
        ctx: &DeliveryContext,
        outcome: TlsOutcome,
        tls: &DomainTls,
        plan: &HostPlan,
        earlier: Earlier,
    ) {
        let detail = outcome.detail.as_deref().unwrap_or("");
        if outcome.result == TlsResult::Failed {
            tracing::warn!(domain = %Escaped(&outcome.domain), host = %Escaped(&outcome.host), policy = outcome.policy.as_str(), result = outcome.result.as_str(), result_type = outcome.result_type.unwrap_or(""), detail = %Escaped(detail), "TLS policy not met");
        } else if earlier.reused {
            tracing::debug!(domain = %Escaped(&outcome.domain), host = %Escaped(&outcome.host), policy = outcome.policy.as_str(), result = outcome.result.as_str(), "TLS (connection reused)");
        } else {
            tracing::info!(domain = %Escaped(&outcome.domain), host = %Escaped(&outcome.host), policy = outcome.policy.as_str(), result = outcome.result.as_str(), "TLS");
        }
        if !earlier.reported
            && let Some(book) = self.report_book(ctx)
            && let Some(policy) = report_policy(ctx, &outcome, tls, plan)
        {
            book.record(policy, FailureKey::of(&outcome));
        }
        self.shared.tls_log.record(outcome);
    }

    /// The report book, when reports are on.
    fn report_book(&self, ctx: &DeliveryContext) -> Option<&ReportBook> {
        self.shared
            .tls_book
            .as_deref()
            .filter(|_| ctx.settings.tls_report.enabled)
    }

    /// One transaction on a pooled or new connection to `params.addr`; with the outcomes,
    /// whether the connection was encrypted and from which address. The journal learns which relay answered (or was
    /// tried) for its recipients.
    async fn attempt(
        &self,
        params: ConnectParams,
        envelope: &Envelope<'_>,
        journal: &Journal,
        report_domain: Option<&str>,
    ) -> Result<Attempted, SessionError> {
        let key = pool_key(&params);
        let pooled = self.take_pooled(&key).await;
        let mut reused = pooled.is_some();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => self.open_for(&params, envelope, journal).await?,
        };
        let mut sent = conn.send(envelope).await;
        if matches!(sent, Sent::Stale) {
            // Closed while pooled (the server's idle timeout): nothing was sent yet.
            tracing::debug!(remote = %Escaped(&conn.remote), "pooled connection closed; opening a new one");
            reused = false;
            conn = self.open_for(&params, envelope, journal).await?;
            sent = conn.send(envelope).await;
        }
        let outcomes = sent.outcomes(envelope.recipients.len());
        let encrypted = conn.tls;
        let local_ip = conn.local_ip;
        let reported = report_domain.is_some_and(|domain| !conn.first_session_for(domain));
        journal.answered(
            envelope.recipients,
            &conn.remote,
            conn.last_reply().map(crate::outcome::reply_text),
        );
        if conn.reusable() && may_reuse(&self.context().settings, &conn, Instant::now()) {
            if let Some(oldest) = self.put_pooled(key, conn) {
                quit_off_path(oldest);
            }
        } else {
            conn.quit().await;
        }
        Ok(Attempted {
            outcomes,
            encrypted,
            earlier: Earlier { reused, reported },
            local_ip,
        })
    }

    /// A new connection for `envelope`; a failure to connect is journaled as tried.
    async fn open_for(
        &self,
        params: &ConnectParams,
        envelope: &Envelope<'_>,
        journal: &Journal,
    ) -> Result<Connection, SessionError> {
        self.open(params).await.inspect_err(|_| {
            journal.tried(envelope.recipients, &params.remote());
        })
    }

    /// Connects; an opportunistic TLS handshake failure is retried once in clear text, as
    /// RFC 7435 suggests (MX hosts only: `Required` and `Implicit` never fall back).
    async fn open(&self, params: &ConnectParams) -> Result<Connection, SessionError> {
        let opened = self.connect_or_clear(params).await;
        if let Ok(conn) = &opened
            && let Some(version) = conn.tls_version()
        {
            relayward_metrics::global().tls_session("outbound", version);
        }
        opened
    }

    async fn connect_or_clear(&self, params: &ConnectParams) -> Result<Connection, SessionError> {
        match client::connect(params).await {
            Err(e) if e.tls_handshake && matches!(params.tls, TlsPolicy::Opportunistic(_)) => {
                tracing::info!(host = %Escaped(&params.host_name), error = %Escaped(&e.to_string()), "TLS failed; retrying in clear");
                let mut clear = params.clone();
                clear.tls = TlsPolicy::None;
                client::connect(&clear).await
            }
            other => other,
        }
    }

    async fn take_pooled(&self, key: &str) -> Option<Connection> {
        loop {
            let candidate = {
                let mut pool = self.shared.pool.lock().ok()?;
                pool.get_mut(key).and_then(Vec::pop)
            };
            let (mut conn, since) = candidate?;
            if !may_reuse(&self.context().settings, &conn, since) {
                quit_off_path(conn);
            } else if conn.reuse().await {
                return Some(conn);
            }
        }
    }

    /// Pools `conn` for the next message to its host. Idle connections count against
    /// `max_connections` too (each holds a descriptor here and a session on its server): with
    /// the pool full, the connection idle longest leaves it and is returned, to be closed.
    fn put_pooled(&self, key: String, conn: Connection) -> Option<Connection> {
        let limit = self.context().settings.max_connections;
        let mut pool = self.shared.pool.lock().ok()?;
        pool.entry(key).or_default().push((conn, Instant::now()));
        if pool.values().map(Vec::len).sum::<usize>() <= limit {
            return None;
        }
        // Each host's list is oldest first (connections are taken from its end).
        let oldest_key = pool
            .iter()
            .filter_map(|(key, conns)| conns.first().map(|(_, since)| (since, key)))
            .min()
            .map(|(_, key)| key.clone())?;
        let conns = pool.get_mut(&oldest_key)?;
        let (oldest, _) = conns.remove(0);
        if conns.is_empty() {
            pool.remove(&oldest_key);
        }
        Some(oldest)
    }

    /// Closes the pooled connections that [`may_reuse`] no longer allows.
    fn prune_pool(&self) {
        let ctx = self.context();
        let expired: Vec<Connection> = match self.shared.pool.lock() {
            Ok(mut pool) => {
                let mut expired = Vec::new();
                for conns in pool.values_mut() {
                    let (keep, old) = std::mem::take(conns)
                        .into_iter()
                        .partition(|(conn, since)| may_reuse(&ctx.settings, conn, *since));
                    *conns = keep;
                    expired.extend(old.into_iter().map(|(conn, _)| conn));
                }
                pool.retain(|_, conns| !conns.is_empty());
                expired
            }
            Err(_) => Vec::new(),
        };
        expired.into_iter().for_each(quit_off_path);
    }

    async fn close_pool(&self) {
        let conns: Vec<Connection> = match self.shared.pool.lock() {
            Ok(mut pool) => pool.drain().flat_map(|(_, v)| v).map(|(c, _)| c).collect(),
            Err(_) => Vec::new(),
        };
        for conn in conns {
            conn.quit().await;
        }
    }

    /// Turns outcomes into queue updates. Delivered and deferred recipients are recorded
    /// now; failed and expired ones are returned, to be recorded after their bounce is queued;
    /// deferred ones owed a delay notice (from `notices_from` on, see [`crate::delay`]) are
    /// returned with their update, to be recorded once the notice is queued. A recipient
    /// whose notice falls due before its next retry is tried again then, so that the notice
    /// is on time and says how the latest attempt went.
    fn classify(
        &self,
        ctx: &DeliveryContext,
        message: &QueuedMessage,
        recipients: &[String],
        outcomes: Vec<Outcome>,
        notices_from: Option<u64>,
    ) -> Classified {
        let now = unix_now();
        let deadline = message
            .arrived
            .saturating_add(ctx.settings.max_queue_lifetime.as_secs());
        let mut classified = Classified::default();
        for (address, outcome) in recipients.iter().zip(outcomes) {
            let state = message.recipients.iter().find(|r| &r.address == address);
            let orcpt = state.and_then(|r| r.dsn.orcpt.clone());
            match outcome {
                Outcome::Delivered => classified.updates.push(RecipientUpdate {
                    address: address.clone(),
                    status: RecipientStatus::Delivered,
                    last_error: None,
                    next_attempt: 0,
                    delay_notified: false,
                }),
                Outcome::Failed(failure) => classified.failed.push(FailedRecipient {
                    address: address.clone(),
                    failure,
                    expired: false,
                    orcpt,
                }),
                Outcome::Deferred(failure) if now >= deadline => {
                    classified.failed.push(FailedRecipient {
                        address: address.clone(),
                        failure,
                        expired: true,
                        orcpt,
                    })
                }
                Outcome::Deferred(failure) => {
                    let failures = attempts_of(message, address).saturating_add(1);
                    let delay = ctx.settings.retry.delay(failures);
                    let mut next = now.saturating_add(delay.as_secs_f64().ceil().max(1.0) as u64);
                    let owed_from = notices_from
                        .filter(|_| state.is_some_and(|r| delay::wants_notice(message, r)));
                    if let Some(at) = owed_from.filter(|&at| at > now) {
                        next = next.min(at);
                    }
                    let update = RecipientUpdate {
                        address: address.clone(),
                        status: RecipientStatus::Pending,
                        last_error: Some(failure.text.clone()),
                        next_attempt: next.min(deadline.max(now + 1)),
                        delay_notified: false,
                    };
                    if owed_from.is_some_and(|at| at <= now) {
                        classified.delayed.push(Delayed {
                            update,
                            report: FailedRecipient {
                                address: address.clone(),
                                failure,
                                expired: false,
                                orcpt,
                            },
                        });
                    } else {
                        classified.updates.push(update);
                    }
                }
            }
        }
        classified
    }

    /// Queues one DSN for all failed recipients (unless the sender is null), then marks them
    /// final. If the DSN cannot be queued they stay pending and fail again on the next try.
    async fn bounce(
        &self,
        ctx: &DeliveryContext,
        message: &QueuedMessage,
        content: &[u8],
        failed: Vec<FailedRecipient>,
    ) {
        let now = unix_now();
        // RFC 3461: NOTIFY without FAILURE (NEVER, or SUCCESS/DELAY only) means no bounce.
        let wanted: Vec<FailedRecipient> = failed
            .iter()
            .filter(|f| {
                recipient_dsn(message, &f.address)
                    .effective_notify()
                    .failure
            })
            .cloned()
            .collect();
        if message.sender.is_empty() {
            tracing::warn!(id = %message.id, "undeliverable message with null sender: not bounced");
        } else if relayward_protocol::header::is_automatic(content) {
            // A report or auto-reply bounced back could be bounced again by the other side.
            tracing::warn!(id = %message.id, "undeliverable automatic reply or report: not bounced");
        } else if wanted.is_empty() {
            tracing::info!(id = %message.id, "undeliverable, but the sender asked for no failure notice (NOTIFY): not bounced");
        } else if let Err(e) = self.queue_dsn(ctx, message, content, &wanted, now).await {
            tracing::error!(id = %message.id, error = %e, "cannot queue the bounce; will retry");
            let retry = now.saturating_add(ctx.settings.retry.delay(1).as_secs().max(1));
            let updates = failed
                .iter()
                .map(|f| RecipientUpdate {
                    address: f.address.clone(),
                    status: RecipientStatus::Pending,
                    last_error: Some(format!("{} (bounce not queued: {e})", f.failure.text)),
                    next_attempt: retry,
                    delay_notified: false,
                })
                .collect();
            let _ = self.shared.queue.update(&message.id, updates).await;
            return;
        }
        let updates = failed
            .into_iter()
            .map(|f| RecipientUpdate {
                address: f.address,
                status: if f.expired {
                    RecipientStatus::Expired
                } else {
                    RecipientStatus::Bounced
                },
                last_error: Some(f.failure.text),
                next_attempt: 0,
                delay_notified: false,
            })
            .collect();
        if let Err(e) = self.shared.queue.update(&message.id, updates).await {
            tracing::error!(id = %message.id, error = %e, "cannot record bounced recipients");
        }
    }

    /// Queues the DSN to the original sender, routed by the current routing table like any
    /// recipient. A sender with no route (an unknown mailbox of a local domain, an address
    /// literal, sender-specified routing) gets no bounce: that is `Ok(None)`.
    async fn queue_dsn(
        &self,
        ctx: &DeliveryContext,
        message: &QueuedMessage,
        content: &[u8],
        failed: &[FailedRecipient],
        now: u64,
    ) -> Result<Option<MessageId>, relayward_queue::QueueError> {
        let Some(recipient) = bounce_recipient(ctx, message) else {
            return Ok(None);
        };
        let report = dsn::build(&report_on(
            ctx,
            message,
            content,
            dsn::Kind::Failure,
            failed,
            now,
        ));
        let id = self
            .enqueue_notice(recipient, report, message.options.smtputf8)
            .await?;
        tracing::info!(id = %message.id, dsn = %id, to = %Escaped(&message.sender), "bounce queued");
        Ok(Some(id))
    }

    /// Queues one success notice (RFC 3461 `NOTIFY=SUCCESS`) for recipients delivered into a
    /// Maildir. Only for authenticated senders (see [`crate::notice`]); routed like a bounce;
    /// a notice that cannot be queued is logged and dropped: the mail itself was delivered.
    async fn notify_success(
        &self,
        ctx: &DeliveryContext,
        message: &QueuedMessage,
        content: &[u8],
        delivered: &[Delivered],
    ) {
        if message.sender.is_empty() || message.auth_login.is_none() {
            tracing::info!(id = %message.id, "success notice not sent: sender not authenticated");
            return;
        }
        let Some(recipient) = bounce_recipient(ctx, message) else {
            return;
        };
        let notice = build_success(&SuccessReport {
            reporting_mta: &ctx.settings.hostname,
            original_sender: &message.sender,
            original_id: &message.id.0,
            envid: message.options.dsn.envid.as_deref(),
            arrived: message.arrived,
            now: unix_now(),
            recipients: delivered,
            original: content,
            smtputf8: message.options.smtputf8,
        });
        let queued = self
            .enqueue_notice(recipient, notice, message.options.smtputf8)
            .await;
        match queued {
            Ok(id) => {
                tracing::info!(id = %message.id, notice = %id, to = %Escaped(&message.sender), "success notice queued")
            }
            Err(e) => {
                tracing::error!(id = %message.id, error = %e, "cannot queue the success notice")
            }
        }
    }

    /// Queues one delay notice (RFC 3464 `Action: delayed`) for the deferred recipients owed
    /// one, then records their deferral with `delay_notified`. A notice that cannot be queued
    /// is logged and tried again at the next deferral; a sender without a route never gets
    /// one, so the recipients are recorded as notified (nothing to try again).
    async fn notify_delay(
        &self,
        ctx: &DeliveryContext,
        message: &QueuedMessage,
        content: &[u8],
        delayed: Vec<Delayed>,
    ) {
        let (mut updates, reported): (Vec<RecipientUpdate>, Vec<FailedRecipient>) =
            delayed.into_iter().map(|d| (d.update, d.report)).unzip();
        let notified = match bounce_recipient(ctx, message) {
            None => true,
            Some(recipient) => {
                let will_retry_until = message
                    .arrived
                    .saturating_add(ctx.settings.max_queue_lifetime.as_secs());
                let notice = dsn::build(&report_on(
                    ctx,
                    message,
                    content,
                    dsn::Kind::Delay { will_retry_until },
                    &reported,
                    unix_now(),
                ));
                match self
                    .enqueue_notice(recipient, notice, message.options.smtputf8)
                    .await
                {
                    Ok(id) => {
                        tracing::info!(id = %message.id, notice = %id, to = %Escaped(&message.sender), recipients = reported.len(), "delay notice queued");
                        true
                    }
                    Err(e) => {
                        tracing::error!(id = %message.id, error = %e, "cannot queue the delay notice; will try at the next deferral");
                        false
                    }
                }
            }
        };
        for update in &mut updates {
            update.delay_notified = notified;
        }
        if let Err(e) = self.shared.queue.update(&message.id, updates).await {
            tracing::error!(id = %message.id, error = %Escaped(&e.to_string()), "cannot record delivery results");
        }
    }

    /// Queues a report made here (bounce, notice): from the null sender, to one recipient;
    /// `smtputf8` when it is about a message sent with SMTPUTF8 (its addresses and returned header fields may be UTF-8, RFC 6533), so it is
    /// relayed with SMTPUTF8 too.
    async fn enqueue_notice(
        &self,
        recipient: NewRecipient,
        content: Vec<u8>,
        smtputf8: bool,
    ) -> Result<MessageId, QueueError> {
        self.shared
            .queue
            .enqueue(NewMessage {
                sender: String::new(),
                recipients: vec![recipient],
                content,
                client_ip: "127.0.0.1".into(),
                auth_login: None,
                origin: Origin::Local,
                esmtp: relayward_queue::Esmtp {
                    smtputf8,
                    ..Default::default()
                },
            })
            .await
    }

    /// Defers every pending recipient (the content could not be read this time); those past
    /// the queue lifetime bounce, with what is known of the message, which is its envelope.
    async fn defer_all(&self, ctx: &DeliveryContext, message: &QueuedMessage, failure: Failure) {
        let recipients: Vec<String> = message
            .recipients
            .iter()
            .filter(|r| !r.status.is_final())
            .map(|r| r.address.clone())
            .collect();
        let outcomes = vec![Outcome::Deferred(failure); recipients.len()];
        // Without the content there is no notice to write: delay notices wait.
        let Classified {
            updates, failed, ..
        } = self.classify(ctx, message, &recipients, outcomes, None);
        if let Err(e) = self.shared.queue.update(&message.id, updates).await {
            tracing::error!(id = %message.id, error = %Escaped(&e.to_string()), "cannot record the deferral");
            return;
        }
        if !failed.is_empty() {
            self.bounce(ctx, message, &[], failed).await;
        }
    }
}

/// Logs a queue failure; when the store is unavailable it has logged that once itself, so each
/// message's failure is only a debug line (no flood of errors while a database is down).
fn log_queue_error(id: Option<&MessageId>, what: &str, error: &QueueError) {
    let unavailable = error.is_unavailable();
    let text = error.to_string();
    let error = Escaped(&text);
    match (id, unavailable) {
        (Some(id), true) => tracing::debug!(%id, %error, "{what}"),
        (None, true) => tracing::debug!(%error, "{what}"),
        (Some(id), false) => tracing::error!(%id, %error, "{what}"),
        (None, false) => tracing::error!(%error, "{what}"),
    }
}

/// The published policy an outcome was held to, as a TLS report names it; `None` for
/// sessions no published policy applied to (opportunistic, the admin's `require-verified`).
fn report_policy(
    ctx: &DeliveryContext,
    outcome: &TlsOutcome,
    tls: &DomainTls,
    plan: &HostPlan,
) -> Option<ReportPolicy> {
    match (outcome.policy, tls) {
        (PolicyKind::MtaSts | PolicyKind::MtaStsTesting, DomainTls::MtaSts(policy)) => {
            Some(ReportPolicy::sts(&outcome.domain, policy))
        }
        (PolicyKind::Dane, _) => {
            let records: &[crate::dane::TlsaRecord] = match plan {
                HostPlan::Dane(records) => records,
                _ => &[],
            };
            Some(ReportPolicy::tlsa(
                &outcome.domain,
                &outcome.host,
                ctx.settings.mx_port,
                records,
            ))
        }
        _ => None,
    }
}

/// STARTTLS required, certificate checked against the host's TLSA records (DANE).
fn dane_params(
    ctx: &DeliveryContext,
    host: &str,
    addr: SocketAddr,
    records: &Arc<Vec<crate::dane::TlsaRecord>>,
) -> Result<ConnectParams, SessionError> {
    let config = crate::dane::client_config(Arc::clone(records)).map_err(|e| SessionError {
        failure: Failure::local((4, 7, 5), format!("DANE TLS setup: {e}")),
        tls_handshake: false,
        tls_fault: Some("validation-failure"),
        local_ip: None,
    })?;
    Ok(required_tls_params(ctx, host, addr, config))
}

/// STARTTLS required, certificate not checked (DANE records that are all unusable).
fn encrypted_params(ctx: &DeliveryContext, host: &str, addr: SocketAddr) -> ConnectParams {
    required_tls_params(ctx, host, addr, ctx.opportunistic.clone())
}

/// Whether TLSA records are looked up for `domain`'s MX hosts: with `tls_policy =
/// "mta-sts-dane"` unless a `[[tls_policy]]` says `none`.
fn dane_applies(ctx: &DeliveryContext, domain: &str) -> bool {
    let settings = &ctx.settings;
    settings.tls_policy == TlsPolicyMode::MtaStsDane
        && relayward_config::tls_policy::override_for(&settings.tls_policies, domain)
            != Some(DomainTlsMode::None)
}

/// STARTTLS required, certificate verified for the MX host name (a TLS policy's demand).
fn verified_params(ctx: &DeliveryContext, host: &str, addr: SocketAddr) -> ConnectParams {
    required_tls_params(ctx, host, addr, ctx.verified.clone())
}

/// An MX connection on which STARTTLS is required, the certificate checked by `config`.
fn required_tls_params(
    ctx: &DeliveryContext,
    host: &str,
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> ConnectParams {
    ConnectParams {
        tls: TlsPolicy::Required {
            config,
            server_name: host.to_string(),
        },
        ..mx_params(ctx, host, addr)
    }
}

fn mx_params(ctx: &DeliveryContext, host: &str, addr: SocketAddr) -> ConnectParams {
    ConnectParams {
        addr,
        host_name: host.to_string(),
        helo: ctx.settings.hostname.clone(),
        tls: TlsPolicy::Opportunistic(ctx.opportunistic.clone()),
        credentials: None,
        timeouts: ctx.settings.timeouts,
    }
}

/// The recipient's stored route; for an entry written before routes were stored, the current
/// router's answer (once per attempt, logged). `None` when it has no route now.
fn stored_route(ctx: &DeliveryContext, id: &MessageId, r: &RecipientState) -> Option<Route> {
    if let Some(route) = &r.route {
        return Some(route.clone());
    }
    match ctx.router.route_address(&r.address) {
        Some(Ok(routed)) => {
            tracing::info!(%id, rcpt = %Escaped(&r.address), route = %routed.route, "entry without a stored route (older spool): routed now");
            Some(routed.route)
        }
        _ => None,
    }
}

/// The report (`kind`: bounce or delay notice) on `recipients` of `message`, as the
/// message's own envelope and DSN parameters describe it.
fn report_on<'a>(
    ctx: &'a DeliveryContext,
    message: &'a QueuedMessage,
    content: &'a [u8],
    kind: dsn::Kind,
    recipients: &'a [FailedRecipient],
    now: u64,
) -> dsn::Report<'a> {
    dsn::Report {
        kind,
        envid: message.options.dsn.envid.as_deref(),
        ret: message.options.dsn.ret,
        reporting_mta: &ctx.settings.hostname,
        original_sender: &message.sender,
        original_id: &message.id.0,
        arrived: message.arrived,
        now,
        recipients,
        original: content,
        origin: message.origin,
        smtputf8: message.options.smtputf8,
    }
}

/// The recipients of a local group that were delivered and asked for a success notice.
fn delivered_asking_for_success(
    message: &QueuedMessage,
    recipients: &[String],
    outcomes: &[Outcome],
) -> Vec<Delivered> {
    recipients
        .iter()
        .zip(outcomes)
        .filter(|(_, outcome)| outcome.is_delivered())
        .filter_map(|(address, _)| {
            let dsn = recipient_dsn(message, address);
            dsn.effective_notify().success.then(|| Delivered {
                address: address.clone(),
                orcpt: dsn.orcpt,
            })
        })
        .collect()
}

/// The recipient's `NOTIFY=` / `ORCPT=` as stored.
fn recipient_dsn(message: &QueuedMessage, address: &str) -> RcptDsn {
    message
        .recipients
        .iter()
        .find(|r| r.address == address)
        .map(|r| r.dsn.clone())
        .unwrap_or_default()
}

/// Where the bounce of `message` goes: its sender, routed like a RCPT. `None`, with a log
/// line, when the sender has no route.
fn bounce_recipient(ctx: &DeliveryContext, message: &QueuedMessage) -> Option<NewRecipient> {
    match ctx.router.route_address(&message.sender) {
        Some(Ok(Routed { address, route, .. })) => Some(NewRecipient { address, route }),
        Some(Err(why)) => {
            let why = match why {
                Unroutable::SenderRouted(_) => "sender-specified routing",
                Unroutable::AddressLiteral => "an address literal",
                Unroutable::NoSuchMailbox => "no such local mailbox",
                Unroutable::Unsendable => "not an address this server passes on",
            };
            tracing::warn!(id = %message.id, sender = %Escaped(&message.sender), "not bounced: the sender has no route ({why})");
            None
        }
        None => {
            tracing::warn!(id = %message.id, sender = %Escaped(&message.sender), "not bounced: the sender is not a valid address");
            None
        }
    }
}

/// Connections are reused only under the TLS they were opened with: the policy kind and the
/// very client configuration, so a STARTTLS connection whose certificate was not checked (DANE
/// records that are all unusable) never carries mail that demands a verified one, and a DANE
/// connection (a configuration of its own per attempt) is not reused at all.
/// Whether a connection idle since `idle_since` may carry another message: idle for less
/// than `connection_idle` (its server will time it out) and opened less than
/// `connection_reuse_limit` ago (Postfix's `smtp_connection_reuse_time_limit`).
fn may_reuse(settings: &DeliveryConfig, conn: &Connection, idle_since: Instant) -> bool {
    idle_since.elapsed() < settings.connection_idle && conn.age() < settings.connection_reuse_limit
}

/// Says goodbye to a connection leaving the pool, without holding up the delivery at hand:
/// its QUIT waits for another server (5 s at most).
fn quit_off_path(conn: Connection) {
    tokio::spawn(conn.quit());
}

/// Everything a pooled connection was opened with that its server saw or checked: address, the
/// name we meant (SNI), our EHLO name, the TLS, and the AUTH identity. The password enters only
/// as a short digest, so the key (which may reach a log) never carries it.
fn pool_key(params: &ConnectParams) -> String {
    let tls = match &params.tls {
        TlsPolicy::Opportunistic(_) => "opportunistic".to_string(),
        TlsPolicy::Required { config, .. } => format!("required@{:p}", Arc::as_ptr(config)),
        TlsPolicy::Implicit { config, .. } => format!("implicit@{:p}", Arc::as_ptr(config)),
        TlsPolicy::None => "none".to_string(),
    };
    let auth = params
        .credentials
        .as_ref()
        .map(|c| format!("{}:{}", c.user, password_digest(&c.password)))
        .unwrap_or_default();
    format!(
        "{}|{}|{}|{tls}|{auth}",
        params.addr, params.host_name, params.helo
    )
}

/// The first 8 bytes of the password's SHA-256, in hex: enough to tell two passwords apart.
fn password_digest(password: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, password.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn is_final(outcome: &Option<Outcome>) -> bool {
    matches!(outcome, Some(Outcome::Delivered | Outcome::Failed(_)))
}

/// Recipients no host decided on get their own last deferral, or the last host-level error.
fn settle(outcomes: Vec<Option<Outcome>>, last: &Failure) -> Vec<Outcome> {
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| last.clone().into_outcome()))
        .collect()
}

fn dns_failure(failure: &DnsFailure) -> Failure {
    match failure {
        DnsFailure::Temporary { .. } => Failure::local((4, 4, 3), failure.to_string()),
        DnsFailure::NotFound { .. } => Failure::local((5, 1, 2), failure.to_string()),
        DnsFailure::NullMx(_) => Failure::local((5, 1, 10), failure.to_string()),
    }
}

fn dns_outcome(failure: &DnsFailure) -> Outcome {
    dns_failure(failure).into_outcome()
}

fn attempts_of(message: &QueuedMessage, address: &str) -> u32 {
    message
        .recipients
        .iter()
        .find(|r| r.address == address)
        .map(|r| r.attempts)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Credentials;

    #[test]
    fn connections_verified_differently_are_pooled_apart() {
        let params = |config: &Arc<rustls::ClientConfig>| ConnectParams {
            addr: "127.0.0.1:25".parse().expect("address"),
            host_name: "mx.example.test".into(),
            helo: "relay.test".into(),
            tls: TlsPolicy::Required {
                config: Arc::clone(config),
                server_name: "mx.example.test".into(),
            },
            credentials: None,
            timeouts: crate::config::Timeouts::default(),
        };
        let unverified = crate::tls::opportunistic().expect("config");
        let verified = crate::tls::verifying(None).expect("config");
        assert_ne!(pool_key(&params(&unverified)), pool_key(&params(&verified)));
        assert_eq!(pool_key(&params(&verified)), pool_key(&params(&verified)));
    }

    /// A smart host sees the EHLO name and the AUTH identity a connection was opened with: a
    /// message of a transport with another name or another password must not ride on it.
    #[test]
    fn connections_opened_with_other_credentials_or_helo_are_pooled_apart() {
        let params = |helo: &str, password: &str| ConnectParams {
            addr: "127.0.0.1:587".parse().expect("address"),
            host_name: "smarthost.test".into(),
            helo: helo.into(),
            tls: TlsPolicy::None,
            credentials: Some(Credentials {
                user: "relay".into(),
                password: password.into(),
            }),
            timeouts: crate::config::Timeouts::default(),
        };
        let base = pool_key(&params("relay.test", "s3cret-first"));
        assert_eq!(base, pool_key(&params("relay.test", "s3cret-first")));
        assert_ne!(
            base,
            pool_key(&params("relay.test", "s3cret-second")),
            "another password"
        );
        assert_ne!(
            base,
            pool_key(&params("other.test", "s3cret-first")),
            "another EHLO name"
        );
        assert!(
            !base.contains("s3cret"),
            "the key must not carry the password: {base}"
        );
    }
}

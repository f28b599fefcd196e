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

use relayward_protocol::text::Escaped;
use relayward_queue::{
    MessageId, NewMessage, Queue, QueuedMessage, RecipientStatus, RecipientUpdate,
};
use rustls::ClientConfig;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::{
    self, ConnectParams, Connection, Credentials, Envelope, SessionError, TlsPolicy,
};
use crate::config::{ConfigError, DeliveryConfig, RouteTarget, SmarthostTls, split_host_port};
use crate::dsn::{self, FailedRecipient};
use crate::mx::{DnsFailure, MxResolver};
use crate::outcome::{Failure, Outcome};
use crate::tls;

/// Most MX hosts, and addresses per host, tried in one attempt.
const MAX_HOSTS: usize = 10;
const MAX_ADDRESSES_PER_HOST: usize = 4;

/// The queue runner. Construct with [`Runner::new`], start with [`Runner::run`].
#[derive(Clone)]
pub struct Runner {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Arc<dyn Queue>,
    config: DeliveryConfig,
    resolver: MxResolver,
    opportunistic: Arc<ClientConfig>,
    smarthost: Option<Smarthost>,
    total: Arc<Semaphore>,
    per_destination: Mutex<HashMap<String, Arc<Semaphore>>>,
    pool: Mutex<HashMap<String, Vec<(Connection, Instant)>>>,
    in_flight: Mutex<HashSet<MessageId>>,
}

/// The smart host, ready to use: address, TLS policy, credentials.
struct Smarthost {
    host: String,
    port: u16,
    tls: TlsPolicy,
    credentials: Option<Credentials>,
}

/// Where a group of recipients goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Destination {
    Local,
    Smarthost,
    Route { host: String, port: u16 },
    Mx(String),
}

impl Destination {
    fn key(&self) -> String {
        match self {
            Destination::Local => "local".into(),
            Destination::Smarthost => "smarthost".into(),
            Destination::Route { host, port } => format!("route:{host}:{port}"),
            Destination::Mx(domain) => format!("mx:{domain}"),
        }
    }
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
    /// Checks the configuration, reads the smart-host password and CA file, builds the
    /// resolver and TLS configurations. Fails (with a message for the admin) rather than
    /// starting a runner that could not deliver or would deliver unsafely.
    pub fn new(queue: Arc<dyn Queue>, config: DeliveryConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let resolver = MxResolver::new(
            &config.nameservers,
            config.dns_cache_size,
            config.dns_timeout,
        )?;
        let smarthost = smarthost(&config)?;
        let shared = Shared {
            queue,
            resolver,
            opportunistic: tls::opportunistic()?,
            smarthost,
            total: Arc::new(Semaphore::new(config.max_connections)),
            per_destination: Mutex::new(HashMap::new()),
            pool: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashSet::new()),
            config,
        };
        Ok(Self {
            shared: Arc::new(shared),
        })
    }

    /// Runs until `shutdown` resolves. Wakes on `Queue::changed`, on its own timer (the
    /// earliest `next_attempt`, at most `poll_interval` away) and when a delivery finishes.
    /// After shutdown, in-flight deliveries get `shutdown_grace` to finish, then are aborted
    /// (safe: their recipients are still pending in the queue).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let next = self.dispatch(&mut tasks).await;
            let sleep = next.min(self.shared.config.poll_interval);
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.shared.queue.changed() => {}
                _ = tokio::time::sleep(sleep) => {}
                Some(_) = tasks.join_next() => {}
            }
        }
        let grace = self.shared.config.shutdown_grace;
        let _ =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        tasks.shutdown().await;
        self.close_pool().await;
    }

    /// One pass: delivers every due message and waits for all of them. For tests and for a
    /// `queue flush`-style command; `run` is the normal entry point.
    pub async fn run_once(&self) {
        let mut tasks = JoinSet::new();
        self.dispatch(&mut tasks).await;
        while tasks.join_next().await.is_some() {}
    }

    /// Spawns a task for every due, non-held message not already being delivered. Returns how
    /// long until the next pending recipient becomes due.
    async fn dispatch(&self, tasks: &mut JoinSet<()>) -> Duration {
        self.prune_pool();
        let messages = match self.shared.queue.list().await {
            Ok(messages) => messages,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the queue");
                return Duration::from_secs(5);
            }
        };
        let now = unix_now();
        let mut next_due = u64::MAX;
        for message in messages {
            if message.held || self.is_in_flight(&message.id) {
                continue;
            }
            let pending = message.recipients.iter().filter(|r| !r.status.is_final());
            let earliest = pending.map(|r| r.next_attempt).min();
            match earliest {
                Some(t) if t <= now => self.spawn(tasks, message),
                Some(t) => next_due = next_due.min(t),
                None => {}
            }
        }
        Duration::from_secs(next_due.saturating_sub(now)).max(Duration::from_millis(50))
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
            let _guard = guard;
            runner.deliver_message(message).await;
        });
    }

    /// Delivers the due recipients of one message, group by group, then bounces the failed
    /// ones in a single DSN.
    async fn deliver_message(&self, message: QueuedMessage) {
        let content = match self.shared.queue.content(&message.id).await {
            Ok(content) => content,
            Err(e) => {
                tracing::error!(id = %message.id, error = %Escaped(&e.to_string()), "cannot read message content");
                self.defer_all(
                    &message,
                    Failure::local("4.3.0", format!("queue read error: {e}")),
                )
                .await;
                return;
            }
        };
        let mut failed = Vec::new();
        for (destination, recipients) in self.groups(&message) {
            let outcomes = self
                .deliver_group(&destination, &message, &content, &recipients)
                .await;
            let (updates, mut group_failed) = self.classify(&message, &recipients, outcomes);
            if let Err(e) = self.shared.queue.update(&message.id, updates).await {
                tracing::error!(id = %message.id, error = %e, "cannot record delivery results");
                return;
            }
            failed.append(&mut group_failed);
        }
        if !failed.is_empty() {
            self.bounce(&message, &content, failed).await;
        }
    }

    /// Due pending recipients, grouped by destination (one transaction per group).
    fn groups(&self, message: &QueuedMessage) -> BTreeMap<Destination, Vec<String>> {
        let now = unix_now();
        let mut groups: BTreeMap<Destination, Vec<String>> = BTreeMap::new();
        for r in &message.recipients {
            if r.status.is_final() || r.next_attempt > now {
                continue;
            }
            let domain = domain_of(&r.address);
            groups
                .entry(self.destination(&domain))
                .or_default()
                .push(r.address.clone());
        }
        groups
    }

    fn destination(&self, domain: &str) -> Destination {
        let config = &self.shared.config;
        if config.is_local(domain) {
            return Destination::Local;
        }
        if let Some(route) = config.route_for(domain)
            && let RouteTarget::Smtp { host, port } = &route.to
        {
            return Destination::Route {
                host: host.clone(),
                port: *port,
            };
        }
        if self.shared.smarthost.is_some() {
            return Destination::Smarthost;
        }
        Destination::Mx(domain.to_string())
    }

    /// One outcome per recipient, in order, within the concurrency limits.
    async fn deliver_group(
        &self,
        destination: &Destination,
        message: &QueuedMessage,
        content: &[u8],
        recipients: &[String],
    ) -> Vec<Outcome> {
        let _total = self.shared.total.clone().acquire_owned().await;
        let _dest = self.destination_permit(destination).acquire_owned().await;
        let envelope = Envelope {
            sender: &message.sender,
            recipients,
            content,
        };
        let outcomes = match destination {
            Destination::Local => return self.deliver_local(recipients, content).await,
            Destination::Smarthost => self.deliver_smarthost(&envelope).await,
            Destination::Route { host, port } => {
                let hosts = vec![host.clone()];
                self.deliver_hosts(&hosts, *port, &envelope).await
            }
            Destination::Mx(domain) => self.deliver_mx(domain, &envelope).await,
        };
        for (rcpt, outcome) in recipients.iter().zip(&outcomes) {
            log_outcome(&message.id, rcpt, outcome);
        }
        outcomes
    }

    fn destination_permit(&self, destination: &Destination) -> Arc<Semaphore> {
        let limit = self.shared.config.max_per_destination;
        match self.shared.per_destination.lock() {
            Ok(mut map) => map
                .entry(destination.key())
                .or_insert_with(|| Arc::new(Semaphore::new(limit)))
                .clone(),
            Err(_) => Arc::new(Semaphore::new(limit)),
        }
    }

    /// Writes each recipient's copy into its Maildir (blocking I/O off the async threads).
    async fn deliver_local(&self, recipients: &[String], content: &[u8]) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(recipients.len());
        for rcpt in recipients {
            let (local, domain) = match rcpt.rsplit_once('@') {
                Some((l, d)) => (l.to_string(), d.to_string()),
                None => (rcpt.clone(), String::new()),
            };
            if !self.shared.config.mailbox_exists(&local, &domain) {
                outcomes.push(Outcome::Failed(Failure::local(
                    "5.1.1",
                    format!("no mailbox {rcpt} here"),
                )));
                continue;
            }
            let root = self.shared.config.mail_root.clone();
            let data = content.to_vec();
            let result = tokio::task::spawn_blocking(move || {
                relayward_queue::maildir::deliver_to_maildir(&root, &domain, &local, &data)
            })
            .await;
            outcomes.push(match result {
                Ok(Ok(_)) => Outcome::Delivered,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidInput => {
                    Outcome::Failed(Failure::local("5.1.3", format!("local delivery: {e}")))
                }
                Ok(Err(e)) => {
                    Outcome::Deferred(Failure::local("4.3.0", format!("local delivery: {e}")))
                }
                Err(e) => {
                    Outcome::Deferred(Failure::local("4.3.0", format!("local delivery task: {e}")))
                }
            });
        }
        outcomes
    }

    async fn deliver_mx(&self, domain: &str, envelope: &Envelope<'_>) -> Vec<Outcome> {
        let n = envelope.recipients.len();
        if domain.starts_with('[') {
            // Address literals reach here only as bounce targets (the policy never relays to
            // them): sending to a raw IP would let any client aim our bounces at any host,
            // and retrying a DNS lookup of "[ip]" for days only clogs the queue.
            let failure = Failure::local("5.1.2", "address literals are not routed by this server");
            return vec![Outcome::Failed(failure); n];
        }
        match self.shared.resolver.mx_hosts(domain).await {
            Ok(hosts) => {
                let names: Vec<String> = hosts.into_iter().map(|h| h.name).collect();
                self.deliver_hosts(&names, self.shared.config.mx_port, envelope)
                    .await
            }
            Err(failure) => vec![dns_outcome(&failure); n],
        }
    }

    /// Tries hosts in order; recipients deferred by one host (4xx, connection failure) are
    /// tried on the next. Final outcomes (2xx, 5xx) stop there.
    async fn deliver_hosts(
        &self,
        hosts: &[String],
        port: u16,
        envelope: &Envelope<'_>,
    ) -> Vec<Outcome> {
        let n = envelope.recipients.len();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
        let mut last = Failure::local("4.4.4", "no mail exchanger could be tried");
        for host in hosts.iter().take(MAX_HOSTS) {
            let addresses = match self.shared.resolver.addresses(host).await {
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
                let sub = Envelope {
                    sender: envelope.sender,
                    recipients: &rcpts,
                    content: envelope.content,
                };
                let params = self.mx_params(host, SocketAddr::new(ip, port));
                match self.attempt(params, &sub).await {
                    Ok(results) => {
                        for (&i, outcome) in open.iter().zip(results) {
                            outcomes[i] = Some(outcome);
                        }
                    }
                    Err(e) => last = e.failure,
                }
            }
        }
        settle(outcomes, &last)
    }

    fn mx_params(&self, host: &str, addr: SocketAddr) -> ConnectParams {
        ConnectParams {
            addr,
            host_name: host.to_string(),
            helo: self.shared.config.hostname.clone(),
            tls: TlsPolicy::Opportunistic(self.shared.opportunistic.clone()),
            credentials: None,
            timeouts: self.shared.config.timeouts,
        }
    }

    async fn deliver_smarthost(&self, envelope: &Envelope<'_>) -> Vec<Outcome> {
        let n = envelope.recipients.len();
        let Some(smarthost) = &self.shared.smarthost else {
            return vec![Outcome::Deferred(Failure::local("4.3.5", "no smart host configured")); n];
        };
        let addresses = match self.shared.resolver.addresses(&smarthost.host).await {
            Ok(a) => a,
            Err(e) => return vec![Outcome::Deferred(dns_failure(&e)); n],
        };
        let mut last = Failure::local("4.4.1", "smart host has no usable address");
        for ip in addresses.into_iter().take(MAX_ADDRESSES_PER_HOST) {
            if matches!(smarthost.tls, TlsPolicy::None) && !ip.to_canonical().is_loopback() {
                last = Failure::local(
                    "4.7.0",
                    format!("refusing clear text to the non-loopback smart host address {ip}"),
                );
                continue;
            }
            let params = ConnectParams {
                addr: SocketAddr::new(ip, smarthost.port),
                host_name: smarthost.host.clone(),
                helo: self.shared.config.hostname.clone(),
                tls: smarthost.tls.clone(),
                credentials: smarthost.credentials.clone(),
                timeouts: self.shared.config.timeouts,
            };
            match self.attempt(params, envelope).await {
                // The smart host decides for every recipient; a 4xx there is not improved
                // by another address of the same service.
                Ok(outcomes) => return outcomes,
                Err(e) => last = e.failure,
            }
        }
        // A smart host's problems are never the recipient's fault: always retry.
        vec![Outcome::Deferred(as_temporary(last)); n]
    }

    /// One transaction on a pooled or new connection to `params.addr`.
    async fn attempt(
        &self,
        params: ConnectParams,
        envelope: &Envelope<'_>,
    ) -> Result<Vec<Outcome>, SessionError> {
        let key = pool_key(&params);
        let mut conn = match self.take_pooled(&key).await {
            Some(conn) => conn,
            None => self.open(&params).await?,
        };
        let outcomes = conn.send(envelope).await;
        if conn.reusable() {
            self.put_pooled(key, conn);
        } else {
            conn.quit().await;
        }
        Ok(outcomes)
    }

    /// Connects; an opportunistic TLS handshake failure is retried once in clear text, as
    /// RFC 7435 suggests (MX hosts only: `Required` and `Implicit` never fall back).
    async fn open(&self, params: &ConnectParams) -> Result<Connection, SessionError> {
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
            if since.elapsed() < self.shared.config.connection_idle && conn.still_alive().await {
                return Some(conn);
            }
        }
    }

    fn put_pooled(&self, key: String, conn: Connection) {
        if let Ok(mut pool) = self.shared.pool.lock() {
            pool.entry(key).or_default().push((conn, Instant::now()));
        }
    }

    /// Drops idle connections past `connection_idle` (their servers will time them out).
    fn prune_pool(&self) {
        let idle = self.shared.config.connection_idle;
        if let Ok(mut pool) = self.shared.pool.lock() {
            for conns in pool.values_mut() {
                conns.retain(|(_, since)| since.elapsed() < idle);
            }
            pool.retain(|_, conns| !conns.is_empty());
        }
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
    /// now; failed and expired ones are returned, to be recorded after their bounce is queued.
    fn classify(
        &self,
        message: &QueuedMessage,
        recipients: &[String],
        outcomes: Vec<Outcome>,
    ) -> (Vec<RecipientUpdate>, Vec<FailedRecipient>) {
        let now = unix_now();
        let deadline = message
            .arrived
            .saturating_add(self.shared.config.max_queue_lifetime.as_secs());
        let mut updates = Vec::new();
        let mut failed = Vec::new();
        for (address, outcome) in recipients.iter().zip(outcomes) {
            match outcome {
                Outcome::Delivered => updates.push(RecipientUpdate {
                    address: address.clone(),
                    status: RecipientStatus::Delivered,
                    last_error: None,
                    next_attempt: 0,
                }),
                Outcome::Failed(failure) => failed.push(FailedRecipient {
                    address: address.clone(),
                    failure,
                    expired: false,
                }),
                Outcome::Deferred(failure) if now >= deadline => failed.push(FailedRecipient {
                    address: address.clone(),
                    failure,
                    expired: true,
                }),
                Outcome::Deferred(failure) => {
                    let failures = attempts_of(message, address).saturating_add(1);
                    let delay = self.shared.config.retry.delay(failures);
                    let next = now.saturating_add(delay.as_secs_f64().ceil().max(1.0) as u64);
                    updates.push(RecipientUpdate {
                        address: address.clone(),
                        status: RecipientStatus::Pending,
                        last_error: Some(failure.text),
                        next_attempt: next.min(deadline.max(now + 1)),
                    });
                }
            }
        }
        (updates, failed)
    }

    /// Queues one DSN for all failed recipients (unless the sender is null), then marks them
    /// final. If the DSN cannot be queued they stay pending and fail again on the next try.
    async fn bounce(&self, message: &QueuedMessage, content: &[u8], failed: Vec<FailedRecipient>) {
        let now = unix_now();
        if message.sender.is_empty() {
            tracing::warn!(id = %message.id, "undeliverable message with null sender: not bounced");
        } else if let Err(e) = self.queue_dsn(message, content, &failed, now).await {
            tracing::error!(id = %message.id, error = %e, "cannot queue the bounce; will retry");
            let retry = now.saturating_add(self.shared.config.retry.delay(1).as_secs().max(1));
            let updates = failed
                .iter()
                .map(|f| RecipientUpdate {
                    address: f.address.clone(),
                    status: RecipientStatus::Pending,
                    last_error: Some(format!("{} (bounce not queued: {e})", f.failure.text)),
                    next_attempt: retry,
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
            })
            .collect();
        if let Err(e) = self.shared.queue.update(&message.id, updates).await {
            tracing::error!(id = %message.id, error = %e, "cannot record bounced recipients");
        }
    }

    async fn queue_dsn(
        &self,
        message: &QueuedMessage,
        content: &[u8],
        failed: &[FailedRecipient],
        now: u64,
    ) -> Result<MessageId, relayward_queue::QueueError> {
        let report = dsn::build(&dsn::Report {
            reporting_mta: &self.shared.config.hostname,
            original_sender: &message.sender,
            original_id: &message.id.0,
            arrived: message.arrived,
            now,
            recipients: failed,
            original: content,
        });
        let id = self
            .shared
            .queue
            .enqueue(NewMessage {
                sender: String::new(),
                recipients: vec![message.sender.clone()],
                content: report,
                client_ip: "127.0.0.1".into(),
                auth_login: None,
            })
            .await?;
        tracing::info!(id = %message.id, dsn = %id, to = %Escaped(&message.sender), "bounce queued");
        Ok(id)
    }

    /// Defers every due recipient (used when the content cannot be read).
    async fn defer_all(&self, message: &QueuedMessage, failure: Failure) {
        let recipients: Vec<String> = message
            .recipients
            .iter()
            .filter(|r| !r.status.is_final())
            .map(|r| r.address.clone())
            .collect();
        let outcomes = vec![Outcome::Deferred(failure); recipients.len()];
        let (updates, _) = self.classify(message, &recipients, outcomes);
        let _ = self.shared.queue.update(&message.id, updates).await;
    }
}

/// Builds the smart-host settings, reading the password file now so that a missing file is
/// a start-up error, not a stream of deferrals.
fn smarthost(config: &DeliveryConfig) -> Result<Option<Smarthost>, ConfigError> {
    let Some(value) = &config.smarthost else {
        return Ok(None);
    };
    let (host, port) = split_host_port(value)?;
    let credentials = match (&config.smarthost_user, &config.smarthost_password_file) {
        (Some(user), Some(path)) => Some(Credentials {
            user: user.clone(),
            password: read_password(path)?,
        }),
        _ => None,
    };
    let server_name = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tls = match config.smarthost_tls {
        SmarthostTls::None => TlsPolicy::None,
        SmarthostTls::StartTls => TlsPolicy::Required {
            config: tls::verifying(config.smarthost_ca_file.as_deref())?,
            server_name,
        },
        SmarthostTls::Implicit => TlsPolicy::Implicit {
            config: tls::verifying(config.smarthost_ca_file.as_deref())?,
            server_name,
        },
    };
    Ok(Some(Smarthost {
        host,
        port,
        tls,
        credentials,
    }))
}

fn read_password(path: &std::path::Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

fn pool_key(params: &ConnectParams) -> String {
    let tls = match &params.tls {
        TlsPolicy::Opportunistic(_) => "opportunistic",
        TlsPolicy::Required { .. } => "required",
        TlsPolicy::Implicit { .. } => "implicit",
        TlsPolicy::None => "none",
    };
    let user = params
        .credentials
        .as_ref()
        .map(|c| c.user.as_str())
        .unwrap_or("");
    format!("{}|{}|{tls}|{user}", params.addr, params.host_name)
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
        DnsFailure::Temporary { .. } => Failure::local("4.4.3", failure.to_string()),
        DnsFailure::NotFound { .. } => Failure::local("5.1.2", failure.to_string()),
        DnsFailure::NullMx(_) => Failure::local("5.1.10", failure.to_string()),
    }
}

fn dns_outcome(failure: &DnsFailure) -> Outcome {
    dns_failure(failure).into_outcome()
}

fn as_temporary(mut failure: Failure) -> Failure {
    if failure.status.starts_with('5') {
        failure.status.replace_range(0..1, "4");
    }
    failure
}

fn attempts_of(message: &QueuedMessage, address: &str) -> u32 {
    message
        .recipients
        .iter()
        .find(|r| r.address == address)
        .map(|r| r.attempts)
        .unwrap_or(0)
}

fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

fn log_outcome(id: &MessageId, rcpt: &str, outcome: &Outcome) {
    match outcome {
        Outcome::Delivered => tracing::info!(%id, rcpt = %Escaped(rcpt), "delivered"),
        Outcome::Deferred(f) => {
            tracing::info!(%id, rcpt = %Escaped(rcpt), error = %Escaped(&f.text), "deferred");
        }
        Outcome::Failed(f) => {
            tracing::info!(%id, rcpt = %Escaped(rcpt), error = %Escaped(&f.text), "failed");
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

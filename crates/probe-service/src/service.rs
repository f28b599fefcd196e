//! The service's core, shared by both doors: admitting a test (checks, budgets, lookups),
//! running it on the probe's engine while its transcript streams, storing the result, one log
//! line per test, and stopping.
//!
//! The relay test itself is `relayward_probe::probe_target`, the same code as `relayward
//! probe`: this module only chooses what it may be run against and where its lines go.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use relayward_probe::config::{ConfirmSettings, ProbeConfig, Target, TlsMode};
use relayward_probe::confirm::ConfirmServer;
use relayward_probe::dnsbl::Dnsbl;
use relayward_probe::mx::MxResolver;
use relayward_probe::report::{TargetReport, Verdict};
use relayward_probe::target::TargetInput;
use relayward_probe::{output, probe_target, scan};
use relayward_protocol::text::Escaped;

use crate::admission::{self, MAX_ADDRESSES, Refusal, RefusalKind};
use crate::config::ServiceConfig;
use crate::http_listener::{ClientShares, ClientSlot};
use crate::limits::{Denied, Limits, Slot, client_key, retry_seconds};
use crate::live::LiveTest;
use crate::record::{Door, NotProbed, RUNNING, TestRecord};
use crate::store::{self, Store};

/// How long the lookups of one request may take in all (MX records and every host's
/// addresses) before the test is given up as UNREACHABLE.
const LOOKUP_TIME: Duration = Duration::from_secs(20);
/// What a busy service tells callers to wait: about one test's length.
const BUSY_RETRY: u64 = 60;
/// Tests one client (address, IPv6 /64) may run at once, its lookups included: without this
/// cap one client holds as many of the `max_concurrent_tests` slots as its hourly budget has
/// tests, each for up to `host_timeout` against a server that answers slowly.
pub const MAX_RUNNING_PER_CLIENT: usize = 2;

/// A test as a door asks for it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The target as shown (`host:25`, `mx:example.com:25`).
    pub label: String,
    pub inputs: Vec<TargetInput>,
    pub door: Door,
    /// Who asked (the telnet caller is also the target).
    pub client: IpAddr,
}

pub struct Service {
    pub config: ServiceConfig,
    /// The probe's settings every test starts from.
    engine: ProbeConfig,
    limits: Limits,
    /// Disk I/O (fsync) runs on the blocking pool, never on a runtime worker.
    store: Arc<Store>,
    running: Mutex<HashMap<String, Arc<LiveTest>>>,
    /// Tests running per client key ([`MAX_RUNNING_PER_CLIENT`]).
    running_per_client: ClientShares,
    stopping: AtomicBool,
}

impl Service {
    /// Builds the engine settings (and the confirm listener) and opens the store.
    pub async fn new(config: ServiceConfig) -> anyhow::Result<Arc<Service>> {
        use anyhow::Context as _;
        let engine = engine_settings(&config).await?;
        let store = Store::open(&config.data_dir, config.max_stored_tests).with_context(|| {
            format!(
                "cannot open the result store in {}",
                config.data_dir.join("tests").display()
            )
        })?;
        let limits = Limits::new(
            config.max_concurrent_tests,
            config.tests_per_client_per_hour,
            config.tests_per_target_per_hour,
        );
        Ok(Arc::new(Service {
            config,
            engine,
            limits,
            store: Arc::new(store),
            running: Mutex::new(HashMap::new()),
            running_per_client: ClientShares::default(),
            stopping: AtomicBool::new(false),
        }))
    }

    /// The confirm listener's address, when proof of relay is on.
    pub fn confirm_addr(&self) -> Option<std::net::SocketAddr> {
        self.engine.confirm.as_ref().map(|c| c.server.local_addr())
    }

    /// Admits and starts a test, or says why not. Nothing is sent to any address that has not
    /// passed [`admission::address_refusal`].
    pub async fn start(self: &Arc<Self>, request: Request) -> Result<Arc<LiveTest>, Refusal> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(stopping_refusal());
        }
        for input in &request.inputs {
            if let TargetInput::Addr(t) = input
                && let Some(refusal) = admission::literal_refusal(t.addr.ip(), &self.config)
            {
                return Err(refusal);
            }
        }
        self.limits
            .check_client(request.client)
            .map_err(|d| denied(&d))?;
        let share = self
            .running_per_client
            .take(Some(client_key(request.client)), MAX_RUNNING_PER_CLIENT)
            .ok_or_else(|| {
                Refusal::new(
                    RefusalKind::RateLimited,
                    format!(
                        "{MAX_RUNNING_PER_CLIENT} of your tests are running, the most one address may run at once; try again when one has finished"
                    ),
                )
                .retry_after(BUSY_RETRY)
            })?;
        let busy = || {
            Refusal::new(
                RefusalKind::Busy,
                format!(
                    "{} tests are running, the most this service runs at once; try again in a minute",
                    self.config.max_concurrent_tests
                ),
            )
            .retry_after(BUSY_RETRY)
        };
        // A full service says so before looking anything up; the slot itself is taken once
        // the lookups are done, so that slow lookups (a caller's own silent name server),
        // which may end in addresses refused at no cost, hold no slot others could use.
        if self.limits.is_full() {
            return Err(busy());
        }
        let plan = self.resolve(&request).await;
        if plan.targets.is_empty() && plan.unreachable.is_empty() {
            return Err(plan.refusal());
        }
        let slot = self.limits.slot().ok_or_else(busy)?;
        // SIGTERM during the lookups: shutdown waits for the tests holding slots, and this
        // one took its slot too late to be waited for.
        if self.stopping.load(Ordering::SeqCst) {
            return Err(stopping_refusal());
        }
        let ips: Vec<IpAddr> = plan.targets.iter().map(|t| t.addr.ip()).collect();
        self.limits
            .charge(request.client, &ips)
            .map_err(|d| denied(&d))?;
        let live = Arc::new(LiveTest::new(TestRecord {
            id: store::new_id(),
            url: String::new(),
            target: request.label.clone(),
            door: request.door,
            verdict: RUNNING.to_string(),
            reason: "the test is running".to_string(),
            started_unix: unix_now(),
            finished_unix: None,
            duration_ms: None,
            not_probed: plan.not_probed.clone(),
            reports: Vec::new(),
            transcript: Vec::new(),
        }));
        let id = live.id();
        live.update(|r| r.url = format!("/tests/{id}"));
        for n in &plan.not_probed {
            live.push_own_line(&format!("Not probed: {}: {}", n.address, n.reason));
        }
        self.lock_running().insert(id, Arc::clone(&live));
        tokio::spawn(Arc::clone(self).run(Arc::clone(&live), plan, request, (slot, share)));
        Ok(live)
    }

    /// A test by id: running (in memory) or stored.
    pub async fn get(&self, id: &str) -> Option<TestLookup> {
        if !store::valid_id(id) {
            return None;
        }
        if let Some(live) = self.lock_running().get(id) {
            return Some(TestLookup::Live(Arc::clone(live)));
        }
        let (store, key) = (Arc::clone(&self.store), id.to_string());
        match tokio::task::spawn_blocking(move || store.load(&key)).await {
            Ok(Ok(record)) => record.map(|r| TestLookup::Stored(Box::new(r))),
            Ok(Err(e)) => {
                tracing::error!(test = id, error = %e, "cannot read a stored test");
                None
            }
            Err(e) => {
                tracing::error!(test = id, error = %e, "reading a stored test failed");
                None
            }
        }
    }

    /// SIGTERM: no new tests; running ones may finish until `grace` is over, then those still
    /// running are stored as INCONCLUSIVE. Returns how many had to be cut short.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.stopping.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + grace;
        if self.limits.wait_idle(deadline).await {
            return 0;
        }
        let unfinished: Vec<Arc<LiveTest>> = self.lock_running().values().cloned().collect();
        for live in &unfinished {
            live.push_own_line("[the service stopped before this test finished]");
            live.update(|r| {
                r.conclude((
                    Verdict::Inconclusive,
                    "the service stopped before the test finished".to_string(),
                ));
                r.finished_unix = Some(unix_now());
            });
            self.save(live.snapshot()).await;
        }
        unfinished.len()
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Looks the inputs' names up and sorts their addresses into probed and not probed.
    async fn resolve(&self, request: &Request) -> Plan {
        let mut plan = Plan::default();
        // One deadline for the whole request, not one per input: a name on four ports is
        // four inputs, and would otherwise keep the request (and one of the caller's running
        // tests) for four lookup times.
        let deadline = tokio::time::Instant::now() + LOOKUP_TIME;
        for input in &request.inputs {
            let label = input.label();
            let resolution = match tokio::time::timeout_at(
                deadline,
                scan::resolve_input(input.clone(), &self.engine),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => scan::Resolution {
                    targets: Vec::new(),
                    unreachable: vec![scan::unreachable(
                        &label,
                        format!(
                            "looking {label} up took more than {}s",
                            LOOKUP_TIME.as_secs()
                        ),
                    )],
                },
            };
            plan.unreachable.extend(resolution.unreachable);
            for target in resolution.targets {
                self.admit(target, &mut plan);
            }
        }
        plan
    }

    /// Adds one resolved address to the plan, or to its "not probed" list with the reason.
    fn admit(&self, target: Target, plan: &mut Plan) {
        let ip = target.addr.ip();
        let shown = shown_address(&target);
        if let Some((kind, why)) = admission::address_refusal(ip, &self.config) {
            plan.refused_kind.get_or_insert(kind);
            let why = match &target.host {
                Some(host) => format!("{host} resolves to {ip}, which is {why}"),
                None => format!("{ip} is {why}"),
            };
            plan.not_probed.push(NotProbed {
                address: shown,
                reason: why,
            });
        } else if plan.targets.iter().any(|t| t.addr == target.addr) {
            // One address under two MX names is probed once.
        } else if plan.targets.len() >= MAX_ADDRESSES {
            plan.not_probed.push(NotProbed {
                address: shown,
                reason: format!("one test probes at most {MAX_ADDRESSES} addresses"),
            });
        } else {
            plan.targets.push(target);
        }
    }

    /// Runs an admitted test to its end: each address in turn, its lines streamed, then the
    /// record stored and logged.
    async fn run(
        self: Arc<Self>,
        live: Arc<LiveTest>,
        plan: Plan,
        request: Request,
        slot: (Slot, ClientSlot),
    ) {
        let started = Instant::now();
        let mut reports: Vec<TargetReport> = Vec::new();
        for report in plan.unreachable {
            live.push_own_line(&output::transcript_heading(&report.target));
            push_closing(&live, &report);
            reports.push(report);
        }
        let several = plan.targets.len() > 1 || !reports.is_empty();
        // Each address may take host_timeout; the test as a whole starts no new one after
        // that, or 8 slow addresses would hold the slot for 8 times as long.
        let starts_until = started + self.config.host_timeout;
        for target in plan.targets {
            if Instant::now() >= starts_until {
                let n = NotProbed {
                    address: shown_address(&target),
                    reason: format!(
                        "the test had run for {}s (host_timeout); one test starts no new address after that",
                        self.config.host_timeout.as_secs()
                    ),
                };
                live.push_own_line(&format!("Not probed: {}: {}", n.address, n.reason));
                live.update(|r| r.not_probed.push(n));
                continue;
            }
            if several {
                let shown = match &target.host {
                    Some(_) => format!("{} ({})", target.label, target.addr.ip()),
                    None => target.label.clone(),
                };
                live.push_own_line(&output::transcript_heading(&shown));
            }
            let report = probe_target(target, Arc::new(self.engine_for(&live))).await;
            push_closing(&live, &report);
            reports.push(report);
        }
        let duration_ms = started.elapsed().as_millis() as u64;
        let mut record = live.snapshot();
        record.reports = reports;
        record.conclude((Verdict::Unreachable, "nothing could be tested".to_string()));
        record.finished_unix = Some(unix_now());
        record.duration_ms = Some(duration_ms);
        tracing::info!(
            test = %record.id,
            door = record.door.as_str(),
            client = %request.client,
            target = %Escaped(&record.target),
            verdict = %record.verdict,
            duration_ms,
            "probe test finished"
        );
        // Stored before anyone is told it is done: a finished test is always on disk.
        let id = record.id.clone();
        self.save(record.clone()).await;
        live.update(|r| *r = record);
        self.lock_running().remove(&id);
        drop(slot);
    }

    /// The engine settings for one test: the service's, with the transcript going to `live`
    /// (with proof of relay, its tokens hidden: see [`relayward_probe::confirm::hide_tokens`]).
    fn engine_for(&self, live: &Arc<LiveTest>) -> ProbeConfig {
        let mut cfg = self.engine.clone();
        let live = Arc::clone(live);
        let confirming = cfg.confirm.is_some();
        cfg.live_transcript = Some(Arc::new(move |_target: &Target, line: &str| {
            if confirming {
                live.push_line(&relayward_probe::confirm::hide_tokens(line))
            } else {
                live.push_line(line)
            }
        }));
        cfg
    }

    async fn save(&self, record: TestRecord) {
        let store = Arc::clone(&self.store);
        let id = record.id.clone();
        match tokio::task::spawn_blocking(move || store.save(&record)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(test = %id, error = %e, "cannot store the test result"),
            Err(e) => tracing::error!(test = %id, error = %e, "storing the test result failed"),
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<LiveTest>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A test found by id.
pub enum TestLookup {
    Live(Arc<LiveTest>),
    Stored(Box<TestRecord>),
}

impl TestLookup {
    pub fn record(&self) -> TestRecord {
        match self {
            TestLookup::Live(live) => live.snapshot(),
            TestLookup::Stored(record) => (**record).clone(),
        }
    }
}

/// What a request resolved to.
#[derive(Debug, Default)]
struct Plan {
    targets: Vec<Target>,
    unreachable: Vec<TargetReport>,
    not_probed: Vec<NotProbed>,
    /// The kind of the first address refusal, for a request with nothing left to probe.
    refused_kind: Option<RefusalKind>,
}

impl Plan {
    /// The refusal of a request whose every address was refused.
    fn refusal(&self) -> Refusal {
        let reasons: Vec<String> = self.not_probed.iter().map(|n| n.reason.clone()).collect();
        Refusal::new(
            self.refused_kind.unwrap_or(RefusalKind::BadRequest),
            if reasons.is_empty() {
                "nothing to test".to_string()
            } else {
                reasons.join("; ")
            },
        )
    }
}

/// A target as "not probed" names it: `192.0.2.7:25`, `mail.example.com:25 (192.0.2.7)`.
fn shown_address(target: &Target) -> String {
    if target.label == target.addr.to_string() {
        target.label.clone()
    } else {
        format!("{} ({})", target.label, target.addr.ip())
    }
}

fn push_closing(live: &LiveTest, report: &TargetReport) {
    for line in output::closing_lines(report) {
        live.push_own_line(&line);
    }
}

/// The refusal while the service is stopping.
fn stopping_refusal() -> Refusal {
    Refusal::new(
        RefusalKind::Stopping,
        "the service is restarting; try again in a minute",
    )
    .retry_after(BUSY_RETRY)
}

/// A budget refusal in words, with when to retry.
fn denied(d: &Denied) -> Refusal {
    let (message, wait) = match d {
        Denied::Client { retry_after } => (
            "you have started as many tests as one address may in an hour".to_string(),
            *retry_after,
        ),
        Denied::Network {
            network,
            retry_after,
        } => (
            format!(
                "your network ({network}) has started as many tests as one network may in an hour"
            ),
            *retry_after,
        ),
        Denied::Target { ip, retry_after } => (
            format!("{ip} has been tested as many times as one address may be in an hour"),
            *retry_after,
        ),
    };
    let seconds = retry_seconds(wait);
    Refusal::new(
        RefusalKind::RateLimited,
        format!("{message}; try again in {}", in_words(seconds)),
    )
    .retry_after(seconds)
}

/// `3599` → "60 minutes", `40` → "40 seconds".
pub fn in_words(seconds: u64) -> String {
    if seconds >= 120 {
        format!("{} minutes", seconds.div_ceil(60))
    } else {
        format!("{seconds} seconds")
    }
}

/// The probe's settings for this service: EHLO and sender name the service, proof of relay
/// and DNSBLs as configured, names resolved through the configured DNS servers.
async fn engine_settings(config: &ServiceConfig) -> anyhow::Result<ProbeConfig> {
    use anyhow::Context as _;
    let mut cfg = ProbeConfig::new(&config.public_name, relayward_probe::cli::DEFAULT_TO_DOMAIN)?;
    cfg.helo = config.public_name.clone();
    cfg.tls = TlsMode::Auto;
    cfg.test_timeout = config.test_timeout;
    cfg.host_timeout = config.host_timeout;
    let resolver = Arc::new(MxResolver::new(
        &config.nameservers,
        Duration::from_secs(5),
    )?);
    cfg.mx_resolver = Some(Arc::clone(&resolver));
    cfg.name_resolver = Some(resolver);
    if !config.dnsbl_zones.is_empty() {
        let zones = config
            .dnsbl_zones
            .iter()
            .map(|z| z.trim_end_matches('.').to_string())
            .collect();
        cfg.dnsbl = Some(Arc::new(Dnsbl::new(
            zones,
            &config.nameservers,
            Duration::from_secs(5),
        )?));
    }
    if let (Some(listen), Some(domain)) = (config.confirm_listen, &config.confirm_domain) {
        let server = ConfirmServer::bind(listen, domain)
            .await
            .with_context(|| format!("cannot listen on {listen} (confirm_listen)"))?;
        cfg.to_domain = domain.clone();
        cfg.confirm = Some(ConfirmSettings {
            server,
            wait: config.confirm_wait,
        });
    }
    Ok(cfg)
}

fn unix_now() -> u64 {
    relayward_probe::probe::unix_now()
}

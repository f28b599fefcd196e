//! `relayward serve`: validate the configuration, open the queue, bind the listeners, run the
//! delivery runner, and handle signals (TERM/INT drain and stop, HUP reloads users and limits).

use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use relayward_server::auth::{AuthLimitSettings, AuthLimiter};
use relayward_server::config::Config;
use relayward_server::listener::{self, AdmissionLimits, BoundListener, Gate, SharedContext};
use relayward_server::ratelimit::{UserLimitSettings, UserRateLimiter};
use relayward_server::session::SessionContext;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;

use crate::{ConfigArg, EXIT_CONFIG};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArg,

    /// Write logs as JSON lines (for log shippers) instead of text.
    #[arg(long)]
    pub log_json: bool,
}

pub async fn run(args: ServeArgs) -> ExitCode {
    let config = match crate::load_config(&args.config) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("relayward: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if !crate::report_problems(&config) {
        eprintln!(
            "relayward: refusing to start: the configuration above would be unsafe or cannot work."
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    match serve(config, args.config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relayward: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, config_arg: ConfigArg) -> anyhow::Result<()> {
    private_umask();
    let mut signals = Signals::install()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let tls = relayward_server::tls::server_tls(&config).context("TLS set-up failed")?;
    tracing::info!("TLS certificate: {}", tls.certificate);
    let spool = crate::open_queue(&config)?;
    let queue: Arc<dyn relayward_queue::Queue> =
        Arc::clone(&spool) as Arc<dyn relayward_queue::Queue>;
    let limiters = Limiters::new(&config);
    let context: SharedContext = Arc::new(RwLock::new(Arc::new(session_context(
        &config,
        &tls,
        Arc::clone(&queue),
        &limiters,
    )?)));
    let gate = Gate::new(admission_limits(&config));
    let listeners = bind_all(&config)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let runner = crate::delivery::start(&config, Arc::clone(&queue), shutdown_rx.clone())?;
    print_startup(&config, &listeners, &config_arg);

    let server = tokio::spawn(listener::serve(
        listeners,
        Arc::clone(&context),
        Arc::clone(&gate),
        shutdown_rx,
    ));
    let running = Running {
        config_arg: &config_arg,
        context: &context,
        gate: &gate,
        tls: &tls,
        spool: &spool,
        mailboxes: runner.mailboxes.as_ref(),
        limiters: &limiters,
    };
    wait_for_signals(&mut signals, &running).await?;
    let _ = shutdown_tx.send(true);
    tracing::info!("shutting down: finishing sessions in progress");
    let drain = config.limits.data_end_timeout + Duration::from_secs(5);
    if tokio::time::timeout(drain, server).await.is_err() {
        tracing::warn!("sessions still open after {drain:?}; exiting anyway");
    }
    runner.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// Everything the server writes is private to its user: queued mail, Maildirs, the TLS key,
/// and whatever a library creates without asking. The queue and the Maildir writer also set
/// their modes explicitly (0700 directories, 0600 files), so this is the second line.
fn private_umask() {
    // SAFETY: umask only replaces the process's file mode creation mask; it cannot fail and
    // touches no memory.
    unsafe {
        libc::umask(0o077);
    }
}

/// State that outlives configuration reloads: counters of abuse. Rebuilding them on SIGHUP
/// would let a reload unban a password guesser or refill a compromised account's budget.
struct Limiters {
    auth: Arc<AuthLimiter>,
    users: Arc<UserRateLimiter>,
}

impl Limiters {
    fn new(config: &Config) -> Self {
        Self {
            auth: Arc::new(AuthLimiter::new(AuthLimitSettings::from_limits(
                &config.limits,
            ))),
            users: Arc::new(UserRateLimiter::new(UserLimitSettings::from_limits(
                &config.limits,
            ))),
        }
    }

    /// Applies reloaded limits in place; the counters are kept.
    fn reload(&self, config: &Config) {
        self.users
            .set_settings(UserLimitSettings::from_limits(&config.limits));
        self.auth
            .set_settings(AuthLimitSettings::from_limits(&config.limits));
    }
}

/// What the signal loop needs to reload.
struct Running<'a> {
    config_arg: &'a ConfigArg,
    context: &'a SharedContext,
    gate: &'a Arc<Gate>,
    tls: &'a relayward_server::tls::TlsSetup,
    /// The queue; reload needs its spool-only setting (`min_free_bytes`).
    spool: &'a Arc<relayward_queue::Spool>,
    /// The delivery runner's list of local mailboxes (bounces to others fail).
    mailboxes: Option<&'a relayward_delivery::MailboxList>,
    limiters: &'a Limiters,
}

fn session_context(
    config: &Config,
    tls: &relayward_server::tls::TlsSetup,
    queue: Arc<dyn relayward_queue::Queue>,
    limiters: &Limiters,
) -> anyhow::Result<SessionContext> {
    let limits = &config.limits;
    let policy = relayward_server::policy::Policy::from_config(config).map_err(|problems| {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("configuration refused: {}", text.join("; "))
    })?;
    Ok(SessionContext {
        hostname: config.hostname.clone(),
        policy: Arc::new(policy),
        users: Arc::new(relayward_server::auth::UserDb::from_config(config)),
        auth_limiter: Arc::clone(&limiters.auth),
        user_limits: Arc::clone(&limiters.users),
        trusted_proxies: config
            .relay
            .trusted_proxies
            .iter()
            .map(|cidr| cidr.net().trunc())
            .collect(),
        tls: Some(tokio_rustls::TlsAcceptor::from(Arc::clone(
            &tls.server_config,
        ))),
        queue,
        limits: relayward_server::session::SessionLimits {
            greet_pause: limits.greet_pause,
            max_message_size: limits.max_message_size,
            max_recipients: limits.max_recipients as usize,
            max_errors: limits.max_errors,
            greeting_timeout: limits.greeting_timeout,
            command_timeout: limits.command_timeout,
            data_timeout: limits.data_block_timeout,
            session_timeout: limits.session_timeout,
        },
    })
}

fn admission_limits(config: &Config) -> AdmissionLimits {
    AdmissionLimits {
        max_connections: config.limits.max_connections as usize,
        max_connections_per_ip: config.limits.max_connections_per_ip as usize,
        connections_per_ip_per_minute: config.limits.connections_per_ip_per_minute,
    }
}

/// Pending connections the kernel may hold per listener (capped by `net.core.somaxconn`).
/// The library default of 128 overflowed when 200 clients connected at once while the server
/// was busy writing queue files: the kernel dropped the SYNs and the clients waited 1–15 s to
/// retry (found by `scripts/bench`). A mail server takes bursts; Postfix uses more too.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds one listener with [`LISTEN_BACKLOG`] (and SO_REUSEADDR, so a restart does not wait
/// for old connections in TIME_WAIT).
fn bind_one(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

fn bind_all(config: &Config) -> anyhow::Result<Vec<BoundListener>> {
    let mut bound = Vec::new();
    for listen in &config.listen {
        let listener = bind_one(listen.address)
            .with_context(|| format!("cannot listen on {} ({})", listen.address, listen.kind))?;
        let address = listener.local_addr()?;
        bound.push(BoundListener {
            listener,
            kind: listen.kind,
            address,
        });
    }
    Ok(bound)
}

fn print_startup(config: &Config, listeners: &[BoundListener], config_arg: &ConfigArg) {
    for bound in listeners {
        let role = match bound.kind {
            relayward_server::config::ListenerKind::Mx => {
                "mx: mail for local domains from anyone; relay only for trusted networks and authenticated users"
            }
            relayward_server::config::ListenerKind::Submission => {
                "submission: STARTTLS, then AUTH, before any mail"
            }
            relayward_server::config::ListenerKind::Submissions => {
                "submissions: implicit TLS, AUTH before any mail"
            }
        };
        println!("relayward: listening on {} ({role})", bound.address);
    }
    println!(
        "relayward: local domains: {}; data in {}",
        config.relay.local_domains.join(", "),
        config.data_dir.display()
    );
    if config.users.is_empty() {
        let file = config_arg
            .config
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| {
                "relayward.toml (then run: relayward serve --config relayward.toml)".into()
            });
        println!("relayward: no users yet. To add one, hash a password:");
        println!("    echo 'a long passphrase' | relayward hash-password");
        println!("  and add to {file}:");
        println!("    [[user]]");
        println!(
            "    login = \"alice@{}\"",
            config
                .relay
                .local_domains
                .first()
                .map(String::as_str)
                .unwrap_or("localhost")
        );
        println!("    password_hash = \"<the printed hash>\"");
        println!(
            "  (`relayward check-config FILE` shows the effective policy; the embedded default is printed by `relayward check-config --show-default`.)"
        );
    }
    println!("relayward: ready");
}

/// Waits for SIGTERM/SIGINT (returns) while handling SIGHUP (reload) in between.
/// The signals `serve` handles, installed before anything is announced: a TERM or HUP sent
/// right after "ready" must drain or reload, not kill the process with the default action.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

async fn wait_for_signals(signals: &mut Signals, running: &Running<'_>) -> anyhow::Result<()> {
    let Signals { term, int, hup } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => reload(running),
        }
    }
}

/// Reloads users, policy and limits for new sessions; live sessions keep their snapshot and
/// no connection is dropped. Listeners and the data directory do not change on reload.
/// Abuse counters (AUTH failures, user budgets) survive the reload.
fn reload(running: &Running<'_>) {
    let config = match crate::load_config(running.config_arg) {
        Ok(config) => config,
        Err(message) => {
            tracing::error!("reload failed, keeping the running configuration: {message}");
            return;
        }
    };
    if let Err(problems) = config.validate() {
        for problem in problems {
            tracing::error!("reload refused: {problem}");
        }
        return;
    }
    let fresh = match session_context(
        &config,
        running.tls,
        Arc::clone(running.spool) as Arc<dyn relayward_queue::Queue>,
        running.limiters,
    ) {
        Ok(fresh) => Arc::new(fresh),
        Err(e) => {
            tracing::error!("reload refused: {e:#}");
            return;
        }
    };
    if let Ok(mut current) = running.context.write() {
        *current = fresh;
    }
    running.gate.set_limits(admission_limits(&config));
    running.limiters.reload(&config);
    running
        .spool
        .set_min_free_bytes(config.queue.min_free_bytes);
    if let Some(mailboxes) = running.mailboxes {
        mailboxes.replace(crate::delivery::mailbox_addresses(&config));
    }
    tracing::info!(
        users = config.users.len(),
        "configuration reloaded (users, policy, limits)"
    );
}

//! `relayward serve`: validate the configuration, open the queue, bind the listeners, run the
//! delivery runner, and handle signals (TERM/INT drain and stop, HUP reloads everything the
//! file says; see [`crate::snapshot`]).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use relayward_server::config::{Config, Listen, ListenerKind};
use relayward_server::listener::{BoundListener, Gate, RunningListener};
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;

use crate::privilege::Switch;
use crate::snapshot::{Current, Lasting, Origin, Refused, Snapshot};
use crate::view::{ListenerView, ServerView};
use crate::{ConfigArg, EXIT_CONFIG};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Write logs as JSON lines (for log shippers) instead of text.
    #[arg(long)]
    pub log_json: bool,
}

pub async fn run(_args: ServeArgs, config_arg: ConfigArg) -> ExitCode {
    let config = match crate::load_config(&config_arg) {
        Ok(config) => config,
        Err(message) => {
            crate::complain(&message);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if !crate::report_problems(&config, &config_arg) {
        crate::complain(
            "refusing to start: the configuration above would be unsafe or cannot work.",
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let raised = crate::descriptors::raise_to_hard_limit();
    let (problems, switch) = crate::preflight::check(&config);
    crate::print_problems(&problems, &config_arg);
    let refused = problems
        .iter()
        .any(|p| p.severity == relayward_config::Severity::Error);
    let Some(switch) = switch.filter(|_| !refused) else {
        crate::complain(
            "refusing to start: fix the problems above (`relayward check-config` finds them too).",
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    if let Some(limit) = raised {
        tracing::info!(limit, "open files limit raised to the hard limit");
    }
    match serve(config, config_arg, switch).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Refused>() => {
            crate::complain(&format!("refusing to start: {e:#}"));
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            crate::complain(&format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, config_arg: ConfigArg, switch: Switch) -> anyhow::Result<()> {
    private_umask();
    let mut signals = Signals::install()?;
    // As whoever started us (root, with run_as): the sockets and the configured key files.
    let bound = bind_all(&config)?;
    let metrics_listener = match config.metrics.listen {
        Some(address) => Some(
            bind_one(address)
                .with_context(|| format!("cannot listen on {address} (metrics.listen)"))?,
        ),
        None => None,
    };
    let configured_tls = match &config.tls {
        Some(_) => Some(
            relayward_server::tls::server_tls(&config)
                .context("TLS set-up failed")
                .map_err(Refused)?,
        ),
        None => None,
    };
    become_account(&switch)?;
    // From here on as the account: what is created belongs to it, so it can go on writing.
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let queue = crate::queue_backend::OpenQueue::open(&config).await?;
    if let Some(commit) = queue.describe_commit(&config.queue) {
        tracing::info!("{commit}");
    }
    let lasting = Lasting::new(&config, queue.clone());
    let origin = Origin::now(config_arg.config.clone());
    let data_dir = config.data_dir.clone();
    let snapshot = Snapshot::build_with_tls(config, origin, &lasting, configured_tls)?;
    tracing::info!("TLS certificate: {}", snapshot.certificate);
    // Before the runner starts: mail already queued must not be delivered to ourselves.
    lasting
        .own_listeners
        .set(bound.iter().map(|b| b.address).collect());
    let current = Current::new(snapshot);
    let gate = Gate::live(current.admission());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let runner = crate::delivery::start(
        queue.queue(),
        current.delivery(),
        &data_dir,
        shutdown_rx.clone(),
    )?;
    let view = Arc::new(ServerView::new(
        current.clone(),
        queue.clone(),
        Arc::clone(&lasting.auth),
        Arc::clone(&gate),
        runner.runner(),
    ));
    let admin_socket = crate::admin::bind(&data_dir)?;
    let admin = crate::admin::spawn(
        admin_socket,
        crate::admin::socket_path(&data_dir),
        Arc::clone(&view),
        shutdown_rx.clone(),
    );
    let metrics_address = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let metrics = metrics_listener.map(|listener| {
        crate::metrics_http::spawn(listener, Arc::clone(&view), shutdown_rx.clone())
    });
    let startup = (Arc::clone(&current.load().config), bound_addresses(&bound));
    let mut server = Server {
        current,
        lasting,
        gate,
        view,
        shutdown: shutdown_rx,
        listeners: Vec::new(),
    };
    let configured: Vec<SocketAddr> = server
        .current
        .load()
        .config
        .listen
        .iter()
        .map(|l| l.address)
        .collect();
    for (address, listener) in configured.into_iter().zip(bound) {
        server.start_listener(address, listener);
    }
    server.publish_listeners();
    if let Some(address) = metrics_address {
        println!("relayward: listening on {address} (metrics: /metrics and /healthz over HTTP)");
    }
    print_startup(&startup.0, &startup.1, &config_arg);
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    wait_for_signals(&mut signals, &mut server, &config_arg).await;
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    let _ = shutdown_tx.send(true);
    tracing::info!("shutting down: finishing sessions in progress");
    let drain = server.current.load().config.limits.data_end_timeout + Duration::from_secs(5);
    let listeners = std::mem::take(&mut server.listeners);
    let joined = async {
        for (_, listener) in listeners {
            listener.join().await;
        }
    };
    if tokio::time::timeout(drain, joined).await.is_err() {
        tracing::warn!("sessions still open after {drain:?}; exiting anyway");
    }
    runner.stop().await;
    let _ = admin.await;
    if let Some(metrics) = metrics {
        let _ = tokio::time::timeout(Duration::from_secs(5), metrics).await;
    }
    queue.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Tells systemd (`Type=notify`, `$NOTIFY_SOCKET`) how the service stands; nothing when not
/// started by systemd.
fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// Everything the server writes is private to its user: queued mail, Maildirs, the TLS key,
/// and whatever a library creates without asking. The queue and the Maildir writer also set
/// their modes explicitly (0700 directories, 0600 files), so this is the second line.
fn private_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Switches to the `run_as` account (see [`crate::privilege`]) and says so in the log.
fn become_account(switch: &Switch) -> anyhow::Result<()> {
    match switch {
        Switch::To(account) => {
            account
                .become_it()
                .with_context(|| format!("cannot switch to user {}", account.name))?;
            tracing::info!(
                user = %account.name,
                uid = %account.uid,
                group = %account.group,
                gid = %account.gid,
                "listeners bound; now running as {}",
                account.name
            );
        }
        Switch::AlreadyThere(account) => {
            tracing::info!(user = %account.name, "already running as the run_as user");
        }
        Switch::Stay(_) => {}
    }
    Ok(())
}

/// The running server: the snapshot in force, the state that outlives it, and the listeners.
struct Server {
    current: Current,
    lasting: Lasting,
    gate: Arc<Gate>,
    /// What `/healthz`, `/metrics` and `relayward status` read.
    view: Arc<ServerView>,
    shutdown: watch::Receiver<bool>,
    /// Each listener with the address the file gives for it (port 0 binds a free port, so the
    /// bound address may differ).
    listeners: Vec<(SocketAddr, RunningListener)>,
}

impl Server {
    /// Tells the delivery runner where this server listens, so it never delivers to itself.
    fn publish_listeners(&self) {
        let bound = self.listeners.iter().map(|(_, l)| l.address).collect();
        self.lasting.own_listeners.set(bound);
        let views = self
            .listeners
            .iter()
            .map(|(_, l)| ListenerView {
                address: l.address,
                kind: l.kind,
                health: l.health.clone(),
            })
            .collect();
        self.view.set_listeners(views);
    }

    fn start_listener(&mut self, configured: SocketAddr, bound: BoundListener) {
        let running = RunningListener::spawn(
            bound,
            self.current.sessions(),
            Arc::clone(&self.gate),
            self.shutdown.clone(),
        );
        self.listeners.push((configured, running));
    }

    /// Reloads the configuration file: builds a new snapshot exactly as start-up does, binds
    /// listeners the file added, then puts the snapshot in force for everything at once and
    /// closes listeners the file removed. Live sessions keep the context they started with
    /// and no connection is dropped; a file `serve` would refuse is refused, and the running
    /// configuration stays. Settings that need a restart are named in the log.
    async fn reload(&mut self, config_arg: &ConfigArg) {
        let config = match crate::load_config(config_arg) {
            Ok(config) => config,
            Err(message) => {
                tracing::error!("reload failed, keeping the running configuration: {message}");
                return;
            }
        };
        let running = self.current.load();
        let restart = running.needs_restart(&config);
        let origin = Origin::now(config_arg.config.clone());
        let next = match Snapshot::build(config, origin, &self.lasting) {
            Ok(next) => next,
            Err(e) => {
                tracing::error!("reload refused, keeping the running configuration: {e:#}");
                return;
            }
        };
        let added: Vec<Listen> = next
            .config
            .listen
            .iter()
            .filter(|l| {
                !self
                    .listeners
                    .iter()
                    .any(|(address, _)| *address == l.address)
            })
            .cloned()
            .collect();
        let fresh = match bind_listeners(&added) {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::error!("reload refused, keeping the running configuration: {e:#}");
                return;
            }
        };
        let users = next.config.users.len();
        let certificate = next.certificate.clone();
        let keep: Vec<SocketAddr> = next.config.listen.iter().map(|l| l.address).collect();
        self.current.install(next, &self.lasting);
        for (listen, bound) in added.iter().zip(fresh) {
            tracing::info!(listener = %bound.address, kind = %bound.kind, "listener added");
            self.start_listener(listen.address, bound);
        }
        let (kept, removed): (Vec<_>, Vec<_>) = std::mem::take(&mut self.listeners)
            .into_iter()
            .partition(|(address, _)| keep.contains(address));
        self.listeners = kept;
        for (_, listener) in removed {
            tokio::spawn(listener.close());
        }
        self.publish_listeners();
        for setting in &restart {
            tracing::warn!("reload: {setting} changed; this takes effect only after a restart");
        }
        tracing::info!(
            users,
            certificate = %certificate,
            "configuration reloaded from {} (policy, routes, users, limits, TLS, delivery, listeners)",
            self.current.load().origin.describe()
        );
    }
}

/// Pending connections the kernel may hold per listener (capped by `net.core.somaxconn`).
/// The library default of 128 overflowed when 200 clients connected at once while the server
/// was busy writing queue files: the kernel dropped the SYNs and the clients waited 1–15 s to
/// retry (found by `scripts/bench`). A mail server takes bursts; Postfix uses more too.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds one listener with [`LISTEN_BACKLOG`] (and SO_REUSEADDR, so a restart does not wait
/// for old connections in TIME_WAIT).
fn bind_one(address: SocketAddr) -> std::io::Result<TcpListener> {
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
    bind_listeners(&config.listen)
}

/// Binds every listener or none: a reload that cannot bind one of its new addresses binds
/// nothing and keeps the running configuration.
fn bind_listeners(listen: &[Listen]) -> anyhow::Result<Vec<BoundListener>> {
    let mut bound = Vec::new();
    for listen in listen {
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

/// Each bound listener's address and kind, for the start-up report.
fn bound_addresses(bound: &[BoundListener]) -> Vec<(SocketAddr, ListenerKind)> {
    bound.iter().map(|b| (b.address, b.kind)).collect()
}

fn print_startup(
    config: &Config,
    listeners: &[(SocketAddr, ListenerKind)],
    config_arg: &ConfigArg,
) {
    for (address, kind) in listeners {
        let role = match kind {
            ListenerKind::Mx => {
                "mx: mail for local domains from anyone; relay only for trusted networks and authenticated users"
            }
            ListenerKind::Submission => "submission: STARTTLS, then AUTH, before any mail",
            ListenerKind::Submissions => "submissions: implicit TLS, AUTH before any mail",
        };
        println!("relayward: listening on {address} ({role})");
    }
    println!(
        "relayward: local domains: {}; data in {}",
        config.relay.local_domains.join(", "),
        config.data_dir.display()
    );
    if config.users.is_empty() {
        print!("{}", add_user_hint(config, config_arg.config.as_deref()));
    }
    println!("relayward: ready");
}

/// What `serve` prints when no `[[user]]` is configured: how to add one. Run on the embedded
/// default there is no file to add it to yet, and a file holding only the `[[user]]` table is
/// refused (`hostname`, the listeners, … are missing), so the hint starts the file from
/// `check-config --show-default`.
fn add_user_hint(config: &Config, config_file: Option<&std::path::Path>) -> String {
    let domain = config
        .relay
        .local_domains
        .first()
        .map(String::as_str)
        .unwrap_or("localhost");
    let (file, what, start, then) = match config_file {
        Some(path) => (
            path.display().to_string(),
            "hash a password",
            String::new(),
            String::new(),
        ),
        None => (
            "relayward.toml".to_string(),
            "start a file from the embedded default and hash a password",
            "    relayward check-config --show-default > relayward.toml   # the embedded default, to edit\n"
                .to_string(),
            "  then run: relayward serve --config relayward.toml\n".to_string(),
        ),
    };
    format!(
        "relayward: no users yet. To add one, {what}:\n\
         {start}    echo 'a long passphrase' | relayward hash-password\n\
         \x20 and add to {file}:\n\
         \x20   [[user]]\n\
         \x20   login = \"alice@{domain}\"\n\
         \x20   password_hash = \"<the printed hash>\"\n\
         {then}\
         \x20 (`relayward check-config FILE` shows the effective policy; the embedded default is printed by `relayward check-config --show-default`.)\n"
    )
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

async fn wait_for_signals(signals: &mut Signals, server: &mut Server, config_arg: &ConfigArg) {
    let Signals { term, int, hup } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                notify_systemd(&[sd_notify::NotifyState::Reloading]);
                server.reload(config_arg).await;
                notify_systemd(&[sd_notify::NotifyState::Ready]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Followed as printed on the embedded default, the hint gives a file `serve` accepts.
    #[test]
    fn the_add_user_hint_on_the_embedded_default_leads_to_a_working_file() {
        let config = Config::embedded_default().expect("embedded default");
        let hint = add_user_hint(&config, None);
        assert!(
            hint.contains("relayward check-config --show-default > relayward.toml"),
            "{hint}"
        );
        let block: String = hint
            .lines()
            .skip_while(|l| l.trim() != "[[user]]")
            .take(3)
            .map(|l| format!("{}\n", l.trim()))
            .collect();
        let hash = relayward_config::hash_password(b"a long passphrase").expect("hash");
        let file = format!(
            "{}\n{}",
            relayward_server::config::EMBEDDED_DEFAULT_TOML,
            block.replace("<the printed hash>", &hash)
        );
        let config = Config::from_toml_str(&file, "relayward.toml").expect("the hinted file loads");
        assert_eq!(config.users.len(), 1);
        assert!(config.validate().is_ok(), "{:?}", config.validate());
        let with_file = add_user_hint(&config, Some(std::path::Path::new("/etc/r.toml")));
        assert!(with_file.contains("and add to /etc/r.toml:"), "{with_file}");
        assert!(!with_file.contains("--show-default >"), "{with_file}");
    }
}

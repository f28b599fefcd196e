//! The running configuration: one immutable snapshot of everything built from the file —
//! configuration, routing table, relay policy, users, TLS certificate, session and admission
//! limits, the delivery side — swapped whole on SIGHUP.
//!
//! Start-up and reload build a snapshot the same way ([`Snapshot::build`]), so a reload is
//! refused for exactly what would stop `serve` from starting, and the running snapshot stays.
//! Listeners, new sessions and the delivery runner read their part through a
//! [`Live`](relayward_config::Live) of the one [`Current`] snapshot, so a single swap reaches
//! them all at once; a session keeps the context it started with until it ends.

use std::path::PathBuf;
use std::sync::Arc;

use crate::queue_backend::OpenQueue;
use anyhow::Context as _;
use arc_swap::ArcSwap;
use relayward_config::{Config, Live};
use relayward_delivery::dkim::DkimSigners;
use relayward_delivery::{
    DeliveryConfig, DeliveryContext, OwnListeners, RecipientVerifier, VerifyCache,
};
use relayward_queue::{MessageId, NewRecipient, Queue};
use relayward_server::auth::{AuthLimitSettings, AuthLimiter};
use relayward_server::listener::AdmissionLimits;
use relayward_server::local::DeliverLocal;
use relayward_server::policy::Policy;
use relayward_server::pregreet::PregreetCache;
use relayward_server::ratelimit::{UserLimitSettings, UserRateLimiter};
use relayward_server::session::SessionContext;
use relayward_server::sign::{AllowedFrom, SignOutbound, Signing};
use relayward_server::verify::{Verification, VerifyRecipients};
use std::future::Future;
use std::pin::Pin;

/// Where the configuration came from and when it was read, for the logs and `status`.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The file, or `None` for the embedded default.
    pub file: Option<PathBuf>,
    pub loaded: std::time::SystemTime,
}

impl Origin {
    /// `file`, read just now.
    pub fn now(file: Option<PathBuf>) -> Self {
        Self {
            file,
            loaded: std::time::SystemTime::now(),
        }
    }

    pub fn describe(&self) -> String {
        match &self.file {
            Some(path) => path.display().to_string(),
            None => "the embedded default".to_string(),
        }
    }
}

/// What outlives snapshots: the queue and the abuse counters. Rebuilding the counters on
/// SIGHUP would let a reload unban a password guesser or refill a compromised account's
/// budget, so a reload only changes their settings.
pub struct Lasting {
    pub queue: OpenQueue,
    /// The addresses the listeners are bound to, for the runner's loop check.
    pub own_listeners: OwnListeners,
    /// What internal servers said about recipients (see `relayward_delivery::verify`).
    pub verify_cache: VerifyCache,
    pub auth: Arc<AuthLimiter>,
    pub users: Arc<UserRateLimiter>,
    /// Clients that passed the pregreet test: a reload must not make them all wait again.
    pub pregreet: Arc<PregreetCache>,
}

impl Lasting {
    pub fn new(config: &Config, queue: OpenQueue) -> Self {
        Self {
            queue,
            own_listeners: OwnListeners::default(),
            verify_cache: VerifyCache::default(),
            auth: Arc::new(AuthLimiter::new(AuthLimitSettings::from_limits(
                &config.limits,
            ))),
            users: Arc::new(UserRateLimiter::new(UserLimitSettings::from_limits(
                &config.limits,
            ))),
            pregreet: Arc::default(),
        }
    }

    fn queue(&self) -> Arc<dyn Queue> {
        self.queue.queue()
    }
}

/// A configuration `serve` will not run with, found while building its parts (a certificate
/// or DKIM key that does not load, a policy the checks refuse, …). At start it ends `serve`
/// with exit status 78 (EX_CONFIG) like every other refused configuration: the systemd unit's
/// `RestartPreventExitStatus=78` then stops instead of restarting into the same refusal.
#[derive(Debug)]
pub struct Refused(pub anyhow::Error);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Refused {}

/// Everything built from one configuration file. Immutable.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub origin: Origin,
    pub session: Arc<SessionContext>,
    pub delivery: Arc<DeliveryContext>,
    pub admission: Arc<AdmissionLimits>,
    /// What the TLS certificate is, for the log ("generated self-signed …", "loaded from …").
    pub certificate: String,
}

impl Snapshot {
    /// Checks the configuration and builds every part of it: the same steps at start and on
    /// reload. Fails with one message per problem (the configuration's errors, an unreadable
    /// certificate, a smart-host password file that cannot be read, …).
    pub fn build(config: Config, origin: Origin, lasting: &Lasting) -> Result<Snapshot, Refused> {
        Self::build_with_tls(config, origin, lasting, None)
    }

    /// [`Snapshot::build`] with the TLS pair already loaded: at start, `serve` reads the
    /// `[tls]` files before it leaves root (see [`crate::privilege`]).
    pub fn build_with_tls(
        config: Config,
        origin: Origin,
        lasting: &Lasting,
        tls: Option<relayward_server::tls::TlsSetup>,
    ) -> Result<Snapshot, Refused> {
        Self::build_parts(config, origin, lasting, tls).map_err(Refused)
    }

    fn build_parts(
        config: Config,
        origin: Origin,
        lasting: &Lasting,
        tls: Option<relayward_server::tls::TlsSetup>,
    ) -> anyhow::Result<Snapshot> {
        if let Err(problems) = config.validate() {
            let errors: Vec<String> = problems
                .iter()
                .filter(|p| p.severity == relayward_config::Severity::Error)
                .map(ToString::to_string)
                .collect();
            anyhow::bail!("configuration refused: {}", errors.join("; "));
        }
        let tls = match tls {
            Some(tls) => tls,
            None => relayward_server::tls::server_tls(&config).context("TLS set-up failed")?,
        };
        let policy = Policy::from_config(&config).map_err(|problems| {
            let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("configuration refused: {}", text.join("; "))
        })?;
        let settings = DeliveryConfig::from_config(&config);
        let local = config.delivery.local_before_reply.then(|| LocalMaildirs {
            mail_root: settings.mail_root.clone(),
            min_free_bytes: config.queue.min_free_bytes,
        });
        let delivery = DeliveryContext::new(settings, Arc::clone(policy.router()))
            .context("delivery configuration")?
            .with_own_listeners(lasting.own_listeners.clone());
        let delivery = Arc::new(delivery);
        let verifier = Verifier(RecipientVerifier::new(
            Arc::clone(&delivery),
            lasting.verify_cache.clone(),
        ));
        // Keys are read at every build, so a rotated key is used after SIGHUP.
        let signer = DkimSigners::load(&config.dkim)
            .map_err(|e| anyhow::anyhow!("DKIM key refused: {e}"))?;
        let mut session = session_context(&config, &tls, policy, lasting);
        session.verifier = Some(Arc::new(verifier));
        session.pregreet = Arc::clone(&lasting.pregreet);
        session.signer = signer.map(|keys| Arc::new(Signer(keys)) as Arc<dyn SignOutbound>);
        session.local_delivery = local.map(|local| Arc::new(local) as Arc<dyn DeliverLocal>);
        Ok(Snapshot {
            admission: Arc::new(admission_limits(&config)),
            certificate: tls.certificate.to_string(),
            session: Arc::new(session),
            delivery,
            config: Arc::new(config),
            origin,
        })
    }

    /// Settings that differ between `self` and `next` and take effect only after a restart.
    pub fn needs_restart(&self, next: &Config) -> Vec<String> {
        let old = &self.config;
        let mut changed = Vec::new();
        if old.data_dir != next.data_dir {
            changed.push(format!(
                "data_dir ({} -> {})",
                old.data_dir.display(),
                next.data_dir.display()
            ));
        }
        let (oq, nq) = (&old.queue, &next.queue);
        let queue_store = |q: &relayward_config::QueueSettings| {
            (
                q.backend,
                q.postgres_url.clone(),
                q.postgres_password_file.clone(),
                q.postgres_tls,
                q.postgres_ca_file.clone(),
                q.lease_timeout,
                q.node_name.clone(),
            )
        };
        if queue_store(oq) != queue_store(nq) {
            changed.push(format!(
                "[queue] backend or database settings (backend {} -> {})",
                oq.backend.as_str(),
                nq.backend.as_str()
            ));
        }
        if (&old.run_as, &old.run_as_group) != (&next.run_as, &next.run_as_group) {
            changed.push("run_as / run_as_group".to_string());
        }
        if old.metrics.listen != next.metrics.listen {
            changed.push("metrics.listen".to_string());
        }
        for listen in &next.listen {
            let kind_changed = old
                .listen
                .iter()
                .any(|l| l.address == listen.address && l.kind != listen.kind);
            if kind_changed {
                changed.push(format!(
                    "listen {} kind (now {})",
                    listen.address, listen.kind
                ));
            }
        }
        changed
    }
}

fn session_context(
    config: &Config,
    tls: &relayward_server::tls::TlsSetup,
    policy: Policy,
    lasting: &Lasting,
) -> SessionContext {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.server_config));
    SessionContext::from_config(
        config,
        policy,
        Some(acceptor),
        lasting.queue(),
        Arc::clone(&lasting.auth),
        Arc::clone(&lasting.users),
    )
}

fn admission_limits(config: &Config) -> AdmissionLimits {
    AdmissionLimits {
        max_connections: config.limits.max_connections as usize,
        max_connections_per_ip: config.limits.max_connections_per_ip as usize,
        connections_per_ip_per_minute: config.limits.connections_per_ip_per_minute,
    }
}

/// The delivery crate's recipient verifier, as the session's [`VerifyRecipients`] (the server
/// crate does not depend on the delivery crate).
struct Verifier(RecipientVerifier);

impl VerifyRecipients for Verifier {
    fn verify<'a>(
        &'a self,
        host: &'a str,
        port: u16,
        address: &'a str,
    ) -> Pin<Box<dyn Future<Output = Verification> + Send + 'a>> {
        Box::pin(self.0.verify(host, port, address))
    }
}

/// The delivery crate's DKIM signer, as the session's [`SignOutbound`].
struct Signer(DkimSigners);

impl SignOutbound for Signer {
    fn sign(&self, content: &[u8], allowed: &AllowedFrom) -> Signing {
        self.0.sign(content, allowed)
    }
}

/// The delivery crate's Maildir writer, as the session's [`DeliverLocal`].
struct LocalMaildirs {
    mail_root: PathBuf,
    min_free_bytes: u64,
}

impl DeliverLocal for LocalMaildirs {
    fn deliver<'a>(
        &'a self,
        id: &'a MessageId,
        recipients: &'a [NewRecipient],
        content: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Vec<bool>> + Send + 'a>> {
        Box::pin(relayward_delivery::local::deliver_before_reply(
            &self.mail_root,
            self.min_free_bytes,
            id,
            recipients,
            content,
        ))
    }
}

/// The snapshot in force. Cheap to clone; every clone sees the same swaps.
#[derive(Clone)]
pub struct Current {
    snapshot: Arc<ArcSwap<Snapshot>>,
}

impl Current {
    pub fn new(snapshot: Snapshot) -> Self {
        Self {
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
        }
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Puts `next` in force for everything that reads it, and applies the settings of the
    /// state that outlives snapshots (limiter settings, the spool's free-space floor).
    pub fn install(&self, next: Snapshot, lasting: &Lasting) {
        let limits = &next.config.limits;
        lasting
            .users
            .set_settings(UserLimitSettings::from_limits(limits));
        lasting
            .auth
            .set_settings(AuthLimitSettings::from_limits(limits));
        lasting.queue.apply(&next.config.queue);
        self.snapshot.store(Arc::new(next));
    }

    /// The session side, for listeners (each new session takes the one in force).
    pub fn sessions(&self) -> Live<SessionContext> {
        let snapshot = Arc::clone(&self.snapshot);
        Live::new(move || Arc::clone(&snapshot.load().session))
    }

    /// The delivery side, for the runner (each message takes the one in force).
    pub fn delivery(&self) -> Live<DeliveryContext> {
        let snapshot = Arc::clone(&self.snapshot);
        Live::new(move || Arc::clone(&snapshot.load().delivery))
    }

    /// The admission limits, for the connection gate.
    pub fn admission(&self) -> Live<AdmissionLimits> {
        let snapshot = Arc::clone(&self.snapshot);
        Live::new(move || Arc::clone(&snapshot.load().admission))
    }
}

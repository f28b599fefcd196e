//! Starts the delivery runner from the server configuration.
//!
//! The delivery crate does not know the server's configuration types (it sits below the
//! server), so this is where `[delivery]`, `[dns]` and `[[route]]` are mapped onto it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use relayward_delivery::{DeliveryConfig, MailboxList, Route, RouteTarget, Runner, SmarthostTls};
use relayward_queue::Queue;
use relayward_server::config::{self, Config};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the runner rescans the queue without being woken: changes made by another process
/// (`relayward queue retry` while the server runs) take effect within this time.
const QUEUE_SCAN_INTERVAL: Duration = Duration::from_secs(5);

/// The running delivery runner.
pub struct RunnerHandle {
    task: JoinHandle<()>,
    grace: Duration,
    /// The runner's list of local mailboxes; `serve` replaces it on reload.
    pub mailboxes: Option<MailboxList>,
}

impl RunnerHandle {
    /// Waits for the runner to stop after the shutdown signal (in-flight deliveries get their
    /// grace period; anything cut short stays pending in the queue).
    pub async fn stop(self) {
        let limit = self.grace + Duration::from_secs(5);
        if tokio::time::timeout(limit, self.task).await.is_err() {
            tracing::warn!("delivery runner did not stop within {limit:?}");
        }
    }
}

pub fn delivery_config(config: &Config) -> anyhow::Result<DeliveryConfig> {
    let delivery = &config.delivery;
    let mut out = DeliveryConfig::new(config.hostname.clone(), config.data_dir.join("mail"));
    out.local_domains = config.normalized_local_domains();
    out.routes = config
        .routes
        .iter()
        .map(|route| Route {
            domain: route.domain.to_ascii_lowercase(),
            to: match &route.to {
                config::RouteTarget::Maildir => RouteTarget::Maildir,
                config::RouteTarget::Smtp { host, port } => RouteTarget::Smtp {
                    host: host.clone(),
                    port: *port,
                },
            },
        })
        .collect();
    out.smarthost = delivery.smarthost.clone();
    out.smarthost_tls = match delivery.smarthost_tls {
        config::SmarthostTls::Starttls => SmarthostTls::StartTls,
        config::SmarthostTls::Implicit => SmarthostTls::Implicit,
        config::SmarthostTls::None => SmarthostTls::None,
    };
    out.smarthost_user = delivery.smarthost_user.clone();
    out.smarthost_password_file = delivery.smarthost_password_file.clone();
    out.smarthost_ca_file = delivery.ca_file.clone();
    out.mx_port = delivery.mx_port;
    out.nameservers = config.dns.nameservers.clone();
    out.max_queue_lifetime = delivery.max_queue_lifetime;
    out.poll_interval = QUEUE_SCAN_INTERVAL;
    out.local_mailboxes = Some(MailboxList::new(mailbox_addresses(config)));
    Ok(out)
}

/// The existing local mailboxes, for the runner's check of bounce targets.
pub fn mailbox_addresses(config: &Config) -> Vec<String> {
    config
        .local_mailboxes()
        .into_iter()
        .map(|(address, _)| address)
        .collect()
}

/// Starts the runner; it stops when `shutdown` turns true.
pub fn start(
    config: &Config,
    queue: Arc<dyn Queue>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<RunnerHandle> {
    let delivery = delivery_config(config)?;
    let grace = delivery.shutdown_grace;
    let mailboxes = delivery.local_mailboxes.clone();
    let runner = Runner::new(queue, delivery).context("delivery configuration")?;
    let stopping = async move {
        let _ = shutdown.wait_for(|stopping| *stopping).await;
    };
    let task = tokio::spawn(runner.run(stopping));
    Ok(RunnerHandle {
        task,
        grace,
        mailboxes,
    })
}

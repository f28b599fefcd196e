//! The queue `[queue] backend` names: the file spool under `data_dir/queue` (one node), or the
//! PostgreSQL queue shared by every node that names the same database. `serve` and
//! `relayward queue …` open it the same way; everything else sees only [`Queue`].

use std::sync::Arc;

use anyhow::Context as _;
use relayward_config::{Config, PostgresTls, QueueBackend, QueueSettings};
use relayward_queue::{Queue, Spool};
use relayward_queue_postgres::{PgOptions, PgQueue};

/// The open queue, with what only its own backend can do.
#[derive(Clone)]
pub enum OpenQueue {
    File(Arc<Spool>),
    Postgres(Arc<PgQueue>),
}

impl OpenQueue {
    /// Opens the queue the configuration names. The PostgreSQL queue connects, migrates its
    /// schema (or refuses a newer one) and registers this node.
    pub async fn open(config: &Config) -> anyhow::Result<OpenQueue> {
        match config.queue.backend {
            QueueBackend::File => open_spool(config).map(OpenQueue::File),
            QueueBackend::Postgres => {
                let options = postgres_options(config)?;
                let queue = PgQueue::open(options)
                    .await
                    .context("cannot open the PostgreSQL queue ([queue] postgres_url)")?;
                Ok(OpenQueue::Postgres(Arc::new(queue)))
            }
        }
    }

    pub fn queue(&self) -> Arc<dyn Queue> {
        match self {
            OpenQueue::File(spool) => Arc::clone(spool) as Arc<dyn Queue>,
            OpenQueue::Postgres(pg) => Arc::clone(pg) as Arc<dyn Queue>,
        }
    }

    /// Settings a reload may change in place (the spool's free-space floor).
    pub fn apply(&self, settings: &QueueSettings) {
        if let OpenQueue::File(spool) = self {
            spool.set_min_free_bytes(settings.min_free_bytes);
        }
    }

    /// After the runner stopped: a node of the shared queue gives back its leases at once,
    /// so the other nodes need not wait `lease_timeout` for them.
    pub async fn shutdown(&self) {
        if let OpenQueue::Postgres(pg) = self {
            pg.shutdown().await;
        }
    }
}

/// Opens the durable spool under `data_dir/queue`.
fn open_spool(config: &Config) -> anyhow::Result<Arc<Spool>> {
    let options = relayward_queue::spool::SpoolOptions {
        min_free_bytes: config.queue.min_free_bytes,
        ..Default::default()
    };
    let dir = config.data_dir.join("queue");
    let spool = Spool::open(&dir, options)
        .with_context(|| format!("cannot open the queue in {}", dir.display()))?;
    Ok(Arc::new(spool))
}

/// `[queue]` as the PostgreSQL queue takes it: the password read from its file, a verifying
/// TLS configuration when `postgres_tls = "require"`, the node named `node_name` or `hostname`.
fn postgres_options(config: &Config) -> anyhow::Result<PgOptions> {
    let settings = &config.queue;
    let url = settings
        .postgres_url
        .clone()
        .context("[queue] backend = \"postgres\" needs postgres_url")?;
    let node = settings
        .node_name
        .clone()
        .unwrap_or_else(|| config.hostname.clone());
    let mut options = PgOptions::new(url, node);
    options.lease_timeout = settings.lease_timeout;
    if let Some(path) = &settings.postgres_password_file {
        let password = relayward_config::read_secret_file(path).with_context(|| {
            format!(
                "cannot read [queue] postgres_password_file {}",
                path.display()
            )
        })?;
        options.password = Some(password);
    }
    if settings.postgres_tls == PostgresTls::Require {
        let tls = relayward_tls::verifying(settings.postgres_ca_file.as_deref())
            .context("[queue] postgres_tls")?;
        options.tls = Some(tls);
    }
    Ok(options)
}

//! The queue `[queue] backend` names: the file spool under `data_dir/queue` (one node), or the
//! PostgreSQL queue shared by every node that names the same database. `serve` and
//! `relayward queue …` open it the same way; everything else sees only [`Queue`].

use std::sync::Arc;

use anyhow::Context as _;
use relayward_config::{Config, PostgresTls, QueueBackend, QueueSettings, SpoolCommit};
use relayward_queue::{CommitMode, Queue, Spool};
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

    /// For the start-up log: how the file spool commits new mail.
    pub fn describe_commit(&self, settings: &QueueSettings) -> Option<String> {
        let OpenQueue::File(spool) = self else {
            return None;
        };
        let setting = settings.commit.as_str();
        Some(match spool.commit_mode() {
            CommitMode::Filesystem => format!(
                "queue: one syncfs commits each batch of new mail ([queue] commit = \"{setting}\")"
            ),
            CommitMode::EachFile => format!(
                "queue: each new message is written into a preallocated file and fdatasynced on its own ([queue] commit = \"{setting}\"; \
                 with a filesystem of the spool's own, or commit = \"syncfs\", one flush commits a batch)"
            ),
        })
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
        commit: commit_mode(config),
        ..Default::default()
    };
    let dir = config.data_dir.join("queue");
    let spool = Spool::open(&dir, options)
        .with_context(|| format!("cannot open the queue in {}", dir.display()))?;
    Ok(Arc::new(spool))
}

/// `[queue] commit`, with `auto` decided: `syncfs` pays off only when nothing but the spool
/// writes to its filesystem, which a mount of its own (for `data_dir/queue` or `data_dir`)
/// says; on a shared filesystem each message's own `fdatasync` does not wait for other
/// programs' data.
fn commit_mode(config: &Config) -> CommitMode {
    let queue = config.data_dir.join("queue");
    match config.queue.commit {
        SpoolCommit::Syncfs => CommitMode::Filesystem,
        SpoolCommit::Fdatasync => CommitMode::EachFile,
        SpoolCommit::Auto if is_mount_point(&queue) || is_mount_point(&config.data_dir) => {
            CommitMode::Filesystem
        }
        SpoolCommit::Auto => CommitMode::EachFile,
    }
}

/// True when `dir` is the root of a mounted filesystem: its parent is on another device.
fn is_mount_point(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(own), Some(Ok(parent))) = (std::fs::metadata(dir), dir.parent().map(std::fs::metadata))
    else {
        return false;
    };
    own.dev() != parent.dev()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_told_from_plain_directories() {
        let plain = tempfile::tempdir().expect("tempdir");
        assert!(!is_mount_point(plain.path()));
        assert!(!is_mount_point(std::path::Path::new(
            "/nonexistent/relayward"
        )));
        // procfs is mounted on /proc wherever these tests run.
        assert!(is_mount_point(std::path::Path::new("/proc")));
    }
}

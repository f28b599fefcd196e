//! Starts the delivery runner beside the listeners, on the delivery side of the running
//! configuration snapshot (see [`crate::snapshot`]), and the TLS-RPT reporter beside it
//! (counts in `data_dir/tls-report/`; it sends only while `[tls_report] enabled`), and the
//! sweeper of copies a crash left in the Maildirs' `tmp/`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use relayward_config::Live;
use relayward_delivery::tlsrpt::ReportBook;
use relayward_delivery::{DeliveryContext, Runner};
use relayward_queue::Queue;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The running delivery runner.
pub struct RunnerHandle {
    task: JoinHandle<()>,
    reporter: JoinHandle<()>,
    sweeper: JoinHandle<()>,
    live: Live<DeliveryContext>,
    runner: Runner,
}

impl RunnerHandle {
    /// The runner, to ask what it is delivering.
    pub fn runner(&self) -> Runner {
        self.runner.clone()
    }

    /// Waits for the runner to stop after the shutdown signal (in-flight deliveries get their
    /// grace period; anything cut short stays pending in the queue).
    pub async fn stop(self) {
        // A sweep cut short removes the rest next time; each removal stands on its own.
        self.sweeper.abort();
        let limit = self.live.current().settings.shutdown_grace + Duration::from_secs(5);
        if tokio::time::timeout(limit, self.task).await.is_err() {
            tracing::warn!("delivery runner did not stop within {limit:?}");
        }
        // It saves the TLS report counts as it stops.
        if tokio::time::timeout(Duration::from_secs(5), self.reporter)
            .await
            .is_err()
        {
            tracing::warn!("TLS reporter did not stop within 5s");
        }
    }
}

/// Where the TLS report counts live.
pub fn report_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("tls-report")
}

/// Starts the runner and the TLS reporter; they stop when `shutdown` turns true.
pub fn start(
    queue: Arc<dyn Queue>,
    live: Live<DeliveryContext>,
    data_dir: &Path,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<RunnerHandle> {
    let dir = report_dir(data_dir);
    let interval = live.current().settings.tls_report.interval;
    let book = ReportBook::open(&dir, interval, relayward_delivery::runner::unix_now())
        .with_context(|| format!("cannot open the TLS report counts in {}", dir.display()))?;
    let runner = Runner::with_tls_reports(queue, live.clone(), Arc::new(book));
    let stopping = |mut shutdown: watch::Receiver<bool>| async move {
        let _ = shutdown.wait_for(|stopping| *stopping).await;
    };
    let reporter = runner
        .tls_reporter()
        .context("the runner has no TLS report book")?;
    Ok(RunnerHandle {
        task: tokio::spawn(runner.clone().run(stopping(shutdown.clone()))),
        reporter: tokio::spawn(reporter.run(stopping(shutdown.clone()))),
        sweeper: tokio::spawn(relayward_delivery::local::sweep_abandoned_copies(
            live.clone(),
            stopping(shutdown),
        )),
        live,
        runner,
    })
}

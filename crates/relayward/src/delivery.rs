//! Starts the delivery runner beside the listeners, on the delivery side of the running
//! configuration snapshot (see [`crate::snapshot`]).

use std::sync::Arc;
use std::time::Duration;

use relayward_config::Live;
use relayward_delivery::{DeliveryContext, Runner};
use relayward_queue::Queue;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The running delivery runner.
pub struct RunnerHandle {
    task: JoinHandle<()>,
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
        let limit = self.live.current().settings.shutdown_grace + Duration::from_secs(5);
        if tokio::time::timeout(limit, self.task).await.is_err() {
            tracing::warn!("delivery runner did not stop within {limit:?}");
        }
    }
}

/// Starts the runner; it stops when `shutdown` turns true.
pub fn start(
    queue: Arc<dyn Queue>,
    live: Live<DeliveryContext>,
    mut shutdown: watch::Receiver<bool>,
) -> RunnerHandle {
    let runner = Runner::new(queue, live.clone());
    let stopping = async move {
        let _ = shutdown.wait_for(|stopping| *stopping).await;
    };
    RunnerHandle {
        task: tokio::spawn(runner.clone().run(stopping)),
        live,
        runner,
    }
}

//! `[metrics] listen`: Prometheus text at `/metrics`, health at `/healthz`, over plain HTTP.
//!
//! The counters are counted where the events happen (see `relayward_metrics`); what is a
//! state — the queue's contents, the AUTH bans in force — is read from the running server
//! ([`ServerView`]) at each scrape, so it is never stale and nothing keeps a second tally.
//! The endpoint has no authentication: `check-config` warns when it is not on loopback.
//!
//! Its connections are capped like the probe service's web door ([`metrics_caps`]): it shares
//! the process's file descriptors with the SMTP listeners, and without a cap anyone who can
//! reach it could hold enough idle connections that the listeners could not accept mail.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use relayward_probe_service::http_listener::{CappedListener, Caps};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::view::ServerView;

/// The OpenMetrics text format, which Prometheus reads (prometheus-client writes it).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Connections to the endpoint at once (more wait in the kernel's backlog), per client (the
/// next gets `503`), and how long one may stay without an answer written to it: a scraper
/// needs one connection, a few when several scrape; its scrape takes well under the timeout.
fn metrics_caps() -> Caps {
    Caps {
        total: 32,
        per_client: 8,
        per_network: 32,
        idle_timeout: Duration::from_secs(30),
        counted_only_in_total: Arc::new(|_| false),
        name: "metrics endpoint",
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` turns true.
pub fn spawn(
    listener: TcpListener,
    view: Arc<ServerView>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .with_state(view);
    tokio::spawn(async move {
        let served = axum::serve(CappedListener::new(listener, metrics_caps()), app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|stopping| *stopping).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!("metrics endpoint stopped: {e}");
        }
    })
}

async fn metrics(State(view): State<Arc<ServerView>>) -> Response {
    view.refresh_metrics().await;
    let text = relayward_metrics::global().encode();
    ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response()
}

/// `200 ok` when every listener accepts and the queue takes writes; otherwise `503` and one
/// line per reason, for the monitoring system's alert text.
async fn healthz(State(view): State<Arc<ServerView>>) -> Response {
    match view.health().await {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(reasons) => {
            let mut text = String::new();
            for reason in reasons {
                text.push_str(&reason);
                text.push('\n');
            }
            (StatusCode::SERVICE_UNAVAILABLE, text).into_response()
        }
    }
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "not found: this endpoint serves /metrics and /healthz\n",
    )
        .into_response()
}

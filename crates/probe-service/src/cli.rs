//! `relayward probe-service [--config FILE]`: load and check the configuration, bind the doors,
//! say where they listen, serve until SIGTERM/SIGINT, let running tests finish.
//!
//! Exit status: 0 after a clean stop, 78 for a configuration that is refused (as `serve`), 1
//! when a listener cannot be bound or the store cannot be opened.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use relayward_config::Severity;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::config::{EMBEDDED_DEFAULT_TOML, ServiceConfig};
use crate::service::Service;
use crate::{http, telnet};

/// Exit status for a configuration that is refused (sysexits' EX_CONFIG), as `relayward serve`.
pub const EXIT_CONFIG: u8 = 78;

#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Configuration file: TOML with one [probe_service] table (keys in README, "The probe
    /// service"). Without it, the embedded default: both doors on loopback (--show-default).
    #[arg(
        long,
        short = 'c',
        env = "RELAYWARD_PROBE_SERVICE_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    pub show_default: bool,
}

/// Runs the service; returns the exit status.
pub async fn run(args: ServiceArgs) -> u8 {
    if args.show_default {
        print!("{EMBEDDED_DEFAULT_TOML}");
        return 0;
    }
    let loaded = match &args.config {
        Some(path) => ServiceConfig::load(path),
        None => ServiceConfig::embedded_default(),
    };
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            eprintln!("relayward probe-service: {e}");
            return EXIT_CONFIG;
        }
    };
    let problems = config.problems();
    for problem in &problems {
        eprintln!("relayward probe-service: {problem}");
    }
    if problems.iter().any(|p| p.severity == Severity::Error) {
        eprintln!("relayward probe-service: refusing to start: fix the configuration above.");
        return EXIT_CONFIG;
    }
    match serve(config).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("relayward probe-service: {e:#}");
            1
        }
    }
}

async fn serve(mut config: ServiceConfig) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let grace = config.shutdown_grace;
    let telnet = bind(config.telnet_listen, "telnet_listen").await?;
    let web = bind(config.http_listen, "http_listen").await?;
    // The pages and the telnet greeting name the ports really bound (`:0` in tests).
    config.telnet_listen = local_addr(&telnet)?.or(config.telnet_listen);
    config.http_listen = local_addr(&web)?.or(config.http_listen);
    let service = Service::new(config).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut doors = tokio::task::JoinSet::new();
    let mut bound = Vec::new();
    if let Some(listener) = telnet {
        bound.push((listener.local_addr()?, "telnet: connect-back door"));
        doors.spawn(telnet::serve(
            listener,
            Arc::clone(&service),
            stop_rx.clone(),
        ));
    }
    if let Some(listener) = web {
        bound.push((listener.local_addr()?, "http: web page and JSON API"));
        let (service, stop) = (Arc::clone(&service), stop_rx.clone());
        doors.spawn(async move {
            if let Err(e) = http::serve(listener, service, stop).await {
                tracing::error!(error = %e, "the web door stopped");
            }
        });
    }
    if let Some(addr) = service.confirm_addr() {
        bound.push((addr, "confirm: proof-of-relay listener"));
    }
    {
        let mut out = std::io::stdout().lock();
        for (addr, what) in &bound {
            let _ = writeln!(out, "relayward probe-service: listening on {addr} ({what})");
        }
        let _ = writeln!(out, "relayward probe-service: ready");
        let _ = out.flush();
    }
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::info!(
        grace_seconds = grace.as_secs(),
        "stopping: no new tests; running ones may finish"
    );
    let _ = stop_tx.send(true);
    let cut = service.shutdown(grace).await;
    if cut > 0 {
        tracing::warn!(
            tests = cut,
            "stopped with tests unfinished; stored as INCONCLUSIVE"
        );
    }
    // Doors still following a test (a telnet caller, an SSE stream) get a moment to send the
    // last lines; then the process ends whatever they do.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while doors.join_next().await.is_some() {}
    })
    .await;
    tracing::info!("stopped");
    Ok(())
}

async fn bind(addr: Option<SocketAddr>, key: &str) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = addr else { return Ok(None) };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({key}): {e}"))
}

fn local_addr(listener: &Option<TcpListener>) -> std::io::Result<Option<SocketAddr>> {
    listener.as_ref().map(TcpListener::local_addr).transpose()
}

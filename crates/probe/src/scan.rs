//! Many targets: bounded concurrency, results handed over as they finish, stop on request.
//!
//! An input (an address, a host name, `mx:DOMAIN`) is resolved in a task of its own; every
//! address it yields is probed in parallel with the others, each probe holding one of the
//! `concurrency` slots, so the MX hosts of one domain are probed at once while `-j` still
//! bounds the connections in flight. Excluded addresses (`--exclude-file`) are dropped after
//! resolution, before anything is sent to them.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::{ProbeConfig, Target};
use crate::mx::MxResolver;
use crate::probe::probe_target;
use crate::report::{Findings, TargetReport, Verdict};
use crate::target::{self, TargetInput};

/// What a scan did.
#[derive(Debug, Default)]
pub struct ScanSummary {
    pub reports: Vec<TargetReport>,
    /// Stopped by the `stop` future (Ctrl-C) before every target was done.
    pub interrupted: bool,
    /// Resolved addresses dropped by `--exclude-file`.
    pub excluded: usize,
}

/// What one input produced.
pub struct InputDone<'a> {
    /// [`TargetInput::label`] of the input.
    pub input: &'a str,
    pub reports: &'a [TargetReport],
}

/// Probes every input with at most `concurrency` targets in flight, calling `on_report` for
/// each finished target (in completion order). Resolves when all are done or `stop` fires;
/// in-flight probes are then abandoned and only the finished ones are reported.
pub async fn scan(
    inputs: Vec<TargetInput>,
    cfg: Arc<ProbeConfig>,
    concurrency: usize,
    stop: impl Future<Output = ()>,
    mut on_report: impl FnMut(&TargetReport),
) -> ScanSummary {
    scan_inputs(
        inputs,
        cfg,
        concurrency,
        stop,
        |done| {
            for r in done.reports {
                on_report(r);
            }
        },
        |r| r,
    )
    .await
}

/// [`scan`], reporting per input: `on_input` gets an input's reports together once all of
/// its addresses are done (what `--resume` records). [`ScanSummary::reports`] keeps what
/// `retain` makes of each report once `on_input` has seen it ([`TargetReport::into_summary`]
/// when the reports were streamed and only the totals are left to compute).
pub async fn scan_inputs(
    inputs: Vec<TargetInput>,
    cfg: Arc<ProbeConfig>,
    concurrency: usize,
    stop: impl Future<Output = ()>,
    mut on_input: impl FnMut(InputDone<'_>),
    retain: impl Fn(TargetReport) -> TargetReport,
) -> ScanSummary {
    let concurrency = concurrency.max(1);
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut pending = inputs.into_iter();
    let mut running: JoinSet<(String, Resolved)> = JoinSet::new();
    let mut summary = ScanSummary::default();
    tokio::pin!(stop);
    loop {
        // Inputs waiting for a probe slot cost a task each, nothing more; a few ahead keep
        // the slots busy while names resolve.
        while running.len() < concurrency * 2 {
            let Some(input) = pending.next() else { break };
            let (cfg, slots) = (Arc::clone(&cfg), Arc::clone(&slots));
            running.spawn(async move {
                let label = input.label();
                (label, probe_input(input, cfg, slots).await)
            });
        }
        if running.is_empty() {
            return summary;
        }
        tokio::select! {
            joined = running.join_next() => {
                let (label, done) = match joined {
                    Some(Ok(x)) => x,
                    Some(Err(e)) => (
                        "(unknown)".to_string(),
                        Resolved {
                            reports: vec![unreachable("(unknown)", format!("probe task failed: {e}"))],
                            excluded: 0,
                        },
                    ),
                    None => continue,
                };
                summary.excluded += done.excluded;
                on_input(InputDone { input: &label, reports: &done.reports });
                summary.reports.extend(done.reports.into_iter().map(&retain));
            }
            () = &mut stop => {
                running.abort_all();
                summary.interrupted = true;
                return summary;
            }
        }
    }
}

/// The reports of one input and how many of its addresses were excluded.
struct Resolved {
    reports: Vec<TargetReport>,
    excluded: usize,
}

/// One input: resolved to its addresses, each probed in parallel under a slot.
async fn probe_input(input: TargetInput, cfg: Arc<ProbeConfig>, slots: Arc<Semaphore>) -> Resolved {
    let Resolution {
        targets,
        mut unreachable,
    } = resolve_input(input, &cfg).await;
    let before = targets.len();
    let targets: Vec<Target> = targets
        .into_iter()
        .filter(|t| {
            !cfg.exclude
                .as_ref()
                .is_some_and(|e| e.contains(t.addr.ip()))
        })
        .collect();
    let excluded = before - targets.len();
    let mut probes = JoinSet::new();
    for (i, t) in targets.into_iter().enumerate() {
        let (cfg, slots) = (Arc::clone(&cfg), Arc::clone(&slots));
        probes.spawn(async move {
            let _slot = slots.acquire_owned().await.ok();
            cfg.in_flight.fetch_add(1, Ordering::Relaxed);
            let report = probe_target(t, Arc::clone(&cfg)).await;
            cfg.in_flight.fetch_sub(1, Ordering::Relaxed);
            (i, report)
        });
    }
    let mut done: Vec<(usize, TargetReport)> = probes.join_all().await;
    // Reports of one input in MX / address order, whatever finished first.
    done.sort_by_key(|(i, _)| *i);
    unreachable.extend(done.into_iter().map(|(_, r)| r));
    Resolved {
        reports: unreachable,
        excluded,
    }
}

/// What an input stands for once its names are looked up.
#[derive(Debug, Default)]
pub struct Resolution {
    /// The addresses to probe, in MX / address order. Nothing has been sent to any of them:
    /// a caller can still check each (`--exclude-file`, a service's private-range rule).
    pub targets: Vec<Target>,
    /// `UNREACHABLE` reports for the parts that could not even be addressed (a name that does
    /// not resolve, an MX host without address, a null MX).
    pub unreachable: Vec<TargetReport>,
}

/// Looks an input's names up, as a scan does before probing: a host name through
/// [`ProbeConfig::name_resolver`] (else the system resolver), `mx:DOMAIN` through
/// [`ProbeConfig::mx_resolver`] (else a system one). An address is returned as it is, without
/// any lookup.
pub async fn resolve_input(input: TargetInput, cfg: &ProbeConfig) -> Resolution {
    let (targets, unreachable) = match input {
        TargetInput::Addr(t) => (vec![t], Vec::new()),
        TargetInput::Host { name, port } => {
            let found = match &cfg.name_resolver {
                Some(resolver) => resolver.host_targets(&name, port).await,
                None => target::resolve(&name, port).await,
            };
            match found {
                Ok(ts) => (ts, Vec::new()),
                Err(e) => (Vec::new(), vec![unreachable(&format!("{name}:{port}"), e)]),
            }
        }
        TargetInput::Mx { domain, port } => resolve_mx(&domain, port, cfg).await,
    };
    Resolution {
        targets,
        unreachable,
    }
}

async fn resolve_mx(
    domain: &str,
    port: u16,
    cfg: &ProbeConfig,
) -> (Vec<Target>, Vec<TargetReport>) {
    let label = format!("mx:{domain}:{port}");
    let resolver = match &cfg.mx_resolver {
        Some(r) => Arc::clone(r),
        None => match MxResolver::new(&[], MX_TIMEOUT) {
            Ok(r) => Arc::new(r),
            Err(e) => {
                return (
                    Vec::new(),
                    vec![unreachable(&label, format!("no resolver: {e}"))],
                );
            }
        },
    };
    match resolver.targets(domain, port).await {
        Ok(list) => {
            let mut targets = Vec::new();
            let mut reports = Vec::new();
            for item in list {
                match item {
                    Ok(t) => targets.push(t),
                    Err(f) => {
                        let mut report = unreachable(&f.label, f.reason);
                        report.mx = f.mx;
                        reports.push(report);
                    }
                }
            }
            (targets, reports)
        }
        Err(e) => (Vec::new(), vec![unreachable(&label, e)]),
    }
}

/// DNS timeout for MX lookups when no resolver was configured.
const MX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The `UNREACHABLE` report of a target that could not even be addressed.
pub fn unreachable(label: &str, reason: String) -> TargetReport {
    TargetReport {
        target: label.to_string(),
        ip: String::new(),
        port: 0,
        verdict: Verdict::Unreachable,
        reason,
        accepted: Vec::new(),
        confirmed: Vec::new(),
        tests: Vec::new(),
        calibration: Vec::new(),
        confirm: Vec::new(),
        findings: Findings::default(),
        mx: None,
        duration_ms: 0,
        finished_unix: crate::probe::unix_now(),
        transcript: None,
    }
}

/// The verdict that speaks for several reports (the addresses and ports of one input, or a
/// whole run): the first in the order of [`Verdict::precedence`] — a relay anywhere outweighs
/// "not proven", which outweighs closed servers, which outweigh targets that could not be
/// tested. `None` for no report at all.
pub fn overall(reports: &[TargetReport]) -> Option<Verdict> {
    reports
        .iter()
        .map(|r| r.verdict)
        .min_by_key(|v| v.precedence())
}

/// Exit status: 1 if a target is OPEN, CONFIRMED-OPEN or ACCEPT-ALL; else 3 if a target is
/// UNCONFIRMED (accepted at RCPT, `--confirm` found no token); else 2 if no target could be
/// tested; else 0. The status of the [`overall`] verdict.
pub fn exit_code(reports: &[TargetReport]) -> i32 {
    overall(reports).map_or(2, Verdict::exit_status)
}

//! Many targets: bounded concurrency, results handed over as they finish, stop on request.

use std::future::Future;
use std::sync::Arc;

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
    let concurrency = concurrency.max(1);
    let mut pending = inputs.into_iter();
    let mut running: JoinSet<Vec<TargetReport>> = JoinSet::new();
    let mut summary = ScanSummary::default();
    tokio::pin!(stop);
    loop {
        while running.len() < concurrency {
            let Some(input) = pending.next() else { break };
            running.spawn(probe_input(input, Arc::clone(&cfg)));
        }
        if running.is_empty() {
            return summary;
        }
        tokio::select! {
            joined = running.join_next() => {
                let reports = match joined {
                    Some(Ok(reports)) => reports,
                    Some(Err(e)) => vec![failed("(unknown)", format!("probe task failed: {e}"))],
                    None => continue,
                };
                for report in reports {
                    on_report(&report);
                    summary.reports.push(report);
                }
            }
            () = &mut stop => {
                running.abort_all();
                summary.interrupted = true;
                return summary;
            }
        }
    }
}

/// One input: an address, or a host name resolved to all its addresses (probed one after
/// another, so one name holds one concurrency slot).
async fn probe_input(input: TargetInput, cfg: Arc<ProbeConfig>) -> Vec<TargetReport> {
    let mut out = Vec::new();
    let targets: Vec<Target> = match input {
        TargetInput::Addr(t) => vec![t],
        TargetInput::Host { name, port } => match target::resolve(&name, port).await {
            Ok(ts) => ts,
            Err(e) => return vec![failed(&format!("{name}:{port}"), e)],
        },
        TargetInput::Mx { domain, port } => {
            let label = format!("mx:{domain}:{port}");
            let resolver = match &cfg.mx_resolver {
                Some(r) => Arc::clone(r),
                None => match MxResolver::new(&[], MX_TIMEOUT) {
                    Ok(r) => Arc::new(r),
                    Err(e) => return vec![failed(&label, format!("no resolver: {e}"))],
                },
            };
            match resolver.targets(&domain, port).await {
                Ok(list) => {
                    let mut targets = Vec::new();
                    for item in list {
                        match item {
                            Ok(t) => targets.push(t),
                            Err(f) => {
                                let mut report = failed(&f.label, f.reason);
                                report.mx = f.mx;
                                out.push(report);
                            }
                        }
                    }
                    targets
                }
                Err(e) => return vec![failed(&label, e)],
            }
        }
    };
    for t in targets {
        out.push(probe_target(t, Arc::clone(&cfg)).await);
    }
    out
}

/// DNS timeout for MX lookups when no resolver was configured.
const MX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The report of a target that could not even be addressed.
fn failed(label: &str, reason: String) -> TargetReport {
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
        transcript: None,
    }
}

/// Exit status: 1 if a target is OPEN, CONFIRMED-OPEN or ACCEPT-ALL; else 3 if a target is
/// UNCONFIRMED (accepted at RCPT, `--confirm` found no token); else 2 if no target could be
/// tested; else 0.
pub fn exit_code(reports: &[TargetReport]) -> i32 {
    if reports.iter().any(|r| r.verdict.is_open()) {
        1
    } else if reports.iter().any(|r| r.verdict == Verdict::Unconfirmed) {
        3
    } else if !reports.iter().any(|r| r.verdict.was_tested()) {
        2
    } else {
        0
    }
}

//! What the TLS policy did, kept for the operator and for reports: counts per (policy,
//! result) — `relayward_tls_policy_total{policy,result}` — and the most recent outcomes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use crate::mta_sts::StsError;
use crate::tls_policy::{PolicyKind, TlsOutcome, TlsResult};

/// Outcomes kept for [`TlsLog::recent`].
const RECENT: usize = 1000;

#[derive(Default)]
struct Inner {
    counts: BTreeMap<(PolicyKind, TlsResult), u64>,
    recent: VecDeque<TlsOutcome>,
}

/// The runner's record of TLS outcomes (in memory, since start).
#[derive(Default)]
pub struct TlsLog {
    inner: Mutex<Inner>,
}

impl TlsLog {
    pub fn record(&self, outcome: TlsOutcome) {
        let mut inner = self.lock();
        *inner
            .counts
            .entry((outcome.policy, outcome.result))
            .or_default() += 1;
        if inner.recent.len() == RECENT {
            inner.recent.pop_front();
        }
        inner.recent.push_back(outcome);
    }

    /// A policy that could not be fetched: a failure of the MTA-STS policy itself. Returns
    /// the outcome recorded.
    pub fn policy_error(&self, domain: &str, error: &StsError) -> TlsOutcome {
        let outcome = TlsOutcome {
            domain: domain.to_string(),
            host: format!("mta-sts.{domain}"),
            policy: PolicyKind::MtaSts,
            result: TlsResult::Failed,
            result_type: Some(error.result_type()),
            detail: Some(error.to_string()),
            sending_ip: None,
            receiving_ip: None,
        };
        self.record(outcome.clone());
        outcome
    }

    pub fn recent(&self) -> Vec<TlsOutcome> {
        self.lock().recent.iter().cloned().collect()
    }

    pub fn counts(&self) -> Vec<((PolicyKind, TlsResult), u64)> {
        self.lock().counts.iter().map(|(k, v)| (*k, *v)).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

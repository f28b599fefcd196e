//! One test as the service keeps, stores and serves it: the object `GET /api/v1/tests/ID`
//! answers (field names are a contract, documented in README) and the file under
//! `data_dir/tests/`.

use relayward_probe::report::{TargetReport, Verdict};
use relayward_probe::{output, scan};
use serde::{Deserialize, Serialize};

/// `verdict` while the test runs.
pub const RUNNING: &str = "RUNNING";

/// Which door a test came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Door {
    /// The connect-back door (telnet).
    Telnet,
    /// The form on the web page.
    Web,
    /// `POST /api/v1/tests`.
    Api,
}

impl Door {
    pub fn as_str(self) -> &'static str {
        match self {
            Door::Telnet => "telnet",
            Door::Web => "web",
            Door::Api => "api",
        }
    }
}

/// An address a test did not probe, and why (a name that resolved to a private address, an
/// excluded network, more addresses than one test probes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotProbed {
    pub address: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestRecord {
    pub id: String,
    /// The result page, relative to the service (`/tests/ID`).
    pub url: String,
    /// As asked: `host:port`, `mx:domain:port`, `192.0.2.7:25`, or `host:25,587` for several
    /// ports.
    pub target: String,
    pub door: Door,
    /// [`RUNNING`] until done, then one of the probe's verdict words: the [`scan::overall`]
    /// verdict of every address and port tested.
    pub verdict: String,
    /// One line: the deciding report's reason (with the totals when several were tested).
    pub reason: String,
    pub started_unix: u64,
    pub finished_unix: Option<u64>,
    pub duration_ms: Option<u64>,
    pub not_probed: Vec<NotProbed>,
    /// The probe's `--json` report of each tested address and port, in test order.
    pub reports: Vec<TargetReport>,
    /// The whole dialogue as it was streamed (`>>>`/`<<<`), server text escaped.
    pub transcript: Vec<String>,
}

impl TestRecord {
    pub fn is_running(&self) -> bool {
        self.verdict == RUNNING
    }

    /// The verdict, once done.
    pub fn final_verdict(&self) -> Option<Verdict> {
        serde_json::from_value(serde_json::Value::String(self.verdict.clone())).ok()
    }

    /// Sets `verdict` and `reason` from the reports (or `fallback` when there are none).
    pub fn conclude(&mut self, fallback: (Verdict, String)) {
        let (verdict, reason) = match scan::overall(&self.reports) {
            Some(v) => (v, summary_reason(&self.reports, v)),
            None => fallback,
        };
        self.verdict = verdict.as_str().to_string();
        self.reason = reason;
    }
}

/// The reason of the report that decided the verdict; with several reports, prefixed by its
/// target and followed by the totals (`2 target(s): 1 OPEN, 1 CLOSED`).
fn summary_reason(reports: &[TargetReport], verdict: Verdict) -> String {
    let Some(deciding) = reports.iter().find(|r| r.verdict == verdict) else {
        return String::new();
    };
    if reports.len() == 1 {
        return deciding.reason.clone();
    }
    format!(
        "{}: {} ({})",
        deciding.target,
        deciding.reason,
        output::totals(reports)
    )
}

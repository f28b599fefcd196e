//! What a probe finds about one target: the JSON schema of `--json` (documented in
//! `docs/probe.md`; field names are a contract).

use relayward_protocol::reply::Reply;
use serde::{Deserialize, Serialize};

use crate::dnsbl::DnsblResult;
use crate::tls::TlsInfo;

/// Per test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// RCPT answered 2xx: the server took the relay recipient.
    Accepted,
    /// RCPT (or the MAIL that decides the sender tricks) answered 5xx.
    Refused,
    /// Answered 4xx: refused for now (greylisting, "relaying temporarily denied"); reported
    /// apart because it proves less than a 5xx.
    RefusedTemporary,
    /// No usable answer: timeout, dropped connection, 421, garbage.
    Error,
    /// Not run: the context lacked a piece (no host name, no local domain) or time ran out.
    Skipped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Refused => "refused",
            Outcome::RefusedTemporary => "refused-temporary",
            Outcome::Error => "error",
            Outcome::Skipped => "skipped",
        }
    }
}

/// Per target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Verdict {
    #[serde(rename = "CLOSED")]
    Closed,
    #[serde(rename = "OPEN")]
    Open,
    #[serde(rename = "AUTH-REQUIRED")]
    AuthRequired,
    #[serde(rename = "ACCEPT-ALL")]
    AcceptAll,
    #[serde(rename = "UNREACHABLE")]
    Unreachable,
    #[serde(rename = "INCONCLUSIVE")]
    Inconclusive,
    #[serde(rename = "CONFIRMED-OPEN")]
    ConfirmedOpen,
    /// `--confirm` was given, tricks were accepted at RCPT, and no token came back: accepted
    /// at RCPT, not proven (exit status 3).
    #[serde(rename = "UNCONFIRMED")]
    Unconfirmed,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Closed => "CLOSED",
            Verdict::Open => "OPEN",
            Verdict::AuthRequired => "AUTH-REQUIRED",
            Verdict::AcceptAll => "ACCEPT-ALL",
            Verdict::Unreachable => "UNREACHABLE",
            Verdict::Inconclusive => "INCONCLUSIVE",
            Verdict::ConfirmedOpen => "CONFIRMED-OPEN",
            Verdict::Unconfirmed => "UNCONFIRMED",
        }
    }

    /// Counts towards exit status 1. ACCEPT-ALL does: the server took relay recipients and
    /// nothing shows it would not deliver them; `--confirm` settles it.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            Verdict::Open | Verdict::ConfirmedOpen | Verdict::AcceptAll
        )
    }

    /// The target could be tested (it answered the battery).
    pub fn was_tested(self) -> bool {
        !matches!(self, Verdict::Unreachable | Verdict::Inconclusive)
    }

    /// The exit status of a run whose [`crate::scan::overall`] verdict this is: 1 = relays (or
    /// may), 3 = accepted at RCPT but not proven, 0 = refused, 2 = could not be tested.
    pub fn exit_status(self) -> i32 {
        match self {
            v if v.is_open() => 1,
            Verdict::Unconfirmed => 3,
            v if v.was_tested() => 0,
            _ => 2,
        }
    }

    /// Rank when several verdicts must be summed up in one (lower speaks first): the open
    /// ones (proven first), then UNCONFIRMED, then the refusing ones, then the untested.
    pub fn precedence(self) -> u8 {
        match self {
            Verdict::ConfirmedOpen => 0,
            Verdict::Open => 1,
            Verdict::AcceptAll => 2,
            Verdict::Unconfirmed => 3,
            Verdict::AuthRequired => 4,
            Verdict::Closed => 5,
            Verdict::Inconclusive => 6,
            Verdict::Unreachable => 7,
        }
    }
}

/// A reply as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyInfo {
    pub code: u16,
    pub enhanced: Option<String>,
    pub text: String,
}

impl From<&Reply> for ReplyInfo {
    fn from(r: &Reply) -> Self {
        let mut text = r.text();
        text.truncate(text.floor_char_boundary(512));
        Self {
            code: r.code,
            enhanced: r.enhanced.map(|e| e.to_string()),
            text,
        }
    }
}

impl std::fmt::Display for ReplyInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.enhanced {
            Some(e) => write!(f, "{} {} {}", self.code, e, self.text),
            None => write!(f, "{} {}", self.code, self.text),
        }
    }
}

/// When a recipient trick's MAIL was refused and RCPT then got "bad sequence", the RCPT is
/// retried behind a neutral sender so the MAIL rejection cannot hide the recipient bug.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fallback {
    pub mail_from: String,
    pub mail_reply: Option<ReplyInfo>,
    pub rcpt_reply: Option<ReplyInfo>,
}

/// A line a session-level trick sent before (or between) MAIL and RCPT — `XCLIENT …`, a PROXY
/// header, `AUTH …`, a local `RCPT` — and the reply it got (`None`: no reply, e.g. a PROXY
/// header the server consumed silently).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetupStep {
    pub sent: String,
    pub reply: Option<ReplyInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestResult {
    pub id: String,
    pub kind: String,
    pub description: String,
    pub mail_from: String,
    pub rcpt_to: String,
    pub mail_reply: Option<ReplyInfo>,
    pub rcpt_reply: Option<ReplyInfo>,
    pub fallback: Option<Fallback>,
    pub outcome: Outcome,
    /// Why an error or skip happened, in words.
    pub note: Option<String>,
    /// Connections this test needed (2 when the server dropped us mid-test).
    pub attempts: u32,
    /// Session-level tricks (`kind` `session`): what was sent around MAIL/RCPT. Empty for the
    /// MAIL/RCPT battery.
    pub setup: Vec<SetupStep>,
}

/// Proof of relay for one accepted trick.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfirmResult {
    pub id: String,
    pub token: String,
    /// The server answered 250 to the end of DATA.
    pub sent: bool,
    pub data_reply: Option<ReplyInfo>,
    /// The token came back to the confirm listener within `--confirm-wait`.
    pub arrived: bool,
    pub note: Option<String>,
    /// The address that delivered the token to the confirm listener; differs from the
    /// target's when the target relayed through another host (a smart host, a second MX).
    pub delivered_by: Option<String>,
    /// The `Received:` header values of the message that carried the token, top (newest)
    /// first, control characters escaped, at most 20.
    pub received: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Findings {
    /// The 220 greeting, lines joined.
    pub banner: Option<String>,
    /// The first line of the EHLO (or HELO) reply.
    pub ehlo_greeting: Option<String>,
    /// Host names the server gave (banner, EHLO), plus the one on the command line.
    pub host_names: Vec<String>,
    /// EHLO was accepted (else the session fell back to HELO).
    pub esmtp: bool,
    pub starttls_offered: bool,
    /// Set when the battery ran over TLS (STARTTLS or implicit).
    pub tls: Option<TlsInfo>,
    pub tls_error: Option<String>,
    /// AUTH mechanisms advertised on the cleartext connection (cleartext passwords).
    pub auth_before_tls: Vec<String>,
    pub auth_after_tls: Vec<String>,
    pub vrfy: Option<ReplyInfo>,
    /// `VRFY postmaster` answered 250/251: the server discloses addresses.
    pub vrfy_answers: bool,
    pub expn: Option<ReplyInfo>,
    pub expn_answers: bool,
    /// Connections opened after the first one (the server dropped or 421ed us).
    pub reconnects: u32,
    pub dnsbl: Vec<DnsblResult>,
}

/// How a target was found from a mail domain's MX records (`mx:DOMAIN`, `--mx DOMAIN`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MxInfo {
    /// The mail domain whose MX this target is.
    pub domain: String,
    /// The MX host name (the domain itself for an implicit MX).
    pub host: String,
    pub preference: u16,
    /// The domain has no MX records: its own address is the implicit MX (RFC 5321 §5.1).
    pub implicit: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetReport {
    /// As given (or expanded from a CIDR), e.g. `mx.example.net:25`, `127.0.1.7:25`.
    pub target: String,
    pub ip: String,
    pub port: u16,
    pub verdict: Verdict,
    pub reason: String,
    /// Ids of the accepted tests (calibration excluded).
    pub accepted: Vec<String>,
    /// Ids whose token came back (confirm mode).
    pub confirmed: Vec<String>,
    pub tests: Vec<TestResult>,
    pub calibration: Vec<TestResult>,
    pub confirm: Vec<ConfirmResult>,
    pub findings: Findings,
    /// Set when the target is an MX host of a domain given as `mx:DOMAIN`; else null.
    pub mx: Option<MxInfo>,
    pub duration_ms: u64,
    /// When the probe of this target finished, Unix seconds (the time in `--zone-out`).
    #[serde(default)]
    pub finished_unix: u64,
    /// The whole dialogue; only with `-v`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript: Option<Vec<String>>,
}

impl TargetReport {
    /// What the end of a run still needs of a report already printed: verdict, target and
    /// address, the proof `--zone-out` lists (the tokens that came back), without the tests,
    /// findings and dialogue. A scan of 65 536 targets keeps one per target until its totals
    /// and exit status: a few hundred bytes each instead of the whole report (tens of
    /// kilobytes, a few megabytes with `-v`).
    pub fn into_summary(self) -> TargetReport {
        let confirm = self
            .confirm
            .into_iter()
            .filter(|c| c.arrived)
            .map(|c| ConfirmResult {
                received: Vec::new(),
                ..c
            })
            .collect();
        TargetReport {
            tests: Vec::new(),
            calibration: Vec::new(),
            confirm,
            findings: Findings::default(),
            transcript: None,
            ..self
        }
    }
}

//! Rendering reports: the summary table, the findings line, the classic `-v` transcript, JSON.
//!
//! Reasons, banners, certificate subjects and TLS errors carry text the server chose; in the
//! table and the `-v` block it goes through [`escape_control`], so a hostile server cannot
//! move the cursor and redraw its own OPEN row as CLOSED. JSON needs nothing more: its encoder
//! escapes control characters itself.

use std::fmt::Write as _;

use relayward_protocol::text::escape_control;

use crate::report::{Outcome, TargetReport, Verdict};

const TARGET_WIDTH: usize = 26;
const VERDICT_WIDTH: usize = 14;

/// The table header, printed once before the first row.
pub fn table_header() -> String {
    format!(
        "{:<TARGET_WIDTH$} {:<VERDICT_WIDTH$} {:>7}  REASON",
        "TARGET", "VERDICT", "ACCEPT"
    )
}

/// One table row: target, verdict, accepted/ran, reason; then the findings, indented.
pub fn table_row(r: &TargetReport) -> String {
    let ran = r
        .tests
        .iter()
        .filter(|t| t.outcome != Outcome::Skipped)
        .count();
    let accepted = if ran == 0 {
        "-".to_string()
    } else {
        format!("{}/{ran}", r.accepted.len())
    };
    let mut row = format!(
        "{:<TARGET_WIDTH$} {:<VERDICT_WIDTH$} {:>7}  {}",
        escape_control(&r.target),
        r.verdict.as_str(),
        accepted,
        escape_control(&r.reason)
    );
    let findings = findings_line(r);
    if !findings.is_empty() {
        let _ = write!(row, "\n{:<TARGET_WIDTH$} {findings}", "");
    }
    row
}

/// The extra findings in one line, e.g.
/// `STARTTLS: TLSv1_3, cert "CN=mx" expires … | AUTH before TLS: PLAIN | VRFY answers`,
/// control characters escaped.
pub fn findings_line(r: &TargetReport) -> String {
    escape_control(&raw_findings_line(r)).into_owned()
}

fn raw_findings_line(r: &TargetReport) -> String {
    let f = &r.findings;
    let mx = r.mx.as_ref().map(|m| {
        if m.implicit {
            format!("implicit MX of {}", m.domain)
        } else {
            format!("MX {} of {}", m.preference, m.domain)
        }
    });
    if f.banner.is_none() && f.dnsbl.is_empty() {
        return mx.unwrap_or_default();
    }
    let mut parts: Vec<String> = mx.into_iter().collect();
    match (&f.tls, f.starttls_offered) {
        (Some(tls), _) => {
            let mut s = format!("TLS: {}", tls.version);
            if let Some(c) = &tls.certificate {
                let _ = write!(s, ", cert \"{}\" until {}", c.subject, c.not_after);
                if c.expired {
                    s.push_str(" (EXPIRED)");
                }
                if c.self_signed {
                    s.push_str(" (self-signed)");
                }
            }
            parts.push(s);
        }
        (None, true) => parts.push("STARTTLS offered, not used".into()),
        (None, false) => parts.push("no STARTTLS".into()),
    }
    if let Some(e) = &f.tls_error {
        parts.push(format!("TLS error: {e}"));
    }
    if !f.auth_before_tls.is_empty() {
        parts.push(format!("AUTH before TLS: {}", f.auth_before_tls.join(" ")));
    }
    if f.vrfy_answers {
        parts.push("VRFY answers".into());
    }
    if f.expn_answers {
        parts.push("EXPN answers".into());
    }
    let listed: Vec<&str> = f
        .dnsbl
        .iter()
        .filter(|d| d.listed)
        .map(|d| d.zone.as_str())
        .collect();
    if !f.dnsbl.is_empty() {
        if listed.is_empty() {
            parts.push("not in DNSBLs".into());
        } else {
            parts.push(format!("LISTED in {}", listed.join(", ")));
        }
    }
    if f.reconnects > 0 {
        parts.push(format!("{} reconnects", f.reconnects));
    }
    parts.join(" | ")
}

/// The `-v` block: the dialogue, then the classic closing lines.
pub fn transcript_block(r: &TargetReport) -> String {
    let mut out = format!("{}\n", transcript_heading(&r.target));
    for line in r.transcript.iter().flatten() {
        out.push_str(line);
        out.push('\n');
    }
    for line in closing_lines(r) {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The line that opens a target's dialogue in `-v` output: `=== 192.0.2.7:25 ===`.
pub fn transcript_heading(target: &str) -> String {
    format!("=== {} ===", escape_control(target))
}

/// The classic relay-test ending of a dialogue, as the old `telnet relay-test.mail-abuse.org`
/// printed it: the banner, the one-sentence result ([`closing_line`]), then the verdict and its
/// reason. Server text escaped.
pub fn closing_lines(r: &TargetReport) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(banner) = &r.findings.banner {
        lines.push(format!("Tested host banner: {}", escape_control(banner)));
    }
    lines.push(closing_line(r.verdict).to_string());
    lines.push(format!(
        "Verdict: {} - {}",
        r.verdict.as_str(),
        escape_control(&r.reason)
    ));
    lines
}

/// The one-sentence result after a dialogue ("System appeared to reject relay attempts").
pub fn closing_line(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Closed | Verdict::AuthRequired => "System appeared to reject relay attempts",
        Verdict::Open => "System accepted relay attempts: it is an open relay",
        Verdict::ConfirmedOpen => {
            "System accepted relay attempts: it is an open relay (proven: a test message came back)"
        }
        Verdict::AcceptAll => "System accepted relay recipients, but accepts anything (unproven)",
        Verdict::Unconfirmed => {
            "System accepted relay recipients at RCPT, but no test message came back (unproven)"
        }
        Verdict::Unreachable | Verdict::Inconclusive => "System could not be tested",
    }
}

/// One JSON object on one line (JSON Lines), so results stream.
pub fn json_line(r: &TargetReport) -> String {
    serde_json::to_string(r)
        .unwrap_or_else(|e| format!("{{\"error\":\"cannot serialise report: {e}\"}}"))
}

/// Totals per verdict for the end of the table.
pub fn totals(reports: &[TargetReport]) -> String {
    let order = [
        Verdict::ConfirmedOpen,
        Verdict::Open,
        Verdict::AcceptAll,
        Verdict::Unconfirmed,
        Verdict::AuthRequired,
        Verdict::Closed,
        Verdict::Inconclusive,
        Verdict::Unreachable,
    ];
    let parts: Vec<String> = order
        .iter()
        .filter_map(|v| {
            let n = reports.iter().filter(|r| r.verdict == *v).count();
            (n > 0).then(|| format!("{n} {}", v.as_str()))
        })
        .collect();
    format!("{} target(s): {}", reports.len(), parts.join(", "))
}

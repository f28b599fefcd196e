//! `--zone-out FILE`: the CONFIRMED-OPEN addresses as an rbldnsd `ip4set` zone, the evidence a
//! blocklist publishes. Only proven relays are listed (DSBL listed a host only when a test
//! message really arrived): an address is in the zone when a token sent through it came back.
//!
//! Each entry carries its own TXT reason: which tricks were proven, when, and which address
//! delivered the token (a multi-hop relay's second hop differs from the listed address). Only
//! text the probe made goes into the file — test ids, a time, addresses — never text a server
//! sent. `ip4set` holds IPv4 only; proven IPv6 relays are written as comments.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use crate::report::{TargetReport, Verdict};

/// The A record every listed address answers (RFC 5782 §2.1: 127.0.0.2 = listed).
pub const LISTED_A: &str = "127.0.0.2";
/// Longest TXT reason written; one DNS character-string holds 255 octets.
const MAX_TXT: usize = 250;

/// What is known about one proven address.
#[derive(Debug, Default)]
struct Entry {
    ids: Vec<String>,
    delivered_by: Vec<String>,
    finished: u64,
    ports: Vec<u16>,
}

/// The zone text for `reports` (any verdicts; only CONFIRMED-OPEN ones are listed), one entry
/// per address in address order, the ports and tricks of one address merged.
pub fn zone_text(reports: &[TargetReport]) -> String {
    let mut entries: BTreeMap<IpAddr, Entry> = BTreeMap::new();
    for r in reports
        .iter()
        .filter(|r| r.verdict == Verdict::ConfirmedOpen)
    {
        let Ok(ip) = r.ip.parse::<IpAddr>() else {
            continue;
        };
        let e = entries.entry(ip.to_canonical()).or_default();
        for c in r.confirm.iter().filter(|c| c.arrived) {
            if !e.ids.contains(&c.id) {
                e.ids.push(c.id.clone());
            }
            if let Some(by) = &c.delivered_by
                && !e.delivered_by.contains(by)
            {
                e.delivered_by.push(by.clone());
            }
        }
        e.finished = e.finished.max(r.finished_unix);
        if !e.ports.contains(&r.port) {
            e.ports.push(r.port);
        }
    }
    let mut out = String::from(
        "# relayward probe --zone-out: rbldnsd ip4set of proven open relays (a test message came back)\n",
    );
    let _ = writeln!(out, ":{LISTED_A}:open relay, proven by relayward probe");
    for (ip, e) in &entries {
        let txt = reason(ip, e);
        match ip {
            IpAddr::V4(v4) => {
                let _ = writeln!(out, "{v4} :{LISTED_A}:{txt}");
            }
            IpAddr::V6(v6) => {
                let _ = writeln!(out, "# {v6} (IPv6, not in an ip4set): {txt}");
            }
        }
    }
    out
}

/// `open relay: tests plain-external,null-sender (+3); confirmed 2026-12-01T10:00:00Z; token
/// delivered by 192.0.2.7; port 25`, cut to [`MAX_TXT`]. No `$` (rbldnsd substitutes it).
fn reason(ip: &IpAddr, e: &Entry) -> String {
    const SHOWN: usize = 4;
    let mut ids = e
        .ids
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    if e.ids.len() > SHOWN {
        let _ = write!(ids, " (+{})", e.ids.len() - SHOWN);
    }
    let when = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(e.finished));
    let by = if e.delivered_by.is_empty() {
        "unknown".to_string()
    } else {
        e.delivered_by.join(",")
    };
    let via = if e.delivered_by.iter().any(|b| *b != ip.to_string()) {
        " (relayed via another host)"
    } else {
        ""
    };
    let ports: Vec<String> = e.ports.iter().map(u16::to_string).collect();
    let mut txt = format!(
        "open relay: tests {ids}; confirmed {when}; token delivered by {by}{via}; port {}",
        ports.join(",")
    );
    txt.retain(|c| c != '$' && !c.is_control());
    txt.truncate(txt.floor_char_boundary(MAX_TXT));
    txt
}

/// Writes the zone atomically: a temporary file beside `path`, synced, then renamed over it,
/// so rbldnsd (which reloads on change) never reads half a zone.
pub fn write_zone(path: &Path, reports: &[TargetReport]) -> std::io::Result<usize> {
    use std::io::Write;
    let text = zone_text(reports);
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "zone".into());
    let tmp = dir
        .unwrap_or_else(|| Path::new("."))
        .join(format!(".{name}.tmp{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    Ok(text.lines().filter(|l| !l.starts_with(['#', ':'])).count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{ConfirmResult, Findings};

    fn report(ip: &str, port: u16, verdict: Verdict, delivered_by: &str) -> TargetReport {
        TargetReport {
            target: format!("{ip}:{port}"),
            ip: ip.into(),
            port,
            verdict,
            reason: "server text \u{1b}[2J $ should never reach the zone".into(),
            accepted: vec!["plain-external".into()],
            confirmed: vec!["plain-external".into()],
            tests: Vec::new(),
            calibration: Vec::new(),
            confirm: vec![ConfirmResult {
                id: "plain-external".into(),
                token: "rwabc".into(),
                sent: true,
                data_reply: None,
                arrived: true,
                note: None,
                delivered_by: Some(delivered_by.into()),
                received: Vec::new(),
            }],
            findings: Findings::default(),
            mx: None,
            duration_ms: 1,
            finished_unix: 1_795_600_000,
            transcript: None,
        }
    }

    #[test]
    fn only_confirmed_addresses_are_listed_with_their_evidence() {
        let zone = zone_text(&[
            report("192.0.2.7", 25, Verdict::ConfirmedOpen, "192.0.2.7"),
            report("192.0.2.7", 587, Verdict::ConfirmedOpen, "192.0.2.7"),
            report("192.0.2.8", 25, Verdict::Open, "192.0.2.8"),
            report("192.0.2.9", 25, Verdict::ConfirmedOpen, "198.51.100.1"),
            report("2001:db8::1", 25, Verdict::ConfirmedOpen, "2001:db8::1"),
        ]);
        let lines: Vec<&str> = zone.lines().collect();
        assert_eq!(lines[1], ":127.0.0.2:open relay, proven by relayward probe");
        assert_eq!(
            lines[2],
            "192.0.2.7 :127.0.0.2:open relay: tests plain-external; confirmed 2026-11-25T09:46:40Z; token delivered by 192.0.2.7; port 25,587"
        );
        assert!(lines[3].starts_with("192.0.2.9 :127.0.0.2:"), "{zone}");
        assert!(lines[3].contains("delivered by 198.51.100.1 (relayed via another host)"));
        assert!(lines[4].starts_with("# 2001:db8::1 (IPv6"), "{zone}");
        assert_eq!(lines.len(), 5, "{zone}");
        assert!(!zone.contains("192.0.2.8"));
        assert!(!zone.contains('\u{1b}') && !zone.contains("server text"));
    }
}

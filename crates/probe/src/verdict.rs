//! From replies to outcomes, from outcomes to a verdict. Pure functions, judged on reply codes
//! only (never on substrings of the text: nmap's "530 anywhere" and Metasploit's `/250/` are
//! exactly the bugs to avoid).

use std::net::IpAddr;
use std::time::Duration;

use relayward_protocol::battery::{self, CalibrationKind};

use crate::report::{ConfirmResult, Outcome, ReplyInfo, TestResult, Verdict};

/// The outcome of one MAIL/RCPT pair. `rcpt` decides; `mail` only explains a missing or
/// "bad sequence" RCPT answer.
pub fn classify(mail: Option<&ReplyInfo>, rcpt: Option<&ReplyInfo>) -> Outcome {
    let Some(rcpt) = rcpt else {
        return Outcome::Error;
    };
    match rcpt.code {
        421 => Outcome::Error,
        200..=299 => Outcome::Accepted,
        503 => match mail.map(|m| m.code) {
            // RCPT refused only because MAIL was: the sender decided.
            Some(400..=499) => Outcome::RefusedTemporary,
            _ => Outcome::Refused,
        },
        400..=499 => Outcome::RefusedTemporary,
        500..=599 => Outcome::Refused,
        // 3xx to RCPT makes no sense: treat as no usable answer.
        _ => Outcome::Error,
    }
}

/// Calibration results that matter for the verdict.
#[derive(Debug, Default, Clone, Copy)]
pub struct AcceptAll {
    /// `x@<random>.invalid` accepted: RCPT does not check that the domain exists. Alone it
    /// proves nothing either way: every open relay that does not look recipient domains up
    /// accepts it too (Postfix with a wide `mynetworks` does).
    pub any_domain: bool,
    /// An invented user at the target's own names accepted: catch-all.
    pub local_users: bool,
}

impl AcceptAll {
    /// `results` in the order of [`battery::calibration_probes`]: invented user at the local
    /// domain, at the host name, at the address literal. Only the first of these that got an
    /// answer counts: a server that refuses `rw-…@example.com` but takes `rw-…@mx.example.com`
    /// does not treat its host name as local and relays that one (for a trusted prober) —
    /// that is no catch-all.
    pub fn from_results(results: &[(CalibrationKind, &TestResult)]) -> Self {
        let answered = |r: &&TestResult| !matches!(r.outcome, Outcome::Skipped | Outcome::Error);
        let accepted = |kind: CalibrationKind| {
            results
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, r)| *r)
                .find(answered)
                .is_some_and(|r| r.outcome == Outcome::Accepted)
        };
        AcceptAll {
            any_domain: accepted(CalibrationKind::InventedDomain),
            local_users: accepted(CalibrationKind::InventedLocalUser),
        }
    }
}

/// Confirm mode's evidence: one result per accepted trick, and how long the listener waited.
#[derive(Debug, Clone, Copy)]
pub struct ConfirmEvidence<'a> {
    pub results: &'a [ConfirmResult],
    pub wait: Duration,
}

/// Everything the verdict is decided from (docs/probe.md, "Decision table").
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The battery and the session-level tricks (not the calibration).
    pub tests: &'a [TestResult],
    pub accept_all: AcceptAll,
    /// `Some` in confirm mode.
    pub confirm: Option<ConfirmEvidence<'a>>,
    /// The address tested: for the trusted-place note and "relayed via".
    pub target_ip: IpAddr,
}

/// The verdict and its one-line reason, by the decision table of docs/probe.md.
pub fn decide(e: &Evidence) -> (Verdict, String) {
    let accepted: Vec<&TestResult> = e
        .tests
        .iter()
        .filter(|t| t.outcome == Outcome::Accepted)
        .collect();
    let (verdict, reason) = match e.confirm {
        Some(c) if c.results.iter().any(|r| r.arrived) => confirmed(c.results, e.target_ip),
        _ if accepted.is_empty() => decide_refused(e.tests, e.accept_all),
        Some(c) => unconfirmed(e.tests, &accepted, e.accept_all, c),
        None => decide_accepted(e.tests, &accepted, e.accept_all),
    };
    match trusted_place_note(verdict, e.target_ip) {
        Some(note) => (verdict, format!("{reason}; {note}")),
        None => (verdict, reason),
    }
}

/// Why an OPEN verdict for a loopback or private address may say more about the prober than
/// about the server: an administrator probing her own server from the same host or LAN is
/// usually inside its trusted networks (Postfix's `mynetworks`, relayward's
/// `trusted_networks`), which relay for her by design.
pub fn trusted_place_note(verdict: Verdict, ip: IpAddr) -> Option<String> {
    if !matches!(verdict, Verdict::Open | Verdict::ConfirmedOpen) || !is_inside_address(ip) {
        return None;
    }
    Some(format!(
        "note: {ip} is a loopback/private address, so the prober is probably in the target's \
         trusted networks; probe from outside to see what strangers get"
    ))
}

/// Loopback, RFC 1918, CGNAT (100.64/10), link-local, IPv6 unique-local: where an admin's
/// own machines are, never a stranger's.
fn is_inside_address(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

/// A token came back: proof. Says "relayed via" when the token was delivered by another
/// address than the target (a multi-hop relay: the target handed it to a smart host or a
/// second MX).
fn confirmed(results: &[ConfirmResult], target: IpAddr) -> (Verdict, String) {
    let arrived: Vec<&ConfirmResult> = results.iter().filter(|c| c.arrived).collect();
    let ids: Vec<&str> = arrived.iter().map(|c| c.id.as_str()).collect();
    let mut reason = format!(
        "relayed: the token of {} accepted trick(s) came back ({})",
        ids.len(),
        list(&ids)
    );
    let mut via: Vec<&str> = arrived
        .iter()
        .filter_map(|c| c.delivered_by.as_deref())
        .filter(|by| by.parse::<IpAddr>().map(|ip| ip.to_canonical()) != Ok(target.to_canonical()))
        .collect();
    via.sort_unstable();
    via.dedup();
    if !via.is_empty() {
        reason.push_str(&format!("; relayed via {}", via.join(", ")));
    }
    (Verdict::ConfirmedOpen, reason)
}

/// Accepted tricks whose recipient, as written, names an external domain: a catch-all for
/// local users cannot explain them. Session-level tricks all use the external recipient.
fn external<'t>(accepted: &[&'t TestResult]) -> Vec<&'t TestResult> {
    accepted
        .iter()
        .copied()
        .filter(|t| !battery::trick(&t.id).is_some_and(|trick| trick.looks_local))
        .collect()
}

fn ran(tests: &[TestResult]) -> usize {
    tests
        .iter()
        .filter(|t| t.outcome != Outcome::Skipped)
        .count()
}

/// Without `--confirm`: ACCEPT-ALL only when the server also takes invented users at its own
/// names *and* that explains every accepted trick (none names an external domain, or it even
/// takes `.invalid` domains: it takes anything). Everything else accepted is OPEN: a server
/// that refuses invented local users checks its recipients, and took a relay recipient.
fn decide_accepted(
    tests: &[TestResult],
    accepted: &[&TestResult],
    accept_all: AcceptAll,
) -> (Verdict, String) {
    let ids: Vec<&str> = accepted.iter().map(|t| t.id.as_str()).collect();
    let external = external(accepted);
    let ran = ran(tests);
    if accept_all.local_users && (accept_all.any_domain || external.is_empty()) {
        let what = if accept_all.any_domain {
            "invented local users and an invented .invalid domain: it takes any recipient"
        } else {
            "invented users at its own domains, and every accepted trick names one"
        };
        return (
            Verdict::AcceptAll,
            format!(
                "{} of {ran} tricks accepted at RCPT, but the server also accepts {what}, so a 250 proves little; run --confirm to settle it",
                ids.len()
            ),
        );
    }
    let mut reason = format!(
        "{} of {ran} relay tricks accepted: {}",
        ids.len(),
        list(&ids)
    );
    if external.is_empty() {
        reason.push_str(
            " (only forms at its own domains, while invented local users are refused: it decoded the route or passed it to a local backend; --confirm settles it)",
        );
    }
    (Verdict::Open, reason)
}

/// `--confirm` and no token came back: accepted at RCPT, not proven. The reason says why:
/// every message refused at the end of DATA, none could be sent, or none arrived in time.
fn unconfirmed(
    tests: &[TestResult],
    accepted: &[&TestResult],
    accept_all: AcceptAll,
    confirm: ConfirmEvidence,
) -> (Verdict, String) {
    let head = format!(
        "{} of {} tricks accepted at RCPT, not proven",
        accepted.len(),
        ran(tests)
    );
    let sent = confirm.results.iter().filter(|c| c.sent).count();
    let refused_at_end: Vec<&ConfirmResult> = confirm
        .results
        .iter()
        .filter(|c| !c.sent && c.data_reply.is_some())
        .collect();
    let why = if sent == 0 && !refused_at_end.is_empty() {
        let first = refused_at_end[0].data_reply.as_ref().map(|r| r.to_string());
        format!(
            "the server refused every message at the end of DATA ({})",
            first.unwrap_or_default()
        )
    } else if sent == 0 {
        let first = confirm.results.iter().find_map(|c| c.note.clone());
        format!(
            "no proof message could be sent ({})",
            first.unwrap_or_else(|| "no accepted trick could be replayed".into())
        )
    } else {
        format!(
            "{sent} message(s) taken with 250 but no token came back within {}",
            humantime::format_duration(confirm.wait)
        )
    };
    let mut reason = format!("{head}: {why}");
    if accept_all.local_users && accept_all.any_domain {
        reason.push_str("; the server also accepts invented local users and .invalid domains");
    }
    (Verdict::Unconfirmed, reason)
}

/// Nothing accepted. AUTH-REQUIRED when the server asked for authentication (530) for the
/// plain external relay, at MAIL or at RCPT, or for at least half of the answered tests.
fn decide_refused(tests: &[TestResult], accept_all: AcceptAll) -> (Verdict, String) {
    let count = |o: Outcome| tests.iter().filter(|t| t.outcome == o).count();
    let ran = tests.len() - count(Outcome::Skipped);
    // A session-level trick whose premise was refused (XCLIENT answered 502) made no relay
    // attempt: it shows nothing about greylisting, so it does not make the refusals permanent.
    let relay_refused = tests
        .iter()
        .filter(|t| t.outcome == Outcome::Refused)
        .filter(|t| t.rcpt_reply.is_some() || t.mail_reply.is_some())
        .count();
    let (errors, temporary, refused) = (
        count(Outcome::Error),
        count(Outcome::RefusedTemporary),
        relay_refused,
    );
    if ran == 0 {
        return (Verdict::Inconclusive, "no test could be run".into());
    }
    let answered = ran - errors;
    let auth = tests.iter().filter(|t| wants_auth(t)).count();
    let plain_wants_auth = tests
        .iter()
        .any(|t| t.id == "plain-external" && wants_auth(t));
    if auth > 0 && (plain_wants_auth || auth * 2 >= answered) {
        return (
            Verdict::AuthRequired,
            format!("{auth} of {ran} tests answered 530: authentication required"),
        );
    }
    if errors * 4 > ran {
        return (
            Verdict::Inconclusive,
            format!("{errors} of {ran} tests got no usable answer (dropped, timed out or 421)"),
        );
    }
    if refused == 0 {
        return (
            Verdict::Inconclusive,
            format!(
                "all {temporary} refusals were temporary (4xx): greylisting or rate limiting; retry later"
            ),
        );
    }
    let mut reason = format!("all {ran} relay tricks refused");
    let mut extras = Vec::new();
    if temporary > 0 {
        extras.push(format!("{temporary} temporarily"));
    }
    if errors > 0 {
        extras.push(format!("{errors} without a usable answer"));
    }
    if accept_all.any_domain || accept_all.local_users {
        extras.push("accepts invented local users".to_string());
    }
    if !extras.is_empty() {
        reason.push_str(&format!(" ({})", extras.join(", ")));
    }
    (Verdict::Closed, reason)
}

/// 530 at MAIL or RCPT (RFC 4954 §6): authentication required. The code, not the text.
fn wants_auth(t: &TestResult) -> bool {
    [&t.mail_reply, &t.rcpt_reply]
        .iter()
        .any(|r| r.as_ref().is_some_and(|r| r.code == 530))
}

/// A short list for the one-line reason.
fn list(ids: &[&str]) -> String {
    const SHOWN: usize = 6;
    let mut s = ids
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > SHOWN {
        s.push_str(&format!(", +{} more", ids.len() - SHOWN));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16) -> Option<ReplyInfo> {
        Some(ReplyInfo {
            code,
            enhanced: None,
            text: String::new(),
        })
    }

    fn test(id: &str, mail: u16, rcpt: u16) -> TestResult {
        let (m, r) = (reply(mail), reply(rcpt));
        TestResult {
            id: id.into(),
            kind: "recipient".into(),
            description: String::new(),
            mail_from: String::new(),
            rcpt_to: String::new(),
            outcome: classify(m.as_ref(), r.as_ref()),
            mail_reply: m,
            rcpt_reply: r,
            fallback: None,
            note: None,
            attempts: 1,
            setup: Vec::new(),
        }
    }

    #[test]
    fn classify_by_code() {
        assert_eq!(
            classify(reply(250).as_ref(), reply(250).as_ref()),
            Outcome::Accepted
        );
        assert_eq!(
            classify(reply(250).as_ref(), reply(251).as_ref()),
            Outcome::Accepted
        );
        assert_eq!(
            classify(reply(250).as_ref(), reply(554).as_ref()),
            Outcome::Refused
        );
        assert_eq!(
            classify(reply(250).as_ref(), reply(450).as_ref()),
            Outcome::RefusedTemporary
        );
        assert_eq!(
            classify(reply(451).as_ref(), reply(503).as_ref()),
            Outcome::RefusedTemporary
        );
        assert_eq!(
            classify(reply(550).as_ref(), reply(503).as_ref()),
            Outcome::Refused
        );
        assert_eq!(
            classify(reply(250).as_ref(), reply(421).as_ref()),
            Outcome::Error
        );
        assert_eq!(classify(reply(250).as_ref(), None), Outcome::Error);
    }

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const PUBLIC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    fn verdict(tests: &[TestResult], accept_all: AcceptAll) -> Verdict {
        decide(&Evidence {
            tests,
            accept_all,
            confirm: None,
            target_ip: PUBLIC,
        })
        .0
    }

    fn calib(local_users: bool, any_domain: bool) -> AcceptAll {
        AcceptAll {
            any_domain,
            local_users,
        }
    }

    #[test]
    fn verdicts() {
        let closed = vec![
            test("plain-external", 250, 554),
            test("null-sender", 250, 550),
        ];
        assert_eq!(verdict(&closed, AcceptAll::default()), Verdict::Closed);

        let open = vec![
            test("plain-external", 250, 250),
            test("null-sender", 250, 550),
        ];
        let (v, reason) = decide(&Evidence {
            tests: &open,
            accept_all: AcceptAll::default(),
            confirm: None,
            target_ip: PUBLIC,
        });
        assert_eq!(v, Verdict::Open);
        assert!(reason.contains("plain-external"), "{reason}");
        assert!(!reason.contains("trusted"), "{reason}");

        let local = vec![
            test("percent-hack-ip-literal", 250, 250),
            test("plain-external", 250, 550),
        ];
        assert_eq!(verdict(&local, calib(true, false)), Verdict::AcceptAll);
        assert_eq!(verdict(&local, calib(false, true)), Verdict::Open);
        // A catch-all does not explain a plain external recipient.
        assert_eq!(verdict(&open, calib(true, false)), Verdict::Open);
        // An open relay that does not check recipient domains takes .invalid too.
        assert_eq!(verdict(&open, calib(false, true)), Verdict::Open);
        assert_eq!(verdict(&open, calib(true, true)), Verdict::AcceptAll);

        let auth = vec![
            test("plain-external", 530, 503),
            test("null-sender", 530, 503),
        ];
        assert_eq!(verdict(&auth, AcceptAll::default()), Verdict::AuthRequired);
        // 530 at RCPT for the external recipient, 550 for local-looking forms.
        let auth_rcpt = vec![
            test("plain-external", 250, 530),
            test("percent-hack-local-domain", 250, 550),
            test("bang-path-local-domain", 250, 550),
            test("quoted-at-local-domain", 250, 550),
        ];
        assert_eq!(
            verdict(&auth_rcpt, AcceptAll::default()),
            Verdict::AuthRequired
        );

        let grey = vec![
            test("plain-external", 250, 451),
            test("null-sender", 250, 451),
        ];
        assert_eq!(verdict(&grey, AcceptAll::default()), Verdict::Inconclusive);

        let broken = vec![
            test("plain-external", 250, 421),
            test("null-sender", 250, 550),
        ];
        assert_eq!(
            verdict(&broken, AcceptAll::default()),
            Verdict::Inconclusive
        );
    }

    #[test]
    fn open_on_an_inside_address_says_the_prober_may_be_trusted() {
        let open = vec![test("plain-external", 250, 250)];
        let (v, reason) = decide(&Evidence {
            tests: &open,
            accept_all: AcceptAll::default(),
            confirm: None,
            target_ip: LOOPBACK,
        });
        assert_eq!(v, Verdict::Open);
        assert!(reason.contains("trusted networks"), "{reason}");
        for inside in [
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "100.64.0.1",
            "fd00::1",
            "fe80::1",
            "::1",
        ] {
            assert!(is_inside_address(inside.parse().unwrap()), "{inside}");
        }
        for outside in ["192.0.2.7", "8.8.8.8", "2001:db8::1", "172.32.0.1"] {
            assert!(!is_inside_address(outside.parse().unwrap()), "{outside}");
        }
    }

    fn confirm(arrived: bool, sent: bool, data: Option<u16>, by: Option<&str>) -> ConfirmResult {
        ConfirmResult {
            id: "plain-external".into(),
            token: "t".into(),
            sent,
            data_reply: data.and_then(reply),
            arrived,
            note: None,
            delivered_by: by.map(str::to_string),
            received: Vec::new(),
        }
    }

    fn with_confirm(
        tests: &[TestResult],
        c: &ConfirmResult,
        calib: AcceptAll,
    ) -> (Verdict, String) {
        decide(&Evidence {
            tests,
            accept_all: calib,
            confirm: Some(ConfirmEvidence {
                results: std::slice::from_ref(c),
                wait: Duration::from_secs(1),
            }),
            target_ip: PUBLIC,
        })
    }

    #[test]
    fn confirm_settles_it() {
        let open = vec![test("plain-external", 250, 250)];
        let none = AcceptAll::default();
        let (v, reason) = with_confirm(&open, &confirm(false, true, Some(250), None), none);
        assert_eq!(v, Verdict::Unconfirmed);
        assert!(reason.contains("no token came back within 1s"), "{reason}");
        let (v, reason) = with_confirm(&open, &confirm(false, false, Some(554), None), none);
        assert_eq!(v, Verdict::Unconfirmed);
        assert!(reason.contains("end of DATA"), "{reason}");
        let sink = calib(true, true);
        assert_eq!(
            with_confirm(&open, &confirm(false, true, Some(250), None), sink).0,
            Verdict::Unconfirmed
        );
        let (v, reason) = with_confirm(
            &open,
            &confirm(true, true, Some(250), Some("192.0.2.7")),
            none,
        );
        assert_eq!(v, Verdict::ConfirmedOpen);
        assert!(!reason.contains("via"), "{reason}");
        let (v, reason) = with_confirm(
            &open,
            &confirm(true, true, Some(250), Some("192.0.2.9")),
            none,
        );
        assert_eq!(v, Verdict::ConfirmedOpen);
        assert!(reason.contains("relayed via 192.0.2.9"), "{reason}");
    }
}

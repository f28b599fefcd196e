//! From replies to outcomes, from outcomes to a verdict. Pure functions, judged on reply codes
//! only (never on substrings of the text: nmap's "530 anywhere" and Metasploit's `/250/` are
//! exactly the bugs to avoid).

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
    /// `x@<random>.invalid` accepted: RCPT accepts anything.
    pub any_domain: bool,
    /// An invented user at the target's own names accepted: catch-all.
    pub local_users: bool,
}

impl AcceptAll {
    pub fn from_results(results: &[(CalibrationKind, &TestResult)]) -> Self {
        let mut out = AcceptAll::default();
        for (kind, r) in results {
            if r.outcome == Outcome::Accepted {
                match kind {
                    CalibrationKind::InventedDomain => out.any_domain = true,
                    CalibrationKind::InventedLocalUser => out.local_users = true,
                }
            }
        }
        out
    }
}

/// The verdict and its one-line reason. `confirm` is `Some` in confirm mode.
pub fn decide(
    tests: &[TestResult],
    accept_all: AcceptAll,
    confirm: Option<(&[ConfirmResult], std::time::Duration)>,
) -> (Verdict, String) {
    let accepted: Vec<&TestResult> = tests
        .iter()
        .filter(|t| t.outcome == Outcome::Accepted)
        .collect();
    if let Some((results, _)) = confirm {
        let arrived: Vec<&str> = results
            .iter()
            .filter(|c| c.arrived)
            .map(|c| c.id.as_str())
            .collect();
        if !arrived.is_empty() {
            return (
                Verdict::ConfirmedOpen,
                format!(
                    "relayed: the token of {} accepted trick(s) came back ({})",
                    arrived.len(),
                    list(&arrived)
                ),
            );
        }
    }
    if accepted.is_empty() {
        return decide_refused(tests, accept_all);
    }
    decide_accepted(tests, &accepted, accept_all, confirm.map(|c| c.1))
}

fn decide_accepted(
    tests: &[TestResult],
    accepted: &[&TestResult],
    accept_all: AcceptAll,
    confirm_wait: Option<std::time::Duration>,
) -> (Verdict, String) {
    let ids: Vec<&str> = accepted.iter().map(|t| t.id.as_str()).collect();
    let all_local = ids
        .iter()
        .all(|id| battery::trick(id).is_some_and(|t| t.looks_local));
    let ran = tests
        .iter()
        .filter(|t| t.outcome != Outcome::Skipped)
        .count();
    let suffix = match confirm_wait {
        Some(wait) => format!(
            "; no token came back within {}",
            humantime::format_duration(wait)
        ),
        None => String::new(),
    };
    if accept_all.any_domain || (accept_all.local_users && all_local) {
        let what = if accept_all.any_domain {
            "a recipient at an invented .invalid domain"
        } else {
            "invented local users"
        };
        let hint = if confirm_wait.is_some() {
            ""
        } else {
            "; run --confirm to settle it"
        };
        return (
            Verdict::AcceptAll,
            format!(
                "{} of {ran} tricks accepted at RCPT, but the server also accepts {what}, so a 250 proves little{suffix}{hint}",
                ids.len()
            ),
        );
    }
    (
        Verdict::Open,
        format!(
            "{} of {ran} relay tricks accepted: {}{suffix}",
            ids.len(),
            list(&ids)
        ),
    )
}

fn decide_refused(tests: &[TestResult], accept_all: AcceptAll) -> (Verdict, String) {
    let count = |o: Outcome| tests.iter().filter(|t| t.outcome == o).count();
    let ran = tests.len() - count(Outcome::Skipped);
    let (errors, temporary, refused) = (
        count(Outcome::Error),
        count(Outcome::RefusedTemporary),
        count(Outcome::Refused),
    );
    if ran == 0 {
        return (Verdict::Inconclusive, "no test could be run".into());
    }
    let answered = ran - errors;
    let auth = tests.iter().filter(|t| wants_auth(t)).count();
    if auth > 0 && auth * 2 >= answered {
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

    #[test]
    fn verdicts() {
        let closed = vec![
            test("plain-external", 250, 554),
            test("null-sender", 250, 550),
        ];
        assert_eq!(
            decide(&closed, AcceptAll::default(), None).0,
            Verdict::Closed
        );

        let open = vec![
            test("plain-external", 250, 250),
            test("null-sender", 250, 550),
        ];
        let (v, reason) = decide(&open, AcceptAll::default(), None);
        assert_eq!(v, Verdict::Open);
        assert!(reason.contains("plain-external"), "{reason}");

        let catch_all = AcceptAll {
            any_domain: false,
            local_users: true,
        };
        let local = vec![
            test("percent-hack-ip-literal", 250, 250),
            test("plain-external", 250, 550),
        ];
        assert_eq!(decide(&local, catch_all, None).0, Verdict::AcceptAll);
        // A catch-all does not explain a plain external recipient.
        assert_eq!(decide(&open, catch_all, None).0, Verdict::Open);
        let any = AcceptAll {
            any_domain: true,
            local_users: true,
        };
        assert_eq!(decide(&open, any, None).0, Verdict::AcceptAll);

        let auth = vec![
            test("plain-external", 530, 503),
            test("null-sender", 530, 503),
        ];
        assert_eq!(
            decide(&auth, AcceptAll::default(), None).0,
            Verdict::AuthRequired
        );

        let grey = vec![
            test("plain-external", 250, 451),
            test("null-sender", 250, 451),
        ];
        assert_eq!(
            decide(&grey, AcceptAll::default(), None).0,
            Verdict::Inconclusive
        );

        let broken = vec![
            test("plain-external", 250, 421),
            test("null-sender", 250, 550),
        ];
        assert_eq!(
            decide(&broken, AcceptAll::default(), None).0,
            Verdict::Inconclusive
        );
    }

    #[test]
    fn confirmed_needs_a_token() {
        let open = vec![test("plain-external", 250, 250)];
        let mut c = ConfirmResult {
            id: "plain-external".into(),
            token: "t".into(),
            sent: true,
            data_reply: reply(250),
            arrived: false,
            note: None,
        };
        let wait = std::time::Duration::from_secs(1);
        let slice = std::slice::from_ref(&c);
        assert_eq!(
            decide(&open, AcceptAll::default(), Some((slice, wait))).0,
            Verdict::Open
        );
        c.arrived = true;
        let slice = std::slice::from_ref(&c);
        assert_eq!(
            decide(&open, AcceptAll::default(), Some((slice, wait))).0,
            Verdict::ConfirmedOpen
        );
    }
}

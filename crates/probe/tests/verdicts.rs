//! The decision table of docs/probe.md, row by row, each against a scripted server that gives
//! exactly that evidence. Row names (`row_…`) follow the table.

mod common;

use std::time::Duration;

use common::{Kind, Spec, config, confirm_config, dump, probe_spec as probe};
use relayward_probe::report::Outcome;
use relayward_probe::{TargetReport, Verdict};

fn calibration(r: &TargetReport, id: &str) -> Outcome {
    r.calibration
        .iter()
        .find(|c| c.id == id)
        .map(|c| c.outcome)
        .unwrap_or_else(|| panic!("no calibration {id}"))
}

/// Row 1: nothing accepted, refusals permanent.
#[tokio::test]
async fn row_nothing_accepted_is_closed() {
    let r = probe(Spec::new(Kind::Closed), config()).await;
    assert_eq!(r.verdict, Verdict::Closed, "{}", dump(&r));
}

/// Row 2: 530 at MAIL.
#[tokio::test]
async fn row_auth_demanded_at_mail_is_auth_required() {
    let r = probe(Spec::new(Kind::AuthRequired), config()).await;
    assert_eq!(r.verdict, Verdict::AuthRequired, "{}", dump(&r));
}

/// Row 3: 530 at RCPT for external recipients, 550 for invented local ones: AUTH-REQUIRED,
/// not CLOSED (the old rule wanted 530 on half the tests).
#[tokio::test]
async fn row_auth_demanded_at_rcpt_is_auth_required() {
    let r = probe(Spec::new(Kind::AuthAtRcpt), config()).await;
    assert_eq!(r.verdict, Verdict::AuthRequired, "{}", dump(&r));
    let plain = r
        .tests
        .iter()
        .find(|t| t.id == "plain-external")
        .expect("plain-external");
    assert_eq!(plain.mail_reply.as_ref().map(|m| m.code), Some(250));
    assert_eq!(plain.rcpt_reply.as_ref().map(|m| m.code), Some(530));
}

/// Row 4: every refusal temporary.
#[tokio::test]
async fn row_only_temporary_refusals_is_inconclusive() {
    let r = probe(Spec::new(Kind::Greylist), config()).await;
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", dump(&r));
    assert!(r.reason.contains("temporary"), "{}", r.reason);
}

/// Row 5: no usable answers.
#[tokio::test]
async fn row_no_usable_answers_is_inconclusive() {
    let mut cfg = config();
    cfg.test_timeout = Duration::from_secs(2);
    let r = probe(Spec::new(Kind::DropsAtRcpt), cfg).await;
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", dump(&r));
}

/// Row 6, the case: external recipients accepted, invented local users refused,
/// `x@<random>.invalid` accepted — every open relay that does not look domains up. OPEN, not
/// ACCEPT-ALL (what the probe said of real Postfix, Exim, OpenSMTPD and Haraka open relays).
#[tokio::test]
async fn row_refuses_invented_users_accepts_external_and_invalid_is_open() {
    let r = probe(Spec::new(Kind::OpenNoDomainCheck), config()).await;
    assert_eq!(r.verdict, Verdict::Open, "{}", dump(&r));
    assert_eq!(calibration(&r, "calib-random-local-user"), Outcome::Refused);
    assert_eq!(calibration(&r, "calib-invalid-domain"), Outcome::Accepted);
    assert!(r.accepted.iter().any(|a| a == "plain-external"));
}

/// Row 7: external accepted, invented users and `.invalid` refused.
#[tokio::test]
async fn row_refuses_invented_users_and_invalid_accepts_external_is_open() {
    let r = probe(Spec::new(Kind::PlainOpen), config()).await;
    assert_eq!(r.verdict, Verdict::Open, "{}", dump(&r));
    assert_eq!(calibration(&r, "calib-invalid-domain"), Outcome::Refused);
}

/// Row 8: accepts invented local users and `.invalid`: takes anything.
#[tokio::test]
async fn row_accepts_invented_users_and_invalid_is_accept_all() {
    let r = probe(Spec::new(Kind::AcceptEverything), config()).await;
    assert_eq!(r.verdict, Verdict::AcceptAll, "{}", dump(&r));
    assert!(r.reason.contains("--confirm"), "{}", r.reason);
}

/// Row 9: catch-all for local users, refuses `.invalid`, accepts external: the catch-all does
/// not explain the external recipients.
#[tokio::test]
async fn row_catch_all_that_refuses_invalid_and_accepts_external_is_open() {
    let r = probe(Spec::new(Kind::CatchAllOpen), config()).await;
    assert_eq!(r.verdict, Verdict::Open, "{}", dump(&r));
    assert_eq!(
        calibration(&r, "calib-random-local-user"),
        Outcome::Accepted
    );
    assert_eq!(calibration(&r, "calib-invalid-domain"), Outcome::Refused);
}

/// Row 10: catch-all, only local-looking tricks accepted.
#[tokio::test]
async fn row_catch_all_with_only_local_forms_is_accept_all() {
    let r = probe(Spec::new(Kind::AcceptAllLocal), config()).await;
    assert_eq!(r.verdict, Verdict::AcceptAll, "{}", dump(&r));
}

/// Row 11: only local-looking forms accepted while invented local users are refused: the
/// server decoded the route (or handed it to a backend) — OPEN, with --confirm as the judge.
#[tokio::test]
async fn row_only_local_forms_accepted_invented_users_refused_is_open() {
    let r = probe(Spec::new(Kind::LocalBackendRoutedParts), config()).await;
    assert_eq!(r.verdict, Verdict::Open, "{}", dump(&r));
    assert!(r.reason.contains("--confirm settles it"), "{}", r.reason);
}

/// Row 12: an OPEN loopback target says the prober is probably trusted.
#[tokio::test]
async fn row_open_from_a_trusted_place_says_so() {
    let r = probe(Spec::new(Kind::PlainOpen), config()).await;
    assert_eq!(r.verdict, Verdict::Open, "{}", dump(&r));
    assert!(r.reason.contains("trusted networks"), "{}", r.reason);
}

/// Confirm row 1: a token came back.
#[tokio::test]
async fn row_confirm_token_arrived_is_confirmed_open() {
    let (cfg, listen) = confirm_config(Duration::from_secs(10)).await;
    let mut spec = Spec::new(Kind::OpenNoDomainCheck);
    spec.forward_to = Some(listen);
    let r = probe(spec, cfg).await;
    assert_eq!(r.verdict, Verdict::ConfirmedOpen, "{}", dump(&r));
    let c = r
        .confirm
        .iter()
        .find(|c| c.arrived)
        .expect("an arrived token");
    assert_eq!(c.delivered_by.as_deref(), Some("127.0.0.1"));
    assert_eq!(c.received, ["by mx.example.test"]);
    assert!(!r.reason.contains("relayed via"), "{}", r.reason);
}

/// Confirm row 2: the token came from another address than the target: a multi-hop relay.
#[tokio::test]
async fn row_confirm_token_from_another_hop_says_relayed_via() {
    let (cfg, listen) = confirm_config(Duration::from_secs(10)).await;
    let mut spec = Spec::new(Kind::PlainOpen);
    spec.forward_to = Some(listen);
    spec.forward_from = Some("127.0.0.77".parse().unwrap());
    let r = probe(spec, cfg).await;
    assert_eq!(r.verdict, Verdict::ConfirmedOpen, "{}", dump(&r));
    assert!(r.reason.contains("relayed via 127.0.0.77"), "{}", r.reason);
    assert!(
        r.confirm
            .iter()
            .any(|c| c.delivered_by.as_deref() == Some("127.0.0.77"))
    );
}

/// Confirm row 3: accepted at RCPT, taken at the end of DATA, never delivered (a sink that
/// accepts everything): UNCONFIRMED, not ACCEPT-ALL.
#[tokio::test]
async fn row_confirm_no_token_from_a_sink_is_unconfirmed() {
    let (cfg, _) = confirm_config(Duration::from_millis(700)).await;
    let r = probe(Spec::new(Kind::AcceptEverything), cfg).await;
    assert_eq!(r.verdict, Verdict::Unconfirmed, "{}", dump(&r));
    assert!(r.reason.contains("not proven"), "{}", r.reason);
    assert!(r.reason.contains("no token came back"), "{}", r.reason);
    assert!(!r.verdict.is_open());
    assert_eq!(
        relayward_probe::scan::exit_code(std::slice::from_ref(&r)),
        3
    );
}

/// Confirm row 4: accepted at RCPT, every message refused at the end of DATA: not OPEN.
#[tokio::test]
async fn row_confirm_refused_at_end_of_data_is_unconfirmed() {
    let (cfg, _) = confirm_config(Duration::from_millis(700)).await;
    let r = probe(Spec::new(Kind::RefuseAtDataEnd), cfg).await;
    assert_eq!(r.verdict, Verdict::Unconfirmed, "{}", dump(&r));
    assert!(r.reason.contains("end of DATA"), "{}", r.reason);
    let sent: Vec<_> = r.confirm.iter().filter(|c| !c.token.is_empty()).collect();
    assert!(!sent.is_empty());
    assert!(sent.iter().all(|c| !c.sent && c.data_reply.is_some()));
}

/// Confirm row 5, the closed Haraka: routed local parts accepted and handed to a local
/// backend; --confirm finds no token and says so with its own word (was ACCEPT-ALL, exit 1).
#[tokio::test]
async fn row_confirm_routed_local_parts_never_delivered_is_unconfirmed() {
    let (cfg, listen) = confirm_config(Duration::from_millis(700)).await;
    let mut spec = Spec::new(Kind::LocalBackendRoutedParts);
    spec.forward_to = Some(listen);
    let r = probe(spec, cfg).await;
    assert_eq!(r.verdict, Verdict::Unconfirmed, "{}", dump(&r));
    assert!(r.accepted.iter().any(|a| a == "quoted-at-local-domain"));
    assert_eq!(
        relayward_probe::scan::exit_code(std::slice::from_ref(&r)),
        3
    );
}

/// Confirm row 6: nothing accepted, nothing to confirm.
#[tokio::test]
async fn row_confirm_nothing_accepted_is_closed() {
    let (cfg, _) = confirm_config(Duration::from_millis(300)).await;
    let r = probe(Spec::new(Kind::Closed), cfg).await;
    assert_eq!(r.verdict, Verdict::Closed, "{}", dump(&r));
    assert!(r.confirm.is_empty());
}

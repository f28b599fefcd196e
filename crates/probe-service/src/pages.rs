//! The web pages, as maud templates compiled into the binary: the form, a running test (its
//! transcript growing; refreshed by a `<noscript>` meta refresh without JavaScript, fed by
//! server-sent events with it), the results, and refusals.
//!
//! Every value is HTML-escaped by maud; text the tested server chose (replies, banner,
//! certificate names) also goes through the project's one control-character escaper first,
//! so it reads the same as in `relayward probe` and cannot smuggle terminal or direction codes.
//! No external assets: one stylesheet and one small script, both served by the binary.

use maud::{DOCTYPE, Markup, html};
use relayward_probe::report::{Outcome, ReplyInfo, TargetReport, TestResult, Verdict};
use relayward_protocol::text::escape_control;

use crate::admission::Refusal;
use crate::record::TestRecord;
use crate::service::in_words;

/// What every page says about the service.
pub struct Site {
    pub name: String,
    pub opt_out: String,
    /// `telnet NAME PORT` when the connect-back door is open.
    pub telnet: Option<String>,
    pub max_per_hour: u32,
}

/// How often the running page reloads itself without JavaScript.
pub const REFRESH_SECONDS: u32 = 3;

fn layout(site: &Site, title: &str, refresh: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if refresh {
                    noscript { meta http-equiv="refresh" content=(REFRESH_SECONDS); }
                }
                title { (title) " — " (site.name) }
                link rel="stylesheet" href="/assets/style.css";
            }
            body {
                header { a href="/" { (site.name) } span { " open relay test" } }
                main { (body) }
                footer {
                    p {
                        "This service connects to a mail server only when someone asks for a test, as "
                        code { "EHLO " (site.name) } ". Network owners who never want to be probed: "
                        (site.opt_out) "."
                    }
                    p { "relayward probe-service" }
                }
            }
        }
    }
}

/// `GET /`: the form.
pub fn index(site: &Site) -> Markup {
    layout(
        site,
        "Is your mail server an open relay?",
        false,
        html! {
            h1 { "Is your mail server an open relay?" }
            p {
                "This service runs the relay tricks spammers use — every trick of the public test batteries — "
                "against a mail server, and tells you whether strangers can send mail through it."
            }
            form method="post" action="/tests" {
                label for="target" { "Mail server (host name or address) or mail domain" }
                input #target type="text" name="target" required autofocus
                    placeholder="mail.example.com, 192.0.2.25 or example.com" autocapitalize="none" spellcheck="false";
                fieldset {
                    legend { "It is" }
                    label { input type="radio" name="kind" value="server" checked; " a mail server" }
                    label { input type="radio" name="kind" value="mx"; " a mail domain: test all its MX hosts" }
                }
                label for="ports" { "Port(s)" }
                input #ports type="text" name="ports" value="25" inputmode="numeric" placeholder="25, 587, 465";
                button type="submit" { "Test it" }
            }
            @if let Some(telnet) = &site.telnet {
                h2 { "From the mail server itself" }
                p {
                    code { (telnet) }
                    " — the service connects back to the address you come from and shows the test as it runs. "
                    "Type a port number first to test another port of that address."
                }
            }
            h2 { "What it does" }
            ul {
                li { "Connects to the server, says " code { "EHLO " (site.name) } ", and tries each trick with " code { "MAIL FROM" } " and " code { "RCPT TO" } " to reserved example domains; it sends no message unless proof of relay is on." }
                li { "Reports every trick with the exact command and reply, TLS and its certificate, AUTH offered before TLS, VRFY/EXPN." }
                li { "Private, loopback and reserved addresses are not tested; each address may start " (site.max_per_hour) " tests an hour." }
            }
            h2 { "For scripts" }
            pre { "curl -d '{\"target\": \"mail.example.com:25\"}' -H 'Content-Type: application/json' /api/v1/tests\ncurl /api/v1/tests/ID" }
        },
    )
}

/// A test page: the live transcript while it runs, the results when done.
pub fn test_page(site: &Site, record: &TestRecord) -> Markup {
    let title = format!("Relay test of {}", record.target);
    match record.final_verdict() {
        None => layout(site, &title, true, running(record)),
        Some(verdict) => layout(site, &title, false, results(record, verdict)),
    }
}

fn running(record: &TestRecord) -> Markup {
    let events = format!(
        "/tests/{}/events?from={}",
        record.id,
        record.transcript.len()
    );
    html! {
        h1 { "Testing " (record.target) }
        p.verdict.verdict-running #verdict { "RUNNING" }
        p { "The dialogue grows below as the test runs; the results follow when it is done." }
        noscript { p #noscript-note { "This page reloads itself every " (REFRESH_SECONDS) " seconds until the test is done." } }
        pre #transcript data-events=(events) {
            @for line in &record.transcript { (line) "\n" }
        }
        script src="/assets/live.js" defer {}
    }
}

fn results(record: &TestRecord, verdict: Verdict) -> Markup {
    html! {
        h1 { "Relay test of " (record.target) }
        p.verdict.(verdict_class(verdict)) #verdict { (verdict.as_str()) }
        p.explain { (explain(verdict)) }
        p.reason { (escape_control(&record.reason)) }
        @if !record.not_probed.is_empty() {
            h2 { "Not probed" }
            ul {
                @for n in &record.not_probed { li { (n.address) ": " (n.reason) } }
            }
        }
        @for report in &record.reports { (report_section(report, record.reports.len() > 1)) }
        details {
            summary { "Transcript" }
            pre #transcript { @for line in &record.transcript { (line) "\n" } }
        }
        p.links {
            "Permanent link: " a href=(record.url) { (record.url) }
            " · JSON: " a href=(format!("/api/v1/tests/{}", record.id)) { "/api/v1/tests/" (record.id) }
            " · " a href="/" { "Test another server" }
        }
    }
}

/// One tested address: its findings and every trick. `several`: the test has other reports,
/// so this one repeats its own reason (a single report's reason is the test's, shown above).
fn report_section(r: &TargetReport, several: bool) -> Markup {
    let f = &r.findings;
    html! {
        section.report {
            h2 {
                (escape_control(&r.target))
                @if !r.ip.is_empty() && !r.target.starts_with(&r.ip) { " (" (r.ip) ")" }
                " " span.badge.(verdict_class(r.verdict)) { (r.verdict.as_str()) }
            }
            @if several { p.reason { (escape_control(&r.reason)) } }
            @if f.banner.is_some() {
                table.findings {
                    tr { th { "Banner" } td { code { (text(f.banner.as_deref())) } } }
                    tr { th { "TLS" } td { (tls_finding(r)) } }
                    tr {
                        th { "AUTH before TLS" }
                        td {
                            @if f.auth_before_tls.is_empty() { "not offered (good)" }
                            @else { strong { (escape_control(&f.auth_before_tls.join(" "))) } " — passwords in cleartext" }
                        }
                    }
                    tr { th { "VRFY postmaster" } td { (reply_finding(f.vrfy.as_ref(), f.vrfy_answers)) } }
                    tr { th { "EXPN postmaster" } td { (reply_finding(f.expn.as_ref(), f.expn_answers)) } }
                    @if !f.dnsbl.is_empty() {
                        tr {
                            th { "DNS blocklists" }
                            td {
                                @for d in &f.dnsbl {
                                    div {
                                        (d.zone) ": "
                                        @if d.listed { strong { "listed" } }
                                        @else if let Some(e) = &d.error { "error: " (escape_control(e)) }
                                        @else { "not listed" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if !r.tests.is_empty() {
                table.tricks {
                    thead { tr { th { "Test" } th { "Result" } th { "Sent" } th { "Reply" } } }
                    tbody {
                        @for t in &r.tests { (trick_row(r, t)) }
                        @for t in &r.calibration { (trick_row(r, t)) }
                    }
                }
            }
        }
    }
}

fn trick_row(r: &TargetReport, t: &TestResult) -> Markup {
    let result = outcome_word(r, t);
    html! {
        tr.(format!("outcome-{result}")) data-id=(t.id) data-outcome=(result) {
            td { code { (t.id) } br; small { (t.description) } }
            td.result { (result) }
            td.sent {
                @for s in &t.setup { code { (escape_control(&s.sent)) } br; }
                @if !t.mail_from.is_empty() { code { (escape_control(&t.mail_from)) } br; }
                @if !t.rcpt_to.is_empty() { code { (escape_control(&t.rcpt_to)) } }
                @if let Some(fb) = &t.fallback { br; code { (escape_control(&fb.mail_from)) } " (retry)" }
            }
            td.reply {
                @for s in &t.setup { code { (reply(s.reply.as_ref())) } br; }
                @if t.mail_reply.is_some() { code { (reply(t.mail_reply.as_ref())) } br; }
                @if t.rcpt_reply.is_some() { code { (reply(t.rcpt_reply.as_ref())) } }
                @if let Some(fb) = &t.fallback { br; code { (reply(fb.rcpt_reply.as_ref())) } }
                @if let Some(note) = &t.note { br; small { (escape_control(note)) } }
            }
        }
    }
}

/// `refused`, `accepted`, `confirmed` (its token came back), `refused-temporary`, `error`,
/// `skipped`.
fn outcome_word(r: &TargetReport, t: &TestResult) -> &'static str {
    if t.outcome == Outcome::Accepted && r.confirmed.contains(&t.id) {
        "confirmed"
    } else {
        t.outcome.as_str()
    }
}

fn tls_finding(r: &TargetReport) -> Markup {
    let f = &r.findings;
    html! {
        @if let Some(tls) = &f.tls {
            (tls.version)
            @if let Some(c) = &tls.certificate {
                ", certificate " code { (escape_control(&c.subject)) } ", expires " (escape_control(&c.not_after))
                @if c.expired { " " strong { "(expired)" } }
                @if c.self_signed { " (self-signed)" }
            }
        } @else if f.starttls_offered {
            "STARTTLS offered, not used"
        } @else {
            "no STARTTLS: mail to and from it travels in cleartext"
        }
        @if let Some(e) = &f.tls_error { br; small { "TLS error: " (escape_control(e)) } }
    }
}

fn reply_finding(r: Option<&ReplyInfo>, answers: bool) -> Markup {
    html! {
        code { (reply(r)) }
        @if answers { " — " strong { "discloses addresses" } }
    }
}

fn reply(r: Option<&ReplyInfo>) -> String {
    r.map(|r| escape_control(&r.to_string()).into_owned())
        .unwrap_or_else(|| "(no reply)".to_string())
}

fn text(t: Option<&str>) -> String {
    escape_control(t.unwrap_or("")).into_owned()
}

/// The one-line explanation under the verdict.
pub fn explain(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Closed => "It refused every relay attempt: strangers cannot send mail through it.",
        Verdict::AuthRequired => {
            "It asks for a login before it relays: strangers cannot send mail through it."
        }
        Verdict::Open => {
            "It relays mail for strangers: spammers can send through it. Close it now."
        }
        Verdict::ConfirmedOpen => {
            "Proven open relay: a test message sent through it came back to this service."
        }
        Verdict::AcceptAll => {
            "It accepted relay recipients, but it also accepts made-up local users, so this proves little either way."
        }
        Verdict::Unconfirmed => {
            "It accepted relay recipients, but no test message came back: not proven."
        }
        Verdict::Unreachable => "No mail server could be reached there.",
        Verdict::Inconclusive => "Its answers did not allow a verdict.",
    }
}

fn verdict_class(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Closed | Verdict::AuthRequired => "verdict-closed",
        Verdict::Open | Verdict::ConfirmedOpen => "verdict-open",
        _ => "verdict-unknown",
    }
}

/// A refused request (bad target, private, excluded, rate limit, busy).
pub fn refusal(site: &Site, refusal: &Refusal) -> Markup {
    layout(
        site,
        "Not tested",
        false,
        html! {
            h1 { "Not tested" }
            p.refusal #refusal { (refusal.message) }
            @if let Some(seconds) = refusal.retry_after {
                p #retry { "You can try again in " (in_words(seconds)) "." }
            }
            p { a href="/" { "Back to the form" } }
        },
    )
}

/// 404.
pub fn not_found(site: &Site) -> Markup {
    layout(
        site,
        "No such test",
        false,
        html! {
            h1 { "No such test" }
            p { "There is no test at this address: the link is wrong, or the result was removed to make room for newer ones." }
            p { a href="/" { "Test a server" } }
        },
    )
}

/// The stylesheet, compiled in.
pub const STYLE_CSS: &str = include_str!("../assets/style.css");
/// The live-transcript script, compiled in.
pub const LIVE_JS: &str = include_str!("../assets/live.js");

/// Markup as the string a response carries.
pub fn render(m: Markup) -> String {
    m.into_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Door, RUNNING};
    use relayward_probe::report::{Findings, TestResult};

    fn site() -> Site {
        Site {
            name: "relay-test.example.org".into(),
            opt_out: "write to postmaster@relay-test.example.org".into(),
            telnet: Some("telnet relay-test.example.org 23".into()),
            max_per_hour: 10,
        }
    }

    fn hostile_record() -> TestRecord {
        let evil = "<script>alert(1)</script>\u{1b}[2J";
        let test = TestResult {
            id: "plain-external".into(),
            kind: "sender".into(),
            description: "external sender to external recipient".into(),
            mail_from: "MAIL FROM:<antispam@example.org>".into(),
            rcpt_to: "RCPT TO:<relaytest@example.net>".into(),
            mail_reply: None,
            rcpt_reply: Some(ReplyInfo {
                code: 554,
                enhanced: Some("5.7.1".into()),
                text: evil.into(),
            }),
            fallback: None,
            outcome: Outcome::Refused,
            note: None,
            attempts: 1,
            setup: Vec::new(),
        };
        let report = TargetReport {
            target: "192.0.2.7:25".into(),
            ip: "192.0.2.7".into(),
            port: 25,
            verdict: Verdict::Closed,
            reason: format!("all refused {evil}"),
            accepted: Vec::new(),
            confirmed: Vec::new(),
            tests: vec![test],
            calibration: Vec::new(),
            confirm: Vec::new(),
            findings: Findings {
                banner: Some(evil.into()),
                ..Findings::default()
            },
            mx: None,
            duration_ms: 1,
            finished_unix: 1,
            transcript: None,
        };
        TestRecord {
            id: "0000000000aaaaaaaaa1".into(),
            url: "/tests/0000000000aaaaaaaaa1".into(),
            target: "<b>192.0.2.7:25</b>".into(),
            door: Door::Web,
            verdict: "CLOSED".into(),
            reason: format!("all refused {evil}"),
            started_unix: 1,
            finished_unix: Some(2),
            duration_ms: Some(1),
            not_probed: Vec::new(),
            reports: vec![report],
            transcript: vec!["<<< 220 <script>x</script>\\x1b[2J".into()],
        }
    }

    #[test]
    fn server_text_is_html_escaped_and_control_characters_shown() {
        let page = render(test_page(&site(), &hostile_record()));
        assert!(
            !page.contains("<script>alert"),
            "raw markup from the server"
        );
        assert!(!page.contains("<b>192"), "raw markup from the target text");
        assert!(!page.contains('\u{1b}'), "raw ESC");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;\\x1b[2J"),
            "{page}"
        );
        assert!(page.contains("data-id=\"plain-external\" data-outcome=\"refused\""));
        assert!(page.contains("CLOSED"));
        assert!(page.contains(explain(Verdict::Closed)));
    }

    #[test]
    fn a_running_test_refreshes_without_javascript_and_streams_with_it() {
        let mut record = hostile_record();
        record.verdict = RUNNING.into();
        record.reports.clear();
        let page = render(test_page(&site(), &record));
        assert!(
            page.contains("<noscript><meta http-equiv=\"refresh\" content=\"3\"></noscript>"),
            "{page}"
        );
        assert!(
            page.contains("data-events=\"/tests/0000000000aaaaaaaaa1/events?from=1\""),
            "{page}"
        );
        assert!(
            page.contains("<script src=\"/assets/live.js\" defer></script>"),
            "{page}"
        );
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "no external assets"
        );
    }
}

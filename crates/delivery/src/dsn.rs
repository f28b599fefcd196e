//! RFC 3464 delivery status notifications: bounces (`Action: failed`) and delay notices
//! (`Action: delayed`).
//!
//! One report per message and attempt batch lists every recipient it is about, so a message
//! to fifty bad addresses produces one bounce, not fifty. Reports are sent with the null
//! reverse-path (RFC 5321 §4.5.5) so that they can never bounce in turn; the runner never
//! reports on a message whose sender is null, nor on one that is itself a report or
//! auto-reply. Each carries what RFC 3461 asks a DSN to give back: the client's `ENVID` as
//! `Original-Envelope-Id:` and each recipient's `ORCPT` as `Original-Recipient:`.
//!
//! A bounce returns the original's header section, or with `RET=FULL` the whole message
//! (RFC 3461 §4.3); a delay notice always returns the header section only, since the message
//! is still on its way. Reports are small when the sender may be forged. A message from a
//! stranger (not authenticated, not in a trusted network) names a sender nobody checked: its
//! report goes, as likely as not, to a third party. So that a stranger cannot use us to mail
//! anyone his text ("backscatter"), such a report carries at most [`STRANGER_HEADER_CAP`]
//! octets of the original — the first octets of its header section, cut at a field boundary,
//! never the body, whatever `RET` he gave — and says why by status
//! code only: no remote reply text and no remote host, which for a `[[route]]` is an internal
//! server's name or address. Our own users get the whole report.

use std::fmt::Write as _;

use relayward_protocol::dsn::{Orcpt, Ret};
use relayward_protocol::reply::EnhancedCode;
use relayward_queue::Origin;

use crate::outcome::Failure;

/// Most octets of the original a report to a stranger's sender carries: its header section,
/// cut at a field boundary.
pub const STRANGER_HEADER_CAP: usize = 16 * 1024;

/// A recipient a report is about: why it failed, or (a delay notice) why it is still waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRecipient {
    pub address: String,
    pub failure: Failure,
    /// Still pending when the queue lifetime ran out (Status 4.4.7 context).
    pub expired: bool,
    /// `ORCPT=` as the client gave it (`Original-Recipient:`).
    pub orcpt: Option<Orcpt>,
}

/// Which report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A bounce: nothing more will be tried for these recipients.
    Failure,
    /// A delay notice: still being retried, until `will_retry_until` (Unix seconds).
    Delay { will_retry_until: u64 },
}

/// What the report is about.
pub struct Report<'a> {
    pub kind: Kind,
    /// Our host name (`Reporting-MTA`, `MAILER-DAEMON@…`).
    pub reporting_mta: &'a str,
    /// The envelope sender of the original message: the DSN's only recipient.
    pub original_sender: &'a str,
    pub original_id: &'a str,
    /// `ENVID=` as the client gave it (`Original-Envelope-Id:`).
    pub envid: Option<&'a str>,
    /// `RET=` as the client gave it: how much of the original a bounce returns.
    pub ret: Option<Ret>,
    /// Unix seconds of arrival (`Arrival-Date`).
    pub arrived: u64,
    /// Unix seconds now (`Date`, `Last-Attempt-Date`).
    pub now: u64,
    pub recipients: &'a [FailedRecipient],
    /// The original content.
    pub original: &'a [u8],
    /// How the original arrived: a stranger's report is small (see the module docs).
    pub origin: Origin,
    /// The original was sent with SMTPUTF8: the report is internationalised (see
    /// [`Parts::for_original`]).
    pub smtputf8: bool,
}

impl Report<'_> {
    fn for_stranger(&self) -> bool {
        self.origin == Origin::Stranger
    }

    fn is_delay(&self) -> bool {
        matches!(self.kind, Kind::Delay { .. })
    }

    /// Whether the whole original goes back: a bounce with `RET=FULL`, never to a stranger.
    /// His sender may be forged, and however small his message, its body is his text mailed
    /// to whoever he named (he can make a bounce happen: a next hop without SMTPUTF8, one
    /// that refuses the content, a SIZE limit), so his report returns the header section
    /// within the cap, whatever he asked.
    fn returns_full_message(&self) -> bool {
        self.kind == Kind::Failure && self.ret == Some(Ret::Full) && !self.for_stranger()
    }
}

/// The MIME types of a report's machine-readable parts. For a message sent with SMTPUTF8
/// (RFC 6533) the original's header fields and addresses may be UTF-8, which
/// `message/rfc822`, `text/rfc822-headers` and `message/delivery-status` (with its `rfc822`
/// address type) do not allow: its report uses the `message/global*` types and the `utf-8`
/// address type instead, and must itself be sent with SMTPUTF8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parts {
    pub(crate) message: &'static str,
    pub(crate) headers: &'static str,
    pub(crate) status: &'static str,
    international: bool,
}

impl Parts {
    pub(crate) fn for_original(smtputf8: bool) -> Parts {
        if smtputf8 {
            Parts {
                message: "message/global",
                headers: "message/global-headers",
                status: "message/global-delivery-status",
                international: true,
            }
        } else {
            Parts {
                message: "message/rfc822",
                headers: "text/rfc822-headers",
                status: "message/delivery-status",
                international: false,
            }
        }
    }

    /// `Final-Recipient:`'s value: `rfc822; address`, or in a global report for an address
    /// that is not ASCII `utf-8; ` and the address as utf-8-addr-unitext (RFC 6533 §3).
    pub(crate) fn final_recipient(&self, address: &str) -> String {
        if self.international && !address.is_ascii() {
            format!("utf-8; {}", embedded_unicode(address, true))
        } else {
            format!("rfc822; {}", one_line(address))
        }
    }
}

/// RFC 6533 §3's encodings of a `utf-8` address: `+`, `=`, `\`, space and controls always as
/// `\x{HH}`; other characters outside ASCII as they are (utf-8-addr-unitext, for global
/// reports) or also as `\x{HHHH}` (utf-8-addr-xtext, for the ASCII-only ones).
fn embedded_unicode(address: &str, keep_non_ascii: bool) -> String {
    let mut out = String::with_capacity(address.len());
    for c in address.chars() {
        let plain = if c.is_ascii() {
            c.is_ascii_graphic() && !matches!(c, '+' | '=' | '\\')
        } else {
            keep_non_ascii
        };
        if plain {
            out.push(c);
        } else {
            let _ = write!(out, "\\x{{{:02X}}}", u32::from(c));
        }
    }
    out
}

/// Builds the DSN message (CRLF line ends), ready to enqueue (with SMTPUTF8 when
/// `report.smtputf8`).
pub fn build(report: &Report<'_>) -> Vec<u8> {
    let parts = Parts::for_original(report.smtputf8);
    let boundary =
        format!("{}/{}", report.original_id, report.reporting_mta).replace(['"', '\\'], "");
    let boundary = format!("=_relayward_{boundary}");
    let mut out = String::new();
    top_headers(&mut out, report, &boundary);
    out.push_str(&format!("--{boundary}\r\n"));
    human_part(&mut out, report);
    out.push_str(&format!("--{boundary}\r\n"));
    status_part(&mut out, report, parts);
    out.push_str(&format!("--{boundary}\r\n"));
    let mut bytes = if report.returns_full_message() {
        out.push_str(&format!("Content-Type: {}\r\n", parts.message));
        out.push_str(&format!(
            "Content-Description: {}\r\n\r\n",
            what_returned(report)
        ));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(report.original);
        if !report.original.ends_with(b"\n") {
            bytes.extend_from_slice(b"\r\n");
        }
        bytes
    } else {
        out.push_str(&format!("Content-Type: {}\r\n", parts.headers));
        out.push_str(&format!(
            "Content-Description: {} Headers\r\n\r\n",
            what_returned(report)
        ));
        let mut bytes = out.into_bytes();
        let headers = header_section(report.original);
        if report.for_stranger() {
            bytes.extend_from_slice(capped_at_a_field(&headers, STRANGER_HEADER_CAP));
        } else {
            bytes.extend_from_slice(&headers);
        }
        bytes
    };
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

fn what_returned(report: &Report<'_>) -> &'static str {
    if report.is_delay() {
        "Delayed Message"
    } else {
        "Undelivered Message"
    }
}

fn top_headers(out: &mut String, report: &Report<'_>, boundary: &str) {
    let (subject, kind) = match report.kind {
        Kind::Failure => ("Undelivered Mail Returned to Sender", "dsn"),
        Kind::Delay { .. } => ("Delayed Mail (still being retried)", "delay"),
    };
    notification_header(
        out,
        &NotificationHeader {
            host: report.reporting_mta,
            to: report.original_sender,
            subject,
            kind,
            original_id: report.original_id,
            now: report.now,
            boundary,
        },
    );
}

/// What the top of a delivery status notification says (RFC 3464 §2, `multipart/report`).
pub(crate) struct NotificationHeader<'a> {
    /// This server (`MAILER-DAEMON@host`, the Message-ID's domain).
    pub host: &'a str,
    /// The original sender, to whom the notification goes.
    pub to: &'a str,
    pub subject: &'a str,
    /// In the Message-ID: `dsn` for a bounce, `delay` for a delay notice, `ok` for a success
    /// notice.
    pub kind: &'a str,
    pub original_id: &'a str,
    pub now: u64,
    pub boundary: &'a str,
}

/// The header section and MIME preamble of every notification (bounce, delay, success): from
/// the mailer-daemon, `Auto-Submitted: auto-replied` (never answered in turn, RFC 3834).
pub(crate) fn notification_header(out: &mut String, h: &NotificationHeader<'_>) {
    let _ = write!(
        out,
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.{kind}.{now}@{host}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated delivery status notification.\r\n\r\n",
        host = h.host,
        to = h.to,
        subject = h.subject,
        date = rfc5322_date(h.now),
        id = h.original_id,
        kind = h.kind,
        now = h.now,
        boundary = h.boundary,
    );
}

fn human_part(out: &mut String, report: &Report<'_>) {
    out.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    out.push_str("Content-Description: Notification\r\n\r\n");
    let _ = write!(
        out,
        "This is the mail system at {}.\r\n\r\n",
        report.reporting_mta
    );
    match report.kind {
        Kind::Failure => {
            let _ = write!(
                out,
                "Your message could not be delivered to one or more recipients.\r\n\
                 It was accepted on {}. The details follow.\r\n\r\n",
                rfc5322_date(report.arrived)
            );
        }
        Kind::Delay { will_retry_until } => {
            let _ = write!(
                out,
                "Your message could not be delivered yet to one or more recipients.\r\n\
                 It was accepted on {}. The mail system will keep trying until\r\n\
                 {}; you need not send it again. The details follow.\r\n\r\n",
                rfc5322_date(report.arrived),
                rfc5322_date(will_retry_until)
            );
        }
    }
    for r in report.recipients {
        let _ = write!(out, "<{}>: {}\r\n", r.address, one_line(&why(r, report)));
    }
    if report.returns_full_message() {
        out.push_str("\r\nYour message follows.\r\n");
    } else if report.for_stranger() {
        out.push_str(
            "\r\nThe header fields of your message follow (at most the first 16 KiB).\r\n",
        );
    }
    out.push_str("\r\n");
}

/// One recipient's line in the human-readable part.
fn why(r: &FailedRecipient, report: &Report<'_>) -> String {
    match (report.is_delay(), r.expired, report.for_stranger()) {
        (true, _, false) => format!("still trying; last error: {}", r.failure.text),
        (true, _, true) => format!(
            "{}: still trying: {}",
            delay_status(r),
            meaning(r.failure.status)
        ),
        (false, true, false) => format!(
            "gave up after the maximum queue lifetime; last error: {}",
            r.failure.text
        ),
        (false, false, false) => r.failure.text.clone(),
        (false, true, true) => format!(
            "{}: gave up after the maximum queue lifetime",
            final_status(r)
        ),
        (false, false, true) => format!("{}: {}", final_status(r), meaning(r.failure.status)),
    }
}

/// What an RFC 3463 status means, by its subject: all a stranger's report says of the cause.
fn meaning(status: EnhancedCode) -> &'static str {
    match status.subject {
        1 => "the recipient address was not accepted",
        2 => "the recipient's mailbox cannot take the message",
        3 => "the receiving mail system cannot take the message",
        4 => "the message could not be routed or delivered",
        5 => "the receiving server refused the delivery",
        6 => "the message content was not accepted",
        7 => "the message was refused by policy",
        _ => "the message could not be delivered",
    }
}

/// The status to report: what the last attempt said, or `4.4.7` (delivery time expired) for a
/// recipient given up on while it was only deferred.
fn final_status(r: &FailedRecipient) -> EnhancedCode {
    if r.expired && !r.failure.status.is_permanent() {
        EnhancedCode::new(4, 4, 7)
    } else {
        r.failure.status
    }
}

/// A delayed recipient's status is transient (class 4) whatever the last error said.
fn delay_status(r: &FailedRecipient) -> EnhancedCode {
    r.failure.status.as_transient()
}

/// The start of the `message/delivery-status` part (RFC 3464 §2.2): its part header and the
/// per-message fields, the same in bounces, delay notices and success notices.
pub(crate) fn per_message_fields(
    out: &mut String,
    parts: Parts,
    envid: Option<&str>,
    reporting_mta: &str,
    queue_id: &str,
    arrived: u64,
) {
    out.push_str(&format!("Content-Type: {}\r\n", parts.status));
    out.push_str("Content-Description: Delivery report\r\n\r\n");
    if let Some(envid) = envid {
        let _ = write!(out, "Original-Envelope-Id: {}\r\n", one_line(envid));
    }
    let _ = write!(
        out,
        "Reporting-MTA: dns; {reporting_mta}\r\nX-Relayward-Queue-ID: {queue_id}\r\nArrival-Date: {}\r\n",
        rfc5322_date(arrived)
    );
}

fn status_part(out: &mut String, report: &Report<'_>, parts: Parts) {
    per_message_fields(
        out,
        parts,
        report.envid,
        report.reporting_mta,
        report.original_id,
        report.arrived,
    );
    for r in report.recipients {
        out.push_str("\r\n");
        recipient_block(out, r, report, parts);
    }
    out.push_str("\r\n");
}

fn recipient_block(out: &mut String, r: &FailedRecipient, report: &Report<'_>, parts: Parts) {
    original_recipient(out, r.orcpt.as_ref(), parts);
    let (action, status) = match report.kind {
        Kind::Failure => ("failed", final_status(r)),
        Kind::Delay { .. } => ("delayed", delay_status(r)),
    };
    let _ = write!(
        out,
        "Final-Recipient: {}\r\nAction: {action}\r\nStatus: {status}\r\n",
        parts.final_recipient(&r.address)
    );
    if report.for_stranger() {
        // The reply's code only: its text and the host that sent it stay ours.
        if let Some(code) = r.failure.smtp_reply.as_deref().and_then(reply_code) {
            let _ = write!(
                out,
                "Diagnostic-Code: smtp; {code} {}\r\n",
                r.failure.status
            );
        }
    } else {
        if let Some(mta) = &r.failure.remote_mta {
            let host = mta.split('[').next().unwrap_or(mta);
            let _ = write!(out, "Remote-MTA: dns; {host}\r\n");
        }
        let diagnostic = match &r.failure.smtp_reply {
            Some(reply) => format!("smtp; {}", one_line(reply)),
            None => format!("X-Relayward; {}", one_line(&r.failure.text)),
        };
        let _ = write!(out, "Diagnostic-Code: {diagnostic}\r\n");
    }
    let _ = write!(out, "Last-Attempt-Date: {}\r\n", rfc5322_date(report.now));
    if let Kind::Delay { will_retry_until } = report.kind {
        let _ = write!(
            out,
            "Will-Retry-Until: {}\r\n",
            rfc5322_date(will_retry_until)
        );
    }
}

/// The three-digit code that opens an SMTP reply line.
fn reply_code(reply: &str) -> Option<&str> {
    reply
        .get(..3)
        .filter(|code| code.bytes().all(|b| b.is_ascii_digit()))
}

/// `Original-Recipient:` (RFC 3464 §2.3.1) when the client gave `ORCPT=`.
/// `Original-Recipient:` from the client's `ORCPT`, its address decoded: a `utf-8` one is
/// encoded again for the report's kind (RFC 6533 §3), any other type as given.
pub(crate) fn original_recipient(out: &mut String, orcpt: Option<&Orcpt>, parts: Parts) {
    if let Some(orcpt) = orcpt {
        let address = if orcpt.addr_type.eq_ignore_ascii_case("utf-8") {
            embedded_unicode(&orcpt.address, parts.international)
        } else {
            one_line(&orcpt.address)
        };
        let _ = write!(
            out,
            "Original-Recipient: {}; {address}\r\n",
            orcpt.addr_type
        );
    }
}

/// Text from elsewhere on one line of a report field: line ends become spaces, and every
/// other control character (a next hop's reply may carry ESC, NUL, BEL) is escaped, so that
/// no report holds a NUL or an escape sequence that redraws its reader's terminal.
pub(crate) fn one_line(text: &str) -> String {
    let line = text.replace(['\r', '\n'], " ");
    relayward_protocol::text::escape_control(&line).into_owned()
}

/// The longest start of `headers` that is at most `cap` octets and ends where a header field
/// ends (a field is never cut in the middle, continuation lines included).
fn capped_at_a_field(headers: &[u8], cap: usize) -> &[u8] {
    if headers.len() <= cap {
        return headers;
    }
    let mut field_start = 0;
    let mut pos = 0;
    while pos < headers.len() {
        let end = headers[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(headers.len(), |i| pos + i + 1);
        if !matches!(headers[pos], b' ' | b'\t') {
            field_start = pos;
        }
        if end > cap {
            break;
        }
        pos = end;
    }
    &headers[..field_start.min(pos)]
}

/// The original message's header section (up to the first empty line), CRLF-terminated.
pub fn header_section(content: &[u8]) -> Vec<u8> {
    let mut headers = relayward_protocol::header::header_section(content).to_vec();
    if !headers.is_empty() && !headers.ends_with(b"\n") {
        headers.extend_from_slice(b"\r\n");
    }
    headers
}

pub use relayward_protocol::date::rfc5322_date;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_700_000_000),
            "Tue, 14 Nov 2023 22:13:20 +0000"
        );
    }

    #[test]
    fn report_has_the_three_parts() {
        let failed = vec![FailedRecipient {
            address: "bob@far.test".into(),
            failure: Failure::local((5, 1, 10), "far.test does not accept mail (null MX)"),
            expired: false,
            orcpt: None,
        }];
        let original = b"Subject: hi\r\nFrom: a@x.test\r\n\r\nbody line\r\n";
        let dsn = build(&Report {
            kind: Kind::Failure,
            envid: None,
            ret: None,
            reporting_mta: "mx.x.test",
            original_sender: "a@x.test",
            original_id: "Q1",
            arrived: 0,
            now: 60,
            recipients: &failed,
            original,
            origin: Origin::Authenticated,
            smtputf8: false,
        });
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("report-type=delivery-status"));
        assert!(text.contains(
            "Final-Recipient: rfc822; bob@far.test\r\nAction: failed\r\nStatus: 5.1.10\r\n"
        ));
        assert!(text.contains("Content-Type: text/rfc822-headers\r\n"));
        assert!(text.contains("Subject: hi\r\n"));
        assert!(!text.contains("body line"));
        assert!(text.ends_with("--\r\n"));
    }

    fn route_failure() -> Vec<FailedRecipient> {
        let reply = relayward_protocol::reply::Reply::enh(
            550,
            (5, 1, 1),
            "<nobody@corp.test>: unknown at inside.corp.internal",
        );
        vec![FailedRecipient {
            address: "nobody@corp.test".into(),
            failure: Failure::from_reply(&reply, "inside.corp.internal[10.0.0.5]:25", "RCPT TO"),
            expired: false,
            orcpt: None,
        }]
    }

    fn report_for(origin: Origin, original: &[u8], failed: &[FailedRecipient]) -> String {
        report_with(Kind::Failure, None, origin, original, failed)
    }

    fn report_with(
        kind: Kind,
        ret: Option<Ret>,
        origin: Origin,
        original: &[u8],
        failed: &[FailedRecipient],
    ) -> String {
        String::from_utf8(build(&Report {
            kind,
            envid: Some("ENV 1"),
            ret,
            reporting_mta: "mx.x.test",
            original_sender: "victim@third.test",
            original_id: "Q2",
            arrived: 0,
            now: 60,
            recipients: failed,
            original,
            origin,
            smtputf8: false,
        }))
        .unwrap()
    }

    /// RFC 6533 §3: in a `utf-8` address `+`, `=`, `\`, space and controls are `\x{HH}`;
    /// characters outside ASCII stay as they are in a global report (unitext) and are
    /// `\x{HHHH}` in an ASCII one (xtext).
    #[test]
    fn utf8_addresses_are_encoded_as_rfc_6533_says() {
        assert_eq!(
            embedded_unicode("a+b=c\\d e@x.test", true),
            "a\\x{2B}b\\x{3D}c\\x{5C}d\\x{20}e@x.test"
        );
        assert_eq!(
            embedded_unicode("jürgen@bücher.test", true),
            "jürgen@bücher.test"
        );
        assert_eq!(
            embedded_unicode("jürgen@bücher.test", false),
            "j\\x{FC}rgen@b\\x{FC}cher.test"
        );
        assert_eq!(embedded_unicode("x\u{1}y", true), "x\\x{01}y");
    }

    /// RFC 6533: the report on a message sent with SMTPUTF8 returns its (UTF-8) header fields
    /// as `message/global-headers` — or the whole message as `message/global` — beside a
    /// `message/global-delivery-status` naming a UTF-8 recipient with the `utf-8` type; an
    /// ASCII recipient keeps `rfc822`. A plain message's report keeps the RFC 3464 types.
    #[test]
    fn the_report_on_an_smtputf8_message_uses_the_global_types() {
        let failed = [
            FailedRecipient {
                address: "jürgen+news@bücher.test".into(),
                failure: Failure::local((5, 1, 1), "no such mailbox"),
                expired: false,
                orcpt: None,
            },
            FailedRecipient {
                address: "bob@far.test".into(),
                failure: Failure::local((5, 1, 1), "no such mailbox"),
                expired: false,
                orcpt: None,
            },
        ];
        let original = "Subject: Grüße\r\nFrom: Jörg <jörg@dörfer.test>\r\n\r\nHallo\r\n";
        let global = |ret| {
            String::from_utf8(build(&Report {
                kind: Kind::Failure,
                envid: None,
                ret,
                reporting_mta: "mx.x.test",
                original_sender: "jörg@dörfer.test",
                original_id: "Q3",
                arrived: 0,
                now: 60,
                recipients: &failed,
                original: original.as_bytes(),
                origin: Origin::Authenticated,
                smtputf8: true,
            }))
            .unwrap()
        };
        let headers = global(None);
        for part in [
            "Content-Type: message/global-delivery-status\r\n",
            "Content-Type: message/global-headers\r\n",
            "Final-Recipient: utf-8; jürgen\\x{2B}news@bücher.test\r\n",
            "Final-Recipient: rfc822; bob@far.test\r\n",
            "Subject: Grüße\r\n",
        ] {
            assert!(headers.contains(part), "{part:?} missing:\n{headers}");
        }
        for old in [
            "message/delivery-status",
            "text/rfc822-headers",
            "rfc822; jürgen",
        ] {
            assert!(!headers.contains(old), "{old:?} in:\n{headers}");
        }
        let full = global(Some(Ret::Full));
        assert!(full.contains("Content-Type: message/global\r\n"), "{full}");
        assert!(!full.contains("message/rfc822"), "{full}");

        let plain = report_with(
            Kind::Failure,
            None,
            Origin::Authenticated,
            b"Subject: x\r\n\r\n",
            &failed[1..],
        );
        assert!(
            plain.contains("Content-Type: message/delivery-status\r\n"),
            "{plain}"
        );
        assert!(
            plain.contains("Content-Type: text/rfc822-headers\r\n"),
            "{plain}"
        );
    }

    /// A stranger's bounce says why by status code only: the internal server's name, address
    /// and reply text stay ours; our own users get all of it.
    #[test]
    fn a_strangers_bounce_names_no_remote_host_and_quotes_no_reply() {
        let failed = route_failure();
        let original = b"Subject: hi\r\n\r\nbody line\r\n";
        let small = report_for(Origin::Stranger, original, &failed);
        for secret in [
            "inside.corp.internal",
            "10.0.0.5",
            "unknown at",
            "Remote-MTA",
        ] {
            assert!(!small.contains(secret), "{secret} in:\n{small}");
        }
        assert!(small.contains("Status: 5.1.1\r\n"), "{small}");
        assert!(
            small.contains("Diagnostic-Code: smtp; 550 5.1.1\r\n"),
            "{small}"
        );
        assert!(
            small.contains("<nobody@corp.test>: 5.1.1: the recipient address was not accepted")
        );
        assert!(small.contains("Subject: hi\r\n") && !small.contains("body line"));
        let full = report_for(Origin::Authenticated, original, &failed);
        assert!(
            full.contains("Remote-MTA: dns; inside.corp.internal\r\n"),
            "{full}"
        );
        assert!(full.contains("unknown at inside.corp.internal"), "{full}");
    }

    #[test]
    fn a_strangers_bounce_carries_at_most_16_kib_of_headers_cut_at_a_field() {
        let mut original = Vec::new();
        for n in 0..400 {
            original.extend_from_slice(
                format!(
                    "X-Filler-{n}: {}\r\n\t{}\r\n",
                    "a".repeat(40),
                    "b".repeat(40)
                )
                .as_bytes(),
            );
        }
        original.extend_from_slice(b"\r\nbody line\r\n");
        let failed = route_failure();
        let small = report_for(Origin::Stranger, &original, &failed);
        let quoted = small
            .split("Content-Description: Undelivered Message Headers\r\n\r\n")
            .nth(1)
            .and_then(|rest| rest.split("\r\n--=_relayward_").next())
            .expect("headers part");
        assert!(
            quoted.len() <= STRANGER_HEADER_CAP,
            "{} octets",
            quoted.len()
        );
        assert!(
            quoted.len() > STRANGER_HEADER_CAP - 200,
            "{} octets",
            quoted.len()
        );
        assert!(
            quoted.ends_with(&format!("\t{}\r\n", "b".repeat(40))),
            "cut inside a field"
        );
        let full = report_for(Origin::Trusted, &original, &failed);
        assert!(full.contains("X-Filler-399:"));
        assert!(!full.contains("body line"));
    }

    /// The internal server stayed down past the queue lifetime: the last error names it, and
    /// a stranger's bounce says only that we gave up.
    #[test]
    fn a_strangers_expiry_bounce_does_not_name_the_server_that_was_down() {
        let failed = vec![FailedRecipient {
            address: "nobody@corp.test".into(),
            failure: Failure::local((4, 4, 1), "connection to 10.0.0.5:25 refused"),
            expired: true,
            orcpt: None,
        }];
        let small = report_for(Origin::Stranger, b"Subject: x\r\n\r\n", &failed);
        assert!(!small.contains("10.0.0.5"), "{small}");
        assert!(
            small.contains("<nobody@corp.test>: 4.4.7: gave up after the maximum queue lifetime")
        );
        assert!(small.contains("Status: 4.4.7\r\n") && !small.contains("Diagnostic-Code"));
        let full = report_for(Origin::Trusted, b"Subject: x\r\n\r\n", &failed);
        assert!(full.contains("connection to 10.0.0.5:25 refused"), "{full}");
    }

    /// The part after the status part: what of the original a report returns.
    fn returned_part(report: &str) -> &str {
        report
            .rsplit("\r\n--=_relayward_")
            .nth(1)
            .expect("a returned part")
    }

    /// RFC 3461 §4.3: `RET=FULL` returns the whole message, `RET=HDRS` (and no RET) its
    /// header section; a stranger's bounce never returns the body, however small, and a
    /// delay notice never does.
    #[test]
    fn ret_full_returns_the_message_ret_hdrs_its_headers_and_strangers_never_the_body() {
        let failed = route_failure();
        let small = b"Subject: hi\r\n\r\nbody line\r\n";
        let full = report_with(
            Kind::Failure,
            Some(Ret::Full),
            Origin::Authenticated,
            small,
            &failed,
        );
        let part = returned_part(&full);
        assert!(part.contains("Content-Type: message/rfc822\r\n"), "{full}");
        assert!(
            part.ends_with("\r\n\r\nSubject: hi\r\n\r\nbody line\r\n"),
            "{full}"
        );
        for ret in [Some(Ret::Hdrs), None] {
            let hdrs = report_with(Kind::Failure, ret, Origin::Authenticated, small, &failed);
            let part = returned_part(&hdrs);
            assert!(
                part.contains("Content-Type: text/rfc822-headers\r\n"),
                "{hdrs}"
            );
            assert!(
                part.contains("Subject: hi\r\n") && !hdrs.contains("body line"),
                "{hdrs}"
            );
        }
        let stranger_small = report_with(
            Kind::Failure,
            Some(Ret::Full),
            Origin::Stranger,
            small,
            &failed,
        );
        assert!(!stranger_small.contains("body line"), "{stranger_small}");
        assert!(
            returned_part(&stranger_small).contains("Content-Type: text/rfc822-headers\r\n")
                && stranger_small.contains("Subject: hi\r\n"),
            "{stranger_small}"
        );

        let mut big = b"Subject: big\r\n\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'x', STRANGER_HEADER_CAP));
        big.extend_from_slice(b"\r\n");
        let stranger_big = report_with(
            Kind::Failure,
            Some(Ret::Full),
            Origin::Stranger,
            &big,
            &failed,
        );
        assert!(
            stranger_big.len() < 2 * STRANGER_HEADER_CAP / 3,
            "{} octets",
            stranger_big.len()
        );
        assert!(returned_part(&stranger_big).contains("Content-Type: text/rfc822-headers\r\n"));
        assert!(stranger_big.contains("Subject: big\r\n"));
        let own_big = report_with(
            Kind::Failure,
            Some(Ret::Full),
            Origin::Trusted,
            &big,
            &failed,
        );
        assert!(
            own_big.len() > big.len(),
            "the whole message for our own users"
        );

        let delay = Kind::Delay {
            will_retry_until: 3600,
        };
        let delayed = report_with(
            delay,
            Some(Ret::Full),
            Origin::Authenticated,
            small,
            &failed,
        );
        assert!(returned_part(&delayed).contains("Content-Type: text/rfc822-headers\r\n"));
        assert!(!delayed.contains("body line"), "{delayed}");
    }

    /// RFC 3464 §2.2.1 and §2.3.1: the client's ENVID and ORCPT come back in a bounce.
    #[test]
    fn a_bounce_carries_the_envelope_id_and_the_original_recipient() {
        let mut failed = route_failure();
        failed[0].orcpt = Some(Orcpt {
            addr_type: "rfc822".into(),
            address: "Nobody@Corp.test".into(),
        });
        for origin in [Origin::Stranger, Origin::Authenticated] {
            let text = report_for(origin, b"Subject: x\r\n\r\n", &failed);
            assert!(
                text.contains("Content-Description: Delivery report\r\n\r\nOriginal-Envelope-Id: ENV 1\r\nReporting-MTA: dns; mx.x.test\r\n"),
                "{text}"
            );
            assert!(
                text.contains("\r\n\r\nOriginal-Recipient: rfc822; Nobody@Corp.test\r\nFinal-Recipient: rfc822; nobody@corp.test\r\nAction: failed\r\n"),
                "{text}"
            );
        }
    }

    /// A delay notice (RFC 3464 `Action: delayed`): a transient status, when the retries end
    /// (`Will-Retry-Until`), and for a stranger no remote text or host, as in a bounce.
    #[test]
    fn a_delay_notice_says_delayed_and_until_when_it_is_retried() {
        let failed = vec![FailedRecipient {
            address: "nobody@corp.test".into(),
            failure: Failure::from_reply(
                &relayward_protocol::reply::Reply::enh(
                    451,
                    (4, 7, 1),
                    "not today at inside.corp.internal",
                ),
                "inside.corp.internal[10.0.0.5]:25",
                "RCPT TO",
            ),
            expired: false,
            orcpt: None,
        }];
        let delay = Kind::Delay {
            will_retry_until: 432_000,
        };
        let own = report_with(
            delay,
            None,
            Origin::Authenticated,
            b"Subject: x\r\n\r\n",
            &failed,
        );
        assert!(
            own.contains("Subject: Delayed Mail (still being retried)\r\n"),
            "{own}"
        );
        assert!(
            own.contains("Final-Recipient: rfc822; nobody@corp.test\r\nAction: delayed\r\nStatus: 4.7.1\r\nRemote-MTA: dns; inside.corp.internal\r\nDiagnostic-Code: smtp; 451 4.7.1 not today at inside.corp.internal\r\n"),
            "{own}"
        );
        assert!(
            own.contains("Last-Attempt-Date: Thu, 01 Jan 1970 00:01:00 +0000\r\nWill-Retry-Until: Tue, 06 Jan 1970 00:00:00 +0000\r\n"),
            "{own}"
        );
        assert!(
            own.contains("keep trying until\r\nTue, 06 Jan 1970 00:00:00 +0000"),
            "{own}"
        );
        assert!(
            own.contains("<nobody@corp.test>: still trying; last error: 451 4.7.1 not today"),
            "{own}"
        );
        let stranger = report_with(
            delay,
            None,
            Origin::Stranger,
            b"Subject: x\r\n\r\n",
            &failed,
        );
        for secret in [
            "inside.corp.internal",
            "10.0.0.5",
            "not today",
            "Remote-MTA",
        ] {
            assert!(!stranger.contains(secret), "{secret} in:\n{stranger}");
        }
        assert!(
            stranger.contains(
                "Action: delayed\r\nStatus: 4.7.1\r\nDiagnostic-Code: smtp; 451 4.7.1\r\n"
            ),
            "{stranger}"
        );
        assert!(stranger.contains("Will-Retry-Until: "), "{stranger}");
    }

    #[test]
    fn capping_never_cuts_a_field() {
        let headers = b"A: 1\r\nB: 2\r\n 3\r\nC: 4\r\n";
        assert_eq!(capped_at_a_field(headers, 100), headers);
        assert_eq!(capped_at_a_field(headers, 12), b"A: 1\r\n");
        assert_eq!(capped_at_a_field(headers, 17), b"A: 1\r\nB: 2\r\n 3\r\n");
        assert_eq!(capped_at_a_field(headers, 3), b"");
    }
}

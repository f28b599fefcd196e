//! RFC 3464 delivery status notifications (bounces).
//!
//! One DSN per message and attempt batch lists every recipient that failed in it, so a
//! message to fifty bad addresses produces one bounce, not fifty. The DSN is sent with the
//! null reverse-path (RFC 5321 §4.5.5) so that it can never bounce in turn; the runner never
//! bounces a message whose sender is null.

use std::fmt::Write as _;

use crate::outcome::Failure;

/// Why a recipient ends up in a bounce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRecipient {
    pub address: String,
    pub failure: Failure,
    /// Still pending when the queue lifetime ran out (Status 4.4.7 context).
    pub expired: bool,
}

/// What the report is about.
pub struct Report<'a> {
    /// Our host name (`Reporting-MTA`, `MAILER-DAEMON@…`).
    pub reporting_mta: &'a str,
    /// The envelope sender of the original message: the DSN's only recipient.
    pub original_sender: &'a str,
    pub original_id: &'a str,
    /// Unix seconds of arrival (`Arrival-Date`).
    pub arrived: u64,
    /// Unix seconds now (`Date`, `Last-Attempt-Date`).
    pub now: u64,
    pub recipients: &'a [FailedRecipient],
    /// The original content; only its header section goes into the report.
    pub original: &'a [u8],
}

/// Builds the DSN message (CRLF line ends), ready to enqueue.
pub fn build(report: &Report<'_>) -> Vec<u8> {
    let boundary =
        format!("{}/{}", report.original_id, report.reporting_mta).replace(['"', '\\'], "");
    let boundary = format!("=_relayward_{boundary}");
    let mut out = String::new();
    top_headers(&mut out, report, &boundary);
    out.push_str(&format!("--{boundary}\r\n"));
    human_part(&mut out, report);
    out.push_str(&format!("--{boundary}\r\n"));
    status_part(&mut out, report);
    out.push_str(&format!("--{boundary}\r\n"));
    out.push_str("Content-Type: text/rfc822-headers\r\n");
    out.push_str("Content-Description: Undelivered Message Headers\r\n\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&header_section(report.original));
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

fn top_headers(out: &mut String, report: &Report<'_>, boundary: &str) {
    let host = report.reporting_mta;
    let _ = write!(
        out,
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n\
         To: <{to}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.dsn.{now}@{host}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated delivery status notification.\r\n\r\n",
        to = report.original_sender,
        date = rfc5322_date(report.now),
        id = report.original_id,
        now = report.now,
    );
}

fn human_part(out: &mut String, report: &Report<'_>) {
    out.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    out.push_str("Content-Description: Notification\r\n\r\n");
    let _ = write!(
        out,
        "This is the mail system at {}.\r\n\r\n\
         Your message could not be delivered to one or more recipients.\r\n\
         It was accepted on {}. The details follow.\r\n\r\n",
        report.reporting_mta,
        rfc5322_date(report.arrived)
    );
    for r in report.recipients {
        let why = if r.expired {
            format!(
                "gave up after the maximum queue lifetime; last error: {}",
                r.failure.text
            )
        } else {
            r.failure.text.clone()
        };
        let _ = write!(out, "<{}>: {}\r\n", r.address, one_line(&why));
    }
    out.push_str("\r\n");
}

fn status_part(out: &mut String, report: &Report<'_>) {
    out.push_str("Content-Type: message/delivery-status\r\n");
    out.push_str("Content-Description: Delivery report\r\n\r\n");
    let _ = write!(
        out,
        "Reporting-MTA: dns; {}\r\nX-Relayward-Queue-ID: {}\r\nArrival-Date: {}\r\n",
        report.reporting_mta,
        report.original_id,
        rfc5322_date(report.arrived)
    );
    for r in report.recipients {
        out.push_str("\r\n");
        recipient_block(out, r, report.now);
    }
    out.push_str("\r\n");
}

fn recipient_block(out: &mut String, r: &FailedRecipient, now: u64) {
    let status = if r.expired && !r.failure.status.starts_with('5') {
        "4.4.7".to_string()
    } else {
        r.failure.status.clone()
    };
    let _ = write!(
        out,
        "Final-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\n",
        r.address, status
    );
    if let Some(mta) = &r.failure.remote_mta {
        let host = mta.split('[').next().unwrap_or(mta);
        let _ = write!(out, "Remote-MTA: dns; {host}\r\n");
    }
    let diagnostic = match &r.failure.smtp_reply {
        Some(reply) => format!("smtp; {}", one_line(reply)),
        None => format!("X-Relayward; {}", one_line(&r.failure.text)),
    };
    let _ = write!(
        out,
        "Diagnostic-Code: {diagnostic}\r\nLast-Attempt-Date: {}\r\n",
        rfc5322_date(now)
    );
}

fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
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
            failure: Failure::local("5.1.10", "far.test does not accept mail (null MX)"),
            expired: false,
        }];
        let original = b"Subject: hi\r\nFrom: a@x.test\r\n\r\nbody line\r\n";
        let dsn = build(&Report {
            reporting_mta: "mx.x.test",
            original_sender: "a@x.test",
            original_id: "Q1",
            arrived: 0,
            now: 60,
            recipients: &failed,
            original,
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
}

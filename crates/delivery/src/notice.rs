//! RFC 3461 success notices: "your message was delivered", for recipients whose sender asked
//! with `NOTIFY=SUCCESS` and whose mail relayward itself delivered into a Maildir.
//!
//! Mail relayed to a next hop that offers DSN carries the `NOTIFY` on, and that hop answers
//! for it — a stranger's without `SUCCESS` (see [`crate::prepare`]). Notices go only to senders who authenticated: an unauthenticated client can put
//! anyone's address in `MAIL FROM`, and a notice to that address would carry the client's
//! headers to a third party (backscatter). Like bounces, notices use the null reverse-path,
//! so they are never answered in turn.

use std::fmt::Write as _;

use relayward_protocol::dsn::Orcpt;

use crate::dsn::{
    NotificationHeader, Parts, header_section, notification_header, original_recipient,
    per_message_fields, rfc5322_date,
};

/// One delivered recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub address: String,
    /// `ORCPT=` as the client gave it (`Original-Recipient:`).
    pub orcpt: Option<Orcpt>,
}

/// What the notice is about.
pub struct SuccessReport<'a> {
    pub reporting_mta: &'a str,
    pub original_sender: &'a str,
    pub original_id: &'a str,
    /// `ENVID=` as the client gave it (`Original-Envelope-Id:`).
    pub envid: Option<&'a str>,
    pub arrived: u64,
    pub now: u64,
    pub recipients: &'a [Delivered],
    /// The original content; only its header section is returned.
    pub original: &'a [u8],
    /// The original was sent with SMTPUTF8: global report types (see `dsn::Parts`).
    pub smtputf8: bool,
}

/// Builds the notice (CRLF line ends), ready to enqueue with the null sender.
pub fn build_success(report: &SuccessReport<'_>) -> Vec<u8> {
    let boundary = format!(
        "=_relayward_ok_{}/{}",
        report.original_id, report.reporting_mta
    )
    .replace(['"', '\\'], "");
    let host = report.reporting_mta;
    let mut out = String::new();
    notification_header(
        &mut out,
        &NotificationHeader {
            host,
            to: report.original_sender,
            subject: "Successful Mail Delivery Report",
            kind: "ok",
            original_id: report.original_id,
            now: report.now,
            boundary: &boundary,
        },
    );
    let _ = write!(
        out,
        "--{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Description: Notification\r\n\r\n\
         This is the mail system at {host}.\r\n\r\n\
         Your message was delivered to the following recipients, as you asked:\r\n\r\n"
    );
    for r in report.recipients {
        let _ = write!(out, "<{}>: delivered to mailbox\r\n", r.address);
    }
    let _ = write!(out, "\r\n--{boundary}\r\n");
    let parts = Parts::for_original(report.smtputf8);
    per_message_fields(
        &mut out,
        parts,
        report.envid,
        host,
        report.original_id,
        report.arrived,
    );
    for r in report.recipients {
        out.push_str("\r\n");
        original_recipient(&mut out, r.orcpt.as_ref(), parts);
        let _ = write!(
            out,
            "Final-Recipient: {}\r\nAction: delivered\r\nStatus: 2.0.0\r\nLast-Attempt-Date: {}\r\n",
            parts.final_recipient(&r.address),
            rfc5322_date(report.now)
        );
    }
    let _ = write!(
        out,
        "\r\n--{boundary}\r\n\
         Content-Type: {}\r\n\
         Content-Description: Delivered Message Headers\r\n\r\n",
        parts.headers
    );
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&header_section(report.original));
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_success_notice_names_the_recipient_and_the_original_ids() {
        let delivered = [Delivered {
            address: "carol@example.test".into(),
            orcpt: Some(Orcpt {
                addr_type: "rfc822".into(),
                address: "Carol@Example.test".into(),
            }),
        }];
        let notice = build_success(&SuccessReport {
            reporting_mta: "mx.example.test",
            original_sender: "alice@example.test",
            original_id: "Q1",
            envid: Some("ENV-1"),
            arrived: 0,
            now: 60,
            recipients: &delivered,
            original: b"Subject: hi\r\n\r\nbody\r\n",
            smtputf8: false,
        });
        let text = String::from_utf8(notice).unwrap();
        assert!(text.contains("Original-Envelope-Id: ENV-1\r\n"));
        assert!(text.contains(
            "Original-Recipient: rfc822; Carol@Example.test\r\nFinal-Recipient: rfc822; carol@example.test\r\nAction: delivered\r\nStatus: 2.0.0\r\n"
        ));
        assert!(text.contains("Subject: hi\r\n") && !text.contains("body"));
    }
}

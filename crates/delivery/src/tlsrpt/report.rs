//! The RFC 8460 report itself: the JSON (§4), gzip-compressed (§5.1), and for `mailto:`
//! destinations the message that carries it (§5.3: `multipart/report; report-type=tlsrpt`,
//! the `TLS-Report-Domain` and `TLS-Report-Submitter` header fields, the subject
//! `Report Domain: D Submitter: S Report-ID: <ID>`, the attachment
//! `application/tlsrpt+gzip` named `submitter!domain!start!end.json.gz`).

use std::io::Write as _;
use std::net::IpAddr;
use std::time::{Duration, UNIX_EPOCH};

use flate2::Compression;
use flate2::write::GzEncoder;
use mail_builder::MessageBuilder;
use mail_builder::headers::HeaderType;
use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::text::Text;
use mail_builder::mime::{BodyPart, MimePart};
use serde::{Deserialize, Serialize};

use super::book::{Period, PolicyType, Tally};

/// The media type of a compressed report (§6.4), for mail parts and HTTPS bodies alike.
pub const MEDIA_TYPE: &str = "application/tlsrpt+gzip";

/// Who sends the reports (from `[tls_report]` and `hostname`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reporter {
    pub organization: String,
    pub contact: String,
    /// The domain of the `from` address (`TLS-Report-Submitter`).
    pub submitter: String,
    pub from: String,
}

/// An RFC 8460 §4.4 report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    #[serde(rename = "organization-name")]
    pub organization_name: String,
    #[serde(rename = "date-range")]
    pub date_range: DateRange,
    #[serde(rename = "contact-info")]
    pub contact_info: String,
    #[serde(rename = "report-id")]
    pub report_id: String,
    pub policies: Vec<PolicyReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DateRange {
    #[serde(rename = "start-datetime")]
    pub start_datetime: String,
    #[serde(rename = "end-datetime")]
    pub end_datetime: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyReport {
    pub policy: PolicyDetails,
    pub summary: Summary,
    #[serde(rename = "failure-details")]
    pub failure_details: Vec<FailureDetails>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDetails {
    #[serde(rename = "policy-type")]
    pub policy_type: PolicyType,
    #[serde(rename = "policy-string")]
    pub policy_string: Vec<String>,
    #[serde(rename = "policy-domain")]
    pub policy_domain: String,
    #[serde(rename = "mx-host", default, skip_serializing_if = "Vec::is_empty")]
    pub mx_host: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    #[serde(rename = "total-successful-session-count")]
    pub total_successful_session_count: u64,
    #[serde(rename = "total-failure-session-count")]
    pub total_failure_session_count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureDetails {
    #[serde(rename = "result-type")]
    pub result_type: String,
    #[serde(rename = "sending-mta-ip", skip_serializing_if = "Option::is_none")]
    pub sending_mta_ip: Option<IpAddr>,
    #[serde(rename = "receiving-mx-hostname")]
    pub receiving_mx_hostname: String,
    #[serde(rename = "receiving-ip", skip_serializing_if = "Option::is_none")]
    pub receiving_ip: Option<IpAddr>,
    #[serde(rename = "failed-session-count")]
    pub failed_session_count: u64,
    #[serde(
        rename = "failure-reason-code",
        skip_serializing_if = "Option::is_none"
    )]
    pub failure_reason_code: Option<String>,
}

impl Report {
    /// The report on `domain` for `period`: every policy of the domain with its counts. The
    /// id names the period, the domain and the submitter, so a period sent again after a
    /// crash keeps its ids (receivers can tell the repetition).
    pub fn build(reporter: &Reporter, domain: &str, period: &Period) -> Report {
        let policies = period
            .tallies
            .iter()
            .filter(|t| t.policy.domain == domain)
            .map(policy_report)
            .collect();
        Report {
            organization_name: reporter.organization.clone(),
            date_range: DateRange {
                start_datetime: rfc3339(period.start),
                // §4.4's example ends a day at 23:59:59Z: the last second of the period.
                end_datetime: rfc3339(period.end.saturating_sub(1).max(period.start)),
            },
            contact_info: reporter.contact.clone(),
            report_id: format!(
                "{}.{}.{domain}@{}",
                period.start, period.end, reporter.submitter
            ),
            policies,
        }
    }

    /// The JSON, gzip-compressed.
    pub fn gzip(&self) -> std::io::Result<Vec<u8>> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(&json)?;
        encoder.finish()
    }

    /// The domain the report is about.
    pub fn domain(&self) -> &str {
        self.policies
            .first()
            .map(|p| p.policy.policy_domain.as_str())
            .unwrap_or("")
    }

    /// The attachment's file name (§5.1): `submitter!domain!start!end.json.gz`, Unix seconds.
    pub fn file_name(&self, reporter: &Reporter, period: &Period) -> String {
        format!(
            "{}!{}!{}!{}.json.gz",
            reporter.submitter,
            self.domain(),
            period.start,
            period.end
        )
    }

    /// The message for `mailto:` destinations (§5.3), CRLF line ends, ready for the queue.
    pub fn message(
        &self,
        reporter: &Reporter,
        period: &Period,
        recipients: &[String],
    ) -> std::io::Result<Vec<u8>> {
        let domain = self.domain();
        let gzip = self.gzip()?;
        let to: Vec<Address<'_>> = recipients
            .iter()
            .map(|r| Address::new_address(None::<&str>, r.as_str()))
            .collect();
        let text = format!(
            "This is an aggregate TLS report (RFC 8460) from {}.\r\n\r\nReport Domain: {domain}\r\nSubmitter: {}\r\nReport-ID: <{}>\r\nPeriod: {} to {}\r\n",
            reporter.organization,
            reporter.submitter,
            self.report_id,
            self.date_range.start_datetime,
            self.date_range.end_datetime
        );
        MessageBuilder::new()
            .from(Address::new_address(None::<&str>, reporter.from.as_str()))
            .to(Address::new_list(to))
            // Raw: §5.3 spells the subject out, and an encoded word would hide it.
            .header(
                "Subject",
                HeaderType::Raw(Raw::new(format!(
                    "Report Domain: {domain} Submitter: {} Report-ID: <{}>",
                    reporter.submitter, self.report_id
                ))),
            )
            .message_id(self.report_id.clone())
            .header("TLS-Report-Domain", HeaderType::Text(Text::new(domain)))
            .header(
                "TLS-Report-Submitter",
                HeaderType::Text(Text::new(reporter.submitter.as_str())),
            )
            .header(
                "Auto-Submitted",
                HeaderType::Text(Text::new("auto-generated")),
            )
            .body(MimePart::new(
                ContentType::new("multipart/report").attribute("report-type", "tlsrpt"),
                BodyPart::Multipart(vec![
                    MimePart::new(ContentType::new("text/plain"), BodyPart::Text(text.into())),
                    MimePart::new(ContentType::new(MEDIA_TYPE), BodyPart::Binary(gzip.into()))
                        .attachment(self.file_name(reporter, period)),
                ]),
            ))
            .write_to_vec()
    }
}

fn policy_report(tally: &Tally) -> PolicyReport {
    PolicyReport {
        policy: PolicyDetails {
            policy_type: tally.policy.policy_type,
            policy_string: tally.policy.strings.clone(),
            policy_domain: tally.policy.domain.clone(),
            mx_host: tally.policy.mx_host.clone(),
        },
        summary: Summary {
            total_successful_session_count: tally.successes,
            total_failure_session_count: tally.failures,
        },
        failure_details: tally
            .details
            .iter()
            .map(|d| FailureDetails {
                result_type: d.key.result_type.clone(),
                sending_mta_ip: d.key.sending_ip,
                receiving_mx_hostname: d.key.receiving_mx_hostname.clone(),
                receiving_ip: d.key.receiving_ip,
                failed_session_count: d.count,
                failure_reason_code: d.key.reason.clone(),
            })
            .collect(),
    }
}

/// `2026-12-01T00:00:00Z`.
pub(crate) fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mta_sts::{StsMode, StsPolicy};
    use crate::tlsrpt::book::{FailureCount, FailureKey, ReportPolicy};

    fn reporter() -> Reporter {
        Reporter {
            organization: "Example Ltd".into(),
            contact: "tlsrpt@example.test".into(),
            submitter: "example.test".into(),
            from: "tlsrpt@example.test".into(),
        }
    }

    fn period() -> Period {
        let policy = StsPolicy {
            mode: StsMode::Enforce,
            mx: vec!["mx.strict.test".into()],
            max_age: 86_400,
        };
        Period {
            start: 1_764_547_200,
            end: 1_764_633_600,
            tallies: vec![Tally {
                policy: ReportPolicy::sts("strict.test", &policy),
                successes: 3,
                failures: 1,
                details: vec![FailureCount {
                    key: FailureKey {
                        result_type: "certificate-not-trusted".into(),
                        sending_ip: None,
                        receiving_ip: Some("192.0.2.25".parse().expect("ip")),
                        receiving_mx_hostname: "mx.strict.test".into(),
                        reason: None,
                    },
                    count: 1,
                }],
            }],
        }
    }

    #[test]
    fn the_json_has_rfc_8460_names_and_a_utc_day() {
        let report = Report::build(&reporter(), "strict.test", &period());
        let json: serde_json::Value = serde_json::to_value(&report).expect("json");
        assert_eq!(json["date-range"]["start-datetime"], "2025-12-01T00:00:00Z");
        assert_eq!(json["date-range"]["end-datetime"], "2025-12-01T23:59:59Z");
        let policy = &json["policies"][0];
        assert_eq!(policy["policy"]["policy-type"], "sts");
        assert_eq!(policy["policy"]["policy-string"][1], "mode: enforce");
        assert_eq!(policy["policy"]["mx-host"][0], "mx.strict.test");
        assert_eq!(policy["summary"]["total-successful-session-count"], 3);
        let detail = &policy["failure-details"][0];
        assert_eq!(detail["result-type"], "certificate-not-trusted");
        assert!(
            detail.get("sending-mta-ip").is_none(),
            "unknown: left out, not null"
        );
        assert_eq!(
            report.report_id,
            "1764547200.1764633600.strict.test@example.test"
        );
    }

    #[test]
    fn the_message_is_a_tlsrpt_multipart_report() {
        let period = period();
        let report = Report::build(&reporter(), "strict.test", &period);
        let message = report
            .message(&reporter(), &period, &["rua@strict.test".to_string()])
            .expect("message");
        // Unfolded (RFC 5322 §2.2.3): a long subject is folded at a space.
        let text = String::from_utf8_lossy(&message).replace("\r\n ", " ");
        for needle in [
            "TLS-Report-Domain: strict.test\r\n",
            "TLS-Report-Submitter: example.test\r\n",
            "Subject: Report Domain: strict.test Submitter: example.test Report-ID: <1764547200.1764633600.strict.test@example.test>",
            "report-type=\"tlsrpt\"",
            "Content-Type: application/tlsrpt+gzip",
            "example.test!strict.test!1764547200!1764633600.json.gz",
        ] {
            assert!(text.contains(needle), "{needle:?} missing:\n{text}");
        }
        assert!(relayward_protocol::header::is_automatic(&message));
    }
}

//! `[tls_report]`: TLS-RPT (RFC 8460) aggregate reports, an optional feature (off by default).
//!
//! When enabled, the delivery side counts, per recipient domain that publishes a TLS policy
//! (MTA-STS or DANE) and per interval, the sessions that met it and those that failed, and at
//! the end of each interval sends one report to each such domain that asks for them with a
//! `_smtp._tls` TXT record. Only the settings and their checks live here; the counting and
//! the reports are `relayward_delivery::tlsrpt`'s.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Findings;

/// RFC 8460 §4.1: a report covers a full UTC day.
pub const DAY: Duration = Duration::from_secs(24 * 3600);

/// Shortest interval accepted: anything shorter floods the receivers with reports.
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);

/// `[tls_report]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsReportSettings {
    /// Count TLS outcomes and send reports. Default `false`: nothing is counted or sent.
    pub enabled: bool,
    /// `organization-name` of the reports; default: `hostname`.
    pub organization: Option<String>,
    /// `contact-info` of the reports (an address or a URL); default: the `from` address.
    pub contact: Option<String>,
    /// `From:` and envelope sender of reports sent by mail; default `postmaster@HOSTNAME`.
    /// Its domain is the report's submitter (`TLS-Report-Submitter`).
    pub from: Option<String>,
    /// Length of one report's period, aligned to the Unix epoch (so `"1d"` is a UTC day).
    #[serde(
        deserialize_with = "crate::de_duration",
        serialize_with = "crate::ser_duration"
    )]
    pub interval: Duration,
    /// Wait before the first new attempt at an `https:` destination whose POST failed; each
    /// later one waits three times longer, for up to 24 hours (RFC 8460 §5.3).
    #[serde(
        deserialize_with = "crate::de_duration",
        serialize_with = "crate::ser_duration"
    )]
    pub retry_after: Duration,
}

/// Default [`TlsReportSettings::retry_after`].
pub const RETRY_AFTER: Duration = Duration::from_secs(300);

impl Default for TlsReportSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            organization: None,
            contact: None,
            from: None,
            interval: DAY,
            retry_after: RETRY_AFTER,
        }
    }
}

impl TlsReportSettings {
    /// The `from` address in force.
    pub fn from_address(&self, hostname: &str) -> String {
        self.from
            .clone()
            .unwrap_or_else(|| format!("postmaster@{}", hostname.to_ascii_lowercase()))
    }

    /// The submitter: the domain of the `from` address.
    pub fn submitter(&self, hostname: &str) -> String {
        let from = self.from_address(hostname);
        from.rsplit_once('@')
            .map(|(_, domain)| domain.to_ascii_lowercase())
            .unwrap_or(from)
    }

    /// `organization-name`: the setting, or the host name.
    pub fn organization_name(&self, hostname: &str) -> String {
        self.organization
            .clone()
            .unwrap_or_else(|| hostname.to_string())
    }

    /// `contact-info`: the setting, or the `from` address.
    pub fn contact_info(&self, hostname: &str) -> String {
        self.contact
            .clone()
            .unwrap_or_else(|| self.from_address(hostname))
    }
}

/// Checks `[tls_report]` (only when enabled: a disabled section is never used).
pub(crate) fn check(settings: &TlsReportSettings, f: &mut Findings) {
    if !settings.enabled {
        return;
    }
    if settings.interval < MIN_INTERVAL {
        f.error(
            "tls_report.interval",
            format!(
                "{} is too short: reports that often flood their receivers; write \"1d\" (RFC 8460 reports cover a UTC day)",
                humantime::format_duration(settings.interval)
            ),
        );
    } else if settings.interval != DAY {
        f.warn(
            "tls_report.interval",
            format!(
                "reports every {} instead of daily: RFC 8460 §4.1 expects one report per UTC day, and receivers may discard others",
                humantime::format_duration(settings.interval)
            ),
        );
    }
    if settings.retry_after < Duration::from_secs(1) {
        f.error(
            "tls_report.retry_after",
            "must be at least \"1s\" (the default \"5m\" suits report servers)",
        );
    }
    if let Some(from) = &settings.from
        && !crate::checks::valid_address(from)
    {
        f.error(
            "tls_report.from",
            format!(
                "{from:?} is not a mail address; write e.g. \"tlsrpt@example.test\" (reports are sent from it)"
            ),
        );
    }
    for (key, value) in [
        ("tls_report.organization", &settings.organization),
        ("tls_report.contact", &settings.contact),
    ] {
        if value
            .as_deref()
            .is_some_and(|v| v.trim().is_empty() || v.chars().any(char::is_control))
        {
            f.error(
                key,
                "must be non-empty text without control characters, or left out for the default",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn parse(extra: &str) -> Config {
        Config::from_toml_str(
            &format!("hostname = \"mx.example.test\"\ndata_dir = \"/tmp/x\"\n{extra}"),
            "test",
        )
        .expect("parses")
    }

    fn problems(config: &Config) -> Vec<crate::ConfigProblem> {
        let mut f = Findings::default();
        check(&config.tls_report, &mut f);
        f.into_problems()
    }

    #[test]
    fn off_by_default_daily_from_postmaster() {
        let config = parse("");
        assert!(!config.tls_report.enabled);
        assert_eq!(config.tls_report.interval, DAY);
        assert_eq!(config.tls_report.retry_after, RETRY_AFTER);
        assert_eq!(
            config.tls_report.from_address("MX.example.test"),
            "postmaster@mx.example.test"
        );
        assert_eq!(
            config.tls_report.contact_info("mx.example.test"),
            "postmaster@mx.example.test"
        );
        assert_eq!(
            config.tls_report.organization_name("mx.example.test"),
            "mx.example.test"
        );
    }

    #[test]
    fn settings_are_read_and_checked() {
        let config = parse(
            "[tls_report]\nenabled = true\norganization = \"Example Ltd\"\ncontact = \"https://example.test/tls\"\nfrom = \"tlsrpt@example.test\"\ninterval = \"1d\"\n",
        );
        assert!(config.tls_report.enabled);
        assert_eq!(
            config.tls_report.submitter("mx.example.test"),
            "example.test"
        );
        assert!(problems(&config).is_empty(), "{:?}", problems(&config));

        let config = parse(
            "[tls_report]\nenabled = true\nfrom = \"not an address\"\ninterval = \"10s\"\nretry_after = \"0s\"\n",
        );
        let found = problems(&config);
        let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "tls_report.interval",
                "tls_report.retry_after",
                "tls_report.from"
            ],
            "{found:?}"
        );

        let config = parse("[tls_report]\nenabled = true\ninterval = \"1h\"\n");
        let found = problems(&config);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].severity, crate::Severity::Warning);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let error = Config::from_toml_str(
            "hostname = \"h.test\"\ndata_dir = \"/tmp/x\"\n[tls_report]\nenable = true\n",
            "test",
        )
        .expect_err("refused")
        .to_string();
        assert!(error.contains("enable"), "{error}");
    }
}

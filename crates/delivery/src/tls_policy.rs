//! Which TLS each MX host of a recipient domain gets, and what came of it.
//!
//! Decided once per delivery attempt and domain ([`DomainTls`]), then per host
//! ([`DomainTls::plan`]):
//!
//! | domain's policy                  | host                         | plan                     |
//! |----------------------------------|------------------------------|--------------------------|
//! | `[[tls_policy]] mode = "none"`, `tls_policy = "opportunistic"`, nothing published | any | opportunistic |
//! | `[[tls_policy]] mode = "require-verified"` | any                | verified, else wait      |
//! | MTA-STS `enforce`                | named by the policy          | verified, else wait      |
//! | MTA-STS `enforce`                | not named                    | not used                 |
//! | MTA-STS `testing`                | any                          | verified, else report and go on opportunistically |
//! | any but `none` / `opportunistic` | authenticated TLSA records   | DANE, else wait          |
//!
//! "Verified" is STARTTLS with a certificate for the MX host name under the web PKI roots plus
//! `tls_policy_ca_file`; a host that cannot give it is skipped like an unreachable one, and
//! when no host could, the recipients are deferred: mail under a policy never goes in clear.
//!
//! Every connection (and every host refused by a policy) yields a [`TlsOutcome`]: logged,
//! counted, and kept by the runner for reports.

use std::net::IpAddr;
use std::sync::Arc;

use crate::dane::{TlsaAnswer, TlsaRecord};
use crate::mta_sts::{StsMode, StsPolicy};
use crate::outcome::Failure;

/// The policy that applied to a connection (the `policy` label of
/// `relayward_tls_policy_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    /// An MTA-STS policy in `enforce` mode.
    MtaSts,
    /// An MTA-STS policy in `testing` mode: failures reported, not enforced.
    MtaStsTesting,
    /// DANE TLSA records (RFC 7672).
    Dane,
    /// The admin's `[[tls_policy]] mode = "require-verified"`.
    RequireVerified,
    /// No policy: STARTTLS when offered, any certificate.
    Opportunistic,
}

impl PolicyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::MtaSts => "mta-sts",
            PolicyKind::MtaStsTesting => "mta-sts-testing",
            PolicyKind::Dane => "dane",
            PolicyKind::RequireVerified => "require-verified",
            PolicyKind::Opportunistic => "opportunistic",
        }
    }
}

/// What TLS a connection got (the `result` label of `relayward_tls_policy_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TlsResult {
    /// TLS with a certificate the policy verified.
    Verified,
    /// TLS, certificate not checked (opportunistic).
    Encrypted,
    /// No TLS (opportunistic, the host offered none or the handshake failed).
    Cleartext,
    /// The policy's demand was not met: the host was not used (or, in testing mode, used
    /// without verification).
    Failed,
}

impl TlsResult {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsResult::Verified => "verified",
            TlsResult::Encrypted => "encrypted",
            TlsResult::Cleartext => "cleartext",
            TlsResult::Failed => "failed",
        }
    }
}

/// One connection's TLS under the domain's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOutcome {
    /// The recipient domain (the policy domain).
    pub domain: String,
    /// The MX host.
    pub host: String,
    pub policy: PolicyKind,
    pub result: TlsResult,
    /// For failures: the RFC 8460 §4.3 result type (`certificate-host-mismatch`, …).
    pub result_type: Option<&'static str>,
    /// For failures: what happened, for the log and the queue entry.
    pub detail: Option<String>,
    /// Our address on the connection (TLS-RPT's `sending-mta-ip`); `None` without one.
    pub sending_ip: Option<IpAddr>,
    /// The MX host's address (`receiving-ip`); `None` for a host not connected to.
    pub receiving_ip: Option<IpAddr>,
}

impl TlsOutcome {
    /// `policy=mta-sts result=verified host=mx.example` and, for a failure, its type and
    /// detail: the form kept in the queue entry and shown by `relayward queue show`.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "policy={} result={} host={}",
            self.policy.as_str(),
            self.result.as_str(),
            self.host
        );
        if let Some(kind) = self.result_type {
            text.push_str(&format!(" type={kind}"));
        }
        if let Some(detail) = &self.detail {
            text.push_str(&format!(" ({detail})"));
        }
        text
    }
}

/// A recipient domain's TLS policy for one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainTls {
    /// Nothing demanded: STARTTLS when offered.
    Opportunistic,
    /// `[[tls_policy]] mode = "require-verified"`.
    RequireVerified,
    /// A published MTA-STS policy in `enforce` or `testing` mode.
    MtaSts(Arc<StsPolicy>),
}

/// How one MX host is to be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPlan {
    /// STARTTLS when offered, any certificate; clear text otherwise.
    Opportunistic,
    /// STARTTLS with a certificate verified for the host name, or the host is not used.
    Verified(PolicyKind),
    /// Verified if possible; a failure is reported and the host used opportunistically
    /// (MTA-STS `testing`).
    VerifiedOrReport(PolicyKind),
    /// Not to be used at all (MTA-STS `enforce` does not name it, its TLSA lookup failed).
    Refused {
        failure: Failure,
        outcome: TlsOutcome,
    },
    /// DANE: STARTTLS with a certificate the host's authenticated TLSA records describe, or
    /// the host is not used.
    Dane(Arc<Vec<TlsaRecord>>),
    /// DANE records exist but none is usable: STARTTLS required, certificate not checked.
    EncryptedOnly,
}

impl HostPlan {
    /// The plan for a host after its TLSA lookup: DANE when it has authenticated records
    /// (RFC 7672 takes precedence over MTA-STS and `require-verified`, which it satisfies),
    /// `otherwise` when it has none.
    pub fn with_dane(
        answer: TlsaAnswer,
        domain: &str,
        host: &str,
        otherwise: HostPlan,
    ) -> HostPlan {
        match answer {
            TlsaAnswer::None => otherwise,
            TlsaAnswer::Usable(records) => HostPlan::Dane(records),
            TlsaAnswer::Unusable => HostPlan::EncryptedOnly,
            TlsaAnswer::Failed(why) => {
                let detail = format!(
                    "DANE: {why}; {host} is not used until its TLSA records can be validated"
                );
                HostPlan::Refused {
                    failure: Failure::local((4, 7, 5), detail.clone()),
                    outcome: TlsOutcome {
                        domain: domain.to_string(),
                        host: host.to_string(),
                        policy: PolicyKind::Dane,
                        result: TlsResult::Failed,
                        result_type: Some("dnssec-invalid"),
                        detail: Some(detail),
                        sending_ip: None,
                        receiving_ip: None,
                    },
                }
            }
        }
    }
}

impl DomainTls {
    /// The domain's policy from its published MTA-STS policy (`None` or mode `none`: no
    /// policy).
    pub fn from_sts(policy: Option<Arc<StsPolicy>>) -> DomainTls {
        match policy {
            Some(policy) if policy.mode != StsMode::None => DomainTls::MtaSts(policy),
            _ => DomainTls::Opportunistic,
        }
    }

    /// How to use `host`, an MX host of `domain`.
    pub fn plan(&self, domain: &str, host: &str) -> HostPlan {
        match self {
            DomainTls::Opportunistic => HostPlan::Opportunistic,
            DomainTls::RequireVerified => HostPlan::Verified(PolicyKind::RequireVerified),
            DomainTls::MtaSts(policy) => match (policy.mode, policy.allows(host)) {
                (StsMode::Enforce, true) => HostPlan::Verified(PolicyKind::MtaSts),
                (StsMode::Enforce, false) => {
                    let detail = format!(
                        "MX host {host} is not named by the MTA-STS policy of {domain} (mode enforce)"
                    );
                    HostPlan::Refused {
                        failure: Failure::local((4, 7, 5), detail.clone()),
                        outcome: TlsOutcome {
                            domain: domain.to_string(),
                            host: host.to_string(),
                            policy: PolicyKind::MtaSts,
                            result: TlsResult::Failed,
                            result_type: Some("validation-failure"),
                            detail: Some(detail),
                            sending_ip: None,
                            receiving_ip: None,
                        },
                    }
                }
                _ => HostPlan::VerifiedOrReport(PolicyKind::MtaStsTesting),
            },
        }
    }

    /// Whether a host under this policy that is not named by it should be reported (MTA-STS
    /// testing mode: it is used, and the mismatch is reported).
    pub fn testing_mismatch(&self, host: &str) -> bool {
        matches!(self, DomainTls::MtaSts(policy) if policy.mode == StsMode::Testing && !policy.allows(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts(mode: StsMode) -> DomainTls {
        DomainTls::MtaSts(Arc::new(StsPolicy {
            mode,
            mx: vec!["mx.good.test".into()],
            max_age: 60,
        }))
    }

    #[test]
    fn enforce_refuses_hosts_the_policy_does_not_name() {
        let policy = sts(StsMode::Enforce);
        assert_eq!(
            policy.plan("good.test", "mx.good.test"),
            HostPlan::Verified(PolicyKind::MtaSts)
        );
        let HostPlan::Refused { failure, outcome } = policy.plan("good.test", "evil.test") else {
            panic!("a host outside the policy must not be used");
        };
        assert_eq!(failure.status.to_string(), "4.7.5");
        assert_eq!(outcome.result, TlsResult::Failed);
        assert!(
            outcome
                .summary()
                .contains("not named by the MTA-STS policy")
        );
    }

    #[test]
    fn testing_tries_verified_and_reports() {
        let policy = sts(StsMode::Testing);
        assert_eq!(
            policy.plan("good.test", "evil.test"),
            HostPlan::VerifiedOrReport(PolicyKind::MtaStsTesting)
        );
        assert!(policy.testing_mismatch("evil.test"));
        assert!(!policy.testing_mismatch("mx.good.test"));
    }

    #[test]
    fn mode_none_and_no_policy_are_opportunistic() {
        assert_eq!(DomainTls::from_sts(None), DomainTls::Opportunistic);
        let none = Arc::new(StsPolicy {
            mode: StsMode::None,
            mx: vec![],
            max_age: 60,
        });
        assert_eq!(DomainTls::from_sts(Some(none)), DomainTls::Opportunistic);
        assert_eq!(
            DomainTls::RequireVerified.plan("d.test", "any.test"),
            HostPlan::Verified(PolicyKind::RequireVerified)
        );
    }
}

//! Outbound TLS policy for MX delivery: `[delivery] tls_policy` and the per-domain
//! `[[tls_policy]]` overrides.
//!
//! Only the settings and their checks live here; discovering MTA-STS policies (RFC 8461) and
//! DANE TLSA records (RFC 7672) and applying them per MX host is `relayward_delivery`'s
//! (`mta_sts`, `dane`, `tls_policy`). The smart host is not affected: it is always verified
//! (`smarthost_tls`), and `[[route]]` targets are named by the admin, not found in DNS.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Findings;

/// `[delivery] tls_policy`: what the recipient domain may demand of our TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum TlsPolicyMode {
    /// STARTTLS when offered, any certificate, clear text otherwise (RFC 3207, RFC 7435);
    /// MTA-STS and DANE are not looked up.
    #[serde(rename = "opportunistic")]
    Opportunistic,
    /// MTA-STS policies and DANE TLSA records are honoured: a domain that publishes one gets
    /// verified TLS or no mail (deferred, never sent in clear). Opportunistic otherwise.
    #[default]
    #[serde(rename = "mta-sts-dane")]
    MtaStsDane,
}

impl TlsPolicyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsPolicyMode::Opportunistic => "opportunistic",
            TlsPolicyMode::MtaStsDane => "mta-sts-dane",
        }
    }
}

impl fmt::Display for TlsPolicyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[tls_policy]]`: the admin's own rule for a recipient domain, which wins over what
/// the domain publishes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DomainTlsPolicy {
    /// The recipient domain (exact match, as an A-label), e.g. `"bank.example"`.
    pub domain: String,
    pub mode: DomainTlsMode,
}

/// `mode` of a `[[tls_policy]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum DomainTlsMode {
    /// Every MX host must offer STARTTLS with a certificate verified for its MX name (by DANE
    /// where the host has authenticated TLSA records, by the web PKI roots plus
    /// `tls_policy_ca_file` otherwise); else the mail waits. Postfix's `secure`.
    #[serde(rename = "require-verified")]
    RequireVerified,
    /// Opportunistic STARTTLS whatever the domain publishes (MTA-STS and DANE ignored): the
    /// way out for a domain whose published policy is broken.
    #[serde(rename = "none")]
    None,
}

impl DomainTlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DomainTlsMode::RequireVerified => "require-verified",
            DomainTlsMode::None => "none",
        }
    }
}

impl fmt::Display for DomainTlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The override for `domain` (compared without case), if any.
pub fn override_for(policies: &[DomainTlsPolicy], domain: &str) -> Option<DomainTlsMode> {
    policies
        .iter()
        .find(|p| p.domain.eq_ignore_ascii_case(domain.trim_end_matches('.')))
        .map(|p| p.mode)
}

/// Checks `[[tls_policy]]`: valid domains, each named once.
pub(crate) fn check(policies: &[DomainTlsPolicy], f: &mut Findings) {
    let mut seen = HashSet::new();
    for (i, policy) in policies.iter().enumerate() {
        let key = format!("tls_policy[{i}].domain");
        let domain = policy.domain.to_ascii_lowercase();
        if !crate::checks::valid_domain(&domain) {
            f.error(
                key,
                format!(
                    "{:?} is not a domain name; write the recipient domain, e.g. \"bank.example\" (IDNs as A-labels)",
                    policy.domain
                ),
            );
            continue;
        }
        if !seen.insert(domain.clone()) {
            f.error(
                key,
                format!("{domain} has more than one [[tls_policy]]; keep one"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn parse(extra: &str) -> Result<Config, crate::ConfigError> {
        Config::from_toml_str(
            &format!("hostname = \"mx.example.test\"\ndata_dir = \"/tmp/x\"\n{extra}"),
            "test",
        )
    }

    #[test]
    fn default_is_mta_sts_dane_and_overrides_are_read() {
        let config = parse(
            "[delivery]\n\n[[tls_policy]]\ndomain = \"Bank.Example\"\nmode = \"require-verified\"\n\n[[tls_policy]]\ndomain = \"broken.example\"\nmode = \"none\"\n",
        )
        .expect("parses");
        assert_eq!(config.delivery.tls_policy, TlsPolicyMode::MtaStsDane);
        assert_eq!(
            override_for(&config.tls_policies, "bank.example"),
            Some(DomainTlsMode::RequireVerified)
        );
        assert_eq!(
            override_for(&config.tls_policies, "broken.example."),
            Some(DomainTlsMode::None)
        );
        assert_eq!(override_for(&config.tls_policies, "other.example"), None);
    }

    #[test]
    fn unknown_modes_are_refused_with_the_key() {
        let error = parse("[delivery]\ntls_policy = \"dane-only\"\n")
            .expect_err("refused")
            .to_string();
        assert!(error.contains("tls_policy"), "{error}");
        let error = parse("[[tls_policy]]\ndomain = \"a.example\"\nmode = \"verify\"\n")
            .expect_err("refused")
            .to_string();
        assert!(error.contains("require-verified"), "{error}");
    }

    #[test]
    fn duplicate_and_invalid_domains_are_errors() {
        let config = parse(
            "[[tls_policy]]\ndomain = \"a.example\"\nmode = \"none\"\n\n[[tls_policy]]\ndomain = \"A.example\"\nmode = \"require-verified\"\n\n[[tls_policy]]\ndomain = \"not a domain\"\nmode = \"none\"\n",
        )
        .expect("parses");
        let mut f = Findings::default();
        check(&config.tls_policies, &mut f);
        let problems = f.into_problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].key, "tls_policy[1].domain");
        assert_eq!(problems[1].key, "tls_policy[2].domain");
    }
}

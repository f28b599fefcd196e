//! `[[dkim]]`: the keys relayward signs relayed mail with (RFC 6376, RFC 8463).
//!
//! Only the settings live here; loading the keys and signing is
//! `relayward_delivery::dkim`, and which messages are signed is decided by the session
//! (mail relayed for an authenticated user or a trusted network, never mail that only goes
//! to local Maildirs).

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Findings;

/// Header fields signed when `headers` is not given. `From` is required by RFC 6376 §5.4;
/// the rest are the fields a receiver shows or threads by, and the MIME fields that say how
/// to read the body. Fields a message lacks are named in `h=` all the same ("oversigning",
/// RFC 6376 §8.15): nobody on the way can add one without breaking the signature.
pub const DEFAULT_SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// One `[[dkim]]` key. Two entries for one domain (say one `rsa-sha256` and one
/// `ed25519-sha256`) both sign: dual signatures, as RFC 8463 §4 suggests while receivers
/// learn Ed25519.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKey {
    /// The signing domain (`d=`); mail whose `From:` is in this domain is signed with it.
    pub domain: String,
    /// The selector (`s=`): the key's DNS record is `SELECTOR._domainkey.DOMAIN`.
    pub selector: String,
    /// PEM private key: PKCS#8 (`PRIVATE KEY`) for either algorithm, or PKCS#1
    /// (`RSA PRIVATE KEY`) for RSA. `relayward dkim keygen` writes one.
    pub private_key_file: PathBuf,
    #[serde(default)]
    pub algorithm: DkimAlgorithm,
    /// Header fields to sign; default [`DEFAULT_SIGNED_HEADERS`]. Must include `From`.
    #[serde(default)]
    pub headers: Option<Vec<String>>,
}

impl DkimKey {
    /// The header fields this key signs.
    pub fn signed_headers(&self) -> Vec<String> {
        match &self.headers {
            Some(list) => list.clone(),
            None => DEFAULT_SIGNED_HEADERS
                .iter()
                .map(|h| (*h).to_owned())
                .collect(),
        }
    }
}

/// `algorithm`: the signature's `a=`. RSA is the default because every receiver verifies
/// it; Ed25519 (RFC 8463) is short and fast but not yet verified everywhere.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum DkimAlgorithm {
    #[default]
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

impl DkimAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa-sha256",
            DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }

    /// The `k=` tag of the key's DNS record.
    pub fn key_type(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa",
            DkimAlgorithm::Ed25519Sha256 => "ed25519",
        }
    }
}

impl fmt::Display for DkimAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `selector` can be a DNS name in front of `._domainkey.`: dot-separated LDH labels.
pub fn valid_selector(selector: &str) -> bool {
    !selector.is_empty()
        && selector.len() <= 63 * 4
        && selector.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

pub(crate) fn check(keys: &[DkimKey], f: &mut Findings) {
    let mut seen = HashSet::new();
    for (i, key) in keys.iter().enumerate() {
        if !crate::checks::valid_domain(&key.domain) {
            f.error(
                format!("dkim[{i}].domain"),
                format!(
                    "{:?} is not a domain name; write the domain of the From: addresses to sign, e.g. \"example.test\"",
                    key.domain
                ),
            );
        }
        if !valid_selector(&key.selector) {
            f.error(
                format!("dkim[{i}].selector"),
                format!(
                    "{:?} cannot be a DNS label (letters, digits, '-' and '_', dot-separated); e.g. \"rw2026\"",
                    key.selector
                ),
            );
        }
        let pair = (
            key.domain.to_ascii_lowercase(),
            key.selector.to_ascii_lowercase(),
        );
        if !seen.insert(pair) {
            f.error(
                format!("dkim[{i}].selector"),
                format!(
                    "{}._domainkey.{} is configured twice; one selector names one key",
                    key.selector, key.domain
                ),
            );
        }
        if let Some(headers) = &key.headers
            && !headers.iter().any(|h| h.eq_ignore_ascii_case("From"))
        {
            f.error(
                format!("dkim[{i}].headers"),
                "must include \"From\" (RFC 6376 §5.4: the From field is always signed)",
            );
        }
        if let Some(bad) = key
            .headers
            .iter()
            .flatten()
            .find(|h| h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':'))
        {
            f.error(
                format!("dkim[{i}].headers"),
                format!("{bad:?} is not a header field name"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_dns_labels() {
        for good in ["rw2026", "s1.mail", "my_sel", "a-b"] {
            assert!(valid_selector(good), "{good}");
        }
        for bad in ["", ".", "a..b", "-a", "a b", "sel;x", "a/b"] {
            assert!(!valid_selector(bad), "{bad}");
        }
    }
}

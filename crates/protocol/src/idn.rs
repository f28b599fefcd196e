//! Internationalised domain names: one canonical form for every comparison.
//!
//! A domain can reach relayward as a U-label (`exämple.test`, RFC 6531 SMTPUTF8), as an
//! A-label (`xn--exmple-cua.test`), in any case, or in a spelling that UTS 46 maps to one of
//! those (fullwidth letters, an ideographic full stop, a zero-width space). If the relay policy
//! compared one spelling and the router another, a recipient could be "local" for the relay
//! check and "remote" for delivery: a relay. So every domain is turned into its canonical
//! A-label form — ASCII, lower-case, punycode per label, as the `idna` crate computes it
//! (UTS 46 non-transitional processing, STD3 rules, DNS lengths checked) — once, when it is
//! parsed, and only that form is ever compared, stored or looked up in DNS.
//!
//! The U-label form ([`to_unicode`]) is only for people and for SMTPUTF8 peers.
//!
//! Look-alikes are *not* folded: `ехample.test` with a Cyrillic `е` is another domain
//! (`xn--ample-ywe6i.test`), and it stays another domain. Folding confusables would make the
//! relay check accept what delivery sends elsewhere.

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

/// Why a domain has no canonical A-label form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid internationalised domain name (UTS 46 / IDNA 2008)")]
pub struct IdnError;

/// The canonical A-label form of a host name: ASCII, lower-case, `xn--` labels for
/// non-ASCII ones.
///
/// Plain ASCII names without an `xn--` label are only lower-cased (the host-name grammar in
/// [`crate::path`] checks them). Anything else goes through UTS 46: U-labels are mapped and
/// encoded, A-labels are decoded and checked (a fake such as `xn--example-.test`, which
/// decodes to plain ASCII, or undecodable punycode is an error), and labels or names too long
/// for DNS are refused.
pub fn to_ascii(domain: &str) -> Result<String, IdnError> {
    if domain.is_ascii() && !has_a_label(domain) {
        return Ok(domain.to_ascii_lowercase());
    }
    Uts46::new()
        .to_ascii(
            domain.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::CheckFirstLast,
            DnsLength::Verify,
        )
        .map(|ascii| ascii.into_owned())
        .map_err(|_| IdnError)
}

/// The U-label form of a domain, for display and for SMTPUTF8 peers: `xn--exmple-cua.test`
/// reads `exämple.test`. A name with no valid U-label form is returned as given, lower-cased.
pub fn to_unicode(domain: &str) -> String {
    if !has_a_label(domain) {
        return domain.to_lowercase();
    }
    let (unicode, result) = Uts46::new().to_unicode(
        domain.as_bytes(),
        AsciiDenyList::STD3,
        Hyphens::CheckFirstLast,
    );
    match result {
        Ok(()) => unicode.into_owned(),
        Err(_) => domain.to_ascii_lowercase(),
    }
}

/// Whether two spellings name the same domain (both must have a canonical form).
pub fn same_domain(a: &str, b: &str) -> bool {
    matches!((to_ascii(a), to_ascii(b)), (Ok(a), Ok(b)) if a == b)
}

/// Whether any label starts with the ACE prefix `xn--` (any case).
fn has_a_label(domain: &str) -> bool {
    domain
        .split('.')
        .any(|label| label.len() >= 4 && label[..4].eq_ignore_ascii_case("xn--"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u_label_a_label_and_case_are_one_domain() {
        for spelling in [
            "exämple.test",
            "EXÄMPLE.TEST",
            "xn--exmple-cua.test",
            "XN--EXMPLE-CUA.test",
        ] {
            assert_eq!(to_ascii(spelling).as_deref(), Ok("xn--exmple-cua.test"));
        }
        assert!(same_domain("exämple.test", "xn--exmple-cua.test"));
        assert_eq!(to_unicode("xn--exmple-cua.test"), "exämple.test");
    }

    #[test]
    fn uts46_mappings_fold_to_the_plain_name() {
        assert_eq!(
            to_ascii("ｅｘａｍｐｌｅ．test").as_deref(),
            Ok("example.test")
        );
        assert_eq!(to_ascii("example。test").as_deref(), Ok("example.test"));
    }

    #[test]
    fn look_alikes_stay_other_domains() {
        let cyrillic = to_ascii("ехample.test").expect("valid IDN");
        assert_ne!(cyrillic, "example.test");
        assert!(cyrillic.starts_with("xn--"));
        assert!(!same_domain("ехample.test", "example.test"));
    }

    #[test]
    fn fake_and_broken_a_labels_are_refused() {
        assert_eq!(to_ascii("xn--example-.test"), Err(IdnError));
        assert_eq!(to_ascii("xn--zz.test"), Err(IdnError));
        assert_eq!(to_ascii("ex\u{202e}ample.test"), Err(IdnError));
        assert_eq!(
            to_ascii(&format!("{}ä.test", "a".repeat(70))),
            Err(IdnError)
        );
    }

    #[test]
    fn plain_ascii_is_only_lower_cased() {
        assert_eq!(
            to_ascii("Mx.Example.TEST").as_deref(),
            Ok("mx.example.test")
        );
        assert_eq!(to_unicode("Mx.Example.TEST"), "mx.example.test");
    }
}

//! Whether a policy domain asks for reports, and where to: its `_smtp._tls` TXT record
//! (RFC 8460 §3), `v=TLSRPTv1; rua=mailto:…,https://…`, parsed by mail-auth.

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::mta_sts::{ReportUri, TlsRpt};

use crate::mx::{DnsFailure, MxResolver};

/// One `rua` destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A mail address (the part after `mailto:`, without `?…`).
    Mail(String),
    /// An `https://` URL to POST the report to.
    Https(String),
}

/// Most destinations taken from one record: the record comes from the domain's owner, and
/// every HTTPS destination costs a lookup and connections while the report is being sent.
pub const MAX_DESTINATIONS: usize = 8;

/// The destinations a domain's record names (the first [`MAX_DESTINATIONS`] usable ones);
/// empty when it has no record, or more than one
/// (§3: "if the number of resulting records is not one, senders MUST assume the recipient
/// domain does not implement TLSRPT").
pub fn destinations(records: &[Vec<u8>]) -> Vec<Destination> {
    let parsed: Vec<TlsRpt> = records
        .iter()
        .filter(|r| r.starts_with(b"v=TLSRPTv1"))
        .filter_map(|r| TlsRpt::parse(r).ok())
        .collect();
    let [record] = parsed.as_slice() else {
        return Vec::new();
    };
    record
        .rua
        .iter()
        .filter_map(|uri| match uri {
            ReportUri::Mail(address) => {
                let address = address.split('?').next().unwrap_or("").trim();
                (!address.is_empty() && address.contains('@'))
                    .then(|| Destination::Mail(address.to_string()))
            }
            ReportUri::Http(url) if url.starts_with("https://") => {
                Some(Destination::Https(url.clone()))
            }
            ReportUri::Http(_) => None,
        })
        .take(MAX_DESTINATIONS)
        .collect()
}

/// Looks up `_smtp._tls.DOMAIN`.
pub async fn lookup(resolver: &MxResolver, domain: &str) -> Result<Vec<Destination>, DnsFailure> {
    let records = resolver.txt(&format!("_smtp._tls.{domain}")).await?;
    Ok(destinations(&records))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_record_with_mail_and_https() {
        let found = destinations(&[
            b"v=spf1 -all".to_vec(),
            b"v=TLSRPTv1; rua=mailto:tls@example.test,https://rpt.example.test/v1".to_vec(),
        ]);
        assert_eq!(
            found,
            [
                Destination::Mail("tls@example.test".into()),
                Destination::Https("https://rpt.example.test/v1".into())
            ]
        );
    }

    #[test]
    fn a_record_naming_thousands_of_destinations_yields_a_few() {
        let many: Vec<String> = (0..5000)
            .map(|n| format!("mailto:r{n}@example.test"))
            .collect();
        let record = format!("v=TLSRPTv1; rua={}", many.join(","));
        let found = destinations(&[record.into_bytes()]);
        assert_eq!(found.len(), MAX_DESTINATIONS);
        assert_eq!(found[0], Destination::Mail("r0@example.test".into()));
    }

    #[test]
    fn none_or_two_records_mean_no_reports() {
        assert!(destinations(&[]).is_empty());
        assert!(destinations(&[b"v=TLSRPTv2; rua=mailto:a@b.test".to_vec()]).is_empty());
        let two = [
            b"v=TLSRPTv1; rua=mailto:a@b.test".to_vec(),
            b"v=TLSRPTv1; rua=mailto:c@d.test".to_vec(),
        ];
        assert!(destinations(&two).is_empty());
    }
}

//! What the session and the DKIM signer agree on: whose `From:` a message may be signed for,
//! and what signing did. The signer is `relayward_delivery::dkim`; the session
//! (`relayward_server::sign`) decides which messages are offered to it.

use crate::idn;

/// Which `From:` addresses the caller lets this message be signed for.
#[derive(Debug, Clone)]
pub enum AllowedFrom {
    /// An authenticated user: these addresses exactly (compared case-insensitively).
    Addresses(Vec<String>),
    /// A trusted network: any address in this domain (the envelope sender's).
    Domain(String),
}

impl AllowedFrom {
    pub fn allows(&self, address: &str) -> bool {
        match self {
            AllowedFrom::Addresses(list) => list.iter().any(|a| a.eq_ignore_ascii_case(address)),
            AllowedFrom::Domain(domain) => address
                .rsplit_once('@')
                .is_some_and(|(_, d)| idn::same_domain(d, domain)),
        }
    }
}

/// What signing did to a message.
#[derive(Debug)]
pub enum Signing {
    /// Signed: the content to queue (signature fields first) and each signature's
    /// `d=`, `s=`, `a=` for the log.
    Signed {
        content: Vec<u8>,
        signatures: Vec<String>,
    },
    /// Not signed, and why (for the log); the content is queued as received.
    Unsigned { reason: String },
}

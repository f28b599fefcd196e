//! Which messages are DKIM-signed before they are queued.
//!
//! A signature says "this domain sent this". relayward lends it only to mail it relays for
//! senders it knows — an authenticated user, for the `From:` addresses that user may use
//! (`send_as`), or a trusted network, for `From:` addresses in its envelope sender's domain —
//! and only when the mail leaves (a recipient routed to the Internet or a smart host). Mail
//! from strangers is never signed (a signing relay that signs whatever it is given makes
//! forged mail look authentic), and neither is mail that only goes into local Maildirs.
//!
//! The session sees only the [`SignOutbound`] trait; the signer (keys, canonicalisation)
//! lives in the delivery crate and is wired in by `relayward serve`.

use relayward_protocol::route::RouteClass;
pub use relayward_protocol::signing::{AllowedFrom, Signing};

/// Signs a message for the `From:` addresses `allowed` permits. CPU-bound (hashing the whole
/// message), so the session calls it on a blocking thread.
pub trait SignOutbound: Send + Sync {
    fn sign(&self, content: &[u8], allowed: &AllowedFrom) -> Signing;
}

/// Who sent the message, as far as signing cares.
pub enum Submitter<'a> {
    /// Authenticated; may sign for these addresses (its `send_as`).
    User(Vec<String>),
    /// A trusted network, with this envelope sender.
    TrustedNetwork { sender: &'a str },
    /// Anyone else.
    Stranger,
}

/// The `From:` addresses a message may be signed for, or `None` when it is not to be signed.
pub fn allowed_from<'a>(
    submitter: Submitter<'a>,
    mut recipient_classes: impl Iterator<Item = &'a RouteClass>,
) -> Option<AllowedFrom> {
    if !recipient_classes.any(|class| *class == RouteClass::Remote) {
        return None;
    }
    match submitter {
        Submitter::User(send_as) => Some(AllowedFrom::Addresses(send_as)),
        Submitter::TrustedNetwork { sender } => sender
            .rsplit_once('@')
            .map(|(_, domain)| AllowedFrom::Domain(domain.to_owned())),
        Submitter::Stranger => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_senders_mail_that_leaves_is_signed() {
        let remote = [RouteClass::Local, RouteClass::Remote];
        let local = [RouteClass::Local, RouteClass::RelayDomain];
        let user = || Submitter::User(vec!["alice@example.test".into()]);
        assert!(matches!(
            allowed_from(user(), remote.iter()),
            Some(AllowedFrom::Addresses(list)) if list == ["alice@example.test"]
        ));
        assert!(allowed_from(user(), local.iter()).is_none());
        let trusted = Submitter::TrustedNetwork {
            sender: "cron@example.test",
        };
        assert!(matches!(
            allowed_from(trusted, remote.iter()),
            Some(AllowedFrom::Domain(d)) if d == "example.test"
        ));
        let bounce = Submitter::TrustedNetwork { sender: "" };
        assert!(allowed_from(bounce, remote.iter()).is_none());
        assert!(allowed_from(Submitter::Stranger, remote.iter()).is_none());
    }
}

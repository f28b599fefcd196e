//! Recipient verification for `[[route]]` domains, asked at RCPT time.
//!
//! A relay domain's recipients live on an internal server. Accepting every local part from
//! anyone means that mail for users who do not exist is refused only later, by the internal
//! server, and relayward then bounces it to whatever sender the stranger wrote: backscatter,
//! an open relay by another door. Like Postfix's `reject_unverified_recipient`, the session
//! asks the internal server (a short `MAIL FROM:<>` / `RCPT TO:` probe, cached) before it
//! answers the client, and answers what the internal server would: exists (250), does not
//! exist (550), cannot tell now (451, never 250).
//!
//! The session sees only the [`VerifyRecipients`] trait; the implementation, which speaks SMTP
//! like the delivery runner, lives in the delivery crate and is wired in by `relayward serve`.

use std::future::Future;
use std::pin::Pin;

pub use relayward_protocol::route::Verification;

/// Asks the next hop whether it takes a recipient. See the module documentation.
pub trait VerifyRecipients: Send + Sync {
    fn verify<'a>(
        &'a self,
        host: &'a str,
        port: u16,
        address: &'a str,
    ) -> Pin<Box<dyn Future<Output = Verification> + Send + 'a>>;
}

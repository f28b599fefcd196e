//! RCPT TO: every recipient goes through [`crate::policy::Policy::decide`], and only an
//! [`crate::policy::Accepted`] it returns is kept for the transaction.

use relayward_protocol::path::ForwardPath;
use relayward_protocol::reply::Reply;
use relayward_protocol::resolve::resolve;
use relayward_protocol::text::Escaped;

use super::mail::Budget;
use super::{Flow, Session, Stream};

impl<S: Stream> Session<S> {
    pub(super) fn on_rcpt(&mut self, wire: &str, to: &ForwardPath) -> Flow {
        let identity = self.identity();
        let Some(txn) = self.txn.as_mut() else {
            return self.client_error(Reply::enh(503, (5, 5, 1), "Need MAIL before RCPT"));
        };
        if txn.recipients.len() >= self.ctx.limits.max_recipients {
            return self.client_error(Reply::enh(452, (4, 5, 3), "Too many recipients"));
        }
        let resolved = resolve(to);
        match self.ctx.policy.decide(&identity, &resolved) {
            Ok(accepted) => {
                let duplicate = txn
                    .recipients
                    .iter()
                    .any(|r| r.address() == accepted.address());
                if !duplicate {
                    if let Err(reply) = self.spend_budget(Budget::Recipient) {
                        return self.client_error(reply);
                    }
                    if let Some(txn) = self.txn.as_mut() {
                        txn.recipients.push(accepted);
                    }
                }
                self.reply(Reply::enh(250, (2, 1, 5), "Ok"))
            }
            Err(refusal) => {
                let reply = refusal.reply();
                tracing::info!(
                    client = %self.client_ip,
                    rcpt = %Escaped(wire),
                    reply = %Escaped(&reply.to_string()),
                    "recipient refused"
                );
                self.client_error(reply)
            }
        }
    }
}

//! RCPT TO: every recipient goes through [`crate::policy::Policy::decide`], and only an
//! [`crate::policy::Accepted`] it returns is kept for the transaction — after the internal
//! server confirmed it, for `[[route]]` domains that verify their recipients.

use relayward_protocol::command::{self, Param};
use relayward_protocol::path::ForwardPath;
use relayward_protocol::reply::Reply;
use relayward_protocol::resolve::resolve;
use relayward_protocol::text::Escaped;

use relayward_protocol::route::NextHop;

use super::mail::Budget;
use super::{Flow, Session, Stream};
use crate::extensions;
use crate::policy::Accepted;
use crate::verify::Verification;

/// Recipients a transaction may offer past `max_recipients` before each further one counts
/// as an error (Postfix's `smtpd_recipient_overshoot_limit`): RFC 5321 §4.5.3.1.10 has a
/// client that gets `452` send the rest in a new transaction, and one that pipelines its
/// recipients learns of the limit only after it sent them all.
const RECIPIENT_OVERSHOOT: usize = 1_000;

impl<S: Stream> Session<S> {
    pub(super) async fn on_rcpt(&mut self, wire: &str, to: &ForwardPath, params: &[Param]) -> Flow {
        let identity = self.identity();
        let offered = self.offered();
        let Some(txn) = self.txn.as_mut() else {
            return self.client_error(Reply::enh(503, (5, 5, 1), "Need MAIL before RCPT"));
        };
        // RFC 3030: the recipients come before the first BDAT, whose message was begun in the
        // queue with them; a recipient taken now would be acknowledged and never delivered.
        if txn.chunks.is_some() {
            return self.client_error(Reply::enh(
                503,
                (5, 5, 1),
                "RCPT not allowed after BDAT; RSET to start over",
            ));
        }
        if let Err(reply) = extensions::check_rcpt_params(params, offered)
            .and_then(|()| extensions::check_utf8_path(wire, txn.smtputf8))
        {
            return self.refuse_rcpt(wire, "bad_parameters", reply);
        }
        if txn.recipients.len() >= self.ctx.limits.max_recipients {
            txn.overshoot += 1;
            let first = txn.overshoot == 1;
            let reply = Reply::enh(452, (4, 5, 3), "Too many recipients");
            if txn.overshoot > RECIPIENT_OVERSHOOT {
                return self.refuse_rcpt(wire, "too_many_recipients", reply);
            }
            return self.refuse_over_limit(wire, first, reply);
        }
        let resolved = resolve(to);
        match self.ctx.policy.decide(&identity, &resolved) {
            Ok(accepted) => {
                let duplicate = txn
                    .recipients
                    .iter()
                    .any(|r| r.address() == accepted.address());
                if !duplicate {
                    if let Err((reason, reply)) = self.verified(wire, &accepted).await {
                        return self.refuse_rcpt(wire, reason, reply);
                    }
                    if let Err(reply) = self.spend_budget(Budget::Recipient) {
                        return self.refuse_rcpt(wire, "rate_limit", reply);
                    }
                    if let Some(txn) = self.txn.as_mut() {
                        txn.recipients.push(accepted);
                        txn.rcpt_dsn.push(command::rcpt_dsn(params));
                    }
                }
                self.reply(Reply::enh(250, (2, 1, 5), "Ok"))
            }
            Err(refusal) => self.refuse_rcpt(wire, refusal.metric_word(), refusal.reply()),
        }
    }

    /// Refuses a recipient past `max_recipients` within the overshoot allowance: a `452` the
    /// client is meant to act on (the rest in a new transaction), not an error, and one log
    /// line per transaction instead of one per recipient.
    fn refuse_over_limit(&mut self, wire: &str, first: bool, reply: Reply) -> Flow {
        relayward_metrics::global().recipient_refused("too_many_recipients");
        if first {
            tracing::info!(
                client = %self.client_ip,
                rcpt = %Escaped(wire),
                reason = "too_many_recipients",
                reply = %Escaped(&reply.to_string()),
                "recipient refused (and the rest of this transaction's excess)"
            );
        }
        self.reply(reply)
    }

    /// Refuses one RCPT: the mail log line (client, recipient, reason, reply), the
    /// `relayward_recipients_refused_total{reason}` count, and the reply.
    fn refuse_rcpt(&mut self, wire: &str, reason: &'static str, reply: Reply) -> Flow {
        relayward_metrics::global().recipient_refused(reason);
        tracing::info!(
            client = %self.client_ip,
            rcpt = %Escaped(wire),
            reason = %reason,
            reply = %Escaped(&reply.to_string()),
            "recipient refused"
        );
        self.client_error(reply)
    }

    /// For a recipient the next hop must confirm: asks it (see [`crate::verify`]); the reply
    /// to give the client when it did not confirm, with the reason for the metrics.
    async fn verified(&self, wire: &str, accepted: &Accepted) -> Result<(), (&'static str, Reply)> {
        if !accepted.needs_verification() {
            return Ok(());
        }
        let address = accepted.address();
        let unavailable = || {
            let reply = Reply::enh(
                451,
                (4, 4, 1),
                format!("<{address}>: Recipient address verification failed; try again later"),
            );
            ("verification_unavailable", reply)
        };
        let NextHop::Smtp { host, port } = &accepted.route().next_hop else {
            return Ok(());
        };
        let Some(verifier) = &self.ctx.verifier else {
            return Err(unavailable());
        };
        match verifier.verify(host, *port, address).await {
            Verification::Exists => Ok(()),
            Verification::Refused(said) => {
                tracing::info!(client = %self.client_ip, rcpt = %Escaped(wire), internal = %Escaped(&said.to_string()), "recipient refused by the internal server");
                let reply = Reply::enh(
                    550,
                    (5, 1, 1),
                    format!("<{address}>: Recipient address rejected: User unknown"),
                );
                Err(("unknown_user", reply))
            }
            Verification::Unavailable(why) => {
                tracing::warn!(client = %self.client_ip, rcpt = %Escaped(wire), why = %Escaped(&why), "recipient not verified");
                Err(unavailable())
            }
        }
    }
}

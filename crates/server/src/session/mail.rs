//! MAIL FROM: who may start a transaction, with which sender, within which budget.

use std::sync::Arc;
use std::time::Instant;

use relayward_protocol::command::{self, Param};
use relayward_protocol::path::ReversePath;
use relayward_protocol::reply::Reply;
use relayward_protocol::text::Escaped;

use super::{Ending, Flow, Session, Stream, Transaction};
use crate::extensions;

impl<S: Stream> Session<S> {
    /// Takes the configuration a reload put in force since the last transaction, so that a
    /// network no longer trusted or a user removed loses its rights in open sessions too, not
    /// only in new ones (a session may last 30 minutes). Each transaction still runs under one
    /// configuration. A login that is not the same account in the new one (removed, or its
    /// password changed: a stolen password must stop working) ends the session.
    fn follow_reload(&mut self) -> Option<Flow> {
        let latest = self.sessions.current();
        if Arc::ptr_eq(&latest, &self.ctx) {
            return None;
        }
        let previous = std::mem::replace(&mut self.ctx, latest);
        let login = self.login.as_deref()?;
        if previous.users.same_account_in(&self.ctx.users, login) {
            return None;
        }
        tracing::warn!(client = %self.client_ip, login = %Escaped(login), "session closed: a reload removed its login or changed its password");
        Some(self.close_with(
            Reply::enh(
                421,
                (4, 7, 0),
                format!(
                    "{} Your login was changed by the administrator; closing",
                    self.ctx.hostname
                ),
            ),
            Ending::Protocol("login revoked by a reload"),
        ))
    }

    pub(super) fn on_mail(&mut self, wire: &str, from: ReversePath, params: &[Param]) -> Flow {
        if self.helo.is_none() {
            return self.client_error(Reply::enh(503, (5, 5, 1), "Send HELO/EHLO first"));
        }
        if self.txn.is_some() {
            return self.client_error(Reply::enh(503, (5, 5, 1), "Nested MAIL command"));
        }
        if let Some(closing) = self.follow_reload() {
            return closing;
        }
        if let Err(reply) = extensions::check_mail_params(params, self.offered())
            .and_then(|()| extensions::check_utf8_path(wire, command::has_smtputf8(params)))
        {
            return self.client_error(reply);
        }
        if let Some(size) = declared_size(params)
            && size > self.ctx.limits.max_message_size
        {
            return self.client_error(Reply::enh(
                552,
                (5, 3, 4),
                "Message size exceeds fixed maximum message size",
            ));
        }
        if let Err(refusal) = self
            .ctx
            .policy
            .check_mail(self.kind, &self.identity(), &from)
        {
            return self.client_error(refusal.reply());
        }
        if let Err(reply) = self.spend_budget(Budget::Message) {
            return self.client_error(reply);
        }
        let sender = match &from {
            ReversePath::Null => String::new(),
            ReversePath::Path { mailbox, .. } => {
                relayward_protocol::resolve::resolve_mailbox(mailbox).address()
            }
        };
        tracing::debug!(client = %self.client_ip, sender = %Escaped(wire), "MAIL accepted");
        self.txn = Some(Transaction {
            sender,
            recipients: Vec::new(),
            smtputf8: command::has_smtputf8(params),
            dsn: command::mail_dsn(params),
            rcpt_dsn: Vec::new(),
            chunks: None,
            overshoot: 0,
        });
        self.reply(Reply::enh(250, (2, 1, 0), "Ok"))
    }

    /// The MAIL/RCPT extensions this session offers (see [`crate::extensions`]).
    pub(super) fn offered(&self) -> extensions::Offered {
        extensions::Offered {
            smtputf8: true,
            dsn: true,
        }
    }

    /// Spends one message or recipient of the authenticated user's budget (see
    /// [`crate::ratelimit`]); unauthenticated clients have no per-user budget. Over the limit:
    /// `451 4.7.1`, and a warning naming the user, since it usually means a stolen password.
    pub(super) fn spend_budget(&self, budget: Budget) -> Result<(), Reply> {
        let Some(login) = self.login.as_deref() else {
            return Ok(());
        };
        let limiter = &self.ctx.user_limits;
        let spent = match budget {
            Budget::Message => limiter.try_message(login, Instant::now()),
            Budget::Recipient => limiter.try_recipient(login, Instant::now()),
        };
        spent.map_err(|exceeded| {
            tracing::warn!(
                login = %login,
                client = %self.client_ip,
                limit = %exceeded,
                "user sending limit reached (compromised account?)"
            );
            exceeded.reply()
        })
    }
}

#[derive(Clone, Copy)]
pub(super) enum Budget {
    Message,
    Recipient,
}

/// The `SIZE=` value. The parser admits up to 20 digits (RFC 1870), more than a `u64` holds: a
/// value past `u64::MAX` is larger than any limit, not a missing declaration.
fn declared_size(params: &[Param]) -> Option<u64> {
    params
        .iter()
        .find(|p| p.keyword == "SIZE")
        .and_then(|p| p.value.as_deref())
        .map(|v| v.parse().unwrap_or(u64::MAX))
}

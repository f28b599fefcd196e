//! AUTH (RFC 4954): only under TLS, once per session, never inside a transaction; every
//! attempt passes the [`crate::auth::AuthLimiter`] before and after the password check.

use std::io;
use std::time::Instant;

use relayward_protocol::line::LineEvent;
use relayward_protocol::reply::Reply;
use relayward_protocol::text::Escaped;

use super::{Input, Session, Step, Stream};
use crate::auth::{
    Credentials, SaslError, SaslExchange, SaslMechanism, SaslStep, bad_credentials_reply,
};

impl<S: Stream> Session<S> {
    pub(super) async fn on_auth(&mut self, mechanism: &str, initial: Option<String>) -> Step {
        if let Some(reply) = self.auth_refusal() {
            return Ok(self.client_error(reply));
        }
        let mechanism = match SaslMechanism::from_name(mechanism) {
            Ok(mechanism) => mechanism,
            Err(e) => return Ok(self.client_error(e.reply())),
        };
        if let Err(refusal) = self
            .ctx
            .auth_limiter
            .check(self.client_ip, None, Instant::now())
        {
            return Ok(self.client_error(refusal.reply()));
        }
        let credentials = match self.run_sasl(mechanism, initial.as_deref()).await? {
            Ok(credentials) => credentials,
            Err(error) => {
                if error.counts_as_failure() {
                    self.ctx
                        .auth_limiter
                        .record_failure(self.client_ip, None, Instant::now());
                }
                return Ok(self.client_error(error.reply()));
            }
        };
        if let Err(refusal) =
            self.ctx
                .auth_limiter
                .check(self.client_ip, Some(&credentials.login), Instant::now())
        {
            return Ok(self.client_error(refusal.reply()));
        }
        match self
            .ctx
            .users
            .verify(&credentials.login, &credentials.password)
            .await
        {
            Some(login) => {
                self.ctx
                    .auth_limiter
                    .record_success(self.client_ip, Instant::now());
                tracing::info!(client = %self.client_ip, login = %login.as_str(), "authenticated");
                self.login = Some(login.as_str().to_string());
                Ok(self.reply(Reply::enh(235, (2, 7, 0), "Authentication successful")))
            }
            None => {
                let delay = self.ctx.auth_limiter.record_failure(
                    self.client_ip,
                    Some(&credentials.login),
                    Instant::now(),
                );
                tracing::warn!(client = %self.client_ip, login = %Escaped(&credentials.login), "authentication failed");
                // The delay slows guessing; it is bounded by the limiter.
                tokio::time::sleep(delay).await;
                Ok(self.client_error(bad_credentials_reply()))
            }
        }
    }

    fn auth_refusal(&self) -> Option<Reply> {
        if !self.helo.as_ref().is_some_and(|h| h.esmtp) {
            return Some(Reply::enh(503, (5, 5, 1), "Send EHLO first"));
        }
        if self.login.is_some() {
            return Some(Reply::enh(503, (5, 5, 1), "Already authenticated"));
        }
        if self.txn.is_some() {
            return Some(Reply::enh(
                503,
                (5, 5, 1),
                "AUTH not permitted during a mail transaction",
            ));
        }
        if !self.conn.is_tls() {
            return Some(Reply::enh(
                538,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism",
            ));
        }
        if self.ctx.users.is_empty() {
            return Some(Reply::enh(503, (5, 5, 1), "Authentication not enabled"));
        }
        None
    }

    /// Runs the SASL exchange to its credentials; `Err` for a cancelled or malformed exchange.
    async fn run_sasl(
        &mut self,
        mechanism: SaslMechanism,
        initial: Option<&str>,
    ) -> io::Result<Result<Credentials, SaslError>> {
        let (mut exchange, mut step) = match SaslExchange::start(mechanism, initial) {
            Ok(started) => started,
            Err(e) => return Ok(Err(e)),
        };
        loop {
            let challenge = match step {
                SaslStep::Done(credentials) => return Ok(Ok(credentials)),
                SaslStep::Challenge(challenge) => challenge,
            };
            self.queue_reply(&Reply::new(334, None, challenge));
            let Input::Event(event) = self.next_event(self.ctx.limits.command_timeout).await?
            else {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "client gone during AUTH",
                ));
            };
            let line = match event {
                LineEvent::Line(line) => line,
                LineEvent::TooLong => return Ok(Err(SaslError::TooLong)),
                LineEvent::BareLineEnding => {
                    return Ok(Err(SaslError::Malformed("bare CR or LF")));
                }
            };
            let Ok(text) = String::from_utf8(line) else {
                return Ok(Err(SaslError::BadBase64));
            };
            step = match exchange.respond(&text) {
                Ok(step) => step,
                Err(e) => return Ok(Err(e)),
            };
        }
    }
}

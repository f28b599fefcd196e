//! AUTH (RFC 4954): only under TLS, once per session, never inside a transaction; every
//! attempt is admitted and counted by the [`crate::auth::AuthLimiter`] before its password is
//! checked, in one of the limiter's few check slots.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use relayward_protocol::line::LineEvent;
use relayward_protocol::reply::Reply;
use relayward_protocol::text::Escaped;

use super::{Ending, Input, Session, Step, Stream};
use crate::auth::{
    AuthClient, Credentials, SaslError, SaslExchange, SaslMechanism, SaslStep,
    bad_credentials_reply,
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
        let limiter = Arc::clone(&self.ctx.auth_limiter);
        let client = self.auth_client();
        if let Err(refusal) = limiter.check(client, Instant::now()) {
            relayward_metrics::global().auth_failure();
            tracing::info!(client = %self.client_ip, "AUTH refused: address banned");
            return Ok(self.client_error(refusal.reply()));
        }
        let credentials = match self.run_sasl(mechanism, initial.as_deref()).await? {
            Ok(credentials) => credentials,
            Err(SaslError::BareLineEnding) => {
                return Ok(self.close_with(
                    SaslError::BareLineEnding.reply(),
                    Ending::Protocol("bare line ending in AUTH"),
                ));
            }
            Err(error) => {
                if error.counts_as_failure() {
                    relayward_metrics::global().auth_failure();
                    limiter.record_failure(client, Instant::now());
                }
                return Ok(self.client_error(error.reply()));
            }
        };
        let attempt = match limiter.begin(client, &credentials.login, Instant::now()) {
            Ok(attempt) => attempt,
            Err(refusal) => {
                relayward_metrics::global().auth_failure();
                tracing::info!(client = %self.client_ip, login = %Escaped(&credentials.login), "AUTH refused: banned or throttled");
                return Ok(self.client_error(refusal.reply()));
            }
        };
        let verified = match limiter.verification_slot().await {
            Ok(mut slot) => {
                self.ctx
                    .users
                    .verify(&credentials.login, &credentials.password, &mut slot)
                    .await
            }
            Err(busy) => {
                limiter.withdraw(attempt);
                relayward_metrics::global().auth_failure();
                tracing::warn!(client = %self.client_ip, "every password check busy; AUTH refused");
                return Ok(self.client_error(busy.reply()));
            }
        };
        match verified {
            Some(login) => {
                limiter.succeeded(attempt, Instant::now());
                tracing::info!(client = %self.client_ip, login = %login.as_str(), "authenticated");
                self.login = Some(login.as_str().to_string());
                Ok(self.reply(Reply::enh(235, (2, 7, 0), "Authentication successful")))
            }
            None => {
                relayward_metrics::global().auth_failure();
                let delay = limiter.failed(attempt, Instant::now());
                tracing::warn!(client = %self.client_ip, login = %Escaped(&credentials.login), "authentication failed");
                // The delay slows guessing; it is bounded by the limiter.
                tokio::time::sleep(delay).await;
                Ok(self.client_error(bad_credentials_reply()))
            }
        }
    }

    /// The client as the AUTH limiter sees it: trusted networks are slowed, never banned.
    fn auth_client(&self) -> AuthClient {
        AuthClient {
            ip: self.client_ip,
            trusted: self.ctx.policy.is_trusted(self.client_ip),
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
                LineEvent::BareLineEnding => return Ok(Err(SaslError::BareLineEnding)),
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

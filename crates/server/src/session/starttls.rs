//! STARTTLS (RFC 3207): plaintext pipelined behind the command is discarded, and everything
//! learned before the handshake is forgotten after it.

use relayward_protocol::reply::Reply;
use relayward_protocol::text::Escaped;

use super::{Ending, Flow, Session, Step, Stream};

impl<S: Stream> Session<S> {
    pub(super) async fn on_starttls(&mut self) -> Step {
        let Some(acceptor) = self.ctx.tls.clone() else {
            return Ok(self.client_error(Reply::enh(454, (4, 7, 0), "TLS not available")));
        };
        if self.conn.is_tls() {
            return Ok(self.client_error(Reply::enh(503, (5, 5, 1), "TLS already active")));
        }
        self.queue_reply(&Reply::enh(220, (2, 0, 0), "Ready to start TLS"));
        self.flush().await?;
        // RFC 3207 §6: anything the client sent after STARTTLS in plaintext is an injection.
        let injected = self.lines.buffered();
        if injected > 0 {
            tracing::warn!(client = %self.client_ip, octets = injected, "discarding plaintext pipelined after STARTTLS");
            self.lines.clear();
        }
        // A client that asked for TLS and then sends no ClientHello is held no longer than one
        // that never greets: the handshake is bounded like the greeting.
        let handshake = tokio::time::timeout(
            self.ctx.limits.greeting_timeout,
            self.conn.upgrade(&acceptor),
        )
        .await;
        match handshake {
            Ok(Ok(())) => {
                if let Some(tls) = self.conn.tls_facts() {
                    relayward_metrics::global().tls_session("inbound", &tls.version);
                }
                // RFC 3207 §4.2: forget everything learned before TLS.
                self.helo = None;
                self.txn = None;
                self.login = None;
                Ok(Flow::Continue)
            }
            Ok(Err(e)) => {
                tracing::info!(client = %self.client_ip, error = %Escaped(&e.to_string()), "TLS handshake failed");
                Ok(Flow::Close(Ending::Protocol("TLS handshake failed")))
            }
            Err(_) => Ok(Flow::Close(Ending::Timeout)),
        }
    }
}

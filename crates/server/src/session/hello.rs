//! EHLO and HELO: the greeting and the extensions we offer.

use relayward_protocol::reply::Reply;

use super::{Flow, Helo, Session, Stream};

impl<S: Stream> Session<S> {
    pub(super) fn on_hello(&mut self, name: String, esmtp: bool) -> Flow {
        self.txn = None;
        let reply = if esmtp {
            Reply::multiline(250, None, self.ehlo_lines(&name))
        } else {
            Reply::new(250, None, self.ctx.hostname.clone())
        };
        self.helo = Some(Helo { name, esmtp });
        self.reply(reply)
    }

    fn ehlo_lines(&self, name: &str) -> Vec<String> {
        let mut lines = vec![
            format!("{} greets {} [{}]", self.ctx.hostname, name, self.client_ip),
            "PIPELINING".to_string(),
            format!("SIZE {}", self.ctx.limits.max_message_size),
            "8BITMIME".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "CHUNKING".to_string(),
        ];
        let offered = self.offered();
        if offered.smtputf8 {
            lines.push("SMTPUTF8".to_string());
        }
        if offered.dsn {
            lines.push("DSN".to_string());
        }
        if self.ctx.tls.is_some() && !self.conn.is_tls() {
            lines.push("STARTTLS".to_string());
        }
        if self.auth_available() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        lines
    }

    /// AUTH is offered only under TLS (passwords never cross in clear), only once, and only when
    /// there are users to authenticate.
    fn auth_available(&self) -> bool {
        self.conn.is_tls() && self.login.is_none() && !self.ctx.users.is_empty()
    }
}

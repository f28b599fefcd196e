//! Fitting one message to one next hop, before a word is sent: what the peer announced in
//! EHLO decides the envelope's form, the parameters passed on and the content's encoding.
//!
//! - **SMTPUTF8** (RFC 6531 §3.2): a message whose client declared SMTPUTF8 goes with
//!   `SMTPUTF8` and U-label domains to a peer that offers it. To one that does not, it goes
//!   as plain ASCII when that is enough — domains are stored as A-labels anyway, so only UTF-8
//!   local parts and UTF-8 header fields need the extension — and otherwise it bounces:
//!   `5.6.7 SMTPUTF8 is required, but was not offered by host …` (Postfix's words).
//! - **8BITMIME** (RFC 6152 §3): 8-bit content for a peer without it is made 7-bit clean by
//!   [`crate::downgrade`]; what cannot be converted bounces with `5.6.3`.
//! - **Long lines**: folded and wrapped to 998 octets ([`relayward_protocol::wrap`]).
//! - **DSN** (RFC 3461): `RET`, `ENVID`, `NOTIFY`, `ORCPT` are passed on to a peer that
//!   offers DSN, and left out otherwise (relayward then answers for them itself). Not for a
//!   stranger's message as given: its sender may be a forged third party, and relayward
//!   sends strangers no success notices and small bounces, so the peer is not asked for
//!   more — `SUCCESS` is dropped from `NOTIFY` (`NEVER` when nothing is left) and `RET` is
//!   always `HDRS` (a peer's own default may be the whole message).
//! - **SIZE** is the size of what is actually sent.

use std::borrow::Cow;

use relayward_protocol::dsn::{Ret, xtext_encode};
use relayward_protocol::idn;
use relayward_protocol::wrap::wrap_long_lines;

use crate::client::{Envelope, Extensions};
use crate::downgrade::{downgrade, is_8bit};
use crate::outcome::Failure;

/// The message as it goes to this peer.
pub struct Prepared<'a> {
    pub mail_line: String,
    pub rcpt_lines: Vec<String>,
    pub content: Cow<'a, [u8]>,
}

/// Fits `envelope` to a peer that announced `peer`; `Err` is a permanent failure for every
/// recipient (the message can never go to this peer as it is).
pub fn prepare<'a>(
    envelope: &Envelope<'a>,
    peer: &Extensions,
    remote: &str,
) -> Result<Prepared<'a>, Failure> {
    let utf8 = envelope.options.smtputf8 && peer.smtputf8;
    if envelope.options.smtputf8 && !peer.smtputf8 && needs_smtputf8(envelope) {
        return Err(Failure::local(
            (5, 6, 7),
            format!("SMTPUTF8 is required, but was not offered by host {remote}"),
        ));
    }
    let mut content = Cow::Borrowed(envelope.content);
    if is_8bit(&content) && !peer.eight_bit_mime {
        content = match downgrade(envelope.content) {
            Ok(converted) => converted,
            Err(error) => {
                return Err(Failure::local(
                    (5, 6, 3),
                    format!("{error}, and host {remote} does not offer 8BITMIME"),
                ));
            }
        };
    }
    if let Cow::Owned(wrapped) = wrap_long_lines(&content) {
        content = Cow::Owned(wrapped);
    }
    let mail_line = mail_line(envelope, peer, utf8, &content);
    let rcpt_lines = envelope
        .recipients
        .iter()
        .enumerate()
        .map(|(i, rcpt)| rcpt_line(envelope, peer, utf8, i, rcpt))
        .collect();
    Ok(Prepared {
        mail_line,
        rcpt_lines,
        content,
    })
}

/// Whether the message cannot be expressed without SMTPUTF8: a UTF-8 local part in the
/// envelope, or UTF-8 in the header section. (Domains are A-labels already.)
pub fn needs_smtputf8(envelope: &Envelope<'_>) -> bool {
    let local_utf8 = |address: &str| {
        address
            .rsplit_once('@')
            .is_some_and(|(local, _)| !local.is_ascii())
    };
    local_utf8(envelope.sender)
        || envelope.recipients.iter().any(|r| local_utf8(r))
        || !header_section(envelope.content).is_ascii()
}

fn header_section(content: &[u8]) -> &[u8] {
    content
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(content, |end| &content[..end])
}

/// An address as this peer reads it: U-label domain when SMTPUTF8 is used, A-label otherwise.
fn address_for_peer(address: &str, utf8: bool) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) if utf8 => format!("{local}@{}", idn::to_unicode(domain)),
        _ => address.to_owned(),
    }
}

fn mail_line(envelope: &Envelope<'_>, peer: &Extensions, utf8: bool, content: &[u8]) -> String {
    let mut line = format!("MAIL FROM:<{}>", address_for_peer(envelope.sender, utf8));
    if peer.size.is_some() {
        line.push_str(&format!(" SIZE={}", content.len()));
    }
    if peer.eight_bit_mime && is_8bit(content) {
        line.push_str(" BODY=8BITMIME");
    }
    if utf8 {
        line.push_str(" SMTPUTF8");
    }
    if peer.dsn
        && let Some(dsn) = envelope.options.dsn
    {
        let ret = if envelope.options.from_stranger {
            Some(Ret::Hdrs)
        } else {
            dsn.ret
        };
        if let Some(ret) = ret {
            line.push_str(&format!(" RET={}", ret.as_str()));
        }
        if let Some(envid) = &dsn.envid {
            line.push_str(&format!(" ENVID={}", xtext_encode(envid)));
        }
    }
    line
}

fn rcpt_line(
    envelope: &Envelope<'_>,
    peer: &Extensions,
    utf8: bool,
    index: usize,
    rcpt: &str,
) -> String {
    let mut line = format!("RCPT TO:<{}>", address_for_peer(rcpt, utf8));
    if peer.dsn
        && let Some(dsn) = envelope.options.recipient_dsn.get(index)
    {
        if let Some(mut notify) = dsn.notify {
            notify.success &= !envelope.options.from_stranger;
            line.push_str(&format!(" NOTIFY={}", notify.to_value()));
        }
        if let Some(orcpt) = &dsn.orcpt {
            line.push_str(&format!(" ORCPT={}", orcpt.to_value()));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::EnvelopeOptions;
    use relayward_protocol::dsn::{MailDsn, Notify, Orcpt, RcptDsn, Ret};

    fn peer(smtputf8: bool, eight_bit_mime: bool, dsn: bool) -> Extensions {
        Extensions {
            size: Some(0),
            smtputf8,
            eight_bit_mime,
            dsn,
            ..Extensions::default()
        }
    }

    #[test]
    fn smtputf8_goes_as_is_to_a_peer_that_offers_it() {
        let rcpts = vec!["bøb@xn--exmple-cua.test".to_owned()];
        let envelope = Envelope {
            sender: "ål@example.test",
            recipients: &rcpts,
            content: "Subject: grüße\r\n\r\nhi\r\n".as_bytes(),
            options: EnvelopeOptions {
                smtputf8: true,
                ..EnvelopeOptions::default()
            },
        };
        let prepared = prepare(&envelope, &peer(true, true, false), "mx").expect("ok");
        assert_eq!(
            prepared.mail_line,
            format!(
                "MAIL FROM:<ål@example.test> SIZE={} BODY=8BITMIME SMTPUTF8",
                envelope.content.len()
            )
        );
        assert_eq!(prepared.rcpt_lines, ["RCPT TO:<bøb@exämple.test>"]);
        let refused = prepare(&envelope, &peer(false, true, false), "mx[127.0.0.1]:25");
        let failure = refused.err().expect("bounced");
        assert_eq!(failure.status.to_string(), "5.6.7");
        assert!(
            failure
                .text
                .contains("SMTPUTF8 is required, but was not offered by host mx[127.0.0.1]:25")
        );
    }

    #[test]
    fn a_utf8_domain_alone_goes_as_an_a_label_without_smtputf8() {
        let rcpts = vec!["bob@xn--exmple-cua.test".to_owned()];
        let envelope = Envelope {
            sender: "al@example.test",
            recipients: &rcpts,
            content: b"Subject: plain\r\n\r\nhi\r\n",
            options: EnvelopeOptions {
                smtputf8: true,
                ..EnvelopeOptions::default()
            },
        };
        let prepared = prepare(&envelope, &peer(false, true, false), "mx").expect("ok");
        assert!(!prepared.mail_line.contains("SMTPUTF8"));
        assert_eq!(prepared.rcpt_lines, ["RCPT TO:<bob@xn--exmple-cua.test>"]);
    }

    #[test]
    fn dsn_parameters_only_to_peers_that_offer_dsn() {
        let rcpts = vec!["b@x.test".to_owned()];
        let mail = MailDsn {
            ret: Some(Ret::Hdrs),
            envid: Some("Q 1".into()),
        };
        let per = [RcptDsn {
            notify: Some(Notify::NEVER),
            orcpt: Some(Orcpt {
                addr_type: "rfc822".into(),
                address: "b@x.test".into(),
            }),
        }];
        let envelope = Envelope {
            sender: "a@x.test",
            recipients: &rcpts,
            content: b"\r\nx\r\n",
            options: EnvelopeOptions {
                smtputf8: false,
                dsn: Some(&mail),
                recipient_dsn: &per,
                from_stranger: false,
            },
        };
        let with = prepare(&envelope, &peer(false, true, true), "mx").expect("ok");
        assert!(
            with.mail_line.ends_with(" RET=HDRS ENVID=Q+201"),
            "{}",
            with.mail_line
        );
        assert_eq!(
            with.rcpt_lines,
            ["RCPT TO:<b@x.test> NOTIFY=NEVER ORCPT=rfc822;b@x.test"]
        );
        let without = prepare(&envelope, &peer(false, true, false), "mx").expect("ok");
        assert!(!without.mail_line.contains("RET="));
        assert_eq!(without.rcpt_lines, ["RCPT TO:<b@x.test>"]);
    }

    #[test]
    fn eight_bit_content_is_downgraded_for_a_peer_without_8bitmime() {
        let rcpts = vec!["b@x.test".to_owned()];
        let envelope = Envelope {
            sender: "a@x.test",
            recipients: &rcpts,
            content: "Subject: x\r\n\r\nGrüße\r\n".as_bytes(),
            options: EnvelopeOptions::default(),
        };
        let prepared = prepare(&envelope, &peer(false, false, false), "mx").expect("ok");
        assert!(prepared.content.is_ascii());
        assert!(!prepared.mail_line.contains("8BITMIME"));
        let headers = Envelope {
            content: "Subject: Grüße\r\n\r\nx\r\n".as_bytes(),
            ..envelope
        };
        let failure = prepare(&headers, &peer(false, false, false), "mx")
            .err()
            .expect("bounce");
        assert_eq!(failure.status.to_string(), "5.6.3");
    }
}

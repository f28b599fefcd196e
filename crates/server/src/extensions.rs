//! Which ESMTP extensions that change `MAIL` and `RCPT` the session offers, and the checks that
//! keep a client to them: a parameter the EHLO reply did not announce is refused (`555 5.5.4`),
//! and a UTF-8 address without `SMTPUTF8` on `MAIL` is refused with `553 5.6.7` (RFC 6531 §3.5).
//!
//! The parser ([`relayward_protocol::command`]) accepts every parameter it understands; this is
//! where the session decides which of them it honours.

use relayward_protocol::command::{Param, needs_smtputf8};
use relayward_protocol::reply::Reply;

/// The extensions a session announces and honours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offered {
    /// RFC 6531: UTF-8 addresses and headers.
    pub smtputf8: bool,
    /// RFC 3461: NOTIFY, RET, ENVID, ORCPT.
    pub dsn: bool,
}

/// `MAIL` parameters the session does not offer.
pub fn check_mail_params(params: &[Param], offered: Offered) -> Result<(), Reply> {
    for param in params {
        let allowed = match param.keyword.as_str() {
            "SMTPUTF8" => offered.smtputf8,
            "RET" | "ENVID" => offered.dsn,
            _ => true,
        };
        if !allowed {
            return Err(unsupported(&param.keyword));
        }
    }
    Ok(())
}

/// `RCPT` parameters the session does not offer.
pub fn check_rcpt_params(params: &[Param], offered: Offered) -> Result<(), Reply> {
    match params
        .iter()
        .find(|p| !offered.dsn && matches!(p.keyword.as_str(), "NOTIFY" | "ORCPT"))
    {
        Some(param) => Err(unsupported(&param.keyword)),
        None => Ok(()),
    }
}

/// A path written with UTF-8 in a transaction that did not declare `SMTPUTF8`.
pub fn check_utf8_path(wire: &str, smtputf8_declared: bool) -> Result<(), Reply> {
    if needs_smtputf8(wire) && !smtputf8_declared {
        return Err(Reply::enh(
            553,
            (5, 6, 7),
            "Non-ASCII address requires MAIL FROM:<…> SMTPUTF8 (RFC 6531)",
        ));
    }
    Ok(())
}

fn unsupported(keyword: &str) -> Reply {
    Reply::enh(
        555,
        (5, 5, 4),
        format!("Unsupported or invalid parameter {keyword}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use relayward_protocol::command::{Command, parse_command};

    fn params(line: &str) -> Vec<Param> {
        match parse_command(line.as_bytes()) {
            Ok(Command::Mail { params, .. } | Command::Rcpt { params, .. }) => params,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn parameters_need_their_extension() {
        let none = Offered::default();
        let all = Offered {
            smtputf8: true,
            dsn: true,
        };
        let mail = params("MAIL FROM:<a@x.test> SMTPUTF8 RET=HDRS");
        assert_eq!(check_mail_params(&mail, none).map_err(|r| r.code), Err(555));
        assert!(check_mail_params(&mail, all).is_ok());
        let rcpt = params("RCPT TO:<b@x.test> NOTIFY=NEVER");
        assert_eq!(check_rcpt_params(&rcpt, none).map_err(|r| r.code), Err(555));
        assert!(check_rcpt_params(&rcpt, all).is_ok());
        assert!(check_mail_params(&params("MAIL FROM:<a@x.test> SIZE=10"), none).is_ok());
    }

    #[test]
    fn utf8_paths_need_smtputf8_on_mail() {
        let refused = check_utf8_path("<bøb@x.test>", false).unwrap_err();
        assert_eq!(
            (refused.code, refused.enhanced.map(|e| e.to_string())),
            (553, Some("5.6.7".into()))
        );
        assert!(check_utf8_path("<bøb@x.test>", true).is_ok());
        assert!(check_utf8_path("<bob@x.test>", false).is_ok());
    }
}

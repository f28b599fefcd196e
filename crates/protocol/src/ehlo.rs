//! The service extensions a server announces in its EHLO reply (RFC 5321 §4.1.1.1): one
//! keyword per line after the greeting, each with its parameters. The delivery client reads
//! them to choose how to send, the tester to report what a server offers.

use crate::reply::Reply;

/// The keyword lines of an EHLO reply, upper-cased, in the order the server sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EhloKeywords {
    lines: Vec<(String, Vec<String>)>,
}

impl EhloKeywords {
    /// Reads every line after the first (the greeting). `AUTH=PLAIN LOGIN`, the old Netscape
    /// spelling some servers still send beside the standard one, counts as `AUTH PLAIN LOGIN`.
    pub fn parse(reply: &Reply) -> Self {
        let lines = reply
            .lines
            .iter()
            .skip(1)
            .filter_map(|line| {
                let mut words = line.split_ascii_whitespace();
                let first = words.next()?;
                let (keyword, glued) = first.split_once('=').unwrap_or((first, ""));
                let args = (!glued.is_empty())
                    .then_some(glued)
                    .into_iter()
                    .chain(words)
                    .map(str::to_ascii_uppercase)
                    .collect();
                Some((keyword.to_ascii_uppercase(), args))
            })
            .collect();
        Self { lines }
    }

    /// Whether `keyword` (any case) was announced.
    pub fn has(&self, keyword: &str) -> bool {
        self.args(keyword).is_some()
    }

    /// The parameters of `keyword`'s line, upper-cased (the mechanisms of `AUTH`, the limit of
    /// `SIZE`); the first line wins when a server announces a keyword twice.
    pub fn args(&self, keyword: &str) -> Option<&[String]> {
        self.lines
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(keyword))
            .map(|(_, args)| args.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ehlo(lines: &[&str]) -> EhloKeywords {
        let lines = lines.iter().map(|l| l.to_string()).collect();
        EhloKeywords::parse(&Reply::multiline(250, None, lines))
    }

    #[test]
    fn keywords_and_their_parameters_in_any_case() {
        let k = ehlo(&[
            "mx.example.net greets you",
            "pipelining",
            "SIZE 10240000",
            "auth=LOGIN",
            "STARTTLS",
            "AUTH plain login",
        ]);
        assert!(k.has("PIPELINING") && k.has("starttls"));
        assert_eq!(k.args("size"), Some(&["10240000".to_string()][..]));
        // The first AUTH line wins, whichever spelling it uses.
        assert_eq!(k.args("AUTH"), Some(&["LOGIN".to_string()][..]));
        assert_eq!(k.args("8BITMIME"), None);
    }

    #[test]
    fn the_greeting_line_is_no_keyword() {
        assert!(!ehlo(&["STARTTLS"]).has("STARTTLS"));
        assert!(!ehlo(&["mx STARTTLS"]).has("STARTTLS"));
        assert!(!ehlo(&["mx", ""]).has(""));
    }
}

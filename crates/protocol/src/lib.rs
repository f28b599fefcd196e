//! SMTP protocol pieces shared by relayward's server and its open-relay tester.
//!
//! Everything here is sans-I/O: parsers take bytes or strings and return values, so the same
//! grammar decides what the server accepts and what the tester sends, and every rule can be
//! tested (and fuzzed) without a socket.
//!
//! - [`limits`]: the RFC 5321 §4.5.3 size limits.
//! - [`line`]: splitting a byte stream into CRLF-terminated command lines, strictly.
//! - [`command`]: the command parser (EHLO … AUTH, ESMTP parameters).
//! - [`ehlo`]: the service extensions of an EHLO reply, for the clients.
//! - [`reply`]: replies with RFC 3463 enhanced codes; building them and parsing them.
//! - [`path`]: RFC 5321 paths: local parts, domains, address literals, source routes.
//! - [`resolve`]: what an address *means* for routing: the single input of the relay decision.
//! - [`route`]: where a resolved recipient goes (class and next hop): the one router.
//! - [`date`]: RFC 5322 dates for trace and report headers.
//! - [`dsn`]: RFC 3461 DSN parameters (NOTIFY, RET, ENVID, ORCPT) and xtext.
//! - [`idn`]: internationalised domain names in one canonical (A-label) form.
//! - [`data`]: the DATA receiver: dot-unstuffing, end only on CRLF.CRLF, no bare CR/LF.
//! - [`header`]: a message's header section: fields, `Received:` counts, automatic replies.
//! - [`bdat`]: the BDAT (CHUNKING) receiver, with the same content rules as DATA.
//! - [`battery`]: the relay-trick battery used by `relayward probe` and `relayward check-config`.
//! - [`wrap`]: folding and wrapping lines to 998 octets on the way out.
//! - [`text`]: escaping text from the other side before it reaches a log, a table or a terminal.

pub mod battery;
pub mod bdat;
pub mod command;
pub mod data;
pub mod date;
pub mod dsn;
pub mod ehlo;
pub mod header;
pub mod idn;
pub mod limits;
pub mod line;
pub mod path;
pub mod reply;
pub mod resolve;
pub mod route;
pub mod signing;
pub mod text;
pub mod wrap;

//! The relay-trick battery: every known way to talk a server into relaying.
//!
//! One list, used by `relayward probe` against live servers and by `relayward check-config`
//! against the relay policy in-process, so the server is always tested with the tester's tricks.
//!
//! The list is the deduplicated union of nmap's `smtp-open-relay` (16 tests), Metasploit's
//! `smtp_relay` (extended), the abuse.net / mail-abuse.org batteries, mailradar's methods and the
//! 20-test scripts (see `shared/research/relay-testers.md` §6, U01–U34), plus variants none of
//! them send: IPv6 literals, several-hop source routes, quoted local parts hiding `!`, external
//! address literals.
//!
//! Tricks are pure data: command-line templates with placeholders. [`render`] fills them from a
//! [`TrickContext`] and returns complete command lines (without CRLF), byte for byte what the
//! tester writes — malformed on purpose, so nothing here goes through the path parser.
//!
//! Placeholders: `{su}` sender user, `{fd}` from-domain, `{ru}` recipient user, `{td}`
//! to-domain, `{host}` target host name, `{local}` a domain the target is final for, `{lit}` the
//! target's address literal, `{lit6}` the same address written as an IPv6 literal (IPv4-mapped
//! for an IPv4 target, uncompressed for an IPv6 one), `{xip}` / `{xlit}` an external address
//! bare / as a literal.
//!
//! Internationalised spellings (RFC 6531 SMTPUTF8 tricks, sent with `MAIL … SMTPUTF8`):
//! `{tdw}` / `{localw}` the to-domain / local domain in fullwidth letters (the *same* domain
//! under UTS 46), `{localc}` a look-alike of the local domain with one letter replaced by its
//! Cyrillic twin and `{localca}` that look-alike as an A-label (both *other* domains),
//! `{localu}` the local domain with an accent added (another domain). A server whose relay
//! check compares one spelling while its router uses another relays through these.
//!
//! Tricks that are not a MAIL/RCPT pair — XCLIENT and PROXY-header spoofing, a failed AUTH,
//! pipelined commands, a local recipient before the external one (research U43–U45, U52, U56)
//! — are session-level and live in the probe crate (`relayward_probe::special`); their ids never
//! collide with these.

use std::net::{IpAddr, Ipv4Addr};

/// What part of the transaction a trick plays with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrickKind {
    /// The sender is the trick; the recipient is a plain external address.
    Sender,
    /// The recipient is the trick; the sender is a plain external address.
    Recipient,
    /// The command syntax is the trick (brackets, spaces, case).
    Syntax,
}

impl TrickKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TrickKind::Sender => "sender",
            TrickKind::Recipient => "recipient",
            TrickKind::Syntax => "syntax",
        }
    }
}

/// One relay trick: a MAIL/RCPT pair and the server bug it aims at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trick {
    /// Stable identifier, used in reports, JSON and `check-config`. Never renamed.
    pub id: &'static str,
    /// One line: what is sent.
    pub description: &'static str,
    /// The server bug it targets.
    pub targets: &'static str,
    pub kind: TrickKind,
    /// `MAIL` command-line template.
    pub mail_from: &'static str,
    /// `RCPT` command-line template.
    pub rcpt_to: &'static str,
    /// A server that accepts *any* user at its own domains (catch-all) would accept this
    /// recipient without relaying anything, so an accept-all server explains a 250 here.
    pub looks_local: bool,
}

/// Everything a template may refer to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrickContext {
    /// Domain of the external sender (`{fd}`).
    pub from_domain: String,
    /// Domain of the external recipient (`{td}`): in confirm mode, the tester's own domain.
    pub to_domain: String,
    /// A domain the target is the final destination for (`{local}`), if known.
    pub local_domain: Option<String>,
    /// The target's own host name (`{host}`), from its banner/EHLO or the command line.
    pub target_host: Option<String>,
    /// The target's address (`{lit}`, `{lit6}`).
    pub target_ip: IpAddr,
    /// Local part of the external sender (`{su}`).
    pub sender_user: String,
    /// Local part of the external recipient (`{ru}`).
    pub recipient_user: String,
    /// An address outside the target (`{xip}`, `{xlit}`).
    pub external_ip: IpAddr,
}

/// The nmap/mailradar names, so that logs of the target read like those of known testers.
pub const DEFAULT_SENDER_USER: &str = "antispam";
pub const DEFAULT_RECIPIENT_USER: &str = "relaytest";
/// TEST-NET-1 (RFC 5737): never a real host, so a relay towards it proves nothing was delivered
/// anywhere by accident.
pub const DEFAULT_EXTERNAL_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

impl TrickContext {
    /// A context with the default user names and external address, no host and no local
    /// domain.
    pub fn new(from_domain: &str, to_domain: &str, target_ip: IpAddr) -> Self {
        Self {
            from_domain: from_domain.to_string(),
            to_domain: to_domain.to_string(),
            local_domain: None,
            target_host: None,
            target_ip,
            sender_user: DEFAULT_SENDER_USER.to_string(),
            recipient_user: DEFAULT_RECIPIENT_USER.to_string(),
            external_ip: DEFAULT_EXTERNAL_IP,
        }
    }
}

/// A trick with its placeholders filled: complete command lines, without CRLF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedTrick {
    pub id: &'static str,
    /// e.g. `MAIL FROM:<>`
    pub mail_from: String,
    /// e.g. `RCPT TO:<relaytest%example.net@[192.0.2.7]>`
    pub rcpt_to: String,
}

const EXT_MAIL: &str = "MAIL FROM:<{su}@{fd}>";
/// The external sender, declaring SMTPUTF8 so that UTF-8 recipients are legal (RFC 6531).
const UTF8_MAIL: &str = "MAIL FROM:<{su}@{fd}> SMTPUTF8";
const EXT_RCPT: &str = "RCPT TO:<{ru}@{td}>";

/// Shorthand constructor so the table below stays one line of meaning per trick.
const fn t(
    id: &'static str,
    kind: TrickKind,
    mail_from: &'static str,
    rcpt_to: &'static str,
    looks_local: bool,
    description: &'static str,
    targets: &'static str,
) -> Trick {
    Trick {
        id,
        description,
        targets,
        kind,
        mail_from,
        rcpt_to,
        looks_local,
    }
}

use TrickKind::{Recipient as R, Sender as S, Syntax as X};

const PERCENT: &str =
    "%-hack: the local part is rewritten into a new address after the relay check";
const DOUBLE_AT: &str = "last-@ parsing: the part before the final @ is re-resolved as an address";
const QUOTED: &str = "quoted local part dequoted after the relay check (resolve_dequoted_address)";
const ROUTE: &str = "RFC 821 source route honoured: mail forwarded to the last hop";
const BANG: &str = "UUCP bang path swapped to domain form after the relay check";
const CONFUSABLE: &str = "domains compared after a lossy fold (look-alike letters or accents \
dropped): the relay check sees a local domain, delivery another";

/// The battery, in the order it is run: senders first (the classic order), then recipients,
/// then syntax variants.
#[rustfmt::skip]
static BATTERY: &[Trick] = &[
    // --- sender tricks: recipient is plain external ---
    t("plain-external", S, EXT_MAIL, EXT_RCPT, false,
      "external sender to external recipient",
      "no relay restriction at all (promiscuous relay, over-wide trusted networks)"),
    t("null-sender", S, "MAIL FROM:<>", EXT_RCPT, false,
      "null reverse-path (bounce) to external recipient",
      "null sender exempted from relay checks"),
    t("unqualified-sender", S, "MAIL FROM:<{su}>", EXT_RCPT, false,
      "sender without a domain",
      "unqualified sender gets the local domain appended and is then trusted as local"),
    t("localhost-sender", S, "MAIL FROM:<{su}@localhost>", EXT_RCPT, false,
      "sender at localhost",
      "\"localhost\" counted as a local sender domain"),
    t("host-name-sender", S, "MAIL FROM:<{su}@{host}>", EXT_RCPT, false,
      "sender at the target's own host name",
      "relay allowed by sender domain (sendmail relay_local_from)"),
    t("ip-literal-sender", S, "MAIL FROM:<{su}@{lit}>", EXT_RCPT, false,
      "sender at the target's own address literal",
      "own address literal as sender treated as local"),
    t("ipv6-literal-sender", S, "MAIL FROM:<{su}@{lit6}>", EXT_RCPT, false,
      "sender at the target's address written as an IPv6 literal",
      "own-address check on the literal's text, not its value"),
    t("local-domain-sender", S, "MAIL FROM:<{su}@{local}>", EXT_RCPT, false,
      "sender at a domain the target is final for",
      "relay based on a (spoofable) local sender domain"),
    t("local-postmaster-sender", S, "MAIL FROM:<postmaster@{local}>", EXT_RCPT, false,
      "postmaster of a local domain as sender",
      "relay based on a whitelisted local sender"),
    t("local-mailer-daemon-sender", S, "MAIL FROM:<mailer-daemon@{local}>", EXT_RCPT, false,
      "mailer-daemon of a local domain as sender",
      "relay based on a whitelisted local sender"),
    // --- recipient tricks: sender is plain external ---
    t("percent-hack-ip-literal", R, EXT_MAIL, "RCPT TO:<{ru}%{td}@{lit}>", true,
      "percent hack at the target's address literal", PERCENT),
    t("percent-hack-ipv6-literal", R, EXT_MAIL, "RCPT TO:<{ru}%{td}@{lit6}>", true,
      "percent hack at the target's address as an IPv6 literal", PERCENT),
    t("percent-hack-host-name", R, EXT_MAIL, "RCPT TO:<{ru}%{td}@{host}>", true,
      "percent hack at the target's host name", PERCENT),
    t("percent-hack-local-domain", R, EXT_MAIL, "RCPT TO:<{ru}%{td}@{local}>", true,
      "percent hack at a local domain", PERCENT),
    t("percent-hack-unqualified", R, EXT_MAIL, "RCPT TO:<{ru}%{td}>", true,
      "percent hack with no domain at all",
      "unqualified recipient completed with the local domain, then %-hack"),
    t("percent-hack-empty-domain", R, EXT_MAIL, "RCPT TO:<{ru}%{td}@>", true,
      "percent hack with an empty domain after @",
      "empty domain taken as local, then %-hack"),
    t("percent-hack-bracketed-empty-domain", R, EXT_MAIL, "RCPT TO:<{ru}%[{td}]@>", true,
      "percent hack to a bracketed name, empty domain",
      "bracketed non-address literal plus empty domain"),
    t("quoted-at", R, EXT_MAIL, "RCPT TO:<\"{ru}@{td}\">", true,
      "whole external address quoted as a local part", QUOTED),
    t("quoted-percent", R, EXT_MAIL, "RCPT TO:<\"{ru}%{td}\">", true,
      "quoted percent-hack address as a local part", QUOTED),
    t("quoted-bang", R, EXT_MAIL, "RCPT TO:<\"{td}!{ru}\">", true,
      "quoted bang path as a local part", QUOTED),
    t("double-at-ip-literal", R, EXT_MAIL, "RCPT TO:<{ru}@{td}@{lit}>", true,
      "external address followed by @ the target's literal", DOUBLE_AT),
    t("double-at-ipv6-literal", R, EXT_MAIL, "RCPT TO:<{ru}@{td}@{lit6}>", true,
      "external address followed by @ the target's IPv6 literal", DOUBLE_AT),
    t("double-at-host-name", R, EXT_MAIL, "RCPT TO:<{ru}@{td}@{host}>", true,
      "external address followed by @ the target's host name", DOUBLE_AT),
    t("double-at-local-domain", R, EXT_MAIL, "RCPT TO:<{ru}@{td}@{local}>", true,
      "external address followed by @ a local domain", DOUBLE_AT),
    t("double-at-empty-domain", R, EXT_MAIL, "RCPT TO:<{ru}@{td}@>", true,
      "external address followed by an empty domain",
      "empty trailing domain taken as local"),
    t("double-at-bracketed-empty-domain", R, EXT_MAIL, "RCPT TO:<{ru}@[{td}]@>", true,
      "bracketed external name followed by an empty domain",
      "bracketed non-address literal plus empty domain"),
    t("quoted-at-ip-literal", R, EXT_MAIL, "RCPT TO:<\"{ru}@{td}\"@{lit}>", true,
      "quoted external address at the target's literal", QUOTED),
    t("quoted-at-ipv6-literal", R, EXT_MAIL, "RCPT TO:<\"{ru}@{td}\"@{lit6}>", true,
      "quoted external address at the target's IPv6 literal", QUOTED),
    t("quoted-at-host-name", R, EXT_MAIL, "RCPT TO:<\"{ru}@{td}\"@{host}>", true,
      "quoted external address at the target's host name", QUOTED),
    t("quoted-at-local-domain", R, EXT_MAIL, "RCPT TO:<\"{ru}@{td}\"@{local}>", true,
      "quoted external address at a local domain", QUOTED),
    t("quoted-percent-ip-literal", R, EXT_MAIL, "RCPT TO:<\"{ru}%{td}\"@{lit}>", true,
      "quoted percent hack at the target's literal", QUOTED),
    t("quoted-percent-host-name", R, EXT_MAIL, "RCPT TO:<\"{ru}%{td}\"@{host}>", true,
      "quoted percent hack at the target's host name", QUOTED),
    t("quoted-percent-local-domain", R, EXT_MAIL, "RCPT TO:<\"{ru}%{td}\"@{local}>", true,
      "quoted percent hack at a local domain", QUOTED),
    t("quoted-bang-ip-literal", R, EXT_MAIL, "RCPT TO:<\"{td}!{ru}\"@{lit}>", true,
      "quoted bang path at the target's literal", QUOTED),
    t("quoted-bang-host-name", R, EXT_MAIL, "RCPT TO:<\"{td}!{ru}\"@{host}>", true,
      "quoted bang path at the target's host name", QUOTED),
    t("quoted-bang-local-domain", R, EXT_MAIL, "RCPT TO:<\"{td}!{ru}\"@{local}>", true,
      "quoted bang path at a local domain", QUOTED),
    t("source-route-ip-literal", R, EXT_MAIL, "RCPT TO:<@{lit}:{ru}@{td}>", false,
      "source route through the target's literal", ROUTE),
    t("source-route-ipv6-literal", R, EXT_MAIL, "RCPT TO:<@{lit6}:{ru}@{td}>", false,
      "source route through the target's IPv6 literal", ROUTE),
    t("source-route-host-name", R, EXT_MAIL, "RCPT TO:<@{host}:{ru}@{td}>", false,
      "source route through the target's host name", ROUTE),
    t("source-route-local-domain", R, EXT_MAIL, "RCPT TO:<@{local}:{ru}@{td}>", false,
      "source route through a local domain", ROUTE),
    t("source-route-two-literals", R, EXT_MAIL, "RCPT TO:<@{lit},@{lit6}:{ru}@{td}>", false,
      "two-hop source route through the target's two literals", ROUTE),
    t("source-route-two-hops", R, EXT_MAIL, "RCPT TO:<@{host},@{lit}:{ru}@{td}>", false,
      "two-hop source route: host name, then literal", ROUTE),
    t("source-route-three-hops", R, EXT_MAIL, "RCPT TO:<@{local},@{host},@{lit}:{ru}@{td}>", false,
      "three-hop source route: local domain, host name, literal", ROUTE),
    t("bang-path", R, EXT_MAIL, "RCPT TO:<{td}!{ru}>", true,
      "bare UUCP bang path", BANG),
    t("bang-path-ip-literal", R, EXT_MAIL, "RCPT TO:<{td}!{ru}@{lit}>", true,
      "bang path at the target's literal", BANG),
    t("bang-path-ipv6-literal", R, EXT_MAIL, "RCPT TO:<{td}!{ru}@{lit6}>", true,
      "bang path at the target's IPv6 literal", BANG),
    t("bang-path-host-name", R, EXT_MAIL, "RCPT TO:<{td}!{ru}@{host}>", true,
      "bang path at the target's host name", BANG),
    t("bang-path-local-domain", R, EXT_MAIL, "RCPT TO:<{td}!{ru}@{local}>", true,
      "bang path at a local domain", BANG),
    t("bang-path-two-hops", R, EXT_MAIL, "RCPT TO:<{host}!{td}!{ru}>", true,
      "two-hop bang path starting at the target's host name", BANG),
    t("ip-literal-external", R, EXT_MAIL, "RCPT TO:<{ru}@{xlit}>", false,
      "recipient at an external address literal",
      "relay check applied to domain names only, not to address literals"),
    t("bare-ip-external", R, EXT_MAIL, "RCPT TO:<{ru}@{xip}>", false,
      "recipient at an unbracketed external IP address",
      "bare IP taken as a host name and resolved, bypassing the domain check"),
    // --- syntax variants of the plain test ---
    t("no-angle-brackets", X, "MAIL FROM: {su}@{fd}", "RCPT TO: {ru}@{td}", false,
      "MAIL and RCPT without angle brackets (old Metasploit style)",
      "lax legacy address parser path skips the relay check"),
    t("rcpt-no-angle-brackets", X, EXT_MAIL, "RCPT TO:{ru}@{td}", false,
      "RCPT without angle brackets or space",
      "lax legacy address parser path skips the relay check"),
    t("space-before-bracket", X, "MAIL FROM: <{su}@{fd}>", "RCPT TO: <{ru}@{td}>", false,
      "space between the colon and the bracket (mail-abuse.org style)",
      "lenient syntax path skips the relay check"),
    t("lowercase-verbs", X, "mail from:<{su}@{fd}>", "rcpt to:<{ru}@{td}>", false,
      "lower-case verbs",
      "verb case handled by a different code path"),
    t("maps-quote-test", X, "mail from: <{su}@{host}>", "rcpt to: <\"{ru}@{td}\">", true,
      "the mail-abuse.org \"Quote test\" verbatim: own-host sender, quoted recipient",
      "quoted recipient plus local-looking sender on the lenient syntax path"),
    // --- internationalised spellings (SMTPUTF8, IDN) ---
    t("idn-fullwidth-external", R, UTF8_MAIL, "RCPT TO:<{ru}@{tdw}>", false,
      "external recipient with its domain in fullwidth letters (the same domain under UTS 46)",
      "relay check on the raw text while delivery maps the name with UTS 46"),
    t("idn-confusable-local-domain", R, UTF8_MAIL, "RCPT TO:<{ru}@{localc}>", false,
      "recipient at a look-alike of a local domain (one letter Cyrillic)", CONFUSABLE),
    t("idn-confusable-a-label", R, EXT_MAIL, "RCPT TO:<{ru}@{localca}>", false,
      "the look-alike of a local domain written as an A-label (xn--)", CONFUSABLE),
    t("idn-diacritic-local-domain", R, UTF8_MAIL, "RCPT TO:<{ru}@{localu}>", false,
      "recipient at a local domain with an accent added", CONFUSABLE),
    t("idn-percent-hack-fullwidth-local", R, UTF8_MAIL, "RCPT TO:<{ru}%{td}@{localw}>", true,
      "percent hack at a local domain written in fullwidth letters", PERCENT),
    t("idn-quoted-at-fullwidth-local", R, UTF8_MAIL, "RCPT TO:<\"{ru}@{tdw}\"@{localw}>", true,
      "quoted external address (fullwidth domain) at a local domain in fullwidth letters", QUOTED),
];

/// The whole battery, in run order.
pub fn battery() -> &'static [Trick] {
    BATTERY
}

/// Looks a trick up by id.
pub fn trick(id: &str) -> Option<&'static Trick> {
    BATTERY.iter().find(|t| t.id == id)
}

/// Fills a trick's templates. `None` when the context lacks a piece the trick needs (no host
/// name, no local domain) or when a context value could break the command line (whitespace,
/// control characters, brackets): a value from a hostile banner must never inject a command.
pub fn render(trick: &Trick, ctx: &TrickContext) -> Option<RenderedTrick> {
    Some(RenderedTrick {
        id: trick.id,
        mail_from: fill(trick.mail_from, ctx)?,
        rcpt_to: fill(trick.rcpt_to, ctx)?,
    })
}

/// What a calibration probe shows when the server accepts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CalibrationKind {
    /// An invented user at one of the target's own names: accepted means catch-all.
    InventedLocalUser,
    /// A user at an invented `.invalid` domain: accepted means RCPT accepts anything.
    InventedDomain,
}

/// One accept-all check: a plain transaction to an address that cannot exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calibration {
    pub kind: CalibrationKind,
    pub probe: RenderedTrick,
}

/// Accept-all checks (research §8.4): RCPT to invented users at the target's own names and to
/// an invented `.invalid` domain. `nonce` makes the names unguessable (lower-case letters and
/// digits; the caller draws it at random, which keeps this module deterministic).
pub fn calibration_probes(ctx: &TrickContext, nonce: &str) -> Vec<Calibration> {
    if !nonce
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        || nonce.is_empty()
    {
        return Vec::new();
    }
    let user = format!("rw-{nonce}");
    let local = |id, template: String| {
        let rcpt = fill(&template, ctx)?;
        Some(Calibration {
            kind: CalibrationKind::InventedLocalUser,
            probe: RenderedTrick {
                id,
                mail_from: fill(EXT_MAIL, ctx)?,
                rcpt_to: rcpt,
            },
        })
    };
    let mut out: Vec<Calibration> = [
        local(
            "calib-random-local-user",
            format!("RCPT TO:<{user}@{{local}}>"),
        ),
        local(
            "calib-random-host-user",
            format!("RCPT TO:<{user}@{{host}}>"),
        ),
        local(
            "calib-random-literal-user",
            format!("RCPT TO:<{user}@{{lit}}>"),
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    if let Some(mail_from) = fill(EXT_MAIL, ctx) {
        out.push(Calibration {
            kind: CalibrationKind::InventedDomain,
            probe: RenderedTrick {
                id: "calib-invalid-domain",
                mail_from,
                rcpt_to: format!("RCPT TO:<x@{nonce}.invalid>"),
            },
        });
    }
    out
}

/// The target's address as a domain literal: `[192.0.2.7]` or `[IPv6:2001:db8::7]`.
pub fn address_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("[{v4}]"),
            None => format!("[IPv6:{v6}]"),
        },
    }
}

/// The same address in another spelling: IPv4-mapped IPv6 for IPv4, uncompressed for IPv6.
/// A server that compares literal *text* with its own address misses these.
fn alternate_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("[IPv6:::ffff:{v4}]"),
        IpAddr::V6(v6) => {
            let groups: Vec<String> = v6.segments().iter().map(|s| format!("{s:x}")).collect();
            format!("[IPv6:{}]", groups.join(":"))
        }
    }
}

/// A value safe to paste into a command line.
fn safe(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 255
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b'{' | b'}'))
}

/// A value with non-ASCII letters safe to paste into a command line: what [`safe`] allows,
/// plus non-ASCII characters that are not controls or blanks.
fn safe_utf8(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 255
        && value.chars().all(|c| {
            if c.is_ascii() {
                c.is_ascii_graphic() && !matches!(c, '<' | '>' | '{' | '}')
            } else {
                !c.is_control() && !c.is_whitespace()
            }
        })
}

/// The internationalised spellings; `None` for other names, `Some(None)` when the base value
/// is missing or unsafe.
fn idn_placeholder(name: &str, ctx: &TrickContext) -> Option<Option<String>> {
    let base = |value: Option<&String>| value.filter(|v| safe(v)).cloned();
    let local = || base(ctx.local_domain.as_ref());
    Some(match name {
        "tdw" => base(Some(&ctx.to_domain)).map(|d| fullwidth(&d)),
        "localw" => local().map(|d| fullwidth(&d)),
        "localc" => local().map(|d| look_alike(&d)),
        "localca" => local()
            .map(|d| look_alike(&d))
            .and_then(|d| crate::idn::to_ascii(&d).ok()),
        "localu" => local().map(|d| accented(&d)),
        _ => return None,
    })
}

/// Every ASCII letter, digit, `-` and `.` as its fullwidth form (U+FF01…U+FF5E), which UTS 46
/// maps back: the same domain in another spelling.
fn fullwidth(domain: &str) -> String {
    domain
        .chars()
        .map(|c| match c {
            '!'..='~' => char::from_u32(u32::from(c) + 0xFEE0).unwrap_or(c),
            c => c,
        })
        .collect()
}

/// The first letter of the first label that has a Cyrillic twin, replaced by it (`e` → `е`):
/// looks the same, is another domain. Falls back to [`accented`] for names without such a
/// letter.
fn look_alike(domain: &str) -> String {
    const TWINS: &[(char, char)] = &[
        ('a', 'а'),
        ('c', 'с'),
        ('e', 'е'),
        ('i', 'і'),
        ('j', 'ј'),
        ('o', 'о'),
        ('p', 'р'),
        ('s', 'ѕ'),
        ('x', 'х'),
        ('y', 'у'),
    ];
    replace_first_in_first_label(domain, TWINS).unwrap_or_else(|| accented(domain))
}

/// The first vowel (or `c`, `n`) of the first label with an accent (`e` → `ë`); a name without
/// one gets `ä` in front of its first label.
fn accented(domain: &str) -> String {
    const ACCENTS: &[(char, char)] = &[
        ('a', 'ä'),
        ('e', 'ë'),
        ('i', 'ï'),
        ('o', 'ö'),
        ('u', 'ü'),
        ('y', 'ÿ'),
        ('c', 'ç'),
        ('n', 'ñ'),
    ];
    replace_first_in_first_label(domain, ACCENTS).unwrap_or_else(|| format!("ä{domain}"))
}

fn replace_first_in_first_label(domain: &str, pairs: &[(char, char)]) -> Option<String> {
    let first_label_end = domain.find('.').unwrap_or(domain.len());
    let (at, twin) = domain[..first_label_end]
        .char_indices()
        .find_map(|(i, c)| {
            let lower = c.to_ascii_lowercase();
            pairs
                .iter()
                .find(|(from, _)| *from == lower)
                .map(|&(_, to)| (i, to))
        })?;
    let mut out = String::with_capacity(domain.len() + 2);
    out.push_str(&domain[..at]);
    out.push(twin);
    out.push_str(&domain[at + 1..]);
    Some(out)
}

fn fill(template: &str, ctx: &TrickContext) -> Option<String> {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = start + rest[start..].find('}')?;
        out.push_str(&placeholder(&rest[start + 1..end], ctx)?);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

fn placeholder(name: &str, ctx: &TrickContext) -> Option<String> {
    if let Some(value) = idn_placeholder(name, ctx) {
        return value.filter(|v| safe_utf8(v));
    }
    let value = match name {
        "su" => ctx.sender_user.clone(),
        "fd" => ctx.from_domain.clone(),
        "ru" => ctx.recipient_user.clone(),
        "td" => ctx.to_domain.clone(),
        "host" => ctx.target_host.clone()?,
        "local" => ctx.local_domain.clone()?,
        "lit" => address_literal(ctx.target_ip),
        "lit6" => alternate_literal(ctx.target_ip),
        "xip" => ctx.external_ip.to_string(),
        "xlit" => address_literal(ctx.external_ip),
        _ => return None,
    };
    safe(&value).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn full_ctx() -> TrickContext {
        let mut ctx = TrickContext::new("from.test", "to.test", "192.0.2.7".parse().unwrap());
        ctx.local_domain = Some("example.test".into());
        ctx.target_host = Some("mx.example.test".into());
        ctx
    }

    #[test]
    fn ids_are_unique_and_kebab_case() {
        let mut seen = HashSet::new();
        for t in battery() {
            assert!(seen.insert(t.id), "duplicate id {}", t.id);
            assert!(
                t.id.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{}",
                t.id
            );
            assert!(!t.description.is_empty() && !t.targets.is_empty());
        }
    }

    /// Ids are a public contract (reports, JSON, check-config). This list may only grow.
    #[rustfmt::skip]
    #[test]
    fn ids_are_stable() {
        let ids: Vec<&str> = battery().iter().map(|t| t.id).collect();
        let expected = [
            "plain-external", "null-sender", "unqualified-sender", "localhost-sender",
            "host-name-sender", "ip-literal-sender", "ipv6-literal-sender",
            "local-domain-sender", "local-postmaster-sender", "local-mailer-daemon-sender",
            "percent-hack-ip-literal", "percent-hack-ipv6-literal", "percent-hack-host-name",
            "percent-hack-local-domain", "percent-hack-unqualified", "percent-hack-empty-domain",
            "percent-hack-bracketed-empty-domain", "quoted-at", "quoted-percent", "quoted-bang",
            "double-at-ip-literal", "double-at-ipv6-literal", "double-at-host-name",
            "double-at-local-domain", "double-at-empty-domain",
            "double-at-bracketed-empty-domain", "quoted-at-ip-literal", "quoted-at-ipv6-literal",
            "quoted-at-host-name", "quoted-at-local-domain", "quoted-percent-ip-literal",
            "quoted-percent-host-name", "quoted-percent-local-domain", "quoted-bang-ip-literal",
            "quoted-bang-host-name", "quoted-bang-local-domain", "source-route-ip-literal",
            "source-route-ipv6-literal", "source-route-host-name", "source-route-local-domain",
            "source-route-two-literals", "source-route-two-hops", "source-route-three-hops",
            "bang-path", "bang-path-ip-literal", "bang-path-ipv6-literal", "bang-path-host-name",
            "bang-path-local-domain", "bang-path-two-hops", "ip-literal-external",
            "bare-ip-external", "no-angle-brackets", "rcpt-no-angle-brackets",
            "space-before-bracket", "lowercase-verbs", "maps-quote-test",
            "idn-fullwidth-external", "idn-confusable-local-domain", "idn-confusable-a-label",
            "idn-diacritic-local-domain", "idn-percent-hack-fullwidth-local",
            "idn-quoted-at-fullwidth-local",
        ];
        assert_eq!(ids, expected);
    }

    /// Research §6 id → the trick (or calibration probe) that covers it, rendered with the
    /// research's placeholders, so a drift in either is caught.
    #[rustfmt::skip]
    #[test]
    fn every_research_trick_is_present() {
        let table: &[(&str, &str, &str, &str)] = &[
            ("U01", "plain-external", "MAIL FROM:<antispam@from.test>", "RCPT TO:<relaytest@to.test>"),
            ("U02", "null-sender", "MAIL FROM:<>", "RCPT TO:<relaytest@to.test>"),
            ("U03", "unqualified-sender", "MAIL FROM:<antispam>", "RCPT TO:<relaytest@to.test>"),
            ("U04", "localhost-sender", "MAIL FROM:<antispam@localhost>", "RCPT TO:<relaytest@to.test>"),
            ("U05", "host-name-sender", "MAIL FROM:<antispam@mx.example.test>", "RCPT TO:<relaytest@to.test>"),
            ("U06", "ip-literal-sender", "MAIL FROM:<antispam@[192.0.2.7]>", "RCPT TO:<relaytest@to.test>"),
            ("U07", "local-domain-sender", "MAIL FROM:<antispam@example.test>", "RCPT TO:<relaytest@to.test>"),
            ("U07", "local-postmaster-sender", "MAIL FROM:<postmaster@example.test>", "RCPT TO:<relaytest@to.test>"),
            ("U07", "local-mailer-daemon-sender", "MAIL FROM:<mailer-daemon@example.test>", "RCPT TO:<relaytest@to.test>"),
            ("U08", "percent-hack-ip-literal", "", "RCPT TO:<relaytest%to.test@[192.0.2.7]>"),
            ("U09", "percent-hack-host-name", "", "RCPT TO:<relaytest%to.test@mx.example.test>"),
            ("U10", "percent-hack-local-domain", "", "RCPT TO:<relaytest%to.test@example.test>"),
            ("U11", "quoted-at", "", "RCPT TO:<\"relaytest@to.test\">"),
            ("U12", "quoted-percent", "", "RCPT TO:<\"relaytest%to.test\">"),
            ("U13", "double-at-ip-literal", "", "RCPT TO:<relaytest@to.test@[192.0.2.7]>"),
            ("U14", "double-at-host-name", "", "RCPT TO:<relaytest@to.test@mx.example.test>"),
            ("U15", "double-at-local-domain", "", "RCPT TO:<relaytest@to.test@example.test>"),
            ("U16", "quoted-at-ip-literal", "", "RCPT TO:<\"relaytest@to.test\"@[192.0.2.7]>"),
            ("U17", "quoted-at-host-name", "", "RCPT TO:<\"relaytest@to.test\"@mx.example.test>"),
            ("U18", "quoted-at-local-domain", "", "RCPT TO:<\"relaytest@to.test\"@example.test>"),
            ("U19", "source-route-ip-literal", "", "RCPT TO:<@[192.0.2.7]:relaytest@to.test>"),
            ("U20", "source-route-host-name", "", "RCPT TO:<@mx.example.test:relaytest@to.test>"),
            ("U21", "source-route-local-domain", "", "RCPT TO:<@example.test:relaytest@to.test>"),
            ("U23", "bang-path", "", "RCPT TO:<to.test!relaytest>"),
            ("U24", "bang-path-ip-literal", "", "RCPT TO:<to.test!relaytest@[192.0.2.7]>"),
            ("U25", "bang-path-host-name", "", "RCPT TO:<to.test!relaytest@mx.example.test>"),
            ("U26", "bang-path-local-domain", "", "RCPT TO:<to.test!relaytest@example.test>"),
            ("U28", "percent-hack-empty-domain", "", "RCPT TO:<relaytest%to.test@>"),
            ("U29", "double-at-empty-domain", "", "RCPT TO:<relaytest@to.test@>"),
            ("U30", "percent-hack-bracketed-empty-domain", "", "RCPT TO:<relaytest%[to.test]@>"),
            ("U30", "double-at-bracketed-empty-domain", "", "RCPT TO:<relaytest@[to.test]@>"),
            ("U31", "no-angle-brackets", "MAIL FROM: antispam@from.test", "RCPT TO: relaytest@to.test"),
            ("U31", "rcpt-no-angle-brackets", "", "RCPT TO:relaytest@to.test"),
            ("U33", "bare-ip-external", "", "RCPT TO:<relaytest@192.0.2.1>"),
            ("U48", "space-before-bracket", "MAIL FROM: <antispam@from.test>", "RCPT TO: <relaytest@to.test>"),
            ("U49", "lowercase-verbs", "mail from:<antispam@from.test>", "rcpt to:<relaytest@to.test>"),
        ];
        let ctx = full_ctx();
        for (uid, id, mail, rcpt) in table {
            let trick = trick(id).unwrap_or_else(|| panic!("{uid}: no trick {id}"));
            let r = render(trick, &ctx).unwrap_or_else(|| panic!("{uid}: {id} not rendered"));
            if !mail.is_empty() {
                assert_eq!(&r.mail_from, mail, "{uid} {id}");
            }
            assert_eq!(&r.rcpt_to, rcpt, "{uid} {id}");
        }
        // U34 (`user@[TARGET_IP]`) is not a relay trick: it is an accept-all calibration.
        let calib = calibration_probes(&ctx, "abc123");
        assert!(calib.iter().any(|c| c.probe.id == "calib-random-literal-user"
            && c.probe.rcpt_to == "RCPT TO:<rw-abc123@[192.0.2.7]>"));
        // Every research id from U01 to U34 that §6 lists is in the table above.
        let listed: HashSet<&str> = table.iter().map(|r| r.0).collect();
        for n in (1..=34).filter(|n| ![22, 27, 32, 34].contains(n)) {
            assert!(listed.contains(format!("U{n:02}").as_str()), "U{n:02} missing");
        }
    }

    #[test]
    fn rendering_fills_every_placeholder() {
        let ctx = full_ctx();
        for t in battery() {
            let r = render(t, &ctx).unwrap_or_else(|| panic!("{} not rendered", t.id));
            for line in [&r.mail_from, &r.rcpt_to] {
                assert!(!line.contains(['{', '}', '\r', '\n']), "{}: {line}", t.id);
            }
            assert!(
                r.mail_from.to_ascii_uppercase().starts_with("MAIL FROM:"),
                "{}",
                t.id
            );
            assert!(
                r.rcpt_to.to_ascii_uppercase().starts_with("RCPT TO:"),
                "{}",
                t.id
            );
        }
    }

    #[test]
    fn missing_pieces_skip_only_the_tricks_that_need_them() {
        let ctx = TrickContext::new("from.test", "to.test", "192.0.2.7".parse().unwrap());
        let skipped: Vec<&str> = battery()
            .iter()
            .filter(|t| render(t, &ctx).is_none())
            .map(|t| t.id)
            .collect();
        for id in &skipped {
            let t = trick(id).unwrap();
            let both = format!("{}{}", t.mail_from, t.rcpt_to);
            assert!(both.contains("{host}") || both.contains("{local"), "{id}");
        }
        assert!(render(trick("plain-external").unwrap(), &ctx).is_some());
        assert!(skipped.contains(&"percent-hack-host-name"));
    }

    #[test]
    fn hostile_context_values_are_refused() {
        let mut ctx = full_ctx();
        ctx.target_host = Some("evil>\r\nRCPT TO:<x@y".into());
        assert!(render(trick("host-name-sender").unwrap(), &ctx).is_none());
        assert!(render(trick("plain-external").unwrap(), &ctx).is_some());
        assert!(calibration_probes(&ctx, "NOT valid").is_empty());
    }

    #[test]
    fn idn_spellings_are_the_same_or_another_domain_as_documented() {
        let ctx = full_ctx();
        let rcpt = |id: &str| render(trick(id).unwrap(), &ctx).unwrap().rcpt_to;
        assert_eq!(
            rcpt("idn-fullwidth-external"),
            "RCPT TO:<relaytest@ｔｏ．ｔｅｓｔ>"
        );
        assert_eq!(
            rcpt("idn-confusable-local-domain"),
            "RCPT TO:<relaytest@еxample.test>"
        );
        assert_eq!(
            rcpt("idn-diacritic-local-domain"),
            "RCPT TO:<relaytest@ëxample.test>"
        );
        let same = |a: &str, b: &str| crate::idn::same_domain(a, b);
        assert!(same("ｔｏ．ｔｅｓｔ", "to.test"));
        assert!(!same("еxample.test", "example.test"));
        assert!(!same("ëxample.test", "example.test"));
        let a_label = rcpt("idn-confusable-a-label");
        assert!(
            a_label.starts_with("RCPT TO:<relaytest@xn--") && a_label.is_ascii(),
            "{a_label}"
        );
        assert!(
            render(trick("idn-confusable-local-domain").unwrap(), &ctx)
                .unwrap()
                .mail_from
                .ends_with(" SMTPUTF8")
        );
        assert_eq!(look_alike("qqq.test"), "äqqq.test");
    }

    #[test]
    fn literals_for_both_families() {
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        assert_eq!(address_literal(v6), "[IPv6:2001:db8::7]");
        assert_eq!(alternate_literal(v6), "[IPv6:2001:db8:0:0:0:0:0:7]");
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(address_literal(v4), "[127.0.0.1]");
        assert_eq!(alternate_literal(v4), "[IPv6:::ffff:127.0.0.1]");
    }

    #[test]
    fn calibration_covers_local_names_and_invalid_domain() {
        let calib = calibration_probes(&full_ctx(), "q7");
        let ids: Vec<&str> = calib.iter().map(|c| c.probe.id).collect();
        assert_eq!(
            ids,
            [
                "calib-random-local-user",
                "calib-random-host-user",
                "calib-random-literal-user",
                "calib-invalid-domain"
            ]
        );
        assert_eq!(calib[3].probe.rcpt_to, "RCPT TO:<x@q7.invalid>");
        assert_eq!(calib[3].kind, CalibrationKind::InventedDomain);
    }
}

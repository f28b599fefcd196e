//! Property tests for the path parser and the resolver.
//!
//! 1. No input makes the parsers panic.
//! 2. Valid addresses (dot-atom or quoted, any escaping) parse, and their canonical rendering
//!    parses back to the same address.
//! 3. The invariant the relay policy relies on: any path that parses and whose dequoted local
//!    part holds `%`, `!` or `@` resolves as routed.

use proptest::prelude::*;
use relayward_protocol::path::{
    Domain, ForwardPath, parse_domain, parse_forward_path, parse_mailbox, parse_reverse_path,
};
use relayward_protocol::resolve::{resolve, resolve_mailbox};

/// One atom of RFC 5322 atext.
const ATOM: &str = "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,8}";

/// Characters that matter to the grammar, to reach deep into the parser more often than
/// uniformly random text would.
const INTERESTING: &str = "[<>@\"\\\\.%!\\[\\]:, a-zA-Z0-9_-]{0,80}";

fn dot_atom() -> impl Strategy<Value = String> {
    prop::collection::vec(ATOM, 1..5).prop_map(|atoms| atoms.join("."))
}

/// A qtextSMTP-or-quoted-pair value: anything printable, space included.
fn quoted_value() -> impl Strategy<Value = String> {
    "[ -~]{1,20}"
}

/// Writes `value` as a quoted string, escaping `"` and `\` always and other characters when
/// `escape_more` says so (quoted-pairSMTP allows escaping any printable character).
fn quote(value: &str, escape_more: &[bool]) -> String {
    let mut wire = String::from("\"");
    for (i, c) in value.chars().enumerate() {
        let forced = c == '"' || c == '\\';
        if forced || escape_more.get(i).copied().unwrap_or(false) {
            wire.push('\\');
        }
        wire.push(c);
    }
    wire.push('"');
    wire
}

fn host_name() -> impl Strategy<Value = String> {
    // Labels with `--` in the third and fourth place are IDNA's (`xn--…`): valid only when
    // they decode, which random text does not, so they are left to the IDN tests.
    let label = "[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?"
        .prop_filter("reserved IDNA label", |label: &String| {
            label.get(2..4) != Some("--")
        });
    let last = "[a-zA-Z][a-zA-Z0-9]{0,5}";
    (prop::collection::vec(label, 0..4), last).prop_map(|(mut labels, last)| {
        labels.push(last);
        labels.join(".")
    })
}

fn domain_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => host_name(),
        1 => any::<[u8; 4]>().prop_map(|o| format!("[{}.{}.{}.{}]", o[0], o[1], o[2], o[3])),
        1 => any::<[u16; 8]>().prop_map(|s| format!("[IPv6:{}]", std::net::Ipv6Addr::from(s))),
    ]
}

/// A local part as a client might write it: a dot-atom or a (variously escaped) quoted string.
fn local_wire() -> impl Strategy<Value = String> {
    prop_oneof![
        dot_atom(),
        (quoted_value(), prop::collection::vec(any::<bool>(), 20))
            .prop_map(|(value, escapes)| quote(&value, &escapes)),
    ]
}

fn route_text() -> impl Strategy<Value = String> {
    prop::collection::vec(domain_text(), 0..3).prop_map(|hops| {
        if hops.is_empty() {
            String::new()
        } else {
            let hops: Vec<String> = hops.iter().map(|h| format!("@{h}")).collect();
            format!("{}:", hops.join(","))
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parsers_never_panic_on_arbitrary_text(text in any::<String>()) {
        let _ = parse_forward_path(&text);
        let _ = parse_reverse_path(&text);
        let _ = parse_mailbox(&text);
        let _ = parse_domain(&text);
        let bracketed = format!("<{text}>");
        let _ = parse_forward_path(&bracketed);
        let _ = parse_reverse_path(&bracketed);
    }

    #[test]
    fn parsers_never_panic_on_grammar_heavy_text(text in INTERESTING) {
        let bracketed = format!("<{text}>");
        for input in [&text, &bracketed] {
            if let Ok(path) = parse_forward_path(input) {
                let resolved = resolve(&path);
                let _ = resolved.address();
            }
            let _ = parse_reverse_path(input);
        }
    }

    #[test]
    fn valid_addresses_parse_and_render_back_to_the_same_value(
        local in local_wire(),
        domain in domain_text(),
        route in route_text(),
    ) {
        let input = format!("<{route}{local}@{domain}>");
        prop_assume!(local.len() <= 64 && input.len() <= 256);
        let path = parse_forward_path(&input).map_err(|e| TestCaseError::fail(format!("{input}: {e}")))?;
        let mailbox = path.mailbox().ok_or_else(|| TestCaseError::fail("no mailbox"))?;
        let expected_domain = parse_domain(&domain).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&mailbox.domain, &expected_domain);
        if let Domain::Name(name) = &mailbox.domain {
            prop_assert_eq!(name, &domain.to_ascii_lowercase());
        }

        let reparsed_mailbox = parse_forward_path(&mailbox.to_path())
            .map_err(|e| TestCaseError::fail(format!("{}: {e}", mailbox.to_path())))?;
        let reparsed = reparsed_mailbox.mailbox().ok_or_else(|| TestCaseError::fail("no mailbox"))?;
        prop_assert_eq!(&reparsed.local.value, &mailbox.local.value);
        prop_assert_eq!(&reparsed.domain, &mailbox.domain);
        prop_assert_eq!(resolve_mailbox(reparsed).address(), resolve(&path).address());

        let rendered = path.to_string();
        let again = parse_forward_path(&rendered).map_err(|e| TestCaseError::fail(format!("{rendered}: {e}")))?;
        prop_assert_eq!(again.route(), path.route());
        prop_assert_eq!(again.to_string(), rendered);
    }

    #[test]
    fn dot_atoms_keep_their_wire_form(local in dot_atom(), domain in host_name()) {
        let input = format!("<{local}@{domain}>");
        prop_assume!(local.len() <= 64 && input.len() <= 256);
        let path = parse_forward_path(&input).map_err(|e| TestCaseError::fail(format!("{input}: {e}")))?;
        let mailbox = path.mailbox().ok_or_else(|| TestCaseError::fail("no mailbox"))?;
        prop_assert_eq!(&mailbox.local.wire, &local);
        prop_assert_eq!(&mailbox.local.value, &local);
        prop_assert!(!mailbox.local.quoted);
    }

    #[test]
    fn routing_characters_always_resolve_as_routed(
        local in local_wire(),
        domain in domain_text(),
        route in route_text(),
    ) {
        let input = format!("<{route}{local}@{domain}>");
        if let Ok(path) = parse_forward_path(&input) {
            assert_routed_when_suspicious(&path)?;
        }
    }

    #[test]
    fn routing_invariant_holds_for_grammar_heavy_text(text in INTERESTING) {
        if let Ok(path) = parse_forward_path(&format!("<{text}>")) {
            assert_routed_when_suspicious(&path)?;
        }
    }
}

/// The invariant: `%`, `!` or `@` in the dequoted local part ⇒ routed.
fn assert_routed_when_suspicious(path: &ForwardPath) -> Result<(), TestCaseError> {
    let Some(mailbox) = path.mailbox() else {
        return Ok(());
    };
    let suspicious = mailbox.local.value.contains(['%', '!', '@']);
    let resolved = resolve(path);
    prop_assert_eq!(resolved.is_routed(), suspicious, "{:?}", resolved);
    prop_assert_eq!(&resolved.local_part, &mailbox.local.value);
    prop_assert!(!resolved.is_bare_postmaster());
    Ok(())
}

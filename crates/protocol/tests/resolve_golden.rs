//! Golden table for path parsing and address resolution, in the style of Postfix's
//! `resolve_clnt.in` / `.ref`: `tests/data/resolve.table` lists each input next to what it must
//! resolve to. Every row is checked and every mismatch is reported, not just the first.
//!
//! Row formats (columns separated by ` | `):
//! - `INPUT | ok | local=L domain=D | routing=R | route=H`
//! - `INPUT | error | PathErrorVariant`
//!
//! `L` is the canonical local part (re-quoted when needed), `D` the domain (`-` for a bare
//! postmaster), `R` the routing names in order (`percent`, `bang`, `quoted-at`) or `-`, `H` the
//! stripped source route (`@a,@b`) or `-`. In every column `{TEXT*N}` stands for `TEXT` repeated
//! N times, and `{HT}`, `{CR}`, `{LF}`, `{NUL}`, `{DEL}` for those control octets, `{ZWSP}`,
//! `{RLO}`, `{SHY}` for zero width space, right-to-left override and soft hyphen, `{C1}` for
//! the C1 control U+0085.

use relayward_protocol::path::{Domain, parse_forward_path, quote_local_part};
use relayward_protocol::resolve::{Resolved, resolve};

const TABLE: &str = include_str!("data/resolve.table");

/// Replaces `{TEXT*N}` and the named control-octet tokens.
fn expand(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        match after
            .find('}')
            .and_then(|end| token(&after[1..end]).map(|t| (t, end)))
        {
            Some((expansion, end)) => {
                out.push_str(&expansion);
                rest = &after[end + 1..];
            }
            None => {
                out.push('{');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The expansion of one `{…}` token, or `None` when it is literal text (atext holds braces).
fn token(inner: &str) -> Option<String> {
    let named = match inner {
        "HT" => Some("\t"),
        "CR" => Some("\r"),
        "LF" => Some("\n"),
        "NUL" => Some("\0"),
        "DEL" => Some("\x7f"),
        "ZWSP" => Some("\u{200b}"),
        "RLO" => Some("\u{202e}"),
        "SHY" => Some("\u{ad}"),
        "C1" => Some("\u{85}"),
        _ => None,
    };
    if let Some(named) = named {
        return Some(named.to_owned());
    }
    let (text, count) = inner.rsplit_once('*')?;
    Some(text.repeat(count.parse().ok()?))
}

/// Renders a result the way the table writes it.
fn render(input: &str) -> String {
    match parse_forward_path(input) {
        Ok(path) => render_resolved(&resolve(&path)),
        Err(error) => format!("error | {error:?}"),
    }
}

fn render_resolved(resolved: &Resolved) -> String {
    let local = quote_local_part(&resolved.local_part).unwrap_or_default();
    let domain = resolved
        .domain
        .as_ref()
        .map_or_else(|| "-".to_owned(), Domain::to_string);
    let address = match &resolved.domain {
        Some(domain) => format!("{local}@{domain}"),
        None => local.clone(),
    };
    if resolved.address() != address {
        return format!("address() = {} but parts say {address}", resolved.address());
    }
    let routing: Vec<&str> = resolved.routing.iter().map(|r| r.name()).collect();
    let route: Vec<String> = resolved
        .stripped_route
        .iter()
        .map(|hop| format!("@{hop}"))
        .collect();
    format!(
        "ok | local={local} domain={domain} | routing={} | route={}",
        dash_if_empty(routing.join(",")),
        dash_if_empty(route.join(","))
    )
}

fn dash_if_empty(text: String) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text
    }
}

/// The table's data rows: (line number, input, expected rendering).
fn rows() -> Vec<(usize, String, String)> {
    TABLE
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|(index, line)| {
            let (input, expected) = line
                .split_once(" | ")
                .unwrap_or((line, "<missing columns>"));
            (index + 1, expand(input), expand(expected.trim_end()))
        })
        .collect()
}

#[test]
fn every_row_of_the_golden_table_matches() {
    let rows = rows();
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|(line, input, expected)| {
            let got = render(input);
            (got != *expected).then(|| {
                format!("line {line}: {input:?}\n  expected: {expected}\n  got:      {got}")
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} rows differ:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn the_table_is_substantial_and_has_no_duplicate_inputs() {
    let rows = rows();
    assert!(rows.len() >= 80, "only {} rows", rows.len());
    let mut inputs: Vec<&str> = rows.iter().map(|(_, input, _)| input.as_str()).collect();
    inputs.sort_unstable();
    let before = inputs.len();
    inputs.dedup();
    assert_eq!(before, inputs.len(), "duplicate inputs in the table");
}

#[test]
fn the_table_names_every_error_kind() {
    let kinds = [
        "MissingBrackets",
        "PathTooLong",
        "LocalPartTooLong",
        "DomainTooLong",
        "Empty",
        "MissingDomain",
        "BadLocalPart",
        "BadDomain",
        "BadAddressLiteral",
        "BadSourceRoute",
        "BadCharacter",
    ];
    let rows = rows();
    for kind in kinds {
        let wanted = format!("error | {kind}");
        assert!(
            rows.iter().any(|(_, _, expected)| *expected == wanted),
            "no row expects {kind}"
        );
    }
}

#[test]
fn token_expansion_works() {
    assert_eq!(expand("<{a*3}@x>"), "<aaa@x>");
    assert_eq!(expand("<a{HT}b>"), "<a\tb>");
    assert_eq!(expand("<{x}@y>"), "<{x}@y>");
}

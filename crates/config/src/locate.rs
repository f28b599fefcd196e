//! Where in the file a key is: the line a [`ConfigProblem`](crate::ConfigProblem) points at.
//!
//! Problems name keys by their dotted path (`listen[1].address`, `user[0].send_as[2]`,
//! `limits.max_connections`); this finds the line of the deepest part of that path the file
//! actually writes, so a missing key points at its table's header and an admin still knows
//! where to look.

use toml::de::{DeTable, DeValue};

/// The 1-based line of `key` in the TOML `text`, or of the nearest enclosing table or array
/// element that the text contains. `None` when not even the first part is in the text (the
/// key is missing and so is its table) or the text does not parse.
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let document = DeTable::parse(text).ok()?;
    let mut table = document.get_ref();
    let mut found: Option<std::ops::Range<usize>> = None;
    for part in key.split('.') {
        let (name, index) = split_index(part);
        let Some((name_span, value)) = table
            .get_key_value(name)
            .map(|(key, value)| (key.span(), value))
        else {
            break;
        };
        found = Some(name_span);
        let value = match index {
            Some(i) => match value.get_ref().as_array().and_then(|a| a.get(i)) {
                Some(element) => {
                    found = Some(element.span());
                    element
                }
                None => break,
            },
            None => value,
        };
        match value.get_ref() {
            DeValue::Table(inner) => table = inner,
            _ => break,
        }
    }
    let start = found?.start;
    Some(text.get(..start)?.matches('\n').count() + 1)
}

/// `send_as[2]` → (`send_as`, Some(2)); `limits` → (`limits`, None).
fn split_index(part: &str) -> (&str, Option<usize>) {
    match part.strip_suffix(']').and_then(|p| p.split_once('[')) {
        Some((name, index)) => (name, index.parse().ok()),
        None => (part, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "hostname = \"mx.example.test\"\n\n[[listen]]\naddress = \"127.0.0.1:25\"\nkind = \"mx\"\n\n[[listen]]\naddress = \"127.0.0.1:25\"\nkind = \"mx\"\n\n[relay]\nlocal_domains = [\"example.test\"]\ntrusted_networks = [\n  \"127.0.0.1/32\",\n  \"0.0.0.0/0\",\n]\n";

    #[test]
    fn finds_keys_elements_and_the_nearest_enclosing_part() {
        assert_eq!(line_of(TEXT, "hostname"), Some(1));
        assert_eq!(line_of(TEXT, "listen[1].address"), Some(8));
        assert_eq!(line_of(TEXT, "relay.trusted_networks[1]"), Some(15));
        // Not written: the table it would be in.
        assert_eq!(line_of(TEXT, "relay.mailboxes"), Some(11));
        assert_eq!(line_of(TEXT, "limits.max_connections"), None);
    }
}

//! Golden table for the router: `tests/data/route.table` lists, per routing table and input
//! address, the class and next hop (or why there is none). Every row is checked and every
//! mismatch reported. The format is described at the top of the table.

use std::collections::HashMap;

use relayward_protocol::path::parse_forward_path;
use relayward_protocol::resolve::resolve;
use relayward_protocol::route::{RelayDomain, RouteTarget, Router, Unroutable};

const TABLE: &str = include_str!("data/route.table");

fn list(value: &str) -> Vec<String> {
    if value == "-" {
        return Vec::new();
    }
    value.split([',', ';']).map(str::to_string).collect()
}

fn field<'a>(column: &'a str, name: &str) -> &'a str {
    column
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix('='))
        .unwrap_or_else(|| panic!("expected {name}=…, got {column:?}"))
}

fn router(columns: &[&str]) -> Router {
    let routes = list(field(columns[3], "routes")).into_iter().map(|entry| {
        let (domain, target) = entry.split_once('=').expect("DOMAIN=TARGET");
        // `TARGET{a+b}`: the route lists its recipients (local parts, joined by +).
        let (target, listed) = match target.split_once('{') {
            Some((target, rest)) => (target, Some(rest.trim_end_matches('}'))),
            None => (target, None),
        };
        let mut relay = RelayDomain::to(target.parse::<RouteTarget>().expect("route target"));
        relay.recipients = listed.map(|locals| {
            locals
                .split('+')
                .map(|local| format!("{local}@{domain}"))
                .collect()
        });
        (domain.to_string(), relay)
    });
    Router::new(
        list(field(columns[1], "local")),
        list(field(columns[2], "mailboxes")),
        routes,
        field(columns[4], "smarthost") == "yes",
    )
}

fn render(router: &Router, input: &str) -> String {
    let path = match parse_forward_path(input) {
        Ok(path) => path,
        Err(e) => return format!("parse error {e:?}"),
    };
    match router.route(&resolve(&path)) {
        Ok(routed) => format!(
            "{} | {} | {}",
            routed.route.class.as_str(),
            routed.route.next_hop,
            routed.address
        ),
        Err(reason) => format!(
            "unroutable | {}",
            match reason {
                Unroutable::SenderRouted(_) => "SenderRouted",
                Unroutable::AddressLiteral => "AddressLiteral",
                Unroutable::NoSuchMailbox => "NoSuchMailbox",
                Unroutable::Unsendable => "Unsendable",
            }
        ),
    }
}

#[test]
fn every_row_of_the_route_table_holds() {
    let mut routers: HashMap<String, Router> = HashMap::new();
    let mut failures = Vec::new();
    let mut rows = 0;
    for (number, line) in TABLE.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let columns: Vec<&str> = line.split(" | ").collect();
        if let Some(name) = columns[0].strip_prefix("config ") {
            assert_eq!(columns.len(), 5, "line {}: {line}", number + 1);
            routers.insert(name.to_string(), router(&columns));
            continue;
        }
        let router = routers
            .get(columns[0])
            .unwrap_or_else(|| panic!("line {}: unknown config {}", number + 1, columns[0]));
        let expected = columns[2..].join(" | ");
        let got = render(router, columns[1]);
        rows += 1;
        if got != expected {
            failures.push(format!(
                "line {}: {} {}\n  expected: {expected}\n  got:      {got}",
                number + 1,
                columns[0],
                columns[1]
            ));
        }
    }
    assert!(rows >= 30, "only {rows} rows: the table did not load");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

//! The relay decision table: every kind of client × every kind of recipient → the RCPT reply.
//!
//! Rows read like Postfix's resolve_clnt.in/.ref: the path exactly as a client would send it,
//! and what the server must answer. Add a row for every bug found.

use std::net::IpAddr;

use relayward_protocol::path::{AddressLiteral, Domain, parse_forward_path, parse_reverse_path};
use relayward_protocol::resolve::{Resolved, Routing, resolve};
use relayward_protocol::route::NextHop;
use relayward_server::auth::Login;
use relayward_server::config::{Config, ListenerKind};
use relayward_server::policy::{AcceptReason, ClientIdentity, Policy};

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$hqKfq9Ye2JLRBt1U2nTDrA$vXlTuySI9ru3UbSMp1KYFwKBNvadHuSfxbm5/k7rT1Q";

fn policy() -> Policy {
    let text = format!(
        r#"
hostname = "mx.example.test"
data_dir = "/var/lib/relayward"
[[listen]]
address = "0.0.0.0:25"
kind = "mx"
[relay]
local_domains = ["example.test", "example.org"]
trusted_networks = ["127.0.0.1/32", "::1/128", "192.0.2.0/24", "2001:db8:1::/48"]
mailboxes = ["info@example.test"]
[[user]]
login = "alice@example.test"
password_hash = "{HASH}"
send_as = ["alice@example.test", "Sales@Example.org"]
[[user]]
login = "relay-client"
password_hash = "{HASH}"
send_as = ["noreply@example.org"]
[[route]]
domain = "corp.example.test"
to = "smtp://10.0.0.5:25"
"#
    );
    let config = Config::from_toml_str(&text, "policy test").expect("parses");
    Policy::from_config(&config).expect("valid")
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

/// The clients of the table, by name.
fn client(name: &str) -> ClientIdentity {
    match name {
        "untrusted" => ClientIdentity::anonymous(ip("203.0.113.9")),
        "untrusted6" => ClientIdentity::anonymous(ip("2001:db8:99::9")),
        "trusted" => ClientIdentity::anonymous(ip("192.0.2.7")),
        // A dual-stack socket reports IPv4 peers as IPv4-mapped IPv6.
        "trusted-mapped" => ClientIdentity::anonymous(ip("::ffff:192.0.2.7")),
        "trusted6" => ClientIdentity::anonymous(ip("2001:db8:1::7")),
        "loopback" => ClientIdentity::anonymous(ip("127.0.0.1")),
        "authenticated" => {
            ClientIdentity::new(ip("203.0.113.9"), Some(Login::new("alice@example.test")))
        }
        // A login the configuration does not (or no longer) know grants nothing.
        "unknown-login" => {
            ClientIdentity::new(ip("203.0.113.9"), Some(Login::new("mallory@example.test")))
        }
        other => panic!("no client {other}"),
    }
}

/// Expected outcomes: `accept:<reason>` or `<code> <enhanced>`.
const TABLE: &str = r#"
# client         | RCPT path                                  | expected
untrusted        | <alice@example.test>                       | accept:local
untrusted        | <ALICE@Example.TEST>                       | accept:local
untrusted        | <"alice"@example.test>                     | accept:local
untrusted        | <info@example.test>                        | accept:local
untrusted        | <postmaster@example.test>                  | accept:local
untrusted        | <postmaster@example.org>                   | accept:local
untrusted        | <Postmaster@EXAMPLE.ORG>                   | accept:local
untrusted        | <Postmaster>                               | accept:local
untrusted        | <nobody@example.test>                      | 550 5.1.1
untrusted        | <alice@example.org>                        | 550 5.1.1
untrusted        | <victim@other.test>                        | 554 5.7.1
untrusted        | <victim@example.test.other.test>           | 554 5.7.1
untrusted        | <victim@sub.example.test>                  | 554 5.7.1
untrusted        | <victim%other.test@example.test>           | 554 5.7.1
untrusted        | <other.test!victim@example.test>           | 554 5.7.1
untrusted        | <"victim@other.test"@example.test>         | 554 5.7.1
untrusted        | <"victim%other.test"@example.test>         | 554 5.7.1
untrusted        | <"other.test!victim"@example.test>         | 554 5.7.1
untrusted        | <"alice@example.test"@example.test>        | 554 5.7.1
untrusted        | <@example.test:victim@other.test>          | 554 5.7.1
untrusted        | <@example.test,@mx.example.test:victim@other.test> | 554 5.7.1
untrusted        | <@other.test:alice@example.test>           | accept:local
untrusted        | <victim@[192.0.2.1]>                       | 554 5.7.1
untrusted        | <victim@[127.0.0.1]>                       | 554 5.7.1
untrusted        | <victim@[IPv6:::1]>                        | 554 5.7.1
untrusted        | <anyone@corp.example.test>                 | accept:relay-domain
untrusted        | <Anyone@CORP.example.test>                 | accept:relay-domain
untrusted        | <a%other.test@corp.example.test>           | 554 5.7.1
untrusted        | <"a@other.test"@corp.example.test>         | 554 5.7.1
untrusted6       | <victim@other.test>                        | 554 5.7.1
untrusted6       | <alice@example.test>                       | accept:local
unknown-login    | <victim@other.test>                        | 554 5.7.1
unknown-login    | <alice@example.test>                       | accept:local
trusted          | <victim@other.test>                        | accept:trusted
trusted-mapped   | <victim@other.test>                        | accept:trusted
trusted6         | <victim@other.test>                        | accept:trusted
loopback         | <victim@other.test>                        | accept:trusted
trusted          | <alice@example.test>                       | accept:local
trusted          | <nobody@example.test>                      | 550 5.1.1
trusted          | <victim%other.test@example.test>           | 554 5.7.1
trusted          | <other.test!victim@example.test>           | 554 5.7.1
trusted          | <"victim@other.test"@example.test>         | 554 5.7.1
trusted          | <victim%elsewhere.test@other.test>         | 554 5.7.1
trusted          | <victim@[192.0.2.1]>                       | 554 5.7.1
trusted          | <@example.test:victim@other.test>          | accept:trusted
trusted          | <anyone@corp.example.test>                 | accept:relay-domain
authenticated    | <victim@other.test>                        | accept:authenticated
authenticated    | <alice@example.test>                       | accept:local
authenticated    | <nobody@example.test>                      | 550 5.1.1
authenticated    | <postmaster@example.test>                  | accept:local
authenticated    | <victim%other.test@example.test>           | 554 5.7.1
authenticated    | <other.test!victim@example.test>           | 554 5.7.1
authenticated    | <"victim@other.test"@example.test>         | 554 5.7.1
authenticated    | <"v@x"@other.test>                         | 554 5.7.1
authenticated    | <victim@[192.0.2.1]>                       | 554 5.7.1
authenticated    | <anyone@corp.example.test>                 | accept:relay-domain
"#;

fn outcome(policy: &Policy, client: &ClientIdentity, rcpt: &Resolved) -> String {
    match policy.decide(client, rcpt) {
        Ok(accepted) => format!(
            "accept:{}",
            match accepted.reason() {
                AcceptReason::LocalMailbox => "local",
                AcceptReason::RelayDomain => "relay-domain",
                AcceptReason::TrustedNetwork => "trusted",
                AcceptReason::Authenticated(_) => "authenticated",
            }
        ),
        Err(refusal) => {
            let reply = refusal.reply();
            let enhanced = reply.enhanced.map(|e| e.to_string()).unwrap_or_default();
            format!("{} {enhanced}", reply.code)
        }
    }
}

#[test]
fn decision_table() {
    let policy = policy();
    let mut failures = Vec::new();
    for line in TABLE
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let cols: Vec<&str> = line.split(" | ").map(str::trim).collect();
        let [who, path, expected] = cols[..] else {
            panic!("bad table row {line:?}");
        };
        let parsed =
            parse_forward_path(path).unwrap_or_else(|e| panic!("{path}: parser refused: {e}"));
        let got = outcome(&policy, &client(who), &resolve(&parsed));
        if got != expected {
            failures.push(format!("{who} {path}: expected {expected}, got {got}"));
        }
    }
    assert!(
        failures.is_empty(),
        "decision table mismatches:\n{}",
        failures.join("\n")
    );
}

fn resolved(local: &str, domain: Option<Domain>, routing: Vec<Routing>) -> Resolved {
    Resolved {
        local_part: local.to_string(),
        domain,
        routing,
        stripped_route: Vec::new(),
    }
}

fn name(domain: &str) -> Option<Domain> {
    Some(Domain::Name(domain.to_string()))
}

/// Built without the parser: values the parser might never produce still get a safe answer.
#[test]
fn decisions_on_constructed_values() {
    let policy = policy();
    let rows: Vec<(&str, Resolved, &str)> = vec![
        (
            "untrusted",
            resolved("alice", name("example.test"), vec![]),
            "accept:local",
        ),
        (
            "authenticated",
            resolved("victim", name("OTHER.TEST"), vec![]),
            "accept:authenticated",
        ),
        (
            "trusted",
            resolved("victim", name("other.test"), vec![Routing::Percent]),
            "554 5.7.1",
        ),
        (
            "untrusted",
            resolved("alice", name("example.test"), vec![Routing::Bang]),
            "554 5.7.1",
        ),
        (
            "authenticated",
            resolved("postmaster", None, vec![Routing::QuotedAt]),
            "554 5.7.1",
        ),
        (
            "trusted",
            resolved(
                "victim",
                Some(Domain::Literal(AddressLiteral::V4(
                    "192.0.2.1".parse().unwrap(),
                ))),
                vec![],
            ),
            "554 5.7.1",
        ),
        (
            "authenticated",
            resolved(
                "victim",
                Some(Domain::Literal(AddressLiteral::General {
                    tag: "x-foo".into(),
                    content: "bar".into(),
                })),
                vec![],
            ),
            "554 5.7.1",
        ),
        (
            "untrusted",
            resolved("", name("example.test"), vec![]),
            "550 5.1.1",
        ),
    ];
    for (who, rcpt, expected) in rows {
        assert_eq!(
            outcome(&policy, &client(who), &rcpt),
            expected,
            "{who} {rcpt:?}"
        );
    }
}

fn rcpt(path: &str) -> Resolved {
    resolve(&parse_forward_path(path).expect("test path parses"))
}

#[test]
fn reply_texts_follow_postfix() {
    let policy = policy();
    let untrusted = client("untrusted");
    let text = |path: &str| {
        let refusal = policy.decide(&untrusted, &rcpt(path)).expect_err(path);
        refusal.reply().to_string()
    };
    assert_eq!(
        text("<victim@other.test>"),
        "554 5.7.1 <victim@other.test>: Relay access denied"
    );
    assert_eq!(
        text("<nobody@example.test>"),
        "550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown"
    );
    let routed = text("<\"victim@other.test\"@example.test>");
    assert!(
        routed.starts_with("554 5.7.1 <\"victim@other.test\"@example.test>: Relay access denied"),
        "{routed}"
    );
    assert!(routed.contains("sender-specified routing"), "{routed}");
    assert_eq!(
        text("<victim@[192.0.2.1]>"),
        "554 5.7.1 <victim@[192.0.2.1]>: Relay access denied"
    );
    // The reply is a single line whatever the client sent.
    assert!(
        !policy
            .decide(&untrusted, &rcpt("<\"a\\\"b c\"@other.test>"))
            .unwrap_err()
            .reply()
            .to_wire()
            .trim_end()
            .contains('\n')
    );
}

#[test]
fn accepted_carries_canonical_address_and_route() {
    let policy = policy();
    let rows: Vec<(&str, &str, &str, NextHop)> = vec![
        (
            "untrusted",
            "<ALICE@Example.Test>",
            "alice@example.test",
            NextHop::Maildir {
                domain: "example.test".into(),
                mailbox: "alice".into(),
            },
        ),
        (
            "untrusted",
            "<Postmaster>",
            "postmaster@example.test",
            NextHop::Maildir {
                domain: "example.test".into(),
                mailbox: "postmaster".into(),
            },
        ),
        (
            "untrusted",
            "<Bob@Corp.Example.Test>",
            "Bob@corp.example.test",
            NextHop::Smtp {
                host: "10.0.0.5".into(),
                port: 25,
            },
        ),
        (
            "authenticated",
            "<Victim@Other.Test>",
            "Victim@other.test",
            NextHop::Mx {
                domain: "other.test".into(),
            },
        ),
        (
            "trusted",
            "<\"john doe\"@other.test>",
            "\"john doe\"@other.test",
            NextHop::Mx {
                domain: "other.test".into(),
            },
        ),
        (
            "trusted",
            "<@example.test:victim@other.test>",
            "victim@other.test",
            NextHop::Mx {
                domain: "other.test".into(),
            },
        ),
    ];
    for (who, path, address, next_hop) in rows {
        let accepted = policy
            .decide(&client(who), &rcpt(path))
            .unwrap_or_else(|r| panic!("{path}: {r}"));
        assert_eq!(accepted.address(), address, "{path}");
        assert_eq!(accepted.route().next_hop, next_hop, "{path}");
    }
    let accepted = policy
        .decide(&client("authenticated"), &rcpt("<v@other.test>"))
        .unwrap();
    assert_eq!(
        accepted.reason(),
        &AcceptReason::Authenticated(Login::new("alice@example.test"))
    );
}

#[test]
fn client_identity_is_canonical() {
    let mapped = ClientIdentity::anonymous(ip("::ffff:203.0.113.9"));
    assert_eq!(mapped.ip(), ip("203.0.113.9"));
    assert!(policy().is_trusted(ip("::ffff:127.0.0.1")));
    assert!(!policy().is_trusted(ip("::ffff:203.0.113.9")));
    let authed = mapped.authenticated_as(Login::new("alice@example.test"));
    assert_eq!(
        authed.login().map(Login::as_str),
        Some("alice@example.test")
    );
}

fn sender(path: &str) -> relayward_protocol::path::ReversePath {
    parse_reverse_path(path).expect("test sender parses")
}

/// MAIL FROM: (listener, client, sender) → `ok` or `<code> <enhanced>`.
#[test]
fn sender_table() {
    let policy = policy();
    let rows: &[(ListenerKind, &str, &str, &str)] = &[
        (
            ListenerKind::Mx,
            "untrusted",
            "<anyone@anywhere.test>",
            "ok",
        ),
        (ListenerKind::Mx, "untrusted", "<alice@example.test>", "ok"),
        (ListenerKind::Mx, "untrusted", "<>", "ok"),
        (
            ListenerKind::Mx,
            "untrusted",
            "<\"a%b\"@anywhere.test>",
            "ok",
        ),
        (ListenerKind::Mx, "trusted", "<anyone@anywhere.test>", "ok"),
        (
            ListenerKind::Submission,
            "untrusted",
            "<alice@example.test>",
            "530 5.7.0",
        ),
        (
            ListenerKind::Submissions,
            "trusted",
            "<alice@example.test>",
            "530 5.7.0",
        ),
        (ListenerKind::Submission, "untrusted", "<>", "530 5.7.0"),
        (
            ListenerKind::Submission,
            "authenticated",
            "<alice@example.test>",
            "ok",
        ),
        (
            ListenerKind::Submission,
            "authenticated",
            "<Alice@EXAMPLE.test>",
            "ok",
        ),
        (
            ListenerKind::Submission,
            "authenticated",
            "<sales@example.org>",
            "ok",
        ),
        (
            ListenerKind::Submission,
            "authenticated",
            "<\"alice\"@example.test>",
            "ok",
        ),
        (
            ListenerKind::Submission,
            "authenticated",
            "<@relay.test:alice@example.test>",
            "ok",
        ),
        (ListenerKind::Submission, "authenticated", "<>", "ok"),
        (
            ListenerKind::Submission,
            "authenticated",
            "<ceo@example.test>",
            "553 5.7.1",
        ),
        (
            ListenerKind::Mx,
            "authenticated",
            "<ceo@example.test>",
            "553 5.7.1",
        ),
        (
            ListenerKind::Submission,
            "authenticated",
            "<alice@example.test.evil.test>",
            "553 5.7.1",
        ),
        (
            ListenerKind::Submission,
            "authenticated",
            "<alice@[192.0.2.1]>",
            "553 5.7.1",
        ),
        (
            ListenerKind::Submission,
            "unknown-login",
            "<mallory@example.test>",
            "553 5.7.1",
        ),
    ];
    for (kind, who, from, expected) in rows {
        let got = match policy.check_mail(*kind, &client(who), &sender(from)) {
            Ok(()) => "ok".to_string(),
            Err(refusal) => {
                let reply = refusal.reply();
                format!(
                    "{} {}",
                    reply.code,
                    reply.enhanced.map(|e| e.to_string()).unwrap_or_default()
                )
            }
        };
        assert_eq!(got, *expected, "{kind} {who} MAIL FROM:{from}");
    }
    let text = policy
        .check_sender(&client("authenticated"), &sender("<ceo@example.test>"))
        .unwrap_err()
        .reply()
        .to_string();
    assert_eq!(
        text,
        "553 5.7.1 <ceo@example.test>: Sender address rejected: not owned by user alice@example.test"
    );
    assert!(Policy::mail_requires_auth(ListenerKind::Submission));
    assert!(Policy::mail_requires_auth(ListenerKind::Submissions));
    assert!(!Policy::mail_requires_auth(ListenerKind::Mx));
}

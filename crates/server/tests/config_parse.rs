//! Parsing: the documented keys parse, unknown keys fail with their name and line.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use relayward_server::config::{
    Config, ConfigError, EMBEDDED_DEFAULT_TOML, ListenerKind, RouteTarget, Severity, SmarthostTls,
};

fn data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn parse(text: &str) -> Result<Config, String> {
    Config::from_toml_str(text, "test.toml").map_err(|e| e.to_string())
}

const MINIMAL: &str = r#"
hostname = "mx.example.test"
data_dir = "/var/lib/relayward"
[[listen]]
address = "0.0.0.0:25"
kind = "mx"
[relay]
local_domains = ["example.test"]
"#;

#[test]
fn full_example_parses_with_every_value() {
    let config = Config::load(&data("full.toml")).expect("full.toml parses");
    assert_eq!(config.hostname, "mx.example.test");
    assert_eq!(config.listen.len(), 3);
    assert_eq!(config.listen[2].kind, ListenerKind::Submissions);
    assert_eq!(
        config.listen[2].address,
        "[::]:465".parse::<SocketAddr>().unwrap()
    );
    assert!(config.tls.is_some());
    assert_eq!(config.relay.trusted_networks.len(), 5);
    assert_eq!(config.relay.trusted_proxies[0].as_str(), "198.51.100.10");
    assert_eq!(
        config.users[1].effective_send_as(),
        vec!["bob@example.test".to_string()]
    );
    assert_eq!(config.delivery.smarthost_tls, SmarthostTls::Starttls);
    assert_eq!(
        config.delivery.max_queue_lifetime,
        Duration::from_secs(5 * 86400)
    );
    assert_eq!(
        config.dns.nameservers,
        vec!["127.0.0.1:5353".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(
        config.routes[0].to,
        RouteTarget::Smtp {
            host: "10.0.0.5".into(),
            port: 25
        }
    );
    assert_eq!(config.routes[1].to, RouteTarget::Maildir);
    assert_eq!(config.limits.auth_ban, Duration::from_secs(900));
    assert_eq!(config.limits.max_message_size, 10 * 1024 * 1024);
    assert_eq!(config.queue.min_free_bytes, 100 * 1024 * 1024);
    let warnings = config.validate().expect("full.toml is valid");
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let config = parse(MINIMAL).expect("parses");
    let nets: Vec<&str> = config
        .relay
        .trusted_networks
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(nets, ["127.0.0.1/32", "::1/128"]);
    assert_eq!(config.delivery.mx_port, 25);
    assert_eq!(config.limits.max_message_size, 25 * 1024 * 1024);
    assert_eq!(config.limits.max_recipients, 100);
    assert_eq!(config.limits.max_errors, 10);
    assert_eq!(config.limits.greeting_timeout, Duration::from_secs(300));
    assert_eq!(config.limits.command_timeout, Duration::from_secs(300));
    assert_eq!(config.limits.data_block_timeout, Duration::from_secs(180));
    assert_eq!(config.limits.data_end_timeout, Duration::from_secs(600));
    assert!(config.relay.trusted_proxies.is_empty());
    assert_eq!(config.validate(), Ok(vec![]));
}

#[test]
fn embedded_default_parses_and_is_valid() {
    let config = Config::embedded_default().expect("embedded default parses");
    assert_eq!(config, parse(EMBEDDED_DEFAULT_TOML).unwrap());
    let addresses: Vec<String> = config
        .listen
        .iter()
        .map(|l| format!("{} {}", l.address, l.kind))
        .collect();
    assert_eq!(
        addresses,
        ["127.0.0.1:2525 mx", "127.0.0.1:2587 submission"]
    );
    assert_eq!(config.relay.local_domains, ["localhost"]);
    assert_eq!(config.data_dir, Path::new("./relayward-data"));
    assert!(config.users.is_empty());
    let warnings = config.validate().expect("no errors");
    // The one warning tells the admin how to add a user.
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].severity, Severity::Warning);
    assert!(
        warnings[0].message.contains("relayward hash-password"),
        "{}",
        warnings[0]
    );
}

/// Unknown keys, in every table, fail with the key's name and the line.
#[test]
fn unknown_keys_are_errors_naming_key_and_line() {
    // (what, text inserted after the minimal config's `[relay]` table or at the top, key)
    let rows: &[(&str, &str, &str)] = &[
        ("top level", "hostnme = \"x\"\n", "hostnme"),
        (
            "relay",
            "trusted_network = [\"10.0.0.0/8\"]\n",
            "trusted_network",
        ),
        (
            "listen",
            "[[listen]]\naddress = \"0.0.0.0:26\"\nkind = \"mx\"\ntls = true\n",
            "tls",
        ),
        (
            "user",
            "[[user]]\nlogin = \"a@b.test\"\npassword = \"hunter2\"\npassword_hash = \"x\"\n",
            "password",
        ),
        ("limits", "[limits]\nmax_recipient = 5\n", "max_recipient"),
        (
            "delivery",
            "[delivery]\nsmarthost_port = 25\n",
            "smarthost_port",
        ),
        (
            "route",
            "[[route]]\ndomain = \"c.test\"\nto = \"maildir\"\nvia = \"x\"\n",
            "via",
        ),
        ("queue", "[queue]\nmax_size = 1\n", "max_size"),
        ("dns", "[dns]\nresolver = \"x\"\n", "resolver"),
        (
            "tls",
            "[tls]\ncert = \"a\"\nkey = \"b\"\nchain = \"c\"\n",
            "chain",
        ),
    ];
    for (what, extra, key) in rows {
        let text = if *what == "top level" {
            format!("{extra}{MINIMAL}")
        } else {
            // After `local_domains`, i.e. inside [relay] or as a new table after it.
            format!("{MINIMAL}{extra}")
        };
        let err = parse(&text).expect_err(what);
        assert!(
            err.contains(&format!("`{key}`")),
            "{what}: error does not name {key}: {err}"
        );
        assert!(err.contains("line "), "{what}: error has no line: {err}");
        assert!(
            err.starts_with("test.toml: "),
            "{what}: error has no origin: {err}"
        );
    }
}

#[test]
fn bad_values_are_errors_naming_the_problem() {
    let rows: &[(&str, &str)] = &[
        ("kind = \"mx\"", "kind = \"smtp\""),
        ("address = \"0.0.0.0:25\"", "address = \"0.0.0.0\""),
        (
            "local_domains = [\"example.test\"]",
            "local_domains = [\"example.test\"]\ntrusted_networks = [\"10.0.0.0/33\"]",
        ),
        (
            "local_domains = [\"example.test\"]",
            "local_domains = [\"example.test\"]\ntrusted_networks = [\"localnet\"]",
        ),
        (
            "[relay]",
            "[delivery]\nmax_queue_lifetime = \"five days\"\n[relay]",
        ),
        (
            "[relay]",
            "[[route]]\ndomain = \"c.test\"\nto = \"http://c.test\"\n[relay]",
        ),
        (
            "[relay]",
            "[[route]]\ndomain = \"c.test\"\nto = \"smtp://c.test:99999\"\n[relay]",
        ),
        ("[relay]", "[delivery]\nsmarthost_tls = \"ssl\"\n[relay]"),
        (
            "[relay]",
            "[delivery]\ndelay_notice_after = \"never\"\n[relay]",
        ),
    ];
    for (from, to) in rows {
        let text = MINIMAL.replacen(from, to, 1);
        let err = parse(&text).expect_err(to);
        assert!(err.contains("line "), "{to}: {err}");
    }
}

#[test]
fn load_names_the_missing_file() {
    let err = Config::load(&data("does-not-exist.toml")).expect_err("missing");
    assert!(matches!(err, ConfigError::Io { .. }));
    assert!(err.to_string().contains("does-not-exist.toml"), "{err}");
}

#[test]
fn route_targets_parse() {
    let rows: &[(&str, Option<RouteTarget>)] = &[
        ("maildir", Some(RouteTarget::Maildir)),
        (
            "smtp://10.0.0.5:25",
            Some(RouteTarget::Smtp {
                host: "10.0.0.5".into(),
                port: 25,
            }),
        ),
        (
            "smtp://mail.corp.test",
            Some(RouteTarget::Smtp {
                host: "mail.corp.test".into(),
                port: 25,
            }),
        ),
        (
            "smtp://[2001:db8::5]:2525",
            Some(RouteTarget::Smtp {
                host: "2001:db8::5".into(),
                port: 2525,
            }),
        ),
        ("smtp://", None),
        ("smtp://host:0", None),
        ("smtp://user@host", None),
        ("smtp://host/path", None),
        ("smtp://2001:db8::5", None),
        ("Maildir", None),
        ("lmtp://x", None),
    ];
    for (text, expected) in rows {
        assert_eq!(text.parse::<RouteTarget>().ok(), *expected, "{text}");
    }
}

/// `[delivery] delay_notice_after`: 4 hours by default, any duration, `"off"` or `"0"` for
/// none.
#[test]
fn delay_notice_after_defaults_to_four_hours_and_can_be_off() {
    let with = |value: &str| {
        parse(&MINIMAL.replacen(
            "[relay]",
            &format!("[delivery]\ndelay_notice_after = {value}\n[relay]"),
            1,
        ))
        .map(|c| c.delivery.delay_notice_after)
    };
    assert_eq!(
        parse(MINIMAL).unwrap().delivery.delay_notice_after,
        Some(Duration::from_secs(4 * 3600))
    );
    assert_eq!(with("\"30m\""), Ok(Some(Duration::from_secs(1800))));
    assert_eq!(with("\"off\""), Ok(None));
    assert_eq!(with("\"0\""), Ok(None));
    let err = with("\"soon\"").expect_err("not a duration");
    assert!(
        err.contains("delay_notice_after") && err.contains("\"off\""),
        "{err}"
    );
}

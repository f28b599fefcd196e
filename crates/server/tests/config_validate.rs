//! Validation: configurations that would make an open relay (or not work) are refused, each
//! problem naming its key and saying what to write instead.

use relayward_server::config::{Config, ConfigProblem, Severity};

const BASE: &str = r#"
hostname = "mx.example.test"
data_dir = "/var/lib/relayward"
[[listen]]
address = "0.0.0.0:25"
kind = "mx"
[[listen]]
address = "0.0.0.0:587"
kind = "submission"
[relay]
local_domains = ["example.test"]
trusted_networks = ["127.0.0.1/32", "::1/128"]
[[user]]
login = "alice@example.test"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$hqKfq9Ye2JLRBt1U2nTDrA$vXlTuySI9ru3UbSMp1KYFwKBNvadHuSfxbm5/k7rT1Q"
"#;

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$hqKfq9Ye2JLRBt1U2nTDrA$vXlTuySI9ru3UbSMp1KYFwKBNvadHuSfxbm5/k7rT1Q";

fn problems(text: &str) -> Vec<ConfigProblem> {
    let config = Config::from_toml_str(text, "test.toml")
        .unwrap_or_else(|e| panic!("does not parse: {e}\n{text}"));
    config.problems()
}

#[test]
fn base_config_is_clean() {
    assert_eq!(problems(BASE), vec![]);
}

/// Trusted networks that would open the relay: (networks, key, words the message must contain).
#[test]
fn open_relay_networks_are_refused() {
    let rows: &[(&str, &str, &[&str])] = &[
        (
            r#"["0.0.0.0/0"]"#,
            "relay.trusted_networks[0]",
            &["every IPv4 address", "open relay", "submission"],
        ),
        (
            r#"["::/0"]"#,
            "relay.trusted_networks[0]",
            &["every IPv6 address", "open relay"],
        ),
        (
            r#"["127.0.0.1/32", "10.0.0.0/7"]"#,
            "relay.trusted_networks[1]",
            &["wider than a /8", "open relay"],
        ),
        (
            r#"["128.0.0.0/1"]"#,
            "relay.trusted_networks[0]",
            &["wider than a /8"],
        ),
        (
            r#"["2000::/3"]"#,
            "relay.trusted_networks[0]",
            &["wider than a /32"],
        ),
        (
            r#"["2001::/15"]"#,
            "relay.trusted_networks[0]",
            &["wider than a /32"],
        ),
        // An IPv6 /16 is tens of thousands of providers' networks; /31 is still two providers.
        (
            r#"["2a01::/16"]"#,
            "relay.trusted_networks[0]",
            &["wider than a /32", "open relay", "2001:db8:1::/48", "/64"],
        ),
        (
            r#"["2001:db8::/31"]"#,
            "relay.trusted_networks[0]",
            &["wider than a /32"],
        ),
        (
            r#"["10.1.2.3/8"]"#,
            "relay.trusted_networks[0]",
            &["host bits", "did you mean 10.0.0.0/8?", "10.1.2.3/32"],
        ),
        (
            r#"["192.0.2.1/24"]"#,
            "relay.trusted_networks[0]",
            &["did you mean 192.0.2.0/24?"],
        ),
        (
            r#"["2001:db8::1/32"]"#,
            "relay.trusted_networks[0]",
            &["did you mean 2001:db8::/32?", "/128"],
        ),
    ];
    for (nets, key, words) in rows {
        let text = BASE.replace(
            r#"trusted_networks = ["127.0.0.1/32", "::1/128"]"#,
            &format!("trusted_networks = {nets}"),
        );
        let found = problems(&text);
        let problem = found
            .iter()
            .find(|p| p.key == *key)
            .unwrap_or_else(|| panic!("{nets}: no problem for {key}: {found:?}"));
        assert_eq!(problem.severity, Severity::Error, "{nets}");
        for word in *words {
            assert!(
                problem.message.contains(word),
                "{nets}: {:?} lacks {word:?}",
                problem.message
            );
        }
        let config = Config::from_toml_str(&text, "t").unwrap();
        assert!(config.validate().is_err(), "{nets} validated");
        assert!(
            relayward_server::policy::Policy::from_config(&config).is_err(),
            "{nets} built a policy"
        );
    }
}

/// Networks that are fine: the widest allowed prefixes, and single hosts.
#[test]
fn acceptable_networks_pass() {
    for nets in [
        r#"["10.0.0.0/8"]"#,
        r#"["2001:db8::/32"]"#,
        r#"["2a01:4f8::/32"]"#,
        r#"["192.0.2.7"]"#,
        r#"["2001:db8::7"]"#,
        r#"[]"#,
    ] {
        let text = BASE.replace(
            r#"trusted_networks = ["127.0.0.1/32", "::1/128"]"#,
            &format!("trusted_networks = {nets}"),
        );
        assert_eq!(problems(&text), vec![], "{nets}");
    }
}

/// Every other check: (from, to, key, severity, a word of the message).
#[test]
fn other_problems_are_reported() {
    let listen = "[[listen]]\naddress = \"0.0.0.0:25\"\nkind = \"mx\"\n";
    let user = format!("[[user]]\nlogin = \"alice@example.test\"\npassword_hash = \"{HASH}\"\n");
    let rows: Vec<(&str, String, &str, Severity, &str)> = vec![
        ("trusted_networks", "trusted_proxies = [\"0.0.0.0/0\"]\ntrusted_networks".into(), "relay.trusted_proxies[0]", Severity::Error, "open relay"),
        ("trusted_networks", "trusted_proxies = [\"192.0.2.1/24\"]\ntrusted_networks".into(), "relay.trusted_proxies[0]", Severity::Error, "192.0.2.0/24"),
        ("\"::1/128\"]", "\"::1/128\", \"::ffff:10.0.0.0/104\"]".into(), "relay.trusted_networks[2]", Severity::Warning, "IPv4-mapped"),
        ("local_domains = [\"example.test\"]", "local_domains = []".into(), "relay.local_domains", Severity::Error, "local_domains = [\"example.test\"]"),
        ("local_domains = [\"example.test\"]", "local_domains = [\"@example.test\"]".into(), "relay.local_domains[0]", Severity::Error, "not a domain"),
        ("local_domains = [\"example.test\"]", "local_domains = [\"example.test\", \"EXAMPLE.test\"]".into(), "relay.local_domains[1]", Severity::Warning, "twice"),
        // A domain not in its canonical A-label form never matches what the parser makes of a
        // RCPT (always the A-label): it was taken and then silently dead — a local domain
        // whose mail was refused as relaying, a TLS policy never applied.
        ("local_domains = [\"example.test\"]", "local_domains = [\"example.test\", \"exämple.test\"]".into(), "relay.local_domains[1]", Severity::Error, "\"xn--exmple-cua.test\""),
        ("local_domains = [\"example.test\"]", "local_domains = [\"ｅｘａｍｐｌｅ.test\"]".into(), "relay.local_domains[0]", Severity::Error, "\"example.test\""),
        ("[relay]", "[[route]]\ndomain = \"cörp.test\"\nto = \"maildir\"\n[relay]".into(), "route[0].domain", Severity::Error, "not a domain"),
        ("[relay]", "[[tls_policy]]\ndomain = \"bänk.example\"\nmode = \"require-verified\"\n[relay]".into(), "tls_policy[0].domain", Severity::Error, "A-label"),
        ("hostname = \"mx.example.test\"", "hostname = \"mx example\"".into(), "hostname", Severity::Error, "fully qualified"),
        ("[relay]", format!("{listen}[relay]"), "listen[2].address", Severity::Error, "twice"),
        ("password_hash = \"$argon2id$v", "password_hash = \"$argon2id$...\"\n#".into(), "user[0].password_hash", Severity::Error, "relayward hash-password"),
        ("password_hash = \"$argon2id$v", "password_hash = \"hunter2\"\n#".into(), "user[0].password_hash", Severity::Error, "not a PHC"),
        ("password_hash = \"$argon2id$v", "send_as = [\"alice\"]\npassword_hash = \"$argon2id$v".into(), "user[0].send_as[0]", Severity::Error, "not an address"),
        ("password_hash = \"$argon2id$v", "send_as = [\"alice@example.test\", \"bob@@x\"]\npassword_hash = \"$argon2id$v".into(), "user[0].send_as[1]", Severity::Error, "not an address"),
        ("password_hash = \"$argon2id$v", "send_as = []\npassword_hash = \"$argon2id$v".into(), "user[0].send_as", Severity::Warning, "not send"),
        ("login = \"alice@example.test\"", "login = \"alice relay\"".into(), "user[0].login", Severity::Error, "without spaces"),
        ("[[user]]", format!("{}[[user]]", user.replace("alice@", "ALICE@")), "user[1].login", Severity::Error, "twice"),
        ("[relay]", "[relay]\nmailboxes = [\"info@other.test\"]".into(), "relay.mailboxes[0]", Severity::Error, "not in a local domain"),
        ("[relay]", "[relay]\nmailboxes = [\"info\"]".into(), "relay.mailboxes[0]", Severity::Error, "not an address"),
        ("[relay]", "[[route]]\ndomain = \"EXAMPLE.test\"\nto = \"maildir\"\n[relay]".into(), "route[0].domain", Severity::Error, "also a local domain"),
        ("[relay]", "[[route]]\ndomain = \"c.test\"\nto = \"maildir\"\n[[route]]\ndomain = \"c.test\"\nto = \"maildir\"\n[relay]".into(), "route[1].domain", Severity::Error, "two [[route]]"),
        ("[relay]", "[delivery]\nsmarthost = \"smtp.provider.example:25\"\nsmarthost_tls = \"none\"\n[relay]".into(), "delivery.smarthost_tls", Severity::Error, "clear text"),
        ("[relay]", "[delivery]\nsmarthost = \"smtp.provider.example\"\n[relay]".into(), "delivery.smarthost", Severity::Error, "host:port"),
        ("[relay]", "[delivery]\nsmarthost = \"smtp.provider.example:587\"\nsmarthost_user = \"u\"\n[relay]".into(), "delivery.smarthost_user", Severity::Error, "set both"),
        ("[relay]", "[delivery]\nsmarthost_user = \"u\"\n[relay]".into(), "delivery.smarthost_user", Severity::Warning, "unused"),
        ("[relay]", "[delivery]\nmx_port = 0\n[relay]".into(), "delivery.mx_port", Severity::Error, "port 0"),
        ("[relay]", "[delivery]\nmax_queue_lifetime = \"4h\"\n[relay]".into(), "delivery.delay_notice_after", Severity::Warning, "no delay notice"),
        ("[relay]", "[limits]\nmax_recipients = 0\n[relay]".into(), "limits.max_recipients", Severity::Error, "at least 1"),
        ("[relay]", "[limits]\nmax_recipients = 50\n[relay]".into(), "limits.max_recipients", Severity::Warning, "100"),
        ("[relay]", "[limits]\ncommand_timeout = \"0s\"\n[relay]".into(), "limits.command_timeout", Severity::Error, "zero"),
        ("[relay]", "[limits]\nmax_connections = 5\n[relay]".into(), "limits.max_connections_per_ip", Severity::Warning, "larger"),
    ];
    for (from, to, key, severity, word) in rows {
        assert!(BASE.contains(from), "row pattern {from:?} not in BASE");
        let text = BASE.replacen(from, &to, 1);
        let found = problems(&text);
        let problem = found
            .iter()
            .find(|p| p.key == key && p.severity == severity)
            .unwrap_or_else(|| panic!("{to:?}: no {severity:?} for {key}: {found:#?}"));
        assert!(
            problem.message.contains(word),
            "{key}: {:?} lacks {word:?}",
            problem.message
        );
    }
}

#[test]
fn smarthost_without_tls_is_fine_to_loopback() {
    for host in ["127.0.0.1:2525", "localhost:25", "[::1]:25"] {
        let text = BASE.replacen(
            "[relay]",
            &format!("[delivery]\nsmarthost = \"{host}\"\nsmarthost_tls = \"none\"\n[relay]"),
            1,
        );
        assert_eq!(problems(&text), vec![], "{host}");
    }
}

#[test]
fn submission_without_users_is_a_warning() {
    let text = BASE.split("[[user]]").next().unwrap();
    let config = Config::from_toml_str(text, "t").unwrap();
    let warnings = config.validate().expect("only a warning");
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].key, "listen[1]");
    assert!(warnings[0].message.contains("530"), "{}", warnings[0]);
}

#[test]
fn validate_puts_errors_first() {
    let text = BASE
        .replacen("[relay]", "[limits]\nmax_recipients = 50\n[relay]", 1)
        .replace("\"::1/128\"", "\"::/0\"");
    let config = Config::from_toml_str(&text, "t").unwrap();
    let all = config.validate().expect_err("an error");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].severity, Severity::Error);
    assert_eq!(all[1].severity, Severity::Warning);
    assert!(
        all[0]
            .to_string()
            .starts_with("error: relay.trusted_networks[1]: "),
        "{}",
        all[0]
    );
}

#[test]
fn summary_describes_the_effective_policy() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/full.toml");
    let summary = Config::load(&path).unwrap().effective_policy_summary();
    for expected in [
        "0.0.0.0:25 (mx)",
        "0.0.0.0:587 (submission): STARTTLS, then AUTH required before MAIL",
        "[::]:465 (submissions): implicit TLS",
        "Local domains: example.test, example.org",
        "postmaster@example.test (postmaster)",
        "postmaster@example.org (postmaster)",
        "info@example.test (relay.mailboxes)",
        "alice@example.test (user)",
        "corp.example.test -> smtp://10.0.0.5:25",
        "archive.example.test -> maildir",
        "Trusted networks (relay anywhere without AUTH): 127.0.0.1/32, ::1/128, 192.0.2.0/24",
        "alice@example.test: alice@example.test, sales@example.org",
        "bob@example.test: bob@example.test",
        "Relay access denied",
        "PROXY protocol accepted from: 198.51.100.10",
    ] {
        assert!(
            summary.contains(expected),
            "summary lacks {expected:?}:\n{summary}"
        );
    }
}

/// A proxy inside a trusted network makes everything it forwards without a client address
/// trusted: warned, with the key named.
#[test]
fn proxy_inside_a_trusted_network_is_a_warning() {
    let text = BASE.replace(
        "trusted_networks = [\"127.0.0.1/32\", \"::1/128\"]",
        "trusted_networks = [\"127.0.0.1/32\", \"::1/128\", \"192.0.2.0/24\"]\ntrusted_proxies = [\"192.0.2.10\"]",
    );
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].severity, Severity::Warning);
    assert_eq!(found[0].key, "relay.trusted_proxies[0]");
    assert!(
        found[0].message.contains("192.0.2.0/24"),
        "{}",
        found[0].message
    );
    let outside = text.replace("\"192.0.2.10\"]", "\"198.51.100.10\"]");
    assert_eq!(problems(&outside), vec![]);
}

/// `[queue]` for the shared PostgreSQL queue: (table, key, severity, words the message holds).
#[test]
fn postgres_queue_settings_are_checked() {
    let rows: &[(&str, &str, Severity, &[&str])] = &[
        (
            "backend = \"postgres\"",
            "queue.postgres_url",
            Severity::Error,
            &["needs the database", "postgres://"],
        ),
        (
            "backend = \"postgres\"\npostgres_url = \"mysql://db/relayward\"",
            "queue.postgres_url",
            Severity::Error,
            &["not a postgres:// URL"],
        ),
        (
            "backend = \"postgres\"\npostgres_url = \"postgres://relayward:secret@db.example.test/relayward\"",
            "queue.postgres_url",
            Severity::Error,
            &["password", "postgres_password_file"],
        ),
        (
            "backend = \"postgres\"\npostgres_url = \"postgres://relayward@db.example.test/q?sslmode=disable&password=secret\"",
            "queue.postgres_url",
            Severity::Error,
            &["password", "postgres_password_file"],
        ),
        (
            "backend = \"postgres\"\npostgres_url = \"postgres://relayward@db.example.test/q\"\nlease_timeout = \"500ms\"",
            "queue.lease_timeout",
            Severity::Error,
            &["at least 1s"],
        ),
        (
            "postgres_url = \"postgres://relayward@db.example.test/q\"",
            "queue.postgres_url",
            Severity::Warning,
            &["ignored", "backend = \"postgres\""],
        ),
    ];
    for (table, key, severity, words) in rows {
        let found = problems(&format!("{BASE}\n[queue]\n{table}\n"));
        let problem = found
            .iter()
            .find(|p| p.key == *key)
            .unwrap_or_else(|| panic!("no problem for {key} with\n{table}\ngot {found:?}"));
        assert_eq!(problem.severity, *severity, "{problem:?}");
        for word in *words {
            assert!(
                problem.message.contains(word),
                "{word:?} not in {problem:?}"
            );
        }
    }
    let good = "backend = \"postgres\"\npostgres_url = \"postgres://relayward@db.example.test:5432/relayward?host=/run/postgresql\"\npostgres_password_file = \"/etc/relayward/db.secret\"\npostgres_tls = \"require\"\nlease_timeout = \"2m\"\nnode_name = \"mx1\"";
    assert_eq!(problems(&format!("{BASE}\n[queue]\n{good}\n")), vec![]);
    // A primary and its standby: connections go to whichever accepts writes.
    let failover = "backend = \"postgres\"\npostgres_url = \"postgres://relayward@db1.example.test,db2.example.test/relayward?target_session_attrs=read-write\"";
    assert_eq!(problems(&format!("{BASE}\n[queue]\n{failover}\n")), vec![]);
}

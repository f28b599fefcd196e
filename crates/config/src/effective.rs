//! The effective configuration: every setting with the value in force and whether the file
//! changed it, like Postfix's `postconf` (`-n` shows what a file sets, `-d` the defaults).
//! `relayward check-config --effective` prints it.
//!
//! Built from the configuration's own serialisation, so a key added to the schema shows up here
//! without anyone remembering to list it; the defaults are what the same file would get with
//! every optional key removed.

use serde_json::Value;

use crate::Config;

/// One setting: its dotted key (as problems name it), its value, and whether that value is
/// the default.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Setting {
    pub key: String,
    /// The value as JSON; `null` when the setting is not set and has no default.
    pub value: Value,
    /// True when the file leaves the setting at its default (or does not set an optional one).
    pub default: bool,
}

impl Setting {
    /// The value as it would be written in the file, or `(not set)`.
    pub fn toml_value(&self) -> String {
        toml_text(&self.value)
    }
}

/// Keys every file must write: never "the default".
const REQUIRED: &[&str] = &["hostname", "data_dir"];

/// Keys whose values are shown masked: a password hash is no password, but it can be
/// attacked offline, and effective configurations get pasted into tickets.
const MASKED: &[&str] = &["password_hash"];

impl Config {
    /// Every setting, sorted by key, tables of arrays (`listen[0]`, `user[1]`) in file order.
    pub fn effective_settings(&self) -> Vec<Setting> {
        let actual = flatten(&to_json(self));
        let defaults = flatten(&to_json(&self.defaults_of_file()));
        actual
            .into_iter()
            .map(|(key, value)| {
                // Not set is the default of an optional key, also inside a `[[table]]`
                // (`route[0].verify_recipients`), which the table-less defaults cannot show.
                let default = !REQUIRED.contains(&key.as_str())
                    && (value.is_null() || defaults.iter().any(|(k, v)| *k == key && *v == value));
                let value = if MASKED.iter().any(|m| key.ends_with(m)) {
                    Value::String("(argon2 hash, not shown)".into())
                } else {
                    value
                };
                Setting {
                    key,
                    value,
                    default,
                }
            })
            .collect()
    }

    /// How queued mail leaves, in one line: MX lookup on which port, or the smart host.
    pub fn delivery_mode(&self) -> String {
        let d = &self.delivery;
        match &d.smarthost {
            Some(host) => {
                let tls = match d.smarthost_tls {
                    crate::SmarthostTls::Starttls => "STARTTLS",
                    crate::SmarthostTls::Implicit => "implicit TLS",
                    crate::SmarthostTls::None => "no TLS",
                };
                let auth = d
                    .smarthost_user
                    .as_ref()
                    .map(|u| format!(", AUTH as {u}"))
                    .unwrap_or_default();
                format!("smart host {host} ({tls}{auth}) for every non-local recipient")
            }
            None => format!(
                "MX lookup, port {}, {}, for every non-local recipient",
                d.mx_port,
                match d.tls_policy {
                    crate::tls_policy::TlsPolicyMode::MtaStsDane => {
                        "STARTTLS when offered, verified where MTA-STS or DANE demands it"
                    }
                    crate::tls_policy::TlsPolicyMode::Opportunistic => "opportunistic STARTTLS",
                }
            ),
        }
    }

    /// This configuration with every key that has a default at its default: only what must
    /// be written (hostname, data_dir) is kept.
    fn defaults_of_file(&self) -> Config {
        let text = format!(
            "hostname = {}\ndata_dir = {}\n",
            toml_string(&self.hostname),
            toml_string(&self.data_dir.display().to_string())
        );
        Config::from_toml_str(&text, "<defaults>").unwrap_or_else(|_| self.clone())
    }
}

fn to_json(config: &Config) -> Value {
    serde_json::to_value(config).unwrap_or(Value::Null)
}

/// `{"limits": {"max_errors": 10}}` → `limits.max_errors = 10`; arrays of tables by index.
fn flatten(value: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    walk("", value, &mut out);
    out
}

fn walk(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            for (name, inner) in map {
                let key = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}.{name}")
                };
                walk(&key, inner, out);
            }
        }
        Value::Array(items) if items.iter().any(Value::is_object) => {
            for (i, item) in items.iter().enumerate() {
                walk(&format!("{prefix}[{i}]"), item, out);
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}

fn toml_text(value: &Value) -> String {
    match value {
        Value::Null => "(not set)".into(),
        Value::String(s) => toml_string(s),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(toml_text).collect();
            format!("[{}]", inner.join(", "))
        }
        other => other.to_string(),
    }
}

/// A TOML basic string: JSON's escaping is a subset of TOML's.
fn toml_string(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(
            "hostname = \"mx.example.test\"\ndata_dir = \"/var/lib/relayward\"\n[[listen]]\naddress = \"127.0.0.1:25\"\nkind = \"mx\"\n[relay]\nlocal_domains = [\"example.test\"]\n{extra}"
        );
        Config::from_toml_str(&text, "test").expect("config")
    }

    fn setting<'a>(settings: &'a [Setting], key: &str) -> &'a Setting {
        settings
            .iter()
            .find(|s| s.key == key)
            .unwrap_or_else(|| panic!("no {key} in {settings:#?}"))
    }

    #[test]
    fn every_setting_with_its_value_and_whether_it_is_the_default() {
        let settings =
            config("[limits]\nmax_errors = 3\n[delivery]\nretry_schedule = [\"2m\", \"1h\"]\n")
                .effective_settings();
        let errors = setting(&settings, "limits.max_errors");
        assert_eq!((errors.toml_value().as_str(), errors.default), ("3", false));
        let connections = setting(&settings, "limits.max_connections");
        assert_eq!(
            (connections.toml_value().as_str(), connections.default),
            ("1000", true)
        );
        let retry = setting(&settings, "delivery.retry_schedule");
        assert_eq!(retry.toml_value(), "[\"2m\", \"1h\"]");
        assert!(!retry.default);
        let timeout = setting(&settings, "delivery.connect_timeout");
        assert_eq!(
            (timeout.toml_value().as_str(), timeout.default),
            ("\"30s\"", true)
        );
        let smarthost = setting(&settings, "delivery.smarthost");
        assert_eq!(
            (smarthost.toml_value().as_str(), smarthost.default),
            ("(not set)", true)
        );
        let listen = setting(&settings, "listen[0].address");
        assert_eq!(listen.toml_value(), "\"127.0.0.1:25\"");
        assert!(!listen.default);
        assert!(!setting(&settings, "relay.local_domains").default);
        assert!(!setting(&settings, "hostname").default);
        assert!(setting(&settings, "relay.trusted_networks").default);
    }

    /// `--show-default` is the complete commented file: every key of every section is in it,
    /// each table header too, and uncommenting a line never gives a value other than the
    /// default (or the example) it names.
    #[test]
    fn the_embedded_default_names_every_setting() {
        let full = config(
            "[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n[[user]]\nlogin = \"a@example.test\"\npassword_hash = \"x\"\n[[route]]\ndomain = \"corp.example.test\"\nto = \"maildir\"\n[[dkim]]\ndomain = \"example.test\"\nselector = \"s1\"\nprivate_key_file = \"/k.pem\"\nheaders = [\"From\"]\n[[tls_policy]]\ndomain = \"bank.example\"\nmode = \"none\"\n",
        );
        let text = crate::EMBEDDED_DEFAULT_TOML;
        for setting in full.effective_settings() {
            let leaf = setting.key.rsplit('.').next().unwrap_or(&setting.key);
            let leaf = leaf.split('[').next().unwrap_or(leaf);
            assert!(
                text.contains(&format!("{leaf} = ")),
                "{} is missing from the embedded default",
                setting.key
            );
            if let Some((section, _)) = setting.key.split_once('.') {
                let section = section.split('[').next().unwrap_or(section);
                assert!(
                    text.contains(&format!("[{section}]")),
                    "section {section} is missing from the embedded default"
                );
            }
        }
        let uncommented: String = text
            .lines()
            .filter(|l| {
                !l.starts_with("# [[")
                    && !l.starts_with("# login")
                    && !l.starts_with("# password_hash")
                    && !l.starts_with("# send_as")
                    && !l.starts_with("# domain")
                    && !l.starts_with("# to ")
                    && !l.starts_with("# recipients")
                    && !l.starts_with("# verify_recipients")
                    && !l.starts_with("# run_as")
                    && !l.starts_with("# selector")
                    && !l.starts_with("# private_key_file")
                    && !l.starts_with("# algorithm")
                    && !l.starts_with("# headers")
                    && !l.starts_with("# mode")
            })
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|rest| rest.contains(" = ") || rest.starts_with('['))
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let parsed = Config::from_toml_str(&uncommented, "uncommented")
            .expect("the uncommented default parses");
        let plain = Config::embedded_default().expect("embedded default");
        assert_eq!(
            parsed.limits, plain.limits,
            "commented [limits] values are the defaults"
        );
        let mut queue = parsed.queue.clone();
        queue.postgres_url = None;
        queue.postgres_password_file = None;
        queue.postgres_ca_file = None;
        queue.node_name = None;
        assert_eq!(
            queue, plain.queue,
            "commented [queue] values are the defaults, apart from the database examples"
        );
        let (mut a, b) = (parsed.delivery.clone(), plain.delivery.clone());
        a.smarthost = None;
        a.smarthost_user = None;
        a.smarthost_password_file = None;
        a.ca_file = None;
        a.tls_policy_ca_file = None;
        assert_eq!(
            a, b,
            "commented [delivery] values are the defaults, apart from the smart host example"
        );
    }

    #[test]
    fn password_hashes_are_masked() {
        let hash = crate::hash_password(b"secret").expect("hash");
        let settings = config(&format!(
            "[[user]]\nlogin = \"a@example.test\"\npassword_hash = \"{hash}\"\n"
        ))
        .effective_settings();
        let shown = setting(&settings, "user[0].password_hash").toml_value();
        assert!(!shown.contains("argon2id$"), "{shown}");
    }
}

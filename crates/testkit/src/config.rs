//! The standard test configuration, and the test users' password.

use std::sync::OnceLock;

/// Password of every test user.
pub const PASSWORD: &str = "correct horse battery staple";

/// Argon2id PHC hash of [`PASSWORD`], computed once per test process (it costs tens of ms).
pub fn password_hash() -> String {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        relayward_config::hash_password(PASSWORD.as_bytes()).expect("hash the test password")
    })
    .clone()
}

/// The standard test configuration: host `mx.example.test`, local domain `example.test`,
/// users alice and bob (who may also send as `sales@example.test`), no trusted networks (so a
/// loopback client is a stranger), listeners `mx`, `submission` and `submissions` on ephemeral
/// loopback ports, `data_dir = "DATA_DIR"` for the caller to replace. `extra` is appended
/// (more tables: `[limits]`, `[[route]]`, …).
pub fn standard_config(extra: &str) -> String {
    config_with_relay("trusted_networks = []", extra)
}

/// [`standard_config`] with the rest of the `[relay]` table (after `local_domains`) given by
/// the test, e.g. `trusted_networks = ["127.0.0.1/32"]`.
pub fn config_with_relay(relay: &str, extra: &str) -> String {
    format!(
        r#"hostname = "mx.example.test"
data_dir = "DATA_DIR"

[[listen]]
address = "127.0.0.1:0"
kind = "mx"

[[listen]]
address = "127.0.0.1:0"
kind = "submission"

[[listen]]
address = "127.0.0.1:0"
kind = "submissions"

[relay]
local_domains = ["example.test"]
{relay}

[[user]]
login = "alice@example.test"
password_hash = "{hash}"

[[user]]
login = "bob@example.test"
password_hash = "{hash}"
send_as = ["bob@example.test", "sales@example.test"]

{extra}
"#,
        hash = password_hash()
    )
}

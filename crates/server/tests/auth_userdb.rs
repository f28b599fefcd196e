//! Password hashing and the user database.

use relayward_server::auth::{UserDb, check_password_hash, hash_password};
use relayward_server::config::Config;

fn config_with_user(hash: &str) -> Config {
    let text = format!(
        r#"
hostname = "mx.example.test"
data_dir = "/tmp/unused"
[[listen]]
address = "127.0.0.1:2525"
kind = "mx"
[relay]
local_domains = ["example.test"]
[[user]]
login = "Alice@Example.test"
password_hash = "{hash}"
"#
    );
    Config::from_toml_str(&text, "test").expect("test config parses")
}

#[tokio::test]
async fn hash_then_verify() {
    let started = std::time::Instant::now();
    let hash = hash_password(b"correct horse").expect("hashing works");
    eprintln!("hash took {:?}", started.elapsed());
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    check_password_hash(&hash).expect("our own hash is valid");
    let db = UserDb::from_config(&config_with_user(&hash));

    let login = db.verify("alice@example.test", b"correct horse").await;
    assert_eq!(
        login.map(|l| l.to_string()).as_deref(),
        Some("Alice@Example.test")
    );
    assert_eq!(db.verify("alice@example.test", b"wrong").await, None);
    assert_eq!(
        db.verify("mallory@example.test", b"correct horse").await,
        None
    );
    assert_eq!(db.verify("", b"").await, None);
}

#[test]
fn password_hash_checks() {
    let rows: &[(&str, bool)] = &[
        (
            "$argon2id$v=19$m=19456,t=2,p=1$hqKfq9Ye2JLRBt1U2nTDrA$vXlTuySI9ru3UbSMp1KYFwKBNvadHuSfxbm5/k7rT1Q",
            true,
        ),
        (
            "$argon2i$v=19$m=19456,t=2,p=1$hqKfq9Ye2JLRBt1U2nTDrA$vXlTuySI9ru3UbSMp1KYFwKBNvadHuSfxbm5/k7rT1Q",
            true,
        ),
        ("$argon2id$...", false),
        ("hunter2", false),
        ("", false),
        (
            "$2b$12$abcdefghijklmnopqrstuuvwxyz0123456789abcdefghijklmnop",
            false,
        ),
        (
            "$pbkdf2-sha256$i=1000$aaaaaaaaaaaaaaaaaaaaaa$vXlTuySI9ru3UbSMp1KYFwKBNvadHuSfxbm5/k7rT1Q",
            false,
        ),
        (
            "$argon2id$v=19$m=1,t=2,p=1$hqKfq9Ye2JLRBt1U2nTDrA$vXlTuySI9ru3UbSMp1KYFwKBNvadHuSfxbm5/k7rT1Q",
            false,
        ),
        (
            "$argon2id$v=19$m=19456,t=2,p=1$hqKfq9Ye2JLRBt1U2nTDrA",
            false,
        ),
    ];
    for (hash, valid) in rows {
        assert_eq!(
            check_password_hash(hash).is_ok(),
            *valid,
            "{hash}: {:?}",
            check_password_hash(hash)
        );
    }
}

//! Password hashing and the user database.

use std::time::Duration;

use relayward_server::auth::{PasswordChecks, UserDb, check_password_hash, hash_password};
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
    let checks = PasswordChecks::new(1);
    let mut slot = checks.slot(Duration::from_secs(1)).await.expect("a slot");

    let login = db
        .verify("alice@example.test", b"correct horse", &mut slot)
        .await;
    assert_eq!(
        login.map(|l| l.to_string()).as_deref(),
        Some("Alice@Example.test")
    );
    assert_eq!(
        db.verify("alice@example.test", b"wrong", &mut slot).await,
        None
    );
    assert_eq!(
        db.verify("mallory@example.test", b"correct horse", &mut slot)
            .await,
        None
    );
    assert_eq!(db.verify("", b"", &mut slot).await, None);
}

/// A slot's memory is reused from check to check, and grows when a hash asks for more: hashes
/// of other argon2 variants and costs verify all the same, in any order.
#[tokio::test]
async fn hashes_of_any_argon2_variant_and_cost_verify_in_one_slot() {
    use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
    let hashes: Vec<String> = [
        (Algorithm::Argon2id, 8 * 1024, 1),
        (Algorithm::Argon2i, 32 * 1024, 2),
        (Algorithm::Argon2d, 4 * 1024, 3),
        (Algorithm::Argon2id, 19 * 1024, 2),
    ]
    .into_iter()
    .map(|(algorithm, m_cost, t_cost)| {
        let params = Params::new(m_cost, t_cost, 1, None).expect("params");
        Argon2::new(algorithm, Version::V0x13, params)
            .hash_password(b"s3cret")
            .expect("hash")
            .to_string()
    })
    .collect();
    let checks = PasswordChecks::new(1);
    for hash in &hashes {
        let db = UserDb::from_config(&config_with_user(hash));
        let mut slot = checks.slot(Duration::from_secs(1)).await.expect("a slot");
        let ok = db.verify("alice@example.test", b"s3cret", &mut slot).await;
        assert!(ok.is_some(), "{hash} did not verify");
        let wrong = db.verify("alice@example.test", b"s3cret!", &mut slot).await;
        assert!(wrong.is_none(), "{hash} verified a wrong password");
    }
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

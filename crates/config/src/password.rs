//! Configured password hashes: the one way to make one (`relayward hash-password`, tests) and
//! the one check of one, shared by `check-config` and the user database.

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher};

/// Hashing failed (the system RNG failed, or argon2 refused the input).
#[derive(Debug, thiserror::Error)]
#[error("cannot hash password: {0}")]
pub struct HashError(String);

/// Hashes a password with argon2id and its default parameters, as a PHC string for
/// `[[user]] password_hash`. Takes tens of milliseconds of CPU: call it off the async runtime.
pub fn hash_password(password: &[u8]) -> Result<String, HashError> {
    Argon2::default()
        .hash_password(password)
        .map(|hash| hash.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Checks that `phc` is an argon2 PHC string we can verify against (algorithm, version,
/// parameters, salt and hash all present and valid). The error says what is wrong.
pub fn check_password_hash(phc: &str) -> Result<(), String> {
    let hash = PasswordHash::new(phc).map_err(|e| {
        format!("not a PHC password hash ({e}); it looks like \"$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>\"")
    })?;
    Algorithm::new(hash.algorithm.as_str())
        .map_err(|_| format!("algorithm {:?} is not argon2", hash.algorithm.as_str()))?;
    Params::try_from(&hash).map_err(|e| format!("invalid argon2 parameters: {e}"))?;
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err("the hash has no salt or no hash value".to_string());
    }
    Ok(())
}

/// Reads a secret kept out of the configuration file (`smarthost_password_file`,
/// `postgres_password_file`): the whole file without its line end.
pub fn read_secret_file(path: &std::path::Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

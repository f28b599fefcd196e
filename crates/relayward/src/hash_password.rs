//! `relayward hash-password`: reads a password on stdin, prints its argon2id PHC string.
//!
//! Stdin rather than an argument so the password never shows in `ps` or shell history.

use std::io::BufRead;
use std::process::ExitCode;

/// Prints the hash alone, or with `--json` as `{"password_hash": "…"}`.
pub fn run(json: bool) -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
        eprintln!("relayward hash-password: cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("relayward hash-password: empty password (type it on stdin, then Enter)");
        return ExitCode::FAILURE;
    }
    match relayward_server::auth::hash_password(password.as_bytes()) {
        Ok(hash) if json => {
            println!("{}", serde_json::json!({ "password_hash": hash }));
            ExitCode::SUCCESS
        }
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("relayward hash-password: {e}");
            ExitCode::FAILURE
        }
    }
}

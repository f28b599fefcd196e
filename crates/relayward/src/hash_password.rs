//! `relayward hash-password`: reads a password on stdin, prints its argon2id PHC string.
//!
//! Stdin rather than an argument so the password never shows in `ps` or shell history. On a
//! terminal it asks for it, twice, with echo off; from a pipe it reads one line.

use std::io::BufRead;
use std::process::ExitCode;

/// Prints the hash alone, or with `--json` as `{"password_hash": "…"}`.
pub fn run(json: bool) -> ExitCode {
    let stdin = std::io::stdin();
    let password = if nix::unistd::isatty(&stdin).unwrap_or(false) {
        let first = read_hidden("Password (not shown): ");
        let again = read_hidden("Same password again: ");
        match (first, again) {
            (Ok(first), Ok(again)) if first == again => first,
            (Ok(_), Ok(_)) => {
                eprintln!("relayward hash-password: the two passwords differ; nothing printed");
                return ExitCode::FAILURE;
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("relayward hash-password: cannot read the terminal: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        let mut line = String::new();
        if let Err(e) = stdin.lock().read_line(&mut line) {
            eprintln!("relayward hash-password: cannot read stdin: {e}");
            return ExitCode::FAILURE;
        }
        line.trim_end_matches(['\r', '\n']).to_string()
    };
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

/// One line from the terminal on stdin, `prompt` on stderr, echo off while it is typed.
fn read_hidden(prompt: &str) -> std::io::Result<String> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin)?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    eprint!("{prompt}");
    tcsetattr(&stdin, SetArg::TCSAFLUSH, &quiet)?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let restored = tcsetattr(&stdin, SetArg::TCSAFLUSH, &saved);
    eprintln!();
    read?;
    restored?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

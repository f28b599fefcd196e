//! `relayward dkim keygen`: a new DKIM key pair — the private key written to a file only its
//! owner can read, the public half printed as the DNS TXT record to publish.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use relayward_config::dkim::{DkimAlgorithm, valid_selector};
use relayward_delivery::dkim::generate_key;

#[derive(Args, Debug)]
pub struct DkimArgs {
    #[command(subcommand)]
    command: DkimCommand,
}

#[derive(Subcommand, Debug)]
enum DkimCommand {
    /// Generate a signing key: write the private key (PEM, mode 0600) to --out and print the
    /// DNS TXT record to publish (zone-file line; with --json, name and value).
    ///
    /// Then add to the configuration:
    ///   [[dkim]]
    ///   domain = "DOMAIN"
    ///   selector = "SELECTOR"
    ///   private_key_file = "FILE"
    ///   algorithm = "ALGORITHM"
    /// and reload (SIGHUP) once the record is visible in DNS.
    #[command(verbatim_doc_comment)]
    Keygen(KeygenArgs),
}

#[derive(Args, Debug)]
struct KeygenArgs {
    /// The signing domain (d=): mail whose From: address is in it is signed with this key.
    #[arg(long, value_name = "DOMAIN")]
    domain: String,
    /// The selector (s=): the record is published at SELECTOR._domainkey.DOMAIN. A new
    /// selector per key lets old and new keys overlap while DNS changes.
    #[arg(long, value_name = "SELECTOR")]
    selector: String,
    /// Where to write the private key. An existing file is never overwritten.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Signature algorithm.
    #[arg(long, value_enum, default_value_t = Algorithm::RsaSha256)]
    algorithm: Algorithm,
    /// RSA key size in bits (2048 to 4096; ignored for ed25519-sha256).
    #[arg(long, default_value_t = 2048, value_name = "BITS")]
    bits: usize,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Algorithm {
    #[value(name = "rsa-sha256")]
    RsaSha256,
    #[value(name = "ed25519-sha256")]
    Ed25519Sha256,
}

impl From<Algorithm> for DkimAlgorithm {
    fn from(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::RsaSha256 => DkimAlgorithm::RsaSha256,
            Algorithm::Ed25519Sha256 => DkimAlgorithm::Ed25519Sha256,
        }
    }
}

pub fn run(args: DkimArgs, json: bool) -> ExitCode {
    match args.command {
        DkimCommand::Keygen(args) => match keygen(&args, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err((code, message)) => {
                eprintln!("relayward dkim keygen: {message}");
                ExitCode::from(code)
            }
        },
    }
}

fn keygen(args: &KeygenArgs, json: bool) -> Result<(), (u8, String)> {
    let usage = |message: String| (crate::EXIT_USAGE, message);
    let domain_ok = relayward_protocol::idn::to_ascii(&args.domain)
        .is_ok_and(|ascii| relayward_protocol::path::parse_domain(&ascii).is_ok());
    if !domain_ok {
        return Err(usage(format!(
            "--domain {:?} is not a domain name",
            args.domain
        )));
    }
    if !valid_selector(&args.selector) {
        return Err(usage(format!(
            "--selector {:?} cannot be a DNS label (letters, digits, '-', '_')",
            args.selector
        )));
    }
    let algorithm = DkimAlgorithm::from(args.algorithm);
    if algorithm == DkimAlgorithm::RsaSha256 && !(2048..=4096).contains(&args.bits) {
        return Err(usage(format!(
            "--bits {}: RSA keys for DKIM are 2048 to 4096 bits (shorter ones are refused by receivers and by the signer)",
            args.bits
        )));
    }
    let key =
        generate_key(&args.domain, &args.selector, algorithm, args.bits).map_err(|e| (1, e))?;
    write_private(&args.out, &key.private_key_pem).map_err(|e| (1, e))?;
    if json {
        let record = serde_json::json!({
            "private_key_file": args.out,
            "algorithm": algorithm.as_str(),
            "name": key.record_name,
            "type": "TXT",
            "value": key.record_value,
        });
        println!("{record}");
    } else {
        println!("{}", zone_line(&key.record_name, &key.record_value));
    }
    Ok(())
}

/// Creates `path` with mode 0600 (never replacing a file: it may be a key in use).
fn write_private(path: &Path, pem: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The record as a zone-file line; TXT strings are at most 255 octets (RFC 1035 §3.3.14),
/// so a long value is split into several quoted strings, which DNS joins back.
fn zone_line(name: &str, value: &str) -> String {
    let strings: Vec<String> = value
        .as_bytes()
        .chunks(255)
        .map(|chunk| format!("\"{}\"", String::from_utf8_lossy(chunk)))
        .collect();
    format!("{name} IN TXT ( {} )", strings.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_split_into_txt_strings() {
        let value = "v=DKIM1; k=rsa; p=".to_owned() + &"A".repeat(400);
        let line = zone_line("s._domainkey.example.test.", &value);
        let strings: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
        assert_eq!(strings.len(), 2);
        assert_eq!(strings[0].len(), 255);
        assert_eq!(strings.concat(), value);
    }
}

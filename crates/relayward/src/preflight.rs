//! What `serve` would refuse beyond the file itself: files it must read, directories it must
//! write, the account it must become. `check-config` runs the same checks, so a configuration
//! that passes it starts; `serve` runs them before binding anything, so a refusal says what to
//! fix instead of failing halfway through start-up.
//!
//! Each finding names the key it comes from (the reporter adds the file and line) and the fix.

use std::path::Path;
use std::sync::Arc;

use relayward_config::{Config, ConfigProblem, Severity};
use relayward_delivery::{DeliveryConfig, DeliveryContext};
use relayward_server::tls::{CertificateSource, generated_paths, load_pair};

use crate::privilege::{self, Account, Switch};

/// Every problem `serve` would stop at, for the account it would run as; also the plan for
/// that account (`None` when `run_as` cannot be used, which is then one of the problems).
pub fn check(config: &Config) -> (Vec<ConfigProblem>, Option<Switch>) {
    let mut problems = Vec::new();
    let switch = match privilege::plan(config) {
        Ok(switch) => switch,
        Err((key, message)) => {
            problems.push(error(key, message));
            return (problems, None);
        }
    };
    let account = switch.account();
    check_data_dir(config, account, &mut problems);
    check_tls(config, &switch, &mut problems);
    check_delivery_files(config, account, &mut problems);
    check_dkim_keys(config, account, &mut problems);
    check_descriptor_limit(config, &mut problems);
    (problems, Some(switch))
}

/// Descriptors beside the sessions' and the deliveries': listeners, the spool and its
/// committer, the Maildir being written, DNS, the log.
const SPARE_DESCRIPTORS: u64 = 64;

/// Every SMTP session and every delivery holds a file descriptor, and the delivery pool may
/// keep as many idle connections as deliveries run; at the process's limit the listeners
/// cannot accept (EMFILE) and clients hear no banner. `serve` raises its soft limit to the
/// hard one ([`crate::descriptors::raise_to_hard_limit`]), so the hard limit is what counts
/// here.
fn check_descriptor_limit(config: &Config, problems: &mut Vec<ConfigProblem>) {
    let Some(hard) = crate::descriptors::hard_limit() else {
        return;
    };
    let sessions = u64::from(config.limits.max_connections);
    let deliveries = u64::from(config.delivery.max_connections);
    let needed = sessions + 2 * deliveries + SPARE_DESCRIPTORS;
    if hard < needed {
        problems.push(warning(
            "limits.max_connections",
            format!(
                "the open files limit is {hard}, below the {needed} that {sessions} sessions \
                 (limits.max_connections), {deliveries} deliveries \
                 (delivery.max_connections) and as many idle connections kept for reuse \
                 need with {SPARE_DESCRIPTORS} to spare: near it \
                 new connections are not accepted; raise the hard limit (systemd \
                 LimitNOFILE=, the shipped unit sets 65536; ulimit -Hn) or lower the two keys"
            ),
        ));
    }
}

fn error(key: &str, message: impl Into<String>) -> ConfigProblem {
    ConfigProblem {
        severity: Severity::Error,
        key: key.to_string(),
        message: message.into(),
    }
}

fn warning(key: &str, message: impl Into<String>) -> ConfigProblem {
    ConfigProblem {
        severity: Severity::Warning,
        key: key.to_string(),
        message: message.into(),
    }
}

/// `data_dir` and the parts of it that already exist must be writable by the account: a
/// queue directory left behind by a run as root would refuse every message later.
fn check_data_dir(config: &Config, account: &Account, problems: &mut Vec<ConfigProblem>) {
    if let Err(why) = account.can_write_dir(&config.data_dir) {
        problems.push(error("data_dir", why));
        return;
    }
    for part in ["queue", "queue/msg", "queue/tmp", "mail", "tls"] {
        let dir = config.data_dir.join(part);
        if dir.exists()
            && let Err(why) = account.can_write_dir(&dir)
        {
            problems.push(error("data_dir", why));
        }
    }
}

/// The certificate and key must load and match. With `[tls]` they are read before the
/// switch (as root, so a key readable only by root works), but a reload reads them again as
/// the account; the generated pair is always read as the account.
fn check_tls(config: &Config, switch: &Switch, problems: &mut Vec<ConfigProblem>) {
    match &config.tls {
        Some(files) => {
            if let Err(e) = load_pair(&files.cert, &files.key, CertificateSource::Configured) {
                problems.push(error(tls_key_of(&e.to_string(), &files.key), format!("{e}; point tls.cert and tls.key at a readable PEM certificate chain and its private key")));
                return;
            }
            if let Switch::To(account) = switch {
                for (key, path) in [("tls.cert", &files.cert), ("tls.key", &files.key)] {
                    if let Err(why) = account.can_read(path) {
                        problems.push(warning(key, format!("{why}: read as root at start, but a reload (SIGHUP) reads it as {} and keeps the old certificate", account.name)));
                    }
                }
            }
        }
        None => {
            let (cert, key) = generated_paths(&config.data_dir);
            if cert.exists() || key.exists() {
                if let Err(e) = load_pair(&cert, &key, CertificateSource::Reused) {
                    problems.push(error("tls", format!("the generated pair in {} cannot be used: {e}; delete both files to have a new pair generated, or set [tls] cert and key", cert.parent().unwrap_or(Path::new(".")).display())));
                    return;
                }
                for path in [&cert, &key] {
                    if let Err(why) = switch.account().can_read(path) {
                        problems.push(error("tls", why));
                    }
                }
            }
        }
    }
}

/// A pair error names the key file when the key is what failed.
fn tls_key_of(message: &str, key: &Path) -> &'static str {
    if message.contains(&key.display().to_string()) {
        "tls.key"
    } else {
        "tls.cert"
    }
}

/// The files the delivery side reads — the smart host's password file, the CA files, the
/// DNSSEC trust anchors — are read when it is built, after the switch: the account must be
/// able to read them, and they must be what they claim.
fn check_delivery_files(config: &Config, account: &Account, problems: &mut Vec<ConfigProblem>) {
    let files = [
        (
            "delivery.smarthost_password_file",
            config.delivery.smarthost_password_file.as_deref(),
        ),
        ("delivery.ca_file", config.delivery.ca_file.as_deref()),
        (
            "delivery.tls_policy_ca_file",
            config.delivery.tls_policy_ca_file.as_deref(),
        ),
        ("dns.trust_anchor", config.dns.trust_anchor.as_deref()),
    ];
    let mut readable = true;
    for (key, path) in files {
        let Some(path) = path else { continue };
        if let Err(why) = account.can_read(path) {
            problems.push(error(key, why));
            readable = false;
        }
    }
    if !readable || config.validate().is_err() {
        return;
    }
    let settings = DeliveryConfig::from_config(config);
    if let Err(e) = DeliveryContext::new(settings, Arc::new(config.router())) {
        use relayward_delivery::config::ConfigError;
        let key_of = |path: &Path| {
            files
                .iter()
                .find(|(_, file)| *file == Some(path))
                .map_or("delivery", |(key, _)| *key)
        };
        let key = match &e {
            ConfigError::Read { path, .. } | ConfigError::BadCaFile(path) => key_of(path),
            ConfigError::TrustAnchor(_) => "dns.trust_anchor",
            _ => "delivery",
        };
        problems.push(error(key, e.to_string()));
    }
}

/// `[[dkim]]` keys are read when the snapshot is built, after the switch, and on every
/// reload: each must be a key that signs (the loader's own words), and the account must be
/// able to read it.
fn check_dkim_keys(config: &Config, account: &Account, problems: &mut Vec<ConfigProblem>) {
    if let Err(e) = relayward_delivery::dkim::DkimSigners::load(&config.dkim) {
        problems.push(error(
            &e.key,
            format!("{}: {}", e.file.display(), e.problem),
        ));
        return;
    }
    for (i, key) in config.dkim.iter().enumerate() {
        if let Err(why) = account.can_read(&key.private_key_file) {
            problems.push(error(&format!("dkim[{i}].private_key_file"), why));
        }
    }
}

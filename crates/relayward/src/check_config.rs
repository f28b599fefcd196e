//! `relayward check-config FILE`: the effective policy, the configuration's problems, and the
//! tester's relay-trick battery replayed against the policy in-process.
//!
//! The replay uses the same parser, resolver and policy as a live session, as a client that is
//! neither trusted nor authenticated: if any trick would be relayed, the configuration fails.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use relayward_protocol::battery::{self, RenderedTrick, TrickContext};
use relayward_protocol::command::{Command, parse_command};
use relayward_protocol::resolve::resolve;
use relayward_protocol::route::RouteClass;
use relayward_server::config::{Config, EMBEDDED_DEFAULT_TOML, ListenerKind};
use relayward_server::policy::{AcceptReason, ClientIdentity, Policy};

use crate::EXIT_CONFIG;

#[derive(clap::Args, Debug)]
pub struct CheckConfigArgs {
    /// Configuration file to check (the same as --config FILE). Without either, the embedded
    /// default is checked.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,

    /// Print the embedded default configuration (a commented starting point) and exit.
    #[arg(long)]
    show_default: bool,
}

/// What one replayed trick came to.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Refused at MAIL or RCPT (syntax or policy); the reply is shown.
    Refused(String),
    /// Accepted, but only for local delivery or a relay domain this server fronts.
    AcceptedLocally(String),
    /// Accepted for another domain: the server would be an open relay.
    Relayed(String),
}

pub async fn run(args: CheckConfigArgs, config_arg: crate::ConfigArg, _json: bool) -> ExitCode {
    if args.show_default {
        print!("{EMBEDDED_DEFAULT_TOML}");
        return ExitCode::SUCCESS;
    }
    let arg = match file_to_check(args.file, config_arg) {
        Ok(arg) => arg,
        Err(message) => {
            eprintln!("relayward check-config: {message}");
            return ExitCode::from(crate::EXIT_USAGE);
        }
    };
    let config = match crate::load_config(&arg) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("relayward check-config: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    println!("{}", config.effective_policy_summary());
    if !crate::report_problems(&config) {
        println!("FAIL: the configuration has errors (above); relayward serve would refuse it.");
        return ExitCode::from(EXIT_CONFIG);
    }
    let policy = match Policy::from_config(&config) {
        Ok(policy) => policy,
        Err(problems) => {
            for problem in problems {
                eprintln!("relayward check-config: {problem}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let Some(client) = untrusted_address(&policy) else {
        println!(
            "FAIL: every test address is in a trusted network; the trusted networks are far too wide."
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let relayed = replay_battery(&config, &policy, client);
    if relayed == 0 {
        println!("PASS: no relay trick was relayed.");
        ExitCode::SUCCESS
    } else {
        println!("FAIL: {relayed} relay trick(s) would be relayed for a stranger.");
        ExitCode::from(EXIT_CONFIG)
    }
}

/// The file named as the argument or by `--config` (both are accepted, as README and
/// `serve` use `--config`); naming two different files is a mistake worth stopping for.
fn file_to_check(
    positional: Option<PathBuf>,
    config_arg: crate::ConfigArg,
) -> Result<crate::ConfigArg, String> {
    match (positional, config_arg.config) {
        (Some(file), Some(other)) if file != other => Err(format!(
            "two files given: {} and --config {}; name one",
            file.display(),
            other.display()
        )),
        (Some(file), _) => Ok(crate::ConfigArg { config: Some(file) }),
        (None, config) => Ok(crate::ConfigArg { config }),
    }
}

/// A documentation address (RFC 5737 / RFC 3849) outside every trusted network.
fn untrusted_address(policy: &Policy) -> Option<IpAddr> {
    [
        "192.0.2.123",
        "198.51.100.123",
        "203.0.113.123",
        "2001:db8::123",
    ]
    .iter()
    .filter_map(|a| a.parse().ok())
    .find(|ip| !policy.is_trusted(*ip))
}

/// Replays every trick for every local domain; prints one line per trick and domain, returns
/// how many were relayed.
fn replay_battery(config: &Config, policy: &Policy, client: IpAddr) -> usize {
    let identity = ClientIdentity::anonymous(client);
    let mut relayed = 0;
    let mut replayed = 0;
    println!();
    println!("Relay-trick battery, as client {client} (not trusted, not authenticated):");
    for domain in config.normalized_local_domains() {
        let ctx = trick_context(config, &domain);
        for trick in battery::battery() {
            let Some(rendered) = battery::render(trick, &ctx) else {
                continue;
            };
            replayed += 1;
            let outcome = replay(policy, &identity, &rendered);
            let (word, detail) = match &outcome {
                Outcome::Refused(reply) => ("refused ", reply),
                Outcome::AcceptedLocally(why) => ("local   ", why),
                Outcome::Relayed(why) => {
                    relayed += 1;
                    ("RELAYED ", why)
                }
            };
            println!(
                "  {word} {:<34} {} / {}  ->  {detail}",
                rendered.id, rendered.mail_from, rendered.rcpt_to
            );
        }
    }
    println!("{replayed} tricks replayed, {relayed} relayed.");
    relayed
}

fn trick_context(config: &Config, local_domain: &str) -> TrickContext {
    let target_ip = config
        .listen
        .iter()
        .map(|l| l.address.ip())
        .find(|ip| !ip.is_unspecified())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let mut ctx = TrickContext::new("sender-check.invalid", "relay-check.invalid", target_ip);
    ctx.local_domain = Some(local_domain.to_string());
    ctx.target_host = Some(config.hostname.clone());
    ctx
}

/// One trick through parser, resolver and policy, as a live mx session would run it.
fn replay(policy: &Policy, client: &ClientIdentity, trick: &RenderedTrick) -> Outcome {
    match parse_command(trick.mail_from.as_bytes()) {
        Ok(Command::Mail { from, .. }) => {
            if let Err(refusal) = policy.check_mail(ListenerKind::Mx, client, &from) {
                return Outcome::Refused(refusal.reply().to_string());
            }
        }
        Ok(other) => return Outcome::Refused(format!("not a MAIL command: {}", other.verb())),
        Err(e) => return Outcome::Refused(format!("MAIL refused: {e}")),
    }
    let to = match parse_command(trick.rcpt_to.as_bytes()) {
        Ok(Command::Rcpt { to, .. }) => to,
        Ok(other) => return Outcome::Refused(format!("not a RCPT command: {}", other.verb())),
        Err(e) => return Outcome::Refused(format!("RCPT refused: {e}")),
    };
    match policy.decide(client, &resolve(&to)) {
        Err(refusal) => Outcome::Refused(refusal.reply().to_string()),
        Ok(accepted) => match (accepted.reason(), accepted.route().class) {
            (AcceptReason::LocalMailbox, RouteClass::Local) => {
                Outcome::AcceptedLocally(format!("local mailbox {}", accepted.address()))
            }
            (AcceptReason::RelayDomain, RouteClass::RelayDomain) => {
                Outcome::AcceptedLocally(format!("relay domain {}", accepted.address()))
            }
            (reason, _) => {
                Outcome::Relayed(format!("{} accepted ({reason:?})", accepted.address()))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(trusted: &str) -> (Config, Policy) {
        let text = format!(
            "hostname = \"mx.example.test\"\ndata_dir = \"/tmp/x\"\n[[listen]]\naddress = \"127.0.0.1:25\"\nkind = \"mx\"\n[relay]\nlocal_domains = [\"example.test\"]\ntrusted_networks = [{trusted}]\n"
        );
        let config = Config::from_toml_str(&text, "test").expect("config");
        let policy = Policy::from_config(&config).expect("policy");
        (config, policy)
    }

    #[test]
    fn the_battery_relays_nothing_for_a_stranger() {
        let (config, policy) = policy("\"127.0.0.1/32\"");
        let client = untrusted_address(&policy).expect("an untrusted address");
        assert_eq!(replay_battery(&config, &policy, client), 0);
    }

    #[test]
    fn a_trusted_client_would_be_relayed_which_proves_the_replay_can_fail() {
        let (config, policy) = policy("\"192.0.2.0/24\"");
        let identity = ClientIdentity::anonymous("192.0.2.123".parse().expect("ip"));
        let ctx = trick_context(&config, "example.test");
        let trick = battery::trick("plain-external").map(|t| battery::render(t, &ctx));
        let Some(Some(rendered)) = trick else {
            panic!("battery has no plain-external trick");
        };
        assert!(matches!(
            replay(&policy, &identity, &rendered),
            Outcome::Relayed(_)
        ));
    }
}

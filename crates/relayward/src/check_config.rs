//! `relayward check-config FILE`: the effective policy, the configuration's problems, and the
//! tester's relay-trick battery replayed against the policy in-process.
//!
//! The replay uses the same parser, resolver and policy as a live session, as a client that is
//! neither trusted nor authenticated: if any trick would be relayed, the configuration fails.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use relayward_config::{ConfigProblem, Severity};
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

    /// Print the embedded default configuration and exit: the complete commented file, every
    /// section and key at its default, a starting point for your own.
    #[arg(long, conflicts_with = "effective")]
    show_default: bool,

    /// Print every setting with the value in force and whether it is the default (like
    /// `postconf`), the delivery mode, then the configuration's problems; no relay battery.
    #[arg(long)]
    effective: bool,
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

impl Outcome {
    fn word(&self) -> &'static str {
        match self {
            Outcome::Refused(_) => "refused",
            Outcome::AcceptedLocally(_) => "local",
            Outcome::Relayed(_) => "RELAYED",
        }
    }

    fn detail(&self) -> &str {
        match self {
            Outcome::Refused(d) | Outcome::AcceptedLocally(d) | Outcome::Relayed(d) => d,
        }
    }
}

/// One trick replayed for one local domain.
struct Replayed {
    rendered: RenderedTrick,
    outcome: Outcome,
}

/// `config_on_command_line`: whether `--config` was written on the command line (not taken
/// from `RELAYWARD_CONFIG`), which decides whether a file argument conflicts with it.
pub async fn run(
    args: CheckConfigArgs,
    config_arg: crate::ConfigArg,
    config_on_command_line: bool,
    json: bool,
) -> ExitCode {
    if args.show_default {
        print!("{EMBEDDED_DEFAULT_TOML}");
        return ExitCode::SUCCESS;
    }
    let arg = match file_to_check(args.file, config_arg, config_on_command_line) {
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
    let mut problems = config.problems();
    problems.extend(crate::preflight::check(&config).0);
    problems.sort_by_key(|p| p.severity);
    let valid = !problems.iter().any(|p| p.severity == Severity::Error);
    if args.effective {
        print_effective(&config, &arg, &problems, json);
        crate::print_problems(&problems, &arg);
        return exit(valid);
    }
    if !json {
        println!("{}", config.effective_policy_summary());
    }
    crate::print_problems(&problems, &arg);
    let report = if valid {
        battery_report(&config)
    } else {
        Err("invalid".into())
    };
    if json {
        print_json(&arg, &problems, &report);
    } else {
        print_text(&report);
    }
    exit(valid && report.as_ref().is_ok_and(|r| r.relayed() == 0))
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_CONFIG)
    }
}

/// The battery's outcome: the client it played and every trick, or why it could not run.
struct BatteryReport {
    client: IpAddr,
    replayed: Vec<Replayed>,
}

impl BatteryReport {
    fn relayed(&self) -> usize {
        self.replayed
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Relayed(_)))
            .count()
    }
}

/// Replays the battery, unless the policy cannot be built or no test address is untrusted.
fn battery_report(config: &Config) -> Result<BatteryReport, String> {
    let policy = Policy::from_config(config).map_err(|problems| {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        text.join("; ")
    })?;
    let client = untrusted_address(&policy).ok_or_else(|| {
        "every test address is in a trusted network; the trusted networks are far too wide."
            .to_string()
    })?;
    Ok(BatteryReport {
        client,
        replayed: replay_battery(config, &policy, client),
    })
}

fn print_text(report: &Result<BatteryReport, String>) {
    let report = match report {
        Ok(report) => report,
        Err(why) if why == "invalid" => {
            println!(
                "FAIL: the configuration has errors (above); relayward serve would refuse it."
            );
            return;
        }
        Err(why) => {
            println!("FAIL: {why}");
            return;
        }
    };
    println!();
    println!(
        "Relay-trick battery, as client {} (not trusted, not authenticated):",
        report.client
    );
    for r in &report.replayed {
        println!(
            "  {:<8} {:<34} {} / {}  ->  {}",
            r.outcome.word(),
            r.rendered.id,
            r.rendered.mail_from,
            r.rendered.rcpt_to,
            r.outcome.detail()
        );
    }
    let relayed = report.relayed();
    println!(
        "{} tricks replayed, {relayed} relayed.",
        report.replayed.len()
    );
    if relayed == 0 {
        println!("PASS: no relay trick was relayed.");
    } else {
        println!("FAIL: {relayed} relay trick(s) would be relayed for a stranger.");
    }
}

/// `check-config --json`: one object. `result` is `pass` or `fail`; `problems` carry the line
/// of their key when the file has it; `battery` is `null` when the configuration has errors.
/// `problems` of the JSON output: `severity`, `key`, `line` (in the file) and `message`.
fn problems_json(arg: &crate::ConfigArg, problems: &[ConfigProblem]) -> Vec<serde_json::Value> {
    let text = arg
        .config
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok());
    problems
        .iter()
        .map(|p| {
            serde_json::json!({
                "severity": match p.severity { Severity::Error => "error", Severity::Warning => "warning" },
                "key": p.key,
                "line": text.as_deref().and_then(|t| relayward_config::line_of(t, &p.key)),
                "message": p.message,
            })
        })
        .collect()
}

fn print_json(
    arg: &crate::ConfigArg,
    problems: &[ConfigProblem],
    report: &Result<BatteryReport, String>,
) {
    let problems = problems_json(arg, problems);
    let (battery, pass) = match report {
        Ok(report) => (
            serde_json::json!({
                "client": report.client.to_string(),
                "replayed": report.replayed.len(),
                "relayed": report.relayed(),
                "tricks": report.replayed.iter().map(|r| serde_json::json!({
                    "id": r.rendered.id,
                    "mail_from": r.rendered.mail_from,
                    "rcpt_to": r.rendered.rcpt_to,
                    "outcome": r.outcome.word().to_ascii_lowercase(),
                    "detail": r.outcome.detail(),
                })).collect::<Vec<_>>(),
            }),
            report.relayed() == 0,
        ),
        Err(why) if why == "invalid" => (serde_json::Value::Null, false),
        Err(why) => (serde_json::json!({ "error": why }), false),
    };
    let out = serde_json::json!({
        "file": arg.config.as_ref().map(|p| p.display().to_string()),
        "result": if pass { "pass" } else { "fail" },
        "problems": problems,
        "battery": battery,
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
}

/// `--effective`: `key = value` lines, defaults marked; `--json`: the same as objects.
fn print_effective(
    config: &Config,
    arg: &crate::ConfigArg,
    problems: &[ConfigProblem],
    json: bool,
) {
    let settings = config.effective_settings();
    let origin = arg
        .config
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "the embedded default".into());
    if json {
        let out = serde_json::json!({
            "file": arg.config.as_ref().map(|p| p.display().to_string()),
            "delivery_mode": config.delivery_mode(),
            "settings": settings,
            // The problems the text form prints after the settings (stderr has them too).
            "problems": problems_json(arg, problems),
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return;
    }
    println!(
        "# Effective configuration of {origin}: every setting, \"# default\" where the file leaves it"
    );
    println!("# Delivery: {}", config.delivery_mode());
    let width = settings
        .iter()
        .map(|s| s.key.len() + 3 + s.toml_value().len())
        .max()
        .unwrap_or(0)
        .min(72);
    for setting in &settings {
        let line = format!("{} = {}", setting.key, setting.toml_value());
        if setting.default {
            println!("{line:<width$}  # default");
        } else {
            println!("{line}");
        }
    }
}

/// The file named as the argument or by `--config` (both are accepted, as README and
/// `serve` use `--config`); naming two different files is a mistake worth stopping for.
/// The file to check: the argument, or `--config`. Both on the command line must agree; a
/// `RELAYWARD_CONFIG` in the environment gives way to the argument (an admin with the
/// variable set checks a new file by naming it).
fn file_to_check(
    positional: Option<PathBuf>,
    config_arg: crate::ConfigArg,
    config_on_command_line: bool,
) -> Result<crate::ConfigArg, String> {
    match (positional, config_arg.config) {
        (Some(file), Some(other)) if file != other && config_on_command_line => Err(format!(
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

/// Replays every trick for every local domain, as a stranger at `client`.
fn replay_battery(config: &Config, policy: &Policy, client: IpAddr) -> Vec<Replayed> {
    let identity = ClientIdentity::anonymous(client);
    let mut replayed = Vec::new();
    for domain in config.normalized_local_domains() {
        let ctx = trick_context(config, &domain);
        for trick in battery::battery() {
            let Some(rendered) = battery::render(trick, &ctx) else {
                continue;
            };
            let outcome = replay(policy, &identity, &rendered);
            replayed.push(Replayed { rendered, outcome });
        }
    }
    replayed
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
    #[test]
    fn the_file_argument_wins_over_the_environment_but_not_over_config() {
        let (file, env) = (PathBuf::from("new.toml"), PathBuf::from("running.toml"));
        let from = |config: &PathBuf| crate::ConfigArg {
            config: Some(config.clone()),
        };
        let chosen = file_to_check(Some(file.clone()), from(&env), false).expect("no conflict");
        assert_eq!(chosen.config, Some(file.clone()));
        assert!(file_to_check(Some(file.clone()), from(&env), true).is_err());
        assert!(file_to_check(Some(file.clone()), from(&file), true).is_ok());
    }

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
        let replayed = replay_battery(&config, &policy, client);
        assert!(!replayed.is_empty());
        assert!(
            replayed
                .iter()
                .all(|r| !matches!(r.outcome, Outcome::Relayed(_)))
        );
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

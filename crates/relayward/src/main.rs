//! `relayward`: a mail relay that cannot be an open relay, and an open-relay tester.

mod admin;
mod admin_cmd;
mod check_config;
mod delivery;
mod descriptors;
mod dkim_cmd;
mod hash_password;
mod manual;
mod metrics_http;
mod preflight;
mod privilege;
mod queue_backend;
mod queue_cmd;
mod serve;
mod snapshot;
mod view;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

/// Exit status for a configuration that is refused (sysexits' EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;
/// Exit status for a command line that cannot be carried out as given: 2, as for the usage
/// errors clap reports itself.
pub const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "relayward",
    version,
    about = "A mail relay that cannot be an open relay, and an open-relay tester.",
    long_about = "relayward accepts mail for its own domains from anyone, relays to other domains only for \
authenticated users (AUTH over TLS) and explicitly trusted networks, queues every accepted message \
durably and delivers it by MX lookup or through a smart host.\n\n\
`relayward probe HOST` runs the full battery of known relay tricks against any SMTP server and says \
whether it is an open relay; `relayward probe-service` offers the same test to anyone, by telnet \
connect-back or on a web page."
)]
pub struct Cli {
    #[command(flatten)]
    pub config: ConfigArg,

    /// Print JSON for scripts instead of tables and text, for every subcommand that prints
    /// results (shapes documented in README.md). For `serve`: logs as JSON lines, like
    /// --log-json.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    command: Commands,
}

/// The environment variables every subcommand reads, shown under `--help`.
const ENVIRONMENT_HELP: &str = "Environment:
  RELAYWARD_CONFIG  configuration file when --config is not given
  RUST_LOG          which log lines `serve` writes to stderr, e.g. `info` (the default),
                    `relayward=debug,info`, `warn`; see the tracing-subscriber EnvFilter syntax";

/// `probe-service --help`'s environment: its `--config` reads a variable of its own.
const PROBE_SERVICE_ENVIRONMENT_HELP: &str = "Environment:
  RELAYWARD_PROBE_SERVICE_CONFIG  configuration file when --config is not given
                                  (RELAYWARD_CONFIG, the relay's, is not read)
  RUST_LOG                        which log lines the service writes to stderr, e.g. `info`
                                  (the default), `warn`; the tracing-subscriber EnvFilter syntax";

#[derive(Subcommand)]
enum Commands {
    /// Run the mail relay (listeners, queue, delivery).
    ///
    /// Without --config, runs the embedded default: 127.0.0.1:2525 (mx) and 127.0.0.1:2587
    /// (submission), local domain `localhost`, data in ./relayward-data. Refuses to start with a
    /// configuration that would relay for the world, and says what to write instead.
    /// SIGTERM/SIGINT drain and stop; SIGHUP reloads the configuration file.
    /// The start-up report (listening addresses, "ready") goes to stdout; the log goes to
    /// stderr, filtered by RUST_LOG (default `info`).
    Serve(serve::ServeArgs),

    /// Check a configuration file: print the effective relay policy and replay the relay-trick
    /// battery against it in-process, as an untrusted, unauthenticated client.
    ///
    /// The file is given as an argument or with --config (either works). Exits 0 when the
    /// configuration is valid and nothing would be relayed, 78 otherwise.
    CheckConfig(check_config::CheckConfigArgs),

    /// Read a password on stdin and print its argon2id hash for a `[[user]] password_hash`.
    ///
    /// On a terminal it asks for the password twice and does not show it; from a pipe
    /// (`echo '…' | relayward hash-password`) it reads one line.
    HashPassword,

    /// Test SMTP servers for open relaying: every known trick, verdicts, proof of relay.
    ///
    /// Exit status: 0 = every target closed, 1 = some target relays (or may), 2 = usage error or
    /// no target could be tested, 3 = none relays but some accepted relay recipients that
    /// --confirm could not prove (UNCONFIRMED).
    Probe(Box<relayward_probe::cli::ProbeArgs>),

    /// Run the open-relay tester as a service: a telnet connect-back door and a web page.
    ///
    /// Whoever connects to `telnet_listen` is tested back on their own address (port
    /// `connect_back_port`, or a port number they type first) and watches the relay test stream
    /// by in the `>>>`/`<<<` style, ending with "System appeared to reject relay attempts" or
    /// "System accepted relay attempts: it is an open relay", as `telnet
    /// relay-test.mail-abuse.org` once did. The page at `http_listen` takes a host, an address
    /// or a mail domain (its MX hosts are tested) and port(s), shows the transcript live (works
    /// without JavaScript) and then the results at a permanent /tests/ID; scripts use `POST
    /// /api/v1/tests {"target": "host[:port]"}` (or "mx:domain") and `GET /api/v1/tests/ID`.
    ///
    /// It is not an attack tool: loopback, private and reserved targets are refused unless
    /// `allow_private_targets = true`; every client address and every target address has an
    /// hourly budget (`tests_per_client_per_hour`, `tests_per_target_per_hour`; refusals say
    /// when to retry); at most `max_concurrent_tests` run at once; `exclude` networks are never
    /// touched. EHLO and the page name the service (`public_name`) and say how to opt out.
    /// Results are stored under `data_dir/tests/`, the oldest removed past `max_stored_tests`.
    /// One log line per test (client, target, verdict, duration). SIGTERM/SIGINT: no new
    /// tests, running ones finish within `shutdown_grace`.
    ///
    /// The configuration is one `[probe_service]` table (`--show-default` prints a loopback
    /// one); a bad key or value is refused (exit 78) with the key and what to write instead.
    ProbeService(relayward_probe_service::ServiceArgs),

    /// Inspect and manage the mail queue (works while the server runs).
    Queue(queue_cmd::QueueArgs),

    /// DKIM keys: `relayward dkim keygen --domain D --selector S --out FILE` writes a private
    /// key and prints the DNS record for it. Signing itself is configured with `[[dkim]]`.
    Dkim(dkim_cmd::DkimArgs),

    /// Show the running server: listeners, sessions, queue counts, and the configuration
    /// file in force with the time it was loaded. Asks the server over its admin socket
    /// (`data_dir/admin.sock`), so run it as the server's user or root.
    Status,

    /// List or lift the bans of the running server: AUTH bans (repeated failed logins) and
    /// connection bans (too many connections per minute), over its admin socket.
    Bans(admin_cmd::BansArgs),

    /// TLS-RPT (RFC 8460) reports of the running server: `relayward tls-report send-now` ends
    /// the current period and sends its reports at once (normally they go out daily, with
    /// `[tls_report] enabled = true`), over its admin socket.
    TlsReport(admin_cmd::TlsReportArgs),

    /// Print a shell completion script, e.g. `relayward completions bash > /etc/bash_completion.d/relayward`.
    Completions(manual::CompletionsArgs),

    /// Print the manual page (roff), e.g. `relayward man | man -l -`; with --out-dir, write one
    /// page per subcommand there.
    Man(manual::ManArgs),
}

/// `--config FILE`, accepted before or after any subcommand.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConfigArg {
    /// Configuration file (TOML). Without it, the embedded default configuration is used.
    #[arg(
        long,
        short = 'c',
        env = "RELAYWARD_CONFIG",
        value_name = "FILE",
        global = true
    )]
    pub config: Option<PathBuf>,
}

/// The command line as clap sees it, with the environment note under every subcommand's
/// `--help` too (clap shows `after_help` only where it is set). Parsing, completions and
/// manual pages all start from here.
pub fn command() -> clap::Command {
    fn with_environment(command: clap::Command) -> clap::Command {
        // The probe service has a configuration of its own, in a variable of its own.
        let help = if command.get_name() == "probe-service" {
            PROBE_SERVICE_ENVIRONMENT_HELP
        } else {
            ENVIRONMENT_HELP
        };
        command.after_help(help).mut_subcommands(with_environment)
    }
    with_environment(Cli::command())
}

fn main() -> ExitCode {
    let matches = command().get_matches();
    let config_on_command_line =
        matches.value_source("config") == Some(clap::parser::ValueSource::CommandLine);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("relayward: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Cli {
        config,
        json,
        command,
    } = cli;
    match command {
        Commands::Serve(args) => {
            let log_json = args.log_json || json;
            init_logging(log_json);
            runtime.block_on(serve::run(args, config))
        }
        Commands::CheckConfig(args) => runtime.block_on(check_config::run(
            args,
            config,
            config_on_command_line,
            json,
        )),
        Commands::HashPassword => hash_password::run(json),
        Commands::Probe(mut args) => {
            args.json |= json;
            fit_concurrency_to_descriptors(&mut args);
            let code = runtime.block_on(relayward_probe::cli::run(*args));
            ExitCode::from(u8::try_from(code).unwrap_or(2))
        }
        Commands::ProbeService(mut args) => {
            // Its own --config names a [probe_service] file; one given before the subcommand
            // counts too, but not RELAYWARD_CONFIG, which names the relay's file.
            if args.config.is_none() && config_on_command_line {
                args.config = config.config;
            }
            init_logging(json);
            // Its doors may hold 512 web connections, 256 telnet callers and the running
            // tests' connections: more than a shell's soft limit of 1,024 allows at full load.
            if let Some(limit) = descriptors::raise_to_hard_limit() {
                tracing::info!(limit, "open files limit raised to the hard limit");
            }
            ExitCode::from(runtime.block_on(relayward_probe_service::run(args)))
        }
        Commands::Queue(args) => runtime.block_on(queue_cmd::run(args, config, json)),
        Commands::Dkim(args) => dkim_cmd::run(args, json),
        Commands::Status => runtime.block_on(admin_cmd::status(config, json)),
        Commands::Bans(args) => runtime.block_on(admin_cmd::bans(args, config, json)),
        Commands::TlsReport(args) => runtime.block_on(admin_cmd::tls_report(args, config, json)),
        Commands::Completions(args) => manual::completions(&args),
        Commands::Man(args) => manual::man(&args),
    }
}

/// A probed target holds a connection and, at times, a DNS socket: `--concurrency` beyond
/// what the open files limit allows would make `connect` fail with EMFILE, which is this
/// machine's shortage, not the target's. The soft limit is raised to the hard one first;
/// a concurrency still too high is lowered, and the user told.
fn fit_concurrency_to_descriptors(args: &mut relayward_probe::cli::ProbeArgs) {
    /// Descriptors kept free for the resolver, the state file, the confirm listener.
    const SPARE: u64 = 16;
    descriptors::raise_to_hard_limit();
    let (Some(limit), Some(open)) = (descriptors::soft_limit(), descriptors::open_now()) else {
        return;
    };
    let fits = (limit.saturating_sub(open + SPARE) / 2).max(1);
    let fits = usize::try_from(fits).unwrap_or(usize::MAX);
    if args.concurrency > fits {
        eprintln!(
            "relayward: probing {fits} targets at once, not {}: the open files limit is {limit} \
             (raise it with ulimit -n to probe more at once)",
            args.concurrency
        );
        args.concurrency = fits;
    }
}

/// Whether the log on stderr is JSON lines (`serve --log-json`): then every message `serve`
/// writes to stderr goes through the log, so the stream stays JSON only.
static LOG_JSON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Writes one message for the operator to stderr: a plain `relayward: …` line, or an error
/// event in the JSON log under `--log-json`.
pub fn complain(text: &str) {
    if LOG_JSON.get().copied().unwrap_or(false) {
        tracing::error!("{text}");
    } else {
        eprintln!("relayward: {text}");
    }
}

/// Logs go to stderr; `RUST_LOG` filters (default `info`).
fn init_logging(json: bool) {
    let _ = LOG_JSON.set(json);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Loads `--config FILE`, or the embedded default when no file is given.
pub fn load_config(arg: &ConfigArg) -> Result<relayward_server::config::Config, String> {
    use relayward_server::config::Config;
    match &arg.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string()),
        None => {
            Config::embedded_default().map_err(|e| format!("embedded default configuration: {e}"))
        }
    }
}

/// Prints every configuration problem to stderr; returns false when any is an error.
pub fn report_problems(config: &relayward_server::config::Config, arg: &ConfigArg) -> bool {
    let problems = match config.validate() {
        Ok(warnings) => warnings,
        Err(problems) => problems,
    };
    print_problems(&problems, arg);
    !problems
        .iter()
        .any(|p| p.severity == relayward_config::Severity::Error)
}

/// One line per problem: `error: FILE:LINE: key: message` (the line of the key, or of its
/// table when the file does not write the key; no file and line for the embedded default).
pub fn print_problems(problems: &[relayward_config::ConfigProblem], arg: &ConfigArg) {
    let text = arg
        .config
        .as_ref()
        .and_then(|path| std::fs::read_to_string(path).ok());
    for problem in problems {
        let place = match (&arg.config, &text) {
            (Some(path), Some(text)) => match relayward_config::line_of(text, &problem.key) {
                Some(line) => format!("{}:{line}: ", path.display()),
                None => format!("{}: ", path.display()),
            },
            _ => String::new(),
        };
        let level = match problem.severity {
            relayward_config::Severity::Error => "error",
            relayward_config::Severity::Warning => "warning",
        };
        if LOG_JSON.get().copied().unwrap_or(false) {
            let place = place.trim_end_matches(": ");
            match problem.severity {
                relayward_config::Severity::Error => {
                    tracing::error!(place, key = %problem.key, "{}", problem.message);
                }
                relayward_config::Severity::Warning => {
                    tracing::warn!(place, key = %problem.key, "{}", problem.message);
                }
            }
        } else {
            eprintln!(
                "relayward: {level}: {place}{}: {}",
                problem.key, problem.message
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }

    /// Every positional argument of every subcommand says what it is in `--help`.
    #[test]
    fn every_positional_argument_is_described() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_positionals() {
                if arg.get_help().is_none() {
                    missing.push(format!("{path} <{}>", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&command(), "relayward", &mut missing);
        assert!(missing.is_empty(), "undescribed: {missing:?}");
    }
}

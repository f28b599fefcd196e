//! `relayward status`, `relayward bans …` and `relayward tls-report send-now`: questions for
//! the running server, asked over its admin socket (see [`crate::admin`]). They read
//! `--config` for the data directory only.

use std::process::ExitCode;

use relayward_protocol::text::Escaped;
use serde_json::{Value, json};

use crate::ConfigArg;

#[derive(clap::Args, Debug)]
pub struct BansArgs {
    #[command(subcommand)]
    action: BansAction,
}

#[derive(clap::Subcommand, Debug)]
enum BansAction {
    /// List the addresses refused right now: AUTH bans (too many failed logins; IPv6 by /64)
    /// and connection bans (more than connections_per_ip_per_minute), with time left.
    List,
    /// Lift the bans of one address (its failures are forgotten too), or of every address.
    Clear {
        /// The client address to forgive, e.g. 192.0.2.7 or 2001:db8::1 (its /64).
        #[arg(
            value_name = "ADDR",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        address: Option<String>,
        /// Lift every ban.
        #[arg(long)]
        all: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct TlsReportArgs {
    #[command(subcommand)]
    action: TlsReportAction,
}

#[derive(clap::Subcommand, Debug)]
enum TlsReportAction {
    /// End the current report period now and send its reports: one per MTA-STS/DANE domain
    /// mail went to, to the destinations its _smtp._tls record names (mailto: through the
    /// queue, https: by POST). Domains without a record get nothing. Needs [tls_report]
    /// enabled = true.
    SendNow,
}

/// How long `send-now` waits: DNS lookups and HTTPS posts to every domain's servers.
const SEND_NOW_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

pub async fn tls_report(args: TlsReportArgs, config_arg: ConfigArg, json: bool) -> ExitCode {
    let TlsReportAction::SendNow = args.action;
    let request = json!({ "command": "tls-report-send" });
    let Some(reply) = ask_within(&config_arg, &request, SEND_NOW_LIMIT).await else {
        return ExitCode::FAILURE;
    };
    if json {
        print_json(&reply);
    } else {
        print!("{}", reports_text(&reply));
    }
    ExitCode::SUCCESS
}

/// One line per domain, then one per destination.
fn reports_text(reply: &Value) -> String {
    let reports = reply["reports"].as_array().cloned().unwrap_or_default();
    if reports.is_empty() {
        return "No TLS report to send: no session under an MTA-STS or DANE policy in this period.\n"
            .to_string();
    }
    let text = |v: &Value| Escaped(v.as_str().unwrap_or("?")).to_string();
    let mut out = String::new();
    for report in reports {
        out.push_str(&format!(
            "{}: {} successful, {} failed session(s)",
            text(&report["domain"]),
            report["successes"],
            report["failures"]
        ));
        if let Some(why) = report["skipped"].as_str() {
            out.push_str(&format!("; not sent: {}\n", Escaped(why)));
            continue;
        }
        out.push_str(&format!("; report {}\n", text(&report["report_id"])));
        for to in report["delivered"].as_array().into_iter().flatten() {
            out.push_str(&format!("  sent to {}\n", text(to)));
        }
        for error in report["errors"].as_array().into_iter().flatten() {
            out.push_str(&format!("  NOT sent: {}\n", text(error)));
        }
    }
    out
}

pub async fn bans(args: BansArgs, config_arg: ConfigArg, json: bool) -> ExitCode {
    let request = match &args.action {
        BansAction::List => json!({ "command": "bans" }),
        BansAction::Clear { all: true, .. } => json!({ "command": "unban", "all": true }),
        BansAction::Clear { address, .. } => {
            json!({ "command": "unban", "address": address.clone().unwrap_or_default() })
        }
    };
    let Some(reply) = ask(&config_arg, &request).await else {
        return ExitCode::FAILURE;
    };
    if json {
        print_json(&reply);
        return ExitCode::SUCCESS;
    }
    match args.action {
        BansAction::List => print!("{}", bans_table(&reply)),
        BansAction::Clear { .. } => {
            let lifted = reply["lifted"].as_u64().unwrap_or(0);
            println!("{lifted} ban(s) lifted.");
        }
    }
    ExitCode::SUCCESS
}

pub async fn status(config_arg: ConfigArg, json: bool) -> ExitCode {
    let Some(reply) = ask(&config_arg, &json!({ "command": "status" })).await else {
        return ExitCode::FAILURE;
    };
    if json {
        print_json(&reply);
    } else {
        print!("{}", status_text(&reply));
    }
    ExitCode::SUCCESS
}

/// Sends `request` to the server of the configured data directory; `None` (after saying
/// why on stderr) when there is none or it refuses.
async fn ask(config_arg: &ConfigArg, request: &Value) -> Option<Value> {
    ask_within(config_arg, request, std::time::Duration::from_secs(5)).await
}

/// [`ask`], waiting up to `limit` for the answer.
async fn ask_within(
    config_arg: &ConfigArg,
    request: &Value,
    limit: std::time::Duration,
) -> Option<Value> {
    let config = match crate::load_config(config_arg) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("relayward: {message}");
            return None;
        }
    };
    match crate::admin::request_within(&config.data_dir, request, limit).await {
        Ok(Some(reply)) => Some(reply),
        Ok(None) => {
            // Without --config the embedded default's data_dir is relative to the current
            // directory: the server may well run, with the file the reader forgot to name.
            let which = if config_arg.config.is_none() {
                "; that is the data_dir of the embedded default configuration (no --config FILE \
                 nor RELAYWARD_CONFIG given): name the server's configuration with --config FILE, \
                 or start one with `relayward serve`"
            } else {
                "; start it with `relayward serve`"
            };
            eprintln!(
                "relayward: no server is running on {} (no admin socket {}){which}",
                config.data_dir.display(),
                crate::admin::socket_path(&config.data_dir).display()
            );
            None
        }
        Err(e) => {
            eprintln!("relayward: {e}");
            None
        }
    }
}

fn print_json(reply: &Value) {
    let mut reply = reply.clone();
    if let Some(object) = reply.as_object_mut() {
        object.remove("ok");
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&reply).unwrap_or_default()
    );
}

fn bans_table(reply: &Value) -> String {
    let bans = reply["bans"].as_array().cloned().unwrap_or_default();
    if bans.is_empty() {
        return "No bans in force.\n".to_string();
    }
    let mut out = format!(
        "{:<40} {:<10} {:>8} {:>9}\n",
        "ADDRESS", "KIND", "COUNT", "TIME LEFT"
    );
    for ban in bans {
        out.push_str(&format!(
            "{:<40} {:<10} {:>8} {:>8}s\n",
            Escaped(ban["address"].as_str().unwrap_or("?")).to_string(),
            Escaped(ban["kind"].as_str().unwrap_or("?")).to_string(),
            ban["failures"].as_u64().unwrap_or(0),
            ban["remaining_seconds"].as_u64().unwrap_or(0),
        ));
    }
    out
}

fn status_text(reply: &Value) -> String {
    let now = crate::view::unix_seconds(std::time::SystemTime::now());
    let ago = |key: &Value| {
        let then = key.as_u64().unwrap_or(now);
        humantime::format_duration(std::time::Duration::from_secs(now.saturating_sub(then)))
            .to_string()
    };
    let text = |v: &Value| Escaped(v.as_str().unwrap_or("?")).to_string();
    let file = match reply["config"]["file"].as_str() {
        Some(file) => Escaped(file).to_string(),
        None => "the embedded default".to_string(),
    };
    let mut out = format!(
        "relayward {} (pid {}), up {}\n",
        text(&reply["hostname"]),
        reply["pid"],
        ago(&reply["started"])
    );
    out.push_str(&format!(
        "Configuration: {file}, loaded {} ago\n",
        ago(&reply["config"]["loaded"])
    ));
    out.push_str("Listeners:\n");
    for listener in reply["listeners"].as_array().into_iter().flatten() {
        let state = if listener["accepting"] == Value::Bool(true) {
            "accepting"
        } else {
            "NOT ACCEPTING"
        };
        out.push_str(&format!(
            "  {} ({}): {state}\n",
            text(&listener["address"]),
            text(&listener["kind"])
        ));
    }
    out.push_str(&format!("Sessions: {}\n", reply["sessions"]));
    let queue = &reply["queue"];
    if let Some(error) = queue["error"].as_str() {
        out.push_str(&format!("Queue: cannot be read: {}\n", Escaped(error)));
    } else {
        out.push_str(&format!(
            "Queue: {} message(s): {} active, {} due, {} deferred, {} held; oldest {}s\n",
            queue["total"],
            queue["active"],
            queue["due"],
            queue["deferred"],
            queue["held"],
            queue["oldest_seconds"]
        ));
    }
    out.push_str(&format!("AUTH bans: {}\n", reply["auth_bans"]));
    out
}

//! `relayward probe [OPTIONS] TARGET...`: the command line of the tester.
//!
//! Exit status: 0 = every tested target CLOSED or AUTH-REQUIRED; 1 = some target OPEN,
//! CONFIRMED-OPEN or ACCEPT-ALL; 2 = usage error, or no target could be tested; 3 = no target
//! open, but some UNCONFIRMED (accepted at RCPT, `--confirm` found no token).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::config::{ConfirmSettings, ProbeConfig, RateLimiter, TlsMode};
use crate::confirm::ConfirmServer;
use crate::dnsbl::{DEFAULT_ZONES, Dnsbl};
use crate::mx::MxResolver;
use crate::output;
use crate::report::TargetReport;
use crate::scan;
use crate::target::{self, TargetInput};

/// Default external sender domain: reserved (RFC 2606), resolvable, never a real mailbox.
pub const DEFAULT_FROM_DOMAIN: &str = "example.org";
/// Default external recipient domain: same reasons. Use your own for a faithful test.
pub const DEFAULT_TO_DOMAIN: &str = "example.net";

#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// Targets: host, host:port, IP, IP:port, [v6]:port, CIDR (e.g. 192.0.2.0/28), CIDR:port, or mx:DOMAIN[:port] (every MX host of the domain).
    #[arg(value_name = "TARGET")]
    pub targets: Vec<String>,
    /// Probe every MX host of this mail domain (repeatable; same as the target mx:DOMAIN).
    #[arg(long = "mx", value_name = "DOMAIN")]
    pub mx_domains: Vec<String>,
    /// Read more targets from a file, one per line (# comments).
    #[arg(long, value_name = "PATH")]
    pub targets_file: Option<PathBuf>,
    /// Port for targets given without one. Port 465 means implicit TLS.
    #[arg(long, default_value_t = 25)]
    pub port: u16,
    /// Domain of the external sender in the tests.
    #[arg(long, default_value = DEFAULT_FROM_DOMAIN, value_name = "DOMAIN")]
    pub from_domain: String,
    /// Domain of the external recipient in the tests (replaced by --confirm-domain with --confirm).
    #[arg(long, default_value = DEFAULT_TO_DOMAIN, value_name = "DOMAIN")]
    pub to_domain: String,
    /// A domain the targets receive mail for; default: the target's host name minus its first label.
    #[arg(long, value_name = "DOMAIN")]
    pub local_domain: Option<String>,
    /// Name sent with EHLO/HELO (default: --from-domain).
    #[arg(long, value_name = "NAME")]
    pub helo: Option<String>,
    /// STARTTLS policy.
    #[arg(long, value_enum, default_value_t = TlsMode::Auto)]
    pub tls: TlsMode,
    /// TLS from the first byte (always on for port 465).
    #[arg(long)]
    pub implicit_tls: bool,
    /// Prove relaying: send a token through each accepted trick and wait for it to come back.
    #[arg(long)]
    pub confirm: bool,
    /// Address of the tester's own SMTP listener for --confirm.
    #[arg(long, default_value = "0.0.0.0:25", value_name = "ADDR")]
    pub confirm_listen: SocketAddr,
    /// Domain whose mail reaches --confirm-listen (its MX points at this machine). Required with --confirm.
    #[arg(long, value_name = "DOMAIN")]
    pub confirm_domain: Option<String>,
    /// How long to wait for the tokens after sending.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub confirm_wait: Duration,
    /// Look the target addresses up in DNS blocklists.
    #[arg(long)]
    pub dnsbl: bool,
    /// DNSBL zone (repeatable or comma-separated); default: zen.spamhaus.org, bl.spamcop.net, b.barracudacentral.org.
    #[arg(long = "dnsbl-zone", value_delimiter = ',', value_name = "ZONE")]
    pub dnsbl_zones: Vec<String>,
    /// DNS server for --dnsbl and MX lookups, IP or IP:port (repeatable); default: the system resolver.
    #[arg(long = "nameserver", value_name = "ADDR")]
    pub nameservers: Vec<String>,
    /// Print the whole dialogue of every target (relay-test style).
    #[arg(short, long)]
    pub verbose: bool,
    /// One JSON object per target per line instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Targets probed at the same time.
    #[arg(short = 'j', long, default_value_t = 64)]
    pub concurrency: usize,
    /// At most this many new connections per second, in total.
    #[arg(long, value_name = "PER_SECOND")]
    pub rate: Option<f64>,
    /// Time for one test (and for connecting and greeting).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub test_timeout: Duration,
    /// Time for one whole target; tests not run by then are skipped.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub host_timeout: Duration,
}

/// Runs the probe and returns the exit status.
pub async fn run(args: ProbeArgs) -> i32 {
    let (cfg, inputs) = match prepare(&args).await {
        Ok(x) => x,
        Err(e) => {
            eprintln!("relayward probe: {e:#}");
            return 2;
        }
    };
    let total = inputs.len() as u64;
    let progress = progress_bar(&args, total);
    let mut printer = Printer::new(&args, progress.clone());
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let summary = scan::scan(inputs, Arc::new(cfg), args.concurrency, stop, |r| {
        printer.report(r)
    })
    .await;
    if let Some(pb) = &progress {
        pb.finish_and_clear();
    }
    printer.finish(&summary.reports, summary.interrupted, total);
    scan::exit_code(&summary.reports)
}

/// Everything that can fail before the first connection: a usage error (exit 2).
async fn prepare(args: &ProbeArgs) -> anyhow::Result<(ProbeConfig, Vec<TargetInput>)> {
    let mut specs = args.targets.clone();
    if let Some(path) = &args.targets_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        specs.extend(target::from_file_text(&text));
    }
    specs.extend(args.mx_domains.iter().map(|d| format!("mx:{d}")));
    if specs.is_empty() {
        anyhow::bail!("no TARGET given (see --help)");
    }
    let inputs = target::expand(&specs, args.port)?;
    for domain in [&args.from_domain, &args.to_domain] {
        check_domain(domain)?;
    }
    let mut cfg = ProbeConfig::new(&args.from_domain, &args.to_domain)?;
    cfg.local_domain = args.local_domain.clone();
    cfg.helo = args
        .helo
        .clone()
        .unwrap_or_else(|| args.from_domain.clone());
    check_domain(&cfg.helo)?;
    cfg.tls = args.tls;
    cfg.implicit_tls = args.implicit_tls;
    cfg.test_timeout = args.test_timeout;
    cfg.host_timeout = args.host_timeout;
    cfg.keep_transcript = args.verbose;
    if let Some(rate) = args.rate {
        anyhow::ensure!(rate > 0.0 && rate.is_finite(), "--rate must be positive");
        cfg.rate = Some(Arc::new(RateLimiter::new(rate)));
    }
    if args.confirm {
        let domain = args
            .confirm_domain
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--confirm needs --confirm-domain"))?;
        check_domain(&domain)?;
        let server = ConfirmServer::bind(args.confirm_listen, &domain)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.confirm_listen))?;
        cfg.to_domain = domain;
        cfg.confirm = Some(ConfirmSettings {
            server,
            wait: args.confirm_wait,
        });
    }
    if args.dnsbl {
        cfg.dnsbl = Some(Arc::new(dnsbl(args)?));
    }
    if inputs.iter().any(|i| matches!(i, TargetInput::Mx { .. })) {
        let servers = nameservers(args)?;
        cfg.mx_resolver = Some(Arc::new(MxResolver::new(&servers, Duration::from_secs(5))?));
    }
    Ok((cfg, inputs))
}

fn nameservers(args: &ProbeArgs) -> anyhow::Result<Vec<SocketAddr>> {
    let mut servers = Vec::new();
    for ns in &args.nameservers {
        let addr = ns
            .parse::<SocketAddr>()
            .or_else(|_| {
                ns.parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, 53))
            })
            .map_err(|_| anyhow::anyhow!("bad --nameserver {ns:?}"))?;
        servers.push(addr);
    }
    Ok(servers)
}

fn dnsbl(args: &ProbeArgs) -> anyhow::Result<Dnsbl> {
    let zones: Vec<String> = if args.dnsbl_zones.is_empty() {
        DEFAULT_ZONES.iter().map(|z| z.to_string()).collect()
    } else {
        args.dnsbl_zones
            .iter()
            .map(|z| z.trim().trim_end_matches('.').to_string())
            .collect()
    };
    for zone in &zones {
        check_domain(zone)?;
    }
    Dnsbl::new(zones, &nameservers(args)?, Duration::from_secs(5))
}

/// Domains go into command lines: letters, digits, dots and hyphens only.
fn check_domain(domain: &str) -> anyhow::Result<()> {
    let ok = !domain.is_empty()
        && domain.len() <= 253
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    anyhow::ensure!(ok, "bad domain {domain:?}");
    Ok(())
}

/// On stderr, only for a terminal and never with --json.
fn progress_bar(args: &ProbeArgs, total: u64) -> Option<ProgressBar> {
    if args.json || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} targets {elapsed}") {
        pb.set_style(style);
    }
    Some(pb)
}

/// Streams results to stdout as they finish.
struct Printer {
    json: bool,
    verbose: bool,
    header_done: bool,
    progress: Option<ProgressBar>,
}

impl Printer {
    fn new(args: &ProbeArgs, progress: Option<ProgressBar>) -> Self {
        Self {
            json: args.json,
            verbose: args.verbose,
            header_done: false,
            progress,
        }
    }

    fn report(&mut self, r: &TargetReport) {
        let mut text = String::new();
        if self.json {
            text = output::json_line(r);
        } else {
            if self.verbose {
                text.push_str(&output::transcript_block(r));
            }
            if !self.header_done || self.verbose {
                text.push_str(&output::table_header());
                text.push('\n');
                self.header_done = true;
            }
            text.push_str(&output::table_row(r));
        }
        self.print(&text);
        if let Some(pb) = &self.progress {
            pb.inc(1);
        }
    }

    fn print(&self, text: &str) {
        let write = || {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        };
        match &self.progress {
            Some(pb) => pb.suspend(write),
            None => write(),
        }
    }

    fn finish(&self, reports: &[TargetReport], interrupted: bool, total: u64) {
        if interrupted {
            eprintln!(
                "relayward probe: interrupted; {} of {total} target(s) done",
                reports.len()
            );
        }
        if !self.json {
            println!("{}", output::totals(reports));
        }
    }
}

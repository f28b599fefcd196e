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

use crate::config::{ConfirmSettings, NetRateLimiter, ProbeConfig, RateLimiter, TlsMode};
use crate::confirm::ConfirmServer;
use crate::dnsbl::{DEFAULT_ZONES, Dnsbl};
use crate::exclude::ExcludeList;
use crate::mx::MxResolver;
use crate::output;
use crate::report::TargetReport;
use crate::resume::{self, ResumeState};
use crate::scan;
use crate::target::{self, TargetInput};
use crate::zone;

/// Default external sender domain: reserved (RFC 2606), resolvable, never a real mailbox.
pub const DEFAULT_FROM_DOMAIN: &str = "example.org";
/// Default external recipient domain: same reasons. Use your own for a faithful test.
pub const DEFAULT_TO_DOMAIN: &str = "example.net";

#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// Targets: host, host:port, IP, IP:port, [v6]:port, CIDR (e.g. 192.0.2.0/28), CIDR:port, mx:DOMAIN[:port] (every MX host of the domain), or - (read targets from stdin, one per line, e.g. from ZMap).
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
    /// Probe every one of these ports of each target given without a port (e.g. 25,587,465; 465 = implicit TLS). Replaces --port.
    #[arg(long, value_delimiter = ',', value_name = "PORTS")]
    pub ports: Vec<u16>,
    /// Never probe addresses in these ranges: one IP or CIDR per line, # comments. Checked before any connection or DNSBL lookup.
    #[arg(long, value_name = "FILE")]
    pub exclude_file: Option<PathBuf>,
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
    /// At most this many new connections per second per /24 (IPv4) or /64 (IPv6).
    #[arg(long, value_name = "PER_SECOND")]
    pub rate_per_net: Option<f64>,
    /// Write the CONFIRMED-OPEN addresses as an rbldnsd ip4set zone, one entry per address with a TXT reason (proven test ids, time, delivering address).
    #[arg(long, value_name = "FILE")]
    pub zone_out: Option<PathBuf>,
    /// State file of a resumable scan: finished targets are recorded as they finish; started again with the same arguments, the scan prints them again and probes only the rest.
    #[arg(long, value_name = "FILE")]
    pub resume: Option<PathBuf>,
    /// Time for one test (and for connecting and greeting).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub test_timeout: Duration,
    /// Time for one whole target; tests not run by then are skipped.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub host_timeout: Duration,
}

/// Runs the probe and returns the exit status.
pub async fn run(args: ProbeArgs) -> i32 {
    let (cfg, inputs, excluded) = match prepare(&args).await {
        Ok(x) => x,
        Err(e) => {
            eprintln!("relayward probe: {e:#}");
            return 2;
        }
    };
    let mut resume = match open_resume(&args, &cfg, &inputs) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("relayward probe: {e:#}");
            return 2;
        }
    };
    let mut cfg = cfg;
    let mut previous: Vec<TargetReport> = Vec::new();
    let mut inputs = inputs;
    if let Some(state) = &mut resume {
        inputs.retain(|i| !state.is_done(&i.label()));
        previous = state
            .take_previous_reports()
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect();
        eprintln!(
            "relayward probe: resuming from {}: {} input(s) done, {} to go",
            state.path().display(),
            state.finished_inputs(),
            inputs.len()
        );
    }
    let total = (inputs.len() + previous.len()) as u64;
    let live = streams_dialogue(&args, &inputs);
    if live {
        cfg.live_transcript = Some(print_live_lines());
    }
    let cfg = Arc::new(cfg);
    let progress = if live {
        None
    } else {
        progress_bar(&args, total, &cfg)
    };
    let mut printer = Printer::new(&args, progress.clone());
    for r in &previous {
        printer.report(r, false);
    }
    // Printed: only the verdicts and the proof for --zone-out are needed from here on.
    previous = previous
        .into_iter()
        .map(TargetReport::into_summary)
        .collect();
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let mut state_error = None;
    let mut summary = scan::scan_inputs(
        inputs,
        Arc::clone(&cfg),
        args.concurrency,
        stop,
        |done| {
            // Recorded before printed: whatever a killed run printed, a resumed one skips.
            if let Some(state) = &mut resume
                && let Err(e) = state.record(done.input, done.reports)
            {
                state_error.get_or_insert(e);
            }
            for r in done.reports {
                printer.report(r, live);
            }
        },
        // Streamed already: a whole scan keeps only what its totals and --zone-out need.
        TargetReport::into_summary,
    )
    .await;
    if let Some(pb) = &progress {
        pb.finish_and_clear();
    }
    if let Some(e) = state_error {
        eprintln!("relayward probe: could not write the --resume file: {e}");
    }
    let excluded = excluded + summary.excluded;
    if excluded > 0 {
        eprintln!("relayward probe: {excluded} address(es) skipped by --exclude-file");
    }
    previous.append(&mut summary.reports);
    printer.finish(&previous, summary.interrupted, total);
    if let Some(path) = &args.zone_out {
        match zone::write_zone(path, &previous) {
            Ok(n) => eprintln!(
                "relayward probe: {n} proven open relay(s) written to {}",
                path.display()
            ),
            Err(e) => {
                eprintln!("relayward probe: cannot write {}: {e}", path.display());
                return 2;
            }
        }
    }
    scan::exit_code(&previous)
}

/// The `--resume` state file of this run, named by the inputs and every option that changes
/// what a probe does or reports.
fn open_resume(
    args: &ProbeArgs,
    cfg: &ProbeConfig,
    inputs: &[TargetInput],
) -> anyhow::Result<Option<ResumeState>> {
    let Some(path) = &args.resume else {
        return Ok(None);
    };
    let mut parts: Vec<String> = inputs.iter().map(TargetInput::label).collect();
    parts.push(format!(
        "from={} to={} local={:?} helo={} tls={:?} implicit={} confirm={} dnsbl={:?} json={} verbose={}",
        cfg.from_domain,
        cfg.to_domain,
        cfg.local_domain,
        cfg.helo,
        cfg.tls,
        cfg.implicit_tls,
        args.confirm,
        args.dnsbl.then_some(&args.dnsbl_zones),
        args.json,
        args.verbose,
    ));
    let run = resume::fingerprint(&parts);
    Ok(Some(ResumeState::open(path, &run, inputs.len())?))
}

/// Everything that can fail before the first connection: a usage error (exit 2). Also
/// returns how many addresses `--exclude-file` removed from the list.
async fn prepare(args: &ProbeArgs) -> anyhow::Result<(ProbeConfig, Vec<TargetInput>, usize)> {
    let mut specs: Vec<String> = Vec::new();
    for spec in &args.targets {
        if spec == "-" {
            specs.extend(stdin_targets()?);
        } else {
            specs.push(spec.clone());
        }
    }
    if let Some(path) = &args.targets_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        specs.extend(target::from_file_text(&text));
    }
    specs.extend(args.mx_domains.iter().map(|d| format!("mx:{d}")));
    if specs.is_empty() {
        anyhow::bail!("no TARGET given (see --help)");
    }
    let ports = if args.ports.is_empty() {
        vec![args.port]
    } else {
        args.ports.clone()
    };
    anyhow::ensure!(
        !ports.contains(&0),
        "--ports: port 0 is out of range (1-65535)"
    );
    let mut inputs = target::expand_ports(&specs, &ports)?;
    let exclude = match &args.exclude_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            let list = ExcludeList::parse(&text)
                .map_err(|e| anyhow::anyhow!("--exclude-file {}: {e}", path.display()))?;
            Some(Arc::new(list))
        }
        None => None,
    };
    let before = inputs.len();
    if let Some(list) = &exclude {
        inputs.retain(|i| match i {
            TargetInput::Addr(t) => !list.contains(t.addr.ip()),
            _ => true,
        });
    }
    let excluded = before - inputs.len();
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
    if let Some(rate) = args.rate_per_net {
        anyhow::ensure!(
            rate > 0.0 && rate.is_finite(),
            "--rate-per-net must be positive"
        );
        cfg.rate_per_net = Some(Arc::new(NetRateLimiter::new(rate)));
    }
    cfg.exclude = exclude;
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
    Ok((cfg, inputs, excluded))
}

/// `TARGET` `-`: one target per line on standard input (`#` comments), as ZMap writes them.
fn stdin_targets() -> anyhow::Result<Vec<String>> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text)
        .map_err(|e| anyhow::anyhow!("cannot read targets from stdin: {e}"))?;
    Ok(target::from_file_text(&text))
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

/// With `-v`, the dialogue is printed as it happens when at most one target is probed at a
/// time (`-j 1`, or a single address), like the old `telnet relay-test.mail-abuse.org`; with
/// several in flight their lines would interleave, so each target's dialogue is printed whole
/// when it finishes.
fn streams_dialogue(args: &ProbeArgs, inputs: &[TargetInput]) -> bool {
    let one_at_a_time = args.concurrency == 1 || matches!(inputs, [TargetInput::Addr(_)]);
    args.verbose && !args.json && one_at_a_time
}

/// The live sink for [`streams_dialogue`]: each line to stdout as it is written, with the
/// `=== target ===` heading when a new target's dialogue begins.
fn print_live_lines() -> crate::transcript::LineSink {
    let current = std::sync::Mutex::new(None::<SocketAddr>);
    Arc::new(move |target: &crate::config::Target, line: &str| {
        let mut out = std::io::stdout().lock();
        if let Ok(mut current) = current.lock()
            && *current != Some(target.addr)
        {
            *current = Some(target.addr);
            let _ = writeln!(out, "{}", output::transcript_heading(&target.label));
        }
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    })
}

/// On stderr, only for a terminal and never with --json. Redrawn on a timer (not only when a
/// target finishes, which may take minutes), with the number of targets in flight.
fn progress_bar(args: &ProbeArgs, total: u64, cfg: &ProbeConfig) -> Option<ProgressBar> {
    if args.json || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} targets, {msg} {elapsed}")
    {
        pb.set_style(style);
    }
    pb.set_message("0 in flight");
    pb.enable_steady_tick(PROGRESS_TICK);
    let (weak, in_flight) = (pb.downgrade(), Arc::clone(&cfg.in_flight));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROGRESS_TICK);
        while let Some(pb) = weak.upgrade() {
            if pb.is_finished() {
                break;
            }
            let n = in_flight.load(std::sync::atomic::Ordering::Relaxed);
            pb.set_message(format!("{n} in flight"));
            drop(pb);
            tick.tick().await;
        }
    });
    Some(pb)
}

/// How often the progress bar is redrawn.
const PROGRESS_TICK: Duration = Duration::from_millis(250);

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

    /// Prints one finished target. `dialogue_shown`: its lines were printed live already, so
    /// only the closing lines follow.
    fn report(&mut self, r: &TargetReport, dialogue_shown: bool) {
        let mut text = String::new();
        if self.json {
            text = output::json_line(r);
        } else {
            if self.verbose && dialogue_shown {
                if r.transcript.as_ref().is_none_or(Vec::is_empty) {
                    // Never connected (the name did not resolve): no live line named it.
                    text.push_str(&output::transcript_heading(&r.target));
                    text.push('\n');
                }
                for line in output::closing_lines(r) {
                    text.push_str(&line);
                    text.push('\n');
                }
            } else if self.verbose {
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

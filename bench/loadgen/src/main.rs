//! rw-benchload: the small tools `scripts/bench` needs beside Postfix's smtp-source/smtp-sink.
//!
//! ```text
//! rw-benchload latency  --addr IP:PORT --sessions S --messages M --size BYTES --from A --to B [--out FILE] [--source IP]
//! rw-benchload idle     --addr IP:PORT --count N --pid PID [--sources K] [--probes P]
//! rw-benchload silent   --cidr 127.0.5.0/26 --port 25 --secs T
//! rw-benchload inflight --addr IP:PORT --sessions S --size BYTES --pid PID
//! smtp-sink -c ... | rw-benchload sinkwatch --state FILE
//! rw-benchload memwatch --pid PID [--tree] --stop-file FILE [--interval-ms 200] [--secs T]
//! rw-benchload compare  --probe-json FILE --nmap-xml FILE --cidr 127.0.4.0/22 --port 25 --out TSV
//! ```
//!
//! Output is `key=value` pairs on one line (stdout), so the bash script can pick fields out.
//! Every network wait is bounded by a timeout; every loop by a count or a deadline.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::{TcpSocket, TcpStream};

/// Bound on every single SMTP reply wait.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        usage();
    };
    let result = match cmd.as_str() {
        "latency" => run_async(latency(Opts::parse(rest))),
        "idle" => run_async(idle(Opts::parse(rest))),
        "silent" => run_async(silent(Opts::parse(rest))),
        "inflight" => run_async(inflight(Opts::parse(rest))),
        "sinkwatch" => sinkwatch(Opts::parse(rest)),
        "memwatch" => memwatch(Opts::parse(rest)),
        "compare" => compare(Opts::parse(rest)),
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("rw-benchload {cmd}: {e}");
        std::process::exit(1);
    }
}

fn usage() -> ! {
    eprintln!("usage: rw-benchload latency|idle|silent|sinkwatch|memwatch [options] (see the source header)");
    std::process::exit(2);
}

type Res<T> = Result<T, String>;

fn run_async<F: std::future::Future<Output = Res<()>>>(fut: F) -> Res<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(fut)
}

/// `--key value` options.
struct Opts(Vec<(String, String)>);

impl Opts {
    fn parse(args: &[String]) -> Opts {
        let mut out = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let key = args[i].trim_start_matches("--").to_string();
            // Flags without a value: --tree.
            if key == "tree" {
                out.push((key, "1".into()));
                i += 1;
                continue;
            }
            let value = args.get(i + 1).cloned().unwrap_or_default();
            out.push((key, value));
            i += 2;
        }
        Opts(out)
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    fn req(&self, key: &str) -> Res<&str> {
        self.get(key).ok_or_else(|| format!("--{key} is required"))
    }
    fn num<T: std::str::FromStr>(&self, key: &str, default: T) -> Res<T> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{key}: not a number: {v}")),
        }
    }
    fn flag(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

// ---------------------------------------------------------------------------------------------
// SMTP client bits

struct Smtp {
    rd: TokioBufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
    line: String,
}

impl Smtp {
    fn new(stream: TcpStream) -> Smtp {
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        Smtp {
            rd: TokioBufReader::with_capacity(4096, r),
            wr: w,
            line: String::new(),
        }
    }

    /// Reads one (possibly multi-line) reply; returns its code.
    async fn reply(&mut self) -> Res<u16> {
        let fut = async {
            for _ in 0..256 {
                self.line.clear();
                let n = self
                    .rd
                    .read_line(&mut self.line)
                    .await
                    .map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("connection closed".to_string());
                }
                let bytes = self.line.as_bytes();
                if bytes.len() < 4 {
                    return Err(format!("short reply {:?}", self.line));
                }
                if bytes[3] != b'-' {
                    return self.line[..3]
                        .parse::<u16>()
                        .map_err(|_| format!("bad reply {:?}", self.line));
                }
            }
            Err("reply too long".to_string())
        };
        tokio::time::timeout(REPLY_TIMEOUT, fut)
            .await
            .map_err(|_| "reply timeout".to_string())?
    }

    async fn send(&mut self, data: &[u8]) -> Res<()> {
        tokio::time::timeout(REPLY_TIMEOUT, self.wr.write_all(data))
            .await
            .map_err(|_| "write timeout".to_string())?
            .map_err(|e| e.to_string())
    }

    async fn expect(&mut self, class: u16, what: &str) -> Res<()> {
        let code = self.reply().await?;
        if code / 100 != class {
            return Err(format!("{what}: got {code}"));
        }
        Ok(())
    }
}

async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> Res<TcpStream> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    tokio::time::timeout(Duration::from_secs(30), socket.connect(addr))
        .await
        .map_err(|_| "connect timeout".to_string())?
        .map_err(|e| format!("connect: {e}"))
}

/// A message of about `size` payload bytes, already dot-safe, ending with CRLF.CRLF.
fn message(from: &str, to: &str, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: relayward bench\r\nMessage-ID: <bench@rw-benchload>\r\n\r\n"
    )
    .into_bytes();
    let line: Vec<u8> = (0..76u8).map(|i| b'a' + (i % 26)).collect();
    let mut left = size;
    while left > 0 {
        let take = left.min(line.len());
        m.extend_from_slice(&line[..take]);
        m.extend_from_slice(b"\r\n");
        left -= take;
    }
    m.extend_from_slice(b".\r\n");
    m
}

// ---------------------------------------------------------------------------------------------
// latency: one connection per message (like smtp-source without -d); times MAIL .. 250 after
// the final dot.

async fn latency(o: Opts) -> Res<()> {
    let addr: SocketAddr = o.req("addr")?.parse().map_err(|_| "--addr")?;
    let sessions: usize = o.num("sessions", 1)?;
    let total: u64 = o.num("messages", 100)?;
    let size: usize = o.num("size", 2048)?;
    let from = o.get("from").unwrap_or("bench@bench.test").to_string();
    let to = o.get("to").unwrap_or("to@sink.test").to_string();
    let helo = o.get("helo").unwrap_or("client.bench.test").to_string();
    let out = o.get("out").map(PathBuf::from);
    // The client's own address (e.g. 127.0.0.2: outside a server's trusted networks).
    let source: Option<IpAddr> = match o.get("source") {
        Some(ip) => Some(ip.parse().map_err(|_| format!("--source: not an address: {ip}"))?),
        None => None,
    };

    let body = Arc::new(message(&from, &to, size));
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..sessions.max(1) {
        let (body, next, failed) = (body.clone(), next.clone(), failed.clone());
        let (from, to, helo) = (from.clone(), to.clone(), helo.clone());
        tasks.spawn(async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                match one_message(addr, source, &helo, &from, &to, &body).await {
                    Ok(d) => lat.push(d),
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("latency: {e}");
                        }
                    }
                }
            }
            lat
        });
    }
    let mut all: Vec<Duration> = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.map_err(|e| e.to_string())?);
    }
    let wall = started.elapsed().as_secs_f64();
    all.sort();
    if let Some(path) = out {
        let mut f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        for d in &all {
            let _ = writeln!(f, "{}", d.as_micros());
        }
    }
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return f64::NAN;
        }
        let idx = ((p * all.len() as f64).ceil() as usize).clamp(1, all.len()) - 1;
        all[idx].as_secs_f64() * 1000.0
    };
    println!(
        "ok={} failed={} wall_s={:.3} rate={:.1} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        all.len(),
        failed.load(Ordering::Relaxed),
        wall,
        all.len() as f64 / wall,
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}

async fn one_message(
    addr: SocketAddr,
    source: Option<IpAddr>,
    helo: &str,
    from: &str,
    to: &str,
    body: &[u8],
) -> Res<Duration> {
    let mut s = Smtp::new(connect(addr, source).await?);
    s.expect(2, "banner").await?;
    s.send(format!("EHLO {helo}\r\n").as_bytes()).await?;
    s.expect(2, "EHLO").await?;
    let t0 = Instant::now();
    s.send(format!("MAIL FROM:<{from}>\r\n").as_bytes()).await?;
    s.expect(2, "MAIL").await?;
    s.send(format!("RCPT TO:<{to}>\r\n").as_bytes()).await?;
    s.expect(2, "RCPT").await?;
    s.send(b"DATA\r\n").await?;
    s.expect(3, "DATA").await?;
    s.send(body).await?;
    s.expect(2, "end of data").await?;
    let d = t0.elapsed();
    s.send(b"QUIT\r\n").await?;
    let _ = s.reply().await;
    Ok(d)
}

// ---------------------------------------------------------------------------------------------
// idle: N concurrent sessions that read the banner and then say nothing.

fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

async fn idle(o: Opts) -> Res<()> {
    let addr: SocketAddr = o.req("addr")?.parse().map_err(|_| "--addr")?;
    let count: usize = o.num("count", 10_000)?;
    let pid: u32 = o.num("pid", 0)?;
    let sources: u8 = o.num("sources", 40)?;
    let probes: usize = o.num("probes", 20)?;
    let parallel: usize = o.num("parallel", 256)?;
    let settle: u64 = o.num("settle-ms", 2000)?;

    let rss_before = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let sem = sem.clone();
        // Source addresses 127.0.1.1 .. 127.0.1.K, round robin.
        let src = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1 + (i % sources.max(1) as usize) as u8));
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await.map_err(|e| e.to_string())?;
            let t = Instant::now();
            let mut s = Smtp::new(connect(addr, Some(src)).await?);
            let code = s.reply().await?;
            if code != 220 {
                return Err(format!("banner {code}"));
            }
            Ok::<_, String>((s, t.elapsed()))
        });
    }
    let mut open: Vec<Smtp> = Vec::with_capacity(count);
    let mut banner_times: Vec<Duration> = Vec::with_capacity(count);
    let mut errors = 0usize;
    while let Some(r) = tasks.join_next().await {
        match r.map_err(|e| e.to_string())? {
            Ok((s, d)) => {
                open.push(s);
                banner_times.push(d);
            }
            Err(e) => {
                errors += 1;
                if errors <= 5 {
                    eprintln!("idle: {e}");
                }
            }
        }
    }
    let open_wall = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(settle)).await;
    let rss_after = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
    let hwm = proc_status_kb(pid, "VmHWM:").unwrap_or(0);

    // While all of them are open: new sessions (banner and EHLO timed).
    let mut probe_times = Vec::new();
    let mut probe_errors = 0;
    for i in 0..probes {
        let src = IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1 + (i % 200) as u8));
        let t = Instant::now();
        let r = async {
            let mut s = Smtp::new(connect(addr, Some(src)).await?);
            s.expect(2, "banner").await?;
            let banner = t.elapsed();
            s.send(b"EHLO probe.bench.test\r\n").await?;
            s.expect(2, "EHLO").await?;
            s.send(b"QUIT\r\n").await?;
            Ok::<_, String>((banner, t.elapsed()))
        }
        .await;
        match r {
            Ok(x) => probe_times.push(x),
            Err(e) => {
                probe_errors += 1;
                eprintln!("idle probe: {e}");
            }
        }
    }
    // And do the idle ones still answer? NOOP on a sample of them.
    let mut noop_ok = 0usize;
    let sample = open.len().min(100);
    let step = (open.len() / sample.max(1)).max(1);
    let mut noop_max = Duration::ZERO;
    for s in open.iter_mut().step_by(step).take(sample) {
        let t = Instant::now();
        if s.send(b"NOOP\r\n").await.is_ok() && s.expect(2, "NOOP").await.is_ok() {
            noop_ok += 1;
            noop_max = noop_max.max(t.elapsed());
        }
    }
    banner_times.sort();
    probe_times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p = |v: &Vec<Duration>, q: f64| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        ms(v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1])
    };
    let probe_banner: Vec<Duration> = probe_times.iter().map(|x| x.0).collect();
    let probe_ehlo: Vec<Duration> = {
        let mut v: Vec<Duration> = probe_times.iter().map(|x| x.1).collect();
        v.sort();
        v
    };
    let n = open.len();
    println!(
        "open={n} errors={errors} open_wall_s={open_wall:.2} banner_p50_ms={:.2} banner_p99_ms={:.2} \
         rss_before_kb={rss_before} rss_after_kb={rss_after} hwm_kb={hwm} per_session_kb={:.2} \
         new_banner_p50_ms={:.2} new_banner_max_ms={:.2} new_ehlo_max_ms={:.2} new_errors={probe_errors} \
         noop_ok={noop_ok}/{sample} noop_max_ms={:.2}",
        p(&banner_times, 0.5),
        p(&banner_times, 0.99),
        if n > 0 { (rss_after.saturating_sub(rss_before)) as f64 / n as f64 } else { f64::NAN },
        p(&probe_banner, 0.5),
        p(&probe_banner, 1.0),
        p(&probe_ehlo, 1.0),
        ms(noop_max),
    );
    drop(open);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// silent: listeners that accept and never answer.

fn cidr_v4(text: &str) -> Res<Vec<Ipv4Addr>> {
    let (ip, len) = text.split_once('/').ok_or("CIDR expected")?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| "bad CIDR address")?;
    let len: u32 = len.parse().map_err(|_| "bad CIDR length")?;
    if !(16..=32).contains(&len) {
        return Err("CIDR length must be 16..32".into());
    }
    let base = u32::from(ip) & (u32::MAX << (32 - len));
    Ok((0..(1u32 << (32 - len))).map(|i| Ipv4Addr::from(base + i)).collect())
}

async fn silent(o: Opts) -> Res<()> {
    let mut addrs = Vec::new();
    for c in o.req("cidr")?.split(',') {
        addrs.extend(cidr_v4(c)?);
    }
    let port: u16 = o.num("port", 25)?;
    let secs: u64 = o.num("secs", 600)?;
    for ip in &addrs {
        if !ip.is_loopback() {
            return Err(format!("{ip} is not loopback"));
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for ip in addrs.iter().copied() {
        let l = tokio::net::TcpListener::bind((ip, port))
            .await
            .map_err(|e| format!("bind {ip}:{port}: {e}"))?;
        tasks.spawn(async move {
            let mut held = VecDeque::new();
            loop {
                if let Ok((s, _)) = l.accept().await {
                    // Keep at most 64 per address; read and drop whatever they send.
                    if held.len() >= 64 {
                        held.pop_front();
                    }
                    let (mut r, w) = s.into_split();
                    held.push_back(w);
                    tokio::spawn(async move {
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = r.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                        }
                    });
                }
            }
        });
    }
    println!("listening={} port={port}", addrs.len());
    let _ = std::io::stdout().flush();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// sinkwatch: reads the output of smtp-sink -c on stdin and writes "<messages> <unix time of the last change>" to a file.

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The harness must not cost the system under test more per message than it must: the
/// count is read in batches (a read, then a pause that lets smtp-sink's lines gather in the
/// pipe) and written at most every 20 ms, so at thousands of messages a second sinkwatch
/// wakes ~200 times a second instead of once per message, and never writes a file per
/// message (it did, when each line was read alone: 3,246 msgs/s was the no-disk ceiling with
/// it, ~6,000 without, on the 2-core machine of 3 Dec).
fn sinkwatch(o: Opts) -> Res<()> {
    const BATCH_PAUSE: Duration = Duration::from_millis(5);
    const WRITE_EVERY: Duration = Duration::from_millis(20);
    let state = PathBuf::from(o.req("state")?);
    let write = |count: u64, t: f64| {
        let tmp = state.with_extension("tmp");
        if std::fs::write(&tmp, format!("{count} {t:.6}\n")).is_ok() {
            let _ = std::fs::rename(&tmp, &state);
        }
    };
    write(0, now_unix());
    // The reader sends the latest count of each batch with the time it was read; the channel
    // closes at the end of input.
    let (tx, rx) = std::sync::mpsc::channel::<(u64, f64)>();
    let reader = std::thread::spawn(move || -> Res<()> {
        let mut stdin = std::io::stdin().lock();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut carry: Vec<u8> = Vec::new();
        loop {
            let n = stdin.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(());
            }
            carry.extend_from_slice(&chunk[..n]);
            // smtp-sink ends each counter line with \r; the part after the last one is kept.
            if let Some(end) = carry.iter().rposition(|&b| b == b'\r') {
                let complete: Vec<u8> = carry.drain(..=end).collect();
                if let Some(count) = last_count(&complete)
                    && tx.send((count, now_unix())).is_err()
                {
                    return Ok(());
                }
            }
            std::thread::sleep(BATCH_PAUSE);
        }
    });
    let mut last = 0u64;
    let mut last_write = Instant::now();
    let mut pending: Option<f64> = None;
    loop {
        match rx.recv_timeout(WRITE_EVERY) {
            Ok((count, t)) if count != last => {
                last = count;
                pending = Some(t);
            }
            Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if let Some(t) = pending
            && last_write.elapsed() >= WRITE_EVERY
        {
            write(last, t);
            pending = None;
            last_write = Instant::now();
        }
    }
    if let Some(t) = pending {
        write(last, t);
    }
    reader.join().map_err(|_| "sinkwatch reader panicked".to_string())?
}

/// The last `mesg=N` count in a run of smtp-sink counter lines.
fn last_count(lines: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(lines);
    text.split('\r').rev().find_map(|line| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("mesg="))
            .and_then(|v| v.trim().parse::<u64>().ok())
    })
}

// ---------------------------------------------------------------------------------------------
// memwatch: samples the summed VmRSS and Pss of a process (and with --tree its children) until
// a stop file appears; prints the maxima.

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
            // pid (comm) state ppid ...: comm may contain spaces, so split after the last ')'.
            if let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..])
                && after.split_whitespace().nth(1).and_then(|v| v.parse::<u32>().ok()) == Some(pid)
            {
                out.push(p);
            }
        }
    }
    out
}

fn pss_kb(pid: u32) -> u64 {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(format!("/proc/{pid}/smaps_rollup")) {
        let _ = f.read_to_string(&mut s);
    }
    s.lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn memwatch(o: Opts) -> Res<()> {
    let pid: u32 = o.num("pid", 0)?;
    let tree = o.flag("tree");
    let stop = PathBuf::from(o.req("stop-file")?);
    let interval = Duration::from_millis(o.num("interval-ms", 200)?);
    let deadline = Instant::now() + Duration::from_secs(o.num("secs", 900)?);
    let (mut max_rss, mut max_pss, mut max_procs, mut samples) = (0u64, 0u64, 0usize, 0u64);
    loop {
        let mut pids = vec![pid];
        if tree {
            pids.extend(children(pid));
        }
        let rss: u64 = pids.iter().filter_map(|p| proc_status_kb(*p, "VmRSS:")).sum();
        let pss: u64 = pids.iter().map(|p| pss_kb(*p)).sum();
        max_rss = max_rss.max(rss);
        max_pss = max_pss.max(pss);
        max_procs = max_procs.max(pids.len());
        samples += 1;
        if stop.exists() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(interval);
    }
    println!("max_rss_kb={max_rss} max_pss_kb={max_pss} max_procs={max_procs} samples={samples}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// compare: verdict agreement between `relayward probe --json` and `nmap -oX` (smtp-open-relay).
// Both are reduced to three classes: relay (the server accepted a relay recipient), no-relay
// (it answered and refused every trick, or asked for authentication), none (no verdict: closed
// port, silent listener, timeout).

fn xml_unescape(s: &str) -> String {
    s.replace("&apos;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#xa;", " ")
        .replace("&#10;", " ")
        .replace("&amp;", "&")
}

fn attr<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=\"");
    let start = text.find(&key)? + key.len();
    let end = text[start..].find('"')? + start;
    Some(&text[start..end])
}

fn json_str<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let k = format!("\"{key}\":\"");
    let start = line.find(&k)? + k.len();
    let end = line[start..].find('"')? + start;
    Some(&line[start..end])
}

fn probe_class(verdict: &str) -> &'static str {
    match verdict {
        "OPEN" | "ACCEPT-ALL" | "CONFIRMED-OPEN" => "relay",
        "CLOSED" | "AUTH-REQUIRED" => "no-relay",
        _ => "none",
    }
}

fn nmap_class(output: &str) -> &'static str {
    if output.contains("Server is an open relay") {
        "relay"
    } else if output.contains("doesn't seem to be an open relay")
        || output.contains("isn't an open relay")
    {
        "no-relay"
    } else {
        "none"
    }
}

fn compare(o: Opts) -> Res<()> {
    let probe = std::fs::read_to_string(o.req("probe-json")?).map_err(|e| e.to_string())?;
    let xml = std::fs::read_to_string(o.req("nmap-xml")?).map_err(|e| e.to_string())?;
    let port: u16 = o.num("port", 25)?;
    let targets = cidr_v4(o.req("cidr")?)?;
    let mut pv = std::collections::HashMap::new();
    for line in probe.lines() {
        if let (Some(ip), Some(v)) = (json_str(line, "ip"), json_str(line, "verdict")) {
            pv.insert(ip.to_string(), v.to_string());
        }
    }
    let mut nv = std::collections::HashMap::new();
    for host in xml.split("<host ").skip(1) {
        let host = host.split("</host>").next().unwrap_or("");
        let Some(addr) = host.split("<address ").nth(1).and_then(|a| attr(a, "addr")) else {
            continue;
        };
        let mut out = String::new();
        for p in host.split("<port ").skip(1) {
            if attr(p, "portid") != Some(&port.to_string()) {
                continue;
            }
            let state = p.split("<state ").nth(1).and_then(|s| attr(s, "state")).unwrap_or("?");
            out = format!("port={state}");
            if let Some(sc) = p.split("<script ").nth(1)
                && attr(sc, "id") == Some("smtp-open-relay")
            {
                out = format!("{out}; {}", xml_unescape(attr(sc, "output").unwrap_or("")));
            }
        }
        nv.insert(addr.to_string(), out);
    }
    let mut tsv = String::from("target\tprobe_verdict\tprobe_class\tnmap_output\tnmap_class\tagree\n");
    let (mut agree, mut total) = (0, 0);
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    let mut disagreements = Vec::new();
    for ip in &targets {
        let ip = ip.to_string();
        let p = pv.get(&ip).map(String::as_str).unwrap_or("(missing)");
        let n = nv.get(&ip).map(String::as_str).unwrap_or("(no host)");
        let (pc, nc) = (probe_class(p), nmap_class(n));
        total += 1;
        let same = pc == nc;
        if same {
            agree += 1;
        } else {
            disagreements.push(format!("{ip}:{port} probe={p} nmap={n}"));
        }
        *counts.entry(format!("probe:{p}")).or_default() += 1;
        *counts.entry(format!("nmap:{nc}")).or_default() += 1;
        tsv.push_str(&format!("{ip}:{port}\t{p}\t{pc}\t{n}\t{nc}\t{same}\n"));
    }
    if let Some(path) = o.get("out") {
        std::fs::write(path, tsv).map_err(|e| e.to_string())?;
    }
    let counts: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("agree={agree} total={total} {}", counts.join(" "));
    for d in disagreements.iter().take(20) {
        eprintln!("disagree: {d}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// inflight (issue 15, the memory case): S sessions each in DATA with SIZE octets of content
// sent and no final dot, all at once; the server's RSS while they are in flight. Then the
// sessions go away without the dot (nothing is queued).

async fn inflight(o: Opts) -> Res<()> {
    let addr: SocketAddr = o.req("addr")?.parse().map_err(|_| "--addr")?;
    let sessions: usize = o.num("sessions", 60)?;
    let size: usize = o.num("size", 25_000_000)?;
    let pid: u32 = o.num("pid", 0)?;
    let settle: u64 = o.num("settle-ms", 1000)?;
    let rss_before = proc_status_kb(pid, "VmRSS:").unwrap_or(0);

    // Peak RSS while the content arrives, sampled every 50 ms.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampler = {
        let (sampling, peak) = (sampling.clone(), peak.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                if let Some(rss) = proc_status_kb(pid, "VmRSS:") {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..sessions {
        tasks.spawn(async move {
            let mut s = Smtp::new(connect(addr, None).await?);
            s.expect(2, "banner").await?;
            for (command, class) in [
                (&b"EHLO client.bench.test\r\n"[..], 2),
                (b"MAIL FROM:<bench@bench.test>\r\n", 2),
                (b"RCPT TO:<to@sink.test>\r\n", 2),
                (b"DATA\r\n", 3),
            ] {
                s.send(command).await?;
                s.expect(class, "envelope").await?;
            }
            let line: Vec<u8> = (0..76u8).map(|i| b'a' + (i % 26)).chain(*b"\r\n").collect();
            let block: Vec<u8> = line.iter().copied().cycle().take(line.len() * 840).collect();
            let mut sent = 0;
            while sent < size {
                let take = block.len().min(size - sent);
                s.send(&block[..take]).await?;
                sent += take;
            }
            Ok::<_, String>(s)
        });
    }
    let mut open = Vec::with_capacity(sessions);
    let mut failed = 0usize;
    while let Some(result) = tasks.join_next().await {
        match result.map_err(|e| e.to_string())? {
            Ok(s) => open.push(s),
            Err(e) => {
                failed += 1;
                if failed <= 5 {
                    eprintln!("inflight: {e}");
                }
            }
        }
    }
    let send_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(settle)).await;
    let rss_in_flight = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let hwm = proc_status_kb(pid, "VmHWM:").unwrap_or(0);
    let in_flight = open.len();
    drop(open);
    tokio::time::sleep(Duration::from_millis(settle)).await;
    let rss_after = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
    println!(
        "sessions={sessions} in_flight={in_flight} failed={failed} octets_each={size} send_s={send_s:.2} \
         rss_before_kb={rss_before} peak_rss_kb={} rss_in_flight_kb={rss_in_flight} hwm_kb={hwm} \
         rss_after_kb={rss_after}",
        peak.load(Ordering::Relaxed)
    );
    Ok(())
}

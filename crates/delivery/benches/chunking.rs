//! DATA or BDAT (RFC 3030) on the way out: what CHUNKING saves the delivery client (no
//! criterion: plain timing).
//!
//! `cargo bench -p relayward-delivery --bench chunking`. One connection, pipelined, to a sink
//! in this process that offers CHUNKING or not; each message is sent with `Connection::send`,
//! as the runner does. Prints per message size and mode: messages per second, the process's
//! CPU time per message (client and sink: the sink's work is a memchr scan for the end of DATA
//! or a read of the chunk, the same order either way) and the wall time. Environment:
//! `RELAYWARD_BENCH_MESSAGES` (per row at 100 KB, default 2000; scaled by size).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use relayward_delivery::Timeouts;
use relayward_delivery::client::{self, ConnectParams, Envelope, EnvelopeOptions, TlsPolicy};
use relayward_delivery::outcome::Outcome;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User plus system CPU seconds of this process so far (Linux `/proc/self/stat`).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// A sink that takes every message: DATA scanned for its end, BDAT chunks read and dropped.
async fn sink(chunking: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve(tcp, chunking));
        }
    });
    addr
}

async fn serve(tcp: TcpStream, chunking: bool) -> std::io::Result<()> {
    let mut io = BufReader::with_capacity(256 * 1024, tcp);
    io.get_mut().write_all(b"220 sink ESMTP\r\n").await?;
    let mut out = Vec::new();
    loop {
        let mut line = String::new();
        if io.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.trim_end().to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            let chunk = if chunking { "250-CHUNKING\r\n" } else { "" };
            out.extend_from_slice(
                format!("250-sink\r\n250-PIPELINING\r\n{chunk}250 8BITMIME\r\n").as_bytes(),
            );
        } else if upper == "DATA" {
            out.extend_from_slice(b"354 go\r\n");
            io.get_mut().write_all(&out).await?;
            out.clear();
            skip_data(&mut io).await?;
            out.extend_from_slice(b"250 2.0.0 ok\r\n");
        } else if let Some(args) = upper.strip_prefix("BDAT ") {
            let size: u64 = args
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            tokio::io::copy(&mut (&mut io).take(size), &mut tokio::io::sink()).await?;
            out.extend_from_slice(b"250 2.0.0 ok\r\n");
        } else if upper == "QUIT" {
            io.get_mut().write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            out.extend_from_slice(b"250 ok\r\n");
        }
        // Replies to pipelined commands go out together, as a real server's would.
        if io.buffer().is_empty() || upper == "DATA" || upper.starts_with("BDAT") {
            io.get_mut().write_all(&out).await?;
            out.clear();
        }
    }
}

/// Reads DATA content up to and including CRLF.CRLF, keeping nothing.
async fn skip_data(io: &mut BufReader<TcpStream>) -> std::io::Result<()> {
    let finder = memchr::memmem::Finder::new(b"\r\n.\r\n");
    // The last four octets of the previous buffer, in case the terminator straddles two.
    let mut tail: Vec<u8> = b"\r\n".to_vec();
    loop {
        let buf = io.fill_buf().await?;
        if buf.is_empty() {
            return Err(std::io::Error::other("closed in DATA"));
        }
        let mut window = std::mem::take(&mut tail);
        let head = buf.len().min(4);
        window.extend_from_slice(&buf[..head]);
        if let Some(i) = finder.find(&window) {
            let used = (i + 5).saturating_sub(window.len() - head);
            io.consume(used);
            return Ok(());
        }
        if let Some(i) = finder.find(buf) {
            io.consume(i + 5);
            return Ok(());
        }
        let n = buf.len();
        tail = buf[n.saturating_sub(4)..].to_vec();
        io.consume(n);
    }
}

fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: bench@sender.test\r\nSubject: bench\r\n\r\n".to_vec();
    let line = format!("{}\r\n", "x".repeat(76));
    while m.len() < size {
        m.extend_from_slice(line.as_bytes());
    }
    m
}

async fn run(size: usize, messages: u64, chunking: bool) -> (f64, f64, f64) {
    let addr = sink(chunking).await;
    let params = ConnectParams {
        addr,
        host_name: "sink.test".into(),
        helo: "bench.test".into(),
        tls: TlsPolicy::None,
        credentials: None,
        timeouts: Timeouts::uniform(Duration::from_secs(30)),
    };
    let mut conn = client::connect(&params).await.expect("connect");
    assert_eq!(conn.extensions.chunking, chunking);
    let content = message(size);
    let rcpts = vec!["rcpt@sink.test".to_string()];
    let envelope = Envelope {
        sender: "bench@sender.test",
        recipients: &rcpts,
        content: &content,
        options: EnvelopeOptions::default(),
    };
    let cpu = cpu_seconds();
    let start = Instant::now();
    for _ in 0..messages {
        let outcomes = conn.send(&envelope).await.outcomes(1);
        assert!(matches!(outcomes[..], [Outcome::Delivered]), "{outcomes:?}");
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    conn.quit().await;
    let n = messages as f64;
    (n / wall, cpu / n * 1e6, wall)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let base = env_number("RELAYWARD_BENCH_MESSAGES", 2000);
    println!("size      mode  messages  msgs/s    CPU µs/msg  wall s");
    for size in [2 * 1024, 100 * 1024, 1024 * 1024] {
        let messages = (base * 100 * 1024 / size as u64).clamp(50, base * 20);
        for chunking in [false, true] {
            let (rate, cpu_us, wall) = run(size, messages, chunking).await;
            let mode = if chunking { "BDAT" } else { "DATA" };
            println!(
                "{:<9} {mode}  {messages:>8}  {rate:>8.0}  {cpu_us:>10.1}  {wall:>6.2}",
                format!("{} KB", size / 1024)
            );
        }
    }
}

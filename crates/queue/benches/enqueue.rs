//! Enqueue throughput at 1, 16, 64 and 200 concurrent enqueuers (no criterion: plain timing).
//!
//! `cargo bench -p relayward-queue --bench enqueue`. Environment:
//! `RELAYWARD_BENCH_DIR` (default: the system temp dir; use a real disk, tmpfs makes fsync free),
//! `RELAYWARD_BENCH_SECS` (per level, default 3), `RELAYWARD_BENCH_SIZE` (octets, default 4096),
//! `RELAYWARD_BENCH_COMMIT` (`syncfs`, the default, or `fdatasync`: the spool's commit mode).
//! Prints messages per second and how many messages one directory fsync covered, the numbers to
//! watch when tuning `SpoolOptions::max_batch` or the staging design.

use std::sync::Arc;
use std::time::{Duration, Instant};

use relayward_queue::{CommitMode, NewMessage, Queue, Spool, SpoolOptions};
use relayward_testkit::queue::by_mx;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn message(size: usize) -> NewMessage {
    NewMessage {
        sender: "bench@sender.test".to_owned(),
        recipients: vec![by_mx("rcpt@example.test")],
        content: vec![b'x'; size],
        client_ip: "192.0.2.1".to_owned(),
        auth_login: None,
        origin: relayward_queue::Origin::Stranger,
        esmtp: Default::default(),
    }
}

/// Runs `concurrency` enqueue loops for `duration`; returns (messages, elapsed, stats).
async fn run_level(
    spool: Arc<Spool>,
    concurrency: usize,
    duration: Duration,
    size: usize,
) -> Result<(u64, Duration), String> {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let spool = Arc::clone(&spool);
            tokio::spawn(async move {
                let mut count = 0u64;
                while Instant::now() < deadline {
                    spool
                        .enqueue(message(size))
                        .await
                        .map_err(|e| e.to_string())?;
                    count += 1;
                }
                Ok::<u64, String>(count)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.map_err(|e| e.to_string())??;
    }
    Ok((total, started.elapsed()))
}

fn main() -> Result<(), String> {
    let base = std::env::var_os("RELAYWARD_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let secs = env_number("RELAYWARD_BENCH_SECS", 3);
    let size = env_number("RELAYWARD_BENCH_SIZE", 4096) as usize;
    let commit = match std::env::var("RELAYWARD_BENCH_COMMIT").as_deref() {
        Ok("fdatasync") => CommitMode::EachFile,
        _ => CommitMode::Filesystem,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    println!(
        "enqueue benchmark: {size}-octet messages, {secs} s per level, {commit:?}, in {}",
        base.display()
    );
    for concurrency in [1usize, 16, 64, 200] {
        let dir = tempfile::tempdir_in(&base).map_err(|e| e.to_string())?;
        let options = SpoolOptions {
            min_free_bytes: 0,
            commit,
            ..SpoolOptions::default()
        };
        let spool = Arc::new(Spool::open(dir.path(), options).map_err(|e| e.to_string())?);
        let (count, elapsed) = runtime.block_on(run_level(
            Arc::clone(&spool),
            concurrency,
            Duration::from_secs(secs),
            size,
        ))?;
        let stats = spool.stats();
        let per_sec = count as f64 / elapsed.as_secs_f64();
        let per_fsync = stats.committed as f64 / stats.batches.max(1) as f64;
        let latency_ms = 1000.0 * concurrency as f64 / per_sec.max(f64::MIN_POSITIVE);
        println!(
            "concurrency {concurrency:>3}: {per_sec:>8.0} msgs/s  {per_fsync:>6.1} msgs per commit  ~{latency_ms:.1} ms per enqueue"
        );
    }
    Ok(())
}

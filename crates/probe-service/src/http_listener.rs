//! The web door's TCP listener, with the caps `axum::serve` does not have: connections at
//! once in total and per client. `relayward serve`'s metrics endpoint uses it too, with its
//! own [`Caps`]: without them, idle connections to it would take the file descriptors the
//! SMTP listeners need.
//!
//! A live transcript is a long-lived connection (server-sent events), and a browser opens a
//! few per page; without a cap, one client opening thousands of idle connections would hold
//! the service's file descriptors. The total cap back-pressures the accept loop (the kernel's
//! backlog holds the rest) rather than buffering sockets; a client over its own share gets a
//! short `503` and the connection is closed, so one caller cannot take every slot. A client is
//! its address, an IPv6 client its /64 (as for the hourly budgets); a trusted proxy, which
//! carries many callers, is counted only against the total.
//!
//! Caps alone would let idle sockets hold every slot (32 addresses × 16, or 32 IPv6 /64s,
//! which anyone with a /48 has), and `axum::serve` sets no timer, so hyper's header-read
//! timeout is off. Each connection is therefore cut off when the service has written nothing
//! to it for `http_idle_timeout`: a caller who never sends a request, sends one slowly
//! (slowloris: a byte now and then keeps the *read* side busy, so an idle-read timeout would
//! not do), keeps an idle keep-alive connection, or stops reading its answers (the write
//! waits for as long as `http_idle_timeout` too). Answers and the live transcript's
//! keep-alive comments are writes, so every honest connection stays.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::limits::{client_key, network_key};
use crate::service::Service;

/// Connections to the web door at once.
pub const MAX_CONNECTIONS: usize = 512;
/// Connections one client (address, IPv6 /64) may hold at once.
pub const MAX_CONNECTIONS_PER_CLIENT: usize = 16;
/// Connections the clients of one network (IPv4 /24, IPv6 /48) may hold at once between
/// them: a /48 has 65,536 /64s, each a client of its own.
pub const MAX_CONNECTIONS_PER_NETWORK: usize = 64;

const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Content-Length: 40\r\nRetry-After: 10\r\nConnection: close\r\n\r\n\
too many connections from your address\r\n";
const TOO_MANY_FROM_NETWORK: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Content-Length: 40\r\nRetry-After: 10\r\nConnection: close\r\n\r\n\
too many connections from your network\r\n";

/// What a [`CappedListener`] allows.
pub struct Caps {
    /// Connections at once; the next waits in the kernel's backlog.
    pub total: usize,
    /// Connections one client (address, IPv6 /64) may hold at once; the next gets `503`.
    pub per_client: usize,
    /// Connections the clients of one network (IPv4 /24, IPv6 /48) may hold at once.
    pub per_network: usize,
    /// A connection the service has written nothing to for this long is closed.
    pub idle_timeout: Duration,
    /// Addresses counted only against the total: trusted proxies, which carry many callers.
    pub counted_only_in_total: Arc<dyn Fn(IpAddr) -> bool + Send + Sync>,
    /// How log lines and errors name the listener ("web door", "metrics endpoint").
    pub name: &'static str,
}

impl Caps {
    /// The web door's: [`MAX_CONNECTIONS`], [`MAX_CONNECTIONS_PER_CLIENT`],
    /// `http_idle_timeout`, `trusted_proxies` counted only in the total.
    pub fn web_door(service: Arc<Service>) -> Self {
        Caps {
            total: MAX_CONNECTIONS,
            per_client: MAX_CONNECTIONS_PER_CLIENT,
            per_network: MAX_CONNECTIONS_PER_NETWORK,
            idle_timeout: service.config.http_idle_timeout,
            counted_only_in_total: Arc::new(move |ip| service.config.is_trusted_proxy(ip)),
            name: "web door",
        }
    }
}

/// The listener `crate::http::serve` hands to axum.
pub struct CappedListener {
    inner: TcpListener,
    total: Arc<Semaphore>,
    per_client: ClientShares,
    per_network: ClientShares,
    refusals: Arc<RefusalLog>,
    caps: Caps,
}

impl CappedListener {
    pub fn new(inner: TcpListener, caps: Caps) -> Self {
        Self {
            inner,
            total: Arc::new(Semaphore::new(caps.total)),
            per_client: ClientShares::default(),
            per_network: ClientShares::default(),
            refusals: Arc::default(),
            caps,
        }
    }

    /// One more connection for `peer`'s client and network, unless either holds its share
    /// already (then the answer to send).
    fn admit(&self, peer: SocketAddr) -> Result<(ClientSlot, ClientSlot), &'static [u8]> {
        let ip = peer.ip().to_canonical();
        let counted = !(self.caps.counted_only_in_total)(ip);
        let client = self
            .per_client
            .take(counted.then(|| client_key(ip)), self.caps.per_client)
            .ok_or(TOO_MANY)?;
        let network = self
            .per_network
            .take(counted.then(|| network_key(ip).0), self.caps.per_network)
            .ok_or(TOO_MANY_FROM_NETWORK)?;
        Ok((client, network))
    }
}

impl Listener for CappedListener {
    type Io = CappedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            // The semaphore is never closed; a failure here would be a bug, not input.
            let Ok(permit) = Arc::clone(&self.total).acquire_owned().await else {
                continue;
            };
            let (mut stream, peer) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "{}: accept failed", self.caps.name);
                    // EMFILE and friends: give the process a moment instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            match self.admit(peer) {
                Ok(slot) => {
                    let idle_timeout = self.caps.idle_timeout;
                    let io = CappedStream {
                        name: self.caps.name,
                        stream,
                        requests: Arc::default(),
                        requests_seen_done: 0,
                        idle_timeout,
                        silent_until: Box::pin(tokio::time::sleep(idle_timeout)),
                        _permit: permit,
                        _slot: slot,
                    };
                    return (io, peer);
                }
                Err(answer) => {
                    let name = self.caps.name;
                    match self.refusals.note(std::time::Instant::now()) {
                        Noted::Log(refused) => log_refused(name, Some(peer.ip()), refused),
                        Noted::Later(at) => {
                            let refusals = Arc::clone(&self.refusals);
                            tokio::spawn(async move {
                                tokio::time::sleep_until(at.into()).await;
                                if let Some(refused) = refusals.take_due(std::time::Instant::now())
                                {
                                    log_refused(name, None, refused);
                                }
                            });
                        }
                        Noted::Counted => {}
                    }
                    tokio::spawn(async move {
                        let _ = stream.write_all(answer).await;
                        let _ = stream.shutdown().await;
                        drop(permit);
                    });
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Connections held per client key (also the telnet door's sessions). A poisoned lock is
/// taken over, not refused: the counts are plain integers a panic elsewhere cannot leave
/// half-changed, and refusing would answer every caller `503` for the life of the process.
#[derive(Clone, Default)]
pub(crate) struct ClientShares(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl ClientShares {
    /// One more connection for `key` (`None`: a trusted proxy, counted only in the total),
    /// unless it holds `limit` already.
    pub(crate) fn take(&self, key: Option<IpAddr>, limit: usize) -> Option<ClientSlot> {
        if let Some(key) = key {
            let mut map = self.lock();
            let held = map.entry(key).or_insert(0);
            if *held >= limit {
                return None;
            }
            *held += 1;
        }
        Some(ClientSlot {
            key,
            shares: self.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A client's share taken; given back when the connection is dropped.
pub(crate) struct ClientSlot {
    key: Option<IpAddr>,
    shares: ClientShares,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut map = self.shares.lock();
        if let Some(held) = map.get_mut(&key) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                map.remove(&key);
            }
        }
    }
}

/// How often at most a refused connection is logged.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Logs the first refused connection, then at most one line per [`REFUSAL_LOG_EVERY`] with
/// how many were refused since: a caller hammering the door must not fill the disk with log
/// lines, one per refused connection. Refusals that come after a line are logged when the
/// interval ends even if none follows ([`Noted::Later`]): a flood that stops still shows its
/// full count.
#[derive(Default)]
struct RefusalLog {
    /// When the last line was written, and the refusals not yet in a line.
    state: Mutex<(Option<std::time::Instant>, u64)>,
}

/// What [`RefusalLog::note`] asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Noted {
    /// Log a line now, with this many refusals.
    Log(u64),
    /// The first refusal since the last line: call [`RefusalLog::take_due`] at this time.
    Later(std::time::Instant),
    /// Counted; a line is already coming.
    Counted,
}

impl RefusalLog {
    /// Counts one refusal.
    fn note(&self, now: std::time::Instant) -> Noted {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (last, unlogged) = &mut *state;
        *unlogged += 1;
        match *last {
            Some(at) if now.duration_since(at) < REFUSAL_LOG_EVERY => {
                if *unlogged == 1 {
                    Noted::Later(at + REFUSAL_LOG_EVERY)
                } else {
                    Noted::Counted
                }
            }
            _ => {
                *last = Some(now);
                Noted::Log(std::mem::take(unlogged))
            }
        }
    }

    /// The refusals not yet logged, if a line is due at `now`.
    fn take_due(&self, now: std::time::Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (last, unlogged) = &mut *state;
        if *unlogged == 0 || last.is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_EVERY) {
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(unlogged))
    }
}

/// The log line of refused connections.
fn log_refused(name: &str, latest: Option<std::net::IpAddr>, refused: u64) {
    match latest {
        Some(ip) => {
            tracing::info!(latest = %ip, refused, "{name}: connections refused, a client held its share (refused: from all clients since the last such line)")
        }
        None => tracing::info!(
            refused,
            "{name}: connections refused, a client held its share (refused: from all clients since the last such line)"
        ),
    }
}

/// An accepted connection that holds its slots for as long as it lives, and ends when the
/// service has written nothing to it for `idle_timeout`.
pub struct CappedStream {
    /// The listener's name, for the errors that end a connection.
    name: &'static str,
    stream: TcpStream,
    /// This connection's requests being handled (see [`Peer::handling`]): hyper reads while a
    /// handler runs (to notice a client that went away), and that read must not cut the
    /// connection the answer is still to be written to; the countdown starts again when the
    /// handler ends.
    requests: Arc<Requests>,
    /// `requests.done` when last looked at.
    requests_seen_done: u64,
    idle_timeout: Duration,
    /// Fires `idle_timeout` after the last write (or the accept); pushed back by every write.
    silent_until: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
    _slot: (ClientSlot, ClientSlot),
}

impl CappedStream {
    /// Whether the service has written nothing to this connection for `idle_timeout` while
    /// no request of it was being handled. A handler running, or one that ended since the
    /// last look, starts the countdown again. The timer is polled in every case, so that its
    /// firing wakes a read or a write that would otherwise wait for ever.
    fn countdown_ended(&mut self, cx: &mut Context<'_>) -> bool {
        let done = self.requests.done.load(Ordering::SeqCst);
        if self.requests.running.load(Ordering::SeqCst) > 0 || done != self.requests_seen_done {
            self.requests_seen_done = done;
            let next = Instant::now() + self.idle_timeout;
            self.silent_until.as_mut().reset(next);
            let _ = self.silent_until.as_mut().poll(cx);
            return false;
        }
        self.silent_until.as_mut().poll(cx).is_ready()
    }
}

impl AsyncRead for CappedStream {
    /// Reads, unless the service has been silent for `idle_timeout`: then the read fails, and
    /// hyper closes the connection. (The timer is polled here too, so a read that waits
    /// forever is woken when it fires.)
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.countdown_ended(cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{}: nothing sent to this caller within the idle timeout",
                    self.name
                ),
            )));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        match written {
            Poll::Ready(Ok(n)) if n > 0 => {
                let next = Instant::now() + self.idle_timeout;
                self.silent_until.as_mut().reset(next);
            }
            // A caller that stops reading stalls the write for good, and hyper does not read
            // while it waits to write, so the read side's check would never run: the same
            // countdown ends the write.
            Poll::Pending if self.countdown_ended(cx) => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{}: the caller read nothing of the answer within the idle timeout",
                        self.name
                    ),
                )));
            }
            _ => {}
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The TCP peer of a web door connection (what `ConnectInfo<SocketAddr>` is for a plain
/// listener; axum ties that impl to `TcpListener`), and a handle on its connection's count of
/// requests being handled.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    requests: Arc<Requests>,
}

/// A connection's requests: how many are being handled, how many were.
#[derive(Debug, Default)]
struct Requests {
    running: AtomicUsize,
    done: AtomicU64,
}

impl Peer {
    /// Marks a request of this connection as being handled until the guard is dropped (also
    /// when the handler is cancelled).
    pub fn handling(&self) -> Handling {
        self.requests.running.fetch_add(1, Ordering::SeqCst);
        Handling(Arc::clone(&self.requests))
    }
}

/// See [`Peer::handling`].
pub struct Handling(Arc<Requests>);

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.done.fetch_add(1, Ordering::SeqCst);
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Connected<IncomingStream<'_, CappedListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, CappedListener>) -> Self {
        Peer {
            addr: *stream.remote_addr(),
            requests: Arc::clone(&stream.io().requests),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_share_and_gives_it_back() {
        let shares = ClientShares::default();
        let key: IpAddr = "192.0.2.7".parse().expect("ip");
        let held: Vec<ClientSlot> = (0..3)
            .map(|_| shares.take(Some(key), 3).expect("within the share"))
            .collect();
        assert!(shares.take(Some(key), 3).is_none(), "a fourth");
        assert!(
            shares.take(None, 3).is_some(),
            "a trusted proxy is not counted"
        );
        drop(held);
        assert!(shares.lock().is_empty(), "shares given back");
        assert!(shares.take(Some(key), 3).is_some());
    }

    /// A panic while the lock was held used to make every later `admit` fail: `503` to
    /// everyone, for ever.
    #[test]
    fn a_poisoned_lock_does_not_refuse_every_caller() {
        let shares = ClientShares::default();
        let poisoner = shares.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.0.lock().expect("lock");
            panic!("poison the lock");
        })
        .join();
        assert!(shares.0.is_poisoned());
        let key: IpAddr = "2001:db8::1".parse().expect("ip");
        let slot = shares.take(Some(key), 16);
        assert!(slot.is_some(), "refused after a poisoned lock");
        drop(slot);
        assert!(shares.lock().is_empty());
    }

    #[test]
    fn refused_connections_are_logged_once_per_interval_with_their_count() {
        let log = RefusalLog::default();
        let start = std::time::Instant::now();
        assert_eq!(log.note(start), Noted::Log(1), "the first is logged");
        let after = |ms| start + Duration::from_millis(ms);
        assert_eq!(log.note(after(1)), Noted::Later(start + REFUSAL_LOG_EVERY));
        let quiet: Vec<Noted> = (2..=999).map(|n| log.note(after(n))).collect();
        assert!(
            quiet.iter().all(|n| *n == Noted::Counted),
            "logged within the interval"
        );
        assert_eq!(
            log.take_due(after(5_000)),
            None,
            "not before the interval ends"
        );
        assert_eq!(log.note(start + REFUSAL_LOG_EVERY), Noted::Log(1000));
        assert_eq!(
            log.take_due(start + REFUSAL_LOG_EVERY),
            None,
            "the line came with the next refusal: the deferred one has nothing left"
        );
        assert_eq!(log.note(start + REFUSAL_LOG_EVERY * 2), Noted::Log(1));
    }

    /// A flood that stops right after a line: what came after it is logged when the interval
    /// ends, not never.
    #[test]
    fn refusals_after_the_last_line_are_logged_when_the_interval_ends() {
        let log = RefusalLog::default();
        let start = std::time::Instant::now();
        assert_eq!(log.note(start), Noted::Log(1));
        let due = match log.note(start + Duration::from_millis(1)) {
            Noted::Later(at) => at,
            other => panic!("{other:?}"),
        };
        for n in 2..=50 {
            assert_eq!(log.note(start + Duration::from_millis(n)), Noted::Counted);
        }
        assert_eq!(log.take_due(due), Some(50));
        assert_eq!(log.take_due(due + REFUSAL_LOG_EVERY), None, "nothing twice");
    }
}

//! Listening sockets and the admission of connections.
//!
//! Admission happens before a session exists: total and per-IP connection caps and a per-IP
//! rate of new connections, so a flood from one address cannot starve everyone else (the
//! incident this product grew out of). A refused client gets `421 4.7.0` and is closed.
//!
//! Behind a load balancer every connection comes from the balancer, so for peers in
//! `[relay] trusted_proxies` the PROXY header is read first and the client it names is the one
//! admitted, judged by the policy and written into `Received:` (see [`crate::proxy`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use relayward_config::Live;
use relayward_protocol::reply::Reply;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::config::ListenerKind;
use crate::conn::Conn;
use crate::proxy;
use crate::session::{self, Ending, SessionContext, Stream};

/// Admission limits, from `[limits]`.
#[derive(Debug, Clone)]
pub struct AdmissionLimits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub connections_per_ip_per_minute: u32,
}

/// Counts live connections and recent connection attempts. The counts outlive reloads; the
/// limits are read from the configuration in force at each admission.
pub struct Gate {
    limits: Live<AdmissionLimits>,
    state: Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// Start of the current one-minute window and the connections seen in it, per IP.
    rate: HashMap<IpAddr, (Instant, u32)>,
    /// `rate` is swept of ended windows when it grows past this (at least [`RATE_SWEEP_MIN`]).
    sweep_at: usize,
    /// Sweeps of `rate` so far.
    sweeps: u64,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    TooManyConnections,
    TooManyFromYou,
    TooFast,
}

/// Holds one admitted connection's place; releases it on drop.
pub struct Admission {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let Ok(mut state) = self.gate.state.lock() else {
            return;
        };
        state.total = state.total.saturating_sub(1);
        if let Some(count) = state.per_ip.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.per_ip.remove(&self.ip);
            }
        }
    }
}

impl Gate {
    /// A gate with fixed limits.
    pub fn new(limits: AdmissionLimits) -> Arc<Self> {
        Self::live(Live::fixed(Arc::new(limits)))
    }

    /// A gate whose limits follow the running configuration (a reload changes them for new
    /// connections; live ones are not dropped).
    pub fn live(limits: Live<AdmissionLimits>) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::new(GateState::default()),
        })
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Admission, Refused> {
        let ip = crate::auth::ip_key(ip);
        let limits = self.limits.current();
        let mut state = self.state.lock().map_err(|_| Refused::TooManyConnections)?;
        if state.rate.len() > state.sweep_at.max(RATE_SWEEP_MIN) {
            state
                .rate
                .retain(|_, (start, _)| now.duration_since(*start) < RATE_WINDOW);
            state.sweeps += 1;
            // A table of live windows (a flood from many addresses) frees little: sweep again
            // only once it has doubled, or every connection would scan it whole under the lock.
            state.sweep_at = state.rate.len().saturating_mul(2);
        }
        let window = state.rate.entry(ip).or_insert((now, 0));
        if now.duration_since(window.0) >= RATE_WINDOW {
            *window = (now, 0);
        }
        window.1 += 1;
        if window.1 > limits.connections_per_ip_per_minute {
            return Err(Refused::TooFast);
        }
        if state.total >= limits.max_connections {
            return Err(Refused::TooManyConnections);
        }
        let mine = state.per_ip.entry(ip).or_insert(0);
        if *mine >= limits.max_connections_per_ip {
            return Err(Refused::TooManyFromYou);
        }
        *mine += 1;
        state.total += 1;
        Ok(Admission {
            gate: Arc::clone(self),
            ip,
        })
    }
}

/// An address refused new connections for connecting too often (more than
/// `connections_per_ip_per_minute`), until its one-minute window ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttled {
    /// The address as it is counted (IPv6: its /64).
    pub address: IpAddr,
    pub connections: u32,
    pub remaining: Duration,
}

impl Gate {
    /// Connections admitted and not yet closed (each is one SMTP session).
    pub fn connections(&self) -> usize {
        self.state.lock().map(|s| s.total).unwrap_or(0)
    }

    /// The addresses refused right now for connecting too fast.
    pub fn throttled(&self, now: Instant) -> Vec<Throttled> {
        let limit = self.limits.current().connections_per_ip_per_minute;
        let Ok(state) = self.state.lock() else {
            return Vec::new();
        };
        let mut out: Vec<Throttled> = state
            .rate
            .iter()
            .filter_map(|(ip, (start, count))| {
                let elapsed = now.saturating_duration_since(*start);
                (*count > limit && elapsed < RATE_WINDOW).then(|| Throttled {
                    address: *ip,
                    connections: *count,
                    remaining: RATE_WINDOW - elapsed,
                })
            })
            .collect();
        out.sort_by_key(|t| t.address);
        out
    }

    /// Forgets `ip`'s recent connections (the admin lifted its ban); true when it was refused.
    pub fn forgive(&self, ip: IpAddr) -> bool {
        let ip = crate::auth::ip_key(ip);
        let limit = self.limits.current().connections_per_ip_per_minute;
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        state
            .rate
            .remove(&ip)
            .is_some_and(|(_, count)| count > limit)
    }

    /// Forgets every address's recent connections; returns how many were refused.
    pub fn forgive_all(&self) -> usize {
        let limit = self.limits.current().connections_per_ip_per_minute;
        let Ok(mut state) = self.state.lock() else {
            return 0;
        };
        let refused = state.rate.values().filter(|(_, c)| *c > limit).count();
        state.rate.clear();
        state.sweep_at = 0;
        refused
    }
}

/// The window of `connections_per_ip_per_minute`.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses the rate table holds before it is first swept of ended windows.
const RATE_SWEEP_MIN: usize = 100_000;

/// Whether a listener takes connections, for `/healthz` and `relayward status`: not once its
/// accept loop ended, nor while `accept` fails (out of file descriptors, say).
#[derive(Debug, Clone, Default)]
pub struct AcceptHealth {
    state: Arc<std::sync::atomic::AtomicU8>,
}

const ACCEPTING: u8 = 0;
const FAILING: u8 = 1;
const STOPPED: u8 = 2;

impl AcceptHealth {
    /// `Ok` while accepting; otherwise why not.
    pub fn check(&self) -> Result<(), &'static str> {
        match self.state.load(std::sync::atomic::Ordering::Relaxed) {
            ACCEPTING => Ok(()),
            FAILING => Err("accept() fails (see the log)"),
            _ => Err("the listener has stopped"),
        }
    }

    fn set(&self, state: u8) {
        self.state
            .store(state, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Marks the listener stopped however its accept loop ends.
struct StoppedOnDrop(AcceptHealth);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        self.0.set(STOPPED);
    }
}

/// A bound listener and what it is for.
pub struct BoundListener {
    pub listener: TcpListener,
    pub kind: ListenerKind,
    pub address: SocketAddr,
}

/// One accepting listener. Closing it (a reload removed it from the file) stops accepting and
/// leaves its sessions to finish on their own; the server's shutdown drains them instead.
pub struct RunningListener {
    pub address: SocketAddr,
    pub kind: ListenerKind,
    pub health: AcceptHealth,
    close: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl RunningListener {
    /// Accepts connections on `bound` until closed or until `shutdown` turns true; each session
    /// runs with the session context in force when its connection was accepted.
    pub fn spawn(
        bound: BoundListener,
        sessions: Live<SessionContext>,
        gate: Arc<Gate>,
        shutdown: watch::Receiver<bool>,
    ) -> RunningListener {
        let (close, closed) = oneshot::channel();
        let (address, kind) = (bound.address, bound.kind);
        let health = AcceptHealth::default();
        let stopped = StoppedOnDrop(health.clone());
        let task = tokio::spawn(async move {
            accept_loop(bound, sessions, gate, shutdown, closed, &stopped.0).await;
            drop(stopped);
        });
        RunningListener {
            address,
            kind,
            health,
            close,
            task,
        }
    }

    /// Stops accepting; returns when the listening socket is closed and its sessions ended.
    pub async fn close(self) {
        let _ = self.close.send(());
        let _ = self.task.await;
    }

    /// Waits until the listener stopped (after shutdown: when its sessions drained).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

async fn accept_loop(
    bound: BoundListener,
    sessions: Live<SessionContext>,
    gate: Arc<Gate>,
    mut shutdown: watch::Receiver<bool>,
    mut closed: oneshot::Receiver<()>,
    health: &AcceptHealth,
) {
    let mut running = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = bound.listener.accept() => accepted,
            () = crate::session::stopping(&mut shutdown) => break,
            _ = &mut closed => {
                tracing::info!(listener = %bound.address, kind = %bound.kind, "listener closed (removed from the configuration)");
                drop(bound);
                while running.join_next().await.is_some() {}
                return;
            }
            Some(_) = running.join_next(), if !running.is_empty() => continue,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => {
                health.set(ACCEPTING);
                pair
            }
            Err(e) => {
                health.set(FAILING);
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(listener = %bound.address, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        running.spawn(handle_connection(
            tcp,
            peer,
            bound.kind,
            sessions.clone(),
            Arc::clone(&gate),
            shutdown.clone(),
        ));
    }
    drain(&bound, running, &sessions).await;
}

/// While the sessions of a stopping server finish, new clients are told to come back
/// (`421 4.3.2`) instead of being accepted into a session — or, as a closed-but-listening
/// socket would do, left waiting for a banner that never comes.
async fn drain(bound: &BoundListener, mut sessions: JoinSet<()>, context: &Live<SessionContext>) {
    let hostname = context.current().hostname.clone();
    let mut turned_away = JoinSet::new();
    loop {
        tokio::select! {
            joined = sessions.join_next() => if joined.is_none() { break },
            accepted = bound.listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    turned_away.spawn(turn_away(tcp, hostname.clone()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            },
            Some(_) = turned_away.join_next(), if !turned_away.is_empty() => {}
        }
    }
    while turned_away.join_next().await.is_some() {}
}

async fn turn_away(mut tcp: TcpStream, hostname: String) {
    let reply = Reply::enh(
        421,
        (4, 3, 2),
        format!("{hostname} Service shutting down, try again later"),
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        tcp.write_all(reply.to_wire().as_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
}

/// Longest wait for a trusted proxy's header (further bounded by `greeting_timeout`): the proxy
/// writes it together with the connection, so anything slower is broken.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

async fn handle_connection(
    mut tcp: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    sessions: Live<SessionContext>,
    gate: Arc<Gate>,
    shutdown: watch::Receiver<bool>,
) {
    let ctx = sessions.current();
    let deadline = tokio::time::Instant::now() + ctx.limits.session_timeout;
    let metrics = relayward_metrics::global();
    let Some(client) = real_client(&mut tcp, peer, &ctx).await else {
        metrics.connection(kind.as_str(), "proxy_header_failed");
        return;
    };
    let ip = client.ip().to_canonical();
    let _admission = match gate.admit(ip, Instant::now()) {
        Ok(admission) => admission,
        Err(refused) => {
            metrics.connection(kind.as_str(), refused.metric_word());
            tracing::warn!(client = %ip, listener = %kind, reason = %refused.metric_word(), "connection refused");
            let reply = refusal_reply(&ctx.hostname, refused);
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                tcp.write_all(reply.to_wire().as_bytes()),
            )
            .await;
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    if client == peer {
        tracing::info!(client = %ip, port = client.port(), listener = %kind, "connect");
    } else {
        tracing::info!(client = %ip, port = client.port(), proxy = %peer, listener = %kind, "connect");
    }
    let started = Instant::now();
    if let Some(ending) = serve_connection(tcp, client, kind, sessions, shutdown, deadline).await {
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(client = %ip, listener = %kind, ?ending, duration = %format_args!("{seconds:.3}s"), "disconnect");
    }
}

/// One admitted connection from `client`, over any byte stream: implicit TLS first on a
/// `submissions` listener (its handshake bounded like the greeting), then the session, all
/// before `deadline`. `None` when the TLS handshake failed or timed out (logged), or when a
/// `submissions` listener has no TLS to offer. The listener calls it with a TCP socket after
/// PROXY and admission; tests with an in-memory pipe.
pub async fn serve_connection<S: Stream>(
    stream: S,
    client: SocketAddr,
    kind: ListenerKind,
    sessions: Live<SessionContext>,
    shutdown: watch::Receiver<bool>,
    deadline: tokio::time::Instant,
) -> Option<Ending> {
    let ctx = sessions.current();
    let ip = client.ip().to_canonical();
    let metrics = relayward_metrics::global();
    let conn = match (kind, ctx.tls.as_ref()) {
        (ListenerKind::Submissions, Some(acceptor)) => {
            let handshake = Conn::accept_implicit(stream, acceptor);
            let limit = deadline.min(tokio::time::Instant::now() + ctx.limits.greeting_timeout);
            match tokio::time::timeout_at(limit, handshake).await {
                Ok(Ok(conn)) => {
                    if let Some(tls) = conn.tls_facts() {
                        metrics.tls_session("inbound", &tls.version);
                    }
                    conn
                }
                _ => {
                    metrics.connection(kind.as_str(), "tls_handshake_failed");
                    tracing::info!(client = %ip, "implicit TLS handshake failed or timed out");
                    return None;
                }
            }
        }
        (ListenerKind::Submissions, None) => {
            metrics.connection(kind.as_str(), "tls_handshake_failed");
            return None;
        }
        _ => Conn::Plain(stream),
    };
    metrics.connection(kind.as_str(), "accepted");
    let _counted = metrics.session(kind.as_str());
    Some(session::run(sessions, kind, conn, client, shutdown, deadline).await)
}

/// The client this connection speaks for: the peer itself, or — only when the peer is a
/// trusted proxy — the client named in its PROXY header (see [`crate::proxy`]). `None` when a
/// trusted proxy sent no valid header in time: the connection is closed without a word, as
/// the PROXY protocol asks.
async fn real_client(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    ctx: &SessionContext,
) -> Option<SocketAddr> {
    let peer_ip = peer.ip().to_canonical();
    if !ctx.trusted_proxies.iter().any(|net| net.contains(&peer_ip)) {
        return Some(peer);
    }
    let limit = PROXY_HEADER_TIMEOUT.min(ctx.limits.greeting_timeout);
    match tokio::time::timeout(limit, proxy::read_header(tcp)).await {
        Ok(Ok(Some(client))) => Some(SocketAddr::new(client.ip().to_canonical(), client.port())),
        Ok(Ok(None)) => Some(peer),
        Ok(Err(e)) => {
            tracing::warn!(proxy = %peer, "closing: {e}");
            None
        }
        Err(_) => {
            tracing::warn!(proxy = %peer, "closing: no PROXY header within {limit:?}");
            None
        }
    }
}

impl Refused {
    /// The `result` label of `relayward_connections_total`.
    pub fn metric_word(self) -> &'static str {
        match self {
            Refused::TooManyConnections => "too_many_connections",
            Refused::TooManyFromYou => "too_many_from_address",
            Refused::TooFast => "too_fast",
        }
    }
}

fn refusal_reply(hostname: &str, refused: Refused) -> Reply {
    let why = match refused {
        Refused::TooManyConnections => "Too many connections",
        Refused::TooManyFromYou => "Too many connections from your address",
        Refused::TooFast => "Too many connections from your address in the last minute",
    };
    Reply::enh(421, (4, 7, 0), format!("{hostname} {why}; try again later"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(total: usize, per_ip: usize, per_minute: u32) -> Arc<Gate> {
        Gate::new(AdmissionLimits {
            max_connections: total,
            max_connections_per_ip: per_ip,
            connections_per_ip_per_minute: per_minute,
        })
    }

    #[test]
    fn per_ip_cap_leaves_room_for_others() {
        let gate = gate(10, 2, 100);
        let now = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = gate.admit(a, now).unwrap();
        let _second = gate.admit(a, now).unwrap();
        assert_eq!(gate.admit(a, now).err(), Some(Refused::TooManyFromYou));
        assert!(gate.admit(b, now).is_ok());
        drop(first);
        assert!(gate.admit(a, now).is_ok());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let gate = gate(10, 1, 100);
        let now = Instant::now();
        let _held = gate.admit("2001:db8:1:2::1".parse().unwrap(), now).unwrap();
        assert_eq!(
            gate.admit("2001:db8:1:2::ffff".parse().unwrap(), now).err(),
            Some(Refused::TooManyFromYou)
        );
        assert!(gate.admit("2001:db8:1:3::1".parse().unwrap(), now).is_ok());
    }

    /// A flood from more addresses than the rate table's sweep threshold (easy from IPv6: one
    /// /48 holds 65,536 /64s) kept the table full of live windows, and every connection
    /// after that scanned the whole table under the gate's lock: quadratic, milliseconds per
    /// accept for everyone. A sweep that frees little is not repeated until the table doubles.
    #[test]
    fn a_full_rate_table_is_not_swept_at_every_connection() {
        let gate = gate(10, 5, 60);
        let now = Instant::now();
        let v4 = |n: u32| IpAddr::V4(std::net::Ipv4Addr::from(n));
        for i in 0..=RATE_SWEEP_MIN as u32 {
            let _ = gate.admit(v4(0x0a00_0000 + i), now);
        }
        for i in 0..1000 {
            let _ = gate.admit(v4(0x0b00_0000 + i), now);
        }
        let state = gate.state.lock().unwrap();
        assert_eq!(state.rate.len(), RATE_SWEEP_MIN + 1001);
        assert_eq!(state.sweeps, 1, "swept {} times", state.sweeps);
        drop(state);
        // Expired windows are still forgotten once the table has grown enough.
        let later = now + RATE_WINDOW;
        for i in 0..=(RATE_SWEEP_MIN as u32 + 1100) {
            let _ = gate.admit(v4(0x0c00_0000 + i), later);
        }
        let state = gate.state.lock().unwrap();
        assert!(
            state.rate.len() < 2 * RATE_SWEEP_MIN,
            "{}",
            state.rate.len()
        );
    }

    #[test]
    fn total_cap_and_rate_window() {
        let gate = gate(1, 5, 2);
        let now = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let held = gate.admit(a, now).unwrap();
        assert_eq!(
            gate.admit("192.0.2.9".parse().unwrap(), now).err(),
            Some(Refused::TooManyConnections)
        );
        drop(held);
        assert!(gate.admit(a, now).is_ok());
        assert_eq!(gate.admit(a, now).err(), Some(Refused::TooFast));
        assert!(gate.admit(a, now + Duration::from_secs(61)).is_ok());
    }
}

//! The web door's TCP listener, with the caps `axum::serve` does not have: connections at
//! once in total and per client.
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
//! not do), or keeps an idle keep-alive connection. Answers and the live transcript's
//! keep-alive comments are writes, so every honest connection stays.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::limits::client_key;
use crate::service::Service;

/// Connections to the web door at once.
pub const MAX_CONNECTIONS: usize = 512;
/// Connections one client (address, IPv6 /64) may hold at once.
pub const MAX_CONNECTIONS_PER_CLIENT: usize = 16;

const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Content-Length: 40\r\nRetry-After: 10\r\nConnection: close\r\n\r\n\
too many connections from your address\r\n";

/// The listener `crate::http::serve` hands to axum.
pub struct CappedListener {
    inner: TcpListener,
    total: Arc<Semaphore>,
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Whose `trusted_proxies` count only against the total.
    service: Arc<Service>,
}

impl CappedListener {
    pub fn new(inner: TcpListener, service: Arc<Service>) -> Self {
        Self {
            inner,
            total: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            per_client: Arc::new(Mutex::new(HashMap::new())),
            service,
        }
    }

    /// One more connection for `peer`'s client key, unless it holds its share already.
    fn admit(&self, peer: SocketAddr) -> Option<ClientSlot> {
        let ip = peer.ip().to_canonical();
        if self.service.config.is_trusted_proxy(ip) {
            return Some(ClientSlot {
                key: None,
                map: Arc::clone(&self.per_client),
            });
        }
        let key = client_key(ip);
        let mut map = self.per_client.lock().ok()?;
        let held = map.entry(key).or_insert(0);
        if *held >= MAX_CONNECTIONS_PER_CLIENT {
            return None;
        }
        *held += 1;
        Some(ClientSlot {
            key: Some(key),
            map: Arc::clone(&self.per_client),
        })
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
                    tracing::warn!(error = %e, "web door: accept failed");
                    // EMFILE and friends: give the process a moment instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            match self.admit(peer) {
                Some(slot) => {
                    let idle_timeout = self.service.config.http_idle_timeout;
                    let io = CappedStream {
                        stream,
                        idle_timeout,
                        silent_until: Box::pin(tokio::time::sleep(idle_timeout)),
                        _permit: permit,
                        _slot: slot,
                    };
                    return (io, peer);
                }
                None => {
                    tracing::info!(peer = %peer.ip(), "web door: too many connections from one client");
                    tokio::spawn(async move {
                        let _ = stream.write_all(TOO_MANY).await;
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

/// A client's share taken; given back when the connection is dropped.
struct ClientSlot {
    key: Option<IpAddr>,
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        if let Ok(mut map) = self.map.lock()
            && let Some(held) = map.get_mut(&key)
        {
            *held = held.saturating_sub(1);
            if *held == 0 {
                map.remove(&key);
            }
        }
    }
}

/// An accepted connection that holds its slots for as long as it lives, and ends when the
/// service has written nothing to it for `idle_timeout`.
pub struct CappedStream {
    stream: TcpStream,
    idle_timeout: Duration,
    /// Fires `idle_timeout` after the last write (or the accept); pushed back by every write.
    silent_until: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
    _slot: ClientSlot,
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
        if self.silent_until.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "web door: nothing sent to this caller within http_idle_timeout",
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
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            let next = Instant::now() + self.idle_timeout;
            self.silent_until.as_mut().reset(next);
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
/// listener; axum ties that impl to `TcpListener`).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, CappedListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, CappedListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

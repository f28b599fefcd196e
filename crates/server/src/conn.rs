//! A client connection that can switch from plaintext to TLS in the middle (STARTTLS), over
//! any byte stream: a TCP socket in the server, an in-memory pipe in tests.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// What the session knows about the TLS layer, for the trace header and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFacts {
    pub version: String,
    pub cipher: String,
}

/// What a session can run over: a TCP socket, or `tokio::io::DuplexStream` in tests.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// The client's byte stream, plaintext or TLS.
pub enum Conn<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
    /// Only during the STARTTLS switch; never read or written.
    Switching,
}

impl<S: Stream> Conn<S> {
    /// Runs the TLS handshake over the plaintext stream. Bytes the client sent before the
    /// handshake must already have been discarded by the caller (RFC 3207 §6).
    pub async fn upgrade(&mut self, acceptor: &TlsAcceptor) -> io::Result<()> {
        let Conn::Plain(tcp) = std::mem::replace(self, Conn::Switching) else {
            return Err(io::Error::other("TLS is already active"));
        };
        let tls = acceptor.accept(tcp).await?;
        *self = Conn::Tls(Box::new(tls));
        Ok(())
    }

    /// Wraps a fresh stream in TLS at once (the `submissions` listener, RFC 8314).
    pub async fn accept_implicit(stream: S, acceptor: &TlsAcceptor) -> io::Result<Conn<S>> {
        Ok(Conn::Tls(Box::new(acceptor.accept(stream).await?)))
    }

    pub fn tls_facts(&self) -> Option<TlsFacts> {
        let Conn::Tls(tls) = self else { return None };
        let (_, session) = tls.get_ref();
        Some(TlsFacts {
            version: session
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("TLS")
                .replace('_', "."),
            cipher: session
                .negotiated_cipher_suite()
                .and_then(|c| c.suite().as_str())
                .unwrap_or("unknown")
                .to_string(),
        })
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }
}

pub fn acceptor(config: Arc<rustls::ServerConfig>) -> TlsAcceptor {
    TlsAcceptor::from(config)
}

fn switching() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "connection is switching to TLS",
    )
}

impl<S: Stream> AsyncRead for Conn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Switching => Poll::Ready(Err(switching())),
        }
    }
}

impl<S: Stream> AsyncWrite for Conn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Switching => Poll::Ready(Err(switching())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Switching => Poll::Ready(Err(switching())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Switching => Poll::Ready(Ok(())),
        }
    }
}

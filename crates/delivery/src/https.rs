//! One HTTPS exchange over our own resolver's address and a given rustls configuration, for
//! the MTA-STS policy fetch ([`crate::mta_sts`]) and TLS-RPT reports ([`crate::tlsrpt`]).

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Body;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Ends the HTTP connection task with the exchange.
pub struct Driver(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connects to `addr`, verifies its certificate for `host` with `tls` and opens an HTTP/1.1
/// connection; keep the [`Driver`] until the response body is read.
pub async fn open<B>(
    tls: &Arc<ClientConfig>,
    host: &str,
    addr: SocketAddr,
) -> Result<(SendRequest<B>, Driver), String>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| format!("{host:?} is not a TLS server name"))?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let tls = TlsConnector::from(Arc::clone(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    Ok((sender, Driver(tokio::spawn(connection))))
}

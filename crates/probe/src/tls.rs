//! TLS for the tester: handshake with anything, record what was presented.
//!
//! A relay tester must test the server it is pointed at even when its certificate is
//! self-signed, expired or for another name (most port-25 certificates are), so the verifier
//! accepts every chain. Signatures in the handshake are still checked against the presented
//! certificate, and the certificate is reported as a finding instead.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls_pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The client configuration, built once per run: any chain, verified handshake signatures
/// (the same encrypt-only configuration the delivery agent uses for MX hosts).
pub fn connector() -> Result<TlsConnector, rustls::Error> {
    Ok(TlsConnector::from(relayward_tls::encrypt_only_config()?))
}

/// SNI: the host name when we have one, else the address.
pub fn server_name(host: Option<&str>, ip: IpAddr) -> ServerName<'static> {
    host.and_then(|h| ServerName::try_from(h.to_string()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(ip.into()))
}

pub async fn handshake(
    connector: &TlsConnector,
    name: ServerName<'static>,
    stream: TcpStream,
) -> std::io::Result<TlsStream<TcpStream>> {
    connector.connect(name, stream).await
}

/// What the TLS session showed, for the findings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
    pub certificate: Option<CertInfo>,
    pub chain_length: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// As printed by the certificate parser, e.g. `Jan  1 00:00:00 2030 +00:00`.
    pub not_after: String,
    pub not_after_unix: i64,
    pub expired: bool,
    pub self_signed: bool,
}

pub fn tls_info(stream: &TlsStream<TcpStream>) -> TlsInfo {
    let (_, session) = stream.get_ref();
    let chain = session.peer_certificates().unwrap_or_default();
    TlsInfo {
        version: session
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default(),
        cipher: session
            .negotiated_cipher_suite()
            .map(|c| format!("{:?}", c.suite()))
            .unwrap_or_default(),
        certificate: chain.first().and_then(|c| cert_info(c.as_ref())),
        chain_length: chain.len(),
    }
}

/// Parses a DER certificate; `None` if it is not one (the server's problem, reported as such).
pub fn cert_info(der: &[u8]) -> Option<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let not_after = cert.validity().not_after;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Some(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_after: not_after.to_string(),
        not_after_unix: not_after.timestamp(),
        expired: not_after.timestamp() < now,
        self_signed: cert.subject() == cert.issuer(),
    })
}

//! `https:` destinations (RFC 8460 §5.2): the compressed report POSTed with
//! `Content-Type: application/tlsrpt+gzip` over TLS verified like MTA-STS policy fetches (web
//! PKI roots plus `tls_policy_ca_file`); any `2xx` is success. No redirects, one try per
//! address: a report is not worth retrying for long (the next one follows a day later).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use rustls::ClientConfig;

use crate::mx::MxResolver;

/// Addresses of the report server tried.
const MAX_ADDRESSES: usize = 4;
/// How much of the answer is read (and then ignored).
const MAX_ANSWER: usize = 16 * 1024;

/// POSTs `body` to `url`; `Ok` with the status line, `Err` with what went wrong.
pub async fn post(
    resolver: &MxResolver,
    tls: &Arc<ClientConfig>,
    url: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<String, String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{url:?} is not an https:// URL"));
    }
    let host = uri.host().ok_or_else(|| format!("{url:?} has no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_else(|| host.clone());
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let addresses = resolver
        .addresses(&host)
        .await
        .map_err(|e| format!("{host}: {e}"))?;
    let mut last = format!("{host} has no address");
    for ip in addresses.into_iter().take(MAX_ADDRESSES) {
        let addr = SocketAddr::new(ip, port);
        let request = hyper::Request::post(path.as_str())
            .header(hyper::header::HOST, authority.as_str())
            .header(hyper::header::CONTENT_TYPE, super::report::MEDIA_TYPE)
            .header(hyper::header::CONNECTION, "close")
            .header(hyper::header::USER_AGENT, "relayward")
            .body(Full::new(body.clone()))
            .map_err(|e| format!("request: {e}"))?;
        let exchange = async {
            let (mut sender, driver) = crate::https::open(tls, &host, addr).await?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
            let status = response.status();
            let _ = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await;
            drop(driver);
            Ok::<_, String>(status)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(status)) if status.is_success() => {
                return Ok(format!("HTTP {}", status.as_u16()));
            }
            Ok(Ok(status)) => last = format!("{addr}: HTTP status {}", status.as_u16()),
            Ok(Err(reason)) => last = format!("{addr}: {reason}"),
            Err(_) => last = format!("{addr}: timed out after {timeout:?}"),
        }
    }
    Err(last)
}

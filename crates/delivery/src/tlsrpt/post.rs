//! `https:` destinations (RFC 8460 §5.2): the compressed report POSTed with
//! `Content-Type: application/tlsrpt+gzip` over TLS verified like MTA-STS policy fetches (web
//! PKI roots plus `tls_policy_ca_file`); any `2xx` is success. No redirects; one try per
//! address here, and a failure that may pass is tried again later by [`super::retry`].

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

/// Why a POST failed, and whether trying again could help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostError {
    pub reason: String,
    /// The URL cannot work, or every address answered with a refusal that will not change
    /// (a `4xx` other than 408 and 429, or a redirect, which is never followed): not tried
    /// again.
    pub permanent: bool,
}

impl PostError {
    fn permanent(reason: String) -> PostError {
        PostError {
            reason,
            permanent: true,
        }
    }
}

/// Whether an HTTP status refuses the report for good (a redirect included: none is
/// followed, so asking again gets the same answer).
fn refuses_for_good(status: u16) -> bool {
    (300..500).contains(&status) && status != 408 && status != 429
}

/// POSTs `body` to `url`; `Ok` with the status line, `Err` with what went wrong.
pub async fn post(
    resolver: &MxResolver,
    tls: &Arc<ClientConfig>,
    url: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<String, PostError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| PostError::permanent(format!("{url:?} is not a URL: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(PostError::permanent(format!(
            "{url:?} is not an https:// URL"
        )));
    }
    let host = uri
        .host()
        .ok_or_else(|| PostError::permanent(format!("{url:?} has no host")))?;
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
    let temporary = |reason| PostError {
        reason,
        permanent: false,
    };
    let addresses = resolver
        .addresses(&host)
        .await
        .map_err(|e| temporary(format!("{host}: {e}")))?;
    let mut last = temporary(format!("{host} has no address"));
    // Permanent only if every address refused for good.
    let mut refused_for_good = 0;
    let mut tried = 0;
    for ip in addresses.into_iter().take(MAX_ADDRESSES) {
        let addr = SocketAddr::new(ip, port);
        let request = hyper::Request::post(path.as_str())
            .header(hyper::header::HOST, authority.as_str())
            .header(hyper::header::CONTENT_TYPE, super::report::MEDIA_TYPE)
            .header(hyper::header::CONNECTION, "close")
            .header(hyper::header::USER_AGENT, "relayward")
            .body(Full::new(body.clone()))
            .map_err(|e| PostError::permanent(format!("request: {e}")))?;
        tried += 1;
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
            Ok(Ok(status)) => {
                if refuses_for_good(status.as_u16()) {
                    refused_for_good += 1;
                }
                last.reason = format!("{addr}: HTTP status {}", status.as_u16());
            }
            Ok(Err(reason)) => last.reason = format!("{addr}: {reason}"),
            Err(_) => last.reason = format!("{addr}: timed out after {timeout:?}"),
        }
    }
    last.permanent = tried > 0 && refused_for_good == tried;
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::refuses_for_good;

    #[test]
    fn only_lasting_refusals_are_final() {
        for status in [301, 308, 400, 403, 404, 413, 415] {
            assert!(refuses_for_good(status), "{status}");
        }
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(!refuses_for_good(status), "{status}");
        }
    }
}

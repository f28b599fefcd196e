//! The PROXY protocol (HAProxy, versions 1 and 2): a load balancer in front of relayward names
//! the real client in a header before the first SMTP byte.
//!
//! Who the client is decides relay (trusted networks), limits and the trace header, so the header
//! is read only from peers in `[relay] trusted_proxies` — from anyone else it would be a way to
//! claim any address. Such peers must send it (the spec says a receiver configured for the
//! protocol must not guess); a missing or malformed header closes the connection. Other peers
//! never get it read at all: a `PROXY` line from them is just an unknown SMTP command.
//!
//! The reader never takes a byte past the header, so whatever follows it (a pregreeting client,
//! a TLS ClientHello) is left for the session. Its size is bounded (107 octets for v1, spec §2.1;
//! [`MAX_V2_PAYLOAD`] for v2) and the caller bounds its time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest v1 header including CRLF (spec §2.1).
pub const MAX_V1_LINE: usize = 107;
/// Largest v2 payload we accept: addresses plus a few TLVs. HAProxy's own TLVs are far smaller;
/// anything bigger is not a header we need to understand.
pub const MAX_V2_PAYLOAD: usize = 1024;

/// The v2 signature (spec §2.2).
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Both header kinds are longer than this, so reading it never takes SMTP bytes.
const PREFIX: usize = 8;

/// Why a header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("no PROXY header from a trusted proxy")]
    Missing,
    #[error("PROXY v1 header longer than 107 octets")]
    TooLong,
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    #[error("connection closed during the PROXY header")]
    Closed,
}

/// What the header says: the real client, or `None` when the proxy speaks for itself (v1
/// `UNKNOWN`, v2 `LOCAL`, or an address family without IP addresses) — then the connection's
/// own peer is the client.
pub type ProxiedClient = Option<SocketAddr>;

/// Reads one PROXY header (v1 or v2) from `stream`, and not a byte more.
pub async fn read_header<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<ProxiedClient, ProxyError> {
    let mut prefix = [0u8; PREFIX];
    read_exact(stream, &mut prefix).await?;
    if prefix.starts_with(b"PROXY ") {
        read_v1(stream, &prefix).await
    } else if prefix == V2_SIGNATURE[..PREFIX] {
        read_v2(stream, &prefix).await
    } else {
        Err(ProxyError::Missing)
    }
}

async fn read_exact<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut [u8],
) -> Result<(), ProxyError> {
    stream
        .read_exact(buf)
        .await
        .map(|_| ())
        .map_err(|_| ProxyError::Closed)
}

/// Reads the rest of a v1 line one octet at a time: the line is at most 107 octets and comes
/// only from trusted proxies, and reading no further than its LF keeps the SMTP stream intact.
async fn read_v1<R: AsyncRead + Unpin>(
    stream: &mut R,
    prefix: &[u8],
) -> Result<ProxiedClient, ProxyError> {
    let mut line = prefix.to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() >= MAX_V1_LINE {
            return Err(ProxyError::TooLong);
        }
        let mut byte = [0u8; 1];
        read_exact(stream, &mut byte).await?;
        line.push(byte[0]);
    }
    parse_v1(&line)
}

/// Parses a complete v1 line, CRLF included: `PROXY TCP4 src dst sport dport`.
pub fn parse_v1(line: &[u8]) -> Result<ProxiedClient, ProxyError> {
    let text = line
        .strip_suffix(b"\r\n")
        .and_then(|l| std::str::from_utf8(l).ok())
        .ok_or(ProxyError::Malformed(
            "v1 header is not a CRLF-terminated text line",
        ))?;
    let mut fields = text.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(ProxyError::Malformed("v1 header does not start with PROXY"));
    }
    let family = fields
        .next()
        .ok_or(ProxyError::Malformed("v1 family missing"))?;
    if family == "UNKNOWN" {
        // The rest of the line is to be ignored (spec §2.1).
        return Ok(None);
    }
    let parts: Vec<&str> = fields.collect();
    let [source, _destination, source_port, destination_port] = parts.as_slice() else {
        return Err(ProxyError::Malformed(
            "v1 header needs four fields after the family",
        ));
    };
    let ip = match family {
        "TCP4" => source.parse::<Ipv4Addr>().map(IpAddr::V4),
        "TCP6" => source.parse::<Ipv6Addr>().map(IpAddr::V6),
        _ => {
            return Err(ProxyError::Malformed(
                "v1 family is not TCP4, TCP6 or UNKNOWN",
            ));
        }
    }
    .map_err(|_| ProxyError::Malformed("v1 source address does not match the family"))?;
    let port = parse_port(source_port)?;
    parse_port(destination_port)?;
    Ok(Some(SocketAddr::new(ip, port)))
}

fn parse_port(text: &str) -> Result<u16, ProxyError> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = text.len() > 1 && text.starts_with('0');
    match text.parse::<u16>() {
        Ok(port) if digits_only && !leading_zero => Ok(port),
        _ => Err(ProxyError::Malformed("v1 port is not a number 0-65535")),
    }
}

async fn read_v2<R: AsyncRead + Unpin>(
    stream: &mut R,
    prefix: &[u8; PREFIX],
) -> Result<ProxiedClient, ProxyError> {
    let mut header = [0u8; 16];
    header[..PREFIX].copy_from_slice(prefix);
    read_exact(stream, &mut header[PREFIX..]).await?;
    let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
    if length > MAX_V2_PAYLOAD {
        return Err(ProxyError::Malformed("v2 payload too large"));
    }
    let mut payload = vec![0u8; length];
    read_exact(stream, &mut payload).await?;
    parse_v2(&header, &payload)
}

/// Parses a v2 header: the 16 fixed octets and the payload they announce.
pub fn parse_v2(header: &[u8; 16], payload: &[u8]) -> Result<ProxiedClient, ProxyError> {
    if header[..12] != V2_SIGNATURE {
        return Err(ProxyError::Malformed("v2 signature"));
    }
    let (version, command) = (header[12] >> 4, header[12] & 0x0f);
    if version != 2 {
        return Err(ProxyError::Malformed("v2 version is not 2"));
    }
    match command {
        0 => return Ok(None), // LOCAL: the proxy's own connection (health checks).
        1 => {}
        _ => return Err(ProxyError::Malformed("v2 command is not LOCAL or PROXY")),
    }
    let (family, transport) = (header[13] >> 4, header[13] & 0x0f);
    if transport > 2 {
        return Err(ProxyError::Malformed("v2 transport"));
    }
    match family {
        1 => v2_inet(payload),
        2 => v2_inet6(payload),
        // UNSPEC and UNIX carry no IP address: treat like LOCAL.
        0 | 3 => Ok(None),
        _ => Err(ProxyError::Malformed("v2 address family")),
    }
}

fn v2_inet(payload: &[u8]) -> Result<ProxiedClient, ProxyError> {
    let Some(block) = payload.get(..12) else {
        return Err(ProxyError::Malformed("v2 IPv4 addresses truncated"));
    };
    let ip = Ipv4Addr::new(block[0], block[1], block[2], block[3]);
    let port = u16::from_be_bytes([block[8], block[9]]);
    Ok(Some(SocketAddr::new(IpAddr::V4(ip), port)))
}

fn v2_inet6(payload: &[u8]) -> Result<ProxiedClient, ProxyError> {
    let Some(block) = payload.get(..36) else {
        return Err(ProxyError::Malformed("v2 IPv6 addresses truncated"));
    };
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&block[..16]);
    let port = u16::from_be_bytes([block[32], block[33]]);
    Ok(Some(SocketAddr::new(
        IpAddr::V6(Ipv6Addr::from(octets)),
        port,
    )))
}

/// Builds a v2 `PROXY` header for a TCP client (tests and tools).
pub fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21);
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        _ => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(source).octets());
            out.extend_from_slice(&v6(destination).octets());
            out.extend_from_slice(&source.port().to_be_bytes());
            out.extend_from_slice(&destination.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (Result<ProxiedClient, ProxyError>, Vec<u8>) {
        let mut cursor = std::io::Cursor::new(bytes.to_vec());
        let result = read_header(&mut cursor).await;
        let mut rest = Vec::new();
        let _ = cursor.read_to_end(&mut rest).await;
        (result, rest)
    }

    fn addr(text: &str) -> ProxiedClient {
        Some(text.parse().unwrap())
    }

    #[tokio::test]
    async fn v1_names_the_client_and_leaves_the_smtp_bytes() {
        let (result, rest) = read(b"PROXY TCP4 192.0.2.7 192.0.2.1 40000 25\r\nEHLO x\r\n").await;
        assert_eq!(result, Ok(addr("192.0.2.7:40000")));
        assert_eq!(rest, b"EHLO x\r\n");
        let (result, _) = read(b"PROXY TCP6 2001:db8::7 2001:db8::1 4 25\r\n").await;
        assert_eq!(result, Ok(addr("[2001:db8::7]:4")));
        let (result, _) = read(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").await;
        assert_eq!(result, Ok(None));
    }

    #[tokio::test]
    async fn v1_refuses_malformed_and_overlong_lines() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 192.0.2.1 40000\r\n"[..],
            b"PROXY TCP4 2001:db8::7 192.0.2.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 192.0.2.1 65536 25\r\n",
            b"PROXY TCP4 192.0.2.7 192.0.2.1 +1 25\r\n",
            b"PROXY TCP4 192.0.2.7 192.0.2.1 01 25\r\n",
            b"PROXY TCP5 192.0.2.7 192.0.2.1 1 25\r\n",
            b"PROXY TCP4  192.0.2.7 192.0.2.1 1 25\r\n",
        ] {
            assert!(
                matches!(read(bad).await.0, Err(ProxyError::Malformed(_))),
                "{bad:?}"
            );
        }
        let long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(200));
        assert_eq!(read(long.as_bytes()).await.0, Err(ProxyError::TooLong));
        assert_eq!(
            read(b"EHLO client.test\r\n").await.0,
            Err(ProxyError::Missing)
        );
        assert_eq!(read(b"PROXY").await.0, Err(ProxyError::Closed));
    }

    #[tokio::test]
    async fn v2_round_trips_and_leaves_the_rest() {
        for (source, destination) in [
            ("192.0.2.7:40000", "192.0.2.1:25"),
            ("[2001:db8::7]:40000", "[2001:db8::1]:25"),
        ] {
            let mut bytes = v2_header(source.parse().unwrap(), destination.parse().unwrap());
            bytes.extend_from_slice(b"\x16\x03\x01");
            let (result, rest) = read(&bytes).await;
            assert_eq!(result, Ok(addr(source)));
            assert_eq!(rest, b"\x16\x03\x01");
        }
    }

    #[tokio::test]
    async fn v2_local_oversized_and_truncated() {
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(read(&local).await.0, Ok(None));
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(read(&big).await.0, Err(ProxyError::Malformed(_))));
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(matches!(
            read(&short).await.0,
            Err(ProxyError::Malformed(_))
        ));
        let mut cut = V2_SIGNATURE.to_vec();
        cut.extend_from_slice(&[0x21, 0x11, 0, 12, 1, 2]);
        assert_eq!(read(&cut).await.0, Err(ProxyError::Closed));
        let mut v3 = V2_SIGNATURE.to_vec();
        v3.extend_from_slice(&[0x31, 0x11, 0, 0]);
        assert!(matches!(read(&v3).await.0, Err(ProxyError::Malformed(_))));
    }
}

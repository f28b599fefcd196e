//! The connect-back door, after `telnet relay-test.mail-abuse.org` (seeds/004): whoever
//! connects is told what will happen, may type a port number, and then watches the relay test
//! against their own address run line by line in the `>>>`/`<<<` style, ending with "System
//! appeared to reject relay attempts" or "System accepted relay attempts: it is an open
//! relay".
//!
//! The door never probes anything but the caller's own address: the only input it reads is a
//! port number, and the address comes from the TCP connection, not from the caller.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use relayward_probe::config::Target;
use relayward_probe::target::TargetInput;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::http_listener::ClientShares;
use crate::limits::{client_key, network_key};
use crate::live::{self, AsyncEmit};
use crate::record::Door;
use crate::service::{Request, Service};

/// How long the door waits for a port number before testing the default port.
pub const PORT_PROMPT: Duration = Duration::from_secs(10);
/// Telnet sessions at once (each is cheap; the tests they start are capped by the service).
const MAX_SESSIONS: usize = 256;
/// Sessions one caller (address, IPv6 /64) may hold at once, so that one caller cannot hold
/// all [`MAX_SESSIONS`] (each waits [`PORT_PROMPT`] before it even asks for a test).
pub const MAX_SESSIONS_PER_CLIENT: usize = 4;
/// Sessions the callers of one network (IPv4 /24, IPv6 /48, which has 65,536 /64s) may hold
/// at once between them.
pub const MAX_SESSIONS_PER_NETWORK: usize = 16;
/// Longest input line read (a port number and a telnet client's negotiation bytes).
const MAX_INPUT: usize = 256;

/// Accepts callers until `stop` turns true.
pub async fn serve(listener: TcpListener, service: Arc<Service>, mut stop: watch::Receiver<bool>) {
    let sessions = Arc::new(Semaphore::new(MAX_SESSIONS));
    let per_client = ClientShares::default();
    let per_network = ClientShares::default();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok((mut stream, peer)) = accepted else {
            continue;
        };
        let (network, prefix) = network_key(peer.ip());
        let share = match per_client.take(Some(client_key(peer.ip())), MAX_SESSIONS_PER_CLIENT) {
            None => Err(format!(
                "Refused: {MAX_SESSIONS_PER_CLIENT} telnet sessions from your address are open already, the most one address may hold; try again when one has ended\r\n"
            )),
            Some(client) => match per_network.take(Some(network), MAX_SESSIONS_PER_NETWORK) {
                None => Err(format!(
                    "Refused: {MAX_SESSIONS_PER_NETWORK} telnet sessions from your network ({network}/{prefix}) are open already, the most one network may hold; try again when one has ended\r\n"
                )),
                Some(network) => Ok((client, network)),
            },
        };
        let share = match share {
            Ok(share) => share,
            Err(refusal) => {
                // As for a full door: a line into a fresh socket's buffer, then closed.
                let _ = stream.write_all(refusal.as_bytes()).await;
                let _ = stream.shutdown().await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&sessions).try_acquire_owned() else {
            let _ = stream
                .write_all(b"Too many people are testing right now; try again in a minute.\r\n")
                .await;
            continue;
        };
        let service = Arc::clone(&service);
        tokio::spawn(async move {
            session(stream, peer, &service).await;
            drop((permit, share));
        });
    }
}

/// One caller, from greeting to the last line of the verdict.
async fn session(stream: TcpStream, peer: SocketAddr, service: &Arc<Service>) {
    let _ = stream.set_nodelay(true);
    let (mut read, write) = stream.into_split();
    let mut out = Lines(write);
    converse(&mut read, &mut out, peer, service).await;
    // A clean end: FIN after the last line, and whatever the client still sends (telnet
    // negotiation) read away, so the close is no reset that could eat the last line.
    let _ = out.0.shutdown().await;
    let mut sink = [0u8; 256];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while matches!(read.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

async fn converse(
    read: &mut tokio::net::tcp::OwnedReadHalf,
    out: &mut Lines,
    peer: SocketAddr,
    service: &Arc<Service>,
) {
    let client = peer.ip().to_canonical();
    let cfg = &service.config;
    let default_port = cfg.connect_back_port;
    let greeting = [
        format!(
            "relayward probe-service at {}: the open relay test.",
            cfg.public_name
        ),
        format!(
            "Connecting back to {client} (the address you came from) to test the mail server on port {default_port}."
        ),
        format!(
            "Type another port number and Enter to test that port of your address instead, or just Enter to start now ({} seconds).",
            PORT_PROMPT.as_secs()
        ),
        format!(
            "Network owners who never want to be probed: {} (see {}).",
            cfg.opt_out_text(),
            cfg.public_base_url()
        ),
    ];
    for line in &greeting {
        if !out.emit(line).await {
            return;
        }
    }
    let port = match read_port(read, default_port).await {
        Ok(port) => port,
        Err(why) => {
            let _ = out.emit(&why).await;
            return;
        }
    };
    let target = Target::new(
        SocketAddr::new(client, port),
        None,
        SocketAddr::new(client, port).to_string(),
    );
    let request = Request {
        label: target.label.clone(),
        inputs: vec![TargetInput::Addr(target)],
        door: Door::Telnet,
        client,
    };
    let live = match service.start(request).await {
        Ok(live) => live,
        Err(refusal) => {
            let _ = out.emit(&format!("Refused: {}", refusal.message)).await;
            return;
        }
    };
    let url = format!("{}/tests/{}", cfg.public_base_url(), live.id());
    if !out
        .emit(&format!("Test {}; results at {url}", live.id()))
        .await
    {
        return;
    }
    // The test goes on (and is stored) even if the caller hangs up now.
    live::follow(&live, 0, out).await;
    let _ = out.emit(&format!("Results: {url}")).await;
}

/// Reads what the caller typed within [`PORT_PROMPT`]: nothing or an empty line is the
/// default port; a port number is that port of the caller's own address; anything else is
/// refused with the reason (the door tests no other address).
async fn read_port<R: AsyncReadExt + Unpin>(
    read: &mut R,
    default_port: u16,
) -> Result<u16, String> {
    let mut typed = Vec::new();
    let deadline = tokio::time::Instant::now() + PORT_PROMPT;
    let mut buf = [0u8; 64];
    loop {
        let n = match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) => return Err("Closed before the test started.".to_string()),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(format!("Read error: {e}")),
        };
        typed.extend_from_slice(&buf[..n]);
        if typed.contains(&b'\n') || typed.contains(&b'\r') || typed.len() > MAX_INPUT {
            break;
        }
    }
    let text = telnet_text(&typed);
    let text = text.trim();
    if text.is_empty() {
        return Ok(default_port);
    }
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!(
            "Only a port number (1-65535) can be typed here: this door tests the address you came from and nothing else. Connect again and type e.g. 587, or use the web page for other servers. (You typed {:?}.)",
            relayward_protocol::text::escape_control(text)
        )),
    }
}

/// The printable text of what a telnet client sent up to the first line end: negotiation
/// sequences (`IAC` commands, subnegotiations) removed, as are bytes that are not ASCII.
fn telnet_text(bytes: &[u8]) -> String {
    const IAC: u8 = 255;
    const SB: u8 = 250;
    const SE: u8 = 240;
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            IAC => match bytes.get(i + 1) {
                Some(&IAC) => i += 2,
                Some(&SB) => {
                    // Skip to IAC SE.
                    let mut j = i + 2;
                    while j + 1 < bytes.len() && !(bytes[j] == IAC && bytes[j + 1] == SE) {
                        j += 1;
                    }
                    i = j + 2;
                }
                Some(251..=254) => i += 3,
                _ => i += 2,
            },
            b'\r' | b'\n' => break,
            b if b.is_ascii() && !b.is_ascii_control() => {
                out.push(b as char);
                i += 1;
            }
            _ => i += 1,
        }
    }
    out
}

/// Lines to the caller, CRLF-terminated.
struct Lines(tokio::net::tcp::OwnedWriteHalf);

impl AsyncEmit for Lines {
    async fn emit(&mut self, line: &str) -> bool {
        let mut data = Vec::with_capacity(line.len() + 2);
        data.extend_from_slice(line.as_bytes());
        data.extend_from_slice(b"\r\n");
        // A caller that stops reading must not hold the test's lines forever.
        matches!(
            tokio::time::timeout(Duration::from_secs(30), self.0.write_all(&data)).await,
            Ok(Ok(()))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_bytes_are_not_input() {
        assert_eq!(telnet_text(b"587\r\n"), "587");
        assert_eq!(telnet_text(b"\xff\xfb\x1f\xff\xfd\x01587\r\n"), "587");
        assert_eq!(telnet_text(b"\xff\xfa\x18\x00xterm\xff\xf0 25\n"), " 25");
        assert_eq!(telnet_text(b"\x1b[A\r\n"), "[A");
    }

    #[tokio::test]
    async fn the_port_prompt_takes_a_number_or_nothing_and_nothing_else() {
        let mut typed: &[u8] = b"2525\r\n";
        assert_eq!(read_port(&mut typed, 25).await, Ok(2525));
        let mut empty: &[u8] = b"\r\n";
        assert_eq!(read_port(&mut empty, 25).await, Ok(25));
        let mut other: &[u8] = b"192.0.2.1:25\r\n";
        let e = read_port(&mut other, 25).await.unwrap_err();
        assert!(
            e.contains("tests the address you came from and nothing else"),
            "{e}"
        );
        let mut zero: &[u8] = b"0\n";
        assert!(read_port(&mut zero, 25).await.is_err());
    }
}

//! A hostile or broken next hop, byte for byte: a transcript server answers each command line
//! with whatever bytes the test says (out-of-turn replies, drops), and the relay must neither
//! lose a message, nor count it delivered when it was not, nor loop.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relayward_queue::{Queue, RecipientStatus};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// What the transcript server does after a command line (or, for `"."`, a message's end).
#[derive(Clone)]
enum Act {
    /// Writes these bytes.
    Say(&'static [u8]),
    /// Writes these bytes and closes the connection.
    SayAndClose(&'static [u8]),
}

/// What a transcript server saw: every line, and the messages it read to their dot.
#[derive(Default)]
struct Seen {
    lines: Vec<String>,
    messages: usize,
    connections: usize,
}

/// A server on `ip` whose every connection greets with `answer("", 0)`, then answers each
/// line by `answer(line, n)` (`n`: how many messages this connection has read to the dot so far). A
/// reply to `DATA` that starts with `354` makes it read the content up to the dot, then
/// answer `"."`.
async fn transcript(
    ip: std::net::Ipv4Addr,
    answer: impl Fn(&str, usize) -> Act + Send + Sync + 'static,
) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind((IpAddr::V4(ip), 0)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let answer = Arc::new(answer);
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            log.lock().expect("seen").connections += 1;
            let (answer, log) = (Arc::clone(&answer), Arc::clone(&log));
            tokio::spawn(async move {
                let (read, mut write) = tcp.into_split();
                let mut read = BufReader::new(read);
                if !write_act(&mut write, &answer("", 0)).await {
                    return;
                }
                let mut messages = 0;
                let mut line = String::new();
                loop {
                    line.clear();
                    if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let command = line.trim_end().to_string();
                    log.lock().expect("seen").lines.push(command.clone());
                    let mut act = answer(&command, messages);
                    let in_data = command.eq_ignore_ascii_case("DATA")
                        && matches!(act, Act::Say(b) if b.starts_with(b"354"));
                    if in_data {
                        write_act(&mut write, &act).await;
                        loop {
                            line.clear();
                            if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == ".\r\n" {
                                break;
                            }
                        }
                        messages += 1;
                        log.lock().expect("seen").messages += 1;
                        act = answer(".", messages);
                    }
                    if !write_act(&mut write, &act).await {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Performs `act`; false when the connection is to end.
async fn write_act(write: &mut tokio::net::tcp::OwnedWriteHalf, act: &Act) -> bool {
    match act {
        Act::Say(bytes) => write.write_all(bytes).await.is_ok(),
        Act::SayAndClose(bytes) => {
            let _ = write.write_all(bytes).await;
            let _ = write.shutdown().await;
            false
        }
    }
}

/// A 220 greeting, an ordinary EHLO answer with PIPELINING, else `250 ok` to everything but DATA (354) and
/// its end (250).
fn plain(line: &str) -> Act {
    let upper = line.to_ascii_uppercase();
    if upper.is_empty() {
        Act::Say(b"220 hostile.test ESMTP\r\n")
    } else if upper.starts_with("EHLO") {
        Act::Say(b"250-hostile.test\r\n250 PIPELINING\r\n")
    } else if upper == "DATA" {
        Act::Say(b"354 go on\r\n")
    } else if upper == "QUIT" {
        Act::SayAndClose(b"221 bye\r\n")
    } else {
        Act::Say(b"250 ok\r\n")
    }
}

/// A relay whose MX for `far.test` is `mx` (DNS on `dns_ip`), with `messages` one-recipient
/// messages queued; one run of the runner, bounded.
async fn run_against(
    dns_ip: std::net::Ipv4Addr,
    mx: std::net::Ipv4Addr,
    port: u16,
    messages: &[&str],
) -> Relay {
    run_with(dns_ip, mx, port, messages, |_| {}).await
}

/// [`run_against`] with the configuration changed by `tweak`.
async fn run_with(
    dns_ip: std::net::Ipv4Addr,
    mx: std::net::Ipv4Addr,
    port: u16,
    messages: &[&str],
    tweak: impl FnOnce(&mut relayward_delivery::DeliveryConfig),
) -> Relay {
    let zone = Zone::default()
        .mx("far.test", 10, "mx.far.test")
        .a("mx.far.test", mx);
    let dns = DnsServer::start_on(dns_ip, zone).addr;
    let relay = Relay::new();
    for rcpt in messages {
        relay.enqueue("alice@local.test", &[rcpt], "hi").await;
    }
    let mut config = relay.config(Some(dns), port);
    config.max_per_destination = 1;
    config.timeouts = relayward_delivery::Timeouts::uniform(Duration::from_secs(2));
    tweak(&mut config);
    let runner = relay.runner(config);
    tokio::time::timeout(Duration::from_secs(30), runner.run_once())
        .await
        .expect("bounded");
    relay
}

async fn pending(relay: &Relay) -> Vec<String> {
    let mut left = Vec::new();
    for m in relay.queue.list().await.expect("list") {
        for r in m.recipients {
            if r.status == RecipientStatus::Pending {
                left.push(r.address);
            }
        }
    }
    left.sort();
    left
}

/// `354` and then the connection drops before the reply to the dot: the message is not
/// counted delivered (it stays queued, to be sent again: at least once).
#[tokio::test]
async fn a_drop_before_the_final_reply_defers() {
    let mx = ip(127, 70, 0, 2);
    let (addr, seen) = transcript(mx, |line, _| match line {
        "." => Act::SayAndClose(b""),
        l => plain(l),
    })
    .await;
    let relay = run_against(ip(127, 70, 0, 1), mx, addr.port(), &["bob@far.test"]).await;
    assert_eq!(seen.lock().expect("seen").messages, 1);
    assert_eq!(pending(&relay).await, ["bob@far.test"]);
}

/// A final reply sent before the content (with the `354`): the reply the relay reads after
/// its dot is that early one, not the answer to the message (here a refusal). The relay must
/// not count the message delivered on a reply that came out of turn: it defers.
#[tokio::test]
async fn a_final_reply_ahead_of_the_content_is_not_a_delivery() {
    let mx = ip(127, 71, 0, 2);
    let (addr, seen) = transcript(mx, |line, _| match line {
        "DATA" => Act::Say(b"354 go on\r\n250 2.0.0 queued before you sent it\r\n"),
        "." => Act::Say(b"550 5.7.1 refused after all\r\n"),
        l => plain(l),
    })
    .await;
    let relay = run_against(ip(127, 71, 0, 1), mx, addr.port(), &["bob@far.test"]).await;
    assert!(seen.lock().expect("seen").messages <= 1);
    assert_eq!(pending(&relay).await, ["bob@far.test"]);
}

/// A reply nobody asked for after a message's end (a server that answers the dot twice):
/// the connection is out of step, so it is not reused; the next message goes on a new
/// connection and is delivered, not refused on the stale replies.
#[tokio::test]
async fn a_connection_with_replies_out_of_turn_is_not_reused() {
    let mx = ip(127, 72, 0, 2);
    let (addr, seen) = transcript(mx, |line, n| match line {
        "." if n == 1 => Act::Say(b"250 2.0.0 queued\r\n250 2.0.0 queued again\r\n"),
        l => plain(l),
    })
    .await;
    let relay = run_against(
        ip(127, 72, 0, 1),
        mx,
        addr.port(),
        &["bob@far.test", "carol@far.test"],
    )
    .await;
    assert!(
        pending(&relay).await.is_empty(),
        "{:?}",
        pending(&relay).await
    );
    let seen = seen.lock().expect("seen");
    assert_eq!(seen.messages, 2);
    assert_eq!(seen.connections, 2, "{:?}", seen.lines);
}

/// An MX host whose address is `0.0.0.0`: a connection to it reaches this host's loopback
/// listener, which here is the relay's own. The runner must see the loop before it connects
/// (and bounce "loops back to myself") instead of queueing the message to itself.
#[tokio::test]
async fn an_mx_at_the_unspecified_address_is_a_loop_to_our_own_listener() {
    let (own, seen) = transcript(ip(127, 0, 0, 1), |line, _| plain(line)).await;
    let zone = Zone::default()
        .mx("far.test", 10, "mx.far.test")
        .a("mx.far.test", ip(0, 0, 0, 0));
    let dns = DnsServer::start_on(ip(127, 73, 0, 1), zone).addr;
    let relay = Relay::new();
    let id = relay
        .enqueue("alice@local.test", &["bob@far.test"], "hi")
        .await;
    let listeners = relayward_delivery::OwnListeners::default();
    listeners.set(vec![own]);
    let context = relayward_delivery::DeliveryContext::new(
        relay.config(Some(dns), own.port()),
        relay.router(),
    )
    .expect("context")
    .with_own_listeners(listeners);
    let runner = relayward_delivery::Runner::with_context(relay.dyn_queue(), context);
    // The first run bounces the message, the second delivers the bounce to alice's Maildir.
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(30), runner.run_once())
            .await
            .expect("bounded");
    }
    assert_eq!(
        seen.lock().expect("seen").connections,
        0,
        "connected to itself"
    );
    assert!(relay.queue.get(&id).await.is_err(), "not bounced");
    let bounces = relay.maildir("local.test", "alice");
    let bounce = String::from_utf8_lossy(bounces.first().map_or(&[][..], |b| b)).into_owned();
    assert!(bounce.contains("loops back to myself"), "{bounce}");
}

/// Under `[[tls_policy]] mode = "require-verified"` the mail waits for TLS: a server (or a
/// man in the middle) answering STARTTLS with a 5xx must not turn that into a bounce (RFC
/// 8461 §5 likewise: no permanent failure for want of the TLS a policy demands).
#[tokio::test]
async fn a_5xx_to_starttls_under_a_required_policy_defers() {
    use relayward_delivery::config::{DomainTlsMode, DomainTlsPolicy};
    let mx = ip(127, 74, 0, 2);
    let (addr, seen) = transcript(mx, |line, _| match line {
        l if l.starts_with("EHLO") => Act::Say(b"250-hostile.test\r\n250 STARTTLS\r\n"),
        "STARTTLS" => Act::Say(b"554 5.7.0 no TLS for you\r\n"),
        l => plain(l),
    })
    .await;
    let relay = run_with(ip(127, 74, 0, 1), mx, addr.port(), &["bob@far.test"], |c| {
        c.tls_policies = vec![DomainTlsPolicy {
            domain: "far.test".into(),
            mode: DomainTlsMode::RequireVerified,
        }];
    })
    .await;
    assert_eq!(seen.lock().expect("seen").messages, 0);
    assert_eq!(pending(&relay).await, ["bob@far.test"]);
}

/// The same for a 5xx greeting, or a 5xx to EHLO and HELO, before TLS is up: under a
/// required policy nothing said in clear text may bounce the mail.
#[tokio::test]
async fn a_5xx_in_clear_text_under_a_required_policy_defers() {
    use relayward_delivery::config::{DomainTlsMode, DomainTlsPolicy};
    let refusals: [fn(&str, usize) -> Act; 2] = [
        |line, _| match line {
            "" => Act::SayAndClose(b"554 5.7.1 go away\r\n"),
            l => plain(l),
        },
        |line, _| match line {
            l if l.starts_with("EHLO") || l.starts_with("HELO") => {
                Act::Say(b"550 5.7.1 not you\r\n")
            }
            l => plain(l),
        },
    ];
    for (n, refusal) in (1..).zip(refusals) {
        let mx = ip(127, 75, n, 2);
        let (addr, _) = transcript(mx, refusal).await;
        let relay = run_with(ip(127, 75, n, 1), mx, addr.port(), &["bob@far.test"], |c| {
            c.tls_policies = vec![DomainTlsPolicy {
                domain: "far.test".into(),
                mode: DomainTlsMode::RequireVerified,
            }];
        })
        .await;
        assert_eq!(pending(&relay).await, ["bob@far.test"], "refusal {n}");
    }
}

/// A host that greets with a 5xx (a misconfigured MX, one that refuses us by address) is
/// skipped as Postfix's `smtp_skip_5xx_greeting` does: the mail waits for the next attempt
/// instead of bouncing on a greeting that says nothing about the recipient.
/// ```text
/// (connect)  <- 554 5.7.1 no mail from you       => deferred, not bounced
/// ```
#[tokio::test]
async fn a_5xx_greeting_defers_instead_of_bouncing() {
    let mx = ip(127, 82, 0, 2);
    let (addr, seen) = transcript(mx, |line, _| match line {
        "" => Act::SayAndClose(b"554 5.7.1 no mail from you\r\n"),
        l => plain(l),
    })
    .await;
    let relay = run_against(ip(127, 82, 0, 1), mx, addr.port(), &["bob@far.test"]).await;
    assert_eq!(seen.lock().expect("seen").messages, 0);
    assert_eq!(pending(&relay).await, ["bob@far.test"]);
}

/// A refusal carrying terminal escapes, a NUL and bytes that are not UTF-8: the bounce to our
/// own user quotes it, but with every control character escaped (no NUL in a message, no
/// escape sequence that redraws the reader's terminal).
#[tokio::test]
async fn controls_in_a_refusal_are_escaped_in_the_bounce() {
    let mx = ip(127, 76, 0, 2);
    let (addr, _) = transcript(mx, |line, _| match line {
        l if l.starts_with("RCPT") => Act::Say(b"550 5.1.1 \x1b[2Jgone\x00 \xff\xfe away\x07\r\n"),
        l => plain(l),
    })
    .await;
    let relay = run_against(ip(127, 76, 0, 1), mx, addr.port(), &["bob@far.test"]).await;
    // The bounce is queued to alice; a second run puts it in her Maildir.
    let runner = relay.runner(relay.config(None, 1));
    tokio::time::timeout(Duration::from_secs(30), runner.run_once())
        .await
        .expect("bounded");
    let bounces = relay.maildir("local.test", "alice");
    let bounce = bounces.first().cloned().unwrap_or_default();
    let text = String::from_utf8_lossy(&bounce).into_owned();
    assert!(text.contains("gone"), "{text}");
    assert!(
        !bounce.iter().any(|&b| b == 0x1b || b == 0 || b == 0x07),
        "{text:?}"
    );
}

/// Partial acceptance: one recipient taken, one `452` (too many recipients), one `550`. The
/// message goes once, to the one taken; the `452` waits, the `550` bounces.
#[tokio::test]
async fn partial_acceptance_sends_once_and_keeps_the_rest_apart() {
    let mx = ip(127, 77, 0, 2);
    let (addr, seen) = transcript(mx, |line, _| match line {
        l if l.starts_with("RCPT TO:<later@") => Act::Say(b"452 4.5.3 too many recipients\r\n"),
        l if l.starts_with("RCPT TO:<gone@") => Act::Say(b"550 5.1.1 no such user\r\n"),
        l => plain(l),
    })
    .await;
    let zone = Zone::default()
        .mx("far.test", 10, "mx.far.test")
        .a("mx.far.test", mx);
    let dns = DnsServer::start_on(ip(127, 77, 0, 1), zone).addr;
    let relay = Relay::new();
    relay
        .enqueue(
            "alice@local.test",
            &["bob@far.test", "later@far.test", "gone@far.test"],
            "hi",
        )
        .await;
    let runner = relay.runner(relay.config(Some(dns), addr.port()));
    tokio::time::timeout(Duration::from_secs(30), runner.run_once())
        .await
        .expect("bounded");
    assert_eq!(seen.lock().expect("seen").messages, 1);
    // later@ waits; the bounce for gone@ is queued to alice.
    assert_eq!(
        pending(&relay).await,
        ["alice@local.test", "later@far.test"]
    );
}

/// Replies that cannot be trusted to the dot: codes that change between the lines of one
/// reply, a reply without its line end before the close, a `421` — each defers, never
/// delivers, never bounces.
#[tokio::test]
async fn untrustworthy_final_replies_defer() {
    let finals: [&'static [u8]; 3] = [
        b"250-2.0.0 queued\r\n550 5.0.0 or not\r\n",
        b"250 2.0.0 queued",
        b"421 4.3.2 shutting down\r\n",
    ];
    for (n, last) in (1..).zip(finals) {
        let mx = ip(127, 78, n, 2);
        let (addr, _) = transcript(mx, move |line, _| match line {
            "." => Act::SayAndClose(last),
            l => plain(l),
        })
        .await;
        let relay = run_against(ip(127, 78, n, 1), mx, addr.port(), &["bob@far.test"]).await;
        assert_eq!(pending(&relay).await, ["bob@far.test"], "final reply {n}");
    }
}

/// `250` to the dot and then the connection is reset: delivered, and only once (the QUIT
/// that fails changes nothing).
#[tokio::test]
async fn a_reset_after_the_final_250_is_still_one_delivery() {
    let mx = ip(127, 79, 0, 2);
    let (addr, seen) = transcript(mx, |line, _| match line {
        "." => Act::SayAndClose(b"250 2.0.0 queued\r\n"),
        l => plain(l),
    })
    .await;
    let relay = run_against(ip(127, 79, 0, 1), mx, addr.port(), &["bob@far.test"]).await;
    assert!(pending(&relay).await.is_empty());
    assert!(relay.queue.list().await.expect("list").is_empty());
    assert_eq!(seen.lock().expect("seen").messages, 1);
}

/// A domain with many MX hosts that each accept the connection and then never greet: each
/// costs its greeting timeout, so one attempt stops after a few such sessions (the recipient
/// waits for its retry) instead of holding its delivery slot through all of them.
#[tokio::test]
async fn an_attempt_makes_a_bounded_number_of_sessions() {
    let mx = ip(127, 80, 0, 2);
    let (addr, seen) = transcript(mx, |line, _| match line {
        "" => Act::Say(b""),
        l => plain(l),
    })
    .await;
    let mut zone = Zone::default();
    for n in 0..8 {
        let host = format!("mx{n}.far.test");
        zone = zone.mx("far.test", 10, &host).a(&host, mx);
    }
    let dns = DnsServer::start_on(ip(127, 80, 0, 1), zone).addr;
    let relay = Relay::new();
    relay
        .enqueue("alice@local.test", &["bob@far.test"], "hi")
        .await;
    let mut config = relay.config(Some(dns), addr.port());
    config.timeouts = relayward_delivery::Timeouts::uniform(Duration::from_millis(300));
    let runner = relay.runner(config);
    tokio::time::timeout(Duration::from_secs(30), runner.run_once())
        .await
        .expect("bounded");
    assert_eq!(pending(&relay).await, ["bob@far.test"]);
    assert_eq!(seen.lock().expect("seen").connections, 3);
}

/// A refusal of 255 lines of 4000 octets (a megabyte, within the reader's limits) to the
/// RCPT: what the queue keeps of it is cut short, not a megabyte per recipient.
#[tokio::test]
async fn a_megabyte_reply_is_kept_short() {
    static HUGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let huge = HUGE.get_or_init(|| {
        let mut reply = Vec::new();
        for _ in 0..255 {
            reply.extend_from_slice(b"451-4.3.0 ");
            reply.extend_from_slice(&[b'x'; 4000]);
            reply.extend_from_slice(b"\r\n");
        }
        reply.extend_from_slice(b"451 4.3.0 later\r\n");
        reply
    });
    let mx = ip(127, 81, 0, 2);
    let (addr, _) = transcript(mx, move |line, _| match line {
        l if l.starts_with("RCPT") => Act::Say(huge),
        l => plain(l),
    })
    .await;
    let relay = run_against(ip(127, 81, 0, 1), mx, addr.port(), &["bob@far.test"]).await;
    let queued = relay.queue.list().await.expect("list");
    let error = queued[0].recipients[0]
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(error.starts_with("451 4.3.0 xxx"), "{}", &error[..40]);
    assert!(error.len() < 2000, "{} octets kept", error.len());
}

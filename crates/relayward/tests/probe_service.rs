//! `relayward probe-service` end to end: the real binary, its telnet door and its JSON API,
//! probing real `relayward serve` instances and scripted servers on loopback.
//!
//! Callers bind 127.0.0.3 (and 127.0.0.4–6) as their source address, so the connect-back door
//! probes exactly that address; every port is chosen by the system. The "deliberately open
//! test relay" is a `relayward serve` whose `trusted_networks` (127.0.0.0/8) covers the
//! prober's loopback source address.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use relayward_testkit::dns;
use relayward_testkit::http::{Http, bound_connect};
use relayward_testkit::net::common_port;
use support::TestServer;

/// A relayward mx listener on `ip` for `example.test`; `trusted` is the `trusted_networks` list.
fn relay_config(ip: &str, trusted: &str) -> String {
    format!(
        r#"hostname = "mx.example.test"
data_dir = "DATA_DIR"

[[listen]]
address = "{ip}:0"
kind = "mx"

[relay]
local_domains = ["example.test"]
trusted_networks = [{trusted}]
"#
    )
}

/// A closed relay (trusts nobody) on `ip`.
fn closed_relay(ip: &str) -> TestServer {
    TestServer::start(&relay_config(ip, ""))
}

/// A relay that relays for the prober (it trusts all of 127.0.0.0/8): OPEN.
fn open_relay(ip: &str) -> TestServer {
    TestServer::start(&relay_config(ip, "\"127.0.0.0/8\""))
}

/// The service on loopback ports, plus `extra` keys (a 5 s `test_timeout` unless given).
fn service_config(extra: &str) -> String {
    let timeout = if extra.contains("test_timeout") {
        ""
    } else {
        "test_timeout = \"5s\""
    };
    format!(
        r#"[probe_service]
telnet_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
public_name = "relay-test.example.org"
data_dir = "DATA_DIR"
{timeout}
{extra}
"#
    )
}

/// A port on `ip` where nothing listens.
fn unused_port(ip: &str) -> u16 {
    common_port(&[ip.parse::<std::net::IpAddr>().expect("ip")])
}

/// A listener on `ip` that only counts the connections it gets: proof that nothing was sent.
fn counting_listener(ip: &str) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((ip, 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            if stream.is_ok() {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (port, count)
}

/// A telnet caller from a chosen loopback address.
struct Telnet {
    reader: BufReader<TcpStream>,
    seen: Vec<String>,
}

impl Telnet {
    fn call(door: SocketAddr, from: &str) -> Telnet {
        let stream = bound_connect(from.parse().expect("ip"), door);
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        Telnet {
            reader: BufReader::new(stream),
            seen: Vec::new(),
        }
    }

    fn send(&mut self, text: &str) {
        self.reader
            .get_mut()
            .write_all(text.as_bytes())
            .expect("type");
    }

    /// The next line, without CRLF; `None` when the service hung up.
    fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => {
                assert!(line.ends_with("\r\n"), "telnet lines end in CRLF: {line:?}");
                let line = line.trim_end_matches("\r\n").to_string();
                self.seen.push(line.clone());
                Some(line)
            }
            Err(e) => panic!("read: {e}\nso far:\n{}", self.seen.join("\n")),
        }
    }

    /// Lines up to and including the first that `stop` accepts.
    fn until(&mut self, stop: impl Fn(&str) -> bool) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let Some(line) = self.line() else {
                panic!(
                    "hung up before the expected line:\n{}",
                    self.seen.join("\n")
                );
            };
            let done = stop(&line);
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    /// Every line until the service hangs up.
    fn rest_of_session(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(line) = self.line() {
            lines.push(line);
        }
        lines
    }
}

/// `Test ID; results at URL` → ID.
fn test_id(lines: &[String]) -> String {
    let line = lines
        .iter()
        .find(|l| l.starts_with("Test "))
        .unwrap_or_else(|| panic!("no test id in:\n{}", lines.join("\n")));
    line["Test ".len()..]
        .split(';')
        .next()
        .expect("id")
        .to_string()
}

/// Polls the API until the test is done; returns its record.
fn wait_done(api: &Http, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let response = api.get(&format!("/api/v1/tests/{id}"));
        assert_eq!(response.status, 200, "{}", response.body);
        let record = response.json();
        if record["verdict"] != "RUNNING" {
            return record;
        }
        assert!(Instant::now() < deadline, "test {id} never finished");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `POST /api/v1/tests` → the new id (asserting 201).
fn start_test(api: &Http, target: &str) -> String {
    let response = api.post_json("/api/v1/tests", &format!(r#"{{"target": "{target}"}}"#));
    assert_eq!(response.status, 201, "{}", response.body);
    response.json()["id"].as_str().expect("id").to_string()
}

fn position(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{}", lines.join("\n")))
}

#[test]
fn a_telnet_caller_running_relayward_serve_watches_the_closed_transcript_as_it_happens() {
    let relay = closed_relay("127.0.0.3");
    let port = relay.addr("mx").port();
    let service = TestServer::start_probe_service(&service_config(&format!(
        "connect_back_port = {port}\nallow_private_targets = true"
    )));
    let api = Http::new(service.addr("http"));
    let mut caller = Telnet::call(service.addr("telnet"), "127.0.0.3");
    let greeting = caller.until(|l| l.starts_with("Network owners"));
    assert_eq!(
        greeting[0],
        "relayward probe-service at relay-test.example.org: the open relay test."
    );
    assert_eq!(
        greeting[1],
        format!(
            "Connecting back to 127.0.0.3 (the address you came from) to test the mail server on port {port}."
        )
    );
    caller.send("\r\n");
    let head = caller.until(|l| l.starts_with(">>> EHLO"));
    let id = test_id(&head);
    // The dialogue is on the caller's screen while the test is still running.
    let during = api.get(&format!("/api/v1/tests/{id}")).json();
    assert_eq!(during["verdict"], "RUNNING", "{head:?}");
    assert!(
        head.contains(&format!("Connecting to 127.0.0.3:{port} ...")),
        "{head:?}"
    );
    assert!(
        head.contains(&"<<< 220 mx.example.test ESMTP relayward".to_string()),
        "{head:?}"
    );
    assert_eq!(
        head.last().map(String::as_str),
        Some(">>> EHLO relay-test.example.org")
    );

    let rest = caller.rest_of_session();
    let test = position(&rest, ":Relay test: plain-external");
    assert_eq!(
        rest[test + 1],
        ">>> MAIL FROM:<antispam@relay-test.example.org>"
    );
    assert_eq!(rest[test + 3], ">>> RCPT TO:<relaytest@example.net>");
    assert_eq!(
        rest[test + 4],
        "<<< 554 5.7.1 <relaytest@example.net>: Relay access denied"
    );
    let end = rest.len();
    assert_eq!(
        rest[end - 4],
        "Tested host banner: mx.example.test ESMTP relayward"
    );
    assert_eq!(rest[end - 3], "System appeared to reject relay attempts");
    assert_eq!(
        rest[end - 2],
        "Verdict: CLOSED - all 66 relay tricks refused"
    );
    assert_eq!(
        rest[end - 1],
        format!(
            "Results: http://relay-test.example.org:{}/tests/{id}",
            service.addr("http").port()
        )
    );
    let record = wait_done(&api, &id);
    assert_eq!(record["verdict"], "CLOSED");
    assert_eq!(record["door"], "telnet");
    assert_eq!(record["target"], format!("127.0.0.3:{port}"));
    // One log line per test: client, target, verdict, duration.
    service.wait_for_log("probe test finished");
    let log = service.log();
    let line = log
        .lines()
        .find(|l| l.contains("probe test finished"))
        .expect("log line");
    for needle in [
        &format!("test={id}"),
        "door=\"telnet\"",
        "client=127.0.0.3",
        &format!("target=127.0.0.3:{port}"),
        "verdict=CLOSED",
        "duration_ms=",
    ] {
        assert!(line.contains(needle), "{needle} missing from {line}");
    }
}

#[test]
fn a_telnet_caller_may_type_a_port_and_hears_its_open_relay_is_one() {
    let relay = open_relay("127.0.0.3");
    let open_port = relay.addr("mx").port();
    // The default port has nothing listening: only the typed port can give this result.
    let default_port = unused_port("127.0.0.3");
    let service = TestServer::start_probe_service(&service_config(&format!(
        "connect_back_port = {default_port}\nallow_private_targets = true"
    )));
    let api = Http::new(service.addr("http"));
    let mut caller = Telnet::call(service.addr("telnet"), "127.0.0.3");
    caller.until(|l| l.starts_with("Network owners"));
    caller.send(&format!("{open_port}\r\n"));
    let head = caller.until(|l| l.starts_with("<<< 220"));
    let id = test_id(&head);
    assert_eq!(
        api.get(&format!("/api/v1/tests/{id}")).json()["verdict"],
        "RUNNING"
    );
    assert!(
        head.contains(&format!("Connecting to 127.0.0.3:{open_port} ...")),
        "{head:?}"
    );
    let rest = caller.rest_of_session();
    let test = position(&rest, ":Relay test: plain-external");
    assert_eq!(rest[test + 3], ">>> RCPT TO:<relaytest@example.net>");
    assert!(rest[test + 4].starts_with("<<< 250"), "{}", rest[test + 4]);
    let end = rest.len();
    assert_eq!(
        rest[end - 3],
        "System accepted relay attempts: it is an open relay"
    );
    assert!(
        rest[end - 2].starts_with("Verdict: OPEN - "),
        "{}",
        rest[end - 2]
    );
    assert!(
        rest[end - 2].contains("trusted networks"),
        "{}",
        rest[end - 2]
    );
    assert_eq!(wait_done(&api, &id)["verdict"], "OPEN");
}

#[test]
fn the_telnet_door_probes_only_the_callers_address_and_refuses_a_private_one() {
    let (port, connections) = counting_listener("127.0.0.3");
    let service =
        TestServer::start_probe_service(&service_config(&format!("connect_back_port = {port}")));
    // Anything but a port number is refused: the door tests no other address.
    let mut other = Telnet::call(service.addr("telnet"), "127.0.0.3");
    other.until(|l| l.starts_with("Network owners"));
    other.send("192.0.2.1:25\r\n");
    let answer = other.rest_of_session();
    assert!(
        answer[0].starts_with("Only a port number (1-65535) can be typed here: this door tests the address you came from and nothing else."),
        "{answer:?}"
    );
    // With allow_private_targets = false a loopback caller is refused before any connection.
    let mut caller = Telnet::call(service.addr("telnet"), "127.0.0.3");
    caller.until(|l| l.starts_with("Network owners"));
    caller.send("\r\n");
    assert_eq!(
        caller.rest_of_session(),
        [
            "Refused: 127.0.0.3 is a loopback address (RFC 1122): this service tests mail servers on the public Internet only"
        ]
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(connections.load(Ordering::SeqCst), 0, "nothing may be sent");
    assert!(!service.log().contains("probe test finished"));
}

/// One caller cannot take the telnet door: an address (an IPv6 /64) holds at most 4 sessions
/// at once, the 5th hears why and is closed, and other callers are greeted meanwhile. (The
/// door's 256 sessions used to be one pool: 256 connections from one address, each sitting
/// out its 10 s at the port prompt and opened again, kept everyone else out.)
///
/// ```text
/// 4 × connect from 127.0.0.5, say nothing     -> greeted, waiting at the prompt
/// 5th connect from 127.0.0.5                  -> "Refused: 4 telnet sessions from your address ...", closed
/// connect from 127.0.0.6                      -> greeted
/// ```
#[test]
fn one_caller_cannot_hold_every_telnet_session() {
    let service = TestServer::start_probe_service(&service_config(""));
    let door = service.addr("telnet");
    let mut held: Vec<Telnet> = (0..4)
        .map(|_| {
            let mut caller = Telnet::call(door, "127.0.0.5");
            caller.until(|l| l.starts_with("Network owners"));
            caller
        })
        .collect();
    let mut fifth = Telnet::call(door, "127.0.0.5");
    let answer = fifth.rest_of_session();
    assert_eq!(
        answer,
        [
            "Refused: 4 telnet sessions from your address are open already, the most one address may hold; try again when one has ended"
        ]
    );
    let mut other = Telnet::call(door, "127.0.0.6");
    other.until(|l| l.starts_with("Network owners"));
    // A session that ends gives its place back.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = Telnet::call(door, "127.0.0.5");
        if again
            .line()
            .is_some_and(|l| l.starts_with("relayward probe-service at"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the place was not given back");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(held);
}

#[test]
fn the_api_starts_a_test_and_serves_its_json_twin() {
    let relay = closed_relay("127.0.0.3");
    let target = relay.addr("mx").to_string();
    // A blocklist that lists the target, served on loopback: the page and the JSON show it.
    let dns = dns::DnsServer::start(
        dns::Zone::new().a("3.0.0.127.bl.test", "127.0.0.2".parse().unwrap()),
    );
    let service = TestServer::start_probe_service(&service_config(&format!(
        "allow_private_targets = true\nnameservers = [\"{}\"]\ndnsbl_zones = [\"bl.test\"]",
        dns.addr
    )));
    let api = Http::new(service.addr("http"));
    let created = api.post_json("/api/v1/tests", &format!(r#"{{"target": "{target}"}}"#));
    assert_eq!(created.status, 201, "{}", created.body);
    let body = created.json();
    let id = body["id"].as_str().expect("id").to_string();
    assert_eq!(body["url"], format!("/tests/{id}"));
    assert_eq!(
        created.header("location"),
        Some(format!("/api/v1/tests/{id}").as_str())
    );
    let record = wait_done(&api, &id);
    assert_eq!(record["id"], id.as_str());
    assert_eq!(record["target"], target.as_str());
    assert_eq!(record["verdict"], "CLOSED");
    assert_eq!(record["door"], "api");
    assert_eq!(record["reason"], "all 66 relay tricks refused");
    // The probe's --json report for the tested address, as `relayward probe --json` has it.
    let report = &record["reports"][0];
    assert_eq!(report["target"], target.as_str());
    assert_eq!(report["verdict"], "CLOSED");
    assert_eq!(report["findings"]["starttls_offered"], true);
    assert_eq!(
        report["findings"]["tls"]["certificate"]["subject"],
        "CN=mx.example.test"
    );
    let tests = report["tests"].as_array().expect("tests");
    assert_eq!(tests[0]["id"], "plain-external");
    assert_eq!(tests[0]["rcpt_to"], "RCPT TO:<relaytest@example.net>");
    assert_eq!(tests[0]["rcpt_reply"]["code"], 554);
    assert_eq!(tests[0]["outcome"], "refused");
    assert_eq!(report["findings"]["dnsbl"][0]["zone"], "bl.test");
    assert_eq!(report["findings"]["dnsbl"][0]["listed"], true);
    assert!(record["transcript"].as_array().expect("transcript").len() > 100);
    // Its page is permanent and says the same.
    let page = api.get(&format!("/tests/{id}"));
    assert_eq!(page.status, 200);
    assert!(page.body.contains(">CLOSED</p>"), "{}", page.body);
    assert!(
        page.body
            .contains("data-id=\"plain-external\" data-outcome=\"refused\"")
    );
    assert!(
        page.header("content-security-policy")
            .is_some_and(|c| c.contains("default-src 'none'"))
    );
    // Unknown ids and malformed requests get JSON errors.
    let missing = api.get("/api/v1/tests/0000000000000nosuch");
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].as_str().is_some());
    for (body, needle) in [
        ("{\"targt\": \"x\"}", "unknown field `targt`"),
        ("not json", "JSON object like"),
        ("{\"target\": \"192.0.2.0/24\"}", "one server at a time"),
        ("{\"target\": \"300.1.1.1\"}", "not an IPv4 address"),
    ] {
        let refused = api.post_json("/api/v1/tests", body);
        assert_eq!(refused.status, 400, "{body}: {}", refused.body);
        let error = refused.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(error.contains(needle), "{body}: {error}");
    }
}

#[test]
fn private_targets_are_refused_with_no_connection_and_no_lookup() {
    let (port, connections) = counting_listener("127.0.0.5");
    let dns = dns::DnsServer::start(
        dns::Zone::new()
            .a("loop.test", "127.0.0.5".parse().unwrap())
            .a("lan.test", "10.1.2.3".parse().unwrap())
            .mx("corp.test", 10, "mail.corp.test")
            .a("mail.corp.test", "192.168.1.1".parse().unwrap()),
    );
    let service = TestServer::start_probe_service(&service_config(&format!(
        "nameservers = [\"{}\"]\ndnsbl_zones = [\"bl.test\"]",
        dns.addr
    )));
    let api = Http::new(service.addr("http"));
    for (target, why) in [
        (format!("127.0.0.5:{port}"), "a loopback address (RFC 1122)"),
        (
            format!("[::ffff:127.0.0.5]:{port}"),
            "a loopback address (RFC 1122)",
        ),
        (format!("[::1]:{port}"), "a loopback address (RFC 4291)"),
        ("0.0.0.0".to_string(), "\\\"this network\\\""),
        ("10.0.0.1".to_string(), "a private address (RFC 1918)"),
        ("172.16.5.4".to_string(), "a private address (RFC 1918)"),
        ("192.168.0.1".to_string(), "a private address (RFC 1918)"),
        ("100.64.0.1".to_string(), "carrier-grade NAT"),
        ("169.254.169.254".to_string(), "a link-local address"),
        ("192.0.2.1".to_string(), "TEST-NET-1"),
        ("198.51.100.1".to_string(), "TEST-NET-2"),
        ("203.0.113.1".to_string(), "TEST-NET-3"),
        ("198.18.0.1".to_string(), "benchmarking"),
        ("224.0.0.1".to_string(), "a multicast address"),
        ("240.0.0.1".to_string(), "a reserved address"),
        ("255.255.255.255".to_string(), "broadcast"),
        ("[fe80::1]:25".to_string(), "a link-local address"),
        ("[fc00::1]:25".to_string(), "a unique local address"),
        ("[2001:db8::1]:25".to_string(), "a documentation address"),
        ("[ff02::1]:25".to_string(), "a multicast address"),
        (
            "[64:ff9b::7f00:5]:25".to_string(),
            "standing for the IPv4 address 127.0.0.5",
        ),
    ] {
        let refused = api.post_json("/api/v1/tests", &format!(r#"{{"target": "{target}"}}"#));
        assert_eq!(refused.status, 403, "{target}: {}", refused.body);
        assert!(
            refused.body.contains(why) && refused.body.contains("public Internet only"),
            "{target}: {}",
            refused.body
        );
        assert!(
            refused.json().get("retry_after").is_none(),
            "{}",
            refused.body
        );
    }
    assert_eq!(
        dns.queries(),
        Vec::<String>::new(),
        "literal addresses need no lookup"
    );
    // The form answers the same, as a page.
    let page = api.post_form("/tests", "target=10.0.0.1&kind=server&ports=25");
    assert_eq!(page.status, 403);
    assert!(
        page.body
            .contains("10.0.0.1 is a private address (RFC 1918)"),
        "{}",
        page.body
    );

    // A name is looked up, and its private address refused before any connection.
    let refused = api.post_json(
        "/api/v1/tests",
        &format!(r#"{{"target": "loop.test:{port}"}}"#),
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(
        refused.json()["error"],
        "loop.test resolves to 127.0.0.5, which is a loopback address (RFC 1122): this service tests mail servers on the public Internet only"
    );
    let refused = api.post_json("/api/v1/tests", r#"{"target": "mx:corp.test"}"#);
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused
            .body
            .contains("mail.corp.test resolves to 192.168.1.1, which is a private address"),
        "{}",
        refused.body
    );
    let page = api.post_form("/tests", "target=lan.test&kind=server&ports=");
    assert_eq!(page.status, 403);
    assert!(
        page.body.contains("lan.test resolves to 10.1.2.3"),
        "{}",
        page.body
    );
    let queries = dns.queries();
    assert!(queries.contains(&"loop.test. A".to_string()), "{queries:?}");
    assert!(
        queries.contains(&"corp.test. MX".to_string()),
        "{queries:?}"
    );
    assert!(
        !queries.iter().any(|q| q.contains("bl.test")),
        "no DNSBL lookup: {queries:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(connections.load(Ordering::SeqCst), 0, "nothing may be sent");
    assert!(!service.log().contains("probe test finished"));
}

#[test]
fn excluded_networks_are_never_touched_even_when_private_targets_are_allowed() {
    let (port, connections) = counting_listener("127.0.0.6");
    let dns = dns::DnsServer::start(dns::Zone::new().a("ex.test", "127.0.0.6".parse().unwrap()));
    let service = TestServer::start_probe_service(&service_config(&format!(
        "allow_private_targets = true\nexclude = [\"127.0.0.6/32\"]\nconnect_back_port = {port}\nnameservers = [\"{}\"]",
        dns.addr
    )));
    let api = Http::new(service.addr("http"));
    let refused = api.post_json(
        "/api/v1/tests",
        &format!(r#"{{"target": "127.0.0.6:{port}"}}"#),
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(
        refused.json()["error"],
        "127.0.0.6 is in 127.0.0.6/32, a network whose owner asked never to be probed by this service"
    );
    assert_eq!(dns.queries(), Vec::<String>::new());
    let refused = api.post_json(
        "/api/v1/tests",
        &format!(r#"{{"target": "ex.test:{port}"}}"#),
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused
            .body
            .contains("ex.test resolves to 127.0.0.6, which is in 127.0.0.6/32")
    );
    let mut caller = Telnet::call(service.addr("telnet"), "127.0.0.6");
    caller.until(|l| l.starts_with("Network owners"));
    caller.send("\r\n");
    let answer = caller.rest_of_session();
    assert!(
        answer[0].starts_with("Refused: 127.0.0.6 is in 127.0.0.6/32"),
        "{answer:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(connections.load(Ordering::SeqCst), 0, "nothing may be sent");
}

/// Another site's page cannot make a visitor's browser start a test: the browser says where
/// the form or the fetch came from (`Origin`, `Sec-Fetch-Site`), and a test asked for by a
/// foreign page is refused before anything is looked up or connected to. (A hidden
/// auto-submitting form used to start one per visitor, each from the visitor's address and on
/// the visitor's hourly budget, against a target the foreign page chose.) Scripts, which send
/// neither header, and the service's own page are served as before.
///
/// ```text
/// POST /tests, Origin: http://evil.example                     -> 403, nothing connected
/// POST /tests, Sec-Fetch-Site: cross-site                      -> 403
/// POST /tests, Origin: null                                    -> 403
/// POST /api/v1/tests, Origin: http://evil.example              -> 403
/// POST /tests, Origin: http://HOST, Sec-Fetch-Site: same-origin -> 303 to the test
/// ```
#[test]
fn another_site_s_page_cannot_make_a_visitor_s_browser_start_a_test() {
    let (port, connections) = counting_listener("127.0.0.3");
    let service = TestServer::start_probe_service(&service_config("allow_private_targets = true"));
    let door = service.addr("http");
    let web = Http::new(door).from("127.0.0.4");
    let form = format!("target=127.0.0.3%3A{port}&kind=server&ports=");
    let form_body = Some(("application/x-www-form-urlencoded", form.as_str()));
    for foreign in [
        "Origin: http://evil.example\r\n",
        "Origin: http://evil.example\r\nSec-Fetch-Site: cross-site\r\n",
        "Sec-Fetch-Site: cross-site\r\n",
        "Sec-Fetch-Site: same-site\r\n",
        "Origin: null\r\n",
        &format!("Origin: http://{door}.evil.example\r\n"),
    ] {
        let answer = web.request_with("POST", "/tests", form_body, foreign);
        assert_eq!(answer.status, 403, "{foreign:?}: {}", answer.body);
        assert!(
            answer.body.contains("another web site"),
            "{foreign:?}: {}",
            answer.body
        );
    }
    let json = format!(r#"{{"target": "127.0.0.3:{port}"}}"#);
    let api = web.request_with(
        "POST",
        "/api/v1/tests",
        Some(("application/json", json.as_str())),
        "Origin: http://evil.example\r\n",
    );
    assert_eq!(api.status, 403, "{}", api.body);
    assert!(api.json()["error"].is_string(), "{}", api.body);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "a refused request connected"
    );

    // The service's own page submits as before.
    let own = web.request_with(
        "POST",
        "/tests",
        form_body,
        &format!("Origin: http://{door}\r\nSec-Fetch-Site: same-origin\r\n"),
    );
    assert_eq!(own.status, 303, "{}", own.body);
    let id = own
        .header("location")
        .and_then(|l| l.strip_prefix("/tests/"))
        .expect("location")
        .to_string();
    wait_done(&web, &id);
    assert!(connections.load(Ordering::SeqCst) > 0);
}

/// A network shares a budget too: the addresses of one IPv4 /24 (IPv6 /48, a site's usual
/// share) may start 4 times one client's tests an hour between them, so whoever holds a
/// network cannot multiply the client budget by its addresses — a /48 has 65,536 /64s, each
/// a client of its own. Other networks are not affected.
///
/// ```text
/// tests_per_client_per_hour = 1
/// one test each from 127.0.0.10, .11, .12, .13     -> 201 × 4
/// from 127.0.0.14                                  -> 429 "your network (127.0.0.0/24) ..."
/// from 127.0.1.10                                  -> 201
/// ```
#[test]
fn the_addresses_of_one_network_share_a_budget() {
    let service = TestServer::start_probe_service(&service_config(
        "allow_private_targets = true\ntests_per_client_per_hour = 1",
    ));
    let api = Http::new(service.addr("http"));
    for host in 10..14 {
        let target = format!("127.0.0.{}", host + 10);
        start_test(
            &api.from(&format!("127.0.0.{host}")),
            &format!("{target}:{}", unused_port(&target)),
        );
    }
    let refused = api.from("127.0.0.14").post_json(
        "/api/v1/tests",
        &format!(
            r#"{{"target": "127.0.0.30:{}"}}"#,
            unused_port("127.0.0.30")
        ),
    );
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(
        refused.json()["error"],
        "your network (127.0.0.0/24) has started as many tests as one network may in an hour; try again in 60 minutes"
    );
    assert!(refused.header("retry-after").is_some());
    start_test(
        &api.from("127.0.1.10"),
        &format!("127.0.0.31:{}", unused_port("127.0.0.31")),
    );
}

/// Answers are not stored by caches: a test's page and JSON change while it runs (a proxy
/// or CDN in front that kept a `RUNNING` answer would serve it for ever), and a results URL
/// is its only secret (a shared cache would keep it for whoever asks next).
///
/// ```text
/// GET /api/v1/tests/ID, GET /tests/ID, POST /api/v1/tests   -> Cache-Control: no-store
/// ```
#[test]
fn answers_are_not_stored_by_caches() {
    let service = TestServer::start_probe_service(&service_config("allow_private_targets = true"));
    let api = Http::new(service.addr("http")).from("127.0.0.4");
    let started = api.post_json(
        "/api/v1/tests",
        &format!(r#"{{"target": "127.0.0.3:{}"}}"#, unused_port("127.0.0.3")),
    );
    assert_eq!(started.status, 201, "{}", started.body);
    let id = started.json()["id"].as_str().expect("id").to_string();
    let json = api.get(&format!("/api/v1/tests/{id}"));
    let page = api.get(&format!("/tests/{id}"));
    for (what, answer) in [("POST", &started), ("JSON", &json), ("page", &page)] {
        assert_eq!(answer.header("cache-control"), Some("no-store"), "{what}");
    }
    wait_done(&api, &id);
}

#[test]
fn budgets_answer_429_with_when_to_retry() {
    let service = TestServer::start_probe_service(&service_config(
        "allow_private_targets = true\ntests_per_client_per_hour = 1\ntests_per_target_per_hour = 1",
    ));
    let api = Http::new(service.addr("http"));
    // Nothing listens there: the test is quick (UNREACHABLE), and it still counts.
    let first = format!("127.0.0.3:{}", unused_port("127.0.0.3"));
    let id = start_test(&api.from("127.0.0.4"), &first);
    assert_eq!(wait_done(&api, &id)["verdict"], "UNREACHABLE");
    let again = api
        .from("127.0.0.4")
        .post_json("/api/v1/tests", r#"{"target": "127.0.0.9:25"}"#);
    assert_eq!(again.status, 429, "{}", again.body);
    let body = again.json();
    assert_eq!(
        body["error"],
        "you have started as many tests as one address may in an hour; try again in 60 minutes"
    );
    let retry = body["retry_after"].as_u64().expect("retry_after");
    assert!((3500..=3600).contains(&retry), "{retry}");
    assert_eq!(
        again.header("retry-after"),
        Some(retry.to_string().as_str())
    );
    // Another client may test, but not the same address again within the hour.
    let target_again = api.from("127.0.0.5").post_json(
        "/api/v1/tests",
        &format!(r#"{{"target": "127.0.0.3:{}"}}"#, unused_port("127.0.0.3")),
    );
    assert_eq!(target_again.status, 429, "{}", target_again.body);
    assert!(
        target_again.json()["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with(
                "127.0.0.3 has been tested as many times as one address may be in an hour"
            ),
        "{}",
        target_again.body
    );
    // A refusal costs nothing: that client still has its test.
    let other = format!("127.0.0.8:{}", unused_port("127.0.0.8"));
    let id = start_test(&api.from("127.0.0.5"), &other);
    assert_eq!(wait_done(&api, &id)["verdict"], "UNREACHABLE");
}

/// Reads until the service closes `conn`; what it sent, or `None` if it was still open after
/// `within`.
fn read_until_closed(conn: &mut TcpStream, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    while Instant::now() < deadline {
        match conn.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(String::from_utf8_lossy(&got).into_owned()),
        }
    }
    None
}

/// `http_idle_timeout`: a web door connection the service has written nothing to for that long
/// is closed — one that never sends a request, one that sends it a header line at a time
/// (slowloris, busy on the read side all along) and one left idle after its answer — so idle
/// sockets cannot hold the connection slots.
///
/// ```text
/// (connects, sends nothing)                      -> closed after ~2 s
/// GET / HTTP/1.1, then "X-Slow: 1" every 300 ms    -> closed after ~2 s, no answer
/// GET / HTTP/1.1 + Host, blank line              -> 200, then closed ~2 s later
/// ```
#[test]
fn the_web_door_closes_connections_it_has_not_written_to_within_the_idle_timeout() {
    let service = TestServer::start_probe_service(&service_config("http_idle_timeout = \"2s\""));
    let door = service.addr("http");
    let caller: std::net::IpAddr = "127.0.0.6".parse().expect("ip");
    let started = Instant::now();

    let mut silent = bound_connect(caller, door);
    let mut answered = bound_connect(caller, door);
    answered
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut slow = bound_connect(caller, door);
    slow.write_all(b"GET / HTTP/1.1\r\n").expect("request line");
    let slow_writer = slow.try_clone().expect("clone");
    let trickle = std::thread::spawn(move || {
        let mut slow_writer = slow_writer;
        for _ in 0..40 {
            if slow_writer.write_all(b"X-Slow: 1\r\n").is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        false
    });

    let limit = Duration::from_secs(12);
    let silent_end = read_until_closed(&mut silent, limit);
    assert_eq!(
        silent_end.as_deref(),
        Some(""),
        "a silent connection stayed open"
    );
    let slow_end = read_until_closed(&mut slow, limit).expect("a slowloris connection stayed open");
    assert!(
        !slow_end.contains(" 200 "),
        "the slow request was answered: {slow_end}"
    );
    let answer =
        read_until_closed(&mut answered, limit).expect("an idle kept-alive connection stayed open");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "closed before the idle timeout: {:?}",
        started.elapsed()
    );
    let _ = trickle.join();

    // The service itself is fine and serves the next caller.
    let page = Http::new(door).from("127.0.0.6").get("/");
    assert_eq!(page.status, 200, "{}", page.body);
}

/// The body of a request is read before its handler counts as working: a caller that sends
/// the headers of a POST and then its body a byte now and then, or never, is cut off after
/// `http_idle_timeout` like a slow header, and starts no test. (The busy mark used to cover
/// the body's reading, so such connections stayed open for ever and a few /64s could hold
/// all 512 slots.)
///
/// ```text
/// POST /api/v1/tests, Content-Length: 100, then "{" and nothing     -> closed after ~2 s
/// POST /tests, Content-Length: 100, then a byte every 300 ms         -> closed after ~2 s
/// ```
#[test]
fn a_request_body_that_never_arrives_is_cut_off_after_the_idle_timeout() {
    let service = TestServer::start_probe_service(&service_config(
        "http_idle_timeout = \"2s\"\nallow_private_targets = true",
    ));
    let door = service.addr("http");
    let caller: std::net::IpAddr = "127.0.0.6".parse().expect("ip");
    let started = Instant::now();

    let mut stalled = bound_connect(caller, door);
    stalled
        .write_all(
            b"POST /api/v1/tests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .expect("headers");
    let mut trickled = bound_connect(caller, door);
    trickled
        .write_all(
            b"POST /tests HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n",
        )
        .expect("headers");
    let writer = trickled.try_clone().expect("clone");
    let trickle = std::thread::spawn(move || {
        let mut writer = writer;
        for _ in 0..40 {
            if writer.write_all(b"t").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });

    let limit = Duration::from_secs(12);
    let stalled_end =
        read_until_closed(&mut stalled, limit).expect("a POST whose body never came stayed open");
    assert!(!stalled_end.contains(" 201 "), "{stalled_end}");
    let trickled_end =
        read_until_closed(&mut trickled, limit).expect("a POST trickling its body stayed open");
    assert!(!trickled_end.contains(" 303 "), "{trickled_end}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "closed before the idle timeout: {:?}",
        started.elapsed()
    );
    let _ = trickle.join();

    // A whole body is still read and served, and an oversized one refused.
    let api = Http::new(door).from("127.0.0.6");
    let refused = api.post_json(
        "/api/v1/tests",
        r#"{"target": "127.0.0.9:25", "ports": [0]}"#,
    );
    assert_eq!(refused.status, 400, "{}", refused.body);
    let huge = format!(r#"{{"target": "{}"}}"#, "a".repeat(9000));
    let too_big = api.post_json("/api/v1/tests", &huge);
    assert_eq!(too_big.status, 413, "{}", too_big.body);
    assert!(too_big.json()["error"].is_string(), "{}", too_big.body);
}

/// A caller that sends requests and stops reading the answers stalls the service's writes
/// once the socket buffers are full; that connection is cut after `http_idle_timeout` too,
/// or a few such callers would hold every connection slot for ever.
///
/// ```text
/// GET /assets/style.css × 3000, pipelined, window of ~4 KB, nothing read for 5 s
///                                  -> closed; far fewer than 3000 answers ever arrive
/// ```
#[test]
fn a_caller_who_stops_reading_is_cut_off_after_the_idle_timeout() {
    const REQUESTS: usize = 3000;
    let service = TestServer::start_probe_service(&service_config("http_idle_timeout = \"2s\""));
    let door = service.addr("http");
    let caller: std::net::IpAddr = "127.0.0.7".parse().expect("ip");
    let mut conn = relayward_testkit::http::bound_connect_with_receive_buffer(caller, door, 4096);
    let mut writer = conn.try_clone().expect("clone");
    // From a thread: once the service stops reading, these writes may block too.
    let pipelined = std::thread::spawn(move || {
        let request = b"GET /assets/style.css HTTP/1.1\r\nHost: x\r\n\r\n".repeat(REQUESTS);
        let _ = writer.write_all(&request);
    });
    std::thread::sleep(Duration::from_secs(5));
    let got = read_until_closed(&mut conn, Duration::from_secs(30))
        .expect("the stalled connection was never closed");
    let answers = got.matches("HTTP/1.1 200 ").count();
    assert!(answers > 0, "not even the first answer: {got:?}");
    assert!(
        answers < REQUESTS,
        "every answer was written: the service waited on a caller that read nothing for 5 s"
    );
    let _ = pipelined.join();

    // The service serves the same address again.
    let page = Http::new(door).from("127.0.0.7").get("/");
    assert_eq!(page.status, 200, "{}", page.body);
}

/// The idle cut-off counts from the service's last write, not while a handler works: starting
/// a test whose name a silent DNS server never answers takes longer than `http_idle_timeout`
/// (the lookup gives up after its own time), and the caller still gets the answer. A live
/// transcript, written to by its keep-alive, outlives the timeout too.
///
/// ```text
/// POST /api/v1/tests {"target": "slow.example.test:25"}   (DNS silent)  -> 201 after > 2 s
/// GET /tests/ID/events                                                    -> open after 5 s
/// ```
#[test]
fn the_idle_cut_off_spares_a_slow_handler_and_a_live_transcript() {
    let silent_dns = std::net::UdpSocket::bind("127.0.0.9:0").expect("bind");
    let service = TestServer::start_probe_service(&service_config(&format!(
        "http_idle_timeout = \"2s\"\nnameservers = [\"{}\"]\nallow_private_targets = true",
        silent_dns.local_addr().expect("addr")
    )));
    let api = Http::new(service.addr("http")).from("127.0.0.5");
    let started = Instant::now();
    let response = api.post_json("/api/v1/tests", r#"{"target": "slow.example.test:25"}"#);
    let took = started.elapsed();
    assert_eq!(response.status, 201, "after {took:?}: {}", response.body);
    assert!(
        took > Duration::from_secs(2),
        "the lookup did not outlast the timeout: {took:?}"
    );

    let id = start_test(&api, &format!("127.0.0.8:{}", unused_port("127.0.0.8")));
    let mut events = api.stream(&format!("/tests/{id}/events"), "");
    events
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let opened = Instant::now();
    let mut line = String::new();
    let mut closed_after = None;
    while opened.elapsed() < Duration::from_secs(5) {
        line.clear();
        match events.read_line(&mut line) {
            Ok(0) => {
                closed_after = Some(opened.elapsed());
                break;
            }
            Ok(_) if line.starts_with("event: done") => break,
            _ => {}
        }
    }
    assert_eq!(closed_after, None, "the live transcript was cut");
}

/// The web door's connection caps: one client holding its 16 connections idle gets `503` on the
/// 17th, others are still served, and the share comes back when a connection closes.
#[test]
fn one_client_cannot_hold_every_web_door_connection() {
    let service = TestServer::start_probe_service(&service_config(""));
    let door = service.addr("http");
    let hog: std::net::IpAddr = "127.0.0.6".parse().expect("ip");
    // Sixteen slow-loris connections: a request that never ends.
    let mut held: Vec<TcpStream> = (0..16)
        .map(|_| {
            let mut c = bound_connect(hog, door);
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
                .expect("write");
            c
        })
        .collect();
    let mut extra = bound_connect(hog, door);
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut answer = String::new();
    let _ = extra.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 503 "),
        "17th connection from one client: {answer:?}"
    );
    assert!(
        answer.contains("too many connections from your address"),
        "{answer}"
    );

    // Another client is served meanwhile.
    let page = Http::new(door).from("127.0.0.5").get("/");
    assert_eq!(page.status, 200, "{}", page.body);

    // One connection closed: the hog may open one again (retried: the close reaches the
    // server asynchronously).
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = Http::new(door).from("127.0.0.6").get("/");
        if page.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "share not given back: {}",
            page.status
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(held);
}

/// One network cannot hold every web door or telnet connection either: the addresses of an
/// IPv4 /24 (IPv6 /48, where every /64 is a client of its own) hold at most 64 web
/// connections and 16 telnet sessions between them; the next gets `503` ("too many
/// connections from your network") or a telnet refusal, and other networks are served.
/// (Per-client caps alone let a /48 — 65,536 clients — hold all 512 web slots and all 256
/// telnet sessions, reconnecting as the idle cut-off closed them.)
///
/// ```text
/// 4 clients of 127.0.0.0/24 × 16 slow web connections   (64)
/// a 5th client of 127.0.0.0/24                          -> 503 too many connections from your network
/// 4 clients of 127.0.0.0/24 × 4 telnet sessions         (16)
/// a 5th client                                          -> "Refused: 16 telnet sessions from your network ..."
/// 127.0.1.5: web, telnet                                -> served, greeted
/// ```
#[test]
fn one_network_cannot_hold_every_door_connection() {
    let service = TestServer::start_probe_service(&service_config(""));
    let (web, telnet) = (service.addr("http"), service.addr("telnet"));
    let mut held: Vec<TcpStream> = Vec::new();
    for host in 10..14 {
        let ip: std::net::IpAddr = format!("127.0.0.{host}").parse().expect("ip");
        for _ in 0..16 {
            let mut c = bound_connect(ip, web);
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
                .expect("write");
            held.push(c);
        }
    }
    let mut extra = bound_connect("127.0.0.14".parse().expect("ip"), web);
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut answer = String::new();
    let _ = extra.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 503 ")
            && answer.contains("too many connections from your network"),
        "a 5th client of the network: {answer:?}"
    );
    let page = Http::new(web).from("127.0.1.5").get("/");
    assert_eq!(page.status, 200, "{}", page.body);

    let callers: Vec<Telnet> = (10..14)
        .flat_map(|host| {
            (0..4).map(move |_| {
                let mut caller = Telnet::call(telnet, &format!("127.0.0.{host}"));
                caller.until(|l| l.starts_with("Network owners"));
                caller
            })
        })
        .collect();
    let mut fifth = Telnet::call(telnet, "127.0.0.14");
    assert_eq!(
        fifth.rest_of_session(),
        [
            "Refused: 16 telnet sessions from your network (127.0.0.0/24) are open already, the most one network may hold; try again when one has ended"
        ]
    );
    let mut other = Telnet::call(telnet, "127.0.1.5");
    other.until(|l| l.starts_with("Network owners"));
    drop((held, callers));
}

/// A shell's soft open files limit (64 here, often 1,024) is below what the doors are allowed
/// to hold (512 web connections, 256 telnet callers, the running tests). The service raises
/// it to the hard limit at start, so callers within the caps are all served:
/// ```text
/// prlimit --nofile=64:4096 relayward probe-service
/// 7 clients x 14 idle web connections          (98, under every cap)
/// GET / from 127.0.0.5                         -> 200
/// ```
#[test]
fn callers_within_the_caps_are_served_under_a_low_soft_open_files_limit() {
    let service = TestServer::start_probe_service_under(
        &["prlimit", "--nofile=64:4096", "--"],
        &service_config(""),
    );
    let door = service.addr("http");
    let held: Vec<TcpStream> = (10..17)
        .flat_map(|host| {
            // One client in each of 7 networks: within the per-network cap too.
            let ip: std::net::IpAddr = format!("127.0.{host}.1").parse().expect("ip");
            (0..14).map(move |_| bound_connect(ip, door))
        })
        .collect();
    // Time for the door to accept what it will of them.
    std::thread::sleep(Duration::from_millis(500));

    let mut caller = bound_connect("127.0.0.5".parse().expect("ip"), door);
    caller
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    caller
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut answer = String::new();
    let _ = caller.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200 "),
        "a caller after {} idle connections: {answer:?}",
        held.len()
    );
    let log = service.log();
    assert!(
        log.lines()
            .any(|line| line.contains("open files limit raised") && line.contains("4096")),
        "{log}"
    );
    drop(held);
}

/// Accepts connections and never says a word: a test against it runs until its timeouts.
fn silent_server(ip: &str) -> u16 {
    let listener = TcpListener::bind((ip, 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    port
}

/// The lookups of one request take 20 s in all, not 20 s per port: a name asked for on four
/// ports is given up after 20 s (four UNREACHABLE reports), not after four lookups of up to
/// 20 s each. (A silent name server used to keep the request — its slot and its web
/// connection — for a minute, four times the time the service promises.)
///
/// ```text
/// POST {"target": "slow.example.test", "ports": [25, 587, 465, 2525]}   (DNS silent)
///                                                -> 201 after ~20 s, not ~60 s
/// ```
#[test]
fn the_lookups_of_one_request_take_twenty_seconds_in_all() {
    let silent_dns = std::net::UdpSocket::bind("127.0.0.9:0").expect("bind");
    let service = TestServer::start_probe_service(&service_config(&format!(
        "nameservers = [\"{}\"]\nallow_private_targets = true",
        silent_dns.local_addr().expect("addr")
    )));
    let api = Http::new(service.addr("http")).from("127.0.0.5");
    let started = Instant::now();
    let response = api.post_json(
        "/api/v1/tests",
        r#"{"target": "slow.example.test", "ports": [25, 587, 465, 2525]}"#,
    );
    let took = started.elapsed();
    assert_eq!(response.status, 201, "after {took:?}: {}", response.body);
    assert!(
        took < Duration::from_secs(30),
        "the lookups took {took:?}, more than the 20 s one request may take"
    );
    let record = wait_done(&api, response.json()["id"].as_str().expect("id"));
    assert_eq!(record["verdict"], "UNREACHABLE", "{record}");
    let reasons: Vec<&str> = record["reports"]
        .as_array()
        .expect("reports")
        .iter()
        .filter_map(|r| r["reason"].as_str())
        .collect();
    assert_eq!(reasons.len(), 4, "{record}");
    assert!(
        reasons.iter().any(|r| r.contains("more than 20s")),
        "{reasons:?}"
    );
}

/// One client runs at most 2 tests at once, counted from before its names are looked up: the
/// 3rd is refused `429` until one has finished, and other clients start theirs meanwhile. (A
/// client used to hold as many of the `max_concurrent_tests` slots as its hourly budget
/// allowed — each up to `host_timeout` against a server that answers slowly — and requests
/// whose slow lookups ended in refused addresses held slots for nothing, uncharged.)
///
/// ```text
/// from 127.0.0.4: POST {"target": "127.0.0.3:SILENT"} × 2   -> 201, 201 (both running)
/// from 127.0.0.4: POST {"target": "127.0.0.3:SILENT"}       -> 429, retry_after
/// from 127.0.0.5: POST {"target": "127.0.0.3:SILENT"}       -> 201
/// (one of 127.0.0.4's tests ends)  POST again                -> 201
/// ```
#[test]
fn one_client_runs_at_most_two_tests_at_once() {
    let service = TestServer::start_probe_service(&service_config(
        "allow_private_targets = true\ntests_per_target_per_hour = 10\ntest_timeout = \"2s\"",
    ));
    let api = Http::new(service.addr("http"));
    let target = format!("127.0.0.3:{}", silent_server("127.0.0.3"));
    let hog = api.from("127.0.0.4");
    let first = start_test(&hog, &target);
    let _second = start_test(&hog, &target);
    let third = hog.post_json("/api/v1/tests", &format!(r#"{{"target": "{target}"}}"#));
    assert_eq!(third.status, 429, "{}", third.body);
    assert_eq!(
        third.json()["error"],
        "2 of your tests are running, the most one address may run at once; try again when one has finished"
    );
    assert!(third.header("retry-after").is_some(), "{}", third.body);
    start_test(&api.from("127.0.0.5"), &target);
    assert_eq!(wait_done(&api, &first)["verdict"], "UNREACHABLE");
    // The place comes back when its test has finished (stored, then the place is given back).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let again = hog.post_json("/api/v1/tests", &format!(r#"{{"target": "{target}"}}"#));
        if again.status == 201 {
            break;
        }
        assert_eq!(again.status, 429, "{}", again.body);
        assert!(Instant::now() < deadline, "the place never came back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A test starts no new address once it has run for `host_timeout`: a server that answers
/// slowly on 4 ports of 2 addresses (8 targets, each allowed `host_timeout`) used to hold its
/// test slot for 8 × `host_timeout` — 40 minutes with the defaults, so that one network's
/// hourly budget could keep every slot busy. The addresses left are listed as not probed,
/// with the reason.
///
/// ```text
/// host_timeout = "2s", test_timeout = "1s"
/// POST {"target": "127.0.0.3", "ports": [S1, S2, S3, S4]}     (all silent)
///     -> done after ~2 s, not ~8 s; 3 addresses not probed: "the test had run for 2s ..."
/// ```
#[test]
fn a_test_starts_no_new_address_after_host_timeout() {
    let service = TestServer::start_probe_service(&service_config(
        "allow_private_targets = true\ntest_timeout = \"1s\"\nhost_timeout = \"2s\"",
    ));
    let api = Http::new(service.addr("http")).from("127.0.0.4");
    let ports: Vec<String> = (0..4)
        .map(|_| silent_server("127.0.0.3").to_string())
        .collect();
    let response = api.post_json(
        "/api/v1/tests",
        &format!(
            r#"{{"target": "127.0.0.3", "ports": [{}]}}"#,
            ports.join(", ")
        ),
    );
    assert_eq!(response.status, 201, "{}", response.body);
    let record = wait_done(&api, response.json()["id"].as_str().expect("id"));
    let took = record["duration_ms"].as_u64().expect("duration");
    assert!(took < 5_000, "the test ran {took} ms: {}", record["reason"]);
    let not_probed = record["not_probed"].as_array().expect("not_probed");
    assert_eq!(not_probed.len(), 3, "{record}");
    assert!(
        not_probed[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("the test had run for 2s (host_timeout)"),
        "{record}"
    );
}

/// A request's name lookups take no test slot: a caller whose names resolve slowly (its own
/// silent name server, up to 20 s a request), and whose addresses may then all be refused
/// at no cost, cannot keep the `max_concurrent_tests` slots busy for others; a slot is taken
/// when there is something to probe.
///
/// ```text
/// max_concurrent_tests = 1
/// from 127.0.0.5: POST {"target": "slow.example.test"}   (DNS silent: ~15 s of lookups)
/// meanwhile from 127.0.0.4: POST {"target": "127.0.0.3:UNUSED"}   -> 201, not 503
/// ```
#[test]
fn name_lookups_take_no_test_slot() {
    let silent_dns = std::net::UdpSocket::bind("127.0.0.9:0").expect("bind");
    let service = TestServer::start_probe_service(&service_config(&format!(
        "nameservers = [\"{}\"]\nallow_private_targets = true\nmax_concurrent_tests = 1",
        silent_dns.local_addr().expect("addr")
    )));
    let door = service.addr("http");
    let slow = std::thread::spawn(move || {
        Http::new(door)
            .from("127.0.0.5")
            .post_json("/api/v1/tests", r#"{"target": "slow.example.test"}"#)
            .status
    });
    std::thread::sleep(Duration::from_secs(1));
    let api = Http::new(door).from("127.0.0.4");
    let quick = api.post_json(
        "/api/v1/tests",
        &format!(r#"{{"target": "127.0.0.3:{}"}}"#, unused_port("127.0.0.3")),
    );
    assert_eq!(quick.status, 201, "{}", quick.body);
    wait_done(&api, quick.json()["id"].as_str().expect("id"));
    assert_eq!(slow.join().expect("slow request"), 201);
}

#[test]
fn a_full_service_answers_503_and_results_are_bounded_and_outlive_a_restart() {
    let config = service_config(
        "allow_private_targets = true\nmax_concurrent_tests = 1\nmax_stored_tests = 2\ntest_timeout = \"2s\"",
    );
    let service = TestServer::start_probe_service(&config);
    let api = Http::new(service.addr("http"));
    let slow = start_test(&api, &format!("127.0.0.3:{}", silent_server("127.0.0.3")));
    let busy = api.post_json("/api/v1/tests", r#"{"target": "127.0.0.4:25"}"#);
    assert_eq!(busy.status, 503, "{}", busy.body);
    assert!(
        busy.json()["error"]
            .as_str()
            .unwrap_or_default()
            .contains("1 tests are running")
    );
    assert_eq!(busy.json()["retry_after"], 60);
    assert_eq!(wait_done(&api, &slow)["verdict"], "UNREACHABLE");
    let mut ids = vec![slow];
    for ip in ["127.0.0.4", "127.0.0.5"] {
        let id = start_test(&api, &format!("{ip}:{}", unused_port(ip)));
        wait_done(&api, &id);
        ids.push(id);
    }
    // max_stored_tests = 2: the oldest is gone, the newer two stay, also after a restart.
    assert_eq!(api.get(&format!("/api/v1/tests/{}", ids[0])).status, 404);
    assert_eq!(api.get(&format!("/tests/{}", ids[0])).status, 404);
    let (code, dir) = service.terminate();
    assert_eq!(code, Some(0));
    let stored = std::fs::read_dir(dir.path().join("data/tests"))
        .expect("store")
        .count();
    assert_eq!(stored, 2);
    let service = TestServer::restart_probe_service(dir, &config);
    let api = Http::new(service.addr("http"));
    for id in &ids[1..] {
        let record = api.get(&format!("/api/v1/tests/{id}")).json();
        assert_eq!(record["verdict"], "UNREACHABLE", "{record}");
        assert_eq!(record["id"], id.as_str());
    }
}

#[test]
fn sigterm_lets_a_running_test_finish_and_stores_it() {
    let relay = closed_relay("127.0.0.3");
    let target = relay.addr("mx").to_string();
    let config = service_config("allow_private_targets = true");
    let service = TestServer::start_probe_service(&config);
    let api = Http::new(service.addr("http"));
    let id = start_test(&api, &target);
    // Wait until it is talking to the relay, then stop the service.
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.get(&format!("/api/v1/tests/{id}")).json()["transcript"]
        .as_array()
        .is_none_or(|t| t.len() < 5)
    {
        assert!(Instant::now() < deadline, "the test never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    service.signal("TERM");
    std::thread::sleep(Duration::from_millis(200));
    // No new tests while it stops: the doors are closed.
    assert!(
        TcpStream::connect(service.addr("http")).is_err(),
        "the web door still accepts"
    );
    let (code, dir) = service.terminate();
    assert_eq!(code, Some(0));
    let service = TestServer::restart_probe_service(dir, &config);
    let record = Http::new(service.addr("http"))
        .get(&format!("/api/v1/tests/{id}"))
        .json();
    assert_eq!(
        record["verdict"], "CLOSED",
        "the test ran to its end: {record}"
    );
    assert_eq!(
        record["reports"][0]["tests"].as_array().map(Vec::len),
        Some(67)
    );
}

#[test]
fn sigterm_stores_a_test_that_outlives_the_grace_period_as_inconclusive() {
    let config = service_config(
        "allow_private_targets = true\nshutdown_grace = \"1s\"\ntest_timeout = \"20s\"",
    );
    let service = TestServer::start_probe_service(&config);
    let api = Http::new(service.addr("http"));
    let id = start_test(&api, &format!("127.0.0.3:{}", silent_server("127.0.0.3")));
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let (code, dir) = service.terminate();
    assert_eq!(code, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let service = TestServer::restart_probe_service(dir, &config);
    let record = Http::new(service.addr("http"))
        .get(&format!("/api/v1/tests/{id}"))
        .json();
    assert_eq!(record["verdict"], "INCONCLUSIVE", "{record}");
    assert_eq!(
        record["reason"],
        "the service stopped before the test finished"
    );
}

/// An SMTP server whose every word is markup and terminal codes; it refuses relaying.
fn hostile_server(ip: &str) -> u16 {
    serve_each(ip, hostile_session)
}

/// A server on `ip` (any port) running `session` on a thread for each connection; its port.
fn serve_each(ip: &str, session: fn(TcpStream)) -> u16 {
    let listener = TcpListener::bind((ip, 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || session(stream));
        }
    });
    port
}

fn hostile_session(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let _ = stream.write_all(b"220 mx.evil.test ESMTP <script>alert(1)</script>\x1b[2J\r\n");
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap_or(0) > 0 {
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" | "HELO" => b"250 mx.evil.test <b>hello</b>\r\n",
            "MAIL" | "RSET" => b"250 ok <i>fine</i>\r\n",
            "RCPT" => b"554 5.7.1 <script>alert(2)</script>\x1b[1A\rrelaying denied\r\n",
            "QUIT" => {
                let _ = stream.write_all(b"221 bye\r\n");
                return;
            }
            _ => b"502 5.5.1 <img src=x onerror=alert(3)>\r\n",
        };
        if stream.write_all(reply).is_err() {
            return;
        }
        line.clear();
    }
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
}

#[test]
fn server_text_is_escaped_on_the_page_in_the_live_stream_and_on_the_telnet_door() {
    let port = hostile_server("127.0.0.3");
    let service = TestServer::start_probe_service(&service_config(&format!(
        "allow_private_targets = true\nconnect_back_port = {port}"
    )));
    let api = Http::new(service.addr("http"));
    let id = start_test(&api, &format!("127.0.0.3:{port}"));
    let record = wait_done(&api, &id);
    assert_eq!(record["verdict"], "CLOSED", "{record}");
    // JSON keeps the text and escapes it the JSON way.
    let json = api.get(&format!("/api/v1/tests/{id}")).body;
    assert!(json.contains("\\u001b[1A\\rrelaying denied"), "{json}");
    let page = api.get(&format!("/tests/{id}")).body;
    for raw in ["<script>alert", "<b>hello", "<img src=x", "\u{1b}", "\r"] {
        assert!(!page.contains(raw), "raw {raw:?} on the page");
    }
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;\\x1b[2J"),
        "banner not shown escaped"
    );
    assert!(
        page.contains("554 5.7.1 &lt;script&gt;alert(2)&lt;/script&gt;\\x1b[1A\\rrelaying denied")
    );
    // The live stream of a finished test replays the escaped lines, then `done`.
    let mut events = api.stream(&format!("/tests/{id}/events"), "");
    let mut sse = String::new();
    events.read_to_string(&mut sse).expect("SSE");
    assert!(sse.contains("event: done\ndata: CLOSED"), "{sse}");
    assert!(
        sse.contains("data: <<< 554 5.7.1 <script>alert(2)</script>\\x1b[1A\\rrelaying denied")
    );
    assert!(!sse.contains('\u{1b}'));
    // A reconnecting EventSource resumes after the last line it saw.
    let mut resumed = api.stream(&format!("/tests/{id}/events"), "Last-Event-ID: 3\r\n");
    let mut tail = String::new();
    resumed.read_to_string(&mut tail).expect("SSE");
    assert!(
        tail.contains("id: 4\n") && !tail.contains("id: 3\n"),
        "{tail}"
    );
    // The telnet caller sees the same escaped text.
    let mut caller = Telnet::call(service.addr("telnet"), "127.0.0.3");
    caller.until(|l| l.starts_with("Network owners"));
    caller.send("\r\n");
    let lines = caller.rest_of_session().join("\n");
    assert!(
        lines.contains("<<< 220 mx.evil.test ESMTP <script>alert(1)</script>\\x1b[2J"),
        "{lines}"
    );
    assert!(!lines.contains('\u{1b}'));
}

#[test]
fn a_bad_configuration_is_refused_with_the_key_and_what_to_write() {
    for (config, needle) in [
        (
            service_config("tests_per_client_per_hours = 3"),
            "unknown field `tests_per_client_per_hours`",
        ),
        (
            service_config("exclude = [\"10.1.2.3/8\"]"),
            "error: probe_service.exclude[0]: 10.1.2.3/8 has host bits set after the /8: did you mean 10.0.0.0/8?",
        ),
        (
            service_config("confirm_domain = \"confirm.example.org\""),
            "error: probe_service.confirm_listen: confirm_domain is set but confirm_listen is not",
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("svc.toml");
        std::fs::write(
            &path,
            config.replace("DATA_DIR", &dir.path().display().to_string()),
        )
        .expect("write");
        let (code, out) = support::run_with_timeout(
            std::process::Command::new(support::binary())
                .args(["probe-service", "--config"])
                .arg(&path),
            Duration::from_secs(20),
        );
        assert_eq!(code, Some(78), "{out}");
        assert!(out.contains(needle), "{needle:?} not in:\n{out}");
    }
}

#[test]
fn with_a_confirm_listener_a_relayed_token_makes_it_confirmed_open() {
    // The confirm domain's MX is the service's own listener (a DNS server on loopback says so);
    // the open relay delivers the proof messages there.
    let dns = dns::DnsServer::start(
        dns::Zone::new()
            .mx("confirm.test", 10, "sink.confirm.test")
            .a("sink.confirm.test", "127.0.0.1".parse().unwrap()),
    );
    let service = TestServer::start_probe_service(&service_config(
        "allow_private_targets = true\nconfirm_listen = \"127.0.0.1:0\"\nconfirm_domain = \"confirm.test\"\nconfirm_wait = \"20s\"",
    ));
    let confirm_port = service.addr("confirm").port();
    let relay = TestServer::start(&format!(
        "{}\n[delivery]\nmx_port = {confirm_port}\n\n[dns]\nnameservers = [\"{}\"]\n",
        relay_config("127.0.0.3", "\"127.0.0.0/8\""),
        dns.addr
    ));
    let api = Http::new(service.addr("http"));
    let id = start_test(&api, &relay.addr("mx").to_string());
    let record = wait_done(&api, &id);
    assert_eq!(record["verdict"], "CONFIRMED-OPEN", "{}", record["reason"]);
    let report = &record["reports"][0];
    let confirmed = report["confirmed"].as_array().expect("confirmed");
    assert!(
        confirmed.iter().any(|c| c == "plain-external"),
        "{confirmed:?}"
    );
    let proof = report["confirm"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["id"] == "plain-external"))
        .expect("the proof of plain-external");
    assert_eq!(proof["arrived"], true);
    assert_eq!(proof["delivered_by"], "127.0.0.1");
    let page = api.get(&format!("/tests/{id}")).body;
    assert!(page.contains("data-id=\"plain-external\" data-outcome=\"confirmed\""));
    assert!(
        page.contains(
            "Proven open relay: a test message sent through it came back to this service."
        )
    );
}

/// Says yes to everything and delivers nothing: MAIL, RCPT and DATA are all accepted, the
/// message is thrown away. A test with proof of relay finds it accepts at RCPT, sends its
/// tokens, and none ever comes back.
fn accept_all_black_hole(ip: &str) -> u16 {
    serve_each(ip, |stream| {
        let mut stream = stream;
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let _ = stream.write_all(b"220 hole.example.test ESMTP\r\n");
        let mut line = String::new();
        let mut in_data = false;
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            let reply: &[u8] = if in_data {
                if line == ".\r\n" {
                    in_data = false;
                    b"250 2.0.0 queued\r\n"
                } else {
                    b""
                }
            } else {
                match line.get(..4).unwrap_or("").to_ascii_uppercase().as_str() {
                    "DATA" => {
                        in_data = true;
                        b"354 go ahead\r\n"
                    }
                    "QUIT" => {
                        let _ = stream.write_all(b"221 bye\r\n");
                        return;
                    }
                    "STAR" | "AUTH" | "VRFY" | "EXPN" => b"502 5.5.1 no\r\n",
                    _ => b"250 ok\r\n",
                }
            };
            if !reply.is_empty() && stream.write_all(reply).is_err() {
                return;
            }
            line.clear();
        }
    })
}

/// The first `rw` + 12 letters/digits in `text`: what a proof-of-relay token looks like.
fn token_in(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(13)).find_map(|i| {
        let word = &bytes[i..i + 14];
        let before_ok = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        let after_ok = bytes.get(i + 14).is_none_or(|b| !b.is_ascii_alphanumeric());
        (before_ok
            && after_ok
            && word.starts_with(b"rw")
            && word[2..]
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        .then(|| String::from_utf8_lossy(word).into_owned())
    })
}

/// Whoever asked for a test cannot forge its proof of relay: the tokens the test sends through
/// the server are hidden in the transcript it can watch while the test waits for them, so it
/// cannot mail one to the confirm listener itself and have a server that only *accepts* at
/// RCPT stored as CONFIRMED-OPEN under the service's name. (The running transcript used to
/// show `Subject: relayward relay test rw…` and `Token: rw…`; a forged delivery of one made
/// a black hole CONFIRMED-OPEN.)
///
/// ```text
/// POST {"target": "127.0.0.3:HOLE"}                 (accepts everything, delivers nothing)
/// GET /api/v1/tests/ID while it waits for tokens    -> no token in the transcript
/// (were one there: mailed to the confirm listener by the caller)
/// verdict                                           -> UNCONFIRMED (forged: CONFIRMED-OPEN)
/// ```
#[test]
fn the_caller_cannot_forge_the_proof_of_relay_with_a_token_from_the_transcript() {
    let service = TestServer::start_probe_service(&service_config(
        "allow_private_targets = true\nconfirm_listen = \"127.0.0.1:0\"\nconfirm_domain = \"confirm.test\"\nconfirm_wait = \"8s\"",
    ));
    let confirm = service.addr("confirm");
    let api = Http::new(service.addr("http")).from("127.0.0.4");
    let id = start_test(
        &api,
        &format!("127.0.0.3:{}", accept_all_black_hole("127.0.0.3")),
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut forged = None;
    let record = loop {
        let record = api.get(&format!("/api/v1/tests/{id}")).json();
        let transcript = record["transcript"].to_string();
        if let Some(token) = token_in(&transcript)
            && forged.is_none()
        {
            // The caller's own mail to the confirm listener, with the token it read.
            let mut smtp = TcpStream::connect(confirm).expect("confirm listener");
            smtp.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let message = format!(
                "EHLO forger.example\r\nMAIL FROM:<x@forger.example>\r\nRCPT TO:<relaytest@confirm.test>\r\nDATA\r\nSubject: {token}\r\n\r\nToken: {token}\r\n.\r\nQUIT\r\n"
            );
            smtp.write_all(message.as_bytes()).expect("forge");
            let mut answer = String::new();
            let _ = smtp.read_to_string(&mut answer);
            forged = Some(token);
        }
        if record["verdict"] != "RUNNING" {
            break record;
        }
        assert!(Instant::now() < deadline, "test {id} never finished");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        record["verdict"], "UNCONFIRMED",
        "forged with {forged:?}: {}",
        record["reason"]
    );
    assert_eq!(forged, None, "a token was readable while the test ran");
    let transcript = record["transcript"].to_string();
    assert!(
        transcript.contains("Token: rw[hidden]"),
        "the proof message is still shown, its token hidden"
    );
}

/// Answers every command with ~58 KB of reply (120 lines of 480 characters): within the
/// probe's limits per reply, until its 2 MiB per target.
fn verbose_server(ip: &str) -> u16 {
    serve_each(ip, |stream| {
        let mut stream = stream;
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut big: Vec<u8> = Vec::new();
        for i in 0..120 {
            big.extend_from_slice(format!("250-{}\r\n", format!("x{i:03}").repeat(120)).as_bytes());
        }
        big.extend_from_slice(b"250 ok\r\n");
        let _ = stream.write_all(b"220 verbose.example.test ESMTP\r\n");
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
            let reply: &[u8] = match verb.as_str() {
                "QUIT" => b"221 bye\r\n",
                "STAR" => b"502 no\r\n",
                _ => &big,
            };
            if stream.write_all(reply).is_err() || verb == "QUIT" {
                return;
            }
            line.clear();
        }
    })
}

/// A test keeps at most 1 MiB of dialogue, so a server that talks a lot cannot make each of
/// its tests megabytes on disk (`max_stored_tests` of them) and in every answer that serves
/// it; the service's own lines (headings, the verdict) are always kept. (A test used to keep
/// what the probe kept of each address, 2 MiB of replies each, up to 8 addresses: ~17 MB.)
///
/// ```text
/// POST {"target": "127.0.0.3:VERBOSE"}      (every reply ~58 KB)
/// GET /api/v1/tests/ID                      -> < 1.2 MiB; "[further lines not kept]", then the verdict
/// ```
#[test]
fn a_talkative_server_cannot_make_a_test_megabytes_long() {
    let service = TestServer::start_probe_service(&service_config("allow_private_targets = true"));
    let api = Http::new(service.addr("http")).from("127.0.0.4");
    let id = start_test(&api, &format!("127.0.0.3:{}", verbose_server("127.0.0.3")));
    let record = wait_done(&api, &id);
    let body = api.get(&format!("/api/v1/tests/{id}")).body;
    assert!(
        body.len() < 1_200_000,
        "the test is {} bytes long ({})",
        body.len(),
        record["reason"]
    );
    let transcript: Vec<&str> = record["transcript"]
        .as_array()
        .expect("transcript")
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    let cut = position(
        &transcript.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
        "[further lines not kept]",
    );
    assert!(
        transcript[cut..].iter().any(|l| l.starts_with("Verdict: ")),
        "the verdict was not kept: {:?}",
        &transcript[cut..]
    );
    let stored = std::fs::read_dir(service.data_dir().join("tests"))
        .expect("store")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0);
    assert!(stored < 1_200_000, "stored: {stored} bytes");
}

/// One sender cannot take the confirm listener: an address (IPv6 /64) holds at most 16 of its
/// 64 sessions, the 17th is answered `421` and closed, and a relay delivering a token from
/// elsewhere still gets in. (The 64 used to be one pool: one address holding them all, each
/// for its 120 s, turned every proof of relay away with `421` until the tokens' wait was over.)
///
/// ```text
/// 16 × connect from 127.0.0.5, say nothing    -> 220 each, held
/// 17th from 127.0.0.5                         -> 421 4.7.0 too many connections from your address
/// connect from 127.0.0.6                      -> 220
/// ```
#[test]
fn one_sender_cannot_hold_every_confirm_listener_session() {
    let service = TestServer::start_probe_service(&service_config(
        "allow_private_targets = true\nconfirm_listen = \"127.0.0.1:0\"\nconfirm_domain = \"confirm.test\"",
    ));
    let confirm = service.addr("confirm");
    let greeting = |conn: &mut TcpStream| {
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut reader = BufReader::new(conn.try_clone().expect("clone"));
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        line
    };
    let held: Vec<TcpStream> = (0..16)
        .map(|_| {
            let mut conn = bound_connect("127.0.0.5".parse().expect("ip"), confirm);
            let line = greeting(&mut conn);
            assert!(line.starts_with("220 "), "{line:?}");
            conn
        })
        .collect();
    let mut extra = bound_connect("127.0.0.5".parse().expect("ip"), confirm);
    assert_eq!(
        greeting(&mut extra),
        "421 4.7.0 too many connections from your address, try again later\r\n"
    );
    let mut other = bound_connect("127.0.0.6".parse().expect("ip"), confirm);
    let line = greeting(&mut other);
    assert!(line.starts_with("220 "), "{line:?}");
    drop(held);
}

//! Smart host (STARTTLS + AUTH with a private CA; Postfix's smtp-sink in clear on loopback)
//! and `[[route]]` forwarding, end to end on loopback.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use relayward_delivery::SmarthostTls;
use relayward_protocol::route::RouteTarget;
use relayward_queue::{Queue, RecipientStatus};
use relayward_testkit::os::is_root;
use support::*;

async fn queue_is_empty(relay: &Relay) -> bool {
    relay
        .queue
        .list()
        .await
        .map(|l| l.is_empty())
        .unwrap_or(false)
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write test file");
}

#[tokio::test]
async fn smarthost_starttls_auth_with_a_verified_private_ca() {
    let pki = test_pki(&["smarthost.test", "127.20.0.2"]);
    let script = Script {
        tls: Some(pki.server.clone()),
        auth: Some(("relay@local.test".into(), "s3cret pw".into())),
        ..Script::default()
    };
    let srv = start_smtp(sock(ip(127, 20, 0, 2), 0), script).await;
    let relay = Relay::via_smarthost();
    let ca = relay.dir.path().join("ca.pem");
    let pw = relay.dir.path().join("pw");
    write(&ca, &pki.ca_pem);
    write(&pw, "s3cret pw\n");
    let mut config = relay.config(None, 25);
    config.smarthost = Some(format!("127.20.0.2:{}", srv.addr.port()));
    config.smarthost_tls = SmarthostTls::Starttls;
    config.smarthost_user = Some("relay@local.test".into());
    config.smarthost_password_file = Some(pw);
    config.smarthost_ca_file = Some(ca);
    relay
        .enqueue(
            "alice@local.test",
            &["bob@far.test", "carol@other.test"],
            "hi",
        )
        .await;

    let runner = relay.runner(config);
    runner.run_once().await;

    assert!(queue_is_empty(&relay).await);
    let got = srv.messages();
    assert_eq!(
        got.len(),
        1,
        "one transaction for all recipients via the smart host"
    );
    assert!(got[0].tls, "sent under TLS");
    assert_eq!(got[0].auth.as_deref(), Some("relay@local.test"));
    assert_eq!(got[0].rcpts, ["bob@far.test", "carol@other.test"]);
}

#[tokio::test]
async fn smarthost_with_an_untrusted_certificate_is_deferred_never_sent_in_clear() {
    let real = test_pki(&["127.21.0.2"]);
    let wrong = test_pki(&["127.21.0.2"]);
    let script = Script {
        tls: Some(real.server.clone()),
        auth: Some(("u".into(), "p".into())),
        ..Script::default()
    };
    let srv = start_smtp(sock(ip(127, 21, 0, 2), 0), script).await;
    let relay = Relay::via_smarthost();
    let ca = relay.dir.path().join("ca.pem");
    let pw = relay.dir.path().join("pw");
    write(&ca, &wrong.ca_pem);
    write(&pw, "p");
    let mut config = relay.config(None, 25);
    config.smarthost = Some(format!("127.21.0.2:{}", srv.addr.port()));
    config.smarthost_user = Some("u".into());
    config.smarthost_password_file = Some(pw);
    config.smarthost_ca_file = Some(ca);
    let id = relay
        .enqueue("alice@local.test", &["bob@far.test"], "hi")
        .await;

    let runner = relay.runner(config);
    runner.run_once().await;

    let state = relay.queue.get(&id).await.expect("still queued");
    assert_eq!(state.recipients[0].status, RecipientStatus::Pending);
    let error = state.recipients[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("TLS handshake"), "{error}");
    let lines = srv.lines();
    assert!(lines.iter().any(|l| l == "STARTTLS"));
    assert!(
        lines
            .iter()
            .all(|l| !l.starts_with("MAIL") && !l.starts_with("AUTH")),
        "nothing after the failed handshake: {lines:?}"
    );
    assert!(srv.messages().is_empty());
}

#[tokio::test]
async fn smarthost_without_starttls_is_deferred() {
    let srv = start_smtp(sock(ip(127, 22, 0, 2), 0), Script::default()).await;
    let relay = Relay::via_smarthost();
    let mut config = relay.config(None, 25);
    config.smarthost = Some(format!("127.22.0.2:{}", srv.addr.port()));
    let id = relay
        .enqueue("alice@local.test", &["bob@far.test"], "hi")
        .await;
    let runner = relay.runner(config);
    runner.run_once().await;
    let state = relay.queue.get(&id).await.expect("still queued");
    assert!(
        state.recipients[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("does not offer STARTTLS")
    );
    assert!(srv.lines().iter().all(|l| !l.starts_with("MAIL")));
}

#[test]
fn cleartext_smarthost_to_a_remote_host_is_refused_at_start() {
    let relay_dir = tempfile::tempdir().expect("tmp");
    let mut config = relayward_delivery::DeliveryConfig::new("relay.test", relay_dir.path());
    config.smarthost = Some("smtp.provider.test:25".into());
    config.smarthost_tls = SmarthostTls::None;
    let message = config.validate().expect_err("must refuse").to_string();
    assert!(message.contains("loopback"), "{message}");
}

#[tokio::test]
async fn postfix_smtp_sink_as_cleartext_smarthost_on_loopback() {
    let sink = Path::new("/usr/sbin/smtp-sink");
    if !sink.exists() {
        eprintln!("SKIPPED: /usr/sbin/smtp-sink missing (Debian package postfix)");
        return;
    }
    let relay = Relay::via_smarthost();
    let dump_dir = relay.dir.path().join("sink");
    std::fs::create_dir_all(&dump_dir).expect("mkdir");
    set_mode(&dump_dir, 0o777);
    let dump = dump_dir.join("dump");
    let addr = ip(127, 23, 0, 2);
    let port = common_port(&[addr]);
    // Options before the address; as root, smtp-sink insists on dropping privileges.
    let mut cmd = tokio::process::Command::new(sink);
    if is_root() {
        cmd.args(["-u", "nobody"]);
    }
    cmd.arg("-D")
        .arg(&dump)
        .arg(format!("{addr}:{port}"))
        .arg("10")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("start smtp-sink");
    let up = eventually_async(Duration::from_secs(5), || {
        std::net::TcpStream::connect((addr, port)).is_ok()
    })
    .await;
    assert!(up, "smtp-sink did not start listening");

    let mut config = relay.config(None, 25);
    config.smarthost = Some(format!("{addr}:{port}"));
    config.smarthost_tls = SmarthostTls::None;
    relay
        .enqueue("alice@local.test", &["bob@far.test"], "via smtp-sink")
        .await;
    relay
        .enqueue(
            "alice@local.test",
            &["carol@far.test", "dave@far.test"],
            "second",
        )
        .await;
    let runner = relay.runner(config);
    runner.run_once().await;

    assert!(
        queue_is_empty(&relay).await,
        "smtp-sink accepted everything"
    );
    let dumped = eventually_async(Duration::from_secs(5), || {
        std::fs::read_to_string(&dump)
            .map(|d| d.contains("via smtp-sink") && d.contains("dave@far.test"))
            .unwrap_or(false)
    })
    .await;
    let _ = child.kill().await;
    assert!(dumped, "messages in smtp-sink's dump file");
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    if let Some(parent) = path.parent() {
        let _ = std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755));
    }
}

#[tokio::test]
async fn route_forwards_its_domain_to_the_internal_server() {
    let internal = start_smtp(sock(ip(127, 24, 0, 2), 0), Script::default()).await;
    let outside = ip(127, 24, 0, 3);
    let outside_srv = start_smtp(sock(outside, internal.addr.port()), Script::default()).await;
    // DNS would send corp.test elsewhere: the route must win over MX.
    let zone = Zone::default()
        .mx("corp.test", 10, "mx.corp.test")
        .a("mx.corp.test", outside);
    let dns = DnsServer::start_on(ip(127, 24, 0, 1), zone).addr;
    let relay = Relay::with_routes(vec![
        (
            "corp.test",
            format!("smtp://{}", internal.addr).parse().expect("route"),
        ),
        ("box.test", RouteTarget::Maildir),
    ]);
    let config = relay.config(Some(dns), internal.addr.port());
    relay
        .enqueue(
            "alice@local.test",
            &["eve@corp.test", "frank@box.test", "gina@local.test"],
            "hi",
        )
        .await;
    let runner = relay.runner(config);
    runner.run_once().await;

    assert!(queue_is_empty(&relay).await);
    assert_eq!(internal.messages().len(), 1);
    assert_eq!(internal.messages()[0].rcpts, ["eve@corp.test"]);
    assert!(outside_srv.messages().is_empty());
    assert_eq!(
        relay.maildir("box.test", "frank").len(),
        1,
        "route to maildir"
    );
    assert_eq!(relay.maildir("local.test", "gina").len(), 1, "local domain");
}

#[tokio::test]
async fn opportunistic_starttls_to_mx_hosts_without_verification() {
    // A certificate for a name the MX does not have: still encrypted, still delivered.
    let pki = test_pki(&["unrelated.example"]);
    let mx = ip(127, 25, 0, 2);
    let script = Script {
        tls: Some(pki.server.clone()),
        ..Script::default()
    };
    let srv = start_smtp(sock(mx, 0), script).await;
    let zone = Zone::default()
        .mx("far.test", 10, "mx.far.test")
        .a("mx.far.test", mx);
    let dns = DnsServer::start_on(ip(127, 25, 0, 1), zone).addr;
    let relay = Relay::new();
    relay
        .enqueue("alice@local.test", &["bob@far.test"], "hi")
        .await;
    let runner = relay.runner(relay.config(Some(dns), srv.addr.port()));
    runner.run_once().await;
    assert!(queue_is_empty(&relay).await);
    assert_eq!(srv.messages().len(), 1);
    assert!(srv.messages()[0].tls, "STARTTLS used when offered");
}

#[tokio::test]
async fn smarthost_auth_login_when_plain_is_not_offered() {
    let pki = test_pki(&["127.26.0.2"]);
    let script = Script {
        tls: Some(pki.server.clone()),
        auth: Some(("u@local.test".into(), "pw".into())),
        auth_mechs: "LOGIN",
        ..Script::default()
    };
    let srv = start_smtp(sock(ip(127, 26, 0, 2), 0), script).await;
    let relay = Relay::via_smarthost();
    let ca = relay.dir.path().join("ca.pem");
    let pw = relay.dir.path().join("pw");
    write(&ca, &pki.ca_pem);
    write(&pw, "pw");
    let mut config = relay.config(None, 25);
    config.smarthost = Some(format!("127.26.0.2:{}", srv.addr.port()));
    config.smarthost_user = Some("u@local.test".into());
    config.smarthost_password_file = Some(pw);
    config.smarthost_ca_file = Some(ca);
    relay
        .enqueue("alice@local.test", &["bob@far.test"], "hi")
        .await;
    let runner = relay.runner(config);
    runner.run_once().await;
    assert!(queue_is_empty(&relay).await);
    assert_eq!(srv.messages()[0].auth.as_deref(), Some("u@local.test"));
    assert!(srv.lines().iter().any(|l| l == "AUTH LOGIN"));
}

//! DKIM signing end to end: keys made by `relayward dkim keygen`, mail relayed for an
//! authenticated user through a smart host that is Postfix's `smtp-sink`, and the bytes the
//! sink received verified by an independent verifier (Python's `dkimpy`, given the keys'
//! DNS records through its DNS callback) — for both algorithms. Mail the user may not sign
//! for, and mail from strangers, arrives unsigned.

#[path = "support/postfix.rs"]
mod postfix;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use postfix::{SmtpSink, dumped_message};
use support::{PASSWORD, TestServer, WAIT, binary, run_with_timeout, standard_config};

/// `relayward dkim keygen --json …`: the private key file is written, the record returned.
fn keygen(dir: &Path, selector: &str, algorithm: &str) -> (String, String) {
    let out = dir.join(format!("{selector}.pem"));
    let mut cmd = Command::new(binary());
    cmd.args(["--json", "dkim", "keygen", "--domain", "example.test"])
        .args(["--selector", selector, "--algorithm", algorithm, "--out"])
        .arg(&out);
    let (code, output) = run_with_timeout(&mut cmd, Duration::from_secs(60));
    assert_eq!(code, Some(0), "keygen failed: {output}");
    let record: serde_json::Value = serde_json::from_str(output.trim()).expect("keygen JSON");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&out).expect("key file").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the private key is readable by others");
    (
        record["name"].as_str().expect("name").to_owned(),
        record["value"].as_str().expect("value").to_owned(),
    )
}

/// The keys `dkim keygen` writes are standard files other tools read: OpenSSL derives from
/// each the very public key its DNS record publishes (the SubjectPublicKeyInfo for RSA, the
/// raw 32 octets for Ed25519, RFC 8463). ring's own Ed25519 format (PKCS#8 v2) was refused
/// by OpenSSL 3.0 as "unsupported".
#[test]
fn openssl_reads_the_generated_keys_and_derives_the_published_key() {
    let keys = tempfile::tempdir().expect("temp dir");
    for (selector, algorithm) in [("rsa2026", "rsa-sha256"), ("ed2026", "ed25519-sha256")] {
        let (_, record) = keygen(keys.path(), selector, algorithm);
        let output = Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(keys.path().join(format!("{selector}.pem")))
            .output()
            .expect("run openssl");
        assert!(
            output.status.success(),
            "openssl cannot read the {algorithm} key: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let public = match algorithm {
            "rsa-sha256" => &output.stdout[..],
            _ => &output.stdout[output.stdout.len().saturating_sub(32)..],
        };
        let published = record.rsplit("p=").next().unwrap_or_default();
        assert_eq!(
            support::base64(public),
            published,
            "{algorithm}: the record does not publish the key's public half"
        );
    }
}

/// Verifies every DKIM-Signature of the message in `file` with dkimpy, the public keys coming
/// from `records` (name, TXT value) instead of DNS. Prints one `index:result` line each.
const VERIFY: &str = r#"
import sys, dkim
message = open(sys.argv[1], "rb").read()
records = dict(zip(sys.argv[2::2], sys.argv[3::2]))
def dnsfunc(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    return records.get(name.rstrip(".") + ".", "").encode()
count = sum(1 for line in message.split(b"\r\n") if line.lower().startswith(b"dkim-signature:"))
print("signatures:%d" % count)
for i in range(count):
    try:
        result = dkim.DKIM(message).verify(idx=i, dnsfunc=dnsfunc)
    except dkim.ValidationError as error:
        result = "False (%s)" % error
    print("%d:%s" % (i, result))
"#;

fn verify(message: &[u8], records: &[(String, String)]) -> String {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), message).expect("write message");
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(VERIFY).arg(file.path());
    for (name, value) in records {
        cmd.arg(name).arg(value);
    }
    let (code, out) = run_with_timeout(&mut cmd, Duration::from_secs(60));
    assert_eq!(
        code,
        Some(0),
        "dkimpy failed (scripts/test installs it with pip):\n{out}"
    );
    out
}

/// Alice submits one message over STARTTLS + AUTH.
/// Submits one message as Alice; returns its queue id.
fn submit(server: &TestServer, from_header: &str, to: &str, subject: &str, body: &str) -> String {
    let mut client = server.smtp("submission");
    client
        .send("EHLO laptop.example.test")
        .expect(250)
        .starttls(server.ca())
        .send("EHLO laptop.example.test")
        .expect(250)
        .auth_plain("alice@example.test", PASSWORD)
        .expect(235)
        .send("MAIL FROM:<alice@example.test>")
        .expect(250)
        .send(&format!("RCPT TO:<{to}>"))
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(
            format!(
                "From: {from_header}\r\nTo: <{to}>\r\nSubject: {subject}\r\nDate: Tue, 1 Dec 2026 12:00:00 +0000\r\nMessage-ID: <{subject}@example.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n.\r\n"
            )
            .as_bytes(),
        )
        .expect_text(250, "queued as");
    let reply = client.last_lines().join(" ");
    client.send("QUIT").expect(221);
    reply
        .split("queued as ")
        .nth(1)
        .expect("queue id")
        .trim()
        .to_string()
}

/// The mail log's DKIM line for message `id`: the event and the queue id on one line.
fn wait_for_dkim_line(server: &TestServer, id: &str, event: &str) {
    let found = relayward_testkit::wait::eventually(WAIT, || {
        server
            .log()
            .lines()
            .any(|line| line.contains(event) && line.contains(&format!("id={id}")))
    });
    assert!(found, "no {event:?} line with id={id}:\n{}", server.log());
}

fn signing_server(sink: &SmtpSink, keys: &Path) -> TestServer {
    TestServer::start(&standard_config(&format!(
        r#"
[delivery]
smarthost = "127.0.0.1:{port}"
smarthost_tls = "none"

[[dkim]]
domain = "example.test"
selector = "rsa2026"
private_key_file = "{keys}/rsa2026.pem"
algorithm = "rsa-sha256"

[[dkim]]
domain = "example.test"
selector = "ed2026"
private_key_file = "{keys}/ed2026.pem"
algorithm = "ed25519-sha256"
"#,
        port = sink.port,
        keys = keys.display()
    )))
}

/// Both signatures (RSA and Ed25519) of a relayed message verify with dkimpy on the bytes
/// smtp-sink received; 8-bit content was signed in the 7-bit form it is sent in.
#[test]
fn relayed_mail_is_signed_with_both_algorithms_and_verifies_independently() {
    let keys = tempfile::tempdir().expect("tempdir");
    let records = vec![
        keygen(keys.path(), "rsa2026", "rsa-sha256"),
        keygen(keys.path(), "ed2026", "ed25519-sha256"),
    ];
    let sink = SmtpSink::start(&[]);
    let server = signing_server(&sink, keys.path());
    let id = submit(
        &server,
        "Alice <alice@example.test>",
        "carol@far.test",
        "signed",
        "Grüße aus Köln, and a    line with   spaces",
    );
    let dump = sink
        .wait_for("Subject: signed", WAIT)
        .unwrap_or_else(|| panic!("nothing reached smtp-sink\n{}", server.log()));
    let message = dumped_message(&dump);
    let text = String::from_utf8_lossy(&message);
    assert!(
        text.contains("DKIM-Signature: v=1; a=rsa-sha256; s=rsa2026; d=example.test;"),
        "{text}"
    );
    assert!(
        text.contains("DKIM-Signature: v=1; a=ed25519-sha256; s=ed2026; d=example.test;"),
        "{text}"
    );
    assert_eq!(
        verify(&message, &records).trim(),
        "signatures:2\n0:True\n1:True",
        "{text}"
    );
    wait_for_dkim_line(&server, &id, "message DKIM-signed");

    // The same bytes with the body changed fail: the verifier is really checking.
    let tampered = text.replace("Gr=C3=BC=C3=9Fe", "Gruesse");
    assert_ne!(tampered, text);
    let result = verify(tampered.as_bytes(), &records);
    assert!(
        result.contains("0:False (body hash mismatch")
            && result.contains("1:False (body hash mismatch"),
        "{result}"
    );
}

/// A From: address Alice may not use, and a stranger's mail to a local user, are not signed.
#[test]
fn mail_the_sender_may_not_sign_for_goes_unsigned() {
    let keys = tempfile::tempdir().expect("tempdir");
    keygen(keys.path(), "rsa2026", "rsa-sha256");
    keygen(keys.path(), "ed2026", "ed25519-sha256");
    let sink = SmtpSink::start(&[]);
    let server = signing_server(&sink, keys.path());
    let id = submit(
        &server,
        "The Boss <ceo@example.test>",
        "carol@far.test",
        "forged",
        "pay this invoice",
    );
    let dump = sink
        .wait_for("Subject: forged", WAIT)
        .unwrap_or_else(|| panic!("nothing reached smtp-sink\n{}", server.log()));
    let text = String::from_utf8_lossy(&dumped_message(&dump)).into_owned();
    assert!(!text.contains("DKIM-Signature"), "{text}");
    wait_for_dkim_line(
        &server,
        &id,
        "message not DKIM-signed: From: ceo@example.test is not an address this sender may use",
    );

    server
        .smtp("mx")
        .send("EHLO client.outside.test")
        .expect(250)
        .send("MAIL FROM:<someone@outside.test>")
        .expect(250)
        .send("RCPT TO:<alice@example.test>")
        .expect(250)
        .send("DATA")
        .expect(354)
        .raw(b"From: alice@example.test\r\nSubject: inbound\r\n\r\nhi\r\n.\r\n")
        .expect(250);
    let mail = server.wait_for_mail("example.test", "alice", 1);
    assert!(!mail[0].contains("DKIM-Signature"), "{}", mail[0]);
}

/// A key file that cannot be used stops `serve` with the key and the file named.
#[test]
fn an_unreadable_key_is_refused_at_start() {
    let refusal = serve_fails(&standard_config(
        r#"
[[dkim]]
domain = "example.test"
selector = "s1"
private_key_file = "/nonexistent/s1.pem"
"#,
    ));
    assert!(
        refusal.contains("dkim[0].private_key_file: /nonexistent/s1.pem: cannot read the key"),
        "{refusal}"
    );
}

/// Runs `serve` on `config`, expecting it to stop at once with an error; its output.
fn serve_fails(config: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config.replace("DATA_DIR", &dir.path().join("data").display().to_string());
    let path = dir.path().join("relayward.toml");
    std::fs::write(&path, text).expect("write config");
    let mut cmd = Command::new(binary());
    cmd.args(["serve", "--config"]).arg(&path);
    let (code, output) = run_with_timeout(&mut cmd, WAIT);
    assert!(
        matches!(code, Some(c) if c != 0),
        "serve did not refuse:\n{output}"
    );
    output
}

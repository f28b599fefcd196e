//! The smart-host verifier against real TLS handshakes on loopback: a self-signed CA:TRUE
//! certificate given as `ca_file` is accepted as a pin (with its name checked), anything else
//! must chain to a root.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use relayward_tls::pinned::verifying_config;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

struct Pair {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

/// What `openssl req -x509 -subj /CN=NAME -addext subjectAltName=DNS:NAME` makes: a
/// self-signed certificate that says CA:TRUE.
fn self_signed_ca_true(name: &str) -> Pair {
    let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    Pair {
        cert: cert.der().clone(),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

/// A private CA and a leaf it signed for `name`.
fn ca_and_leaf(name: &str) -> (CertificateDer<'static>, Pair) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Private CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("key");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec![name.to_string()])
        .expect("params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    (
        ca.der().clone(),
        Pair {
            cert: leaf.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        },
    )
}

/// Serves one TLS handshake with `server` and returns whether a client trusting `ca_file`
/// (as pins and roots) completed it, with the error text when it did not.
async fn handshake(
    server: Pair,
    ca_file: Vec<CertificateDer<'static>>,
    name: &str,
) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    for cert in &ca_file {
        let _ = roots.add(cert.clone());
    }
    let client = verifying_config(roots, ca_file).expect("client config");
    handshake_with(server, client, name).await
}

async fn handshake_with(
    server: Pair,
    client: Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<(), String> {
    let config = rustls::ServerConfig::builder_with_provider(relayward_tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![server.cert], server.key)
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let serve = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        if let Ok(mut tls) = acceptor.accept(tcp).await {
            let _ = tls.write_all(b"220 ok\r\n").await;
            let _ = tls.shutdown().await;
        }
    });
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let server_name = ServerName::try_from(name.to_string()).expect("name");
    let result = match TlsConnector::from(client).connect(server_name, tcp).await {
        Ok(mut tls) => {
            let mut greeting = Vec::new();
            let _ = tls.read_to_end(&mut greeting).await;
            assert_eq!(greeting, b"220 ok\r\n");
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), serve).await;
    result
}

#[tokio::test]
async fn a_self_signed_ca_true_certificate_in_ca_file_is_accepted_as_a_pin() {
    let pair = self_signed_ca_true("smarthost.example.test");
    let pin = pair.cert.clone();
    assert_eq!(
        handshake(pair, vec![pin], "smarthost.example.test").await,
        Ok(())
    );
}

/// The flaw this verifier fixes: with the certificate only as a root, webpki refuses it.
#[tokio::test]
async fn plain_webpki_refuses_the_same_certificate_as_a_ca_used_as_end_entity() {
    let pair = self_signed_ca_true("smarthost.example.test");
    let mut roots = RootCertStore::empty();
    roots.add(pair.cert.clone()).expect("root");
    let plain = rustls::ClientConfig::builder_with_provider(relayward_tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let error = handshake_with(pair, Arc::new(plain), "smarthost.example.test")
        .await
        .unwrap_err();
    assert!(error.contains("CaUsedAsEndEntity"), "{error}");
}

#[tokio::test]
async fn the_pin_keeps_the_name_check() {
    let pair = self_signed_ca_true("smarthost.example.test");
    let pin = pair.cert.clone();
    let error = handshake(pair, vec![pin], "other.example.test")
        .await
        .unwrap_err();
    assert!(error.contains("not valid for name"), "{error}");
}

#[tokio::test]
async fn another_self_signed_certificate_is_not_the_pin() {
    let pinned = self_signed_ca_true("smarthost.example.test");
    let impostor = self_signed_ca_true("smarthost.example.test");
    let error = handshake(impostor, vec![pinned.cert], "smarthost.example.test")
        .await
        .unwrap_err();
    assert!(error.contains("invalid peer certificate"), "{error}");
}

#[tokio::test]
async fn a_private_ca_still_verifies_the_leaves_it_signed() {
    let (ca, leaf) = ca_and_leaf("relay.example.test");
    assert_eq!(
        handshake(leaf, vec![ca.clone()], "relay.example.test").await,
        Ok(())
    );
    let (ca2, leaf2) = ca_and_leaf("relay.example.test");
    drop(ca2);
    let error = handshake(leaf2, vec![ca], "relay.example.test")
        .await
        .unwrap_err();
    assert!(error.contains("invalid peer certificate"), "{error}");
}

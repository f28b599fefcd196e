//! Certificates for tests: a test CA with a server certificate it signed ([`test_pki`]), a
//! self-signed pair ([`self_signed`]), and the roots a test client trusts ([`Ca`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PublicKeyData};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// A test CA and a server certificate it signed.
pub struct TestPki {
    /// The CA certificate, for clients that verify.
    pub ca_pem: String,
    /// The server's certificate and key (for a server that loads files, `[tls] cert/key`).
    pub cert_pem: String,
    pub key_pem: String,
    /// A server configuration serving that certificate.
    pub server: Arc<ServerConfig>,
}

/// A fresh CA ("relayward test CA") and a leaf for `names` (DNS names or IP addresses).
pub fn test_pki(names: &[&str]) -> TestPki {
    let ca = TestCa::new();
    let leaf = ca.leaf(names);
    TestPki {
        ca_pem: ca.ca_pem.clone(),
        cert_pem: leaf.cert_pem,
        key_pem: leaf.key_pem,
        server: leaf.server,
    }
}

/// A test CA that signs as many leaves as a test needs (MX hosts and an HTTPS server that
/// all chain to one CA file).
pub struct TestCa {
    /// The CA certificate, for clients that verify.
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate signed by a [`TestCa`], its key, and a server configuration serving it.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
    /// The DER SubjectPublicKeyInfo (what a TLSA record with selector 1 describes).
    pub spki_der: Vec<u8>,
    pub server: Arc<ServerConfig>,
    /// A server configuration that sends the CA certificate after the leaf (for DANE-TA,
    /// whose trust anchor must be in the chain the server presents).
    pub chained: Arc<ServerConfig>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "relayward test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        TestCa {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            issuer: Issuer::new(ca_params, ca_key),
        }
    }

    /// A leaf for `names` (DNS names or IP addresses).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let leaf_key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let leaf = CertificateParams::new(names)
            .expect("leaf params")
            .signed_by(&leaf_key, &self.issuer)
            .expect("leaf certificate");
        let key_der = || PrivateKeyDer::try_from(leaf_key.serialize_der()).expect("key DER");
        Leaf {
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
            cert_der: leaf.der().clone(),
            spki_der: leaf_key.subject_public_key_info(),
            server: server_config(vec![leaf.der().clone()], key_der()),
            chained: server_config(vec![leaf.der().clone(), self.ca_der.clone()], key_der()),
        }
    }

    /// Writes the CA certificate to `path` (a `ca_file` for the software under test).
    pub fn write(&self, path: &Path) {
        std::fs::write(path, &self.ca_pem).expect("write CA file");
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.server))
    }

    /// Roots that trust this CA.
    pub fn ca(&self) -> Ca {
        Ca::from_pem(&self.ca_pem)
    }

    /// Writes `cert.pem` and `key.pem` into `dir`; returns their paths.
    pub fn write_pair(&self, dir: &Path) -> (PathBuf, PathBuf) {
        write_pair(dir, &self.cert_pem, &self.key_pem)
    }
}

/// A self-signed certificate and its key, PEM.
pub struct SelfSigned {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A self-signed certificate for `names` with `common_name` as its subject (so a test can tell
/// two certificates apart in a log).
pub fn self_signed(names: &[&str], common_name: &str) -> SelfSigned {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("certificate");
    SelfSigned {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

impl SelfSigned {
    /// A server configuration serving this certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key PEM");
        TlsAcceptor::from(server_config(chain, key))
    }

    /// Roots that trust exactly this certificate.
    pub fn ca(&self) -> Ca {
        Ca::from_pem(&self.cert_pem)
    }
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Arc<ServerConfig> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    Arc::new(config)
}

fn write_pair(dir: &Path, cert: &str, key: &str) -> (PathBuf, PathBuf) {
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert).expect("write cert.pem");
    std::fs::write(&key_path, key).expect("write key.pem");
    (cert_path, key_path)
}

/// ring, as everywhere in relayward.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates a test client trusts: a CA file the server wrote (its generated
/// self-signed certificate, `data_dir/tls/cert.pem`), or PEM a test made.
#[derive(Clone)]
pub struct Ca {
    roots: Arc<RootCertStore>,
}

impl Ca {
    pub fn from_pem(pem: &str) -> Ca {
        Self::from_certs(CertificateDer::pem_slice_iter(pem.as_bytes()))
    }

    pub fn from_file(path: &Path) -> Ca {
        let certs = CertificateDer::pem_file_iter(path)
            .unwrap_or_else(|e| panic!("read CA {}: {e}", path.display()));
        Self::from_certs(certs)
    }

    fn from_certs(
        certs: impl Iterator<Item = Result<CertificateDer<'static>, rustls_pki_types::pem::Error>>,
    ) -> Ca {
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots.add(cert.expect("CA certificate")).expect("add CA");
        }
        assert!(!roots.is_empty(), "no certificate in the CA");
        Ca {
            roots: Arc::new(roots),
        }
    }

    /// A client configuration that trusts these roots only.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(Arc::clone(&self.roots))
            .with_no_client_auth();
        Arc::new(config)
    }
}

impl From<&Path> for Ca {
    fn from(path: &Path) -> Ca {
        Ca::from_file(path)
    }
}

impl From<&PathBuf> for Ca {
    fn from(path: &PathBuf) -> Ca {
        Ca::from_file(path)
    }
}

impl From<PathBuf> for Ca {
    fn from(path: PathBuf) -> Ca {
        Ca::from_file(&path)
    }
}

impl From<&Ca> for Ca {
    fn from(ca: &Ca) -> Ca {
        ca.clone()
    }
}

//! The server's TLS configuration (STARTTLS and implicit TLS).
//!
//! With `[tls]` the admin's certificate chain and key are loaded. Without it a self-signed pair
//! for `hostname` (plus `localhost`, `127.0.0.1`, `::1`) is generated once into
//! `data_dir/tls/{cert.pem,key.pem}` and reused on later starts, so that AUTH, which we offer
//! only under TLS, works out of the box and clients that pin the certificate keep working.
//! Senders on port 25 do not verify certificates in practice (opportunistic TLS), so a
//! self-signed one still protects against passive eavesdropping.
//!
//! rustls with the ring provider, chosen explicitly so that no other provider can sneak in.
//! These functions do blocking file I/O: call them at startup, before accepting connections.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

/// Validity of a generated certificate.
const GENERATED_VALIDITY_DAYS: i64 = 825;
/// A generated certificate this close to expiry is replaced at start.
const RENEW_BEFORE_SECS: i64 = 30 * 24 * 3600;

/// Why TLS could not be set up. Every variant names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Certificate { path: PathBuf, message: String },
    #[error("{cert} / {key}: {message}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
    #[error("cannot generate a self-signed certificate for {hostname}: {message}")]
    Generate { hostname: String, message: String },
}

/// Where the certificate came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateSource {
    /// `[tls] cert`.
    Configured,
    /// Generated now into `data_dir/tls`.
    Generated,
    /// Generated on an earlier start and reused.
    Reused,
}

/// Facts about the leaf certificate, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The certificate file.
    pub path: PathBuf,
    /// Subject distinguished name, e.g. `CN=mx.example.test`.
    pub subject: String,
    /// Expiry as written by the certificate, e.g. `Nov 25 10:31:32 2028 +00:00`.
    pub not_after: String,
    /// Expiry in seconds since the Unix epoch.
    pub not_after_unix: i64,
    /// SHA-256 of the DER certificate, colon-separated hex (what `openssl x509 -fingerprint
    /// -sha256` prints), so admins can pin it.
    pub sha256_fingerprint: String,
    pub source: CertificateSource,
}

impl fmt::Display for CertificateInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match self.source {
            CertificateSource::Configured => "configured",
            CertificateSource::Generated => "self-signed, generated now",
            CertificateSource::Reused => "self-signed",
        };
        write!(
            f,
            "{} ({source}): subject {}, expires {}, SHA-256 {}",
            self.path.display(),
            self.subject,
            self.not_after,
            self.sha256_fingerprint
        )
    }
}

/// A ready server TLS configuration and what it serves.
#[derive(Debug, Clone)]
pub struct TlsSetup {
    pub server_config: Arc<ServerConfig>,
    pub certificate: CertificateInfo,
}

/// The paths of the generated pair: `data_dir/tls/cert.pem` and `data_dir/tls/key.pem`.
pub fn generated_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// The TLS setup for a configuration: `[tls]` files, or the generated pair.
pub fn server_tls(config: &Config) -> Result<TlsSetup, TlsError> {
    match &config.tls {
        Some(files) => load_pair(&files.cert, &files.key, CertificateSource::Configured),
        None => {
            let (cert, key) = generated_paths(&config.data_dir);
            let source = ensure_self_signed(&config.hostname, &cert, &key)?;
            load_pair(&cert, &key, source)
        }
    }
}

/// Loads a PEM certificate chain (leaf first) and a PEM private key into a server config.
pub fn load_pair(cert: &Path, key: &Path, source: CertificateSource) -> Result<TlsSetup, TlsError> {
    let chain = read_chain(cert)?;
    let private_key = read_key(key)?;
    let info = describe(cert, &chain[0], source)?;
    let server_config =
        build_server_config(chain, private_key).map_err(|message| TlsError::Pair {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            message,
        })?;
    Ok(TlsSetup {
        server_config,
        certificate: info,
    })
}

/// Makes sure a usable self-signed pair exists at `cert`/`key`: reuses it when both files exist
/// and the certificate is not about to expire, otherwise generates a new one (the key file with
/// mode 0600). A pair that exists but cannot be read is an error, not silently replaced.
pub fn ensure_self_signed(
    hostname: &str,
    cert: &Path,
    key: &Path,
) -> Result<CertificateSource, TlsError> {
    if cert.exists() && key.exists() {
        let chain = read_chain(cert)?;
        read_key(key)?;
        let info = describe(cert, &chain[0], CertificateSource::Reused)?;
        if info.not_after_unix - unix_now() > RENEW_BEFORE_SECS {
            return Ok(CertificateSource::Reused);
        }
        tracing::info!(path = %cert.display(), "generated certificate expires soon; replacing it");
    }
    let (cert_pem, key_pem) = generate_self_signed(hostname)?;
    if let Some(dir) = cert.parent() {
        create_private_dir(dir)?;
    }
    write_atomically(key, key_pem.as_bytes(), 0o600)?;
    write_atomically(cert, cert_pem.as_bytes(), 0o644)?;
    Ok(CertificateSource::Generated)
}

/// A fresh ECDSA P-256 self-signed certificate for `hostname`, `localhost`, `127.0.0.1` and
/// `::1`, as `(cert_pem, key_pem)`.
pub fn generate_self_signed(hostname: &str) -> Result<(String, String), TlsError> {
    let failed = |e: rcgen::Error| TlsError::Generate {
        hostname: hostname.to_string(),
        message: e.to_string(),
    };
    let mut names = vec![hostname.to_string()];
    if !hostname.eq_ignore_ascii_case("localhost") {
        names.push("localhost".to_string());
    }
    let mut params = CertificateParams::new(names).map_err(failed)?;
    params.subject_alt_names.extend([
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ]);
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, hostname);
    params.distinguished_name = subject;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(GENERATED_VALIDITY_DAYS);
    let key = KeyPair::generate().map_err(failed)?;
    let cert = params.self_signed(&key).map_err(failed)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads every certificate of a PEM file; at least one is required.
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            message: format!("bad PEM: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            message: "no \"BEGIN CERTIFICATE\" section found; expected a PEM certificate chain, leaf first".to_string(),
        });
    }
    Ok(chain)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let message = match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no private key found; expected a PEM \"BEGIN PRIVATE KEY\" (or RSA/EC PRIVATE KEY) section".to_string()
            }
            other => format!("bad PEM: {other}"),
        };
        TlsError::Pem {
            path: path.to_path_buf(),
            message,
        }
    })
}

fn build_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key do not fit together: {e}"))?;
    Ok(Arc::new(config))
}

fn describe(
    path: &Path,
    leaf: &CertificateDer<'_>,
    source: CertificateSource,
) -> Result<CertificateInfo, TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| TlsError::Certificate {
            path: path.to_path_buf(),
            message: format!("not a valid X.509 certificate: {e}"),
        })?;
    let not_after = cert.validity().not_after;
    Ok(CertificateInfo {
        path: path.to_path_buf(),
        subject: cert.subject().to_string(),
        not_after: not_after.to_string(),
        not_after_unix: not_after.timestamp(),
        sha256_fingerprint: fingerprint(leaf.as_ref()),
        source,
    })
}

fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Creates the directory (and parents) with mode 0700 when missing: it holds a private key.
fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| TlsError::Write {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes a file via a temporary name, fsync and rename, so a crash never leaves half a key.
/// The mode is set at creation: the key is never readable by others, not even briefly.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let failed = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("pem.tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(failed)?;
    file.write_all(contents).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    fs::rename(&tmp, path).map_err(failed)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(failed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_in(dir: &Path) -> Config {
        let text = format!(
            "hostname = \"mx.example.test\"\ndata_dir = {:?}\n[[listen]]\naddress = \"127.0.0.1:2525\"\nkind = \"mx\"\n[relay]\nlocal_domains = [\"example.test\"]\n",
            dir.display().to_string()
        );
        Config::from_toml_str(&text, "tls test").expect("parses")
    }

    #[test]
    fn generates_then_reuses_the_same_pair() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config_in(dir.path());
        let first = server_tls(&config).expect("generated");
        assert_eq!(first.certificate.source, CertificateSource::Generated);
        assert_eq!(first.certificate.subject, "CN=mx.example.test");
        assert_eq!(first.certificate.sha256_fingerprint.len(), 32 * 3 - 1);

        let (cert, key) = generated_paths(dir.path());
        let mode = |p: &Path| {
            use std::os::unix::fs::PermissionsExt as _;
            fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o777)
                .expect("metadata")
        };
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&dir.path().join("tls")), 0o700);
        let key_before = fs::read(&key).expect("key");

        let second = server_tls(&config).expect("reused");
        assert_eq!(second.certificate.source, CertificateSource::Reused);
        assert_eq!(
            second.certificate.sha256_fingerprint,
            first.certificate.sha256_fingerprint
        );
        assert_eq!(fs::read(&key).expect("key"), key_before);
        assert!(
            second.certificate.to_string().contains("SHA-256"),
            "{}",
            second.certificate
        );
        assert!(cert.exists());
    }

    #[test]
    fn generated_certificate_names_host_localhost_and_loopback() {
        let (cert_pem, _) = generate_self_signed("mx.example.test").expect("generated");
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("pem");
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("x509");
        let san = cert
            .subject_alternative_name()
            .expect("extension ok")
            .expect("has SAN");
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        let loopback6 = "IPAddress(00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:01)";
        for expected in [
            "DNSName(mx.example.test)",
            "DNSName(localhost)",
            "IPAddress(7f:00:00:01)",
            loopback6,
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} missing from {names:?}"
            );
        }
    }

    #[test]
    fn bad_pem_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (good_cert, good_key) = generate_self_signed("mx.example.test").expect("generated");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            fs::write(&path, text).expect("write");
            path
        };
        let cert = write("cert.pem", &good_cert);
        let key = write("key.pem", &good_key);
        let garbage = write("garbage.pem", "this is not PEM\n");
        let broken = write("broken.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n");
        let (other_cert, _) = generate_self_signed("other.example.test").expect("generated");
        let other = write("other.pem", &other_cert);
        let missing = dir.path().join("missing.pem");

        assert!(load_pair(&cert, &key, CertificateSource::Configured).is_ok());
        let rows: Vec<(&Path, &Path, &str)> = vec![
            (&garbage, &key, "garbage.pem"),
            (&broken, &key, "broken.pem"),
            (&cert, &garbage, "garbage.pem"),
            (&cert, &cert, "no private key"),
            (&key, &key, "BEGIN CERTIFICATE"),
            (&missing, &key, "missing.pem"),
            (&other, &key, "do not fit"),
        ];
        for (c, k, expected) in rows {
            let err = load_pair(c, k, CertificateSource::Configured).expect_err(expected);
            assert!(err.to_string().contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn unreadable_generated_pair_is_an_error_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config_in(dir.path());
        server_tls(&config).expect("generated");
        let (_, key) = generated_paths(dir.path());
        fs::write(&key, "garbage").expect("write");
        let err = server_tls(&config).expect_err("bad key");
        assert!(err.to_string().contains("key.pem"), "{err}");
        assert_eq!(fs::read(&key).expect("key"), b"garbage");
    }
}

//! DANE for MX delivery (RFC 7672): TLSA records looked up with DNSSEC validation, and the
//! certificate check they call for.
//!
//! - [`DaneResolver`]: hickory-resolver validating DNSSEC itself against the trust anchor
//!   (`[dns] trust_anchor`, default the IANA root keys compiled into hickory), used for TLSA
//!   lookups only. DANE needs a resolver that passes DNSSEC records on; before relying on one,
//!   relayward checks that it can validate the root zone's keys with the trust anchor, and
//!   while it cannot, DANE is not applied (logged as a warning): mail goes by MTA-STS or
//!   opportunistically, as with a resolver that never sets the AD bit for Postfix.
//! - [`DaneResolver::tlsa`]: `_PORT._tcp.HOST` TLSA. Authenticated records of usage 3
//!   (DANE-EE) or 2 (DANE-TA) → verified TLS or the host is not used; authenticated records
//!   none of which is usable → TLS without authentication, never clear text (§2.2); no
//!   records, or records from an unsigned zone → no DANE; a lookup that fails or does not
//!   validate (bogus) → the host is not used now (§2.1.1).
//! - [`DaneVerifier`]: the rustls certificate check. DANE-EE: the server's certificate (selector
//!   0) or public key (selector 1), exactly or by SHA-256/512, no name or date check (§3.1.1).
//!   DANE-TA: a certificate the server sent anchors an ordinary path validation of its
//!   certificate, the MX host name included (§3.1.2, §3.2.2).
//!
//! Simplifications: the MX and address records are not required to be authenticated too (a
//! forged MX leads to a host whose TLSA the forger controls, which is no worse than no DANE);
//! TLSA names reached through CNAMEs are not followed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::rr::{RData, RecordType};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
};

use crate::config::ConfigError;

/// How long a finding about DNSSEC availability holds.
const AVAILABLE_FOR: Duration = Duration::from_secs(300);
const UNAVAILABLE_FOR: Duration = Duration::from_secs(60);

/// One TLSA record (RFC 6698 §2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsaRecord {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

impl TlsaRecord {
    /// Usage 2 or 3 with a known selector and matching type: what SMTP can use (RFC 7672
    /// §3.1.3: PKIX-TA and PKIX-EE are not for SMTP).
    pub fn is_usable(&self) -> bool {
        matches!(self.usage, 2 | 3) && self.selector <= 1 && self.matching <= 2
    }

    /// Whether `cert` is what this record describes.
    pub fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        let selected: &[u8] = match self.selector {
            0 => cert.as_ref(),
            1 => match spki(cert) {
                Some(spki) => spki,
                None => return false,
            },
            _ => return false,
        };
        match self.matching {
            0 => selected == self.data.as_slice(),
            1 => ring::digest::digest(&ring::digest::SHA256, selected).as_ref() == self.data,
            2 => ring::digest::digest(&ring::digest::SHA512, selected).as_ref() == self.data,
            _ => false,
        }
    }
}

/// The DER SubjectPublicKeyInfo of a certificate.
fn spki<'a>(cert: &'a CertificateDer<'_>) -> Option<&'a [u8]> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.tbs_certificate.subject_pki.raw)
}

/// What the TLSA lookup for one MX host said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsaAnswer {
    /// No DANE for this host: no TLSA records, an unsigned zone, or no DNSSEC validation
    /// available through the resolver.
    None,
    /// Authenticated records, the usable ones.
    Usable(Arc<Vec<TlsaRecord>>),
    /// Authenticated records, none usable: TLS is required, authentication is not.
    Unusable,
    /// The lookup failed or did not validate: the host is not to be used now.
    Failed(String),
}

/// The validating resolver for TLSA lookups (see the module documentation).
pub struct DaneResolver {
    inner: TokioResolver,
    /// Whether DNSSEC validation works through the resolver, and since when that is known.
    available: Mutex<Option<(Instant, bool)>>,
}

impl DaneResolver {
    /// The same nameservers as [`crate::mx::MxResolver`], with validation against the trust
    /// anchor file (zone-file DNSKEY lines, `. IN DNSKEY 257 3 8 …`) or hickory's root keys.
    pub fn new(
        nameservers: &[SocketAddr],
        cache_size: u64,
        timeout: Duration,
        trust_anchor: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let anchors = match trust_anchor {
            Some(path) => TrustAnchors::from_file(path)
                .map_err(|e| ConfigError::TrustAnchor(format!("{}: {e}", path.display())))?,
            None => TrustAnchors::default(),
        };
        let inner = crate::mx::resolver_builder(nameservers, cache_size, timeout)?
            .with_trust_anchor(Arc::new(anchors))
            .build()
            .map_err(|e| ConfigError::Resolver(e.to_string()))?;
        Ok(Self {
            inner,
            available: Mutex::new(None),
        })
    }

    /// The TLSA records for `host`'s SMTP service on `port`.
    pub async fn tlsa(&self, host: &str, port: u16) -> TlsaAnswer {
        if !self.dnssec_available().await {
            return TlsaAnswer::None;
        }
        let name = format!("_{port}._tcp.{}.", host.trim_end_matches('.'));
        let lookup = match self.inner.lookup(name.as_str(), RecordType::TLSA).await {
            Ok(lookup) => lookup,
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => return TlsaAnswer::None,
            // A denial that is insecure (unsigned zone) or indeterminate: no DANE.
            Err(NetError::Dns(DnsError::Nsec { proof, .. })) if proof != Proof::Bogus => {
                return TlsaAnswer::None;
            }
            Err(e) => return TlsaAnswer::Failed(format!("TLSA lookup of {name}: {e}")),
        };
        let records: Vec<(Proof, TlsaRecord)> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TLSA(tlsa) => Some((
                    r.proof,
                    TlsaRecord {
                        usage: tlsa.cert_usage.into(),
                        selector: tlsa.selector.into(),
                        matching: tlsa.matching.into(),
                        data: tlsa.cert_data.clone(),
                    },
                )),
                _ => None,
            })
            .collect();
        if records.is_empty() || records.iter().any(|(proof, _)| !proof.is_secure()) {
            // Nothing, or records an attacker could have made (unsigned zone).
            return TlsaAnswer::None;
        }
        let usable: Vec<TlsaRecord> = records
            .into_iter()
            .map(|(_, record)| record)
            .filter(TlsaRecord::is_usable)
            .collect();
        if usable.is_empty() {
            TlsaAnswer::Unusable
        } else {
            TlsaAnswer::Usable(Arc::new(usable))
        }
    }

    /// Whether the root zone's DNSKEY RRset validates against the trust anchor through this
    /// resolver (rechecked every few minutes).
    async fn dnssec_available(&self) -> bool {
        if let Some((since, available)) = *self.lock() {
            let valid_for = if available {
                AVAILABLE_FOR
            } else {
                UNAVAILABLE_FOR
            };
            if since.elapsed() < valid_for {
                return available;
            }
        }
        let available = match self.inner.lookup(".", RecordType::DNSKEY).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .any(|r| r.record_type() == RecordType::DNSKEY && r.proof.is_secure()),
            Err(_) => false,
        };
        if !available {
            tracing::warn!(
                "DANE not applied: DNSSEC cannot be validated through the configured resolver (the root zone's keys do not validate against the trust anchor); check [dns] nameservers and trust_anchor"
            );
        }
        *self.lock() = Some((Instant::now(), available));
        available
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, bool)>> {
        self.available
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A client configuration that accepts exactly what `records` describe (see
/// [`DaneVerifier`]).
pub fn client_config(records: Arc<Vec<TlsaRecord>>) -> Result<Arc<ClientConfig>, Error> {
    relayward_tls::config_with_verifier(Arc::new(DaneVerifier {
        records,
        provider: relayward_tls::provider(),
    }))
}

/// Why a DANE handshake failed, as the log and the queue entry say it.
#[derive(Debug, thiserror::Error)]
#[error("no TLSA record of the host matches its certificate")]
struct NoTlsaMatch;

/// The RFC 7672 §3 certificate check (see the module documentation). Handshake signatures
/// are checked as always.
#[derive(Debug)]
pub struct DaneVerifier {
    records: Arc<Vec<TlsaRecord>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let of_usage = |usage: u8| self.records.iter().filter(move |r| r.usage == usage);
        if of_usage(3).any(|r| r.matches(end_entity)) {
            return Ok(ServerCertVerified::assertion());
        }
        for anchor in intermediates {
            if !of_usage(2).any(|r| r.matches(anchor)) {
                continue;
            }
            let mut roots = RootCertStore::empty();
            if roots.add(anchor.clone().into_owned()).is_err() {
                continue;
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::clone(&self.provider),
            )
            .build()
            .map_err(|e| Error::General(format!("certificate verifier: {e}")))?;
            if webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .is_ok()
            {
                return Ok(ServerCertVerified::assertion());
            }
        }
        Err(Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(NoTlsaMatch)),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate() -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["mx.test".to_string()]).expect("params");
        params.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn selectors_and_matching_types() {
        let cert = certificate();
        let spki = spki(&cert).expect("spki").to_vec();
        let sha256 = |b: &[u8]| {
            ring::digest::digest(&ring::digest::SHA256, b)
                .as_ref()
                .to_vec()
        };
        let sha512 = |b: &[u8]| {
            ring::digest::digest(&ring::digest::SHA512, b)
                .as_ref()
                .to_vec()
        };
        let record = |selector, matching, data| TlsaRecord {
            usage: 3,
            selector,
            matching,
            data,
        };
        for matching_record in [
            record(0, 0, cert.to_vec()),
            record(0, 1, sha256(&cert)),
            record(0, 2, sha512(&cert)),
            record(1, 0, spki.clone()),
            record(1, 1, sha256(&spki)),
            record(1, 2, sha512(&spki)),
        ] {
            assert!(matching_record.matches(&cert), "{matching_record:?}");
        }
        let other = certificate();
        assert!(!record(1, 1, sha256(&spki)).matches(&other));
        assert!(!record(2, 1, sha256(&spki)).matches(&other));
        assert!(
            !record(1, 3, sha256(&spki)).matches(&cert),
            "unknown matching type"
        );
    }

    #[test]
    fn only_dane_usages_are_usable_for_smtp() {
        let record = |usage, selector, matching| TlsaRecord {
            usage,
            selector,
            matching,
            data: vec![],
        };
        assert!(record(3, 1, 1).is_usable());
        assert!(record(2, 0, 2).is_usable());
        assert!(!record(1, 1, 1).is_usable(), "PKIX-EE");
        assert!(!record(0, 1, 1).is_usable(), "PKIX-TA");
        assert!(!record(3, 2, 1).is_usable());
        assert!(!record(3, 1, 3).is_usable());
    }
}

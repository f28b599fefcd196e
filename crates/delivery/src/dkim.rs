//! DKIM signing (RFC 6376; Ed25519 from RFC 8463) of mail relayed for users and trusted
//! networks, and the keys it needs (`relayward dkim keygen`).
//!
//! Signing happens once, before the message is queued, so every retry and every next hop
//! gets the same bytes. Anything the delivery client would otherwise change on the way out
//! is therefore done first, on the bytes that are signed:
//! - lines longer than 998 octets are folded or wrapped ([`wrap_long_lines`]), and
//! - 8-bit content is re-encoded 7-bit ([`downgrade`]), because a peer without 8BITMIME
//!   would otherwise receive a re-encoded body whose hash no longer matches. (Postfix with
//!   OpenDKIM has the same hazard; the cure is the same: sign what will be sent.)
//!
//! Which messages are signed is decided by the session (`relayward_server::sign`); here, a
//! message is signed when a `[[dkim]]` key exists for its single `From:` address's domain
//! and the caller allows that address. The crypto and canonicalisation are `mail-auth`'s
//! (relaxed/relaxed); key generation uses `ring` (Ed25519) and `rsa` (RSA: ring cannot
//! generate RSA keys; `rsa` is used only to generate, never to sign).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use base64::Engine as _;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use relayward_config::dkim::{DkimAlgorithm, DkimKey};
pub use relayward_protocol::signing::{AllowedFrom, Signing};
use relayward_protocol::{header, idn, wrap::wrap_long_lines};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::downgrade::{downgrade, is_8bit};

/// A key that cannot be used, named by its file and the configuration key.
#[derive(Debug)]
pub struct KeyError {
    pub key: String,
    pub file: PathBuf,
    pub problem: String,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.key, self.file.display(), self.problem)
    }
}

impl std::error::Error for KeyError {}

/// A ready signer: key, domain, selector, header list and canonicalisation, built once.
enum SigningKey {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

struct LoadedKey {
    domain: String,
    selector: String,
    algorithm: DkimAlgorithm,
    signer: SigningKey,
}

/// Every `[[dkim]]` key, loaded, by signing domain (lower-case A-label).
pub struct DkimSigners {
    by_domain: HashMap<String, Vec<LoadedKey>>,
}

impl DkimSigners {
    /// Loads every key; `Ok(None)` when there are none. Errors name the key and file.
    pub fn load(keys: &[DkimKey]) -> Result<Option<DkimSigners>, KeyError> {
        if keys.is_empty() {
            return Ok(None);
        }
        let mut by_domain: HashMap<String, Vec<LoadedKey>> = HashMap::new();
        for (i, config) in keys.iter().enumerate() {
            let signer = load_key(config).map_err(|problem| KeyError {
                key: format!("dkim[{i}].private_key_file"),
                file: config.private_key_file.clone(),
                problem,
            })?;
            let domain = canonical_domain(&config.domain);
            by_domain
                .entry(domain.clone())
                .or_default()
                .push(LoadedKey {
                    domain,
                    selector: config.selector.clone(),
                    algorithm: config.algorithm,
                    signer,
                });
        }
        Ok(Some(DkimSigners { by_domain }))
    }

    /// Signs `content` (a whole message, header and body) with every key of its `From:`
    /// domain, when `allowed` lets it. CPU-bound: call it off the async runtime.
    pub fn sign(&self, content: &[u8], allowed: &AllowedFrom) -> Signing {
        let from = match single_from(content) {
            Ok(from) => from,
            Err(reason) => return Signing::Unsigned { reason },
        };
        let Some((_, from_domain)) = from.rsplit_once('@') else {
            return unsigned(format!("From: {from:?} has no domain"));
        };
        let Some(keys) = self.by_domain.get(&canonical_domain(from_domain)) else {
            return unsigned(format!("no [[dkim]] key for {from_domain}"));
        };
        if !allowed.allows(&from) {
            return unsigned(format!(
                "From: {from} is not an address this sender may use"
            ));
        }
        let stable = signable_form(content);
        let mut fields = String::new();
        let mut signatures = Vec::new();
        for key in keys {
            match key.sign(&stable) {
                Ok(field) => {
                    fields.push_str(&field);
                    signatures.push(format!(
                        "d={} s={} a={}",
                        key.domain, key.selector, key.algorithm
                    ));
                }
                Err(error) => {
                    return unsigned(format!(
                        "signing with {}._domainkey.{} failed: {error}",
                        key.selector, key.domain
                    ));
                }
            }
        }
        let mut signed = Vec::with_capacity(fields.len() + stable.len());
        signed.extend_from_slice(fields.as_bytes());
        signed.extend_from_slice(&stable);
        Signing::Signed {
            content: signed,
            signatures,
        }
    }
}

fn unsigned(reason: String) -> Signing {
    Signing::Unsigned { reason }
}

impl LoadedKey {
    /// The `DKIM-Signature:` field (with its CRLF) for `content`.
    fn sign(&self, content: &[u8]) -> Result<String, mail_auth::Error> {
        let signature = match &self.signer {
            SigningKey::Rsa(signer) => signer.sign(content)?,
            SigningKey::Ed25519(signer) => signer.sign(content)?,
        };
        Ok(signature.to_header())
    }
}

/// The signer for one `[[dkim]]` entry: relaxed/relaxed, which survives the header
/// refolding and whitespace changes of ordinary relays.
fn signer<K: mail_auth::common::crypto::SigningKey>(
    key: K,
    config: &DkimKey,
) -> DkimSigner<K, Done> {
    DkimSigner::from_key(key)
        .domain(canonical_domain(&config.domain))
        .selector(config.selector.clone())
        .headers(config.signed_headers())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

/// The message as every next hop will receive it: wrapped to 998 octets and 7-bit clean
/// where it can be made so (a message the downgrade cannot convert is signed as it is; it
/// can then only go to peers with 8BITMIME, which get it unchanged).
fn signable_form(content: &[u8]) -> Cow<'_, [u8]> {
    let mut form = Cow::Borrowed(content);
    if is_8bit(&form)
        && let Ok(Cow::Owned(seven_bit)) = downgrade(&form)
    {
        form = Cow::Owned(seven_bit);
    }
    if let Cow::Owned(wrapped) = wrap_long_lines(&form) {
        form = Cow::Owned(wrapped);
    }
    form
}

/// The address of the message's one `From:` field. Several `From:` fields (or several
/// addresses in one) are refused: a receiver may show a different one from the one signed.
fn single_from(content: &[u8]) -> Result<String, String> {
    match header::count(content, "From") {
        0 => return Err("no From: field".to_owned()),
        1 => {}
        n => return Err(format!("{n} From: fields")),
    }
    let message = mail_parser::MessageParser::default()
        .parse_headers(content)
        .ok_or_else(|| "unreadable header".to_owned())?;
    let addresses: Vec<&str> = message
        .from()
        .map(|from| from.iter().filter_map(|a| a.address()).collect())
        .unwrap_or_default();
    match addresses.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => Err("From: holds no address".to_owned()),
        _ => Err("From: holds several addresses".to_owned()),
    }
}

/// Domains compare as lower-case A-labels, as everywhere in relayward.
fn canonical_domain(domain: &str) -> String {
    idn::to_ascii(domain).unwrap_or_else(|_| domain.to_ascii_lowercase())
}

fn load_key(config: &DkimKey) -> Result<SigningKey, String> {
    let pem =
        std::fs::read(&config.private_key_file).map_err(|e| format!("cannot read the key: {e}"))?;
    let der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("not a PEM private key ({e}); `relayward dkim keygen` writes one"))?;
    match config.algorithm {
        DkimAlgorithm::RsaSha256 => RsaKey::<Sha256>::from_key_der(der)
            .map(|key| SigningKey::Rsa(signer(key, config)))
            .map_err(|e| format!("not a usable RSA key for rsa-sha256: {e}")),
        DkimAlgorithm::Ed25519Sha256 => match der {
            PrivateKeyDer::Pkcs8(pkcs8) => {
                Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der())
                    .map(|key| SigningKey::Ed25519(signer(key, config)))
                    .map_err(|e| format!("not a usable Ed25519 key for ed25519-sha256: {e}"))
            }
            _ => Err("ed25519-sha256 needs a PKCS#8 (\"PRIVATE KEY\") Ed25519 key".to_owned()),
        },
    }
}

/// A new key pair: the private key as PEM, and the DNS record that publishes its public half.
pub struct GeneratedKey {
    pub private_key_pem: String,
    pub record_name: String,
    pub record_value: String,
}

/// Generates a key for `selector._domainkey.domain`. RSA keys have `rsa_bits` bits.
pub fn generate_key(
    domain: &str,
    selector: &str,
    algorithm: DkimAlgorithm,
    rsa_bits: usize,
) -> Result<GeneratedKey, String> {
    let (private_key_pem, public_key) = match algorithm {
        DkimAlgorithm::RsaSha256 => generate_rsa(rsa_bits)?,
        DkimAlgorithm::Ed25519Sha256 => generate_ed25519()?,
    };
    Ok(GeneratedKey {
        private_key_pem,
        record_name: format!("{selector}._domainkey.{}.", canonical_domain(domain)),
        record_value: format!(
            "v=DKIM1; k={}; p={}",
            algorithm.key_type(),
            base64::engine::general_purpose::STANDARD.encode(public_key)
        ),
    })
}

/// RSA: PKCS#8 PEM private key, and the SubjectPublicKeyInfo DER that `p=` carries (RFC 6376
/// §3.6.1; what `openssl rsa -pubout` gives and every verifier reads).
fn generate_rsa(bits: usize) -> Result<(String, Vec<u8>), String> {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
        .map_err(|e| format!("cannot generate an RSA key: {e}"))?;
    let pem = private
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| format!("cannot encode the RSA key: {e}"))?;
    let public = rsa::RsaPublicKey::from(&private)
        .to_public_key_der()
        .map_err(|e| format!("cannot encode the RSA public key: {e}"))?;
    Ok((pem.to_string(), public.as_bytes().to_vec()))
}

/// Ed25519: PKCS#8 PEM private key, and the raw 32-octet public key `p=` carries (RFC 8463
/// §4.2). The file is the RFC 8410 form (PKCS#8 v1, the 32-octet seed only), which OpenSSL,
/// Go and every DKIM signer read; ring generates v2 (RFC 5958, the public key added), which
/// OpenSSL 3.0 refuses as "unsupported", so an administrator could not inspect the key or
/// use it elsewhere.
fn generate_ed25519() -> Result<(String, Vec<u8>), String> {
    use ring::signature::{Ed25519KeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| "cannot generate an Ed25519 key".to_owned())?;
    let v1 = ed25519_pkcs8_v1(pkcs8.as_ref())
        .ok_or_else(|| "unexpected layout of the generated Ed25519 key".to_owned())?;
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&v1)
        .map_err(|_| "cannot read back the generated Ed25519 key".to_owned())?;
    let pem = pem_encode("PRIVATE KEY", &v1);
    Ok((pem, pair.public_key().as_ref().to_vec()))
}

/// The DER prefix of an RFC 8410 Ed25519 private key: SEQUENCE { version 0, AlgorithmIdentifier
/// { id-Ed25519 }, OCTET STRING { OCTET STRING (32 octets) } }; the seed follows.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Rewrites ring's PKCS#8 v2 document as v1: ring's v2 is the same structure with version 1
/// and the public key appended, so the seed sits at the same offset. `None` for any other
/// layout.
fn ed25519_pkcs8_v1(v2: &[u8]) -> Option<Vec<u8>> {
    let (head, rest) = v2.split_at_checked(ED25519_PKCS8_V1_PREFIX.len())?;
    let version_1 = head[0] == 0x30 && head[2..5] == [0x02, 0x01, 0x01];
    if !version_1 || head[5..] != ED25519_PKCS8_V1_PREFIX[5..] {
        return None;
    }
    let mut v1 = ED25519_PKCS8_V1_PREFIX.to_vec();
    v1.extend_from_slice(rest.get(..32)?);
    Some(v1)
}

/// RFC 7468 PEM: base64 in 64-character lines between the labels.
fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn signers_for(algorithm: DkimAlgorithm, dir: &Path) -> DkimSigners {
        let generated = generate_key("Example.TEST", "rw2026", algorithm, 2048).expect("key");
        let file = dir.join(format!("{}.pem", algorithm.key_type()));
        std::fs::write(&file, generated.private_key_pem).expect("write key");
        DkimSigners::load(&[DkimKey {
            domain: "example.test".into(),
            selector: "rw2026".into(),
            private_key_file: file,
            algorithm,
            headers: None,
        }])
        .expect("load")
        .expect("some")
    }

    const MESSAGE: &[u8] =
        b"From: Alice <alice@example.test>\r\nTo: bob@other.test\r\nSubject: hi\r\n\r\nbody\r\n";

    #[test]
    fn a_message_from_a_signing_domain_gets_one_signature_per_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        for algorithm in [DkimAlgorithm::RsaSha256, DkimAlgorithm::Ed25519Sha256] {
            let signers = signers_for(algorithm, dir.path());
            let allowed = AllowedFrom::Addresses(vec!["ALICE@example.test".into()]);
            match signers.sign(MESSAGE, &allowed) {
                Signing::Signed {
                    content,
                    signatures,
                } => {
                    let text = String::from_utf8(content).expect("utf8");
                    assert!(text.starts_with("DKIM-Signature: v=1; a="), "{text}");
                    assert!(
                        text.contains(" s=rw2026; d=example.test; c=relaxed/relaxed;"),
                        "{text}"
                    );
                    assert!(text.ends_with("\r\n\r\nbody\r\n"), "{text}");
                    assert_eq!(
                        signatures,
                        [format!("d=example.test s=rw2026 a={algorithm}")]
                    );
                }
                other => panic!("{algorithm}: not signed: {other:?}"),
            }
        }
    }

    #[test]
    fn unauthorised_unknown_or_ambiguous_senders_are_not_signed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let signers = signers_for(DkimAlgorithm::Ed25519Sha256, dir.path());
        let cases: &[(&[u8], AllowedFrom, &str)] = &[
            (
                MESSAGE,
                AllowedFrom::Addresses(vec!["bob@example.test".into()]),
                "not an address this sender may use",
            ),
            (
                MESSAGE,
                AllowedFrom::Domain("other.test".into()),
                "not an address this sender may use",
            ),
            (
                b"From: x@elsewhere.test\r\n\r\nb\r\n",
                AllowedFrom::Domain("elsewhere.test".into()),
                "no [[dkim]] key for elsewhere.test",
            ),
            (
                b"From: a@example.test\r\nFrom: b@example.test\r\n\r\nb\r\n",
                AllowedFrom::Domain("example.test".into()),
                "2 From: fields",
            ),
            (
                b"From: a@example.test, b@example.test\r\n\r\nb\r\n",
                AllowedFrom::Domain("example.test".into()),
                "several addresses",
            ),
            (
                b"Subject: none\r\n\r\nb\r\n",
                AllowedFrom::Domain("example.test".into()),
                "no From: field",
            ),
        ];
        for (message, allowed, why) in cases {
            match signers.sign(message, allowed) {
                Signing::Unsigned { reason } => assert!(reason.contains(why), "{reason}"),
                Signing::Signed { .. } => panic!("signed: {}", String::from_utf8_lossy(message)),
            }
        }
        let trusted = AllowedFrom::Domain("EXAMPLE.test".into());
        assert!(matches!(
            signers.sign(MESSAGE, &trusted),
            Signing::Signed { .. }
        ));
    }

    #[test]
    fn eight_bit_content_is_signed_in_its_seven_bit_form() {
        let dir = tempfile::tempdir().expect("tempdir");
        let signers = signers_for(DkimAlgorithm::Ed25519Sha256, dir.path());
        let message = "From: alice@example.test\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße\r\n";
        let allowed = AllowedFrom::Domain("example.test".into());
        let Signing::Signed { content, .. } = signers.sign(message.as_bytes(), &allowed) else {
            panic!("not signed");
        };
        assert!(content.is_ascii(), "{}", String::from_utf8_lossy(&content));
    }

    #[test]
    fn generated_records_publish_the_public_key() {
        let rsa = generate_key("example.test", "s1", DkimAlgorithm::RsaSha256, 2048).expect("rsa");
        assert_eq!(rsa.record_name, "s1._domainkey.example.test.");
        // SubjectPublicKeyInfo of an RSA key starts with these octets in base64.
        assert!(
            rsa.record_value
                .starts_with("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A"),
            "{}",
            rsa.record_value
        );
        assert!(
            rsa.private_key_pem
                .starts_with("-----BEGIN PRIVATE KEY-----\n")
        );
        let ed = generate_key("exämple.test", "s2", DkimAlgorithm::Ed25519Sha256, 0).expect("ed");
        assert_eq!(ed.record_name, "s2._domainkey.xn--exmple-cua.test.");
        let p = ed
            .record_value
            .strip_prefix("v=DKIM1; k=ed25519; p=")
            .expect("prefix");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(p)
            .expect("base64");
        assert_eq!(raw.len(), 32);
    }

    #[test]
    fn unusable_key_files_are_named_with_the_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("bad.pem");
        std::fs::write(&file, "not a key").expect("write");
        let key = |algorithm| DkimKey {
            domain: "example.test".into(),
            selector: "s".into(),
            private_key_file: file.clone(),
            algorithm,
            headers: None,
        };
        let error = DkimSigners::load(&[key(DkimAlgorithm::RsaSha256)])
            .err()
            .expect("error");
        assert_eq!(error.key, "dkim[0].private_key_file");
        assert!(error.problem.contains("not a PEM private key"), "{error}");
        let ed = generate_key("example.test", "s", DkimAlgorithm::Ed25519Sha256, 0).expect("ed");
        std::fs::write(&file, ed.private_key_pem).expect("write");
        let error = DkimSigners::load(&[key(DkimAlgorithm::RsaSha256)])
            .err()
            .expect("an Ed25519 key is not an RSA key");
        assert!(error.problem.contains("not a usable RSA key"), "{error}");
        // A key in ring's PKCS#8 v2 form, as `dkim keygen` wrote before it wrote RFC 8410's,
        // still loads.
        let v2 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .expect("v2 key");
        std::fs::write(&file, pem_encode("PRIVATE KEY", v2.as_ref())).expect("write");
        assert!(DkimSigners::load(&[key(DkimAlgorithm::Ed25519Sha256)]).is_ok());
        let missing = dir.path().join("missing.pem");
        let error = DkimSigners::load(&[DkimKey {
            private_key_file: missing,
            ..key(DkimAlgorithm::Ed25519Sha256)
        }])
        .err()
        .expect("missing");
        assert!(error.problem.contains("cannot read the key"), "{error}");
    }
}

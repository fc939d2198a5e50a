//! Ed25519 keys and DSSE envelopes.
//!
//! An envelope is `{"payloadType": …, "payload": BASE64, "signatures":
//! [{"keyid": …, "sig": BASE64}]}`; each signature is a plain Ed25519
//! signature over the DSSE pre-authentication encoding (see [`pae`]) of the
//! payload type and the payload bytes, so `openssl pkeyutl -verify -rawin`
//! can check it.

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::spki::SubjectPublicKeyInfoRef;
use ed25519_dalek::pkcs8::{
    Document, EncodePublicKey, ObjectIdentifier, PrivateKeyInfo, SecretDocument,
};
use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};

use crate::error::AttestError;
use crate::util::sha256_hex;

/// DSSE payload type of in-toto statements.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

const ED25519_OID: &str = "1.3.101.112";
const MAKE_KEY: &str = "make an Ed25519 key with `openssl genpkey -algorithm ed25519 -out key.pem`";
const MAKE_PUB: &str = "export its public key with `openssl pkey -in key.pem -pubout -out key.pub`";

/// DSSE v1 pre-authentication encoding:
/// `"DSSEv1" SP LEN(type) SP type SP LEN(payload) SP payload`, lengths in
/// ASCII decimal bytes. This is what gets signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// An Ed25519 private key, read from a PKCS#8 PEM file as written by
/// `openssl genpkey -algorithm ed25519 -out key.pem`.
pub struct SigningKey {
    inner: ed25519_dalek::SigningKey,
}

/// An Ed25519 public key, read from an SPKI PEM file as written by
/// `openssl pkey -in key.pem -pubout -out key.pub`.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    inner: ed25519_dalek::VerifyingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.verifying_key().keyid())
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({})", self.keyid())
    }
}

fn read_key_file(path: &Path) -> Result<String, AttestError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            AttestError::KeyMissing {
                path: shown.clone(),
            }
        } else {
            AttestError::KeyRead {
                path: shown.clone(),
                source,
            }
        }
    })?;
    String::from_utf8(bytes).map_err(|_| AttestError::NotPem {
        path: shown,
        detail: "it is binary; a DER key converts with \
                 `openssl pkey -inform DER -in key.der -out key.pem`"
            .into(),
    })
}

/// The label of the first PEM block (`PRIVATE KEY` for
/// `-----BEGIN PRIVATE KEY-----`).
fn pem_label(text: &str, origin: &str) -> Result<String, AttestError> {
    text.lines()
        .map(str::trim)
        .find_map(|l| {
            l.strip_prefix("-----BEGIN ")
                .and_then(|r| r.strip_suffix("-----"))
        })
        .map(str::to_string)
        .ok_or_else(|| AttestError::NotPem {
            path: origin.to_string(),
            detail: "no '-----BEGIN …-----' line".into(),
        })
}

/// The PEM block starting at its BEGIN line (text before it is ignored, as
/// openssl does).
fn pem_block(text: &str) -> &str {
    text.find("-----BEGIN ")
        .map_or(text, |start| &text[start..])
}

fn algorithm_name(oid: &ObjectIdentifier) -> String {
    match oid.to_string().as_str() {
        "1.2.840.113549.1.1.1" => "RSA".into(),
        "1.2.840.113549.1.1.10" => "RSA-PSS".into(),
        "1.2.840.10045.2.1" => "EC (ECDSA)".into(),
        "1.2.840.10040.4.1" => "DSA".into(),
        "1.3.101.110" => "X25519".into(),
        "1.3.101.111" => "X448".into(),
        "1.3.101.113" => "Ed448".into(),
        other => format!("algorithm {other}"),
    }
}

fn label_kind(label: &str) -> String {
    match label {
        "RSA PRIVATE KEY" => "an RSA private key (PKCS#1)".into(),
        "EC PRIVATE KEY" => "an EC private key".into(),
        "DSA PRIVATE KEY" => "a DSA private key".into(),
        "OPENSSH PRIVATE KEY" => "an OpenSSH private key".into(),
        "ENCRYPTED PRIVATE KEY" => "a passphrase-protected private key".into(),
        "PRIVATE KEY" => "a private key".into(),
        "PUBLIC KEY" => "a public key".into(),
        "RSA PUBLIC KEY" => "an RSA public key".into(),
        "CERTIFICATE" => "a certificate".into(),
        "PGP PUBLIC KEY BLOCK" | "PGP PRIVATE KEY BLOCK" => "an OpenPGP key".into(),
        other => format!("a PEM block of type '{other}'"),
    }
}

const WANT_PRIVATE: &str = "an Ed25519 private key in PKCS#8 PEM ('-----BEGIN PRIVATE KEY-----')";
const WANT_PUBLIC: &str = "an Ed25519 public key in SPKI PEM ('-----BEGIN PUBLIC KEY-----')";

impl SigningKey {
    /// Reads a PKCS#8 PEM Ed25519 private key. Errors say whether the file is
    /// missing, not PEM, or another kind of key, and how to make a right one.
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<SigningKey, AttestError> {
        let path = path.as_ref();
        let text = read_key_file(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// As [`SigningKey::from_pem_file`], from the file's text.
    pub fn from_pem(pem: &str) -> Result<SigningKey, AttestError> {
        Self::parse(pem, "the signing key")
    }

    fn parse(text: &str, origin: &str) -> Result<SigningKey, AttestError> {
        let label = pem_label(text, origin)?;
        let wrong = |found: String, fix: String| AttestError::WrongKey {
            path: origin.to_string(),
            found,
            wanted: WANT_PRIVATE,
            fix,
        };
        match label.as_str() {
            "PRIVATE KEY" => {}
            "ENCRYPTED PRIVATE KEY" => {
                return Err(wrong(
                    label_kind(&label),
                    "Kiln cannot ask for a passphrase: write an unencrypted copy with \
                     `openssl pkey -in key.pem -out plain.pem`, or "
                        .to_string()
                        + MAKE_KEY,
                ))
            }
            "PUBLIC KEY" => {
                return Err(wrong(
                    label_kind(&label),
                    format!("signing needs the private key (key.pem, not key.pub); {MAKE_KEY}"),
                ))
            }
            _ => {
                return Err(wrong(
                    label_kind(&label),
                    format!("Kiln signs with Ed25519: {MAKE_KEY}"),
                ))
            }
        }
        let bad = |detail: String| AttestError::BadKey {
            path: origin.to_string(),
            what: "PKCS#8 private key",
            detail,
        };
        let (_, doc) = SecretDocument::from_pem(pem_block(text)).map_err(|e| bad(e.to_string()))?;
        let info: PrivateKeyInfo = doc.decode_msg().map_err(|e| bad(e.to_string()))?;
        if info.algorithm.oid.to_string() != ED25519_OID {
            return Err(wrong(
                format!("{} private key", an(&algorithm_name(&info.algorithm.oid))),
                format!("Kiln signs with Ed25519 only: {MAKE_KEY}"),
            ));
        }
        let inner = ed25519_dalek::SigningKey::try_from(info).map_err(|e| bad(e.to_string()))?;
        Ok(SigningKey { inner })
    }

    /// The public half, for [`verify_envelope`] and [`VerifyingKey::keyid`].
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey {
            inner: self.inner.verifying_key(),
        }
    }

    /// A raw Ed25519 signature (64 bytes) of `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.inner.sign(message).to_bytes().to_vec()
    }
}

/// "an RSA", "an EC", "a DSA"…
fn an(name: &str) -> String {
    let vowel_sound = name.starts_with(['A', 'E', 'I', 'O', 'U', 'R', 'X']);
    format!("{} {name}", if vowel_sound { "an" } else { "a" })
}

impl VerifyingKey {
    /// Reads an SPKI PEM Ed25519 public key (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<VerifyingKey, AttestError> {
        let path = path.as_ref();
        let text = read_key_file(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// As [`VerifyingKey::from_pem_file`], from the file's text.
    pub fn from_pem(pem: &str) -> Result<VerifyingKey, AttestError> {
        Self::parse(pem, "the public key")
    }

    fn parse(text: &str, origin: &str) -> Result<VerifyingKey, AttestError> {
        let label = pem_label(text, origin)?;
        let wrong = |found: String, fix: String| AttestError::WrongKey {
            path: origin.to_string(),
            found,
            wanted: WANT_PUBLIC,
            fix,
        };
        if label != "PUBLIC KEY" {
            let fix = if label.contains("PRIVATE KEY") {
                format!("verify with the public key, not the private one: {MAKE_PUB}")
            } else {
                format!("{MAKE_KEY}, then {MAKE_PUB}")
            };
            return Err(wrong(label_kind(&label), fix));
        }
        let bad = |detail: String| AttestError::BadKey {
            path: origin.to_string(),
            what: "SPKI public key",
            detail,
        };
        let (_, doc) = Document::from_pem(pem_block(text)).map_err(|e| bad(e.to_string()))?;
        let spki: SubjectPublicKeyInfoRef = doc.decode_msg().map_err(|e| bad(e.to_string()))?;
        if spki.algorithm.oid.to_string() != ED25519_OID {
            return Err(wrong(
                format!("{} public key", an(&algorithm_name(&spki.algorithm.oid))),
                format!("Kiln signs with Ed25519 only: {MAKE_KEY}, then {MAKE_PUB}"),
            ));
        }
        let inner = ed25519_dalek::VerifyingKey::try_from(spki).map_err(|e| bad(e.to_string()))?;
        Ok(VerifyingKey { inner })
    }

    fn spki_der(&self) -> Vec<u8> {
        self.inner
            .to_public_key_der()
            .expect("an Ed25519 key encodes as SPKI")
            .into_vec()
    }

    /// The key's id in envelopes: lower-case hex sha256 of its SPKI DER
    /// encoding (`openssl pkey -pubin -in key.pub -outform DER | sha256sum`).
    pub fn keyid(&self) -> String {
        sha256_hex(&self.spki_der())
    }

    /// The key as SPKI PEM, the same text `openssl pkey -pubout` writes.
    pub fn to_pem(&self) -> String {
        self.inner
            .to_public_key_pem(LineEnding::LF)
            .expect("an Ed25519 key encodes as PEM")
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.inner.to_bytes()
    }

    /// Whether `signature` is a valid Ed25519 signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        ed25519_dalek::Signature::from_slice(signature)
            .is_ok_and(|sig| self.inner.verify_strict(message, &sig).is_ok())
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    #[serde(rename = "payloadType")]
    payload_type: String,
    payload: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Serialize, Deserialize)]
struct EnvelopeSignature {
    #[serde(default)]
    keyid: String,
    sig: String,
}

fn envelope_json(payload_type: &str, payload: &[u8], signatures: Vec<EnvelopeSignature>) -> String {
    serde_json::to_string(&Envelope {
        payload_type: payload_type.into(),
        payload: STANDARD.encode(payload),
        signatures,
    })
    .expect("envelope serializes")
}

/// A DSSE envelope (one line of JSON, no trailing newline) of an in-toto
/// `payload`, signed with `key`; the signature's `keyid` is
/// [`VerifyingKey::keyid`].
pub fn sign_envelope(payload: &[u8], key: &SigningKey) -> String {
    sign_envelope_as(PAYLOAD_TYPE, payload, key)
}

/// [`sign_envelope`] for a payload of another type (a download tree's
/// channel document).
pub fn sign_envelope_as(payload_type: &str, payload: &[u8], key: &SigningKey) -> String {
    let sig = key.sign(&pae(payload_type, payload));
    envelope_json(
        payload_type,
        payload,
        vec![EnvelopeSignature {
            keyid: key.verifying_key().keyid(),
            sig: STANDARD.encode(sig),
        }],
    )
}

/// The same envelope with `"signatures": []`, for builds without a key.
/// [`verify_envelope`] rejects it.
pub fn unsigned_envelope(payload: &[u8]) -> String {
    envelope_json(PAYLOAD_TYPE, payload, Vec::new())
}

fn decode_base64(text: &str, what: &str) -> Result<Vec<u8>, AttestError> {
    let text = text.trim();
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .ok_or_else(|| AttestError::Base64 {
            what: what.to_string(),
            detail: STANDARD
                .decode(text)
                .err()
                .map_or_else(String::new, |e| e.to_string()),
        })
}

/// Checks that a signature of `envelope_json` verifies with `key` and returns
/// the payload. Fails on malformed JSON or base64, a payload type other than
/// in-toto's, an envelope without signatures, and when no signature verifies
/// (another key, or payload or signature changed).
pub fn verify_envelope(envelope_json: &str, key: &VerifyingKey) -> Result<Vec<u8>, AttestError> {
    verify_envelope_as(envelope_json, key, PAYLOAD_TYPE)
}

/// [`verify_envelope`] for an envelope whose payload type must be
/// `payload_type`.
pub fn verify_envelope_as(
    envelope_json: &str,
    key: &VerifyingKey,
    payload_type: &'static str,
) -> Result<Vec<u8>, AttestError> {
    let envelope: Envelope =
        serde_json::from_str(envelope_json).map_err(|e| AttestError::EnvelopeJson {
            detail: e.to_string(),
        })?;
    if envelope.payload_type != payload_type {
        return Err(AttestError::PayloadType {
            found: envelope.payload_type,
            expected: payload_type,
        });
    }
    let payload = decode_base64(&envelope.payload, "payload")?;
    if envelope.signatures.is_empty() {
        return Err(AttestError::Unsigned);
    }
    let message = pae(&envelope.payload_type, &payload);
    for (i, s) in envelope.signatures.iter().enumerate() {
        let sig = decode_base64(&s.sig, &format!("signatures[{i}].sig"))?;
        if key.verify(&message, &sig) {
            return Ok(payload);
        }
    }
    Err(AttestError::BadSignature {
        keyid: key.keyid(),
        signed_by: envelope
            .signatures
            .iter()
            .filter(|s| !s.keyid.is_empty())
            .map(|s| s.keyid.clone())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_example() {
        // "DSSEv1", then each part preceded by its length in bytes.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn garbage_is_not_pem() {
        let e = SigningKey::from_pem("hello").unwrap_err();
        assert!(matches!(e, AttestError::NotPem { .. }), "{e}");
        assert!(e
            .hint()
            .unwrap()
            .contains("openssl genpkey -algorithm ed25519"));
    }

    #[test]
    fn articles() {
        assert_eq!(an("RSA"), "an RSA");
        assert_eq!(an("DSA"), "a DSA");
        assert_eq!(an("EC (ECDSA)"), "an EC (ECDSA)");
    }
}

/// Everything that can go wrong while loading keys, signing, or checking a
/// signed provenance envelope.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("key file {path} does not exist")]
    KeyMissing { path: String },
    #[error("cannot read key file {path}: {source}")]
    KeyRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a PEM file ({detail})")]
    NotPem { path: String, detail: String },
    /// The file is PEM but holds the wrong kind of key. `fix` says how to make
    /// the right one and is returned by [`AttestError::hint`].
    #[error("{path} holds {found}, but Kiln needs {wanted}")]
    WrongKey {
        path: String,
        found: String,
        wanted: &'static str,
        fix: String,
    },
    #[error("{path} holds a malformed {what}: {detail}")]
    BadKey {
        path: String,
        what: &'static str,
        detail: String,
    },
    #[error("the signed envelope is not valid DSSE JSON: {detail}")]
    EnvelopeJson { detail: String },
    #[error("the envelope's {what} is not valid base64: {detail}")]
    Base64 { what: String, detail: String },
    #[error("the envelope's payloadType is '{found}', not '{expected}'")]
    PayloadType {
        found: String,
        expected: &'static str,
    },
    #[error("the envelope carries no signature")]
    Unsigned,
    #[error(
        "no signature in the envelope verifies with key {keyid}{}",
        signed_by_note(.signed_by)
    )]
    BadSignature {
        keyid: String,
        /// The keyids the envelope's signatures name (unauthenticated hints).
        signed_by: Vec<String>,
    },
    #[error("not an in-toto SLSA provenance statement: {detail}")]
    Statement { detail: String },
}

fn signed_by_note(signed_by: &[String]) -> String {
    if signed_by.is_empty() {
        String::new()
    } else {
        format!(" (its signatures name key {})", signed_by.join(", "))
    }
}

const MAKE_KEY: &str =
    "make an Ed25519 key with `openssl genpkey -algorithm ed25519 -out key.pem` \
     and its public key with `openssl pkey -in key.pem -pubout -out key.pub`";

impl AttestError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            AttestError::KeyMissing { .. } => format!("check the path, or {MAKE_KEY}"),
            AttestError::KeyRead { .. } => "check the file's permissions".into(),
            AttestError::NotPem { .. } | AttestError::BadKey { .. } => {
                format!("Kiln reads PEM keys as openssl writes them: {MAKE_KEY}")
            }
            AttestError::WrongKey { fix, .. } => fix.clone(),
            AttestError::EnvelopeJson { .. }
            | AttestError::Base64 { .. }
            | AttestError::PayloadType { .. } => {
                "pass the provenance file Kiln wrote (a DSSE envelope, .intoto.json)".into()
            }
            AttestError::Unsigned => "the build ran without a signing key; rebuild with one \
                 to get a signed provenance"
                .into(),
            AttestError::BadSignature { keyid, signed_by } => {
                if signed_by.is_empty() {
                    "either the envelope was signed with another key (check that you have \
                     the public key of the key that signed it) or it was changed after \
                     signing: do not trust this file"
                        .into()
                } else if !signed_by.iter().any(|k| k == keyid) {
                    "the envelope was signed with another key: check that you have the \
                     public key of the key that signed it"
                        .into()
                } else {
                    "the payload or its signature was changed after signing: \
                     do not trust this file"
                        .into()
                }
            }
            AttestError::Statement { .. } => return None,
        })
    }
}

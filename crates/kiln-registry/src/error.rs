use std::path::PathBuf;

/// Everything that can go wrong between an OCI layout on disk and a tag in a
/// registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The image reference could not be parsed.
    #[error("bad image reference '{reference}': {message}")]
    BadReference { reference: String, message: String },
    /// The Docker client configuration could not be used.
    #[error("{path}: {message}")]
    DockerConfig {
        path: std::path::PathBuf,
        message: String,
    },
    /// The directory is not a usable OCI image layout (missing or malformed
    /// `oci-layout`, `index.json` or manifest, or an ambiguous `index.json`).
    #[error("bad OCI layout {path}: {message}")]
    Layout { path: PathBuf, message: String },
    /// A blob of the layout is missing or does not match its descriptor.
    #[error("corrupt OCI layout: blob {digest} ({path}): {message}")]
    CorruptBlob {
        digest: String,
        path: PathBuf,
        message: String,
    },
    /// A local file could not be read.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// No HTTP exchange with the registry (or its token server) was possible.
    #[error("cannot reach {url}: {message}")]
    Unreachable { url: String, message: String },
    /// The registry or its token server refused the credentials (or their
    /// absence).
    #[error("authentication with {registry} failed: {message}")]
    AuthFailed { registry: String, message: String },
    /// The registry stored something else than what was sent.
    #[error("digest mismatch for {what}: sent {expected}, the registry answered {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// The registry answered a request with an unexpected status.
    #[error("{method} {url}: the registry answered HTTP {status}: {message}")]
    Registry {
        method: String,
        url: String,
        status: u16,
        message: String,
    },
}

impl RegistryError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            RegistryError::DockerConfig { .. } => {
                "fix or log in again (docker login HOST), point DOCKER_CONFIG at another directory, \
                 or give --username with KILN_REGISTRY_PASSWORD"
                    .into()
            }
            RegistryError::BadReference { .. } => {
                "write the reference as HOST[:PORT]/REPOSITORY:TAG, e.g. registry.example.org/team/image:1.0 \
                 (repository names are lowercase)"
                    .into()
            }
            RegistryError::Layout { .. } => {
                "point at a directory written by `kiln build` with OCI output (it holds oci-layout, \
                 index.json and blobs/)"
                    .into()
            }
            RegistryError::CorruptBlob { .. } => {
                "the layout was modified or truncated after it was written; rebuild the image".into()
            }
            RegistryError::Unreachable { .. } => {
                "check the registry address and that it is running; a plain-http registry \
                 (e.g. one on 127.0.0.1) needs --insecure"
                    .into()
            }
            RegistryError::AuthFailed { .. } => {
                "check --username/--password (or KILN_REGISTRY_USER / KILN_REGISTRY_PASSWORD) and \
                 that this account may push to the repository"
                    .into()
            }
            RegistryError::DigestMismatch { .. } => {
                "the registry, or a proxy in between, does not store the bytes that were sent; check the registry address and any proxy".into()
            }
            RegistryError::Registry { status, .. } if *status >= 500 => {
                "the registry failed; retry later or check its logs".into()
            }
            _ => return None,
        })
    }
}

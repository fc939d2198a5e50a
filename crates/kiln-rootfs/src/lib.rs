//! Assembling a root filesystem from verified `.deb`s: native unpacking, the
//! target's own dpkg and maintainer scripts in a sandbox, customisation and
//! hygiene.

pub mod customize;
pub mod distroless;
pub mod extract;
pub mod hygiene;
pub mod inroot;
pub mod install;
pub mod sandbox;

use std::path::PathBuf;

pub use install::{install, InstallOptions, PackageFile};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{package}: not a valid Debian package: {message}")]
    BadDeb { package: String, message: String },
    #[error("unpacking {package}: {source}")]
    Extract {
        package: String,
        #[source]
        source: extract::ExtractError,
    },
    #[error(transparent)]
    Sandbox(#[from] sandbox::SandboxError),
    #[error("{} failed{}:\n{tail}", describe(package, script), code.map(|c| format!(" (dpkg exit status {c})")).unwrap_or_default())]
    Dpkg {
        package: Option<String>,
        script: Option<String>,
        code: Option<i32>,
        tail: String,
        log: PathBuf,
    },
    #[error("customize: {0}")]
    Customize(String),
}

fn describe(package: &Option<String>, script: &Option<String>) -> String {
    match (package, script) {
        (Some(p), Some(s)) => format!("the {s} maintainer script of {p}"),
        (Some(p), None) => format!("installing {p}"),
        _ => "dpkg".to_string(),
    }
}

impl RootfsError {
    pub fn io(what: &str, source: std::io::Error) -> RootfsError {
        RootfsError::Io {
            what: what.to_string(),
            source,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            RootfsError::Io { source, .. } if source.raw_os_error() == Some(28) => Some(
                "the disk is full: free space in the temporary directory (KILN_TMPDIR, TMPDIR) or the output directory"
                    .into(),
            ),
            RootfsError::Dpkg { .. } => Some(
                "the package's maintainer script failed inside the image; check the package set or the customize commands"
                    .into(),
            ),
            RootfsError::Sandbox(sandbox::SandboxError::NotRoot) => {
                Some("run kiln build as root (e.g. with sudo)".into())
            }
            RootfsError::Sandbox(sandbox::SandboxError::NoEnv { .. }) => Some(
                "keep coreutils in the image: check [packages] exclude and the sources' Essential set".into(),
            ),
            RootfsError::BadDeb { .. } => Some("delete the cache entry and fetch again".into()),
            _ => None,
        }
    }
}

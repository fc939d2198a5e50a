//! Publishing Kiln builds and checking what was published.
//!
//! - [`source::Build`] reads a build's output directory and checks every
//!   artifact against its `manifest.json` before anything leaves the machine.
//! - [`tree`] publishes into a download tree: content-addressed files under
//!   `pool/`, and per channel one inline-signed document
//!   (`channels/CHANNEL.json`, a DSSE envelope) listing images → versions →
//!   files, with a serial that only grows and an expiry. Simplestreams
//!   (`streams/v1/`) and Fedora CoreOS `stream.json` (`coreos/`) exports
//!   are written from the same data.
//! - [`verify`] checks a tree: signature, rollback (serial older than the
//!   last seen), freeze (expiry), every file's size and hash.
//! - [`registry`] pushes the image of a build and attaches its SBOMs,
//!   provenance and test report as OCI 1.1 artifacts.

pub mod document;
pub mod exports;
pub mod import;
pub mod registry;
pub mod source;
pub mod sysupdate;
pub mod tree;
pub mod verify;

use std::path::PathBuf;

/// Where `kiln publish` sends builds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `file:///PATH`: a download tree.
    Tree(PathBuf),
    /// `docker://HOST/REPO[:TAG]` or a plain `HOST/REPO[:TAG]`.
    Registry(String),
    /// A cloud (`aws://REGION[,REGION…]`), through `kiln_cloud`.
    Cloud(kiln_cloud::CloudTarget),
}

/// The target schemes `kiln publish --to` knows.
pub const SCHEMES: &str = "file:///PATH (a download tree), docker://HOST/REPOSITORY[:TAG] or HOST/REPOSITORY[:TAG] (an OCI registry), aws://REGION[,REGION…] (AMIs)";

impl Target {
    pub fn parse(s: &str) -> Result<Target, PublishError> {
        if let Some(rest) = s.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(PublishError::Target {
                    target: s.into(),
                    message: "a file:// target needs an absolute path (file:///srv/images)".into(),
                });
            }
            return Ok(Target::Tree(PathBuf::from(rest)));
        }
        if let Some(rest) = s.strip_prefix("docker://") {
            return Ok(Target::Registry(rest.into()));
        }
        if let Some(cloud) = kiln_cloud::CloudTarget::parse(s) {
            return cloud.map(Target::Cloud).map_err(PublishError::from);
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(PublishError::Target {
                target: s.into(),
                message: format!("unknown scheme {scheme}://; known: {SCHEMES}"),
            });
        }
        if s.starts_with('/') || s.starts_with('.') {
            return Err(PublishError::Target {
                target: s.into(),
                message: format!(
                    "a path is not a target; for a download tree write file://{}",
                    absolute(s)
                ),
            });
        }
        if !s.contains('/') {
            return Err(PublishError::Target {
                target: s.into(),
                message: format!(
                    "not a registry reference (HOST/REPOSITORY[:TAG]); known targets: {SCHEMES}"
                ),
            });
        }
        Ok(Target::Registry(s.into()))
    }

    /// The target as the user writes it (and as the catalog records it).
    pub fn display(&self) -> String {
        match self {
            Target::Tree(p) => format!("file://{}", p.display()),
            Target::Registry(r) => format!("docker://{r}"),
            Target::Cloud(c) => c.display(),
        }
    }
}

fn absolute(s: &str) -> String {
    std::path::absolute(s)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| s.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{target}: {message}")]
    Target { target: String, message: String },
    #[error("{path}: {message}")]
    Build { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Tree { path: PathBuf, message: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Registry(#[from] kiln_registry::RegistryError),
    #[error(transparent)]
    Attest(#[from] kiln_attest::AttestError),
    #[error(transparent)]
    Cloud(#[from] kiln_cloud::CloudError),
}

impl PublishError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PublishError {
        let what = what.into();
        move |source| PublishError::Io { what, source }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            PublishError::Target { .. } => Some(format!("targets: {SCHEMES}")),
            PublishError::Build { .. } => Some(
                "rebuild it with kiln build (published files must be exactly what the build wrote)"
                    .into(),
            ),
            PublishError::Tree { .. } => None,
            PublishError::Io { .. } => None,
            PublishError::Registry(e) => e.hint(),
            PublishError::Attest(e) => e.hint(),
            PublishError::Cloud(e) => e.hint(),
        }
    }
}

/// The current time in epoch seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (what Kiln writes) into epoch seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = &s[r];
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())
            .flatten()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some(kiln_archive::date::days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se)
}

pub fn rfc3339(secs: i64) -> String {
    kiln_archive::date::format_rfc3339(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("file:///srv/t").unwrap(),
            Target::Tree("/srv/t".into())
        );
        assert_eq!(
            Target::parse("docker://127.0.0.1:5000/kiln/x").unwrap(),
            Target::Registry("127.0.0.1:5000/kiln/x".into())
        );
        assert_eq!(
            Target::parse("127.0.0.1:5000/kiln/x:1").unwrap(),
            Target::Registry("127.0.0.1:5000/kiln/x:1".into())
        );
        let e = Target::parse("s3://bucket/x").unwrap_err().to_string();
        assert!(
            e.contains("unknown scheme s3://") && e.contains("file:///PATH"),
            "{e}"
        );
        assert!(Target::parse("file://relative").is_err());
        assert!(Target::parse("/srv/t")
            .unwrap_err()
            .to_string()
            .contains("file:///srv/t"));
        assert!(Target::parse("stable").is_err());
    }

    #[test]
    fn rfc3339_round_trips() {
        for t in [0, 1762593167, 951782400, 4102444800] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        }
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2026-01-01 00:00:00Z"), None);
        assert_eq!(parse_rfc3339("+026-01-01T00:00:00Z"), None);
    }
}

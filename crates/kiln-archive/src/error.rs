use std::path::PathBuf;

use crate::verify::SigCause;

/// Everything that can go wrong between an apt source and a verified index.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bad apt configuration at {origin}: {message}")]
    AptConfig { origin: String, message: String },
    #[error("no Debian archive found in the host's apt sources")]
    NoHostSources,
    #[error("cannot reach {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{url} answered HTTP {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("{url}: not found")]
    NotFound { url: String },
    #[error("{uri} has no suite {suite:?} (neither dists/{suite}/InRelease nor dists/{suite}/Release is there)")]
    NoSuite {
        uri: String,
        suite: String,
        /// A known suite name close to `suite`.
        did_you_mean: Option<String>,
    },
    #[error("{url} sent more than {limit} bytes, more than {what} may be: download stopped")]
    TooLarge {
        url: String,
        limit: u64,
        what: &'static str,
    },
    #[error(
        "the Release file of {source_name} is not signed by a trusted key ({keyring}): {detail}"
    )]
    BadSignature {
        source_name: String,
        keyring: String,
        detail: String,
    },
    #[error(
        "the Release file of {source_name} has no valid signature by a key of {keyring}: {detail}"
    )]
    WorthlessSignature {
        source_name: String,
        keyring: String,
        detail: String,
        /// What is wrong with the (first) genuine signature that did not count.
        cause: SigCause,
    },
    #[error(
        "the Release file of {source_name} is dated {date}, older than the Release file dated \
         {previous} {seen_in}: the archive would go back in time"
    )]
    OlderRelease {
        source_name: String,
        date: String,
        previous: String,
        /// Where the newer one was seen: "already in the cache (PATH)" or "recorded in LOCK".
        seen_in: String,
    },
    #[error(
        "the Release file of {source_name} is dated {date}, in the future (the time here is {now}; \
         at most {skew_minutes} minutes of clock skew are allowed)"
    )]
    FutureRelease {
        source_name: String,
        date: String,
        now: String,
        skew_minutes: i64,
    },
    #[error("the Release file of {source_name} expired on {valid_until} (Valid-Until)")]
    Expired {
        source_name: String,
        valid_until: String,
    },
    #[error("the Release file of {source_name} is for suite '{found}', not '{expected}'")]
    WrongSuite {
        source_name: String,
        expected: String,
        found: String,
    },
    #[error("malformed Release file of {source_name}: {message}")]
    BadRelease {
        source_name: String,
        message: String,
    },
    #[error("{source_name} has no {path} for architecture {arch}")]
    MissingIndex {
        source_name: String,
        path: String,
        arch: String,
    },
    #[error("hash mismatch for {what}: expected sha256 {expected}, got {actual}")]
    HashMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("cannot decompress {what}: {message}")]
    Decompress { what: String, message: String },
    #[error("--offline: {what} is not in the cache ({path})")]
    NotCached { what: String, path: PathBuf },
    #[error("--offline: {} of the {total} packages are not in the cache: {}", missing.len(), shown(missing))]
    DebsNotCached { missing: Vec<String>, total: usize },
    #[error("cannot run gpgv to check signatures: {0}")]
    Gpgv(std::io::Error),
}

impl ArchiveError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            ArchiveError::TooLarge { .. } => "the mirror sent far more than it should (a broken or hostile \
                 mirror, or a proxy's error page): use another mirror with --mirror URI"
                .into(),
            ArchiveError::NoHostSources => "configure the Debian archive for apt in /etc/apt/sources.list.d/*.sources, \
                 pass --mirror URI, or list [[source]] tables in the recipe"
                .into(),
            ArchiveError::Unreachable { .. } | ArchiveError::HttpStatus { .. } => {
                "check the network and the mirror URI (--mirror URI overrides it); \
                 --offline builds from the index cache alone"
                    .into()
            }
            ArchiveError::NotFound { .. } => {
                "check that the suite exists on this mirror and is spelled right".into()
            }
            ArchiveError::NoSuite {
                did_you_mean: Some(s),
                ..
            } => format!("did you mean `{s}`? set [image] suite (or the [[source]]'s suites) to a suite the mirror has"),
            ArchiveError::NoSuite { .. } => {
                "check that the suite exists on this mirror and is spelled right (Debian's: bookworm, trixie, forky, sid, \
                 and their -updates, -backports and -security suites)"
                    .into()
            }
            ArchiveError::BadSignature { .. } => "install the archive's keyring (e.g. debian-archive-keyring) or name it \
                 with signed-by; for an unsigned local repository set allow-unsigned = true on its [[source]]"
                .into(),
            ArchiveError::WorthlessSignature { cause, keyring, .. } => match cause {
                SigCause::KeyExpired | SigCause::KeyRevoked => format!(
                    "a signing key in {keyring} has expired or was revoked: update the keyring \
                     (e.g. upgrade debian-archive-keyring, or point signed-by at the archive's current key); \
                     if the keyring is current, this mirror serves metadata signed by a retired key \
                     (stale or not genuine): use another mirror"
                ),
                SigCause::SignatureExpired => "the signature itself has expired: the mirror serves stale \
                     metadata; try again later or use another mirror"
                    .into(),
                SigCause::WeakDigest => "the repository is signed with a digest apt refuses as insecure \
                     (MD5, SHA1, RIPEMD160): it must be re-signed with SHA256 or stronger \
                     (gpg --digest-algo SHA512)"
                    .into(),
            },
            ArchiveError::OlderRelease { .. } => "the mirror may be behind or replaying old metadata: \
                 try again later or name another mirror (--mirror URI); if going back is intended, \
                 pass --allow-older-release"
                .into(),
            ArchiveError::FutureRelease { .. } => "check this machine's clock (date -u); if it is right, \
                 the mirror publishes Release files dated ahead: use another mirror"
                .into(),
            ArchiveError::Expired { .. } => {
                "the mirror is stale or replaying old metadata; use an up-to-date mirror".into()
            }
            ArchiveError::WrongSuite { .. } => "check the suite name and the mirror URI".into(),
            ArchiveError::HashMismatch { .. } | ArchiveError::SizeMismatch { .. } => {
                "the mirror served data that does not match its signed Release file; \
                 retry later or use another mirror"
                    .into()
            }
            ArchiveError::NotCached { .. } | ArchiveError::DebsNotCached { .. } => {
                "fill the cache first: `kiln fetch RECIPE` (packages) or `kiln lock RECIPE` (indexes) \
                 with the network, or run without --offline"
                    .into()
            }
            ArchiveError::Gpgv(_) => "install gpgv: apt-get install gpgv".into(),
            ArchiveError::MissingIndex { .. } => {
                "check the architecture and components for this suite".into()
            }
            _ => return None,
        })
    }
}

/// The first ten names, then how many more.
fn shown(names: &[String]) -> String {
    let mut s = names
        .iter()
        .take(10)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > 10 {
        s.push_str(&format!(" and {} more", names.len() - 10));
    }
    s
}

//! Getting bytes from a repository URI: `http://`, `https://` or `file://`,
//! with retries and backoff on transient failures.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::ArchiveError;

/// A repository transport shared by every download of a run.
#[derive(Clone)]
pub struct Fetcher {
    agent: ureq::Agent,
    /// Attempts for a transient failure (connection refused, 5xx, timeouts).
    pub attempts: u32,
    /// First backoff delay; doubled after each failed attempt.
    pub backoff: Duration,
}

impl Default for Fetcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Fetcher {
    pub fn new() -> Fetcher {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            // A stall timeout, not a whole-body deadline: a large .deb on a
            // slow link finishes, a connection that stops sending does not hang.
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .http_status_as_error(false)
            // Every download thread keeps its connection to the mirror.
            .max_idle_connections(64)
            .max_idle_connections_per_host(16)
            .build();
        let attempts = std::env::var("KILN_FETCH_ATTEMPTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4);
        Fetcher {
            // One hedged lookup per host, shared (see `resolve`): the
            // system resolver here drops queries and waits 5 s to retry.
            agent: ureq::Agent::with_parts(
                config,
                ureq::unversioned::transport::DefaultConnector::new(),
                crate::resolve::SharedResolver::new(),
            ),
            attempts,
            backoff: Duration::from_millis(300),
        }
    }

    /// Downloads `url` into `dest` (created or truncated), returning the
    /// size and sha256 of what was written. More than `limit` bytes stop the
    /// download with [`ArchiveError::TooLarge`] (`what` names the limit).
    pub fn download(
        &self,
        url: &str,
        dest: &Path,
        limit: Limit,
    ) -> Result<(u64, String), ArchiveError> {
        let mut delay = self.backoff;
        let mut attempt = 1;
        loop {
            match self.download_once(url, dest, limit) {
                Err(e) if attempt < self.attempts && transient(&e) => {
                    std::thread::sleep(delay);
                    delay *= 2;
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    /// Downloads `url` into memory (at most `limit` bytes).
    pub fn get(&self, url: &str, limit: Limit) -> Result<Vec<u8>, ArchiveError> {
        let tmp = tempfile::NamedTempFile::new().map_err(|e| ArchiveError::Io {
            what: "creating a temporary file".into(),
            source: e,
        })?;
        self.download(url, tmp.path(), limit)?;
        std::fs::read(tmp.path()).map_err(|e| ArchiveError::Io {
            what: "reading a download".into(),
            source: e,
        })
    }

    fn download_once(
        &self,
        url: &str,
        dest: &Path,
        limit: Limit,
    ) -> Result<(u64, String), ArchiveError> {
        let mut out = std::fs::File::create(dest).map_err(|e| ArchiveError::Io {
            what: format!("creating {}", dest.display()),
            source: e,
        })?;
        if let Some(path) = url.strip_prefix("file://") {
            let f = std::fs::File::open(path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    ArchiveError::NotFound { url: url.into() }
                } else {
                    ArchiveError::Unreachable {
                        url: url.into(),
                        message: e.to_string(),
                    }
                }
            })?;
            return copy_hashing(f, &mut out, url, limit);
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ArchiveError::Unreachable {
                url: url.into(),
                message: "unsupported URI scheme (use http://, https:// or file://)".into(),
            });
        }
        let resp = self
            .agent
            .get(url)
            .call()
            .map_err(|e| ArchiveError::Unreachable {
                url: url.into(),
                message: e.to_string(),
            })?;
        let status = resp.status().as_u16();
        if status == 404 || status == 410 {
            return Err(ArchiveError::NotFound { url: url.into() });
        }
        if status != 200 {
            return Err(ArchiveError::HttpStatus {
                url: url.into(),
                status,
            });
        }
        let reader = resp.into_body().into_with_config().limit(u64::MAX).reader();
        copy_hashing(reader, &mut out, url, limit)
    }
}

fn transient(e: &ArchiveError) -> bool {
    match e {
        ArchiveError::Unreachable { url, .. } => !url.starts_with("file://"),
        ArchiveError::HttpStatus { status, .. } => *status >= 500 || *status == 429,
        _ => false,
    }
}

/// The most bytes a download may bring, and what it is (for the error).
#[derive(Clone, Copy, Debug)]
pub struct Limit {
    pub bytes: u64,
    pub what: &'static str,
}

impl Limit {
    /// Release, InRelease: apt's own cap is in this range.
    pub const RELEASE: Limit = Limit {
        bytes: 16 << 20,
        what: "a Release file",
    };
    /// Release.gpg: a few signatures.
    pub const SIGNATURE: Limit = Limit {
        bytes: 1 << 20,
        what: "a detached signature",
    };

    /// A file whose size a signed Release file or the lock states: a little
    /// more is let through so that the hash check names the mismatch, a flood
    /// is stopped.
    pub fn stated(bytes: u64, what: &'static str) -> Limit {
        Limit {
            bytes: bytes.saturating_add(64 << 10),
            what,
        }
    }
}

fn copy_hashing(
    mut r: impl Read,
    w: &mut std::fs::File,
    url: &str,
    limit: Limit,
) -> Result<(u64, String), ArchiveError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).map_err(|e| ArchiveError::Unreachable {
            url: url.into(),
            message: format!("transfer interrupted: {e}"),
        })?;
        if k == 0 {
            break;
        }
        if n + k as u64 > limit.bytes {
            return Err(ArchiveError::TooLarge {
                url: url.into(),
                limit: limit.bytes,
                what: limit.what,
            });
        }
        h.update(&buf[..k]);
        w.write_all(&buf[..k]).map_err(|e| ArchiveError::Io {
            what: "writing a download".into(),
            source: e,
        })?;
        n += k as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}

/// sha256 of a byte slice as lowercase hex.
pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

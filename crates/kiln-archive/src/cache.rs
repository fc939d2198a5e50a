//! The on-disk cache: verified Release files (the last one of each suite,
//! and every one by sha256) and content-addressed indexes.
//!
//! Entries are only ever created by writing a temporary file in the same
//! directory and renaming it into place, so a reader (or a second Kiln
//! process) sees either nothing or a complete entry. Content-addressed
//! entries are re-hashed on use; a corrupt one is removed and fetched again.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::ArchiveError;

/// How the cache's temporary files are named.
pub const TEMP_PREFIX: &str = ".tmp-";

#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn new(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    /// `$KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`.
    pub fn from_env() -> Cache {
        if let Some(d) = std::env::var_os("KILN_CACHE_DIR").filter(|v| !v.is_empty()) {
            return Cache::new(d);
        }
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            return Cache::new(PathBuf::from(d).join("kiln"));
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        Cache::new(PathBuf::from(home).join(".cache/kiln"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// An uncompressed index with this sha256.
    pub fn index_path(&self, sha256: &str) -> PathBuf {
        self.root.join("indexes").join(sha256)
    }

    /// The last verified InRelease of a source suite.
    pub fn release_path(&self, uri: &str, suite: &str) -> PathBuf {
        let key: String = format!("{uri}/{suite}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.root.join("releases").join(key).join("InRelease")
    }

    /// Where a verified Release file whose signed text has this sha256 is
    /// kept (as `InRelease`, or `Release` and `Release.gpg`), so that a lock
    /// naming it can still be proven after the suite has moved on.
    pub fn pinned_release_dir(&self, sha256: &str) -> PathBuf {
        self.root.join("releases").join("by-sha256").join(sha256)
    }

    /// A `.deb` with this sha256.
    pub fn deb_path(&self, sha256: &str) -> PathBuf {
        self.root.join("debs").join(&sha256[..2]).join(sha256)
    }

    /// A temporary file beside `dest`, to be persisted with [`persist`].
    /// It is locked (`flock`) while this process has it open, so that a
    /// later Kiln can tell the file of a process that died (and reclaim it)
    /// from one being written.
    pub fn temp_beside(dest: &Path) -> Result<tempfile::NamedTempFile, ArchiveError> {
        let dir = dest.parent().expect("cache paths have a parent");
        std::fs::create_dir_all(dir).map_err(|e| ArchiveError::Io {
            what: format!("creating cache directory {}", dir.display()),
            source: e,
        })?;
        let err = |e| ArchiveError::Io {
            what: format!("creating a temporary file in {}", dir.display()),
            source: e,
        };
        let tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(dir)
            .map_err(err)?;
        kiln_model::owner::try_lock(tmp.as_file()).map_err(err)?;
        Ok(tmp)
    }

    /// Moves a finished temporary file to `dest` atomically.
    pub fn persist(tmp: tempfile::NamedTempFile, dest: &Path) -> Result<(), ArchiveError> {
        tmp.as_file().sync_all().ok();
        tmp.persist(dest).map_err(|e| ArchiveError::Io {
            what: format!("moving a cache entry to {}", dest.display()),
            source: e.error,
        })?;
        Ok(())
    }

    /// Writes `bytes` at `dest` atomically.
    pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), ArchiveError> {
        let mut tmp = Self::temp_beside(dest)?;
        tmp.write_all(bytes).map_err(|e| ArchiveError::Io {
            what: format!("writing {}", dest.display()),
            source: e,
        })?;
        Self::persist(tmp, dest)
    }
}

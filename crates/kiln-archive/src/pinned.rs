//! Release files pinned by the sha256 a lock records, found again and
//! verified again, with the indexes they list: what proves, later and
//! offline, that a lock names only what signed indexes published.
//!
//! A pinned Release file is looked for in the cache by its sha256 (every
//! Release file Kiln verified online is kept there), then in the suite's
//! latest-Release slot, and finally, unless offline, in the repository (which
//! only helps while the suite has not moved on). Whatever is found has its
//! signature checked again against the source's keyring and its signed text
//! hashed again. `Valid-Until` is not applied: a lock outlives it by design.

use std::path::PathBuf;

use crate::{
    load_release, load_release_indexes, sha256_hex, verify, ArchiveError, Cache, Fetcher,
    LoadOptions, LoadedIndex, LoadedRelease, Release, Source,
};

/// What became of a pinned Release file.
#[derive(Debug)]
pub enum Pinned {
    /// Found and verified: its signed text has the pinned sha256.
    Found(Box<LoadedRelease>),
    /// Offline, and no cached Release file of the suite has the sha256.
    NotCached { path: PathBuf },
    /// No cached Release file has the sha256 and the repository now serves
    /// another one (`served` is the sha256 of its signed text).
    Gone { served: String },
}

enum Raw {
    Inline(Vec<u8>),
    Detached(Vec<u8>, Option<Vec<u8>>),
}

/// The signed text of `raw`, as [`crate::load_indexes`] accepts it.
fn verified_text(src: &Source, name: &str, raw: &Raw) -> Result<String, ArchiveError> {
    Ok(match raw {
        Raw::Inline(b) if src.allow_unsigned => {
            verify::strip_clearsign(&String::from_utf8_lossy(b))
        }
        Raw::Inline(b) => verify::verify_clearsigned(b, &src.keyring, name)?,
        Raw::Detached(release, sig) => {
            if !src.allow_unsigned {
                let sig = sig.as_ref().ok_or_else(|| ArchiveError::BadSignature {
                    source_name: name.to_string(),
                    keyring: src.keyring.describe(),
                    detail: "the cached Release file has no Release.gpg".into(),
                })?;
                verify::verify_detached(release, sig, &src.keyring, name)?;
            }
            String::from_utf8_lossy(release).into_owned()
        }
    })
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Finds the Release file of `src` whose signed text has `sha256`.
pub fn load_pinned_release(
    src: &Source,
    sha256: &str,
    cache: &Cache,
    fetcher: &Fetcher,
    opts: &LoadOptions,
) -> Result<Pinned, ArchiveError> {
    let name = format!("{} {}", src.uri, src.suite);
    let slot = cache.release_path(&src.uri, &src.suite);
    let pinned = cache.pinned_release_dir(if is_sha256(sha256) {
        sha256
    } else {
        "not-a-sha256"
    });
    let mut first_error = None;
    if is_sha256(sha256) {
        for dir in [
            pinned.clone(),
            slot.parent().expect("a cache path").to_path_buf(),
        ] {
            let inline = std::fs::read(dir.join("InRelease")).ok().map(Raw::Inline);
            let detached = std::fs::read(dir.join("Release"))
                .ok()
                .map(|r| Raw::Detached(r, std::fs::read(dir.join("Release.gpg")).ok()));
            for raw in [inline, detached].into_iter().flatten() {
                match verified_text(src, &name, &raw) {
                    Ok(text) if sha256_hex(text.as_bytes()) == sha256 => {
                        let rel = found(src, &name, text, sha256)?;
                        return Ok(Pinned::Found(Box::new(rel)));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
    }
    if opts.offline {
        return match first_error {
            Some(e) => Err(e),
            None => Ok(Pinned::NotCached { path: pinned }),
        };
    }
    let current = load_release(src, cache, fetcher, opts)?;
    if current.sha256 == sha256 {
        return Ok(Pinned::Found(Box::new(current)));
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(Pinned::Gone {
            served: current.sha256,
        }),
    }
}

fn found(
    src: &Source,
    name: &str,
    text: String,
    sha256: &str,
) -> Result<LoadedRelease, ArchiveError> {
    let release = Release::parse(&text, name)?;
    let matches = |v: &Option<String>| v.as_deref() == Some(src.suite.as_str());
    if !(matches(&release.suite) || matches(&release.codename)) {
        return Err(ArchiveError::WrongSuite {
            source_name: name.to_string(),
            expected: src.suite.clone(),
            found: release
                .codename
                .clone()
                .or(release.suite.clone())
                .unwrap_or_default(),
        });
    }
    Ok(LoadedRelease {
        source: src.clone(),
        release,
        sha256: sha256.to_string(),
    })
}

/// The `Packages` indexes of a pinned Release file for `arch`, read from the
/// content-addressed cache (re-hashed) or, unless offline, the repository,
/// exactly as [`crate::load_indexes`] reads them.
pub fn load_pinned_indexes(
    rel: &LoadedRelease,
    arch: &str,
    cache: &Cache,
    fetcher: &Fetcher,
    opts: &LoadOptions,
) -> Result<Vec<LoadedIndex>, ArchiveError> {
    load_release_indexes(rel, arch, cache, fetcher, opts)
}

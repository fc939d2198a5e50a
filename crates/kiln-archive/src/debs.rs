//! Downloading `.deb` files into the content-addressed cache.
//!
//! Every file is hashed while it streams in, written beside its final place
//! and renamed into `debs/xx/SHA256` only once its sha256 and size match the
//! lock. A cached file is re-hashed before use; a corrupt one is replaced.
//! Two processes sharing a cache at worst download the same file twice: the
//! rename is atomic and both write identical bytes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::fetch::Limit;

use crate::cache::Cache;
use crate::error::ArchiveError;
use crate::fetch::Fetcher;

/// A `.deb` to make available locally.
#[derive(Clone, Debug)]
pub struct DebRef {
    /// For messages: `name version arch`.
    pub label: String,
    pub url: String,
    pub sha256: String,
    pub size: u64,
}

/// What happened to one `.deb`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DebEvent {
    /// Already in the cache and verified.
    Cached,
    /// Downloaded now.
    Downloaded,
    /// The cached copy was corrupt and has been replaced.
    Repaired,
}

/// Hashes a file with sha256 (streaming).
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<(u64, String)> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}

fn verify_cached(cache: &Cache, d: &DebRef) -> Result<Option<bool>, ArchiveError> {
    let path = cache.deb_path(&d.sha256);
    match sha256_file(&path) {
        Ok((size, sha)) if sha == d.sha256 && size == d.size => Ok(Some(true)),
        Ok(_) => {
            let _ = std::fs::remove_file(&path);
            Ok(Some(false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ArchiveError::Io {
            what: format!("reading {}", path.display()),
            source: e,
        }),
    }
}

fn download(cache: &Cache, fetcher: &Fetcher, d: &DebRef) -> Result<(), ArchiveError> {
    let dest = cache.deb_path(&d.sha256);
    let tmp = Cache::temp_beside(&dest)?;
    let (size, sha) = fetcher.download(
        &d.url,
        tmp.path(),
        Limit::stated(d.size, "this package (by the lock)"),
    )?;
    if sha != d.sha256 {
        return Err(ArchiveError::HashMismatch {
            what: d.url.clone(),
            expected: d.sha256.clone(),
            actual: sha,
        });
    }
    if size != d.size {
        return Err(ArchiveError::SizeMismatch {
            what: d.url.clone(),
            expected: d.size,
            actual: size,
        });
    }
    Cache::persist(tmp, &dest)
}

/// Makes every `.deb` available in the cache, downloading up to `jobs` at
/// once. `report` is called once per file as it completes. Returns the cache
/// paths in input order. With `offline`, a missing file is an error.
pub fn fetch_debs(
    debs: &[DebRef],
    cache: &Cache,
    fetcher: &Fetcher,
    jobs: usize,
    offline: bool,
    report: &(dyn Fn(&DebRef, DebEvent) + Sync),
) -> Result<Vec<PathBuf>, ArchiveError> {
    // Offline, every missing package is named at once, before any work.
    if offline {
        let mut missing = Vec::new();
        for d in debs {
            // The size only: the hash is checked as each file is used.
            let there = std::fs::metadata(cache.deb_path(&d.sha256))
                .is_ok_and(|m| m.is_file() && m.len() == d.size);
            if !there {
                missing.push(d.label.clone());
            }
        }
        if !missing.is_empty() {
            return Err(ArchiveError::DebsNotCached {
                missing,
                total: debs.len(),
            });
        }
    }
    // Largest first, so a big package does not start last and finish alone.
    let mut order: Vec<usize> = (0..debs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(debs[i].size));
    let next = AtomicUsize::new(0);
    let first_error: Mutex<Option<ArchiveError>> = Mutex::new(None);
    let work = || loop {
        if first_error.lock().unwrap().is_some() {
            return;
        }
        let i = next.fetch_add(1, Ordering::SeqCst);
        let Some(d) = order.get(i).map(|&i| &debs[i]) else {
            return;
        };
        let result = (|| {
            let state = verify_cached(cache, d)?;
            if state == Some(true) {
                return Ok(DebEvent::Cached);
            }
            if offline {
                return Err(ArchiveError::NotCached {
                    what: format!("{} ({})", d.label, d.url),
                    path: cache.deb_path(&d.sha256),
                });
            }
            download(cache, fetcher, d)?;
            Ok(if state == Some(false) {
                DebEvent::Repaired
            } else {
                DebEvent::Downloaded
            })
        })();
        match result {
            Ok(ev) => report(d, ev),
            Err(e) => {
                let mut slot = first_error.lock().unwrap();
                if slot.is_none() {
                    *slot = Some(e);
                }
                return;
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, 16) {
            s.spawn(work);
        }
    });
    if let Some(e) = first_error.into_inner().unwrap() {
        return Err(e);
    }
    Ok(debs.iter().map(|d| cache.deb_path(&d.sha256)).collect())
}

//! Kiln's repository client: sources, signed Release files, package indexes
//! and the cache they live in.
//!
//! Nothing read from a mirror is trusted until it is tied to a Release file
//! whose OpenPGP signature checks out against the source's keyring: indexes
//! must match the Release file's sha256 and size, and Release files must not
//! be past their `Valid-Until`, dated in the future, or older than the
//! Release file of the same source and suite seen before (in the cache or in
//! the existing lock) — a mirror must not take the archive back in time.

pub mod cache;
pub mod date;
pub mod debs;
pub mod error;
pub mod fetch;
pub mod pinned;
pub mod release;
pub mod resolve;
pub mod sources;
pub mod verify;

use std::io::Read;
use std::path::Path;

pub use cache::Cache;
pub use error::ArchiveError;
pub use fetch::{sha256_hex, Fetcher, Limit};
pub use release::Release;
pub use sources::{Keyring, MirrorOverride, Source};

/// How far in the future (seconds) a Release file's `Date` may be, for clock
/// skew between the archive and this machine: 10 minutes.
pub const MAX_FUTURE_SKEW: i64 = 600;

/// Options for loading indexes.
pub struct LoadOptions<'a> {
    /// Use only the cache; fail if something is missing.
    pub offline: bool,
    /// The current time, for `Valid-Until` and `Date` (seconds since the epoch).
    pub now: i64,
    /// Progress messages for the user.
    pub progress: &'a (dyn Fn(&str) + Sync),
    /// Release files seen before (e.g. the ones the existing lock records):
    /// a Release file of the same source and suite must not be older.
    pub seen: &'a [SeenRelease],
    /// Accept a Release file older than the one in the cache or in `seen`
    /// (an intended rollback).
    pub allow_older: bool,
}

/// The `Date` of a Release file seen before for a source and suite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenRelease {
    pub uri: String,
    pub suite: String,
    /// The `Date` field as written in the Release file.
    pub date: String,
    /// Where it was seen, for errors: e.g. "recorded in image.lock".
    pub seen_in: String,
}

/// A Release file whose signature was checked.
#[derive(Clone, Debug)]
pub struct LoadedRelease {
    pub source: Source,
    pub release: Release,
    /// sha256 of the signed Release text.
    pub sha256: String,
}

impl LoadedRelease {
    pub fn name(&self) -> String {
        format!("{} {}", self.source.uri, self.source.suite)
    }
}

/// A verified, uncompressed `Packages` index.
#[derive(Debug)]
pub struct LoadedIndex {
    /// Index into [`Indexes::releases`].
    pub release: usize,
    pub component: String,
    pub arch: String,
    /// Path below `dists/SUITE/`, e.g. `main/binary-amd64/Packages`.
    pub path: String,
    pub sha256: String,
    pub text: String,
}

/// Everything read from the sources for one architecture.
#[derive(Debug, Default)]
pub struct Indexes {
    pub releases: Vec<LoadedRelease>,
    pub indexes: Vec<LoadedIndex>,
}

/// Seconds since the Unix epoch, now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Loads and verifies the Release files and `Packages` indexes of every
/// source for `arch`, fetching what the cache does not have.
pub fn load_indexes(
    sources: &[Source],
    arch: &str,
    cache: &Cache,
    fetcher: &Fetcher,
    opts: &LoadOptions,
) -> Result<Indexes, ArchiveError> {
    let results: Vec<Result<(LoadedRelease, Vec<LoadedIndex>), ArchiveError>> =
        std::thread::scope(|s| {
            let handles: Vec<_> = sources
                .iter()
                .map(|src| s.spawn(move || load_source(src, arch, cache, fetcher, opts)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("index loader panicked"))
                .collect()
        });
    let mut out = Indexes::default();
    for r in results {
        let (rel, mut idx) = r?;
        let n = out.releases.len();
        for i in &mut idx {
            i.release = n;
        }
        out.releases.push(rel);
        out.indexes.extend(idx);
    }
    Ok(out)
}

fn dist_url(src: &Source, rest: &str) -> String {
    format!("{}/dists/{}/{}", src.uri, src.suite, rest)
}

fn load_source(
    src: &Source,
    arch: &str,
    cache: &Cache,
    fetcher: &Fetcher,
    opts: &LoadOptions,
) -> Result<(LoadedRelease, Vec<LoadedIndex>), ArchiveError> {
    let rel = load_release(src, cache, fetcher, opts)?;
    let indexes = load_release_indexes(&rel, arch, cache, fetcher, opts)?;
    Ok((rel, indexes))
}

/// The `Packages` indexes of a verified Release file for `arch`.
pub(crate) fn load_release_indexes(
    rel: &LoadedRelease,
    arch: &str,
    cache: &Cache,
    fetcher: &Fetcher,
    opts: &LoadOptions,
) -> Result<Vec<LoadedIndex>, ArchiveError> {
    let src = &rel.source;
    let name = rel.name();
    let mut indexes = Vec::new();
    for comp in &src.components {
        let mut arches = vec![arch.to_string()];
        // apt reads binary-all only where the Release file announces "all".
        let announces_all = rel.release.architectures.is_empty()
            || rel.release.architectures.iter().any(|a| a == "all");
        if !rel.release.no_all_index
            && announces_all
            && ["", ".xz", ".gz"].iter().any(|ext| {
                rel.release
                    .files
                    .contains_key(&format!("{comp}/binary-all/Packages{ext}"))
            })
        {
            arches.push("all".into());
        }
        for a in arches {
            let path = format!("{comp}/binary-{a}/Packages");
            let (sha256, text) =
                load_index(src, &rel.release, &name, &path, arch, cache, fetcher, opts)?;
            indexes.push(LoadedIndex {
                release: 0,
                component: comp.clone(),
                arch: a,
                path,
                sha256,
                text,
            });
        }
    }
    Ok(indexes)
}

pub(crate) fn load_release(
    src: &Source,
    cache: &Cache,
    fetcher: &Fetcher,
    opts: &LoadOptions,
) -> Result<LoadedRelease, ArchiveError> {
    let name = format!("{} {}", src.uri, src.suite);
    let cached = cache.release_path(&src.uri, &src.suite);
    let cached_detached = cached.with_file_name("Release");
    let cached_sig = cached.with_file_name("Release.gpg");
    // Fetch (or read from the cache) either InRelease or Release + Release.gpg.
    enum Got {
        Inline(Vec<u8>),
        Detached(Vec<u8>, Option<Vec<u8>>),
    }
    let got = if opts.offline {
        if let Ok(b) = std::fs::read(&cached) {
            Got::Inline(b)
        } else if let Ok(b) = std::fs::read(&cached_detached) {
            Got::Detached(b, std::fs::read(&cached_sig).ok())
        } else {
            return Err(ArchiveError::NotCached {
                what: format!("the Release file of {name}"),
                path: cached,
            });
        }
    } else {
        (opts.progress)(&format!("Get {}", dist_url(src, "InRelease")));
        match fetcher.get(&dist_url(src, "InRelease"), Limit::RELEASE) {
            Ok(b) => Got::Inline(b),
            Err(ArchiveError::NotFound { .. }) => {
                let release = fetcher
                    .get(&dist_url(src, "Release"), Limit::RELEASE)
                    .map_err(|e| match e {
                        ArchiveError::NotFound { .. } => ArchiveError::NoSuite {
                            uri: src.uri.clone(),
                            suite: src.suite.clone(),
                            did_you_mean: sources::suite_suggestion(&src.suite),
                        },
                        e => e,
                    })?;
                let sig = match fetcher.get(&dist_url(src, "Release.gpg"), Limit::SIGNATURE) {
                    Ok(s) => Some(s),
                    Err(ArchiveError::NotFound { .. }) => None,
                    Err(e) => return Err(e),
                };
                Got::Detached(release, sig)
            }
            Err(e) => return Err(e),
        }
    };
    let text = match &got {
        Got::Inline(raw) if src.allow_unsigned => {
            verify::strip_clearsign(&String::from_utf8_lossy(raw))
        }
        Got::Inline(raw) => verify::verify_clearsigned(raw, &src.keyring, &name)?,
        Got::Detached(release, sig) => {
            if !src.allow_unsigned {
                let sig = sig.as_ref().ok_or_else(|| ArchiveError::BadSignature {
                    source_name: name.clone(),
                    keyring: src.keyring.describe(),
                    detail: "the repository has neither InRelease nor Release.gpg".into(),
                })?;
                verify::verify_detached(release, sig, &src.keyring, &name)?;
            }
            String::from_utf8_lossy(release).into_owned()
        }
    };
    let release = Release::parse(&text, &name)?;
    let matches = |v: &Option<String>| v.as_deref() == Some(src.suite.as_str());
    if !(matches(&release.suite) || matches(&release.codename)) {
        return Err(ArchiveError::WrongSuite {
            source_name: name,
            expected: src.suite.clone(),
            found: release
                .codename
                .clone()
                .or(release.suite.clone())
                .unwrap_or_default(),
        });
    }
    if let (Some(until), Some(t)) = (&release.valid_until, release.valid_until_epoch) {
        if t < opts.now {
            return Err(ArchiveError::Expired {
                source_name: name,
                valid_until: until.clone(),
            });
        }
    }
    // Offline, the cached Release file is the one being loaded.
    let cached_date = if opts.offline {
        None
    } else {
        cached_release_date(&cached, &cached_detached)
    };
    check_date(&release, &name, src, cached_date, opts)?;
    let sha256 = sha256_hex(text.as_bytes());
    if !opts.offline {
        // The suite's latest, and a copy by sha256 that locks can name later.
        let pinned = cache.pinned_release_dir(&sha256);
        match &got {
            Got::Inline(raw) => {
                Cache::write_atomic(&cached, raw)?;
                let _ = std::fs::remove_file(&cached_detached);
                Cache::write_atomic(&pinned.join("InRelease"), raw)?;
            }
            Got::Detached(r, s) => {
                if let Some(s) = s {
                    Cache::write_atomic(&cached_sig, s)?;
                    Cache::write_atomic(&pinned.join("Release.gpg"), s)?;
                }
                Cache::write_atomic(&cached_detached, r)?;
                let _ = std::fs::remove_file(&cached);
                Cache::write_atomic(&pinned.join("Release"), r)?;
            }
        }
    }
    Ok(LoadedRelease {
        source: src.clone(),
        release,
        sha256,
    })
}

/// The `Date` of the Release file of a source suite in the cache, if any.
/// It was verified when it was stored; a cache entry that cannot be read
/// gives no floor (it is replaced by the new one).
fn cached_release_date(inrelease: &Path, release: &Path) -> Option<SeenRelease> {
    let (path, text) = match std::fs::read(inrelease) {
        Ok(b) => (
            inrelease,
            verify::strip_clearsign(&String::from_utf8_lossy(&b)),
        ),
        Err(_) => (
            release,
            String::from_utf8(std::fs::read(release).ok()?).ok()?,
        ),
    };
    let para = kiln_deb::deb822::paragraphs(&text).next()?.ok()?;
    Some(SeenRelease {
        uri: String::new(),
        suite: String::new(),
        date: para.get("Date")?.trim().to_string(),
        seen_in: format!("already in the cache ({})", path.display()),
    })
}

/// Refuses a Release file dated in the future (beyond [`MAX_FUTURE_SKEW`]) or
/// older than the one of the same source suite in the cache or in
/// `opts.seen`, unless `opts.allow_older`.
fn check_date(
    release: &Release,
    name: &str,
    src: &Source,
    cached: Option<SeenRelease>,
    opts: &LoadOptions,
) -> Result<(), ArchiveError> {
    let (Some(date), Some(epoch)) = (&release.date, release.date_epoch) else {
        return Ok(());
    };
    if epoch > opts.now + MAX_FUTURE_SKEW {
        return Err(ArchiveError::FutureRelease {
            source_name: name.to_string(),
            date: date.clone(),
            now: date::format_rfc2822(opts.now),
            skew_minutes: MAX_FUTURE_SKEW / 60,
        });
    }
    if opts.allow_older {
        return Ok(());
    }
    let newest = opts
        .seen
        .iter()
        .filter(|s| s.uri == src.uri && s.suite == src.suite)
        .chain(cached.as_ref())
        .filter_map(|s| Some((date::parse_rfc2822(&s.date)?, s)))
        .max_by_key(|(t, _)| *t);
    match newest {
        Some((t, seen)) if epoch < t => Err(ArchiveError::OlderRelease {
            source_name: name.to_string(),
            date: date.clone(),
            previous: seen.date.clone(),
            seen_in: seen.seen_in.clone(),
        }),
        _ => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
fn load_index(
    src: &Source,
    release: &Release,
    name: &str,
    path: &str,
    arch: &str,
    cache: &Cache,
    fetcher: &Fetcher,
    opts: &LoadOptions,
) -> Result<(String, String), ArchiveError> {
    let plain = release.files.get(path);
    let what = format!("{}/dists/{}/{}", src.uri, src.suite, path);
    if let Some(p) = plain {
        let cp = cache.index_path(&p.sha256);
        if let Ok(bytes) = std::fs::read(&cp) {
            if sha256_hex(&bytes) == p.sha256 {
                let text = String::from_utf8(bytes).map_err(|_| ArchiveError::Decompress {
                    what: what.clone(),
                    message: "not UTF-8".into(),
                })?;
                return Ok((p.sha256.clone(), text));
            }
            (opts.progress)(&format!(
                "warning: cached index {} is corrupt; fetching it again",
                cp.display()
            ));
            let _ = std::fs::remove_file(&cp);
        }
        if opts.offline {
            return Err(ArchiveError::NotCached { what, path: cp });
        }
    } else if opts.offline {
        return Err(ArchiveError::NotCached {
            what,
            path: cache.root().join("indexes"),
        });
    }
    let choices: Vec<(&str, &release::IndexFile)> = [".xz", ".gz", ""]
        .iter()
        .filter_map(|ext| {
            release
                .files
                .get(&format!("{path}{ext}"))
                .map(|e| (*ext, e))
        })
        .collect();
    if choices.is_empty() {
        return Err(ArchiveError::MissingIndex {
            source_name: name.to_string(),
            path: path.to_string(),
            arch: arch.to_string(),
        });
    }
    let tmp = Cache::temp_beside(&cache.index_path("x"))?;
    // Like apt, try the next compression when a listed file is missing.
    let mut last_err = None;
    let mut got = None;
    for (ext, entry) in choices {
        let file = format!("{path}{ext}");
        let url = dist_url(src, &file);
        (opts.progress)(&format!("Get {url}"));
        // No more than the signed Release file says the index has.
        let limit = Limit::stated(entry.size, "this index (by its Release file)");
        let fetched = if release.acquire_by_hash {
            let dir = Path::new(&file)
                .parent()
                .and_then(|p| p.to_str())
                .unwrap_or("");
            let by_hash = dist_url(src, &format!("{dir}/by-hash/SHA256/{}", entry.sha256));
            match fetcher.download(&by_hash, tmp.path(), limit) {
                Err(ArchiveError::NotFound { .. }) => fetcher.download(&url, tmp.path(), limit),
                r => r,
            }
        } else {
            fetcher.download(&url, tmp.path(), limit)
        };
        match fetched {
            Ok(r) => {
                got = Some((ext, entry, url, r));
                break;
            }
            Err(e @ ArchiveError::NotFound { .. }) => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    let Some((ext, entry, url, (size, sha))) = got else {
        return Err(last_err.expect("at least one attempt"));
    };
    if sha != entry.sha256 {
        return Err(ArchiveError::HashMismatch {
            what: url,
            expected: entry.sha256.clone(),
            actual: sha,
        });
    }
    if size != entry.size {
        return Err(ArchiveError::SizeMismatch {
            what: url,
            expected: entry.size,
            actual: size,
        });
    }
    let f = std::fs::File::open(tmp.path()).map_err(|e| ArchiveError::Io {
        what: "reading a download".into(),
        source: e,
    })?;
    let mut data = Vec::with_capacity(entry.size as usize * 6);
    let res = match ext {
        ".xz" => liblzma::read::XzDecoder::new_multi_decoder(std::io::BufReader::new(f))
            .read_to_end(&mut data),
        ".gz" => {
            flate2::read::MultiGzDecoder::new(std::io::BufReader::new(f)).read_to_end(&mut data)
        }
        _ => std::io::BufReader::new(f).read_to_end(&mut data),
    };
    res.map_err(|e| ArchiveError::Decompress {
        what: url.clone(),
        message: e.to_string(),
    })?;
    let sha = sha256_hex(&data);
    if let Some(p) = plain {
        if p.sha256 != sha {
            return Err(ArchiveError::HashMismatch {
                what: format!("{url} (decompressed)"),
                expected: p.sha256.clone(),
                actual: sha,
            });
        }
    }
    let text = String::from_utf8(data).map_err(|_| ArchiveError::Decompress {
        what: url,
        message: "not UTF-8".into(),
    })?;
    Cache::write_atomic(&cache.index_path(&sha), text.as_bytes())?;
    Ok((sha, text))
}

//! The security watch: for each built image, which of its locked packages
//! have a newer candidate in its suite, `-updates` or `-security` (read
//! from signed Release files, exactly as `kiln lock` would pick them), and,
//! with the Debian security tracker's data, which CVEs those fix and which
//! stay open.
//!
//! An image whose sources cannot all be read and verified is `unknown`,
//! never up to date: a mirror that withholds the security suite or serves
//! it unsigned must not make an image look current.

pub mod tracker;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_archive::{Fetcher, Indexes, LoadOptions, SeenRelease, Source};
use kiln_build::SourceOptions;
use kiln_model::{Hinted, Manifest, Reporter};
use kiln_recipe::{Lock, Recipe};
use kiln_resolve::{IndexInput, Universe};
use serde::Serialize;

pub use kiln_archive::sources::is_security_suite;
pub use tracker::Tracker;

/// Exit status of a watch that found nothing to do.
pub const EXIT_CURRENT: u8 = 0;
/// Exit status when updates are available, none of them security updates.
pub const EXIT_UPDATES: u8 = 1;
/// Exit status when security updates are available.
pub const EXIT_SECURITY: u8 = 2;
/// Exit status when an image could not be checked (its sources could not
/// be read or verified), or the watch itself failed.
pub const EXIT_UNKNOWN: u8 = 3;

/// One image to watch: its lock, and the recipe that says where its
/// packages come from (when it can be found).
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub version: Option<String>,
    pub suite: String,
    pub lock: Lock,
    pub lock_path: PathBuf,
    pub recipe: Option<Recipe>,
    /// The build's output directory, or the recipe or lock named.
    pub location: PathBuf,
    /// The build's manifest sha256, when the target is a build.
    pub manifest_sha256: Option<String>,
}

impl Target {
    /// A build's output directory, a recipe (`NAME.toml`, with `NAME.lock`
    /// beside it) or a lock (with its recipe beside it, if there is one).
    pub fn from_path(path: &Path) -> Result<Target> {
        if std::fs::symlink_metadata(path).is_err() {
            return Err(Hinted::new(
                format!("{} does not exist", path.display()),
                "name a build's output directory, a recipe or its lock".to_string(),
            )
            .into());
        }
        if path.is_dir() {
            let Installed {
                manifest: m,
                lock,
                lock_path,
                ..
            } = read_build(path)?;
            let sha = std::fs::read(path.join(kiln_model::manifest::MANIFEST_FILE))
                .ok()
                .map(|b| kiln_archive::sha256_hex(&b));
            return Ok(Target {
                name: m.image,
                version: m.version,
                suite: m.suite,
                recipe: recipe_beside(&lock_path),
                lock,
                lock_path,
                location: path.to_path_buf(),
                manifest_sha256: sha,
            });
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => {
                let recipe = Recipe::load(path)?;
                let lock_path = recipe.lock_path();
                if !lock_path.exists() {
                    return Err(Hinted::new(
                        format!("{} has no lock ({})", path.display(), lock_path.display()),
                        format!("run `kiln lock {}` first", path.display()),
                    )
                    .into());
                }
                let lock = Lock::read(&lock_path)?;
                Ok(Target {
                    name: recipe.image.name.clone(),
                    version: recipe.image.version.clone(),
                    suite: recipe.image.suite.clone(),
                    lock,
                    lock_path,
                    recipe: Some(recipe),
                    location: path.to_path_buf(),
                    manifest_sha256: None,
                })
            }
            Some("lock") => {
                let lock = Lock::read(path)?;
                let recipe = recipe_beside(path);
                let stem = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or("image")
                    .to_string();
                let (name, version, suite) = match &recipe {
                    Some(r) => (
                        r.image.name.clone(),
                        r.image.version.clone(),
                        r.image.suite.clone(),
                    ),
                    None => (stem, None, main_suite_of(&lock)),
                };
                Ok(Target {
                    name,
                    version,
                    suite,
                    lock,
                    lock_path: path.to_path_buf(),
                    recipe,
                    location: path.to_path_buf(),
                    manifest_sha256: None,
                })
            }
            _ => Err(Hinted::new(
                format!(
                    "{} is neither a build's output directory, a recipe (.toml) nor a lock (.lock)",
                    path.display()
                ),
                "name a directory written by `kiln build`, a recipe or its lock".to_string(),
            )
            .into()),
        }
    }
}

/// A build output directory as read for a watch or a diff.
pub struct Installed {
    pub manifest: Manifest,
    /// What the build installed ([`build_packages`]).
    pub lock: Lock,
    /// The lock file the build names.
    pub lock_path: PathBuf,
    /// False when the lock was locked again since the build (some packages'
    /// sizes and files are unknown).
    pub complete: bool,
}

/// Reads the build in `dir`: its manifest (strictly), and what it installed.
pub fn read_build(dir: &Path) -> Result<Installed> {
    let m = Manifest::read_dir(dir).map_err(|e| match e.hint() {
        Some(h) => anyhow::Error::from(Hinted::new(e.to_string(), h)),
        None => e.into(),
    })?;
    let lock_path = m.lock_path(dir);
    let lock = Lock::read(&lock_path).with_context(|| {
        format!(
            "the lock of the build in {} ({})",
            dir.display(),
            lock_path.display()
        )
    })?;
    // What the build installed, even when the lock moved on since.
    let (lock, complete) = build_packages(&m, &lock);
    Ok(Installed {
        manifest: m,
        lock,
        lock_path,
        complete,
    })
}

/// The packages a build holds, as a lock: the manifest's list (what was
/// installed), with the lock's details (file, size, installed size) for
/// those the lock still has, matched by sha256. The second value is false
/// when some are no longer in the lock: it was locked again since the build.
pub fn build_packages(m: &Manifest, lock: &Lock) -> (Lock, bool) {
    let by_sha: HashMap<(&str, &str), &kiln_recipe::LockedPackage> = lock
        .packages
        .iter()
        .map(|p| ((p.target.as_str(), p.sha256.as_str()), p))
        .collect();
    let mut complete = true;
    let packages = m
        .packages
        .iter()
        .map(
            |r| match by_sha.get(&(r.target.as_str(), r.sha256.as_str())) {
                Some(p) => (*p).clone(),
                None => {
                    complete = false;
                    kiln_recipe::LockedPackage {
                        name: r.name.clone(),
                        version: r.version.clone(),
                        architecture: r.architecture.clone(),
                        target: r.target.clone(),
                        source: r.source.clone(),
                        source_version: r.source_version.clone(),
                        filename: String::new(),
                        size: 0,
                        sha256: r.sha256.clone(),
                        installed_size: 0,
                        release: String::new(),
                        reason: kiln_recipe::Reason::Dependency,
                        required_by: Vec::new(),
                    }
                }
            },
        )
        .collect();
    (
        Lock {
            packages,
            ..lock.clone()
        },
        complete,
    )
}

/// The recipe `NAME.toml` beside `NAME.lock`, when it loads.
fn recipe_beside(lock_path: &Path) -> Option<Recipe> {
    let p = lock_path.with_extension("toml");
    // By its real path: a build's lock is `DIR/../../NAME.lock`.
    let p = std::fs::canonicalize(&p).ok()?;
    p.is_file().then(|| Recipe::load(&p).ok()).flatten()
}

/// A lock's own suite, for a lock without its recipe: the first release
/// that is no `-updates`, `-security` or `-backports` companion.
fn main_suite_of(lock: &Lock) -> String {
    lock.releases
        .iter()
        .map(|r| r.suite.as_str())
        .find(|s| {
            !["-updates", "-security", "-backports"]
                .iter()
                .any(|x| s.ends_with(x))
        })
        .or(lock.releases.first().map(|r| r.suite.as_str()))
        .unwrap_or_default()
        .to_string()
}

/// What a watch found for one image and architecture.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageReport {
    pub name: String,
    pub version: Option<String>,
    pub architecture: String,
    /// The build directory, recipe or lock the image was read from.
    pub location: String,
    #[serde(skip)]
    pub manifest_sha256: Option<String>,
    pub status: Status,
    /// Why the status is `unknown`.
    pub error: Option<String>,
    pub updates: Vec<Update>,
    /// Issues the tracker lists against the installed source versions that
    /// no candidate fixes: open in the release, or fixed in a version these
    /// sources do not have yet.
    pub open: Vec<OpenIssue>,
    /// The Release files read: `URI SUITE` with their `Date`.
    pub releases: Vec<CheckedRelease>,
}

impl ImageReport {
    /// An image that could not be checked at all (its build or lock cannot be read).
    pub fn unknown(name: &str, version: Option<String>, location: &str, error: String) -> Self {
        ImageReport {
            name: name.to_string(),
            version,
            architecture: String::new(),
            location: location.to_string(),
            manifest_sha256: None,
            status: Status::Unknown,
            error: Some(error),
            updates: Vec::new(),
            open: Vec::new(),
            releases: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CheckedRelease {
    pub uri: String,
    pub suite: String,
    pub date: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    UpToDate,
    Updates,
    Security,
    Unknown,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::UpToDate => "up-to-date",
            Status::Updates => "updates",
            Status::Security => "security",
            Status::Unknown => "unknown",
        }
    }
}

/// A locked package with a newer candidate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Update {
    pub package: String,
    pub architecture: String,
    pub installed: String,
    pub candidate: String,
    /// The suite the candidate is in.
    pub suite: String,
    /// The candidate comes from a `-security` suite.
    pub security: bool,
    pub source: String,
    pub installed_source_version: String,
    pub candidate_source_version: String,
    /// The `Date` of the Release file the candidate was found in.
    pub release_date: Option<String>,
    /// Issues the candidate fixes (with `--security-tracker`).
    pub cves: Vec<String>,
    /// The most urgent of their urgencies.
    pub urgency: Option<String>,
    /// The DSAs and DLAs the update brings (with `--advisories`).
    pub advisories: Vec<String>,
}

/// A tracker issue against an installed source version that no candidate fixes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct OpenIssue {
    pub source: String,
    pub installed_source_version: String,
    pub cve: String,
    pub urgency: Option<String>,
    /// The version that fixes it, when the tracker knows one (not yet in these sources).
    pub fixed_version: Option<String>,
}

/// A whole watch pass.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    /// 1: docs/schemas/watch.schema.json.
    pub schema_version: u32,
    pub checked_at: i64,
    /// Where CVE data came from, and how many issues it holds.
    pub tracker: Option<TrackerInfo>,
    /// Things the user should know (e.g. the tracker data could not be read).
    pub warnings: Vec<String>,
    pub images: Vec<ImageReport>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct TrackerInfo {
    pub origin: String,
    pub issues: usize,
}

impl Report {
    /// The documented exit status: [`EXIT_UNKNOWN`] when an image could not
    /// be checked, else [`EXIT_SECURITY`], [`EXIT_UPDATES`] or [`EXIT_CURRENT`].
    pub fn exit_code(&self) -> u8 {
        exit_code_of(&self.images)
    }
}

/// The exit status for these images' findings: the worst of them.
pub fn exit_code_of<'a>(images: impl IntoIterator<Item = &'a ImageReport>) -> u8 {
    match images.into_iter().map(|i| i.status).max() {
        Some(Status::Unknown) => EXIT_UNKNOWN,
        Some(Status::Security) => EXIT_SECURITY,
        Some(Status::Updates) => EXIT_UPDATES,
        _ => EXIT_CURRENT,
    }
}

/// How to watch.
pub struct WatchOptions<'a> {
    pub sources: SourceOptions,
    pub tracker: Option<&'a Tracker>,
    /// The current time (seconds since the epoch).
    pub now: i64,
}

/// The sources an image's packages may come from: the recipe's own, plus
/// — for a Debian release — the suite, `-updates` and `-security` from the
/// host's apt configuration, even when the recipe uses other sources.
pub fn sources_for(t: &Target, opts: &SourceOptions) -> Result<Vec<Source>> {
    let mut out: Vec<Source> = match &t.recipe {
        Some(r) => kiln_build::sources::recipe_sources(r, opts)?,
        None => Vec::new(),
    };
    if kiln_archive::sources::is_debian_release(&t.suite) {
        let components = match &t.recipe {
            Some(r) => r.image.components.clone(),
            None => components_of(&t.lock),
        };
        match kiln_archive::sources::default_sources(
            &t.suite,
            &components,
            Path::new("/"),
            &kiln_archive::MirrorOverride {
                mirror: opts.mirror.clone(),
                security_mirror: opts.security_mirror.clone(),
            },
        ) {
            Ok(d) => {
                for s in d {
                    if !out.iter().any(|o| o.uri == s.uri && o.suite == s.suite) {
                        out.push(s);
                    }
                }
            }
            Err(e) if out.is_empty() => return Err(e.into()),
            Err(_) => {}
        }
    }
    if out.is_empty() {
        return Err(Hinted::new(
            format!(
                "no sources are known for {} (suite {}): no recipe beside {} and {} is no Debian release",
                t.name,
                t.suite,
                t.lock_path.display(),
                t.suite
            ),
            "watch the recipe (NAME.toml) instead of its lock".to_string(),
        )
        .into());
    }
    Ok(out)
}

/// The archive components a lock's packages come from (`pool/COMPONENT/…`).
fn components_of(lock: &Lock) -> Vec<String> {
    let mut set: BTreeSet<String> = lock
        .packages
        .iter()
        .filter_map(|p| p.filename.strip_prefix("pool/")?.split('/').next())
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect();
    if set.is_empty() {
        set.insert("main".into());
    }
    set.into_iter().collect()
}

type SourceKey = (String, String, String);

fn key_of(s: &Source, arch: &str) -> SourceKey {
    (s.uri.clone(), s.suite.clone(), arch.to_string())
}

/// Checks every target: the sources of all of them are loaded once each
/// (in parallel), and each distinct set of sources becomes one candidate
/// universe per architecture.
pub fn watch(targets: &[Target], opts: &WatchOptions, reporter: &dyn Reporter) -> Report {
    let cache = opts.sources.cache();
    let fetcher = Fetcher::new();
    // Rollback protection: no Release file older than one a lock records.
    let seen: Vec<SeenRelease> = targets
        .iter()
        .flat_map(|t| {
            t.lock.releases.iter().filter_map(|r| {
                Some(SeenRelease {
                    uri: r.uri.clone(),
                    suite: r.suite.clone(),
                    date: r.date.clone()?,
                    seen_in: format!("recorded in {}", t.lock_path.display()),
                })
            })
        })
        .collect();
    let sources: Vec<Result<Vec<Source>, String>> = targets
        .iter()
        .map(|t| sources_for(t, &opts.sources).map_err(|e| format!("{e:#}")))
        .collect();
    // Every (source, architecture) once.
    let mut wanted: BTreeMap<SourceKey, &Source> = BTreeMap::new();
    for (t, s) in targets.iter().zip(&sources) {
        if let Ok(list) = s {
            for arch in &t.lock_architectures() {
                for src in list {
                    wanted.entry(key_of(src, arch)).or_insert(src);
                }
            }
        }
    }
    let progress = kiln_build::lock::index_progress(reporter);
    let load_opts = LoadOptions {
        offline: opts.sources.offline,
        now: opts.now,
        progress: &progress,
        seen: &seen,
        allow_older: opts.sources.allow_older_release,
    };
    let work: Vec<(&SourceKey, &&Source)> = wanted.iter().collect();
    let loaded: HashMap<SourceKey, Result<Indexes, String>> = std::thread::scope(|s| {
        let per = work.len().div_ceil(4).max(1);
        let handles: Vec<_> = work
            .chunks(per)
            .map(|chunk| {
                let (cache, fetcher, load_opts) = (&cache, &fetcher, &load_opts);
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|(k, src)| {
                            let r = kiln_archive::load_indexes(
                                std::slice::from_ref(**src),
                                &k.2,
                                cache,
                                fetcher,
                                load_opts,
                            )
                            .map_err(|e| match e.hint() {
                                Some(h) => format!("{e} (hint: {h})"),
                                None => e.to_string(),
                            });
                            ((*k).clone(), r)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("index loader panicked"))
            .collect()
    });
    let mut universes: HashMap<(Vec<SourceKey>, String), Result<Universe, String>> = HashMap::new();
    let mut images = Vec::new();
    for (t, s) in targets.iter().zip(&sources) {
        for arch in t.lock_architectures() {
            let mut report = ImageReport {
                name: t.name.clone(),
                version: t.version.clone(),
                architecture: arch.clone(),
                location: t.location.display().to_string(),
                manifest_sha256: t.manifest_sha256.clone(),
                status: Status::Unknown,
                error: None,
                updates: Vec::new(),
                open: Vec::new(),
                releases: Vec::new(),
            };
            let list = match s {
                Ok(l) => l,
                Err(e) => {
                    report.error = Some(e.clone());
                    images.push(report);
                    continue;
                }
            };
            let keys: Vec<SourceKey> = list.iter().map(|src| key_of(src, &arch)).collect();
            let mut failed = Vec::new();
            for k in &keys {
                match &loaded[k] {
                    Ok(ix) => {
                        for r in &ix.releases {
                            report.releases.push(CheckedRelease {
                                uri: r.source.uri.clone(),
                                suite: r.source.suite.clone(),
                                date: r.release.date.clone(),
                            });
                        }
                    }
                    Err(e) => failed.push(e.clone()),
                }
            }
            if !failed.is_empty() {
                report.error = Some(failed.join("; "));
                images.push(report);
                continue;
            }
            let u = universes
                .entry((keys.clone(), t.suite.clone()))
                .or_insert_with(|| {
                    let inputs: Vec<IndexInput> = keys
                        .iter()
                        .enumerate()
                        .flat_map(|(n, k)| {
                            let ix = loaded[k].as_ref().expect("checked above");
                            let r = &ix.releases[0];
                            ix.indexes.iter().map(move |i| IndexInput {
                                release: n,
                                pin: r.release.pin_priority(),
                                main_suite: r.source.suite == t.suite,
                                text: &i.text,
                            })
                        })
                        .collect();
                    Universe::build(&inputs, &arch).map_err(|e| e.to_string())
                });
            let u = match u {
                Ok(u) => u,
                Err(e) => {
                    report.error = Some(e.clone());
                    images.push(report);
                    continue;
                }
            };
            let release_of = |n: usize| &loaded[&keys[n]].as_ref().expect("loaded").releases[0];
            for p in t.lock.packages.iter().filter(|p| p.target == arch) {
                let Some(c) = u.get(&p.name) else { continue };
                let cand = &u.pkgs[c];
                if cand.arch != p.architecture && cand.arch != "all" && p.architecture != "all" {
                    continue;
                }
                if kiln_deb::version::compare(cand.version, &p.version) != Ordering::Greater {
                    continue;
                }
                let rel = release_of(cand.release);
                report.updates.push(Update {
                    package: p.name.clone(),
                    architecture: p.architecture.clone(),
                    installed: p.version.clone(),
                    candidate: cand.version.to_string(),
                    suite: rel.source.suite.clone(),
                    security: is_security_suite(&rel.source.suite),
                    source: p.source.clone(),
                    installed_source_version: p.source_version.clone(),
                    candidate_source_version: cand.source_version.to_string(),
                    release_date: rel.release.date.clone(),
                    cves: Vec::new(),
                    urgency: None,
                    advisories: Vec::new(),
                });
            }
            if let Some(tr) = opts.tracker {
                // The tracker names releases by codename.
                let codename = keys
                    .iter()
                    .filter_map(|k| loaded[k].as_ref().ok())
                    .map(|ix| &ix.releases[0])
                    .find(|r| r.source.suite == t.suite)
                    .and_then(|r| r.release.codename.clone())
                    .unwrap_or_else(|| t.suite.clone());
                add_cves(&mut report, t, &arch, tr, &codename);
            }
            report.status = if report.updates.iter().any(|u| u.security) {
                Status::Security
            } else if report.updates.is_empty() {
                Status::UpToDate
            } else {
                Status::Updates
            };
            images.push(report);
        }
    }
    images.sort_by(|a, b| {
        (&a.name, &a.version, &a.architecture, &a.location).cmp(&(
            &b.name,
            &b.version,
            &b.architecture,
            &b.location,
        ))
    });
    Report {
        schema_version: 1,
        checked_at: opts.now,
        tracker: opts.tracker.map(|t| TrackerInfo {
            origin: t.origin.clone(),
            issues: t.issues,
        }),
        warnings: Vec::new(),
        images,
    }
}

impl Target {
    /// The image architectures the lock has packages for.
    pub fn lock_architectures(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self
            .lock
            .packages
            .iter()
            .map(|p| p.target.as_str())
            .collect();
        set.into_iter().map(String::from).collect()
    }
}

/// Matches the tracker's issues to the image's installed source versions:
/// an issue fixed in a version some update brings is that update's; the
/// rest are open.
fn add_cves(report: &mut ImageReport, t: &Target, arch: &str, tr: &Tracker, release: &str) {
    let mut sources: BTreeMap<(&str, &str), ()> = BTreeMap::new();
    for p in t.lock.packages.iter().filter(|p| p.target == arch) {
        sources.insert((p.source.as_str(), p.source_version.as_str()), ());
    }
    let mut open = BTreeSet::new();
    for (source, version) in sources.keys() {
        for st in tr.standing(source, version, release) {
            let (state, fixed) = match st {
                tracker::Standing::Fixed(s, f) => (s, Some(f)),
                tracker::Standing::Open(s) => (s, None),
            };
            let mut taken = false;
            if let Some(fixed) = fixed {
                for u in report.updates.iter_mut().filter(|u| {
                    u.source == *source
                        && kiln_deb::version::compare(&u.candidate_source_version, fixed)
                            != Ordering::Less
                }) {
                    if !u.cves.contains(&state.id) {
                        u.cves.push(state.id.clone());
                    }
                    if let Some(urg) = &state.urgency {
                        let better = u.urgency.as_deref().is_none_or(|cur| {
                            tracker::urgency_rank(urg) > tracker::urgency_rank(cur)
                        });
                        if better {
                            u.urgency = Some(urg.clone());
                        }
                    }
                    taken = true;
                }
            }
            if !taken {
                open.insert(OpenIssue {
                    source: source.to_string(),
                    installed_source_version: version.to_string(),
                    cve: state.id.clone(),
                    urgency: state.urgency.clone(),
                    fixed_version: fixed.map(String::from),
                });
            }
        }
    }
    for u in &mut report.updates {
        u.cves.sort();
        u.advisories = tr.advisories_for(
            release,
            &u.source,
            &u.installed_source_version,
            &u.candidate_source_version,
        );
    }
    report.open = open.into_iter().collect();
}

/// Held while a watch runs: a second `kiln watch` waits for the first.
pub struct WatchLock {
    _file: std::fs::File,
}

impl WatchLock {
    /// Takes `dir/watch.lock`, waiting (and saying so) while another watch holds it.
    pub fn acquire(dir: &Path, reporter: &dyn Reporter) -> Result<WatchLock> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("watch.lock");
        let f = kiln_model::owner::lock_waiting(&path, || {
            reporter.warn(&format!(
                "another kiln watch is running (lock {}); waiting for it to finish",
                path.display()
            ))
        })
        .with_context(|| format!("locking {}", path.display()))?;
        Ok(WatchLock { _file: f })
    }
}

/// Where watch state lives: `$XDG_STATE_HOME/kiln`, else `~/.local/state/kiln`.
pub fn state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("kiln");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".local/state/kiln")
}

/// Parses `--every`: `90s`, `30m`, `6h`, `1d` (or plain seconds).
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    let secs = n.checked_mul(mult)?;
    (secs > 0).then(|| std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("90"),
            Some(std::time::Duration::from_secs(90))
        );
        assert_eq!(
            parse_duration("30m"),
            Some(std::time::Duration::from_secs(1800))
        );
        assert_eq!(
            parse_duration("6h"),
            Some(std::time::Duration::from_secs(21600))
        );
        assert_eq!(
            parse_duration("1d"),
            Some(std::time::Duration::from_secs(86400))
        );
        for bad in ["", "0", "5x", "h", "-1m", "1.5h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn security_suites() {
        assert!(is_security_suite("bookworm-security"));
        assert!(is_security_suite("buster/updates"));
        assert!(!is_security_suite("bookworm-updates"));
        assert!(!is_security_suite("bookworm"));
    }
}

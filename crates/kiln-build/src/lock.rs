//! Resolving a recipe into its lock, and reading locks back.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use kiln_archive::pinned::{load_pinned_indexes, load_pinned_release, Pinned};
use kiln_archive::{Fetcher, LoadOptions, SeenRelease};
use kiln_model::event::Stage;
use kiln_model::{Hinted, Reporter};
use kiln_recipe::{Lock, LockedPackage, LockedRelease, Reason, Recipe};
use kiln_resolve::{IndexInput, Request, Universe};

use crate::sources::{recipe_sources, SourceOptions};

/// kiln-archive's "Get URL" and "warning: …" lines, reported.
pub fn index_progress(reporter: &dyn Reporter) -> impl Fn(&str) + Sync + '_ {
    move |m: &str| {
        if let Some(w) = m.strip_prefix("warning: ") {
            reporter.warn(w)
        } else {
            reporter.step(Stage::Index, m.strip_prefix("Get ").unwrap_or(m))
        }
    }
}

/// The Release dates the recipe's existing lock records: locking again must
/// not go back to older Release files (unless `--allow-older-release`).
fn locked_releases(recipe: &Recipe) -> Vec<SeenRelease> {
    let path = recipe.lock_path();
    let Ok(lock) = Lock::read(&path) else {
        return Vec::new();
    };
    lock.releases
        .into_iter()
        .filter_map(|r| {
            Some(SeenRelease {
                uri: r.uri,
                suite: r.suite,
                date: r.date?,
                seen_in: format!("recorded in {}", path.display()),
            })
        })
        .collect()
}

/// Resolves `recipe` against its sources into a lock (not written). Release
/// files older than those the existing lock records are refused unless
/// `args.allow_older_release`.
pub fn resolve_recipe(
    recipe: &Recipe,
    args: &SourceOptions,
    reporter: &dyn Reporter,
) -> Result<Lock> {
    resolve_recipe_updating(recipe, args, reporter, None)
}

/// [`resolve_recipe`], keeping every package of the existing lock at its
/// locked version except those named in `update` and whatever they need
/// to change (`kiln lock --update PKG…`). With `None`, everything is
/// resolved afresh.
pub fn resolve_recipe_updating(
    recipe: &Recipe,
    args: &SourceOptions,
    reporter: &dyn Reporter,
    update: Option<&[String]>,
) -> Result<Lock> {
    let old = match update {
        None => None,
        Some(names) => Some(old_lock_for_update(recipe, names)?),
    };
    let sources = recipe_sources(recipe, args)?;
    let cache = args.cache();
    let fetcher = Fetcher::new();
    let seen = locked_releases(recipe);
    let progress = index_progress(reporter);
    let mut lock = Lock {
        version: kiln_recipe::lock::LOCK_VERSION,
        recipe: recipe.resolution_hash(),
        generator: format!("kiln {}", env!("CARGO_PKG_VERSION")),
        inputs: recipe.resolution_inputs(),
        releases: Vec::new(),
        packages: Vec::new(),
    };
    let timing = std::env::var_os("KILN_TIMING").is_some();
    let mut t = Instant::now();
    let mut lap = |what: &str| {
        if timing {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "timing: {what}: {:.3}s",
                t.elapsed().as_secs_f64()
            );
        }
        t = Instant::now();
    };
    for arch in &recipe.image.architectures {
        let indexes = kiln_archive::load_indexes(
            &sources,
            arch,
            &cache,
            &fetcher,
            &LoadOptions {
                offline: args.offline,
                now: kiln_archive::now(),
                progress: &progress,
                seen: &seen,
                allow_older: args.allow_older_release,
            },
        )?;
        for r in &indexes.releases {
            let lr = LockedRelease {
                uri: r.source.uri.clone(),
                suite: r.source.suite.clone(),
                codename: r.release.codename.clone(),
                date: r.release.date.clone(),
                sha256: r.sha256.clone(),
            };
            if !lock.releases.contains(&lr) {
                lock.releases.push(lr);
            }
        }
        let inputs: Vec<IndexInput> = indexes
            .indexes
            .iter()
            .map(|i| {
                let r = &indexes.releases[i.release];
                IndexInput {
                    release: i.release,
                    pin: r.release.pin_priority(),
                    main_suite: r.source.suite == recipe.image.suite,
                    text: &i.text,
                }
            })
            .collect();
        lap("load and verify indexes");
        let universe = Universe::build(&inputs, arch)?;
        lap("build the candidate universe");
        let prio = recipe.packages.priority;
        let include = distroless_include(recipe, &universe);
        let request = Request {
            include: &include,
            exclude: &recipe.packages.exclude,
            priority: &|p| prio.includes(p),
            essential: !recipe.container.distroless,
            ignore: &recipe.container.ignore_dependencies,
            recommends: recipe.packages.recommends,
        };
        let resolution = kiln_resolve::resolve(&universe, &request)
            .with_context(|| format!("resolving {} for {arch}", recipe.path.display()))?;
        lap("resolve");
        let (universe, resolution) = match (&old, update) {
            (Some(old), Some(names)) => {
                let keep: HashMap<String, String> = old
                    .packages
                    .iter()
                    .filter(|p| &p.target == arch && !names.contains(&p.name))
                    .map(|p| (p.name.clone(), p.version.clone()))
                    .collect();
                let kept = keep.len();
                let (u, r, released) =
                    resolve_keeping(&inputs, arch, keep, &request, &universe, &resolution)
                        .with_context(|| {
                            format!(
                                "resolving {} for {arch} with --update {}",
                                recipe.path.display(),
                                names.join(" ")
                            )
                        })?;
                let mut note = format!(
                    "--update {}: the other {} packages for {arch} keep their locked versions",
                    names.join(" "),
                    kept - released.len()
                );
                if !released.is_empty() {
                    note.push_str(&format!(
                        "; these change too, as the update needs: {}",
                        released.join(", ")
                    ));
                }
                reporter.step(Stage::Lock, &note);
                lap("resolve keeping the lock");
                (u, r)
            }
            _ => (universe, resolution),
        };
        for c in &resolution.packages {
            let p = &universe.pkgs[c.pkg];
            lock.packages.push(LockedPackage {
                name: p.name.to_string(),
                version: p.version.to_string(),
                architecture: p.arch.to_string(),
                target: arch.clone(),
                source: p.source.to_string(),
                source_version: p.source_version.to_string(),
                filename: p.filename.to_string(),
                size: p.size,
                sha256: p.sha256.to_string(),
                installed_size: p.installed_size,
                release: indexes.releases[p.release].source.suite.clone(),
                reason: match c.reason {
                    kiln_resolve::Reason::Include => Reason::Include,
                    kiln_resolve::Reason::Essential => Reason::Essential,
                    kiln_resolve::Reason::Priority => Reason::Priority,
                    kiln_resolve::Reason::Dependency => Reason::Dependency,
                },
                required_by: c
                    .required_by
                    .iter()
                    .map(|&q| universe.pkgs[q].name.to_string())
                    .collect(),
            });
        }
    }
    lock.canonicalize();
    crate::requirements::check(recipe, &lock)?;
    Ok(lock)
}

/// The existing lock `kiln lock --update NAMES` starts from; every name
/// must be one of its packages.
fn old_lock_for_update(recipe: &Recipe, names: &[String]) -> Result<Lock> {
    let path = recipe.lock_path();
    if !path.exists() {
        return Err(Hinted::new(
            format!(
                "--update keeps the rest of the lock, but {} does not exist",
                path.display()
            ),
            format!("run `kiln lock {}` first", recipe.path.display()),
        )
        .into());
    }
    let lock = Lock::read(&path)?;
    let known: BTreeSet<&str> = lock.packages.iter().map(|p| p.name.as_str()).collect();
    let unknown: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !known.contains(n))
        .collect();
    if !unknown.is_empty() {
        let near: Vec<&str> = unknown
            .iter()
            .filter_map(|u| {
                known
                    .iter()
                    .copied()
                    .map(|k| (strsim::jaro_winkler(u, k), k))
                    .filter(|(s, _)| *s > 0.88)
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, k)| k)
            })
            .collect();
        return Err(Hinted::new(
            format!(
                "--update {}: not in {} (only locked packages can be updated)",
                unknown.join(" "),
                path.display()
            ),
            if near.is_empty() {
                "add new packages to the recipe's [packages] include and run `kiln lock`"
                    .to_string()
            } else {
                format!("did you mean {}?", near.join(", "))
            },
        )
        .into());
    }
    Ok(lock)
}

/// Resolves with the packages of `keep` held at their versions. When that
/// cannot be satisfied, a kept package that an updated (or new) package
/// needs at another version — or that itself needs an updated one at its
/// old version — is let go, and the resolution tried again. Gives the
/// universe, the resolution and the names let go.
fn resolve_keeping<'a>(
    inputs: &[IndexInput<'a>],
    arch: &str,
    mut keep: HashMap<String, String>,
    request: &Request,
    full_universe: &Universe<'a>,
    full: &kiln_resolve::Resolution,
) -> Result<(Universe<'a>, kiln_resolve::Resolution, Vec<String>)> {
    // The packages a fresh resolution installs, and the kept ones.
    let mut domain: BTreeSet<String> = full
        .packages
        .iter()
        .map(|c| full_universe.pkgs[c.pkg].name.to_string())
        .collect();
    domain.extend(keep.keys().cloned());
    let mut released = Vec::new();
    loop {
        let u = Universe::build_keeping(inputs, arch, &keep)?;
        let result = kiln_resolve::resolve(&u, request);
        // A resolution that left out a kept package may have gone round a
        // kept version that cannot be installed any more (an alternative
        // instead of `perl` when `perl-base` was updated): look closer.
        if let Ok(r) = &result {
            let installed: BTreeSet<&str> = r.packages.iter().map(|c| u.pkgs[c.pkg].name).collect();
            if keep.keys().all(|k| installed.contains(k.as_str())) {
                return Ok((u, result.expect("checked"), released));
            }
        }
        let mut must_change: BTreeSet<String> = BTreeSet::new();
        for name in &domain {
            let Some(p) = u.get(name) else { continue };
            let kept = keep.contains_key(name.as_str());
            let pkg = &u.pkgs[p];
            for field in [pkg.pre_depends, pkg.depends] {
                for group in u.relations(p, field)? {
                    for d in &group {
                        let Some(q) = u.get(d.name) else { continue };
                        let q_kept = keep.contains_key(d.name);
                        if kept == q_kept || u.satisfies_real(q, d) {
                            continue;
                        }
                        // An update needs a kept package newer, or a kept
                        // package needs an updated one as it was.
                        must_change.insert(if q_kept {
                            d.name.to_string()
                        } else {
                            name.clone()
                        });
                    }
                }
            }
            if !kept {
                for field in [pkg.breaks, pkg.conflicts] {
                    for group in u.relations(p, field)? {
                        for d in &group {
                            if keep.contains_key(d.name)
                                && u.get(d.name).is_some_and(|q| u.satisfies_real(q, d))
                            {
                                must_change.insert(d.name.to_string());
                            }
                        }
                    }
                }
            }
        }
        must_change.retain(|n| keep.contains_key(n));
        if must_change.is_empty() {
            let err = match result {
                // What it left out is no longer needed.
                Ok(r) => return Ok((u, r, released)),
                Err(e) => e,
            };
            return Err(anyhow::Error::from(err).context(
                "the named packages cannot be updated while the rest keeps its locked versions \
                 (name more packages to --update, or run `kiln lock` without --update)",
            ));
        }
        for n in must_change {
            keep.remove(&n);
            released.push(n);
        }
    }
}

/// The recipe and its lock: read (and checked) when `locked`, otherwise
/// resolved again when the lock is missing or no longer matches.
pub fn ensure_lock(
    recipe_path: &Path,
    locked: bool,
    args: &SourceOptions,
    reporter: &dyn Reporter,
) -> Result<(Recipe, Lock)> {
    ensure_lock_for(Recipe::load(recipe_path)?, locked, args, reporter)
}

/// [`ensure_lock`] for a recipe already loaded.
pub fn ensure_lock_for(
    recipe: Recipe,
    locked: bool,
    args: &SourceOptions,
    reporter: &dyn Reporter,
) -> Result<(Recipe, Lock)> {
    let recipe_path = recipe.path.clone();
    let recipe_path = recipe_path.as_path();
    let lock_path = recipe.lock_path();
    let existing = if lock_path.exists() {
        Some(Lock::read(&lock_path)?)
    } else {
        None
    };
    let hash = recipe.resolution_hash();
    match existing {
        Some(lock) if lock.recipe == hash => {
            crate::requirements::check(&recipe, &lock)?;
            check_against_indexes(&lock, &recipe, args, reporter)?;
            Ok((recipe, lock))
        }
        Some(lock) if locked => {
            lock.check(&recipe, &lock_path)?;
            unreachable!("check fails on a mismatch")
        }
        None if locked => Err(Hinted {
            message: format!("--locked: {} does not exist", lock_path.display()),
            hint: format!("run `kiln lock {}` first", recipe_path.display()),
        }
        .into()),
        _ => {
            let lock = resolve_recipe(&recipe, args, reporter)?;
            lock.write(&lock_path)?;
            reporter.step(
                Stage::Lock,
                &format!(
                    "{} packages -> {}",
                    lock.packages.len(),
                    lock_path.display()
                ),
            );
            Ok((recipe, lock))
        }
    }
}

/// What [`check_against_indexes`] proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockProof {
    /// `[[release]]` entries whose Release file was found and verified.
    pub releases: usize,
    /// Packages found, field for field, in those Release files' indexes.
    pub packages: usize,
}

/// One package version as a signed `Packages` index publishes it: the
/// fields a lock copies from the index.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Published {
    version: String,
    filename: String,
    size: u64,
    sha256: String,
    source: String,
    source_version: String,
    installed_size: u64,
}

impl Published {
    fn of(p: &LockedPackage) -> Published {
        Published {
            version: p.version.clone(),
            filename: p.filename.clone(),
            size: p.size,
            sha256: p.sha256.clone(),
            source: p.source.clone(),
            source_version: p.source_version.clone(),
            installed_size: p.installed_size,
        }
    }

    /// (field, value) pairs, in the order mismatches are named.
    fn fields(&self) -> [(&'static str, String); 7] {
        [
            ("version", self.version.clone()),
            ("filename", self.filename.clone()),
            ("size", self.size.to_string()),
            ("sha256", self.sha256.clone()),
            ("source", self.source.clone()),
            ("source-version", self.source_version.clone()),
            ("installed-size", self.installed_size.to_string()),
        ]
    }
}

/// (name, architecture) → every version the indexes publish.
type PublishedMap = HashMap<(String, String), Vec<Published>>;

/// The stanzas of `text` for the packages named in `wanted`, as the
/// resolver reads them (see `kiln_resolve::Universe`).
fn published_in(text: &str, wanted: &BTreeSet<&str>, out: &mut PublishedMap) -> Result<()> {
    for para in kiln_deb::deb822::paragraphs(text) {
        let para = para.map_err(|e| anyhow::anyhow!("malformed Packages index: {e}"))?;
        let Some(name) = para.get("Package").filter(|n| wanted.contains(n)) else {
            continue;
        };
        let get = |k: &str| para.get(k).unwrap_or("");
        let num = |k: &str| get(k).trim().parse().unwrap_or(0);
        let version = get("Version");
        let (source, source_version) = match para.get("Source") {
            Some(s) => match s.split_once('(') {
                Some((n, v)) => (n.trim(), v.trim_end_matches(')').trim()),
                None => (s.trim(), version),
            },
            None => (name, version),
        };
        out.entry((name.to_string(), get("Architecture").to_string()))
            .or_default()
            .push(Published {
                version: version.to_string(),
                filename: get("Filename").to_string(),
                size: num("Size"),
                sha256: get("SHA256").to_string(),
                source: source.to_string(),
                source_version: source_version.to_string(),
                installed_size: num("Installed-Size"),
            });
    }
    Ok(())
}

/// Confirms that `lock` names only what signed indexes published: every
/// `[[release]]` is a Release file of one of `recipe`'s sources whose
/// signature checks out against that source's keyring and whose signed text
/// has the sha256 the lock records, and every package (name, version,
/// architecture, filename, size, sha256, source, installed size) is listed
/// in a `Packages` index that Release file names by sha256.
///
/// Release files are read from the cache (by sha256, then the suite's last
/// one) and verified again; indexes from the content-addressed cache,
/// re-hashed. What the cache lacks is fetched, unless `args.offline`.
/// Nothing is written to the cache unless something is fetched.
pub fn check_against_indexes(
    lock: &Lock,
    recipe: &Recipe,
    args: &SourceOptions,
    reporter: &dyn Reporter,
) -> Result<LockProof> {
    let sources = recipe_sources(recipe, args)?;
    let cache = args.cache();
    let fetcher = Fetcher::new();
    let progress = index_progress(reporter);
    let opts = LoadOptions {
        offline: args.offline,
        now: kiln_archive::now(),
        progress: &progress,
        // Proving, not re-locking: a fetched Release must still not be older
        // than the cached one, but the lock's own dates are what is checked.
        seen: &[],
        allow_older: false,
    };
    let again = format!("run `kiln lock {}` again", recipe.path.display());
    let edited = format!("the lock was edited or damaged: {again}");
    // Each package is checked against the release it is downloaded from
    // (the first [[release]] of its suite, as `fetch::deb_ref` picks it).
    let mut wanted: BTreeMap<(usize, &str), BTreeSet<&str>> = BTreeMap::new();
    let mut release_of = Vec::with_capacity(lock.packages.len());
    for p in &lock.packages {
        let r = lock
            .releases
            .iter()
            .position(|r| r.suite == p.release)
            .ok_or_else(|| {
                Hinted::new(
                    format!(
                        "the lock names release `{}` for {} but has no such [[release]]",
                        p.release, p.name
                    ),
                    edited.clone(),
                )
            })?;
        release_of.push(r);
        wanted
            .entry((r, p.target.as_str()))
            .or_default()
            .insert(p.name.as_str());
    }
    // Every [[release]] is proven (their dates give SOURCE_DATE_EPOCH), in
    // parallel as `kiln lock` loads them.
    let prove = |i: usize, lr: &LockedRelease| -> Result<BTreeMap<String, PublishedMap>> {
        let what = format!("release `{}` ({})", lr.suite, lr.uri);
        // The source at the lock's URI, else the first of its suite (the
        // lock may have been made with --mirror).
        let src = sources
            .iter()
            .find(|s| s.suite == lr.suite && s.uri == lr.uri)
            .or_else(|| sources.iter().find(|s| s.suite == lr.suite))
            .ok_or_else(|| {
                Hinted::new(
                    format!("the lock's {what} is not one of the recipe's sources"),
                    edited.clone(),
                )
            })?;
        // Fetched from where the lock says, with the keyring the recipe gives.
        let src = kiln_archive::Source {
            uri: lr.uri.clone(),
            ..src.clone()
        };
        let rel = match load_pinned_release(&src, &lr.sha256, &cache, &fetcher, &opts)? {
            Pinned::Found(r) => *r,
            Pinned::NotCached { path } => {
                return Err(Hinted::new(
                    format!(
                        "--offline: no cached Release file of the lock's {what} has the sha256 {} it records ({})",
                        lr.sha256,
                        path.display()
                    ),
                    format!("run without --offline to fetch it; if the lock was edited or damaged, or the suite has moved on since, {again}"),
                )
                .into())
            }
            Pinned::Gone { served } => {
                return Err(Hinted::new(
                    format!(
                        "no signed Release file of the lock's {what} has the sha256 {} it records: none is cached, and the repository now serves {served}",
                        lr.sha256
                    ),
                    format!("the lock was edited or damaged, or the suite has moved on since it was locked: {again}"),
                )
                .into())
            }
        };
        for (field, locked, signed) in [
            ("codename", &lr.codename, &rel.release.codename),
            ("date", &lr.date, &rel.release.date),
        ] {
            if locked != signed {
                let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "nothing".into());
                return Err(Hinted::new(
                    format!(
                        "the lock's {what} does not match its signed Release file: {field}: the lock says {}, the signed Release file says {}",
                        show(locked),
                        show(signed)
                    ),
                    edited.clone(),
                )
                .into());
            }
        }
        let mut out = BTreeMap::new();
        for ((_, target), names) in wanted.range((i, "")..(i + 1, "")) {
            let mut published = PublishedMap::new();
            for index in load_pinned_indexes(&rel, target, &cache, &fetcher, &opts)? {
                published_in(&index.text, names, &mut published)
                    .with_context(|| format!("reading {} of {}", index.path, rel.name()))?;
            }
            out.insert(target.to_string(), published);
        }
        Ok(out)
    };
    let proven: Vec<BTreeMap<String, PublishedMap>> = std::thread::scope(|s| {
        let handles: Vec<_> = lock
            .releases
            .iter()
            .enumerate()
            .map(|(i, lr)| {
                let prove = &prove;
                s.spawn(move || prove(i, lr))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("lock check panicked"))
            .collect::<Result<_>>()
    })?;
    let mut problems = Vec::new();
    for (p, &r) in lock.packages.iter().zip(&release_of) {
        let lr = &lock.releases[r];
        let rel = format!("{} ({})", lr.suite, lr.uri);
        let versions = proven[r]
            .get(&p.target)
            .and_then(|m| m.get(&(p.name.clone(), p.architecture.clone())))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let locked = Published::of(p);
        if versions.contains(&locked) {
            continue;
        }
        let Some(same) = versions.iter().find(|v| v.version == p.version) else {
            problems.push(if versions.is_empty() {
                format!(
                    "no signed index of {rel} has the lock's package `{}` {} ({}), sha256 {}",
                    p.name, p.version, p.architecture, p.sha256
                )
            } else {
                format!(
                    "the lock's package `{}` ({}) does not match the signed index of {rel}: version: the lock says {}, the signed index says {}",
                    p.name,
                    p.architecture,
                    p.version,
                    versions
                        .iter()
                        .map(|v| v.version.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            });
            continue;
        };
        let differ: Vec<String> = locked
            .fields()
            .into_iter()
            .zip(same.fields())
            .filter(|(a, b)| a.1 != b.1)
            .map(|((field, a), (_, b))| {
                format!("{field}: the lock says {a}, the signed index says {b}")
            })
            .collect();
        problems.push(format!(
            "the lock's package `{}` {} ({}) does not match the signed index of {rel}: {}",
            p.name,
            p.version,
            p.architecture,
            differ.join("; ")
        ));
    }
    if let Some(first) = problems.first() {
        let more = match problems.len() {
            1 => String::new(),
            n => format!(" (and {} more packages)", n - 1),
        };
        return Err(Hinted::new(format!("{first}{more}"), edited).into());
    }
    Ok(LockProof {
        releases: lock.releases.len(),
        packages: lock.packages.len(),
    })
}

/// The shortest path from a package the recipe asked for to `package`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Why {
    /// The image architecture whose packages were searched.
    pub target: String,
    /// Why the first package of `chain` is in the image.
    pub root_reason: Reason,
    /// (name, version), from the requested package down to `package`.
    pub chain: Vec<(String, String)>,
}

/// Why `package` is in `lock` (read from `lock_path`, named in errors).
pub fn why(lock: &Lock, lock_path: &Path, package: &str, arch: Option<&str>) -> Result<Why> {
    let targets: Vec<&str> = {
        let mut t: Vec<&str> = lock.packages.iter().map(|p| p.target.as_str()).collect();
        t.dedup();
        t
    };
    let target = match (arch, targets.as_slice()) {
        (Some(a), _) => a,
        (None, [one]) => one,
        (None, []) => "",
        (None, many) => {
            return Err(Hinted::new(
                format!(
                    "{} has several architectures ({})",
                    lock_path.display(),
                    many.join(", ")
                ),
                "pick one with --arch",
            )
            .into())
        }
    };
    let pkgs: HashMap<&str, &LockedPackage> = lock
        .packages
        .iter()
        .filter(|p| p.target == target)
        .map(|p| (p.name.as_str(), p))
        .collect();
    let Some(start) = pkgs.get(package) else {
        let names: Vec<&str> = pkgs.keys().copied().collect();
        return Err(Hinted::new(
            format!("`{package}` is not in {}", lock_path.display()),
            match kiln_recipe::did_you_mean(package, names) {
                Some(s) => format!("did you mean `{s}`?"),
                None => "it is not part of this image".into(),
            },
        )
        .into());
    };
    // Breadth-first towards a package the recipe asked for: the shortest path.
    let mut prev: HashMap<&str, &str> = HashMap::new();
    let mut queue = VecDeque::from([start.name.as_str()]);
    let mut root = None;
    while let Some(n) = queue.pop_front() {
        let p = pkgs[n];
        if p.reason != Reason::Dependency {
            root = Some(n);
            break;
        }
        for r in &p.required_by {
            if pkgs.contains_key(r.as_str()) && !prev.contains_key(r.as_str()) && r != package {
                prev.insert(r.as_str(), n);
                queue.push_back(r.as_str());
            }
        }
    }
    let root = root.context("the lock has no path to a requested package (is it corrupt?)")?;
    let mut chain = vec![root];
    while let Some(&next) = prev.get(chain.last().unwrap()) {
        chain.push(next);
    }
    Ok(Why {
        target: target.to_string(),
        root_reason: pkgs[root].reason,
        chain: chain
            .iter()
            .map(|n| (n.to_string(), pkgs[n].version.clone()))
            .collect(),
    })
}

/// The packages a recipe asks for, plus, in a distroless image, `base-files`
/// where the archive has it: its `/usr/lib/os-release`, `/etc/os-release`
/// and `/etc/debian_version` are how scanners (Trivy, Grype) know the image
/// is Debian and which release, to match its packages with advisories.
/// `[packages] exclude = ["base-files"]` leaves it out.
fn distroless_include(recipe: &Recipe, universe: &Universe) -> Vec<String> {
    let mut include = recipe.packages.include.clone();
    let name = "base-files";
    if recipe.container.distroless
        && !include.iter().any(|p| p == name)
        && !recipe.packages.exclude.iter().any(|p| p == name)
        && universe.get(name).is_some()
    {
        include.push(name.to_string());
    }
    include
}

/// One package that differs between two locks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The image architecture it is installed for.
    pub target: String,
    pub name: String,
    pub architecture: String,
    /// Its version in the old lock (`None`: added).
    pub from: Option<String>,
    /// Its version in the new lock (`None`: removed).
    pub to: Option<String>,
    /// Its source package and version in the old lock.
    pub from_source: Option<(String, String)>,
    /// Its source package and version in the new lock.
    pub to_source: Option<(String, String)>,
}

/// What changed between two locks: packages added, removed, and updated
/// (another version), each sorted by architecture and name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LockDiff {
    pub added: Vec<Change>,
    pub removed: Vec<Change>,
    pub updated: Vec<Change>,
}

impl LockDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.updated.is_empty()
    }
}

/// The packages of `new` that `old` lacks, those it has that `new` lacks,
/// and those whose version changed; a package is its (image architecture,
/// name, architecture).
pub fn diff(old: &Lock, new: &Lock) -> LockDiff {
    let key = |p: &LockedPackage| (p.target.clone(), p.name.clone(), p.architecture.clone());
    let before: BTreeMap<_, &LockedPackage> = old.packages.iter().map(|p| (key(p), p)).collect();
    let after: BTreeMap<_, &LockedPackage> = new.packages.iter().map(|p| (key(p), p)).collect();
    let change = |(target, name, architecture): &(String, String, String),
                  from: Option<&LockedPackage>,
                  to: Option<&LockedPackage>| Change {
        target: target.clone(),
        name: name.clone(),
        architecture: architecture.clone(),
        from: from.map(|p| p.version.clone()),
        to: to.map(|p| p.version.clone()),
        from_source: from.map(|p| (p.source.clone(), p.source_version.clone())),
        to_source: to.map(|p| (p.source.clone(), p.source_version.clone())),
    };
    let mut d = LockDiff::default();
    for (k, p) in &after {
        match before.get(k) {
            None => d.added.push(change(k, None, Some(p))),
            Some(o) if o.version != p.version => d.updated.push(change(k, Some(o), Some(p))),
            Some(_) => {}
        }
    }
    for (k, o) in &before {
        if !after.contains_key(k) {
            d.removed.push(change(k, Some(o), None));
        }
    }
    d
}

#[cfg(test)]
mod diff_tests {
    use super::*;

    fn pkg(target: &str, name: &str, version: &str) -> LockedPackage {
        LockedPackage {
            name: name.into(),
            version: version.into(),
            architecture: target.into(),
            target: target.into(),
            source: name.into(),
            source_version: version.into(),
            filename: format!("pool/{name}.deb"),
            size: 1,
            sha256: "0".repeat(64),
            installed_size: 1,
            release: "trixie".into(),
            reason: Reason::Dependency,
            required_by: Vec::new(),
        }
    }

    fn lock(pkgs: Vec<LockedPackage>) -> Lock {
        Lock {
            version: 1,
            recipe: String::new(),
            generator: String::new(),
            inputs: Default::default(),
            releases: Vec::new(),
            packages: pkgs,
        }
    }

    #[test]
    fn added_removed_and_updated_per_architecture() {
        let old = lock(vec![
            pkg("amd64", "libssl3", "3.0.1"),
            pkg("amd64", "foo", "1"),
            pkg("arm64", "libssl3", "3.0.1"),
        ]);
        let new = lock(vec![
            pkg("amd64", "libssl3", "3.0.2"),
            pkg("amd64", "bar", "2"),
            pkg("arm64", "libssl3", "3.0.1"),
        ]);
        let d = diff(&old, &new);
        let names = |v: &[Change]| -> Vec<String> {
            v.iter()
                .map(|c| format!("{}/{} {:?}->{:?}", c.target, c.name, c.from, c.to))
                .collect()
        };
        assert_eq!(names(&d.added), ["amd64/bar None->Some(\"2\")"]);
        assert_eq!(names(&d.removed), ["amd64/foo Some(\"1\")->None"]);
        assert_eq!(
            names(&d.updated),
            ["amd64/libssl3 Some(\"3.0.1\")->Some(\"3.0.2\")"]
        );
        assert!(diff(&new, &new).is_empty());
    }
}

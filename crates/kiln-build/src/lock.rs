//! Resolving a recipe into its lock, and reading locks back.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use kiln_archive::{Fetcher, LoadOptions, SeenRelease};
use kiln_model::event::Stage;
use kiln_model::{Hinted, Reporter};
use kiln_recipe::{Lock, LockedPackage, LockedRelease, Reason, Recipe};
use kiln_resolve::{IndexInput, Request, Universe};

use crate::sources::{recipe_sources, SourceOptions};

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
    let sources = recipe_sources(recipe, args)?;
    let cache = args.cache();
    let fetcher = Fetcher::new();
    let seen = locked_releases(recipe);
    // kiln-archive reports "Get URL" and "warning: …" lines.
    let progress = |m: &str| {
        if let Some(w) = m.strip_prefix("warning: ") {
            reporter.warn(w)
        } else {
            reporter.step(Stage::Index, m.strip_prefix("Get ").unwrap_or(m))
        }
    };
    let mut lock = Lock {
        version: kiln_recipe::lock::LOCK_VERSION,
        recipe: recipe.resolution_hash(),
        generator: format!("kiln {}", env!("CARGO_PKG_VERSION")),
        releases: Vec::new(),
        packages: Vec::new(),
    };
    let timing = std::env::var_os("KILN_TIMING").is_some();
    let mut t = Instant::now();
    let mut lap = |what: &str| {
        if timing {
            eprintln!("timing: {what}: {:.3}s", t.elapsed().as_secs_f64());
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
        let resolution = kiln_resolve::resolve(
            &universe,
            &Request {
                include: &recipe.packages.include,
                exclude: &recipe.packages.exclude,
                priority: &|p| prio.includes(p),
                essential: !recipe.container.distroless,
                ignore: &recipe.container.ignore_dependencies,
                recommends: recipe.packages.recommends,
            },
        )
        .with_context(|| format!("resolving {} for {arch}", recipe.path.display()))?;
        lap("resolve");
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

/// The recipe and its lock: read (and checked) when `locked`, otherwise
/// resolved again when the lock is missing or no longer matches.
pub fn ensure_lock(
    recipe_path: &Path,
    locked: bool,
    args: &SourceOptions,
    reporter: &dyn Reporter,
) -> Result<(Recipe, Lock)> {
    let recipe = Recipe::load(recipe_path)?;
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
            Ok((recipe, lock))
        }
        Some(lock) if locked => {
            lock.check(&hash, &lock_path)?;
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

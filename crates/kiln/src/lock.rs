//! `kiln lock` and `kiln why`.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use kiln_archive::{Cache, Fetcher, Keyring, LoadOptions, MirrorOverride, Source};
use kiln_recipe::{Lock, LockedPackage, LockedRelease, Reason, Recipe, SignedBy};
use kiln_resolve::{IndexInput, Request, Universe};
use serde_json::json;

use crate::ui::{human_size, Ui};
use crate::SourceArgs;

/// An error with a hint of its own, for problems found in this crate.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Hinted {
    pub message: String,
    pub hint: String,
}

/// The sources a recipe reads from, in apt's order.
pub fn recipe_sources(recipe: &Recipe, args: &SourceArgs) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    if recipe.image.default_sources {
        out.extend(kiln_archive::sources::default_sources(
            &recipe.image.suite,
            &recipe.image.components,
            Path::new("/"),
            &MirrorOverride {
                mirror: args.mirror.clone(),
                security_mirror: args.security_mirror.clone(),
            },
        )?);
    }
    for s in &recipe.sources {
        let keyring = match &s.signed_by {
            Some(SignedBy::File(p)) => Keyring::Files(vec![p.clone()]),
            Some(SignedBy::Inline(k)) => Keyring::Inline(k.clone()),
            None => Keyring::Files(vec![PathBuf::from(
                "/usr/share/keyrings/debian-archive-keyring.gpg",
            )]),
        };
        for suite in &s.suites {
            out.push(Source {
                uri: s.uri.clone(),
                suite: suite.clone(),
                components: s.components.clone(),
                keyring: keyring.clone(),
                allow_unsigned: s.allow_unsigned,
                origin: s.origin.clone(),
            });
        }
    }
    Ok(out)
}

pub fn cache_for(args: &SourceArgs) -> Cache {
    match &args.cache_dir {
        Some(d) => Cache::new(d),
        None => Cache::from_env(),
    }
}

/// Resolves `recipe` against its sources into a lock (not written).
pub fn resolve_recipe(ui: &Ui, recipe: &Recipe, args: &SourceArgs) -> Result<Lock> {
    let sources = recipe_sources(recipe, args)?;
    let cache = cache_for(args);
    let fetcher = Fetcher::new();
    let progress = |m: &str| {
        if let Some(w) = m.strip_prefix("warning: ") {
            ui.warn(w)
        } else {
            ui.status("Fetching", m.strip_prefix("Get ").unwrap_or(m))
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
    Ok(lock)
}

fn summary_json(lock: &Lock, path: &Path) -> serde_json::Value {
    json!({
        "lock": path.display().to_string(),
        "recipe-sha256": lock.recipe,
        "packages": lock.packages.iter().map(|p| json!({
            "name": p.name,
            "version": p.version,
            "architecture": p.architecture,
            "target": p.target,
            "source": p.source,
            "source-version": p.source_version,
            "sha256": p.sha256,
            "size": p.size,
            "installed-size-kib": p.installed_size,
            "reason": p.reason,
        })).collect::<Vec<_>>(),
        "download-size": lock.packages.iter().map(|p| p.size).sum::<u64>(),
        "installed-size": lock.packages.iter().map(|p| p.installed_size * 1024).sum::<u64>(),
        "releases": lock.releases.iter().map(|r| json!({
            "suite": r.suite, "date": r.date, "sha256": r.sha256,
        })).collect::<Vec<_>>(),
    })
}

/// The recipe and its lock: read (and checked) when `locked`, otherwise
/// resolved again when the lock is missing or no longer matches.
pub fn ensure_lock(
    ui: &Ui,
    recipe_path: &Path,
    locked: bool,
    args: &SourceArgs,
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
        Some(lock) if lock.recipe == hash => Ok((recipe, lock)),
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
            let lock = resolve_recipe(ui, &recipe, args)?;
            lock.write(&lock_path)?;
            ui.status(
                "Locked",
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

pub fn cmd_lock(
    ui: &Ui,
    recipe_path: &Path,
    check: bool,
    json: bool,
    args: &SourceArgs,
) -> Result<()> {
    let start = Instant::now();
    let recipe = Recipe::load(recipe_path)?;
    let lock_path = recipe.lock_path();
    if check {
        if !lock_path.exists() {
            return Err(Hinted {
                message: format!("{} does not exist", lock_path.display()),
                hint: format!("run `kiln lock {}` first", recipe_path.display()),
            }
            .into());
        }
        let lock = Lock::read(&lock_path)?;
        lock.check(&recipe.resolution_hash(), &lock_path)?;
        ui.status(
            "Checked",
            &format!("{} matches {}", lock_path.display(), recipe_path.display()),
        );
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&summary_json(&lock, &lock_path))?
            );
        }
        return Ok(());
    }
    let lock = resolve_recipe(ui, &recipe, args)?;
    let old = Lock::read(&lock_path).ok();
    if old.as_ref() != Some(&lock) {
        lock.write(&lock_path)?;
    }
    let download: u64 = lock.packages.iter().map(|p| p.size).sum();
    let installed: u64 = lock.packages.iter().map(|p| p.installed_size * 1024).sum();
    let changed = match &old {
        None => "written".to_string(),
        Some(o) if *o == lock => "unchanged".to_string(),
        Some(o) => {
            let before: HashMap<(&str, &str), &str> = o
                .packages
                .iter()
                .map(|p| ((p.target.as_str(), p.name.as_str()), p.version.as_str()))
                .collect();
            let n = lock
                .packages
                .iter()
                .filter(|p| {
                    before.get(&(p.target.as_str(), p.name.as_str())) != Some(&p.version.as_str())
                })
                .count();
            if n == 0 {
                "updated: same packages, recipe or sources changed".to_string()
            } else {
                format!("updated, {n} packages changed")
            }
        }
    };
    ui.status(
        "Locked",
        &format!(
            "{} packages for {} (download {}, installed {}) in {:.2}s -> {} ({changed})",
            lock.packages.len(),
            recipe.image.architectures.join(", "),
            human_size(download),
            human_size(installed),
            start.elapsed().as_secs_f64(),
            lock_path.display()
        ),
    );
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary_json(&lock, &lock_path))?
        );
    }
    Ok(())
}

pub fn cmd_why(
    _ui: &Ui,
    package: &str,
    recipe: Option<PathBuf>,
    lock: Option<PathBuf>,
    arch: Option<String>,
    json: bool,
) -> Result<()> {
    let lock_path = match (recipe, lock) {
        (Some(r), _) => kiln_recipe::lock_path_for(&r),
        (None, Some(l)) => l,
        (None, None) => PathBuf::from("kiln.lock"),
    };
    if !lock_path.exists() {
        return Err(Hinted {
            message: format!("{} does not exist", lock_path.display()),
            hint: "name the recipe with --recipe RECIPE or the lock with --lock LOCK, or run `kiln lock RECIPE`".into(),
        }
        .into());
    }
    let lock = Lock::read(&lock_path)?;
    let targets: Vec<&str> = {
        let mut t: Vec<&str> = lock.packages.iter().map(|p| p.target.as_str()).collect();
        t.dedup();
        t
    };
    let target = match (&arch, targets.as_slice()) {
        (Some(a), _) => a.as_str(),
        (None, [one]) => one,
        (None, []) => "",
        (None, many) => {
            return Err(Hinted {
                message: format!(
                    "{} has several architectures ({})",
                    lock_path.display(),
                    many.join(", ")
                ),
                hint: "pick one with --arch".into(),
            }
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
        return Err(Hinted {
            message: format!("`{package}` is not in {}", lock_path.display()),
            hint: match kiln_recipe::did_you_mean(package, names) {
                Some(s) => format!("did you mean `{s}`?"),
                None => "it is not part of this image".into(),
            },
        }
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
    let why = |r: Reason| match r {
        Reason::Include => "listed in [packages] include",
        Reason::Essential => "Essential: yes",
        Reason::Priority => "in the [packages] priority set",
        Reason::Dependency => "a dependency",
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "package": package,
                "target": target,
                "root-reason": pkgs[root].reason,
                "path": chain.iter().map(|n| json!({"name": n, "version": pkgs[n].version})).collect::<Vec<_>>(),
            }))?
        );
        return Ok(());
    }
    println!(
        "{} {} ({})",
        root,
        pkgs[root].version,
        why(pkgs[root].reason)
    );
    for (i, n) in chain.iter().enumerate().skip(1) {
        println!("{}└─ {} {}", "   ".repeat(i - 1), n, pkgs[n].version);
    }
    Ok(())
}

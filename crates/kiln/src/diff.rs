//! `kiln diff A B`: what changed between two locks, two builds or two
//! catalogued versions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use kiln_build::lock::Change;
use kiln_model::{human_size, Hinted};
use kiln_recipe::Lock;
use serde::Serialize;

use crate::ui::Ui;

/// One side: its lock, and the artifacts when it is a build.
struct Side {
    shown: String,
    lock: Lock,
    /// Every package's installed size is known (a build whose lock was
    /// locked again since has packages the lock no longer describes).
    sizes_known: bool,
    artifacts: Option<Vec<kiln_model::Artifact>>,
}

/// A lock, a recipe (its lock), a build's output directory, or
/// `NAME@VERSION` of the catalog.
fn side(arg: &str, catalog: Option<&Path>) -> Result<Side> {
    let p = Path::new(arg);
    if std::fs::symlink_metadata(p).is_err() {
        if let Some((name, version)) = arg.split_once('@') {
            let dir = catalog_dir(name, version, catalog)?;
            return build_side(&dir, arg.to_string());
        }
        return Err(crate::cmd::Usage::new(
            format!("{arg} does not exist"),
            "name two locks, recipes, build output directories, or catalog versions as NAME@VERSION",
        )
        .into());
    }
    if p.is_dir() {
        return build_side(p, p.display().to_string());
    }
    let lock_path = match p.extension().and_then(|e| e.to_str()) {
        Some("toml") => kiln_recipe::lock_path_for(p),
        _ => p.to_path_buf(),
    };
    Ok(Side {
        shown: p.display().to_string(),
        lock: Lock::read(&lock_path)?,
        sizes_known: true,
        artifacts: None,
    })
}

fn build_side(dir: &Path, shown: String) -> Result<Side> {
    let b = kiln_watch::read_build(dir)?;
    Ok(Side {
        shown,
        lock: b.lock,
        sizes_known: b.complete,
        artifacts: Some(b.manifest.outputs),
    })
}

fn catalog_dir(name: &str, version: &str, catalog: Option<&Path>) -> Result<PathBuf> {
    let path = crate::catalog::location(catalog).ok_or_else(|| {
        Hinted::new(
            format!("{name}@{version} is a catalog version, but --catalog is none"),
            "give a catalog, or name the build directories",
        )
    })?;
    let c = kiln_catalog::Catalog::open_read_only(&path)?;
    let found = c.find(&kiln_catalog::Query {
        image: Some(name.to_string()),
        ..Default::default()
    })?;
    let hit = found
        .iter()
        .find(|f| f.version.as_deref() == Some(version))
        .ok_or_else(|| {
            let known: Vec<String> = found.iter().filter_map(|f| f.version.clone()).collect();
            Hinted::new(
                format!("the catalog has no version {version} of {name}"),
                if known.is_empty() {
                    format!("`kiln find --image {name}` lists what it has")
                } else {
                    format!("it has: {}", known.join(", "))
                },
            )
        })?;
    Ok(PathBuf::from(&hit.location))
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct PackageChange {
    target: String,
    name: String,
    architecture: String,
    from: Option<String>,
    to: Option<String>,
    source: Option<String>,
    from_source_version: Option<String>,
    to_source_version: Option<String>,
}

impl From<&Change> for PackageChange {
    fn from(c: &Change) -> Self {
        PackageChange {
            target: c.target.clone(),
            name: c.name.clone(),
            architecture: c.architecture.clone(),
            from: c.from.clone(),
            to: c.to.clone(),
            source: c
                .to_source
                .as_ref()
                .or(c.from_source.as_ref())
                .map(|s| s.0.clone()),
            from_source_version: c.from_source.as_ref().map(|s| s.1.clone()),
            to_source_version: c.to_source.as_ref().map(|s| s.1.clone()),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct SizeChange {
    target: String,
    /// Bytes (the lock's Installed-Size, KiB, times 1024); null when a
    /// build's lock no longer describes all of its packages.
    from: Option<u64>,
    to: Option<u64>,
    change: Option<i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct ArtifactChange {
    path: String,
    format: String,
    architecture: Option<String>,
    /// `changed`, `same`, `added` or `removed`.
    status: &'static str,
    from_sha256: Option<String>,
    to_sha256: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct DiffReport {
    schema_version: u32,
    from: String,
    to: String,
    added: Vec<PackageChange>,
    removed: Vec<PackageChange>,
    changed: Vec<PackageChange>,
    installed_size: Vec<SizeChange>,
    /// Only when both sides are builds.
    artifacts: Option<Vec<ArtifactChange>>,
}

fn installed(lock: &Lock) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for p in &lock.packages {
        *m.entry(p.target.clone()).or_insert(0) += p.installed_size.saturating_mul(1024);
    }
    m
}

fn artifacts(a: &[kiln_model::Artifact], b: &[kiln_model::Artifact]) -> Vec<ArtifactChange> {
    let by_path = |v: &[kiln_model::Artifact]| -> BTreeMap<String, kiln_model::Artifact> {
        v.iter().map(|x| (x.path.clone(), x.clone())).collect()
    };
    let (a, b) = (by_path(a), by_path(b));
    let mut paths: Vec<&String> = a.keys().chain(b.keys()).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .map(|p| {
            let (x, y) = (a.get(p), b.get(p));
            let any = x.or(y).expect("from one side");
            ArtifactChange {
                path: p.clone(),
                format: any.format.name().to_string(),
                architecture: any.architecture.clone(),
                status: match (x, y) {
                    (Some(x), Some(y)) if x.sha256 == y.sha256 => "same",
                    (Some(_), Some(_)) => "changed",
                    (None, _) => "added",
                    (_, None) => "removed",
                },
                from_sha256: x.map(|x| x.sha256.clone()),
                to_sha256: y.map(|y| y.sha256.clone()),
            }
        })
        .collect()
}

pub fn cmd_diff(_ui: &Ui, catalog: Option<&Path>, a: &str, b: &str, json: bool) -> Result<()> {
    let (x, y) = (side(a, catalog)?, side(b, catalog)?);
    let d = kiln_build::lock::diff(&x.lock, &y.lock);
    let (sa, sb) = (installed(&x.lock), installed(&y.lock));
    let mut targets: Vec<&String> = sa.keys().chain(sb.keys()).collect();
    targets.sort();
    targets.dedup();
    let report = DiffReport {
        schema_version: 1,
        from: x.shown.clone(),
        to: y.shown.clone(),
        added: d.added.iter().map(PackageChange::from).collect(),
        removed: d.removed.iter().map(PackageChange::from).collect(),
        changed: d.updated.iter().map(PackageChange::from).collect(),
        installed_size: targets
            .into_iter()
            .map(|t| {
                let f = x.sizes_known.then(|| sa.get(t).copied().unwrap_or(0));
                let to = y.sizes_known.then(|| sb.get(t).copied().unwrap_or(0));
                SizeChange {
                    target: t.clone(),
                    from: f,
                    to,
                    change: f.zip(to).map(|(f, to)| to as i64 - f as i64),
                }
            })
            .collect(),
        artifacts: match (&x.artifacts, &y.artifacts) {
            (Some(p), Some(q)) => Some(artifacts(p, q)),
            _ => None,
        },
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    outln!("{} -> {}", report.from, report.to);
    if d.is_empty() {
        outln!("Packages: the same packages and versions");
    } else {
        outln!(
            "Packages: {} added, {} removed, {} changed",
            report.added.len(),
            report.removed.len(),
            report.changed.len()
        );
    }
    let multi = report.installed_size.len() > 1;
    let arch = |c: &PackageChange| {
        if multi {
            format!(" (for {})", c.target)
        } else {
            String::new()
        }
    };
    for (mark, list) in [("+", &report.added), ("-", &report.removed)] {
        for c in list {
            let version = if mark == "+" { &c.to } else { &c.from };
            outln!(
                "  {mark} {} {}{}",
                c.name,
                version.as_deref().unwrap_or(""),
                arch(c)
            );
        }
    }
    for c in &report.changed {
        let source = match (&c.from_source_version, &c.to_source_version) {
            (Some(f), Some(t)) if f != t => {
                format!(" (source {} {f} -> {t})", c.source.as_deref().unwrap_or(""))
            }
            _ => String::new(),
        };
        outln!(
            "  ~ {} {} -> {}{}{}",
            c.name,
            c.from.as_deref().unwrap_or(""),
            c.to.as_deref().unwrap_or(""),
            arch(c),
            source
        );
    }
    for s in &report.installed_size {
        let size = |v: Option<u64>| v.map(human_size).unwrap_or_else(|| "unknown".into());
        let change = match s.change {
            Some(c) => format!(
                " ({}{})",
                if c < 0 { "-" } else { "+" },
                human_size(c.unsigned_abs())
            ),
            None => " (a build's lock was locked again since, so not every size is known)".into(),
        };
        outln!(
            "Installed size{}: {} -> {}{change}",
            if multi {
                format!(" ({})", s.target)
            } else {
                String::new()
            },
            size(s.from),
            size(s.to),
        );
    }
    if let Some(arts) = &report.artifacts {
        let changed: Vec<&ArtifactChange> = arts.iter().filter(|a| a.status != "same").collect();
        if changed.is_empty() {
            outln!("Artifacts: all {} identical", arts.len());
        }
        for a in changed {
            outln!("Artifact {} ({}): {}", a.path, a.format, a.status);
        }
    }
    Ok(())
}

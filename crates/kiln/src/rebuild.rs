//! `kiln watch --rebuild`: each image the pass found behind is locked
//! again with `--update` of exactly the packages that have fixes, built,
//! tested when its recipe has tests, published to its `[[publish]]`
//! targets and recorded in the catalog with why (packages, CVEs, the fix's
//! Release date) and how long the fix took to reach the published image.
//!
//! A rebuild whose test fails is not published and its build is not
//! catalogued: the failure is recorded, the image stays behind, and the
//! next pass tries again. The same recipe is built once per pass.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_catalog::{Rebuild, RebuildPackage};
use kiln_model::{Cancel, Hinted, Reporter};
use kiln_recipe::{Lock, Recipe};
use kiln_watch::{ImageReport, Status, Target, Update};

use crate::ui::Ui;

/// Exit status of a pass in which a rebuild failed (its lock, build, test
/// or publication).
pub const EXIT_REBUILD_FAILED: u8 = 4;

/// Which findings `--rebuild` acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RebuildOn {
    /// Images with security updates; only the security updates are taken.
    Security,
    /// Images with any update; every update is taken.
    Updates,
}

pub struct RebuildOptions<'a> {
    pub on: RebuildOn,
    pub sign_key: Option<&'a Path>,
    pub insecure: bool,
    pub username: Option<String>,
    pub sources: kiln_build::SourceOptions,
    /// Seconds a boot test may take.
    pub test_timeout: u64,
}

/// Refuses, before any work, what the rebuilds could not finish: a
/// download tree to publish to without a key to sign it.
pub fn check_before(targets: &[Target], o: &RebuildOptions) -> Result<()> {
    if o.sign_key.is_some() {
        return Ok(());
    }
    for t in targets {
        let Some(r) = &t.recipe else { continue };
        let tree = |to: &str| {
            matches!(
                kiln_publish::Target::parse(to),
                Ok(kiln_publish::Target::Tree(_))
            )
        };
        if r.publish.iter().any(|p| tree(&p.to)) {
            return Err(crate::cmd::Usage::new(
                format!(
                    "--rebuild: {} publishes to a download tree, and its channel document needs a signing key",
                    r.path.display()
                ),
                "give --sign-key KEY.pem (or set KILN_SIGN_KEY)",
            )
            .into());
        }
    }
    Ok(())
}

/// The updates of `reports` (one image's, every architecture) a rebuild
/// takes, or none when it should not be rebuilt.
fn wanted<'a>(reports: &[&'a ImageReport], on: RebuildOn) -> Vec<&'a Update> {
    if reports.is_empty() || reports.iter().any(|r| r.status == Status::Unknown) {
        return Vec::new();
    }
    reports
        .iter()
        .flat_map(|r| &r.updates)
        .filter(|u| on == RebuildOn::Updates || u.security)
        .collect()
}

/// Rebuilds every target the pass found behind; returns, in the targets'
/// order, each rebuilt target's location (as its reports give it) and what
/// the rebuild did.
pub fn rebuild_all(
    ui: &Ui,
    catalog: Option<&Path>,
    reporter: &dyn Reporter,
    cancel: &Cancel,
    targets: &[Target],
    reports: &[ImageReport],
    o: &RebuildOptions,
) -> Vec<(String, Rebuild)> {
    let wave = Wave {
        ui,
        catalog,
        reporter,
        cancel,
        o,
    };
    let mut done: Vec<(String, Rebuild)> = Vec::new();
    let mut recipes_built: HashSet<PathBuf> = HashSet::new();
    for t in targets {
        let location = t.location.display().to_string();
        let mine: Vec<&ImageReport> = reports.iter().filter(|r| r.location == location).collect();
        let updates = wanted(&mine, o.on);
        if updates.is_empty() {
            continue;
        }
        let Some(recipe) = &t.recipe else {
            ui.warn(&format!(
                "{} {}: not rebuilt, there is no recipe beside its lock {}",
                t.name,
                location,
                t.lock_path.display()
            ));
            continue;
        };
        let key = std::fs::canonicalize(&recipe.path).unwrap_or_else(|_| recipe.path.clone());
        if !recipes_built.insert(key) {
            ui.status(
                "Skipping",
                &format!("{}: its recipe was rebuilt in this pass already", location),
            );
            continue;
        }
        ui.status(
            "Rebuilding",
            &format!(
                "{} ({} update(s): {})",
                t.name,
                updates.len(),
                names(&updates).join(", ")
            ),
        );
        let r = rebuild_one(&wave, t, recipe, &updates);
        match &r.error {
            None => ui.status(
                "Rebuilt",
                &format!(
                    "{} -> {} ({}{})",
                    t.name,
                    r.output,
                    r.outcome,
                    r.fix_to_publish()
                        .map(|s| format!(", {} after the fix's Release", duration(s)))
                        .unwrap_or_default()
                ),
            ),
            Some(e) => ui.warn(&format!(
                "{}: rebuild {} ({e}); it stays behind and the next pass tries again",
                t.name, r.outcome
            )),
        }
        if let Some(path) = crate::catalog::location(catalog) {
            let rec = kiln_catalog::Catalog::open(&path).and_then(|mut c| c.record_rebuild(&r));
            if let Err(e) = rec {
                ui.warn(&format!("the rebuild is not in the catalog: {e}"));
            }
        }
        done.push((location, r));
    }
    done
}

fn names(updates: &[&Update]) -> Vec<String> {
    let set: BTreeSet<&str> = updates.iter().map(|u| u.package.as_str()).collect();
    set.into_iter().map(str::to_string).collect()
}

/// What every rebuild of a pass works with.
#[derive(Clone, Copy)]
struct Wave<'a> {
    ui: &'a Ui,
    catalog: Option<&'a Path>,
    reporter: &'a dyn Reporter,
    cancel: &'a Cancel,
    o: &'a RebuildOptions<'a>,
}

fn rebuild_one(w: &Wave, t: &Target, recipe: &Recipe, updates: &[&Update]) -> Rebuild {
    let started = kiln_archive::now();
    let cves: BTreeSet<String> = updates
        .iter()
        .flat_map(|u| u.cves.iter().cloned())
        .collect();
    let mut r = Rebuild {
        image: t.name.clone(),
        from_manifest: t.manifest_sha256.clone(),
        to_manifest: None,
        outcome: "lock-failed".into(),
        packages: updates
            .iter()
            .map(|u| RebuildPackage {
                package: u.package.clone(),
                architecture: u.architecture.clone(),
                from: Some(u.installed.clone()),
                to: Some(u.candidate.clone()),
                suite: Some(u.suite.clone()),
                security: u.security,
            })
            .collect(),
        cves: cves.into_iter().collect(),
        release_date: updates
            .iter()
            .filter_map(|u| u.release_date.as_deref())
            .filter_map(kiln_archive::date::parse_rfc2822)
            .max(),
        output: String::new(),
        error: None,
        started_at: started,
        finished_at: started,
        published_at: None,
    };
    let step = steps(w, t, recipe, updates, &mut r);
    if let Err(e) = step {
        r.error = Some(format!("{e:#}"));
    }
    r.finished_at = kiln_archive::now();
    r
}

/// The rebuild's steps; each sets `r.outcome` to what a failure from
/// there on means, and the last to what was achieved.
fn steps(
    w: &Wave,
    t: &Target,
    recipe: &Recipe,
    updates: &[&Update],
    r: &mut Rebuild,
) -> Result<()> {
    let Wave {
        ui,
        catalog,
        reporter,
        cancel,
        o,
    } = *w;
    // A build made from another recipe than the one beside its lock now
    // would take the recipe's changes along: not a targeted rebuild.
    if t.manifest_sha256.is_some() {
        let m = kiln_model::Manifest::read_dir(&t.location)?;
        if m.lock.recipe_sha256 != recipe.resolution_hash() {
            return Err(Hinted::new(
                format!(
                    "{} was changed since this build: a rebuild would take its changes too",
                    recipe.path.display()
                ),
                format!("build it by hand: kiln build {}", recipe.path.display()),
            )
            .into());
        }
    }
    let lock_path = recipe.lock_path();
    let old = Lock::read(&lock_path)?;
    let update = names(updates);
    let lock =
        kiln_build::lock::resolve_recipe_updating(recipe, &o.sources, reporter, Some(&update))?;
    // The watch reads SUITE-updates and -security even when the recipe
    // does not: a lock from the recipe's own sources may not reach a fix.
    let reached = |u: &&&Update| {
        lock.packages
            .iter()
            .any(|p| p.name == u.package && p.target == u.architecture && p.version == u.candidate)
    };
    if !updates.iter().any(|u| reached(&u)) {
        let suites: BTreeSet<&str> = updates.iter().map(|u| u.suite.as_str()).collect();
        return Err(Hinted::new(
            format!(
                "the fixes are in {}, which {} does not take packages from: locking it again cannot reach them",
                suites.into_iter().collect::<Vec<_>>().join(", "),
                recipe.path.display()
            ),
            "add those suites to its [[source]] suites, or use the default sources (default-sources = true)",
        )
        .into());
    }
    if lock != old {
        lock.write(&lock_path)?;
    }
    // Every change of the new lock, and the suite of each fix the watch saw.
    let seen: BTreeMap<(&str, &str), &Update> = updates
        .iter()
        .map(|u| ((u.package.as_str(), u.architecture.as_str()), *u))
        .collect();
    let d = kiln_build::lock::diff(&t.lock, &lock);
    r.packages = d
        .added
        .iter()
        .chain(&d.updated)
        .chain(&d.removed)
        .map(|c| {
            let u = seen.get(&(c.name.as_str(), c.target.as_str()));
            RebuildPackage {
                package: c.name.clone(),
                architecture: c.target.clone(),
                from: c.from.clone(),
                to: c.to.clone(),
                suite: u.map(|u| u.suite.clone()),
                security: u.is_some_and(|u| u.security),
            }
        })
        .collect();
    r.outcome = "build-failed".into();
    let epoch = kiln_build::epoch_for(&lock, None)?;
    let out = rebuild_dir(recipe, epoch);
    r.output = out.display().to_string();
    let m = kiln_build::build(
        &kiln_build::BuildRequest {
            recipe: recipe.path.clone(),
            output: Some(out.clone()),
            locked: true,
            check_reproducible: false,
            source_date_epoch: None,
            sign_key: o.sign_key.map(Path::to_path_buf),
            image_version: update_version(recipe, epoch),
            sources: o.sources.clone(),
        },
        reporter,
        cancel,
    )?;
    let bytes = std::fs::read(out.join(kiln_model::manifest::MANIFEST_FILE))
        .context("reading the rebuild's manifest.json")?;
    r.to_manifest = Some(kiln_archive::sha256_hex(&bytes));
    let mut tested = None;
    if !m.tests.is_empty() {
        r.outcome = "test-failed".into();
        let ran = crate::test::run(
            ui,
            reporter,
            cancel,
            &crate::test::TestArgs {
                target: out.clone(),
                timeout: o.test_timeout,
                skip_static: false,
                skip_boot: false,
                allow_users: Vec::new(),
                memory: 1536,
                cpus: 2,
                json: false,
            },
        )?;
        ran.result()?;
        tested = Some(ran);
    }
    // Only a tested build joins the catalog.
    crate::catalog::record_after_build(ui, catalog, &out);
    if let Some(ran) = &tested {
        ran.record(ui, catalog);
    }
    if recipe.publish.is_empty() {
        r.outcome = "built".into();
        return Ok(());
    }
    r.outcome = "publish-failed".into();
    crate::publish::cmd_publish(
        ui,
        catalog,
        reporter,
        &crate::publish::PublishArgs {
            outputs: vec![out.clone()],
            targets: Vec::new(),
            channel: "stable".into(),
            sign_key: o.sign_key.map(Path::to_path_buf),
            valid_days: 30,
            base_url: None,
            keep: 3,
            insecure: o.insecure,
            username: o.username.clone(),
            // A rebuild is a new disk: its AMI name has its own epoch.
            replace: false,
            cloud_wait: 3600,
            json: false,
        },
    )?;
    // An [update] image's new version is released in its channels, with
    // the recipe's wave (every machine at once without one).
    if let Some(u) = &recipe.update {
        let trees = recipe.publish.iter().any(|p| {
            matches!(
                kiln_publish::Target::parse(&p.to),
                Ok(kiln_publish::Target::Tree(_))
            )
        });
        if trees {
            let wave = u.wave.as_deref().unwrap_or("100%");
            crate::release::cmd_release(
                ui,
                catalog,
                &crate::release::ReleaseArgs {
                    output: out.clone(),
                    targets: Vec::new(),
                    channel: None,
                    wave: Some(kiln_model::rollout::parse_wave(wave).map_err(anyhow::Error::msg)?),
                    pause: false,
                    resume: false,
                    barrier: false,
                    no_barrier: false,
                    sign_key: o.sign_key.map(Path::to_path_buf),
                    valid_days: 30,
                    json: false,
                },
            )?;
        }
    }
    r.outcome = "published".into();
    r.published_at = Some(kiln_archive::now());
    Ok(())
}

/// Where a rebuild goes: beside the recipe's output directory, named by
/// the image and its build date (`out/web-20251201T120000Z`), so the
/// version it replaces stays where the catalog knows it, and the same lock
/// is built into the same place.
/// The version of a rebuilt `[update]` image: the recipe's version with the
/// new lock's time, `13.20261207101500`, newer (as systemd orders versions)
/// than the recipe's own and than every earlier rebuild, so the machines
/// take it. Other images keep the recipe's version.
fn update_version(recipe: &Recipe, epoch: i64) -> Option<String> {
    recipe.update.as_ref()?;
    let stamp: String = kiln_publish::rfc3339(epoch)
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    Some(match &recipe.image.version {
        Some(v) => format!("{v}.{stamp}"),
        None => stamp,
    })
}

fn rebuild_dir(recipe: &Recipe, epoch: i64) -> PathBuf {
    let dir = recipe.output_dir();
    let stamp: String = kiln_publish::rfc3339(epoch)
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let name = format!("{}-{stamp}", recipe.image.name);
    match dir.parent() {
        Some(p) => p.join(name),
        None => PathBuf::from(name),
    }
}

/// `90s`, `42m`, `5h 3m`, `2d 4h`.
pub fn duration(s: i64) -> String {
    let s = s.max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

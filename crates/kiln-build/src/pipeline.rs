//! The build as a function: request in, manifest out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result};
use kiln_model::event::Stage;
use kiln_model::fsutil::write_atomic;
use kiln_model::{
    relative_path, Artifact, Cancel, Event, Hinted, LockRef, Manifest, PackageRecord, Reporter,
    TestSpec, INCOMPLETE_MARKER, MANIFEST_FILE, SCHEMA_VERSION,
};
use kiln_recipe::{Lock, LockedPackage, Recipe};
use serde::{Deserialize, Serialize};

use crate::assemble::{assemble, assemble_distroless, outgrew_ram};
use crate::fetch::human_size;
use crate::output::{outputs_for, BuiltRoot, Context};
use crate::records::{facts_from_root, RootFacts};
use crate::sources::SourceOptions;

/// Everything a build needs to know, serialisable so that a watcher or a CI
/// system can hand builds around.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BuildRequest {
    /// The recipe file.
    pub recipe: PathBuf,
    /// Output directory (default: [output] directory, else out/<name> beside the recipe).
    #[serde(default)]
    pub output: Option<PathBuf>,
    /// The lock must exist and match the recipe.
    #[serde(default)]
    pub locked: bool,
    /// Build twice and fail if the artifacts differ.
    #[serde(default)]
    pub check_reproducible: bool,
    /// Default: $SOURCE_DATE_EPOCH, else the lock's newest Release date.
    #[serde(default)]
    pub source_date_epoch: Option<i64>,
    /// Ed25519 private key (PKCS#8 PEM) to sign provenance.json with.
    #[serde(default)]
    pub sign_key: Option<PathBuf>,
    /// The image version (default: [image] version).
    #[serde(default)]
    pub image_version: Option<String>,
    #[serde(default)]
    pub sources: SourceOptions,
}

/// SOURCE_DATE_EPOCH: the flag, else the environment, else the newest
/// Release date of the lock (so the same lock always gives the same epoch).
pub fn epoch_for(lock: &Lock, flag: Option<i64>) -> Result<i64> {
    if let Some(e) = flag {
        return Ok(e);
    }
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        return v.trim().parse().map_err(|_| {
            Hinted::new(
                format!("SOURCE_DATE_EPOCH={v} is not a number of seconds"),
                "unset it or give seconds since 1970, e.g. SOURCE_DATE_EPOCH=1700000000",
            )
            .into()
        });
    }
    lock.releases
        .iter()
        .filter_map(|r| {
            r.date
                .as_deref()
                .and_then(kiln_archive::date::parse_rfc2822)
        })
        .max()
        .ok_or_else(|| {
            Hinted::new(
                "the lock has no Release dates to derive SOURCE_DATE_EPOCH from",
                "pass --source-date-epoch SECONDS",
            )
            .into()
        })
}

/// Checks that `dir` can take the outputs before any work is done.
fn prepare_output(dir: &Path) -> Result<()> {
    let fail = |e: std::io::Error| {
        Hinted::new(
            format!(
                "cannot write to the output directory {}: {e}",
                dir.display()
            ),
            "choose another directory with --output DIR",
        )
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(format!(".kiln-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(fail)?;
    std::fs::remove_file(&probe).map_err(fail)?;
    Ok(())
}

/// The bytes of the regular files at or under `path` (links not followed).
fn bytes_in(path: &Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| bytes_in(&e.path()))
            .sum(),
        Ok(m) if m.is_file() => m.len(),
        _ => 0,
    }
}

/// Whether `name`, in an output directory, is something a Kiln build
/// writes there: the previous build's outputs are these, and only these are
/// removed when a new build replaces it (other files are left alone).
pub fn is_build_output(name: &str) -> bool {
    let ext = |stem: &str, exts: &[&str]| {
        exts.iter().any(|e| {
            name.strip_suffix(e)
                .is_some_and(|s| s == stem || s.starts_with(&format!("{stem}-")))
        })
    };
    matches!(
        name,
        "manifest.json" | "provenance.json" | "oci" | "update" | "rebuild" | INCOMPLETE_MARKER
    ) || (name.starts_with("sbom.")
        && (name.ends_with(".spdx.json") || name.ends_with(".cdx.json")))
        || ext("rootfs", &[".tar", ".rebuild.tar"])
        || ext("disk", &[".raw", ".qcow2", ".test.xml", ".console.log"])
        || name == "upgrade.console.log"
        || (name.starts_with("disk") && name.contains(".console.") && name.ends_with(".log"))
}

/// Where a build writes before it replaces the previous one: inside the
/// output directory (same file system, so the outputs are renamed in), named
/// so that [`crate::reclaim`] removes it when its process died.
fn staging_dir(out: &Path) -> PathBuf {
    out.join(format!(".kiln-staging.partial-{}", std::process::id()))
}

/// Removes the staging directory unless the build got to installing it.
struct Staging<'a> {
    path: PathBuf,
    cancel: &'a Cancel,
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        if let Some(parent) = self.path.parent() {
            if let (Ok(dir), Some(name)) = (
                kiln_rootfs::inroot::Root::open(parent),
                self.path.file_name(),
            ) {
                let _ = dir.remove_tree(name);
            }
        }
        self.cancel.untrack_dir(&self.path);
    }
}

/// Replaces the previous build in `out` with the finished one in
/// `staging`: every output of a Kiln build (see [`is_build_output`]) that
/// this build did not write is removed, the new ones are renamed in,
/// `manifest.json` last, under the `.kiln-incomplete` marker; files that no
/// Kiln build writes are left where they are.
fn install_build(staging: &Path, out: &Path) -> Result<()> {
    let marker = out.join(INCOMPLETE_MARKER);
    std::fs::write(&marker, b"a kiln build is writing here\n")?;
    let dir = kiln_rootfs::inroot::Root::open(out)?;
    let names = |d: &Path| -> Result<Vec<String>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(d)? {
            v.push(e?.file_name().to_string_lossy().into_owned());
        }
        v.sort();
        Ok(v)
    };
    let new = names(staging)?;
    for name in names(out)? {
        if is_build_output(&name) && name != INCOMPLETE_MARKER && !new.contains(&name) {
            dir.remove_tree(&name).with_context(|| {
                format!(
                    "removing the previous build's {}",
                    out.join(&name).display()
                )
            })?;
        }
    }
    for name in new
        .iter()
        .filter(|n| n.as_str() != MANIFEST_FILE && n.as_str() != INCOMPLETE_MARKER)
    {
        let (from, to) = (staging.join(name), out.join(name));
        if to.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            let old = out.join(format!(".{name}.old.partial-{}", std::process::id()));
            std::fs::rename(&to, &old)?;
            std::fs::rename(&from, &to)?;
            dir.remove_tree(old.file_name().expect("a name"))?;
        } else {
            std::fs::rename(&from, &to)
                .with_context(|| format!("moving {} into {}", name, out.display()))?;
        }
    }
    std::fs::rename(staging.join(MANIFEST_FILE), out.join(MANIFEST_FILE))?;
    std::fs::remove_file(&marker)?;
    Ok(())
}

/// What identifies an image for its derived UUIDs: name, architecture,
/// epoch and every package version (same lock and epoch, same disk).
fn image_identity(recipe: &Recipe, arch: &str, pkgs: &[&LockedPackage], epoch: i64) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(format!("{}\0{arch}\0{epoch}\0", recipe.image.name));
    for p in pkgs {
        h.update(format!("{}={}:{}\n", p.name, p.version, p.sha256));
    }
    hex::encode(h.finalize())
}

type PerArch<'a> = [(String, Vec<&'a LockedPackage>, Vec<PathBuf>)];

struct Produced {
    artifacts: Vec<Artifact>,
    facts: RootFacts,
    disk: BTreeMap<String, kiln_model::DiskFacts>,
}

/// Assembles each architecture's root and hands it to every output.
#[allow(clippy::too_many_arguments)]
fn produce(
    recipe: &Recipe,
    lock: &Lock,
    per_arch: &PerArch,
    epoch: i64,
    out_dir: &Path,
    reporter: &dyn Reporter,
    cancel: &Cancel,
    essential_cache: Option<&Path>,
    update_key: Option<&kiln_attest::SigningKey>,
) -> Result<Produced> {
    let cx = Context {
        recipe,
        lock,
        epoch,
        out_dir,
        multi_arch: per_arch.len() > 1,
        reporter,
        cancel,
        update_key,
    };
    let mut outputs = outputs_for(recipe)?;
    let mut done = Produced {
        artifacts: Vec::new(),
        facts: RootFacts::default(),
        disk: BTreeMap::new(),
    };
    let result = (|| -> Result<()> {
        for (arch, pkgs, debs) in per_arch {
            cancel.check()?;
            let assemble_in = |ram: bool| {
                if recipe.container.distroless {
                    assemble_distroless(recipe, arch, pkgs, debs, reporter, cancel, ram)
                } else {
                    assemble(
                        recipe,
                        lock,
                        pkgs,
                        debs,
                        epoch,
                        reporter,
                        cancel,
                        ram,
                        essential_cache,
                    )
                }
            };
            let area = match assemble_in(true) {
                Ok(area) => area,
                // Packages that unpack more than they declare do not fill
                // RAM: the build goes to disk (each package is still held
                // to its own limit there).
                Err(e) => {
                    let Some((room, used)) = outgrew_ram(&e) else {
                        return Err(e);
                    };
                    reporter.warn(&format!(
                        "the {arch} packages unpack more than their Installed-Size ({} in all) \
                         made room for in RAM ({} of /dev/shm, {} needed so far); \
                         assembling again on disk in {}",
                        human_size(crate::assemble::declared_size(pkgs)),
                        human_size(room),
                        human_size(used),
                        kiln_model::fsutil::disk_scratch().base.display()
                    ));
                    assemble_in(false)?
                }
            };
            let root_path = area.root();
            let root = BuiltRoot {
                arch,
                path: &root_path,
                scratch: area.path(),
                pkgs,
                debs,
                identity: image_identity(recipe, arch, pkgs, epoch),
                owners: area.owners.as_ref(),
            };
            for o in outputs.iter_mut() {
                cancel.check()?;
                let p = o.add(&cx, &root)?;
                done.artifacts.extend(p.artifacts);
                if let Some(d) = p.disk {
                    done.disk.insert(arch.clone(), d);
                }
            }
            facts_from_root(&root_path, arch, &recipe.image.suite, pkgs, &mut done.facts);
        }
        for o in outputs.iter_mut() {
            done.artifacts.extend(o.finish(&cx)?);
        }
        Ok(())
    })();
    if let Err(e) = result {
        for o in outputs.iter_mut() {
            o.abandon(&cx);
        }
        return Err(e);
    }
    Ok(done)
}

/// An `[update]` recipe needs a version (`[image] version` or
/// `--image-version`) that can be one, and the signing key, which the
/// image carries as its OpenPGP keyring.
fn check_update(recipe: &Recipe, key: Option<&kiln_attest::SigningKey>) -> Result<()> {
    if recipe.update.is_none() {
        return Ok(());
    }
    match recipe.image.version.as_deref() {
        None => {
            return Err(Hinted::new(
                "an [update] image needs a version: the machine updates to newer ones",
                "set [image] version, or give kiln build --image-version VERSION (e.g. 20261207.1)",
            )
            .into())
        }
        Some(v) if !kiln_recipe::valid_image_version(v) => {
            return Err(Hinted::new(
                format!("image version `{v}` cannot be an update version"),
                "use letters, digits and '.~^+-' (no '_'), at most 24 characters, e.g. 20261207.1",
            )
            .into())
        }
        Some(_) => {}
    }
    if key.is_none() {
        return Err(Hinted::new(
            "an [update] image carries the key its updates are signed with, but no key was given",
            "give --sign-key KEY.pem (or KILN_SIGN_KEY); kiln publish signs the channel with the same key",
        )
        .into());
    }
    Ok(())
}

/// Refuses, with the fix, a recipe this machine cannot build: a full image
/// for another architecture that no binfmt_misc emulator runs, or a full
/// image without root (or a user namespace of Kiln's own).
fn can_build_here(recipe: &Recipe) -> Result<()> {
    if recipe.container.distroless {
        return Ok(());
    }
    let host = kiln_recipe::host_architecture();
    // A foreign architecture's maintainer scripts run under an emulator the
    // kernel starts for its executables (binfmt_misc).
    for a in &recipe.image.architectures {
        if let Err(why) = kiln_rootfs::binfmt::check(host, a) {
            return Err(Hinted::new(
                format!("a full {a} image needs its programs (dpkg, maintainer scripts) to run on this {host} host: {why}"),
                format!("set up the emulator, build it on {a}, or build distroless ([container] distroless = true: no scripts run)"),
            )
            .into());
        }
    }
    if !kiln_rootfs::sandbox::is_root() {
        return Err(
            kiln_rootfs::RootfsError::Sandbox(kiln_rootfs::sandbox::SandboxError::NotRoot).into(),
        );
    }
    Ok(())
}

/// Runs one build: lock (if needed), fetch, assemble, outputs, records.
/// Returns the manifest it wrote to `OUT/manifest.json`. A cancelled build
/// fails with [`Cancelled`](kiln_model::Cancelled), whatever step it was in.
pub fn build(req: &BuildRequest, reporter: &dyn Reporter, cancel: &Cancel) -> Result<Manifest> {
    let result = build_inner(req, reporter, cancel);
    match result {
        Err(_) if cancel.is_cancelled() => Err(kiln_model::Cancelled.into()),
        r => r,
    }
}

fn build_inner(req: &BuildRequest, reporter: &dyn Reporter, cancel: &Cancel) -> Result<Manifest> {
    let start = Instant::now();
    // Everything that can refuse the build does so before any work: no
    // download, no lock written, no output directory made.
    let mut planned = Recipe::load(&req.recipe)?;
    if let Some(v) = &req.image_version {
        planned.image.version = Some(v.clone());
    }
    can_build_here(&planned)?;
    if let Err(v) = kiln_rootfs::extract::limit_override() {
        return Err(Hinted::new(
            format!("{}={v} is not a size", kiln_rootfs::extract::LIMIT_ENV),
            "give bytes or a size such as 512M or 2G, or unset it",
        )
        .into());
    }
    let key = crate::records::load_signing_key(req.sign_key.as_deref())?;
    check_update(&planned, key.as_ref())?;
    let update_key = key.as_ref().filter(|_| planned.update.is_some());
    // The output directory must be usable before any work is done.
    let out_dir = match &req.output {
        Some(o) => o.clone(),
        None => planned.output_dir(),
    };
    prepare_output(&out_dir)?;
    // What builds that died left (build areas in RAM, downloads, outputs).
    crate::reclaim::at_build_start(req.sources.cache().root(), &out_dir, reporter);
    let (recipe, lock) = crate::lock::ensure_lock_for(planned, req.locked, &req.sources, reporter)?;
    let epoch = epoch_for(&lock, req.source_date_epoch)?;
    let started = kiln_archive::now();
    let mut per_arch = Vec::new();
    for arch in &recipe.image.architectures {
        let pkgs: Vec<&LockedPackage> =
            lock.packages.iter().filter(|p| &p.target == arch).collect();
        let debs = crate::fetch::fetch_packages(&lock, &pkgs, &req.sources, reporter, cancel)?;
        per_arch.push((arch.clone(), pkgs, debs));
    }
    // The build is written aside and replaces the previous one only when
    // complete: a failed build leaves the previous one as it was.
    let staging = Staging {
        path: staging_dir(&out_dir),
        cancel,
    };
    let _ = std::fs::remove_dir_all(&staging.path);
    std::fs::create_dir(&staging.path)
        .with_context(|| format!("creating {}", staging.path.display()))?;
    cancel.track_dir(&staging.path);
    let stage_dir = staging.path.clone();
    let marker = stage_dir.join(INCOMPLETE_MARKER);
    std::fs::write(&marker, b"a kiln build is writing here\n")?;
    // Builds that share an Essential set share its installed tree
    // (KILN_ESSENTIAL_CACHE=off: install it afresh every time). Not for
    // disks: a filesystem image lays files out in the order they were
    // created in the root, and a copied tree creates them in another, so
    // the disk would differ from a clean build's (the tarball and OCI
    // writers sort, and do not).
    let disk = recipe
        .output
        .formats
        .iter()
        .any(|f| kiln_model::Format::parse(f).is_some_and(|f| f.is_disk()));
    let essential_cache = (std::env::var("KILN_ESSENTIAL_CACHE").as_deref() != Ok("off") && !disk)
        .then(|| req.sources.cache().root().join("essential"));
    let produced = produce(
        &recipe,
        &lock,
        &per_arch,
        epoch,
        &stage_dir,
        reporter,
        cancel,
        essential_cache.as_deref(),
        update_key,
    )?;
    let all_pkgs: Vec<&LockedPackage> = per_arch.iter().flat_map(|a| a.1.iter().copied()).collect();
    let has_disk = !produced.disk.is_empty();
    let manifest = Manifest {
        schema_version: SCHEMA_VERSION,
        image: recipe.image.name.clone(),
        version: recipe.image.version.clone(),
        suite: recipe.image.suite.clone(),
        architectures: recipe.image.architectures.clone(),
        distroless: recipe.container.distroless,
        source_date_epoch: epoch,
        lock: LockRef {
            path: relative_path(&recipe.lock_path(), &out_dir)
                .display()
                .to_string(),
            recipe_sha256: lock.recipe.clone(),
        },
        packages: all_pkgs
            .iter()
            .map(|p| PackageRecord {
                name: p.name.clone(),
                version: p.version.clone(),
                architecture: p.architecture.clone(),
                target: p.target.clone(),
                source: p.source.clone(),
                source_version: p.source_version.clone(),
                sha256: p.sha256.clone(),
            })
            .collect(),
        outputs: produced.artifacts.clone(),
        disk: produced.disk,
        // `kiln test` runs them in a booted disk, or in the sandbox on a
        // container build's image.
        tests: recipe
            .tests
            .iter()
            .map(|t| TestSpec {
                name: t.name.clone(),
                command: t.command.clone(),
                expect: t.expect.clone(),
                health: t.health,
            })
            .collect(),
        users: if has_disk {
            recipe
                .customize
                .users
                .iter()
                .map(|u| u.name.clone())
                .collect()
        } else {
            Vec::new()
        },
        generator: format!("kiln {}", env!("CARGO_PKG_VERSION")),
    };
    write_atomic(
        &stage_dir.join(MANIFEST_FILE),
        manifest.to_json().as_bytes(),
    )?;
    crate::records::write_records(
        reporter,
        &recipe,
        &lock,
        &all_pkgs,
        &produced.facts,
        &produced.artifacts,
        epoch,
        started,
        key.as_ref(),
        &stage_dir,
    )?;
    std::fs::remove_file(&marker)?;
    cancel.check()?;
    install_build(&stage_dir, &out_dir)?;
    drop(staging);
    for a in &produced.artifacts {
        let path = out_dir.join(&a.path);
        reporter.report(Event::Artifact {
            path: path.display().to_string(),
            format: a.format.to_string(),
            size: a.size,
            disk_size: bytes_in(&path),
            sha256: a.sha256.clone(),
        });
    }
    reporter.report(Event::Finished {
        packages: all_pkgs.len(),
        seconds: start.elapsed().as_secs_f64(),
    });

    if req.check_reproducible {
        check_reproducible(
            &recipe, &lock, &per_arch, epoch, &out_dir, &manifest, reporter, cancel, update_key,
        )?;
    }
    Ok(manifest)
}

/// Builds everything again into `OUT/rebuild` and compares every artifact.
#[allow(clippy::too_many_arguments)]
fn check_reproducible(
    recipe: &Recipe,
    lock: &Lock,
    per_arch: &PerArch,
    epoch: i64,
    out_dir: &Path,
    manifest: &Manifest,
    reporter: &dyn Reporter,
    cancel: &Cancel,
    update_key: Option<&kiln_attest::SigningKey>,
) -> Result<()> {
    reporter.step(Stage::Reproduce, "to check reproducibility");
    let again_dir = out_dir.join("rebuild");
    let _ = std::fs::remove_dir_all(&again_dir);
    std::fs::create_dir_all(&again_dir)?;
    // From scratch: a cached Essential tree would hide what differs there.
    let again = produce(
        recipe, lock, per_arch, epoch, &again_dir, reporter, cancel, None, update_key,
    )?;
    let artifacts = &manifest.outputs;
    let differ: Vec<String> = artifacts
        .iter()
        .zip(&again.artifacts)
        .filter(|(a, b)| a.sha256 != b.sha256)
        .map(|(a, _)| a.path.clone())
        .collect();
    if !differ.is_empty() {
        let first = &differ[0];
        return Err(Hinted::new(
            format!(
                "not reproducible: {} differ between two builds (the second is in {})",
                differ.join(", "),
                again_dir.display()
            ),
            format!(
                "see what differs with: diffoscope {} {}",
                out_dir.join(first).display(),
                again_dir.join(first).display()
            ),
        )
        .into());
    }
    std::fs::remove_dir_all(&again_dir)?;
    reporter.report(Event::Step {
        stage: Stage::Reproduced,
        message: format!(
            "two builds gave identical {}",
            artifacts
                .iter()
                .map(|a| format!("{} ({})", a.path, &a.sha256[..16]))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    });
    Ok(())
}

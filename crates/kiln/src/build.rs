//! `kiln build`: lock → fetched `.deb`s → root filesystem → artifacts.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use kiln_recipe::{FileContent, Lock, LockedPackage, Reason, Recipe};
use kiln_rootfs::customize::{Customization, FileSpec, GroupSpec, UserSpec};
use kiln_rootfs::PackageFile;
use serde_json::json;

use crate::lock::Hinted;
use crate::ui::{human_size, Ui};
use crate::SourceArgs;

/// Set when the user interrupts: the main thread then leaves the exit to the
/// interrupt handler, which finishes cleaning up first.
pub static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Temporary build areas to remove if the user interrupts the build.
pub static CLEANUP: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes every registered build area (from the Ctrl-C handler).
pub fn cleanup_all() {
    if let Ok(dirs) = CLEANUP.lock() {
        for d in dirs.iter() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

pub struct BuildArgs {
    pub output: Option<PathBuf>,
    pub locked: bool,
    pub check_reproducible: bool,
    pub source_date_epoch: Option<i64>,
    pub sign_key: Option<PathBuf>,
    pub sources: SourceArgs,
}

/// SOURCE_DATE_EPOCH: the flag, else the environment, else the newest
/// Release date of the lock (so the same lock always gives the same epoch).
pub fn epoch_for(lock: &Lock, flag: Option<i64>) -> Result<i64> {
    if let Some(e) = flag {
        return Ok(e);
    }
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        return v.trim().parse().map_err(|_| {
            Hinted {
                message: format!("SOURCE_DATE_EPOCH={v} is not a number of seconds"),
                hint: "unset it or give seconds since 1970, e.g. SOURCE_DATE_EPOCH=1700000000"
                    .into(),
            }
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
            Hinted {
                message: "the lock has no Release dates to derive SOURCE_DATE_EPOCH from".into(),
                hint: "pass --source-date-epoch SECONDS".into(),
            }
            .into()
        })
}

/// The Essential packages and everything they depend on, from the lock's
/// `required-by` graph: what must be unpacked before dpkg can run.
pub fn essential_closure(pkgs: &[&LockedPackage]) -> HashSet<String> {
    let mut deps: HashMap<&str, Vec<&str>> = HashMap::new();
    for p in pkgs {
        for r in &p.required_by {
            deps.entry(r.as_str()).or_default().push(p.name.as_str());
        }
    }
    let mut out: HashSet<String> = HashSet::new();
    let mut q: VecDeque<&str> = pkgs
        .iter()
        .filter(|p| p.reason == Reason::Essential)
        .map(|p| p.name.as_str())
        .collect();
    while let Some(n) = q.pop_front() {
        if out.insert(n.to_string()) {
            for d in deps.get(n).into_iter().flatten() {
                q.push_back(d);
            }
        }
    }
    out
}

fn customization(recipe: &Recipe) -> Result<Customization> {
    let c = &recipe.customize;
    let mut files = Vec::new();
    for f in &c.files {
        let contents = match &f.content {
            FileContent::Inline(s) => s.clone().into_bytes(),
            FileContent::Source(p) => std::fs::read(p).map_err(|e| Hinted {
                message: format!(
                    "[[customize.file]] {}: cannot read {}: {e}",
                    f.path,
                    p.display()
                ),
                hint: "`source` is relative to the recipe file that names it".into(),
            })?,
        };
        files.push(FileSpec {
            path: f.path.clone(),
            contents,
            mode: f.mode,
            uid: f.uid,
            gid: f.gid,
        });
    }
    for o in &c.overlays {
        if !o.is_dir() {
            return Err(Hinted {
                message: format!("overlay {} is not a directory", o.display()),
                hint: "`overlays` are directories relative to the recipe file".into(),
            }
            .into());
        }
    }
    Ok(Customization {
        overlays: c.overlays.clone(),
        files,
        groups: c
            .groups
            .iter()
            .map(|g| GroupSpec {
                name: g.name.clone(),
                gid: g.gid,
                system: g.system,
            })
            .collect(),
        users: c
            .users
            .iter()
            .map(|u| UserSpec {
                name: u.name.clone(),
                uid: u.uid,
                groups: u.groups.clone(),
                shell: u.shell.clone(),
                home: u.home.clone(),
                system: u.system,
            })
            .collect(),
        hostname: c.hostname.clone(),
        timezone: c.timezone.clone(),
        locale: c.locale.clone(),
        enable: c.enable.clone(),
        disable: c.disable.clone(),
        commands: c.commands.clone(),
    })
}

/// apt sources for the image itself, from the lock's releases, so that
/// `apt-get update && apt-get install` works inside it.
fn apt_sources(lock: &Lock, root: &Path) -> String {
    let mut by_uri: Vec<(String, Vec<String>)> = Vec::new();
    for r in &lock.releases {
        match by_uri.iter_mut().find(|(u, _)| *u == r.uri) {
            Some((_, s)) => s.push(r.suite.clone()),
            None => by_uri.push((r.uri.clone(), vec![r.suite.clone()])),
        }
    }
    let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
    let mut out = String::new();
    for (uri, mut suites) in by_uri {
        suites.sort_by_key(|s| (s.contains('-'), s.clone()));
        out.push_str(&format!(
            "Types: deb\nURIs: {uri}\nSuites: {}\nComponents: main\n",
            suites.join(" ")
        ));
        if root.join(keyring.trim_start_matches('/')).exists() {
            out.push_str(&format!("Signed-By: {keyring}\n"));
        }
        out.push('\n');
    }
    out
}

/// The fetched `.deb`s of `pkgs`, in lock order, for the assemblers.
fn package_files(
    pkgs: &[&LockedPackage],
    debs: &[PathBuf],
    essential_phase: impl Fn(&str) -> bool,
) -> Vec<PackageFile> {
    pkgs.iter()
        .zip(debs)
        .map(|(p, d)| PackageFile {
            name: p.name.clone(),
            version: p.version.clone(),
            arch: p.architecture.clone(),
            essential_phase: essential_phase(&p.name),
            deb: d.clone(),
        })
        .collect()
}

/// What a distroless root of `arch` leaves out.
fn distroless_trim(recipe: &Recipe, arch: &str) -> kiln_rootfs::distroless::Trim {
    kiln_rootfs::distroless::Trim {
        keep_locales: recipe.container.keep_locales.clone(),
        host_arch: arch == kiln_recipe::host_architecture(),
    }
}

/// A fresh temporary build area (removed on drop and on Ctrl-C) with an
/// empty `root` directory in it.
fn new_build_area(pkgs: &[&LockedPackage]) -> Result<(tempfile::TempDir, PathBuf)> {
    let estimate: u64 = pkgs.iter().map(|p| p.installed_size * 1024).sum();
    let base = scratch_base(estimate);
    let tmp = tempfile::Builder::new()
        .prefix("kiln-build-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a build area in {}", base.display()))?;
    CLEANUP.lock().unwrap().push(tmp.path().to_path_buf());
    let root = tmp.path().join("root");
    std::fs::create_dir(&root)?;
    Ok((tmp, root))
}

/// Builds the root filesystem in a fresh temporary area.
fn assemble(
    ui: &Ui,
    recipe: &Recipe,
    lock: &Lock,
    pkgs: &[&LockedPackage],
    debs: &[PathBuf],
    epoch: i64,
) -> Result<tempfile::TempDir> {
    let (tmp, root) = new_build_area(pkgs)?;
    let log = tmp.path().join("build.log");
    let essential = essential_closure(pkgs);
    let files = package_files(pkgs, debs, |n| essential.contains(n));
    let t0 = Instant::now();
    let timing = std::env::var_os("KILN_TIMING").is_some();
    let progress = |m: &str| match m.split_once(' ') {
        _ if timing => eprintln!("timing: {:.2}s {m}", t0.elapsed().as_secs_f64()),
        Some((verb, rest)) => {
            let mut v = verb.to_string();
            v[..1].make_ascii_uppercase();
            ui.status(&v, rest)
        }
        None => ui.status("Installing", m),
    };
    let arch = pkgs.first().map(|p| p.target.clone()).unwrap_or_default();
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    kiln_rootfs::install(
        &root,
        &files,
        &kiln_rootfs::InstallOptions {
            epoch,
            arch: &arch,
            log: &log,
            progress: &progress,
            jobs,
        },
    )?;
    let sources_dir = root.join("etc/apt/sources.list.d");
    if root.join("usr/bin/apt-get").exists() {
        std::fs::create_dir_all(&sources_dir)?;
        std::fs::write(sources_dir.join("debian.sources"), apt_sources(lock, &root))?;
    }
    // apt should know which packages were only pulled in as dependencies.
    if root.join("var/lib/apt").is_dir() {
        let mut auto = String::new();
        for p in pkgs
            .iter()
            .filter(|p| p.reason == Reason::Dependency && !essential.contains(&p.name))
        {
            auto.push_str(&format!(
                "Package: {}\nArchitecture: {}\nAuto-Installed: 1\n\n",
                p.name, p.target
            ));
        }
        std::fs::write(root.join("var/lib/apt/extended_states"), auto)?;
    }
    let custom = customization(recipe)?;
    ui.status("Customizing", &recipe.path.display().to_string());
    kiln_rootfs::customize::apply(&root, &custom, epoch, &log)?;
    kiln_rootfs::hygiene::clean(&root)?;
    Ok(tmp)
}

/// Free bytes on the filesystem holding `path`.
fn free_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a properly sized buffer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Where the temporary root is built: `$KILN_TMPDIR`; else `/dev/shm` when it
/// has room for twice the installed size (dpkg syncs its database after
/// every step, which costs nothing on tmpfs and a lot on many disks); else
/// `$TMPDIR`.
pub fn scratch_base(estimate: u64) -> PathBuf {
    if let Some(d) = std::env::var_os("KILN_TMPDIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(d);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() && free_space(shm).is_some_and(|f| f > estimate * 2 + (512 << 20)) {
        return shm.to_path_buf();
    }
    std::env::temp_dir()
}

fn release_area(tmp: tempfile::TempDir) {
    let p = tmp.path().to_path_buf();
    drop(tmp);
    CLEANUP.lock().unwrap().retain(|d| *d != p);
}

/// Checks that `dir` can take the outputs before any work is done.
fn prepare_output(dir: &Path) -> Result<()> {
    let fail = |e: std::io::Error| Hinted {
        message: format!(
            "cannot write to the output directory {}: {e}",
            dir.display()
        ),
        hint: "choose another directory with --output DIR".into(),
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(format!(".kiln-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(fail)?;
    std::fs::remove_file(&probe).map_err(fail)?;
    Ok(())
}

pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = dest.with_file_name(format!(
        ".{}.partial-{}",
        dest.file_name().unwrap().to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", dest.display()))?;
    std::fs::rename(&tmp, dest).with_context(|| format!("writing {}", dest.display()))?;
    Ok(())
}

fn tar_options(epoch: i64) -> kiln_image::TarOptions<'static> {
    kiln_image::TarOptions {
        epoch: epoch.max(0) as u64,
        extra: kiln_image::tar_writer::DEV_ENTRIES,
    }
}

/// One written artifact, for the manifest (and later SBOM and provenance).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    /// Path relative to the output directory.
    pub path: String,
    pub format: String,
    pub architecture: Option<String>,
    pub size: u64,
    pub sha256: String,
}

/// Assembles a distroless root (no maintainer scripts) in a fresh build area.
fn assemble_distroless(
    ui: &Ui,
    recipe: &Recipe,
    arch: &str,
    pkgs: &[&LockedPackage],
    debs: &[PathBuf],
) -> Result<tempfile::TempDir> {
    let (tmp, root) = new_build_area(pkgs)?;
    let files = package_files(pkgs, debs, |_| false);
    ui.status(
        "Unpacking",
        &format!(
            "{} packages (distroless: no maintainer scripts)",
            files.len()
        ),
    );
    let mut users = Vec::new();
    for u in &recipe.customize.users {
        let uid = u.uid.ok_or_else(|| Hinted {
            message: format!("distroless user {} needs a fixed uid", u.name),
            hint: "set uid = NUMBER in its [[customize.user]] table".into(),
        })?;
        users.push(kiln_rootfs::distroless::Account {
            name: u.name.clone(),
            uid,
            gid: uid,
            home: u
                .home
                .clone()
                .unwrap_or_else(|| format!("/home/{}", u.name)),
        });
    }
    kiln_rootfs::distroless::assemble(&root, &files, &distroless_trim(recipe, arch), &users)?;
    // Files and overlays need no shell.
    let custom = Customization {
        overlays: recipe.customize.overlays.clone(),
        files: customization(recipe)?.files,
        ..Default::default()
    };
    kiln_rootfs::customize::apply(&root, &custom, 0, &tmp.path().join("build.log"))?;
    Ok(tmp)
}

fn run_config(recipe: &Recipe, root: &Path) -> kiln_image::oci::RunConfig {
    let c = &recipe.container;
    let mut env: Vec<String> = c.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !c.env.contains_key("PATH") {
        env.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    let cmd = match (&c.cmd, &c.entrypoint) {
        (Some(cmd), _) => Some(cmd.clone()),
        (None, None) if root.join("bin/bash").exists() => Some(vec!["/bin/bash".into()]),
        (None, None) if root.join("bin/sh").exists() => Some(vec!["/bin/sh".into()]),
        _ => None,
    };
    kiln_image::oci::RunConfig {
        env,
        entrypoint: c.entrypoint.clone(),
        cmd,
        user: c.user.clone(),
        working_dir: c.working_dir.clone(),
        exposed_ports: c.exposed_ports.clone(),
        labels: c.labels.clone(),
    }
}

/// Builds every artifact of the recipe into `out_dir`.
#[allow(clippy::too_many_arguments)]
fn produce(
    ui: &Ui,
    recipe: &Recipe,
    lock: &Lock,
    per_arch: &[(String, Vec<&LockedPackage>, Vec<PathBuf>)],
    epoch: i64,
    out_dir: &Path,
) -> Result<(Vec<Artifact>, crate::attest::Licences, serde_json::Value)> {
    let formats = &recipe.output.formats;
    let mut disk_facts = serde_json::Map::new();
    let mut licences = crate::attest::Licences::new();
    let multi = per_arch.len() > 1;
    let mut artifacts = Vec::new();
    let oci_tmp = out_dir.join(format!(".oci.partial-{}", std::process::id()));
    if formats.iter().any(|f| f == "oci") {
        let _ = std::fs::remove_dir_all(&oci_tmp);
        std::fs::create_dir_all(&oci_tmp)?;
    }
    let compression = if recipe.container.compression == "zstd" {
        kiln_image::oci::Compression::Zstd
    } else {
        kiln_image::oci::Compression::Gzip
    };
    let mut annotations = std::collections::BTreeMap::new();
    annotations.insert(
        "org.opencontainers.image.created".to_string(),
        kiln_archive::date::format_rfc3339(epoch),
    );
    annotations.insert(
        "org.opencontainers.image.title".to_string(),
        recipe.image.name.clone(),
    );
    if let Some(v) = &recipe.image.version {
        annotations.insert("org.opencontainers.image.version".to_string(), v.clone());
    }
    let mut manifests = Vec::new();
    let result = (|| -> Result<()> {
        for (arch, pkgs, debs) in per_arch {
            let tmp = if recipe.container.distroless {
                assemble_distroless(ui, recipe, arch, pkgs, debs)?
            } else {
                assemble(ui, recipe, lock, pkgs, debs, epoch)?
            };
            let root = tmp.path().join("root");
            if formats.iter().any(|f| f == "tar") {
                let name = if multi {
                    format!("rootfs-{arch}.tar")
                } else {
                    "rootfs.tar".to_string()
                };
                let path = out_dir.join(&name);
                ui.status("Writing", &path.display().to_string());
                let s = kiln_image::write_tar_file(&root, &path, &tar_options(epoch))
                    .with_context(|| format!("writing {}", path.display()))?;
                artifacts.push(Artifact {
                    path: name,
                    format: "tar".into(),
                    architecture: Some(arch.clone()),
                    size: s.size,
                    sha256: s.sha256,
                });
            }
            if formats.iter().any(|f| f == "oci") {
                ui.status(
                    "Writing",
                    &format!("OCI layer for {arch} ({})", recipe.container.compression),
                );
                let trees = if recipe.container.layers == "per-package" {
                    let files = package_files(pkgs, debs, |_| false);
                    let trim = distroless_trim(recipe, arch);
                    let trees = kiln_rootfs::distroless::layer_trees(
                        &tmp.path().join("layers"),
                        &root,
                        &files,
                        &trim,
                    )?;
                    // Recipe files belong to the last (generated) layer.
                    let custom = Customization {
                        overlays: recipe.customize.overlays.clone(),
                        files: customization(recipe)?.files,
                        ..Default::default()
                    };
                    kiln_rootfs::customize::apply(
                        trees.last().unwrap(),
                        &custom,
                        0,
                        &tmp.path().join("build.log"),
                    )?;
                    trees
                } else {
                    vec![root.clone()]
                };
                let mut layers = Vec::new();
                for t in &trees {
                    layers.push(
                        kiln_image::oci::write_layer(&oci_tmp, t, compression, epoch.max(0) as u64)
                            .with_context(|| {
                                format!("writing an OCI layer in {}", oci_tmp.display())
                            })?,
                    );
                }
                let m = kiln_image::oci::write_image(
                    &oci_tmp,
                    arch,
                    &kiln_archive::date::format_rfc3339(epoch),
                    &run_config(recipe, &root),
                    &layers,
                    &annotations,
                )?;
                manifests.push((m, arch.clone()));
            }
            crate::attest::licences_from_root(&root, pkgs, &mut licences);
            if formats.iter().any(|f| f == "disk" || f == "qcow2") {
                let stem = if multi {
                    format!("disk-{arch}")
                } else {
                    "disk".to_string()
                };
                let job = crate::disk::DiskJob {
                    recipe,
                    root: &root,
                    work: tmp.path(),
                    arch,
                    epoch,
                    identity: image_identity(recipe, arch, pkgs, epoch),
                    log: &tmp.path().join("build.log"),
                    stem,
                };
                let (a, facts) =
                    crate::disk::build(ui, &job, out_dir, formats.iter().any(|f| f == "qcow2"))?;
                artifacts.extend(a);
                disk_facts.insert(arch.clone(), facts);
            }
            release_area(tmp);
        }
        if !manifests.is_empty() {
            let mut tags = vec!["latest".to_string()];
            if let Some(v) = &recipe.image.version {
                tags.insert(0, v.clone());
            }
            let top = kiln_image::oci::write_index(&oci_tmp, &manifests, &tags, &annotations)?;
            let dest = out_dir.join("oci");
            let old = out_dir.join(format!(".oci.old-{}", std::process::id()));
            if dest.exists() {
                std::fs::rename(&dest, &old)?;
            }
            std::fs::rename(&oci_tmp, &dest)?;
            let _ = std::fs::remove_dir_all(&old);
            artifacts.push(Artifact {
                path: "oci".into(),
                format: "oci".into(),
                architecture: if multi {
                    None
                } else {
                    per_arch.first().map(|a| a.0.clone())
                },
                size: top.size,
                sha256: top.digest.trim_start_matches("sha256:").to_string(),
            });
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&oci_tmp);
    }
    result.map(|()| (artifacts, licences, serde_json::Value::Object(disk_facts)))
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

pub fn cmd_build(ui: &Ui, recipe_path: &Path, args: &BuildArgs) -> Result<()> {
    let start = Instant::now();
    // The output directory must be usable before any work is done.
    let out_dir = match &args.output {
        Some(o) => o.clone(),
        None => Recipe::load(recipe_path)?.output_dir(),
    };
    prepare_output(&out_dir)?;
    let (recipe, lock) = crate::lock::ensure_lock(ui, recipe_path, args.locked, &args.sources)?;
    for f in &recipe.output.formats {
        if (f == "disk" || f == "qcow2") && recipe.container.distroless {
            return Err(Hinted {
                message: format!(
                    "a distroless image cannot be a `{f}`: it has no init, kernel or boot loader"
                ),
                hint: "build the disk from a full recipe (distroless = false)".into(),
            }
            .into());
        }
    }
    let host = kiln_recipe::host_architecture();
    if !recipe.container.distroless {
        if let Some(a) = recipe.image.architectures.iter().find(|a| *a != host) {
            return Err(Hinted {
                message: format!("a full {a} image cannot be built on a {host} host yet (maintainer scripts would need emulation)"),
                hint: format!("build it on {a}, set architectures = [\"{host}\"], or build distroless (no scripts run)"),
            }
            .into());
        }
        if !kiln_rootfs::sandbox::is_root() {
            return Err(kiln_rootfs::RootfsError::Sandbox(
                kiln_rootfs::sandbox::SandboxError::NotRoot,
            )
            .into());
        }
    }
    let epoch = epoch_for(&lock, args.source_date_epoch)?;
    let key = crate::attest::load_signing_key(args.sign_key.as_deref())?;
    let started = kiln_archive::now();
    let mut per_arch = Vec::new();
    for arch in &recipe.image.architectures {
        let pkgs: Vec<&LockedPackage> =
            lock.packages.iter().filter(|p| &p.target == arch).collect();
        let debs = crate::fetch::fetch_packages(ui, &lock, &pkgs, &args.sources)?;
        per_arch.push((arch.clone(), pkgs, debs));
    }
    let (artifacts, licences, disk_facts) =
        produce(ui, &recipe, &lock, &per_arch, epoch, &out_dir)?;

    let mut manifest = json!({
        "image": recipe.image.name,
        "version": recipe.image.version,
        "suite": recipe.image.suite,
        "architectures": recipe.image.architectures,
        "distroless": recipe.container.distroless,
        "source-date-epoch": epoch,
        "lock": {
            "path": recipe.lock_path().display().to_string(),
            "recipe-sha256": lock.recipe,
        },
        "packages": per_arch.iter().flat_map(|(_, pkgs, _)| pkgs.iter()).map(|p| json!({
            "name": p.name, "version": p.version, "architecture": p.architecture, "target": p.target,
            "source": p.source, "source-version": p.source_version, "sha256": p.sha256,
        })).collect::<Vec<_>>(),
        "outputs": artifacts.iter().map(|a| json!({
            "path": a.path, "format": a.format, "architecture": a.architecture, "size": a.size, "sha256": a.sha256,
        })).collect::<Vec<_>>(),
        "generator": format!("kiln {}", env!("CARGO_PKG_VERSION")),
    });

    if disk_facts.as_object().is_some_and(|m| !m.is_empty()) {
        manifest["disk"] = disk_facts;
        manifest["tests"] = serde_json::to_value(&recipe.tests)?;
        manifest["users"] = json!(recipe
            .customize
            .users
            .iter()
            .map(|u| u.name.clone())
            .collect::<Vec<_>>());
    }
    write_atomic(
        &out_dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    let all_pkgs: Vec<&LockedPackage> = per_arch.iter().flat_map(|a| a.1.iter().copied()).collect();
    crate::attest::write_records(
        ui,
        &recipe,
        &lock,
        &all_pkgs,
        &licences,
        &artifacts,
        epoch,
        started,
        key.as_ref(),
        &out_dir,
    )?;
    let npkgs: usize = per_arch.iter().map(|a| a.1.len()).sum();
    for a in &artifacts {
        ui.status(
            "Built",
            &format!(
                "{} ({}, sha256 {})",
                out_dir.join(&a.path).display(),
                human_size(a.size),
                &a.sha256[..16]
            ),
        );
    }
    ui.status(
        "Finished",
        &format!("{npkgs} packages in {:.1}s", start.elapsed().as_secs_f64()),
    );

    if args.check_reproducible {
        ui.status("Rebuilding", "to check reproducibility");
        let again_dir = out_dir.join("rebuild");
        let _ = std::fs::remove_dir_all(&again_dir);
        std::fs::create_dir_all(&again_dir)?;
        let (again, _, _) = produce(ui, &recipe, &lock, &per_arch, epoch, &again_dir)?;
        let differ: Vec<String> = artifacts
            .iter()
            .zip(&again)
            .filter(|(a, b)| a.sha256 != b.sha256)
            .map(|(a, _)| a.path.clone())
            .collect();
        if !differ.is_empty() {
            let first = &differ[0];
            return Err(Hinted {
                message: format!(
                    "not reproducible: {} differ between two builds (the second is in {})",
                    differ.join(", "),
                    again_dir.display()
                ),
                hint: format!(
                    "see what differs with: diffoscope {} {}",
                    out_dir.join(first).display(),
                    again_dir.join(first).display()
                ),
            }
            .into());
        }
        std::fs::remove_dir_all(&again_dir)?;
        ui.status(
            "Reproducible",
            &format!(
                "two builds gave identical {}",
                artifacts
                    .iter()
                    .map(|a| format!("{} ({})", a.path, &a.sha256[..16]))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    Ok(())
}

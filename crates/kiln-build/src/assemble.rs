//! Assembling a root: the target's dpkg for a full image, a payload-only
//! unpack for distroless, then the recipe's customisation. Each build area
//! belongs to one build and is removed on drop or when it is cancelled.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use kiln_model::event::Stage;
use kiln_model::owner::OwnerLock;
use kiln_model::{Cancel, Hinted, Reporter};
use kiln_recipe::{FileContent, Lock, LockedPackage, Reason, Recipe};
use kiln_rootfs::customize::{Customization, FileSpec, GroupSpec, UserSpec};
use kiln_rootfs::extract::{ExtractError, Room};
use kiln_rootfs::inroot::Root;
use kiln_rootfs::PackageFile;

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

pub fn customization(recipe: &Recipe) -> Result<Customization> {
    let c = &recipe.customize;
    let mut files = Vec::new();
    for f in &c.files {
        let contents = match &f.content {
            FileContent::Inline(s) => s.clone().into_bytes(),
            FileContent::Source(p) => std::fs::read(p).map_err(|e| {
                Hinted::new(
                    format!(
                        "[[customize.file]] {}: cannot read {}: {e}",
                        f.path,
                        p.display()
                    ),
                    "`source` is relative to the recipe file that names it",
                )
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
        network: c.network,
    })
}

/// apt sources for the image itself, from the lock's releases, so that
/// `apt-get update && apt-get install` works inside it.
pub fn apt_sources(lock: &Lock, components: &[String], root: &Path) -> String {
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
            "Types: deb\nURIs: {uri}\nSuites: {}\nComponents: {}\n",
            suites.join(" "),
            components.join(" ")
        ));
        if root.join(keyring.trim_start_matches('/')).exists() {
            out.push_str(&format!("Signed-By: {keyring}\n"));
        }
        out.push('\n');
    }
    out
}

/// The fetched `.deb`s of `pkgs`, in lock order, for the assemblers.
pub fn package_files(
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
            // Installed-Size is in KiB; a lying, huge one must not overflow.
            installed_size: p.installed_size.saturating_mul(1024),
        })
        .collect()
}

/// What a distroless root of `arch` leaves out.
pub fn distroless_trim(recipe: &Recipe, arch: &str) -> kiln_rootfs::distroless::Trim {
    kiln_rootfs::distroless::Trim {
        keep_locales: recipe.container.keep_locales.clone(),
        host_arch: arch == kiln_recipe::host_architecture(),
    }
}

/// A build's scratch directory (removed on drop, and by its build's
/// [`Cancel`] if cancelled) with an empty `root` directory in it. It holds
/// the lock of its owner file (`.kiln-owner`) for its life, so that a Kiln
/// that starts after this one died can tell it is stale (see
/// [`crate::reclaim`]).
pub struct BuildArea {
    dir: Option<PathBuf>,
    owner: Option<OwnerLock>,
    cancel: Cancel,
    room: Option<Arc<Room>>,
    /// The owners a build by root would have given the root's files, for a
    /// distroless root assembled without privileges (see
    /// [`kiln_rootfs::extract::Ownership`]); `None` when the disk has them.
    pub owners: Option<kiln_rootfs::extract::Ownership>,
}

impl BuildArea {
    /// A fresh area for `pkgs`: in RAM (/dev/shm) when it has room for
    /// them and `ram` allows it (see [`kiln_model::fsutil::shm_room`]),
    /// else on disk.
    pub fn new(pkgs: &[&LockedPackage], cancel: &Cancel, ram: bool) -> Result<BuildArea> {
        let place = if ram {
            scratch_place(declared_size(pkgs))
        } else {
            kiln_model::fsutil::disk_scratch()
        };
        let base = &place.base;
        let tmp = tempfile::Builder::new()
            .prefix(crate::reclaim::AREA_PREFIX)
            .tempdir_in(base)
            .with_context(|| format!("creating a build area in {}", base.display()))?;
        let owner = OwnerLock::create(tmp.path())
            .with_context(|| format!("creating the owner file of {}", tmp.path().display()))?;
        std::fs::create_dir(tmp.path().join("root"))?;
        // Removed by Drop below, without following links.
        let dir = tmp.keep();
        cancel.track_dir(&dir);
        Ok(BuildArea {
            dir: Some(dir),
            owner: Some(owner),
            cancel: cancel.clone(),
            room: place.ram_room.map(|r| Arc::new(Room::new(r))),
            owners: None,
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.as_deref().expect("present until drop")
    }

    pub fn root(&self) -> PathBuf {
        self.path().join("root")
    }

    pub fn log(&self) -> PathBuf {
        self.path().join("build.log")
    }

    /// The payload room, when the area is in RAM.
    pub fn room(&self) -> Option<Arc<Room>> {
        self.room.clone()
    }
}

impl Drop for BuildArea {
    fn drop(&mut self) {
        if let Some(p) = self.dir.take() {
            // Through directory fds, links removed themselves; read-only
            // directories a package made are made writable first.
            let removed = match (p.parent(), p.file_name()) {
                (Some(parent), Some(name)) => Root::open(parent).and_then(|r| r.remove_tree(name)),
                _ => Err(std::io::ErrorKind::InvalidInput.into()),
            };
            if removed.is_err() {
                let _ = std::fs::remove_dir_all(&p);
            }
            self.cancel.untrack_dir(&p);
        }
        // Only now: the area is gone before its lock is.
        self.owner.take();
    }
}

/// What `pkgs` declare they unpack (Installed-Size), in bytes.
pub fn declared_size(pkgs: &[&LockedPackage]) -> u64 {
    pkgs.iter().fold(0u64, |n, p| {
        n.saturating_add(p.installed_size.saturating_mul(1024))
    })
}

/// Whether `e` is a build area in RAM running out of the payload room its
/// packages' Installed-Size gave it: the build is then done again on disk.
pub fn outgrew_ram(e: &anyhow::Error) -> Option<(u64, u64)> {
    e.chain()
        .find_map(|c| match c.downcast_ref::<kiln_rootfs::RootfsError>() {
            Some(kiln_rootfs::RootfsError::Extract {
                source: ExtractError::RoomExceeded { room, used },
                ..
            }) => Some((*room, *used)),
            _ => None,
        })
}

/// The key of the tree after the Essential phase: everything it is made
/// of (each Essential-phase package's name, version, architecture and
/// sha256), the image architecture, the epoch the scripts saw, and this
/// Kiln (whose install steps made it).
pub fn essential_key(
    pkgs: &[&LockedPackage],
    essential: &HashSet<String>,
    arch: &str,
    epoch: i64,
) -> String {
    use sha2::Digest;
    let mut lines: Vec<String> = pkgs
        .iter()
        .filter(|p| essential.contains(&p.name))
        .map(|p| format!("{} {} {} {}", p.name, p.version, p.architecture, p.sha256))
        .collect();
    lines.sort();
    // Owners on disk are ids of the namespace the build ran in: a rootless
    // build's tree is not a root build's.
    let ids = kiln_rootfs::userns::id_map_key();
    let text = format!(
        "kiln essential tree 1\n{}\n{arch}\n{epoch}\n{ids}{}\n",
        env!("CARGO_PKG_VERSION"),
        lines.join("\n")
    );
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// How many Essential trees the cache keeps (the most recently used).
pub const ESSENTIAL_KEEP: usize = 8;

/// Marks the cache entry `entry` as just used (its directory's time), so
/// [`prune_essential`] keeps the trees builds take.
fn touch(entry: &Path) {
    if let Ok(f) = std::fs::File::open(entry) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// Removes all but the `keep` most recently used Essential trees from the
/// cache directory `dir`, and what builds that died while writing one
/// left (`.KEY.PID` of a process that is gone). Best effort: a cache it
/// cannot tidy is left as it is.
pub fn prune_essential(dir: &Path, keep: usize) {
    let Ok(list) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for e in list.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(meta) = e.metadata() else { continue };
        if !meta.is_dir() {
            continue;
        }
        if let Some(pid) = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once('.'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
            continue;
        }
        if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            entries.push((meta.modified().unwrap_or(std::time::UNIX_EPOCH), e.path()));
        }
    }
    entries.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (_, p) in entries.into_iter().skip(keep) {
        let _ = std::fs::remove_dir_all(p);
    }
}

/// Builds the root filesystem in a fresh temporary area.
#[allow(clippy::too_many_arguments)]
pub fn assemble(
    recipe: &Recipe,
    lock: &Lock,
    pkgs: &[&LockedPackage],
    debs: &[PathBuf],
    epoch: i64,
    reporter: &dyn Reporter,
    cancel: &Cancel,
    ram: bool,
    essential_cache: Option<&Path>,
) -> Result<BuildArea> {
    let area = BuildArea::new(pkgs, cancel, ram)?;
    let root = area.root();
    let log = area.log();
    let essential = essential_closure(pkgs);
    let files = package_files(pkgs, debs, |n| essential.contains(n));
    let arch = pkgs.first().map(|p| p.target.clone()).unwrap_or_default();
    let entry = essential_cache.map(|c| c.join(essential_key(pkgs, &essential, &arch, epoch)));
    if let Some(e) = &entry {
        touch(e);
    }
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
            reporter,
            cancel,
            jobs,
            room: area.room(),
            essential_cache: entry.as_deref(),
        },
    )?;
    if let Some(c) = essential_cache {
        prune_essential(c, ESSENTIAL_KEEP);
    }
    let sources_dir = root.join("etc/apt/sources.list.d");
    if root.join("usr/bin/apt-get").exists() {
        std::fs::create_dir_all(&sources_dir)?;
        std::fs::write(
            sources_dir.join("debian.sources"),
            apt_sources(lock, &recipe.image.components, &root),
        )?;
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
    cancel.check()?;
    let custom = customization(recipe)?;
    reporter.step(Stage::Customize, &recipe.path.display().to_string());
    kiln_rootfs::customize::apply(&root, &custom, epoch, &log, cancel)?;
    kiln_rootfs::hygiene::clean(&root)?;
    Ok(area)
}

/// Where the temporary root is built (see [`kiln_model::fsutil::scratch_place`]).
pub use kiln_model::fsutil::{scratch_base, scratch_place};

/// Assembles a distroless root (no maintainer scripts) in a fresh build area.
pub fn assemble_distroless(
    recipe: &Recipe,
    arch: &str,
    pkgs: &[&LockedPackage],
    debs: &[PathBuf],
    reporter: &dyn Reporter,
    cancel: &Cancel,
    ram: bool,
) -> Result<BuildArea> {
    let mut area = BuildArea::new(pkgs, cancel, ram)?;
    let root = area.root();
    let files = package_files(pkgs, debs, |_| false);
    reporter.step(
        Stage::Unpack,
        &format!(
            "{} packages (distroless: no maintainer scripts)",
            files.len()
        ),
    );
    let mut users = Vec::new();
    for u in &recipe.customize.users {
        let uid = u.uid.ok_or_else(|| {
            Hinted::new(
                format!("distroless user {} needs a fixed uid", u.name),
                "set uid = NUMBER in its [[customize.user]] table",
            )
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
    let owners = kiln_rootfs::distroless::assemble(
        &root,
        &area.path().join("stage"),
        &files,
        &distroless_trim(recipe, arch),
        &users,
        area.room(),
    )?;
    // Files and overlays need no shell.
    let custom = Customization {
        overlays: recipe.customize.overlays.clone(),
        files: customization(recipe)?.files,
        ..Default::default()
    };
    // Without privileges every file on disk is the builder's: the image
    // writers take the owners a build by root gives them from here, the
    // recipe's files included.
    if !kiln_rootfs::sandbox::is_root() {
        let mut owners = owners;
        for f in &custom.files {
            kiln_rootfs::extract::set_owner(&mut owners, &f.path, f.uid, f.gid);
        }
        area.owners = Some(owners);
    }
    cancel.check()?;
    kiln_rootfs::customize::apply(&root, &custom, 0, &area.log(), cancel)?;
    Ok(area)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_the_most_recently_used_trees_and_drops_dead_writers_leftovers() {
        let d = tempfile::tempdir().unwrap();
        let key = |n: u8| format!("{:064x}", n);
        for n in 0..5u8 {
            let e = d.path().join(key(n));
            std::fs::create_dir_all(e.join("root")).unwrap();
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000 + u64::from(n));
            std::fs::File::open(&e).unwrap().set_modified(t).unwrap();
        }
        // Used just now: kept although the oldest by creation.
        touch(&d.path().join(key(0)));
        // A writer that died, one still running (this process), other files.
        let dead = d.path().join(format!(".{}.{}", key(9), u32::MAX));
        let alive = d.path().join(format!(".{}.{}", key(8), std::process::id()));
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::create_dir_all(&alive).unwrap();
        std::fs::write(d.path().join("notes"), "mine").unwrap();
        prune_essential(d.path(), 2);
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = vec![
            alive.file_name().unwrap().to_string_lossy().into_owned(),
            key(0),
            key(4),
            "notes".to_string(),
        ];
        want.sort();
        assert_eq!(left, want);
    }
}

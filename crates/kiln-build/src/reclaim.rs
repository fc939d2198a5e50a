//! What a Kiln that died (kill -9, a crash, a power cut) left behind, found
//! and removed at the start of the next build: build areas (in /dev/shm,
//! `$KILN_TMPDIR` or `$TMPDIR`, which are RAM on many machines), the cache's
//! temporary download files and half-written outputs.
//!
//! Only Kiln's own names are looked at, only entries owned by this user, and
//! only when their owner is gone (see [`kiln_model::owner`]):
//!
//! | what | where | owner gone when |
//! |---|---|---|
//! | `kiln-build-*` directories | scratch bases | their `.kiln-owner` lock is free; without one (older Kiln), untouched for a day |
//! | `.tmp-*` files | the cache | their lock is free and they are untouched for 10 minutes |
//! | `.*.partial-PID`, `.kiln-probe-PID` | the output directory | no process PID runs, or it started after they were last written |
//!
//! Removal never follows a link: entries are removed through directory fds
//! with `O_NOFOLLOW` ([`kiln_rootfs::inroot::Root::remove_tree`]); a link
//! inside a stale area (which holds a package-made, often root-owned tree) is
//! removed itself, never what it points at.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kiln_model::event::Stage;
use kiln_model::owner::{euid, pid_owner_alive, try_lock, OWNER_FILE};
use kiln_model::Reporter;
use kiln_rootfs::inroot::Root;

use crate::fetch::human_size;

/// How build areas are named.
pub const AREA_PREFIX: &str = "kiln-build-";
/// A cache temporary file is locked an instant after it is made: one whose
/// lock is free is only taken for stale once it is this old.
pub const TEMP_GRACE: Duration = Duration::from_secs(10 * 60);
/// A build area without an owner file (made by a Kiln before owner files,
/// or one killed while making it) is stale once it is this old.
pub const LEGACY_GRACE: Duration = Duration::from_secs(24 * 60 * 60);

/// Something removed, and the bytes it held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reclaimed {
    pub path: PathBuf,
    pub bytes: u64,
}

/// What one pass found.
#[derive(Debug, Default)]
pub struct Report {
    pub reclaimed: Vec<Reclaimed>,
    /// Stale entries that could not be removed, with why.
    pub failed: Vec<(PathBuf, std::io::Error)>,
}

impl Report {
    pub fn bytes(&self) -> u64 {
        self.reclaimed.iter().map(|r| r.bytes).sum()
    }
}

/// Finds and removes what dead Kiln processes left in the scratch `bases`,
/// the `cache` and the output directory `out`.
pub fn reclaim(bases: &[PathBuf], cache: &Path, out: &Path) -> Report {
    let mut report = Report::default();
    let now = SystemTime::now();
    for base in bases {
        for name in names(base) {
            if !name.starts_with(AREA_PREFIX) {
                continue;
            }
            if let Some(_lock) = stale_area(base, &name, now) {
                remove(base, &name, &mut report);
            }
        }
    }
    walk_cache(cache, 0, now, &mut report);
    for name in names(out) {
        if let Some(pid) = partial_pid(&name) {
            let path = out.join(&name);
            if owned(&path).is_some_and(|m| !pid_owner_alive(pid, mtime(&m))) {
                remove(out, &name, &mut report);
            }
        }
    }
    report
}

/// [`reclaim`] for a build: the usual scratch bases, then one line through
/// the reporter saying what was freed (a warning for what could not be).
pub fn at_build_start(cache: &Path, out: &Path, reporter: &dyn Reporter) {
    report(
        &reclaim(&kiln_model::fsutil::scratch_bases(), cache, out),
        reporter,
    );
}

/// One step line for what was reclaimed, a warning for each of the first
/// five entries that could not be removed.
pub fn report(report: &Report, reporter: &dyn Reporter) {
    if !report.reclaimed.is_empty() {
        let mut shown: Vec<String> = report
            .reclaimed
            .iter()
            .take(5)
            .map(|r| format!("{} ({})", r.path.display(), human_size(r.bytes)))
            .collect();
        if report.reclaimed.len() > 5 {
            shown.push(format!("and {} more", report.reclaimed.len() - 5));
        }
        reporter.step(
            Stage::Reclaim,
            &format!(
                "{} left by Kiln processes that are gone: {}",
                human_size(report.bytes()),
                shown.join(", ")
            ),
        );
    }
    for (path, e) in report.failed.iter().take(5) {
        reporter.warn(&format!(
            "cannot remove {}, left by a Kiln process that is gone: {e}; remove it by hand",
            path.display()
        ));
    }
}

/// The entry names in `dir`, none if it cannot be read.
fn names(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// `lstat` of `path` when this user owns it.
fn owned(path: &Path) -> Option<std::fs::Metadata> {
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.uid() == euid())
}

fn mtime(m: &std::fs::Metadata) -> SystemTime {
    m.modified().unwrap_or(SystemTime::UNIX_EPOCH)
}

fn older_than(m: &std::fs::Metadata, now: SystemTime, age: Duration) -> bool {
    now.duration_since(mtime(m)).is_ok_and(|d| d >= age)
}

/// Whether `base/name` is a build area whose owner is gone: `Some` with
/// its owner file, locked now by this process (so no other Kiln takes it
/// for its own or reclaims it at the same time), or `Some(None)` for an
/// old area without one.
fn stale_area(base: &Path, name: &str, now: SystemTime) -> Option<Option<File>> {
    let dir = base.join(name);
    let m = owned(&dir).filter(|m| m.is_dir())?;
    let owner = dir.join(OWNER_FILE);
    match std::fs::symlink_metadata(&owner) {
        // A link would not be an owner record.
        Ok(o) if o.is_file() => {
            let f = File::open(&owner).ok()?;
            try_lock(&f).ok()?.then_some(Some(f))
        }
        Ok(_) => None,
        Err(_) => older_than(&m, now, LEGACY_GRACE).then_some(None),
    }
}

/// Looks for stale `.tmp-*` files in the cache (a few levels deep:
/// `debs/xx/`, `releases/by-sha256/SHA/`, `indexes/`).
fn walk_cache(dir: &Path, depth: usize, now: SystemTime, report: &mut Report) {
    for name in names(dir) {
        let path = dir.join(&name);
        let Some(m) = owned(&path) else { continue };
        if m.is_dir() && depth < 3 {
            walk_cache(&path, depth + 1, now, report);
        } else if m.is_file()
            && name.starts_with(kiln_archive::cache::TEMP_PREFIX)
            && older_than(&m, now, TEMP_GRACE)
        {
            let Ok(f) = File::open(&path) else { continue };
            if try_lock(&f).unwrap_or(false) {
                remove(dir, &name, report);
            }
        }
    }
}

/// The pid in an output's temporary name: `.NAME.partial-PID`,
/// `.oci.partial-PID` (a directory), `.kiln-probe-PID`.
pub fn partial_pid(name: &str) -> Option<u32> {
    if !name.starts_with('.') {
        return None;
    }
    let (_, pid) = name
        .rsplit_once(".partial-")
        .or_else(|| name.split_once(".kiln-probe-"))?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Removes `dir/name` (a file, or a tree) without following any link, and
/// records it with the bytes it held.
fn remove(dir: &Path, name: &str, report: &mut Report) {
    let path = dir.join(name);
    let bytes = usage(&path);
    let r = Root::open(dir).and_then(|d| d.remove_tree(name));
    match r {
        Ok(()) => report.reclaimed.push(Reclaimed { path, bytes }),
        // Another Kiln reclaimed it first.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => report.failed.push((path, e)),
    }
}

/// The bytes a file or tree holds (its files' lengths), links not followed.
fn usage(path: &Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !m.is_dir() {
        return if m.is_file() { m.len() } else { 0 };
    }
    let Ok(rd) = std::fs::read_dir(path) else {
        return 0;
    };
    rd.filter_map(|e| e.ok()).map(|e| usage(&e.path())).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_temporary_names_carry_their_pid() {
        assert_eq!(partial_pid(".rootfs.tar.partial-1234"), Some(1234));
        assert_eq!(partial_pid(".oci.partial-7"), Some(7));
        assert_eq!(partial_pid(".kiln-probe-99"), Some(99));
        assert_eq!(partial_pid(".manifest.json.partial-12x"), None);
        assert_eq!(partial_pid("rootfs.tar.partial-12"), None);
        assert_eq!(partial_pid(".rootfs.tar"), None);
        assert_eq!(partial_pid(".x.partial-"), None);
    }
}

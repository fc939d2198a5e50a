//! Installing packages into a root the way mmdebstrap does, minus apt:
//! the Essential set is unpacked natively so that the root can run its own
//! `dpkg`, which then installs everything properly (preinst, unpack,
//! conffiles, postinst, triggers) in two runs: the Essential set, then the
//! rest. The order follows Pre-Depends.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_deb::debfile::DebFile;

use kiln_model::event::Stage;
use kiln_model::{Cancel, Reporter};

use crate::extract::{Limits, Room};
use crate::inroot::Root;
use crate::sandbox::{run_in_root, script_env};
use crate::{in_parallel, RootfsError};

/// One package to install.
#[derive(Clone, Debug)]
pub struct PackageFile {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// Part of the Essential set or its dependencies: unpacked first.
    pub essential_phase: bool,
    /// The verified `.deb`.
    pub deb: PathBuf,
    /// Its declared `Installed-Size` (from the signed index), in bytes:
    /// what bounds what it may unpack ([`Limits::for_package`]).
    pub installed_size: u64,
}

impl PackageFile {
    /// What the package may unpack.
    pub fn limits(&self) -> Limits {
        Limits::for_package(self.installed_size)
    }

    /// The `.deb`, read in place (never whole into memory).
    pub fn open(&self) -> Result<DebFile, RootfsError> {
        let f = std::fs::File::open(&self.deb)
            .map_err(|e| RootfsError::io(&self.deb.display().to_string(), e))?;
        DebFile::from_file(f).map_err(|e| self.bad(e.to_string()))
    }

    pub(crate) fn bad(&self, message: String) -> RootfsError {
        RootfsError::BadDeb {
            package: self.name.clone(),
            message,
        }
    }
}

pub struct InstallOptions<'a> {
    pub epoch: i64,
    /// dpkg's native architecture.
    pub arch: &'a str,
    /// dpkg and maintainer script output goes here.
    pub log: &'a Path,
    pub reporter: &'a dyn Reporter,
    pub cancel: &'a Cancel,
    pub jobs: usize,
    /// The build area's payload room (when it is in RAM).
    pub room: Option<Arc<Room>>,
    /// Where the tree after the Essential phase is kept for these exact
    /// inputs (the caller's key): taken from there when it is, put there
    /// when it is not. `None`: always installed afresh.
    pub essential_cache: Option<&'a Path>,
}

/// Unpacks the data of `pkgs` natively into `root` (no scripts), each
/// package streamed from its `.deb` and counted against its limits (and
/// `room`) as it is written.
pub fn extract_natively(
    root: &Path,
    pkgs: &[&PackageFile],
    jobs: usize,
    room: Option<Arc<Room>>,
) -> Result<(), RootfsError> {
    in_parallel(pkgs, jobs, |_, p| {
        let deb = p.open()?;
        let data = deb.data().map_err(|e| p.bad(e.to_string()))?;
        crate::extract::unpack(data, root, &p.limits().in_room(room.clone())).map_err(|e| {
            RootfsError::Extract {
                package: p.name.clone(),
                source: e,
            }
        })?;
        Ok(())
    })
    .map(|_| ())
}

/// Reads the data of `pkgs` (decompressed as it streams, nothing written)
/// and refuses a package that unpacks more than its limits allow, before
/// the root's dpkg (which does not check) unpacks it. Their bytes are
/// taken from `room`: dpkg writes them into the build area.
pub fn measure(
    pkgs: &[&PackageFile],
    jobs: usize,
    room: Option<Arc<Room>>,
) -> Result<u64, RootfsError> {
    let sizes = in_parallel(pkgs, jobs, |_, p| {
        let deb = p.open()?;
        let data = deb.data().map_err(|e| p.bad(e.to_string()))?;
        crate::extract::measure(data, &p.limits().in_room(room.clone())).map_err(|e| {
            RootfsError::Extract {
                package: p.name.clone(),
                source: e,
            }
        })
    })?;
    Ok(sizes.iter().sum())
}

/// Names a package's Pre-Depends refer to (any alternative), from its control file.
fn pre_depends(deb: &Path) -> Result<Vec<String>, RootfsError> {
    let f = std::fs::File::open(deb).map_err(|e| RootfsError::io(&deb.display().to_string(), e))?;
    let d = DebFile::from_file(f).map_err(|e| RootfsError::BadDeb {
        package: deb.display().to_string(),
        message: e.to_string(),
    })?;
    let files = d
        .control_files()
        .map_err(|e| RootfsError::io(&deb.display().to_string(), e))?;
    let control = files
        .iter()
        .find(|(n, _, _)| n == "control")
        .map(|(_, b, _)| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    let mut out = Vec::new();
    if let Some(Ok(p)) = kiln_deb::deb822::paragraphs(&control).next() {
        if let Some(v) = p.get("Pre-Depends") {
            if let Ok(groups) = kiln_deb::relation::parse_relations(v) {
                for g in groups {
                    for d in g {
                        out.push(d.name.to_string());
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Orders packages so that every Pre-Depends target comes first (stable:
/// otherwise the given order is kept; cycles are broken in given order).
fn pre_depends_order(pkgs: &[&PackageFile]) -> Result<Vec<usize>, RootfsError> {
    let index: HashMap<&str, usize> = pkgs
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(pkgs.len());
    for p in pkgs {
        deps.push(
            pre_depends(&p.deb)?
                .iter()
                .filter_map(|n| index.get(n.as_str()).copied())
                .collect(),
        );
    }
    let mut out = Vec::new();
    let mut state = vec![0u8; pkgs.len()]; // 0 new, 1 visiting, 2 done
    fn visit(i: usize, deps: &[Vec<usize>], state: &mut [u8], out: &mut Vec<usize>) {
        if state[i] != 0 {
            return;
        }
        state[i] = 1;
        for &d in &deps[i] {
            visit(d, deps, state, out);
        }
        state[i] = 2;
        out.push(i);
    }
    for i in 0..pkgs.len() {
        visit(i, &deps, &mut state, &mut out);
    }
    Ok(out)
}

/// Finds which package and script failed in a dpkg log.
pub fn dpkg_failure(log: &str) -> (Option<String>, Option<String>) {
    let mut package = None;
    let mut script = None;
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("dpkg: error processing package ") {
            package = rest.split_whitespace().next().map(str::to_string);
        } else if let Some(rest) = line.strip_prefix("dpkg: error processing archive ") {
            package.get_or_insert_with(|| rest.split_whitespace().next().unwrap_or("").to_string());
        }
        for s in [
            "pre-installation",
            "post-installation",
            "pre-removal",
            "post-removal",
        ] {
            if line.contains(&format!("{s} script subprocess returned error")) {
                let name = match s {
                    "pre-installation" => "preinst",
                    "post-installation" => "postinst",
                    "pre-removal" => "prerm",
                    _ => "postrm",
                };
                script = Some(name.to_string());
                if package.is_none() {
                    package = line.split_whitespace().nth(1).map(str::to_string);
                }
            }
        }
    }
    // A failing archive is named by its path: keep the package name.
    let package = package.map(|p| match p.strip_prefix("/var/cache/kiln-debs/") {
        Some(f) => f.split('_').next().unwrap_or(f).to_string(),
        None => p,
    });
    (package, script)
}

/// Installs `pkgs` into `root`, which must be empty.
pub fn install(
    root: &Path,
    pkgs: &[PackageFile],
    opts: &InstallOptions,
) -> Result<(), RootfsError> {
    let rest: Vec<&PackageFile> = pkgs.iter().filter(|p| !p.essential_phase).collect();
    // The packages the root's dpkg unpacks (dpkg does not hold a package to
    // its Installed-Size) are measured by Kiln first, on spare cores while
    // the Essential set is unpacked and installed; none reaches dpkg before
    // all of them passed.
    std::thread::scope(|s| {
        let mut measuring =
            Some(s.spawn(|| measure(&rest, (opts.jobs / 2).max(1), opts.room.clone())));
        let mut measured = || match measuring.take() {
            Some(h) => h.join().expect("measuring does not panic").map(|_| ()),
            None => Ok(()),
        };
        install_measured(root, pkgs, opts, &mut measured)
    })
}

fn install_measured(
    root: &Path,
    pkgs: &[PackageFile],
    opts: &InstallOptions,
    measured: &mut dyn FnMut() -> Result<(), RootfsError>,
) -> Result<(), RootfsError> {
    let essential: Vec<&PackageFile> = pkgs.iter().filter(|p| p.essential_phase).collect();
    let rest: Vec<&PackageFile> = pkgs.iter().filter(|p| !p.essential_phase).collect();
    let cached = opts
        .essential_cache
        .filter(|c| !essential.is_empty() && c.join(ESSENTIAL_TREE).is_dir());
    if let Some(c) = cached {
        opts.reporter.step(
            Stage::Unpack,
            &format!(
                "{} Essential packages: their installed tree from the cache ({})",
                essential.len(),
                c.display()
            ),
        );
        copy_tree(&c.join(ESSENTIAL_TREE), root)?;
    } else {
        opts.reporter.step(
            Stage::Unpack,
            &format!("{} Essential packages", essential.len()),
        );
        extract_natively(root, &essential, opts.jobs, opts.room.clone())?;
    }
    // The Essential packages are unpacked: from here on every path in the
    // root is opened inside it (their links resolve as in a chroot).
    let r = Root::open(root).map_err(|e| RootfsError::io(&root.display().to_string(), e))?;
    if cached.is_none() {
        prepare_dpkg(&r, opts.arch)?;
    }
    // The .debs are handed to the root's dpkg from inside the root.
    let debdir = "var/cache/kiln-debs";
    // A fresh, real directory: whatever a package put there goes first.
    match r.remove_tree(debdir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(RootfsError::io(debdir, e))
        }
        _ => {}
    }
    r.create_dir_all(debdir, 0o755)
        .map_err(|e| RootfsError::io(debdir, e))?;
    let mut inside: HashMap<&str, String> = HashMap::new();
    for p in pkgs {
        let file = format!(
            "{}_{}_{}.deb",
            p.name,
            p.version.replace(':', "%3a"),
            p.arch
        );
        let dest = format!("{debdir}/{file}");
        r.copy_in(&p.deb, &dest, 0o644)
            .map_err(|e| RootfsError::io(&dest, e))?;
        inside.insert(p.name.as_str(), format!("/var/cache/kiln-debs/{file}"));
    }
    let env = script_env(opts.epoch);
    let store = cached.is_none() && !essential.is_empty();
    let essential = if cached.is_some() {
        Vec::new()
    } else {
        essential
    };
    for (label, set) in [("Essential", essential), ("remaining", rest)] {
        if label == "remaining" {
            measured()?;
            if let (Some(c), true) = (opts.essential_cache, store) {
                // Best effort: a cache that cannot be written costs the
                // next build the time, nothing else.
                if let Err(e) = store_tree(root, debdir, c) {
                    opts.reporter.warn(&format!(
                        "the tree after the Essential phase was not cached in {}: {e}",
                        c.display()
                    ));
                }
            }
        }
        if set.is_empty() {
            continue;
        }
        let order = pre_depends_order(&set)?;
        opts.reporter.step(
            Stage::Install,
            &format!("{} {label} packages with dpkg", set.len()),
        );
        let mut argv: Vec<&str> = vec![
            "dpkg",
            "--install",
            "--force-depends",
            "--force-unsafe-io",
            "--force-confdef",
            "--force-confold",
        ];
        let mut seen = HashSet::new();
        for i in order {
            if seen.insert(i) {
                argv.push(inside[set[i].name.as_str()].as_str());
            }
        }
        let status = run_in_root(root, &argv, &env, opts.log, opts.cancel)?;
        if !status.success() {
            return Err(script_failure(opts.log, status.code()));
        }
    }
    // Anything left half-configured is a failure too.
    let status = run_in_root(
        root,
        &["dpkg", "--configure", "--pending", "--force-unsafe-io"],
        &env,
        opts.log,
        opts.cancel,
    )?;
    if !status.success() {
        return Err(script_failure(opts.log, status.code()));
    }
    r.remove_tree(debdir)
        .map_err(|e| RootfsError::io(debdir, e))?;
    let _ = r.remove_file("usr/sbin/policy-rc.d");
    Ok(())
}

/// The installed tree in an Essential-phase cache entry.
const ESSENTIAL_TREE: &str = "root";

/// `cp -a SRC/. DEST/`: every file with its mode, owner, times, hard links
/// and extended attributes, links copied as links (never followed).
fn copy_tree(src: &Path, dest: &Path) -> Result<(), RootfsError> {
    let out = std::process::Command::new("cp")
        .args(["-a", "--reflink=auto", "--no-target-directory"])
        .arg(src)
        .arg(dest)
        .output()
        .map_err(|e| RootfsError::io("cp", e))?;
    if !out.status.success() {
        // Its first complaint (a full disk repeats one per file).
        let text = String::from_utf8_lossy(&out.stderr)
            .lines()
            .next()
            .unwrap_or("cp failed")
            .to_string();
        // A full disk stays a full disk (its hint), not a copying error.
        let source = if text.contains("No space left on device") {
            std::io::Error::from_raw_os_error(28)
        } else {
            std::io::Error::other(text.clone())
        };
        return Err(RootfsError::io(
            &format!("copying {} to {} ({text})", src.display(), dest.display()),
            source,
        ));
    }
    Ok(())
}

/// Keeps the tree in `root` (without the `.deb`s in `debdir`) as the cache
/// entry `entry`: copied beside it under a private name and renamed into
/// place, so a reader sees a whole entry or none.
fn store_tree(root: &Path, debdir: &str, entry: &Path) -> Result<(), RootfsError> {
    use std::os::unix::fs::DirBuilderExt;
    let io = |what: &Path| {
        let what = what.display().to_string();
        move |e| RootfsError::io(&what, e)
    };
    let parent = entry.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .map_err(io(parent))?;
    let tmp = parent.join(format!(
        ".{}.{}",
        entry
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("entry"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(io(&tmp))?;
    let done = (|| {
        let tree = tmp.join(ESSENTIAL_TREE);
        copy_tree(root, &tree)?;
        Root::open(&tree)
            .and_then(|r| r.remove_tree(debdir))
            .map_err(io(&tree))?;
        match std::fs::rename(&tmp, entry) {
            Ok(()) => Ok(()),
            // Another build kept the same tree first.
            Err(_) if entry.join(ESSENTIAL_TREE).is_dir() => Ok(()),
            Err(e) => Err(io(entry)(e)),
        }
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    done
}

fn script_failure(log: &Path, code: Option<i32>) -> RootfsError {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let (package, script) = dpkg_failure(&text);
    let lines: Vec<&str> = text.lines().collect();
    // Show the failing package's own output: from where dpkg started on it
    // to its error, else the end of the log.
    let excerpt = package.as_deref().and_then(|p| {
        let start = lines.iter().rposition(|l| {
            l.starts_with(&format!("Setting up {p} "))
                || l.starts_with(&format!("Unpacking {p} "))
                || l.starts_with(&format!("Preparing to unpack .../{p}_"))
        })?;
        let end = lines[start..]
            .iter()
            .position(|l| l.contains("subprocess returned error exit status"))
            .map(|i| start + i + 1)
            .unwrap_or(lines.len());
        Some(
            lines[start..end]
                .iter()
                .rev()
                .take(40)
                .rev()
                .copied()
                .collect::<Vec<_>>()
                .join("\n"),
        )
    });
    let tail = excerpt.unwrap_or_else(|| {
        lines
            .iter()
            .rev()
            .take(25)
            .rev()
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    });
    RootfsError::Dpkg {
        package,
        script,
        code,
        tail,
        log: log.to_path_buf(),
    }
}

/// The empty dpkg database, its architecture and the guards a build needs.
/// Every path is opened inside the root: a link an Essential package
/// planted at `var/lib/dpkg/status`, `usr/sbin/policy-rc.d` or `tmp` is
/// replaced (files written by Kiln, /tmp made a real directory), never
/// written or chmod-ed through.
pub fn prepare_dpkg(r: &Root, arch: &str) -> Result<(), RootfsError> {
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
        "var/lib/dpkg/alternatives",
        "etc/apt/apt.conf.d",
        "usr/sbin",
    ] {
        r.create_dir_all(d, 0o755)
            .map_err(|e| RootfsError::io(d, e))?;
    }
    for t in ["tmp", "var/tmp"] {
        r.ensure_dir(t, 0o1777).map_err(|e| RootfsError::io(t, e))?;
    }
    r.write("var/lib/dpkg/status", b"", 0o644)
        .map_err(|e| RootfsError::io("var/lib/dpkg/status", e))?;
    r.write("var/lib/dpkg/arch", format!("{arch}\n").as_bytes(), 0o644)
        .map_err(|e| RootfsError::io("var/lib/dpkg/arch", e))?;
    // No service may start inside a root that is being built.
    r.write("usr/sbin/policy-rc.d", b"#!/bin/sh\nexit 101\n", 0o755)
        .map_err(|e| RootfsError::io("usr/sbin/policy-rc.d", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_dpkg_replaces_planted_links_and_leaves_the_host_alone() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let victim = d.path().join("victim");
        std::fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
        std::fs::create_dir_all(root.join("usr/sbin")).unwrap();
        std::fs::create_dir_all(victim.join("dir")).unwrap();
        std::fs::write(victim.join("status"), b"host status\n").unwrap();
        std::fs::write(victim.join("tool"), b"host tool\n").unwrap();
        std::fs::set_permissions(victim.join("tool"), PermissionsExt::from_mode(0o600)).unwrap();
        std::fs::set_permissions(victim.join("dir"), PermissionsExt::from_mode(0o750)).unwrap();
        symlink(victim.join("status"), root.join("var/lib/dpkg/status")).unwrap();
        symlink(victim.join("status"), root.join("var/lib/dpkg/arch")).unwrap();
        symlink(victim.join("tool"), root.join("usr/sbin/policy-rc.d")).unwrap();
        symlink(victim.join("dir"), root.join("tmp")).unwrap();
        symlink("../../victim/dir", root.join("var/tmp")).unwrap();
        prepare_dpkg(&Root::open(&root).unwrap(), "amd64").unwrap();
        assert_eq!(
            std::fs::read(victim.join("status")).unwrap(),
            b"host status\n"
        );
        assert_eq!(std::fs::read(victim.join("tool")).unwrap(), b"host tool\n");
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&victim.join("tool")), 0o600);
        assert_eq!(mode(&victim.join("dir")), 0o750);
        assert_eq!(std::fs::read_dir(victim.join("dir")).unwrap().count(), 0);
        // The root got its own files and directories instead.
        assert_eq!(
            std::fs::read(root.join("var/lib/dpkg/status")).unwrap(),
            b""
        );
        assert_eq!(
            std::fs::read(root.join("var/lib/dpkg/arch")).unwrap(),
            b"amd64\n"
        );
        assert_eq!(mode(&root.join("usr/sbin/policy-rc.d")), 0o755);
        for t in ["tmp", "var/tmp"] {
            assert!(std::fs::symlink_metadata(root.join(t)).unwrap().is_dir());
            assert_eq!(mode(&root.join(t)), 0o1777);
        }
    }

    #[test]
    fn finds_the_failing_package_and_script() {
        let log = "Setting up foo (1.0) ...\nboom\ndpkg: error processing package foo (--configure):\n installed foo package post-installation script subprocess returned error exit status 1\nErrors were encountered while processing:\n foo\n";
        assert_eq!(
            dpkg_failure(log),
            (Some("foo".into()), Some("postinst".into()))
        );
        let log = "dpkg: error processing archive /var/cache/kiln-debs/bar_1_all.deb (--install):\n new bar package pre-installation script subprocess returned error exit status 3\n";
        assert_eq!(
            dpkg_failure(log),
            (Some("bar".into()), Some("preinst".into()))
        );
    }
}

//! Distroless roots: the packages' payload only, no maintainer scripts, no
//! shell or package manager unless a package brings one, and the few files a
//! package manager would otherwise have generated (users, CA bundle,
//! `ld.so.cache`), plus per-package dpkg status files for scanners.

use std::path::Path;
use std::sync::Arc;

use crate::extract::{
    member_components, set_owner, stage as stage_package, unpack_filtered, Ownership, Room,
};
use crate::inroot::{Kind, Root};
use crate::install::PackageFile;
use crate::{in_parallel, jobs, RootfsError};

/// What to leave out of the payload.
#[derive(Clone, Debug)]
pub struct Trim {
    /// Locale names to keep under /usr/share/locale (e.g. "en", "de").
    pub keep_locales: Vec<String>,
    /// The root is for the host's architecture, so the host's ldconfig can
    /// build its `ld.so.cache` (other architectures rely on the loader's
    /// built-in search paths).
    pub host_arch: bool,
}

/// Whether a payload path is dropped: documentation (except copyright
/// files, which carry the licences), manual and info pages, lintian and bug
/// metadata, and translations not asked for.
pub fn dropped(path: &str, trim: &Trim) -> bool {
    let p = path.trim_start_matches("./").trim_start_matches('/');
    if let Some(rest) = p.strip_prefix("usr/share/doc/") {
        let mut parts = rest.split('/');
        let _pkg = parts.next();
        return !matches!(parts.next(), Some("copyright") | Some("") | None);
    }
    for prefix in [
        "usr/share/man/",
        "usr/share/info/",
        "usr/share/lintian/",
        "usr/share/bug/",
        "usr/share/doc-base/",
    ] {
        if p.starts_with(prefix) || p == prefix.trim_end_matches('/') {
            return true;
        }
    }
    if let Some(rest) = p.strip_prefix("usr/share/locale/") {
        let lang = rest.split('/').next().unwrap_or("");
        // Files such as locale.alias sit beside the language directories.
        if !lang.is_empty()
            && !lang.contains('.')
            && !trim.keep_locales.iter().any(|k| {
                lang == k
                    || lang.starts_with(&format!("{k}_"))
                    || lang.starts_with(&format!("{k}@"))
            })
        {
            return true;
        }
    }
    false
}

/// A user of the image's /etc/passwd.
#[derive(Clone, Debug)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// Builds a distroless root from `pkgs`. `stage` is a scratch directory on
/// the root's file system, outside the root, where the packages' files are
/// written before they are placed; `room` is the build area's payload room.
pub fn assemble(
    root: &Path,
    stage: &Path,
    pkgs: &[PackageFile],
    trim: &Trim,
    users: &[Account],
    room: Option<Arc<Room>>,
) -> Result<Ownership, RootfsError> {
    let io = |w: &str, e: std::io::Error| RootfsError::io(w, e);
    let mut owners = Ownership::new();
    // Every path below is opened inside the root: links the packages plant
    // are resolved as in a chroot, or replaced (see crate::inroot).
    let r = Root::open(root).map_err(|e| io(&root.display().to_string(), e))?;
    // The merged-/usr layout base-files would create, so paths such as the
    // dynamic loader's /lib64/ld-linux-x86-64.so.2 resolve.
    r.create_dir_all("usr/bin", 0o755)
        .map_err(|e| io("usr/bin", e))?;
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        r.create_dir_all(target, 0o755).map_err(|e| io(target, e))?;
        r.symlink(target, link).map_err(|e| io(link, e))?;
    }
    let status_d = "var/lib/dpkg/status.d";
    r.create_dir_all(status_d, 0o755)
        .map_err(|e| io(status_d, e))?;
    // Decompress and write in parallel (streamed, counted against each
    // package's limits), place in order: later packages win on shared
    // paths, deterministically, and placing is only renames.
    let keep = |path: &str| !dropped(path, trim);
    let staged =
        in_parallel(pkgs, jobs(), |i, p| {
            let deb = p.open()?;
            let control = deb.control_files().map_err(|e| p.bad(e.to_string()))?;
            let data = deb.data().map_err(|e| p.bad(e.to_string()))?;
            let limits = p.limits().in_room(room.clone());
            let files = stage_package(data, &stage.join(format!("{i:04}")), &keep, &limits)
                .map_err(|e| RootfsError::Extract {
                    package: p.name.clone(),
                    source: e,
                })?;
            Ok((files, control))
        })?;
    for (p, (files, control)) in pkgs.iter().zip(staged) {
        files.apply(root).map_err(|e| RootfsError::Extract {
            package: p.name.clone(),
            source: e,
        })?;
        files.record_owners(&mut owners);
        // The control stanza (and md5sums) where scanners look for them.
        for (name, body, _) in control {
            let dest = match name.as_str() {
                "control" => format!("{status_d}/{}", p.name),
                "md5sums" => format!("{status_d}/{}.md5sums", p.name),
                _ => continue,
            };
            let mut text = String::from_utf8_lossy(&body).into_owned();
            if name == "control" && !text.contains("\nStatus:") {
                // Scanners read installed state from the Status field.
                text = text.replacen('\n', "\nStatus: install ok installed\n", 1);
            }
            // A link the package planted there is replaced.
            r.write(&dest, text.as_bytes(), 0o644)
                .map_err(|e| io(&dest, e))?;
        }
    }
    // Kiln's own directory of numbered files, emptied by the renames.
    let _ = std::fs::remove_dir_all(stage);
    // What Kiln writes below replaces what a package put there, and is root's.
    owners.retain(|rel, _| {
        !rel.starts_with("var/lib/dpkg/status.d/")
            && !matches!(
                rel.as_str(),
                "etc/passwd"
                    | "etc/group"
                    | "etc/ssl/certs/ca-certificates.crt"
                    | "etc/ld.so.cache"
                    | "etc/ld.so.conf"
            )
    });
    accounts(&r, users, &mut owners)?;
    ca_bundle(&r)?;
    // Real directories with these modes: a link a package put there is
    // replaced, not followed.
    for (d, mode) in [("tmp", 0o1777), ("root", 0o700), ("var/tmp", 0o1777)] {
        r.ensure_dir(d, mode).map_err(|e| io(d, e))?;
    }
    r.create_dir_all("home", 0o755).map_err(|e| io("home", e))?;
    if trim.host_arch {
        ld_so_cache(&r)?;
    }
    // Drop the merged-/usr directories nothing was installed into.
    for (link, target) in [("lib64", "usr/lib64")] {
        if r.read_dir(target).is_ok_and(|d| d.is_empty()) {
            let _ = r.remove_dir(target);
            let _ = r.remove_file(link);
        }
    }
    Ok(owners)
}

/// Directory trees that, stacked as OCI layers in order, give the same tree
/// as [`assemble`]: a skeleton (merged-/usr links, /tmp, /root), one tree per
/// package (its trimmed payload, paths already canonical under /usr), and
/// the generated files (accounts, status files, CA bundle, ld.so.cache).
/// Images that share packages share those layers byte for byte.
pub fn layer_trees(
    area: &Path,
    root: &Path,
    pkgs: &[PackageFile],
    trim: &Trim,
) -> Result<Vec<std::path::PathBuf>, RootfsError> {
    let io = |w: &str, e: std::io::Error| RootfsError::io(w, e);
    // The assembled root is read inside it; the layer directories are Kiln's own.
    let r = Root::open(root).map_err(|e| io(&root.display().to_string(), e))?;
    let mut links: Vec<(&str, std::path::PathBuf)> = Vec::new();
    for l in ["bin", "sbin", "lib", "lib64"] {
        if r.metadata(l).is_ok_and(|m| m.is_symlink()) {
            let target = r.read_link(l).map_err(|e| io(l, e))?;
            // Kiln made these links (usr/bin, …); anything else is refused.
            if target.is_absolute()
                || target
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(RootfsError::Customize(format!(
                    "/{l} links to {} in the assembled root",
                    target.display()
                )));
            }
            links.push((l, target));
        }
    }
    let mut out = Vec::new();
    // Skeleton.
    let skel = area.join("layer-000-skeleton");
    std::fs::create_dir_all(&skel).map_err(|e| io("layer skeleton", e))?;
    for (l, target) in &links {
        std::os::unix::fs::symlink(target, skel.join(l)).map_err(|e| io(l, e))?;
        if r.is_dir(target) {
            copy_dir_meta(&r, target, &skel.join(target))?;
        }
    }
    for d in ["usr", "tmp", "var/tmp", "root"] {
        copy_dir_meta(&r, Path::new(d), &skel.join(d))?;
    }
    out.push(skel);
    // One tree per package, unpacked through the merged-/usr links, which
    // are then dropped; the trees are independent, so unpacked in parallel.
    let trees = in_parallel(pkgs, jobs(), |i, p| {
        let dir = area.join(format!("layer-{:03}-{}", i + 1, p.name));
        std::fs::create_dir_all(&dir).map_err(|e| io(&p.name, e))?;
        for (l, target) in &links {
            std::fs::create_dir_all(dir.join(target)).map_err(|e| io(l, e))?;
            std::os::unix::fs::symlink(target, dir.join(l)).map_err(|e| io(l, e))?;
        }
        let deb = p.open()?;
        let data = deb.data().map_err(|e| p.bad(e.to_string()))?;
        unpack_filtered(data, &dir, &|path| !dropped(path, trim), &p.limits()).map_err(|e| {
            RootfsError::Extract {
                package: p.name.clone(),
                source: e,
            }
        })?;
        for (l, target) in &links {
            std::fs::remove_file(dir.join(l)).map_err(|e| io(l, e))?;
            // Drop the link targets again where the package put nothing.
            let _ = std::fs::remove_dir(dir.join(target));
        }
        Ok(dir)
    })?;
    out.extend(trees);
    // What no package ships.
    let gen = area.join(format!("layer-{:03}-generated", pkgs.len() + 1));
    for rel in [
        "etc/passwd",
        "etc/group",
        "var/lib/dpkg/status.d",
        "etc/ssl/certs/ca-certificates.crt",
        "etc/ld.so.cache",
        "etc/ld.so.conf",
        "home",
    ] {
        if r.metadata(rel).is_ok() {
            copy_tree_preserving(&r, Path::new(rel), &gen.join(rel))?;
        }
    }
    out.push(gen);
    Ok(out)
}

/// Makes the host directory `dst` with the mode and owner of `src` in the
/// root (links followed inside the root).
fn copy_dir_meta(root: &Root, src: &Path, dst: &Path) -> Result<(), RootfsError> {
    use std::os::unix::fs::PermissionsExt;
    let m = root
        .stat(src)
        .map_err(|e| RootfsError::io(&src.display().to_string(), e))?;
    std::fs::create_dir_all(dst).map_err(|e| RootfsError::io(&dst.display().to_string(), e))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(m.mode))
        .map_err(|e| RootfsError::io(&dst.display().to_string(), e))?;
    let _ = std::os::unix::fs::chown(dst, Some(m.uid), Some(m.gid));
    Ok(())
}

/// Copies the file or directory tree `src` of the root to the host path
/// `dst` with modes and owners; links are copied as links, never followed.
fn copy_tree_preserving(root: &Root, src: &Path, dst: &Path) -> Result<(), RootfsError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |e: std::io::Error| RootfsError::io(&src.display().to_string(), e);
    let m = root.metadata(src).map_err(err)?;
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    match m.kind {
        Kind::Dir => {
            copy_dir_meta(root, src, dst)?;
            for (name, _) in root.read_dir(src).map_err(err)? {
                copy_tree_preserving(root, &src.join(&name), &dst.join(&name))?;
            }
        }
        Kind::Symlink => {
            std::os::unix::fs::symlink(root.read_link(src).map_err(err)?, dst).map_err(err)?;
        }
        Kind::File => {
            std::fs::write(dst, root.read(src).map_err(err)?).map_err(err)?;
            std::fs::set_permissions(dst, std::fs::Permissions::from_mode(m.mode)).map_err(err)?;
            let _ = std::os::unix::fs::chown(dst, Some(m.uid), Some(m.gid));
        }
        // Devices, fifos and sockets are not among the generated files.
        Kind::Other => {}
    }
    Ok(())
}

fn accounts(root: &Root, users: &[Account], owners: &mut Ownership) -> Result<(), RootfsError> {
    let io = |w: &str, e: std::io::Error| RootfsError::io(w, e);
    let mut all = vec![
        Account {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: "/root".into(),
        },
        Account {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
            home: "/nonexistent".into(),
        },
        Account {
            name: "nonroot".into(),
            uid: 65532,
            gid: 65532,
            home: "/home/nonroot".into(),
        },
    ];
    for u in users {
        if all.iter().any(|a| a.name == u.name || a.uid == u.uid) {
            return Err(RootfsError::Customize(format!(
                "user {} (uid {}) clashes with a built-in account",
                u.name, u.uid
            )));
        }
        all.push(u.clone());
    }
    let mut passwd = String::new();
    let mut group = String::new();
    for a in &all {
        passwd.push_str(&format!(
            "{}:x:{}:{}:{}:{}:/sbin/nologin\n",
            a.name, a.uid, a.gid, a.name, a.home
        ));
        group.push_str(&format!(
            "{}:x:{}:\n",
            if a.name == "nobody" {
                "nogroup"
            } else {
                &a.name
            },
            a.gid
        ));
    }
    root.create_dir_all("etc", 0o755)
        .map_err(|e| io("etc", e))?;
    root.write("etc/passwd", passwd.as_bytes(), 0o644)
        .map_err(|e| io("etc/passwd", e))?;
    root.write("etc/group", group.as_bytes(), 0o644)
        .map_err(|e| io("etc/group", e))?;
    for a in all.iter().filter(|a| a.home.starts_with("/home/")) {
        let h = a.home.trim_start_matches('/');
        if h.split('/').any(|c| c == "..") {
            return Err(RootfsError::Customize(format!(
                "user {}: home {} leaves /home",
                a.name, a.home
            )));
        }
        root.create_dir_all(h, 0o755).map_err(|e| io(&a.home, e))?;
        // The directory itself (a link there is changed, not its target).
        let _ = root.set_owner(h, a.uid, a.gid);
        set_owner(owners, h, a.uid, a.gid);
    }
    Ok(())
}

/// The bundle `update-ca-certificates` would write: every certificate the
/// ca-certificates package ships, in name order.
/// Certificates and directories are read inside the root: a link that
/// points out of it (or nowhere in it) is skipped, so no host file can end
/// up in the bundle.
fn ca_bundle(root: &Root) -> Result<(), RootfsError> {
    let dir = std::path::PathBuf::from("usr/share/ca-certificates");
    if !root.is_dir(&dir) {
        return Ok(());
    }
    let mut certs = Vec::new();
    fn walk(
        root: &Root,
        d: &Path,
        depth: usize,
        out: &mut Vec<std::path::PathBuf>,
    ) -> std::io::Result<()> {
        for (name, _) in root.read_dir(d)? {
            let p = d.join(name);
            match root.stat(&p) {
                // Links to directories may loop: bounded like find(1) would not be.
                Ok(m) if m.is_dir() && depth < 16 => walk(root, &p, depth + 1, out)?,
                Ok(m) if m.is_file() && p.extension().is_some_and(|x| x == "crt") => out.push(p),
                _ => {}
            }
        }
        Ok(())
    }
    walk(root, &dir, 0, &mut certs).map_err(|e| RootfsError::io("usr/share/ca-certificates", e))?;
    certs.sort();
    let mut bundle = Vec::new();
    for c in certs {
        let mut b = root
            .read(&c)
            .map_err(|e| RootfsError::io(&c.display().to_string(), e))?;
        if !b.ends_with(b"\n") {
            b.push(b'\n');
        }
        bundle.extend(b);
    }
    root.create_dir_all("etc/ssl/certs", 0o755)
        .map_err(|e| RootfsError::io("etc/ssl/certs", e))?;
    root.write("etc/ssl/certs/ca-certificates.crt", &bundle, 0o644)
        .map_err(|e| RootfsError::io("etc/ssl/certs/ca-certificates.crt", e))
}

/// `ld.so.cache` made by the host's ldconfig for the root (no chroot, no
/// scripts). Skipped, with the loader's built-in paths still working, when
/// the root holds no shared libraries of the host's architecture.
fn ld_so_cache(r: &Root) -> Result<(), RootfsError> {
    let root = r.path();
    if !r.exists("etc/ld.so.conf") {
        r.write(
            "etc/ld.so.conf",
            b"include /etc/ld.so.conf.d/*.conf\n",
            0o644,
        )
        .map_err(|e| RootfsError::io("etc/ld.so.conf", e))?;
    }
    // ldconfig makes /var/cache/ldconfig for its aux cache where /var/cache
    // exists (base-files ships it): a build-time cache, not image content.
    let had_cache_dir = r.exists("var/cache/ldconfig");
    let out = std::process::Command::new("ldconfig")
        .arg("-X")
        .arg("-r")
        .arg(root)
        .output()
        .map_err(|e| RootfsError::io("running ldconfig -r", e))?;
    if !out.status.success() {
        return Err(RootfsError::Customize(format!(
            "ldconfig -r failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let _ = r.remove_file("var/cache/ldconfig/aux-cache");
    if !had_cache_dir {
        let _ = r.remove_dir("var/cache/ldconfig");
    }
    Ok(())
}

/// Checks a member name is sane (used by tests and callers filtering paths).
pub fn normalized(path: &str) -> Option<String> {
    member_components(path)
        .ok()
        .map(|c| format!("/{}", c.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_docs_but_keeps_copyright_and_chosen_locales() {
        let t = Trim {
            keep_locales: vec!["de".into()],
            host_arch: true,
        };
        assert!(dropped("./usr/share/doc/python3/changelog.gz", &t));
        assert!(!dropped("./usr/share/doc/python3/copyright", &t));
        assert!(!dropped("./usr/share/doc/python3/", &t));
        assert!(dropped("./usr/share/man/man1/python3.1.gz", &t));
        assert!(dropped("/usr/share/man", &t));
        assert!(dropped("./usr/share/locale/fr/LC_MESSAGES/x.mo", &t));
        assert!(!dropped("./usr/share/locale/de/LC_MESSAGES/x.mo", &t));
        assert!(!dropped("./usr/share/locale/de_AT/LC_MESSAGES/x.mo", &t));
        assert!(!dropped("./usr/share/locale/", &t));
        assert!(dropped("/usr/share/locale/fr", &t));
        assert!(!dropped("/usr/share/locale/locale.alias", &t));
        assert!(!dropped("./usr/bin/python3", &t));
    }
}

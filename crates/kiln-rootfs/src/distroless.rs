//! Distroless roots: the packages' payload only, no maintainer scripts, no
//! shell or package manager unless a package brings one, and the few files a
//! package manager would otherwise have generated (users, CA bundle,
//! `ld.so.cache`), plus per-package dpkg status files for scanners.

use std::path::Path;

use crate::extract::{member_components, unpack_filtered};
use crate::install::PackageFile;
use crate::RootfsError;

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

/// Builds a distroless root from `pkgs`.
pub fn assemble(
    root: &Path,
    pkgs: &[PackageFile],
    trim: &Trim,
    users: &[Account],
) -> Result<(), RootfsError> {
    let io = |w: &str, e: std::io::Error| RootfsError::io(w, e);
    // The merged-/usr layout base-files would create, so paths such as the
    // dynamic loader's /lib64/ld-linux-x86-64.so.2 resolve.
    std::fs::create_dir_all(root.join("usr/bin")).map_err(|e| io("usr/bin", e))?;
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        std::fs::create_dir_all(root.join(target)).map_err(|e| io(target, e))?;
        std::os::unix::fs::symlink(target, root.join(link)).map_err(|e| io(link, e))?;
    }
    let status_d = root.join("var/lib/dpkg/status.d");
    std::fs::create_dir_all(&status_d).map_err(|e| io("var/lib/dpkg/status.d", e))?;
    // Decompress in parallel, unpack in order: later packages win on shared
    // paths, deterministically.
    let decoded = decode_all(pkgs)?;
    for (p, (data, control)) in pkgs.iter().zip(decoded) {
        unpack_filtered(&mut tar::Archive::new(&data[..]), root, &|path| {
            !dropped(path, trim)
        })
        .map_err(|e| RootfsError::Extract {
            package: p.name.clone(),
            source: e,
        })?;
        // The control stanza (and md5sums) where scanners look for them.
        for (name, body, _) in control {
            let dest = match name.as_str() {
                "control" => status_d.join(&p.name),
                "md5sums" => status_d.join(format!("{}.md5sums", p.name)),
                _ => continue,
            };
            let mut text = String::from_utf8_lossy(&body).into_owned();
            if name == "control" && !text.contains("\nStatus:") {
                // Scanners read installed state from the Status field.
                text = text.replacen('\n', "\nStatus: install ok installed\n", 1);
            }
            std::fs::write(&dest, text).map_err(|e| io(&dest.display().to_string(), e))?;
        }
    }
    accounts(root, users)?;
    ca_bundle(root)?;
    for d in ["tmp", "root", "home", "var/tmp"] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| io(d, e))?;
    }
    use std::os::unix::fs::PermissionsExt;
    for t in ["tmp", "var/tmp"] {
        std::fs::set_permissions(root.join(t), std::fs::Permissions::from_mode(0o1777))
            .map_err(|e| io(t, e))?;
    }
    std::fs::set_permissions(root.join("root"), std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io("root", e))?;
    if trim.host_arch {
        ld_so_cache(root)?;
    }
    // Drop the merged-/usr directories nothing was installed into.
    for (link, target) in [("lib64", "usr/lib64")] {
        if std::fs::read_dir(root.join(target))
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
        {
            let _ = std::fs::remove_dir(root.join(target));
            let _ = std::fs::remove_file(root.join(link));
        }
    }
    Ok(())
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
    let links: Vec<&str> = ["bin", "sbin", "lib", "lib64"]
        .into_iter()
        .filter(|l| {
            std::fs::symlink_metadata(root.join(l)).is_ok_and(|m| m.file_type().is_symlink())
        })
        .collect();
    let mut out = Vec::new();
    // Skeleton.
    let skel = area.join("layer-000-skeleton");
    std::fs::create_dir_all(&skel).map_err(|e| io("layer skeleton", e))?;
    for l in &links {
        let target = std::fs::read_link(root.join(l)).map_err(|e| io(l, e))?;
        std::os::unix::fs::symlink(&target, skel.join(l)).map_err(|e| io(l, e))?;
        if root.join(&target).is_dir() {
            copy_dir_meta(&root.join(&target), &skel.join(&target))?;
        }
    }
    for d in ["usr", "tmp", "var/tmp", "root"] {
        copy_dir_meta(&root.join(d), &skel.join(d))?;
    }
    out.push(skel);
    // One tree per package, unpacked through the merged-/usr links, which are then dropped.
    let decoded = decode_all(pkgs)?;
    for (i, (p, (data, _))) in pkgs.iter().zip(decoded).enumerate() {
        let dir = area.join(format!("layer-{:03}-{}", i + 1, p.name));
        std::fs::create_dir_all(&dir).map_err(|e| io(&p.name, e))?;
        for l in &links {
            let target = std::fs::read_link(root.join(l)).map_err(|e| io(l, e))?;
            std::fs::create_dir_all(dir.join(&target)).map_err(|e| io(l, e))?;
            std::os::unix::fs::symlink(&target, dir.join(l)).map_err(|e| io(l, e))?;
        }
        unpack_filtered(&mut tar::Archive::new(&data[..]), &dir, &|path| {
            !dropped(path, trim)
        })
        .map_err(|e| RootfsError::Extract {
            package: p.name.clone(),
            source: e,
        })?;
        for l in &links {
            std::fs::remove_file(dir.join(l)).map_err(|e| io(l, e))?;
            // Drop the link targets again where the package put nothing.
            let _ = std::fs::remove_dir(
                dir.join(std::fs::read_link(root.join(l)).map_err(|e| io(l, e))?),
            );
        }
        out.push(dir);
    }
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
        let src = root.join(rel);
        if std::fs::symlink_metadata(&src).is_ok() {
            copy_tree_preserving(&src, &gen.join(rel))?;
        }
    }
    out.push(gen);
    Ok(out)
}

fn copy_dir_meta(src: &Path, dst: &Path) -> Result<(), RootfsError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(src).map_err(|e| RootfsError::io(&src.display().to_string(), e))?;
    std::fs::create_dir_all(dst).map_err(|e| RootfsError::io(&dst.display().to_string(), e))?;
    std::fs::set_permissions(dst, m.permissions())
        .map_err(|e| RootfsError::io(&dst.display().to_string(), e))?;
    let _ = std::os::unix::fs::chown(dst, Some(m.uid()), Some(m.gid()));
    Ok(())
}

/// Copies a file or directory tree with modes and owners.
fn copy_tree_preserving(src: &Path, dst: &Path) -> Result<(), RootfsError> {
    use std::os::unix::fs::MetadataExt;
    let err = |e: std::io::Error| RootfsError::io(&src.display().to_string(), e);
    let m = std::fs::symlink_metadata(src).map_err(err)?;
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    if m.is_dir() {
        copy_dir_meta(src, dst)?;
        for e in std::fs::read_dir(src).map_err(err)? {
            let e = e.map_err(err)?;
            copy_tree_preserving(&e.path(), &dst.join(e.file_name()))?;
        }
    } else if m.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src).map_err(err)?, dst).map_err(err)?;
    } else {
        std::fs::copy(src, dst).map_err(err)?;
        let _ = std::os::unix::fs::chown(dst, Some(m.uid()), Some(m.gid()));
    }
    Ok(())
}

type Decoded = (Vec<u8>, Vec<(String, Vec<u8>, u32)>);

/// Every package's uncompressed data tarball and control files, decoded on
/// all cores.
fn decode_all(pkgs: &[PackageFile]) -> Result<Vec<Decoded>, RootfsError> {
    use std::io::Read;
    let decode = |p: &PackageFile| -> Result<Decoded, RootfsError> {
        let bytes =
            std::fs::read(&p.deb).map_err(|e| RootfsError::io(&p.deb.display().to_string(), e))?;
        let bad = |m: String| RootfsError::BadDeb {
            package: p.name.clone(),
            message: m,
        };
        let deb = kiln_deb::debfile::DebFile::parse(bytes).map_err(|e| bad(e.to_string()))?;
        let mut data = Vec::new();
        deb.data_tar()
            .map_err(|e| bad(e.to_string()))?
            .into_inner()
            .read_to_end(&mut data)
            .map_err(|e| bad(e.to_string()))?;
        let control = deb.control_files().map_err(|e| bad(e.to_string()))?;
        Ok((data, control))
    };
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    // Largest first, so the big ones do not finish last on one core.
    let mut order: Vec<usize> = (0..pkgs.len()).collect();
    order.sort_by_key(|&i| {
        std::cmp::Reverse(
            std::fs::metadata(&pkgs[i].deb)
                .map(|m| m.len())
                .unwrap_or(0),
        )
    });
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<Result<Decoded, RootfsError>>>> =
        pkgs.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(&i) = order.get(k) else { return };
                let p = &pkgs[i];
                *slots[i].lock().unwrap() = Some(decode(p));
            });
        }
    });
    slots
        .into_iter()
        .map(|m| m.into_inner().unwrap().expect("every package decoded"))
        .collect()
}

fn accounts(root: &Path, users: &[Account]) -> Result<(), RootfsError> {
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
    std::fs::create_dir_all(root.join("etc")).map_err(|e| io("etc", e))?;
    std::fs::write(root.join("etc/passwd"), passwd).map_err(|e| io("etc/passwd", e))?;
    std::fs::write(root.join("etc/group"), group).map_err(|e| io("etc/group", e))?;
    for a in all.iter().filter(|a| a.home.starts_with("/home/")) {
        let h = root.join(a.home.trim_start_matches('/'));
        std::fs::create_dir_all(&h).map_err(|e| io(&a.home, e))?;
        let _ = std::os::unix::fs::chown(&h, Some(a.uid), Some(a.gid));
    }
    Ok(())
}

/// The bundle `update-ca-certificates` would write: every certificate the
/// ca-certificates package ships, in name order.
fn ca_bundle(root: &Path) -> Result<(), RootfsError> {
    let dir = root.join("usr/share/ca-certificates");
    if !dir.is_dir() {
        return Ok(());
    }
    let mut certs = Vec::new();
    fn walk(d: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
        for e in std::fs::read_dir(d)? {
            let p = e?.path();
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.extension().is_some_and(|x| x == "crt") {
                out.push(p);
            }
        }
        Ok(())
    }
    walk(&dir, &mut certs).map_err(|e| RootfsError::io("usr/share/ca-certificates", e))?;
    certs.sort();
    let mut bundle = Vec::new();
    for c in certs {
        let mut b = std::fs::read(&c).map_err(|e| RootfsError::io(&c.display().to_string(), e))?;
        if !b.ends_with(b"\n") {
            b.push(b'\n');
        }
        bundle.extend(b);
    }
    let out = root.join("etc/ssl/certs");
    std::fs::create_dir_all(&out).map_err(|e| RootfsError::io("etc/ssl/certs", e))?;
    std::fs::write(out.join("ca-certificates.crt"), bundle)
        .map_err(|e| RootfsError::io("etc/ssl/certs/ca-certificates.crt", e))
}

/// `ld.so.cache` made by the host's ldconfig for the root (no chroot, no
/// scripts). Skipped, with the loader's built-in paths still working, when
/// the root holds no shared libraries of the host's architecture.
fn ld_so_cache(root: &Path) -> Result<(), RootfsError> {
    let conf = root.join("etc/ld.so.conf");
    if !conf.exists() {
        std::fs::write(&conf, "include /etc/ld.so.conf.d/*.conf\n")
            .map_err(|e| RootfsError::io("etc/ld.so.conf", e))?;
    }
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
    let _ = std::fs::remove_file(root.join("var/cache/ldconfig/aux-cache"));
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

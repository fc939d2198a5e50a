//! Unpacking a package's data tarball into a root directory, safely.
//!
//! Paths are resolved the way the kernel would resolve them inside a chroot
//! of the root: `..` never climbs above it and symlinks (absolute or
//! relative) are followed relative to it. So no archive member can write
//! outside the root, whatever links earlier members or packages created.

use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unsafe path in package: {0}")]
    UnsafePath(String),
    #[error("too many levels of symbolic links resolving {0}")]
    SymlinkLoop(String),
    #[error("cannot replace directory {0} with a non-directory")]
    DirectoryInTheWay(String),
}

fn io(path: &str, source: std::io::Error) -> ExtractError {
    ExtractError::Io {
        path: path.to_string(),
        source,
    }
}

/// Normalizes an archive member name into components below the root.
/// Leading `./` and `/` are dropped; `..` is refused outright.
pub fn member_components(name: &str) -> Result<Vec<String>, ExtractError> {
    let mut out = Vec::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(ExtractError::UnsafePath(name.to_string()))
            }
        }
    }
    Ok(out)
}

/// Resolves `components` (all of them, following symlinks in every one)
/// to a host path inside `root`, as a chroot would.
pub fn resolve_in_root(
    root: &Path,
    components: &[String],
    follow_last: bool,
) -> Result<PathBuf, ExtractError> {
    let mut stack: Vec<String> = Vec::new();
    // Work list of components still to walk, in reverse order.
    let mut todo: Vec<String> = components.iter().rev().cloned().collect();
    let mut links = 0;
    let display = components.join("/");
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                stack.pop();
                continue;
            }
            _ => {}
        }
        let is_last = todo.is_empty();
        let mut host = root.to_path_buf();
        host.extend(&stack);
        host.push(&c);
        let meta = std::fs::symlink_metadata(&host);
        match meta {
            Ok(m) if m.file_type().is_symlink() && (!is_last || follow_last) => {
                links += 1;
                if links > 40 {
                    return Err(ExtractError::SymlinkLoop(display));
                }
                let target = std::fs::read_link(&host).map_err(|e| io(&display, e))?;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    stack.clear();
                }
                for part in target.split('/').rev() {
                    todo.push(part.to_string());
                }
            }
            _ => stack.push(c),
        }
    }
    let mut host = root.to_path_buf();
    host.extend(&stack);
    Ok(host)
}

/// Unpacks a data tarball into `root`. Returns the paths it installed, in
/// archive order, as dpkg lists them (`/.`, `/usr`, `/usr/bin/x`, …).
pub fn unpack<R: Read>(
    archive: &mut tar::Archive<R>,
    root: &Path,
) -> Result<Vec<String>, ExtractError> {
    unpack_filtered(archive, root, &|_| true)
}

/// Like [`unpack`], keeping only members for which `keep(path)` is true.
pub fn unpack_filtered<R: Read>(
    archive: &mut tar::Archive<R>,
    root: &Path,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Vec<String>, ExtractError> {
    let mut listed = Vec::new();
    let entries = archive.entries().map_err(|e| io("data.tar", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| io("data.tar", e))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let comps = member_components(&raw)?;
        if comps.is_empty() {
            listed.push("/.".to_string());
            continue;
        }
        let shown = format!("/{}", comps.join("/"));
        if !keep(&shown) {
            continue;
        }
        let parent = resolve_in_root(root, &comps[..comps.len() - 1], true)?;
        std::fs::create_dir_all(&parent).map_err(|e| io(&shown, e))?;
        let dest = parent.join(&comps[comps.len() - 1]);
        let header = entry.header().clone();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let existing = std::fs::symlink_metadata(&dest).ok();
        let kind = header.entry_type();
        match kind {
            tar::EntryType::Directory => {
                // An existing directory, or a symlink to one (merged /usr), stays.
                let is_dir = std::fs::metadata(&dest)
                    .map(|m| m.is_dir())
                    .unwrap_or(false);
                if !is_dir {
                    if existing.is_some() {
                        std::fs::remove_file(&dest).map_err(|e| io(&shown, e))?;
                    }
                    match std::fs::create_dir(&dest) {
                        Ok(()) => {
                            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))
                                .map_err(|e| io(&shown, e))?
                        }
                        // Another package being unpacked at the same time made it.
                        Err(e)
                            if e.kind() == std::io::ErrorKind::AlreadyExists && dest.is_dir() => {}
                        Err(e) => return Err(io(&shown, e)),
                    }
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if existing.as_ref().is_some_and(|m| m.is_dir()) {
                    return Err(ExtractError::DirectoryInTheWay(shown));
                }
                // Written beside and renamed over, as dpkg does with .dpkg-new.
                let tmp = parent.join(format!(
                    ".{}.kiln-new-{:?}",
                    comps[comps.len() - 1],
                    std::thread::current().id()
                ));
                let mut f = std::fs::File::create(&tmp).map_err(|e| io(&shown, e))?;
                std::io::copy(&mut entry, &mut f).map_err(|e| io(&shown, e))?;
                drop(f);
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| io(&shown, e))?;
                chown(&tmp, &header, &shown)?;
                std::fs::rename(&tmp, &dest).map_err(|e| io(&shown, e))?;
            }
            tar::EntryType::Symlink => {
                let target = header
                    .link_name()
                    .map_err(|e| io(&shown, e))?
                    .ok_or_else(|| ExtractError::UnsafePath(shown.clone()))?;
                if existing.as_ref().is_some_and(|m| m.is_dir()) {
                    return Err(ExtractError::DirectoryInTheWay(shown));
                }
                // Replace whatever is there, also if a concurrent unpack races us.
                let mut tries = 0;
                loop {
                    let _ = std::fs::remove_file(&dest);
                    match symlink(&target, &dest) {
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 3 => {
                            tries += 1
                        }
                        r => break r.map_err(|e| io(&shown, e))?,
                    }
                }
                let _ = std::os::unix::fs::lchown(
                    &dest,
                    header.uid().ok().map(|u| u as u32),
                    header.gid().ok().map(|g| g as u32),
                );
            }
            tar::EntryType::Link => {
                let target = header
                    .link_name()
                    .map_err(|e| io(&shown, e))?
                    .ok_or_else(|| ExtractError::UnsafePath(shown.clone()))?;
                let tcomps = member_components(&target.to_string_lossy())?;
                let src = resolve_in_root(root, &tcomps, false)?;
                if existing.is_some() {
                    std::fs::remove_file(&dest).map_err(|e| io(&shown, e))?;
                }
                std::fs::hard_link(&src, &dest).map_err(|e| io(&shown, e))?;
            }
            // Device nodes and FIFOs are not shipped in Debian packages.
            other => {
                return Err(io(
                    &shown,
                    std::io::Error::other(format!("unsupported member type {other:?}")),
                ))
            }
        }
        listed.push(shown);
    }
    Ok(listed)
}

fn chown(path: &Path, header: &tar::Header, shown: &str) -> Result<(), ExtractError> {
    let uid = header.uid().unwrap_or(0) as u32;
    let gid = header.gid().unwrap_or(0) as u32;
    match std::os::unix::fs::chown(path, Some(uid), Some(gid)) {
        Ok(()) => Ok(()),
        // Without privileges ownership cannot be kept; dpkg sets it again later.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(()),
        Err(e) => Err(io(shown, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if *kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            match kind {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    h.set_size(0);
                    b.append_link(&mut h, path, data).unwrap();
                }
                _ => {
                    h.set_size(data.len() as u64);
                    h.set_cksum();
                    b.append_data(&mut h, path, data.as_bytes()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn unpack_into(
        root: &Path,
        entries: &[(&str, tar::EntryType, &str)],
    ) -> Result<Vec<String>, ExtractError> {
        let data = tarball(entries);
        unpack(&mut tar::Archive::new(&data[..]), root)
    }

    use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as L};

    #[test]
    fn unpacks_files_links_and_lists_them() {
        let d = tempfile::tempdir().unwrap();
        let listed = unpack_into(
            d.path(),
            &[
                ("./", D, ""),
                ("./usr/", D, ""),
                ("./usr/bin/", D, ""),
                ("./usr/bin/a", F, "A"),
                ("./usr/bin/b", L, "a"),
                ("./usr/bin/c", H, "./usr/bin/a"),
            ],
        )
        .unwrap();
        assert_eq!(
            listed,
            [
                "/.",
                "/usr",
                "/usr/bin",
                "/usr/bin/a",
                "/usr/bin/b",
                "/usr/bin/c"
            ]
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("usr/bin/b")).unwrap(),
            "A"
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("usr/bin/c")).unwrap(),
            "A"
        );
    }

    #[test]
    fn dot_dot_members_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let inner = d.path().join("root");
        std::fs::create_dir(&inner).unwrap();
        // The tar crate refuses to *write* such names, so build the header by hand.
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..13].copy_from_slice(b"../escaped.tx");
        h.set_size(1);
        h.set_entry_type(F);
        h.set_cksum();
        let mut data = h.as_bytes().to_vec();
        data.extend_from_slice(&[b'x'; 512]);
        data.extend_from_slice(&[0; 1024]);
        let e = unpack(&mut tar::Archive::new(&data[..]), &inner).unwrap_err();
        assert!(matches!(e, ExtractError::UnsafePath(_)), "{e}");
        assert!(!d.path().join("escaped.tx").exists());
    }

    #[test]
    fn symlinks_cannot_lead_outside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let inner = d.path().join("root");
        std::fs::create_dir(&inner).unwrap();
        // An absolute symlink and a relative one climbing out, then files through them.
        unpack_into(
            &inner,
            &[
                ("./abs", L, "/"),
                ("./rel", L, "../../../../.."),
                ("./abs/etc/x", F, "1"),
                ("./rel/y", F, "2"),
            ],
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(inner.join("etc/x")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(inner.join("y")).unwrap(), "2");
        assert!(!d.path().join("y").exists());
        assert!(!Path::new("/etc/x").exists() || std::fs::read_to_string("/etc/x").unwrap() != "1");
    }

    #[test]
    fn merged_usr_directory_symlinks_are_followed_and_kept() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("usr/bin")).unwrap();
        symlink("usr/bin", d.path().join("bin")).unwrap();
        unpack_into(d.path(), &[("./bin/", D, ""), ("./bin/sh", F, "#!")]).unwrap();
        assert!(std::fs::symlink_metadata(d.path().join("bin"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_to_string(d.path().join("usr/bin/sh")).unwrap(),
            "#!"
        );
    }

    #[test]
    fn a_file_replaces_a_symlink_instead_of_writing_through_it() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, "keep").unwrap();
        let inner = d.path().join("root");
        std::fs::create_dir(&inner).unwrap();
        symlink(&outside, inner.join("f")).unwrap();
        unpack_into(&inner, &[("./f", F, "new")]).unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(inner.join("f")).unwrap(), "new");
    }
}

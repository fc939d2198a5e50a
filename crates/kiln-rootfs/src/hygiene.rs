//! Removing what makes a root filesystem differ between builds or machines,
//! or what must not ship in an image.

use std::path::Path;

use crate::inroot::{Kind, Root};
use crate::RootfsError;

/// Paths (relative to the root) removed outright, with why.
const REMOVE: &[(&str, &str)] = &[
    ("var/cache/ldconfig/aux-cache", "mtimes of the build host"),
    ("var/lib/dbus/machine-id", "must be generated on first boot"),
    ("var/lib/systemd/random-seed", "a secret"),
    (
        "var/cache/man/index.db",
        "rebuilt by man-db; embeds timestamps",
    ),
    ("var/lib/dpkg/status-old", "backup of the build's last step"),
    (
        "var/lib/dpkg/available-old",
        "backup of the build's last step",
    ),
    (
        "var/lib/dpkg/diversions-old",
        "backup of the build's last step",
    ),
    (
        "var/lib/dpkg/statoverride-old",
        "backup of the build's last step",
    ),
    (
        "var/cache/debconf/config.dat-old",
        "backup of the build's last step",
    ),
    (
        "var/cache/debconf/templates.dat-old",
        "backup of the build's last step",
    ),
    (
        "var/cache/debconf/passwords.dat-old",
        "backup of the build's last step",
    ),
    ("etc/resolv.conf.kiln", "build-time copy"),
    ("var/log/dpkg.log", "log of the build"),
    ("var/log/alternatives.log", "log of the build"),
    ("var/log/bootstrap.log", "log of the build"),
    ("var/log/apt/history.log", "log of the build"),
    ("var/log/apt/term.log", "log of the build"),
    ("var/log/apt/eipp.log.xz", "log of the build"),
];

/// Directories whose contents are emptied (the directory itself stays).
const EMPTY: &[(&str, &str)] = &[
    ("var/lib/apt/lists", "package lists are stale the day after"),
    ("var/cache/apt", "downloaded packages and caches"),
    ("tmp", "scratch space"),
    ("var/tmp", "scratch space"),
    ("run", "runtime state"),
];

/// Applies the hygiene rules to `root`. `/etc/machine-id` is left
/// uninitialised so systemd generates an id on first boot; SSH host keys are
/// removed so every machine gets its own.
///
/// Every path is opened inside the root (crate::inroot): directories are
/// reached through links as in a chroot, and what is removed, emptied or
/// written is never followed through a link, so a package cannot point
/// `/var/cache/apt` or `/etc/fstab` at the build host.
pub fn clean(root: &Path) -> Result<(), RootfsError> {
    let io = |what: &str, e: std::io::Error| RootfsError::io(what, e);
    let r = Root::open(root).map_err(|e| io(&root.display().to_string(), e))?;
    for (p, _) in REMOVE {
        match r.remove_file(p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(p, e)),
            _ => {}
        }
    }
    for (d, _) in EMPTY {
        let Ok(entries) = r.read_dir(d) else {
            continue;
        };
        for (name, kind) in entries {
            let path = Path::new(d).join(name);
            // Keep the directory skeletons apt and dpkg expect (lists/partial, archives/partial, log dirs).
            if kind == Kind::Dir {
                empty_files(&r, &path).map_err(|e| io(d, e))?;
            } else {
                r.remove_file(&path).map_err(|e| io(d, e))?;
            }
        }
    }
    // Other log files (wtmp, btmp, lastlog, …) stay, empty, with their modes.
    truncate_files(&r, Path::new("var/log")).map_err(|e| io("var/log", e))?;
    if r.is_dir("etc") && !r.exists("etc/fstab") {
        // A dangling link there is replaced, not followed.
        r.write(
            "etc/fstab",
            b"# UNCONFIGURED FSTAB FOR BASE SYSTEM\n",
            0o644,
        )
        .map_err(|e| io("etc/fstab", e))?;
    }
    // apt makes its download directories private to _apt on first use; do it now.
    if let Some(uid) = user_id(&r, "_apt") {
        for d in [
            "var/cache/apt/archives/partial",
            "var/lib/apt/lists/partial",
        ] {
            if r.metadata(d).is_ok_and(|m| m.is_dir()) {
                r.set_owner(d, uid, 0).map_err(|e| io(d, e))?;
                r.set_mode(d, 0o700).map_err(|e| io(d, e))?;
            }
        }
    }
    if let Ok(entries) = r.read_dir("etc/ssh") {
        for (name, kind) in entries {
            let n = name.to_string_lossy().into_owned();
            if kind != Kind::Dir
                && n.starts_with("ssh_host_")
                && (n.ends_with("_key") || n.ends_with("_key.pub"))
            {
                r.remove_file(Path::new("etc/ssh").join(&name))
                    .map_err(|e| io("etc/ssh", e))?;
            }
        }
    }
    // systemd's postinst generates an id; an image must not carry one.
    if let Ok(m) = r.metadata("etc/machine-id") {
        if m.is_file() {
            // Written in place, keeping its mode; a link is replaced.
            r.write("etc/machine-id", b"uninitialized\n", m.mode)
                .map_err(|e| io("etc/machine-id", e))?;
        } else if r.exists("etc/machine-id") || m.is_symlink() {
            r.write("etc/machine-id", b"uninitialized\n", 0o444)
                .map_err(|e| io("etc/machine-id", e))?;
        }
    }
    Ok(())
}

/// The uid of `name` in the root's /etc/passwd.
fn user_id(root: &Root, name: &str) -> Option<u32> {
    let text = root.read_to_string("etc/passwd").ok()?;
    text.lines()
        .find(|l| l.split(':').next() == Some(name))
        .and_then(|l| l.split(':').nth(2))
        .and_then(|u| u.parse().ok())
}

/// Truncates every regular file below `dir` (links are not followed).
fn truncate_files(root: &Root, dir: &Path) -> std::io::Result<()> {
    let Ok(entries) = root.read_dir(dir) else {
        return Ok(());
    };
    for (name, kind) in entries {
        let p = dir.join(name);
        match kind {
            Kind::Dir => truncate_files(root, &p)?,
            Kind::File => root.truncate(&p)?,
            _ => {}
        }
    }
    Ok(())
}

/// Removes every file below `dir`, keeping the directories (a link is
/// removed itself, never followed).
fn empty_files(root: &Root, dir: &Path) -> std::io::Result<()> {
    for (name, kind) in root.read_dir(dir)? {
        let p = dir.join(name);
        if kind == Kind::Dir {
            empty_files(root, &p)?;
        } else {
            root.remove_file(&p)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn planted_links_do_not_lead_hygiene_to_the_host() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let victim = d.path().join("victim");
        std::fs::create_dir_all(victim.join("archives/partial")).unwrap();
        std::fs::write(victim.join("archives/x.deb"), b"host deb").unwrap();
        std::fs::write(victim.join("log"), b"host log\n").unwrap();
        std::fs::write(victim.join("ssh_host_rsa_key"), b"host key").unwrap();
        std::fs::set_permissions(
            victim.join("archives/partial"),
            PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        for dir in ["etc/ssh", "var/cache", "var/log", "var/lib/apt"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\n_apt:x:42:65534::/nonexistent:/usr/sbin/nologin\n",
        )
        .unwrap();
        symlink(&victim, root.join("var/cache/apt")).unwrap();
        symlink(&victim, root.join("var/lib/apt/lists")).unwrap();
        symlink(&victim, root.join("tmp")).unwrap();
        symlink(victim.join("log"), root.join("var/log/dpkg.log.1")).unwrap();
        symlink(&victim, root.join("var/log/dir")).unwrap();
        symlink(
            victim.join("ssh_host_rsa_key"),
            root.join("etc/ssh/ssh_host_rsa_key"),
        )
        .unwrap();
        symlink(victim.join("fstab"), root.join("etc/fstab")).unwrap();
        symlink(victim.join("log"), root.join("etc/machine-id")).unwrap();
        clean(&root).unwrap();
        assert_eq!(
            std::fs::read(victim.join("archives/x.deb")).unwrap(),
            b"host deb"
        );
        assert_eq!(std::fs::read(victim.join("log")).unwrap(), b"host log\n");
        assert_eq!(
            std::fs::read(victim.join("ssh_host_rsa_key")).unwrap(),
            b"host key"
        );
        assert!(!victim.join("fstab").exists());
        let m = std::fs::metadata(victim.join("archives/partial")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o755);
        // The root's own entries were cleaned: links removed or replaced.
        assert!(std::fs::symlink_metadata(root.join("etc/fstab"))
            .unwrap()
            .is_file());
        assert!(std::fs::symlink_metadata(root.join("etc/ssh/ssh_host_rsa_key")).is_err());
    }
}

//! Removing what makes a root filesystem differ between builds or machines,
//! or what must not ship in an image.

use std::path::Path;

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
pub fn clean(root: &Path) -> Result<(), RootfsError> {
    let io = |what: &str, e: std::io::Error| RootfsError::io(what, e);
    for (p, _) in REMOVE {
        match std::fs::remove_file(root.join(p)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(p, e)),
            _ => {}
        }
    }
    for (d, _) in EMPTY {
        let dir = root.join(d);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd {
            let e = e.map_err(|e| io(d, e))?;
            let path = e.path();
            // Keep the directory skeletons apt and dpkg expect (lists/partial, archives/partial, log dirs).
            let ft = e.file_type().map_err(|e| io(d, e))?;
            if ft.is_dir() {
                empty_files(&path).map_err(|e| io(d, e))?;
            } else {
                std::fs::remove_file(&path).map_err(|e| io(d, e))?;
            }
        }
    }
    // Other log files (wtmp, btmp, lastlog, …) stay, empty, with their modes.
    truncate_files(&root.join("var/log")).map_err(|e| io("var/log", e))?;
    if root.join("etc").is_dir() && !root.join("etc/fstab").exists() {
        std::fs::write(
            root.join("etc/fstab"),
            "# UNCONFIGURED FSTAB FOR BASE SYSTEM\n",
        )
        .map_err(|e| io("etc/fstab", e))?;
    }
    // apt makes its download directories private to _apt on first use; do it now.
    if let Some(uid) = user_id(root, "_apt") {
        use std::os::unix::fs::PermissionsExt;
        for d in [
            "var/cache/apt/archives/partial",
            "var/lib/apt/lists/partial",
        ] {
            let p = root.join(d);
            if p.is_dir() {
                std::os::unix::fs::chown(&p, Some(uid), Some(0)).map_err(|e| io(d, e))?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| io(d, e))?;
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(root.join("etc/ssh")) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("ssh_host_") && (n.ends_with("_key") || n.ends_with("_key.pub")) {
                std::fs::remove_file(e.path()).map_err(|e| io("etc/ssh", e))?;
            }
        }
    }
    // systemd's postinst generates an id; an image must not carry one.
    if root.join("etc/machine-id").exists() {
        std::fs::write(root.join("etc/machine-id"), "uninitialized\n")
            .map_err(|e| io("etc/machine-id", e))?;
    }
    Ok(())
}

/// The uid of `name` in the root's /etc/passwd.
fn user_id(root: &Path, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(root.join("etc/passwd")).ok()?;
    text.lines()
        .find(|l| l.split(':').next() == Some(name))
        .and_then(|l| l.split(':').nth(2))
        .and_then(|u| u.parse().ok())
}

/// Truncates every regular file below `dir` to zero length.
fn truncate_files(dir: &Path) -> std::io::Result<()> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            truncate_files(&e.path())?;
        } else if ft.is_file() {
            std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(e.path())?;
        }
    }
    Ok(())
}

/// Removes every file below `dir`, keeping the directories.
fn empty_files(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            empty_files(&e.path())?;
        } else {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

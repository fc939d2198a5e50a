//! Recipe customisation applied after the packages are installed: files,
//! groups and users, hostname, timezone, locale, services and commands.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::extract::{member_components, resolve_in_root};
use kiln_model::Cancel;

use crate::sandbox::{run_in_root, script_env};
use crate::RootfsError;

/// A file to place in the image.
#[derive(Clone, Debug)]
pub struct FileSpec {
    /// Absolute path inside the image.
    pub path: String,
    pub contents: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Clone, Debug)]
pub struct GroupSpec {
    pub name: String,
    pub gid: Option<u32>,
    pub system: bool,
}

#[derive(Clone, Debug)]
pub struct UserSpec {
    pub name: String,
    pub uid: Option<u32>,
    pub groups: Vec<String>,
    pub shell: Option<String>,
    pub home: Option<String>,
    pub system: bool,
}

/// Everything a recipe asks to change in the installed root.
#[derive(Clone, Debug, Default)]
pub struct Customization {
    /// Directories copied over the root (relative paths kept).
    pub overlays: Vec<PathBuf>,
    pub files: Vec<FileSpec>,
    pub groups: Vec<GroupSpec>,
    pub users: Vec<UserSpec>,
    pub hostname: Option<String>,
    pub timezone: Option<String>,
    pub locale: Option<String>,
    pub enable: Vec<String>,
    pub disable: Vec<String>,
    /// Shell commands run inside the root, in order.
    pub commands: Vec<String>,
}

fn fail(msg: String) -> RootfsError {
    RootfsError::Customize(msg)
}

fn place(root: &Path, path: &str) -> Result<PathBuf, RootfsError> {
    let comps = member_components(path).map_err(|e| fail(e.to_string()))?;
    if comps.is_empty() {
        return Err(fail(format!("`{path}` is not a file path")));
    }
    let parent =
        resolve_in_root(root, &comps[..comps.len() - 1], true).map_err(|e| fail(e.to_string()))?;
    std::fs::create_dir_all(&parent).map_err(|e| RootfsError::io(path, e))?;
    Ok(parent.join(&comps[comps.len() - 1]))
}

fn run(
    root: &Path,
    argv: &[&str],
    epoch: i64,
    log: &Path,
    cancel: &Cancel,
    what: &str,
) -> Result<(), RootfsError> {
    let before = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    let status = run_in_root(root, argv, &script_env(epoch), log, cancel)?;
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let out = text.get(before as usize..).unwrap_or("").trim_end();
    Err(fail(format!("{what} failed ({status}):\n{out}")))
}

fn copy_tree(src: &Path, root: &Path, rel: &Path) -> Result<(), RootfsError> {
    let dir = src.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| RootfsError::io(&dir.display().to_string(), e))?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let r = rel.join(e.file_name());
        let ft = e
            .file_type()
            .map_err(|e| RootfsError::io(&r.display().to_string(), e))?;
        let dest = place(root, &format!("/{}", r.display()))?;
        if ft.is_dir() {
            std::fs::create_dir_all(&dest)
                .map_err(|e| RootfsError::io(&r.display().to_string(), e))?;
            copy_tree(src, root, &r)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(e.path())
                .map_err(|e| RootfsError::io(&r.display().to_string(), e))?;
            let _ = std::fs::remove_file(&dest);
            std::os::unix::fs::symlink(target, &dest)
                .map_err(|e| RootfsError::io(&r.display().to_string(), e))?;
        } else {
            let _ = std::fs::remove_file(&dest);
            std::fs::copy(e.path(), &dest)
                .map_err(|e| RootfsError::io(&r.display().to_string(), e))?;
            let _ = std::os::unix::fs::chown(&dest, Some(0), Some(0));
        }
    }
    Ok(())
}

/// Applies `c` to the installed root.
pub fn apply(
    root: &Path,
    c: &Customization,
    epoch: i64,
    log: &Path,
    cancel: &Cancel,
) -> Result<(), RootfsError> {
    for o in &c.overlays {
        copy_tree(o, root, Path::new(""))?;
    }
    for f in &c.files {
        let dest = place(root, &f.path)?;
        if dest.is_dir() {
            return Err(fail(format!("{} is a directory in the image", f.path)));
        }
        let _ = std::fs::remove_file(&dest);
        std::fs::write(&dest, &f.contents).map_err(|e| RootfsError::io(&f.path, e))?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(f.mode))
            .map_err(|e| RootfsError::io(&f.path, e))?;
        std::os::unix::fs::chown(&dest, Some(f.uid), Some(f.gid))
            .map_err(|e| RootfsError::io(&f.path, e))?;
    }
    for g in &c.groups {
        let gid = g.gid.map(|g| g.to_string());
        let mut argv = vec!["groupadd"];
        if g.system {
            argv.push("--system");
        }
        if let Some(gid) = &gid {
            argv.extend(["--gid", gid]);
        }
        argv.push(&g.name);
        run(
            root,
            &argv,
            epoch,
            log,
            cancel,
            &format!("creating group {}", g.name),
        )?;
    }
    for u in &c.users {
        let uid = u.uid.map(|u| u.to_string());
        let groups = u.groups.join(",");
        let mut argv = vec!["useradd", "--create-home", "--user-group"];
        if u.system {
            argv.push("--system");
        }
        if let Some(uid) = &uid {
            argv.extend(["--uid", uid]);
        }
        if !groups.is_empty() {
            argv.extend(["--groups", &groups]);
        }
        if let Some(s) = &u.shell {
            argv.extend(["--shell", s]);
        }
        if let Some(h) = &u.home {
            argv.extend(["--home-dir", h]);
        }
        argv.push(&u.name);
        run(
            root,
            &argv,
            epoch,
            log,
            cancel,
            &format!("creating user {}", u.name),
        )?;
    }
    if let Some(h) = &c.hostname {
        std::fs::write(root.join("etc/hostname"), format!("{h}\n"))
            .map_err(|e| RootfsError::io("etc/hostname", e))?;
        let hosts = format!("127.0.0.1\tlocalhost\n127.0.1.1\t{h}\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n");
        std::fs::write(root.join("etc/hosts"), hosts)
            .map_err(|e| RootfsError::io("etc/hosts", e))?;
    }
    if let Some(tz) = &c.timezone {
        let zone = root.join("usr/share/zoneinfo").join(tz);
        if tz.contains("..") || !zone.is_file() {
            return Err(fail(format!(
                "timezone `{tz}` is not in the image (/usr/share/zoneinfo/{tz}); include the tzdata package"
            )));
        }
        let lt = root.join("etc/localtime");
        let _ = std::fs::remove_file(&lt);
        std::os::unix::fs::symlink(format!("/usr/share/zoneinfo/{tz}"), &lt)
            .map_err(|e| RootfsError::io("etc/localtime", e))?;
        std::fs::write(root.join("etc/timezone"), format!("{tz}\n"))
            .map_err(|e| RootfsError::io("etc/timezone", e))?;
    }
    if let Some(l) = &c.locale {
        if l != "C.UTF-8" && l != "C" && l != "POSIX" {
            let gen = root.join("etc/locale.gen");
            if !gen.exists() || !root.join("usr/sbin/locale-gen").exists() {
                return Err(fail(format!(
                    "locale `{l}` needs the locales package; include it in [packages]"
                )));
            }
            let charset = l.split('.').nth(1).unwrap_or("UTF-8");
            let text =
                std::fs::read_to_string(&gen).map_err(|e| RootfsError::io("etc/locale.gen", e))?;
            let line = format!("{l} {charset}");
            let mut found = false;
            let new: Vec<String> = text
                .lines()
                .map(|x| {
                    if x.trim_start_matches('#').trim() == line {
                        found = true;
                        line.clone()
                    } else {
                        x.to_string()
                    }
                })
                .collect();
            if !found {
                return Err(fail(format!(
                    "locale `{l}` is not listed in /etc/locale.gen"
                )));
            }
            std::fs::write(&gen, new.join("\n") + "\n")
                .map_err(|e| RootfsError::io("etc/locale.gen", e))?;
            run(root, &["locale-gen"], epoch, log, cancel, "locale-gen")?;
        }
        std::fs::create_dir_all(root.join("etc/default"))
            .map_err(|e| RootfsError::io("etc/default", e))?;
        std::fs::write(root.join("etc/default/locale"), format!("LANG={l}\n"))
            .map_err(|e| RootfsError::io("etc/default/locale", e))?;
    }
    if (!c.enable.is_empty() || !c.disable.is_empty()) && !root.join("usr/bin/systemctl").exists() {
        return Err(fail(
            "enabling or disabling services needs systemd in the image (include systemd)".into(),
        ));
    }
    for s in &c.enable {
        run(
            root,
            &["systemctl", "enable", s],
            epoch,
            log,
            cancel,
            &format!("systemctl enable {s}"),
        )?;
    }
    for s in &c.disable {
        run(
            root,
            &["systemctl", "disable", s],
            epoch,
            log,
            cancel,
            &format!("systemctl disable {s}"),
        )?;
    }
    for cmd in &c.commands {
        run(
            root,
            &["/bin/sh", "-ec", cmd],
            epoch,
            log,
            cancel,
            &format!("command `{cmd}`"),
        )?;
    }
    Ok(())
}

//! Recipe customisation applied after the packages are installed: files,
//! groups and users, hostname, timezone, locale, services and commands.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::extract::member_components;
use crate::inroot::{Kind, Root};
use kiln_model::Cancel;

use crate::sandbox::{run_in_root_with, script_env, Options};
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
    /// The commands share the host's network (else only loopback).
    pub network: bool,
}

fn fail(msg: String) -> RootfsError {
    RootfsError::Customize(msg)
}

/// The image path `path` relative to the root (`..` refused), its parent
/// directories made inside the root.
fn place(root: &Root, path: &str) -> Result<PathBuf, RootfsError> {
    let comps = member_components(path).map_err(|e| fail(e.to_string()))?;
    if comps.is_empty() {
        return Err(fail(format!("`{path}` is not a file path")));
    }
    let parent = comps[..comps.len() - 1].join("/");
    if !parent.is_empty() {
        root.create_dir_all(&parent, 0o755)
            .map_err(|e| RootfsError::io(path, e))?;
    }
    Ok(PathBuf::from(comps.join("/")))
}

/// Writes a file Kiln generates, keeping the mode of a regular file already
/// there (else 0644); a link there is replaced, never written through.
fn write_keeping_mode(root: &Root, rel: &str, bytes: &[u8]) -> Result<(), RootfsError> {
    let mode = match root.metadata(rel) {
        Ok(m) if m.is_file() => m.mode,
        _ => 0o644,
    };
    root.write(rel, bytes, mode)
        .map_err(|e| RootfsError::io(rel, e))
}

fn run(
    root: &Path,
    argv: &[&str],
    epoch: i64,
    log: &Path,
    cancel: &Cancel,
    what: &str,
    opts: Options,
) -> Result<(), RootfsError> {
    let before = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    let status = run_in_root_with(root, argv, &script_env(epoch), log, cancel, opts)?;
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let out = text.get(before as usize..).unwrap_or("").trim_end();
    Err(fail(format!("{what} failed ({status}):\n{out}")))
}

fn copy_tree(src: &Path, root: &Root, rel: &Path) -> Result<(), RootfsError> {
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
        let err = |e: std::io::Error| RootfsError::io(&r.display().to_string(), e);
        if ft.is_dir() {
            root.create_dir_all(&dest, 0o755).map_err(err)?;
            copy_tree(src, root, &r)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(e.path()).map_err(err)?;
            root.symlink(target, &dest).map_err(err)?;
        } else {
            let mode = e.metadata().map_err(err)?.permissions().mode() & 0o7777;
            let bytes = std::fs::read(e.path()).map_err(err)?;
            root.write(&dest, &bytes, mode).map_err(err)?;
            let _ = root.set_owner(&dest, 0, 0);
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
    // Kiln's own writes go through paths opened inside the root (links the
    // packages planted are resolved as in a chroot, or replaced).
    let r = Root::open(root).map_err(|e| RootfsError::io(&root.display().to_string(), e))?;
    for o in &c.overlays {
        copy_tree(o, &r, Path::new(""))?;
    }
    for f in &c.files {
        let dest = place(&r, &f.path)?;
        if r.metadata(&dest).is_ok_and(|m| m.kind == Kind::Dir) {
            return Err(fail(format!("{} is a directory in the image", f.path)));
        }
        r.write(&dest, &f.contents, f.mode)
            .map_err(|e| RootfsError::io(&f.path, e))?;
        match r.set_owner(&dest, f.uid, f.gid) {
            // Without privileges a file cannot be given away; the image
            // writers take its owner from the build's ownership ledger
            // (see `kiln_rootfs::extract::Ownership`).
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && !crate::sandbox::is_root() => {}
            r => r.map_err(|e| RootfsError::io(&f.path, e))?,
        }
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
            Options::default(),
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
            Options::default(),
        )?;
    }
    if let Some(h) = &c.hostname {
        write_keeping_mode(&r, "etc/hostname", format!("{h}\n").as_bytes())?;
        let hosts = format!("127.0.0.1\tlocalhost\n127.0.1.1\t{h}\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n");
        write_keeping_mode(&r, "etc/hosts", hosts.as_bytes())?;
    }
    if let Some(tz) = &c.timezone {
        if tz.contains("..") || !r.is_file(format!("usr/share/zoneinfo/{tz}")) {
            return Err(fail(format!(
                "timezone `{tz}` is not in the image (/usr/share/zoneinfo/{tz}); include the tzdata package"
            )));
        }
        r.symlink(format!("/usr/share/zoneinfo/{tz}"), "etc/localtime")
            .map_err(|e| RootfsError::io("etc/localtime", e))?;
        write_keeping_mode(&r, "etc/timezone", format!("{tz}\n").as_bytes())?;
    }
    if let Some(l) = &c.locale {
        if l != "C.UTF-8" && l != "C" && l != "POSIX" {
            let gen = "etc/locale.gen";
            if !r.exists(gen) || !r.exists("usr/sbin/locale-gen") {
                return Err(fail(format!(
                    "locale `{l}` needs the locales package; include it in [packages]"
                )));
            }
            let charset = l.split('.').nth(1).unwrap_or("UTF-8");
            let text = r
                .read_to_string(gen)
                .map_err(|e| RootfsError::io("etc/locale.gen", e))?;
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
            write_keeping_mode(&r, gen, (new.join("\n") + "\n").as_bytes())?;
            run(
                root,
                &["locale-gen"],
                epoch,
                log,
                cancel,
                "locale-gen",
                Options::default(),
            )?;
        }
        r.create_dir_all("etc/default", 0o755)
            .map_err(|e| RootfsError::io("etc/default", e))?;
        write_keeping_mode(&r, "etc/default/locale", format!("LANG={l}\n").as_bytes())?;
    }
    if (!c.enable.is_empty() || !c.disable.is_empty()) && !r.exists("usr/bin/systemctl") {
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
            Options::default(),
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
            Options::default(),
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
            Options {
                network: c.network,
                ..Options::default()
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn hostname_and_files_never_write_through_planted_links() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let victim = d.path().join("victim");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(&victim).unwrap();
        for f in ["hostname", "hosts", "motd"] {
            std::fs::write(victim.join(f), format!("host {f}\n")).unwrap();
            std::fs::set_permissions(victim.join(f), std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }
        symlink(victim.join("hostname"), root.join("etc/hostname")).unwrap();
        symlink("../../victim/hosts", root.join("etc/hosts")).unwrap();
        symlink(victim.join("motd"), root.join("etc/motd")).unwrap();
        symlink(&victim, root.join("opt")).unwrap();
        let c = Customization {
            hostname: Some("box".into()),
            files: vec![
                FileSpec {
                    path: "/etc/motd".into(),
                    contents: b"hello\n".to_vec(),
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                },
                FileSpec {
                    path: "/opt/motd".into(),
                    contents: b"in the image\n".to_vec(),
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                },
            ],
            ..Default::default()
        };
        apply(&root, &c, 0, &d.path().join("log"), &Cancel::new()).unwrap();
        for f in ["hostname", "hosts", "motd"] {
            assert_eq!(
                std::fs::read_to_string(victim.join(f)).unwrap(),
                format!("host {f}\n")
            );
            let m = std::fs::metadata(victim.join(f)).unwrap();
            assert_eq!(m.permissions().mode() & 0o7777, 0o600);
        }
        assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 3);
        assert_eq!(std::fs::read(root.join("etc/hostname")).unwrap(), b"box\n");
        assert_eq!(std::fs::read(root.join("etc/motd")).unwrap(), b"hello\n");
        // /opt -> the victim resolves inside the root, as in a chroot.
        let inside = root.join(victim.strip_prefix("/").unwrap()).join("motd");
        assert_eq!(std::fs::read(inside).unwrap(), b"in the image\n");
    }
}

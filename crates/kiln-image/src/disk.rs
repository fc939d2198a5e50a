//! Filesystem images built from directories, without mounting anything.
//!
//! Each builder runs a well-known tool on a plain file with the options that
//! make its output a function of its input (measured in
//! `docs/prototypes/disk/knob-check.out`): `mke2fs -d` with a fixed UUID,
//! hash seed and `SOURCE_DATE_EPOCH` (e2fsprogs ≥ 1.47.1), `mkfs.erofs -T -U`,
//! `mkfs.vfat --invariant -i` plus mtools, `veritysetup format --salt
//! --uuid`, `qemu-img convert`. A missing tool is reported with the Debian
//! package that ships it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("`{tool}` is not installed")]
    MissingTool { tool: String, package: String },
    #[error("{tool} failed ({status}): {output}")]
    Tool {
        tool: String,
        status: String,
        output: String,
    },
    #[error("{what} needs {} MiB but {setting} is {} MiB", need.div_ceil(1 << 20), have >> 20)]
    TooSmall {
        what: String,
        /// The recipe setting to raise, e.g. `[disk] root-size`.
        setting: String,
        need: u64,
        have: u64,
    },
    #[error("{0}")]
    Other(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl DiskError {
    pub fn hint(&self) -> Option<String> {
        match self {
            DiskError::MissingTool { package, .. } => {
                Some(format!("install it with: apt-get install {package}"))
            }
            DiskError::TooSmall { need, setting, .. } => Some(format!(
                "raise {setting} to at least {} MiB{}",
                need.div_ceil(1 << 20),
                if setting.contains("root-size") {
                    " (or \"auto\")"
                } else {
                    ""
                }
            )),
            _ => None,
        }
    }
}

/// The Debian package that ships a tool, for error hints.
pub fn package_of(tool: &str) -> &'static str {
    match tool {
        "mke2fs" | "debugfs" => "e2fsprogs",
        "mkfs.erofs" | "fsck.erofs" => "erofs-utils",
        "mkfs.vfat" | "fsck.vfat" => "dosfstools",
        "mcopy" | "mmd" | "mdir" | "mtype" => "mtools",
        "veritysetup" => "cryptsetup-bin",
        "qemu-img" => "qemu-utils",
        "qemu-system-x86_64" => "qemu-system-x86",
        "qemu-system-aarch64" => "qemu-system-arm",
        "ssh-keygen" => "openssh-client",
        _ => "the package that provides it",
    }
}

/// Finds `tool` on PATH (and the sbin directories, which non-root PATHs lack).
pub fn find_tool(tool: &str) -> Result<PathBuf, DiskError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = [
        "/usr/local/sbin",
        "/usr/sbin",
        "/sbin",
        "/usr/local/bin",
        "/usr/bin",
    ];
    for dir in std::env::split_paths(&path).chain(extra.iter().map(PathBuf::from)) {
        let p = dir.join(tool);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(DiskError::MissingTool {
        tool: tool.into(),
        package: package_of(tool).into(),
    })
}

/// Runs a command, returning stdout; failures carry the tool's output.
pub fn run(cmd: &mut Command) -> Result<String, DiskError> {
    let tool = cmd.get_program().to_string_lossy().to_string();
    let out = cmd.output().map_err(|e| DiskError::Tool {
        tool: tool.clone(),
        status: "could not start".into(),
        output: e.to_string(),
    })?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stderr).to_string();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        let text: Vec<&str> = text.trim().lines().collect();
        let tail = text[text.len().saturating_sub(12)..].join("\n");
        return Err(DiskError::Tool {
            tool,
            status: out.status.to_string(),
            output: tail,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn tool(name: &str) -> Result<Command, DiskError> {
    let mut c = Command::new(find_tool(name)?);
    c.env("LC_ALL", "C").env("TZ", "UTC");
    Ok(c)
}

/// Bytes a tree needs on a 4 KiB-block filesystem: data blocks, one block
/// per directory and long symlink, an inode (256 bytes) per entry.
/// Computed from apparent sizes, so it does not depend on the build host's
/// filesystem.
pub fn tree_size(dir: &Path) -> std::io::Result<u64> {
    fn walk(d: &Path, acc: &mut u64) -> std::io::Result<()> {
        for e in std::fs::read_dir(d)? {
            let e = e?;
            let m = e.path().symlink_metadata()?;
            let ft = m.file_type();
            *acc += 256;
            if ft.is_dir() {
                *acc += 4096;
                walk(&e.path(), acc)?;
            } else if ft.is_file() {
                *acc += m.len().div_ceil(4096) * 4096;
            } else if ft.is_symlink() && m.len() > 59 {
                *acc += 4096;
            }
        }
        Ok(())
    }
    let mut acc = 4096;
    walk(dir, &mut acc)?;
    Ok(acc)
}

/// Number of entries (files, directories, links, …) in a tree.
pub fn count_entries(dir: &Path) -> std::io::Result<u64> {
    let mut n = 1;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        n += 1;
        if e.file_type()?.is_dir() {
            n += count_entries(&e.path())? - 1;
        }
    }
    Ok(n)
}

/// How to run mke2fs: the host's when it is new enough to be reproducible
/// (e2fsprogs ≥ 1.47.1 clamps every inode and superblock time to
/// `SOURCE_DATE_EPOCH`), else one from the image itself, run through the
/// image's own dynamic loader.
#[derive(Clone, Debug)]
pub struct Mke2fs {
    pub argv0: Vec<OsString>,
    pub config: Option<PathBuf>,
    pub version: String,
    pub reproducible: bool,
}

fn mke2fs_version(argv0: &[OsString]) -> Option<String> {
    let mut c = Command::new(&argv0[0]);
    c.args(&argv0[1..]).arg("-V");
    let out = c.output().ok()?;
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    text.lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_string)
}

fn version_at_least(v: &str, want: &[u32]) -> bool {
    let parts: Vec<u32> = v
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect();
    parts.as_slice() >= want
}

impl Mke2fs {
    /// Picks the mke2fs to use: the host's, else the image's (`usr` is the
    /// image's /usr tree, wherever it is now; `config` its mke2fs.conf).
    pub fn find(usr: &Path, config: &Path, multiarch: &str) -> Result<Mke2fs, DiskError> {
        let host = find_tool("mke2fs");
        // Candidates in order of preference: the host's, then the image's
        // own through the image's dynamic loader.
        let mut candidates: Vec<Vec<OsString>> = Vec::new();
        if let Ok(h) = &host {
            candidates.push(vec![h.clone().into_os_string()]);
        }
        let lib = usr.join("lib").join(multiarch);
        let loader = std::fs::read_dir(&lib).ok().and_then(|rd| {
            rd.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("ld-linux") && n.ends_with(".so.2"))
            })
        });
        let own = usr.join("sbin/mke2fs");
        if let (Some(loader), true) = (loader, own.is_file()) {
            candidates.push(vec![
                loader.into_os_string(),
                "--library-path".into(),
                lib.into_os_string(),
                own.into_os_string(),
            ]);
        }
        let config = Some(config.to_path_buf()).filter(|c| c.is_file());
        for argv0 in candidates {
            if let Some(v) = mke2fs_version(&argv0) {
                if version_at_least(&v, &[1, 47, 1]) {
                    return Ok(Mke2fs {
                        argv0,
                        config,
                        version: v,
                        reproducible: true,
                    });
                }
            }
        }
        // None is new enough: the host's, with a warning from the caller.
        let argv0 = vec![host?.into_os_string()];
        let version = mke2fs_version(&argv0).unwrap_or_else(|| "unknown".into());
        Ok(Mke2fs {
            argv0,
            config,
            version,
            reproducible: false,
        })
    }
}

/// An ext4 filesystem of `size` bytes holding `src`.
#[allow(clippy::too_many_arguments)]
pub fn make_ext4(
    mke2fs: &Mke2fs,
    src: &Path,
    out: &Path,
    size: u64,
    label: &str,
    uuid: &str,
    hash_seed: &str,
    epoch: i64,
) -> Result<(), DiskError> {
    let _ = std::fs::remove_file(out);
    let mut c = Command::new(&mke2fs.argv0[0]);
    c.args(&mke2fs.argv0[1..])
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string());
    if let Some(conf) = &mke2fs.config {
        c.env("MKE2FS_CONFIG", conf);
    }
    // Inodes for every entry plus room to grow (the default bytes-per-inode
    // ratio runs out on trees of many small files).
    // Never fewer than mke2fs's default ratio (16 KiB per inode), which a grown
    // root keeps per block group.
    let inodes = (count_entries(src)? * 5 / 4 + 1024).max(size / 16384);
    c.args([
        "-q", "-F", "-t", "ext4", "-b", "4096", "-L", label, "-U", uuid,
    ])
    .args(["-N", &inodes.to_string(), "-E"])
    .arg(format!("hash_seed={hash_seed},root_owner=0:0"))
    .arg("-d")
    .arg(src)
    .arg(out)
    .arg(format!("{}k", size / 1024));
    run(&mut c).map_err(|e| match e {
        DiskError::Tool { output, .. }
            if output.contains("Could not allocate") || output.contains("No space left") =>
        {
            DiskError::Other(format!(
                "the {label} filesystem content does not fit in {} MiB",
                size >> 20
            ))
        }
        DiskError::Tool { status, output, .. } => DiskError::Tool {
            tool: format!("mke2fs {}", mke2fs.version),
            status,
            output,
        },
        e => e,
    })?;
    Ok(())
}

/// A read-only erofs image of `src` (every timestamp `epoch`).
pub fn make_erofs(src: &Path, out: &Path, uuid: &str, epoch: i64) -> Result<(), DiskError> {
    let _ = std::fs::remove_file(out);
    let mut c = tool("mkfs.erofs")?;
    c.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .arg(format!("-T{epoch}"))
        .args(["-U", uuid, "--quiet"])
        .arg(out)
        .arg(src);
    run(&mut c)?;
    // Pad to a 4 KiB multiple (dm-verity data blocks).
    let f = std::fs::OpenOptions::new().write(true).open(out)?;
    let len = f.metadata()?.len();
    f.set_len(len.div_ceil(4096) * 4096)?;
    Ok(())
}

/// Appends a dm-verity hash tree for `data` into `hash`; returns the root hash.
pub fn make_verity(
    data: &Path,
    hash: &Path,
    salt_hex: &str,
    uuid: &str,
) -> Result<String, DiskError> {
    let _ = std::fs::remove_file(hash);
    let mut c = tool("veritysetup")?;
    c.arg("format")
        .arg(format!("--salt={salt_hex}"))
        .arg(format!("--uuid={uuid}"))
        .args(["--data-block-size=4096", "--hash-block-size=4096"])
        .arg(data)
        .arg(hash);
    let out = run(&mut c)?;
    out.lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|h| h.trim().to_string())
        .filter(|h| h.len() == 64)
        .ok_or_else(|| DiskError::Other(format!("veritysetup printed no root hash: {out}")))
}

/// Checks `data` against its hash tree and root hash (`veritysetup verify`).
pub fn check_verity(data: &Path, hash: &Path, root_hash: &str) -> Result<(), DiskError> {
    let mut c = tool("veritysetup")?;
    c.arg("verify").arg(data).arg(hash).arg(root_hash);
    run(&mut c).map(|_| ())
}

/// One file to place on a FAT filesystem.
pub struct FatFile {
    pub source: PathBuf,
    /// Path on the filesystem, e.g. `EFI/BOOT/BOOTX64.EFI`.
    pub dest: String,
}

/// A FAT filesystem image of `size` bytes (FAT32 from 64 MiB up, else FAT12/16)
/// with `files`, made with mkfs.vfat and mtools (no mount).
pub fn make_fat(
    out: &Path,
    size: u64,
    label: &str,
    volume_id: &str,
    files: &[FatFile],
    epoch: i64,
) -> Result<(), DiskError> {
    let _ = std::fs::remove_file(out);
    let mut c = tool("mkfs.vfat")?;
    c.arg("-C");
    if size >= 64 << 20 {
        c.args(["-F", "32"]);
    }
    // --invariant must come before -i, or the volume id is reset.
    c.args(["-n", label, "--invariant", "-i", volume_id])
        .arg(out)
        .arg((size / 1024).to_string());
    run(&mut c)?;
    let mut dirs: Vec<String> = Vec::new();
    for f in files {
        let parts: Vec<&str> = f.dest.split('/').collect();
        for i in 1..parts.len() {
            let d = parts[..i].join("/");
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    let mtools = |name: &str| -> Result<Command, DiskError> {
        let mut c = tool(name)?;
        c.env("MTOOLSRC", "/dev/null")
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .arg("-i")
            .arg(out);
        Ok(c)
    };
    if !dirs.is_empty() {
        let mut c = mtools("mmd")?;
        c.args(dirs.iter().map(|d| format!("::/{d}")));
        run(&mut c)?;
    }
    for f in files {
        let mut c = mtools("mcopy")?;
        c.arg(&f.source).arg(format!("::/{}", f.dest));
        run(&mut c)?;
    }
    Ok(())
}

/// Lists the files (recursively) of a FAT image: `EFI/BOOT/BOOTX64.EFI`, …
pub fn list_fat(image: &Path, offset: u64) -> Result<Vec<String>, DiskError> {
    let mut c = tool("mdir")?;
    c.env("MTOOLSRC", "/dev/null")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{offset}", image.display()))
        .args(["-/", "-b", "::/"]);
    let out = run(&mut c)?;
    Ok(out
        .lines()
        .filter_map(|l| l.strip_prefix("::/"))
        .map(|l| l.trim_end_matches('/').to_string())
        .collect())
}

/// Copies one file out of a FAT image.
pub fn read_fat_file(image: &Path, offset: u64, path: &str, dest: &Path) -> Result<(), DiskError> {
    let mut c = tool("mcopy")?;
    c.env("MTOOLSRC", "/dev/null")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-n")
        .arg("-i")
        .arg(format!("{}@@{offset}", image.display()))
        .arg(format!("::/{path}"))
        .arg(dest);
    run(&mut c).map(|_| ())
}

/// Converts a raw disk to compressed qcow2 in-process on every core
/// (deterministic output; see [`crate::qcow2`]).
pub fn make_qcow2(raw: &Path, out: &Path) -> Result<(), DiskError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    crate::qcow2::write_qcow2(raw, out, threads)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare() {
        assert!(version_at_least("1.47.1", &[1, 47, 1]));
        assert!(version_at_least("1.47.2", &[1, 47, 1]));
        assert!(version_at_least("1.48", &[1, 47, 1]));
        assert!(!version_at_least("1.47.0", &[1, 47, 1]));
    }

    #[test]
    fn missing_tool_names_its_package() {
        let e = find_tool("mkfs.erofs-does-not-exist").unwrap_err();
        assert!(e.to_string().contains("not installed"));
        assert_eq!(package_of("veritysetup"), "cryptsetup-bin");
        assert_eq!(package_of("qemu-system-x86_64"), "qemu-system-x86");
    }

    #[test]
    fn fat_is_reproducible_and_lists_its_files() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("hello.efi");
        std::fs::write(&src, b"MZ not really a PE file").unwrap();
        let files = [FatFile {
            source: src.clone(),
            dest: "EFI/BOOT/BOOTX64.EFI".into(),
        }];
        let a = d.path().join("a.img");
        let b = d.path().join("b.img");
        make_fat(&a, 64 << 20, "ESP", "12345678", &files, 1_700_000_000).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        make_fat(&b, 64 << 20, "ESP", "12345678", &files, 1_700_000_000).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let listed = list_fat(&a, 0).unwrap();
        assert!(
            listed.iter().any(|f| f == "EFI/BOOT/BOOTX64.EFI"),
            "{listed:?}"
        );
        let back = d.path().join("back");
        read_fat_file(&a, 0, "EFI/BOOT/BOOTX64.EFI", &back).unwrap();
        assert_eq!(std::fs::read(back).unwrap(), std::fs::read(src).unwrap());
    }

    #[test]
    fn erofs_with_verity_detects_a_flipped_byte() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("usr");
        std::fs::create_dir_all(tree.join("bin")).unwrap();
        std::fs::write(tree.join("bin/tool"), vec![7u8; 100_000]).unwrap();
        let data = d.path().join("usr.img");
        let hash = d.path().join("usr.verity");
        make_erofs(
            &tree,
            &data,
            "3f1c4b8e-1d2a-4c5b-9e8f-0a1b2c3d4e5f",
            1_700_000_000,
        )
        .unwrap();
        let salt = "00".repeat(32);
        let root =
            make_verity(&data, &hash, &salt, "3f1c4b8e-1d2a-4c5b-9e8f-0a1b2c3d4e60").unwrap();
        let again = make_verity(
            &data,
            &d.path().join("h2"),
            &salt,
            "3f1c4b8e-1d2a-4c5b-9e8f-0a1b2c3d4e60",
        )
        .unwrap();
        assert_eq!(root, again);
        check_verity(&data, &hash, &root).unwrap();
        let mut bytes = std::fs::read(&data).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 1;
        std::fs::write(&data, bytes).unwrap();
        assert!(check_verity(&data, &hash, &root).is_err());
    }
}

//! A deterministic tarball of a directory tree.
//!
//! Entries are written in byte order of their paths, with numeric owners
//! only, modification times clamped to the build's epoch, no access or
//! change times, hard links detected by inode, and extended attributes (file
//! capabilities) kept as PAX records. The same tree and epoch always give the
//! same bytes, whatever the machine or the order the kernel lists files in.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A device node or directory to add that is not in the tree (e.g. `/dev`
/// entries that containers expect).
#[derive(Clone, Debug)]
pub enum Special {
    CharDevice {
        path: &'static str,
        mode: u32,
        major: u32,
        minor: u32,
    },
    Symlink {
        path: &'static str,
        target: &'static str,
    },
    Dir {
        path: &'static str,
        mode: u32,
    },
}

/// The `/dev` entries a root filesystem tarball carries (as mmdebstrap's do).
pub const DEV_ENTRIES: &[Special] = &[
    Special::CharDevice {
        path: "dev/console",
        mode: 0o666,
        major: 5,
        minor: 1,
    },
    Special::Symlink {
        path: "dev/fd",
        target: "/proc/self/fd",
    },
    Special::CharDevice {
        path: "dev/full",
        mode: 0o666,
        major: 1,
        minor: 7,
    },
    Special::CharDevice {
        path: "dev/null",
        mode: 0o666,
        major: 1,
        minor: 3,
    },
    Special::CharDevice {
        path: "dev/ptmx",
        mode: 0o666,
        major: 5,
        minor: 2,
    },
    Special::Dir {
        path: "dev/pts",
        mode: 0o755,
    },
    Special::CharDevice {
        path: "dev/random",
        mode: 0o666,
        major: 1,
        minor: 8,
    },
    Special::Dir {
        path: "dev/shm",
        mode: 0o755,
    },
    Special::Symlink {
        path: "dev/stderr",
        target: "/proc/self/fd/2",
    },
    Special::Symlink {
        path: "dev/stdin",
        target: "/proc/self/fd/0",
    },
    Special::Symlink {
        path: "dev/stdout",
        target: "/proc/self/fd/1",
    },
    Special::CharDevice {
        path: "dev/tty",
        mode: 0o666,
        major: 5,
        minor: 0,
    },
    Special::CharDevice {
        path: "dev/urandom",
        mode: 0o666,
        major: 1,
        minor: 9,
    },
    Special::CharDevice {
        path: "dev/zero",
        mode: 0o666,
        major: 1,
        minor: 5,
    },
];

pub struct TarOptions<'a> {
    /// Upper bound for every modification time (SOURCE_DATE_EPOCH).
    pub epoch: u64,
    pub extra: &'a [Special],
    /// Owners by path (relative to the root, no leading `./` or `/`), `0:0`
    /// for paths not listed, instead of the owners on disk: for trees built
    /// without privileges, whose files all belong to the user who built them.
    pub owners: Option<&'a std::collections::BTreeMap<String, (u32, u32)>>,
}

#[derive(Clone, Debug)]
pub struct TarSummary {
    pub entries: usize,
    pub size: u64,
    pub sha256: String,
}

/// Writes everything it is given while hashing and counting it.
pub(crate) struct HashingWriter<W: Write> {
    pub(crate) inner: W,
    pub(crate) hash: Sha256,
    pub(crate) size: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hash: Sha256::new(),
            size: 0,
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.hash.update(&b[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn sorted_children(dir: &Path) -> std::io::Result<Vec<std::ffi::OsString>> {
    let mut v: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    v.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    Ok(v)
}

fn header(meta: &std::fs::Metadata, epoch: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(meta.uid() as u64);
    h.set_gid(meta.gid() as u64);
    h.set_mtime((meta.mtime().max(0) as u64).min(epoch));
    h.set_size(0);
    h
}

fn xattrs(path: &Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let Ok(names) = xattr::list(path) else {
        return Ok(out);
    };
    let mut names: Vec<_> = names.collect();
    names.sort();
    for n in names {
        let name = n.to_string_lossy().into_owned();
        if name == "security.selinux" {
            continue; // the build host's labels, not the image's
        }
        if let Some(v) = xattr::get(path, &n)? {
            out.push((format!("SCHILY.xattr.{name}"), v));
        }
    }
    Ok(out)
}

struct Walker<'a, W: Write> {
    builder: tar::Builder<W>,
    root: PathBuf,
    epoch: u64,
    links: HashMap<(u64, u64), String>,
    entries: usize,
    extra: &'a [Special],
    owners: Option<&'a std::collections::BTreeMap<String, (u32, u32)>>,
}

impl<W: Write> Walker<'_, W> {
    /// The header of `rel` (`""` for the root), its owner from
    /// [`TarOptions::owners`] when given.
    fn header(&self, meta: &std::fs::Metadata, rel: &str) -> tar::Header {
        let mut h = header(meta, self.epoch);
        if let Some(owners) = self.owners {
            let (uid, gid) = owners.get(rel).copied().unwrap_or((0, 0));
            h.set_uid(uid as u64);
            h.set_gid(gid as u64);
        }
        h
    }

    fn special(&mut self, s: &Special) -> std::io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(self.epoch);
        h.set_size(0);
        match s {
            Special::CharDevice {
                path,
                mode,
                major,
                minor,
            } => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(*mode);
                h.set_device_major(*major)?;
                h.set_device_minor(*minor)?;
                self.builder
                    .append_data(&mut h, format!("./{path}"), std::io::empty())?;
            }
            Special::Symlink { path, target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                self.builder
                    .append_link(&mut h, format!("./{path}"), target)?;
            }
            Special::Dir { path, mode } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                self.builder
                    .append_data(&mut h, format!("./{path}/"), std::io::empty())?;
            }
        }
        self.entries += 1;
        Ok(())
    }

    fn entry(&mut self, rel: &str) -> std::io::Result<()> {
        let path = if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        };
        let meta = std::fs::symlink_metadata(&path)?;
        let ft = meta.file_type();
        let name = if rel.is_empty() {
            "./".to_string()
        } else {
            format!("./{rel}")
        };
        let mut h = self.header(&meta, rel);
        let pax = if ft.is_symlink() {
            Vec::new()
        } else {
            xattrs(&path)?
        };
        if !pax.is_empty() {
            self.builder
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            let name = if name.ends_with('/') {
                name
            } else {
                format!("{name}/")
            };
            self.builder.append_data(&mut h, &name, std::io::empty())?;
            self.entries += 1;
            for c in sorted_children(&path)? {
                let child = c.to_string_lossy().into_owned();
                let child_rel = if rel.is_empty() {
                    child
                } else {
                    format!("{rel}/{child}")
                };
                self.entry(&child_rel)?;
            }
            // Extra entries go into their directory, in sorted position.
            return Ok(());
        }
        if ft.is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            let target = std::fs::read_link(&path)?;
            self.builder.append_link(&mut h, &name, target)?;
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                if let Some(first) = self.links.get(&key) {
                    h.set_entry_type(tar::EntryType::Link);
                    let first = first.clone();
                    self.builder.append_link(&mut h, &name, first)?;
                    self.entries += 1;
                    return Ok(());
                }
                self.links.insert(key, name.clone());
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(meta.len());
            let f = std::fs::File::open(&path)?;
            self.builder.append_data(&mut h, &name, f)?;
        } else if ft.is_char_device() || ft.is_block_device() {
            h.set_entry_type(if ft.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            });
            let rdev = meta.rdev();
            h.set_device_major(((rdev >> 8) & 0xfff) as u32 | ((rdev >> 32) & !0xfff) as u32)?;
            h.set_device_minor((rdev & 0xff) as u32 | ((rdev >> 12) & !0xff) as u32)?;
            self.builder.append_data(&mut h, &name, std::io::empty())?;
        } else if ft.is_fifo() {
            h.set_entry_type(tar::EntryType::Fifo);
            self.builder.append_data(&mut h, &name, std::io::empty())?;
        } else {
            return Ok(()); // sockets are runtime state
        }
        self.entries += 1;
        Ok(())
    }
}

/// Writes a tarball of `root` to `out`.
pub fn write_tar<W: Write>(root: &Path, out: W, opts: &TarOptions) -> std::io::Result<TarSummary> {
    let hashing = HashingWriter {
        inner: out,
        hash: Sha256::new(),
        size: 0,
    };
    let mut builder = tar::Builder::new(hashing);
    builder.follow_symlinks(false);
    let mut w = Walker {
        builder,
        root: root.to_path_buf(),
        epoch: opts.epoch,
        links: HashMap::new(),
        entries: 0,
        extra: opts.extra,
        owners: opts.owners,
    };
    // Walk the top level by hand so the extra /dev entries land in order.
    w.entry_top()?;
    let entries = w.entries;
    let mut hashing = w.builder.into_inner()?;
    hashing.flush()?;
    Ok(TarSummary {
        entries,
        size: hashing.size,
        sha256: hex::encode(hashing.hash.finalize()),
    })
}

impl<W: Write> Walker<'_, W> {
    fn entry_top(&mut self) -> std::io::Result<()> {
        // The root itself, then each child; `dev` gets the extra entries
        // merged into its (sorted) listing.
        let meta = std::fs::symlink_metadata(&self.root)?;
        let mut h = self.header(&meta, "");
        h.set_entry_type(tar::EntryType::Directory);
        self.builder.append_data(&mut h, "./", std::io::empty())?;
        self.entries += 1;
        for c in sorted_children(&self.root)? {
            let name = c.to_string_lossy().into_owned();
            if name == "dev" && !self.extra.is_empty() {
                self.dev_dir()?;
            } else {
                self.entry(&name)?;
            }
        }
        Ok(())
    }

    fn dev_dir(&mut self) -> std::io::Result<()> {
        let path = self.root.join("dev");
        let meta = std::fs::symlink_metadata(&path)?;
        let mut h = self.header(&meta, "dev");
        h.set_entry_type(tar::EntryType::Directory);
        self.builder
            .append_data(&mut h, "./dev/", std::io::empty())?;
        self.entries += 1;
        let mut names: Vec<(String, Option<usize>)> = sorted_children(&path)?
            .into_iter()
            .map(|c| (c.to_string_lossy().into_owned(), None))
            .collect();
        for (i, s) in self.extra.iter().enumerate() {
            let p = match s {
                Special::CharDevice { path, .. }
                | Special::Symlink { path, .. }
                | Special::Dir { path, .. } => *path,
            };
            let n = p.trim_start_matches("dev/").to_string();
            if let Some(e) = names.iter_mut().find(|(x, _)| *x == n) {
                e.1 = Some(i); // the tree has it (an empty mount point): describe it ourselves
            } else {
                names.push((n, Some(i)));
            }
        }
        names.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let extra = self.extra;
        for (n, special) in names {
            match special {
                Some(i) => self.special(&extra[i])?,
                None => self.entry(&format!("dev/{n}"))?,
            }
        }
        Ok(())
    }
}

/// Writes the tarball to `dest` atomically: a temporary file in the same
/// directory, renamed into place only when complete.
pub fn write_tar_file(root: &Path, dest: &Path, opts: &TarOptions) -> std::io::Result<TarSummary> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.partial-{}",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("out"),
        std::process::id()
    ));
    let result = (|| {
        let f = std::fs::File::create(&tmp)?;
        let mut bw = std::io::BufWriter::with_capacity(1 << 20, f);
        let summary = write_tar(root, &mut bw, opts)?;
        let f = bw.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)?;
        Ok(summary)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::create_dir_all(r.join("dev")).unwrap();
        std::fs::write(r.join("usr/bin/b"), "bee").unwrap();
        std::fs::write(r.join("usr/bin/a"), "aye").unwrap();
        std::fs::hard_link(r.join("usr/bin/a"), r.join("usr/bin/c")).unwrap();
        symlink("usr/bin", r.join("bin")).unwrap();
        d
    }

    fn list(data: &[u8]) -> Vec<(String, tar::EntryType, u64)> {
        tar::Archive::new(data)
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().entry_type(),
                    e.header().mtime().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn sorted_clamped_with_hardlinks_and_dev_entries() {
        let d = tree();
        let mut out = Vec::new();
        write_tar(
            d.path(),
            &mut out,
            &TarOptions {
                epoch: 1000,
                extra: DEV_ENTRIES,
                owners: None,
            },
        )
        .unwrap();
        let l = list(&out);
        let names: Vec<&str> = l.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(&names[..4], ["./", "bin", "dev/", "dev/console"]);
        assert!(names.contains(&"dev/null"));
        let tail: Vec<&str> = names.iter().rev().take(3).rev().copied().collect();
        assert_eq!(tail, ["usr/bin/a", "usr/bin/b", "usr/bin/c"]);
        let c = l.iter().find(|(n, _, _)| n == "usr/bin/c").unwrap();
        assert_eq!(c.1, tar::EntryType::Link);
        assert!(l.iter().all(|(_, _, m)| *m <= 1000));
    }

    #[test]
    fn same_tree_same_bytes() {
        let d1 = tree();
        let d2 = tree();
        let mut a = Vec::new();
        let mut b = Vec::new();
        let o = TarOptions {
            epoch: 1_700_000_000,
            extra: DEV_ENTRIES,
            owners: None,
        };
        let sa = write_tar(d1.path(), &mut a, &o).unwrap();
        let sb = write_tar(d2.path(), &mut b, &o).unwrap();
        assert_eq!(a, b);
        assert_eq!(sa.sha256, sb.sha256);
    }

    #[test]
    fn owners_given_replace_the_owners_on_disk() {
        let d = tree();
        // What a build without privileges leaves: files of the builder.
        let _ = std::os::unix::fs::lchown(d.path().join("usr/bin/b"), Some(1001), Some(1001));
        let owners = std::collections::BTreeMap::from([("usr/bin/a".to_string(), (65532, 65533))]);
        let mut out = Vec::new();
        write_tar(
            d.path(),
            &mut out,
            &TarOptions {
                epoch: 1000,
                extra: &[],
                owners: Some(&owners),
            },
        )
        .unwrap();
        let ids: Vec<(String, u64, u64)> = tar::Archive::new(out.as_slice())
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                )
            })
            .collect();
        for (name, uid, gid) in &ids {
            let want = if name == "usr/bin/a" {
                (65532, 65533)
            } else {
                (0, 0)
            };
            assert_eq!((*uid, *gid), want, "{name}");
        }
        assert!(ids.iter().any(|(n, _, _)| n == "usr/bin/b"));
    }
}

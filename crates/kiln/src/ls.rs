//! `kiln ls OUT`: what a build's output holds: its packages, biggest first;
//! its files, biggest first; which package owns a path. Read from the
//! rootfs tarball or the OCI image (its layers in order), never unpacked.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_model::{Format, Hinted, Manifest};

use crate::ui::Ui;

/// One file of the image: its path (no leading `/`) and size.
struct Entry {
    size: u64,
    /// The text of dpkg's file lists (`info/*.list`, `status.d/*.md5sums`).
    list: Option<String>,
}

pub struct LsArgs {
    pub dir: PathBuf,
    pub files: bool,
    pub owner: Option<String>,
    pub arch: Option<String>,
    pub json: bool,
}

/// The architecture `--arch` names (default: the build's first), which
/// the build in `dir` must have.
pub(crate) fn pick_arch(m: &Manifest, dir: &Path, arch: Option<&str>) -> Result<String> {
    let arch = arch
        .map(str::to_string)
        .unwrap_or_else(|| m.architectures.first().cloned().unwrap_or_default());
    if !m.architectures.contains(&arch) {
        return Err(Hinted::new(
            format!("{} has no {arch} image", dir.display()),
            format!("give --arch {}", m.architectures.join(" or --arch ")),
        )
        .into());
    }
    Ok(arch)
}

/// An OCI layer blob as its tar stream, by its media type.
pub(crate) fn open_layer(media: &str, blob: &Path) -> Result<Box<dyn Read>> {
    let f = std::fs::File::open(blob).with_context(|| format!("opening {}", blob.display()))?;
    Ok(if media.ends_with("+zstd") {
        Box::new(zstd::Decoder::new(f)?)
    } else if media.ends_with("+gzip") {
        // Kiln writes multi-member gzip (one member per block).
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else {
        Box::new(f)
    })
}

pub fn cmd_ls(ui: &Ui, a: &LsArgs) -> Result<()> {
    let m = Manifest::read_dir(&a.dir)?;
    let arch = pick_arch(&m, &a.dir, a.arch.as_deref())?;
    if !a.files && a.owner.is_none() {
        return packages(ui, &m, &a.dir, &arch, a.json);
    }
    let tree = read_tree(&a.dir, &m, &arch)?;
    if let Some(path) = &a.owner {
        let want = path.trim_start_matches('/').trim_end_matches('/');
        let mut owners: Vec<String> = Vec::new();
        for (name, e) in &tree {
            let Some(list) = &e.list else { continue };
            let pkg = name
                .rsplit('/')
                .next()
                .unwrap_or("")
                .trim_end_matches(".list")
                .trim_end_matches(".md5sums")
                .to_string();
            let owns = list.lines().any(|l| {
                // `/usr/bin/x` (info/*.list) or `MD5  usr/bin/x` (md5sums).
                let p = l.rsplit("  ").next().unwrap_or(l);
                p.trim_start_matches('/') == want
            });
            if owns && !owners.contains(&pkg) {
                owners.push(pkg);
            }
        }
        if a.json {
            outln!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({ "path": format!("/{want}"), "packages": owners })
                )?
            );
        } else if owners.is_empty() {
            return Err(Hinted::new(
                format!("no package of {} owns /{want}", a.dir.display()),
                "Kiln or a maintainer script made it, or it is not in the image: kiln ls --files lists what is",
            )
            .into());
        } else {
            outln!("/{want}: {}", owners.join(", "));
        }
        return Ok(());
    }
    let mut files: Vec<(&String, u64)> = tree.iter().map(|(n, e)| (n, e.size)).collect();
    files.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(y.0)));
    if a.json {
        let list: Vec<_> = files
            .iter()
            .map(|(n, s)| serde_json::json!({ "path": format!("/{n}"), "size": s }))
            .collect();
        outln!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        for (n, s) in &files {
            outln!("{:>10}  /{n}", kiln_model::human_size(*s));
        }
        ui.status("Listed", &format!("{} files", files.len()));
    }
    Ok(())
}

/// The packages, biggest installed size first (from the lock beside the
/// manifest; by name when the lock is not there).
fn packages(ui: &Ui, m: &Manifest, dir: &Path, arch: &str, json: bool) -> Result<()> {
    let sizes: BTreeMap<(String, String), u64> = kiln_recipe::Lock::read(&m.lock_path(dir))
        .map(|l| {
            l.packages
                .into_iter()
                .filter(|p| p.target == arch)
                .map(|p| {
                    (
                        (p.name, p.architecture),
                        p.installed_size.saturating_mul(1024),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut pkgs: Vec<_> = m
        .packages
        .iter()
        .filter(|p| p.target == arch)
        .map(|p| {
            let size = sizes
                .get(&(p.name.clone(), p.architecture.clone()))
                .copied();
            (p, size)
        })
        .collect();
    pkgs.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.name.cmp(&y.0.name)));
    if json {
        let list: Vec<_> = pkgs
            .iter()
            .map(|(p, s)| {
                serde_json::json!({ "name": p.name, "version": p.version, "architecture": p.architecture, "installed-size": s })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    for (p, s) in &pkgs {
        let size = s.map(kiln_model::human_size).unwrap_or_else(|| "?".into());
        outln!("{size:>10}  {} {} ({})", p.name, p.version, p.architecture);
    }
    ui.status("Listed", &format!("{} packages for {arch}", pkgs.len()));
    Ok(())
}

/// Every file of the image for `arch`: from its rootfs tarball, else its
/// OCI image (layers applied in order, whiteouts honoured).
fn read_tree(dir: &Path, m: &Manifest, arch: &str) -> Result<BTreeMap<String, Entry>> {
    let of_arch = |f: Format| {
        m.outputs
            .iter()
            .find(|o| o.format == f && o.architecture.as_deref().is_none_or(|a| a == arch))
    };
    let mut tree = BTreeMap::new();
    if let Some(t) = of_arch(Format::Tar) {
        let f = std::fs::File::open(dir.join(&t.path))
            .with_context(|| format!("opening {}", dir.join(&t.path).display()))?;
        apply_layer(&mut tree, f)?;
        return Ok(tree);
    }
    if of_arch(Format::Oci).is_some() {
        let layout = dir.join("oci");
        for (media, blob) in oci_layers(&layout, arch)? {
            apply_layer(&mut tree, open_layer(&media, &blob)?)?;
        }
        return Ok(tree);
    }
    Err(Hinted::new(
        format!("{} has no rootfs tarball or OCI image to list files of", dir.display()),
        "build with [output] formats = [\"tar\"] or [\"oci\"]; kiln ls without --files lists the packages of any build",
    )
    .into())
}

/// The layers of the image for `arch` in an OCI layout, in order.
pub(crate) fn oci_layers(layout: &Path, arch: &str) -> Result<Vec<(String, PathBuf)>> {
    let blob = |digest: &str| -> Result<PathBuf> {
        let hex = digest.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            anyhow::bail!("bad digest {digest:?} in {}", layout.display());
        }
        Ok(layout.join("blobs/sha256").join(hex))
    };
    let read = |p: &Path| -> Result<serde_json::Value> {
        Ok(serde_json::from_slice(
            &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        )?)
    };
    let index = read(&layout.join("index.json"))?;
    let mut desc = index["manifests"][0].clone();
    if desc["mediaType"] == "application/vnd.oci.image.index.v1+json" {
        let inner = read(&blob(desc["digest"].as_str().unwrap_or(""))?)?;
        let (want, _) = kiln_image::oci::oci_platform(arch);
        desc = inner["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["platform"]["architecture"] == want)
            .cloned()
            .with_context(|| {
                format!("the OCI index in {} has no {arch} image", layout.display())
            })?;
    }
    let manifest = read(&blob(desc["digest"].as_str().unwrap_or(""))?)?;
    manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            Ok((
                l["mediaType"].as_str().unwrap_or("").to_string(),
                blob(l["digest"].as_str().unwrap_or(""))?,
            ))
        })
        .collect()
}

/// Applies one tar stream to `tree`: entries added or replaced, whiteouts
/// (`.wh.NAME`, `.wh..wh..opq`) removing what earlier layers had.
fn apply_layer(tree: &mut BTreeMap<String, Entry>, r: impl Read) -> Result<()> {
    apply_layer_within(tree, r, MAX_ENTRIES)
}

/// Entries an image may have (as many as a package may: a few hundred
/// bytes of compressed layer cannot make Kiln hold millions of names).
const MAX_ENTRIES: usize = 1_000_000;
/// dpkg file-list text held at once, over all packages.
const MAX_LIST_BYTES: usize = 256 << 20;

fn apply_layer_within(
    tree: &mut BTreeMap<String, Entry>,
    r: impl Read,
    max_entries: usize,
) -> Result<()> {
    let mut ar = tar::Archive::new(r);
    // Counted with what the layers below left, so many layers add up.
    let mut seen = tree.len();
    let mut list_bytes: usize = tree
        .values()
        .filter_map(|e| e.list.as_ref().map(String::len))
        .sum();
    for e in ar.entries()? {
        seen += 1;
        if seen > max_entries {
            return Err(Hinted::new(
                format!("the image has more than {max_entries} entries: refused as a likely bomb"),
                "an image Kiln built never has this many; the output directory holds something else",
            )
            .into());
        }
        let mut e = e?;
        let path = e.path()?.to_string_lossy().into_owned();
        let name = path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        if name.is_empty() {
            continue;
        }
        let (parent, base) = name
            .rsplit_once('/')
            .map_or(("", name.as_str()), |(p, b)| (p, b));
        if base == ".wh..wh..opq" {
            let prefix = format!("{parent}/");
            tree.retain(|k, _| !k.starts_with(&prefix));
            continue;
        }
        if let Some(gone) = base.strip_prefix(".wh.") {
            let gone = if parent.is_empty() {
                gone.to_string()
            } else {
                format!("{parent}/{gone}")
            };
            let prefix = format!("{gone}/");
            tree.retain(|k, _| *k != gone && !k.starts_with(&prefix));
            continue;
        }
        if !e.header().entry_type().is_file() {
            continue;
        }
        let size = e.header().size().unwrap_or(0);
        let is_list = (name.starts_with("var/lib/dpkg/info/") && name.ends_with(".list"))
            || (name.starts_with("var/lib/dpkg/status.d/") && name.ends_with(".md5sums"));
        let list = if is_list && size < (64 << 20) && list_bytes < MAX_LIST_BYTES {
            let mut s = String::new();
            e.by_ref()
                .take(64 << 20)
                .read_to_string(&mut s)
                .ok()
                .map(|_| {
                    list_bytes += s.len();
                    s
                })
        } else {
            None
        };
        tree.insert(name, Entry { size, list });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar stream of `n` empty files, made as it is read (never held).
    struct ManyFiles {
        n: usize,
        i: usize,
        block: Vec<u8>,
        at: usize,
    }

    impl Read for ManyFiles {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.at == self.block.len() {
                if self.i == self.n {
                    return Ok(0);
                }
                let mut h = tar::Header::new_gnu();
                h.set_path(format!("f{}", self.i)).unwrap();
                h.set_size(0);
                h.set_mode(0o644);
                h.set_cksum();
                self.block = h.as_bytes().to_vec();
                self.at = 0;
                self.i += 1;
            }
            let k = buf.len().min(self.block.len() - self.at);
            buf[..k].copy_from_slice(&self.block[self.at..self.at + k]);
            self.at += k;
            Ok(k)
        }
    }

    #[test]
    fn an_image_with_too_many_entries_is_refused_not_held() {
        let many = |n| ManyFiles {
            n,
            i: 0,
            block: Vec::new(),
            at: 0,
        };
        let mut tree = BTreeMap::new();
        apply_layer_within(&mut tree, many(1000), 1000).unwrap();
        assert_eq!(tree.len(), 1000);
        let mut tree = BTreeMap::new();
        let e = apply_layer_within(&mut tree, many(1001), 1000).unwrap_err();
        assert!(e.to_string().contains("more than 1000 entries"), "{e}");
        assert!(tree.len() <= 1000);
    }
}

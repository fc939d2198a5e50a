//! Outputs: each turns a finished root into artifacts. A new format is one
//! [`Output`] implementation. No output changes the root it is given
//! (`BuiltRoot::path` is shared by every output of the build, so their
//! order cannot change their bytes): an output that needs to change the
//! tree works on a private copy under `BuiltRoot::scratch`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use kiln_model::{Artifact, Cancel, DiskFacts, Format, Hinted, Reporter};
use kiln_recipe::{Lock, LockedPackage, Recipe};

pub mod disk;
pub mod oci;
pub mod plan;
pub mod tar;
pub mod update;

/// What every output of one build shares.
pub struct Context<'a> {
    pub recipe: &'a Recipe,
    pub lock: &'a Lock,
    pub epoch: i64,
    pub out_dir: &'a Path,
    /// Several image architectures: file names carry the architecture.
    pub multi_arch: bool,
    pub reporter: &'a dyn Reporter,
    pub cancel: &'a Cancel,
    /// The signing key, for an `[update]` image (it carries the public
    /// half as its OpenPGP keyring).
    pub update_key: Option<&'a kiln_attest::SigningKey>,
}

/// One architecture's finished root, read-only for outputs.
pub struct BuiltRoot<'a> {
    pub arch: &'a str,
    pub path: &'a Path,
    /// Scratch space of this build on the root's filesystem.
    pub scratch: &'a Path,
    pub pkgs: &'a [&'a LockedPackage],
    pub debs: &'a [PathBuf],
    /// Seed of every derived UUID: the same lock and epoch give the same bytes.
    pub identity: String,
    /// Owners to write instead of those on disk (a distroless root built
    /// without privileges; see [`kiln_rootfs::extract::Ownership`]).
    pub owners: Option<&'a kiln_rootfs::extract::Ownership>,
}

/// What an output adds to the manifest for one root.
#[derive(Default)]
pub struct Produced {
    pub artifacts: Vec<Artifact>,
    pub disk: Option<DiskFacts>,
}

pub trait Output {
    /// Writes this output for one architecture's root.
    fn add(&mut self, cx: &Context, root: &BuiltRoot) -> Result<Produced>;

    /// After every architecture (e.g. the OCI index); moves results into place.
    fn finish(&mut self, _cx: &Context) -> Result<Vec<Artifact>> {
        Ok(Vec::new())
    }

    /// Removes whatever a failed build left half-written.
    fn abandon(&mut self, _cx: &Context) {}
}

/// The recipe's formats as outputs, in the recipe's order (`qcow2` is a
/// variant of the disk output).
pub fn outputs_for(recipe: &Recipe) -> Result<Vec<Box<dyn Output>>> {
    let formats: Vec<Format> = recipe
        .output
        .formats
        .iter()
        .map(|f| {
            Format::parse(f).ok_or_else(|| {
                Hinted::new(
                    format!("unknown output format `{f}`"),
                    "use tar, oci, disk, qcow2, vhd (Azure) or gce (GCE's tar.gz)",
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let mut out: Vec<Box<dyn Output>> = Vec::new();
    let mut disk_added = false;
    for f in &formats {
        match f {
            Format::Tar => out.push(Box::new(tar::Tar)),
            Format::Oci => out.push(Box::new(oci::Oci::new(recipe))),
            f if f.is_disk() && !disk_added => {
                disk_added = true;
                out.push(Box::new(disk::DiskOutput {
                    qcow2: formats.contains(&Format::Qcow2),
                    vhd: formats.contains(&Format::Vhd),
                    gce: formats.contains(&Format::Gce),
                }))
            }
            Format::Disk | Format::Qcow2 | Format::Vhd | Format::Gce => {}
            // Written by the disk output of an updating image.
            Format::Update => {}
        }
    }
    Ok(out)
}

/// The files a build of `recipe` writes into its output directory, by
/// name, in the order it writes them (`kiln show`'s plan): each format's
/// artifacts per architecture, then the manifest, the SBOMs and the
/// provenance. The names follow the outputs' own rules (`rootfs.tar`,
/// `rootfs-ARCH.tar` for several architectures, `disk.raw` with a qcow2).
pub fn planned_files(recipe: &Recipe) -> Vec<String> {
    let archs = &recipe.image.architectures;
    let multi = archs.len() > 1;
    let per_arch = |stem: &str, ext: &str| -> Vec<String> {
        if multi {
            archs.iter().map(|a| format!("{stem}-{a}.{ext}")).collect()
        } else {
            vec![format!("{stem}.{ext}")]
        }
    };
    let formats: Vec<Format> = recipe
        .output
        .formats
        .iter()
        .filter_map(|f| Format::parse(f))
        .collect();
    let mut out = Vec::new();
    let mut disk_done = false;
    for f in &formats {
        match f {
            Format::Tar => out.extend(per_arch("rootfs", "tar")),
            Format::Oci => out.push("oci/".to_string()),
            f if f.is_disk() && !disk_done => {
                disk_done = true;
                out.extend(per_arch("disk", "raw"));
                for (f, ext) in [
                    (Format::Qcow2, "qcow2"),
                    (Format::Vhd, "vhd"),
                    (Format::Gce, "tar.gz"),
                ] {
                    if formats.contains(&f) {
                        out.extend(per_arch("disk", ext));
                    }
                }
            }
            Format::Disk | Format::Qcow2 | Format::Vhd | Format::Gce => {}
            Format::Update => {}
        }
    }
    out.push("manifest.json".into());
    for s in kiln_model::sbom_files(archs) {
        out.push(s.spdx);
        out.push(s.cyclonedx);
    }
    out.push("provenance.json".into());
    debug_assert!(out
        .iter()
        .all(|n| crate::pipeline::is_build_output(n.trim_end_matches('/'))));
    out
}

/// An artifact record for a file in the output directory.
pub fn file_artifact(out_dir: &Path, name: &str, format: Format, arch: &str) -> Result<Artifact> {
    let (size, sha256) = kiln_archive::debs::sha256_file(&out_dir.join(name))?;
    Ok(Artifact {
        path: name.into(),
        format,
        architecture: Some(arch.into()),
        size,
        sha256,
    })
}

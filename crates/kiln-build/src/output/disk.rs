//! `disk` and `qcow2` outputs: a finished root tree → a bootable GPT disk
//! (Discoverable Partitions Specification), UEFI with systemd-boot and a
//! Unified Kernel Image, optionally with a read-only dm-verity `/usr`.
//! Nothing is mounted and no loop device is used.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use kiln_image::disk::{self, DiskError, FatFile, Mke2fs};
use kiln_image::gpt::{self, Partition};
use kiln_model::event::Stage;
use kiln_model::{DiskFacts, Format, Hinted, PartitionFact, UsrFacts};
use kiln_recipe::{Disk, Headroom, Recipe};

use super::plan::{
    arch_info, derived_guid, kernel_cmdline, plan, root_guid, uuid_from_hex, Content, UsrImages,
};
use super::update::{self, UpdateSpec};
use super::{file_artifact, BuiltRoot, Context, Output, Produced};
use crate::fetch::human_size;

const MIB: u64 = 1 << 20;

fn need_file(root: &Path, path: &str, package: &str, why: &str) -> Result<PathBuf> {
    let p = root.join(path.trim_start_matches('/'));
    if p.exists() {
        return Ok(p);
    }
    Err(Hinted {
        message: format!("the image has no {path}, which {why}"),
        hint: format!("add \"{package}\" to [packages] include"),
    }
    .into())
}

/// The newest kernel in /boot (by dpkg version order) and its initrd.
pub fn find_kernel(root: &Path) -> Result<String> {
    let mut kernels: Vec<String> = std::fs::read_dir(root.join("boot"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("vmlinuz-"))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    kernels.sort_by(|a, b| kiln_deb::version::compare(a, b));
    let Some(k) = kernels.pop() else {
        return Err(Hinted {
            message: "a disk image needs a kernel, but the recipe installs none (no /boot/vmlinuz-*)".into(),
            hint: "add a kernel to [packages] include, e.g. \"linux-image-cloud-amd64\" (or \"linux-image-amd64\" for bare metal)".into(),
        }
        .into());
    };
    if !root.join(format!("boot/initrd.img-{k}")).exists() {
        return Err(Hinted {
            message: format!("kernel {k} has no initrd (/boot/initrd.img-{k} is missing)"),
            hint:
                "add an initrd generator to [packages] include: \"initramfs-tools\" or \"dracut\""
                    .into(),
        }
        .into());
    }
    Ok(k)
}

/// The `disk` output (and `qcow2`, a compressed copy of the same disk;
/// `vhd` and `gce`, the conversions Azure and GCE import).
pub struct DiskOutput {
    pub qcow2: bool,
    pub vhd: bool,
    pub gce: bool,
}

impl Output for DiskOutput {
    fn add(&mut self, cx: &Context, root: &BuiltRoot) -> Result<Produced> {
        // The disk step changes its tree (factory copy, /usr split off, the
        // UKI built inside it), so it works on a private copy.
        let work = root.scratch.join("disk");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        let result = (|| {
            let tree = work.join("root");
            copy_tree(root.path, &tree)?;
            let job = DiskJob {
                recipe: cx.recipe,
                root: &tree,
                work: &work,
                arch: root.arch,
                epoch: cx.epoch,
                identity: root.identity.clone(),
                log: &root.scratch.join("build.log"),
                stem: if cx.multi_arch {
                    format!("disk-{}", root.arch)
                } else {
                    "disk".to_string()
                },
            };
            let (artifacts, facts) = build(cx, &job, self)?;
            Ok(Produced {
                artifacts,
                disk: Some(facts),
            })
        })();
        let _ = std::fs::remove_dir_all(&work);
        result
    }
}

/// `cp -a` (reflinks where the filesystem has them): ownership, modes,
/// links, xattrs and times kept.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let status = std::process::Command::new("cp")
        .args(["-a", "--reflink=auto", "--no-target-directory"])
        .arg(from)
        .arg(to)
        .status()
        .context("running cp")?;
    if !status.success() {
        anyhow::bail!("copying the root to {} failed ({status})", to.display());
    }
    Ok(())
}

/// What the disk step needs from the build.
struct DiskJob<'a> {
    recipe: &'a Recipe,
    /// The disk step's own copy of the root (changed while the disk is made).
    root: &'a Path,
    /// Scratch space on the same filesystem as `root`.
    work: &'a Path,
    arch: &'a str,
    epoch: i64,
    /// Seed for every UUID: the same image identity gives the same disk.
    identity: String,
    log: &'a Path,
    /// Output file names: `disk.raw` or `disk-ARCH.raw`.
    stem: String,
}

/// Bytes an ext4 filesystem needs to hold `data` bytes of tree: inode
/// tables, bitmaps and group descriptors (~6%), the journal and reserve.
fn ext4_need(data: u64) -> u64 {
    let journal = if data > 2 << 30 { 128 * MIB } else { 64 * MIB };
    (data + data / 16 + journal + 16 * MIB).div_ceil(MIB) * MIB
}

fn with_headroom(need: u64, data: u64, h: Headroom) -> u64 {
    let extra = match h {
        Headroom::Percent(p) => data * p as u64 / 100,
        Headroom::Bytes(b) => b,
    };
    (need + extra).div_ceil(MIB) * MIB
}

/// Runs the image's own `ukify` in the root and returns the UKI's path.
fn build_uki(
    job: &DiskJob,
    kver: &str,
    cmdline: &str,
    cancel: &kiln_model::Cancel,
) -> Result<PathBuf> {
    let root = job.root;
    need_file(
        root,
        "/usr/bin/ukify",
        "systemd-ukify",
        "assembles the Unified Kernel Image",
    )?;
    let out_in_root = "/tmp/kiln-uki.efi";
    let mut env = kiln_rootfs::sandbox::script_env(job.epoch);
    env.push(("PYTHONDONTWRITEBYTECODE".into(), "1".into()));
    let linux = format!("--linux=/boot/vmlinuz-{kver}");
    let initrd = format!("--initrd=/boot/initrd.img-{kver}");
    let uname = format!("--uname={kver}");
    let cmd = format!("--cmdline={cmdline}");
    let output = format!("--output={out_in_root}");
    let argv = [
        "ukify",
        "build",
        linux.as_str(),
        initrd.as_str(),
        uname.as_str(),
        cmd.as_str(),
        "--os-release=@/etc/os-release",
        output.as_str(),
    ];
    let status = kiln_rootfs::sandbox::run_in_root(root, &argv, &env, job.log, cancel)?;
    let made = root.join(out_in_root.trim_start_matches('/'));
    if !status.success() || !made.is_file() {
        let log = std::fs::read_to_string(job.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(8).collect();
        return Err(Hinted {
            message: format!(
                "ukify could not build the Unified Kernel Image ({status}):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ),
            hint: "check that the kernel and initrd in /boot are complete".into(),
        }
        .into());
    }
    let dest = job.work.join("uki.efi");
    std::fs::rename(&made, &dest).or_else(|_| {
        std::fs::copy(&made, &dest)?;
        std::fs::remove_file(&made)
    })?;
    Ok(dest)
}

/// Keeps a copy of /etc and /var under /usr/share/factory, with tmpfiles
/// rules that restore missing entries at boot (the root can be wiped and
/// is rebuilt from the read-only, verified /usr).
fn factory_defaults(root: &Path) -> Result<()> {
    let factory = root.join("usr/share/factory");
    let mut rules = String::from(
        "# Written by kiln: rebuild /etc and /var entries from the factory defaults in /usr.\n",
    );
    for top in ["etc", "var"] {
        let dest = factory.join(top);
        std::fs::create_dir_all(&dest)?;
        let mut names: Vec<String> = std::fs::read_dir(root.join(top))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        for n in names {
            // /var/tmp is world-writable and made by systemd's own tmpfiles
            // rules; nothing under /usr may be world-writable.
            if n.chars().any(char::is_whitespace) || (top == "var" && n == "tmp") {
                continue;
            }
            let status = std::process::Command::new("cp")
                .args(["-a", "--reflink=auto"])
                .arg(root.join(top).join(&n))
                .arg(&dest)
                .status()
                .context("running cp")?;
            if !status.success() {
                anyhow::bail!("copying /{top}/{n} to /usr/share/factory/{top} failed");
            }
            rules.push_str(&format!("C /{top}/{n} - - - - -\n"));
        }
    }
    let conf = root.join("usr/lib/tmpfiles.d/kiln-factory.conf");
    std::fs::create_dir_all(conf.parent().unwrap())?;
    std::fs::write(&conf, rules)?;
    Ok(())
}

/// Sizes of the `/usr` and verity slots of an updating image, from the
/// `/usr` tree: half as large again (at least 256 MiB more), in 64 MiB
/// steps, so later versions fit; the hash tree needs under 1/127 of that.
fn slot_sizes(tree: u64) -> (u64, u64) {
    let usr = (tree + (tree / 2).max(256 * MIB)).div_ceil(64 * MIB) * 64 * MIB;
    let verity = (usr / 100 + MIB).div_ceil(MIB) * MIB;
    (usr, verity)
}

/// Names the image and its version in os-release (`IMAGE_ID`,
/// `IMAGE_VERSION`: systemd-sysupdate's `%A`, systemd-boot's sort key), and
/// makes every boot say on the console which version runs.
fn stamp_version(tree: &kiln_rootfs::inroot::Root, name: &str, version: &str) -> Result<()> {
    let rel = "usr/lib/os-release";
    let text = tree.read_to_string(rel).map_err(|e| {
        Hinted::new(
            format!("the image has no readable /{rel} ({e})"),
            "it comes from base-files, which every Debian image has",
        )
    })?;
    let mut out: String = text
        .lines()
        .filter(|l| !l.starts_with("IMAGE_ID=") && !l.starts_with("IMAGE_VERSION="))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(&format!("IMAGE_ID={name}\nIMAGE_VERSION={version}\n"));
    tree.write(rel, out.as_bytes(), 0o644)?;
    tree.write(
        "usr/lib/systemd/system/kiln-version.service",
        b"# Written by kiln: every boot's console log says which image version runs.\n[Unit]\nDescription=Announce the running image version\nDefaultDependencies=no\nAfter=systemd-journald.socket\n\n[Service]\nType=oneshot\nExecStart=/bin/sh -c '. /usr/lib/os-release; echo \"kiln: running $IMAGE_ID $IMAGE_VERSION\"'\nStandardOutput=journal+console\n\n[Install]\nWantedBy=sysinit.target\n",
        0o644,
    )?;
    tree.symlink(
        "../kiln-version.service",
        "usr/lib/systemd/system/sysinit.target.wants/kiln-version.service",
    )?;
    Ok(())
}

/// Builds `DIR/<stem>.raw` (and `.qcow2`, `.vhd`, `.tar.gz` when asked)
/// from the tree.
fn build(
    cx: &Context,
    job: &DiskJob,
    want: &DiskOutput,
) -> Result<(Vec<kiln_model::Artifact>, DiskFacts)> {
    let out_dir = cx.out_dir;
    let reporter = cx.reporter;
    let d: &Disk = &job.recipe.disk;
    let info = arch_info(job.arch)?;
    let root = job.root;
    let kver = find_kernel(root)?;
    let sd_boot = need_file(
        root,
        &format!("/usr/lib/systemd/boot/efi/{}", info.sd_boot),
        "systemd-boot-efi",
        "is the UEFI boot loader",
    )?;
    let immutable = d.layout == "immutable";
    if immutable {
        need_file(
            root,
            "/usr/bin/dracut",
            "dracut",
            "builds the systemd initrd that sets up dm-verity for /usr (initramfs-tools cannot)",
        )?;
        need_file(
            root,
            "/usr/lib/systemd/systemd-veritysetup",
            "systemd-cryptsetup",
            "opens the dm-verity /usr in the initrd",
        )?;
    }
    let uuid = |role: &str| derived_guid(&job.identity, role);
    let hex_of = |role: &str| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(format!(
            "kiln-disk:{}:{role}",
            job.identity
        )))
    };
    let mut usr_facts = None;
    let mut usr_images = None;
    let mut usr_files = None;
    let mut update_slots = None;
    let version = job.recipe.image.version.as_deref().unwrap_or("0");
    let root_uuid = root_guid(
        d,
        &job.identity,
        &format!("{}:{}", job.recipe.image.name, job.arch),
    );

    // /usr first: its verity root hash goes on the kernel command line.
    let usr_tree = job.work.join("usr-tree");
    if immutable {
        reporter.step(
            Stage::Seal,
            "/usr: factory defaults, read-only image, dm-verity hash tree",
        );
        let tree = kiln_rootfs::inroot::Root::open(root)?;
        stamp_version(&tree, &job.recipe.image.name, version)?;
        if let Some(u) = &job.recipe.update {
            for (path, package, why) in [
                (
                    "/usr/lib/systemd/systemd-sysupdate",
                    "systemd-container",
                    "installs the updates ([update])",
                ),
                (
                    "/usr/lib/systemd/systemd-bless-boot",
                    "systemd-boot",
                    "marks a healthy boot of a new version good ([update])",
                ),
                (
                    "/usr/bin/gpg",
                    "gpg",
                    "checks the channel's signature for systemd-sysupdate ([update])",
                ),
            ] {
                need_file(root, path, package, why)?;
            }
            let key = cx.update_key.ok_or_else(|| {
                Hinted::new(
                    "an [update] image carries the key its updates are signed with, but no key was given",
                    "give --sign-key KEY.pem (or KILN_SIGN_KEY); kiln publish signs the channel with the same key",
                )
            })?;
            let keyring = kiln_attest::openpgp::public_keyring(key);
            let tree_len = disk::tree_size(&root.join("usr"))?;
            let slots = slot_sizes(tree_len);
            let spec = UpdateSpec {
                name: &job.recipe.image.name,
                version,
                dps: info.dps,
                update: u,
                health: job.recipe.tests.iter().filter(|t| t.health).collect(),
                keyring: &keyring,
                usr_slot: slots.0,
                verity_slot: slots.1,
            };
            update::install(&tree, &spec)?;
            update_slots = Some(slots);
        }
        factory_defaults(root)?;
        let usr_img = job.work.join("usr.img");
        let usr_size_tree = disk::tree_size(&root.join("usr"))?;
        if d.usr_filesystem == "erofs" {
            disk::make_erofs(&root.join("usr"), &usr_img, &uuid("usr-fs"), job.epoch)?;
        } else {
            let mke2fs = Mke2fs::find(
                &root.join("usr"),
                &root.join("etc/mke2fs.conf"),
                info.multiarch,
            )?;
            disk::make_ext4(
                &mke2fs,
                &root.join("usr"),
                &usr_img,
                ext4_need(usr_size_tree),
                "usr",
                &uuid("usr-fs"),
                &uuid("usr-hash-seed"),
                job.epoch,
            )?;
        }
        let hash_img = job.work.join("usr.verity");
        let roothash = disk::make_verity(
            &usr_img,
            &hash_img,
            &hex_of("usr-salt"),
            &uuid("usr-verity-sb"),
        )?;
        let usr_len = std::fs::metadata(&usr_img)?.len();
        let hash_len = std::fs::metadata(&hash_img)?.len();
        if let Some((a, b)) = update_slots {
            if usr_len > a || hash_len > b {
                return Err(DiskError::TooSmall {
                    what: "the /usr slot of an updating image".into(),
                    setting: "the slot size Kiln derives from the /usr tree".into(),
                    need: usr_len.max(hash_len),
                    have: a,
                }
                .into());
            }
        }
        usr_facts = Some(UsrFacts {
            filesystem: d.usr_filesystem.clone(),
            roothash: roothash.clone(),
            partuuid: uuid_from_hex(&roothash[..32]),
            verity_partuuid: uuid_from_hex(&roothash[32..]),
            size: usr_len,
            ab_slots: d.ab_slots,
        });
        usr_images = Some(UsrImages {
            usr_len,
            hash_len,
            roothash,
            slots: update_slots,
        });
        usr_files = Some((usr_img, hash_img));
    }
    let cmdline = kernel_cmdline(
        d,
        &root_uuid,
        usr_images.as_ref().map(|u| u.roothash.as_str()),
    );
    cx.cancel.check()?;
    reporter.step(Stage::Boot, &format!("Unified Kernel Image for {kver}"));
    let uki = build_uki(job, &kver, &cmdline, cx.cancel)?;
    let uki_len = std::fs::metadata(&uki)?.len();
    let sd_len = std::fs::metadata(&sd_boot)?.len();
    if uki_len + sd_len + 4 * MIB > d.esp_size {
        return Err(DiskError::TooSmall {
            what: format!(
                "the EFI system partition (UKI {}, systemd-boot {})",
                human_size(uki_len),
                human_size(sd_len)
            ),
            setting: "[disk] esp-size".into(),
            need: uki_len + sd_len + 4 * MIB,
            have: d.esp_size,
        }
        .into());
    }
    let loader_conf = job.work.join("loader.conf");
    std::fs::write(&loader_conf, "timeout 0\neditor no\n")?;
    let sd_copy = job.work.join("systemd-boot.efi");
    std::fs::copy(&sd_boot, &sd_copy)?;
    let esp_img = job.work.join("esp.img");
    reporter.step(
        Stage::Write,
        "EFI system partition (FAT32, systemd-boot + UKI)",
    );
    let volid = &hex_of("esp-volume-id")[..8];
    disk::make_fat(
        &esp_img,
        d.esp_size,
        "ESP",
        volid,
        &[
            FatFile {
                source: sd_copy,
                dest: format!("EFI/BOOT/{}", info.boot_file),
            },
            FatFile {
                source: uki.clone(),
                dest: if immutable {
                    format!(
                        "EFI/Linux/{}",
                        update::uki_file(&job.recipe.image.name, version)
                    )
                } else {
                    format!("EFI/Linux/{}-{kver}.efi", job.recipe.image.name)
                },
            },
            FatFile {
                source: loader_conf,
                dest: "loader/loader.conf".into(),
            },
        ],
        job.epoch,
    )?;

    // The root partition: the tree without /usr in the immutable layout.
    if immutable {
        std::fs::rename(root.join("usr"), &usr_tree)?;
    }
    let root_result = (|| -> Result<(PathBuf, u64)> {
        if immutable {
            std::fs::create_dir(root.join("usr"))?;
        }
        let data = disk::tree_size(root)?;
        let root_img = job.work.join("root.img");
        if d.filesystem == "erofs" {
            disk::make_erofs(root, &root_img, &uuid("root-fs"), job.epoch)?;
            let len = std::fs::metadata(&root_img)?.len();
            if let Some(fixed) = d.root_size {
                if len > fixed {
                    return Err(DiskError::TooSmall {
                        what: "the root filesystem content".into(),
                        setting: "[disk] root-size".into(),
                        need: len,
                        have: fixed,
                    }
                    .into());
                }
            }
            return Ok((root_img, d.root_size.unwrap_or(len)));
        }
        let need = ext4_need(data);
        let size = match d.root_size {
            Some(fixed) if fixed < need => {
                return Err(DiskError::TooSmall {
                    what: format!(
                        "the root filesystem ({} of files in {})",
                        human_size(data),
                        job.recipe.image.name
                    ),
                    setting: "[disk] root-size".into(),
                    need,
                    have: fixed,
                }
                .into())
            }
            Some(fixed) => fixed,
            None => with_headroom(need, data, d.headroom),
        };
        let usr = if immutable {
            usr_tree.clone()
        } else {
            root.join("usr")
        };
        let mke2fs = Mke2fs::find(&usr, &root.join("etc/mke2fs.conf"), info.multiarch)?;
        if !mke2fs.reproducible {
            reporter.warn(&format!(
                "mke2fs {} cannot make byte-identical ext4 filesystems (1.47.1 or newer can; the image has none either): disk.raw will not be reproducible",
                mke2fs.version
            ));
        }
        reporter.step(
            Stage::Write,
            &format!(
                "root filesystem (ext4, {} for {} of files)",
                human_size(size),
                human_size(data)
            ),
        );
        disk::make_ext4(
            &mke2fs,
            root,
            &root_img,
            size,
            "root",
            &uuid("root-fs"),
            &uuid("root-hash-seed"),
            job.epoch,
        )
        .map_err(|e| match e {
            DiskError::Other(m) if m.contains("does not fit") => {
                anyhow::Error::from(DiskError::TooSmall {
                    what: "the root filesystem content".into(),
                    setting: if d.root_size.is_some() {
                        "[disk] root-size".into()
                    } else {
                        "the computed root size ([disk] headroom)".into()
                    },
                    need: need + need / 4,
                    have: size,
                })
            }
            e => e.into(),
        })?;
        Ok((root_img, size))
    })();
    if immutable {
        let _ = std::fs::remove_dir(root.join("usr"));
        if let Err(e) = std::fs::rename(&usr_tree, root.join("usr")) {
            // The root's error first; a failed restore only adds to it.
            return Err(match root_result {
                Err(r) => r.context(format!("(moving /usr back into the root also failed: {e})")),
                Ok(_) => anyhow::Error::from(e).context("moving /usr back into the root"),
            });
        }
    }
    let (root_img, root_size) = root_result?;

    let plan = plan(
        d,
        &info,
        &job.identity,
        &root_uuid,
        job.recipe.image.version.as_deref(),
        usr_images.as_ref(),
        root_size,
    );
    debug_assert_eq!(plan.cmdline, cmdline);
    let parts: Vec<Partition> = plan
        .partitions
        .iter()
        .map(|p| Partition {
            type_guid: p.type_guid.clone(),
            guid: p.guid.clone(),
            label: p.label.clone(),
            image: match p.content {
                Content::Esp => Some(esp_img.clone()),
                Content::Usr => usr_files.as_ref().map(|f| f.0.clone()),
                Content::UsrVerity => usr_files.as_ref().map(|f| f.1.clone()),
                Content::Empty => None,
                Content::Root => Some(root_img.clone()),
            },
            size: p.size,
            attributes: p.attributes,
        })
        .collect();
    let raw_name = format!("{}.raw", job.stem);
    let raw = out_dir.join(&raw_name);
    cx.cancel.check()?;
    reporter.step(Stage::Write, &raw.display().to_string());
    let placed = gpt::write_disk(&raw, &plan.disk_guid, &parts)
        .with_context(|| format!("writing {}", raw.display()))?;
    let facts = DiskFacts {
        layout: d.layout.clone(),
        kernel: kver.clone(),
        root_filesystem: d.filesystem.clone(),
        cmdline: cmdline.clone(),
        usr: usr_facts,
        update: None,
        partitions: parts
            .iter()
            .zip(&placed)
            .map(|(p, at)| PartitionFact {
                label: p.label.clone(),
                type_guid: p.type_guid.clone(),
                partuuid: p.guid.clone(),
                offset: at.first_lba * 512,
                size: (at.last_lba + 1 - at.first_lba) * 512,
            })
            .collect(),
    };
    let mut facts = facts;
    let mut artifacts = vec![file_artifact(out_dir, &raw_name, Format::Disk, job.arch)?];
    if let (Some(up), Some(key)) = (&job.recipe.update, cx.update_key) {
        if let (Some((usr_img, hash_img)), Some(u)) = (&usr_files, &facts.usr) {
            reporter.step(
                Stage::Write,
                "update artifacts: /usr, its verity hash tree and the UKI (xz)",
            );
            let names = update::payload_names(
                &job.recipe.image.name,
                version,
                info.dps,
                &u.partuuid,
                &u.verity_partuuid,
            );
            let dir = out_dir.join(update::UPDATE_DIR);
            std::fs::create_dir_all(&dir)?;
            update::write_xz(usr_img, &dir.join(&names.usr))?;
            update::write_xz(hash_img, &dir.join(&names.verity))?;
            let uki_dest = dir.join(&names.uki);
            std::fs::copy(&uki, &uki_dest)
                .with_context(|| format!("writing {}", uki_dest.display()))?;
            let rel = |n: &str| format!("{}/{n}", update::UPDATE_DIR);
            for n in [&names.usr, &names.verity, &names.uki] {
                artifacts.push(file_artifact(out_dir, &rel(n), Format::Update, job.arch)?);
            }
            facts.update = Some(kiln_model::UpdateFacts {
                version: version.to_string(),
                url: up.url.clone(),
                channel: up.channel.clone(),
                tries: up.tries,
                key_fingerprint: kiln_attest::openpgp::fingerprint_hex(&key.verifying_key()),
                usr: rel(&names.usr),
                verity: rel(&names.verity),
                uki: rel(&names.uki),
            });
        }
    }
    if want.qcow2 {
        let name = format!("{}.qcow2", job.stem);
        let dest = out_dir.join(&name);
        let tmp = out_dir.join(format!(".{name}.partial-{}", std::process::id()));
        reporter.step(Stage::Write, &dest.display().to_string());
        let r = disk::make_qcow2(&raw, &tmp)
            .map_err(anyhow::Error::from)
            .and_then(|()| std::fs::rename(&tmp, &dest).map_err(anyhow::Error::from));
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r?;
        artifacts.push(file_artifact(out_dir, &name, Format::Qcow2, job.arch)?);
    }
    // The clouds' import formats, converted in-process (written under a
    // temporary name, renamed into place).
    for (on, ext, format) in [
        (want.vhd, "vhd", Format::Vhd),
        (want.gce, "tar.gz", Format::Gce),
    ] {
        if !on {
            continue;
        }
        let name = format!("{}.{ext}", job.stem);
        let dest = out_dir.join(&name);
        reporter.step(Stage::Write, &dest.display().to_string());
        let converted = match format {
            Format::Vhd => kiln_image::cloud::write_fixed_vhd(&raw, &dest, job.epoch),
            _ => kiln_image::cloud::write_gce_tar(&raw, &dest, job.epoch),
        };
        converted.map_err(|e| match e.hint() {
            Some(h) => anyhow::Error::from(Hinted::new(e.to_string(), h)),
            None => anyhow::Error::from(e),
        })?;
        artifacts.push(file_artifact(out_dir, &name, format, job.arch)?);
    }
    Ok((artifacts, facts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_leave_room_for_metadata_and_headroom() {
        let data = 500 * MIB;
        let need = ext4_need(data);
        assert!(need > data + 64 * MIB && need < data * 2);
        assert_eq!(with_headroom(need, data, Headroom::Bytes(MIB)), need + MIB);
        assert_eq!(
            with_headroom(need, data, Headroom::Percent(20)),
            need + 100 * MIB
        );
        assert_eq!(
            uuid_from_hex("0123456789abcdef0123456789abcdef"),
            "01234567-89ab-cdef-0123-456789abcdef"
        );
    }
}

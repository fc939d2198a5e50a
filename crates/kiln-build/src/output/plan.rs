//! The disk layout as a pure plan: partitions (types, labels, flags, UUIDs,
//! sizes) and the kernel command line, from the settings, the image identity
//! and the sizes of the filesystem images. No tool runs here, so every rule
//! (slot sizes, DPS types, which UUIDs come from the verity root hash) is
//! unit-tested without mke2fs; the disk step executes the plan.

use anyhow::Result;
use kiln_image::gpt;
use kiln_model::Hinted;
use kiln_recipe::Disk;

/// Per-architecture names (Discoverable Partitions Specification, UEFI).
pub struct ArchInfo {
    pub root: &'static str,
    pub usr: &'static str,
    pub usr_verity: &'static str,
    /// EFI removable-media boot file.
    pub boot_file: &'static str,
    /// systemd-boot's binary for the architecture.
    pub sd_boot: &'static str,
    pub multiarch: &'static str,
    /// The DPS architecture name used in partition labels.
    pub dps: &'static str,
}

pub fn arch_info(arch: &str) -> Result<ArchInfo> {
    match arch {
        "amd64" => Ok(ArchInfo {
            root: gpt::types::ROOT_X86_64,
            usr: gpt::types::USR_X86_64,
            usr_verity: gpt::types::USR_VERITY_X86_64,
            boot_file: "BOOTX64.EFI",
            sd_boot: "systemd-bootx64.efi",
            multiarch: "x86_64-linux-gnu",
            dps: "x86-64",
        }),
        "arm64" => Ok(ArchInfo {
            root: gpt::types::ROOT_ARM64,
            usr: gpt::types::USR_ARM64,
            usr_verity: gpt::types::USR_VERITY_ARM64,
            boot_file: "BOOTAA64.EFI",
            sd_boot: "systemd-bootaa64.efi",
            multiarch: "aarch64-linux-gnu",
            dps: "arm64",
        }),
        other => Err(Hinted::new(
            format!("disk images for {other} are not supported yet"),
            "build disk images for amd64 or arm64",
        )
        .into()),
    }
}

/// A GUID derived from the image identity and a role: the same lock and
/// epoch give the same disk.
pub fn derived_guid(identity: &str, role: &str) -> String {
    gpt::guid_from(format!("kiln-disk:{identity}:{role}").as_bytes())
}

/// UUID-shaped text from 32 hex digits (DPS: partition UUIDs from a root hash).
pub fn uuid_from_hex(h: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The sealed /usr: image sizes and the verity root hash.
#[derive(Clone, Debug)]
pub struct UsrImages {
    pub usr_len: u64,
    pub hash_len: u64,
    pub roothash: String,
    /// Fixed sizes of both slots (`/usr`, verity) of an updating image, so
    /// every later version fits wherever it is installed; None: slot A is
    /// the image's size and the free B slot a quarter larger.
    pub slots: Option<(u64, u64)>,
}

/// What a partition holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    Esp,
    Usr,
    UsrVerity,
    /// A free A/B slot, written by the first update.
    Empty,
    Root,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub content: Content,
    pub type_guid: String,
    pub guid: String,
    pub label: String,
    pub size: u64,
    pub attributes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskPlan {
    pub disk_guid: String,
    pub partitions: Vec<Planned>,
    pub cmdline: String,
}

/// GPT attribute bits.
const GROWFS: u64 = 1 << 59;
const READ_ONLY: u64 = 1 << 60;
const NO_AUTO: u64 = 1 << 63;

/// The root partition's UUID. In the immutable layout it comes from the
/// image's lineage (name and architecture) alone: the root partition
/// stays while `/usr` and the UKI are updated, and every later version's
/// command line must still find it. Otherwise from the image identity.
pub fn root_guid(disk: &Disk, identity: &str, lineage: &str) -> String {
    if disk.layout == "immutable" {
        gpt::guid_from(format!("kiln-disk-lineage:{lineage}:root").as_bytes())
    } else {
        derived_guid(identity, "root")
    }
}

/// The kernel command line: root by PARTUUID, ro/rw, the /usr root hash, then
/// the recipe's own arguments.
pub fn kernel_cmdline(disk: &Disk, root_guid: &str, roothash: Option<&str>) -> String {
    let mut c = vec![format!("root=PARTUUID={root_guid}")];
    c.push(
        if disk.filesystem == "erofs" {
            "ro"
        } else {
            "rw"
        }
        .into(),
    );
    if let Some(h) = roothash {
        c.push(format!("usrhash={h}"));
    }
    c.extend(disk.cmdline.iter().cloned());
    c.join(" ")
}

/// The whole layout. `usr` is present exactly for the immutable layout.
pub fn plan(
    disk: &Disk,
    info: &ArchInfo,
    identity: &str,
    root_guid: &str,
    version: Option<&str>,
    usr: Option<&UsrImages>,
    root_size: u64,
) -> DiskPlan {
    let guid = |role: &str| derived_guid(identity, role);
    let mut parts = vec![Planned {
        content: Content::Esp,
        type_guid: gpt::types::ESP.into(),
        guid: guid("esp"),
        label: "esp".into(),
        size: disk.esp_size,
        attributes: 0,
    }];
    if let Some(u) = usr {
        let v = version.unwrap_or("0");
        let (usr_slot, hash_slot) = u.slots.unwrap_or((u.usr_len, u.hash_len));
        parts.push(Planned {
            content: Content::Usr,
            type_guid: info.usr.into(),
            guid: uuid_from_hex(&u.roothash[..32]),
            label: super::update::usr_label(v),
            size: usr_slot,
            attributes: READ_ONLY,
        });
        parts.push(Planned {
            content: Content::UsrVerity,
            type_guid: info.usr_verity.into(),
            guid: uuid_from_hex(&u.roothash[32..64]),
            label: super::update::verity_label(v),
            size: hash_slot,
            attributes: READ_ONLY,
        });
        if disk.ab_slots {
            // The B slot: a quarter larger than A (room for a bigger next
            // release), empty, ignored by discovery (bit 63) until an update
            // writes it (systemd-sysupdate's "_empty").
            for (i, (t, size)) in [(info.usr, u.usr_len), (info.usr_verity, u.hash_len)]
                .into_iter()
                .enumerate()
            {
                let size = match u.slots {
                    Some((a, b)) => [a, b][i],
                    None => size + size / 4,
                };
                parts.push(Planned {
                    content: Content::Empty,
                    type_guid: t.into(),
                    guid: guid(&format!("usr-b-{i}")),
                    label: "_empty".into(),
                    size,
                    attributes: NO_AUTO,
                });
            }
        }
    }
    // Root last, so it can grow into a larger disk.
    parts.push(Planned {
        content: Content::Root,
        type_guid: info.root.into(),
        guid: root_guid.into(),
        label: format!("root-{}", info.dps),
        size: root_size,
        attributes: GROWFS,
    });
    DiskPlan {
        disk_guid: guid("disk"),
        partitions: parts,
        cmdline: kernel_cmdline(disk, root_guid, usr.map(|u| u.roothash.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_recipe::Headroom;

    const MIB: u64 = 1 << 20;

    fn settings(layout: &str, ab: bool) -> Disk {
        Disk {
            layout: layout.into(),
            filesystem: "ext4".into(),
            usr_filesystem: "erofs".into(),
            esp_size: 128 * MIB,
            root_size: None,
            headroom: Headroom::Percent(20),
            cmdline: vec!["console=ttyS0".into()],
            ab_slots: ab,
        }
    }

    fn usr() -> UsrImages {
        UsrImages {
            usr_len: 400 * MIB,
            hash_len: 4 * MIB,
            roothash: "0123456789abcdef0123456789abcdef".to_string()
                + "fedcba9876543210fedcba9876543210",
            slots: None,
        }
    }

    #[test]
    fn ab_slots_are_empty_no_auto_and_a_quarter_larger() {
        let info = arch_info("amd64").unwrap();
        let p = plan(
            &settings("immutable", true),
            &info,
            "id",
            "root-guid",
            Some("13"),
            Some(&usr()),
            300 * MIB,
        );
        let labels: Vec<&str> = p.partitions.iter().map(|x| x.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "esp",
                "usr_13",
                "usr-verity_13",
                "_empty",
                "_empty",
                "root-x86-64"
            ]
        );
        let b: Vec<&Planned> = p
            .partitions
            .iter()
            .filter(|x| x.content == Content::Empty)
            .collect();
        assert_eq!(b[0].size, 500 * MIB);
        assert_eq!(b[1].size, 5 * MIB);
        assert_eq!(b[0].type_guid, info.usr);
        assert_eq!(b[1].type_guid, info.usr_verity);
        assert!(b.iter().all(|x| x.attributes == NO_AUTO));
        // The B slot's UUIDs are distinct from each other and from A's.
        let mut guids: Vec<&str> = p.partitions.iter().map(|x| x.guid.as_str()).collect();
        guids.sort();
        guids.dedup();
        assert_eq!(guids.len(), 6);
    }

    #[test]
    fn usr_uuids_are_the_root_hash_halves_and_the_hash_is_on_the_cmdline() {
        let info = arch_info("amd64").unwrap();
        let p = plan(
            &settings("immutable", false),
            &info,
            "id",
            "root-guid",
            None,
            Some(&usr()),
            300 * MIB,
        );
        assert_eq!(p.partitions.len(), 4);
        assert_eq!(p.partitions[1].guid, "01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(p.partitions[2].guid, "fedcba98-7654-3210-fedc-ba9876543210");
        assert_eq!(p.partitions[1].label, "usr_0");
        assert!(p.partitions[1].attributes & READ_ONLY != 0);
        let root = p.partitions.last().unwrap();
        assert!(p
            .cmdline
            .starts_with(&format!("root=PARTUUID={} rw usrhash=0123", root.guid)));
        assert!(p.cmdline.ends_with(" console=ttyS0"));
    }

    #[test]
    fn standard_layout_is_esp_and_a_growable_root_last() {
        let info = arch_info("arm64").unwrap();
        let p = plan(
            &settings("standard", true),
            &info,
            "id",
            "root-guid",
            None,
            None,
            300 * MIB,
        );
        assert_eq!(p.partitions.len(), 2);
        assert_eq!(p.partitions[0].type_guid, gpt::types::ESP);
        assert_eq!(p.partitions[1].type_guid, gpt::types::ROOT_ARM64);
        assert_eq!(p.partitions[1].attributes, GROWFS);
        assert!(!p.cmdline.contains("usrhash"));
    }

    #[test]
    fn the_same_identity_gives_the_same_plan_and_another_a_different_one() {
        let info = arch_info("amd64").unwrap();
        let s = settings("standard", false);
        let ra = root_guid(&s, "one", "img:amd64");
        let a = plan(&s, &info, "one", &ra, None, None, 300 * MIB);
        assert_eq!(a, plan(&s, &info, "one", &ra, None, None, 300 * MIB));
        let rb = root_guid(&s, "two", "img:amd64");
        let b = plan(&s, &info, "two", &rb, None, None, 300 * MIB);
        assert_ne!(a.disk_guid, b.disk_guid);
        assert_ne!(a.partitions[1].guid, b.partitions[1].guid);
    }

    #[test]
    fn an_updating_image_keeps_its_root_and_sizes_both_slots_alike() {
        let info = arch_info("amd64").unwrap();
        let d = settings("immutable", true);
        // Another lock (identity), the same lineage: the same root UUID.
        assert_eq!(
            root_guid(&d, "v1-identity", "img:amd64"),
            root_guid(&d, "v2-identity", "img:amd64")
        );
        assert_ne!(
            root_guid(&d, "v1-identity", "img:amd64"),
            root_guid(&d, "v1-identity", "other:amd64")
        );
        let std = settings("standard", false);
        assert_ne!(
            root_guid(&std, "v1-identity", "img:amd64"),
            root_guid(&std, "v2-identity", "img:amd64")
        );
        let mut u = usr();
        u.slots = Some((640 * MIB, 8 * MIB));
        let p = plan(&d, &info, "id", "r", Some("2"), Some(&u), 300 * MIB);
        let sizes: Vec<u64> = p.partitions[1..5].iter().map(|x| x.size).collect();
        assert_eq!(sizes, [640 * MIB, 8 * MIB, 640 * MIB, 8 * MIB]);
        assert!(p.cmdline.starts_with("root=PARTUUID=r "));
    }

    #[test]
    fn unknown_architectures_are_refused_with_a_hint() {
        let e = arch_info("mips64el").err().unwrap().to_string();
        assert!(e.contains("mips64el"), "{e}");
    }
}

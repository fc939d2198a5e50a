//! Static checks: the disk's GPT and Discoverable Partitions layout, the
//! ESP, the /usr verity tree, and the contents of the root (and /usr)
//! filesystems, unpacked with debugfs or fsck.erofs instead of mounted.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use kiln_image::disk;
use kiln_image::gpt;

use crate::{Outcome, Target};

/// Partitions found on the disk, by role.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    pub esp: Option<gpt::Entry>,
    pub root: Option<gpt::Entry>,
    pub usr: Option<gpt::Entry>,
    pub usr_verity: Option<gpt::Entry>,
}

/// The partitions by Discoverable Partitions type (x86-64 and arm64),
/// skipping those marked no-auto (bit 63); the last of a type wins.
pub fn layout_of(entries: &[gpt::Entry]) -> Layout {
    use gpt::types::*;
    let mut l = Layout::default();
    for e in entries {
        if e.attributes & (1 << 63) != 0 {
            continue; // no-auto: e.g. an empty A/B slot
        }
        let t = e.type_guid.as_str();
        if t == ESP {
            l.esp = Some(e.clone());
        } else if t == ROOT_X86_64 || t == ROOT_ARM64 {
            l.root = Some(e.clone());
        } else if t == USR_X86_64 || t == USR_ARM64 {
            l.usr = Some(e.clone());
        } else if t == USR_VERITY_X86_64 || t == USR_VERITY_ARM64 {
            l.usr_verity = Some(e.clone());
        }
    }
    l
}

/// Copies a partition out of the disk into its own (sparse) file.
pub fn extract_partition(disk: &Path, e: &gpt::Entry, dest: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut src = std::fs::File::open(disk)?;
    src.seek(SeekFrom::Start(e.offset()))?;
    let mut out = std::fs::File::create(dest)?;
    let mut left = e.size();
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = (left as usize).min(buf.len());
        src.read_exact(&mut buf[..n])?;
        if buf[..n].iter().all(|b| *b == 0) {
            out.seek(SeekFrom::Current(n as i64))?;
        } else {
            out.write_all(&buf[..n])?;
        }
        left -= n as u64;
    }
    out.set_len(e.size())?;
    Ok(())
}

/// Unpacks a filesystem image into `dest` (ext4 with debugfs, anything
/// else with fsck.erofs), without mounting it.
pub fn unpack_fs(img: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest)?;
    let mut magic = [0u8; 2];
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(img)?;
        f.seek(SeekFrom::Start(1024 + 56))?;
        f.read_exact(&mut magic)?;
    }
    if magic == [0x53, 0xef] {
        let mut c = Command::new(disk::find_tool("debugfs")?);
        c.arg("-R")
            .arg(format!("rdump / {}", dest.display()))
            .arg(img);
        let out = c.output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        let bad: Vec<&str> = err
            .lines()
            .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
            .collect();
        if !out.status.success() || !bad.is_empty() {
            anyhow::bail!(
                "debugfs could not read the ext4 filesystem: {}",
                bad.join("; ")
            );
        }
    } else {
        let mut c = Command::new(disk::find_tool("fsck.erofs")?);
        c.arg(format!("--extract={}", dest.display()))
            .arg("--overwrite")
            .arg(img);
        disk::run(&mut c).context("reading the erofs filesystem")?;
    }
    Ok(())
}

fn hex_of_uuid(u: &str) -> String {
    u.replace('-', "")
}

/// The static checks of the raw disk `raw`, unpacking into `work`; returns
/// the outcomes and the unpacked tree (if it could be unpacked).
pub fn static_checks(t: &Target, work: &Path, raw: &Path) -> (Vec<Outcome>, Option<PathBuf>) {
    let mut out = Vec::new();
    const G: &str = "static";
    let entries = match gpt::read_table(raw) {
        Ok((_, e)) => {
            out.push(Outcome::pass(G, "GPT partition table is intact"));
            e
        }
        Err(e) => {
            out.push(Outcome::fail(
                G,
                "GPT partition table is intact",
                e.to_string(),
            ));
            return (out, None);
        }
    };
    let l = layout_of(&entries);
    let mut parts = Vec::new();
    if l.esp.is_none() {
        parts.push("no EFI system partition".to_string());
    }
    if l.root.is_none() {
        parts.push("no root partition of a Discoverable Partitions type".to_string());
    }
    if l.usr.is_some() != l.usr_verity.is_some() {
        parts.push("a /usr partition without its verity partition (or the reverse)".to_string());
    }
    let fatal = !parts.is_empty();
    out.push(Outcome::check(
        G,
        "partitions follow the Discoverable Partitions Specification",
        parts,
    ));
    if let Some(plan) = &t.planned {
        out.push(Outcome::check(
            G,
            "partitions are the ones the build planned (manifest.json)",
            plan_differences(plan, &entries),
        ));
    }
    if fatal {
        return (out, None);
    }
    // ESP: boot loader and a UKI.
    let esp = l.esp.as_ref().unwrap();
    match disk::list_fat(raw, esp.offset()) {
        Ok(files) => {
            let mut p = Vec::new();
            if !files.iter().any(|f| {
                f.eq_ignore_ascii_case("EFI/BOOT/BOOTX64.EFI")
                    || f.eq_ignore_ascii_case("EFI/BOOT/BOOTAA64.EFI")
            }) {
                p.push("no EFI/BOOT/BOOT*.EFI boot loader on the ESP".into());
            }
            if !files.iter().any(|f| {
                f.to_ascii_lowercase().starts_with("efi/linux/")
                    && f.to_ascii_lowercase().ends_with(".efi")
            }) {
                p.push("no Unified Kernel Image in EFI/Linux/ on the ESP".into());
            }
            out.push(Outcome::check(
                G,
                "ESP has systemd-boot and a Unified Kernel Image",
                p,
            ));
        }
        Err(e) => out.push(Outcome::fail(
            G,
            "ESP has systemd-boot and a Unified Kernel Image",
            format!("the ESP cannot be read: {e}"),
        )),
    }
    // Verity: the hash tree must match the root hash the partition UUIDs carry.
    if let (Some(u), Some(v)) = (&l.usr, &l.usr_verity) {
        let ui = work.join("usr.img");
        let vi = work.join("usr.verity");
        let roothash = format!("{}{}", hex_of_uuid(&u.guid), hex_of_uuid(&v.guid));
        let r = extract_partition(raw, u, &ui)
            .and_then(|()| extract_partition(raw, v, &vi))
            .and_then(|()| disk::check_verity(&ui, &vi, &roothash).map_err(Into::into));
        out.push(match r {
            Ok(()) => Outcome::pass(G, "/usr matches its dm-verity root hash"),
            Err(e) => Outcome::fail(
                G,
                "/usr matches its dm-verity root hash",
                format!("verification failed (the /usr data or hash tree is corrupted): {e:#}"),
            ),
        });
    }
    // Unpack the root (and /usr) for the content checks.
    let tree = work.join("tree");
    let root = l.root.as_ref().unwrap();
    let unpacked = (|| -> Result<()> {
        let img = work.join("root.img");
        extract_partition(raw, root, &img)?;
        unpack_fs(&img, &tree)?;
        std::fs::remove_file(&img)?;
        if l.usr.is_some() {
            unpack_fs(&work.join("usr.img"), &tree.join("usr"))?;
        }
        Ok(())
    })();
    if let Err(e) = unpacked {
        out.push(Outcome::fail(
            G,
            "filesystems can be read",
            format!("{e:#}"),
        ));
        return (out, None);
    }
    out.push(Outcome::pass(G, "filesystems can be read"));
    out.extend(tree_checks(t, &tree));
    (out, Some(tree))
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Checks on the unpacked tree, after the Debian cloud team's image tests;
/// the SBOM is looked for in `t.dir`.
pub fn tree_checks(t: &Target, tree: &Path) -> Vec<Outcome> {
    const G: &str = "static";
    let mut out = Vec::new();
    let keys: Vec<String> = entries(&tree.join("etc/ssh"))
        .into_iter()
        .filter(|n| n.starts_with("ssh_host_"))
        .map(|n| format!("/etc/ssh/{n}"))
        .collect();
    out.push(Outcome::check(G, "no SSH host keys", keys));
    let mid = std::fs::read_to_string(tree.join("etc/machine-id")).unwrap_or_default();
    let mid = mid.trim();
    out.push(Outcome::check(
        G,
        "machine-id is uninitialised",
        if mid.is_empty() || mid == "uninitialized" {
            vec![]
        } else {
            vec![format!(
                "/etc/machine-id is set ({mid}): every instance would share it"
            )]
        },
    ));
    let mut leftovers = Vec::new();
    for d in ["tmp", "var/tmp"] {
        for n in entries(&tree.join(d)) {
            leftovers.push(format!("/{d}/{n}"));
        }
    }
    out.push(Outcome::check(G, "/tmp and /var/tmp are empty", leftovers));
    let mut caches = Vec::new();
    for n in entries(&tree.join("var/lib/apt/lists")) {
        if n != "lock" && n != "partial" && n != "auxfiles" {
            caches.push(format!("/var/lib/apt/lists/{n}"));
        }
    }
    for n in entries(&tree.join("var/cache/apt")) {
        if n.ends_with(".bin") {
            caches.push(format!("/var/cache/apt/{n}"));
        }
    }
    for n in entries(&tree.join("var/cache/apt/archives")) {
        if n.ends_with(".deb") {
            caches.push(format!("/var/cache/apt/archives/{n}"));
        }
    }
    out.push(Outcome::check(G, "no apt lists or package caches", caches));
    let boot = entries(&tree.join("boot"));
    let mut kp = Vec::new();
    let kernels: Vec<&String> = boot.iter().filter(|n| n.starts_with("vmlinuz-")).collect();
    if kernels.is_empty() {
        kp.push("no /boot/vmlinuz-*".to_string());
    }
    for k in kernels {
        let v = k.trim_start_matches("vmlinuz-");
        if !boot.iter().any(|n| *n == format!("initrd.img-{v}")) {
            kp.push(format!("no /boot/initrd.img-{v}"));
        }
    }
    out.push(Outcome::check(G, "kernel and initrd present", kp));
    // Accounts: regular users only from the allow-list; no usable passwords.
    let passwd = std::fs::read_to_string(tree.join("etc/passwd")).unwrap_or_default();
    let mut ap = Vec::new();
    for l in passwd.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 {
            continue;
        }
        let uid: u32 = f[2].parse().unwrap_or(0);
        if (1000..65534).contains(&uid) && !t.users.iter().any(|u| u == f[0]) {
            ap.push(format!("unexpected user {} (uid {uid})", f[0]));
        }
    }
    if passwd.is_empty() {
        ap.push("/etc/passwd is missing".into());
    }
    let shadow = std::fs::read_to_string(tree.join("etc/shadow")).unwrap_or_default();
    for l in shadow.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 2 && !(f[1].starts_with('!') || f[1].starts_with('*')) {
            let what = if f[1].is_empty() {
                "an empty password"
            } else {
                "a password"
            };
            ap.push(format!("{} has {what}", f[0]));
        }
    }
    out.push(Outcome::check(
        G,
        "user accounts on the allow-list, no passwords",
        ap,
    ));
    let mut ww = Vec::new();
    fn walk(d: &Path, rel: &str, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            let name = format!("{rel}/{}", e.file_name().to_string_lossy());
            if m.file_type().is_symlink() {
                continue;
            }
            if m.permissions().mode() & 0o002 != 0 {
                out.push(name.clone());
            }
            if m.is_dir() {
                walk(&e.path(), &name, out);
            }
        }
    }
    walk(&tree.join("usr"), "/usr", &mut ww);
    out.push(Outcome::check(
        G,
        "no world-writable files under /usr",
        ww.into_iter()
            .map(|p| format!("{p} is world-writable"))
            .collect(),
    ));
    // The SBOM beside the image lists exactly the installed packages.
    let sbom = t.dir.join("sbom.spdx.json");
    match std::fs::read(&sbom) {
        Err(_) => out.push(Outcome::skip(
            G,
            "SBOM matches the installed packages",
            "no sbom.spdx.json beside the image",
        )),
        Ok(b) => {
            let doc: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
            let listed: BTreeSet<(String, String)> = doc["packages"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| {
                    p["SPDXID"]
                        .as_str()
                        .is_some_and(|i| i.starts_with("SPDXRef-Package-"))
                })
                .filter_map(|p| {
                    Some((
                        p["name"].as_str()?.to_string(),
                        p["versionInfo"].as_str()?.to_string(),
                    ))
                })
                .collect();
            let status =
                std::fs::read_to_string(tree.join("var/lib/dpkg/status")).unwrap_or_default();
            let mut installed = BTreeSet::new();
            for st in status.split("\n\n") {
                let field = |k: &str| {
                    st.lines()
                        .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
                };
                if field("Status:").is_some_and(|s| s.ends_with(" installed")) {
                    if let (Some(n), Some(v)) = (field("Package:"), field("Version:")) {
                        installed.insert((n, v));
                    }
                }
            }
            let mut p = Vec::new();
            for (n, v) in installed.difference(&listed) {
                p.push(format!("{n} {v} is installed but not in the SBOM"));
            }
            for (n, v) in listed.difference(&installed) {
                p.push(format!("{n} {v} is in the SBOM but not installed"));
            }
            if installed.is_empty() {
                p.push("no installed packages in /var/lib/dpkg/status".into());
            }
            out.push(Outcome::check(G, "SBOM matches the installed packages", p));
        }
    }
    out
}

/// How the partition table differs from the build's plan (empty: it matches).
pub fn plan_differences(plan: &[kiln_model::PartitionFact], entries: &[gpt::Entry]) -> Vec<String> {
    let mut out = Vec::new();
    if plan.len() != entries.len() {
        out.push(format!(
            "the disk has {} partitions, the build planned {}",
            entries.len(),
            plan.len()
        ));
    }
    for (i, (p, e)) in plan.iter().zip(entries).enumerate() {
        let n = i + 1;
        if p.label != e.label {
            out.push(format!(
                "partition {n} is labelled `{}`, planned `{}`",
                e.label, p.label
            ));
        }
        if !p.type_guid.eq_ignore_ascii_case(&e.type_guid) {
            out.push(format!(
                "partition {n} ({}) has type {}, planned {}",
                p.label, e.type_guid, p.type_guid
            ));
        }
        if !p.partuuid.eq_ignore_ascii_case(&e.guid) {
            out.push(format!(
                "partition {n} ({}) has UUID {}, planned {}",
                p.label, e.guid, p.partuuid
            ));
        }
        if p.offset != e.offset() || p.size != e.size() {
            out.push(format!(
                "partition {n} ({}) spans {}+{} bytes, planned {}+{}",
                p.label,
                e.offset(),
                e.size(),
                p.offset,
                p.size
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_checks_find_what_a_cloud_image_must_not_ship() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        for dir in [
            "etc/ssh",
            "tmp",
            "var/tmp",
            "var/lib/apt/lists",
            "usr/bin",
            "boot",
            "var/lib/dpkg",
        ] {
            std::fs::create_dir_all(tree.join(dir)).unwrap();
        }
        let t = Target {
            planned: None,
            image: d.path().join("disk.raw"),
            dir: d.path().to_path_buf(),
            tests: vec![],
            users: vec!["app".into()],
        };
        let clean = |t: &Target| {
            tree_checks(t, &tree)
                .into_iter()
                .filter(|o| o.failure.is_some())
                .map(|o| o.name)
                .collect::<Vec<_>>()
        };
        std::fs::write(
            tree.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(tree.join("etc/shadow"), "root:*:1::::::\napp:!:1::::::\n").unwrap();
        std::fs::write(tree.join("boot/vmlinuz-6.1"), "k").unwrap();
        std::fs::write(tree.join("boot/initrd.img-6.1"), "i").unwrap();
        std::fs::write(
            tree.join("var/lib/dpkg/status"),
            "Package: a\nStatus: install ok installed\nVersion: 1\n\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("sbom.spdx.json"),
            r#"{"packages":[{"SPDXID":"SPDXRef-Package-a","name":"a","versionInfo":"1"}]}"#,
        )
        .unwrap();
        assert!(clean(&t).is_empty(), "{:?}", clean(&t));
        std::fs::write(tree.join("etc/ssh/ssh_host_ed25519_key"), "x").unwrap();
        std::fs::write(
            tree.join("etc/machine-id"),
            "0123456789abcdef0123456789abcdef\n",
        )
        .unwrap();
        std::fs::write(tree.join("tmp/leftover"), "x").unwrap();
        std::fs::write(tree.join("var/lib/apt/lists/x_Packages"), "x").unwrap();
        std::fs::write(tree.join("usr/bin/tool"), "x").unwrap();
        std::fs::set_permissions(
            tree.join("usr/bin/tool"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        std::fs::write(tree.join("etc/shadow"), "root:$6$salt$hash:1::::::\n").unwrap();
        std::fs::write(
            tree.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nintruder:x:1001:1001::/home/i:/bin/sh\n",
        )
        .unwrap();
        std::fs::remove_file(tree.join("boot/initrd.img-6.1")).unwrap();
        std::fs::write(
            tree.join("var/lib/dpkg/status"),
            "Package: a\nStatus: install ok installed\nVersion: 2\n\n",
        )
        .unwrap();
        let failed = clean(&t);
        for name in [
            "no SSH host keys",
            "machine-id is uninitialised",
            "/tmp and /var/tmp are empty",
            "no apt lists or package caches",
            "kernel and initrd present",
            "user accounts on the allow-list, no passwords",
            "no world-writable files under /usr",
            "SBOM matches the installed packages",
        ] {
            assert!(
                failed.iter().any(|f| f == name),
                "`{name}` should fail: {failed:?}"
            );
        }
    }

    /// A small GPT disk written by Kiln's own writer: an ESP and a root.
    fn small_gpt(dir: &Path) -> PathBuf {
        let raw = dir.join("disk.raw");
        gpt::write_disk(
            &raw,
            &gpt::guid_from(b"disk"),
            &[
                gpt::Partition {
                    type_guid: gpt::types::ESP.into(),
                    guid: gpt::guid_from(b"esp"),
                    label: "esp".into(),
                    image: None,
                    size: 1 << 20,
                    attributes: 0,
                },
                gpt::Partition {
                    type_guid: gpt::types::ROOT_X86_64.into(),
                    guid: gpt::guid_from(b"root"),
                    label: "root-x86-64".into(),
                    image: None,
                    size: 1 << 20,
                    attributes: 0,
                },
            ],
        )
        .unwrap();
        raw
    }

    /// Rewrites the second entry's last LBA and fixes both checksums, as a
    /// forger would: the table is then consistent, only wrong.
    fn forge_last_lba(raw: &Path, last_lba: u64) {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(raw)
            .unwrap();
        let mut h = [0u8; 512];
        f.seek(SeekFrom::Start(512)).unwrap();
        f.read_exact(&mut h).unwrap();
        let hsize = u32::from_le_bytes(h[12..16].try_into().unwrap()) as usize;
        let entries_at = u64::from_le_bytes(h[72..80].try_into().unwrap()) * 512;
        let n = u32::from_le_bytes(h[80..84].try_into().unwrap()) as usize;
        let esize = u32::from_le_bytes(h[84..88].try_into().unwrap()) as usize;
        let mut entries = vec![0u8; n * esize];
        f.seek(SeekFrom::Start(entries_at)).unwrap();
        f.read_exact(&mut entries).unwrap();
        entries[esize + 40..esize + 48].copy_from_slice(&last_lba.to_le_bytes());
        h[88..92].copy_from_slice(&crc32fast::hash(&entries).to_le_bytes());
        h[16..20].fill(0);
        let crc = crc32fast::hash(&h[..hsize]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        f.seek(SeekFrom::Start(entries_at)).unwrap();
        f.write_all(&entries).unwrap();
        f.seek(SeekFrom::Start(512)).unwrap();
        f.write_all(&h).unwrap();
    }

    #[test]
    fn a_forged_gpt_pointing_past_the_end_of_the_image_fails_cleanly() {
        let d = tempfile::tempdir().unwrap();
        let t = Target {
            planned: None,
            image: d.path().join("disk.raw"),
            dir: d.path().to_path_buf(),
            tests: vec![],
            users: vec![],
        };
        let work = d.path().join("work");
        std::fs::create_dir(&work).unwrap();
        let size = std::fs::metadata(small_gpt(d.path())).unwrap().len();
        // Just past the end, far past it, and where the byte offset overflows.
        for last in [size / 512, size / 512 + (1 << 30), u64::MAX / 2, u64::MAX] {
            let raw = small_gpt(d.path());
            forge_last_lba(&raw, last);
            let (out, tree) = static_checks(&t, &work, &raw);
            assert!(tree.is_none(), "last LBA {last}: nothing may be unpacked");
            assert_eq!(out.len(), 1, "last LBA {last}: {out:?}");
            assert_eq!(out[0].name, "GPT partition table is intact");
            let why = out[0].failure.as_deref().unwrap_or_default();
            assert!(why.contains("beyond the end"), "last LBA {last}: {why}");
        }
        // A partition that ends before it starts.
        let raw = small_gpt(d.path());
        forge_last_lba(&raw, 1);
        let (out, _) = static_checks(&t, &work, &raw);
        assert!(out[0].failed(), "{out:?}");
        // Nothing was written into the scratch directory.
        assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
    }

    #[test]
    fn a_disk_whose_partitions_differ_from_the_plan_is_named() {
        let d = tempfile::tempdir().unwrap();
        let raw = small_gpt(d.path());
        let (_, entries) = gpt::read_table(&raw).unwrap();
        let plan: Vec<kiln_model::PartitionFact> = entries
            .iter()
            .map(|e| kiln_model::PartitionFact {
                label: e.label.clone(),
                type_guid: e.type_guid.to_uppercase(),
                partuuid: e.guid.clone(),
                offset: e.offset(),
                size: e.size(),
            })
            .collect();
        assert!(plan_differences(&plan, &entries).is_empty());
        let mut other = plan.clone();
        other[0].size += 1 << 20;
        other[0].partuuid = "00000000-0000-0000-0000-000000000001".into();
        let diff = plan_differences(&other, &entries);
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert!(diff.iter().any(|m| m.contains("UUID")), "{diff:?}");
        assert!(diff.iter().any(|m| m.contains("planned")), "{diff:?}");
        other.push(plan[0].clone());
        assert!(plan_differences(&other, &entries)[0].contains("the build planned"));
    }
}

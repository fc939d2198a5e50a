//! The cloud formats checked by the tools clouds and operators use:
//! `qemu-img` reads the fixed VHD as a `vpc` image of the right size with
//! the disk's bytes, GNU tar and gzip list the GCE archive's one member.

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_image::cloud::{read_fixed_vhd, read_gce_tar, write_fixed_vhd, write_gce_tar};
use kiln_image::gpt::{types, write_disk, Partition};

const MIB: u64 = 1 << 20;

fn disk(dir: &Path) -> PathBuf {
    let esp = dir.join("esp.img");
    std::fs::write(
        &esp,
        (0..700_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    let raw = dir.join("disk.raw");
    write_disk(
        &raw,
        "99999999-2222-3333-4444-555555555555",
        &[
            Partition {
                type_guid: types::ESP.into(),
                guid: "aaaaaaaa-2222-3333-4444-555555555555".into(),
                label: "esp".into(),
                image: Some(esp),
                size: 5 * MIB,
                attributes: 0,
            },
            Partition {
                type_guid: types::ROOT_X86_64.into(),
                guid: "11111111-2222-3333-4444-555555555555".into(),
                label: "root".into(),
                image: None,
                size: 9 * MIB,
                attributes: 0,
            },
        ],
    )
    .unwrap();
    raw
}

fn run(c: &mut Command) -> String {
    let o = c.output().expect("the tool runs");
    assert!(
        o.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn qemu_img_reads_the_fixed_vhd_as_the_disk() {
    let t = tempfile::tempdir().unwrap();
    let raw = disk(t.path());
    let vhd = t.path().join("disk.vhd");
    let c = write_fixed_vhd(&raw, &vhd, 1_700_000_000).unwrap();
    // A fixed VHD starts with the disk, so its format is named (QEMU probes
    // only dynamic VHDs by their header).
    let info = run(Command::new("qemu-img")
        .args(["info", "-f", "vpc", "--output=json"])
        .arg(&vhd));
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["format"], "vpc", "{info}");
    assert_eq!(v["virtual-size"].as_u64(), Some(c.disk_size), "{info}");
    assert_eq!(c.disk_size % MIB, 0);
    // Same bytes as the raw disk, as QEMU reads them.
    run(Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "vpc"])
        .arg(&raw)
        .arg(&vhd));
    // And what qemu-img itself writes for Azure is accepted by Kiln's check.
    let theirs = t.path().join("qemu.vhd");
    run(Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vpc",
            "-o",
            "subformat=fixed,force_size",
        ])
        .arg(&raw)
        .arg(&theirs));
    assert_eq!(read_fixed_vhd(&theirs).unwrap().disk_size, c.disk_size);
}

#[test]
fn gnu_tar_lists_disk_raw_alone_in_the_gce_archive() {
    let t = tempfile::tempdir().unwrap();
    let raw = disk(t.path());
    let out = t.path().join("disk.tar.gz");
    write_gce_tar(&raw, &out, 1_700_000_000).unwrap();
    run(Command::new("gzip").arg("-t").arg(&out));
    let list = run(Command::new("tar")
        .args(["--list", "--verbose", "--numeric-owner", "-zf"])
        .arg(&out));
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 1, "{list}");
    assert!(lines[0].ends_with(" disk.raw"), "{list}");
    assert!(lines[0].starts_with("-rw-r--r-- 0/0"), "{list}");
    let x = t.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run(Command::new("tar").arg("-xzf").arg(&out).arg("-C").arg(&x));
    assert_eq!(
        std::fs::read(x.join("disk.raw")).unwrap(),
        std::fs::read(&raw).unwrap()
    );
    // What GNU tar writes for GCE (`tar --format=gnu -czf`) passes Kiln's check.
    let theirs = t.path().join("theirs.tar.gz");
    run(Command::new("tar")
        .args(["--format=gnu", "-czf"])
        .arg(&theirs)
        .arg("-C")
        .arg(t.path())
        .arg("disk.raw"));
    assert_eq!(
        read_gce_tar(&theirs).unwrap().disk_size,
        std::fs::metadata(&raw).unwrap().len()
    );
}

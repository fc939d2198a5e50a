//! Offline tier for `kiln test`: small disks assembled here from real
//! filesystems (mkfs.vfat + mtools, mke2fs -d) and Kiln's GPT writer, checked
//! statically, and the errors for a missing QEMU or firmware.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use kiln_image::disk::{self, FatFile};
use kiln_image::gpt::{self, Partition};

/// A two-partition disk: an ESP with a (fake) boot loader and UKI, and an
/// ext4 root made from `tree`.
fn small_disk(dir: &Path, tree: &Path) -> PathBuf {
    let efi = dir.join("x.efi");
    std::fs::write(&efi, b"MZ").unwrap();
    let esp = dir.join("esp.img");
    disk::make_fat(
        &esp,
        64 << 20,
        "ESP",
        "12345678",
        &[
            FatFile {
                source: efi.clone(),
                dest: "EFI/BOOT/BOOTX64.EFI".into(),
            },
            FatFile {
                source: efi,
                dest: "EFI/Linux/test.efi".into(),
            },
        ],
        1_700_000_000,
    )
    .unwrap();
    let root = dir.join("root.img");
    let m = disk::Mke2fs::find(Path::new("/nonexistent"), Path::new("/nonexistent"), "x").unwrap();
    disk::make_ext4(
        &m,
        tree,
        &root,
        32 << 20,
        "root",
        &gpt::guid_from(b"fs"),
        &gpt::guid_from(b"seed"),
        1_700_000_000,
    )
    .unwrap();
    let raw = dir.join("disk.raw");
    gpt::write_disk(
        &raw,
        &gpt::guid_from(b"disk"),
        &[
            Partition {
                type_guid: gpt::types::ESP.into(),
                guid: gpt::guid_from(b"esp"),
                label: "esp".into(),
                image: Some(esp),
                size: 64 << 20,
                attributes: 0,
            },
            Partition {
                type_guid: gpt::types::ROOT_X86_64.into(),
                guid: gpt::guid_from(b"root"),
                label: "root-x86-64".into(),
                image: Some(root),
                size: 32 << 20,
                attributes: 1 << 59,
            },
        ],
    )
    .unwrap();
    raw
}

fn tree(dir: &Path) -> PathBuf {
    let t = dir.join("tree");
    for d in ["etc/ssh", "tmp", "boot", "usr/bin", "var/lib/dpkg"] {
        std::fs::create_dir_all(t.join(d)).unwrap();
    }
    std::fs::write(t.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(t.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
    std::fs::write(t.join("etc/machine-id"), "uninitialized\n").unwrap();
    std::fs::write(t.join("boot/vmlinuz-6.12"), "kernel").unwrap();
    std::fs::write(t.join("boot/initrd.img-6.12"), "initrd").unwrap();
    std::fs::write(
        t.join("var/lib/dpkg/status"),
        "Package: base-files\nStatus: install ok installed\nVersion: 13.8\n\n",
    )
    .unwrap();
    t
}

fn result<'a>(v: &'a serde_json::Value, name: &str) -> &'a str {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["result"].as_str())
        .unwrap_or_else(|| panic!("no check `{name}`: {v}"))
}

#[test]
fn static_checks_read_a_disk_without_mounting_it() {
    let d = tempfile::tempdir().unwrap();
    let t = tree(d.path());
    let raw = small_disk(d.path(), &t);
    let o = kiln(
        &["test", raw.to_str().unwrap(), "--skip-boot", "--json"],
        &[],
    );
    let v = json_of(&o);
    // No SBOM beside this disk: that check is skipped, everything else passes.
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(result(&v, "SBOM matches the installed packages"), "skip");
    assert_eq!(
        result(&v, "ESP has systemd-boot and a Unified Kernel Image"),
        "pass"
    );
    let junit = std::fs::read_to_string(d.path().join("disk.test.xml")).unwrap();
    assert!(
        junit.contains("<skipped") && junit.contains("failures=\"0\""),
        "{junit}"
    );

    // The same disk with an SSH host key and a set machine-id baked in.
    let d2 = tempfile::tempdir().unwrap();
    let t2 = tree(d2.path());
    std::fs::write(t2.join("etc/ssh/ssh_host_ed25519_key"), "secret").unwrap();
    std::fs::write(
        t2.join("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    std::fs::write(
        d2.path().join("sbom.spdx.json"),
        r#"{"packages":[{"SPDXID":"SPDXRef-Package-base-files","name":"base-files","versionInfo":"13.7"}]}"#,
    )
    .unwrap();
    let raw2 = small_disk(d2.path(), &t2);
    let o = kiln(
        &["test", raw2.to_str().unwrap(), "--skip-boot", "--json"],
        &[],
    );
    let v = json_of(&o);
    assert!(!o.status.success());
    assert_eq!(result(&v, "no SSH host keys"), "fail");
    assert_eq!(result(&v, "machine-id is uninitialised"), "fail");
    assert_eq!(result(&v, "SBOM matches the installed packages"), "fail");
    assert_eq!(result(&v, "kernel and initrd present"), "pass");
    let t = text(&o);
    assert!(t.contains("3 of") && t.contains("checks failed"), "{t}");
}

#[test]
fn a_truncated_or_foreign_file_is_reported_not_crashed_on() {
    let d = tempfile::tempdir().unwrap();
    let t = tree(d.path());
    let raw = small_disk(d.path(), &t);
    // Cut the disk short: partitions now end beyond the end of the file.
    let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    f.set_len(40 << 20).unwrap();
    let o = kiln(
        &["test", raw.to_str().unwrap(), "--skip-boot", "--json"],
        &[],
    );
    let v = json_of(&o);
    assert!(!o.status.success());
    let c = v["checks"][0].clone();
    assert_eq!(c["result"], "fail");
    assert!(
        c["message"].as_str().unwrap().contains("beyond the end"),
        "{c}"
    );
    // Not a disk image at all.
    let junk = d.path().join("notes.raw");
    std::fs::write(&junk, vec![b'x'; 100_000]).unwrap();
    let o = kiln(
        &["test", junk.to_str().unwrap(), "--skip-boot", "--json"],
        &[],
    );
    let v = json_of(&o);
    assert!(!o.status.success());
    assert!(
        v["checks"][0]["message"]
            .as_str()
            .unwrap()
            .contains("no GPT header"),
        "{v}"
    );
    // No image at all.
    let o = kiln(
        &["test", d.path().join("missing.raw").to_str().unwrap()],
        &[],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("no disk image at"), "{}", text(&o));
}

#[test]
fn missing_qemu_or_firmware_names_the_package() {
    let d = tempfile::tempdir().unwrap();
    let raw = d.path().join("disk.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let o = kiln(
        &["test", raw.to_str().unwrap()],
        &[("KILN_QEMU", "/nonexistent/qemu-system-x86_64")],
    );
    let t = text(&o);
    assert!(!o.status.success());
    assert!(
        t.contains("not installed") && t.contains("apt-get install qemu-system-x86"),
        "{t}"
    );
    let o = kiln(
        &["test", raw.to_str().unwrap()],
        &[("KILN_OVMF_DIR", "/nonexistent")],
    );
    let t = text(&o);
    assert!(!o.status.success());
    assert!(
        t.contains("UEFI firmware") && t.contains("apt-get install ovmf"),
        "{t}"
    );
    // Nothing was written next to the image before the tools were found.
    assert!(!d.path().join("disk.test.xml").exists());
}

#[test]
fn a_tarball_is_refused_by_test_and_boot_with_a_hint() {
    let d = tempfile::tempdir().unwrap();
    let t = tree(d.path());
    let tar = d.path().join("rootfs.tar");
    let st = std::process::Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&t)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    for args in [
        vec!["test", tar.to_str().unwrap()],
        vec!["test", tar.to_str().unwrap(), "--skip-boot"],
        vec!["boot", tar.to_str().unwrap()],
    ] {
        let o = kiln(&args, &[]);
        let err = stderr(&o);
        assert!(!o.status.success(), "{args:?} accepted a tarball");
        assert_ne!(o.status.code(), Some(64), "not a usage error: {err}");
        assert!(
            err.contains("is not a disk image: it is a tar archive"),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("formats = [\"disk\"]") && err.contains("chroot"),
            "{err}"
        );
    }
}

/// A QEMU running with a file under `dir` on its command line (the boot's
/// overlay is in its scratch directory).
fn qemu_running(dir: &Path) -> bool {
    std::process::Command::new("pgrep")
        .args(["-f", &format!("qemu-system.*{}", dir.display())])
        .output()
        .unwrap()
        .status
        .success()
}

/// `kiln boot` of a disk whose boot loader is not one (the firmware ends
/// at network boot and its shell): the guest never ends by itself.
fn boot_that_never_ends(d: &Path, scratch: &Path, extra: &[&str]) -> std::process::Child {
    let t = tree(d);
    let raw = small_disk(d, &t);
    let mut args = vec!["boot", raw.to_str().unwrap()];
    args.extend_from_slice(extra);
    kiln_command(&cache(), &args, &[])
        .env("TMPDIR", scratch)
        .env("HOME", scratch)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn leftovers(scratch: &Path) -> Vec<String> {
    std::fs::read_dir(scratch)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("kiln-boot-"))
        .collect()
}

#[test]
fn boot_stops_the_guest_at_its_timeout_and_cleans_up() {
    let d = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let child = boot_that_never_ends(
        d.path(),
        scratch.path(),
        &["--timeout", "5", "--ssh-port", "22301"],
    );
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("stopped after 5 s") && err.contains("--timeout"),
        "{err}"
    );
    assert!(!qemu_running(scratch.path()), "QEMU is still running");
    assert_eq!(leftovers(scratch.path()), Vec::<String>::new());
}

#[test]
fn sigterm_to_boot_kills_the_guest_and_cleans_up() {
    let d = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut child = boot_that_never_ends(d.path(), scratch.path(), &["--ssh-port", "22302"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !qemu_running(scratch.path()) {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("kiln boot ended ({st}) before QEMU ran: {err}");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("QEMU never started");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        !leftovers(scratch.path()).is_empty(),
        "no scratch directory while booting"
    );
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(!status.success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!qemu_running(scratch.path()), "QEMU outlived kiln");
    assert_eq!(leftovers(scratch.path()), Vec::<String>::new());
}

//! `kiln test` and `kiln boot`: static checks on a disk image without
//! booting it, then a boot in QEMU (UEFI firmware, NoCloud seed) that reads
//! the result of every test command back over the serial console.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kiln_image::disk::{self, DiskError};
use kiln_image::gpt;
use kiln_recipe::{Recipe, TestEntry};
use serde_json::json;

use crate::ui::Ui;
use kiln_model::Hinted;

pub struct TestArgs {
    pub target: PathBuf,
    pub timeout: u64,
    pub skip_static: bool,
    pub skip_boot: bool,
    pub allow_users: Vec<String>,
    pub memory: u32,
    pub cpus: u32,
    pub json: bool,
}

/// One check's outcome.
#[derive(Clone, Debug)]
struct Outcome {
    group: &'static str,
    name: String,
    /// None: passed; Some: why it failed.
    failure: Option<String>,
    skipped: Option<String>,
    seconds: f64,
}

impl Outcome {
    fn pass(group: &'static str, name: &str) -> Outcome {
        Outcome {
            group,
            name: name.into(),
            failure: None,
            skipped: None,
            seconds: 0.0,
        }
    }
    fn check(group: &'static str, name: &str, problems: Vec<String>) -> Outcome {
        let mut o = Outcome::pass(group, name);
        if !problems.is_empty() {
            let shown: Vec<String> = problems.iter().take(8).cloned().collect();
            let more = if problems.len() > 8 {
                format!(" (and {} more)", problems.len() - 8)
            } else {
                String::new()
            };
            o.failure = Some(format!("{}{more}", shown.join("; ")));
        }
        o
    }
    fn fail(group: &'static str, name: &str, why: String) -> Outcome {
        Outcome::check(group, name, vec![why])
    }
    fn skip(group: &'static str, name: &str, why: &str) -> Outcome {
        let mut o = Outcome::pass(group, name);
        o.skipped = Some(why.into());
        o
    }
}

/// What `kiln test` works on: the image and what its build recorded.
struct Target {
    image: PathBuf,
    dir: PathBuf,
    tests: Vec<TestEntry>,
    users: Vec<String>,
}

/// The disk image in an output directory: disk.raw, else disk.qcow2, else
/// the host architecture's disk-ARCH.raw / .qcow2 of a multi-arch build.
fn find_image(dir: &Path) -> PathBuf {
    let arch = kiln_recipe::host_architecture();
    [
        "disk.raw".to_string(),
        "disk.qcow2".to_string(),
        format!("disk-{arch}.raw"),
        format!("disk-{arch}.qcow2"),
    ]
    .iter()
    .map(|n| dir.join(n))
    .find(|p| p.is_file())
    .unwrap_or_else(|| dir.join("disk.raw"))
}

fn target(arg: &Path) -> Result<Target> {
    let (image, recipe_tests, recipe_users) = if arg.extension().is_some_and(|e| e == "toml") {
        let r = Recipe::load(arg)?;
        let image = find_image(&r.output_dir());
        let users = r.customize.users.iter().map(|u| u.name.clone()).collect();
        (image, Some(r.tests), Some(users))
    } else if arg.is_dir() {
        (find_image(arg), None, None)
    } else {
        (arg.to_path_buf(), None, None)
    };
    if !image.is_file() {
        return Err(Hinted {
            message: format!("no disk image at {}", image.display()),
            hint: "build it first with formats = [\"disk\"] (kiln build RECIPE), or give the image's path".into(),
        }
        .into());
    }
    let dir = image.parent().unwrap_or(Path::new(".")).to_path_buf();
    // A manifest beside the image is read strictly: a damaged one is an
    // error, not a boot without its test commands.
    let manifest = if dir.join(kiln_model::MANIFEST_FILE).exists() {
        Some(kiln_model::Manifest::read_dir(&dir)?)
    } else {
        None
    };
    let tests = recipe_tests.unwrap_or_else(|| {
        manifest
            .as_ref()
            .map(|m| {
                m.tests
                    .iter()
                    .map(|t| TestEntry {
                        name: t.name.clone(),
                        command: t.command.clone(),
                        expect: t.expect.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    });
    let users = recipe_users.unwrap_or_else(|| manifest.map(|m| m.users).unwrap_or_default());
    Ok(Target {
        image,
        dir,
        tests,
        users,
    })
}

/// Partitions found on the disk, by role.
#[derive(Default)]
struct Layout {
    esp: Option<gpt::Entry>,
    root: Option<gpt::Entry>,
    usr: Option<gpt::Entry>,
    usr_verity: Option<gpt::Entry>,
}

fn layout_of(entries: &[gpt::Entry]) -> Layout {
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
fn extract_partition(disk: &Path, e: &gpt::Entry, dest: &Path) -> Result<()> {
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

/// Unpacks a filesystem image (ext4 with debugfs, erofs with fsck.erofs).
fn unpack_fs(img: &Path, dest: &Path) -> Result<()> {
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

/// The static checks; returns the outcomes and the unpacked tree (if any).
fn static_checks(t: &Target, work: &Path, raw: &Path) -> (Vec<Outcome>, Option<PathBuf>) {
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

/// Checks on the unpacked tree, after the Debian cloud team's image tests.
fn tree_checks(t: &Target, tree: &Path) -> Vec<Outcome> {
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

/// QEMU and UEFI firmware for an architecture; errors name the package.
struct Machine {
    qemu: PathBuf,
    code: PathBuf,
    vars: PathBuf,
}

fn machine() -> Result<Machine> {
    let qemu = match std::env::var_os("KILN_QEMU") {
        Some(q) => {
            let q = PathBuf::from(q);
            if !q.is_file() {
                return Err(DiskError::MissingTool {
                    tool: q.display().to_string(),
                    package: "qemu-system-x86".into(),
                }
                .into());
            }
            q
        }
        None => disk::find_tool("qemu-system-x86_64")?,
    };
    let dir = std::env::var_os("KILN_OVMF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/OVMF"));
    let code = dir.join("OVMF_CODE_4M.fd");
    let vars = dir.join("OVMF_VARS_4M.fd");
    if !code.is_file() || !vars.is_file() {
        return Err(Hinted {
            message: format!(
                "UEFI firmware for QEMU not found ({} and OVMF_VARS_4M.fd)",
                code.display()
            ),
            hint: "install it with: apt-get install ovmf".into(),
        }
        .into());
    }
    Ok(Machine { qemu, code, vars })
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The guest-side runner, installed by cloud-init: waits for the boot to
/// finish, runs every test command and writes the results to the serial
/// console (retrying: the getty's vhangup can revoke an open descriptor).
const RUNNER: &str = r#"#!/bin/sh
out=/run/kiln-test.report
{
  state=$(timeout 900 systemctl is-system-running --wait 2>/dev/null)
  echo "KILN-T state $state"
  echo "KILN-T failed $(systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')"
  echo "KILN-T uptime $(cut -d' ' -f1 /proc/uptime)"
  i=0
  while read -r line; do
    i=$((i+1))
    cmd=$(printf '%s' "$line" | base64 -d)
    res=$(timeout 300 sh -c "$cmd" 2>&1 </dev/null)
    echo "KILN-T rc $i $?"
    echo "KILN-T out $i $(printf '%s' "$res" | head -c 3000 | base64 -w0)"
  done < /etc/kiln-test/commands
  echo "KILN-T end"
} > $out 2>&1
for t in 1 2 3 4 5 6 7 8 9 10; do cat $out > /dev/ttyS0 && break; sleep 1; done
sleep 3
systemctl poweroff
"#;

/// The NoCloud `cidata` seed: a user with an SSH key, the runner and its unit.
fn make_seed(work: &Path, tests: &[TestEntry], pubkey: &str, with_runner: bool) -> Result<PathBuf> {
    let indent = |s: &str| {
        s.lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    };
    // A JSON string is valid YAML: key comments with `: ` or ` #` stay intact.
    let key = serde_json::to_string(pubkey.lines().next().unwrap_or("").trim())?;
    let mut ud = format!(
        "#cloud-config\nusers:\n  - default\n  - name: kiln\n    shell: /bin/bash\n    lock_passwd: true\n    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n    ssh_authorized_keys:\n      - {key}\n"
    );
    if with_runner {
        let commands: String = tests
            .iter()
            .map(|t| format!("{}\n", b64(&t.command)))
            .collect();
        let unit = "[Unit]\nDescription=Kiln boot test runner\nAfter=multi-user.target\n\n[Service]\nType=simple\nExecStart=/bin/sh /etc/kiln-test/runner\n";
        ud.push_str("write_files:\n");
        for (path, perm, content) in [
            ("/etc/kiln-test/runner", "0755", RUNNER.to_string()),
            ("/etc/kiln-test/commands", "0644", commands),
            (
                "/etc/systemd/system/kiln-test.service",
                "0644",
                unit.to_string(),
            ),
        ] {
            ud.push_str(&format!(
                "  - path: {path}\n    permissions: '{perm}'\n    content: |\n{}",
                indent(if content.is_empty() { "\n" } else { &content })
            ));
        }
        ud.push_str("runcmd:\n  - [systemctl, daemon-reload]\n  - [systemctl, start, --no-block, kiln-test.service]\n");
    }
    let dir = work.join("seed");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("user-data"), ud)?;
    std::fs::write(
        dir.join("meta-data"),
        "instance-id: kiln-test-1\nlocal-hostname: kiln-test\n",
    )?;
    let img = work.join("seed.img");
    disk::make_fat(
        &img,
        2 << 20,
        "CIDATA",
        "4b494c4e",
        &[
            disk::FatFile {
                source: dir.join("user-data"),
                dest: "user-data".into(),
            },
            disk::FatFile {
                source: dir.join("meta-data"),
                dest: "meta-data".into(),
            },
        ],
        0,
    )?;
    Ok(img)
}

fn ssh_key(work: &Path) -> Result<String> {
    let key = work.join("id_ed25519");
    let mut c = Command::new(disk::find_tool("ssh-keygen")?);
    c.args(["-q", "-t", "ed25519", "-N", "", "-C", "kiln-test", "-f"])
        .arg(&key);
    disk::run(&mut c)?;
    Ok(std::fs::read_to_string(work.join("id_ed25519.pub"))?
        .trim()
        .to_string())
}

/// Virtual size of a disk image (raw or qcow2).
fn image_format(p: &Path) -> &'static str {
    let mut magic = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open(p) {
        use std::io::Read;
        let _ = f.read_exact(&mut magic);
    }
    if &magic == b"QFI\xfb" {
        "qcow2"
    } else {
        "raw"
    }
}

/// A copy-on-write overlay over the image, 1 GiB larger (so growing the
/// root is exercised); the image itself is never written.
fn overlay(work: &Path, image: &Path, virtual_size: u64) -> Result<PathBuf> {
    let ov = work.join("overlay.qcow2");
    let abs = std::fs::canonicalize(image)?;
    let mut c = Command::new(disk::find_tool("qemu-img")?);
    c.args([
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        image_format(image),
        "-b",
    ])
    .arg(&abs)
    .arg(&ov)
    .arg(format!("{}", virtual_size + (1 << 30)));
    disk::run(&mut c)?;
    Ok(ov)
}

fn virtual_size(image: &Path) -> Result<u64> {
    if image_format(image) == "raw" {
        return Ok(std::fs::metadata(image)?.len());
    }
    let mut c = Command::new(disk::find_tool("qemu-img")?);
    c.args(["info", "--output=json"]).arg(image);
    let v: serde_json::Value = serde_json::from_str(&disk::run(&mut c)?)?;
    v["virtual-size"]
        .as_u64()
        .context("qemu-img info gave no virtual-size")
}

/// What a QEMU guest is made of.
struct Guest<'a> {
    disk: &'a Path,
    /// `raw` or `qcow2`.
    format: &'a str,
    seed: Option<&'a Path>,
    memory: u32,
    cpus: u32,
    /// User-mode network options after `model=…` (e.g. port forwards).
    net_extra: String,
}

fn qemu_command(m: &Machine, work: &Path, g: &Guest) -> Result<Command> {
    let vars = work.join("OVMF_VARS.fd");
    std::fs::copy(&m.vars, &vars)?;
    let mut c = Command::new(&m.qemu);
    // KVM where it is known to work; else multi-threaded TCG.
    if kvm_usable() {
        c.args(["-accel", "kvm"]);
    } else {
        c.args(["-accel", "tcg,thread=multi"]);
    }
    c.args([
        "-cpu",
        "max",
        "-m",
        &g.memory.to_string(),
        "-smp",
        &g.cpus.to_string(),
    ])
    .arg("-drive")
    .arg(format!(
        "if=pflash,format=raw,readonly=on,file={}",
        m.code.display()
    ))
    .arg("-drive")
    .arg(format!("if=pflash,format=raw,file={}", vars.display()))
    .arg("-drive")
    .arg(format!(
        "file={},format={},if=virtio",
        g.disk.display(),
        g.format
    ))
    .arg("-nic")
    .arg(format!("user,model=virtio-net-pci{}", g.net_extra));
    if let Some(s) = g.seed {
        c.arg("-drive").arg(format!(
            "file={},format=raw,if=virtio,readonly=on",
            s.display()
        ));
    }
    Ok(c)
}

/// KVM is used only when asked for (`KILN_KVM=1`): on many CI machines
/// /dev/kvm exists but guests hang.
fn kvm_usable() -> bool {
    std::env::var_os("KILN_KVM").is_some_and(|v| v == "1") && Path::new("/dev/kvm").exists()
}

/// What the console showed.
#[derive(Default, Debug)]
struct BootResult {
    state: Option<String>,
    failed_units: Vec<String>,
    results: Vec<(Option<i32>, Option<String>)>,
    ended: bool,
    login_after: Option<f64>,
    fatal: Option<String>,
    seconds: f64,
    emulator_oops: bool,
}

const FATAL: &[(&str, &str)] = &[
    ("Kernel panic", "kernel panic"),
    ("Oops:", "kernel Oops"),
    ("BUG: ", "kernel BUG"),
    ("You are in emergency mode", "emergency shell"),
    ("Entering emergency mode", "emergency shell"),
    ("Give root password for maintenance", "emergency shell"),
    (
        "(initramfs) ",
        "initramfs shell (the root filesystem was not found)",
    ),
    (
        "dracut Warning: Could not boot",
        "the initrd could not boot",
    ),
    (
        "Failed to start kiln-test.service",
        "the test runner could not be installed by cloud-init",
    ),
];

fn parse_console(text: &str, r: &mut BootResult, ntests: usize) {
    r.results.resize(ntests, (None, None));
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(pos) = line.find("KILN-T ") {
            let rest = &line[pos + 7..];
            let mut it = rest.splitn(3, ' ');
            match (it.next(), it.next(), it.next()) {
                (Some("state"), s, _) => r.state = s.map(str::to_string),
                (Some("failed"), a, b) => {
                    r.failed_units = [a, b]
                        .into_iter()
                        .flatten()
                        .flat_map(|s| s.split_whitespace())
                        .map(str::to_string)
                        .collect()
                }
                (Some("rc"), Some(i), Some(rc)) => {
                    if let Ok(i) = i.parse::<usize>() {
                        if (1..=ntests).contains(&i) {
                            r.results[i - 1].0 = rc.trim().parse().ok();
                        }
                    }
                }
                (Some("out"), Some(i), out) => {
                    if let Ok(i) = i.parse::<usize>() {
                        if (1..=ntests).contains(&i) {
                            use base64::Engine;
                            let raw = out.unwrap_or("").trim();
                            r.results[i - 1].1 = base64::engine::general_purpose::STANDARD
                                .decode(raw)
                                .ok()
                                .map(|b| String::from_utf8_lossy(&b).to_string());
                        }
                    }
                }
                (Some("end"), _, _) => r.ended = true,
                _ => {}
            }
        }
        if r.fatal.is_none() {
            for (pat, what) in FATAL {
                if line.contains(pat) {
                    r.fatal = Some(format!("{what}: {}", line.trim()));
                    if line.contains("Oops: int3") || text.contains("Oops: int3") {
                        r.emulator_oops = true;
                    }
                }
            }
        }
    }
}

/// Boots the image once; the console goes to `log`.
#[allow(clippy::too_many_arguments)]
fn boot_once(
    ui: &Ui,
    m: &Machine,
    work: &Path,
    image: &Path,
    seed: &Path,
    log: &Path,
    args: &TestArgs,
    ntests: usize,
) -> Result<BootResult> {
    let ov = overlay(work, image, virtual_size(image)?)?;
    let mut c = qemu_command(
        m,
        work,
        &Guest {
            disk: &ov,
            format: "qcow2",
            seed: Some(seed),
            memory: args.memory,
            cpus: args.cpus,
            net_extra: String::new(),
        },
    )?;
    let _ = std::fs::remove_file(log);
    c.args(["-display", "none", "-no-reboot", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = c
        .spawn()
        .with_context(|| format!("starting {}", m.qemu.display()))?;
    let mut r = BootResult::default();
    let deadline = Duration::from_secs(args.timeout);
    let mut ended_at: Option<Instant> = None;
    let mut last_note = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let text = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).to_string();
        let mut now = BootResult::default();
        parse_console(&text, &mut now, ntests);
        if r.login_after.is_none() && text.contains(" login: ") {
            r.login_after = Some(start.elapsed().as_secs_f64());
        }
        now.login_after = r.login_after;
        r = now;
        let exited = child.try_wait()?.is_some();
        if r.ended && ended_at.is_none() {
            ended_at = Some(Instant::now());
        }
        if exited {
            break;
        }
        if r.fatal.is_some() {
            std::thread::sleep(Duration::from_secs(2));
            break;
        }
        if ended_at.is_some_and(|t| t.elapsed() > Duration::from_secs(60)) {
            break;
        }
        if start.elapsed() > deadline {
            r.fatal = Some(format!(
                "timed out after {} s (no result from the guest)",
                args.timeout
            ));
            break;
        }
        if last_note.elapsed() > Duration::from_secs(30) {
            last_note = Instant::now();
            let stage = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim();
            let stage: String = stage.chars().filter(|c| !c.is_control()).take(70).collect();
            ui.status(
                "Booting",
                &format!("{:.0}s: {stage}", start.elapsed().as_secs_f64()),
            );
        }
    }
    let _ = child.kill();
    let out = child.wait_with_output()?;
    r.seconds = start.elapsed().as_secs_f64();
    if !r.ended && r.fatal.is_none() {
        let err = String::from_utf8_lossy(&out.stderr);
        r.fatal = Some(format!(
            "the machine stopped before the tests finished{}",
            if err.trim().is_empty() {
                String::new()
            } else {
                format!(" (qemu: {})", err.trim())
            }
        ));
    }
    Ok(r)
}

fn boot_outcomes(r: &BootResult, tests: &[TestEntry]) -> Vec<Outcome> {
    const G: &str = "boot";
    let mut out = Vec::new();
    let mut reached = Outcome::pass(G, "boots to multi-user.target");
    reached.seconds = r.seconds;
    match (&r.fatal, r.state.as_deref()) {
        (Some(f), _) => reached.failure = Some(f.clone()),
        (None, None) => reached.failure = Some("no result from the guest".into()),
        // degraded: booted, with failed units (the next check names them).
        (None, Some("running" | "degraded")) => {}
        (None, Some(s)) => {
            reached.failure = Some(format!(
                "the boot did not finish (system state `{}`)",
                if s.is_empty() {
                    "unknown: still starting after 900 s"
                } else {
                    s
                }
            ))
        }
    }
    out.push(reached);
    out.push(match (&r.state, r.failed_units.is_empty()) {
        (Some(_), true) => Outcome::pass(G, "no failed units"),
        (Some(s), false) => Outcome::fail(
            G,
            "no failed units",
            format!("system is {s}; failed: {}", r.failed_units.join(", ")),
        ),
        (None, _) => Outcome::fail(G, "no failed units", "not reached".into()),
    });
    out.push(match r.login_after {
        Some(_) => Outcome::pass(G, "login prompt on the serial console"),
        None => Outcome::fail(
            G,
            "login prompt on the serial console",
            "no `login:` prompt seen".into(),
        ),
    });
    for (i, t) in tests.iter().enumerate() {
        let name = format!("test: {}", t.name);
        let (rc, text) = r.results.get(i).cloned().unwrap_or((None, None));
        let o = match (rc, text) {
            (None, _) | (_, None) => {
                Outcome::fail(G, &name, "no result read back from the console".into())
            }
            (Some(rc), Some(text)) => {
                let mut p = Vec::new();
                if rc != 0 {
                    p.push(format!("`{}` exited with {rc}", t.command));
                }
                if let Some(e) = &t.expect {
                    if !text.contains(e.as_str()) {
                        p.push(format!("output lacks `{e}`"));
                    }
                }
                if !p.is_empty() {
                    let shown: String = text.trim().chars().take(300).collect();
                    p.push(format!("output: {shown}"));
                }
                Outcome::check(G, &name, p)
            }
        };
        out.push(o);
    }
    out
}

fn xml_escape(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect::<String>()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn junit(image: &Path, outcomes: &[Outcome], console_tail: &str) -> String {
    let failures = outcomes.iter().filter(|o| o.failure.is_some()).count();
    let skipped = outcomes.iter().filter(|o| o.skipped.is_some()).count();
    let total: f64 = outcomes.iter().map(|o| o.seconds).sum();
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"kiln test\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{total:.1}\">\n  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{total:.1}\">\n",
        outcomes.len(),
        xml_escape(&image.display().to_string()),
        outcomes.len()
    );
    for o in outcomes {
        x.push_str(&format!(
            "    <testcase classname=\"kiln.{}\" name=\"{}\" time=\"{:.1}\"",
            o.group,
            xml_escape(&o.name),
            o.seconds
        ));
        match (&o.failure, &o.skipped) {
            (Some(f), _) => x.push_str(&format!(
                ">\n      <failure message=\"{}\"/>\n    </testcase>\n",
                xml_escape(f)
            )),
            (None, Some(s)) => x.push_str(&format!(
                ">\n      <skipped message=\"{}\"/>\n    </testcase>\n",
                xml_escape(s)
            )),
            _ => x.push_str("/>\n"),
        }
    }
    if !console_tail.is_empty() {
        x.push_str(&format!(
            "    <system-out>{}</system-out>\n",
            xml_escape(console_tail)
        ));
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn cmd_test(ui: &Ui, cancel: &kiln_model::Cancel, args: &TestArgs) -> Result<()> {
    let mut t = target(&args.target)?;
    t.users.extend(args.allow_users.iter().cloned());
    let stem = t
        .image
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("disk")
        .to_string();
    let report = t.dir.join(format!("{stem}.test.xml"));
    let console = t.dir.join(format!("{stem}.console.log"));
    // Fail early on a missing QEMU or firmware, before any work.
    let _ = std::fs::remove_file(&report);
    let m = if args.skip_boot {
        None
    } else {
        Some(machine()?)
    };
    let work = tempfile::Builder::new()
        .prefix("kiln-test-")
        .tempdir_in(kiln_build::assemble::scratch_base(
            virtual_size(&t.image)? * 2,
        ))
        .context("creating a scratch directory")?;
    cancel.track_dir(work.path());
    let mut outcomes = Vec::new();
    let raw = if image_format(&t.image) == "qcow2" {
        let p = work.path().join("disk.raw");
        let mut c = Command::new(disk::find_tool("qemu-img")?);
        c.args(["convert", "-q", "-O", "raw"]).arg(&t.image).arg(&p);
        disk::run(&mut c)?;
        p
    } else {
        t.image.clone()
    };
    let mut has_cloud_init = true;
    if !args.skip_static {
        ui.status(
            "Checking",
            &format!("{} (static checks)", t.image.display()),
        );
        let started = Instant::now();
        let (o, tree) = static_checks(&t, work.path(), &raw);
        if let Some(tree) = &tree {
            has_cloud_init = tree.join("usr/bin/cloud-init").exists();
            let _ = std::fs::remove_dir_all(tree);
        }
        let secs = started.elapsed().as_secs_f64() / o.len().max(1) as f64;
        for mut x in o {
            x.seconds = secs;
            print_outcome(ui, &x);
            outcomes.push(x);
        }
    }
    let static_broken = outcomes.iter().any(|o| {
        o.failure.is_some() && (o.name.starts_with("GPT") || o.name.starts_with("partitions"))
    });
    let mut console_tail = String::new();
    if let Some(m) = &m {
        let arm64 = gpt::read_table(&raw)
            .is_ok_and(|(_, e)| e.iter().any(|x| x.type_guid == gpt::types::ROOT_ARM64));
        if arm64 {
            outcomes.push(Outcome::fail(
                "boot",
                "boots to multi-user.target",
                "booting arm64 disks is not supported by kiln test yet (x86-64 QEMU and OVMF only); use --skip-boot".into(),
            ));
        } else if static_broken {
            outcomes.push(Outcome::skip(
                "boot",
                "boots to multi-user.target",
                "the partition table is broken",
            ));
        } else if !has_cloud_init {
            outcomes.push(Outcome::fail("boot", "boots to multi-user.target", "the image has no cloud-init, so the boot test cannot run commands in it (add cloud-init, or use kiln test --skip-boot)".into()));
        } else {
            if t.tests.is_empty() {
                ui.warn("no [[test]] commands (none in the recipe, or no manifest.json beside the image): only the boot itself is checked");
            }
            let pubkey = ssh_key(work.path())?;
            let seed = make_seed(work.path(), &t.tests, &pubkey, true)?;
            let mut tries = 0;
            let r = loop {
                tries += 1;
                ui.status(
                    "Booting",
                    &format!(
                        "{} in QEMU ({}, UEFI; console in {})",
                        t.image.display(),
                        if kvm_usable() { "KVM" } else { "TCG" },
                        console.display()
                    ),
                );
                let r = boot_once(
                    ui,
                    m,
                    work.path(),
                    &t.image,
                    &seed,
                    &console,
                    args,
                    t.tests.len(),
                )?;
                // QEMU's multi-threaded TCG occasionally corrupts code the
                // guest kernel is live-patching early in boot ("Oops: int3"):
                // an emulator fault, not the image's; boot again.
                if r.emulator_oops && !r.ended && tries < 3 {
                    ui.warn("the guest kernel hit the known QEMU TCG `Oops: int3` emulation fault; booting again");
                    let _ = std::fs::rename(
                        &console,
                        t.dir.join(format!("{stem}.console.{tries}.log")),
                    );
                    continue;
                }
                break r;
            };
            let text =
                String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).to_string();
            console_tail = tail(&text, 60);
            for x in boot_outcomes(&r, &t.tests) {
                print_outcome(ui, &x);
                outcomes.push(x);
            }
            if let Some(s) = r.login_after {
                ui.status(
                    "Timing",
                    &format!(
                        "power-on to login prompt {s:.1}s, whole boot test {:.1}s",
                        r.seconds
                    ),
                );
            }
        }
    }
    let xml = junit(&t.image, &outcomes, &console_tail);
    kiln_model::fsutil::write_atomic(&report, xml.as_bytes())?;
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
    if args.json {
        let v = json!({
            "image": t.image.display().to_string(),
            "report": report.display().to_string(),
            "console": if m.is_some() { Some(console.display().to_string()) } else { None },
            "passed": failed.is_empty(),
            "checks": outcomes.iter().map(|o| json!({
                "group": o.group, "name": o.name,
                "result": if o.failure.is_some() { "fail" } else if o.skipped.is_some() { "skip" } else { "pass" },
                "message": o.failure.clone().or(o.skipped.clone()),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    ui.status("Report", &report.display().to_string());
    if failed.is_empty() {
        ui.status(
            "Passed",
            &format!("{} checks on {}", outcomes.len(), t.image.display()),
        );
        return Ok(());
    }
    if !console_tail.is_empty() {
        eprintln!(
            "--- last console lines ({}) ---\n{}\n---",
            console.display(),
            tail(&console_tail, 25)
        );
    }
    Err(Hinted {
        message: format!(
            "{} of {} checks failed on {}: {}",
            failed.len(),
            outcomes.len(),
            t.image.display(),
            failed
                .iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        hint: format!("details in {} and {}", report.display(), console.display()),
    }
    .into())
}

fn print_outcome(ui: &Ui, o: &Outcome) {
    match (&o.failure, &o.skipped) {
        (Some(f), _) => ui.status("FAIL", &format!("{}: {f}", o.name)),
        (None, Some(s)) => ui.status("skip", &format!("{} ({s})", o.name)),
        _ => ui.status("ok", &o.name),
    }
}

pub struct BootArgs {
    pub image: PathBuf,
    pub persist: bool,
    pub memory: u32,
    pub cpus: u32,
    pub ssh_port: u16,
}

/// `kiln boot`: the image in QEMU with the serial console on this terminal.
pub fn cmd_boot(ui: &Ui, args: &BootArgs) -> Result<()> {
    let image = if args.image.is_dir() {
        find_image(&args.image)
    } else {
        args.image.clone()
    };
    if !image.is_file() {
        return Err(Hinted {
            message: format!("no disk image at {}", image.display()),
            hint: "build one with formats = [\"disk\"]".into(),
        }
        .into());
    }
    let m = machine()?;
    let work = tempfile::Builder::new().prefix("kiln-boot-").tempdir()?;
    let disk_path = if args.persist {
        image.clone()
    } else {
        overlay(work.path(), &image, virtual_size(&image)?)?
    };
    // A seed with the caller's SSH keys, so `ssh -p PORT kiln@localhost` works.
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let keys: Vec<String> = ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"]
        .iter()
        .filter_map(|k| std::fs::read_to_string(home.join(".ssh").join(k)).ok())
        .map(|k| k.trim().to_string())
        .collect();
    let seed = match keys.first() {
        Some(k) => Some(make_seed(work.path(), &[], k, false)?),
        None => None,
    };
    // --persist boots the image itself (in its own format), else the overlay.
    let format = if args.persist {
        image_format(&image)
    } else {
        "qcow2"
    };
    let mut c = qemu_command(
        &m,
        work.path(),
        &Guest {
            disk: &disk_path,
            format,
            seed: seed.as_deref(),
            memory: args.memory,
            cpus: args.cpus,
            net_extra: format!(",hostfwd=tcp:127.0.0.1:{}-:22", args.ssh_port),
        },
    )?;
    c.args(["-nographic", "-serial", "mon:stdio"]);
    ui.status(
        "Booting",
        &format!(
            "{}{} — Ctrl-a x quits{}",
            image.display(),
            if args.persist {
                ""
            } else {
                " (changes are discarded)"
            },
            if seed.is_some() {
                format!("; ssh -p {} kiln@127.0.0.1", args.ssh_port)
            } else {
                String::new()
            }
        ),
    );
    let status = c
        .status()
        .with_context(|| format!("running {}", m.qemu.display()))?;
    if !status.success() {
        anyhow::bail!("qemu exited with {status}");
    }
    Ok(())
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

    #[test]
    fn console_parsing_reads_results_and_fatal_lines() {
        let text = format!(
            "[  1.0] booting\r\nKILN-T state running\nKILN-T failed \nKILN-T rc 1 0\nKILN-T out 1 {}\nKILN-T rc 2 1\nKILN-T out 2 {}\nKILN-T end\n",
            b64("active\n"),
            b64("nope")
        );
        let mut r = BootResult::default();
        parse_console(&text, &mut r, 2);
        assert_eq!(r.state.as_deref(), Some("running"));
        assert!(r.failed_units.is_empty());
        assert_eq!(r.results[0], (Some(0), Some("active\n".into())));
        assert_eq!(r.results[1].0, Some(1));
        assert!(r.ended && r.fatal.is_none());
        let mut r = BootResult::default();
        parse_console(
            "[ 3.1] Kernel panic - not syncing: VFS: Unable to mount root fs\n",
            &mut r,
            0,
        );
        assert!(r.fatal.unwrap().starts_with("kernel panic"));
        let tests = vec![TestEntry {
            name: "ssh".into(),
            command: "systemctl is-active ssh".into(),
            expect: Some("active".into()),
        }];
        let r = BootResult {
            state: Some("degraded".into()),
            failed_units: vec!["foo.service".into()],
            results: vec![(Some(0), Some("inactive".into()))],
            ended: true,
            ..Default::default()
        };
        let o = boot_outcomes(&r, &tests);
        assert!(o
            .iter()
            .any(|x| x.name == "no failed units"
                && x.failure.as_ref().unwrap().contains("foo.service")));
        let unfinished = BootResult {
            state: Some(String::new()),
            ended: true,
            ..Default::default()
        };
        let o2 = boot_outcomes(&unfinished, &[]);
        assert!(
            o2[0].failure.as_ref().unwrap().contains("did not finish"),
            "a guest that never finished booting must not pass: {o2:?}"
        );
        // "inactive" contains "active": expectations are substrings, so this passes.
        assert!(o
            .iter()
            .any(|x| x.name == "test: ssh" && x.failure.is_none()));
        let xml = junit(Path::new("d.raw"), &o, "console <tail>");
        assert!(
            xml.contains("failures=\"2\"") && xml.contains("&lt;tail&gt;"),
            "{xml}"
        );
    }
}

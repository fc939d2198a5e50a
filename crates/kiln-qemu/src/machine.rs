//! QEMU, its firmware, and the disks it boots.

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_image::disk::{self, DiskError};

use crate::QemuError;

/// QEMU and the UEFI firmware it boots with (x86-64 QEMU and OVMF).
#[derive(Clone, Debug)]
pub struct Machine {
    /// `qemu-system-x86_64`, or `$KILN_QEMU`.
    pub qemu: PathBuf,
    /// The read-only firmware code (`OVMF_CODE_4M.fd`).
    pub code: PathBuf,
    /// The firmware variable store template (`OVMF_VARS_4M.fd`), copied per boot.
    pub vars: PathBuf,
}

/// Finds QEMU (`$KILN_QEMU`, else `qemu-system-x86_64` on the PATH) and OVMF
/// (in `$KILN_OVMF_DIR`, else `/usr/share/OVMF`); errors name the package
/// to install.
pub fn machine() -> Result<Machine, QemuError> {
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
        return Err(QemuError::NoFirmware { code });
    }
    Ok(Machine { qemu, code, vars })
}

/// A disk image's format, as QEMU names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

/// Refuses what is not a disk image QEMU can boot: a qcow2 file, or a raw
/// disk with a partition table (GPT, or an MBR boot signature). A tarball,
/// an OCI blob or a JSON file given to `kiln boot` would otherwise leave the
/// firmware trying network boot and then sitting at its shell.
pub fn check_disk_image(p: &Path) -> Result<ImageFormat, QemuError> {
    let head = head(p)?;
    if head.starts_with(b"QFI\xfb") {
        return Ok(ImageFormat::Qcow2);
    }
    let gpt = head.get(512..520) == Some(b"EFI PART");
    let mbr = head.get(510..512) == Some(&[0x55, 0xAA]);
    if gpt || mbr {
        return Ok(ImageFormat::Raw);
    }
    Err(QemuError::NotADisk {
        path: p.to_path_buf(),
        what: foreign_format(&head)
            .unwrap_or("no disk: it has neither a partition table nor the qcow2 header")
            .to_string(),
    })
}

/// Refuses a file that is recognisably something else than a disk (a tar
/// archive, compressed data, an executable, JSON, nothing); other files
/// pass, for the static checks to say what is wrong with them.
pub fn refuse_foreign_file(p: &Path) -> Result<(), QemuError> {
    let head = head(p)?;
    if head.starts_with(b"QFI\xfb") {
        return Ok(());
    }
    match foreign_format(&head) {
        Some(what) => Err(QemuError::NotADisk {
            path: p.to_path_buf(),
            what: what.to_string(),
        }),
        None => Ok(()),
    }
}

fn head(p: &Path) -> Result<Vec<u8>, QemuError> {
    use std::io::Read;
    let mut head = Vec::with_capacity(4096);
    std::fs::File::open(p)?.take(4096).read_to_end(&mut head)?;
    Ok(head)
}

/// What the first bytes of a file show it to be, when that is not a disk.
fn foreign_format(head: &[u8]) -> Option<&'static str> {
    let what = if head.get(257..262) == Some(b"ustar") {
        "a tar archive"
    } else if head.starts_with(&[0x1f, 0x8b]) {
        "gzip-compressed data"
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "zstd-compressed data"
    } else if head.starts_with(b"\xfd7zXZ") {
        "xz-compressed data"
    } else if head.starts_with(b"\x7fELF") {
        "an executable"
    } else if head.first().is_some_and(|b| *b == b'{' || *b == b'[') {
        "JSON"
    } else if head.is_empty() {
        "empty"
    } else {
        return None;
    };
    Some(what)
}

impl ImageFormat {
    /// `qcow2` when the file starts with the qcow2 magic, else `raw`
    /// (also for a file that cannot be read).
    pub fn detect(p: &Path) -> ImageFormat {
        let mut magic = [0u8; 4];
        if let Ok(mut f) = std::fs::File::open(p) {
            use std::io::Read;
            let _ = f.read_exact(&mut magic);
        }
        if &magic == b"QFI\xfb" {
            ImageFormat::Qcow2
        } else {
            ImageFormat::Raw
        }
    }

    /// QEMU's name for it (`raw`, `qcow2`).
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

/// A copy-on-write overlay `WORK/overlay.qcow2` over the image, 1 GiB
/// larger than `virtual_size` (so growing the root is exercised); the image
/// itself is never written.
pub fn overlay(work: &Path, image: &Path, virtual_size: u64) -> Result<PathBuf, QemuError> {
    let ov = work.join("overlay.qcow2");
    let abs = std::fs::canonicalize(image)?;
    let mut c = Command::new(disk::find_tool("qemu-img")?);
    c.args([
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        ImageFormat::detect(image).as_str(),
        "-b",
    ])
    .arg(&abs)
    .arg(&ov)
    .arg(format!("{}", virtual_size + (1 << 30)));
    disk::run(&mut c)?;
    Ok(ov)
}

/// The size of the disk a raw or qcow2 image holds.
pub fn virtual_size(image: &Path) -> Result<u64, QemuError> {
    if ImageFormat::detect(image) == ImageFormat::Raw {
        return Ok(std::fs::metadata(image)?.len());
    }
    let mut c = Command::new(disk::find_tool("qemu-img")?);
    c.args(["info", "--output=json"]).arg(image);
    let v: serde_json::Value = serde_json::from_str(&disk::run(&mut c)?)?;
    v["virtual-size"].as_u64().ok_or(QemuError::NoVirtualSize)
}

/// What a QEMU guest is made of.
#[derive(Clone, Debug)]
pub struct Guest<'a> {
    pub disk: &'a Path,
    pub format: ImageFormat,
    /// The NoCloud seed, attached read-only as a second disk.
    pub seed: Option<&'a Path>,
    /// Memory in MiB.
    pub memory: u32,
    pub cpus: u32,
    /// User-mode network options after `model=…` (e.g. port forwards).
    pub net_extra: String,
}

/// The QEMU command line for a guest: UEFI (a fresh copy of the variable
/// store in `work`), virtio disk and network, KVM when [`kvm_usable`], else
/// multi-threaded TCG. Display and serial options are the caller's.
pub fn qemu_command(m: &Machine, work: &Path, g: &Guest) -> Result<Command, QemuError> {
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
        g.format.as_str()
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

/// KVM is used only when asked for (`KILN_KVM=1`) and `/dev/kvm` exists: on
/// many CI machines /dev/kvm exists but guests hang.
pub fn kvm_usable() -> bool {
    std::env::var_os("KILN_KVM").is_some_and(|v| v == "1") && Path::new("/dev/kvm").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_apart_by_magic() {
        let d = tempfile::tempdir().unwrap();
        let q = d.path().join("x.img");
        std::fs::write(&q, b"QFI\xfb\0\0\0\x03").unwrap();
        assert_eq!(ImageFormat::detect(&q), ImageFormat::Qcow2);
        let r = d.path().join("y.img");
        std::fs::write(&r, b"QF").unwrap();
        assert_eq!(ImageFormat::detect(&r), ImageFormat::Raw);
        assert_eq!(
            ImageFormat::detect(&d.path().join("none")),
            ImageFormat::Raw
        );
        assert_eq!(virtual_size(&r).unwrap(), 2);
    }

    #[test]
    fn the_command_line_attaches_firmware_disk_and_seed() {
        let d = tempfile::tempdir().unwrap();
        let vars = d.path().join("vars.fd");
        std::fs::write(&vars, b"v").unwrap();
        let m = Machine {
            qemu: "/usr/bin/qemu-system-x86_64".into(),
            code: "/fw/code.fd".into(),
            vars,
        };
        let c = qemu_command(
            &m,
            d.path(),
            &Guest {
                disk: Path::new("/d/disk.raw"),
                format: ImageFormat::Raw,
                seed: Some(Path::new("/d/seed.img")),
                memory: 512,
                cpus: 1,
                net_extra: ",hostfwd=tcp:127.0.0.1:2222-:22".into(),
            },
        )
        .unwrap();
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = args.join(" ");
        assert!(
            line.contains("file=/d/disk.raw,format=raw,if=virtio"),
            "{line}"
        );
        assert!(line.contains("readonly=on,file=/fw/code.fd"), "{line}");
        assert!(
            line.contains("file=/d/seed.img,format=raw,if=virtio,readonly=on"),
            "{line}"
        );
        assert!(line.contains("hostfwd=tcp:127.0.0.1:2222-:22"), "{line}");
        assert!(d.path().join("OVMF_VARS.fd").is_file());
    }
}

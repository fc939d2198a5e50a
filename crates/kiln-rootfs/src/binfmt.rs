//! Foreign-architecture builds: whether the kernel can run the image's
//! programs (its maintainer scripts, dpkg) through an emulator registered
//! with `binfmt_misc`, such as qemu-user-static's.
//!
//! A handler counts when it is enabled, its magic and mask match an
//! executable of the architecture, and it has the `F` flag: the kernel
//! opened its interpreter when it was registered, so it works inside the
//! build root, where no emulator is installed.

use std::path::Path;

/// Where the kernel lists the handlers.
pub const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// The first 20 bytes of an ELF executable of Debian architecture `arch`
/// (class, byte order, type and machine), or `None` when Kiln does not know
/// the architecture.
pub fn elf_header(arch: &str) -> Option<[u8; 20]> {
    // (64-bit, big-endian, e_machine)
    let (wide, big, machine): (bool, bool, u16) = match arch {
        "amd64" => (true, false, 62),
        "arm64" => (true, false, 183),
        "armhf" | "armel" => (false, false, 40),
        "i386" => (false, false, 3),
        "ppc64el" => (true, false, 21),
        "s390x" => (true, true, 22),
        "riscv64" => (true, false, 243),
        "mips64el" => (true, false, 8),
        "loong64" => (true, false, 258),
        _ => return None,
    };
    let mut h = [0u8; 20];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = if wide { 2 } else { 1 };
    h[5] = if big { 2 } else { 1 };
    h[6] = 1;
    let (ty, m) = if big {
        (2u16.to_be_bytes(), machine.to_be_bytes())
    } else {
        (2u16.to_le_bytes(), machine.to_le_bytes())
    };
    h[16..18].copy_from_slice(&ty);
    h[18..20].copy_from_slice(&m);
    Some(h)
}

/// Whether this host runs `arch`'s programs without emulation.
pub fn native(host: &str, arch: &str) -> bool {
    host == arch || (host == "amd64" && arch == "i386")
}

/// One registered handler, as its file in [`BINFMT_DIR`] describes it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Handler {
    pub name: String,
    pub enabled: bool,
    pub interpreter: String,
    pub flags: String,
    pub offset: usize,
    pub magic: Vec<u8>,
    pub mask: Vec<u8>,
}

/// A handler file's text; `None` for extension handlers and what does not
/// parse (a handler Kiln cannot read is not one it relies on).
pub fn parse_handler(name: &str, text: &str) -> Option<Handler> {
    let mut h = Handler {
        name: name.to_string(),
        ..Default::default()
    };
    let mut magic = None;
    for line in text.lines() {
        let line = line.trim();
        if line == "enabled" {
            h.enabled = true;
        } else if let Some(v) = line.strip_prefix("interpreter ") {
            h.interpreter = v.to_string();
        } else if let Some(v) = line.strip_prefix("flags:") {
            h.flags = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("offset ") {
            h.offset = v.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("magic ") {
            magic = Some(hex::decode(v.trim()).ok()?);
        } else if let Some(v) = line.strip_prefix("mask ") {
            h.mask = hex::decode(v.trim()).ok()?;
        }
    }
    h.magic = magic?;
    Some(h)
}

impl Handler {
    /// Whether the kernel hands `header` (a file's first bytes) to this
    /// handler.
    pub fn matches(&self, header: &[u8]) -> bool {
        if self.magic.is_empty() {
            return false;
        }
        self.magic.iter().enumerate().all(|(i, m)| {
            let k = self.mask.get(i).copied().unwrap_or(0xff);
            self.offset
                .checked_add(i)
                .and_then(|at| header.get(at))
                .is_some_and(|b| b & k == m & k)
        })
    }
}

/// Checks that the kernel runs `arch`'s programs on a `host` machine,
/// natively or through an `F` handler in `dir`; the error says what is
/// missing and which package or command provides it.
pub fn check_in(dir: &Path, host: &str, arch: &str) -> Result<(), String> {
    if native(host, arch) {
        return Ok(());
    }
    let Some(header) = elf_header(arch) else {
        return Err(format!(
            "Kiln does not know how to run {arch} programs on {host}"
        ));
    };
    let emulator = format!(
        "install an emulator for {arch} that registers with binfmt_misc: apt-get install qemu-user-static"
    );
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(_) => {
            return Err(format!(
                "binfmt_misc is not mounted at {}: as root, mount -t binfmt_misc binfmt_misc {}, then {emulator}",
                dir.display(),
                dir.display()
            ))
        }
    };
    if std::fs::read_to_string(dir.join("status")).is_ok_and(|s| s.trim() == "disabled") {
        return Err(format!(
            "binfmt_misc is disabled: as root, echo 1 > {}/status",
            dir.display()
        ));
    }
    let mut without_f = None;
    let mut disabled = None;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "register" || name == "status" {
            continue;
        }
        // Never follow a link here: the files are the kernel's.
        if e.file_type().map(|t| !t.is_file()).unwrap_or(true) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let Some(h) = parse_handler(&name, &text) else {
            continue;
        };
        if !h.matches(&header) {
            continue;
        }
        if !h.enabled {
            disabled.get_or_insert(h.name);
        } else if !h.flags.contains('F') {
            without_f.get_or_insert(h.name);
        } else {
            return Ok(());
        }
    }
    Err(match (without_f, disabled) {
        (Some(n), _) => format!(
            "the binfmt_misc handler {n} runs {arch} programs but without the F flag, so its \
             emulator would have to be inside the image: register it with F (qemu-user-static's \
             handlers have it: apt-get install qemu-user-static)"
        ),
        (None, Some(n)) => format!(
            "the binfmt_misc handler {n} for {arch} is disabled: as root, echo 1 > {}/{n}",
            dir.display()
        ),
        (None, None) => format!("no binfmt_misc handler runs {arch} programs: {emulator}"),
    })
}

/// [`check_in`] of the kernel's own handlers.
pub fn check(host: &str, arch: &str) -> Result<(), String> {
    check_in(Path::new(BINFMT_DIR), host, arch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AARCH64: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n\
        flags: POF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\n\
        mask ffffffffffffff00fffffffffffffffffeffffff\n";

    #[test]
    fn qemu_user_statics_aarch64_handler_runs_arm64_and_nothing_else() {
        let h = parse_handler("qemu-aarch64", AARCH64).unwrap();
        assert!(h.enabled && h.flags.contains('F'));
        assert!(h.matches(&elf_header("arm64").unwrap()));
        for other in ["amd64", "armhf", "s390x", "riscv64", "ppc64el"] {
            assert!(!h.matches(&elf_header(other).unwrap()), "{other}");
        }
    }

    #[test]
    fn what_is_missing_is_named() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("status"), "enabled\n").unwrap();
        let e = check_in(d.path(), "amd64", "arm64").unwrap_err();
        assert!(e.contains("apt-get install qemu-user-static"), "{e}");
        assert!(check_in(d.path(), "amd64", "i386").is_ok());
        assert!(check_in(d.path(), "amd64", "amd64").is_ok());
        // Without F the emulator would be looked for inside the image.
        std::fs::write(
            d.path().join("qemu-aarch64"),
            AARCH64.replace("flags: POF", "flags: P"),
        )
        .unwrap();
        let e = check_in(d.path(), "amd64", "arm64").unwrap_err();
        assert!(e.contains("without the F flag"), "{e}");
        std::fs::write(
            d.path().join("qemu-aarch64"),
            AARCH64.replace("enabled\n", "disabled\n"),
        )
        .unwrap();
        let e = check_in(d.path(), "amd64", "arm64").unwrap_err();
        assert!(e.contains("is disabled"), "{e}");
        std::fs::write(d.path().join("qemu-aarch64"), AARCH64).unwrap();
        assert!(check_in(d.path(), "amd64", "arm64").is_ok());
        let e = check_in(&d.path().join("absent"), "amd64", "arm64").unwrap_err();
        assert!(e.contains("mount -t binfmt_misc"), "{e}");
    }

    #[test]
    fn hostile_handler_files_are_not_relied_on() {
        for text in [
            "",
            "enabled\nflags: F\nmagic zz\n",
            "enabled\nflags: F\noffset -1\nmagic 7f45\n",
            "enabled\nflags: F\nextension .exe\n",
            "enabled\nflags: F\noffset 99999999\nmagic 7f454c46\n",
            "enabled\nflags: F\noffset 18446744073709551615\nmagic 7f454c46\n",
        ] {
            let h = parse_handler("x", text);
            assert!(
                h.as_ref()
                    .is_none_or(|h| !h.matches(&elf_header("arm64").unwrap())),
                "{text:?} -> {h:?}"
            );
        }
    }
}

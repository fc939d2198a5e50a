//! Kiln's QEMU harness: finding QEMU and UEFI firmware ([`machine`]),
//! copy-on-write overlays, the NoCloud seed that installs a test runner
//! ([`make_seed`]), the serial-console protocol the runner speaks
//! ([`parse_console`]) and booting a disk image, either unattended with a
//! deadline ([`boot_once`]) or with its console on the caller's terminal
//! ([`ConsoleBoot`]).
//!
//! Everything runs on plain files: nothing is mounted, nothing needs root.

mod boot;
mod console;
mod machine;
mod seed;
mod session;

pub use boot::{boot_once, BootTest, ConsoleBoot, ConsoleGuest};
pub use console::{parse_console, BootResult, CommandResult, FATAL};
pub use machine::{
    check_disk_image, kvm_usable, machine, overlay, qemu_command, refuse_foreign_file,
    virtual_size, Guest, ImageFormat, Machine,
};
pub use seed::{
    make_seed, seed_from_user_data, ssh_key, user_data_head, user_ssh_keys, write_files, RUNNER,
};
pub use session::{run_session, Session, Watch};

use std::path::PathBuf;

use kiln_image::disk::DiskError;

/// What can go wrong around QEMU; [`QemuError::hint`] says what to do.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// A tool (QEMU, qemu-img, ssh-keygen, mtools…) is missing or failed.
    #[error("{0}")]
    Tool(#[from] DiskError),
    /// The OVMF firmware files are not where QEMU needs them.
    #[error("UEFI firmware for QEMU not found ({} and OVMF_VARS_4M.fd)", code.display())]
    NoFirmware { code: PathBuf },
    /// `qemu-img info` answered without the image's size.
    #[error("qemu-img info gave no virtual-size")]
    NoVirtualSize,
    /// QEMU could not be started.
    #[error("starting {}", qemu.display())]
    Start {
        qemu: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// QEMU could not be run (interactive boot).
    #[error("running {}", qemu.display())]
    Run {
        qemu: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// QEMU exited unsuccessfully (interactive boot).
    #[error("qemu exited with {0}")]
    Exited(String),
    /// What was given to boot is not a disk image.
    #[error("{} is not a disk image: it is {what}", path.display())]
    NotADisk { path: PathBuf, what: String },
    /// The interactive boot ran past its `--timeout`.
    #[error("the guest was stopped after {0} s (--timeout)")]
    TimedOut(u64),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl QemuError {
    /// What the user should do about it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            QemuError::Tool(e) => e.hint(),
            QemuError::NoFirmware { .. } => Some("install it with: apt-get install ovmf".into()),
            QemuError::NotADisk { .. } => Some(
                "give a bootable disk (disk.raw or disk.qcow2, from [output] formats = [\"disk\"] or [\"qcow2\"]); \
                 a root filesystem tarball or an OCI image does not boot: unpack it and chroot into it, or check it with kiln verify"
                    .into(),
            ),
            QemuError::TimedOut(_) => Some("give a longer --timeout, or --timeout 0 for none".into()),
            _ => None,
        }
    }
}

/// Base64 of a string, as the guest's `base64 -d` reads it.
pub(crate) fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

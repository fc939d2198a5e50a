//! Writing records so that no half-written file is ever at its final path,
//! and where scratch work (build areas, `kiln test` unpacking) goes.

use std::path::{Path, PathBuf};

/// Writes `bytes` beside `dest`, then renames it into place.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dest.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dest).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Free bytes on the filesystem holding `path`.
pub fn free_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a properly sized buffer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// What /dev/shm keeps free of Kiln's build areas.
pub const SHM_RESERVE: u64 = 512 << 20;

/// Where a build area goes, and the payload room it has there when that is
/// RAM (`/dev/shm`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub base: PathBuf,
    /// The bytes the packages may unpack into the area, all together: set
    /// when Kiln chose RAM for it.
    pub ram_room: Option<u64>,
}

/// Whether /dev/shm, with `free` bytes free, takes a build whose packages
/// declare `estimate` bytes, and the payload room it gets. It does when it
/// has room for twice the estimate plus [`SHM_RESERVE`] (a build area holds
/// about twice its payload: the `.deb`s handed to dpkg, or the per-package
/// OCI layer trees). The estimate is what the packages *declare*, so the
/// payload is then held to the smaller of `2 × estimate + 256 MiB` and half
/// the room above the reserve: honest packages never reach it, lying ones
/// are stopped before they fill RAM (and the build goes to disk instead).
pub fn shm_room(estimate: u64, free: Option<u64>) -> Option<u64> {
    let free = free?;
    let need = estimate.saturating_mul(2).saturating_add(SHM_RESERVE);
    if free <= need {
        return None;
    }
    Some(
        estimate
            .saturating_mul(2)
            .saturating_add(256 << 20)
            .min((free - SHM_RESERVE) / 2),
    )
}

/// Where scratch work of about `estimate` bytes goes: `$KILN_TMPDIR`; else
/// `/dev/shm` when [`shm_room`] says it has room (dpkg syncs its database
/// after every step, which costs nothing on tmpfs and a lot on many disks);
/// else `$TMPDIR`.
pub fn scratch_place(estimate: u64) -> Placement {
    if let Some(p) = explicit_scratch() {
        return p;
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Some(room) = shm_room(estimate, free_space(shm)) {
            return Placement {
                base: shm.to_path_buf(),
                ram_room: Some(room),
            };
        }
    }
    disk_scratch()
}

/// `$KILN_TMPDIR` if set, else `$TMPDIR`: never a place Kiln chose as RAM.
pub fn disk_scratch() -> Placement {
    explicit_scratch().unwrap_or_else(|| Placement {
        base: std::env::temp_dir(),
        ram_room: None,
    })
}

fn explicit_scratch() -> Option<Placement> {
    std::env::var_os("KILN_TMPDIR")
        .filter(|v| !v.is_empty())
        .map(|d| Placement {
            base: PathBuf::from(d),
            ram_room: None,
        })
}

/// Where scratch work of about `estimate` bytes goes (see [`scratch_place`]).
pub fn scratch_base(estimate: u64) -> PathBuf {
    scratch_place(estimate).base
}

/// Every directory build areas may have been placed in.
pub fn scratch_bases() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = explicit_scratch() {
        out.push(p.base);
    }
    for d in [PathBuf::from("/dev/shm"), std::env::temp_dir()] {
        if !out.contains(&d) && d.is_dir() {
            out.push(d);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn shm_is_chosen_with_room_for_twice_the_estimate_and_caps_the_payload() {
        // No /dev/shm, or too little free.
        assert_eq!(shm_room(100 * MIB, None), None);
        assert_eq!(shm_room(100 * MIB, Some(700 * MIB)), None);
        // Plenty free: the payload may be twice what was declared, plus 256 MiB.
        assert_eq!(shm_room(100 * MIB, Some(8192 * MIB)), Some(456 * MIB));
        // Just enough: half the room above the reserve, still more than declared.
        let room = shm_room(1000 * MIB, Some(2600 * MIB)).unwrap();
        assert_eq!(room, 1044 * MIB);
        assert!(room > 1000 * MIB);
        // A lying, huge Installed-Size does not overflow and does not get RAM.
        assert_eq!(shm_room(u64::MAX / 2, Some(u64::MAX / 4)), None);
        // Nothing declared at all: 256 MiB of payload at most.
        assert_eq!(shm_room(0, Some(24 << 30)), Some(256 * MIB));
    }
}

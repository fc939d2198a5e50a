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
fn free_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a properly sized buffer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Where scratch work of about `estimate` bytes goes: `$KILN_TMPDIR`; else
/// `/dev/shm` when it has room for twice the estimate (dpkg syncs its
/// database after every step, which costs nothing on tmpfs and a lot on
/// many disks); else `$TMPDIR`.
pub fn scratch_base(estimate: u64) -> PathBuf {
    if let Some(d) = std::env::var_os("KILN_TMPDIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(d);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() && free_space(shm).is_some_and(|f| f > estimate * 2 + (512 << 20)) {
        return shm.to_path_buf();
    }
    std::env::temp_dir()
}

//! Who owns a build area or a temporary file, so that what a killed Kiln
//! left behind can be told from what a running one is using.
//!
//! Two records, both robust against a reused pid:
//!
//! * a **lock** held with `flock(2)` for as long as the owner lives: a build
//!   area's `.kiln-owner` file, a cache download's temporary file. The kernel
//!   drops the lock when the owner dies, however it dies; another process
//!   that can take it knows the owner is gone;
//! * a **pid** in a file's name (`.NAME.partial-PID` outputs), checked with
//!   the process's start time from `/proc/PID/stat`: a process that started
//!   after the file was last written cannot be the one that wrote it.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// The lock file of a build area.
pub const OWNER_FILE: &str = ".kiln-owner";

/// This process's effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Takes `f`'s exclusive lock without waiting: `Ok(false)` when another
/// open file holds it.
pub fn try_lock(f: &File) -> io::Result<bool> {
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Opens (creating, never through a link) the lock file `path` and takes
/// its exclusive lock, calling `on_wait` first when another holds it and
/// then waiting. The lock lasts as long as the returned file is open.
pub fn lock_waiting(path: &Path, on_wait: impl FnOnce()) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if !try_lock(&f)? {
        on_wait();
        // SAFETY: flock on an fd this function owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(f)
}

/// A build area's owner record, locked for as long as this value lives.
#[derive(Debug)]
pub struct OwnerLock {
    _file: File,
}

impl OwnerLock {
    /// Writes `dir/.kiln-owner` (this process's pid and start time, for
    /// people), locked: made under another name, locked, then renamed, so
    /// the owner file is never seen unlocked while its owner lives.
    pub fn create(dir: &Path) -> io::Result<OwnerLock> {
        let tmp = dir.join(format!("{OWNER_FILE}.new"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        if !try_lock(&f)? {
            return Err(io::Error::other("a fresh owner file is locked"));
        }
        let pid = std::process::id();
        let started = process_start(pid)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs().to_string())
            .unwrap_or_default();
        writeln!(f, "pid {pid} started {started}")?;
        std::fs::rename(&tmp, dir.join(OWNER_FILE))?;
        Ok(OwnerLock { _file: f })
    }
}

/// When the process `pid` started (`/proc/PID/stat` field 22 and the boot
/// time from `/proc/stat`), if it exists.
pub fn process_start(pid: u32) -> Option<SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything.
    let after = &stat[stat.rfind(')')? + 1..];
    // Fields from 3 on; the start time is field 22.
    let ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(boot)
            + Duration::from_millis(ticks.saturating_mul(1000) / hz),
    )
}

/// Whether the process `pid` that wrote a file last modified at `mtime`
/// may still be running: a process by that number exists and started no
/// later than that (give or take the 2 s the boot time is rounded to). When
/// `/proc` cannot tell, the owner is taken to be alive.
pub fn pid_owner_alive(pid: u32, mtime: SystemTime) -> bool {
    if !Path::new("/proc/self/stat").exists() {
        return true;
    }
    match process_start(pid) {
        None => false,
        Some(started) => started <= mtime + Duration::from_secs(2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_is_free_once_its_owner_is_gone() {
        let d = tempfile::tempdir().unwrap();
        let lock = OwnerLock::create(d.path()).unwrap();
        let text = std::fs::read_to_string(d.path().join(OWNER_FILE)).unwrap();
        assert!(
            text.starts_with(&format!("pid {} started ", std::process::id())),
            "{text}"
        );
        let other = File::open(d.path().join(OWNER_FILE)).unwrap();
        assert!(!try_lock(&other).unwrap(), "held by its owner");
        drop(lock);
        // A child that another test thread is spawning shares the open file
        // (and so the lock) between its fork and its exec, which closes it:
        // the lock is free within moments, not necessarily at once.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !try_lock(&other).unwrap() {
            assert!(
                std::time::Instant::now() < deadline,
                "free once the owner is gone"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_reused_or_dead_pid_is_not_an_owner() {
        let now = SystemTime::now();
        let me = std::process::id();
        assert!(process_start(me).unwrap() <= now + Duration::from_secs(2));
        assert!(pid_owner_alive(me, now));
        // A file last written before this process started was not written by it.
        let before = process_start(me).unwrap() - Duration::from_secs(60);
        assert!(!pid_owner_alive(me, before));
        // A process that has exited.
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        assert!(!pid_owner_alive(pid, now));
    }
}

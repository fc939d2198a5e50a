//! Rootless builds: an ordinary user's Kiln becomes root of a user namespace
//! of its own, with the subordinate ids `/etc/subuid` and `/etc/subgid` give
//! the user, before it starts any work.
//!
//! [`enter`] forks. The child unshares a user and a mount namespace; the
//! parent maps the child's ids with the setuid helpers `newuidmap` and
//! `newgidmap` (package `uidmap`): uid 0 inside is the user, 1…N the
//! subordinate range. The child returns from [`enter`] as root of that
//! namespace and does the command's work; the parent forwards signals to it
//! and exits with its status.
//!
//! Inside, files are owned as the package data says (uid 0 on disk is the
//! user outside, uid 100 is the range's 100th id), so every artifact carries
//! the owners a root build gives it. The [sandbox](crate::sandbox) nests its
//! jail's namespace inside this one with the same ids.
//!
//! When the namespace cannot be made, [`enter`] says why (no subordinate
//! range for the user, no `newuidmap`, a sysctl that forbids it) and the
//! command goes on as the user; builds that need root then fail with that
//! reason in their hint ([`unavailable`]).

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use crate::sandbox::pipe;

/// How many subordinate ids a user needs: 0…65535 inside covers every id
/// Debian's packages use (65534 is `nobody`).
pub const NEEDED_IDS: u64 = 65535;

static UNAVAILABLE: OnceLock<String> = OnceLock::new();

/// Why this process could not become root of a user namespace, when
/// [`enter`] tried and failed.
pub fn unavailable() -> Option<&'static str> {
    UNAVAILABLE.get().map(String::as_str)
}

fn is_initial_map(map: &str) -> bool {
    map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"]
}

/// This process's uid map, when it is not the initial namespace's (a
/// rootless build, or Kiln inside a container).
fn own_map() -> Option<String> {
    let m = std::fs::read_to_string("/proc/self/uid_map").ok()?;
    (!is_initial_map(&m)).then_some(m)
}

/// The ids this namespace has, as an identity map for a namespace nested
/// in it (`INSIDE INSIDE COUNT` for each of its lines); `None` in the
/// initial namespace.
pub fn nested_identity_map() -> Option<String> {
    own_map().map(|m| identity_of(&m))
}

fn identity_of(map: &str) -> String {
    map.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3).then(|| format!("{} {} {}\n", f[0], f[0], f[2]))
        })
        .collect()
}

/// What a cache of installed trees must tell apart: a line `ids MAP` naming
/// the ids files are owned by on disk, empty in the initial namespace.
pub fn id_map_key() -> String {
    own_map()
        .map(|m| {
            format!(
                "ids {}\n",
                m.split_whitespace().collect::<Vec<_>>().join(" ")
            )
        })
        .unwrap_or_default()
}

/// One subordinate range: the first outside id and how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    pub count: u64,
}

/// The first range in a `/etc/subuid`-style `text` for `user` (by name or
/// by number) with at least [`NEEDED_IDS`] ids, or why there is none.
pub fn subordinate_range(text: &str, user: &str, uid: u32, file: &str) -> Result<Range, String> {
    let mut small = None;
    for line in text.lines() {
        let f: Vec<&str> = line.trim().split(':').collect();
        if f.len() != 3 || (f[0] != user && f[0] != uid.to_string()) {
            continue;
        }
        let (Ok(start), Ok(count)) = (f[1].parse::<u64>(), f[2].parse::<u64>()) else {
            continue;
        };
        if count >= NEEDED_IDS {
            return Ok(Range { start, count });
        }
        small.get_or_insert(count);
    }
    Err(match small {
        Some(n) => format!(
            "{file} gives {user} only {n} subordinate ids, and a build needs {NEEDED_IDS}: \
             give it a range of 65536 (as root: usermod --add-subuids 100000-165535 \
             --add-subgids 100000-165535 {user}, with a range no other user has)"
        ),
        None => format!(
            "{file} has no subordinate id range for {user}: add one (as root: usermod \
             --add-subuids 100000-165535 --add-subgids 100000-165535 {user}, with a range \
             no other user has)"
        ),
    })
}

/// What in the kernel's settings forbids an unprivileged user namespace,
/// from the values of the sysctls that can (`None` when unreadable).
pub fn sysctl_refusal(
    max_user_namespaces: Option<&str>,
    unprivileged_userns_clone: Option<&str>,
    apparmor_restrict: Option<&str>,
) -> Option<String> {
    let v = |s: Option<&str>| s.map(|s| s.trim().to_string());
    if v(max_user_namespaces).as_deref() == Some("0") {
        return Some(
            "user namespaces are disabled: user.max_user_namespaces is 0 \
             (as root: sysctl -w user.max_user_namespaces=10000)"
                .into(),
        );
    }
    if v(unprivileged_userns_clone).as_deref() == Some("0") {
        return Some(
            "unprivileged user namespaces are disabled: kernel.unprivileged_userns_clone is 0 \
             (as root: sysctl -w kernel.unprivileged_userns_clone=1)"
                .into(),
        );
    }
    if v(apparmor_restrict).as_deref() == Some("1") {
        return Some(
            "AppArmor restricts unprivileged user namespaces: \
             kernel.apparmor_restrict_unprivileged_userns is 1 (as root: sysctl -w \
             kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor profile for kiln \
             that allows userns)"
                .into(),
        );
    }
    None
}

fn sysctl(name: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(name.replace('.', "/"))).ok()
}

/// `name` on `PATH` (/usr/bin and /bin when it is unset).
fn helper(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 16384];
    // SAFETY: zeroed passwd is a valid out-parameter.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: valid buffers of the stated sizes; the strings pw points to
    // live in buf, read before it is dropped.
    unsafe {
        if libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out) != 0
            || out.is_null()
        {
            return None;
        }
        Some(
            std::ffi::CStr::from_ptr(pw.pw_name)
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// Everything [`enter`] needs, found before it forks.
struct Plan {
    uid: u32,
    gid: u32,
    subuid: Range,
    subgid: Range,
    newuidmap: PathBuf,
    newgidmap: PathBuf,
}

fn plan() -> Result<Plan, String> {
    // SAFETY: getuid and getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let user = user_name(uid).unwrap_or_else(|| uid.to_string());
    if let Some(why) = sysctl_refusal(
        sysctl("user.max_user_namespaces").as_deref(),
        sysctl("kernel.unprivileged_userns_clone").as_deref(),
        sysctl("kernel.apparmor_restrict_unprivileged_userns").as_deref(),
    ) {
        return Err(why);
    }
    let read = |f: &str| {
        std::fs::read_to_string(f).map_err(|e| {
            format!(
                "cannot read {f} ({e}): it lists each user's subordinate ids (as root: \
                 usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user})"
            )
        })
    };
    let subuid = subordinate_range(&read("/etc/subuid")?, &user, uid, "/etc/subuid")?;
    let subgid = subordinate_range(&read("/etc/subgid")?, &user, uid, "/etc/subgid")?;
    let missing = |n: &str| {
        format!(
            "{n} is not installed: it maps the subordinate ids (as root: apt-get install uidmap)"
        )
    };
    let newuidmap = helper("newuidmap").ok_or_else(|| missing("newuidmap"))?;
    let newgidmap = helper("newgidmap").ok_or_else(|| missing("newgidmap"))?;
    Ok(Plan {
        uid,
        gid,
        subuid,
        subgid,
        newuidmap,
        newgidmap,
    })
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Makes this process root of a user namespace of its own when it is not
/// root: see the module's description. Must be called while the process
/// has one thread (the kernel refuses a user namespace to a threaded
/// process). Returns in the namespace; the original process never returns
/// (it exits with the namespace's status). When the namespace cannot be
/// made, returns as the user and [`unavailable`] says why.
pub fn enter() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return;
    }
    if let Err(why) = try_enter() {
        let _ = UNAVAILABLE.set(why);
    }
}

fn try_enter() -> Result<(), String> {
    let p = plan()?;
    let (ready_r, ready_w) = pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let (go_r, go_w) = pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: this process has one thread (the caller's promise); the child
    // goes on with a copy of it.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("cannot fork: {}", io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(ready_r);
        drop(go_w);
        // SAFETY: raw system calls on descriptors this process holds.
        unsafe {
            // If the waiting parent is killed, so is the build.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let errno = if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) == 0 {
                0
            } else {
                *libc::__errno_location()
            };
            let b = errno.to_le_bytes();
            libc::write(ready_w.as_raw_fd(), b.as_ptr().cast(), 4);
            if errno != 0 {
                libc::_exit(125);
            }
            let mut go = [0u8; 1];
            if libc::read(go_r.as_raw_fd(), go.as_mut_ptr().cast(), 1) != 1 || go[0] != 1 {
                libc::_exit(125);
            }
            // Mapped: become root of the namespace with no other groups,
            // and keep mounts made here from the host's tree.
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(0, 0, 0) != 0
                || libc::setresuid(0, 0, 0) != 0
                || libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
            {
                let e = io::Error::last_os_error();
                eprintln!("kiln: cannot become root of the new user namespace: {e}");
                libc::_exit(71);
            }
            // The credentials changed, which clears the death signal.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(125);
            }
        }
        return Ok(());
    }
    drop(ready_w);
    drop(go_r);
    let fail = |why: String| {
        // SAFETY: reaping our own child (it exits when the go pipe closes).
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        Err(why)
    };
    let mut b = [0u8; 4];
    // SAFETY: four bytes into a valid buffer.
    let n = unsafe { libc::read(ready_r.as_raw_fd(), b.as_mut_ptr().cast(), 4) };
    let errno = i32::from_le_bytes(b);
    if n != 4 || errno != 0 {
        let e = io::Error::from_raw_os_error(errno);
        return fail(format!(
            "the kernel refused an unprivileged user namespace ({e}); check \
             user.max_user_namespaces, kernel.unprivileged_userns_clone, AppArmor or seccomp \
             (a container may forbid unshare)"
        ));
    }
    for (tool, id, r) in [
        (&p.newuidmap, p.uid, p.subuid),
        (&p.newgidmap, p.gid, p.subgid),
    ] {
        let count = r.count.min(NEEDED_IDS + 1);
        let out = std::process::Command::new(tool)
            .arg(pid.to_string())
            .args(["0", &id.to_string(), "1", "1", &r.start.to_string()])
            .arg(count.to_string())
            .stdin(std::process::Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return fail(format!(
                    "{} refused the mapping: {} (is it setuid root, and does the range in \
                     /etc/subuid and /etc/subgid belong to this user?)",
                    tool.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
            Err(e) => return fail(format!("cannot run {}: {e}", tool.display())),
        }
    }
    CHILD.store(pid, Ordering::SeqCst);
    // SAFETY: installing an async-signal-safe handler.
    unsafe {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::signal(sig, forward as *const () as libc::sighandler_t);
        }
        libc::write(go_w.as_raw_fd(), [1u8].as_ptr().cast(), 1);
    }
    drop(go_w);
    let mut st = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r == pid {
            break;
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            std::process::exit(125);
        }
    }
    if libc::WIFEXITED(st) {
        std::process::exit(libc::WEXITSTATUS(st));
    }
    // Killed by a signal: die of the same one.
    let sig = libc::WTERMSIG(st);
    // SAFETY: resetting a handler and signalling ourselves.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
    std::process::exit(128 + sig);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_is_found_by_name_or_number_and_a_short_one_is_named() {
        let t = "alice:100000:65536\n1001:200000:65536\nbob:300000:1000\n";
        assert_eq!(
            subordinate_range(t, "alice", 1000, "/etc/subuid").unwrap(),
            Range {
                start: 100000,
                count: 65536
            }
        );
        assert_eq!(
            subordinate_range(t, "carol", 1001, "/etc/subuid")
                .unwrap()
                .start,
            200000
        );
        let e = subordinate_range(t, "bob", 1002, "/etc/subuid").unwrap_err();
        assert!(e.contains("only 1000") && e.contains("usermod"), "{e}");
        let e = subordinate_range(t, "dave", 1003, "/etc/subgid").unwrap_err();
        assert!(
            e.contains("/etc/subgid has no subordinate id range for dave"),
            "{e}"
        );
    }

    #[test]
    fn malformed_lines_are_skipped_not_trusted() {
        let t = "alice\nalice:x:65536\nalice:100000\nalice:1:2:3\n\
                 alice:1:99999999999999999999999\n:::\n alice:500000:65536 \n";
        assert_eq!(
            subordinate_range(t, "alice", 1000, "/etc/subuid").unwrap(),
            Range {
                start: 500000,
                count: 65536
            }
        );
        assert!(subordinate_range("\0\0\0", "alice", 1000, "/etc/subuid").is_err());
    }

    #[test]
    fn each_sysctl_that_forbids_user_namespaces_is_named() {
        assert_eq!(sysctl_refusal(Some("96367\n"), None, None), None);
        assert_eq!(sysctl_refusal(Some("10"), Some("1"), Some("0")), None);
        let e = sysctl_refusal(Some("0\n"), Some("1"), None).unwrap();
        assert!(e.contains("user.max_user_namespaces"), "{e}");
        let e = sysctl_refusal(Some("10"), Some("0\n"), None).unwrap();
        assert!(e.contains("kernel.unprivileged_userns_clone=1"), "{e}");
        let e = sysctl_refusal(None, None, Some("1")).unwrap();
        assert!(e.contains("apparmor_restrict_unprivileged_userns"), "{e}");
    }

    #[test]
    fn a_nested_namespace_gets_the_same_ids() {
        assert!(is_initial_map("         0          0 4294967295\n"));
        let m = "         0       1001          1\n         1     100000      65535\n";
        assert!(!is_initial_map(m));
        assert_eq!(identity_of(m), "0 0 1\n1 1 65535\n");
    }
}

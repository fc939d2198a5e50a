//! Running commands inside the root being built: maintainer scripts, dpkg,
//! `[customize] commands`, the image's own tools.
//!
//! The command runs in a jail built from Linux namespaces, never a bare
//! chroot:
//!
//! - a **user namespace**: root inside is an unprivileged uid range outside
//!   ([`UID_BASE`]…+65535). The build root is attached through an *idmapped
//!   mount*, so what dpkg writes as uid 0 inside lands as uid 0 on disk, while
//!   the processes themselves hold no capability over anything on the host.
//!   Where the kernel cannot idmap the build area's filesystem (tmpfs needs
//!   Linux 6.3), root inside maps to root outside, still without any
//!   capability in the host's namespaces;
//! - a **mount namespace** whose only tree is the build root: it is
//!   `pivot_root`ed into and the host's tree detached, so a chroot escape
//!   (perl's double chroot, `..` past the root) lands at the build root;
//! - a **PID namespace** (the command is its init; when it ends, or Kiln
//!   dies, every process in it is killed), and IPC, UTS (hostname
//!   `localhost`) and cgroup namespaces;
//! - a **network namespace** with only loopback, unless the caller asks for
//!   the host's network ([`Options::network`]);
//! - a private `/dev` (tmpfs): `null`, `zero`, `full`, `random`, `urandom`
//!   and `tty` bound from the host, a new `devpts` instance, a private
//!   64 MiB `/dev/shm`; `/proc` of its own PID namespace, `/sys` read-only;
//! - `no_new_privs`, and a capability bounding set of what dpkg and
//!   maintainer scripts use (file ownership and modes, setuid/setgid, kill,
//!   chroot, setcap), nothing else; every inherited descriptor but
//!   stdin/stdout/stderr closed.
//!
//! Nothing is mounted in the host's namespace, so nothing is left mounted
//! when a build is interrupted.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use kiln_model::Cancel;

use crate::inroot::Root;

/// First host uid (and gid) of the range root inside the sandbox maps to.
pub const UID_BASE: u32 = 0x6B00_0000;
/// How many ids the sandbox maps (0…65535 inside).
pub const UID_COUNT: u32 = 65536;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot run {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the build sandbox for {what}: {step} failed: {source}")]
    Setup {
        what: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("building a root filesystem needs root privileges, or a user namespace of its own (chroot, ownership of files)")]
    NotRoot,
    #[error("cancelled")]
    Cancelled,
    #[error("cannot run {what} in the image: it has no /usr/bin/env (coreutils), through which every command inside it is started")]
    NoEnv { what: String },
}

/// How a command is jailed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Share the host's network instead of a namespace with only loopback.
    pub network: bool,
    /// Give the command this process's stdin, stdout and stderr (a shell on
    /// the terminal, `kiln shell`) instead of no input and the log.
    pub interactive: bool,
}

/// The environment maintainer scripts see: clean, non-interactive, reproducible.
pub fn script_env(epoch: i64) -> Vec<(String, String)> {
    vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("LC_ALL".into(), "C.UTF-8".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("HOME".into(), "/root".into()),
        ("TERM".into(), "dumb".into()),
        ("DEBIAN_FRONTEND".into(), "noninteractive".into()),
        ("DEBCONF_NONINTERACTIVE_SEEN".into(), "true".into()),
        ("SOURCE_DATE_EPOCH".into(), epoch.to_string()),
        ("KILN_BUILD".into(), "1".into()),
    ]
}

pub fn is_root() -> bool {
    // Effective uid 0; read from /proc to avoid a libc dependency.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A command to run in the root: `argv` with `env`, output appended to `log`,
/// jailed with the default [`Options`] (no network).
pub fn run_in_root(
    root: &Path,
    argv: &[&str],
    env: &[(String, String)],
    log: &Path,
    cancel: &Cancel,
) -> Result<std::process::ExitStatus, SandboxError> {
    run_in_root_with(root, argv, env, log, cancel, Options::default())
}

/// [`run_in_root`] with explicit [`Options`]. The sandbox process is
/// registered with `cancel`: cancelling the build kills it, which ends its
/// PID namespace and every process in it; so does Kiln's own death.
pub fn run_in_root_with(
    root: &Path,
    argv: &[&str],
    env: &[(String, String)],
    log: &Path,
    cancel: &Cancel,
    opts: Options,
) -> Result<std::process::ExitStatus, SandboxError> {
    if cancel.is_cancelled() {
        return Err(SandboxError::Cancelled);
    }
    if !is_root() {
        return Err(SandboxError::NotRoot);
    }
    let what = argv.join(" ");
    let setup = |step: &'static str| {
        let what = what.clone();
        move |source: io::Error| SandboxError::Setup { what, step, source }
    };
    let r = Root::open(root).map_err(setup("opening the build root"))?;
    // Looked at inside the root: a link here is fine, its absence is not.
    if r.metadata("usr/bin/env").is_err() {
        return Err(SandboxError::NoEnv { what });
    }
    // The mount points, real directories of the root (a package may have
    // shipped a link there; nothing runs in the root now, so this holds).
    for dir in ["proc", "dev", "sys"] {
        mount_point(&r, dir).map_err(setup("preparing the mount points"))?;
    }
    let jail = std::sync::Arc::new(Jail::prepare(root, opts).map_err(|(step, e)| setup(step)(e))?);

    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| SandboxError::Spawn {
            what: format!("log {}", log.display()),
            source: e,
        })?;
    let mut cmd = Command::new("/usr/bin/env");
    cmd.env_clear().arg("-i");
    for (k, v) in env {
        cmd.arg(format!("{k}={v}"));
    }
    cmd.args(argv);
    if opts.interactive {
        cmd.stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
    } else {
        cmd.stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| SandboxError::Spawn {
                what: "log".into(),
                source: e,
            })?)
            .stderr(log_file);
    }
    let (report_r, report_w) = pipe().map_err(setup("creating a pipe"))?;
    let (child_side, report) = (jail.clone(), report_w.as_raw_fd());
    // SAFETY: the closure only makes raw system calls on data prepared
    // above (no allocation, no locks), as a forked child must.
    unsafe {
        cmd.pre_exec(move || child_side.child(report).enter());
    }
    let spawned = cmd.spawn();
    drop(report_w);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let step = read_step(&report_r);
            return Err(match step {
                Some(step) => SandboxError::Setup {
                    what,
                    step,
                    source: e,
                },
                None => SandboxError::Spawn {
                    what: format!("{what} in the sandbox"),
                    source: e,
                },
            });
        }
    };
    cancel.child_started(child.id());
    let status = child.wait();
    cancel.child_finished(child.id());
    drop(jail);
    if cancel.is_cancelled() {
        return Err(SandboxError::Cancelled);
    }
    status.map_err(|e| SandboxError::Spawn { what, source: e })
}

/// `path` as a real directory: a link, file or anything else there is
/// removed (never followed) and a directory made.
fn mount_point(r: &Root, name: &str) -> io::Result<()> {
    match r.metadata(name) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => r.remove_file(name)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    r.create_dir_all(name, 0o755)?;
    r.set_mode(name, 0o755)
}

/// A pipe, both ends close-on-exec: (read, write).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two new descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn read_step(r: &OwnedFd) -> Option<&'static str> {
    let mut b = [0u8; 1];
    // SAFETY: reading one byte into a valid buffer.
    let n = unsafe { libc::read(r.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
    (n == 1)
        .then(|| Step::ALL.get(b[0] as usize).map(|s| s.what()))
        .flatten()
}

/// The child's setup steps; the one that fails is reported to the parent
/// as one byte (its discriminant) through a pipe.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Step {
    UserNs,
    BecomeRoot,
    Namespaces,
    Init,
    Private,
    Attach,
    Proc,
    Dev,
    DevNodes,
    DevPts,
    DevShm,
    Pivot,
    Detach,
    Hostname,
    Loopback,
    Caps,
    NoNewPrivs,
    Fds,
}

impl Step {
    const ALL: [Step; 18] = [
        Step::UserNs,
        Step::BecomeRoot,
        Step::Namespaces,
        Step::Init,
        Step::Private,
        Step::Attach,
        Step::Proc,
        Step::Dev,
        Step::DevNodes,
        Step::DevPts,
        Step::DevShm,
        Step::Pivot,
        Step::Detach,
        Step::Hostname,
        Step::Loopback,
        Step::Caps,
        Step::NoNewPrivs,
        Step::Fds,
    ];

    fn what(self) -> &'static str {
        match self {
            Step::UserNs => "entering the user namespace",
            Step::BecomeRoot => "becoming root in the user namespace",
            Step::Namespaces => "creating the namespaces",
            Step::Init => "starting the sandbox's init",
            Step::Private => "making the mounts private",
            Step::Attach => "attaching the build root",
            Step::Proc => "mounting /proc",
            Step::Dev => "mounting /dev",
            Step::DevNodes => "setting up /dev",
            Step::DevPts => "mounting /dev/pts",
            Step::DevShm => "mounting /dev/shm",
            Step::Pivot => "pivot_root into the build root",
            Step::Detach => "detaching the host's tree",
            Step::Hostname => "setting the hostname",
            Step::Loopback => "bringing up loopback",
            Step::Caps => "dropping capabilities",
            Step::NoNewPrivs => "setting no_new_privs",
            Step::Fds => "closing inherited descriptors",
        }
    }
}

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 4;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// What the parent prepares before forking: the user namespace and the
/// build root as a detached (idmapped) mount.
struct Jail {
    /// Keeps the user namespace alive.
    userns: OwnedFd,
    /// The build root, a detached mount attached by the child.
    tree: OwnedFd,
    root: CString,
    opts: Options,
    paths: Paths,
    /// Kiln's pid, taken before the fork.
    parent: libc::pid_t,
}

/// Every path the child needs, made before the fork.
struct Paths {
    proc_: CString,
    sys: CString,
    dev: CString,
    devpts: CString,
    devshm: CString,
    nodes: Vec<(CString, CString)>,
    links: Vec<(CString, CString)>,
}

fn c(p: impl AsRef<std::ffi::OsStr>) -> CString {
    CString::new(p.as_ref().as_bytes()).expect("paths have no NUL")
}

impl Jail {
    fn prepare(root: &Path, opts: Options) -> Result<Jail, (&'static str, io::Error)> {
        let rootc = c(root);
        let tree = if let Some(same) = crate::userns::nested_identity_map() {
            // Kiln is itself in a user namespace (a rootless build): the
            // jail's has the same ids, and the build root is not idmapped
            // (the kernel allows that only to the host's root).
            let userns = new_userns(&same).map_err(|e| ("creating the user namespace", e))?;
            let t = detached_tree(&rootc, None).map_err(|e| ("cloning the build root", e))?;
            (userns, t)
        } else {
            Self::mapped(&rootc)?
        };
        let dev = root.join("dev");
        let nodes = ["null", "zero", "full", "random", "urandom", "tty"]
            .iter()
            .map(|n| (c(Path::new("/dev").join(n)), c(dev.join(n))))
            .collect();
        let links = [
            ("pts/ptmx", "ptmx"),
            ("/proc/self/fd", "fd"),
            ("/proc/self/fd/0", "stdin"),
            ("/proc/self/fd/1", "stdout"),
            ("/proc/self/fd/2", "stderr"),
        ]
        .iter()
        .map(|(to, name)| (c(to), c(dev.join(name))))
        .collect();
        Ok(Jail {
            userns: tree.0,
            tree: tree.1,
            root: rootc,
            opts,
            parent: std::process::id() as libc::pid_t,
            paths: Paths {
                proc_: c(root.join("proc")),
                sys: c(root.join("sys")),
                devpts: c(dev.join("pts")),
                devshm: c(dev.join("shm")),
                dev: c(dev),
                nodes,
                links,
            },
        })
    }

    /// The host's root: the jail's root is [`UID_BASE`] outside, and the
    /// build root is idmapped so that its files stay owned as on disk.
    fn mapped(rootc: &CString) -> Result<(OwnedFd, OwnedFd), (&'static str, io::Error)> {
        let mapped = format!("0 {UID_BASE} {UID_COUNT}\n");
        let userns = new_userns(&mapped).map_err(|e| ("creating the user namespace", e))?;
        Ok(match detached_tree(rootc, Some(&userns)) {
            Ok(t) => (userns, t),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                // The filesystem cannot be idmapped: root inside is root
                // outside, still without capabilities on the host.
                let identity = new_userns("0 0 4294967295\n")
                    .map_err(|e| ("creating the user namespace", e))?;
                let t = detached_tree(rootc, None).map_err(|e| ("cloning the build root", e))?;
                (identity, t)
            }
            Err(e) => return Err(("idmapping the build root", e)),
        })
    }

    fn child(&self, report: RawFd) -> Child<'_> {
        Child {
            jail: self,
            report,
            parent: self.parent,
        }
    }
}

/// A user namespace with the given uid/gid map, as a descriptor.
fn new_userns(map: &str) -> io::Result<OwnedFd> {
    let (ready_r, ready_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    // SAFETY: the child makes raw system calls only, then _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: raw system calls in the forked child.
        unsafe {
            let ok: u8 = (libc::unshare(libc::CLONE_NEWUSER) == 0) as u8;
            libc::write(ready_w.as_raw_fd(), (&ok as *const u8).cast(), 1);
            let mut b = 0u8;
            libc::read(go_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    drop(ready_w);
    drop(go_r);
    let result = (|| {
        let mut ok = [0u8; 1];
        // SAFETY: one byte into a valid buffer.
        let n = unsafe { libc::read(ready_r.as_raw_fd(), ok.as_mut_ptr().cast(), 1) };
        if n != 1 || ok[0] != 1 {
            return Err(io::Error::other(
                "the kernel refused a new user namespace (is user.max_user_namespaces 0?)",
            ));
        }
        std::fs::write(format!("/proc/{pid}/uid_map"), map)?;
        std::fs::write(format!("/proc/{pid}/gid_map"), map)?;
        let f = std::fs::File::open(format!("/proc/{pid}/ns/user"))?;
        Ok(OwnedFd::from(f))
    })();
    // A byte, not EOF: a child forked meanwhile by another thread may hold
    // a copy of this pipe's write end.
    // SAFETY: one byte from a valid buffer.
    unsafe { libc::write(go_w.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    drop(go_w);
    let mut st = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    result
}

/// The build root as a detached mount (`open_tree` clone), idmapped through
/// `userns` when given, devices disabled either way.
fn detached_tree(root: &CString, userns: Option<&OwnedFd>) -> io::Result<OwnedFd> {
    // SAFETY: valid C string; the call returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            root.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_SYMLINK_NOFOLLOW as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_NODEV
            | if userns.is_some() {
                MOUNT_ATTR_IDMAP
            } else {
                0
            },
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map(|u| u.as_raw_fd() as u64).unwrap_or(0),
    };
    let empty = c("");
    // SAFETY: valid descriptor, C string and attribute struct of the stated size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
}

/// Capabilities left in the bounding set: what dpkg and maintainer scripts
/// need to own, chmod and setcap files, change users, signal their own
/// daemons and chroot.
const KEEP_CAPS: &[libc::c_int] = &[
    0,  // CAP_CHOWN
    1,  // CAP_DAC_OVERRIDE
    2,  // CAP_DAC_READ_SEARCH
    3,  // CAP_FOWNER
    4,  // CAP_FSETID
    5,  // CAP_KILL
    6,  // CAP_SETGID
    7,  // CAP_SETUID
    10, // CAP_NET_BIND_SERVICE
    18, // CAP_SYS_CHROOT
    29, // CAP_AUDIT_WRITE
    31, // CAP_SETFCAP
];

/// The forked child's half: everything between `fork` and `exec`.
struct Child<'a> {
    jail: &'a Jail,
    report: RawFd,
    /// Kiln's pid, the parent the sandbox must die with.
    parent: libc::pid_t,
}

impl Child<'_> {
    /// Fails with the step's index written to the report pipe.
    fn fail(&self, step: Step) -> io::Error {
        let e = io::Error::last_os_error();
        let b = step as u8;
        // SAFETY: one byte from a valid buffer to a descriptor we hold.
        unsafe { libc::write(self.report, (&b as *const u8).cast(), 1) };
        e
    }

    fn check(&self, r: libc::c_long, step: Step) -> io::Result<()> {
        if r < 0 {
            Err(self.fail(step))
        } else {
            Ok(())
        }
    }

    /// `mount(2)`; `None` is a null pointer.
    unsafe fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
        step: Step,
    ) -> io::Result<()> {
        let ptr = |c: Option<&CStr>| c.map_or(std::ptr::null(), |c| c.as_ptr());
        let r = libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        );
        self.check(r as _, step)
    }

    fn enter(&self) -> io::Result<()> {
        let j = self.jail;
        // SAFETY (whole function): raw system calls on descriptors and C
        // strings the parent prepared; no allocation.
        unsafe {
            self.check(
                libc::setns(j.userns.as_raw_fd(), libc::CLONE_NEWUSER) as _,
                Step::UserNs,
            )?;
            self.check(libc::setgroups(0, std::ptr::null()) as _, Step::BecomeRoot)?;
            self.check(libc::setresgid(0, 0, 0) as _, Step::BecomeRoot)?;
            self.check(libc::setresuid(0, 0, 0) as _, Step::BecomeRoot)?;
            // After the credentials change, which clears it; if Kiln died
            // before this, the parent is no longer Kiln.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != self.parent {
                libc::_exit(125);
            }
            let mut flags = libc::CLONE_NEWNS
                | libc::CLONE_NEWPID
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWCGROUP;
            if !j.opts.network {
                flags |= libc::CLONE_NEWNET;
            }
            self.check(libc::unshare(flags) as _, Step::Namespaces)?;
            // The first child is the new PID namespace's init; this process
            // waits for it and passes its status on.
            let pid = libc::fork();
            self.check(pid as _, Step::Init)?;
            if pid > 0 {
                // Only the init's copy of the exec-status pipe may stay
                // open, so that the parent learns when it has exec'd.
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                let mut st = 0;
                while libc::waitpid(pid, &mut st, 0) < 0 {
                    if *libc::__errno_location() != libc::EINTR {
                        libc::_exit(125);
                    }
                }
                if libc::WIFEXITED(st) {
                    libc::_exit(libc::WEXITSTATUS(st));
                }
                libc::_exit(128 + libc::WTERMSIG(st));
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            self.mounts()?;
            self.finish()
        }
    }

    unsafe fn mounts(&self) -> io::Result<()> {
        let j = self.jail;
        let p = &j.paths;
        let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        self.mount(
            None,
            c"/",
            None,
            libc::MS_REC | libc::MS_PRIVATE,
            None,
            Step::Private,
        )?;
        self.check(
            libc::syscall(
                libc::SYS_move_mount,
                j.tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                j.root.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            ),
            Step::Attach,
        )?;
        self.mount(
            Some(c"proc"),
            &p.proc_,
            Some(c"proc"),
            nosuid,
            None,
            Step::Proc,
        )?;
        // /sys read-only; without a network namespace of its own the kernel
        // refuses it, and nothing in a build needs it: a failure is ignored
        // (and not reported as a failed step).
        libc::mount(
            c"sysfs".as_ptr(),
            p.sys.as_ptr(),
            c"sysfs".as_ptr(),
            nosuid | libc::MS_RDONLY,
            std::ptr::null(),
        );
        self.mount(
            Some(c"tmpfs"),
            &p.dev,
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some(c"mode=0755,size=1m,nr_inodes=64"),
            Step::Dev,
        )?;
        for (host, inside) in &p.nodes {
            let fd = libc::open(
                inside.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                0o644,
            );
            self.check(fd as _, Step::DevNodes)?;
            libc::close(fd);
            self.mount(
                Some(host),
                inside,
                None,
                libc::MS_BIND,
                None,
                Step::DevNodes,
            )?;
        }
        for (to, name) in &p.links {
            self.check(
                libc::symlink(to.as_ptr(), name.as_ptr()) as _,
                Step::DevNodes,
            )?;
        }
        self.check(libc::mkdir(p.devpts.as_ptr(), 0o755) as _, Step::DevPts)?;
        self.mount(
            Some(c"devpts"),
            &p.devpts,
            Some(c"devpts"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some(c"newinstance,ptmxmode=0666,mode=0620,gid=5"),
            Step::DevPts,
        )?;
        self.check(libc::mkdir(p.devshm.as_ptr(), 0o1777) as _, Step::DevShm)?;
        self.mount(
            Some(c"shm"),
            &p.devshm,
            Some(c"tmpfs"),
            nosuid,
            Some(c"mode=1777,size=64m"),
            Step::DevShm,
        )?;
        // Into the root; the host's tree, stacked on top by pivot_root(".", "."),
        // is detached.
        self.check(libc::chdir(j.root.as_ptr()) as _, Step::Pivot)?;
        self.check(
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()),
            Step::Pivot,
        )?;
        self.check(
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH) as _,
            Step::Detach,
        )?;
        self.check(libc::chdir(c"/".as_ptr()) as _, Step::Detach)?;
        Ok(())
    }

    unsafe fn finish(&self) -> io::Result<()> {
        let host = b"localhost";
        self.check(
            libc::sethostname(host.as_ptr().cast(), host.len()) as _,
            Step::Hostname,
        )?;
        if !self.jail.opts.network {
            loopback_up().map_err(|_| self.fail(Step::Loopback))?;
        }
        for cap in 0..=63 {
            if !KEEP_CAPS.contains(&cap) {
                // Capabilities past the kernel's last are EINVAL: done.
                if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong) != 0 {
                    if *libc::__errno_location() == libc::EINVAL {
                        break;
                    }
                    return Err(self.fail(Step::Caps));
                }
            }
        }
        self.check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as _,
            Step::NoNewPrivs,
        )?;
        self.check(
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC),
            Step::Fds,
        )?;
        Ok(())
    }
}

/// Brings `lo` up in the new network namespace.
unsafe fn loopback_up() -> io::Result<()> {
    let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut req: libc::ifreq = std::mem::zeroed();
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    let mut r = libc::ioctl(s, libc::SIOCGIFFLAGS, &mut req);
    if r == 0 {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        r = libc::ioctl(s, libc::SIOCSIFFLAGS, &req);
    }
    let e = io::Error::last_os_error();
    libc::close(s);
    if r == 0 {
        Ok(())
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_without_env_is_named_not_blamed_on_a_script() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log");
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        let e = run_in_root(
            &root,
            &["dpkg", "--configure", "-a"],
            &[],
            &log,
            &Cancel::new(),
        )
        .unwrap_err();
        if is_root() {
            assert!(matches!(e, SandboxError::NoEnv { .. }), "{e}");
            assert!(e.to_string().contains("/usr/bin/env"), "{e}");
        } else {
            assert!(matches!(e, SandboxError::NotRoot), "{e}");
        }
    }
}

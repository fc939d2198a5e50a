//! The maintainer-script sandbox as an attacker sees it: a root holding the
//! host's own shell, coreutils and perl (no packages needed), and scripts that
//! try what a hostile postinst would. CI runs these as root, where the
//! sandbox is built; without root every run must refuse with `NotRoot`.

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_model::Cancel;
use kiln_rootfs::sandbox::{is_root, run_in_root, run_in_root_with, Options, SandboxError};

const TOOLS: &[&str] = &[
    "sh", "env", "id", "cat", "ls", "touch", "sleep", "perl", "grep", "mknod", "echo",
];

struct Jail {
    _dir: tempfile::TempDir,
    root: PathBuf,
    log: PathBuf,
    victims: PathBuf,
}

fn jail() -> Jail {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    kiln_testkit::host_tools_root(&root, TOOLS);
    for d in ["tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let victims = dir.path().join("victims");
    std::fs::create_dir(&victims).unwrap();
    std::fs::write(victims.join("secret"), b"host secret\n").unwrap();
    Jail {
        log: dir.path().join("log"),
        root,
        victims,
        _dir: dir,
    }
}

impl Jail {
    /// Runs `script` with /bin/sh in the root; its output and exit status.
    fn sh(&self, script: &str, opts: Options) -> Result<(bool, String), SandboxError> {
        let _ = std::fs::remove_file(&self.log);
        let status = run_in_root_with(
            &self.root,
            &["/bin/sh", "-c", script],
            &kiln_rootfs::sandbox::script_env(0),
            &self.log,
            &Cancel::new(),
            opts,
        )?;
        Ok((
            status.success(),
            std::fs::read_to_string(&self.log).unwrap_or_default(),
        ))
    }

    fn run(&self, script: &str) -> String {
        match self.sh(script, Options::default()) {
            Ok((_, out)) => out,
            Err(e) => panic!("the sandbox did not start: {e}"),
        }
    }
}

/// A jail where the sandbox can be built (as root). Without root, nothing
/// runs: the sandbox must refuse rather than run unjailed, and the test ends.
fn rooted_jail() -> Option<Jail> {
    let j = jail();
    if is_root() {
        return Some(j);
    }
    let e = j.sh("true", Options::default()).unwrap_err();
    assert!(matches!(e, SandboxError::NotRoot), "{e}");
    None
}

fn host_secret_unchanged(j: &Jail) {
    let p = j.victims.join("secret");
    assert_eq!(std::fs::read(&p).unwrap(), b"host secret\n");
    assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o644);
}

#[test]
fn root_inside_is_an_unprivileged_uid_outside_yet_files_land_as_root() {
    let Some(j) = rooted_jail() else {
        return;
    };
    let out = j.run("id -u; cat /proc/self/uid_map; touch /made; grep -E '^(CapBnd|NoNewPrivs)' /proc/self/status");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("0"), "{out}");
    let map: Vec<u64> = lines
        .next()
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(
        map,
        vec![0, kiln_rootfs::sandbox::UID_BASE as u64, 65536],
        "root inside must map to the unprivileged range outside:\n{out}"
    );
    // Written as root inside, stored as root on disk (the idmapped mount).
    let made = std::fs::metadata(j.root.join("made")).unwrap();
    assert_eq!((made.uid(), made.gid()), (0, 0));
    let bnd = out
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
        .unwrap();
    // No CAP_SYS_ADMIN (21), CAP_NET_ADMIN (12), CAP_SYS_PTRACE (19),
    // CAP_MKNOD (27), CAP_SYS_MODULE (16); CAP_CHOWN (0) kept for dpkg.
    for cap in [21, 12, 19, 27, 16] {
        assert_eq!(bnd & (1 << cap), 0, "capability {cap} kept: {bnd:x}");
    }
    assert_ne!(bnd & 1, 0, "dpkg needs CAP_CHOWN: {bnd:x}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
}

#[test]
fn a_chroot_escape_lands_in_the_build_root() {
    let Some(j) = rooted_jail() else {
        return;
    };
    let secret = j.victims.join("secret");
    // perl's double chroot: chroot into a subdirectory, climb past it with
    // `..`, chroot to where that leads, then use host paths.
    let script = format!(
        r#"perl -e 'mkdir "/x"; chroot "/x" or die "chroot: $!"; chdir ".." for 1..64; chroot "." or die; if (open(my $f, "<", "{s}")) {{ print "ESCAPED: ", <$f>; }} else {{ print "contained: $!\n"; }} open(my $w, ">", "{s}") and print $w "owned\n";'"#,
        s = secret.display()
    );
    let out = j.run(&script);
    assert!(!out.contains("ESCAPED"), "{out}");
    assert!(out.contains("contained"), "{out}");
    host_secret_unchanged(&j);
}

#[test]
fn no_host_network_and_a_private_dev_shm() {
    let Some(j) = rooted_jail() else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let marker = format!("kiln-sandbox-test-{}", std::process::id());
    let host_shm = Path::new("/dev/shm").join(&marker);
    std::fs::write(&host_shm, b"other build\n").unwrap();
    let script = format!(
        r#"perl -e 'socket(S, 2, 1, 6) or die; if (connect(S, pack("S n C4 x8", 2, {port}, 127, 0, 0, 1))) {{ print "CONNECTED\n" }} else {{ print "no route: $!\n" }}'
ls -A /dev/shm; echo end-of-shm
echo planted > /dev/shm/{marker}-inside
ls /dev"#
    );
    let out = j.run(&script);
    let _ = std::fs::remove_file(&host_shm);
    assert!(!out.contains("CONNECTED"), "{out}");
    assert!(
        listener.accept().is_err(),
        "a script reached a loopback server on the host"
    );
    let shm_listing = out.split("end-of-shm").next().unwrap();
    assert!(
        !shm_listing.contains(&marker),
        "the host's /dev/shm is visible:\n{out}"
    );
    assert!(!Path::new("/dev/shm")
        .join(format!("{marker}-inside"))
        .exists());
    for node in ["null", "zero", "urandom", "pts", "shm"] {
        assert!(out.lines().any(|l| l == node), "no /dev/{node}:\n{out}");
    }
    assert!(
        !out.lines()
            .any(|l| l.starts_with("sd") || l.starts_with("vd")),
        "host block devices are visible:\n{out}"
    );
}

#[test]
fn device_nodes_cannot_be_made_and_proc_is_the_sandboxs_own() {
    let Some(j) = rooted_jail() else {
        return;
    };
    let out = j.run("mknod /tmp/disk b 8 0 && echo MADE; ls /proc | grep -c '^[0-9]'; cat /proc/1/cmdline | grep -c sh; echo $$");
    assert!(!out.contains("MADE"), "{out}");
    assert!(!j.root.join("tmp/disk").exists());
    let lines: Vec<&str> = out.lines().filter(|l| !l.contains("mknod")).collect();
    let procs: u32 = lines[0].parse().unwrap();
    assert!(
        procs < 10,
        "the host's processes are visible: {procs}\n{out}"
    );
    // The script's shell is the PID namespace's init.
    assert_eq!(lines.last(), Some(&"1"), "{out}");
}

#[test]
fn planted_links_at_the_mount_points_are_replaced_not_followed() {
    let Some(j) = rooted_jail() else {
        return;
    };
    std::os::unix::fs::symlink(&j.victims, j.root.join("dev")).unwrap();
    std::os::unix::fs::symlink(&j.victims, j.root.join("proc")).unwrap();
    let out = j.run("ls /dev/null /proc/self >/dev/null && echo ok");
    assert!(out.contains("ok"), "{out}");
    assert!(std::fs::symlink_metadata(j.root.join("dev"))
        .unwrap()
        .is_dir());
    let left: Vec<_> = std::fs::read_dir(&j.victims).unwrap().flatten().collect();
    assert_eq!(left.len(), 1, "the victim directory was written to");
    host_secret_unchanged(&j);
}

#[test]
fn descriptors_kiln_holds_do_not_leak_in() {
    let Some(j) = rooted_jail() else {
        return;
    };
    let secret = std::ffi::CString::new(j.victims.join("secret").to_str().unwrap()).unwrap();
    // SAFETY: a plain open without O_CLOEXEC, closed below.
    let fd = unsafe { libc::open(secret.as_ptr(), libc::O_RDWR) };
    assert!(fd > 2);
    let out = j.run(&format!(
        "if [ -e /proc/self/fd/{fd} ]; then echo LEAKED; cat /proc/self/fd/{fd}; fi; echo done"
    ));
    // SAFETY: the descriptor opened above.
    unsafe { libc::close(fd) };
    assert!(!out.contains("LEAKED"), "{out}");
    assert!(out.contains("done"), "{out}");
}

#[test]
fn the_network_is_the_hosts_only_when_asked() {
    let Some(j) = rooted_jail() else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut b = Vec::new();
        s.read_to_end(&mut b).unwrap();
        b
    });
    let script = format!(
        r#"perl -e 'socket(S, 2, 1, 6) or die; connect(S, pack("S n C4 x8", 2, {port}, 127, 0, 0, 1)) or die "connect: $!"; print S "hello\n"; close S; print "sent\n"'"#
    );
    let (ok, out) = j
        .sh(
            &script,
            Options {
                network: true,
                ..Options::default()
            },
        )
        .unwrap();
    assert!(ok && out.contains("sent"), "{out}");
    assert_eq!(t.join().unwrap(), b"hello\n");
}

/// The "kiln" half of the next test: run a long sleep in the sandbox and
/// wait; the test kills this process.
#[test]
fn sandbox_child_process() {
    let Ok(root) = std::env::var("KILN_SANDBOX_TEST_ROOT") else {
        return;
    };
    let root = PathBuf::from(root);
    let secs = std::env::var("KILN_SANDBOX_TEST_SLEEP").unwrap();
    let _ = run_in_root(
        &root,
        &["sleep", &secs],
        &[],
        &root.join("../log"),
        &Cancel::new(),
    );
}

/// Processes running `sleep SECS`.
fn sleepers(secs: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|a| a == secs.as_bytes()))
                .unwrap_or(false)
        })
        .count()
}

#[test]
fn the_sandbox_dies_with_kiln() {
    let Some(j) = rooted_jail() else {
        return;
    };
    // Unique to this run, so no other sleep is mistaken for ours.
    let secs = format!("1000.{}", std::process::id());
    let mut kiln = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "sandbox_child_process", "--nocapture"])
        .env("KILN_SANDBOX_TEST_ROOT", &j.root)
        .env("KILN_SANDBOX_TEST_SLEEP", &secs)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while sleepers(&secs) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the sandboxed sleep never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    kiln.kill().unwrap(); // SIGKILL: no cleanup code runs
    kiln.wait().unwrap();
    let start = Instant::now();
    while sleepers(&secs) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the sandbox outlived kiln"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

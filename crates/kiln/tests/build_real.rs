//! Real-archive tier for `kiln build`: trixie root filesystems built from the
//! real archive (through the host's apt sources) with the target's own dpkg,
//! checked the way a user would check them, compared with mmdebstrap, and
//! broken in the ways a build can break.
//!
//! Needs root, the network and mmdebstrap; KILN_SKIP_NETWORK_TESTS=1 skips.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use kiln_testkit::{Pkg, ReleaseOpts, Repo};

fn minbase(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("minbase.toml");
    std::fs::write(
        &p,
        format!(
            "[image]\nname = \"minbase\"\nsuite = \"trixie\"\narchitectures = [\"amd64\"]\n\n\
             [packages]\npriority = \"required\"\ninclude = [\"apt\"]\n{extra}"
        ),
    )
    .unwrap();
    p
}

fn extract(tar: &Path) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let st = Command::new("tar")
        .args(["--numeric-owner", "-xpf"])
        .arg(tar)
        .arg("-C")
        .arg(d.path())
        .status()
        .unwrap();
    assert!(st.success());
    d
}

/// Runs a shell command inside an unpacked image (private mounts, host DNS).
fn in_image(root: &Path, script: &str) -> Output {
    let setup = r#"set -e; r="$1"; shift
mount -t proc proc "$r/proc"; mount --rbind /dev "$r/dev"
cp /etc/resolv.conf "$r/etc/resolv.conf"
exec chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive /bin/sh -c "$1""#;
    Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--fork",
            "sh",
            "-c",
            setup,
            "sh",
        ])
        .arg(root)
        .arg(script)
        .output()
        .unwrap()
}

#[track_caller]
fn assert_healthy(root: &Path) {
    let o = in_image(root, "dpkg --audit && dpkg -C && dpkg-query -W -f '${db:Status-Abbrev} ${Package}\\n' && apt-get check -q");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "checks failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("ii ") || l.len() > 3 && &l[2..3] == " ")
        .collect();
    assert!(!lines.is_empty());
    for l in out
        .lines()
        .filter(|l| l.contains(' ') && !l.starts_with("Reading") && !l.starts_with("Building"))
    {
        assert!(
            l.starts_with("ii "),
            "package not fully installed: {l}\n{out}"
        );
    }
}

/// `kiln build RECIPE --output OUT --check-reproducible`, which must pass.
fn build_twice(recipe: &Path, out: &Path) {
    let o = kiln(
        &[
            "build",
            recipe.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--check-reproducible",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("Reproducible"), "{}", stderr(&o));
}

#[test]
fn minbase_is_a_working_reproducible_system() {
    if skip() {
        return;
    }
    let _g = serial();
    let work = tempfile::tempdir().unwrap();
    let recipe = minbase(work.path(), "");
    let out = work.path().join("out");
    build_twice(&recipe, &out);
    assert!(!out.join("rootfs.rebuild.tar").exists());
    let manifest = json_file(&out.join("manifest.json"));
    let tar = std::fs::read(out.join("rootfs.tar")).unwrap();
    assert_eq!(
        manifest["outputs"][0]["sha256"].as_str().unwrap(),
        kiln_testkit::sha256_hex(&tar)
    );
    assert_eq!(
        manifest["packages"].as_array().unwrap().len(),
        78.min(manifest["packages"].as_array().unwrap().len())
    );
    let root = extract(&out.join("rootfs.tar"));
    assert_healthy(root.path());
    // `kiln shell` runs in the image, on a copy: the command's exit status
    // is kiln's, what it changes is gone, the tarball is untouched.
    let tmp = work.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let o = kiln(
        &[
            "shell",
            out.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "cat /etc/debian_version && dpkg-query -W -f '${Package}\\n' apt && touch /made-here && exit 7",
        ],
        &[("TMPDIR", tmp.to_str().unwrap())],
    );
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    let version = std::fs::read_to_string(root.path().join("etc/debian_version")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("{version}apt\n")
    );
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "scratch left");
    assert_eq!(std::fs::read(out.join("rootfs.tar")).unwrap(), tar);
    // Hygiene.
    assert!(!root.path().join("var/log/dpkg.log").exists());
    assert!(!root.path().join("var/cache/ldconfig/aux-cache").exists());
    assert_eq!(
        std::fs::read_dir(root.path().join("var/lib/apt/lists"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_file())
            .count(),
        0
    );
    assert!(!root.path().join("usr/sbin/policy-rc.d").exists());
    // apt works inside the image, against the same archive.
    let o = in_image(
        root.path(),
        "apt-get update -q && apt-get install -y -q hello && hello",
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && stdout.contains("Hello, world!"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Paths allowed to differ from mmdebstrap's tarball, and why (docs/rootfs.md).
const EXPECTED_ONLY_MMDEBSTRAP: &[&str] = &[
    "etc/apt/sources.list", // Kiln writes deb822 sources.list.d/debian.sources
    "etc/hostname",         // mmdebstrap copies the build host's
    "etc/resolv.conf",      // mmdebstrap copies the build host's
    "var/cache/apt/archives/lock", // apt runtime lock; Kiln does not run apt
    "var/lib/apt/lists/lock", // apt runtime lock
    "var/cache/debconf/config.dat-old", // backups of the build's last step
    "var/cache/debconf/templates.dat-old",
    "var/lib/dpkg/diversions-old",
    "var/lib/dpkg/status-old",
];
const EXPECTED_ONLY_KILN: &[&str] = &["etc/apt/sources.list.d/debian.sources"];
const EXPECTED_CONTENT: &[&str] = &["var/lib/apt/extended_states"]; // same packages, apt's order vs sorted

#[derive(Debug, PartialEq)]
struct Meta {
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    link: Option<String>,
    sha: Option<String>,
}

fn tree(tar: &Path) -> std::collections::BTreeMap<String, Meta> {
    use std::io::Read;
    let f = std::fs::File::open(tar).unwrap();
    let mut ar = tar::Archive::new(f);
    let mut out = std::collections::BTreeMap::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let h = e.header().clone();
        let mut sha = None;
        if h.entry_type().is_file() {
            let mut b = Vec::new();
            e.read_to_end(&mut b).unwrap();
            sha = Some(kiln_testkit::sha256_hex(&b));
        }
        out.insert(
            if p.is_empty() { ".".into() } else { p },
            Meta {
                kind: h.entry_type().as_byte(),
                mode: h.mode().unwrap() & 0o7777,
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                link: h
                    .link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().trim_start_matches("./").to_string()),
                sha,
            },
        );
    }
    out
}

#[test]
fn minbase_matches_mmdebstrap() {
    if skip() {
        return;
    }
    let _g = serial();
    let work = tempfile::tempdir().unwrap();
    let recipe = minbase(work.path(), "");
    let out = work.path().join("out");
    let o = kiln(
        &[
            "build",
            recipe.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let manifest = json_file(&out.join("manifest.json"));
    let epoch = manifest["source-date-epoch"].as_i64().unwrap().to_string();
    let mm_tar = work.path().join("mm.tar");
    let mm = Command::new("mmdebstrap")
        .args(["--quiet", "--variant=minbase", "--include=apt", "trixie"])
        .arg(&mm_tar)
        .env("SOURCE_DATE_EPOCH", &epoch)
        .output()
        .expect("mmdebstrap is installed");
    assert!(
        mm.status.success(),
        "{}",
        String::from_utf8_lossy(&mm.stderr)
    );
    let ours = tree(&out.join("rootfs.tar"));
    let theirs = tree(&mm_tar);
    // Same package versions first, or the comparison means nothing.
    let versions = |root: &Path| {
        let o = Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                root.join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f", "${Package} ${Version}\\n"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let (a, b) = (extract(&out.join("rootfs.tar")), extract(&mm_tar));
    assert_eq!(
        versions(a.path()),
        versions(b.path()),
        "package versions differ"
    );
    let only_mm: Vec<&String> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    let only_kiln: Vec<&String> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    let differ: Vec<(&String, &Meta, &Meta)> = ours
        .iter()
        .filter_map(|(k, m)| theirs.get(k).filter(|t| *t != m).map(|t| (k, m, t)))
        .collect();
    let unexpected_mm: Vec<_> = only_mm
        .iter()
        .filter(|k| !EXPECTED_ONLY_MMDEBSTRAP.contains(&k.as_str()))
        .collect();
    let unexpected_kiln: Vec<_> = only_kiln
        .iter()
        .filter(|k| !EXPECTED_ONLY_KILN.contains(&k.as_str()))
        .collect();
    let unexpected_diff: Vec<_> = differ
        .iter()
        .filter(|(k, _, _)| !EXPECTED_CONTENT.contains(&k.as_str()))
        .collect();
    eprintln!(
        "{} entries compared; only in mmdebstrap: {only_mm:?}; only in kiln: {only_kiln:?}; differing: {:?}",
        ours.len(),
        differ.iter().map(|d| d.0).collect::<Vec<_>>()
    );
    assert!(
        unexpected_mm.is_empty() && unexpected_kiln.is_empty() && unexpected_diff.is_empty(),
        "unexpected differences:\nonly mmdebstrap: {unexpected_mm:?}\nonly kiln: {unexpected_kiln:?}\ndiffering: {unexpected_diff:#?}"
    );
}

#[test]
fn server_set_builds_and_checks_clean() {
    if skip() {
        return;
    }
    let _g = serial();
    let work = tempfile::tempdir().unwrap();
    let recipe = work.path().join("web.toml");
    std::fs::write(
        &recipe,
        "[image]\nname = \"web\"\nsuite = \"trixie\"\narchitectures = [\"amd64\"]\n[packages]\ninclude = [\"apt\", \"nginx\", \"python3\"]\n\
         [customize]\nhostname = \"web1\"\ntimezone = \"Etc/UTC\"\ncommands = [\"echo built-by-kiln > /etc/motd\"]\n\
         [[customize.file]]\npath = \"/srv/www/index.html\"\ncontent = \"<h1>hi</h1>\\n\"\nmode = \"0640\"\nuid = 33\ngid = 33\n\
         [[customize.user]]\nname = \"deploy\"\nuid = 1500\n",
    )
    .unwrap();
    let out = work.path().join("out");
    let o = kiln(
        &[
            "build",
            recipe.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let root = extract(&out.join("rootfs.tar"));
    assert_healthy(root.path());
    let r = root.path();
    assert!(r.join("usr/sbin/nginx").exists());
    let o = in_image(r, "python3 -c 'print(6*7)' && nginx -t 2>&1 && id deploy");
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && s.contains("42") && s.contains("uid=1500(deploy)"),
        "{s}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(r.join("etc/hostname")).unwrap(),
        "web1\n"
    );
    assert_eq!(
        std::fs::read_to_string(r.join("etc/motd")).unwrap(),
        "built-by-kiln\n"
    );
    assert_eq!(
        std::fs::read_link(r.join("etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/Etc/UTC")
    );
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(r.join("srv/www/index.html")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o640, 33, 33));
    assert!(
        std::fs::read_dir(r.join("etc/ssh"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
            || !r.join("etc/ssh/ssh_host_rsa_key").exists()
    );
}

#[test]
fn failing_maintainer_script_names_the_package_and_writes_nothing() {
    if skip() {
        return;
    }
    let _g = serial();
    let opts = ReleaseOpts::default();
    let repo = Repo::build(
        &[Pkg::new("kiln-broken", "1.0").script(
            "postinst",
            "#!/bin/sh\necho 'kiln-broken: cannot configure the frobnicator' >&2\nexit 3\n",
        )],
        "amd64",
        &opts,
    );
    let work = tempfile::tempdir().unwrap();
    let recipe = work.path().join("broken.toml");
    std::fs::write(
        &recipe,
        format!(
            "[image]\nname = \"broken\"\nsuite = \"trixie\"\narchitectures = [\"amd64\"]\n[packages]\ninclude = [\"kiln-broken\"]\n\
             [[source]]\nuri = \"{}\"\nsuites = [\"kiln-test\"]\nsigned-by = \"{}\"\n",
            repo.uri(),
            repo.key.keyring.display()
        ),
    )
    .unwrap();
    let out = work.path().join("out");
    let tmp = tempfile::tempdir().unwrap();
    let o = kiln(
        &[
            "build",
            recipe.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
        &[("KILN_TMPDIR", tmp.path().to_str().unwrap())],
    );
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("the postinst maintainer script of kiln-broken failed"),
        "{err}"
    );
    assert!(err.contains("cannot configure the frobnicator"), "{err}");
    assert!(!out.join("rootfs.tar").exists() && !out.join("manifest.json").exists());
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "the build area is removed"
    );
}

#[test]
fn corrupt_cached_deb_is_detected_and_fetched_again() {
    if skip() {
        return;
    }
    let _g = serial();
    let work = tempfile::tempdir().unwrap();
    let recipe = minbase(work.path(), "");
    assert!(kiln(&["fetch", recipe.to_str().unwrap()], &[])
        .status
        .success());
    let lock: toml::Table =
        toml::from_str(&std::fs::read_to_string(kiln_recipe::lock_path_for(&recipe)).unwrap())
            .unwrap();
    let apt = lock["package"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some("apt"))
        .unwrap();
    let sha = apt["sha256"].as_str().unwrap();
    let cached = cache().join("debs").join(&sha[..2]).join(sha);
    std::fs::write(&cached, b"!<arch>\ngarbage").unwrap();
    let out = work.path().join("out");
    let o = kiln(
        &[
            "build",
            recipe.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("was corrupt; downloaded it again"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        kiln_testkit::sha256_hex(&std::fs::read(&cached).unwrap()),
        sha
    );
}

#[test]
fn full_disk_fails_cleanly() {
    if skip() {
        return;
    }
    let _g = serial();
    let work = tempfile::tempdir().unwrap();
    let small = tempfile::tempdir().unwrap();
    let st = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=40m",
            "kiln-test",
            small.path().to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success(), "mounting a small tmpfs needs root");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(small.path().to_path_buf());
    let recipe = minbase(work.path(), "");
    let out = work.path().join("out");
    let o = kiln(
        &[
            "build",
            recipe.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
        &[("KILN_TMPDIR", small.path().to_str().unwrap())],
    );
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("hint: the disk is full"), "{err}");
    assert!(!out.join("rootfs.tar").exists());
    assert_eq!(
        std::fs::read_dir(small.path()).unwrap().count(),
        0,
        "the build area is removed"
    );
}

#[test]
fn interrupted_build_leaves_nothing_and_the_next_run_succeeds() {
    if skip() {
        return;
    }
    let _g = serial();
    let work = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let recipe = minbase(work.path(), "");
    let out = work.path().join("out");
    let mut child = kiln_command(
        &cache(),
        &[
            "build",
            recipe.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
        &[("KILN_TMPDIR", tmp.path().to_str().unwrap())],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for l in lines.by_ref() {
        if l.unwrap().contains("with dpkg") {
            break;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "the build area is removed"
    );
    assert!(!out.join("rootfs.tar").exists());
    let o = kiln(
        &[
            "build",
            recipe.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
        &[("KILN_TMPDIR", tmp.path().to_str().unwrap())],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("rootfs.tar").exists());
}

#[test]
fn unwritable_output_directory_fails_before_building() {
    let work = tempfile::tempdir().unwrap();
    let recipe = minbase(work.path(), "");
    let blocker = work.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let o = kiln(
        &[
            "build",
            recipe.to_str().unwrap(),
            "--output",
            blocker.join("out").to_str().unwrap(),
            "--offline",
        ],
        &[],
    );
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("cannot write to the output directory"),
        "{err}"
    );
    assert!(
        err.contains("hint: choose another directory with --output DIR"),
        "{err}"
    );
}

/// Images that share an Essential set share its installed tree: the second
/// image takes it from the cache, and is byte for byte the image a build
/// without the cache makes.
#[test]
fn a_cached_essential_tree_gives_the_bytes_of_a_clean_build() {
    if skip() {
        return;
    }
    let _g = serial();
    let work = tempfile::tempdir().unwrap();
    let build = |name: &str, include: &str, envs: &[(&str, &str)]| {
        let dir = work.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        let recipe = minbase(&dir, "");
        let text = std::fs::read_to_string(&recipe)
            .unwrap()
            .replace("include = [\"apt\"]", include);
        std::fs::write(&recipe, text).unwrap();
        let out = dir.join("out");
        let started = std::time::Instant::now();
        let o = kiln(
            &[
                "build",
                recipe.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
            ],
            envs,
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let tar = std::fs::read(out.join("rootfs.tar")).unwrap();
        (
            stderr(&o),
            kiln_testkit::sha256_hex(&tar),
            started.elapsed(),
        )
    };
    // The first image leaves its Essential tree in the cache (unless an
    // earlier build did); another image with the same Essential set and
    // more packages takes it from there.
    let (_, _, first) = build("a", "include = [\"apt\"]", &[]);
    let more = "include = [\"apt\", \"less\"]";
    let (log, cached, t_cached) = build("b", more, &[]);
    assert!(log.contains("their installed tree from the cache"), "{log}");
    let (log, clean, t_clean) = build("c", more, &[("KILN_ESSENTIAL_CACHE", "off")]);
    assert!(!log.contains("from the cache"), "{log}");
    assert_eq!(cached, clean, "the cached Essential tree changed the image");
    eprintln!(
        "minbase: first {:.1}s; minbase + less from the cached Essential tree {:.1}s, clean {:.1}s",
        first.as_secs_f64(),
        t_cached.as_secs_f64(),
        t_clean.as_secs_f64()
    );
}

/// An ordinary user with a subordinate id range builds minbase in a user
/// namespace: the same bytes as root's build of the same lock, files
/// owned as the packages say, outputs the user's. Without a range or
/// without newuidmap the build stops before any work and says what to fix
/// (the sysctls that forbid user namespaces cannot be written on the test
/// machines; `kiln_rootfs::userns`'s unit tests name each).
#[test]
fn an_ordinary_user_builds_the_bytes_root_builds() {
    fn argv(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    if skip() {
        return;
    }
    let _g = serial();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let uid = ordinary_user("kiln-rootless", 60201, Some(400_000));
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = work.path().join("user");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(uid), None).unwrap();
    let recipe = minbase(&home, "");
    std::os::unix::fs::chown(&recipe, Some(uid), None).unwrap();
    let args = |out: &str| {
        vec![
            "build".to_string(),
            recipe.to_str().unwrap().to_string(),
            "--output".to_string(),
            home.join(out).to_str().unwrap().to_string(),
        ]
    };
    let user_args = args("out");
    let o = kiln_as("kiln-rootless", &home, &argv(&user_args), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = home.join("out");
    for f in ["rootfs.tar", "manifest.json", "sbom.spdx.json"] {
        let m = std::fs::metadata(out.join(f)).unwrap();
        assert_eq!(m.uid(), uid, "{f} is not the user's");
    }
    // Root builds the lock the user wrote, from its own cache.
    let root_dir = work.path().join("root");
    std::fs::create_dir(&root_dir).unwrap();
    for f in ["minbase.toml", "minbase.lock"] {
        std::fs::copy(home.join(f), root_dir.join(f)).unwrap();
    }
    let root_out = root_dir.join("out");
    let o = kiln(
        &[
            "build",
            root_dir.join("minbase.toml").to_str().unwrap(),
            "--locked",
            "--output",
            root_out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let user_tar = std::fs::read(out.join("rootfs.tar")).unwrap();
    assert!(
        user_tar == std::fs::read(root_out.join("rootfs.tar")).unwrap(),
        "the rootless rootfs.tar differs from root's"
    );
    // Owners come from the packages, not from the user: apt's sandbox
    // user owns its partial directory, root the rest.
    let t = tree(&out.join("rootfs.tar"));
    let apt = &t["var/cache/apt/archives/partial"];
    assert_eq!((apt.uid, apt.mode), (42, 0o700), "{apt:?}");
    let chage = &t["usr/bin/chage"];
    assert_eq!(
        (chage.uid, chage.gid, chage.mode),
        (0, 42, 0o2755),
        "{chage:?}"
    );
    assert!(
        t.values().all(|m| m.uid != u64::from(uid) && m.uid < 65536),
        "an owner from outside the namespace"
    );

    // A user with no range: the reason and the fix, before any download.
    let other = work.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let nuid = ordinary_user("kiln-nosubids", 60202, None);
    std::os::unix::fs::chown(&other, Some(nuid), None).unwrap();
    std::fs::copy(&recipe, other.join("minbase.toml")).unwrap();
    let r = other.join("minbase.toml");
    let o = kiln_as(
        "kiln-nosubids",
        &other,
        &["build", r.to_str().unwrap(), "--output", "out"],
        &[],
    );
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("/etc/subuid has no subordinate id range for kiln-nosubids")
            && err.contains("usermod --add-subuids"),
        "{err}"
    );
    assert!(!err.contains("Fetched"), "{err}");
    assert!(!other.join("out").exists());
    // No newuidmap on PATH.
    let o = kiln_as(
        "kiln-rootless",
        &home,
        &argv(&args("out2")),
        &[("PATH", "/nonexistent")],
    );
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("newuidmap is not installed") && err.contains("apt-get install uidmap"),
        "{err}"
    );
    assert!(!home.join("out2").exists());
}

/// A full arm64 minbase on this amd64 host: dpkg and the maintainer scripts
/// run under qemu-user through binfmt_misc, the result is a working arm64
/// system, in a tarball and an OCI image, and two builds give the same bytes.
#[test]
fn a_full_arm64_image_builds_under_emulation_to_the_same_bytes() {
    if skip() {
        return;
    }
    let _g = serial();
    let work = tempfile::tempdir().unwrap();
    let recipe = minbase(work.path(), "\n[output]\nformats = [\"tar\", \"oci\"]\n");
    let text = std::fs::read_to_string(&recipe)
        .unwrap()
        .replace("architectures = [\"amd64\"]", "architectures = [\"arm64\"]");
    std::fs::write(&recipe, text).unwrap();
    let out = work.path().join("out");
    build_twice(&recipe, &out);
    let manifest = json_file(&out.join("manifest.json"));
    assert_eq!(manifest["architectures"], serde_json::json!(["arm64"]));
    assert!(manifest["packages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["architecture"] == "arm64" || p["architecture"] == "all"));
    let root = extract(&out.join("rootfs.tar"));
    // An arm64 executable (ELF machine 183), run here through the emulator.
    let dpkg = std::fs::read(root.path().join("usr/bin/dpkg")).unwrap();
    assert_eq!(&dpkg[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([dpkg[18], dpkg[19]]), 183);
    assert_healthy(root.path());
    let o = in_image(root.path(), "dpkg --print-architecture");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "arm64");
    // The OCI image says arm64 and holds the same tree.
    let index = json_file(&out.join("oci/index.json"));
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = |d: &str| {
        out.join("oci/blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&digest)).unwrap()).unwrap();
    let m = if m["manifests"].is_array() {
        let d = m["manifests"][0]["digest"].as_str().unwrap().to_string();
        serde_json::from_slice(&std::fs::read(blob(&d)).unwrap()).unwrap()
    } else {
        m
    };
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(m["config"]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    assert_eq!(config["architecture"], "arm64", "{config}");
}

//! Crash hygiene: what a killed Kiln left (build areas, cache temporary
//! files, half-written outputs) is removed by the next build when, and only
//! when, its owner is gone (a lock nobody holds, a pid that is dead or was
//! reused), never following a link out of it; what a live Kiln holds is
//! left alone. No network, no root needed.

use std::fs::File;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kiln_build::reclaim::{reclaim, Reclaimed};
use kiln_build::{BuildRequest, SourceOptions};
use kiln_model::owner::{process_start, OwnerLock};
use kiln_model::{Cancel, Collect, Event, Stage};
use kiln_testkit::{Pkg, ReleaseOpts, Repo};

const SECRET: &str = "VICTIM-SECRET-4b2e";

/// Sets the modification time of `p` (file or directory) to `ago` in the past.
fn age(p: &Path, ago: Duration) {
    File::open(p)
        .unwrap()
        .set_modified(SystemTime::now() - ago)
        .unwrap();
}

/// A pid no process has any more.
fn dead_pid() -> u32 {
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

/// Every path below `dir` with its mode and bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
        let bytes = if m.is_file() {
            std::fs::read(&p).unwrap()
        } else {
            Vec::new()
        };
        out.push((p, m.permissions().mode(), bytes));
    }
    out.sort();
    out
}

/// A build area as a build makes it: owner file, a root with a package's
/// tree, links out of it to the victim (absolute and relative), a
/// read-only directory with a file in it.
fn area(base: &Path, name: &str, victim: &Path) -> (PathBuf, OwnerLock) {
    let dir = base.join(name);
    std::fs::create_dir(&dir).unwrap();
    let lock = OwnerLock::create(&dir).unwrap();
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("usr/lib/ro")).unwrap();
    std::fs::write(root.join("usr/lib/ro/f"), vec![7u8; 4096]).unwrap();
    std::fs::set_permissions(root.join("usr/lib/ro"), PermissionsExt::from_mode(0o555)).unwrap();
    symlink(victim.join("passwd"), root.join("etc/passwd")).unwrap();
    symlink(victim, root.join("host")).unwrap();
    symlink("../../../../../../../..", root.join("up")).unwrap();
    std::fs::write(dir.join("build.log"), b"log\n").unwrap();
    (dir, lock)
}

#[test]
fn stale_leftovers_go_and_live_ones_stay_and_no_link_is_followed() {
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let victim = s.join("victim");
    std::fs::create_dir_all(victim.join("dir")).unwrap();
    std::fs::write(victim.join("passwd"), format!("{SECRET}\n")).unwrap();
    std::fs::write(victim.join("dir/keep"), format!("{SECRET} dir\n")).unwrap();
    let before = snapshot(&victim);
    let base = s.join("shm");
    let cache = s.join("cache");
    let out = s.join("out");
    for d in [&base, &cache.join("debs/ab"), &cache.join("indexes"), &out] {
        std::fs::create_dir_all(d).unwrap();
    }

    // Build areas: one whose owner died (its lock dropped), one held.
    let (dead, lock) = area(&base, "kiln-build-dead", &victim);
    drop(lock);
    let (live, _held) = area(&base, "kiln-build-live", &victim);
    // Made by a Kiln before owner files: stale after a day, not before.
    std::fs::create_dir_all(base.join("kiln-build-legacy-old/root")).unwrap();
    age(
        &base.join("kiln-build-legacy-old"),
        Duration::from_secs(2 * 86400),
    );
    std::fs::create_dir_all(base.join("kiln-build-legacy-new/root")).unwrap();
    // Not Kiln's, or not a directory: never touched.
    std::fs::create_dir_all(base.join("other-tool-dir")).unwrap();
    symlink(victim.join("dir"), base.join("kiln-build-link")).unwrap();

    // Cache temporary files: a dead download's, a live one's (locked), a
    // fresh unlocked one (its owner may be about to lock it), an entry.
    let debs = cache.join("debs/ab");
    for n in [".tmp-dead", ".tmp-live", ".tmp-fresh", "ab12cd"] {
        std::fs::write(debs.join(n), vec![1u8; 1000]).unwrap();
    }
    std::fs::write(cache.join("indexes/.tmp-dead2"), b"x").unwrap();
    for n in [".tmp-dead", ".tmp-live", "ab12cd"] {
        age(&debs.join(n), Duration::from_secs(3600));
    }
    age(&cache.join("indexes/.tmp-dead2"), Duration::from_secs(3600));
    let live_tmp = File::open(debs.join(".tmp-live")).unwrap();
    assert!(kiln_model::owner::try_lock(&live_tmp).unwrap());

    // Outputs: a dead pid's partial file and OCI staging directory (with a
    // link to the victim in it), this process's (live) partial, and one
    // named with this pid but written before this process started (the pid
    // was reused).
    let gone = dead_pid();
    let me = std::process::id();
    std::fs::write(
        out.join(format!(".rootfs.tar.partial-{gone}")),
        vec![0u8; 5000],
    )
    .unwrap();
    let oci = out.join(format!(".oci.partial-{gone}"));
    std::fs::create_dir_all(oci.join("blobs")).unwrap();
    symlink(victim.join("passwd"), oci.join("blobs/link")).unwrap();
    std::fs::write(out.join(format!(".manifest.json.partial-{me}")), b"{}").unwrap();
    let reused = out.join(format!(".disk.raw.partial-{me}"));
    std::fs::write(&reused, b"old").unwrap();
    let started = process_start(me).unwrap();
    File::open(&reused)
        .unwrap()
        .set_modified(started - Duration::from_secs(60))
        .unwrap();
    std::fs::write(out.join("rootfs.tar"), b"a finished output").unwrap();

    let report = reclaim(std::slice::from_ref(&base), &cache, &out);
    assert!(report.failed.is_empty(), "{:?}", report.failed);

    let mut got: Vec<PathBuf> = report.reclaimed.iter().map(|r| r.path.clone()).collect();
    got.sort();
    let mut want = vec![
        dead.clone(),
        base.join("kiln-build-legacy-old"),
        debs.join(".tmp-dead"),
        cache.join("indexes/.tmp-dead2"),
        out.join(format!(".rootfs.tar.partial-{gone}")),
        oci.clone(),
        reused.clone(),
    ];
    want.sort();
    assert_eq!(got, want);
    for p in &want {
        assert!(
            std::fs::symlink_metadata(p).is_err(),
            "{} is still there",
            p.display()
        );
    }
    // The bytes freed are counted (links count nothing).
    let dead_bytes = report
        .reclaimed
        .iter()
        .find(|r| r.path == dead)
        .map(|r: &Reclaimed| r.bytes)
        .unwrap();
    assert!(dead_bytes >= 4096, "{dead_bytes}");
    assert!(report.bytes() >= dead_bytes + 1000 + 5000);

    // What is alive, fresh or not Kiln's is untouched.
    for p in [
        live.join(".kiln-owner"),
        live.join("root/usr/lib/ro/f"),
        live.join("build.log"),
        base.join("kiln-build-legacy-new/root"),
        base.join("other-tool-dir"),
        base.join("kiln-build-link"),
        debs.join(".tmp-live"),
        debs.join(".tmp-fresh"),
        debs.join("ab12cd"),
        out.join(format!(".manifest.json.partial-{me}")),
        out.join("rootfs.tar"),
    ] {
        assert!(
            std::fs::symlink_metadata(&p).is_ok(),
            "{} was removed",
            p.display()
        );
    }
    // Nothing the links pointed at changed.
    assert_eq!(before, snapshot(&victim), "the victim changed");

    // Once the live owner is gone too, its area goes.
    drop(_held);
    let again = reclaim(std::slice::from_ref(&base), &cache, &out);
    assert!(again.reclaimed.iter().any(|r| r.path == live));
    assert!(!live.exists());
    assert_eq!(before, snapshot(&victim), "the victim changed");
}

#[test]
fn a_build_reclaims_what_a_dead_build_left_and_says_so() {
    let repo = Repo::build(
        &[Pkg::new("base-files", "13")
            .field("Essential", "yes")
            .file("etc/debian_version", b"13\n")],
        "amd64",
        &ReleaseOpts::default(),
    );
    let work = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    std::fs::create_dir_all(cache.path().join("debs/00")).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let stale_tmp = cache.path().join("debs/00/.tmp-abc123");
    std::fs::write(&stale_tmp, vec![0u8; 2048]).unwrap();
    age(&stale_tmp, Duration::from_secs(3600));
    let stale_out = out.join(format!(".rootfs.tar.partial-{}", dead_pid()));
    std::fs::write(&stale_out, vec![0u8; 4096]).unwrap();
    let recipe = work.path().join("r.toml");
    std::fs::write(
        &recipe,
        format!(
            "[image]\nname = \"r\"\nsuite = \"kiln-test\"\narchitectures = [\"amd64\"]\ndefault-sources = false\n\n\
             [packages]\ninclude = [\"base-files\"]\n\n[container]\ndistroless = true\n\n\
             [output]\nformats = [\"tar\"]\n\n\
             [[source]]\nuri = \"{}\"\nsuites = [\"kiln-test\"]\nsigned-by = \"{}\"\n",
            repo.uri(),
            repo.key.keyring.display()
        ),
    )
    .unwrap();
    let req = BuildRequest {
        recipe,
        output: Some(out.clone()),
        source_date_epoch: Some(1_700_000_000),
        sources: SourceOptions {
            cache_dir: Some(cache.path().to_path_buf()),
            ..Default::default()
        },
        ..Default::default()
    };
    let events = Collect::default();
    kiln_build::build(&req, &events, &Cancel::new()).expect("the build succeeds");
    assert!(!stale_tmp.exists());
    assert!(!stale_out.exists());
    assert!(out.join("rootfs.tar").exists());
    let lines: Vec<String> = events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Step {
                stage: Stage::Reclaim,
                message,
            } => Some(message.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("left by Kiln processes that are gone"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains(&stale_tmp.display().to_string()),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains(&stale_out.display().to_string()),
        "{}",
        lines[0]
    );
}

//! The pipeline called as a library (no binary, no root, no network): two
//! builds in one process at the same time, one of them cancelled; outputs in
//! any order give the same bytes; verify from anywhere; a build whose
//! outputs need packages the lock lacks fails before fetching anything.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use kiln_build::{BuildRequest, SourceOptions};
use kiln_model::event::Stage;
use kiln_model::{Cancel, Cancelled, Collect, Event, Manifest, NullReporter, Reporter};
use kiln_testkit::{Pkg, ReleaseOpts, Repo};

fn packages() -> Vec<Pkg> {
    let mut pkgs = vec![
        Pkg::new("base-files", "13")
            .field("Essential", "yes")
            .field("Priority", "required")
            .file("etc/debian_version", b"13\n")
            .file("usr/share/doc/base-files/copyright", b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nLicense: GPL-2+\n"),
        Pkg::new("app", "2.0")
            .arch("amd64")
            .depends("libfoo1 (>= 1.0)")
            .file("usr/bin/app", b"#!/bin/false\n"),
        Pkg::new("libfoo1", "1.2-1")
            .arch("amd64")
            .file("usr/lib/x86_64-linux-gnu/libfoo.so.1", &[0u8; 4096]),
        Pkg::new("linux-image-test", "6.1-1").arch("amd64"),
    ];
    // Enough payload that a build takes a moment.
    for i in 0..20 {
        let mut p = Pkg::new(&format!("data{i}"), "1").arch("amd64");
        for j in 0..50 {
            p = p.file(
                &format!("usr/share/data{i}/f{j}"),
                format!("{i}-{j}\n").repeat(200).as_bytes(),
            );
        }
        pkgs.push(p);
    }
    pkgs
}

struct Fixture {
    repo: Repo,
    work: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            repo: Repo::build(&packages(), "amd64", &ReleaseOpts::default()),
            work: tempfile::tempdir().unwrap(),
            cache: tempfile::tempdir().unwrap(),
        }
    }

    /// A distroless recipe NAME.toml with `formats` and `include`.
    fn recipe(&self, name: &str, formats: &str, include: &str) -> PathBuf {
        let path = self.work.path().join(format!("{name}.toml"));
        let data: Vec<String> = (0..20).map(|i| format!("\"data{i}\"")).collect();
        std::fs::write(
            &path,
            format!(
                "[image]\nname = \"{name}\"\nsuite = \"kiln-test\"\narchitectures = [\"amd64\"]\ndefault-sources = false\n\n\
                 [packages]\ninclude = [\"app\", {}{include}]\n\n[container]\ndistroless = true\n\n\
                 [output]\nformats = [{formats}]\n\n\
                 [[source]]\nuri = \"{}\"\nsuites = [\"kiln-test\"]\nsigned-by = \"{}\"\n",
                data.join(", "),
                self.repo.uri(),
                self.repo.key.keyring.display()
            ),
        )
        .unwrap();
        path
    }

    fn request(&self, recipe: &Path, out: &str) -> BuildRequest {
        BuildRequest {
            recipe: recipe.to_path_buf(),
            output: Some(self.work.path().join(out)),
            source_date_epoch: Some(1_700_000_000),
            sources: SourceOptions {
                offline: false,
                ..self.sources()
            },
            ..Default::default()
        }
    }

    /// This fixture's cache, offline: what `verify` proves a lock with.
    fn sources(&self) -> SourceOptions {
        SourceOptions {
            cache_dir: Some(self.cache.path().to_path_buf()),
            offline: true,
            ..Default::default()
        }
    }
}

fn digest(m: &Manifest, path: &str) -> String {
    m.outputs
        .iter()
        .find(|a| a.path == path)
        .unwrap_or_else(|| panic!("no {path} in {:?}", m.outputs))
        .sha256
        .clone()
}

/// Cancels its build when that build starts unpacking, once the other build
/// has started too (so the two really overlap).
struct CancelAtUnpack {
    cancel: Cancel,
    both_running: Arc<Barrier>,
}

impl Reporter for CancelAtUnpack {
    fn report(&self, event: Event) {
        if let Event::Step {
            stage: Stage::Unpack,
            ..
        } = event
        {
            self.both_running.wait();
            self.cancel.cancel();
        }
    }
}

struct WaitAtUnpack {
    both_running: Arc<Barrier>,
}

impl Reporter for WaitAtUnpack {
    fn report(&self, event: Event) {
        if let Event::Step {
            stage: Stage::Unpack,
            ..
        } = event
        {
            self.both_running.wait();
        }
    }
}

#[test]
fn two_builds_in_one_process_cancelling_one_leaves_the_other_correct() {
    let f = Fixture::new();
    let a = f.recipe("a", "\"oci\", \"tar\"", "");
    let b = f.recipe("b", "\"oci\", \"tar\"", "");
    // Fill the cache first so both builds reach the unpack step quickly.
    let solo = kiln_build::build(&f.request(&b, "solo"), &NullReporter, &Cancel::new()).unwrap();

    let barrier = Arc::new(Barrier::new(2));
    let cancel_a = Cancel::new();
    let cancel_b = Cancel::new();
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| {
            kiln_build::build(
                &f.request(&a, "out-a"),
                &CancelAtUnpack {
                    cancel: cancel_a.clone(),
                    both_running: barrier.clone(),
                },
                &cancel_a,
            )
        });
        let tb = s.spawn(|| {
            kiln_build::build(
                &f.request(&b, "out-b"),
                &WaitAtUnpack {
                    both_running: barrier.clone(),
                },
                &cancel_b,
            )
        });
        (ta.join().unwrap(), tb.join().unwrap())
    });

    let err = ra.expect_err("the cancelled build must fail");
    assert!(err.downcast_ref::<Cancelled>().is_some(), "{err:#}");
    assert!(!cancel_b.is_cancelled());
    let out_a = f.work.path().join("out-a");
    assert!(!out_a.join("oci").exists(), "no half-written OCI layout");
    assert!(!out_a.join("rootfs.tar").exists());
    // Nothing of the cancelled build is left: not even its staging area.
    let left: Vec<_> = std::fs::read_dir(&out_a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(kiln_build::verify::verify(&out_a, None, None, &f.sources(), &NullReporter).is_err());

    let mb = rb.expect("the other build finishes");
    let out_b = f.work.path().join("out-b");
    assert_eq!(digest(&mb, "oci"), digest(&solo, "oci"));
    assert_eq!(digest(&mb, "rootfs.tar"), digest(&solo, "rootfs.tar"));
    assert_eq!(Manifest::read_dir(&out_b).unwrap(), mb);
    kiln_build::verify::verify(&out_b, None, None, &f.sources(), &NullReporter).unwrap();
}

#[test]
fn outputs_in_any_order_give_the_same_bytes() {
    let f = Fixture::new();
    let one = f.recipe("order", "\"tar\", \"oci\"", "");
    let m1 = kiln_build::build(&f.request(&one, "one"), &NullReporter, &Cancel::new()).unwrap();
    let two = f.recipe("order", "\"oci\", \"tar\"", "");
    let m2 = kiln_build::build(&f.request(&two, "two"), &NullReporter, &Cancel::new()).unwrap();
    assert_eq!(digest(&m1, "oci"), digest(&m2, "oci"));
    assert_eq!(digest(&m1, "rootfs.tar"), digest(&m2, "rootfs.tar"));
}

#[test]
fn verify_works_from_any_directory_and_refuses_a_mistyped_manifest() {
    let f = Fixture::new();
    let r = f.recipe("v", "\"oci\"", "");
    let events = Collect::default();
    kiln_build::build(&f.request(&r, "out"), &events, &Cancel::new()).unwrap();
    let out = f.work.path().join("out");
    let m = Manifest::read_dir(&out).unwrap();
    assert_eq!(m.lock.path, "../v.lock", "lock path relative to the output");
    // An artifact event for the layout, and steps on the way.
    let ev = events.0.lock().unwrap();
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::Artifact { format, .. } if format == "oci")));
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::Step {
            stage: Stage::Unpack,
            ..
        }
    )));
    drop(ev);

    // Verified from another directory, the lock is still found and checked.
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = elsewhere.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    let status = std::process::Command::new("cp")
        .args(["-a"])
        .arg(&out)
        .arg(elsewhere.path().join("out"))
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::copy(
        f.work.path().join("v.lock"),
        elsewhere.path().join("v.lock"),
    )
    .unwrap();
    let verify_copy = || {
        kiln_build::verify::verify(
            &elsewhere.path().join("out"),
            None,
            None,
            &f.sources(),
            &NullReporter,
        )
        .unwrap()
    };
    let report = verify_copy();
    assert!(
        report.lock.is_some(),
        "the lock beside the copy was checked"
    );
    assert!(
        !report.lock_proven,
        "without its recipe the lock is not proven"
    );
    // With the recipe beside it, the lock is proven against the signed
    // indexes in the cache, offline.
    std::fs::copy(
        f.work.path().join("v.toml"),
        elsewhere.path().join("v.toml"),
    )
    .unwrap();
    assert!(verify_copy().lock_proven);

    // A mistyped field is refused, naming the field and the file.
    let path = out.join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"source-date-epoch\"", "\"source-date-epok\""),
    )
    .unwrap();
    let e = kiln_build::verify::verify(&out, None, None, &f.sources(), &NullReporter).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("source-date-epok") && msg.contains("manifest.json"),
        "{msg}"
    );
}

#[test]
fn a_disk_without_boot_packages_fails_before_fetching_naming_all_of_them() {
    let f = Fixture::new();
    // Full (not distroless) recipe with a kernel but no boot loader or UKI tool.
    let path = f.work.path().join("disk.toml");
    std::fs::write(
        &path,
        format!(
            "[image]\nname = \"disk\"\nsuite = \"kiln-test\"\narchitectures = [\"amd64\"]\ndefault-sources = false\n\n\
             [packages]\ninclude = [\"app\", \"linux-image-test\"]\n\n[output]\nformats = [\"disk\"]\n\n\
             [[source]]\nuri = \"{}\"\nsuites = [\"kiln-test\"]\nsigned-by = \"{}\"\n",
            f.repo.uri(),
            f.repo.key.keyring.display()
        ),
    )
    .unwrap();
    let t = std::time::Instant::now();
    let events = Collect::default();
    let e = kiln_build::build(&f.request(&path, "disk-out"), &events, &Cancel::new()).unwrap_err();
    let msg = format!("{e:#}");
    for needle in ["systemd-boot-efi", "systemd-ukify", "initramfs-tools"] {
        assert!(msg.contains(needle), "{needle} not named: {msg}");
    }
    assert!(
        !msg.contains("linux-image-cloud"),
        "the kernel is there: {msg}"
    );
    let hint = e
        .chain()
        .find_map(|c| c.downcast_ref::<kiln_model::Hinted>())
        .map(|h| h.hint.clone())
        .unwrap();
    assert!(
        hint.contains("include = [") && hint.contains("\"systemd-boot-efi\""),
        "{hint}"
    );
    // Nothing was downloaded or unpacked.
    let ev = events.0.lock().unwrap();
    assert!(!ev.iter().any(|e| matches!(
        e,
        Event::Download { .. }
            | Event::Step {
                stage: Stage::Unpack,
                ..
            }
    )));
    assert!(std::fs::read_dir(f.work.path().join("disk-out"))
        .unwrap()
        .next()
        .is_none());
    assert!(t.elapsed().as_secs() < 10);
}

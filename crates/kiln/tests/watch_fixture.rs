//! `kiln watch` against a signed fixture repository with a security suite:
//! a fix lands for a library one image uses, and only that image is behind.
//! Bad input: a forged or missing security signature, a truncated tracker
//! file, two watchers at once.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use kiln_testkit::{Pkg, ReleaseOpts, Repo};

fn base() -> Vec<Pkg> {
    vec![
        Pkg::new("base-files", "13")
            .field("Essential", "yes")
            .field("Priority", "required")
            .file("/etc/debian_version", b"13\n"),
        Pkg::new("libfoo1", "1.2-1")
            .arch("amd64")
            .field("Source", "foo")
            .depends("libbar1")
            .file("/usr/lib/libfoo.so.1", b"vulnerable"),
        Pkg::new("libbar1", "1.0").arch("amd64"),
        Pkg::new("nginx", "1.26.0-1")
            .arch("amd64")
            .depends("libfoo1 (>= 1.0), nginx-common"),
        Pkg::new("nginx-common", "1.26.0-1"),
    ]
}

fn fixed_libfoo() -> Pkg {
    Pkg::new("libfoo1", "1.2-1+deb1u1")
        .arch("amd64")
        .field("Source", "foo (1.2-1+deb1u1)")
        .file("/usr/lib/libfoo.so.1", b"fixed")
}

fn security_opts(date: &str) -> ReleaseOpts {
    ReleaseOpts {
        suite: "kiln-test-security".into(),
        codename: "kiln-test-security".into(),
        date: date.into(),
        ..ReleaseOpts::default()
    }
}

struct Fx {
    repo: Repo,
    work: tempfile::TempDir,
    cache: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Fx {
    /// The repository with an empty security suite, and two recipes locked
    /// against it: `web` (nginx, which needs libfoo1) and `plain`
    /// (nginx-common only).
    fn new() -> Fx {
        let mut repo = Repo::build(&base(), "amd64", &ReleaseOpts::default());
        repo.write(
            &[],
            "amd64",
            &security_opts("Sat, 01 Nov 2025 12:00:00 UTC"),
        );
        let f = Fx {
            repo,
            work: tempfile::tempdir().unwrap(),
            cache: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
        };
        for (name, pkg) in [("web", "nginx"), ("plain", "nginx-common")] {
            let o = f.kiln(&["lock", f.recipe(name, pkg).to_str().unwrap()]);
            assert!(o.status.success(), "{}", stderr(&o));
        }
        f
    }

    fn recipe(&self, name: &str, include: &str) -> PathBuf {
        let path = self.work.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[image]\nname = \"{name}\"\nversion = \"1\"\nsuite = \"kiln-test\"\narchitectures = [\"amd64\"]\n\
                 default-sources = false\n\n[packages]\ninclude = [\"{include}\"]\n\n\
                 [container]\ndistroless = true\n\n[output]\nformats = [\"tar\"]\n\n\
                 [[source]]\nuri = \"{}\"\nsuites = [\"kiln-test\", \"kiln-test-security\"]\nsigned-by = \"{}\"\n",
                self.repo.uri(),
                self.repo.key.keyring.display()
            ),
        )
        .unwrap();
        path
    }

    fn path(&self, name: &str) -> String {
        self.work.path().join(name).display().to_string()
    }

    fn kiln(&self, args: &[&str]) -> Output {
        self.kiln_command(args).output().unwrap()
    }

    fn kiln_command(&self, args: &[&str]) -> std::process::Command {
        let mut c = kiln_command(
            self.cache.path(),
            args,
            &[
                ("KILN_FETCH_ATTEMPTS", "2"),
                ("XDG_STATE_HOME", self.state.path().to_str().unwrap()),
            ],
        );
        c.current_dir(self.work.path());
        c
    }

    /// A fix for libfoo1 lands in the security suite.
    fn publish_fix(&mut self) {
        self.repo.write(
            &[fixed_libfoo()],
            "amd64",
            &security_opts("Mon, 01 Dec 2025 12:00:00 UTC"),
        );
    }

    fn security_dists(&self) -> PathBuf {
        self.repo.dists(&security_opts(""))
    }

    fn watch_json(&self, extra: &[&str]) -> (Output, serde_json::Value) {
        let mut args = vec!["watch", "--json"];
        args.extend_from_slice(extra);
        let o = self.kiln(&args);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}\n{}", text(&o), stderr(&o)));
        assert_matches_schema("watch", &v);
        (o, v)
    }
}

fn image<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {v:#}"))
}

fn tracker(dir: &Path) -> PathBuf {
    let p = dir.join("tracker.json");
    std::fs::write(
        &p,
        r#"{
          "foo": {
            "CVE-2026-1111": {"description": "overflow", "releases": {
              "kiln-test": {"status": "resolved", "fixed_version": "1.2-1+deb1u1", "urgency": "high",
                            "repositories": {"kiln-test-security": "1.2-1+deb1u1"}}}},
            "CVE-2026-2222": {"releases": {"kiln-test": {"status": "open", "urgency": "low"}}},
            "CVE-2019-0001": {"releases": {"kiln-test": {"status": "resolved", "fixed_version": "0.9-1"}}}
          },
          "nginx": {
            "CVE-2026-3333": {"releases": {"kiln-test": {"status": "resolved", "fixed_version": "1.27.0-1", "urgency": "medium"}}}
          }
        }"#,
    )
    .unwrap();
    p
}

#[test]
fn a_security_fix_marks_only_the_image_that_has_the_library() {
    let mut f = Fx::new();
    let (web, plain) = (f.path("web.toml"), f.path("plain.toml"));

    // Before the fix: both current, exit 0, and the table says so.
    let o = f.kiln(&["watch", &web, &plain]);
    assert_eq!(o.status.code(), Some(0), "{}{}", text(&o), stderr(&o));
    assert!(text(&o).contains("up-to-date"), "{}", text(&o));

    f.publish_fix();
    let tracker = tracker(f.work.path());
    // The tracker's DSA list: the advisory for this fix, one for a fix
    // the installed version has already, one for another release.
    let dsa = f.work.path().join("DSA-list");
    std::fs::write(
        &dsa,
        "[01 Dec 2025] DSA-9002-1 foo - security update\n\t{CVE-2026-1111}\n\t[kiln-test] - foo 1.2-1+deb1u1\n\
         [01 Jan 2019] DSA-4001-1 foo - security update\n\t{CVE-2019-0001}\n\t[kiln-test] - foo 0.9-1\n\
         [01 Dec 2025] DSA-9003-1 foo - security update\n\t[bookworm] - foo 1.2-1+deb12u1\n",
    )
    .unwrap();
    let (o, v) = f.watch_json(&[
        "--security-tracker",
        tracker.to_str().unwrap(),
        "--advisories",
        dsa.to_str().unwrap(),
        &web,
        &plain,
    ]);
    assert_eq!(o.status.code(), Some(2), "{v:#}\n{}", stderr(&o));
    assert_eq!(v["tracker"]["issues"], 4);
    let w = image(&v, "web");
    assert_eq!(w["status"], "security");
    assert_eq!(w["architecture"], "amd64");
    let updates = w["updates"].as_array().unwrap();
    assert_eq!(updates.len(), 1, "{w:#}");
    let u = &updates[0];
    assert_eq!(u["package"], "libfoo1");
    assert_eq!(u["installed"], "1.2-1");
    assert_eq!(u["candidate"], "1.2-1+deb1u1");
    assert_eq!(u["suite"], "kiln-test-security");
    assert_eq!(u["security"], true);
    assert_eq!(u["release-date"], "Mon, 01 Dec 2025 12:00:00 UTC");
    assert_eq!(u["cves"], serde_json::json!(["CVE-2026-1111"]));
    assert_eq!(u["urgency"], "high");
    assert_eq!(u["advisories"], serde_json::json!(["DSA-9002-1"]));
    // Open: foo's issue with no fix, nginx's fix these sources lack. Not the
    // one fixed before the installed version.
    let open: Vec<String> = w["open"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| format!("{} {} {}", o["source"], o["cve"], o["fixed-version"]))
        .collect();
    assert_eq!(
        open,
        [
            "\"foo\" \"CVE-2026-2222\" null",
            "\"nginx\" \"CVE-2026-3333\" \"1.27.0-1\""
        ]
    );
    let p = image(&v, "plain");
    assert_eq!(p["status"], "up-to-date", "{p:#}");
    assert!(p["updates"].as_array().unwrap().is_empty());

    // Just the lock works too; the table names the update and the CVE.
    let o = f.kiln(&[
        "watch",
        "--security-tracker",
        tracker.to_str().unwrap(),
        &f.path("web.lock"),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let t = text(&o);
    assert!(
        t.contains("libfoo1 1.2-1 -> 1.2-1+deb1u1  kiln-test-security  CVE-2026-1111 (high)"),
        "{t}"
    );
}

#[test]
fn built_images_are_taken_from_the_catalog() {
    let mut f = Fx::new();
    let catalog = f.work.path().join("catalog.sqlite");
    let cat = catalog.to_str().unwrap();
    for name in ["web", "plain"] {
        let o = f.kiln(&["--catalog", cat, "build", &f.path(&format!("{name}.toml"))]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    f.publish_fix();
    let (o, v) = f.watch_json(&["--catalog", cat]);
    assert_eq!(o.status.code(), Some(2), "{v:#}");
    assert_eq!(v["images"].as_array().unwrap().len(), 2);
    assert_eq!(image(&v, "web")["status"], "security");
    assert_eq!(image(&v, "plain")["status"], "up-to-date");
    let loc = image(&v, "web")["location"].as_str().unwrap().to_string();
    assert!(Path::new(&loc).join("manifest.json").is_file(), "{loc}");

    // A catalogued build whose directory is gone cannot be checked: unknown.
    std::fs::remove_dir_all(&loc).unwrap();
    let (o, v) = f.watch_json(&["--catalog", cat]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(image(&v, "web")["status"], "unknown");
    let e = image(&v, "web")["error"].as_str().unwrap().to_string();
    assert!(
        e.contains("recorded in the catalog") && e.contains("does not exist"),
        "{e}"
    );
}

#[test]
fn a_forged_or_missing_security_signature_makes_images_unknown_never_current() {
    let mut f = Fx::new();
    f.publish_fix();
    let (web, plain) = (f.path("web.toml"), f.path("plain.toml"));
    let dists = f.security_dists();
    // Forged: the signed text altered after signing (the index claim too).
    let signed = std::fs::read_to_string(dists.join("InRelease")).unwrap();
    let forged = signed.replace("Kiln Tests", "Kiln Tezts");
    assert_ne!(forged, signed);
    std::fs::write(dists.join("InRelease"), &forged).unwrap();
    let (o, v) = f.watch_json(&[&web, &plain]);
    assert_eq!(o.status.code(), Some(3), "{v:#}");
    for name in ["web", "plain"] {
        let i = image(&v, name);
        assert_eq!(i["status"], "unknown", "{i:#}");
        let e = i["error"].as_str().unwrap();
        assert!(e.contains("kiln-test-security"), "{e}");
        assert!(i["updates"].as_array().unwrap().is_empty());
    }
    let o = f.kiln(&["watch", &web, &plain]);
    assert_eq!(o.status.code(), Some(3));
    assert!(!text(&o).contains("up-to-date"), "{}", text(&o));
    assert!(text(&o).contains("cannot be checked"), "{}", text(&o));

    // Missing: no InRelease and an unsigned Release.
    std::fs::remove_file(dists.join("InRelease")).unwrap();
    let (o, v) = f.watch_json(&[&plain]);
    assert_eq!(o.status.code(), Some(3));
    let e = image(&v, "plain")["error"].as_str().unwrap().to_string();
    assert!(e.contains("neither InRelease nor Release.gpg"), "{e}");
}

#[test]
fn a_truncated_tracker_file_is_named_and_the_watch_goes_on() {
    let mut f = Fx::new();
    f.publish_fix();
    let good = std::fs::read_to_string(tracker(f.work.path())).unwrap();
    let cut = f.work.path().join("cut.json");
    std::fs::write(&cut, &good[..good.len() / 2]).unwrap();
    let list = f.work.path().join("DLA-list");
    std::fs::write(&list, "[01 Dec 2025] DLA-1-1 foo - x\n\t[kiln-test] - fo").unwrap();
    let (o, v) = f.watch_json(&[
        "--security-tracker",
        cut.to_str().unwrap(),
        &f.path("web.toml"),
    ]);
    // Still the update, from the archive alone; no CVEs, and it says why.
    assert_eq!(o.status.code(), Some(2), "{v:#}");
    assert!(v["tracker"].is_null());
    let w = v["warnings"].as_array().unwrap();
    assert!(
        w.iter().any(|w| w.as_str().unwrap().contains("cut.json")
            && w.as_str().unwrap().contains("without CVE data")),
        "{w:?}"
    );
    assert!(stderr(&o).contains("cut.json"), "{}", stderr(&o));
    let web = image(&v, "web");
    assert_eq!(web["updates"][0]["package"], "libfoo1");
    assert_eq!(web["updates"][0]["cves"], serde_json::json!([]));

    // A list of advisories cut mid-line: named, and the CVEs still come.
    let full = tracker(f.work.path());
    let (o, v) = f.watch_json(&[
        "--security-tracker",
        full.to_str().unwrap(),
        "--advisories",
        list.to_str().unwrap(),
        &f.path("web.toml"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{v:#}");
    let w = v["warnings"].as_array().unwrap();
    assert!(
        w.iter()
            .any(|w| w.as_str().unwrap().contains("DLA-list")
                && w.as_str().unwrap().contains("line 2")),
        "{w:?}"
    );
    let web = image(&v, "web");
    assert_eq!(
        web["updates"][0]["cves"],
        serde_json::json!(["CVE-2026-1111"])
    );
    assert_eq!(web["updates"][0]["advisories"], serde_json::json!([]));
}

#[test]
fn a_second_watcher_waits_for_the_first() {
    let f = Fx::new();
    let lock_dir = f.state.path().join("kiln");
    std::fs::create_dir_all(&lock_dir).unwrap();
    // Another watcher holds the lock for two seconds.
    let mut holder = std::process::Command::new("flock")
        .arg(lock_dir.join("watch.lock"))
        .args(["sleep", "2"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let o = f.kiln(&["watch", &f.path("plain.toml")]);
    // It finished after the holder let go, not beside it.
    let holder_done = holder.try_wait().unwrap();
    holder.wait().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("another kiln watch is running"),
        "{}",
        stderr(&o)
    );
    assert!(
        holder_done.is_some(),
        "kiln watch ran while the lock was held"
    );
}

#[test]
fn bad_arguments_are_usage_errors_not_watch_results() {
    let f = Fx::new();
    for args in [
        vec!["watch", "--every", "soon"],
        vec!["watch", "--no-such-flag"],
    ] {
        let o = f.kiln(&args);
        assert_eq!(o.status.code(), Some(64), "{args:?}: {}", stderr(&o));
    }
    let o = f.kiln(&["watch", "--every", "0"]);
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("no duration"), "{}", stderr(&o));
    // A file that is no recipe, lock or build: a clear error, exit 3 (1 and 2 are results).
    std::fs::write(f.path("web.txt"), "x").unwrap();
    let o = f.kiln(&["watch", &f.path("web.txt")]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("neither a build"), "{}", stderr(&o));
}

#[test]
fn lock_update_changes_only_the_named_package_and_what_it_needs_and_diff_shows_it() {
    let mut f = Fx::new();
    let catalog = f.work.path().join("catalog.sqlite");
    let cat = catalog.to_str().unwrap();
    let web = f.path("web.toml");
    let o = f.kiln(&["--catalog", cat, "build", &web, "-o", &f.path("out1")]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Fixes land: libfoo1 (now needing a newer libbar1) and nginx-common.
    f.repo.write(
        &[
            Pkg::new("libfoo1", "1.2-1+deb1u2")
                .arch("amd64")
                .field("Source", "foo (1.2-1+deb1u2)")
                .depends("libbar1 (>= 1.1)")
                .file("/usr/lib/libfoo.so.1", b"fixed"),
            Pkg::new("libbar1", "1.1").arch("amd64"),
            Pkg::new("nginx-common", "1.26.0-1+deb1u1"),
        ],
        "amd64",
        &security_opts("Mon, 01 Dec 2025 12:00:00 UTC"),
    );
    let before = std::fs::read(f.path("web.lock")).unwrap();
    std::fs::write(f.path("old.lock"), &before).unwrap();

    // Not a locked package: refused with a suggestion, the lock untouched.
    let o = f.kiln(&["lock", &web, "--update", "libfoo"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("did you mean libfoo1"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(f.path("web.lock")).unwrap(), before);

    let o = f.kiln(&["lock", &web, "--update", "libfoo1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("these change too, as the update needs: libbar1"),
        "{}",
        stderr(&o)
    );
    let o = f.kiln(&["diff", &f.path("old.lock"), &f.path("web.lock"), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let d = json_of(&o);
    assert_matches_schema("diff", &d);
    let changed: Vec<String> = d["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("{} {} -> {}", c["name"], c["from"], c["to"]))
        .collect();
    assert_eq!(
        changed,
        [
            "\"libbar1\" \"1.0\" -> \"1.1\"",
            "\"libfoo1\" \"1.2-1\" -> \"1.2-1+deb1u2\""
        ]
    );
    assert_eq!(d["changed"][1]["source"], "foo");
    assert_eq!(d["changed"][1]["to-source-version"], "1.2-1+deb1u2");
    assert!(d["added"].as_array().unwrap().is_empty());
    assert!(d["artifacts"].is_null(), "locks have no artifacts");
    assert_eq!(
        d["installed-size"][0]["change"], 0,
        "the fixture's packages are 1 KiB each"
    );
    assert_eq!(d["installed-size"][0]["from"], 5 * 1024);

    // Built again as version 2: the catalog versions differ in exactly
    // those packages, and in the root filesystem.
    let text2 = std::fs::read_to_string(&web)
        .unwrap()
        .replace("version = \"1\"", "version = \"2\"");
    std::fs::write(&web, text2).unwrap();
    let o = f.kiln(&["--catalog", cat, "build", &web, "-o", &f.path("out2")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = f.kiln(&["--catalog", cat, "diff", "web@1", "web@2", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let d = json_of(&o);
    assert_matches_schema("diff", &d);
    assert_eq!(d["changed"].as_array().unwrap().len(), 2);
    let arts = d["artifacts"].as_array().unwrap();
    let tar = arts.iter().find(|a| a["format"] == "tar").unwrap();
    assert_eq!(tar["status"], "changed", "{arts:#?}");
    let o = f.kiln(&["diff", &f.path("out1"), &f.path("out2")]);
    let t = text(&o);
    assert!(t.contains("0 added, 0 removed, 2 changed"), "{t}");
    assert!(
        t.contains("~ libfoo1 1.2-1 -> 1.2-1+deb1u2 (source foo 1.2-1 -> 1.2-1+deb1u2)"),
        "{t}"
    );
    assert!(t.contains("Artifact rootfs.tar (tar): changed"), "{t}");
    let o = f.kiln(&["--catalog", cat, "diff", "web@1", "web@7"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("it has: "), "{}", stderr(&o));

    // A plain lock would have taken nginx-common's update as well.
    let o = f.kiln(&["lock", &web]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = f.kiln(&["diff", &f.path("old.lock"), &f.path("web.lock"), "--json"]);
    let names: Vec<&str> = json_of(&o)["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string().leak() as &str)
        .collect();
    assert_eq!(names, ["libbar1", "libfoo1", "nginx-common"]);
}

/// The two images of [`Fx`], each with a shell to run its `[[test]]`
/// commands in, publishing to a signed download tree.
fn tested_fixture() -> (Fx, PathBuf) {
    let mut f = Fx::new();
    let mut pkgs = base();
    pkgs.push(kiln_testkit::host_tools_pkg(
        "kiln-test-tools",
        "amd64",
        &["dash", "env", "grep", "cat"],
    ));
    f.repo.write(&pkgs, "amd64", &ReleaseOpts::default());
    let tree = f.work.path().join("tree");
    for (name, pkg, test) in [
        (
            "web",
            "nginx",
            "command = \"grep -q fixed /usr/lib/libfoo.so.1 && echo libfoo-ok\"\nexpect = \"libfoo-ok\"",
        ),
        (
            "plain",
            "nginx-common",
            "command = \"cat /etc/debian_version\"\nexpect = \"13\"",
        ),
    ] {
        let recipe = f.recipe(name, pkg);
        let text = std::fs::read_to_string(&recipe)
            .unwrap()
            .replace(
                &format!("include = [\"{pkg}\"]"),
                &format!("include = [\"{pkg}\", \"kiln-test-tools\"]"),
            )
            + &format!(
                "\n[[test]]\nname = \"{name}-works\"\n{test}\n\n[[publish]]\nto = \"file://{}\"\n",
                tree.display()
            );
        std::fs::write(&recipe, text).unwrap();
        let o = f.kiln(&["lock", recipe.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    (f, tree)
}

/// The versions of each image the tree's simplestreams products list.
fn tree_versions(tree: &Path) -> std::collections::BTreeMap<String, usize> {
    let p = tree.join("streams/v1/org.kiln.images:stable.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    v["products"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, p)| {
            // NAME:SUITE:ARCH
            let name = id.split(':').next().unwrap();
            (name.to_string(), p["versions"].as_object().unwrap().len())
        })
        .fold(Default::default(), |mut m, (n, c)| {
            *m.entry(n).or_default() += c;
            m
        })
}

#[test]
fn rebuild_tests_and_publishes_only_the_affected_image_and_a_failed_test_is_not_published() {
    let (mut f, tree) = tested_fixture();
    let (pem, _) = common::ed25519_pair(f.work.path(), "signer");
    let pem = pem.to_str().unwrap().to_string();
    let (web, plain) = (f.path("web.toml"), f.path("plain.toml"));
    for r in [&web, &plain] {
        let o = f.kiln(&["build", r]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let o = f.kiln(&[
        "publish",
        "--sign-key",
        &pem,
        &f.path("out/web"),
        &f.path("out/plain"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = tree_versions(&tree);
    assert_eq!(first.get("web"), Some(&1), "{first:?}");
    std::fs::copy(f.path("web.lock"), f.path("web-1.lock")).unwrap();

    // A tree needs a key: refused before any work.
    let o = f.kiln(&["watch", "--rebuild"]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(stderr(&o).contains("--sign-key"), "{}", stderr(&o));

    // A broken fix: the rebuild's test fails; nothing is published, and the
    // failure is recorded.
    f.repo.write(
        &[Pkg::new("libfoo1", "1.2-1+deb1u1")
            .arch("amd64")
            .depends("libbar1")
            .field("Source", "foo (1.2-1+deb1u1)")
            .file("/usr/lib/libfoo.so.1", b"broken")],
        "amd64",
        &security_opts("Mon, 01 Dec 2025 12:00:00 UTC"),
    );
    let (o, v) = f.watch_json(&["--rebuild", "--sign-key", &pem]);
    assert_eq!(o.status.code(), Some(4), "{v:#}\n{}", stderr(&o));
    let rebuilds = v["rebuilds"].as_array().unwrap();
    assert_eq!(rebuilds.len(), 1, "only web: {v:#}");
    assert_eq!(rebuilds[0]["image"], "web");
    assert_eq!(rebuilds[0]["outcome"], "test-failed");
    let e = rebuilds[0]["error"].as_str().unwrap();
    assert!(e.contains("web-works"), "{e}");
    assert_eq!(
        tree_versions(&tree),
        first,
        "a failed rebuild was published"
    );
    let failed_out = PathBuf::from(rebuilds[0]["output"].as_str().unwrap());
    let xml = std::fs::read_to_string(failed_out.join("rootfs.test.xml")).unwrap();
    assert!(xml.contains("failures=\"1\""), "{xml}");

    // The real fix: the next pass tries again, from the version still
    // current (the failed build was never catalogued), and publishes.
    f.repo.write(
        &[Pkg::new("libfoo1", "1.2-1+deb1u2")
            .arch("amd64")
            .depends("libbar1")
            .field("Source", "foo (1.2-1+deb1u2)")
            .file("/usr/lib/libfoo.so.1", b"fixed")],
        "amd64",
        &security_opts("Tue, 02 Dec 2025 08:00:00 UTC"),
    );
    let (o, v) = f.watch_json(&["--rebuild", "--sign-key", &pem]);
    assert_eq!(o.status.code(), Some(0), "{v:#}\n{}", stderr(&o));
    let rebuilds = v["rebuilds"].as_array().unwrap();
    assert_eq!(rebuilds.len(), 1, "{v:#}");
    let r = &rebuilds[0];
    assert_eq!(r["outcome"], "published", "{r:#}");
    assert_eq!(
        r["packages"],
        serde_json::json!([{"package": "libfoo1", "architecture": "amd64", "from": "1.2-1",
            "to": "1.2-1+deb1u2", "suite": "kiln-test-security", "security": true}])
    );
    // Tue, 02 Dec 2025 08:00:00 UTC
    assert_eq!(r["release-date"], 1764662400);
    assert!(r["published-at"].as_i64().unwrap() >= r["started-at"].as_i64().unwrap());
    let after = tree_versions(&tree);
    assert_eq!(after.get("web"), Some(&2), "{after:?}");
    assert_eq!(after.get("plain"), Some(&1), "plain was not rebuilt");
    let new_out = PathBuf::from(r["output"].as_str().unwrap());
    assert_eq!(
        new_out.file_name().unwrap().to_str().unwrap(),
        "web-20251202T080000Z"
    );

    // The locks differ in the fixed package alone.
    let o = f.kiln(&[
        "diff",
        &f.path("web-1.lock"),
        &web.replace(".toml", ".lock"),
        "--json",
    ]);
    let d = json_of(&o);
    let changed: Vec<&str> = d["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(changed, ["libfoo1"], "{d:#}");
    assert!(d["added"].as_array().unwrap().is_empty());

    // The catalog: both versions of web, the new one with its reason and
    // test, the old one as the pass found it.
    let found = json_of(&f.kiln(&["find", "--image", "web", "--json"]));
    assert_matches_schema("find", &found);
    let versions = found["images"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{found:#}");
    let (new, old) = (&versions[0], &versions[1]);
    assert_eq!(new["location"], new_out.to_str().unwrap());
    assert_eq!(new["rebuild"]["outcome"], "published");
    assert_eq!(new["rebuild"]["from-manifest"], old["manifest-sha256"]);
    assert_eq!(new["tests"][0]["passed"], true);
    assert!(!new["publications"].as_array().unwrap().is_empty());
    assert!(old["rebuild"].is_null());
    assert_eq!(old["watch"]["status"], "security");
    assert_eq!(old["watch"]["security"], 1);

    // Current now: a pass rebuilds nothing and says so.
    let (o, v) = f.watch_json(&["--rebuild", "--sign-key", &pem]);
    assert_eq!(o.status.code(), Some(0), "{v:#}");
    assert!(v["rebuilds"].as_array().unwrap().is_empty());
    assert_eq!(image(&v, "web")["location"], new_out.to_str().unwrap());

    // The finder shows each version's status and the rebuild's reason.
    let site = f.work.path().join("site");
    let o = f.kiln(&["serve", "--export", site.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let all: serde_json::Value =
        serde_json::from_slice(&std::fs::read(site.join("api/v1/images.json")).unwrap()).unwrap();
    let webs: Vec<&serde_json::Value> = all["images"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["image"] == "web")
        .collect();
    assert_eq!(webs[0]["status"]["state"], "up-to-date", "{:#}", webs[0]);
    assert_eq!(webs[0]["rebuild"]["packages"][0]["package"], "libfoo1");
    assert_eq!(webs[1]["status"]["state"], "security");
    assert!(
        webs[1]["status"]["summary"]
            .as_str()
            .unwrap()
            .contains("security updates pending"),
        "{:#}",
        webs[1]
    );
}

#[test]
fn no_rebuild_from_a_forged_security_suite_nor_of_a_recipe_changed_since_its_build() {
    let (mut f, _tree) = tested_fixture();
    let (pem, _) = common::ed25519_pair(f.work.path(), "signer");
    let pem = pem.to_str().unwrap().to_string();
    let web = f.path("web.toml");
    let o = f.kiln(&["build", &web]);
    assert!(o.status.success(), "{}", stderr(&o));
    f.publish_fix();
    let dists = f.security_dists();
    let signed = std::fs::read_to_string(dists.join("InRelease")).unwrap();
    std::fs::write(
        dists.join("InRelease"),
        signed.replace("Kiln Tests", "Kiln Tezts"),
    )
    .unwrap();
    let lock_before = std::fs::read(f.path("web.lock")).unwrap();
    let (o, v) = f.watch_json(&["--rebuild", "--sign-key", &pem]);
    assert_eq!(o.status.code(), Some(3), "{v:#}");
    assert!(v["rebuilds"].as_array().unwrap().is_empty(), "{v:#}");
    assert_eq!(std::fs::read(f.path("web.lock")).unwrap(), lock_before);

    // Signed again, but the recipe's packages were edited since the build:
    // a rebuild would take the edit along, so it is refused and recorded.
    std::fs::write(dists.join("InRelease"), &signed).unwrap();
    let text = std::fs::read_to_string(&web).unwrap();
    std::fs::write(
        &web,
        text.replace("\"nginx\", ", "\"nginx\", \"libbar1\", "),
    )
    .unwrap();
    let (o, v) = f.watch_json(&["--rebuild", "--sign-key", &pem]);
    assert_eq!(o.status.code(), Some(4), "{v:#}");
    let r = &v["rebuilds"][0];
    assert_eq!(r["outcome"], "lock-failed");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("was changed since this build"),
        "{r:#}"
    );
    assert_eq!(std::fs::read(f.path("web.lock")).unwrap(), lock_before);
}

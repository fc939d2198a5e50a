//! `kiln lock` against a signed fixture repository the tests build
//! themselves: the happy path and every kind of bad input, offline.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use kiln_testkit::{HttpServer, Key, KeyOpts, Pkg, ReleaseOpts, Repo};

fn packages() -> Vec<Pkg> {
    vec![
        Pkg::new("base-files", "13")
            .field("Essential", "yes")
            .field("Priority", "required")
            .file("/etc/debian_version", b"13\n"),
        Pkg::new("libfoo1", "1.2-1")
            .arch("amd64")
            .field("Priority", "optional"),
        Pkg::new("nginx", "1.26.0-1")
            .arch("amd64")
            .depends("libfoo1 (>= 1.0), nginx-common | nginx-light-common"),
        Pkg::new("nginx-common", "1.26.0-1"),
        Pkg::new("app", "2.0").depends("libfoo1 (>= 2.0)"),
        Pkg::new("mta-a", "1").field("Provides", "mail-transport-agent"),
        Pkg::new("mta-b", "1").field("Provides", "mail-transport-agent"),
    ]
}

struct Fixture {
    repo: Repo,
    opts: ReleaseOpts,
    work: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Self::with(ReleaseOpts::default())
    }

    fn with(opts: ReleaseOpts) -> Fixture {
        Self::signed_by(opts, Key::generate("Kiln Test Archive"))
    }

    /// A repository signed by the keys of `key` (whose keyring the recipe trusts).
    fn signed_by(opts: ReleaseOpts, key: Key) -> Fixture {
        let repo = Repo::build_signed_by(&packages(), "amd64", &opts, key);
        Fixture {
            repo,
            opts,
            work: tempfile::tempdir().unwrap(),
            cache: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes a recipe for this repository with extra TOML lines.
    fn recipe(&self, uri: &str, packages: &str, extra_source: &str) -> PathBuf {
        let path = self.work.path().join("image.toml");
        std::fs::write(
            &path,
            format!(
                "[image]\nname = \"test\"\nsuite = \"kiln-test\"\narchitectures = [\"amd64\"]\ndefault-sources = false\n\n\
                 [packages]\n{packages}\n\n[[source]]\nuri = \"{uri}\"\nsuites = [\"kiln-test\"]\nsigned-by = \"{}\"\n{extra_source}",
                self.repo.key.keyring.display()
            ),
        )
        .unwrap();
        path
    }

    /// A distroless recipe for nginx (its build needs no root), as image.toml.
    fn distroless_recipe(&self) -> PathBuf {
        let path = self.recipe(&self.repo.uri(), "include = [\"nginx\"]", "");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            format!("{text}\n[container]\ndistroless = true\n\n[output]\nformats = [\"tar\"]\n"),
        )
        .unwrap();
        path
    }

    fn kiln(&self, args: &[&str]) -> Output {
        kiln_command(self.cache.path(), args, &[("KILN_FETCH_ATTEMPTS", "2")])
            .current_dir(self.work.path())
            .output()
            .unwrap()
    }

    fn lock(&self, recipe: &Path, extra: &[&str]) -> Output {
        let mut args = vec!["lock", recipe.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.kiln(&args)
    }
}

#[track_caller]
fn assert_fails_with(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr:\n{err}"
    );
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
}

fn locked(recipe: &Path) -> toml::Table {
    let text = std::fs::read_to_string(kiln_recipe::lock_path_for(recipe)).unwrap();
    toml::from_str(&text).unwrap()
}

fn names(lock: &toml::Table) -> Vec<String> {
    lock["package"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{} {}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn locks_a_signed_repository_over_http_with_hashes_of_the_real_debs() {
    let f = Fixture::new();
    let server = HttpServer::serve(f.repo.root());
    let recipe = f.recipe(
        &server.url(),
        "priority = \"required\"\ninclude = [\"nginx\"]",
        "",
    );
    let out = f.lock(&recipe, &["--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lock = locked(&recipe);
    assert_eq!(
        names(&lock),
        [
            "base-files 13",
            "libfoo1 1.2-1",
            "nginx 1.26.0-1",
            "nginx-common 1.26.0-1"
        ]
    );
    for p in lock["package"].as_array().unwrap() {
        let deb = &f.repo.debs[p["name"].as_str().unwrap()];
        let bytes = std::fs::read(deb).unwrap();
        assert_eq!(
            p["sha256"].as_str().unwrap(),
            kiln_testkit::sha256_hex(&bytes)
        );
        assert_eq!(p["size"].as_integer().unwrap() as usize, bytes.len());
        assert!(f.repo.root().join(p["filename"].as_str().unwrap()).exists());
    }
    let rel = &lock["release"].as_array().unwrap()[0];
    assert_eq!(rel["suite"].as_str(), Some("kiln-test"));
    assert_eq!(rel["date"].as_str(), Some("Sat, 01 Nov 2025 12:00:00 UTC"));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["packages"].as_array().unwrap().len(), 4);
    assert!(
        stderr(&out).contains("Locked 4 packages"),
        "{}",
        stderr(&out)
    );

    // Deterministic: locking again leaves the file byte-identical.
    let before = std::fs::read(kiln_recipe::lock_path_for(&recipe)).unwrap();
    let again = f.lock(&recipe, &[]);
    assert!(again.status.success());
    assert!(stderr(&again).contains("unchanged"), "{}", stderr(&again));
    assert_eq!(
        before,
        std::fs::read(kiln_recipe::lock_path_for(&recipe)).unwrap()
    );
}

#[test]
fn why_shows_the_dependency_path() {
    let f = Fixture::new();
    let recipe = f.recipe(&f.repo.uri(), "include = [\"nginx\"]", "");
    assert!(f.lock(&recipe, &[]).status.success());
    let out = f.kiln(&["why", "libfoo1", "--recipe", recipe.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("nginx 1.26.0-1 (listed in [packages] include)"),
        "{text}"
    );
    assert!(text.contains("└─ libfoo1 1.2-1"), "{text}");
    let missing = f.kiln(&["why", "libfoo", "--recipe", recipe.to_str().unwrap()]);
    assert_fails_with(&missing, &["`libfoo` is not in", "did you mean `libfoo1`?"]);
}

#[test]
fn lock_check_fails_when_the_recipe_changed() {
    let f = Fixture::new();
    let recipe = f.recipe(&f.repo.uri(), "include = [\"nginx\"]", "");
    assert!(f.lock(&recipe, &[]).status.success());
    assert!(f.lock(&recipe, &["--check"]).status.success());
    // Output-only changes keep the lock valid; package changes do not.
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(&recipe, format!("{text}\n[output]\nformats = [\"tar\"]\n")).unwrap();
    assert!(f.lock(&recipe, &["--check"]).status.success());
    std::fs::write(&recipe, text.replace("[\"nginx\"]", "[\"nginx\", \"app\"]")).unwrap();
    assert_fails_with(
        &f.lock(&recipe, &["--check"]),
        &[
            "does not match its recipe",
            "[packages] include (now also names app) changed since it was locked",
            "hint: run `kiln lock",
        ],
    );
    // Each input is named: here the suite and the sources.
    std::fs::write(
        &recipe,
        text.replace("suite = \"kiln-test\"", "suite = \"kiln-other\"")
            .replace("suites = [\"kiln-test\"]", "suites = [\"kiln-other\"]"),
    )
    .unwrap();
    let o = f.lock(&recipe, &["--check"]);
    assert_fails_with(
        &o,
        &["[image] suite, [[source]] changed since it was locked"],
    );
    assert!(!stderr(&o).contains("[packages]"), "{}", stderr(&o));
}

#[test]
fn malformed_recipe_names_file_line_and_column() {
    let f = Fixture::new();
    let recipe = f.work.path().join("bad.toml");
    std::fs::write(&recipe, "[image]\nname = \"x\"\nsuite = trixie\n").unwrap();
    assert_fails_with(&f.lock(&recipe, &[]), &["bad.toml:3:9"]);
}

#[test]
fn unknown_key_suggests_the_right_one() {
    let f = Fixture::new();
    let recipe = f.work.path().join("typo.toml");
    std::fs::write(
        &recipe,
        "[image]\nname = \"x\"\nsuite = \"trixie\"\n\n[packages]\nincludes = [\"nginx\"]\n",
    )
    .unwrap();
    assert_fails_with(
        &f.lock(&recipe, &[]),
        &[
            "typo.toml:6:1",
            "unknown key `includes`",
            "hint: did you mean `include`?",
        ],
    );
}

#[test]
fn unknown_package_suggests_near_names() {
    let f = Fixture::new();
    let recipe = f.recipe(&f.repo.uri(), "include = [\"ngnix\"]", "");
    assert_fails_with(
        &f.lock(&recipe, &[]),
        &["unknown package `ngnix`", "did you mean `nginx`"],
    );
    assert!(
        !kiln_recipe::lock_path_for(&recipe).exists(),
        "no lock is written on failure"
    );
}

#[test]
fn every_unknown_package_is_named_at_once() {
    let f = Fixture::new();
    let recipe = f.recipe(
        &f.repo.uri(),
        "include = [\"ngnix\", \"app\", \"zzz-nothing\"]\nexclude = [\"libfoo2\"]",
        "",
    );
    assert_fails_with(
        &f.lock(&recipe, &[]),
        &[
            "unknown packages `libfoo2`, `ngnix`, `zzz-nothing`",
            "for `ngnix` did you mean `nginx`?",
            "for `libfoo2` did you mean `libfoo1`?",
        ],
    );
}

#[test]
fn ambiguous_virtual_package_lists_providers() {
    let f = Fixture::new();
    let recipe = f.recipe(&f.repo.uri(), "include = [\"mail-transport-agent\"]", "");
    assert_fails_with(
        &f.lock(&recipe, &[]),
        &["virtual package provided by mta-a, mta-b"],
    );
}

#[test]
fn unsatisfiable_request_is_explained_as_a_chain() {
    let f = Fixture::new();
    let recipe = f.recipe(&f.repo.uri(), "include = [\"app\"]", "");
    assert_fails_with(
        &f.lock(&recipe, &[]),
        &["app 2.0 depends on libfoo1 (>= 2.0) but only libfoo1 1.2-1 is available"],
    );
}

#[test]
fn excluded_dependency_is_reported() {
    let f = Fixture::new();
    let recipe = f.recipe(
        &f.repo.uri(),
        "include = [\"nginx\"]\nexclude = [\"libfoo1\"]",
        "",
    );
    assert_fails_with(
        &f.lock(&recipe, &[]),
        &["libfoo1 is excluded by the recipe"],
    );
}

#[test]
fn signature_by_an_untrusted_key_is_refused() {
    let f = Fixture::new();
    let other = kiln_testkit::Key::generate("Someone Else");
    let recipe = f.recipe(&f.repo.uri(), "include = [\"nginx\"]", "");
    let text = std::fs::read_to_string(&recipe).unwrap().replace(
        &f.repo.key.keyring.display().to_string(),
        &other.keyring.display().to_string(),
    );
    std::fs::write(&recipe, text).unwrap();
    assert_fails_with(
        &f.lock(&recipe, &[]),
        &[
            "is not signed by a trusted key",
            "not in the keyring",
            "hint:",
        ],
    );
}

#[test]
fn tampered_release_file_is_refused() {
    let f = Fixture::new();
    let inrelease = f.repo.dists(&f.opts).join("InRelease");
    let text = std::fs::read_to_string(&inrelease).unwrap();
    std::fs::write(
        &inrelease,
        text.replace("Label: Kiln Tests", "Label: Kiln Evil"),
    )
    .unwrap();
    let recipe = f.recipe(&f.repo.uri(), "include = [\"nginx\"]", "");
    assert_fails_with(&f.lock(&recipe, &[]), &["BAD (the data was modified)"]);
}

#[test]
fn missing_signature_needs_an_explicit_opt_out() {
    let f = Fixture::with(ReleaseOpts {
        sign: false,
        ..Default::default()
    });
    let recipe = f.recipe(&f.repo.uri(), "include = [\"nginx\"]", "");
    assert_fails_with(
        &f.lock(&recipe, &[]),
        &["neither InRelease nor Release.gpg", "allow-unsigned = true"],
    );
    let recipe = f.recipe(
        &f.repo.uri(),
        "include = [\"nginx\"]",
        "allow-unsigned = true\n",
    );
    let out = f.lock(&recipe, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn detached_release_signature_is_checked() {
    let f = Fixture::with(ReleaseOpts {
        sign: false,
        ..Default::default()
    });
    let dists = f.repo.dists(&f.opts);
    f.repo
        .key
        .detach_sign(&dists.join("Release"), &dists.join("Release.gpg"));
    let recipe = f.recipe(&f.repo.uri(), "include = [\"nginx\"]", "");
    let out = f.lock(&recipe, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn expired_release_is_refused() {
    let f = Fixture::with(ReleaseOpts {
        valid_until: Some("Sun, 02 Nov 2025 12:00:00 UTC".into()),
        ..Default::default()
    });
    let recipe = f.recipe(&f.repo.uri(), "include = [\"nginx\"]", "");
    assert_fails_with(
        &f.lock(&recipe, &[]),
        &[
            "expired on Sun, 02 Nov 2025 12:00:00 UTC",
            "hint: the mirror is stale",
        ],
    );
}

#[test]
fn index_changed_after_signing_is_refused() {
    let f = Fixture::new();
    // Add a package to the index (and its compressed copy) after the Release
    // file was signed: a mirror serving data the signature does not cover.
    let bin = f.repo.dists(&f.opts).join("main/binary-amd64");
    let mut text = std::fs::read_to_string(bin.join("Packages")).unwrap();
    text.push_str("Package: evil\nVersion: 1\nArchitecture: all\nFilename: x\nSHA256: 00\n\n");
    std::fs::write(bin.join("Packages"), &text).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, text.as_bytes()).unwrap();
    std::fs::write(bin.join("Packages.gz"), gz.finish().unwrap()).unwrap();
    let recipe = f.recipe(&f.repo.uri(), "include = [\"evil\"]", "");
    assert_fails_with(
        &f.lock(&recipe, &[]),
        &[
            "hash mismatch for file://",
            "main/binary-amd64/Packages.gz",
            "does not match its signed Release file",
        ],
    );
    assert!(!kiln_recipe::lock_path_for(&recipe).exists());
    let cached = f.cache.path().join("indexes");
    let leftovers: Vec<_> = std::fs::read_dir(&cached)
        .map(|d| d.count())
        .into_iter()
        .collect();
    assert!(
        leftovers.iter().all(|n| *n == 0),
        "nothing unverified is cached: {leftovers:?}"
    );
}

#[test]
fn missing_compressed_index_falls_back_to_another_compression() {
    let f = Fixture::new();
    std::fs::remove_file(f.repo.dists(&f.opts).join("main/binary-amd64/Packages.gz")).unwrap();
    let recipe = f.recipe(&f.repo.uri(), "include = [\"nginx\"]", "");
    let out = f.lock(&recipe, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn compressed_index_hash_mismatch_names_both_hashes() {
    let f = Fixture::new();
    let gz = f.repo.dists(&f.opts).join("main/binary-amd64/Packages.gz");
    let mut bytes = std::fs::read(&gz).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&gz, bytes).unwrap();
    let recipe = f.recipe(&f.repo.uri(), "include = [\"nginx\"]", "");
    assert_fails_with(
        &f.lock(&recipe, &[]),
        &["hash mismatch for", "expected sha256", ", got "],
    );
}

#[test]
fn unreachable_mirror_is_named_with_a_hint() {
    let f = Fixture::new();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let recipe = f.recipe(
        &format!("http://127.0.0.1:{port}/debian"),
        "include = [\"nginx\"]",
        "",
    );
    assert_fails_with(
        &f.lock(&recipe, &[]),
        &[
            &format!("cannot reach http://127.0.0.1:{port}/debian/dists/kiln-test/InRelease"),
            "--offline",
        ],
    );
}

#[test]
fn transient_server_errors_are_retried() {
    let f = Fixture::new();
    let server = HttpServer::serve(f.repo.root());
    server
        .fail_next
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let recipe = f.recipe(&server.url(), "include = [\"nginx\"]", "");
    let out = f.lock(&recipe, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = server.log.lock().unwrap();
    assert_eq!(
        log.iter().filter(|p| p.ends_with("/InRelease")).count(),
        2,
        "{log:?}"
    );
}

#[test]
fn corrupted_cache_entry_is_detected_and_refetched() {
    let f = Fixture::new();
    let recipe = f.recipe(&f.repo.uri(), "include = [\"nginx\"]", "");
    assert!(f.lock(&recipe, &[]).status.success());
    let indexes = f.cache.path().join("indexes");
    let entries: Vec<_> = std::fs::read_dir(&indexes)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1);
    std::fs::write(&entries[0], "Package: garbage\n").unwrap();
    let out = f.lock(&recipe, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is corrupt; fetching it again"),
        "{}",
        stderr(&out)
    );
    let bytes = std::fs::read(&entries[0]).unwrap();
    assert_eq!(
        kiln_testkit::sha256_hex(&bytes),
        entries[0].file_name().unwrap().to_str().unwrap(),
        "the cache entry is whole again"
    );
}

#[test]
fn offline_uses_the_cache_only() {
    let f = Fixture::new();
    let server = HttpServer::serve(f.repo.root());
    let recipe = f.recipe(&server.url(), "include = [\"nginx\"]", "");
    assert_fails_with(
        &f.lock(&recipe, &["--offline"]),
        &[
            "--offline",
            "is not in the cache",
            "kiln lock RECIPE",
            "without --offline",
        ],
    );
    assert!(f.lock(&recipe, &[]).status.success());
    let requests = server.log.lock().unwrap().len();
    let out = f.lock(&recipe, &["--offline"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        server.log.lock().unwrap().len(),
        requests,
        "--offline made no request"
    );
    // The packages are not cached yet: an offline fetch names every one of
    // them at once, and says how to get them.
    let o = f.kiln(&["fetch", recipe.to_str().unwrap(), "--offline"]);
    assert_fails_with(
        &o,
        &[
            "--offline: 4 of the 4 packages are not in the cache:",
            "nginx",
            "libfoo1",
            "nginx-common",
            "base-files",
            "kiln fetch RECIPE",
        ],
    );
    assert_eq!(server.log.lock().unwrap().len(), requests);
}

#[test]
fn recipes_compose_from_classes() {
    let f = Fixture::new();
    let classes = f.work.path().join("classes");
    std::fs::create_dir_all(&classes).unwrap();
    std::fs::write(
        classes.join("base.toml"),
        format!(
            "[image]\nname = \"base\"\nsuite = \"kiln-test\"\ndefault-sources = false\n[packages]\ninclude = [\"nginx\"]\n\
             [[source]]\nuri = \"{}\"\nsuites = [\"kiln-test\"]\nsigned-by = \"{}\"\n",
            f.repo.uri(),
            f.repo.key.keyring.display()
        ),
    )
    .unwrap();
    let recipe = f.work.path().join("web.toml");
    std::fs::write(
        &recipe,
        "include = [\"classes/base.toml\"]\n[image]\nname = \"web\"\n[packages]\ninclude = [\"app\"]\nexclude = []\n",
    )
    .unwrap();
    // app is unsatisfiable: the error proves the lists were appended (nginx + app).
    assert_fails_with(&f.lock(&recipe, &[]), &["app 2.0 depends on libfoo1"]);
    std::fs::write(&recipe, "include = [\"classes/base.toml\"]\n[image]\nname = \"web\"\n[packages]\ninclude = [\"mta-a\"]\n").unwrap();
    let out = f.lock(&recipe, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let n = names(&locked(&recipe));
    assert!(
        n.contains(&"nginx 1.26.0-1".to_string()) && n.contains(&"mta-a 1".to_string()),
        "{n:?}"
    );
    // An include cycle is named.
    std::fs::write(classes.join("base.toml"), "include = [\"../web.toml\"]\n").unwrap();
    assert_fails_with(&f.lock(&recipe, &[]), &["include cycle"]);
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    let f = Fixture::new();
    for args in [
        &["build", "--no-such-flag", "x.toml"][..],
        &["lock"][..],
        &["frobnicate"][..],
        &[][..],
    ] {
        let o = f.kiln(args);
        assert_eq!(o.status.code(), Some(64), "{args:?}: {}", stderr(&o));
    }
    assert_eq!(f.kiln(&["--help"]).status.code(), Some(0));
    assert_eq!(f.kiln(&["--version"]).status.code(), Some(0));
}

#[test]
fn a_full_build_without_root_is_refused_before_any_work() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let f = Fixture::new();
    let recipe = f.recipe(&f.repo.uri(), "include = [\"nginx\"]", "");
    // An ordinary user (without a range in /etc/subuid) who could write the
    // lock, the output and the cache.
    for (p, mode) in [(f.work.path(), 0o777), (f.cache.path(), 0o777)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::set_permissions(&f.repo.key.keyring, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = f.work.path().join("out");
    let mut cmd = kiln_command_with(
        &kiln_binary_for_anyone(),
        f.cache.path(),
        &[
            "build",
            recipe.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
        &[],
    );
    cmd.current_dir(f.work.path());
    // SAFETY: geteuid has no preconditions; in the child only
    // async-signal-safe calls run between fork and exec.
    if unsafe { libc::geteuid() } == 0 {
        unsafe {
            cmd.pre_exec(|| {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(60123) != 0
                    || libc::setuid(60123) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
    }
    let o = cmd.output().unwrap();
    // A uid with no subordinate ids: no user namespace to build in.
    assert_fails_with(
        &o,
        &[
            "needs root privileges",
            "/etc/subuid has no subordinate id range for 60123",
            "distroless",
        ],
    );
    assert!(!out.exists(), "the output directory was made");
    assert!(
        !kiln_recipe::lock_path_for(&recipe).exists(),
        "the lock was written"
    );
    let cached: Vec<_> = walk(f.cache.path());
    assert!(cached.is_empty(), "it downloaded: {cached:?}");
}

#[test]
fn an_output_directory_holds_exactly_one_build() {
    let f = Fixture::new();
    let recipe = f.distroless_recipe();
    let out = f.work.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine\n").unwrap();
    let build = |envs: &[(&str, &str)]| {
        kiln_command(
            f.cache.path(),
            &[
                "build",
                recipe.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
            ],
            envs,
        )
        .current_dir(f.work.path())
        .output()
        .unwrap()
    };
    let leftovers = || -> Vec<String> {
        std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect()
    };
    let o = build(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("rootfs.tar").is_file());
    // The same recipe, now for an OCI image only: the old tarball goes.
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(
        &recipe,
        text.replace("formats = [\"tar\"]", "formats = [\"oci\"]"),
    )
    .unwrap();
    let o = build(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !out.join("rootfs.tar").exists(),
        "the previous build's rootfs.tar stayed"
    );
    assert!(out.join("oci/index.json").is_file());
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine\n"
    );
    assert_eq!(leftovers(), Vec::<String>::new());
    let v = f.kiln(&["verify", out.to_str().unwrap()]);
    assert!(v.status.success(), "{}", stderr(&v));
    // A build that fails half-way leaves the previous one as it was.
    let manifest = std::fs::read(out.join("manifest.json")).unwrap();
    let index = std::fs::read(out.join("oci/index.json")).unwrap();
    let o = build(&[("KILN_UNPACK_LIMIT", "1")]);
    assert!(!o.status.success(), "a 1-byte unpack limit passed");
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), manifest);
    assert_eq!(std::fs::read(out.join("oci/index.json")).unwrap(), index);
    assert_eq!(leftovers(), Vec::<String>::new());
    let v = f.kiln(&["verify", out.to_str().unwrap()]);
    assert!(v.status.success(), "{}", stderr(&v));
}

#[test]
fn relocking_lists_added_removed_and_updated_packages() {
    let f = Fixture::new();
    let recipe = f.recipe(&f.repo.uri(), "include = [\"nginx\"]", "");
    let o = f.lock(&recipe, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("(written)"), "{}", stderr(&o));
    let recipe = f.recipe(&f.repo.uri(), "include = [\"mta-a\"]", "");
    let o = f.lock(&recipe, &[]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("(updated: 1 added, 3 removed)"), "{err}");
    for line in [
        "Added mta-a 1",
        "Removed libfoo1 1.2-1",
        "Removed nginx 1.26.0-1",
        "Removed nginx-common 1.26.0-1",
    ] {
        assert!(
            err.lines().any(|l| l.trim() == line),
            "no line {line:?} in:\n{err}"
        );
    }
    assert!(!err.contains("Removed base-files"), "{err}");
    let o = f.lock(&recipe, &[]);
    assert!(stderr(&o).contains("(unchanged)"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("Added"), "{}", stderr(&o));
}

#[test]
fn a_misspelled_suite_is_named_with_a_suggestion() {
    let f = Fixture::new();
    let recipe = f.recipe(&f.repo.uri(), "include = [\"nginx\"]", "");
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(&recipe, text.replace("kiln-test", "trixy")).unwrap();
    let o = f.lock(&recipe, &[]);
    assert_fails_with(
        &o,
        &[
            "has no suite \"trixy\"",
            "dists/trixy/InRelease",
            "did you mean `trixie`?",
        ],
    );
    assert_ne!(o.status.code(), Some(64));
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn progress_json_gives_one_event_per_line() {
    let f = Fixture::new();
    let recipe = f.recipe(&f.repo.uri(), "include = [\"nginx\"]", "");
    let o = f.kiln(&["--progress", "json", "lock", recipe.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let events: Vec<serde_json::Value> = stderr(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    assert!(events
        .iter()
        .any(|e| e["event"] == "step" && e["stage"] == "index"));
    assert!(events.iter().all(|e| e["event"].is_string()));
}

#[test]
fn a_build_reports_what_it_wrote_with_sizes_on_disk_and_full_digests() {
    let f = Fixture::new();
    let recipe = f.distroless_recipe();
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(
        &recipe,
        text.replace("formats = [\"tar\"]", "formats = [\"oci\", \"tar\"]"),
    )
    .unwrap();
    let out = f.work.path().join("out");
    let o = f.kiln(&[
        "--progress",
        "json",
        "build",
        recipe.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let events: Vec<serde_json::Value> = stderr(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let oci = events
        .iter()
        .find(|e| e["event"] == "artifact" && e["format"] == "oci")
        .expect("an artifact event for the OCI layout");
    // The index is small; the image it names is not.
    let blobs: u64 = std::fs::read_dir(out.join("oci/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(oci["disk-size"].as_u64().unwrap() >= blobs, "{oci}");
    assert!(oci["size"].as_u64().unwrap() < blobs, "{oci}");
    assert_eq!(oci["sha256"].as_str().unwrap().len(), 64, "{oci}");
    let tar = events
        .iter()
        .find(|e| e["event"] == "artifact" && e["format"] == "tar")
        .unwrap();
    assert_eq!(tar["disk-size"], tar["size"]);
    assert!(events
        .iter()
        .any(|e| e["event"] == "download" && e["total-bytes"].is_u64()));
    // The image config carries the OCI labels.
    let blob = |d: &serde_json::Value| -> serde_json::Value {
        json_file(
            &out.join("oci/blobs/sha256")
                .join(d.as_str().unwrap().trim_start_matches("sha256:")),
        )
    };
    let index = json_file(&out.join("oci/index.json"));
    let manifest = blob(&index["manifests"][0]["digest"]);
    let config = blob(&manifest["config"]["digest"]);
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.title"], "test", "{config}");
    assert!(
        labels["org.opencontainers.image.created"]
            .as_str()
            .is_some_and(|c| c.ends_with('Z')),
        "{config}"
    );
    // --json: the manifest on stdout, the same as OUT/manifest.json.
    let j = f.kiln(&[
        "build",
        "--json",
        recipe.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(j.status.success(), "{}", stderr(&j));
    assert_eq!(j.stdout, std::fs::read(out.join("manifest.json")).unwrap());
    assert_eq!(json_of(&j)["schema-version"], 1);
    assert_matches_schema("manifest", &json_of(&j));
    // The schema is strict: a renamed field would not pass.
    let mut renamed = json_of(&j);
    let pk = renamed["packages"].take();
    renamed["package"] = pk;
    let schema = std::panic::catch_unwind(|| assert_matches_schema("manifest", &renamed));
    assert!(
        schema.is_err(),
        "the manifest schema accepted a renamed field"
    );
    // On a terminal: every artifact with its size and whole digest.
    let o = f.kiln(&[
        "build",
        recipe.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    let line = err
        .lines()
        .find(|l| l.contains("Built") && l.contains("/oci ("))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains(&format!("sha256:{}", oci["sha256"].as_str().unwrap())),
        "{line}"
    );
    assert!(
        !line.contains(" B,"),
        "the index size, not the image's: {line}"
    );
}

#[test]
fn push_takes_a_build_directory_docker_credentials_and_several_tags() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    let recipe = f.distroless_recipe();
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(
        &recipe,
        text.replace("formats = [\"tar\"]", "formats = [\"oci\"]"),
    )
    .unwrap();
    let out = f.work.path().join("out");
    let o = f.kiln(&[
        "build",
        recipe.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let local = json_file(&out.join("oci/index.json"))["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let reg = Registry::start(Some(("kiln", "s3cret")));
    let host = format!("127.0.0.1:{}", reg.port);
    let docker = tempfile::tempdir().unwrap();
    let push = |reference: &str, extra: &[&str], path: Option<&str>| {
        let mut args = vec!["push", out.to_str().unwrap(), reference, "--insecure"];
        args.extend_from_slice(extra);
        let mut c = kiln_command(f.cache.path(), &args, &[]);
        c.env("DOCKER_CONFIG", docker.path())
            .env_remove("KILN_REGISTRY_USER")
            .env_remove("KILN_REGISTRY_PASSWORD");
        if let Some(p) = path {
            c.env("PATH", p);
        }
        c.output().unwrap()
    };
    let inspect = |tag: &str| -> Option<String> {
        let o = std::process::Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--creds", "kiln:s3cret"])
            .arg(format!("docker://{host}/team/img:{tag}"))
            .output()
            .expect("skopeo is installed");
        o.status
            .success()
            .then(|| json_of(&o)["Digest"].as_str().unwrap().to_string())
    };
    // No credentials anywhere: refused by the registry.
    let o = push(&format!("{host}/team/img"), &[], None);
    assert!(!o.status.success(), "pushed without credentials");
    // What `docker login` writes: the build directory is enough, and with no
    // tag given the layout's own (latest) plus --tag are pushed.
    let auth = std::process::Command::new("sh")
        .args(["-c", "printf kiln:s3cret | base64"])
        .output()
        .unwrap();
    let auth = String::from_utf8(auth.stdout).unwrap();
    std::fs::write(
        docker.path().join("config.json"),
        format!(
            "{{\"auths\": {{\"{host}\": {{\"auth\": \"{}\"}}}}}}",
            auth.trim()
        ),
    )
    .unwrap();
    let o = push(&format!("{host}/team/img"), &["--tag", "extra"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), local);
    for tag in ["latest", "extra"] {
        assert!(
            stderr(&o).contains(&format!("{host}/team/img:{tag}")),
            "{}",
            stderr(&o)
        );
        assert_eq!(inspect(tag).as_deref(), Some(local.as_str()), "{tag}");
    }
    // A credential helper named for the registry.
    let bin = docker.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let helper = bin.join("docker-credential-kilntest");
    std::fs::write(
        &helper,
        format!("#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread h\n[ \"$h\" = \"{host}\" ] || exit 1\necho '{{\"Username\":\"kiln\",\"Secret\":\"s3cret\"}}'\n"),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        docker.path().join("config.json"),
        format!("{{\"credHelpers\": {{\"{host}\": \"kilntest\"}}}}"),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let o = push(&format!("{host}/team/img:v1"), &["--json"], Some(&path));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(inspect("v1").as_deref(), Some(local.as_str()));
    let j = json_of(&o);
    assert_eq!(j["schema-version"], 1);
    assert_eq!(j["digest"], local.as_str());
    assert_eq!(j["pushed"][0]["reference"], format!("{host}/team/img:v1"));
    assert_matches_schema("push", &j);
    // A broken config.json is named, not skipped.
    std::fs::write(docker.path().join("config.json"), "{not json").unwrap();
    let o = push(&format!("{host}/team/img:v2"), &[], None);
    assert_fails_with(&o, &["config.json: not JSON", "docker login"]);
}

#[test]
fn quiet_verbose_and_color_do_what_they_say() {
    let f = Fixture::new();
    let recipe = f.recipe(&f.repo.uri(), "include = [\"nginx\"]", "");
    let r = recipe.to_str().unwrap();
    let q = f.kiln(&["-q", "lock", r]);
    assert!(q.status.success());
    assert_eq!(stderr(&q), "", "-q printed something");
    let v = f.kiln(&["-v", "lock", r]);
    assert!(
        stderr(&v).lines().any(|l| l.starts_with("timing: ")),
        "{}",
        stderr(&v)
    );
    let c = f.kiln(&["--color", "always", "lock", r]);
    assert!(stderr(&c).contains("\x1b[1;32m"), "{}", stderr(&c));
    let n = f.kiln(&["--color", "never", "lock", r]);
    assert!(!stderr(&n).contains('\x1b'));
    // Errors are still printed under -q.
    let e = f.kiln(&["-q", "lock", "missing.toml"]);
    assert!(stderr(&e).contains("error:"), "{}", stderr(&e));
    assert_eq!(f.kiln(&["-q", "-v", "lock", r]).status.code(), Some(64));
}

#[test]
fn init_completion_and_man_come_from_the_command_definitions() {
    let f = Fixture::new();
    let cloud = f.work.path().join("web.toml");
    let o = f.kiln(&["init", cloud.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = kiln_recipe::Recipe::load(&cloud).unwrap();
    assert_eq!(r.image.name, "web");
    assert!(r.output.formats.contains(&"disk".to_string()));
    assert!(!r.tests.is_empty());
    let o = f.kiln(&["init", cloud.to_str().unwrap()]);
    assert_fails_with(&o, &["already exists"]);
    let app = f.work.path().join("app.toml");
    assert!(f
        .kiln(&["init", "--distroless", app.to_str().unwrap()])
        .status
        .success());
    assert!(
        kiln_recipe::Recipe::load(&app)
            .unwrap()
            .container
            .distroless
    );
    let bash = f.kiln(&["completion", "bash"]);
    let text = String::from_utf8_lossy(&bash.stdout);
    assert!(
        text.contains("_kiln()") && text.contains("--source-date-epoch"),
        "{text}"
    );
    let man = f.kiln(&["man"]);
    let text = String::from_utf8_lossy(&man.stdout);
    for page in [".TH kiln 1", ".TH kiln-build 1", ".TH kiln-push 1"] {
        assert!(text.contains(page), "no {page}");
    }
}

#[test]
fn ls_lists_packages_files_and_owners_of_a_tarball_and_an_oci_image() {
    let f = Fixture::new();
    let recipe = f.distroless_recipe();
    let text = std::fs::read_to_string(&recipe).unwrap();
    for formats in ["[\"tar\"]", "[\"oci\"]"] {
        std::fs::write(
            &recipe,
            text.replace("formats = [\"tar\"]", &format!("formats = {formats}")),
        )
        .unwrap();
        let out = f.work.path().join("out");
        let o = f.kiln(&[
            "build",
            recipe.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let d = out.to_str().unwrap();
        let pkgs = json_of(&f.kiln(&["ls", d, "--json"]));
        let names: Vec<&str> = pkgs
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            ["base-files", "libfoo1", "nginx", "nginx-common"],
            "{formats}"
        );
        let sizes: Vec<u64> = pkgs
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["installed-size"].as_u64().unwrap())
            .collect();
        assert!(
            sizes.windows(2).all(|w| w[0] >= w[1]),
            "biggest first: {sizes:?}"
        );
        let files = json_of(&f.kiln(&["ls", d, "--files", "--json"]));
        let paths: Vec<&str> = files
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["path"].as_str().unwrap())
            .collect();
        assert!(
            paths.contains(&"/etc/debian_version"),
            "{formats}: {paths:?}"
        );
        assert!(paths.contains(&"/etc/passwd"), "{formats}: {paths:?}");
        // (These fixture packages ship no md5sums, so distroless status.d
        // lists no files; the real-archive oci_real test names owners.)
        // Kiln made /etc/passwd: no package owns it.
        assert_fails_with(
            &f.kiln(&["ls", d, "--owner", "/etc/passwd"]),
            &["no package of", "owns /etc/passwd"],
        );
    }
}

/// The lock's bytes, for "unchanged" checks.
fn lock_bytes(recipe: &Path) -> Vec<u8> {
    std::fs::read(kiln_recipe::lock_path_for(recipe)).unwrap()
}

#[test]
fn release_signed_only_by_an_expired_key_is_refused() {
    // gpgv says "Good signature" (EXPKEYSIG + VALIDSIG, exit 0) for this one.
    let key = Key::generate_with(
        "Old Archive",
        &KeyOpts {
            expired: true,
            ..Default::default()
        },
    );
    let fpr = key.fingerprints().remove(0);
    let f = Fixture::signed_by(ReleaseOpts::default(), key);
    let recipe = f.recipe(&f.repo.uri(), "include = [\"nginx\"]", "");
    let needles = [
        "has no valid signature by a key of",
        &format!("signed by key {fpr} (Old Archive <old-archive@kiln.invalid>), which expired on 2024-01-02T00:00:00Z"),
        "hint: a signing key in",
        "has expired or was revoked",
    ];
    assert_fails_with(&f.lock(&recipe, &[]), &needles);
    assert!(!kiln_recipe::lock_path_for(&recipe).exists());
    // The same through a detached Release.gpg.
    let dists = f.repo.dists(&f.opts);
    std::fs::remove_file(dists.join("InRelease")).unwrap();
    f.repo
        .key
        .detach_sign(&dists.join("Release"), &dists.join("Release.gpg"));
    assert_fails_with(&f.lock(&recipe, &[]), &needles);
}

#[test]
fn release_signed_by_a_revoked_key_is_refused() {
    let f = Fixture::new();
    let recipe = f.recipe(&f.repo.uri(), "include = [\"nginx\"]", "");
    assert!(f.lock(&recipe, &[]).status.success());
    let before = lock_bytes(&recipe);
    // The archive revokes its key; the keyring the recipe trusts has the
    // revocation, the mirror still serves the Release file it signed.
    f.repo.key.revoke();
    let fpr = f.repo.key.fingerprints().remove(0);
    assert_fails_with(
        &f.lock(&recipe, &[]),
        &[
            &format!("signed by key {fpr} (Kiln Test Archive <kiln-test-archive@kiln.invalid>), which is revoked"),
            "hint: a signing key in",
        ],
    );
    assert_eq!(lock_bytes(&recipe), before, "the lock is left alone");
}

#[test]
fn release_signed_with_a_sha1_digest_is_refused() {
    let mut f = Fixture::new();
    // gpg 2.2 still makes SHA1 signatures when asked (and gpgv accepts them).
    f.repo.key.digest_algo = "SHA1".into();
    f.repo.write_release("amd64", &f.opts);
    let recipe = f.recipe(&f.repo.uri(), "include = [\"nginx\"]", "");
    assert_fails_with(
        &f.lock(&recipe, &[]),
        &[
            "uses the weak digest algorithm SHA1",
            "hint: the repository is signed with a digest apt refuses",
        ],
    );
    // The digest was the only problem.
    f.repo.key.digest_algo = "SHA512".into();
    f.repo.write_release("amd64", &f.opts);
    let out = f.lock(&recipe, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn one_valid_signature_beside_an_expired_one_is_enough() {
    // An archive rotating keys: the old key (expired) and the new one both sign.
    let mut key = Key::generate_with(
        "Old Archive",
        &KeyOpts {
            expired: true,
            ..Default::default()
        },
    );
    key.add_signer(
        "New Archive",
        &KeyOpts {
            backdated: true,
            ..Default::default()
        },
    );
    let f = Fixture::signed_by(ReleaseOpts::default(), key);
    // The fixture is what it claims: one signature by an expired key, one good.
    let gpgv = std::process::Command::new("gpgv")
        .arg("--status-fd")
        .arg("1")
        .arg("--keyring")
        .arg(&f.repo.key.keyring)
        .arg(f.repo.dists(&f.opts).join("InRelease"))
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&gpgv.stdout);
    assert_eq!(status.matches("[GNUPG:] NEWSIG").count(), 2, "{status}");
    assert!(status.contains("[GNUPG:] EXPKEYSIG "), "{status}");
    assert!(status.contains("[GNUPG:] GOODSIG "), "{status}");
    let recipe = f.recipe(&f.repo.uri(), "include = [\"nginx\"]", "");
    let out = f.lock(&recipe, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn relocking_against_an_older_release_is_refused_unless_allowed() {
    let mut f = Fixture::new();
    let recipe = f.recipe(&f.repo.uri(), "include = [\"nginx\"]", "");
    assert!(f.lock(&recipe, &[]).status.success());
    let lock_path = kiln_recipe::lock_path_for(&recipe);
    let before = lock_bytes(&recipe);
    // The mirror replays an older (genuinely signed) Release file.
    let newer = f.opts.date.clone();
    f.opts.date = "Sat, 25 Oct 2025 12:00:00 UTC".into();
    f.repo.write_release("amd64", &f.opts);
    let both = [
        "is dated Sat, 25 Oct 2025 12:00:00 UTC, older than the Release file dated Sat, 01 Nov 2025 12:00:00 UTC",
        "hint: the mirror may be behind",
        "--allow-older-release",
    ];
    assert_fails_with(&f.lock(&recipe, &[]), &both);
    assert_eq!(lock_bytes(&recipe), before, "the lock is unchanged");
    // The lock alone is a floor (a fresh cache)...
    let fresh = tempfile::tempdir().unwrap();
    let out = f.lock(&recipe, &["--cache-dir", fresh.path().to_str().unwrap()]);
    assert_fails_with(&out, &both);
    assert_fails_with(&out, &[&format!("recorded in {}", lock_path.display())]);
    assert_eq!(lock_bytes(&recipe), before);
    // ...and so is the cache alone (no lock yet).
    std::fs::remove_file(&lock_path).unwrap();
    assert_fails_with(&f.lock(&recipe, &[]), &[both[0], "already in the cache ("]);
    assert!(!lock_path.exists());
    std::fs::write(&lock_path, &before).unwrap();
    // An intended rollback is accepted, and recorded.
    let out = f.lock(&recipe, &["--allow-older-release"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lock = locked(&recipe);
    let rel = &lock["release"].as_array().unwrap()[0];
    assert_eq!(rel["date"].as_str(), Some(f.opts.date.as_str()));
    assert_ne!(f.opts.date, newer);
    // From then on the older Release file is the floor, and it is met.
    let out = f.lock(&recipe, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // build and fetch take the flag too.
    for cmd in ["build", "fetch"] {
        let help = f.kiln(&[cmd, "--help"]);
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("--allow-older-release"),
            "kiln {cmd} --help"
        );
    }
}

#[test]
fn release_dated_in_the_future_is_refused() {
    let now = kiln_archive::now();
    // Within the allowed clock skew (10 minutes): accepted.
    let mut f = Fixture::with(ReleaseOpts {
        date: kiln_archive::date::format_rfc2822(now + 5 * 60),
        ..Default::default()
    });
    let recipe = f.recipe(&f.repo.uri(), "include = [\"nginx\"]", "");
    let out = f.lock(&recipe, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = lock_bytes(&recipe);
    // Two days ahead: refused, whatever the signature says.
    f.opts.date = kiln_archive::date::format_rfc2822(now + 2 * 86400);
    f.repo.write_release("amd64", &f.opts);
    assert_fails_with(
        &f.lock(&recipe, &[]),
        &[
            &format!("is dated {}, in the future (the time here is ", f.opts.date),
            "at most 10 minutes of clock skew",
            "hint: check this machine's clock",
        ],
    );
    assert_eq!(lock_bytes(&recipe), before);
    // --allow-older-release is no way around it.
    assert_fails_with(
        &f.lock(&recipe, &["--allow-older-release"]),
        &["in the future"],
    );
}

// A hand-edited lock is not trusted: `kiln lock --check`, `kiln build
// --locked` and `kiln verify` prove every locked package against the signed
// indexes of the Release files the lock records.

/// Rewrites the lock of `recipe` with `edit` applied to its TOML.
fn edit_lock(recipe: &Path, edit: impl FnOnce(&mut toml::Table)) {
    let path = kiln_recipe::lock_path_for(recipe);
    let mut lock: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut lock);
    std::fs::write(&path, toml::to_string(&lock).unwrap()).unwrap();
}

/// The `[[package]]` table named `name`.
fn package<'a>(lock: &'a mut toml::Table, name: &str) -> &'a mut toml::Table {
    lock["package"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .map(|p| p.as_table_mut().unwrap())
        .find(|p| p["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in the lock"))
}

impl Fixture {
    /// Locks the distroless recipe and builds it into `out`: the earlier,
    /// honest build that `verify` is later run on.
    fn locked_build(&self) -> (PathBuf, PathBuf) {
        let recipe = self.distroless_recipe();
        let o = self.lock(&recipe, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = self.work.path().join("out");
        let o = self.build(&recipe, &out, &["--locked"]);
        assert!(o.status.success(), "{}", stderr(&o));
        (recipe, out)
    }

    fn build(&self, recipe: &Path, out: &Path, extra: &[&str]) -> Output {
        let mut args = vec![
            "build",
            recipe.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.kiln(&args)
    }

    fn verify(&self, out: &Path, extra: &[&str]) -> Output {
        let mut args = vec!["verify", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.kiln(&args)
    }

    /// `lock --check`, `build --locked` (into a new directory) and `verify`
    /// of the earlier build all fail, each with every one of `needles`.
    #[track_caller]
    fn assert_every_check_fails(&self, recipe: &Path, out: &Path, needles: &[&str]) {
        assert_fails_with(&self.lock(recipe, &["--check"]), needles);
        let again = self.work.path().join("again");
        assert_fails_with(&self.build(recipe, &again, &["--locked"]), needles);
        assert!(
            !again.join("rootfs.tar").exists() && !again.join("manifest.json").exists(),
            "nothing is built from an unproven lock"
        );
        assert_fails_with(&self.verify(out, &[]), needles);
    }
}

#[test]
fn an_untouched_lock_passes_every_check_offline() {
    let f = Fixture::new();
    let (recipe, out) = f.locked_build();
    let o = f.lock(&recipe, &["--check", "--offline"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // nginx, libfoo1, nginx-common, and base-files, which a distroless
    // image always gets where the archive has it (its os-release).
    assert!(
        stderr(&o).contains("its 4 packages are in the signed indexes of its 1 Release files"),
        "{}",
        stderr(&o)
    );
    let o = f.build(
        &recipe,
        &f.work.path().join("again"),
        &["--locked", "--offline"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = f.verify(&out, &["--offline", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json_of(&o)["lock-proven"], true);
    // A cache filled before Release files were kept by sha256 still proves
    // the lock with the suite's last Release file.
    std::fs::remove_dir_all(f.cache.path().join("releases/by-sha256")).unwrap();
    let o = f.lock(&recipe, &["--check", "--offline"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_lock_stays_provable_after_the_suite_moves_on() {
    let mut f = Fixture::new();
    let (recipe, _) = f.locked_build();
    // The archive publishes a new Release (a new package, a new date) and
    // locking another recipe replaces the suite's last Release in the cache.
    let mut pkgs = packages();
    pkgs.push(Pkg::new("newcomer", "1"));
    let opts = ReleaseOpts {
        date: "Sun, 02 Nov 2025 12:00:00 UTC".into(),
        ..f.opts.clone()
    };
    f.repo.write(&pkgs, "amd64", &opts);
    let other = f.work.path().join("other.toml");
    std::fs::write(
        &other,
        std::fs::read_to_string(&recipe)
            .unwrap()
            .replace("name = \"test\"", "name = \"other\""),
    )
    .unwrap();
    let o = f.lock(&other, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(locked(&other)["release"][0]["date"]
        .as_str()
        .unwrap()
        .starts_with("Sun, 02 Nov"));
    // The first lock names the old Release file, kept in the cache by sha256.
    let o = f.lock(&recipe, &["--check", "--offline"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Without that copy it cannot be proven any more: the repository serves
    // another Release file now.
    std::fs::remove_dir_all(f.cache.path().join("releases/by-sha256")).unwrap();
    assert_fails_with(
        &f.lock(&recipe, &["--check"]),
        &[
            "no signed Release file of the lock's release `kiln-test`",
            "the repository now serves",
            "hint: the lock was edited or damaged, or the suite has moved on",
        ],
    );
}

#[test]
fn a_lock_pointing_at_a_deb_in_no_signed_index_fails_every_check() {
    let f = Fixture::new();
    let (recipe, out) = f.locked_build();
    // Another nginx, of the same name and version, put in the repository's
    // pool but in no index.
    let evil = kiln_testkit::build_deb(
        &Pkg::new("nginx", "1.26.0-1")
            .arch("amd64")
            .executable("/usr/sbin/nginx", b"#!/bin/sh\necho owned\n"),
        &f.repo.root().join("pool/main/n/nginx-evil"),
    );
    let bytes = std::fs::read(&evil).unwrap();
    let sha = kiln_testkit::sha256_hex(&bytes);
    edit_lock(&recipe, |l| {
        let p = package(l, "nginx");
        p["filename"] = "pool/main/n/nginx-evil/nginx_1.26.0-1_amd64.deb".into();
        p["size"] = (bytes.len() as i64).into();
        p["sha256"] = sha.clone().into();
    });
    // The recipe hash covers the recipe, not the packages: the edited lock
    // still "matches its recipe".
    f.assert_every_check_fails(
        &recipe,
        &out,
        &[
            "the lock's package `nginx` 1.26.0-1 (amd64) does not match the signed index of kiln-test",
            "filename: the lock says pool/main/n/nginx-evil/nginx_1.26.0-1_amd64.deb, the signed index says pool/main/n/nginx/nginx_1.26.0-1_amd64.deb",
            &format!("sha256: the lock says {sha}, the signed index says"),
            "size: the lock says",
            "hint: the lock was edited or damaged: run `kiln lock",
        ],
    );
    let cached = f.cache.path().join("debs").join(&sha[..2]).join(&sha);
    assert!(!cached.exists(), "the unlisted .deb was never downloaded");
}

#[test]
fn a_lock_with_a_changed_version_fails_every_check() {
    let f = Fixture::new();
    let (recipe, out) = f.locked_build();
    edit_lock(&recipe, |l| {
        package(l, "libfoo1")["version"] = "1.3-1".into();
    });
    f.assert_every_check_fails(
        &recipe,
        &out,
        &[
            "the lock's package `libfoo1` (amd64) does not match the signed index of kiln-test",
            "version: the lock says 1.3-1, the signed index says 1.2-1",
            "hint: the lock was edited or damaged",
        ],
    );
    // A package no index has at all is named as such.
    edit_lock(&recipe, |l| {
        let p = package(l, "libfoo1");
        p["version"] = "1.2-1".into();
        p["name"] = "libevil1".into();
    });
    assert_fails_with(
        &f.lock(&recipe, &["--check", "--offline"]),
        &[
            "no signed index of kiln-test",
            "has the lock's package `libevil1` 1.2-1 (amd64)",
        ],
    );
}

#[test]
fn a_lock_with_a_changed_release_fails_every_check() {
    let f = Fixture::new();
    let (recipe, out) = f.locked_build();
    let good = std::fs::read_to_string(kiln_recipe::lock_path_for(&recipe)).unwrap();
    let forged = "0".repeat(64);
    edit_lock(&recipe, |l| {
        l["release"][0].as_table_mut().unwrap()["sha256"] = forged.clone().into();
    });
    f.assert_every_check_fails(
        &recipe,
        &out,
        &[
            "the lock's release `kiln-test` (file://",
            &format!("has the sha256 {forged} it records"),
        ],
    );
    assert_fails_with(
        &f.lock(&recipe, &["--check", "--offline"]),
        &[
            "--offline: no cached Release file of the lock's release `kiln-test`",
            "hint: run without --offline to fetch it",
        ],
    );
    // Nothing outside the cache is read for a sha256 that is not one.
    edit_lock(&recipe, |l| {
        l["release"][0].as_table_mut().unwrap()["sha256"] = "../../../etc".into();
    });
    assert_fails_with(
        &f.lock(&recipe, &["--check", "--offline"]),
        &["no cached Release file of the lock's release `kiln-test`"],
    );
    // The release date (it gives SOURCE_DATE_EPOCH) is the signed one.
    std::fs::write(kiln_recipe::lock_path_for(&recipe), &good).unwrap();
    edit_lock(&recipe, |l| {
        l["release"][0].as_table_mut().unwrap()["date"] = "Mon, 01 Jan 2024 00:00:00 UTC".into();
    });
    f.assert_every_check_fails(
        &recipe,
        &out,
        &[
            "the lock's release `kiln-test`",
            "date: the lock says Mon, 01 Jan 2024 00:00:00 UTC, the signed Release file says Sat, 01 Nov 2025 12:00:00 UTC",
        ],
    );
}

#[test]
fn closed_pipes_are_not_a_crash() {
    let f = Fixture::new();
    let recipe = f.recipe(&f.repo.uri(), "include = [\"nginx\"]", "");
    // Both pipes closed before kiln writes anything: no panic (exit 101).
    let mut child = kiln_command(
        f.cache.path(),
        &["lock", "--json", recipe.to_str().unwrap()],
        &[],
    )
    .current_dir(f.work.path())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
    // And the error path: a missing recipe with stderr closed still exits 1.
    let mut child = kiln_command(f.cache.path(), &["lock", "missing.toml"], &[])
        .current_dir(f.work.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    assert_eq!(child.wait().unwrap().code(), Some(1));
}

#[test]
fn an_index_longer_than_its_release_says_is_stopped_at_that_size() {
    let f = Fixture::new();
    let server = HttpServer::serve(f.repo.root());
    let gz = f.repo.dists(&f.opts).join("main/binary-amd64/Packages.gz");
    let mut bytes = std::fs::read(&gz).unwrap();
    bytes.extend(std::iter::repeat_n(0u8, 4 << 20));
    std::fs::write(&gz, bytes).unwrap();
    let recipe = f.recipe(&server.url(), "include = [\"nginx\"]", "");
    assert_fails_with(
        &f.lock(&recipe, &[]),
        &[
            "sent more than",
            "this index (by its Release file)",
            "download stopped",
            "hint:",
        ],
    );
}

#[test]
fn an_endless_release_file_is_not_read_to_the_end() {
    let f = Fixture::new();
    let inrelease = f.repo.dists(&f.opts).join("InRelease");
    let mut text = std::fs::read(&inrelease).unwrap();
    text.extend(std::iter::repeat_n(b'#', 20 << 20));
    std::fs::write(&inrelease, text).unwrap();
    let recipe = f.recipe(&f.repo.uri(), "include = [\"nginx\"]", "");
    assert_fails_with(
        &f.lock(&recipe, &[]),
        &["more than 16777216 bytes", "a Release file"],
    );
}

#[test]
fn show_names_the_file_of_each_value_and_plans_without_writing_the_lock() {
    let f = Fixture::new();
    let recipe = f.recipe(&f.repo.uri(), "include = [\"nginx\"]", "");
    // A class below the recipe sets the formats.
    std::fs::write(
        f.work.path().join("class.toml"),
        "[output]\nformats = [\"tar\", \"oci\"]\n[packages]\ninclude = [\"libfoo1\"]\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(&recipe, format!("include = [\"class.toml\"]\n{text}")).unwrap();
    let lock = kiln_recipe::lock_path_for(&recipe);

    let out = f.kiln(&["show", recipe.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!lock.exists(), "show wrote the lock");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_matches_schema("show", &v);
    let from = |key: &str, value: &str| {
        v["settings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == key && s["value"] == value)
            .map(|s| {
                let file = s["file"].as_str().unwrap();
                Path::new(file)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
    };
    assert_eq!(
        from("packages.include", "\"libfoo1\"").as_deref(),
        Some("class.toml")
    );
    assert_eq!(
        from("packages.include", "\"nginx\"").as_deref(),
        Some("image.toml")
    );
    assert_eq!(
        from("output.formats", "\"oci\"").as_deref(),
        Some("class.toml")
    );
    assert_eq!(
        from("image.suite", "\"kiln-test\"").as_deref(),
        Some("image.toml")
    );
    assert_eq!(v["lock"]["state"], "missing");
    let amd64 = &v["plan"]["architectures"][0];
    assert_eq!(amd64["packages"], 4, "{amd64}");
    let debs: u64 = ["base-files", "libfoo1", "nginx", "nginx-common"]
        .iter()
        .map(|n| std::fs::metadata(&f.repo.debs[*n]).unwrap().len())
        .sum();
    assert_eq!(amd64["download-size"], debs);
    assert_eq!(
        v["outputs"],
        serde_json::json!([
            "rootfs.tar",
            "oci/",
            "manifest.json",
            "sbom.spdx.json",
            "sbom.cdx.json",
            "provenance.json"
        ])
    );

    // With the lock written, the plan reads it; the human form says where
    // each value came from.
    assert!(f.lock(&recipe, &[]).status.success());
    let out = f.kiln(&["show", recipe.to_str().unwrap(), "--offline"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("lock: ") && text.contains("up to date"),
        "{text}"
    );
    assert!(text.contains("amd64: 4 packages"), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("\"libfoo1\""))
        .unwrap_or_default();
    assert!(line.contains("# class.toml:4"), "{text}");

    // A changed input is named; --no-resolve does not touch the network.
    std::fs::write(
        &recipe,
        std::fs::read_to_string(&recipe)
            .unwrap()
            .replace("include = [\"nginx\"]", "include = [\"nginx\", \"app\"]"),
    )
    .unwrap();
    let out = f.kiln(&["show", recipe.to_str().unwrap(), "--no-resolve"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("out of date") && text.contains("include"),
        "{text}"
    );
    assert!(!text.contains("amd64: "), "{text}");
}

/// A tarball member or link that points out of the image is refused by
/// `kiln shell`, which unpacks the image as it unpacks a package: nothing
/// lands outside its throwaway copy, and the copy is removed.
#[test]
fn shell_refuses_an_image_whose_members_lead_out_of_it() {
    let work = tempfile::tempdir().unwrap();
    let tmp = work.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    // What each is refused for: `..` at once; a file through a link lands
    // inside the copy (links resolve within it), which has no /usr/bin/env.
    let inside = "has no /usr/bin/env";
    type Members = &'static [(&'static str, Option<&'static str>)];
    let cases: [(&str, Members, &str); 3] = [
        (
            "dotdot",
            &[("../../../escaped", None)],
            "unsafe path in package: ../../../escaped",
        ),
        // A link to / and then a file through it.
        ("link", &[("etc", Some("/")), ("etc/escaped", None)], inside),
        (
            "up-link",
            &[("up", Some("../../..")), ("up/escaped", None)],
            inside,
        ),
    ];
    for (name, members, why) in cases {
        let path = work.path().join(format!("{name}.tar"));
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        for (m, link) in members {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_mtime(0);
            match link {
                Some(t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    // Raw names: the builder itself refuses `..`.
                    h.as_old_mut().name[..m.len()].copy_from_slice(m.as_bytes());
                    h.set_link_name(t).unwrap();
                    h.set_cksum();
                    b.append(&h, std::io::empty()).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(4);
                    h.as_old_mut().name[..m.len()].copy_from_slice(m.as_bytes());
                    h.set_cksum();
                    b.append(&h, &b"evil"[..]).unwrap();
                }
            }
        }
        b.finish().unwrap();
        drop(b);
        let o = kiln_command(
            work.path(),
            &["shell", path.to_str().unwrap(), "--", "true"],
            &[],
        )
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
        assert!(!o.status.success(), "{name}: kiln shell accepted it");
        let err = stderr(&o);
        if unsafe { libc::geteuid() } != 0 {
            assert!(err.contains("needs root"), "{name}: {err}");
            continue;
        }
        assert!(err.contains(why), "{name}: {err}");
        assert_ne!(o.status.code(), Some(64), "{name}: {err}");
        for dir in [work.path().to_path_buf(), tmp.clone(), PathBuf::from("/")] {
            assert!(
                !dir.join("escaped").exists(),
                "{name}: wrote {}",
                dir.display()
            );
        }
        assert_eq!(
            std::fs::read_dir(&tmp).unwrap().count(),
            0,
            "{name}: the scratch copy was left in {}",
            tmp.display()
        );
    }
}

#[test]
fn the_published_json_schemas_are_valid_and_versioned() {
    let dir = workspace().join("docs/schemas");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let o = std::process::Command::new("python3")
            .args([
                "-c",
                "import json, sys, jsonschema\ns = json.load(open(sys.argv[1]))\njsonschema.Draft202012Validator.check_schema(s)\nprops = s['properties']\nassert 'schema-version' in props or 'schema' in props, 'no version field'\n",
            ])
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}: {}",
            p.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        n += 1;
    }
    assert!(n >= 3, "{n} schemas");
}

/// Every build is recorded in the catalog; `kiln find` answers from it,
/// and `kiln catalog import` rebuilds the same answers from the outputs.
#[test]
fn builds_are_recorded_and_found_by_package_version() {
    let f = Fixture::new();
    let recipe = f.distroless_recipe();
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(
        &recipe,
        text.replace("formats = [\"tar\"]", "formats = [\"oci\"]"),
    )
    .unwrap();
    let out = f.work.path().join("out");
    let o = f.build(&recipe, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let manifest = json_file(&out.join("manifest.json"));
    let oci = manifest["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["format"] == "oci")
        .unwrap()["sha256"]
        .clone();
    let find = |catalog: &Path, args: &[&str]| {
        let mut all = vec!["find", "--json"];
        all.extend_from_slice(args);
        let o = kiln_command(
            f.cache.path(),
            &all,
            &[("KILN_CATALOG", catalog.to_str().unwrap())],
        )
        .output()
        .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        json_of(&o)
    };
    let catalog = f.cache.path().join("catalog.sqlite");
    let j = find(&catalog, &["--package", "nginx>=1.26"]);
    assert_eq!(j["schema-version"], 1);
    assert_matches_schema("find", &j);
    let images = j["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "{j}");
    assert_eq!(images[0]["image"], "test");
    assert_eq!(images[0]["packages"][0]["version"], "1.26.0-1");
    let art = images[0]["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "oci")
        .unwrap();
    assert_eq!(art["sha256"], oci);
    assert_eq!(
        Path::new(images[0]["location"].as_str().unwrap()),
        out.canonicalize().unwrap()
    );
    // The SBOMs and provenance are recorded by digest.
    let spdx = std::fs::read(out.join("sbom.spdx.json")).unwrap();
    assert!(images[0]["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["kind"] == "spdx" && a["sha256"] == kiln_testkit::sha256_hex(&spdx)));
    // Versions compare in dpkg's order; other filters narrow.
    assert!(find(&catalog, &["--package", "nginx<<1.26.0-1"])["images"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(find(&catalog, &["--format", "tar"])["images"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(
        find(&catalog, &["--suite", "kiln-test"])["images"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A rebuilt catalog gives the same answer.
    let fresh = f.work.path().join("fresh.sqlite");
    let o = kiln_command(
        f.cache.path(),
        &["catalog", "import", f.work.path().to_str().unwrap()],
        &[("KILN_CATALOG", fresh.to_str().unwrap())],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 new build"), "{}", stderr(&o));
    let again = find(&fresh, &["--package", "nginx>=1.26"]);
    assert_eq!(
        again["images"][0]["manifest-sha256"],
        images[0]["manifest-sha256"]
    );

    // A malformed query is a usage error; a corrupt catalog is named and kept.
    let o = f.kiln(&["find", "--package", "nginx<1"]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    std::fs::write(&fresh, b"garbage").unwrap();
    let o = kiln_command(
        f.cache.path(),
        &["find"],
        &[("KILN_CATALOG", fresh.to_str().unwrap())],
    )
    .output()
    .unwrap();
    assert_fails_with(&o, &["not a Kiln catalog", "left as it is"]);
    assert_eq!(std::fs::read(&fresh).unwrap(), b"garbage");
    // A build with a catalog it cannot use still succeeds, and says so.
    let o = kiln_command(
        f.cache.path(),
        &[
            "build",
            recipe.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
        &[("KILN_CATALOG", fresh.to_str().unwrap())],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the build is not in the catalog"),
        "{}",
        stderr(&o)
    );
}

/// A distroless fixture build with a tarball and an OCI image, at `out`.
fn tar_and_oci_build(f: &Fixture, out: &Path, version: &str) {
    let recipe = f.distroless_recipe();
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(
        &recipe,
        text.replace("formats = [\"tar\"]", "formats = [\"tar\", \"oci\"]")
            .replacen(
                "[image]\n",
                &format!("[image]\nversion = \"{version}\"\n"),
                1,
            ),
    )
    .unwrap();
    let o = f.build(&recipe, out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `kiln publish --to file://…` writes a signed tree a client can check:
/// publishing again changes nothing, `kiln verify` catches changed files,
/// replayed documents and other keys, and `kiln find` knows where it went.
#[test]
fn publish_to_a_tree_is_signed_idempotent_and_verified() {
    let f = Fixture::new();
    let one = f.work.path().join("one");
    tar_and_oci_build(&f, &one, "1");
    let (pem, public) = ed25519_pair(f.work.path(), "signer");
    let tree = f.work.path().join("tree");
    let to = format!("file://{}", tree.display());
    let state = f.work.path().join("state");
    let run = |args: &[&str]| {
        kiln_command(
            f.cache.path(),
            args,
            &[("XDG_STATE_HOME", state.to_str().unwrap())],
        )
        .output()
        .unwrap()
    };
    let publish = |dir: &Path, key: &Path| {
        run(&[
            "publish",
            dir.to_str().unwrap(),
            "--to",
            &to,
            "--sign-key",
            key.to_str().unwrap(),
            "--json",
        ])
    };
    let verify = |extra: &[&str]| {
        let mut a = vec![
            "verify",
            tree.to_str().unwrap(),
            "--key",
            public.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        run(&a)
    };
    let o = publish(&one, &pem);
    assert!(o.status.success(), "{}", stderr(&o));
    let j = json_of(&o);
    assert_matches_schema("publish", &j);
    let p = &j["published"][0];
    assert_eq!(
        (p["kind"].as_str(), p["serial"].as_u64()),
        (Some("tree"), Some(1))
    );
    let files = p["builds"][0]["files"].as_array().unwrap();
    let roles: Vec<&str> = files.iter().map(|x| x["role"].as_str().unwrap()).collect();
    for r in [
        "artifact",
        "manifest",
        "sbom-spdx",
        "sbom-cyclonedx",
        "provenance",
    ] {
        assert!(roles.contains(&r), "{r} not published: {roles:?}");
    }
    // The tarball in the pool is the build's, byte for byte.
    let tar = files
        .iter()
        .find(|x| x["path"].as_str().unwrap().ends_with("/rootfs.tar"))
        .unwrap();
    assert_eq!(
        std::fs::read(tree.join(tar["path"].as_str().unwrap())).unwrap(),
        std::fs::read(one.join("rootfs.tar")).unwrap()
    );
    // The OCI image is one archive whose content is the layout.
    let oci = files
        .iter()
        .find(|x| x["path"].as_str().unwrap().ends_with("/oci.tar"))
        .expect("the OCI layout is published");
    let listing = std::process::Command::new("tar")
        .arg("-tf")
        .arg(tree.join(oci["path"].as_str().unwrap()))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.lines().any(|l| l == "index.json"), "{listing}");
    assert!(listing.lines().any(|l| l == "oci-layout"), "{listing}");

    let o = verify(&["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json_of(&o);
    assert_matches_schema("verify-tree", &v);
    assert_eq!(v["ok"], true);
    assert_eq!(
        v["channels"][0]["files-checked"].as_u64(),
        Some(files.len() as u64)
    );

    // The exports name the same files.
    let streams = json_file(&tree.join("streams/v1/org.kiln.images:stable.json"));
    let text = streams.to_string();
    assert!(text.contains(tar["sha256"].as_str().unwrap()), "{text}");
    assert_eq!(
        json_file(&tree.join("streams/v1/index.json"))["format"],
        "index:1.0"
    );

    // Again: nothing copied, the document (and its serial) unchanged.
    let doc = tree.join("channels/stable.json");
    let before = std::fs::read(&doc).unwrap();
    let o = publish(&one, &pem);
    assert!(o.status.success(), "{}", stderr(&o));
    let p = json_of(&o)["published"][0].clone();
    assert_eq!(p["bytes-copied"], 0);
    assert_eq!(p["document-written"], false);
    assert_eq!(std::fs::read(&doc).unwrap(), before);

    // The catalog knows where the build went.
    let o = f.kiln(&["find", "--json"]);
    let found = json_of(&o);
    assert_matches_schema("find", &found);
    let pubs = found["images"][0]["publications"].as_array().unwrap();
    assert_eq!(pubs.len(), 1, "{found}");
    assert_eq!(pubs[0]["target"], to.as_str());
    assert_eq!(pubs[0]["channel"], "stable");
    let in_channel = |c: &str| {
        json_of(&f.kiln(&["find", "--channel", c, "--json"]))["images"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(in_channel("stable"), 1);
    assert_eq!(in_channel("beta"), 0, "not published to beta");

    // Another key may not take the channel over.
    let (other_pem, other_pub) = ed25519_pair(f.work.path(), "other");
    let o = publish(&one, &other_pem);
    assert_fails_with(
        &o,
        &[
            "signature does not verify",
            "publish with the key that signed it",
        ],
    );
    assert_eq!(
        std::fs::read(&doc).unwrap(),
        before,
        "the document was replaced"
    );
    let o = run(&[
        "verify",
        tree.to_str().unwrap(),
        "--key",
        other_pub.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));

    // A second build: serial 2, both versions listed; the client accepts it.
    let two = f.work.path().join("two");
    tar_and_oci_build(&f, &two, "2");
    let o = publish(&two, &pem);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json_of(&o)["published"][0]["serial"], 2);
    let o = verify(&["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json_of(&o)["channels"][0]["versions"], 2);

    // The mirror serves the old document again: a rollback.
    let newer = std::fs::read(&doc).unwrap();
    std::fs::write(&doc, &before).unwrap();
    let o = verify(&[]);
    assert_eq!(o.status.code(), Some(1));
    assert_fails_with(&o, &["rollback: serial 1 is older than serial 2"]);
    std::fs::write(&doc, &newer).unwrap();

    // One byte of a published file changed.
    let victim = tree.join(tar["path"].as_str().unwrap());
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[600] ^= 1;
    std::fs::write(&victim, &bytes).unwrap();
    let o = verify(&[]);
    assert_eq!(o.status.code(), Some(1));
    assert_fails_with(&o, &[tar["path"].as_str().unwrap(), "sha256"]);
    // Publishing repairs it: the damaged pool file is replaced.
    let o = publish(&one, &pem);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = verify(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// What `kiln publish` refuses before sending anything.
#[test]
fn publish_refuses_bad_targets_and_changed_builds_before_any_work() {
    let f = Fixture::new();
    let out = f.work.path().join("out");
    tar_and_oci_build(&f, &out, "1");
    let (pem, public) = ed25519_pair(f.work.path(), "signer");
    let tree = f.work.path().join("tree");
    let to = format!("file://{}", tree.display());
    let dir = out.to_str().unwrap();
    // Usage errors exit 64.
    for (args, needle) in [
        (
            vec!["publish", dir, "--to", "ftp://host/x"],
            "unknown scheme ftp://",
        ),
        (
            vec!["publish", dir, "--to", "./relative"],
            "for a download tree write file://",
        ),
        (vec!["publish", dir, "--to", &to], "needs a key to sign"),
        (
            vec![
                "publish",
                dir,
                "--to",
                &to,
                "--sign-key",
                pem.to_str().unwrap(),
                "--channel",
                "../x",
            ],
            "is not valid",
        ),
        (
            vec!["verify", tree.to_str().unwrap(), "--channel", "stable"],
            "not a download tree",
        ),
    ] {
        let o = kiln_command(f.cache.path(), &args, &[])
            .env_remove("KILN_SIGN_KEY")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(64), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    assert!(!tree.exists(), "a refused publish created the tree");
    // A build changed after it was built is not published.
    let tar = out.join("rootfs.tar");
    let good = std::fs::read(&tar).unwrap();
    let mut bad = good.clone();
    bad[1000] ^= 1;
    std::fs::write(&tar, &bad).unwrap();
    let o = f.kiln(&[
        "publish",
        dir,
        "--to",
        &to,
        "--sign-key",
        pem.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_fails_with(
        &o,
        &[
            "rootfs.tar",
            "changed after its build",
            "rebuild it with kiln build",
        ],
    );
    assert!(!tree.join("channels").exists(), "a document was written");
    // An OCI blob changed the same way.
    std::fs::write(&tar, &good).unwrap();
    let index = json_file(&out.join("oci/index.json"));
    let top = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let manifest = json_file(&out.join(format!("oci/blobs/sha256/{top}")));
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let blob = out.join(format!("oci/blobs/sha256/{layer}"));
    let good_blob = std::fs::read(&blob).unwrap();
    let mut bad_blob = good_blob.clone();
    let n = bad_blob.len() / 2;
    bad_blob[n] ^= 1;
    std::fs::write(&blob, &bad_blob).unwrap();
    let o = f.kiln(&[
        "publish",
        dir,
        "--to",
        &to,
        "--sign-key",
        pem.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_fails_with(&o, &[&layer[..12]]);
    assert!(!tree.join("channels").exists(), "a document was written");
    std::fs::write(&blob, &good_blob).unwrap();
    // A tree whose pool leads out through a link: nothing is written there.
    let victim = f.work.path().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::create_dir_all(tree.join("pool")).unwrap();
    std::os::unix::fs::symlink(&victim, tree.join("pool/test")).unwrap();
    let o = f.kiln(&[
        "publish",
        dir,
        "--to",
        &to,
        "--sign-key",
        pem.to_str().unwrap(),
    ]);
    assert!(
        !o.status.success(),
        "published through a link out of the tree"
    );
    assert_eq!(
        std::fs::read_dir(&victim).unwrap().count(),
        0,
        "wrote outside the tree"
    );
    assert!(!tree.join("channels/stable.json").exists());
    let _ = public;
}

/// `kiln publish --to HOST/REPO`: the image, then its SBOMs, provenance and
/// manifest attached as OCI 1.1 referrers; a second publish sends nothing.
#[test]
fn publish_to_a_registry_attaches_sboms_and_provenance_as_referrers() {
    let f = Fixture::new();
    let out = f.work.path().join("out");
    tar_and_oci_build(&f, &out, "1");
    let reg = Registry::start(None);
    let host = format!("127.0.0.1:{}", reg.port);
    let publish = || {
        f.kiln(&[
            "publish",
            out.to_str().unwrap(),
            "--to",
            &format!("{host}/team/img"),
            "--insecure",
            "--json",
        ])
    };
    let o = publish();
    assert!(o.status.success(), "{}", stderr(&o));
    let j = json_of(&o);
    assert_matches_schema("publish", &j);
    let p = &j["published"][0];
    let digest = p["digest"].as_str().unwrap().to_string();
    let local = json_file(&out.join("oci/index.json"))["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(digest, local);
    let inspect = |reference: &str| {
        let o = std::process::Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{host}/team/img{reference}"))
            .output()
            .expect("skopeo is installed");
        assert!(o.status.success(), "{reference}: {}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    // docker-registry has no referrers API: the OCI 1.1 fallback tag lists them.
    assert_eq!(p["discovery"], "tag-fallback");
    let fallback = inspect(&format!(":sha256-{}", digest.trim_start_matches("sha256:")));
    let types: Vec<&str> = fallback["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["artifactType"].as_str().unwrap())
        .collect();
    for t in [
        "application/spdx+json",
        "application/vnd.cyclonedx+json",
        "application/vnd.dsse.envelope.v1+json",
        "application/vnd.kiln.manifest.v1+json",
    ] {
        assert!(types.contains(&t), "{t} not attached: {types:?}");
    }
    // Each referrer names the image as its subject, and its layer is the file.
    let spdx = fallback["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["artifactType"] == "application/spdx+json")
        .unwrap();
    let art = inspect(&format!("@{}", spdx["digest"].as_str().unwrap()));
    assert_eq!(art["subject"]["digest"], digest.as_str());
    let sbom = std::fs::read(out.join("sbom.spdx.json")).unwrap();
    assert_eq!(
        art["layers"][0]["digest"],
        format!("sha256:{}", kiln_testkit::sha256_hex(&sbom))
    );
    // Again: nothing sent, the same referrers.
    let o = publish();
    assert!(o.status.success(), "{}", stderr(&o));
    let q = json_of(&o)["published"][0].clone();
    assert_eq!(
        (
            q["blobs-uploaded"].as_u64(),
            q["manifests-pushed"].as_u64(),
            q["artifact-bytes-uploaded"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{q}"
    );
    assert!(q["referrers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["present"] == true));
    let digests = |v: &serde_json::Value| -> Vec<String> {
        v["referrers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["digest"].to_string())
            .collect()
    };
    assert_eq!(
        digests(&q),
        digests(p),
        "the artifact manifests are not reproducible"
    );
    let found = json_of(&f.kiln(&["find", "--json"]));
    let pubs = found["images"][0]["publications"].as_array().unwrap();
    assert_eq!(pubs[0]["location"], format!("{host}/team/img@{digest}"));
    // A registry that is not there: an error, and nothing recorded.
    drop(reg);
    let o = publish();
    assert!(!o.status.success());
    let found = json_of(&f.kiln(&["find", "--json"]));
    assert_eq!(
        found["images"][0]["publications"].as_array().unwrap().len(),
        1
    );
}

/// A loopback proxy to `upstream` that, while `cut` is set, closes a
/// connection the moment a manifest is sent (`PUT /v2/…/manifests/…`): a
/// target that dies after taking the blobs.
fn cutting_proxy(upstream: u16, cut: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u16 {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::Ordering;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(Shutdown::Both);
            });
            let cut = cut.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match client.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let chunk = &buf[..n];
                    let has = |pat: &[u8]| chunk.windows(pat.len()).any(|w| w == pat);
                    if cut.load(Ordering::SeqCst) && has(b"PUT /v2/") && has(b"/manifests/") {
                        break;
                    }
                    if server.write_all(chunk).is_err() {
                        break;
                    }
                }
                let _ = server.shutdown(Shutdown::Both);
                let _ = client.shutdown(Shutdown::Both);
            });
        }
    });
    port
}

/// A registry that dies midway (after the blobs, before the manifest): the
/// publish fails, nothing is recorded as published and no tag exists; the
/// next run sends only what is missing and records it.
#[test]
fn a_publish_cut_midway_records_nothing_and_the_next_run_resumes() {
    let f = Fixture::new();
    let out = f.work.path().join("out");
    tar_and_oci_build(&f, &out, "1");
    let reg = Registry::start(None);
    let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let proxy = cutting_proxy(reg.port, cut.clone());
    let target = format!("127.0.0.1:{proxy}/team/img:1");
    let publish = || {
        f.kiln(&[
            "publish",
            out.to_str().unwrap(),
            "--to",
            &target,
            "--insecure",
            "--json",
        ])
    };
    let o = publish();
    assert!(!o.status.success(), "a publish cut midway succeeded");
    let found = json_of(&f.kiln(&["find", "--json"]));
    assert_eq!(
        found["images"][0]["publications"],
        serde_json::json!([]),
        "a cut publish was recorded"
    );
    let tag = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://127.0.0.1:{}/team/img:1", reg.port))
        .output()
        .unwrap();
    assert!(!tag.status.success(), "the tag exists after a cut publish");

    // The target is back: the blobs it took are not sent again.
    cut.store(false, std::sync::atomic::Ordering::SeqCst);
    let o = publish();
    assert!(o.status.success(), "{}", stderr(&o));
    let p = json_of(&o)["published"][0].clone();
    assert_eq!(p["blobs-uploaded"], 0, "the blobs were sent again: {p}");
    assert!(p["blobs-skipped"].as_u64().unwrap() > 0, "{p}");
    assert!(p["manifests-pushed"].as_u64().unwrap() > 0, "{p}");
    let found = json_of(&f.kiln(&["find", "--json"]));
    assert_eq!(
        found["images"][0]["publications"][0]["digest"], p["digest"],
        "{found}"
    );
}

/// A build without an OCI image (a rootfs tarball) goes to a registry as an
/// OCI 1.1 artifact whose layer is the tarball, tagged with the image's
/// version, with its SBOMs and provenance attached to it.
#[test]
fn publish_pushes_a_tarball_to_a_registry_as_an_artifact() {
    let f = Fixture::new();
    let out = f.work.path().join("out");
    let recipe = f.distroless_recipe();
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(
        &recipe,
        text.replacen("[image]\n", "[image]\nversion = \"7.1\"\n", 1),
    )
    .unwrap();
    let o = f.build(&recipe, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!out.join("oci").exists(), "a tar-only build");
    let reg = Registry::start(None);
    let host = format!("127.0.0.1:{}", reg.port);
    let publish = || {
        f.kiln(&[
            "publish",
            out.to_str().unwrap(),
            "--to",
            &format!("{host}/team/rootfs"),
            "--insecure",
            "--json",
        ])
    };
    let o = publish();
    assert!(o.status.success(), "{}", stderr(&o));
    let j = json_of(&o);
    assert_matches_schema("publish", &j);
    let p = j["published"][0].clone();
    assert_eq!(p["tags"], serde_json::json!(["7.1"]), "{p}");
    let digest = p["digest"].as_str().unwrap().to_string();
    let raw = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{host}/team/rootfs:7.1"))
        .output()
        .unwrap();
    assert!(raw.status.success(), "{}", stderr(&raw));
    assert_eq!(
        format!("sha256:{}", kiln_testkit::sha256_hex(&raw.stdout)),
        digest,
        "the tag names the digest kiln printed"
    );
    let m: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(m["artifactType"], "application/vnd.kiln.rootfs.v1", "{m}");
    let tarball = std::fs::read(out.join("rootfs.tar")).unwrap();
    assert_eq!(m["layers"].as_array().unwrap().len(), 1, "{m}");
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.kiln.rootfs.tar"
    );
    assert_eq!(
        m["layers"][0]["annotations"]["org.opencontainers.image.title"],
        "rootfs.tar"
    );
    assert_eq!(
        m["layers"][0]["digest"],
        format!("sha256:{}", kiln_testkit::sha256_hex(&tarball))
    );
    // The registry serves the very bytes back.
    let blob = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, urllib.request; sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1]).read())",
        ])
        .arg(format!(
            "http://{host}/v2/team/rootfs/blobs/{}",
            m["layers"][0]["digest"].as_str().unwrap()
        ))
        .output()
        .unwrap();
    assert!(
        blob.status.success() && blob.stdout == tarball,
        "the blob differs"
    );
    // The SBOMs and provenance are about the artifact.
    let fallback = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!(
            "docker://{host}/team/rootfs:sha256-{}",
            digest.trim_start_matches("sha256:")
        ))
        .output()
        .unwrap();
    assert!(fallback.status.success(), "{}", stderr(&fallback));
    let listed: serde_json::Value = serde_json::from_slice(&fallback.stdout).unwrap();
    assert!(
        listed["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["artifactType"] == "application/spdx+json"),
        "{listed}"
    );
    // Again: nothing sent.
    let o = publish();
    assert!(o.status.success(), "{}", stderr(&o));
    let q = json_of(&o)["published"][0].clone();
    assert_eq!(
        (
            q["blobs-uploaded"].as_u64(),
            q["manifests-pushed"].as_u64(),
            q["artifact-bytes-uploaded"].as_u64(),
            q["digest"].as_str()
        ),
        (Some(0), Some(0), Some(0), Some(digest.as_str())),
        "{q}"
    );
    let found = json_of(&f.kiln(&["find", "--format", "tar", "--json"]));
    let pubs = found["images"][0]["publications"].as_array().unwrap();
    assert_eq!(pubs[0]["location"], format!("{host}/team/rootfs@{digest}"));
}

/// `--catalog postgres://…`: builds, publications and `kiln find` on a real
/// PostgreSQL server give what the SQLite catalog gives.
#[test]
fn the_catalog_can_be_a_postgresql_server() {
    let pg = kiln_testkit::postgres::Postgres::start();
    let url = pg.database("kiln_cli");
    let f = Fixture::new();
    let out = f.work.path().join("out");
    let o = kiln_command(
        f.cache.path(),
        &[
            "build",
            f.distroless_recipe().to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
        &[("KILN_CATALOG", &url)],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (pem, _) = ed25519_pair(f.work.path(), "signer");
    let tree = f.work.path().join("tree");
    let o = kiln_command(
        f.cache.path(),
        &[
            "--catalog",
            &url,
            "publish",
            out.to_str().unwrap(),
            "--to",
            &format!("file://{}", tree.display()),
            "--sign-key",
            pem.to_str().unwrap(),
        ],
        &[],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let lite = f.work.path().join("lite.sqlite");
    let o = kiln_command(
        f.cache.path(),
        &["catalog", "import", out.to_str().unwrap()],
        &[("KILN_CATALOG", lite.to_str().unwrap())],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let find = |catalog: &str| {
        let o = kiln_command(
            f.cache.path(),
            &["find", "--package", "nginx>=1.26", "--json"],
            &[("KILN_CATALOG", catalog)],
        )
        .output()
        .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let mut j = json_of(&o);
        assert_matches_schema("find", &j);
        for i in j["images"].as_array_mut().unwrap() {
            i.as_object_mut().unwrap().remove("recorded-at");
        }
        j
    };
    let from_pg = find(&url);
    let images = from_pg["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "{from_pg}");
    assert_eq!(images[0]["packages"][0]["version"], "1.26.0-1");
    assert_eq!(images[0]["publications"][0]["channel"], "stable");
    assert!(
        !from_pg["catalog"].as_str().unwrap().contains(":kiln@"),
        "the password is printed: {from_pg}"
    );
    let mut from_lite = find(lite.to_str().unwrap());
    // The SQLite catalog saw no publish; the rest is the same.
    from_lite["images"][0]["publications"] = images[0]["publications"].clone();
    assert_eq!(from_pg["images"], from_lite["images"]);
}

/// `kiln catalog import TREE --key`: a published tree rebuilds the catalog
/// when it verifies, and adds nothing when it does not.
#[test]
fn a_download_tree_is_imported_only_when_it_verifies() {
    let f = Fixture::new();
    let out = f.work.path().join("out");
    tar_and_oci_build(&f, &out, "1");
    let (pem, public) = ed25519_pair(f.work.path(), "signer");
    let (_, other) = ed25519_pair(f.work.path(), "other");
    let tree = f.work.path().join("tree");
    let o = f.kiln(&[
        "publish",
        out.to_str().unwrap(),
        "--to",
        &format!("file://{}", tree.display()),
        "--sign-key",
        pem.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let import = |catalog: &Path, key: Option<&Path>| {
        let mut args = vec!["catalog", "import", tree.to_str().unwrap()];
        if let Some(k) = key {
            args.extend(["--key", k.to_str().unwrap()]);
        }
        kiln_command(
            f.cache.path(),
            &args,
            &[("KILN_CATALOG", catalog.to_str().unwrap())],
        )
        .output()
        .unwrap()
    };
    let find = |catalog: &Path| {
        let o = kiln_command(
            f.cache.path(),
            &["find", "--json"],
            &[("KILN_CATALOG", catalog.to_str().unwrap())],
        )
        .output()
        .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        json_of(&o)
    };
    let fresh = f.work.path().join("fresh.sqlite");
    let o = import(&fresh, None);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    let o = import(&fresh, Some(&public));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 new build(s)"), "{}", stderr(&o));
    let j = find(&fresh);
    assert_matches_schema("find", &j);
    let image = &j["images"][0];
    assert_eq!(image["image"], "test");
    // The manifest's identity, and the artifacts where the tree has them.
    let manifest = std::fs::read(out.join("manifest.json")).unwrap();
    assert_eq!(
        image["manifest-sha256"],
        kiln_testkit::sha256_hex(&manifest)
    );
    let tar = image["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "tar")
        .unwrap();
    let at = Path::new(image["location"].as_str().unwrap()).join(tar["path"].as_str().unwrap());
    assert_eq!(
        std::fs::read(at).unwrap(),
        std::fs::read(out.join("rootfs.tar")).unwrap()
    );
    assert_eq!(image["publications"][0]["channel"], "stable");
    let o = import(&fresh, Some(&public));
    assert!(
        stderr(&o).contains("0 new build(s), 1 already known"),
        "{}",
        stderr(&o)
    );
    // Another key: nothing imported.
    let second = f.work.path().join("second.sqlite");
    let o = import(&second, Some(&other));
    assert!(
        stderr(&o).contains("signature does not verify"),
        "{}",
        stderr(&o)
    );
    assert!(find(&second)["images"].as_array().unwrap().is_empty());
    // A pool manifest changed under the signed document: nothing imported.
    let doc = json_file(&tree.join("streams/v1/org.kiln.images:stable.json")).to_string();
    assert!(doc.contains("manifest.json"), "{doc}");
    let manifest_in_pool = std::fs::read_dir(tree.join("pool/test"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("manifest.json"))
        .find(|p| p.exists())
        .unwrap();
    std::fs::write(
        &manifest_in_pool,
        manifest.iter().rev().copied().collect::<Vec<u8>>(),
    )
    .unwrap();
    let o = import(&second, Some(&public));
    assert!(stderr(&o).contains("manifest.json"), "{}", stderr(&o));
    assert!(find(&second)["images"].as_array().unwrap().is_empty());
}

/// A GET on 127.0.0.1: (status, body).
fn http_get(url: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `kiln serve` answers from the catalog builds went into; `--export`
/// writes the same finder as files.
#[test]
fn serve_answers_from_the_catalog_and_exports_static_files() {
    use std::io::BufRead;
    let f = Fixture::new();
    let out = f.work.path().join("out");
    let o = f.build(&f.distroless_recipe(), &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut child = kiln_command(f.cache.path(), &["serve", "--listen", "127.0.0.1:0"], &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line.trim().trim_end_matches('/').to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{line:?}");
    let (status, page) = http_get(&format!("{base}/"));
    assert_eq!(status, 200);
    assert!(page.contains("<html"), "{page}");
    let (status, body) = http_get(&format!("{base}/api/v1/images?package=nginx%3E%3D1.26"));
    assert_eq!(status, 200, "{body}");
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["images"][0]["image"], "test");
    assert_eq!(j["images"][0]["packages"][0]["version"], "1.26.0-1");
    let (status, body) = http_get(&format!("{base}/api/v1/images?package=nginx%3E%3E"));
    assert_eq!(status, 400, "{body}");
    child.kill().unwrap();
    child.wait().unwrap();
    let site = f.work.path().join("site");
    let o = f.kiln(&["serve", "--export", site.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(site.join("index.html").is_file());
    let all = json_file(&site.join("api/v1/images.json"));
    assert_eq!(all["images"][0]["image"], "test");
    // A directory that is not an earlier export is not replaced.
    let o = f.kiln(&["serve", "--export", out.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        out.join("manifest.json").is_file(),
        "the build was replaced"
    );
}

/// Without `--to`, a build goes where its recipe's `[[publish]]` says; a
/// recipe without one, or changed since the build, is named.
#[test]
fn publish_without_to_uses_the_recipes_publish_targets() {
    let f = Fixture::new();
    let recipe = f.distroless_recipe();
    let tree = f.work.path().join("tree");
    let text = std::fs::read_to_string(&recipe).unwrap();
    let out = f.work.path().join("out");
    let (pem, _) = ed25519_pair(f.work.path(), "signer");
    let publish = || {
        f.kiln(&[
            "publish",
            out.to_str().unwrap(),
            "--sign-key",
            pem.to_str().unwrap(),
        ])
    };
    let o = f.build(&recipe, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = publish();
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert_fails_with(
        &o,
        &["no --to given and no [[publish]]", "[[publish]] to ="],
    );
    std::fs::write(
        &recipe,
        format!(
            "{text}\n[[publish]]\nto = \"file://{}\"\nchannel = \"daily\"\n",
            tree.display()
        ),
    )
    .unwrap();
    // Publish targets do not change the build's packages: no rebuild needed.
    let o = publish();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(tree.join("channels/daily.json").is_file());
    // The recipe now resolves differently: its targets are not trusted.
    std::fs::write(
        &recipe,
        std::fs::read_to_string(&recipe)
            .unwrap()
            .replace("include = [\"nginx\"]", "include = [\"nginx\", \"curl\"]"),
    )
    .unwrap();
    let o = publish();
    assert!(!o.status.success());
    assert_fails_with(
        &o,
        &["was built from another version of", "give --to TARGET"],
    );
}

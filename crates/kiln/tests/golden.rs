//! Golden files for `kiln build`: a distroless OCI image built from a small
//! signed fixture repository (offline, no root) must give, byte for byte,
//! the files in tests/golden/: `manifest.json`, `sbom.spdx.json`,
//! `sbom.cdx.json` and the OCI layout's top `oci/index.json` (as
//! `oci-index.json`; it names the image manifest by digest, which covers the
//! config and the layer).
//!
//! When a change to one of them is intended, re-bless: run
//!
//!     KILN_BLESS=1 cargo test -p kiln --test golden
//!
//! which writes tests/golden/ from this build (and passes), then commit the
//! new golden files with the change that explains them.
//!
//! The build runs twice, each time from a fresh fixture (new signing key, new
//! signatures, new cache, new lock, made under another umask), and both must
//! agree before the golden files are compared. Nothing is normalised before
//! comparing: every input that would vary is pinned instead.
//! - The fixture's throwaway gpg key and its signatures are new on every run.
//!   They reach only the lock (the signed Release's sha256) and
//!   provenance.json, which are not compared; the recipe names the keyring
//!   by a fixed path, so the recipe hash in manifest.json does not see it.
//! - The repository URI is in the SBOMs' download URLs and, through them, in
//!   the SPDX `documentNamespace` and the CycloneDX `serialNumber` (both are
//!   derived from a hash of the rest of the document). Putting a placeholder
//!   in place of the URI would therefore not make the SBOMs comparable, so the
//!   URI itself is fixed: the repository is copied to [`ROOT`]/repo and read
//!   as `file://` (a loopback HTTP server would bring its port into the URLs).
//!   The recipe, and so the lock path in manifest.json, is in [`ROOT`] too.
//!   [`ROOT`] does not depend on the checkout's path; runs from several
//!   checkouts take turns through a lock file beside it.
//! - The `.deb`s: kiln-testkit builds them with a fixed SOURCE_DATE_EPOCH and
//!   explicit modes, so their bytes depend on neither the clock nor the umask.
//! - Kiln itself runs with umask 022. Its distroless assembly creates the
//!   directories and files it makes (`/`, `/etc`, `/usr`, `/usr/bin`,
//!   `/etc/passwd`, the dpkg status files, …) with the modes the umask gives,
//!   so under umask 077 the image differs (and its nonroot user can read
//!   neither `/usr/bin` nor `/etc/passwd`). That is a bug in Kiln, not
//!   something for this test to depend on; once fixed, the pin can go.
//! - The build time: `--source-date-epoch`.
//! - The image is for riscv64, not the host's architecture: for the host's,
//!   a distroless image gets an `ld.so.cache` from the host's ldconfig, whose
//!   bytes carry the host's glibc version.

mod common;

use std::collections::BTreeMap;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use common::*;
use kiln_testkit::{Pkg, ReleaseOpts, Repo};

/// Where the fixture repository, recipe, lock and outputs live. Fixed,
/// because the repository URI ends up in the SBOMs (see the top comment).
const ROOT: &str = "/tmp/kiln-golden";
/// Held (flock) while [`ROOT`] is in use.
const ROOT_LOCK: &str = "/tmp/kiln-golden.lock";
/// Not the host's architecture (see the top comment).
const ARCH: &str = "riscv64";
const EPOCH: &str = "1700000000";
/// Compared outputs: golden file name → path in the output directory.
const OUTPUTS: &[(&str, &str)] = &[
    ("manifest.json", "manifest.json"),
    ("sbom.spdx.json", "sbom.spdx.json"),
    ("sbom.cdx.json", "sbom.cdx.json"),
    ("oci-index.json", "oci/index.json"),
];

const DEP5_GPL: &str =
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
Upstream-Name: hello\n\n\
Files: *\nCopyright: 2025 Kiln Tests\nLicense: GPL-3+\n\n\
Files: debian/*\nCopyright: 2025 Kiln Tests\nLicense: GPL-2+\n";

const DEP5_LIB: &str =
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n\
Files: *\nCopyright: 2025 Kiln Tests\nLicense: MIT or Apache-2.0\n";

fn packages() -> Vec<Pkg> {
    vec![
        Pkg::new("hello", "2.10-3")
            .arch(ARCH)
            .depends("libhello1 (>= 2.10), hello-data")
            .executable("/usr/bin/hello", b"\x7fELF not really\n")
            .file("/usr/share/doc/hello/copyright", DEP5_GPL.as_bytes())
            .file("/usr/share/doc/hello/changelog.Debian.gz", b"changes\n")
            .file("/usr/share/man/man1/hello.1.gz", b"manual\n")
            .script(
                "postinst",
                "#!/bin/sh\necho never run in a distroless image\n",
            ),
        Pkg::new("libhello1", "2.10-3")
            .arch(ARCH)
            .field("Source", "hello")
            .field("Multi-Arch", "same")
            .file(
                "/usr/lib/riscv64-linux-gnu/libhello.so.1.0.0",
                b"not a real library\n",
            )
            .file("/usr/share/doc/libhello1/copyright", DEP5_LIB.as_bytes()),
        // Epoch in the version (purl encoding), a source version of its own,
        // a copyright file that is not machine-readable (licence unknown),
        // and a translation a distroless image drops.
        Pkg::new("hello-data", "1:2.10-3")
            .field("Source", "hello (2.10-3)")
            .file("/usr/share/hello/greeting.txt", b"Hello, golden world!\n")
            .file(
                "/usr/share/doc/hello-data/copyright",
                b"This package is in the public domain, more or less.\n",
            )
            .file("/usr/share/locale/de/LC_MESSAGES/hello.mo", b"Hallo\n"),
        // In the repository, not in the image.
        Pkg::new("goodbye", "1.0-1").arch(ARCH),
    ]
}

fn recipe() -> String {
    format!(
        "[image]\nname = \"golden\"\nversion = \"1.0\"\nsuite = \"kiln-test\"\narchitectures = [\"{ARCH}\"]\ndefault-sources = false\n\n\
         [packages]\ninclude = [\"hello\"]\n\n\
         [[source]]\nuri = \"file://{ROOT}/repo\"\nsuites = [\"kiln-test\"]\nsigned-by = \"keyring.gpg\"\n\n\
         [container]\ndistroless = true\nentrypoint = [\"/usr/bin/hello\"]\nuser = \"65532\"\nworking-dir = \"/home/nonroot\"\n\
         env = {{ GREETING = \"golden\" }}\nlabels = {{ \"org.example.test\" = \"golden\" }}\n\n\
         [[customize.file]]\npath = \"/home/nonroot/greeting\"\ncontent = \"hello\\n\"\nmode = \"0640\"\nuid = 65532\ngid = 65532\n\n\
         [output]\nformats = [\"oci\"]\n"
    )
}

/// Exclusive use of [`ROOT`] for as long as the file is open.
fn lock_root() -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(ROOT_LOCK)
        .unwrap_or_else(|e| panic!("cannot open {ROOT_LOCK}: {e}"));
    // SAFETY: flock on a file descriptor this function owns.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "cannot lock {ROOT_LOCK}");
    f
}

/// Sets this process's umask; returns the previous one.
fn umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask only swaps the process's file mode creation mask.
    unsafe { libc::umask(mask) }
}

/// An ordinary user's uid for the build without privileges.
const USER: u32 = 1001;

/// One build from a fresh fixture made under `fixture_umask` (this file's
/// only test, so nothing else runs meanwhile), by [`USER`] instead of this
/// process's user when `as_user`; returns the compared outputs.
fn build_once(fixture_umask: libc::mode_t, as_user: bool) -> BTreeMap<&'static str, Vec<u8>> {
    let root = Path::new(ROOT);
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).unwrap();
    let before = umask(fixture_umask);
    let repo = Repo::build(&packages(), ARCH, &ReleaseOpts::default());
    umask(before);
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(repo.root())
        .arg(root.join("repo"))
        .status()
        .unwrap();
    assert!(st.success(), "copying the fixture repository");
    std::fs::copy(&repo.key.keyring, root.join("keyring.gpg")).unwrap();
    let recipe_path = root.join("golden.toml");
    std::fs::write(&recipe_path, recipe()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    if as_user {
        // The user writes the lock and the output beside the recipe, and
        // its own cache.
        use std::os::unix::fs::PermissionsExt;
        for (p, mode) in [
            (root, 0o777),
            (cache.path(), 0o777),
            (&root.join("keyring.gpg"), 0o644),
        ] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
    let out = root.join("out");
    // An ordinary user runs a copy it can reach (the checkout may be private).
    let program = if as_user {
        kiln_binary_for_anyone()
    } else {
        PathBuf::from(env!("CARGO_BIN_EXE_kiln"))
    };
    let mut cmd = kiln_command_with(
        &program,
        cache.path(),
        &[
            "build",
            recipe_path.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--source-date-epoch",
            EPOCH,
        ],
        &[],
    );
    // SAFETY: umask is async-signal-safe; nothing else runs in the child
    // between fork and exec. (Why 022: see the top comment.)
    let o = unsafe {
        cmd.pre_exec(move || {
            libc::umask(0o022);
            if as_user
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(USER) != 0
                    || libc::setuid(USER) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
    .output()
    .unwrap();
    assert!(o.status.success(), "kiln build failed:\n{}", text(&o));
    // The recipe's file has the recipe's owner and mode in the image, and
    // the build's home directory the image user's, whoever built it.
    let owned = layer_entries(&out.join("oci"));
    assert_eq!(
        owned.get("home/nonroot/greeting"),
        Some(&(65532, 65532, 0o640)),
        "as_user={as_user}"
    );
    assert_eq!(
        owned.get("home/nonroot").map(|e| (e.0, e.1)),
        Some((65532, 65532)),
        "as_user={as_user}"
    );
    assert!(
        owned.values().all(|e| e.0 != u64::from(USER)),
        "a file of uid {USER} in the image"
    );
    OUTPUTS
        .iter()
        .map(|(name, path)| {
            let bytes = std::fs::read(out.join(path))
                .unwrap_or_else(|e| panic!("kiln build wrote no {path}: {e}"));
            (*name, bytes)
        })
        .collect()
}

/// Owner and mode of every entry of the OCI layout's (one) image, its
/// layers in order.
fn layer_entries(layout: &Path) -> BTreeMap<String, (u64, u64, u32)> {
    let json = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let blob = |d: &serde_json::Value| {
        layout
            .join("blobs/sha256")
            .join(d.as_str().unwrap().trim_start_matches("sha256:"))
    };
    let index = json(layout.join("index.json"));
    let manifest = json(blob(&index["manifests"][0]["digest"]));
    let mut out = BTreeMap::new();
    for l in manifest["layers"].as_array().unwrap() {
        let f = std::fs::File::open(blob(&l["digest"])).unwrap();
        let media = l["mediaType"].as_str().unwrap();
        let r: Box<dyn std::io::Read> = if media.ends_with("+zstd") {
            Box::new(zstd::Decoder::new(f).unwrap())
        } else if media.ends_with("+gzip") {
            Box::new(flate2::read::MultiGzDecoder::new(f))
        } else {
            Box::new(f)
        };
        for e in tar::Archive::new(r).entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            let name = e
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_string();
            out.insert(
                name,
                (
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    h.mode().unwrap() & 0o7777,
                ),
            );
        }
    }
    out
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// A line diff of `expected` and `actual` (LCS, 3 lines of context), at
/// most `limit` lines.
fn diff(expected: &str, actual: &str, limit: usize) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // (tag, line number in expected, line number in actual, text)
    let mut ops: Vec<(char, usize, usize, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', i, j, a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', i, j, a[i]));
            i += 1;
        } else {
            ops.push(('+', i, j, b[j]));
            j += 1;
        }
    }
    let near_change = |k: usize| {
        ops[k.saturating_sub(3)..(k + 4).min(ops.len())]
            .iter()
            .any(|o| o.0 != ' ')
    };
    let mut out = Vec::new();
    let mut last: Option<usize> = None;
    for k in (0..ops.len()).filter(|&k| near_change(k)) {
        if last != Some(k.wrapping_sub(1)) {
            out.push(format!(
                "@@ golden line {}, new line {} @@",
                ops[k].1 + 1,
                ops[k].2 + 1
            ));
        }
        out.push(format!("{}{}", ops[k].0, ops[k].3));
        last = Some(k);
    }
    if out.is_empty() {
        return "(the same lines; they differ in line endings or the final newline)".into();
    }
    if out.len() > limit {
        let more = out.len() - limit;
        out.truncate(limit);
        out.push(format!("… {more} more diff lines"));
    }
    out.join("\n")
}

#[test]
fn distroless_oci_build_matches_the_golden_files() {
    let _lock = lock_root();
    let first = build_once(0o022, false);
    let second = build_once(0o077, false);
    for (name, bytes) in &first {
        assert!(
            *bytes == second[name],
            "{name} differs between two builds of the same fixture:\n{}",
            diff(
                &String::from_utf8_lossy(bytes),
                &String::from_utf8_lossy(&second[name]),
                80
            )
        );
    }
    // The same bytes whoever builds: as root, an ordinary user's build
    // (whose files on disk are all its own) gives the same image, owners
    // included (`/home/nonroot` is 65532). Without root, the two builds
    // above already were an ordinary user's, compared with the golden files
    // (blessed by root) below.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let third = build_once(0o022, true);
        for (name, bytes) in &first {
            assert!(
                *bytes == third[name],
                "{name} differs between the build by root and the build by uid {USER}:\n{}",
                diff(
                    &String::from_utf8_lossy(bytes),
                    &String::from_utf8_lossy(&third[name]),
                    80
                )
            );
        }
    }

    // The fixture exercises what it is meant to, whatever was blessed.
    let spdx: serde_json::Value = serde_json::from_slice(&first["sbom.spdx.json"]).unwrap();
    let licence = |name: &str| {
        spdx["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not in the SBOM"))["licenseDeclared"]
            .clone()
    };
    assert_eq!(licence("hello"), "GPL-3.0-or-later");
    assert_eq!(licence("libhello1"), "MIT OR Apache-2.0");
    assert_eq!(licence("hello-data"), "NOASSERTION");
    let manifest: serde_json::Value = serde_json::from_slice(&first["manifest.json"]).unwrap();
    let names: Vec<&str> = manifest["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hello", "hello-data", "libhello1"]);

    let dir = golden_dir();
    if std::env::var_os("KILN_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in &first {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        eprintln!("KILN_BLESS=1: wrote the golden files in {}", dir.display());
        let _ = std::fs::remove_dir_all(ROOT);
        return;
    }
    // The new files, for a closer look when they differ.
    let actual_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("golden-actual");
    std::fs::create_dir_all(&actual_dir).unwrap();
    let mut failures = Vec::new();
    for (name, bytes) in &first {
        std::fs::write(actual_dir.join(name), bytes).unwrap();
        let golden = dir.join(name);
        match std::fs::read(&golden) {
            Ok(g) if g == *bytes => {}
            Ok(g) => failures.push(format!(
                "{name} differs from {} (- golden, + this build; the whole new file is {}):\n{}",
                golden.display(),
                actual_dir.join(name).display(),
                diff(
                    &String::from_utf8_lossy(&g),
                    &String::from_utf8_lossy(bytes),
                    80
                )
            )),
            Err(e) => failures.push(format!("cannot read {}: {e}", golden.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n\nIf the change is intended, re-bless the golden files and commit them:\n    \
         KILN_BLESS=1 cargo test -p kiln --test golden",
        failures.join("\n\n")
    );
    let _ = std::fs::remove_dir_all(ROOT);
}

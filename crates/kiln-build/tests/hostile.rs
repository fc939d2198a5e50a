//! A hostile package's links do not lead the build out of the root (no
//! network, no root needed; CI runs these as root, where the attack would
//! write to the host): a distroless build of a package whose payload is
//! absolute symlinks at the paths Kiln writes or reads after unpacking
//! (`/etc/passwd`, `/etc/group`, its dpkg status file, `/tmp`, `/root`, a CA
//! certificate, its copyright file) pointing at files and directories of a
//! scratch "host" directory. After the build those are unchanged, byte for
//! byte and mode for mode, and none of their text is in the image or SBOM.
//!
//! Also here: a mirror that cuts connections under parallel load (served on
//! loopback) costs retries, never a half-written cache entry.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kiln_build::{BuildRequest, SourceOptions};
use kiln_model::{Cancel, NullReporter};
use kiln_testkit::{Pkg, ReleaseOpts, Repo};

const SECRET: &str = "VICTIM-SECRET-7d1f";

/// The scratch "host": files and directories the package points at.
fn victim(dir: &Path) {
    std::fs::create_dir_all(dir.join("tmpdir")).unwrap();
    std::fs::create_dir_all(dir.join("rootdir")).unwrap();
    std::fs::write(dir.join("tmpdir/keep"), format!("{SECRET} tmp\n")).unwrap();
    for (f, mode) in [
        ("passwd", 0o640),
        ("group", 0o600),
        ("status", 0o644),
        ("cert.crt", 0o600),
    ] {
        std::fs::write(dir.join(f), format!("{SECRET} {f}\n")).unwrap();
        std::fs::set_permissions(dir.join(f), PermissionsExt::from_mode(mode)).unwrap();
    }
    std::fs::write(
        dir.join("copyright"),
        format!("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nLicense: {SECRET}\n"),
    )
    .unwrap();
    std::fs::set_permissions(dir.join("tmpdir"), PermissionsExt::from_mode(0o750)).unwrap();
    std::fs::set_permissions(dir.join("rootdir"), PermissionsExt::from_mode(0o755)).unwrap();
}

/// Every path below `dir` with its mode and bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let bytes = if m.is_file() {
            std::fs::read(&p).unwrap()
        } else {
            Vec::new()
        };
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
        }
        out.push((p, m.permissions().mode(), bytes));
    }
    out.sort();
    out
}

fn packages(v: &Path) -> Vec<Pkg> {
    let at = |f: &str| v.join(f).display().to_string();
    vec![
        Pkg::new("base-files", "13")
            .field("Essential", "yes")
            .file("etc/debian_version", b"13\n")
            .file("usr/share/doc/base-files/copyright", b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nLicense: GPL-2+\n"),
        Pkg::new("ca-certificates", "1")
            .file("usr/share/ca-certificates/mozilla/Honest_CA.crt", b"HONEST CERT\n"),
        Pkg::new("evil", "1")
            .arch("amd64")
            .depends("base-files, ca-certificates")
            .symlink("etc/passwd", &at("passwd"))
            .symlink("etc/group", &at("group"))
            .symlink("var/lib/dpkg/status.d/evil", &at("status"))
            .symlink("tmp", &at("tmpdir"))
            .symlink("root", &at("rootdir"))
            .symlink("usr/share/ca-certificates/mozilla/Evil.crt", &at("cert.crt"))
            .symlink("usr/share/doc/evil/copyright", &at("copyright")),
    ]
}

/// A distroless build request for `include` from `repo`, writing `formats`.
fn request(
    repo: &Repo,
    work: &Path,
    cache: &Path,
    include: &[&str],
    formats: &str,
) -> BuildRequest {
    let recipe = work.join("image.toml");
    let include: Vec<String> = include.iter().map(|p| format!("\"{p}\"")).collect();
    std::fs::write(
        &recipe,
        format!(
            "[image]\nname = \"hostile\"\nsuite = \"kiln-test\"\narchitectures = [\"amd64\"]\ndefault-sources = false\n\n\
             [packages]\ninclude = [{}]\n\n[container]\ndistroless = true\n\n\
             [output]\nformats = [{formats}]\n\n\
             [[source]]\nuri = \"{}\"\nsuites = [\"kiln-test\"]\nsigned-by = \"{}\"\n",
            include.join(", "),
            repo.uri(),
            repo.key.keyring.display()
        ),
    )
    .unwrap();
    BuildRequest {
        recipe,
        output: Some(work.join("out")),
        source_date_epoch: Some(1_700_000_000),
        sources: SourceOptions {
            cache_dir: Some(cache.to_path_buf()),
            offline: false,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Builds the distroless image of `evil` and returns the output directory.
fn build(repo: &Repo, work: &Path, cache: &Path) -> PathBuf {
    let req = request(
        repo,
        work,
        cache,
        &["evil", "base-files"],
        "\"tar\", \"oci\"",
    );
    kiln_build::build(&req, &NullReporter, &Cancel::new()).expect("the build succeeds");
    req.output.unwrap()
}

/// The contents of `name` in the rootfs tarball.
fn member(tar_path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut a = tar::Archive::new(std::fs::File::open(tar_path).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().display().to_string();
        if p.trim_start_matches("./") == name {
            let mut b = Vec::new();
            e.read_to_end(&mut b).unwrap();
            return Some(b);
        }
    }
    None
}

#[test]
fn a_distroless_build_leaves_the_files_a_package_links_to_alone() {
    let scratch = tempfile::tempdir().unwrap();
    let v = scratch.path().join("host");
    victim(&v);
    let before = snapshot(&v);
    let repo = Repo::build(&packages(&v), "amd64", &ReleaseOpts::default());
    let work = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = build(&repo, work.path(), cache.path());
    assert_eq!(
        before,
        snapshot(&v),
        "a file or directory outside the root changed"
    );

    let tarball = out.join("rootfs.tar");
    // The image has its own passwd, group and status file, not the links.
    let passwd = String::from_utf8(member(&tarball, "etc/passwd").expect("etc/passwd")).unwrap();
    assert!(passwd.starts_with("root:x:0:0:"), "{passwd}");
    let group = String::from_utf8(member(&tarball, "etc/group").expect("etc/group")).unwrap();
    assert!(group.starts_with("root:x:0:"), "{group}");
    let status = String::from_utf8(
        member(&tarball, "var/lib/dpkg/status.d/evil").expect("evil's status file"),
    )
    .unwrap();
    assert!(status.starts_with("Package: evil\n"), "{status}");
    // The bundle has the honest certificate and nothing of the host's.
    let bundle = String::from_utf8(
        member(&tarball, "etc/ssl/certs/ca-certificates.crt").expect("the CA bundle"),
    )
    .unwrap();
    assert_eq!(bundle, "HONEST CERT\n");
    // The SBOMs carry base-files' licence and not the host file's text.
    for sbom in ["sbom.spdx.json", "sbom.cdx.json"] {
        let text = std::fs::read_to_string(out.join(sbom)).unwrap();
        assert!(!text.contains(SECRET), "{sbom} holds the host file's text");
        assert!(
            text.contains("GPL-2.0-or-later") || text.contains("GPL-2+"),
            "{sbom}"
        );
    }
    // Nothing in any output holds the host's text.
    let mut todo = vec![out.clone()];
    while let Some(p) = todo.pop() {
        if p.is_dir() {
            todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(b) = std::fs::read(&p) {
            assert!(
                !b.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                "{} holds the host's text",
                p.display()
            );
        }
    }
}

const MIB: u64 = 1 << 20;

fn base_files() -> Pkg {
    Pkg::new("base-files", "13")
        .field("Essential", "yes")
        .file("etc/debian_version", b"13\n")
}

/// The size of `name` in the rootfs tarball, without reading it into memory.
fn member_size(tar_path: &Path, name: &str) -> Option<u64> {
    let mut a = tar::Archive::new(std::fs::File::open(tar_path).unwrap());
    let found = a
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| {
            e.path()
                .unwrap()
                .display()
                .to_string()
                .trim_start_matches("./")
                == name
        })
        .map(|e| e.size());
    found
}

#[test]
fn a_distroless_build_refuses_a_decompression_bomb() {
    // 128 MiB of zeros in four files, a few hundred KiB compressed, declaring 1 KiB.
    let mut bomb = Pkg::new("bomb", "1").arch("amd64").depends("base-files");
    for i in 0..4 {
        bomb = bomb.zeros(&format!("usr/share/bomb/{i}"), 32 * MIB);
    }
    let repo = Repo::build(&[base_files(), bomb], "amd64", &ReleaseOpts::default());
    let work = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let req = request(&repo, work.path(), cache.path(), &["bomb"], "\"tar\"");
    let e = kiln_build::build(&req, &NullReporter, &Cancel::new()).unwrap_err();
    let text = format!("{e:#}");
    assert!(
        text.contains("unpacking bomb: refused as a likely decompression bomb"),
        "{text}"
    );
    assert!(text.contains("Installed-Size: 1 (1.0 KiB)"), "{text}");
    assert!(text.contains("more than 64.0 MiB"), "{text}");
    match e.downcast_ref::<kiln_rootfs::RootfsError>() {
        Some(
            r @ kiln_rootfs::RootfsError::Extract {
                source: kiln_rootfs::extract::ExtractError::TooLarge { limit, written, .. },
                ..
            },
        ) => {
            assert_eq!(*limit, 64 * MIB + 4 * 1024);
            assert!(*written <= *limit, "{written} written");
            assert!(r.hint().unwrap().contains("KILN_UNPACK_LIMIT"));
        }
        _ => panic!("not refused as a bomb: {text}"),
    }
    assert!(!work.path().join("out/rootfs.tar").exists());
}

#[test]
fn an_honest_package_that_understates_its_size_a_little_still_builds() {
    // 70 MiB declared as 32 MiB: within 4 × 32 MiB + 64 MiB.
    let honest = Pkg::new("honest", "1")
        .arch("amd64")
        .depends("base-files")
        .installed_size(32 * 1024)
        .zeros("usr/lib/honest/data", 70 * MIB);
    let repo = Repo::build(&[base_files(), honest], "amd64", &ReleaseOpts::default());
    let work = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let req = request(&repo, work.path(), cache.path(), &["honest"], "\"tar\"");
    kiln_build::build(&req, &NullReporter, &Cancel::new()).expect("the build succeeds");
    let tarball = work.path().join("out/rootfs.tar");
    assert_eq!(member_size(&tarball, "usr/lib/honest/data"), Some(70 * MIB));
}

#[test]
fn packages_that_outgrow_their_room_in_ram_are_built_again_on_disk() {
    // Five packages declaring 1 KiB each and unpacking 60 MiB each: each
    // within its own limit (64 MiB + 4 KiB), all together more than the
    // 256 MiB (and twice what they declare) a build area in RAM lets them have.
    let mut pkgs = vec![base_files()];
    let mut names = Vec::new();
    for i in 0..5 {
        let name = format!("big{i}");
        pkgs.push(
            Pkg::new(&name, "1")
                .arch("amd64")
                .depends("base-files")
                .zeros(&format!("usr/share/{name}/data"), 60 * MIB),
        );
        names.push(name);
    }
    let repo = Repo::build(&pkgs, "amd64", &ReleaseOpts::default());
    let work = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let include: Vec<&str> = names.iter().map(String::as_str).collect();
    let req = request(&repo, work.path(), cache.path(), &include, "\"tar\"");
    let events = kiln_model::Collect::default();
    kiln_build::build(&req, &events, &Cancel::new()).expect("the build succeeds");
    let tarball = work.path().join("out/rootfs.tar");
    for n in &names {
        assert_eq!(
            member_size(&tarball, &format!("usr/share/{n}/data")),
            Some(60 * MIB)
        );
    }
    // Where /dev/shm was chosen, the build moved to disk, saying so.
    let declared = 6 * 1024;
    let in_ram = std::env::var_os("KILN_TMPDIR").is_none()
        && kiln_model::fsutil::shm_room(
            declared,
            kiln_model::fsutil::free_space(Path::new("/dev/shm")),
        )
        .is_some();
    let warnings: Vec<String> = events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            kiln_model::Event::Warning { message } => Some(message.clone()),
            _ => None,
        })
        .collect();
    if in_ram {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("assembling again on disk")),
            "{warnings:?}"
        );
    }
}

/// `count` packages of 256 KiB of incompressible bytes each, served over
/// HTTP by the test server, as the fetcher's references to them.
fn served_debs(
    count: usize,
    dir: &Path,
) -> (kiln_testkit::HttpServer, Vec<kiln_archive::debs::DebRef>) {
    let mut refs = Vec::new();
    let mut names = Vec::new();
    for i in 0..count {
        let data = kiln_testkit::noise(256 * 1024, 0x9e37_79b9_7f4a_7c15 + i as u64);
        let deb = kiln_testkit::build_deb(
            &Pkg::new(&format!("p{i}"), "1")
                .arch("amd64")
                .file("usr/share/p/data", &data),
            dir,
        );
        names.push(deb);
    }
    let server = kiln_testkit::HttpServer::serve(dir);
    for deb in names {
        let bytes = std::fs::read(&deb).unwrap();
        let name = deb.file_name().unwrap().to_str().unwrap().to_string();
        refs.push(kiln_archive::debs::DebRef {
            label: name.clone(),
            url: format!("{}/{name}", server.url()),
            sha256: kiln_testkit::sha256_hex(&bytes),
            size: bytes.len() as u64,
        });
    }
    (server, refs)
}

/// Every file under `dir` whose name starts with `prefix`.
fn files_named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_named(&p, prefix));
        } else if e.file_name().to_string_lossy().starts_with(prefix) {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_mirror_that_drops_connections_under_parallel_load_costs_retries_not_cache_entries() {
    let served = tempfile::tempdir().unwrap();
    let (server, refs) = served_debs(24, served.path());
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = kiln_archive::Cache::new(cache_dir.path());
    // Every third file is cut off halfway and its connection closed.
    server
        .cut_every
        .store(3, std::sync::atomic::Ordering::SeqCst);
    let fetcher = kiln_archive::Fetcher::new();
    let paths =
        kiln_archive::debs::fetch_debs(&refs, &cache, &fetcher, 6, false, &|_, _| {}).unwrap();
    for (r, p) in refs.iter().zip(&paths) {
        let bytes = std::fs::read(p).unwrap();
        assert_eq!(kiln_testkit::sha256_hex(&bytes), r.sha256, "{}", r.label);
    }
    let requests = server.log.lock().unwrap().len();
    assert!(
        requests > refs.len(),
        "the cut downloads were asked again: {requests} requests"
    );
    assert!(files_named(cache_dir.path(), kiln_archive::cache::TEMP_PREFIX).is_empty());

    // A mirror that cuts every download, with one attempt each: the build
    // stops with the reason, and nothing half-written is in the cache.
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = kiln_archive::Cache::new(cache_dir.path());
    server
        .cut_every
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let mut fetcher = kiln_archive::Fetcher::new();
    fetcher.attempts = 1;
    let e =
        kiln_archive::debs::fetch_debs(&refs, &cache, &fetcher, 6, false, &|_, _| {}).unwrap_err();
    let text = e.to_string();
    assert!(text.contains(&server.url()), "{text}");
    assert!(
        text.contains("interrupted") || text.contains("closed"),
        "{text}"
    );
    for r in &refs {
        assert!(!cache.deb_path(&r.sha256).exists(), "{} cached", r.label);
    }
    assert!(files_named(cache_dir.path(), kiln_archive::cache::TEMP_PREFIX).is_empty());
}

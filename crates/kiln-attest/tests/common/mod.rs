//! Fixtures and helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use kiln_attest::{
    ImageKind, OsRelease, ProvenanceInput, ResolvedDependency, SbomInput, SbomPackage, Subject,
};
use sha2::{Digest, Sha256};

pub fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn pkg(
    name: &str,
    version: &str,
    arch: &str,
    source: (&str, &str),
    license: Option<&str>,
    deps: &[&str],
) -> SbomPackage {
    let (source, source_version) = source;
    let dir = if source.starts_with("lib") {
        &source[..4]
    } else {
        &source[..1]
    };
    // Pool file names leave out the epoch.
    let file_version = version.split_once(':').map_or(version, |(_, v)| v);
    SbomPackage {
        name: name.into(),
        version: version.into(),
        architecture: arch.into(),
        source: source.into(),
        source_version: source_version.into(),
        sha256: sha(&format!("{name}_{version}_{arch}.deb")),
        download_url: format!(
            "http://mirror.invalid/debian/pool/main/{dir}/{source}/{name}_{file_version}_{arch}.deb"
        ),
        license: license.map(str::to_string),
        // As Debian's Maintainer fields are: a team with a list address,
        // or (for the one without) nothing known.
        maintainer: (name != "zlib1g")
            .then(|| format!("Debian {source} Maintainers <{source}@lists.invalid>")),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
    }
}

/// A small but realistic trixie image: epochs, `+` in names and versions,
/// binNMU versions differing from the source version, a multi-arch pair,
/// compound and LicenseRef licences, one unknown licence, dependencies on
/// virtual or missing packages.
pub fn sbom_input() -> SbomInput {
    let gcc = ("gcc-14", "14.2.0-19");
    SbomInput {
        image: "debian-trixie-minimal".into(),
        version: Some("2025.06.1".into()),
        kind: ImageKind::Container,
        architecture: "amd64".into(),
        os: OsRelease::from_files(
            Some("PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"13\"\nID=debian\n"),
            Some("13.1\n"),
            "trixie",
        ),
        suite: "trixie".into(),
        created: 1_750_000_000,
        tool: "kiln 0.1.0".into(),
        packages: vec![
            pkg(
                "libc6",
                "2.41-12",
                "amd64",
                ("glibc", "2.41-12"),
                None,
                &["libgcc-s1"],
            ),
            pkg(
                "libc6",
                "2.41-12",
                "i386",
                ("glibc", "2.41-12"),
                None,
                &["libgcc-s1:i386"],
            ),
            pkg(
                "libgcc-s1",
                "14.2.0-19",
                "amd64",
                gcc,
                Some("GPL-3.0-or-later WITH GCC-exception-3.1"),
                &["gcc-14-base", "libc6"],
            ),
            pkg(
                "libgcc-s1",
                "14.2.0-19",
                "i386",
                gcc,
                Some("GPL-3.0-or-later WITH GCC-exception-3.1"),
                &["gcc-14-base", "libc6"],
            ),
            pkg(
                "gcc-14-base",
                "14.2.0-19",
                "amd64",
                gcc,
                Some("GPL-3.0-or-later"),
                &[],
            ),
            pkg(
                "libstdc++6",
                "14.2.0-19",
                "amd64",
                gcc,
                Some("GPL-3.0-or-later WITH GCC-exception-3.1"),
                &["gcc-14-base", "libc6", "libgcc-s1"],
            ),
            pkg(
                "zlib1g",
                "1:1.3.dfsg+really1.3.1-1+b1",
                "amd64",
                ("zlib", "1:1.3.dfsg+really1.3.1-1"),
                Some("Zlib"),
                &["libc6"],
            ),
            pkg(
                "bash",
                "5.2.37-2+b5",
                "amd64",
                ("bash", "5.2.37-2"),
                Some("GPL-3.0-or-later"),
                &["base-files", "debianutils", "libtinfo6"],
            ),
            pkg(
                "base-files",
                "13.8",
                "amd64",
                ("base-files", "13.8"),
                Some("GPL-2.0-or-later"),
                &[],
            ),
            pkg(
                "debianutils",
                "5.23.2",
                "amd64",
                ("debianutils", "5.23.2"),
                Some("GPL-2.0-or-later"),
                &["libc6"],
            ),
            pkg(
                "libtinfo6",
                "6.5+20250216-2",
                "amd64",
                ("ncurses", "6.5+20250216-2"),
                Some("X11"),
                &["libc6"],
            ),
            pkg(
                "perl-base",
                "5.40.1-6",
                "amd64",
                ("perl", "5.40.1-6"),
                Some("Artistic-1.0-Perl OR GPL-1.0-or-later"),
                &["libc6", "libcrypt1", "dpkg"],
            ),
            pkg(
                "tzdata",
                "2025b-4+deb13u1",
                "all",
                ("tzdata", "2025b-4+deb13u1"),
                Some("LicenseRef-public-domain"),
                &["debconf | debconf-2.0"],
            ),
            pkg(
                "libcrypt1",
                "1:4.4.38-1",
                "amd64",
                ("libxcrypt", "1:4.4.38-1"),
                Some("LGPL-2.1-or-later AND BSD-3-Clause AND LicenseRef-other-BSD-like"),
                &["libc6"],
            ),
        ],
    }
}

pub fn provenance_input() -> ProvenanceInput {
    let input = sbom_input();
    ProvenanceInput {
        subjects: vec![
            Subject {
                name: "debian-trixie-minimal.raw".into(),
                sha256: sha("image"),
            },
            Subject {
                name: "debian-trixie-minimal.spdx.json".into(),
                sha256: sha("sbom"),
            },
        ],
        dependencies: std::iter::once(ResolvedDependency {
            uri: "file:kiln.lock".into(),
            sha256: sha("lock"),
            name: Some("kiln.lock".into()),
        })
        .chain(input.packages.iter().map(|p| ResolvedDependency {
            uri: p.download_url.clone(),
            sha256: p.sha256.clone(),
            name: None,
        }))
        .collect(),
        build_type: "https://kiln.invalid/build-types/image/v1".into(),
        builder_id: "https://kiln.invalid/builders/local".into(),
        kiln_version: "0.1.0".into(),
        external_parameters: serde_json::json!({
            "recipe": {"path": "image.toml", "sha256": sha("recipe")},
            "lock": {"path": "kiln.lock", "sha256": sha("lock")},
            "suite": "trixie",
            "architectures": ["amd64", "i386"],
        }),
        started: 1_750_000_000,
        finished: 1_750_000_123,
    }
}

/// Runs a program, failing the test with `install` as advice when it is not
/// installed.
pub fn run(program: &str, args: &[&str], cwd: &Path, install: &str) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}); this test needs it: {install}"))
}

pub fn text(output: &Output) -> String {
    format!(
        "exit status: {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

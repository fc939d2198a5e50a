//! The build manifest: what one `kiln build` made, from which packages.
//! Written by the build as `DIR/manifest.json`, read by `verify`, `test`
//! and everything after them. Paths in it are relative to `DIR`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The schema this Kiln writes and reads. Raise it when a field changes
/// meaning or a required field is added.
pub const SCHEMA_VERSION: u32 = 1;

pub const MANIFEST_FILE: &str = "manifest.json";

/// Present in an output directory while a build is writing into it; removed
/// once every record is in place. Its presence means "interrupted".
pub const INCOMPLETE_MARKER: &str = ".kiln-incomplete";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Manifest {
    pub schema_version: u32,
    pub image: String,
    pub version: Option<String>,
    pub suite: String,
    pub architectures: Vec<String>,
    pub distroless: bool,
    pub source_date_epoch: i64,
    pub lock: LockRef,
    pub packages: Vec<PackageRecord>,
    pub outputs: Vec<Artifact>,
    /// Disk facts per image architecture (empty without disk outputs).
    pub disk: BTreeMap<String, DiskFacts>,
    /// The recipe's `[[test]]` entries, for `kiln test` on the image alone.
    pub tests: Vec<TestSpec>,
    /// Accounts the recipe creates (allowed by the image checks).
    pub users: Vec<String>,
    pub generator: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LockRef {
    /// The lock file, relative to the output directory.
    pub path: String,
    pub recipe_sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PackageRecord {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// The image architecture it was installed for.
    pub target: String,
    pub source: String,
    pub source_version: String,
    pub sha256: String,
}

/// What an artifact is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    Tar,
    Oci,
    Disk,
    Qcow2,
    /// Azure's fixed VHD of the disk (`disk.vhd`).
    Vhd,
    /// GCE's import archive of the disk (`disk.tar.gz`, `disk.raw` alone
    /// in a GNU tar).
    Gce,
    /// A split update artifact of an immutable disk (the `/usr` image, its
    /// verity hash tree or the UKI), what systemd-sysupdate downloads.
    Update,
}

impl Format {
    pub const ALL: [Format; 7] = [
        Format::Tar,
        Format::Oci,
        Format::Disk,
        Format::Qcow2,
        Format::Vhd,
        Format::Gce,
        Format::Update,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::Tar => "tar",
            Format::Oci => "oci",
            Format::Disk => "disk",
            Format::Qcow2 => "qcow2",
            Format::Vhd => "vhd",
            Format::Gce => "gce",
            Format::Update => "update",
        }
    }

    /// A disk image or a conversion of one (what `kiln boot` and the disk
    /// build steps are for).
    pub fn is_disk(self) -> bool {
        matches!(
            self,
            Format::Disk | Format::Qcow2 | Format::Vhd | Format::Gce
        )
    }

    pub fn parse(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == s)
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One written artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Artifact {
    /// Relative to the output directory.
    pub path: String,
    pub format: Format,
    /// None for a multi-architecture OCI index.
    pub architecture: Option<String>,
    pub size: u64,
    /// Of the file; for `oci`, of the top image index or manifest.
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DiskFacts {
    /// `standard` or `immutable`.
    pub layout: String,
    /// The kernel version the UKI boots.
    pub kernel: String,
    pub root_filesystem: String,
    pub cmdline: String,
    pub usr: Option<UsrFacts>,
    /// An `[update]` image: what it updates from and its update files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateFacts>,
    pub partitions: Vec<PartitionFact>,
}

/// How an `[update]` image updates itself (docs/updates.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct UpdateFacts {
    /// The image version (`IMAGE_VERSION`).
    pub version: String,
    /// The download tree the machine reads `sysupdate/CHANNEL/` from.
    pub url: String,
    pub channel: String,
    /// Boots a new version gets before the machine goes back.
    pub tries: u32,
    /// OpenPGP fingerprint of the key the image trusts for its updates.
    pub key_fingerprint: String,
    /// The update files, relative to the output directory.
    pub usr: String,
    pub verity: String,
    pub uki: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct UsrFacts {
    pub filesystem: String,
    pub roothash: String,
    pub partuuid: String,
    pub verity_partuuid: String,
    pub size: u64,
    pub ab_slots: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PartitionFact {
    pub label: String,
    #[serde(rename = "type")]
    pub type_guid: String,
    pub partuuid: String,
    /// Bytes from the start of the disk.
    pub offset: u64,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TestSpec {
    pub name: String,
    pub command: String,
    pub expect: Option<String>,
    /// A health check of an updating image (its boot is blessed only when it passes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub health: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{} has no {MANIFEST_FILE}: it is not the output directory of a kiln build", dir.display())]
    Missing { dir: PathBuf },
    #[error("{} is incomplete: the build writing it was interrupted or failed", dir.display())]
    Incomplete { dir: PathBuf },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("{} has schema version {found}; this kiln ({}) reads version {SCHEMA_VERSION}", path.display(), env!("CARGO_PKG_VERSION"))]
    Newer { path: PathBuf, found: u64 },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ManifestError {
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            ManifestError::Missing { .. } => {
                "give the directory `kiln build` wrote (its --output, or out/NAME beside the recipe)"
                    .into()
            }
            ManifestError::Incomplete { .. } => {
                "build it again; nothing in it can be trusted until a build finishes".into()
            }
            ManifestError::Invalid { .. } => {
                "the manifest was edited or damaged: build again to rewrite it".into()
            }
            ManifestError::Newer { .. } => {
                "read it with the newer kiln that wrote it, or upgrade this one".into()
            }
            ManifestError::Io { .. } => return None,
        })
    }
}

impl Manifest {
    /// The update facts of an `[update]` build (none for other builds).
    pub fn update_facts(&self) -> Option<UpdateFacts> {
        self.disk.values().find_map(|d| d.update.clone())
    }

    /// Whether the build writing into `dir` did not finish.
    pub fn is_incomplete(dir: &Path) -> bool {
        dir.join(INCOMPLETE_MARKER).exists()
    }

    /// Reads `DIR/manifest.json`, refusing incomplete directories, newer
    /// schemas, and missing, unknown or mistyped fields (named in the error).
    pub fn read_dir(dir: &Path) -> Result<Manifest, ManifestError> {
        if Manifest::is_incomplete(dir) {
            return Err(ManifestError::Incomplete {
                dir: dir.to_path_buf(),
            });
        }
        let path = dir.join(MANIFEST_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ManifestError::Missing {
                    dir: dir.to_path_buf(),
                })
            }
            Err(source) => return Err(ManifestError::Io { path, source }),
        };
        Manifest::parse(&bytes, &path)
    }

    /// Parses manifest bytes; `path` names the file in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Manifest, ManifestError> {
        let invalid = |message: String| ManifestError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        // The version first: a newer manifest may have fields this one lacks.
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
        match value.get("schema-version") {
            None => return Err(invalid("missing field `schema-version`".into())),
            Some(v) => match v.as_u64() {
                Some(n) if n > SCHEMA_VERSION as u64 => {
                    return Err(ManifestError::Newer {
                        path: path.to_path_buf(),
                        found: n,
                    })
                }
                Some(_) => {}
                None => return Err(invalid(format!("`schema-version` is {v}, not a number"))),
            },
        }
        serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))
    }

    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("manifests serialise");
        s.push('\n');
        s
    }

    /// The lock this build used, resolved against the output directory.
    pub fn lock_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.lock.path)
    }

    /// The SBOMs beside this manifest (see [`sbom_files`]).
    pub fn sbom_files(&self) -> Vec<SbomFiles> {
        sbom_files(&self.architectures)
    }
}

/// The two SBOMs of one architecture of a build, relative to the output
/// directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SbomFiles {
    pub architecture: String,
    pub spdx: String,
    pub cyclonedx: String,
}

/// Where a build of `architectures` writes its SBOMs: `sbom.spdx.json` and
/// `sbom.cdx.json` for a single architecture, `sbom.ARCH.spdx.json` and
/// `sbom.ARCH.cdx.json` for each of several (one document describes one
/// image: scanners take an SBOM as one system).
pub fn sbom_files(architectures: &[String]) -> Vec<SbomFiles> {
    architectures
        .iter()
        .map(|a| {
            let stem = if architectures.len() == 1 {
                "sbom".to_string()
            } else {
                format!("sbom.{a}")
            };
            SbomFiles {
                architecture: a.clone(),
                spdx: format!("{stem}.spdx.json"),
                cyclonedx: format!("{stem}.cdx.json"),
            }
        })
        .collect()
}

/// `path` relative to `base` (both made absolute against the current
/// directory first), with `..` where needed.
pub fn relative_path(path: &Path, base: &Path) -> PathBuf {
    let abs = |p: &Path| -> PathBuf {
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().unwrap_or_default().join(p)
        };
        // Lexical normalisation; canonicalize where the path exists.
        p.canonicalize().unwrap_or(p)
    };
    let (p, b) = (abs(path), abs(base));
    let pc: Vec<_> = p.components().collect();
    let bc: Vec<_> = b.components().collect();
    let common = pc.iter().zip(&bc).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..bc.len() {
        out.push("..");
    }
    for c in &pc[common..] {
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            schema_version: SCHEMA_VERSION,
            image: "demo".into(),
            version: Some("1".into()),
            suite: "trixie".into(),
            architectures: vec!["amd64".into()],
            distroless: true,
            source_date_epoch: 1_700_000_000,
            lock: LockRef {
                path: "../../demo.lock".into(),
                recipe_sha256: "ab".repeat(32),
            },
            packages: vec![PackageRecord {
                name: "base-files".into(),
                version: "13".into(),
                architecture: "amd64".into(),
                target: "amd64".into(),
                source: "base-files".into(),
                source_version: "13".into(),
                sha256: "cd".repeat(32),
            }],
            outputs: vec![Artifact {
                path: "oci".into(),
                format: Format::Oci,
                architecture: Some("amd64".into()),
                size: 300,
                sha256: "ef".repeat(32),
            }],
            disk: BTreeMap::new(),
            tests: vec![],
            users: vec![],
            generator: "kiln 0.1.0".into(),
        }
    }

    fn parse(s: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(s.as_bytes(), Path::new("out/manifest.json"))
    }

    #[test]
    fn round_trips() {
        let m = sample();
        assert_eq!(parse(&m.to_json()).unwrap(), m);
    }

    #[test]
    fn a_mistyped_field_is_named_with_the_file() {
        let s = sample().to_json().replace("\"outputs\"", "\"outptus\"");
        let e = parse(&s).unwrap_err().to_string();
        assert!(e.contains("out/manifest.json"), "{e}");
        assert!(e.contains("outptus"), "{e}");
    }

    #[test]
    fn a_wrongly_typed_test_entry_is_an_error_not_an_empty_list() {
        let s = sample().to_json().replace(
            "\"tests\": []",
            "\"tests\": [{\"name\": \"x\", \"cmd\": \"true\"}]",
        );
        let e = parse(&s).unwrap_err().to_string();
        assert!(e.contains("cmd") || e.contains("command"), "{e}");
    }

    #[test]
    fn a_missing_field_is_named() {
        let mut v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        v.as_object_mut().unwrap().remove("suite");
        let e = parse(&v.to_string()).unwrap_err().to_string();
        assert!(e.contains("missing field `suite`"), "{e}");
    }

    #[test]
    fn a_newer_schema_says_which_kiln_reads_it() {
        let mut v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        v["schema-version"] = 7.into();
        v["something-new"] = true.into();
        let e = parse(&v.to_string()).unwrap_err();
        assert!(matches!(e, ManifestError::Newer { found: 7, .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("schema version 7") && msg.contains("reads version 1"),
            "{msg}"
        );
    }

    #[test]
    fn an_interrupted_directory_is_incomplete() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(MANIFEST_FILE), sample().to_json()).unwrap();
        assert!(Manifest::read_dir(d.path()).is_ok());
        std::fs::write(d.path().join(INCOMPLETE_MARKER), "").unwrap();
        assert!(matches!(
            Manifest::read_dir(d.path()),
            Err(ManifestError::Incomplete { .. })
        ));
    }

    #[test]
    fn relative_paths_climb_out_of_the_output_directory() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("recipes/out/demo");
        std::fs::create_dir_all(&out).unwrap();
        let lock = d.path().join("recipes/demo.lock");
        std::fs::write(&lock, "").unwrap();
        assert_eq!(relative_path(&lock, &out), Path::new("../../demo.lock"));
    }
}

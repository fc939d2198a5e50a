//! A build's output directory as something to publish: its manifest, its
//! artifacts checked against the manifest, and the records beside them
//! (SBOMs, provenance, test reports).
//!
//! The directory is read through [`Root`], so a link planted in it cannot
//! make Kiln publish a file from elsewhere on the machine.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use kiln_model::manifest::{Format, Manifest, MANIFEST_FILE};
use kiln_rootfs::inroot::Root;
use sha2::{Digest, Sha256};

use crate::PublishError;

/// What a published file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Artifact,
    Manifest,
    SbomSpdx,
    SbomCycloneDx,
    Provenance,
    TestReport,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Artifact => "artifact",
            Role::Manifest => "manifest",
            Role::SbomSpdx => "sbom-spdx",
            Role::SbomCycloneDx => "sbom-cyclonedx",
            Role::Provenance => "provenance",
            Role::TestReport => "test-report",
        }
    }

    /// The media type a registry gets it under (the `artifactType` of the
    /// OCI artifact attached to the image).
    pub fn media_type(self) -> &'static str {
        match self {
            Role::Artifact => "application/octet-stream",
            Role::Manifest => "application/vnd.kiln.manifest.v1+json",
            Role::SbomSpdx => "application/spdx+json",
            Role::SbomCycloneDx => "application/vnd.cyclonedx+json",
            Role::Provenance => "application/vnd.dsse.envelope.v1+json",
            Role::TestReport => "application/vnd.kiln.test-report.junit+xml",
        }
    }
}

/// One file to publish.
#[derive(Clone, Debug)]
pub struct BuildFile {
    pub role: Role,
    /// The name it is published under (`oci.tar` for an OCI layout).
    pub name: String,
    /// Relative to the build directory (`oci` for an OCI layout).
    pub rel: String,
    pub format: Option<Format>,
    pub architecture: Option<String>,
    /// Size and sha256 of the file; None for an OCI layout, whose archive
    /// is made while publishing.
    pub digest: Option<(u64, String)>,
}

/// A finished build, checked.
pub struct Build {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// sha256 of `manifest.json`: the build's identity (as in the catalog).
    pub id: String,
    pub files: Vec<BuildFile>,
    root: Root,
}

impl Build {
    /// Reads `dir`'s manifest and checks every artifact's size and sha256
    /// against it (the OCI layout: every blob against its name and the top
    /// index against the manifest). A changed artifact is refused here,
    /// before anything is uploaded.
    pub fn open(dir: &Path, progress: &dyn Fn(&str)) -> Result<Build, PublishError> {
        let bad = |message: String| PublishError::Build {
            path: dir.to_path_buf(),
            message,
        };
        if Manifest::is_incomplete(dir) {
            return Err(bad(
                "the build writing here was interrupted or failed: not published".into(),
            ));
        }
        let root = Root::open(dir).map_err(|e| bad(format!("cannot open the directory: {e}")))?;
        let bytes = root.read(MANIFEST_FILE).map_err(|e| {
            bad(format!(
                "no readable {MANIFEST_FILE} ({e}): not the output directory of a kiln build"
            ))
        })?;
        let manifest =
            Manifest::parse(&bytes, &dir.join(MANIFEST_FILE)).map_err(|e| bad(e.to_string()))?;
        let id = hex::encode(Sha256::digest(&bytes));
        let mut files = Vec::new();
        for a in &manifest.outputs {
            if a.format == Format::Oci {
                progress(&format!("checking {}/", a.path));
                check_layout(&root, &a.path, &a.sha256)
                    .map_err(|m| bad(format!("{}/: {m}", a.path)))?;
                files.push(BuildFile {
                    role: Role::Artifact,
                    name: "oci.tar".into(),
                    rel: a.path.clone(),
                    format: Some(a.format),
                    architecture: a.architecture.clone(),
                    digest: None,
                });
                continue;
            }
            progress(&format!("checking {}", a.path));
            let (size, sha) =
                file_digest(&root, &a.path).map_err(|e| bad(format!("{}: {e}", a.path)))?;
            if size != a.size || sha != a.sha256 {
                return Err(bad(format!(
                    "{} changed after its build (manifest: {} bytes, sha256 {}; now {size} bytes, sha256 {sha})",
                    a.path, a.size, a.sha256
                )));
            }
            files.push(BuildFile {
                role: Role::Artifact,
                name: file_name(&a.path),
                rel: a.path.clone(),
                format: Some(a.format),
                architecture: a.architecture.clone(),
                digest: Some((size, sha)),
            });
        }
        files.push(BuildFile {
            role: Role::Manifest,
            name: MANIFEST_FILE.into(),
            rel: MANIFEST_FILE.into(),
            format: None,
            architecture: None,
            digest: Some((bytes.len() as u64, id.clone())),
        });
        let mut records: Vec<(Role, String, Option<String>)> = Vec::new();
        for s in manifest.sbom_files() {
            records.push((Role::SbomSpdx, s.spdx, Some(s.architecture.clone())));
            records.push((Role::SbomCycloneDx, s.cyclonedx, Some(s.architecture)));
        }
        records.push((Role::Provenance, "provenance.json".into(), None));
        let mut reports: Vec<String> = root
            .read_dir(".")
            .map_err(|e| bad(format!("cannot list the directory: {e}")))?
            .into_iter()
            .filter_map(|(n, _)| n.into_string().ok())
            .filter(|n| n.ends_with(".test.xml"))
            .collect();
        reports.sort();
        for r in reports {
            records.push((Role::TestReport, r, None));
        }
        for (role, rel, architecture) in records {
            match file_digest(&root, &rel) {
                Ok(d) => files.push(BuildFile {
                    role,
                    name: rel.clone(),
                    rel,
                    format: None,
                    architecture,
                    digest: Some(d),
                }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && role == Role::TestReport => {}
                Err(e) => return Err(bad(format!("{rel}: {e}"))),
            }
        }
        Ok(Build {
            dir: dir.to_path_buf(),
            manifest,
            id,
            files,
            root,
        })
    }

    /// The version key of this build in a download tree: its date (from
    /// `SOURCE_DATE_EPOCH`) and the start of its id, so keys sort by date as
    /// plain bytes (as simplestreams wants) and two builds never share one.
    pub fn version_key(&self) -> String {
        let t = crate::rfc3339(self.manifest.source_date_epoch);
        // 2026-12-01T10:20:30Z -> 20261201T102030Z
        let compact: String = t.chars().filter(|c| *c != '-' && *c != ':').collect();
        format!("{compact}-{}", &self.id[..12])
    }

    /// Writes `f` into `out` (an OCI layout as a reproducible tar archive)
    /// and returns what was written: size and sha256. Fails if the content
    /// is not what was checked when the build was opened.
    pub fn write_file(
        &self,
        f: &BuildFile,
        out: &mut dyn Write,
    ) -> Result<(u64, String), PublishError> {
        let bad = |message: String| PublishError::Build {
            path: self.dir.clone(),
            message,
        };
        let mut w = HashingWriter {
            inner: out,
            hash: Sha256::new(),
            n: 0,
        };
        if f.digest.is_none() {
            write_layout_tar(&self.root, &f.rel, self.manifest.source_date_epoch, &mut w)
                .map_err(|e| bad(format!("{}/: {e}", f.rel)))?;
        } else {
            let mut input = self
                .root
                .open_file(&f.rel)
                .map_err(|e| bad(format!("{}: {e}", f.rel)))?;
            std::io::copy(&mut input, &mut w).map_err(|e| bad(format!("{}: {e}", f.rel)))?;
        }
        let got = (w.n, hex::encode(w.hash.finalize()));
        if let Some(want) = &f.digest {
            if *want != got {
                return Err(bad(format!(
                    "{} changed while it was being published",
                    f.rel
                )));
            }
        }
        Ok(got)
    }

    /// The host path of a file (for uploads that stream from a path).
    pub fn path_of(&self, f: &BuildFile) -> PathBuf {
        self.dir.join(&f.rel)
    }

    pub fn root(&self) -> &Root {
        &self.root
    }
}

fn file_name(rel: &str) -> String {
    rel.rsplit('/').next().unwrap_or(rel).to_string()
}

fn file_digest(root: &Root, rel: &str) -> std::io::Result<(u64, String)> {
    let mut f = root.open_file(rel)?;
    crate::verify::hash(&mut f)
}

struct HashingWriter<'a> {
    inner: &'a mut dyn Write,
    hash: Sha256,
    n: u64,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.hash.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The files of an OCI layout, checked: `oci-layout`, `index.json`, and
/// `blobs/sha256/HEX` files only (no links, nothing else), the top blob
/// present.
fn layout_files(root: &Root, rel: &str, top: &str) -> Result<Vec<String>, String> {
    let mut out = vec![format!("{rel}/oci-layout"), format!("{rel}/index.json")];
    for f in &out {
        let m = root.metadata(f).map_err(|e| format!("{f}: {e}"))?;
        if !m.is_file() {
            return Err(format!("{f} is not a regular file"));
        }
    }
    let blobs = format!("{rel}/blobs/sha256");
    let entries = root.read_dir(&blobs).map_err(|e| format!("{blobs}: {e}"))?;
    let mut names = Vec::new();
    for (name, _) in entries {
        let name = name
            .into_string()
            .map_err(|_| "a blob name that is not UTF-8".to_string())?;
        let path = format!("{blobs}/{name}");
        if !is_hex64(&name) {
            return Err(format!("{path} is not a sha256 blob name"));
        }
        if !root
            .metadata(&path)
            .map_err(|e| format!("{path}: {e}"))?
            .is_file()
        {
            return Err(format!("{path} is not a regular file"));
        }
        names.push(name);
    }
    if !names.iter().any(|n| n == top) {
        return Err(format!(
            "the image index sha256:{top} the manifest names is missing"
        ));
    }
    names.sort();
    out.extend(names.into_iter().map(|n| format!("{blobs}/{n}")));
    Ok(out)
}

fn check_layout(root: &Root, rel: &str, top: &str) -> Result<(), String> {
    for f in layout_files(root, rel, top)? {
        if let Some(name) = f.strip_prefix(&format!("{rel}/blobs/sha256/")) {
            let (_, sha) = file_digest(root, &f).map_err(|e| format!("{f}: {e}"))?;
            if sha != name {
                return Err(format!(
                    "blob {name} changed after its build (its content hashes to {sha})"
                ));
            }
        }
    }
    Ok(())
}

/// The layout as a tar archive (`skopeo copy oci-archive:oci.tar …` reads
/// it): sorted entries, owner 0:0, modes 0755/0644, times the build's
/// `SOURCE_DATE_EPOCH`, so the same layout gives the same bytes.
fn write_layout_tar(
    root: &Root,
    rel: &str,
    mtime: i64,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let files = layout_files_any(root, rel)?;
    let mut b = tar::Builder::new(out);
    // Every entry owned by 0:0 with the build's time: the same bytes anywhere.
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime.max(0) as u64);
        h.set_size(size);
        h
    };
    for d in ["blobs/", "blobs/sha256/"] {
        b.append_data(
            &mut header(tar::EntryType::Directory, 0o755, 0),
            d,
            std::io::empty(),
        )?;
    }
    for f in files {
        let name = f.strip_prefix(&format!("{rel}/")).unwrap_or(&f).to_string();
        let mut input = root.open_file(&f)?;
        let size = input.metadata()?.len();
        let mut h = header(tar::EntryType::Regular, 0o644, size);
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            // Hash while archiving: a blob changed since the check fails.
            let mut r = VerifyingReader {
                inner: &mut input,
                hash: Sha256::new(),
                want: hex.to_string(),
                left: size,
            };
            b.append_data(&mut h, &name, &mut r)?;
        } else {
            b.append_data(&mut h, &name, &mut input)?;
        }
    }
    b.into_inner()?.flush()
}

fn layout_files_any(root: &Root, rel: &str) -> std::io::Result<Vec<String>> {
    // The top blob was checked when the build was opened; here any present
    // blob set is archived (and each verified while read).
    let blobs = format!("{rel}/blobs/sha256");
    let mut names: Vec<String> = root
        .read_dir(&blobs)?
        .into_iter()
        .filter_map(|(n, _)| n.into_string().ok())
        .filter(|n| is_hex64(n))
        .collect();
    names.sort();
    let mut out = vec![format!("{rel}/index.json"), format!("{rel}/oci-layout")];
    out.extend(names.into_iter().map(|n| format!("{blobs}/{n}")));
    Ok(out)
}

/// Reads `left` bytes and fails at the end if they do not hash to `want`.
struct VerifyingReader<'a> {
    inner: &'a mut std::fs::File,
    hash: Sha256,
    want: String,
    left: u64,
}

impl Read for VerifyingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let cap = buf.len().min(self.left as usize);
        let k = self.inner.read(&mut buf[..cap])?;
        if k == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "a blob shrank while it was archived",
            ));
        }
        self.hash.update(&buf[..k]);
        self.left -= k as u64;
        if self.left == 0 {
            let got = hex::encode(std::mem::take(&mut self.hash).finalize());
            if got != self.want {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("blob {} changed while it was archived", self.want),
                ));
            }
        }
        Ok(k)
    }
}

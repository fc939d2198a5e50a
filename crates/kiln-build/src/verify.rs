//! `kiln verify`: a build's output directory against its provenance, its
//! signature, its SBOMs and its lock.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_attest::VerifyingKey;
use kiln_model::{Hinted, Manifest, Reporter};
use kiln_recipe::{Lock, Recipe};

use crate::records::sha256_file;
use crate::sources::SourceOptions;

/// What a successful verification established.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct VerifyReport {
    pub verified: bool,
    /// Key id of the provenance signer; None when unsigned.
    pub signed_by: Option<String>,
    pub subjects: Vec<VerifiedSubject>,
    pub packages: usize,
    /// The lock the packages were checked against, if it was found.
    pub lock: Option<PathBuf>,
    /// The lock was proven against the signed indexes it names (which
    /// needs the recipe beside it, for its sources' keyrings).
    pub lock_proven: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifiedSubject {
    pub name: String,
    pub sha256: String,
}

fn tampered(what: String) -> anyhow::Error {
    Hinted::new(
        what,
        "the artifacts no longer match what the build recorded: rebuild them, or find out who changed them",
    )
    .into()
}

/// Checks every blob of an OCI layout against its name and the top digest.
fn verify_layout(layout: &Path, expected: &str) -> Result<()> {
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.join("index.json")).context("reading oci/index.json")?,
    )
    .map_err(|e| tampered(format!("oci/index.json is not valid JSON: {e}")))?;
    let top = index["manifests"][0]["digest"].as_str().unwrap_or("");
    if top.trim_start_matches("sha256:") != expected {
        return Err(tampered(format!(
            "oci/index.json points at {top}, the provenance records sha256:{expected}"
        )));
    }
    for e in std::fs::read_dir(layout.join("blobs/sha256")).context("reading oci/blobs")? {
        let p = e?.path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if sha256_file(&p)? != name {
            return Err(tampered(format!(
                "OCI blob {name} does not match its digest"
            )));
        }
    }
    if !layout.join("blobs/sha256").join(expected).exists() {
        return Err(tampered(format!(
            "the recorded image sha256:{expected} is missing from the layout"
        )));
    }
    Ok(())
}

/// (name, version) of every package an SBOM lists: SPDX `packages` that carry
/// a purl, or CycloneDX `components`.
fn sbom_packages(path: &Path, spdx: bool) -> Result<BTreeSet<(String, String)>> {
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .map_err(|e| tampered(format!("{} is not valid JSON: {e}", path.display())))?;
    let (list, version) = if spdx {
        ("packages", "versionInfo")
    } else {
        ("components", "version")
    };
    Ok(v[list]
        .as_array()
        .into_iter()
        .flatten()
        // Debian packages: what has a purl (not the image, not the
        // operating-system element).
        .filter(|p| {
            if spdx {
                p["externalRefs"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|x| x["referenceType"] == "purl"))
            } else {
                p["purl"]
                    .as_str()
                    .is_some_and(|u| u.starts_with("pkg:deb/"))
            }
        })
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p[version].as_str().unwrap_or("").to_string(),
            )
        })
        .collect())
}

/// Verifies `dir`. `key` is required when the provenance is signed;
/// `lock` overrides the lock named by the manifest. When the lock is found
/// and its recipe is beside it, the lock is proven against the signed
/// indexes it names (see [`crate::lock::check_against_indexes`]; `sources`
/// says where the cache is and whether the network may be used).
pub fn verify(
    dir: &Path,
    key: Option<&Path>,
    lock: Option<&Path>,
    sources: &SourceOptions,
    reporter: &dyn Reporter,
) -> Result<VerifyReport> {
    // An interrupted build is incomplete, not tampered with.
    let manifest = Manifest::read_dir(dir)?;
    let prov_path = dir.join("provenance.json");
    let envelope = std::fs::read_to_string(&prov_path).map_err(|e| {
        Hinted::new(
            format!("cannot read {}: {e}", prov_path.display()),
            "give the output directory of a finished `kiln build`",
        )
    })?;
    let env_json: serde_json::Value = serde_json::from_str(&envelope)
        .map_err(|e| tampered(format!("provenance.json is not valid JSON: {e}")))?;
    let signed = env_json["signatures"]
        .as_array()
        .is_some_and(|s| !s.is_empty());
    let (payload, signer) = match (key, signed) {
        (Some(k), _) => {
            let vk = VerifyingKey::from_pem_file(k)?;
            (
                kiln_attest::verify_envelope(&envelope, &vk)?,
                Some(vk.keyid()),
            )
        }
        (None, true) => {
            return Err(Hinted::new(
                "provenance.json is signed, but no key was given to check the signature with",
                "pass the signer's public key: kiln verify DIR --key key.pub",
            )
            .into())
        }
        (None, false) => {
            reporter.warn("provenance.json is unsigned: checking integrity only (anyone could have rewritten it)");
            use base64::Engine;
            let b64 = env_json["payload"].as_str().unwrap_or("");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| tampered(format!("provenance payload is not base64: {e}")))?;
            (bytes, None)
        }
    };
    let (subjects, deps) = kiln_attest::parse_statement(&payload)?;
    for s in &subjects {
        let p = dir.join(&s.name);
        if s.name == "oci" {
            verify_layout(&p, &s.sha256)?;
        } else {
            let actual = sha256_file(&p).map_err(|_| tampered(format!("{} is missing", s.name)))?;
            if actual != s.sha256 {
                return Err(tampered(format!(
                    "{} has sha256 {actual}, the provenance records {}",
                    s.name, s.sha256
                )));
            }
        }
    }
    // The SBOMs list exactly the packages of the build.
    let built: BTreeSet<(String, String)> = manifest
        .packages
        .iter()
        .map(|p| (p.name.clone(), p.version.clone()))
        .collect();
    let mut expected = built.clone();
    let lock_path = match lock {
        Some(l) => Some(l.to_path_buf()),
        None => Some(manifest.lock_path(dir)).filter(|p| p.exists()),
    };
    let mut lock_proven = false;
    match &lock_path {
        Some(l) => {
            let lock = Lock::read(l)?;
            // The recipe of NAME.lock is NAME.toml beside it.
            let recipe_path = l.with_extension("toml");
            if recipe_path.exists() {
                let recipe = Recipe::load(&recipe_path)?;
                crate::lock::check_against_indexes(&lock, &recipe, sources, reporter)
                    .with_context(|| {
                        format!(
                            "{} is not what the signed indexes it names publish",
                            l.display()
                        )
                    })?;
                lock_proven = true;
            } else {
                reporter.warn(&format!(
                    "{} is not beside the lock: the lock is not proven against the signed indexes it names",
                    recipe_path.display()
                ));
            }
            expected = lock
                .packages
                .iter()
                .map(|p| (p.name.clone(), p.version.clone()))
                .collect();
            if expected != built {
                return Err(tampered(format!(
                    "manifest.json does not list the packages of {}",
                    l.display()
                )));
            }
            // Same names and versions: the rest of each record must agree too.
            let locked: BTreeSet<[&str; 7]> = lock
                .packages
                .iter()
                .map(|p| {
                    [
                        &p.name,
                        &p.version,
                        &p.architecture,
                        &p.target,
                        &p.source,
                        &p.source_version,
                        &p.sha256,
                    ]
                    .map(String::as_str)
                })
                .collect();
            for p in &manifest.packages {
                let r = [
                    &p.name,
                    &p.version,
                    &p.architecture,
                    &p.target,
                    &p.source,
                    &p.source_version,
                    &p.sha256,
                ]
                .map(String::as_str);
                if !locked.contains(&r) {
                    let [name, version, arch, target, source, source_version, sha256] = r;
                    return Err(tampered(format!(
                        "manifest.json records {name} {version} ({arch}, for {target}, source {source} {source_version}, sha256 {sha256}), which is not in {}",
                        l.display()
                    )));
                }
            }
        }
        None => reporter.warn(&format!(
            "the lock {} is not there: the SBOMs are checked against manifest.json only",
            manifest.lock_path(dir).display()
        )),
    }
    // Each architecture's SBOMs list exactly its packages.
    for f in manifest.sbom_files() {
        let expected: BTreeSet<(String, String)> = manifest
            .packages
            .iter()
            .filter(|p| p.target == f.architecture)
            .map(|p| (p.name.clone(), p.version.clone()))
            .collect();
        for (name, spdx) in [(&f.spdx, true), (&f.cyclonedx, false)] {
            let set = sbom_packages(&dir.join(name), spdx)?;
            if set != expected {
                let missing: Vec<_> = expected.difference(&set).take(5).collect();
                let extra: Vec<_> = set.difference(&expected).take(5).collect();
                return Err(tampered(format!(
                    "{name} does not match the lock (missing {missing:?}, extra {extra:?})"
                )));
            }
        }
    }
    // Every package the build used is a resolved dependency of the provenance.
    let deb_hashes: BTreeSet<&str> = deps.iter().map(|d| d.sha256.as_str()).collect();
    for p in &manifest.packages {
        if !deb_hashes.contains(p.sha256.as_str()) {
            return Err(tampered(format!(
                "{} is not among the provenance's resolved dependencies",
                p.name
            )));
        }
    }
    Ok(VerifyReport {
        verified: true,
        signed_by: signer,
        subjects: subjects
            .iter()
            .map(|s| VerifiedSubject {
                name: s.name.clone(),
                sha256: s.sha256.clone(),
            })
            .collect(),
        packages: expected.len(),
        lock: lock_path,
        lock_proven,
    })
}

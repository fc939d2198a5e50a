//! Supply-chain records of a build (SBOMs, signed provenance) and
//! `kiln verify`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_attest::{
    ProvenanceInput, ResolvedDependency, SbomInput, SbomPackage, SigningKey, Subject, VerifyingKey,
};
use kiln_recipe::{Lock, LockedPackage, Recipe};
use serde_json::json;

use crate::build::Artifact;
use crate::lock::Hinted;
use crate::ui::Ui;

/// Licences read from the image's copyright files, by package name.
pub type Licences = HashMap<String, Option<String>>;

/// Reads `/usr/share/doc/PKG/copyright` of every package from a built root.
pub fn licences_from_root(root: &Path, pkgs: &[&LockedPackage], into: &mut Licences) {
    for p in pkgs {
        let text =
            std::fs::read_to_string(root.join("usr/share/doc").join(&p.name).join("copyright"))
                .unwrap_or_default();
        into.entry(p.name.clone())
            .or_insert_with(|| kiln_attest::license_from_copyright(&text));
    }
}

fn sbom_input(
    recipe: &Recipe,
    lock: &Lock,
    pkgs: &[&LockedPackage],
    licences: &Licences,
    epoch: i64,
) -> Result<SbomInput> {
    let mut packages = Vec::new();
    let mut seen = BTreeSet::new();
    for p in pkgs {
        // Architecture-independent packages appear once per image architecture.
        if !seen.insert((p.name.clone(), p.version.clone(), p.architecture.clone())) {
            continue;
        }
        let depends_on: Vec<String> = pkgs
            .iter()
            .filter(|q| q.target == p.target && q.required_by.contains(&p.name))
            .map(|q| q.name.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        packages.push(SbomPackage {
            name: p.name.clone(),
            version: p.version.clone(),
            architecture: p.architecture.clone(),
            source: p.source.clone(),
            source_version: p.source_version.clone(),
            sha256: p.sha256.clone(),
            download_url: crate::fetch::deb_ref(lock, p)?.url,
            license: licences.get(&p.name).cloned().flatten(),
            depends_on,
        });
    }
    Ok(SbomInput {
        image: recipe.image.name.clone(),
        version: recipe.image.version.clone(),
        suite: recipe.image.suite.clone(),
        created: epoch,
        tool: format!("kiln {}", env!("CARGO_PKG_VERSION")),
        packages,
    })
}

fn sha256_file(p: &Path) -> Result<String> {
    Ok(kiln_archive::debs::sha256_file(p)
        .with_context(|| format!("reading {}", p.display()))?
        .1)
}

/// Loads `--sign-key` early, so a bad key fails before any work.
pub fn load_signing_key(path: Option<&Path>) -> Result<Option<SigningKey>> {
    match path {
        None => Ok(None),
        Some(p) => Ok(Some(SigningKey::from_pem_file(p)?)),
    }
}

/// Writes `sbom.spdx.json`, `sbom.cdx.json` and `provenance.json` into `out`.
#[allow(clippy::too_many_arguments)]
pub fn write_records(
    ui: &Ui,
    recipe: &Recipe,
    lock: &Lock,
    pkgs: &[&LockedPackage],
    licences: &Licences,
    artifacts: &[Artifact],
    epoch: i64,
    started: i64,
    key: Option<&SigningKey>,
    out: &Path,
) -> Result<()> {
    let input = sbom_input(recipe, lock, pkgs, licences, epoch)?;
    crate::build::write_atomic(
        &out.join("sbom.spdx.json"),
        kiln_attest::spdx_json(&input).as_bytes(),
    )?;
    crate::build::write_atomic(
        &out.join("sbom.cdx.json"),
        kiln_attest::cyclonedx_json(&input).as_bytes(),
    )?;
    let mut subjects: Vec<Subject> = artifacts
        .iter()
        .map(|a| Subject {
            name: a.path.clone(),
            sha256: a.sha256.clone(),
        })
        .collect();
    for f in ["sbom.spdx.json", "sbom.cdx.json", "manifest.json"] {
        subjects.push(Subject {
            name: f.into(),
            sha256: sha256_file(&out.join(f))?,
        });
    }
    let mut dependencies: Vec<ResolvedDependency> = Vec::new();
    for p in pkgs {
        let d = crate::fetch::deb_ref(lock, p)?;
        if !dependencies.iter().any(|x| x.sha256 == d.sha256) {
            dependencies.push(ResolvedDependency {
                uri: d.url,
                sha256: d.sha256,
                name: Some(format!("{}_{}_{}.deb", p.name, p.version, p.architecture)),
            });
        }
    }
    let base = recipe.path.parent().unwrap_or(Path::new("."));
    for f in recipe
        .files
        .iter()
        .chain(std::iter::once(&recipe.lock_path()))
    {
        let rel = f.strip_prefix(base).unwrap_or(f);
        dependencies.push(ResolvedDependency {
            uri: format!("file:{}", rel.display()),
            sha256: sha256_file(f)?,
            name: Some(rel.display().to_string()),
        });
    }
    let statement = kiln_attest::statement(&ProvenanceInput {
        subjects,
        dependencies,
        build_type: "https://kiln.invalid/build/v1".into(),
        builder_id: format!(
            "https://kiln.invalid/builder/{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into())
        ),
        kiln_version: env!("CARGO_PKG_VERSION").into(),
        external_parameters: json!({
            "recipe": recipe.path.strip_prefix(base).unwrap_or(&recipe.path).display().to_string(),
            "formats": recipe.output.formats,
            "architectures": recipe.image.architectures,
            "sourceDateEpoch": epoch,
        }),
        started,
        finished: kiln_archive::now(),
    });
    let envelope = match key {
        Some(k) => kiln_attest::sign_envelope(&statement, k),
        None => {
            ui.warn("provenance.json is unsigned (no --sign-key): it records what was built but proves nothing about who built it");
            kiln_attest::unsigned_envelope(&statement)
        }
    };
    crate::build::write_atomic(&out.join("provenance.json"), envelope.as_bytes())?;
    Ok(())
}

fn tampered(what: String) -> anyhow::Error {
    Hinted {
        message: what,
        hint: "the artifacts no longer match what the build recorded: rebuild them, or find out who changed them".into(),
    }
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

fn spdx_packages(path: &Path) -> Result<BTreeSet<(String, String)>> {
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .map_err(|e| tampered(format!("{} is not valid JSON: {e}", path.display())))?;
    Ok(v["packages"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|p| {
                    p["externalRefs"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|x| x["referenceType"] == "purl"))
                })
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or("").to_string(),
                        p["versionInfo"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

fn cdx_packages(path: &Path) -> Result<BTreeSet<(String, String)>> {
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .map_err(|e| tampered(format!("{} is not valid JSON: {e}", path.display())))?;
    Ok(v["components"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or("").to_string(),
                        p["version"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

/// `kiln verify DIR`.
pub fn cmd_verify(
    ui: &Ui,
    dir: &Path,
    key: Option<PathBuf>,
    lock: Option<PathBuf>,
    json_out: bool,
) -> Result<()> {
    let prov_path = dir.join("provenance.json");
    let envelope = std::fs::read_to_string(&prov_path).map_err(|e| Hinted {
        message: format!("cannot read {}: {e}", prov_path.display()),
        hint: "give the output directory of a `kiln build`".into(),
    })?;
    let env_json: serde_json::Value = serde_json::from_str(&envelope)
        .map_err(|e| tampered(format!("provenance.json is not valid JSON: {e}")))?;
    let signed = env_json["signatures"]
        .as_array()
        .is_some_and(|s| !s.is_empty());
    let (payload, signer) = match (&key, signed) {
        (Some(k), _) => {
            let vk = VerifyingKey::from_pem_file(k)?;
            (
                kiln_attest::verify_envelope(&envelope, &vk)?,
                Some(vk.keyid()),
            )
        }
        (None, true) => {
            return Err(Hinted {
                message:
                    "provenance.json is signed, but no key was given to check the signature with"
                        .into(),
                hint: "pass the signer's public key: kiln verify DIR --key key.pub".into(),
            }
            .into())
        }
        (None, false) => {
            ui.warn("provenance.json is unsigned: checking integrity only (anyone could have rewritten it)");
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
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)?;
    let built: BTreeSet<(String, String)> = manifest["packages"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or("").into(),
                        p["version"].as_str().unwrap_or("").into(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut expected = built.clone();
    if let Some(l) = lock.or_else(|| {
        manifest["lock"]["path"]
            .as_str()
            .map(PathBuf::from)
            .filter(|p| p.exists())
    }) {
        let lock = Lock::read(&l)?;
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
    }
    for (name, set) in [
        (
            "sbom.spdx.json",
            spdx_packages(&dir.join("sbom.spdx.json"))?,
        ),
        ("sbom.cdx.json", cdx_packages(&dir.join("sbom.cdx.json"))?),
    ] {
        if set != expected {
            let missing: Vec<_> = expected.difference(&set).take(5).collect();
            let extra: Vec<_> = set.difference(&expected).take(5).collect();
            return Err(tampered(format!(
                "{name} does not match the lock (missing {missing:?}, extra {extra:?})"
            )));
        }
    }
    // Every package the build used is a resolved dependency of the provenance.
    let deb_hashes: BTreeSet<&str> = deps.iter().map(|d| d.sha256.as_str()).collect();
    for p in manifest["packages"].as_array().into_iter().flatten() {
        let h = p["sha256"].as_str().unwrap_or("");
        if !deb_hashes.contains(h) {
            return Err(tampered(format!(
                "{} is not among the provenance's resolved dependencies",
                p["name"]
            )));
        }
    }
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "verified": true,
                "signed-by": signer,
                "subjects": subjects.iter().map(|s| json!({"name": s.name, "sha256": s.sha256})).collect::<Vec<_>>(),
                "packages": expected.len(),
            }))?
        );
    }
    ui.status(
        "Verified",
        &format!(
            "{} subjects, {} packages in both SBOMs, {}",
            subjects.len(),
            expected.len(),
            match signer {
                Some(k) => format!("signature by key {}", &k[..16]),
                None => "UNSIGNED".into(),
            }
        ),
    );
    Ok(())
}

/// `kiln push LAYOUT REFERENCE`.
pub fn cmd_push(
    ui: &Ui,
    layout: &Path,
    reference: &str,
    insecure: bool,
    username: Option<String>,
) -> Result<()> {
    let reference = kiln_registry::Reference::parse(reference)?;
    let user = username.or_else(|| std::env::var("KILN_REGISTRY_USER").ok());
    let credentials = match user {
        Some(u) => Some(kiln_registry::Credentials {
            username: u,
            password: std::env::var("KILN_REGISTRY_PASSWORD").map_err(|_| Hinted {
                message: "a registry user was given but no password".into(),
                hint: "set KILN_REGISTRY_PASSWORD (passwords are not taken on the command line)"
                    .into(),
            })?,
        }),
        None => None,
    };
    let progress = |m: &str| ui.status("Pushing", m);
    let report = kiln_registry::push(
        layout,
        &reference,
        &kiln_registry::PushOptions {
            insecure,
            credentials,
            progress: &progress,
        },
    )?;
    ui.status(
        "Pushed",
        &format!(
            "{reference} ({} blobs uploaded, {} already there)",
            report.blobs_uploaded, report.blobs_skipped
        ),
    );
    println!("{}", report.digest);
    Ok(())
}

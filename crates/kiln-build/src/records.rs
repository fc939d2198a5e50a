//! Supply-chain records of a build: SBOMs and signed provenance.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use anyhow::{Context, Result};
use kiln_attest::{
    ProvenanceInput, ResolvedDependency, SbomInput, SbomPackage, SigningKey, Subject,
};
use kiln_model::fsutil::write_atomic;
use kiln_model::{Artifact, Reporter};
use kiln_recipe::{Lock, LockedPackage, Recipe};
use serde_json::json;

/// Licences read from the image's copyright files, by package name.
pub type Licences = HashMap<String, Option<String>>;

/// Reads `/usr/share/doc/PKG/copyright` of every package from a built root,
/// inside the root: a copyright file that is a link out of it reads as
/// absent, so no host file's text can reach the SBOM.
pub fn licences_from_root(root: &Path, pkgs: &[&LockedPackage], into: &mut Licences) {
    let root = kiln_rootfs::inroot::Root::open(root).ok();
    for p in pkgs {
        let text = root
            .as_ref()
            .filter(|_| !p.name.contains('/') && p.name != "..")
            .and_then(|r| {
                r.read_to_string(format!("usr/share/doc/{}/copyright", p.name))
                    .ok()
            })
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

pub fn sha256_file(p: &Path) -> Result<String> {
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
    reporter: &dyn Reporter,
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
    write_atomic(
        &out.join("sbom.spdx.json"),
        kiln_attest::spdx_json(&input).as_bytes(),
    )?;
    write_atomic(
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
            reporter.warn("provenance.json is unsigned (no --sign-key): it records what was built but proves nothing about who built it");
            kiln_attest::unsigned_envelope(&statement)
        }
    };
    write_atomic(&out.join("provenance.json"), envelope.as_bytes())?;
    Ok(())
}

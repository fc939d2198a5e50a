//! Supply-chain records of a build: SBOMs and signed provenance.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use anyhow::{Context, Result};
use kiln_attest::{
    ImageKind, OsRelease, ProvenanceInput, ResolvedDependency, SbomInput, SbomPackage, SigningKey,
    Subject,
};
use kiln_model::fsutil::write_atomic;
use kiln_model::{Artifact, Reporter};
use kiln_recipe::{Lock, LockedPackage, Recipe};
use serde_json::json;

/// What the records say that only the built roots know.
#[derive(Debug, Default)]
pub struct RootFacts {
    /// Licences from the copyright files, by package name.
    pub licences: HashMap<String, Option<String>>,
    /// `Maintainer` fields from the dpkg database, by package name.
    pub maintainers: HashMap<String, String>,
    /// The distribution (os-release, debian_version), by image architecture.
    pub os: HashMap<String, OsRelease>,
}

/// Reads, inside the built root of `arch` (a file that is a link out of it
/// reads as absent, so no host file's text can reach the SBOM): every
/// package's `/usr/share/doc/PKG/copyright`, the `Maintainer` of every
/// package in the dpkg status (full images) or `status.d` (distroless), and
/// `/usr/lib/os-release` (else `/etc/os-release`) with `/etc/debian_version`.
pub fn facts_from_root(
    root: &Path,
    arch: &str,
    suite: &str,
    pkgs: &[&LockedPackage],
    into: &mut RootFacts,
) {
    let root = kiln_rootfs::inroot::Root::open(root).ok();
    let read = |rel: &str| root.as_ref().and_then(|r| r.read_to_string(rel).ok());
    let plain = |name: &str| !name.contains('/') && name != ".." && name != ".";
    for p in pkgs {
        let text = Some(&p.name)
            .filter(|n| plain(n))
            .and_then(|n| read(&format!("usr/share/doc/{n}/copyright")))
            .unwrap_or_default();
        into.licences
            .entry(p.name.clone())
            .or_insert_with(|| kiln_attest::license_from_copyright(&text));
    }
    let mut stanzas: Vec<String> = read("var/lib/dpkg/status").into_iter().collect();
    stanzas.extend(
        pkgs.iter()
            .filter(|p| plain(&p.name))
            .filter_map(|p| read(&format!("var/lib/dpkg/status.d/{}", p.name))),
    );
    for text in &stanzas {
        for para in kiln_deb::paragraphs(text).flatten() {
            if let (Some(name), Some(m)) = (para.get("Package"), para.get("Maintainer")) {
                into.maintainers
                    .entry(name.to_string())
                    .or_insert_with(|| m.trim().to_string());
            }
        }
    }
    let os_release = read("usr/lib/os-release").or_else(|| read("etc/os-release"));
    let debian_version = read("etc/debian_version");
    into.os.insert(
        arch.to_string(),
        OsRelease::from_files(os_release.as_deref(), debian_version.as_deref(), suite),
    );
}

fn sbom_input(
    recipe: &Recipe,
    lock: &Lock,
    arch: &str,
    pkgs: &[&LockedPackage],
    facts: &RootFacts,
    epoch: i64,
) -> Result<SbomInput> {
    let mut packages = Vec::new();
    let mut seen = BTreeSet::new();
    for p in pkgs.iter().filter(|p| p.target == arch) {
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
            license: facts.licences.get(&p.name).cloned().flatten(),
            maintainer: facts.maintainers.get(&p.name).cloned(),
            depends_on,
        });
    }
    let has_disk = recipe
        .output
        .formats
        .iter()
        .any(|f| kiln_model::Format::parse(f).is_some_and(|f| f.is_disk()));
    Ok(SbomInput {
        image: recipe.image.name.clone(),
        version: recipe.image.version.clone(),
        kind: if has_disk {
            ImageKind::Disk
        } else {
            ImageKind::Container
        },
        architecture: arch.to_string(),
        os: facts
            .os
            .get(arch)
            .cloned()
            .unwrap_or_else(|| OsRelease::from_files(None, None, &recipe.image.suite)),
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

/// Writes the SBOMs of every architecture (see [`kiln_model::sbom_files`])
/// and `provenance.json` into `out`.
#[allow(clippy::too_many_arguments)]
pub fn write_records(
    reporter: &dyn Reporter,
    recipe: &Recipe,
    lock: &Lock,
    pkgs: &[&LockedPackage],
    facts: &RootFacts,
    artifacts: &[Artifact],
    epoch: i64,
    started: i64,
    key: Option<&SigningKey>,
    out: &Path,
) -> Result<()> {
    let sboms = kiln_model::sbom_files(&recipe.image.architectures);
    for f in &sboms {
        let input = sbom_input(recipe, lock, &f.architecture, pkgs, facts, epoch)?;
        write_atomic(
            &out.join(&f.spdx),
            kiln_attest::spdx_json(&input).as_bytes(),
        )?;
        write_atomic(
            &out.join(&f.cyclonedx),
            kiln_attest::cyclonedx_json(&input).as_bytes(),
        )?;
    }
    let mut subjects: Vec<Subject> = artifacts
        .iter()
        .map(|a| Subject {
            name: a.path.clone(),
            sha256: a.sha256.clone(),
        })
        .collect();
    let records = sboms
        .iter()
        .flat_map(|f| [f.spdx.clone(), f.cyclonedx.clone()])
        .chain(["manifest.json".to_string()]);
    for f in records {
        subjects.push(Subject {
            sha256: sha256_file(&out.join(&f))?,
            name: f,
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

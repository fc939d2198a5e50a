//! `kiln find`, `kiln catalog import`, and the record every build makes.

use std::path::{Path, PathBuf};

use anyhow::Result;
use kiln_catalog::{Catalog, PackageQuery, Query};

use crate::ui::Ui;

/// The catalog named by `--catalog` / `$KILN_CATALOG` (`none`: no catalog).
pub fn location(arg: Option<&Path>) -> Option<PathBuf> {
    match arg {
        Some(p) if p.as_os_str() == "none" => None,
        Some(p) => Some(p.to_path_buf()),
        None => Some(kiln_catalog::default_path()),
    }
}

/// After a build: records it; a catalog that cannot take it is a warning
/// (the build is done, and `kiln catalog import` records it later).
pub fn record_after_build(ui: &Ui, catalog: Option<&Path>, out_dir: &Path) {
    let Some(path) = location(catalog) else {
        return;
    };
    let r = Catalog::open(&path).and_then(|mut c| c.record_build(out_dir));
    match r {
        Ok(_) => {}
        Err(e) => ui.warn(&format!(
            "the build is not in the catalog: {e}{} (`kiln catalog import {}` records it later)",
            e.hint().map(|h| format!("; {h}")).unwrap_or_default(),
            out_dir.display()
        )),
    }
}

/// After `kiln test` of a build's image: records the run (a warning when
/// the catalog cannot take it).
pub fn record_test(
    ui: &Ui,
    catalog: Option<&Path>,
    dir: &Path,
    artifact: &str,
    passed: bool,
    seconds: f64,
    report: &Path,
) {
    let Some(path) = location(catalog) else {
        return;
    };
    let report = std::fs::canonicalize(report).unwrap_or_else(|_| report.to_path_buf());
    let r = Catalog::open(&path)
        .and_then(|mut c| c.record_test(dir, artifact, passed, seconds, &report));
    if let Err(e) = r {
        ui.warn(&format!("the test run is not in the catalog: {e}"));
    }
}

/// After a publication succeeded: records it (a warning when the catalog
/// cannot take it; the files are published either way).
pub fn record_publication(
    ui: &Ui,
    catalog: Option<&Path>,
    dir: &Path,
    publication: &kiln_catalog::Publication,
) {
    let Some(path) = location(catalog) else {
        return;
    };
    let r = Catalog::open(&path).and_then(|mut c| c.record_publication(dir, publication));
    if let Err(e) = r {
        ui.warn(&format!("the publication is not in the catalog: {e}"));
    }
}

/// Records a channel's rollout after `kiln release` signed it; a catalog
/// that cannot be written is a warning (the channel is what machines read).
pub fn record_rollout(
    ui: &Ui,
    catalog: Option<&Path>,
    tree: &str,
    rollout: &kiln_model::rollout::Rollout,
) {
    let Some(path) = location(catalog) else {
        return;
    };
    let r = Catalog::open(&path).and_then(|mut c| c.record_rollout(tree, rollout));
    if let Err(e) = r {
        ui.warn(&format!("the rollout is not in the catalog: {e}"));
    }
}

/// Whether `dir` is a download tree (channels, no build manifest).
pub fn is_tree(dir: &Path) -> bool {
    !dir.join(kiln_model::manifest::MANIFEST_FILE).exists() && dir.join("channels").is_dir()
}

/// `kiln catalog import DIR...`: records every build output found below
/// each DIR (links are not followed), and every image version of the
/// download trees among them that verify with `key`.
pub fn cmd_import(
    ui: &Ui,
    catalog: Option<&Path>,
    dirs: &[PathBuf],
    key: Option<&Path>,
) -> Result<()> {
    let path = location(catalog).ok_or_else(|| {
        kiln_model::Hinted::new(
            "--catalog none: there is no catalog to import into",
            "give a catalog path",
        )
    })?;
    let trees: Vec<&PathBuf> = dirs.iter().filter(|d| is_tree(d)).collect();
    let key = match (trees.first(), key) {
        (Some(t), None) => {
            return Err(crate::cmd::Usage::new(
                format!(
                    "{} is a download tree: what it lists is imported only when it verifies",
                    t.display()
                ),
                "give --key KEY.pub, the public key that signs the tree",
            )
            .into())
        }
        (Some(_), Some(k)) => Some(kiln_attest::VerifyingKey::from_pem_file(k)?),
        (None, _) => None,
    };
    let mut c = Catalog::open(&path)?;
    let (mut new, mut known, mut refused) = (0, 0, Vec::new());
    for t in &trees {
        let key = key.as_ref().expect("checked above");
        let (report, versions) = kiln_publish::import::versions(
            t,
            &kiln_publish::verify::VerifyOptions {
                key,
                channels: Vec::new(),
                now: kiln_publish::unix_now(),
                state_dir: kiln_publish::verify::default_state_dir(),
                progress: &|_| {},
            },
        )?;
        for ch in &report.channels {
            for p in &ch.problems {
                refused.push(format!("{} channel {}: {p}", t.display(), ch.channel));
            }
        }
        let root = std::fs::canonicalize(t).unwrap_or_else(|_| t.to_path_buf());
        for v in &versions {
            let artifacts: Vec<kiln_catalog::FoundArtifact> = v
                .files
                .iter()
                .filter_map(|f| {
                    let kind = match f.role.as_str() {
                        "artifact" => f.format.clone()?,
                        "sbom-spdx" => "spdx".into(),
                        "sbom-cyclonedx" => "cyclonedx".into(),
                        "provenance" => "provenance".into(),
                        _ => return None,
                    };
                    Some(kiln_catalog::FoundArtifact {
                        kind,
                        path: f.path.clone(),
                        architecture: f.architecture.clone(),
                        size: f.size,
                        sha256: f.sha256.clone(),
                    })
                })
                .collect();
            let origin = v.document.join(&v.image).join(&v.version);
            let r = c.record_imported(
                &v.manifest,
                &origin,
                &root.display().to_string(),
                &artifacts,
                &kiln_catalog::Publication {
                    target: format!("file://{}", root.display()),
                    kind: "tree".into(),
                    location: root
                        .join(v.document.strip_prefix(t).unwrap_or(&v.document))
                        .display()
                        .to_string(),
                    digest: None,
                    channel: Some(v.channel.clone()),
                    published_at: 0,
                    region: None,
                },
            );
            match r {
                Ok(true) => new += 1,
                Ok(false) => known += 1,
                Err(e) => refused.push(format!("{e}")),
            }
        }
    }
    for d in dirs.iter().filter(|d| !is_tree(d)) {
        let mut stack = vec![d.clone()];
        while let Some(dir) = stack.pop() {
            let meta = std::fs::symlink_metadata(&dir)?;
            if !meta.is_dir() {
                continue;
            }
            if dir.join(kiln_model::manifest::MANIFEST_FILE).is_file() {
                match c.record_build(&dir) {
                    Ok(true) => new += 1,
                    Ok(false) => known += 1,
                    Err(e) => refused.push(format!("{e}")),
                }
                continue;
            }
            let mut subs: Vec<PathBuf> = std::fs::read_dir(&dir)?
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect();
            subs.sort();
            subs.reverse();
            stack.extend(subs);
        }
    }
    for r in &refused {
        ui.warn(&format!("not imported: {r}"));
    }
    ui.status(
        "Imported",
        &format!(
            "{new} new build(s), {known} already known, {} refused, into {}",
            refused.len(),
            c.path().display()
        ),
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct FindArgs {
    /// Only images of this name ([image] name).
    #[arg(long)]
    pub image: Option<String>,
    /// Only images of this suite.
    #[arg(long)]
    pub suite: Option<String>,
    /// Only images for this architecture.
    #[arg(long)]
    pub arch: Option<String>,
    /// Only images with an artifact of this format (tar, oci, disk, qcow2, vhd, gce).
    #[arg(long)]
    pub format: Option<String>,
    /// Only images with this package, optionally at versions that satisfy OP VERSION in dpkg's order (e.g. 'openssl<<3.5.4').
    #[arg(long, value_name = "NAME[OPVERSION]")]
    pub package: Option<String>,
    /// Only versions published to this channel of a download tree (kiln publish --channel).
    #[arg(long)]
    pub channel: Option<String>,
    /// Only versions published to this cloud (aws, azure, gce, openstack), and print their image ids (AMIs per region, Azure blob URLs, GCE images, Glance image ids per region).
    #[arg(long, value_name = "NAME", value_parser = ["aws", "azure", "gce", "openstack"])]
    pub provider: Option<String>,
    /// Only versions published to this region of the cloud (with --provider: its image id there).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// Only the newest version of each image.
    #[arg(long)]
    pub latest: bool,
    /// Print the images as JSON on stdout (schema: docs/schemas/find.schema.json).
    #[arg(long)]
    pub json: bool,
}

/// `kiln find`: the image versions the catalog knows that match.
pub fn cmd_find(ui: &Ui, catalog: Option<&Path>, a: &FindArgs) -> Result<()> {
    let path = location(catalog).ok_or_else(|| {
        kiln_model::Hinted::new(
            "--catalog none: there is no catalog to search",
            "give a catalog path",
        )
    })?;
    let q = Query {
        image: a.image.clone(),
        suite: a.suite.clone(),
        architecture: a.arch.clone(),
        format: a.format.clone(),
        package: a.package.as_deref().map(PackageQuery::parse).transpose()?,
        channel: a.channel.clone(),
        provider: a.provider.clone(),
        region: a.region.clone(),
        latest: a.latest,
    };
    let c = Catalog::open(&path)?;
    let found = c.find(&q)?;
    if a.json {
        // Serialised straight from the records (through a serde_json::Value
        // it took a third of the time at 5,000 versions).
        #[derive(serde::Serialize)]
        struct Out<'a> {
            catalog: String,
            images: &'a [kiln_catalog::Found],
            #[serde(rename = "schema-version")]
            schema_version: u32,
        }
        outln!(
            "{}",
            serde_json::to_string_pretty(&Out {
                catalog: c.path().display().to_string(),
                images: &found,
                schema_version: 1,
            })?
        );
        return Ok(());
    }
    for f in &found {
        outln!(
            "{} {} ({}, {}{})",
            f.image,
            f.version.as_deref().unwrap_or("-"),
            f.suite,
            f.architectures.join(" "),
            if f.distroless { ", distroless" } else { "" }
        );
        if let Some(t) = f.tests.first() {
            outln!(
                "  last test of {}: {} in {:.0}s ({})",
                t.artifact,
                if t.passed { "passed" } else { "FAILED" },
                t.seconds,
                t.report
            );
        }
        for p in &f.publications {
            if let Some(region) = &p.region {
                // A cloud image: the id to launch, in its region (only the
                // asked ones when a provider or region was asked for).
                if a.provider.as_ref().is_some_and(|x| *x != p.kind)
                    || a.region.as_ref().is_some_and(|x| x != region)
                {
                    continue;
                }
                outln!("  {} {region}: {}", p.kind, p.location);
                continue;
            }
            outln!(
                "  published {}{}",
                p.location,
                p.channel
                    .as_deref()
                    .map(|c| format!(" (channel {c})"))
                    .unwrap_or_default()
            );
        }
        for p in &f.packages {
            outln!("  package {} {} [{}]", p.name, p.version, p.architecture);
        }
        for x in f
            .artifacts
            .iter()
            .filter(|x| !matches!(x.kind.as_str(), "spdx" | "cyclonedx" | "provenance"))
        {
            let at = Path::new(&f.location).join(&x.path);
            outln!(
                "  {:<5} {}  sha256:{}  {}",
                x.kind,
                at.display(),
                x.sha256,
                kiln_model::human_size(x.size)
            );
            let use_it = match x.kind.as_str() {
                "oci" => format!("kiln push {} REGISTRY/REPOSITORY", f.location),
                "disk" | "qcow2" => format!("kiln boot {}", at.display()),
                "vhd" => format!("upload {} as an Azure page blob", at.display()),
                "gce" => format!(
                    "upload {} to a bucket for GCE's images.insert",
                    at.display()
                ),
                _ => format!("kiln shell {}", f.location),
            };
            outln!("        use: {use_it}");
        }
    }
    ui.status(
        "Found",
        &format!("{} image version(s) in {}", found.len(), c.path().display()),
    );
    Ok(())
}

/// `kiln serve`: the finder over the catalog, served until Ctrl-C, or
/// exported as static files.
pub fn cmd_serve(
    ui: &Ui,
    catalog: Option<&Path>,
    listen: &str,
    export: Option<&Path>,
) -> Result<()> {
    let path = location(catalog).ok_or_else(|| {
        kiln_model::Hinted::new(
            "--catalog none: there is no catalog to serve",
            "give a catalog path",
        )
    })?;
    if let Some(dir) = export {
        let r = kiln_serve::export(&path, dir)?;
        for n in &r.unsafe_names {
            ui.warn(&format!(
                "image name {n:?} is not a safe file name: listed, but given no page of its own"
            ));
        }
        if r.without_packages > 0 {
            ui.warn(&format!(
                "{} version(s) have no packages in the catalog: the export finds them in no package search",
                r.without_packages
            ));
        }
        ui.status(
            "Exported",
            &format!(
                "the finder ({} images, {} versions) to {}; serve it beside the download tree",
                r.images,
                r.versions,
                r.dir.display()
            ),
        );
        return Ok(());
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    kiln_serve::serve(
        &path,
        listen,
        &|addr| {
            ui.status(
                "Serving",
                &format!("the image finder on http://{addr}/ (Ctrl-C stops)"),
            );
            // Scripts and tests read the address from stdout.
            outln!("http://{addr}/");
        },
        &stop,
    )?;
    Ok(())
}

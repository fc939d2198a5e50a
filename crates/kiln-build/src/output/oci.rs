//! `oci`: an OCI image layout, one image per architecture under one index.
//! Written beside the output directory's `oci` and renamed into place only
//! when every architecture is done.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use kiln_model::event::Stage;
use kiln_model::{Artifact, Format};
use kiln_recipe::Recipe;
use kiln_rootfs::customize::Customization;

use super::{BuiltRoot, Context, Output, Produced};
use crate::assemble::{customization, distroless_trim, package_files};

pub struct Oci {
    manifests: Vec<(kiln_image::oci::Descriptor, String)>,
    annotations: BTreeMap<String, String>,
    compression: kiln_image::oci::Compression,
    staging: Option<PathBuf>,
}

impl Oci {
    pub fn new(recipe: &Recipe) -> Oci {
        Oci {
            manifests: Vec::new(),
            annotations: BTreeMap::new(),
            compression: if recipe.container.compression == "zstd" {
                kiln_image::oci::Compression::Zstd
            } else {
                kiln_image::oci::Compression::Gzip
            },
            staging: None,
        }
    }

    fn staging(&mut self, cx: &Context) -> Result<PathBuf> {
        if let Some(s) = &self.staging {
            return Ok(s.clone());
        }
        let s = cx
            .out_dir
            .join(format!(".oci.partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&s);
        std::fs::create_dir_all(&s)?;
        let r = cx.recipe;
        self.annotations.insert(
            "org.opencontainers.image.created".to_string(),
            kiln_archive::date::format_rfc3339(cx.epoch),
        );
        self.annotations.insert(
            "org.opencontainers.image.title".to_string(),
            r.image.name.clone(),
        );
        if let Some(v) = &r.image.version {
            self.annotations
                .insert("org.opencontainers.image.version".to_string(), v.clone());
        }
        self.staging = Some(s.clone());
        Ok(s)
    }
}

impl Output for Oci {
    fn add(&mut self, cx: &Context, root: &BuiltRoot) -> Result<Produced> {
        let staging = self.staging(cx)?;
        let recipe = cx.recipe;
        cx.reporter.step(
            Stage::Write,
            &format!(
                "OCI layer for {} ({})",
                root.arch, recipe.container.compression
            ),
        );
        let trees = if recipe.container.layers == "per-package" {
            let files = package_files(root.pkgs, root.debs, |_| false);
            let trim = distroless_trim(recipe, root.arch);
            let work = root.scratch.join("layers");
            let trees = kiln_rootfs::distroless::layer_trees(&work, root.path, &files, &trim)?;
            // Recipe files belong to the last (generated) layer.
            let custom = Customization {
                overlays: recipe.customize.overlays.clone(),
                files: customization(recipe)?.files,
                ..Default::default()
            };
            kiln_rootfs::customize::apply(
                trees.last().unwrap(),
                &custom,
                0,
                &root.scratch.join("build.log"),
                cx.cancel,
            )?;
            trees
        } else {
            vec![root.path.to_path_buf()]
        };
        let mut layers = Vec::new();
        for t in &trees {
            cx.cancel.check()?;
            layers.push(
                kiln_image::oci::write_layer(
                    &staging,
                    t,
                    self.compression,
                    cx.epoch.max(0) as u64,
                    root.owners,
                )
                .with_context(|| format!("writing an OCI layer in {}", staging.display()))?,
            );
        }
        let m = kiln_image::oci::write_image(
            &staging,
            root.arch,
            &kiln_archive::date::format_rfc3339(cx.epoch),
            &run_config(recipe, root.path, cx.epoch),
            &layers,
            &self.annotations,
        )?;
        self.manifests.push((m, root.arch.to_string()));
        Ok(Produced::default())
    }

    fn finish(&mut self, cx: &Context) -> Result<Vec<Artifact>> {
        let Some(staging) = self.staging.take() else {
            return Ok(Vec::new());
        };
        let mut tags = vec!["latest".to_string()];
        if let Some(v) = &cx.recipe.image.version {
            tags.insert(0, v.clone());
        }
        let top =
            kiln_image::oci::write_index(&staging, &self.manifests, &tags, &self.annotations)?;
        let dest = cx.out_dir.join("oci");
        let old = cx.out_dir.join(format!(".oci.old-{}", std::process::id()));
        if dest.exists() {
            std::fs::rename(&dest, &old)?;
        }
        std::fs::rename(&staging, &dest)?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(vec![Artifact {
            path: "oci".into(),
            format: Format::Oci,
            architecture: match self.manifests.as_slice() {
                [(_, arch)] => Some(arch.clone()),
                _ => None,
            },
            size: top.size,
            sha256: top.digest.trim_start_matches("sha256:").to_string(),
        }])
    }

    fn abandon(&mut self, _cx: &Context) {
        if let Some(s) = self.staging.take() {
            let _ = std::fs::remove_dir_all(s);
        }
    }
}

/// The image's run configuration from `[container]`; its labels are the
/// OCI ones (`org.opencontainers.image.title`, `.version`, `.created`)
/// under the recipe's own `labels`, which win.
fn run_config(recipe: &Recipe, root: &Path, epoch: i64) -> kiln_image::oci::RunConfig {
    let c = &recipe.container;
    let mut env: Vec<String> = c.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !c.env.contains_key("PATH") {
        env.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    // Looked up inside the root: a link there says nothing about the host.
    let has = |p: &str| kiln_rootfs::inroot::Root::open(root).is_ok_and(|r| r.is_file(p));
    let cmd = match (&c.cmd, &c.entrypoint) {
        (Some(cmd), _) => Some(cmd.clone()),
        (None, None) if has("bin/bash") => Some(vec!["/bin/bash".into()]),
        (None, None) if has("bin/sh") => Some(vec!["/bin/sh".into()]),
        _ => None,
    };
    let mut labels = BTreeMap::from([
        (
            "org.opencontainers.image.title".to_string(),
            recipe.image.name.clone(),
        ),
        (
            "org.opencontainers.image.created".to_string(),
            kiln_archive::date::format_rfc3339(epoch),
        ),
    ]);
    if let Some(v) = &recipe.image.version {
        labels.insert("org.opencontainers.image.version".to_string(), v.clone());
    }
    labels.extend(c.labels.clone());
    kiln_image::oci::RunConfig {
        env,
        entrypoint: c.entrypoint.clone(),
        cmd,
        user: c.user.clone(),
        working_dir: c.working_dir.clone(),
        exposed_ports: c.exposed_ports.clone(),
        labels,
    }
}

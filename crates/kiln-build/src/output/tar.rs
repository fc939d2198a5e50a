//! `tar`: the root as a deterministic tarball.

use anyhow::{Context as _, Result};
use kiln_model::event::Stage;
use kiln_model::{Artifact, Format};

use super::{BuiltRoot, Context, Output, Produced};

pub struct Tar;

impl Output for Tar {
    fn add(&mut self, cx: &Context, root: &BuiltRoot) -> Result<Produced> {
        let name = if cx.multi_arch {
            format!("rootfs-{}.tar", root.arch)
        } else {
            "rootfs.tar".to_string()
        };
        let path = cx.out_dir.join(&name);
        cx.reporter.step(Stage::Write, &path.display().to_string());
        let s = kiln_image::write_tar_file(
            root.path,
            &path,
            &kiln_image::TarOptions {
                epoch: cx.epoch.max(0) as u64,
                extra: kiln_image::tar_writer::DEV_ENTRIES,
                owners: root.owners,
            },
        )
        .with_context(|| format!("writing {}", path.display()))?;
        Ok(Produced {
            artifacts: vec![Artifact {
                path: name,
                format: Format::Tar,
                architecture: Some(root.arch.to_string()),
                size: s.size,
                sha256: s.sha256,
            }],
            disk: None,
        })
    }
}

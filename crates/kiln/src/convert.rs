//! `kiln convert DISK --format vhd|gce`: a disk image into a cloud's
//! import format, as `[output] formats` does in a build (same bytes).

use std::path::PathBuf;

use anyhow::Result;
use kiln_model::Hinted;
use serde_json::json;

use crate::cmd::Usage;

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// The raw UEFI disk image (a build's disk.raw).
    pub disk: PathBuf,
    /// vhd: Azure's fixed VHD; gce: GCE's tar.gz (disk.raw alone, GNU tar).
    #[arg(long, value_parser = ["vhd", "gce"])]
    pub format: String,
    /// Where to write (default: beside DISK, disk.vhd or disk.tar.gz).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// The time written into the file (default: $SOURCE_DATE_EPOCH, else 0), so the same disk gives the same bytes.
    #[arg(long, value_name = "SECONDS")]
    pub epoch: Option<i64>,
    /// Print what was written as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn cmd_convert(a: &ConvertArgs) -> Result<()> {
    let epoch = match a.epoch {
        Some(e) => e,
        None => match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => v.trim().parse().map_err(|_| {
                Usage::new(
                    format!("SOURCE_DATE_EPOCH={v} is not a number of seconds"),
                    "unset it, or give --epoch SECONDS",
                )
            })?,
            Err(_) => 0,
        },
    };
    let ext = if a.format == "vhd" { "vhd" } else { "tar.gz" };
    let dest = a.output.clone().unwrap_or_else(|| {
        a.disk.with_file_name(format!(
            "{}.{ext}",
            a.disk
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("disk")
        ))
    });
    if dest == a.disk {
        return Err(Usage::new(
            format!("--output {} is the disk itself", dest.display()),
            "write the converted file somewhere else",
        )
        .into());
    }
    let r = if a.format == "vhd" {
        kiln_image::cloud::write_fixed_vhd(&a.disk, &dest, epoch)
    } else {
        kiln_image::cloud::write_gce_tar(&a.disk, &dest, epoch)
    }
    .map_err(|e| match e.hint() {
        Some(h) => anyhow::Error::from(Hinted::new(e.to_string(), h)),
        None => anyhow::Error::from(e),
    })?;
    if a.json {
        let sha256 = kiln_image::cloud::sha256_file(&r.path)?;
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "format": a.format,
                "path": r.path,
                "size": r.size,
                "disk-size": r.disk_size,
                "sha256": sha256,
            }))?
        );
    } else {
        outln!(
            "{} ({} bytes, disk {} bytes)",
            r.path.display(),
            r.size,
            r.disk_size
        );
    }
    Ok(())
}

//! `aws://REGION[,REGION…]`: a UEFI disk into an AMI in every region.
//!
//! 1. The disk is checked (a UEFI GPT disk) before anything is sent, and
//!    every named region is checked against DescribeRegions.
//! 2. In the first region, an image of the account tagged
//!    `kiln:sha256 = <the disk's sha256>` is reused as it is. Else a
//!    completed snapshot with that tag is reused (a publish that failed
//!    after the upload resumes there), else the disk is uploaded into a new
//!    snapshot with the EBS direct APIs: 512 KiB blocks, each with its
//!    sha256, zero blocks skipped (EBS reads unwritten blocks as zeros),
//!    several at once. A failed upload deletes its snapshot.
//! 3. The AMI is registered from it: UEFI boot, ENA, the architecture,
//!    IMDSv2 only, gp3 root volume; tagged with the digest, image name and
//!    version. An AMI of the same name with another digest is refused
//!    unless `replace` (then it is deregistered first).
//! 4. Every other region gets a CopyImage (or reuses its tagged copy) and
//!    the same tags.

mod client;
pub mod ebs;
pub mod ec2;

use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use client::{Client, Credentials, CREDENTIAL_SOURCES};

use crate::CloudError;

/// The tag that names an image's disk.
pub const DIGEST_TAG: &str = "kiln:sha256";
const GIB: u64 = 1 << 30;
/// Blocks in flight at once.
const PARALLEL: usize = 4;

/// `eu-west-1`, `us-gov-west-1`, `ap-southeast-5`: lowercase words and a
/// number, nothing a URL or path could be made of.
pub fn valid_region_name(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    r.len() <= 32
        && parts.len() >= 3
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
}

/// The disk to publish and what its AMIs are called.
pub struct AwsImage<'a> {
    pub disk: &'a Path,
    /// sha256 of the disk (hex), from the build's manifest.
    pub sha256: &'a str,
    /// AMI name (unique in the account and region; 3–128 characters).
    pub name: String,
    pub description: String,
    /// Debian's architecture (`amd64`, `arm64`).
    pub architecture: &'a str,
    /// More tags (the digest tag is added).
    pub tags: Vec<(String, String)>,
}

pub struct AwsOptions<'a> {
    /// Deregister an AMI of the same name with another digest.
    pub replace: bool,
    pub progress: &'a dyn Fn(&str),
    /// How long to wait for a snapshot or an image to become ready.
    pub wait: Duration,
}

/// One region's image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionImage {
    pub region: String,
    pub image_id: String,
    /// `uploaded`, `copied`, or `reused` (found by its digest tag).
    pub how: &'static str,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AwsReport {
    pub images: Vec<RegionImage>,
    pub snapshot: Option<String>,
    pub blocks_sent: u64,
    pub blocks_skipped: u64,
    pub bytes_sent: u64,
}

impl AwsReport {
    /// Nothing was uploaded or copied: every region had the image.
    pub fn nothing_sent(&self) -> bool {
        self.images.iter().all(|i| i.how == "reused")
    }
}

fn ec2_arch(debian: &str) -> Result<&'static str, String> {
    match debian {
        "amd64" => Ok("x86_64"),
        "arm64" => Ok("arm64"),
        a => Err(format!("AWS runs x86_64 and arm64 machines, not {a}")),
    }
}

/// Publishes `img` to every region of `regions` (the first gets the
/// upload). See the module documentation for the steps.
pub fn publish(
    regions: &[String],
    img: &AwsImage,
    opts: &AwsOptions,
) -> Result<AwsReport, CloudError> {
    let target = format!("aws://{}", regions.join(","));
    let bad = |message: String, hint: Option<&str>| CloudError::Target {
        target: target.clone(),
        message,
        hint: hint.map(str::to_string),
    };
    let arch = ec2_arch(img.architecture).map_err(|m| bad(m, None))?;
    if !(3..=128).contains(&img.name.len()) {
        return Err(bad(
            format!("AMI name `{}` must have 3 to 128 characters", img.name),
            None,
        ));
    }
    let disk = kiln_image::cloud::check_uefi_disk(img.disk)?;
    let credentials = Credentials::from_env()?;
    let c = Client::new(credentials);
    let first = regions
        .first()
        .ok_or_else(|| bad("no region".into(), None))?;
    (opts.progress)(&format!("{target}: checking the regions"));
    let known = ec2::regions(&c, first)?;
    for r in regions {
        if !known.iter().any(|k| k == r) {
            let mut near: Vec<&String> = known
                .iter()
                .filter(|k| k.split('-').next() == r.split('-').next())
                .collect();
            if near.is_empty() {
                near = known.iter().take(6).collect();
            }
            return Err(bad(
                format!("region `{r}` does not exist (DescribeRegions does not list it)"),
                Some(&format!(
                    "regions like it: {}",
                    near.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            ));
        }
    }
    let mut tags = vec![(DIGEST_TAG.to_string(), img.sha256.to_string())];
    tags.extend(img.tags.iter().cloned());
    tags.push(("Name".into(), img.name.clone()));
    let mut report = AwsReport::default();

    // The first region: reuse, or snapshot + register.
    let source = match existing(&c, first, img, opts, &target)? {
        Some(id) => {
            (opts.progress)(&format!("{first}: {id} has this disk already"));
            report.images.push(RegionImage {
                region: first.clone(),
                image_id: id.clone(),
                how: "reused",
            });
            id
        }
        None => {
            let snapshot = match ec2::snapshots_tagged(&c, first, DIGEST_TAG, img.sha256)?
                .into_iter()
                .find(|s| s.state == "completed")
            {
                Some(s) => {
                    (opts.progress)(&format!("{first}: snapshot {} has this disk already", s.id));
                    s.id
                }
                None => upload(&c, first, img, disk.size, &tags, opts, &mut report)?,
            };
            crate::wait_for(
                opts.wait,
                || {
                    let s = ec2::snapshot_state(&c, first, &snapshot)?;
                    if s == "error" {
                        return Err(CloudError::Target {
                            target: target.clone(),
                            message: format!("snapshot {snapshot} failed in {first}"),
                            hint: Some("publish again: a failed snapshot is uploaded anew".into()),
                        });
                    }
                    Ok(s == "completed")
                },
                &format!("snapshot {snapshot} to complete"),
            )?;
            report.snapshot = Some(snapshot.clone());
            let id = ec2::register_image(
                &c,
                first,
                &ec2::Registration {
                    name: &img.name,
                    description: &img.description,
                    architecture: arch,
                    snapshot: &snapshot,
                    tags: &tags,
                },
            )?;
            // Tags again, for an endpoint that ignored TagSpecification.
            ec2::create_tags(&c, first, &id, &tags)?;
            (opts.progress)(&format!("{first}: registered {id} ({})", img.name));
            report.images.push(RegionImage {
                region: first.clone(),
                image_id: id.clone(),
                how: "uploaded",
            });
            id
        }
    };
    // The copies.
    for r in &regions[1..] {
        if let Some(id) = existing(&c, r, img, opts, &target)? {
            (opts.progress)(&format!("{r}: {id} has this disk already"));
            report.images.push(RegionImage {
                region: r.clone(),
                image_id: id,
                how: "reused",
            });
            continue;
        }
        wait_available(&c, first, &source, opts.wait)?;
        let id = ec2::copy_image(&c, r, first, &source, &img.name, &img.description)?;
        ec2::create_tags(&c, r, &id, &tags)?;
        (opts.progress)(&format!("{r}: copied {source} to {id}"));
        report.images.push(RegionImage {
            region: r.clone(),
            image_id: id,
            how: "copied",
        });
    }
    // Published means launchable: every region's AMI is available before
    // the caller records it.
    for i in &report.images {
        wait_available(&c, &i.region, &i.image_id, opts.wait)?;
    }
    Ok(report)
}

/// Waits for an AMI to be `available`; an image that failed is an error.
fn wait_available(c: &Client, region: &str, id: &str, limit: Duration) -> Result<(), CloudError> {
    crate::wait_for(
        limit,
        || {
            let found = ec2::images(c, region, &[("image-id", id)])?;
            match found.iter().find(|i| i.id == id).map(|i| i.state.as_str()) {
                Some("available") => Ok(true),
                Some("pending") | None => Ok(false),
                Some(state) => Err(CloudError::Target {
                    target: format!("aws://{region}"),
                    message: format!("{id} is {state} in {region}, not available"),
                    hint: Some(
                        "publish again: an unusable AMI of this disk is deregistered and made anew"
                            .into(),
                    ),
                }),
            }
        },
        &format!("{id} in {region} to become available"),
    )
}

/// The region's AMI of this disk (by its digest tag), after checking that
/// the name is not taken by another disk (or deregistering that one when
/// `replace`).
fn existing(
    c: &Client,
    region: &str,
    img: &AwsImage,
    opts: &AwsOptions,
    target: &str,
) -> Result<Option<String>, CloudError> {
    let tagged = ec2::images(c, region, &[(&format!("tag:{DIGEST_TAG}"), img.sha256)])?;
    // Only an image that is or becomes usable is this disk's AMI; a failed
    // one of this disk goes, with its name.
    if let Some(i) = tagged
        .iter()
        .find(|i| i.state == "available" || i.state == "pending")
    {
        return Ok(Some(i.id.clone()));
    }
    for other in ec2::images(c, region, &[("name", &img.name)])? {
        let theirs = other.tag(DIGEST_TAG).unwrap_or("none").to_string();
        if theirs == img.sha256 {
            (opts.progress)(&format!(
                "{region}: deregistering {} ({}, state {}): this disk's AMI, unusable",
                other.id, img.name, other.state
            ));
            ec2::deregister_image(c, region, &other.id)?;
            continue;
        }
        if !opts.replace {
            return Err(CloudError::Target {
                target: target.to_string(),
                message: format!(
                    "the AMI name `{}` is already used in {region} by {} (disk sha256 {theirs}), not this disk ({})",
                    img.name, other.id, img.sha256
                ),
                hint: Some("publish with --replace to deregister it and register this disk under the name".into()),
            });
        }
        (opts.progress)(&format!(
            "{region}: deregistering {} ({}), --replace",
            other.id, img.name
        ));
        ec2::deregister_image(c, region, &other.id)?;
        for s in &other.snapshots {
            // Best effort: the snapshot may be shared by another image.
            let _ = ec2::delete_snapshot(c, region, s);
        }
    }
    Ok(None)
}

/// Uploads the disk into a new snapshot; deletes it when anything fails.
fn upload(
    c: &Client,
    region: &str,
    img: &AwsImage,
    size: u64,
    tags: &[(String, String)],
    opts: &AwsOptions,
    report: &mut AwsReport,
) -> Result<String, CloudError> {
    let gib = size.div_ceil(GIB).max(1);
    // A token per upload: AWS answers a reused one with the snapshot it
    // made for it first (deleted, if that upload failed). Reuse across
    // runs goes by the digest tag instead.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let token = format!(
        "{}-{nanos:x}-{}",
        &img.sha256[..img.sha256.len().min(32)],
        std::process::id()
    );
    let snapshot = ebs::start(c, region, gib, &img.description, tags, &token)?;
    (opts.progress)(&format!(
        "{region}: uploading {} MiB into snapshot {snapshot} ({gib} GiB)",
        size >> 20
    ));
    let r = write_blocks(c, region, &snapshot, img.disk, size, opts).and_then(
        |(sent, skipped, bytes)| {
            ebs::complete(c, region, &snapshot, sent)?;
            Ok((sent, skipped, bytes))
        },
    );
    match r {
        Ok((sent, skipped, bytes)) => {
            report.blocks_sent = sent;
            report.blocks_skipped = skipped;
            report.bytes_sent = bytes;
            Ok(snapshot)
        }
        Err(e) => {
            // Nothing half-written stays behind under the digest tag.
            if ec2::delete_snapshot(c, region, &snapshot).is_ok() {
                (opts.progress)(&format!(
                    "{region}: the upload failed; snapshot {snapshot} deleted"
                ));
            }
            Err(e)
        }
    }
}

/// Sends every non-zero block, `PARALLEL` at once; (sent, skipped, bytes).
fn write_blocks(
    c: &Client,
    region: &str,
    snapshot: &str,
    disk: &Path,
    size: u64,
    opts: &AwsOptions,
) -> Result<(u64, u64, u64), CloudError> {
    let file = std::fs::File::open(disk).map_err(|e| CloudError::Io {
        what: format!("reading {}", disk.display()),
        source: e,
    })?;
    let blocks = size.div_ceil(ebs::BLOCK as u64);
    let next = AtomicU64::new(0);
    let sent = AtomicU64::new(0);
    let skipped = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let error: Mutex<Option<CloudError>> = Mutex::new(None);
    let started = Instant::now();
    let finished = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| {
                let _done = Finished(&finished);
                let mut buf = vec![0u8; ebs::BLOCK];
                loop {
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= blocks {
                        return;
                    }
                    buf.fill(0);
                    let at = i * ebs::BLOCK as u64;
                    let want = (size - at).min(ebs::BLOCK as u64) as usize;
                    if let Err(e) = file.read_exact_at(&mut buf[..want], at) {
                        failed.store(true, Ordering::Relaxed);
                        *error.lock().unwrap() = Some(CloudError::Io {
                            what: format!("reading {}", disk.display()),
                            source: e,
                        });
                        return;
                    }
                    if buf.iter().all(|b| *b == 0) {
                        skipped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    // A block is always whole (the tail padded with zeros).
                    if let Err(e) = ebs::put_block(c, region, snapshot, i, &buf) {
                        failed.store(true, Ordering::Relaxed);
                        error.lock().unwrap().get_or_insert(e);
                        return;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(ebs::BLOCK as u64, Ordering::Relaxed);
                }
            });
        }
        // Progress from this thread (the reporter is not shared).
        let mut last = Instant::now();
        while finished.load(Ordering::Relaxed) < PARALLEL {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() >= Duration::from_secs(5) {
                last = Instant::now();
                let done =
                    (sent.load(Ordering::Relaxed) + skipped.load(Ordering::Relaxed)).min(blocks);
                (opts.progress)(&format!(
                    "{region}: {done}/{blocks} blocks ({} MiB sent, {:.0} s)",
                    bytes.load(Ordering::Relaxed) >> 20,
                    started.elapsed().as_secs_f64()
                ));
            }
        }
    });
    if let Some(e) = error.into_inner().unwrap() {
        return Err(e);
    }
    Ok((sent.into_inner(), skipped.into_inner(), bytes.into_inner()))
}

/// Counts a worker as finished however it returns.
struct Finished<'a>(&'a std::sync::atomic::AtomicUsize);
impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_names_are_words_and_a_number() {
        for ok in [
            "eu-west-1",
            "us-gov-west-1",
            "ap-southeast-5",
            "il-central-1",
        ] {
            assert!(valid_region_name(ok), "{ok}");
        }
        for bad in [
            "",
            "eu",
            "eu-west",
            "EU-west-1",
            "eu-west-1/..",
            "eu--1",
            "eu-west-x",
            "eu-west-1.evil.example",
        ] {
            assert!(!valid_region_name(bad), "{bad}");
        }
    }
}

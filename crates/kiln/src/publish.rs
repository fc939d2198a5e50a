//! `kiln publish` and `kiln verify TREE`: renders kiln-publish's reports
//! and records what was published in the catalog.

use std::path::{Path, PathBuf};

use anyhow::Result;
use kiln_attest::{SigningKey, VerifyingKey};
use kiln_model::event::Stage;
use kiln_model::{Hinted, Reporter};
use kiln_publish::registry::RegistryOptions;
use kiln_publish::source::Build;
use kiln_publish::tree::TreeOptions;
use kiln_publish::verify::VerifyOptions;
use kiln_publish::Target;
use serde_json::json;

use crate::cmd::Usage;
use crate::ui::Ui;

/// `--to TARGET` as clap parses it: an unknown scheme is a usage error.
pub fn parse_target(s: &str) -> Result<Target, String> {
    Target::parse(s).map_err(|e| {
        let text = e.to_string();
        match e.hint() {
            Some(h) if !text.contains(kiln_publish::SCHEMES) => format!("{text}\n\nhint: {h}"),
            _ => text,
        }
    })
}

/// `kiln publish`'s command line.
#[derive(clap::Args)]
pub struct PublishArgs {
    /// Build output directories (of `kiln build`).
    #[arg(required = true)]
    pub outputs: Vec<PathBuf>,
    /// Where to: file:///PATH (a signed download tree), docker://HOST/REPOSITORY[:TAG] or HOST/REPOSITORY[:TAG] (a registry; the image plus its SBOMs, provenance and test report as OCI 1.1 referrers); repeatable. Default: the [[publish]] entries of each build's recipe.
    #[arg(long = "to", value_name = "TARGET", value_parser = parse_target)]
    pub targets: Vec<kiln_publish::Target>,
    /// The download tree's channel the builds join (with --to; [[publish]] entries name their own).
    #[arg(long, default_value = "stable")]
    pub channel: String,
    /// Ed25519 private key (PKCS#8 PEM) that signs the channel document; required for file:// targets.
    #[arg(long, value_name = "KEY.pem", env = "KILN_SIGN_KEY")]
    pub sign_key: Option<PathBuf>,
    /// Days the channel document stays valid; clients refuse it after (a frozen tree is noticed).
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    pub valid_days: u32,
    /// URL the download tree is served at, for the absolute locations in coreos/*.json.
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// Versions of each image an update channel's sysupdate listing keeps (older ones leave it and their files go).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub keep: usize,
    /// Plain HTTP to registries (for registries on loopback).
    #[arg(long)]
    pub insecure: bool,
    /// Registry user (password from $KILN_REGISTRY_PASSWORD; default user $KILN_REGISTRY_USER; else the Docker client configuration).
    #[arg(long)]
    pub username: Option<String>,
    /// A cloud image name already used by another disk is deregistered and the name reused (else refused).
    #[arg(long)]
    pub replace: bool,
    /// Seconds to wait for a cloud's snapshot or image to become ready.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    pub cloud_wait: u64,
    /// Print what was published as JSON on stdout (schema: docs/schemas/publish.schema.json).
    #[arg(long)]
    pub json: bool,
}

pub fn cmd_publish(
    ui: &Ui,
    catalog: Option<&Path>,
    reporter: &dyn Reporter,
    a: &PublishArgs,
) -> Result<()> {
    // Everything the command line can get wrong, before any work.
    kiln_publish::document::check_channel(&a.channel).map_err(|m| {
        Usage::new(
            format!("--channel {}: {m}", a.channel),
            "e.g. --channel stable",
        )
    })?;
    if a.valid_days == 0 {
        return Err(Usage::new(
            "--valid-days 0: the channel document would be expired when written",
            "give at least 1 (default 30)",
        )
        .into());
    }
    if a.keep == 0 {
        return Err(Usage::new(
            "--keep 0: the update channel would list no version",
            "keep at least 1 (default 3; a machine on an older version than the channel lists updates to the newest)",
        )
        .into());
    }
    let progress = |m: &str| reporter.step(Stage::Publish, m);
    // Every build is checked against its manifest before anything is sent.
    let builds = a
        .outputs
        .iter()
        .map(|d| Build::open(d, &progress))
        .collect::<Result<Vec<_>, _>>()?;
    let jobs = if a.targets.is_empty() {
        recipe_jobs(&builds)?
    } else {
        a.targets
            .iter()
            .map(|t| Job {
                target: t.clone(),
                channel: a.channel.clone(),
                builds: (0..builds.len()).collect(),
            })
            .collect()
    };
    let has_tree = jobs.iter().any(|j| matches!(j.target, Target::Tree(_)));
    if has_tree && a.sign_key.is_none() {
        return Err(Usage::new(
            "a file:// target needs a key to sign its channel document",
            "give --sign-key KEY.pem (or set KILN_SIGN_KEY); make one with \
             `openssl genpkey -algorithm ed25519 -out KEY.pem`",
        )
        .into());
    }
    for j in &jobs {
        if let Target::Registry(r) = &j.target {
            if j.builds.len() > 1 && kiln_publish::registry::split_tag(r).1.is_some() {
                return Err(Usage::new(
                    format!(
                        "{} builds to the one tag of {r}: each would replace the last",
                        j.builds.len()
                    ),
                    "leave the tag out (each build gets its own version tag) or publish one build per call",
                )
                .into());
            }
        }
    }
    let key = match &a.sign_key {
        Some(p) if has_tree => Some(SigningKey::from_pem_file(p)?),
        _ => None,
    };
    let first_registry = jobs.iter().find_map(|j| match &j.target {
        Target::Registry(r) => Some(r.clone()),
        _ => None,
    });
    let credentials = match first_registry {
        Some(r) => {
            let (base, _) = kiln_publish::registry::split_tag(&r);
            let registry = kiln_registry::Reference::parse(&format!("{base}:x"))?.registry;
            crate::cmd::registry_credentials(a.username.clone(), &registry)?
        }
        None => None,
    };
    let mut published = Vec::new();
    for job in &jobs {
        let t = &job.target;
        let bs: Vec<&Build> = job.builds.iter().map(|&i| &builds[i]).collect();
        match t {
            Target::Tree(dir) => {
                let r = kiln_publish::tree::publish(
                    dir,
                    &bs,
                    &TreeOptions {
                        channel: &job.channel,
                        key: key.as_ref().expect("checked above"),
                        valid_for: i64::from(a.valid_days) * 86_400,
                        now: kiln_publish::unix_now(),
                        base_url: a.base_url.as_deref(),
                        keep: a.keep,
                        progress: &progress,
                    },
                )?;
                let doc = dir.join(&r.document);
                for (b, pb) in bs.iter().zip(&r.builds) {
                    crate::catalog::record_publication(
                        ui,
                        catalog,
                        &b.dir,
                        &kiln_catalog::Publication {
                            target: t.display(),
                            kind: "tree".into(),
                            location: doc.display().to_string(),
                            digest: None,
                            channel: Some(job.channel.clone()),
                            published_at: 0,
                            region: None,
                        },
                    );
                    reporter.step(
                        Stage::Published,
                        &format!(
                            "{} {} in {} ({} of {} files copied)",
                            pb.image,
                            pb.version,
                            doc.display(),
                            pb.files.iter().filter(|f| f.copied).count(),
                            pb.files.len()
                        ),
                    );
                }
                if !r.document_written {
                    reporter.step(
                        Stage::Published,
                        &format!("{}: unchanged (serial {})", doc.display(), r.serial),
                    );
                }
                published.push(json!({
                    "target": t.display(),
                    "kind": "tree",
                    "channel": r.channel,
                    "document": doc.display().to_string(),
                    "serial": r.serial,
                    "document-written": r.document_written,
                    "bytes-copied": r.bytes_copied,
                    "sysupdate": r.sysupdate.as_ref().map(|s| json!({
                        "dir": s.dir,
                        "versions": s.versions,
                        "best-before": s.best_before,
                        "pruned": s.pruned,
                        "written": s.written,
                    })),
                    "builds": r.builds.iter().map(|b| json!({
                        "build-id": b.build_id,
                        "image": b.image,
                        "version": b.version,
                        "files": b.files.iter().map(|f| json!({
                            "role": f.role.name(),
                            "path": f.path,
                            "size": f.size,
                            "sha256": f.sha256,
                            "copied": f.copied,
                        })).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                }));
            }
            Target::Cloud(kiln_cloud::CloudTarget::Aws { regions }) => {
                for b in &bs {
                    published.extend(publish_aws(ui, catalog, reporter, a, t, regions, b)?);
                }
            }
            Target::Cloud(kiln_cloud::CloudTarget::Azure { container, record }) => {
                for b in &bs {
                    published.extend(publish_azure(
                        ui,
                        catalog,
                        reporter,
                        a,
                        t,
                        container,
                        record.as_ref(),
                        b,
                    )?);
                }
            }
            Target::Cloud(kiln_cloud::CloudTarget::Gce { project, bucket }) => {
                for b in &bs {
                    published.extend(publish_gce(
                        ui, catalog, reporter, a, t, project, bucket, b,
                    )?);
                }
            }
            Target::Cloud(kiln_cloud::CloudTarget::OpenStack { cloud, format }) => {
                let cloud = kiln_cloud::openstack::load_cloud(cloud)?;
                for b in &bs {
                    published.extend(publish_openstack(
                        ui,
                        catalog,
                        reporter,
                        a,
                        t,
                        &cloud,
                        format.as_deref(),
                        b,
                    )?);
                }
            }
            Target::Registry(reference) => {
                for b in &bs {
                    let r = kiln_publish::registry::publish(
                        b,
                        reference,
                        &RegistryOptions {
                            insecure: a.insecure,
                            credentials: credentials.clone(),
                            progress: &progress,
                        },
                    )?;
                    let location = format!("{}@{}", r.repository, r.digest);
                    crate::catalog::record_publication(
                        ui,
                        catalog,
                        &b.dir,
                        &kiln_catalog::Publication {
                            target: t.display(),
                            kind: "registry".into(),
                            location: location.clone(),
                            digest: Some(r.digest.clone()),
                            channel: None,
                            published_at: 0,
                            region: None,
                        },
                    );
                    reporter.step(
                        Stage::Published,
                        &format!(
                            "{location} as {} ({}; {} artifacts attached{})",
                            r.tags.join(", "),
                            if r.nothing_sent() {
                                "all there already, nothing sent".to_string()
                            } else {
                                format!(
                                    "{} blobs uploaded, {} already there",
                                    r.blobs_uploaded, r.blobs_skipped
                                )
                            },
                            r.referrers.len(),
                            match r.discovery {
                                kiln_registry::attach::Discovery::ReferrersApi => "",
                                kiln_registry::attach::Discovery::TagFallback => {
                                    ", listed in the referrers tag"
                                }
                            }
                        ),
                    );
                    published.push(json!({
                        "target": t.display(),
                        "kind": "registry",
                        "build-id": b.id,
                        "image": b.manifest.image,
                        "repository": r.repository,
                        "tags": r.tags,
                        "digest": r.digest,
                        "blobs-uploaded": r.blobs_uploaded,
                        "blobs-skipped": r.blobs_skipped,
                        "manifests-pushed": r.manifests_pushed,
                        "artifact-bytes-uploaded": r.artifact_bytes_uploaded,
                        "discovery": match r.discovery {
                            kiln_registry::attach::Discovery::ReferrersApi => "referrers-api",
                            kiln_registry::attach::Discovery::TagFallback => "tag-fallback",
                        },
                        "referrers": r.referrers.iter().map(|x| json!({
                            "artifact-type": x.artifact_type,
                            "digest": x.digest,
                            "present": x.present,
                        })).collect::<Vec<_>>(),
                    }));
                }
            }
        }
    }
    if a.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "schema-version": 1,
                "published": published,
            }))?
        );
    }
    Ok(())
}

/// The AMIs of one build: each of its disks (one per architecture) into
/// every region, recorded per region in the catalog.
fn publish_aws(
    ui: &Ui,
    catalog: Option<&Path>,
    reporter: &dyn Reporter,
    a: &PublishArgs,
    t: &Target,
    regions: &[String],
    b: &Build,
) -> Result<Vec<serde_json::Value>> {
    let disks = cloud_files(
        b,
        kiln_model::Format::Disk,
        "the build has no disk.raw to make an AMI of",
        "build with [output] formats = [\"disk\"] (the debian-cloud-aws recipe does)",
    )?;
    let m = &b.manifest;
    let version = m.version.as_deref().unwrap_or("0");
    let mut out = Vec::new();
    for f in disks {
        let arch = f.architecture.as_deref().unwrap_or("amd64");
        let (_, sha) = f.digest.as_ref().expect("a disk file has a digest");
        let name = cloud_name(b, arch, "()[] ./-'@_", 128);
        let progress = |msg: &str| reporter.step(Stage::Publish, msg);
        let r = kiln_cloud::aws::publish(
            regions,
            &kiln_cloud::aws::AwsImage {
                disk: &b.path_of(f),
                sha256: sha,
                name: name.clone(),
                description: format!("{} {version} ({arch}), built by Kiln", m.image),
                architecture: arch,
                tags: vec![
                    ("kiln:image".into(), m.image.clone()),
                    ("kiln:version".into(), version.to_string()),
                    ("kiln:build".into(), b.id.clone()),
                ],
            },
            &kiln_cloud::aws::AwsOptions {
                replace: a.replace,
                progress: &progress,
                wait: std::time::Duration::from_secs(a.cloud_wait),
            },
        )?;
        // Recorded only once every region has its image.
        for i in &r.images {
            crate::catalog::record_publication(
                ui,
                catalog,
                &b.dir,
                &kiln_catalog::Publication {
                    target: format!("aws://{}", i.region),
                    kind: "aws".into(),
                    location: i.image_id.clone(),
                    digest: Some(format!("sha256:{sha}")),
                    channel: None,
                    published_at: 0,
                    region: Some(i.region.clone()),
                },
            );
        }
        reporter.step(
            Stage::Published,
            &format!(
                "{name}: {} ({})",
                r.images
                    .iter()
                    .map(|i| format!("{} {} ({})", i.region, i.image_id, i.how))
                    .collect::<Vec<_>>()
                    .join(", "),
                if r.nothing_sent() {
                    "all there already, nothing sent".to_string()
                } else {
                    format!(
                        "{} blocks sent, {} zero blocks skipped",
                        r.blocks_sent, r.blocks_skipped
                    )
                }
            ),
        );
        out.push(json!({
            "target": t.display(),
            "kind": "aws",
            "build-id": b.id,
            "image": m.image,
            "architecture": arch,
            "name": name,
            "disk-sha256": sha,
            "snapshot": r.snapshot,
            "blocks-sent": r.blocks_sent,
            "blocks-skipped": r.blocks_skipped,
            "bytes-sent": r.bytes_sent,
            "images": r.images.iter().map(|i| json!({
                "region": i.region,
                "image-id": i.image_id,
                "how": i.how,
            })).collect::<Vec<_>>(),
        }));
    }
    Ok(out)
}

/// A build's image name in a cloud: `IMAGE-VERSION-ARCH-YYYYMMDD-HHMMSS`
/// (the build's epoch), characters outside `allowed` (and ASCII letters and
/// digits) made `-`, at most `max` characters: a long image name or version
/// is shortened, never the `-ARCH-DATE-TIME` that tells builds apart.
fn cloud_name(b: &Build, arch: &str, allowed: &str, max: usize) -> String {
    let m = &b.manifest;
    let stamp: String = kiln_publish::rfc3339(m.source_date_epoch)
        .chars()
        .filter(|c| c.is_ascii_digit())
        .collect();
    let (day, time) = stamp.split_at(8.min(stamp.len()));
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || allowed.contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let suffix = clean(&format!("-{arch}-{day}-{time}"));
    let prefix: String = clean(&format!(
        "{}-{}",
        m.image,
        m.version.as_deref().unwrap_or("0")
    ))
    .chars()
    .take(max.saturating_sub(suffix.len()).max(1))
    .collect();
    format!("{prefix}{suffix}")
}

/// The build's files of `format` (one per architecture); none is an
/// error saying what the target needed and how to get it.
fn cloud_files<'b>(
    b: &'b Build,
    format: kiln_model::Format,
    what: &str,
    hint: &str,
) -> Result<Vec<&'b kiln_publish::source::BuildFile>> {
    let files: Vec<_> = b
        .files
        .iter()
        .filter(|f| f.format == Some(format))
        .collect();
    if files.is_empty() {
        return Err(Hinted::new(format!("{}: {what}", b.dir.display()), hint).into());
    }
    Ok(files)
}

/// Each fixed VHD of one build (`disk.vhd`, from `[output] formats`
/// `vhd`) into a page blob of the container, and with `record` the
/// managed image made from it.
#[allow(clippy::too_many_arguments)]
fn publish_azure(
    ui: &Ui,
    catalog: Option<&Path>,
    reporter: &dyn Reporter,
    a: &PublishArgs,
    t: &Target,
    container: &str,
    record: Option<&kiln_cloud::azure_image::ImageRecord>,
    b: &Build,
) -> Result<Vec<serde_json::Value>> {
    let vhds = cloud_files(
        b,
        kiln_model::Format::Vhd,
        "the build has no disk.vhd to upload to Azure",
        "build with [output] formats = [\"disk\", \"vhd\"] (the debian-cloud-azure recipe does), or make one with kiln convert DISK --format vhd",
    )?;
    let mut out = Vec::new();
    for f in vhds {
        let arch = f.architecture.as_deref().unwrap_or("amd64");
        let (_, sha) = f.digest.as_ref().expect("a VHD has a digest");
        let blob = format!("{}.vhd", cloud_name(b, arch, "-._", 250));
        let progress = |msg: &str| reporter.step(Stage::Publish, msg);
        let r = kiln_cloud::azure::publish(
            container,
            &kiln_cloud::azure::AzureImage {
                vhd: &b.path_of(f),
                sha256: sha,
                blob: blob.clone(),
                metadata: vec![
                    ("kiln_image".into(), b.manifest.image.clone()),
                    ("kiln_build".into(), b.id.clone()),
                ],
            },
            a.replace,
            &progress,
        )?;
        let image = match record {
            Some(rec) => {
                let name = kiln_cloud::azure_image::image_name(&blob);
                let i = kiln_cloud::azure_image::publish(
                    rec,
                    &name,
                    &r.url,
                    sha,
                    &[
                        ("kiln_image".into(), b.manifest.image.clone()),
                        ("kiln_build".into(), b.id.clone()),
                    ],
                    a.replace,
                    std::time::Duration::from_secs(a.cloud_wait),
                    &progress,
                )?;
                reporter.step(
                    Stage::Published,
                    &format!(
                        "{} in {} ({})",
                        i.id,
                        rec.location,
                        if i.how == "reused" {
                            "there already"
                        } else {
                            "made from the blob"
                        }
                    ),
                );
                Some((i, rec.location.clone()))
            }
            None => None,
        };
        // The image to launch (with its region) when there is one, else
        // the blob.
        crate::catalog::record_publication(
            ui,
            catalog,
            &b.dir,
            &kiln_catalog::Publication {
                target: t.display(),
                kind: "azure".into(),
                location: image
                    .as_ref()
                    .map_or_else(|| r.url.clone(), |(i, _)| i.id.clone()),
                digest: Some(format!("sha256:{sha}")),
                channel: None,
                published_at: 0,
                region: image.as_ref().map(|(_, l)| l.clone()),
            },
        );
        reporter.step(
            Stage::Published,
            &format!(
                "{} ({})",
                r.url,
                if r.how == "reused" {
                    "there already, nothing sent".to_string()
                } else {
                    format!("{} page writes, {} MiB", r.pages_sent, r.bytes_sent >> 20)
                }
            ),
        );
        out.push(json!({
            "target": t.display(),
            "kind": "azure",
            "build-id": b.id,
            "image": b.manifest.image,
            "architecture": arch,
            "account": r.account,
            "blob": blob,
            "url": r.url,
            "vhd-sha256": sha,
            "how": r.how,
            "pages-sent": r.pages_sent,
            "bytes-sent": r.bytes_sent,
            "image-id": image.as_ref().map(|(i, _)| i.id.clone()),
            "image-how": image.as_ref().map(|(i, _)| i.how),
            "region": image.as_ref().map(|(_, l)| l.clone()),
        }));
    }
    Ok(out)
}

/// Each GCE import archive of one build (`disk.tar.gz`, from `[output]
/// formats` `gce`) through the bucket into an image of the project.
#[allow(clippy::too_many_arguments)]
fn publish_gce(
    ui: &Ui,
    catalog: Option<&Path>,
    reporter: &dyn Reporter,
    a: &PublishArgs,
    t: &Target,
    project: &str,
    bucket: &str,
    b: &Build,
) -> Result<Vec<serde_json::Value>> {
    let archives = cloud_files(
        b,
        kiln_model::Format::Gce,
        "the build has no disk.tar.gz to import into GCE",
        "build with [output] formats = [\"disk\", \"gce\"] (the debian-cloud-gce recipe does), or make one with kiln convert DISK --format gce",
    )?;
    let mut out = Vec::new();
    for f in archives {
        let arch = f.architecture.as_deref().unwrap_or("amd64");
        let (_, sha) = f.digest.as_ref().expect("an archive has a digest");
        let name = kiln_cloud::gce::image_name(&cloud_name(b, arch, "-", 58));
        let progress = |msg: &str| reporter.step(Stage::Publish, msg);
        let r = kiln_cloud::gce::publish(
            project,
            bucket,
            &kiln_cloud::gce::GceImage {
                archive: &b.path_of(f),
                sha256: sha,
                name: name.clone(),
                description: format!(
                    "{} {} ({arch}), built by Kiln",
                    b.manifest.image,
                    b.manifest.version.as_deref().unwrap_or("0")
                ),
                architecture: arch,
                labels: vec![(
                    "kiln-image".into(),
                    kiln_cloud::gce::image_name(&b.manifest.image),
                )],
            },
            a.replace,
            std::time::Duration::from_secs(a.cloud_wait),
            &progress,
        )?;
        crate::catalog::record_publication(
            ui,
            catalog,
            &b.dir,
            &kiln_catalog::Publication {
                target: t.display(),
                kind: "gce".into(),
                location: r.image.clone(),
                digest: Some(format!("sha256:{sha}")),
                channel: None,
                published_at: 0,
                region: Some("global".into()),
            },
        );
        reporter.step(
            Stage::Published,
            &format!(
                "{} from {} ({})",
                r.image,
                r.object,
                match r.how {
                    "reused" => "there already, nothing sent".to_string(),
                    "imported" => "the archive was in the bucket already".to_string(),
                    _ => format!("{} MiB uploaded", r.bytes_sent >> 20),
                }
            ),
        );
        out.push(json!({
            "target": t.display(),
            "kind": "gce",
            "build-id": b.id,
            "image": b.manifest.image,
            "architecture": arch,
            "name": name,
            "gce-image": r.image,
            "object": r.object,
            "archive-sha256": sha,
            "how": r.how,
            "bytes-sent": r.bytes_sent,
            "chunks-resumed": r.resumed,
        }));
    }
    Ok(out)
}

/// Debian's release number of a suite's codename (`os_version`), or the
/// codename itself.
fn debian_release(suite: &str) -> String {
    let n = match suite {
        "buster" => "10",
        "bullseye" => "11",
        "bookworm" => "12",
        "trixie" => "13",
        "forky" => "14",
        "duke" => "15",
        "sid" | "unstable" => "sid",
        other => other,
    };
    n.to_string()
}

/// Each disk of one build into a Glance image of the cloud: its qcow2
/// (`[output] formats` `qcow2`) when it has one, else `disk.raw`
/// (`?format=` picks).
#[allow(clippy::too_many_arguments)]
fn publish_openstack(
    ui: &Ui,
    catalog: Option<&Path>,
    reporter: &dyn Reporter,
    a: &PublishArgs,
    t: &Target,
    cloud: &kiln_cloud::openstack::Cloud,
    format: Option<&str>,
    b: &Build,
) -> Result<Vec<serde_json::Value>> {
    let disks = cloud_files(
        b,
        kiln_model::Format::Disk,
        "the build has no disk.raw to make a Glance image of",
        "build with [output] formats = [\"disk\", \"qcow2\"] (the debian-cloud-openstack recipe does)",
    )?;
    let mut out = Vec::new();
    for d in disks {
        let arch = d.architecture.as_deref().unwrap_or("amd64");
        let qcow2 = b.files.iter().find(|f| {
            f.format == Some(kiln_model::Format::Qcow2) && f.architecture == d.architecture
        });
        let (file, disk_format) = match (format, qcow2) {
            (Some("raw"), _) | (None, None) => (d, "raw"),
            (_, Some(q)) => (q, "qcow2"),
            (Some(_), None) => {
                return Err(Hinted::new(
                    format!("{}: the build has no disk.qcow2 ({arch})", b.dir.display()),
                    "build with [output] formats = [\"disk\", \"qcow2\"], or publish the raw disk with openstack://CLOUD?format=raw",
                )
                .into())
            }
        };
        let (_, sha) = file.digest.as_ref().expect("a disk file has a digest");
        let name = cloud_name(b, arch, "-._", 200);
        let progress = |msg: &str| reporter.step(Stage::Publish, msg);
        let r = kiln_cloud::openstack::publish(
            cloud,
            &kiln_cloud::openstack::OpenStackImage {
                file: &b.path_of(file),
                disk_format,
                sha256: sha,
                disk: &b.path_of(d),
                name: name.clone(),
                architecture: arch,
                os_version: debian_release(&b.manifest.suite),
                properties: vec![
                    ("kiln_image".into(), b.manifest.image.clone()),
                    ("kiln_build".into(), b.id.clone()),
                ],
            },
            a.replace,
            &progress,
        )?;
        crate::catalog::record_publication(
            ui,
            catalog,
            &b.dir,
            &kiln_catalog::Publication {
                target: t.display(),
                kind: "openstack".into(),
                location: r.image_id.clone(),
                digest: Some(format!("sha256:{sha}")),
                channel: None,
                published_at: 0,
                region: Some(r.region.clone()),
            },
        );
        reporter.step(
            Stage::Published,
            &format!(
                "image {} in {} of cloud {} ({})",
                r.image_id,
                r.region,
                cloud.name,
                if r.how == "reused" {
                    "there already, nothing sent".to_string()
                } else {
                    format!("{} MiB of {disk_format} uploaded", r.bytes_sent >> 20)
                }
            ),
        );
        out.push(json!({
            "target": t.display(),
            "kind": "openstack",
            "build-id": b.id,
            "image": b.manifest.image,
            "architecture": arch,
            "cloud": cloud.name,
            "region": r.region,
            "name": name,
            "image-id": r.image_id,
            "url": r.url,
            "disk-format": disk_format,
            "file-sha256": sha,
            "how": r.how,
            "bytes-sent": r.bytes_sent,
            "deleted": r.deleted,
        }));
    }
    Ok(out)
}

/// One target with the channel and the builds it gets.
struct Job {
    target: Target,
    channel: String,
    /// Indexes into the builds.
    builds: Vec<usize>,
}

/// Without `--to`: each build goes where its recipe's `[[publish]]`
/// entries say. The recipe is `NAME.toml` beside the build's lock, and
/// must still be the one the build was made from.
fn recipe_jobs(builds: &[Build]) -> Result<Vec<Job>> {
    let mut jobs: Vec<Job> = Vec::new();
    for (i, b) in builds.iter().enumerate() {
        let recipe_path = b.manifest.lock_path(&b.dir).with_extension("toml");
        let no_targets = || {
            Usage::new(
                format!(
                    "{}: no --to given and no [[publish]] in its recipe {}",
                    b.dir.display(),
                    recipe_path.display()
                ),
                "give --to TARGET, or add [[publish]] to = \"file:///srv/images\" to the recipe (or a class it includes)",
            )
        };
        if !recipe_path.is_file() {
            return Err(no_targets().into());
        }
        let recipe = kiln_recipe::Recipe::load(&recipe_path)?;
        if recipe.resolution_hash() != b.manifest.lock.recipe_sha256 {
            return Err(Hinted::new(
                format!(
                    "{} was built from another version of {}: its [[publish]] targets may not be this build's",
                    b.dir.display(),
                    recipe_path.display()
                ),
                "rebuild it, or give --to TARGET",
            )
            .into());
        }
        if recipe.publish.is_empty() {
            return Err(no_targets().into());
        }
        for p in &recipe.publish {
            let target = Target::parse(&p.to).map_err(|e| {
                Hinted::new(
                    format!(
                        "{}: [[publish]] to = {:?}: {e}",
                        recipe_path.display(),
                        p.to
                    ),
                    e.hint().unwrap_or_default(),
                )
            })?;
            let channel = p.channel.clone().unwrap_or_else(|| "stable".into());
            kiln_publish::document::check_channel(&channel).map_err(|m| {
                Hinted::new(
                    format!("{}: [[publish]] channel: {m}", recipe_path.display()),
                    "e.g. channel = \"stable\"",
                )
            })?;
            match jobs
                .iter_mut()
                .find(|j| j.target == target && j.channel == channel)
            {
                Some(j) => j.builds.push(i),
                None => jobs.push(Job {
                    target,
                    channel,
                    builds: vec![i],
                }),
            }
        }
    }
    Ok(jobs)
}

/// `kiln verify TREE`: a download tree's channel documents and files.
pub fn cmd_verify_tree(
    reporter: &dyn Reporter,
    tree: &Path,
    key: Option<&Path>,
    channels: &[String],
    json_out: bool,
) -> Result<()> {
    let Some(key) = key else {
        return Err(Usage::new(
            format!(
                "{} is a download tree: its documents are checked against a key",
                tree.display()
            ),
            "give --key KEY.pub, the public key of the key that signs the tree",
        )
        .into());
    };
    let key = VerifyingKey::from_pem_file(key)?;
    let progress = |m: &str| reporter.step(Stage::Verify, m);
    let r = kiln_publish::verify::verify(
        tree,
        &VerifyOptions {
            key: &key,
            channels: channels.to_vec(),
            now: kiln_publish::unix_now(),
            state_dir: kiln_publish::verify::default_state_dir(),
            progress: &progress,
        },
    )?;
    if json_out {
        outln!("{}", serde_json::to_string_pretty(&r)?);
    }
    for c in &r.channels {
        if c.problems.is_empty() {
            reporter.step(
                Stage::Verify,
                &format!(
                    "channel {}: serial {}, {} images, {} versions, {} files ({}) match, signed by key {}",
                    c.channel,
                    c.serial.unwrap_or(0),
                    c.images,
                    c.versions,
                    c.files_checked,
                    kiln_build::fetch::human_size(c.bytes_checked),
                    &r.keyid[..16.min(r.keyid.len())]
                ),
            );
        }
    }
    if !r.ok {
        let problems: Vec<String> = r
            .channels
            .iter()
            .flat_map(|c| {
                c.problems
                    .iter()
                    .map(move |p| format!("channel {}: {p}", c.channel))
            })
            .collect();
        return Err(Hinted::new(
            format!(
                "{} does not verify ({} problems):\n  {}",
                tree.display(),
                problems.len(),
                problems.join("\n  ")
            ),
            "do not use these files; republish from the builds (kiln publish) or restore the tree",
        )
        .into());
    }
    Ok(())
}

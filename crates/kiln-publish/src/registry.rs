//! Publishing a build to an OCI registry: its image (as `kiln push` does,
//! skipping what the registry has), then its SBOMs, provenance and test
//! report as OCI 1.1 artifacts whose subject is the image.

use kiln_model::manifest::Format;
use kiln_registry::attach::{self, Attachment, Discovery, Referrer, Subject};
use kiln_registry::{Credentials, PushOptions, Reference};

use crate::source::{Build, BuildFile, Role};
use crate::PublishError;

pub struct RegistryOptions<'a> {
    pub insecure: bool,
    pub credentials: Option<Credentials>,
    pub progress: &'a dyn Fn(&str),
}

#[derive(Clone, Debug)]
pub struct RegistryReport {
    /// `HOST/REPOSITORY` without a tag.
    pub repository: String,
    pub tags: Vec<String>,
    /// `sha256:…` of the image (its index or manifest).
    pub digest: String,
    pub blobs_uploaded: usize,
    pub blobs_skipped: usize,
    pub manifests_pushed: usize,
    pub referrers: Vec<Referrer>,
    pub discovery: Discovery,
    /// Bytes of the attached artifacts sent (0 when all were there).
    pub artifact_bytes_uploaded: u64,
}

impl RegistryReport {
    /// The report of the push of `pushed` to `repository` under `tag`,
    /// before anything is attached.
    fn pushed(repository: &str, tag: &str, pushed: &kiln_registry::PushReport) -> RegistryReport {
        RegistryReport {
            repository: repository.to_string(),
            tags: vec![tag.to_string()],
            digest: pushed.digest.clone(),
            blobs_uploaded: pushed.blobs_uploaded,
            blobs_skipped: pushed.blobs_skipped,
            manifests_pushed: pushed.manifests_pushed + usize::from(!pushed.tag_unchanged),
            referrers: Vec::new(),
            discovery: Discovery::TagFallback,
            artifact_bytes_uploaded: 0,
        }
    }

    /// Whether this publish sent nothing at all.
    pub fn nothing_sent(&self) -> bool {
        self.blobs_uploaded == 0 && self.manifests_pushed == 0 && self.artifact_bytes_uploaded == 0
    }
}

/// `HOST[:PORT]/REPO[:TAG]` as the part before the tag and the tag.
pub fn split_tag(reference: &str) -> (&str, Option<&str>) {
    let last = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[last..].rfind(':') {
        Some(i) => (&reference[..last + i], Some(&reference[last + i + 1..])),
        None => (reference, None),
    }
}

/// Publishes `build` to `reference` (`HOST/REPOSITORY[:TAG]`; without a
/// tag, the tags the layout gives the image, else `latest`).
pub fn publish(
    build: &Build,
    reference: &str,
    opts: &RegistryOptions<'_>,
) -> Result<RegistryReport, PublishError> {
    let push_opts = PushOptions {
        insecure: opts.insecure,
        credentials: opts.credentials.clone(),
        progress: opts.progress,
    };
    let (mut report, reference, subject) =
        match build.files.iter().find(|f| f.format == Some(Format::Oci)) {
            Some(oci) => push_image(build, oci, reference, &push_opts)?,
            None => push_files(build, reference, &push_opts)?,
        };
    let items: Vec<Attachment> = build
        .files
        .iter()
        .filter(|f| f.role != Role::Artifact)
        .map(|f| Attachment {
            artifact_type: f.role.media_type().into(),
            path: build.path_of(f),
        })
        .collect();
    let created = crate::rfc3339(build.manifest.source_date_epoch);
    let a = attach::attach(&reference, &subject, &items, &created, &push_opts)?;
    report.referrers = a.referrers;
    report.discovery = a.discovery;
    report.artifact_bytes_uploaded = a.bytes_uploaded;
    Ok(report)
}

/// Pushes the OCI image of `build` (the layout `oci`); returns the report,
/// the reference pushed and the image as a subject for attachments.
fn push_image(
    build: &Build,
    oci: &BuildFile,
    reference: &str,
    push_opts: &PushOptions<'_>,
) -> Result<(RegistryReport, Reference, Subject), PublishError> {
    let layout = build.path_of(oci);
    let (base, tag) = split_tag(reference);
    let mut tags: Vec<String> = tag.map(str::to_string).into_iter().collect();
    if tags.is_empty() {
        tags = kiln_registry::layout_tags(&layout);
        if tags.is_empty() {
            tags.push("latest".into());
        }
    }
    let mut report = None::<RegistryReport>;
    let mut first_ref = None;
    for t in &tags {
        let r = Reference::parse(&format!("{base}:{t}"))?;
        let pushed = kiln_registry::push(&layout, &r, push_opts)?;
        match &mut report {
            None => {
                report = Some(RegistryReport::pushed(base, t, &pushed));
                first_ref = Some(r);
            }
            Some(rep) => {
                rep.tags.push(t.clone());
                rep.blobs_uploaded += pushed.blobs_uploaded;
                rep.manifests_pushed +=
                    pushed.manifests_pushed + usize::from(!pushed.tag_unchanged);
            }
        }
    }
    let report = report.expect("at least one tag");
    let reference = first_ref.expect("at least one tag");
    // The subject: the image's top index or manifest, from the layout.
    let hex = report.digest.trim_start_matches("sha256:");
    let top = build
        .root()
        .read(format!("{}/blobs/sha256/{hex}", oci.rel))
        .map_err(PublishError::io(format!(
            "reading the image index {}",
            report.digest
        )))?;
    let media_type = serde_json::from_slice::<serde_json::Value>(&top)
        .ok()
        .and_then(|v| {
            v.get("mediaType")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "application/vnd.oci.image.index.v1+json".into());
    let subject = Subject {
        digest: report.digest.clone(),
        media_type,
        size: top.len() as u64,
    };
    Ok((report, reference, subject))
}

/// The media type of a tarball or disk pushed as a layer of an artifact.
fn layer_media_type(format: Format) -> &'static str {
    match format {
        Format::Tar => "application/vnd.kiln.rootfs.tar",
        Format::Disk => "application/vnd.kiln.disk.raw",
        Format::Qcow2 => "application/vnd.kiln.disk.qcow2",
        Format::Vhd => "application/vnd.kiln.disk.vhd",
        Format::Gce => "application/vnd.kiln.disk.gce.tar+gzip",
        Format::Update => "application/vnd.kiln.update.v1",
        Format::Oci => unreachable!("an OCI image is pushed as an image"),
    }
}

/// The artifact type of a build without an OCI image.
pub const ROOTFS_ARTIFACT: &str = "application/vnd.kiln.rootfs.v1";
pub const DISK_ARTIFACT: &str = "application/vnd.kiln.disk.v1";

/// Pushes a build without an OCI image (a root filesystem tarball, disk
/// images) as one OCI 1.1 artifact whose layers are its files, each by the
/// size and sha256 the build's check found; tagged as given, else with the
/// image's version (when it is a valid tag), else `latest`.
fn push_files(
    build: &Build,
    reference: &str,
    push_opts: &PushOptions<'_>,
) -> Result<(RegistryReport, Reference, Subject), PublishError> {
    let (base, tag) = split_tag(reference);
    let r = match tag {
        Some(t) => Reference::parse(&format!("{base}:{t}"))?,
        None => build
            .manifest
            .version
            .as_ref()
            .and_then(|v| Reference::parse(&format!("{base}:{v}")).ok())
            .map_or_else(|| Reference::parse(&format!("{base}:latest")), Ok)?,
    };
    let files: Vec<(Format, &BuildFile, u64, &str)> = build
        .files
        .iter()
        .filter(|f| f.role == Role::Artifact)
        .filter_map(|f| {
            let (size, sha) = f.digest.as_ref()?;
            Some((f.format?, f, *size, sha.as_str()))
        })
        .collect();
    if files.is_empty() {
        return Err(PublishError::Target {
            target: format!("docker://{reference}"),
            message: format!("{} holds no artifact to push", build.dir.display()),
        });
    }
    let artifact_type = if files.iter().any(|(format, ..)| format.is_disk()) {
        DISK_ARTIFACT
    } else {
        ROOTFS_ARTIFACT
    };
    let layers: Vec<attach::FileLayer> = files
        .iter()
        .map(|(format, f, size, sha)| attach::FileLayer {
            media_type: layer_media_type(*format).into(),
            title: f.name.clone(),
            path: build.path_of(f),
            size: *size,
            digest: format!("sha256:{sha}"),
        })
        .collect();
    let created = crate::rfc3339(build.manifest.source_date_epoch);
    let (pushed, subject) = attach::push_files(&r, artifact_type, &layers, &created, push_opts)?;
    let report = RegistryReport::pushed(base, &r.tag, &pushed);
    Ok((report, r, subject))
}

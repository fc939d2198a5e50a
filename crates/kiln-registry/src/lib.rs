//! Pushing an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…`) to a registry that speaks the OCI distribution API.
//!
//! [`push`] reads the layout's `index.json` and pushes the image it
//! describes under one tag:
//!
//! * one manifest (possibly listed several times under different
//!   `org.opencontainers.image.ref.name` annotations) is pushed once and
//!   tagged;
//! * one image index blob (multi-arch) is pushed after all its manifests;
//! * several single-platform manifests listed directly in `index.json` are
//!   pushed by digest, then an image index of them (their descriptors without
//!   the `ref.name` annotations) is pushed under the tag;
//! * if `index.json` lists several different images, the one whose `ref.name`
//!   equals the tag is pushed.
//!
//! Every blob is checked against its descriptor (sha256 and size) before
//! anything is sent, so a corrupt layout is refused locally. Blobs the
//! registry already has are skipped; the others are uploaded monolithically
//! (one streamed PUT each). Manifests go last, each first by digest; the tag
//! is written only after everything else succeeded and the registry confirmed
//! the top-level digest, so a tag never points at a partial upload.
//!
//! Authentication follows the registry's `WWW-Authenticate` challenge: Basic,
//! or Bearer tokens from the challenge's realm (requested with scope
//! `repository:REPO:pull,push`, using the credentials as Basic
//! authentication when given).

pub mod attach;
mod client;
pub mod docker_config;
pub mod error;
mod layout;
mod reference;

use std::fmt;
use std::path::Path;

pub use error::RegistryError;
pub use layout::layout_tags;
pub use reference::Reference;

/// Registry credentials.
///
/// The CLI takes them from `--username`/`--password`, or from the environment
/// variables `KILN_REGISTRY_USER` and `KILN_REGISTRY_PASSWORD`; this crate
/// reads no environment itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How to push.
pub struct PushOptions<'a> {
    /// Talk plain HTTP instead of HTTPS (for registries on loopback or a
    /// trusted network).
    pub insecure: bool,
    /// Credentials for Basic authentication or for the Bearer token server;
    /// `None` pushes anonymously.
    pub credentials: Option<Credentials>,
    /// Receives one line per step (blob uploaded or skipped, manifest
    /// pushed, tag written).
    pub progress: &'a dyn Fn(&str),
}

fn quiet(_: &str) {}

impl Default for PushOptions<'static> {
    /// HTTPS, anonymous, no progress output.
    fn default() -> Self {
        PushOptions {
            insecure: false,
            credentials: None,
            progress: &quiet,
        }
    }
}

/// What a successful push did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushReport {
    /// `sha256:…` of the manifest or index the tag now points at.
    pub digest: String,
    /// Blobs (configs and layers) sent to the registry.
    pub blobs_uploaded: usize,
    /// Blobs the registry already had.
    pub blobs_skipped: usize,
    /// Manifests and indexes pushed, including the tagged one.
    pub manifests_pushed: usize,
    /// Manifests the registry already had (by digest).
    pub manifests_skipped: usize,
    /// Whether the tag already pointed at the image (nothing was sent for it).
    pub tag_unchanged: bool,
}

/// Pushes the image of the OCI layout at `layout_dir` to `reference`.
pub fn push(
    layout_dir: &Path,
    reference: &Reference,
    opts: &PushOptions<'_>,
) -> Result<PushReport, RegistryError> {
    let progress = opts.progress;
    let plan = layout::read_plan(layout_dir, &reference.tag)?;
    let total: u64 = plan.blobs.iter().map(|b| b.size).sum();
    let manifests = plan.children.len() + 1;
    progress(&format!(
        "verified {} blob{} ({}) and {manifests} manifest{} in {}",
        plan.blobs.len(),
        if plan.blobs.len() == 1 { "" } else { "s" },
        human_size(total),
        if manifests == 1 { "" } else { "s" },
        layout_dir.display()
    ));

    let client = client::Client::new(reference, opts);
    client.ping()?;
    send(&client, &plan, reference, progress)
}

/// Sends what of `plan` the registry lacks: blobs, then manifests (each by
/// digest), then the tag, which is written last so that it never points
/// at a partial upload.
pub(crate) fn send(
    client: &client::Client<'_>,
    plan: &layout::Plan,
    reference: &Reference,
    progress: &dyn Fn(&str),
) -> Result<PushReport, RegistryError> {
    let mut report = PushReport {
        digest: plan.top.digest.clone(),
        blobs_uploaded: 0,
        blobs_skipped: 0,
        manifests_pushed: 0,
        manifests_skipped: 0,
        tag_unchanged: false,
    };
    for blob in &plan.blobs {
        if client.has_blob(blob)? {
            report.blobs_skipped += 1;
            progress(&format!("blob {} already present", blob.digest));
        } else {
            client.upload_blob(blob)?;
            report.blobs_uploaded += 1;
            progress(&format!(
                "uploaded blob {} ({})",
                blob.digest,
                human_size(blob.size)
            ));
        }
    }
    for m in plan.children.iter().chain([&plan.top]) {
        if client.manifest_digest(&m.digest)?.is_some() {
            report.manifests_skipped += 1;
            progress(&format!("manifest {} already present", m.digest));
            continue;
        }
        client.put_manifest(m, &m.digest)?;
        report.manifests_pushed += 1;
        progress(&format!("pushed manifest {}", m.digest));
    }
    if client.manifest_digest(&reference.tag)?.as_deref() == Some(plan.top.digest.as_str()) {
        report.tag_unchanged = true;
        progress(&format!(
            "{reference} already points at {}",
            plan.top.digest
        ));
    } else {
        client.put_manifest(&plan.top, &reference.tag)?;
        progress(&format!("tagged {reference} -> {}", plan.top.digest));
    }
    Ok(report)
}

fn human_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

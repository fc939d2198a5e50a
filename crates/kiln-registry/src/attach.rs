//! OCI 1.1 artifacts about an image: an SBOM, provenance or a test report
//! pushed as a manifest whose `subject` is the image, so that
//! `GET /v2/<name>/referrers/<digest>` (or, on a registry without that API,
//! the `sha256-<hex>` tag that holds an index of referrers) finds them.
//!
//! Attaching is idempotent: blobs and manifests the registry already has are
//! not sent again, and a referrer already listed is not listed twice.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::client::Client;
use crate::layout::{self, Manifest, INDEX_V1, MANIFEST_V1};
use crate::{PushOptions, Reference, RegistryError};

/// The empty JSON config of an artifact manifest.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY_DATA: &[u8] = b"{}";
/// Entries a fallback referrers index may have before it is refused.
const MAX_REFERRERS: usize = 10_000;

/// The image the artifacts are about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}

/// One file to attach.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// The manifest's `artifactType` and the layer's media type, e.g.
    /// `application/spdx+json`.
    pub artifact_type: String,
    pub path: PathBuf,
}

/// How the registry lets clients discover referrers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discovery {
    /// `GET /v2/<name>/referrers/<digest>`.
    ReferrersApi,
    /// The `sha256-<hex>` tag holding an image index.
    TagFallback,
}

/// One attached artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Referrer {
    pub artifact_type: String,
    /// The artifact manifest's digest.
    pub digest: String,
    /// Whether it was already there (nothing was sent for it).
    pub present: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachReport {
    pub referrers: Vec<Referrer>,
    pub discovery: Discovery,
    /// Bytes of blobs and manifests sent.
    pub bytes_uploaded: u64,
}

/// The tag a registry without the referrers API holds referrers under.
pub fn fallback_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The empty config descriptor every artifact manifest carries.
fn empty_config() -> Value {
    json!({
        "mediaType": EMPTY_MEDIA_TYPE,
        "digest": sha256_digest(EMPTY_DATA),
        "size": EMPTY_DATA.len(),
        "data": "e30=",
    })
}

/// Sends the empty config unless the registry has it; whether it was sent.
fn ensure_empty_config(client: &Client<'_>) -> Result<bool, RegistryError> {
    let empty = sha256_digest(EMPTY_DATA);
    if client.has_blob_digest(&empty)? {
        return Ok(false);
    }
    client.upload_bytes(&empty, EMPTY_DATA)?;
    Ok(true)
}

/// The artifact manifest for `file` (its digest and size known), as bytes.
/// `created` (RFC 3339) makes it reproducible: the same inputs give the
/// same digest on every machine.
pub fn artifact_manifest(
    subject: &Subject,
    artifact_type: &str,
    title: &str,
    file_digest: &str,
    file_size: u64,
    created: &str,
) -> Vec<u8> {
    let m = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_V1,
        "artifactType": artifact_type,
        "config": empty_config(),
        "layers": [{
            "mediaType": artifact_type,
            "digest": file_digest,
            "size": file_size,
            "annotations": { "org.opencontainers.image.title": title },
        }],
        "subject": {
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": subject.size,
        },
        "annotations": { "org.opencontainers.image.created": created },
    });
    serde_json::to_vec(&m).expect("JSON")
}

/// Attaches `items` to `subject` in `reference`'s repository (the tag of
/// `reference` is not used). `subject` must already be in the repository.
pub fn attach(
    reference: &Reference,
    subject: &Subject,
    items: &[Attachment],
    created: &str,
    opts: &PushOptions<'_>,
) -> Result<AttachReport, RegistryError> {
    let progress = opts.progress;
    let client = Client::new(reference, opts);
    client.ping()?;
    if client.manifest_digest(&subject.digest)?.is_none() {
        return Err(RegistryError::Registry {
            method: "HEAD".into(),
            url: format!(
                "{}/{}@{}",
                reference.registry, reference.repository, subject.digest
            ),
            status: 404,
            message: "the image the artifacts are about is not in the repository; push it first"
                .into(),
        });
    }
    let api = client.referrers(&subject.digest)?;
    let discovery = if api.is_some() {
        Discovery::ReferrersApi
    } else {
        Discovery::TagFallback
    };
    let tag = fallback_tag(&subject.digest);
    // What is listed already: from the API, or from the fallback index.
    let mut listed: Vec<Value> = match &api {
        Some(body) => index_entries(body, "the referrers API answer")?,
        None => match client.get_manifest(&tag)? {
            Some((_, body)) => index_entries(&body, &format!("the tag {tag}"))?,
            None => Vec::new(),
        },
    };
    let mut report = AttachReport {
        referrers: Vec::new(),
        discovery,
        bytes_uploaded: 0,
    };
    let mut fallback_changed = false;
    for item in items {
        let (size, hex) = {
            let mut f = std::fs::File::open(&item.path).map_err(|e| RegistryError::Io {
                what: format!("opening {}", item.path.display()),
                source: e,
            })?;
            layout::hash(&mut f).map_err(|e| RegistryError::Io {
                what: format!("reading {}", item.path.display()),
                source: e,
            })?
        };
        let file_digest = hex;
        let title = item
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes = artifact_manifest(
            subject,
            &item.artifact_type,
            &title,
            &file_digest,
            size,
            created,
        );
        let digest = sha256_digest(&bytes);
        let present = client.manifest_digest(&digest)?.is_some();
        if !present {
            if ensure_empty_config(&client)? {
                report.bytes_uploaded += EMPTY_DATA.len() as u64;
            }
            let blob = layout::Blob {
                digest: file_digest.clone(),
                size,
                path: item.path.clone(),
            };
            if !client.has_blob(&blob)? {
                client.upload_blob(&blob)?;
                report.bytes_uploaded += size;
            }
            let m = Manifest {
                digest: digest.clone(),
                media_type: MANIFEST_V1.into(),
                bytes: bytes.clone(),
            };
            client.put_manifest_subject(&m, &digest)?;
            report.bytes_uploaded += bytes.len() as u64;
            progress(&format!(
                "attached {} ({title}) as {digest}",
                item.artifact_type
            ));
        } else {
            progress(&format!(
                "{} ({title}) already attached as {digest}",
                item.artifact_type
            ));
        }
        let already_listed = listed
            .iter()
            .any(|d| d.get("digest").and_then(Value::as_str) == Some(digest.as_str()));
        if discovery == Discovery::TagFallback && !already_listed {
            listed.push(json!({
                "mediaType": MANIFEST_V1,
                "digest": digest,
                "size": bytes.len(),
                "artifactType": item.artifact_type,
                "annotations": { "org.opencontainers.image.created": created },
            }));
            fallback_changed = true;
        }
        report.referrers.push(Referrer {
            artifact_type: item.artifact_type.clone(),
            digest,
            present,
        });
    }
    if fallback_changed {
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": INDEX_V1,
            "manifests": listed,
        }))
        .expect("JSON");
        let m = Manifest {
            digest: sha256_digest(&index),
            media_type: INDEX_V1.into(),
            bytes: index,
        };
        client.put_manifest(&m, &tag)?;
        report.bytes_uploaded += m.bytes.len() as u64;
        progress(&format!("listed the referrers under the tag {tag}"));
    }
    Ok(report)
}

/// The referrers an index lists; its other fields are ignored.
fn index_entries(body: &[u8], what: &str) -> Result<Vec<Value>, RegistryError> {
    let bad = |why: &str| RegistryError::Registry {
        method: "GET".into(),
        url: what.into(),
        status: 200,
        message: format!(
            "{what} is not an image index of referrers ({why}); delete it and attach again"
        ),
    };
    let v: Value = serde_json::from_slice(body).map_err(|_| bad("not JSON"))?;
    if v.get("mediaType")
        .and_then(Value::as_str)
        .is_some_and(|t| t != INDEX_V1)
    {
        return Err(bad("another mediaType"));
    }
    let list = match v.get("manifests") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(bad("manifests is not a list")),
    };
    if list.len() > MAX_REFERRERS {
        return Err(bad("too many entries"));
    }
    let mut out = Vec::with_capacity(list.len());
    for d in list {
        let digest = d.get("digest").and_then(Value::as_str).unwrap_or("");
        let ok = digest.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if !ok {
            return Err(bad("an entry without a sha256 digest"));
        }
        out.push(d.clone());
    }
    Ok(out)
}

/// The referrers of `subject` in `reference`'s repository, by artifact
/// type: from the referrers API, else from the fallback tag.
pub fn list(
    reference: &Reference,
    subject_digest: &str,
    opts: &PushOptions<'_>,
) -> Result<BTreeMap<String, Vec<String>>, RegistryError> {
    let client = Client::new(reference, opts);
    let entries = match client.referrers(subject_digest)? {
        Some(body) => index_entries(&body, "the referrers API answer")?,
        None => {
            let tag = fallback_tag(subject_digest);
            match client.get_manifest(&tag)? {
                Some((_, body)) => index_entries(&body, &format!("the tag {tag}"))?,
                None => Vec::new(),
            }
        }
    };
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in entries {
        let t = d
            .get("artifactType")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let digest = d
            .get("digest")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        out.entry(t).or_default().push(digest);
    }
    Ok(out)
}

/// One file of an artifact pushed by [`push_files`], its size and
/// `sha256:…` digest known (checked by the caller).
#[derive(Clone, Debug)]
pub struct FileLayer {
    pub media_type: String,
    /// The name it is pulled as (`org.opencontainers.image.title`).
    pub title: String,
    pub path: PathBuf,
    pub size: u64,
    pub digest: String,
}

/// The manifest of an artifact holding `files` (no subject), as bytes:
/// reproducible from the same inputs and `created`.
pub fn files_manifest(artifact_type: &str, files: &[FileLayer], created: &str) -> Vec<u8> {
    let layers: Vec<Value> = files
        .iter()
        .map(|f| {
            json!({
                "mediaType": f.media_type,
                "digest": f.digest,
                "size": f.size,
                "annotations": { "org.opencontainers.image.title": f.title },
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_V1,
        "artifactType": artifact_type,
        "config": empty_config(),
        "layers": layers,
        "annotations": { "org.opencontainers.image.created": created },
    }))
    .expect("JSON")
}

/// Pushes `files` (a root filesystem tarball, disk images) as one OCI 1.1
/// artifact tagged `reference`'s tag, for registries as a general artifact
/// store (`oras pull` and the like fetch them by title), the way an image
/// is pushed: what the registry has is not sent again, the tag goes last.
/// Returns the report and the artifact as the subject of attachments.
pub fn push_files(
    reference: &Reference,
    artifact_type: &str,
    files: &[FileLayer],
    created: &str,
    opts: &PushOptions<'_>,
) -> Result<(crate::PushReport, Subject), RegistryError> {
    let client = Client::new(reference, opts);
    client.ping()?;
    let bytes = files_manifest(artifact_type, files, created);
    let subject = Subject {
        digest: sha256_digest(&bytes),
        media_type: MANIFEST_V1.into(),
        size: bytes.len() as u64,
    };
    let plan = layout::Plan {
        blobs: files
            .iter()
            .map(|f| layout::Blob {
                digest: f.digest.clone(),
                size: f.size,
                path: f.path.clone(),
            })
            .collect(),
        children: Vec::new(),
        top: Manifest {
            digest: subject.digest.clone(),
            media_type: MANIFEST_V1.into(),
            bytes,
        },
    };
    let empty_sent = ensure_empty_config(&client)?;
    let mut report = crate::send(&client, &plan, reference, opts.progress)?;
    if empty_sent {
        report.blobs_uploaded += 1;
    } else {
        report.blobs_skipped += 1;
    }
    Ok((report, subject))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fallback_index_is_checked() {
        assert!(index_entries(b"<html>", "t").is_err());
        assert!(index_entries(
            br#"{"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#,
            "t"
        )
        .is_err());
        assert!(index_entries(br#"{"manifests":[{"digest":"../../x"}]}"#, "t").is_err());
        assert_eq!(
            index_entries(br#"{"schemaVersion":2}"#, "t").unwrap().len(),
            0
        );
        let ok = format!(
            r#"{{"manifests":[{{"digest":"sha256:{}"}}]}}"#,
            "a".repeat(64)
        );
        assert_eq!(index_entries(ok.as_bytes(), "t").unwrap().len(), 1);
    }

    #[test]
    fn the_artifact_manifest_is_reproducible_and_names_its_subject() {
        let s = Subject {
            digest: format!("sha256:{}", "b".repeat(64)),
            media_type: INDEX_V1.into(),
            size: 300,
        };
        let d = format!("sha256:{}", "c".repeat(64));
        let a = artifact_manifest(
            &s,
            "application/spdx+json",
            "sbom.spdx.json",
            &d,
            10,
            "2026-01-01T00:00:00Z",
        );
        let b = artifact_manifest(
            &s,
            "application/spdx+json",
            "sbom.spdx.json",
            &d,
            10,
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(a, b);
        let v: Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["subject"]["digest"], s.digest);
        assert_eq!(v["config"]["digest"], sha256_digest(b"{}"));
        assert_eq!(v["layers"][0]["digest"], d);
    }
}

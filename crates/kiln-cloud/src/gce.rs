//! `gce://PROJECT/BUCKET`: GCE's import archive (`disk.tar.gz`) into a
//! Cloud Storage bucket, then a Compute Engine image made from it.
//!
//! 1. The archive is checked all the way through (gzip, one GNU-format
//!    member `disk.raw`, a UEFI GPT disk) before anything is sent.
//! 2. An image of the project with this archive's digest in its labels
//!    (`kiln-sha256-1`, `kiln-sha256-2`: the two halves, a label value
//!    holds 63 characters) is reused as it is; an image of the name with
//!    another digest is refused unless `replace` (then it is deleted).
//! 3. The object is uploaded with a resumable upload (8 MiB chunks; a
//!    chunk that fails is resumed from what the service says it has) with
//!    the digest in its metadata; an object there with that digest is not
//!    uploaded again. A resumable upload only makes an object when it is
//!    complete, so nothing half-written is ever listed.
//! 4. `images.insert` from the object, `UEFI_COMPATIBLE` (and gVNIC,
//!    multi-queue SCSI), the architecture and the labels; its operation is
//!    waited for.
//!
//! Cloud Storage is reached at `STORAGE_EMULATOR_HOST` when set (an
//! emulator, no credentials, as Google's SDKs do), else at Google; the
//! Compute API at `CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE` (gcloud's
//! override), else at Google. The access token comes from
//! `GOOGLE_OAUTH_ACCESS_TOKEN` or `CLOUDSDK_AUTH_ACCESS_TOKEN`, else from a
//! key file (see [`crate::gce_auth`]); it is sent as a bearer token and
//! shown nowhere.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use ureq::http;

use crate::CloudError;

const CHUNK: usize = 8 << 20;
const GOOGLE_STORAGE: &str = "https://storage.googleapis.com";
const GOOGLE_COMPUTE: &str = "https://compute.googleapis.com/compute/v1/";
pub const TOKEN_SOURCES: &str = crate::gce_auth::SOURCES;

/// Project ids: 6–30 lowercase letters, digits and dashes, from a letter.
pub fn valid_project(p: &str) -> bool {
    (6..=30).contains(&p.len())
        && p.starts_with(|c: char| c.is_ascii_lowercase())
        && !p.ends_with('-')
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Bucket names: 3–63 lowercase letters, digits, `-`, `_` and `.`, from
/// a letter or digit.
pub fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-_.".contains(&c))
        && !b.contains("..")
}

/// A GCE image name from `s`: lowercase letters, digits and dashes, from
/// a letter, at most 63 characters.
pub fn image_name(s: &str) -> String {
    let mut n: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    if !n.starts_with(|c: char| c.is_ascii_lowercase()) {
        n.insert_str(0, "kiln-");
    }
    n.truncate(63);
    n.trim_end_matches('-').to_string()
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

struct Client {
    agent: ureq::Agent,
    token: Option<String>,
    storage: String,
    storage_auth: bool,
    compute: String,
}

impl Client {
    fn from_env() -> Result<Client, CloudError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let agent = crate::agent();
        let token = crate::gce_auth::access_token(&agent)?;
        let (storage, storage_auth) = match env("STORAGE_EMULATOR_HOST") {
            Some(h) if h.starts_with("http://") || h.starts_with("https://") => {
                (h.trim_end_matches('/').to_string(), false)
            }
            Some(h) => (format!("http://{}", h.trim_end_matches('/')), false),
            None => (GOOGLE_STORAGE.to_string(), true),
        };
        let mut compute =
            env("CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE").unwrap_or_else(|| GOOGLE_COMPUTE.into());
        if !compute.ends_with('/') {
            compute.push('/');
        }
        Ok(Client {
            agent,
            token: Some(token),
            storage,
            storage_auth,
            compute,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn call(
        &self,
        service: &'static str,
        action: &str,
        method: &str,
        url: &str,
        auth: bool,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<Reply, CloudError> {
        let transport = |message: String| CloudError::Transport {
            service,
            action: action.to_string(),
            region: "global".into(),
            message,
        };
        let mut req = http::Request::builder().method(method).uri(url);
        if auth {
            if let Some(t) = &self.token {
                req = req.header("Authorization", format!("Bearer {t}"));
            }
        }
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let req = req
            .header("Content-Length", body.len())
            .body(body)
            .map_err(|e| transport(format!("bad request: {e}")))?;
        let mut resp = self.agent.run(req).map_err(|e| {
            transport(format!(
                "cannot reach {}: {e}",
                url.split('?').next().unwrap_or(url)
            ))
        })?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .unwrap_or_default();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    fn api(&self, service: &'static str, action: &str, r: &Reply) -> CloudError {
        let v = r.json();
        let e = &v["error"];
        CloudError::Api {
            service,
            action: action.to_string(),
            region: "global".into(),
            status: r.status,
            code: e["status"]
                .as_str()
                .or_else(|| e["errors"][0]["reason"].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP{}", r.status)),
            message: e["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| {
                    String::from_utf8_lossy(&r.body[..r.body.len().min(300)]).into_owned()
                }),
        }
    }
}

pub struct GceImage<'a> {
    /// GCE's import archive (a build's disk.tar.gz).
    pub archive: &'a Path,
    /// Its sha256 (hex), from the build's manifest.
    pub sha256: &'a str,
    /// The image name (see [`image_name`]); the object is `NAME.tar.gz`.
    pub name: String,
    pub description: String,
    /// Debian's architecture (`amd64`, `arm64`).
    pub architecture: &'a str,
    pub labels: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GceReport {
    /// `projects/P/global/images/NAME`.
    pub image: String,
    /// `gs://BUCKET/NAME.tar.gz`.
    pub object: String,
    /// `uploaded`, `imported` (the object was there), or `reused`.
    pub how: &'static str,
    pub bytes_sent: u64,
    /// Chunks resumed after a failure.
    pub resumed: u32,
}

/// Publishes `img` into `project` through `bucket` (see the module docs).
pub fn publish(
    project: &str,
    bucket: &str,
    img: &GceImage,
    replace: bool,
    wait: Duration,
    progress: &dyn Fn(&str),
) -> Result<GceReport, CloudError> {
    let target = format!("gce://{project}/{bucket}");
    let arch = match img.architecture {
        "amd64" => "X86_64",
        "arm64" => "ARM64",
        a => {
            return Err(CloudError::Target {
                target,
                message: format!("GCE runs x86_64 and arm64 machines, not {a}"),
                hint: None,
            })
        }
    };
    let info = kiln_image::cloud::read_gce_tar(img.archive)?;
    let size = std::fs::metadata(img.archive)
        .map_err(|e| CloudError::Io {
            what: format!("reading {}", img.archive.display()),
            source: e,
        })?
        .len();
    let c = Client::from_env()?;
    let image_path = format!("projects/{project}/global/images/{}", img.name);
    let object = format!("{}.tar.gz", img.name);
    let (d1, d2) = img.sha256.split_at(img.sha256.len().min(32));

    // The image, by name.
    let r = c.call(
        "compute",
        "images.get",
        "GET",
        &format!("{}{image_path}", c.compute),
        true,
        &[],
        b"",
    )?;
    if r.status == 200 {
        let v = r.json();
        let labels = &v["labels"];
        let mine = labels["kiln-sha256-1"] == d1 && labels["kiln-sha256-2"] == d2;
        if mine && v["status"] != "FAILED" {
            // Published means usable: a PENDING image is waited for.
            wait_ready(&c, &image_path, &v, wait)?;
            progress(&format!("{image_path} has this disk already"));
            return Ok(GceReport {
                image: image_path,
                object: format!("gs://{bucket}/{object}"),
                how: "reused",
                bytes_sent: 0,
                resumed: 0,
            });
        }
        if !replace && !mine {
            return Err(CloudError::Target {
                target,
                message: format!(
                    "the image name `{}` is already used in {project} by another disk (labels kiln-sha256 {}{}), not this one ({})",
                    img.name,
                    labels["kiln-sha256-1"].as_str().unwrap_or("none"),
                    labels["kiln-sha256-2"].as_str().unwrap_or(""),
                    img.sha256
                ),
                hint: Some("publish with --replace to delete it and make this disk's image under the name".into()),
            });
        }
        progress(&format!("deleting {image_path} (--replace)"));
        let r = c.call(
            "compute",
            "images.delete",
            "DELETE",
            &format!("{}{image_path}", c.compute),
            true,
            &[],
            b"",
        )?;
        if r.status >= 300 {
            return Err(c.api("compute", "images.delete", &r));
        }
        wait_operation(&c, project, &r.json(), wait)?;
    } else if r.status != 404 {
        return Err(c.api("compute", "images.get", &r));
    }

    // The object: there with this digest, or uploaded.
    let meta_url = format!(
        "{}/storage/v1/b/{bucket}/o/{}",
        c.storage,
        crate::percent_encode(&object)
    );
    let r = c.call(
        "storage",
        "objects.get",
        "GET",
        &meta_url,
        c.storage_auth,
        &[],
        b"",
    )?;
    let there = r.status == 200 && r.json()["metadata"]["kiln_sha256"] == img.sha256;
    if r.status != 200 && r.status != 404 {
        return Err(c.api("storage", "objects.get", &r));
    }
    let (mut bytes_sent, mut resumed) = (0, 0);
    if there {
        progress(&format!("gs://{bucket}/{object} has this archive already"));
    } else {
        progress(&format!(
            "uploading {} MiB to gs://{bucket}/{object} (disk {} MiB)",
            size >> 20,
            info.disk_size >> 20
        ));
        (bytes_sent, resumed) = upload(&c, bucket, &object, img, size)?;
    }

    // The image.
    let mut labels = serde_json::Map::new();
    labels.insert("kiln-sha256-1".into(), d1.into());
    labels.insert("kiln-sha256-2".into(), d2.into());
    for (k, v) in &img.labels {
        labels.insert(k.clone(), v.clone().into());
    }
    let body = json!({
        "name": img.name,
        "description": img.description,
        "rawDisk": { "source": format!("{GOOGLE_STORAGE}/{bucket}/{object}") },
        "guestOsFeatures": [
            { "type": "UEFI_COMPATIBLE" },
            { "type": "VIRTIO_SCSI_MULTIQUEUE" },
            { "type": "GVNIC" }
        ],
        "architecture": arch,
        "labels": labels,
    })
    .to_string();
    let r = c.call(
        "compute",
        "images.insert",
        "POST",
        &format!("{}projects/{project}/global/images", c.compute),
        true,
        &[("Content-Type", "application/json".into())],
        body.as_bytes(),
    )?;
    if r.status >= 300 {
        return Err(c.api("compute", "images.insert", &r));
    }
    wait_operation(&c, project, &r.json(), wait)?;
    let r = c.call(
        "compute",
        "images.get",
        "GET",
        &format!("{}{image_path}", c.compute),
        true,
        &[],
        b"",
    )?;
    if r.status >= 300 {
        return Err(c.api("compute", "images.get", &r));
    }
    wait_ready(&c, &image_path, &r.json(), wait)?;
    progress(&format!("{image_path} made from gs://{bucket}/{object}"));
    Ok(GceReport {
        image: image_path,
        object: format!("gs://{bucket}/{object}"),
        how: if there { "imported" } else { "uploaded" },
        bytes_sent,
        resumed,
    })
}

/// GETs a Compute resource's JSON.
fn get(c: &Client, action: &str, url: &str) -> Result<Value, CloudError> {
    let r = c.call("compute", action, "GET", url, true, &[], b"")?;
    if r.status >= 300 {
        return Err(c.api("compute", action, &r));
    }
    Ok(r.json())
}

/// Waits for an image to be READY; FAILED (or another state) is an error.
fn wait_ready(
    c: &Client,
    image_path: &str,
    first: &Value,
    limit: Duration,
) -> Result<(), CloudError> {
    let mut next = Some(first.clone());
    let url = format!("{}{image_path}", c.compute);
    crate::wait_for(
        limit,
        || {
            let v = match next.take() {
                Some(v) => v,
                None => get(c, "images.get", &url)?,
            };
            match v["status"].as_str().unwrap_or("") {
                "READY" => Ok(true),
                "PENDING" => Ok(false),
                s => Err(CloudError::Target {
                    target: format!("gce://{image_path}"),
                    message: format!("{image_path} is {s}, not READY"),
                    hint: Some(
                        "publish again: a failed image of this disk is deleted and made anew"
                            .into(),
                    ),
                }),
            }
        },
        image_path,
    )
}

/// Waits for a global operation to be DONE; its error, if any.
fn wait_operation(
    c: &Client,
    project: &str,
    op: &Value,
    limit: Duration,
) -> Result<(), CloudError> {
    let name = op["name"].as_str().unwrap_or("").to_string();
    if name.is_empty()
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(CloudError::Transport {
            service: "compute",
            action: "operation".into(),
            region: "global".into(),
            message: "the answer names no operation (or a name that is not one)".into(),
        });
    }
    let url = format!("{}projects/{project}/global/operations/{name}", c.compute);
    let mut next = Some(op.clone());
    crate::wait_for(
        limit,
        || {
            let v = match next.take() {
                Some(v) => v,
                None => get(c, "globalOperations.get", &url)?,
            };
            if v["status"] != "DONE" {
                return Ok(false);
            }
            match v["error"]["errors"].as_array().and_then(|e| e.first()) {
                Some(e) => Err(CloudError::Api {
                    service: "compute",
                    action: format!("operation {name}"),
                    region: "global".into(),
                    status: 200,
                    code: e["code"].as_str().unwrap_or("ERROR").to_string(),
                    message: e["message"].as_str().unwrap_or("").to_string(),
                }),
                None => Ok(true),
            }
        },
        &format!("operation {name}"),
    )
}

/// A resumable upload: (bytes sent, chunks resumed).
fn upload(
    c: &Client,
    bucket: &str,
    object: &str,
    img: &GceImage,
    size: u64,
) -> Result<(u64, u32), CloudError> {
    let start_url = format!(
        "{}/upload/storage/v1/b/{bucket}/o?uploadType=resumable&name={}",
        c.storage,
        crate::percent_encode(object)
    );
    let meta = json!({
        "name": object,
        "contentType": "application/gzip",
        "metadata": { "kiln_sha256": img.sha256 },
    })
    .to_string();
    let r = c.call(
        "storage",
        "objects.insert",
        "POST",
        &start_url,
        c.storage_auth,
        &[
            ("Content-Type", "application/json; charset=UTF-8".into()),
            ("X-Upload-Content-Type", "application/gzip".into()),
            ("X-Upload-Content-Length", size.to_string()),
        ],
        meta.as_bytes(),
    )?;
    if r.status >= 300 {
        return Err(c.api("storage", "objects.insert", &r));
    }
    // The session must be on the service it was asked of (an answer is not
    // trusted to send the disk elsewhere).
    let session = r.header("location").unwrap_or("").to_string();
    if !session.starts_with(&format!("{}/", c.storage)) {
        return Err(CloudError::Transport {
            service: "storage",
            action: "objects.insert".into(),
            region: "global".into(),
            message: format!(
                "the resumable session is not on {} (Location: {session:.80})",
                c.storage
            ),
        });
    }
    let mut file = std::fs::File::open(img.archive).map_err(|e| CloudError::Io {
        what: format!("reading {}", img.archive.display()),
        source: e,
    })?;
    let mut at = 0u64;
    let mut sent = 0u64;
    let mut resumed = 0u32;
    let mut failures = 0u32;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = ((size - at) as usize).min(CHUNK);
        file.seek(SeekFrom::Start(at))
            .and_then(|_| file.read_exact(&mut buf[..n]))
            .map_err(|e| CloudError::Io {
                what: format!("reading {}", img.archive.display()),
                source: e,
            })?;
        let range = if n == 0 {
            format!("bytes */{size}")
        } else {
            format!("bytes {at}-{}/{size}", at + n as u64 - 1)
        };
        let r = c.call(
            "storage",
            "upload",
            "PUT",
            &session,
            c.storage_auth,
            &[("Content-Range", range)],
            &buf[..n],
        );
        let r = match r {
            Ok(r) if r.status < 500 => r,
            other => {
                // Where the service is: ask it, then go on from there.
                failures += 1;
                if failures > 5 {
                    return Err(match other {
                        Ok(r) => c.api("storage", "upload", &r),
                        Err(e) => e,
                    });
                }
                std::thread::sleep(Duration::from_millis(300 << failures.min(5)));
                let q = c.call(
                    "storage",
                    "upload status",
                    "PUT",
                    &session,
                    c.storage_auth,
                    &[("Content-Range", format!("bytes */{size}"))],
                    b"",
                );
                match q {
                    Ok(q) if q.status == 200 || q.status == 201 => return Ok((sent, resumed + 1)),
                    Ok(q) if q.status == 308 => {
                        at = received(&q);
                        if at > size {
                            return Err(CloudError::Transport {
                                service: "storage",
                                action: "upload status".into(),
                                region: "global".into(),
                                message: format!("the service says it has {at} of {size} bytes"),
                            });
                        }
                        resumed += 1;
                        continue;
                    }
                    _ => continue,
                }
            }
        };
        match r.status {
            200 | 201 => return Ok((sent + n as u64, resumed)),
            308 => {
                sent += n as u64;
                let next = received(&r);
                if next <= at && n > 0 {
                    // No progress: the service kept nothing of the chunk.
                    failures += 1;
                    if failures > 5 {
                        return Err(CloudError::Transport {
                            service: "storage",
                            action: "upload".into(),
                            region: "global".into(),
                            message: format!("the service keeps refusing the bytes from {at}"),
                        });
                    }
                }
                at = next;
                if at >= size {
                    return Err(CloudError::Transport {
                        service: "storage",
                        action: "upload".into(),
                        region: "global".into(),
                        message: "the service has every byte but did not make the object".into(),
                    });
                }
            }
            _ => return Err(c.api("storage", "upload", &r)),
        }
    }
}

/// The next byte a 308 answer wants (`Range: bytes=0-N` → N+1).
fn received(r: &Reply) -> u64 {
    r.header("range")
        .and_then(|v| v.strip_prefix("bytes=0-"))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .map_or(0, |n| n + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_made() {
        assert!(
            valid_project("kiln-test-1")
                && !valid_project("Kiln")
                && !valid_project("1abcdef")
                && !valid_project("ab")
        );
        assert!(
            valid_bucket("kiln_images.v1")
                && !valid_bucket("Kiln")
                && !valid_bucket("a..b")
                && !valid_bucket("../x")
        );
        assert_eq!(
            image_name("debian-cloud-13-amd64-20261207-120000"),
            "debian-cloud-13-amd64-20261207-120000"
        );
        assert_eq!(image_name("9Web_1.2~rc"), "kiln-9web-1-2-rc");
        assert!(image_name(&"a".repeat(100)).len() <= 63);
        let r = Reply {
            status: 308,
            headers: vec![("Range".into(), "bytes=0-8388607".into())],
            body: vec![],
        };
        assert_eq!(received(&r), 8 << 20);
        let r = Reply {
            status: 308,
            headers: vec![],
            body: vec![],
        };
        assert_eq!(received(&r), 0);
    }
}

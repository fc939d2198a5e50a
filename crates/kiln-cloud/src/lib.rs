//! Publishing Kiln's disk images to clouds.
//!
//! - [`aws`]: `aws://REGION[,REGION…]`: the raw disk into an EBS snapshot
//!   through the EBS direct APIs (512 KiB blocks, each with its sha256;
//!   blocks of zeros are not sent), an AMI registered from it (UEFI boot,
//!   ENA, the architecture, IMDSv2), copied to every other named region,
//!   every image and snapshot tagged with the disk's sha256. An image
//!   already tagged with that digest is found and reused, so publishing
//!   again uploads nothing.
//!
//! - [`azure`]: `azure://CONTAINER`: the fixed VHD as a page blob.
//! - [`gce`]: `gce://PROJECT/BUCKET`: the import archive through the
//!   bucket into a Compute Engine image.
//! - [`openstack`]: `openstack://CLOUD`: a Glance v2 image (qcow2 or raw)
//!   in a cloud of `clouds.yaml`, logged in through Keystone v3.
//!
//! Credentials come from each provider's standard environment and files
//! and never appear in output, errors or records; endpoints follow each
//! SDK's standard override (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_EC2`, …),
//! which is how the tests reach local emulators. Everything read from a
//! cloud's answers is treated as hostile: sizes are bounded, XML is parsed
//! by a real parser, nothing from a reply becomes a path.

pub mod aws;
pub mod azure;
pub mod azure_image;
pub mod gce;
pub mod gce_auth;
pub mod openstack;

/// A cloud `kiln publish --to` knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloudTarget {
    /// `aws://REGION[,REGION…]`: the first region gets the upload, the
    /// others a copy.
    Aws { regions: Vec<String> },
    /// `azure://CONTAINER[?resource-group=RG&location=LOC]`: a page blob in
    /// the container of the storage account the environment names, and
    /// with `record` the managed image made from it.
    Azure {
        container: String,
        record: Option<azure_image::ImageRecord>,
    },
    /// `gce://PROJECT/BUCKET`: the import archive through the bucket into
    /// an image of the project.
    Gce { project: String, bucket: String },
    /// `openstack://CLOUD[?format=qcow2|raw]`: a Glance image in the
    /// cloud `CLOUD` of `clouds.yaml`; `format` picks the file (qcow2 when
    /// the build has one, by default).
    OpenStack {
        cloud: String,
        format: Option<String>,
    },
}

/// The cloud schemes, for error messages.
pub const CLOUD_SCHEMES: &str =
    "aws://REGION[,REGION…], azure://CONTAINER, gce://PROJECT/BUCKET, openstack://CLOUD";

impl CloudTarget {
    /// Parses a cloud target; `None` when `s` is not one (another scheme).
    pub fn parse(s: &str) -> Option<Result<CloudTarget, CloudError>> {
        if let Some(rest) = s.strip_prefix("azure://") {
            return Some(parse_azure(s, rest));
        }
        if let Some(rest) = s.strip_prefix("gce://") {
            let bad = |m: String| {
                CloudError::Target {
                target: s.to_string(),
                message: m,
                hint: Some("gce://PROJECT/BUCKET, e.g. gce://my-project/my-images (the bucket the archive goes through)".into()),
            }
            };
            return Some(match rest.trim_end_matches('/').split_once('/') {
                Some((p, b)) if gce::valid_project(p) && gce::valid_bucket(b) => {
                    Ok(CloudTarget::Gce {
                        project: p.to_string(),
                        bucket: b.to_string(),
                    })
                }
                Some((p, _)) if !gce::valid_project(p) => {
                    Err(bad(format!("`{p}` is not a project id")))
                }
                Some((_, b)) => Err(bad(format!("`{b}` is not a bucket name"))),
                None => Err(bad("no bucket given".into())),
            });
        }
        if let Some(rest) = s.strip_prefix("openstack://") {
            return Some(parse_openstack(s, rest));
        }
        let rest = s.strip_prefix("aws://")?;
        Some(parse_aws(s, rest))
    }

    /// The target as the user writes it.
    pub fn display(&self) -> String {
        match self {
            CloudTarget::Aws { regions } => format!("aws://{}", regions.join(",")),
            CloudTarget::Azure { container, record } => match record {
                Some(r) => format!(
                    "azure://{container}?resource-group={}&location={}",
                    r.resource_group, r.location
                ),
                None => format!("azure://{container}"),
            },
            CloudTarget::Gce { project, bucket } => format!("gce://{project}/{bucket}"),
            CloudTarget::OpenStack { cloud, format } => match format {
                Some(f) => format!("openstack://{cloud}?format={f}"),
                None => format!("openstack://{cloud}"),
            },
        }
    }

    /// The provider's name (`aws`), as the catalog records it.
    pub fn provider(&self) -> &'static str {
        match self {
            CloudTarget::Aws { .. } => "aws",
            CloudTarget::Azure { .. } => "azure",
            CloudTarget::Gce { .. } => "gce",
            CloudTarget::OpenStack { .. } => "openstack",
        }
    }
}

fn parse_azure(s: &str, rest: &str) -> Result<CloudTarget, CloudError> {
    let bad = |message: String| {
        CloudError::Target {
        target: s.to_string(),
        message,
        hint: Some(
            "azure://CONTAINER[?resource-group=RG&location=LOC]: a container of 3 to 63 lowercase letters, digits and single dashes (the account from AZURE_STORAGE_CONNECTION_STRING); with a resource group and a region, also the managed image".into(),
        ),
    }
    };
    let (c, query) = match rest.split_once('?') {
        Some((c, q)) => (c.trim_end_matches('/'), q),
        None => (rest.trim_end_matches('/'), ""),
    };
    if !azure::valid_container(c) {
        return Err(bad(format!("`{c}` is not a blob container name")));
    }
    let (mut rg, mut loc) = (None, None);
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        match kv.split_once('=') {
            Some(("resource-group", v)) if azure_image::valid_resource_group(v) => rg = Some(v),
            Some(("resource-group", v)) => {
                return Err(bad(format!("`{v}` is not a resource group name")))
            }
            Some(("location", v)) if azure_image::valid_location(v) => loc = Some(v),
            Some(("location", v)) => {
                return Err(bad(format!(
                    "`{v}` is not a region name (lowercase, as westeurope)"
                )))
            }
            _ => {
                let key = kv.split_once('=').map_or(kv, |(k, _)| k);
                return Err(bad(format!("unknown parameter `{key}`")));
            }
        }
    }
    let record = match (rg, loc) {
        (Some(r), Some(l)) => Some(azure_image::ImageRecord {
            resource_group: r.to_string(),
            location: l.to_string(),
        }),
        (None, None) => None,
        _ => {
            return Err(bad(
                "the image needs both resource-group and location".into()
            ))
        }
    };
    Ok(CloudTarget::Azure {
        container: c.to_string(),
        record,
    })
}

fn parse_openstack(s: &str, rest: &str) -> Result<CloudTarget, CloudError> {
    let bad = |message: String| {
        CloudError::Target {
        target: s.to_string(),
        message,
        hint: Some(
            "openstack://CLOUD[?format=qcow2|raw], CLOUD a cloud of clouds.yaml (or envvars for the OS_* variables)".into(),
        ),
    }
    };
    let (cloud, query) = match rest.split_once('?') {
        Some((c, q)) => (c.trim_end_matches('/'), Some(q)),
        None => (rest.trim_end_matches('/'), None),
    };
    if !openstack::valid_cloud_name(cloud) {
        return Err(bad(if cloud.is_empty() {
            "no cloud given".into()
        } else {
            format!("`{cloud}` is not a cloud name")
        }));
    }
    let mut format = None;
    for kv in query.unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
        match kv.split_once('=') {
            Some(("format", f @ ("qcow2" | "raw"))) => format = Some(f.to_string()),
            Some(("format", f)) => return Err(bad(format!("format `{f}`: qcow2 or raw"))),
            _ => {
                let key = kv.split_once('=').map_or(kv, |(k, _)| k);
                return Err(bad(format!("unknown parameter `{key}`")));
            }
        }
    }
    Ok(CloudTarget::OpenStack {
        cloud: cloud.to_string(),
        format,
    })
}

fn parse_aws(s: &str, rest: &str) -> Result<CloudTarget, CloudError> {
    let bad = |message: String, hint: &str| CloudError::Target {
        target: s.to_string(),
        message,
        hint: Some(hint.to_string()),
    };
    let (list, query) = match rest.split_once('?') {
        Some((l, q)) => (l, Some(q)),
        None => (rest, None),
    };
    if let Some(q) = query {
        // No parameter is known yet: the first one is refused.
        if let Some(kv) = q.split('&').find(|kv| !kv.is_empty()) {
            let key = kv.split_once('=').map_or(kv, |(k, _)| k);
            if key == "bucket" {
                return Err(bad(
                    "?bucket= (an upload through S3 and ImportSnapshot) is not supported yet".into(),
                    "leave it out: Kiln uploads the disk straight into a snapshot with the EBS direct APIs, no bucket or import role needed",
                ));
            }
            return Err(bad(
                format!("unknown parameter `{key}`"),
                "aws://REGION[,REGION…], e.g. aws://eu-west-1,us-east-1",
            ));
        }
    }
    let mut regions: Vec<String> = Vec::new();
    for r in list.split(',') {
        let r = r.trim();
        if !aws::valid_region_name(r) {
            return Err(bad(
                if r.is_empty() {
                    "no region given".into()
                } else {
                    format!("`{r}` is not an AWS region name")
                },
                "aws://REGION[,REGION…], e.g. aws://eu-west-1,us-east-1",
            ));
        }
        if !regions.iter().any(|x| x == r) {
            regions.push(r.to_string());
        }
    }
    Ok(CloudTarget::Aws { regions })
}

use std::time::{Duration, Instant};

/// The HTTP client every cloud's calls go through: bounded waits, HTTP
/// errors as answers, and no redirects (an answer never sends a request,
/// or a disk, elsewhere; GCS answers an unfinished upload with 308, which
/// is no redirect).
pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_per_write(Some(Duration::from_secs(120)))
        .timeout_per_read(Some(Duration::from_secs(300)))
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

/// Percent-encodes everything but RFC 3986's unreserved characters (a
/// path segment or query value every cloud's API reads the same).
pub(crate) fn percent_encode(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// An `application/x-www-form-urlencoded` body (OAuth token requests).
pub(crate) fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Polls `ready` until it says yes, for at most `limit`.
pub(crate) fn wait_for(
    limit: Duration,
    mut ready: impl FnMut() -> Result<bool, CloudError>,
    what: &str,
) -> Result<(), CloudError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(200);
    loop {
        if ready()? {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(CloudError::Io {
                what: format!("waiting for {what}"),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "not ready after {} s; publish again later to go on",
                        limit.as_secs()
                    ),
                ),
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(15));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// No usable credentials (the message names where they are read from).
    #[error("{provider}: {message}")]
    Credentials {
        provider: &'static str,
        message: String,
        hint: String,
    },
    /// The target is wrong (a region that does not exist, a name in use).
    #[error("{target}: {message}")]
    Target {
        target: String,
        message: String,
        hint: Option<String>,
    },
    /// The cloud refused a call.
    #[error("{service} {action} in {region}: {code}: {message} (HTTP {status})")]
    Api {
        service: &'static str,
        action: String,
        region: String,
        status: u16,
        code: String,
        message: String,
    },
    /// The cloud could not be reached, or answered with something that is
    /// not an answer.
    #[error("{service} {action} in {region}: {message}")]
    Transport {
        service: &'static str,
        action: String,
        region: String,
        message: String,
    },
    #[error(transparent)]
    Disk(#[from] kiln_image::cloud::CloudFormatError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl CloudError {
    pub fn hint(&self) -> Option<String> {
        match self {
            CloudError::Credentials { hint, .. } => Some(hint.clone()),
            CloudError::Target { hint, .. } => hint.clone(),
            CloudError::Api { code, service: "blob", .. } if is_auth_code(code) => Some(format!(
                "check the storage account's credentials and their permissions ({})",
                azure::ACCOUNT_SOURCES
            )),
            CloudError::Api { code, service: "compute" | "storage", .. } if is_auth_code(code) => Some(format!(
                "check the access token and its permissions (read from {})",
                gce::TOKEN_SOURCES
            )),
            CloudError::Api { code, service: "arm", .. } if is_auth_code(code) => Some(format!(
                "check the service principal and its role on the resource group ({})",
                azure_image::CREDENTIAL_SOURCES
            )),
            CloudError::Api { status: 401 | 403, service: "glance" | "keystone", .. } => Some(format!(
                "check the cloud's credentials and their roles ({})",
                openstack::CONFIG_SOURCES
            )),
            CloudError::Api { code, .. } if is_auth_code(code) => Some(
                "check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or the profile in ~/.aws/credentials) and their permissions".into(),
            ),
            CloudError::Api { .. } => None,
            CloudError::Transport { .. } => Some(
                "check the network, or the endpoint override (AWS_ENDPOINT_URL, an Azure connection string's BlobEndpoint) if one is set; publishing again resumes: what is there already is reused".into(),
            ),
            CloudError::Disk(e) => e.hint(),
            CloudError::Io { .. } => None,
        }
    }
}

fn is_auth_code(code: &str) -> bool {
    matches!(
        code,
        "AuthFailure"
            | "UnauthorizedOperation"
            | "InvalidClientTokenId"
            | "SignatureDoesNotMatch"
            | "AccessDeniedException"
            | "AccessDenied"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "ExpiredToken"
            | "AuthorizationFailure"
            | "AuthenticationFailed"
            | "AuthorizationPermissionMismatch"
            | "AuthorizationFailed"
            | "InvalidAuthenticationToken"
            | "UNAUTHENTICATED"
            | "PERMISSION_DENIED"
            | "authError"
            | "forbidden"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_targets_parse_and_bad_ones_say_why() {
        assert_eq!(
            CloudTarget::parse("aws://eu-west-1,us-east-1,eu-west-1")
                .unwrap()
                .unwrap(),
            CloudTarget::Aws {
                regions: vec!["eu-west-1".into(), "us-east-1".into()]
            }
        );
        assert!(CloudTarget::parse("file:///srv").is_none());
        for (t, want) in [
            ("aws://", "no region"),
            ("aws://Europe", "not an AWS region name"),
            ("aws://eu-west-1,../x", "not an AWS region name"),
            ("aws://eu-west-1?bucket=b", "not supported yet"),
            ("aws://eu-west-1?color=red", "unknown parameter"),
            ("openstack://", "no cloud"),
            ("azure://Images", "not a blob container"),
            (
                "azure://images?location=westeurope",
                "both resource-group and location",
            ),
            (
                "azure://images?resource-group=rg&location=West",
                "not a region name",
            ),
            ("azure://images?sku=x", "unknown parameter"),
            ("openstack://../etc", "not a cloud name"),
            ("openstack://lab?format=vmdk", "qcow2 or raw"),
            ("openstack://lab?region=x", "unknown parameter"),
        ] {
            let e = CloudTarget::parse(t).unwrap().unwrap_err();
            assert!(e.to_string().contains(want), "{t}: {e}");
            assert!(e.hint().is_some());
        }
        assert_eq!(
            CloudTarget::parse("openstack://lab?format=raw")
                .unwrap()
                .unwrap(),
            CloudTarget::OpenStack {
                cloud: "lab".into(),
                format: Some("raw".into())
            }
        );
        let t = CloudTarget::parse("azure://images?resource-group=rg-1&location=westeurope")
            .unwrap()
            .unwrap();
        assert_eq!(
            t.display(),
            "azure://images?resource-group=rg-1&location=westeurope"
        );
        assert_eq!(
            CloudTarget::parse("aws://us-gov-west-1")
                .unwrap()
                .unwrap()
                .display(),
            "aws://us-gov-west-1"
        );
    }
}

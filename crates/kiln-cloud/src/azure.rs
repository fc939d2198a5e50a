//! `azure://CONTAINER`: a fixed VHD into a page blob of a storage account.
//!
//! The account comes from `AZURE_STORAGE_CONNECTION_STRING` (its
//! `AccountName`, `AccountKey` and, for an emulator such as Azurite,
//! `BlobEndpoint`), else `AZURE_STORAGE_ACCOUNT` + `AZURE_STORAGE_KEY`.
//! Requests are authorized with the account's Shared Key (HMAC-SHA256 over
//! the canonical request, as the Blob service defines it).
//!
//! 1. The VHD is checked (a fixed VHD of a UEFI GPT disk) before anything
//!    is sent; the container is created when missing.
//! 2. A blob of the name that carries `kiln_sha256` = the VHD's sha256 is
//!    reused as it is. A blob of the name without it (an upload that died)
//!    is deleted; one with another digest is refused unless `replace`.
//! 3. The page blob is created at the VHD's size, its non-zero 4 MiB
//!    ranges written with Put Page (4 at once; a page blob reads unwritten
//!    pages as zeros), and only then its metadata set to the digest: a blob
//!    without it is never taken for a finished one. A failed upload deletes
//!    the blob.

use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{KeyInit, Mac};
use ureq::http;

use crate::CloudError;

const API_VERSION: &str = "2021-08-06";
/// The most one Put Page writes.
const PAGE_WRITE: usize = 4 << 20;
const PARALLEL: usize = 4;
pub const DIGEST_META: &str = "kiln_sha256";
/// Set while an upload runs (replaced by the digest when it is complete).
pub const UPLOAD_META: &str = "kiln_upload";

/// Where the account is read from, for the error that finds none.
pub const ACCOUNT_SOURCES: &str = "AZURE_STORAGE_CONNECTION_STRING (AccountName, AccountKey, optionally BlobEndpoint), else AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY";

/// A storage account and its key (never shown).
#[derive(Clone)]
pub struct Account {
    pub name: String,
    key: Vec<u8>,
    /// `https://NAME.blob.core.windows.net` or the emulator's endpoint, no
    /// trailing slash.
    pub endpoint: String,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

fn no_account(message: String) -> CloudError {
    CloudError::Credentials {
        provider: "azure",
        message,
        hint: format!("the storage account is read from {ACCOUNT_SOURCES}"),
    }
}

impl Account {
    pub fn from_env() -> Result<Account, CloudError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if let Some(cs) = env("AZURE_STORAGE_CONNECTION_STRING") {
            return Account::from_connection_string(&cs);
        }
        match (env("AZURE_STORAGE_ACCOUNT"), env("AZURE_STORAGE_KEY")) {
            (Some(name), Some(key)) => Account::new(&name, &key, None),
            (Some(_), None) => Err(no_account(
                "AZURE_STORAGE_ACCOUNT is set but AZURE_STORAGE_KEY is not".into(),
            )),
            _ => Err(no_account("no storage account given".into())),
        }
    }

    /// `Key=Value;…` as the Azure tools write it.
    pub fn from_connection_string(cs: &str) -> Result<Account, CloudError> {
        let mut get = std::collections::HashMap::new();
        for part in cs.split(';').filter(|p| !p.trim().is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err(no_account(
                    "AZURE_STORAGE_CONNECTION_STRING is not Key=Value;… pairs".into(),
                ));
            };
            get.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
        let name = get.get("accountname").ok_or_else(|| {
            no_account("AZURE_STORAGE_CONNECTION_STRING has no AccountName".into())
        })?;
        let key = get
            .get("accountkey")
            .ok_or_else(|| no_account("AZURE_STORAGE_CONNECTION_STRING has no AccountKey (a SAS connection string is not supported)".into()))?;
        let endpoint = get.get("blobendpoint").cloned().or_else(|| {
            let proto = get
                .get("defaultendpointsprotocol")
                .map_or("https", |s| s.as_str());
            let suffix = get
                .get("endpointsuffix")
                .map_or("core.windows.net", |s| s.as_str());
            Some(format!("{proto}://{name}.blob.{suffix}"))
        });
        Account::new(name, key, endpoint)
    }

    fn new(name: &str, key: &str, endpoint: Option<String>) -> Result<Account, CloudError> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(no_account(format!(
                "`{name}` is not a storage account name (lowercase letters and digits)"
            )));
        }
        let key = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|_| no_account("the account key is not base64".into()))?;
        let endpoint = endpoint
            .unwrap_or_else(|| format!("https://{name}.blob.core.windows.net"))
            .trim_end_matches('/')
            .to_string();
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(no_account(format!(
                "BlobEndpoint `{endpoint}` is not an http(s) URL"
            )));
        }
        Ok(Account {
            name: name.to_string(),
            key,
            endpoint,
        })
    }
}

/// `azure://CONTAINER` names: 3–63 lowercase letters, digits and single
/// dashes (the Blob service's rule).
pub fn valid_container(c: &str) -> bool {
    (3..=63).contains(&c.len())
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !c.starts_with('-')
        && !c.ends_with('-')
        && !c.contains("--")
}

/// RFC 1123 time, as `x-ms-date` wants it.
fn http_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MO: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
        WD[days.rem_euclid(7) as usize],
        MO[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The Shared Key string to sign of a request (Blob service, version
/// 2015-02-21 and later).
fn string_to_sign(
    account: &str,
    method: &str,
    path: &str,
    query: &[(String, String)],
    headers: &[(String, String)],
    content_length: usize,
) -> String {
    let h = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let mut ms: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("x-ms-"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    ms.sort();
    let mut s = format!(
        "{method}\n{}\n{}\n{}\n{}\n{}\n\n{}\n{}\n{}\n{}\n{}\n",
        h("content-encoding"),
        h("content-language"),
        if content_length == 0 {
            String::new()
        } else {
            content_length.to_string()
        },
        h("content-md5"),
        h("content-type"),
        h("if-modified-since"),
        h("if-match"),
        h("if-none-match"),
        h("if-unmodified-since"),
        h("range"),
    );
    for (k, v) in &ms {
        s.push_str(&format!("{k}:{v}\n"));
    }
    s.push_str(&format!("/{account}{path}"));
    let mut q: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    q.sort();
    for (k, v) in q {
        s.push_str(&format!("\n{k}:{v}"));
    }
    s
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
    fn error_code(&self) -> String {
        self.header("x-ms-error-code")
            .map(str::to_string)
            .or_else(|| {
                let t = String::from_utf8_lossy(&self.body);
                let a = t.find("<Code>")? + 6;
                let b = t[a..].find("</Code>")? + a;
                Some(t[a..b].to_string())
            })
            .unwrap_or_else(|| format!("HTTP{}", self.status))
    }
}

struct Client {
    agent: ureq::Agent,
    account: Account,
}

impl Client {
    fn new(account: Account) -> Client {
        Client {
            agent: crate::agent(),
            account,
        }
    }

    /// A Shared Key request to `/CONTAINER[/BLOB]`, retried when it failed
    /// in a passing way.
    fn call(
        &self,
        action: &str,
        method: &str,
        resource: &str,
        query: &[(&str, &str)],
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<Reply, CloudError> {
        // The path of the endpoint (an emulator's carries the account).
        let base_path = self
            .account
            .endpoint
            .splitn(4, '/')
            .nth(3)
            .map(|p| format!("/{p}"))
            .unwrap_or_default();
        let path = format!("{base_path}{resource}");
        let query: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let qs: String = query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let url = format!(
            "{}{resource}{}{qs}",
            self.account.endpoint,
            if qs.is_empty() { "" } else { "?" }
        );
        let transport = |message: String| CloudError::Transport {
            service: "blob",
            action: action.to_string(),
            region: self.account.name.clone(),
            message,
        };
        let mut wait = Duration::from_millis(300);
        for attempt in 1..=4 {
            let mut all: Vec<(String, String)> = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            all.push(("x-ms-date".into(), http_date(SystemTime::now())));
            all.push(("x-ms-version".into(), API_VERSION.into()));
            let sts = string_to_sign(&self.account.name, method, &path, &query, &all, body.len());
            let mut mac = hmac::Hmac::<sha2_11::Sha256>::new_from_slice(&self.account.key)
                .expect("any key length");
            mac.update(sts.as_bytes());
            let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            let mut req = http::Request::builder().method(method).uri(&url);
            for (k, v) in &all {
                req = req.header(k.as_str(), v.as_str());
            }
            let req = req
                .header(
                    "Authorization",
                    format!("SharedKey {}:{sig}", self.account.name),
                )
                .header("Content-Length", body.len())
                .body(body)
                .map_err(|e| transport(format!("bad request: {e}")))?;
            match self.agent.run(req) {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let headers = resp
                        .headers()
                        .iter()
                        .filter_map(|(k, v)| {
                            Some((k.as_str().to_string(), v.to_str().ok()?.to_string()))
                        })
                        .collect();
                    let body = resp
                        .body_mut()
                        .with_config()
                        .limit(1 << 20)
                        .read_to_vec()
                        .unwrap_or_default();
                    if (status >= 500 || status == 429) && attempt < 4 {
                        std::thread::sleep(wait);
                        wait *= 2;
                        continue;
                    }
                    return Ok(Reply {
                        status,
                        headers,
                        body,
                    });
                }
                Err(e) if attempt == 4 => {
                    return Err(transport(format!("cannot reach {url}: {e}")))
                }
                Err(_) => {}
            }
            std::thread::sleep(wait);
            wait *= 2;
        }
        unreachable!("the last attempt returns")
    }

    fn api(&self, action: &str, r: &Reply) -> CloudError {
        CloudError::Api {
            service: "blob",
            action: action.to_string(),
            region: self.account.name.clone(),
            status: r.status,
            code: r.error_code(),
            message: String::from_utf8_lossy(&r.body[..r.body.len().min(300)]).into_owned(),
        }
    }
}

/// What was published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureReport {
    /// The page blob's URL.
    pub url: String,
    pub account: String,
    /// `uploaded` or `reused`.
    pub how: &'static str,
    pub pages_sent: u64,
    pub bytes_sent: u64,
}

pub struct AzureImage<'a> {
    /// A fixed VHD (a build's disk.vhd).
    pub vhd: &'a Path,
    /// Its sha256 (hex), from the build's manifest.
    pub sha256: &'a str,
    /// The blob name (`NAME.vhd`).
    pub blob: String,
    pub metadata: Vec<(String, String)>,
}

/// Uploads `img` into `container` as a page blob (see the module docs).
pub fn publish(
    container: &str,
    img: &AzureImage,
    replace: bool,
    progress: &dyn Fn(&str),
) -> Result<AzureReport, CloudError> {
    let target = format!("azure://{container}");
    let info = kiln_image::cloud::read_fixed_vhd(img.vhd)?;
    let size = info.disk_size + 512;
    let account = Account::from_env()?;
    let c = Client::new(account);
    let url = format!("{}/{container}/{}", c.account.endpoint, img.blob);
    let res = format!("/{container}/{}", img.blob);
    let r = c.call(
        "CreateContainer",
        "PUT",
        &format!("/{container}"),
        &[("restype", "container")],
        &[],
        b"",
    )?;
    if r.status >= 300 && r.error_code() != "ContainerAlreadyExists" {
        return Err(c.api("CreateContainer", &r));
    }
    let head = c.call("GetBlobProperties", "HEAD", &res, &[], &[], b"")?;
    if head.status == 200 {
        let meta = head
            .header(&format!("x-ms-meta-{DIGEST_META}"))
            .map(str::to_string);
        match meta.as_deref() {
            Some(d) if d == img.sha256 => {
                progress(&format!("{url} has this disk already"));
                return Ok(AzureReport {
                    url,
                    account: c.account.name.clone(),
                    how: "reused",
                    pages_sent: 0,
                    bytes_sent: 0,
                });
            }
            Some(other) if !replace => {
                return Err(CloudError::Target {
                    target,
                    message: format!(
                        "the blob {} is already there with another disk (sha256 {other}), not this one ({})",
                        img.blob, img.sha256
                    ),
                    hint: Some("publish with --replace to overwrite it".into()),
                })
            }
            // Neither a digest nor Kiln's upload mark: not Kiln's blob.
            None if head.header(&format!("x-ms-meta-{UPLOAD_META}")).is_none() && !replace => {
                return Err(CloudError::Target {
                    target,
                    message: format!(
                        "the blob {} is already there and was not written by kiln publish (no {DIGEST_META} metadata)",
                        img.blob
                    ),
                    hint: Some("publish with --replace to overwrite it".into()),
                })
            }
            _ => {
                progress(&format!(
                    "{url}: {}, deleting it",
                    if meta.is_none() && !replace { "an unfinished upload by kiln" } else { "another disk (--replace)" }
                ));
                let d = c.call("DeleteBlob", "DELETE", &res, &[], &[], b"")?;
                if d.status >= 300 && d.status != 404 {
                    return Err(c.api("DeleteBlob", &d));
                }
            }
        }
    } else if head.status != 404 {
        return Err(c.api("GetBlobProperties", &head));
    }
    let r = c.call(
        "PutBlob",
        "PUT",
        &res,
        &[],
        &[
            ("x-ms-blob-type", "PageBlob".to_string()),
            ("x-ms-meta-kiln_upload", "pending".to_string()),
            // Never over a blob another writer made meanwhile.
            ("If-None-Match", "*".to_string()),
            ("x-ms-blob-content-length", size.to_string()),
            (
                "x-ms-blob-content-type",
                "application/octet-stream".to_string(),
            ),
        ],
        b"",
    )?;
    if r.status >= 300 {
        return Err(c.api("PutBlob", &r));
    }
    progress(&format!("{url}: uploading {} MiB", size >> 20));
    let sent = write_pages(&c, &res, img.vhd, size).and_then(|sent| {
        let mut h: Vec<(&str, String)> = vec![];
        let names: Vec<String> = img
            .metadata
            .iter()
            .map(|(k, _)| format!("x-ms-meta-{k}"))
            .collect();
        for (n, (_, v)) in names.iter().zip(&img.metadata) {
            h.push((n.as_str(), v.clone()));
        }
        let digest = format!("x-ms-meta-{DIGEST_META}");
        h.push((digest.as_str(), img.sha256.to_string()));
        let r = c.call(
            "SetBlobMetadata",
            "PUT",
            &res,
            &[("comp", "metadata")],
            &h,
            b"",
        )?;
        if r.status >= 300 {
            return Err(c.api("SetBlobMetadata", &r));
        }
        Ok(sent)
    });
    match sent {
        Ok((pages, bytes)) => Ok(AzureReport {
            url,
            account: c.account.name.clone(),
            how: "uploaded",
            pages_sent: pages,
            bytes_sent: bytes,
        }),
        Err(e) => {
            if c.call("DeleteBlob", "DELETE", &res, &[], &[], b"")
                .is_ok_and(|r| r.status < 300)
            {
                progress(&format!("{url}: the upload failed; the blob was deleted"));
            }
            Err(e)
        }
    }
}

/// Put Page of every non-zero 4 MiB range; (writes, bytes).
fn write_pages(c: &Client, res: &str, vhd: &Path, size: u64) -> Result<(u64, u64), CloudError> {
    let file = std::fs::File::open(vhd).map_err(|e| CloudError::Io {
        what: format!("reading {}", vhd.display()),
        source: e,
    })?;
    let chunks = size.div_ceil(PAGE_WRITE as u64);
    let next = AtomicU64::new(0);
    let sent = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let error: Mutex<Option<CloudError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| {
                let mut buf = vec![0u8; PAGE_WRITE];
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= chunks {
                        return;
                    }
                    let at = i * PAGE_WRITE as u64;
                    let n = (size - at).min(PAGE_WRITE as u64) as usize;
                    if let Err(e) = file.read_exact_at(&mut buf[..n], at) {
                        failed.store(true, Ordering::Relaxed);
                        *error.lock().unwrap() = Some(CloudError::Io {
                            what: format!("reading {}", vhd.display()),
                            source: e,
                        });
                        return;
                    }
                    if buf[..n].iter().all(|b| *b == 0) {
                        continue;
                    }
                    let range = format!("bytes={at}-{}", at + n as u64 - 1);
                    let r = c.call(
                        "PutPage",
                        "PUT",
                        res,
                        &[("comp", "page")],
                        &[("x-ms-page-write", "update".into()), ("x-ms-range", range)],
                        &buf[..n],
                    );
                    let r = match r {
                        Ok(r) if r.status < 300 => Ok(()),
                        Ok(r) => Err(c.api("PutPage", &r)),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = r {
                        failed.store(true, Ordering::Relaxed);
                        error.lock().unwrap().get_or_insert(e);
                        return;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
    if let Some(e) = error.into_inner().unwrap() {
        return Err(e);
    }
    Ok((sent.into_inner(), bytes.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_and_names() {
        let a = Account::from_connection_string(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;",
        )
        .unwrap();
        assert_eq!(a.endpoint, "http://127.0.0.1:10000/devstoreaccount1");
        assert!(!format!("{a:?}").contains("a2V5") && !format!("{a:?}").contains("key"));
        let a = Account::from_connection_string("AccountName=acct;AccountKey=a2V5").unwrap();
        assert_eq!(a.endpoint, "https://acct.blob.core.windows.net");
        for bad in [
            "AccountName=acct",
            "AccountKey=a2V5",
            "junk",
            "AccountName=Bad_Name;AccountKey=a2V5",
            "AccountName=a;AccountKey=%%%",
        ] {
            let e = Account::from_connection_string(bad).unwrap_err();
            assert!(
                e.hint()
                    .unwrap()
                    .contains("AZURE_STORAGE_CONNECTION_STRING"),
                "{bad}: {e}"
            );
        }
        assert!(
            valid_container("kiln-images")
                && !valid_container("Kiln")
                && !valid_container("a--b")
                && !valid_container("ab")
        );
    }

    #[test]
    fn dates_and_the_string_to_sign() {
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "Tue, 14 Nov 2023 22:13:20 GMT"
        );
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        let s = string_to_sign(
            "acct",
            "PUT",
            "/c/b.vhd",
            &[("comp".into(), "page".into())],
            &[
                ("x-ms-version".into(), "2021-08-06".into()),
                ("X-MS-Date".into(), "d".into()),
            ],
            512,
        );
        assert_eq!(s, "PUT\n\n\n512\n\n\n\n\n\n\n\n\nx-ms-date:d\nx-ms-version:2021-08-06\n/acct/c/b.vhd\ncomp:page");
    }
}

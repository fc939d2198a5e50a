//! The HTTP side: requests to one repository of a registry, with
//! authentication (Basic or Bearer tokens) and retries.

use std::cell::RefCell;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use ureq::http;

use crate::layout::{Blob, Manifest};
use crate::{Credentials, PushOptions, Reference, RegistryError};

/// Attempts for an operation that failed in a transient way (connection
/// trouble, HTTP 5xx or 429).
const ATTEMPTS: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Response bodies (errors, tokens) are read up to this size.
const MAX_REPLY: u64 = 1 << 20;
/// The manifest types a GET or HEAD of a manifest asks for.
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// What a request carries.
pub enum Body<'b> {
    None,
    Bytes(&'b [u8]),
    /// A file streamed with the given Content-Length.
    File(&'b Path, u64),
}

/// The parts of a response the push needs.
pub struct Reply {
    pub status: u16,
    location: Option<String>,
    content_digest: Option<String>,
    /// `OCI-Subject`: a registry with the referrers API indexed the pushed
    /// manifest's subject.
    oci_subject: Option<String>,
    content_type: Option<String>,
    challenges: Vec<String>,
    body: Vec<u8>,
}

enum Auth {
    None,
    /// A complete `Authorization` header value.
    Basic(String),
    Bearer(String),
}

pub struct Client<'a> {
    agent: ureq::Agent,
    /// `http(s)://host[:port]`, no trailing slash.
    base: String,
    repository: &'a str,
    registry: &'a str,
    credentials: Option<&'a Credentials>,
    auth: RefCell<Auth>,
}

impl<'a> Client<'a> {
    pub fn new(reference: &'a Reference, opts: &'a PushOptions<'a>) -> Client<'a> {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_per_write(Some(Duration::from_secs(120)))
            // The registry may hash a large blob before it answers.
            .timeout_per_read(Some(Duration::from_secs(600)))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .http_status_as_error(false)
            .build();
        let scheme = if opts.insecure { "http" } else { "https" };
        Client {
            agent: config.into(),
            base: format!("{scheme}://{}", reference.registry),
            repository: &reference.repository,
            registry: &reference.registry,
            credentials: opts.credentials.as_ref(),
            auth: RefCell::new(Auth::None),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repository)
    }

    /// `GET /v2/`: checks that a registry answers and authenticates early.
    pub fn ping(&self) -> Result<(), RegistryError> {
        let url = format!("{}/v2/", self.base);
        retrying(|| {
            let r = self.send("GET", &url, None, Body::None)?;
            match r.status {
                200..=299 => Ok(()),
                404 => Err(Failure::permanent(RegistryError::Registry {
                    method: "GET".into(),
                    url: url.clone(),
                    status: 404,
                    message: "no registry API (/v2/) at this address".into(),
                })),
                _ => Err(self.unexpected("GET", &url, &r).into()),
            }
        })
    }

    /// Whether the repository already holds `blob`.
    pub fn has_blob(&self, blob: &Blob) -> Result<bool, RegistryError> {
        self.has_blob_digest(&blob.digest)
    }

    /// Uploads `blob` monolithically: POST opens an upload session, one PUT
    /// sends the whole file with its digest. A failed attempt starts over
    /// with a new session.
    pub fn upload_blob(&self, blob: &Blob) -> Result<(), RegistryError> {
        self.upload(&blob.digest, &|| Body::File(&blob.path, blob.size))
    }

    /// Uploads a small blob held in memory.
    pub fn upload_bytes(&self, digest: &str, bytes: &[u8]) -> Result<(), RegistryError> {
        self.upload(digest, &|| Body::Bytes(bytes))
    }

    fn upload<'b>(&self, digest: &str, body: &dyn Fn() -> Body<'b>) -> Result<(), RegistryError> {
        retrying(|| {
            let url = self.url("blobs/uploads/");
            let r = self.send("POST", &url, None, Body::Bytes(&[]))?;
            if r.status != 202 {
                return Err(self.unexpected("POST", &url, &r).into());
            }
            let location = r
                .location
                .as_deref()
                .ok_or_else(|| RegistryError::Registry {
                    method: "POST".into(),
                    url: url.clone(),
                    status: r.status,
                    message: "no Location header for the upload".into(),
                })?;
            let put_url = with_query(&self.resolve(location, &url), "digest", digest);
            let r = self.send("PUT", &put_url, Some("application/octet-stream"), body())?;
            if r.status != 201 {
                return Err(self.unexpected("PUT", &put_url, &r).into());
            }
            Ok(check_digest(&r, &format!("blob {digest}"), digest)?)
        })
    }

    /// Whether the repository holds a blob with this digest.
    pub fn has_blob_digest(&self, digest: &str) -> Result<bool, RegistryError> {
        let url = self.url(&format!("blobs/{digest}"));
        retrying(|| {
            let r = self.send("HEAD", &url, None, Body::None)?;
            match r.status {
                200..=299 => Ok(true),
                404 => Ok(false),
                _ => Err(self.unexpected("HEAD", &url, &r).into()),
            }
        })
    }

    /// PUT a manifest or index under `reference` (its digest or a tag) and
    /// checks the digest the registry reports.
    pub fn put_manifest(&self, m: &Manifest, reference: &str) -> Result<(), RegistryError> {
        self.put_manifest_subject(m, reference).map(|_| ())
    }

    /// [`Client::put_manifest`], telling whether the registry answered with
    /// `OCI-Subject` (it has the referrers API and indexed the subject).
    pub fn put_manifest_subject(
        &self,
        m: &Manifest,
        reference: &str,
    ) -> Result<bool, RegistryError> {
        let url = self.url(&format!("manifests/{reference}"));
        retrying(|| {
            let r = self.send("PUT", &url, Some(&m.media_type), Body::Bytes(&m.bytes))?;
            if r.status != 201 && r.status != 200 {
                return Err(self.unexpected("PUT", &url, &r).into());
            }
            check_digest(&r, &format!("manifest {reference}"), &m.digest)?;
            Ok(r.oci_subject.is_some())
        })
    }

    /// The digest `reference` (a tag or digest) resolves to, or None when
    /// the repository has no such manifest.
    pub fn manifest_digest(&self, reference: &str) -> Result<Option<String>, RegistryError> {
        let url = self.url(&format!("manifests/{reference}"));
        retrying(|| {
            let r = self.send_accepting("HEAD", &url)?;
            match r.status {
                200..=299 => Ok(Some(r.content_digest.clone().unwrap_or_default())),
                404 => Ok(None),
                _ => Err(self.unexpected("HEAD", &url, &r).into()),
            }
        })
    }

    /// The manifest or index at `reference` (media type and bytes, at most
    /// 1 MiB), or None when there is none.
    pub fn get_manifest(
        &self,
        reference: &str,
    ) -> Result<Option<(String, Vec<u8>)>, RegistryError> {
        let url = self.url(&format!("manifests/{reference}"));
        retrying(|| {
            let r = self.send_accepting("GET", &url)?;
            match r.status {
                200..=299 => Ok(Some((
                    r.content_type.clone().unwrap_or_default(),
                    r.body.clone(),
                ))),
                404 => Ok(None),
                _ => Err(self.unexpected("GET", &url, &r).into()),
            }
        })
    }

    /// `GET /v2/<name>/referrers/<digest>`: the index of manifests whose
    /// subject is `digest`, or None when the registry has no referrers API
    /// (it answers 404 for the endpoint, as docker-registry 2.8 does).
    pub fn referrers(&self, digest: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        let url = self.url(&format!("referrers/{digest}"));
        retrying(|| {
            let r = self.send("GET", &url, None, Body::None)?;
            let is_index = r
                .content_type
                .as_deref()
                .is_some_and(|t| t.starts_with(crate::layout::INDEX_V1));
            match r.status {
                200 if is_index => Ok(Some(r.body.clone())),
                // A registry without the API may answer 200 with something
                // else (an HTML page, an error document) or 404/405.
                200 | 404 | 405 | 400 => Ok(None),
                _ => Err(self.unexpected("GET", &url, &r).into()),
            }
        })
    }

    fn send_accepting(&self, method: &str, url: &str) -> Result<Reply, Failure> {
        self.send_with(method, url, None, Body::None, Some(ACCEPT_MANIFESTS))
    }

    /// Resolves a Location header against the URL of the request that
    /// returned it.
    fn resolve(&self, location: &str, request_url: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else if let Some(rest) = location.strip_prefix("//") {
            let scheme = self.base.split_once("://").map_or("https", |(s, _)| s);
            format!("{scheme}://{rest}")
        } else if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            let path_end = request_url.find('?').unwrap_or(request_url.len());
            let dir_end = request_url[..path_end]
                .rfind('/')
                .map_or(path_end, |i| i + 1);
            format!("{}{location}", &request_url[..dir_end])
        }
    }

    /// One HTTP exchange, answering an authentication challenge if needed.
    fn send(
        &self,
        method: &str,
        url: &str,
        content_type: Option<&str>,
        body: Body<'_>,
    ) -> Result<Reply, Failure> {
        self.send_with(method, url, content_type, body, None)
    }

    fn send_with(
        &self,
        method: &str,
        url: &str,
        content_type: Option<&str>,
        body: Body<'_>,
        accept: Option<&str>,
    ) -> Result<Reply, Failure> {
        let same_origin = url.starts_with(&format!("{}/", self.base));
        let mut fresh_auth = false;
        loop {
            let auth = if same_origin {
                match &*self.auth.borrow() {
                    Auth::None => None,
                    Auth::Basic(h) | Auth::Bearer(h) => Some(h.clone()),
                }
            } else {
                None
            };
            let mut req = http::Request::builder().method(method).uri(url);
            if let Some(ct) = content_type {
                req = req.header("Content-Type", ct);
            }
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            let result = match &body {
                Body::None => req.body(()).map(|r| self.agent.run(r)),
                Body::Bytes(b) => req
                    .header("Content-Length", b.len())
                    .body(*b)
                    .map(|r| self.agent.run(r)),
                Body::File(path, len) => {
                    let file = std::fs::File::open(path).map_err(|e| RegistryError::Io {
                        what: format!("opening {}", path.display()),
                        source: e,
                    })?;
                    req.header("Content-Length", *len)
                        .body(file)
                        .map(|r| self.agent.run(r))
                }
            };
            let resp = result
                .map_err(|e| RegistryError::Unreachable {
                    url: url.into(),
                    message: format!("bad request: {e}"),
                })?
                .map_err(|e| Failure::connection(url, &e))?;
            let reply = Reply::read(resp, method == "HEAD");
            if reply.status != 401 || !same_origin || fresh_auth {
                if reply.status == 401 {
                    let scope_error = reply
                        .challenges
                        .iter()
                        .any(|c| Challenge::parse(c).param("error") == Some("insufficient_scope"));
                    let why = if scope_error {
                        format!(
                            "the token does not grant push access to {}",
                            self.repository
                        )
                    } else {
                        "the registry rejected the credentials".to_string()
                    };
                    return Err(self.auth_failed(&reply, &why).into());
                }
                if reply.status == 403 {
                    return Err(self.auth_failed(&reply, "access denied").into());
                }
                return Ok(reply);
            }
            // Not retried as a whole: the token request has its own retries.
            self.authenticate(&reply, auth.is_some())
                .map_err(Failure::permanent)?;
            fresh_auth = true;
        }
    }

    /// Sets up authentication after a 401 answer.
    fn authenticate(&self, reply: &Reply, sent_auth: bool) -> Result<(), RegistryError> {
        let challenges: Vec<Challenge> = reply
            .challenges
            .iter()
            .map(|c| Challenge::parse(c))
            .collect();
        let bearer = challenges
            .iter()
            .find(|c| c.scheme.eq_ignore_ascii_case("bearer"));
        let basic = challenges
            .iter()
            .find(|c| c.scheme.eq_ignore_ascii_case("basic"));
        if let Some(ch) = bearer {
            let token = self.fetch_token(ch)?;
            *self.auth.borrow_mut() = Auth::Bearer(format!("Bearer {token}"));
            return Ok(());
        }
        if basic.is_some() {
            let Some(creds) = self.credentials else {
                return Err(self.auth_failed(
                    reply,
                    "the registry requires credentials and none were given",
                ));
            };
            if sent_auth && matches!(*self.auth.borrow(), Auth::Basic(_)) {
                return Err(self.auth_failed(reply, "the registry rejected the credentials"));
            }
            *self.auth.borrow_mut() = Auth::Basic(basic_header(creds));
            return Ok(());
        }
        Err(self.auth_failed(
            reply,
            "the registry asks for authentication without a Basic or Bearer challenge",
        ))
    }

    /// Gets a Bearer token from the challenge's realm for pushing to the
    /// repository.
    fn fetch_token(&self, ch: &Challenge) -> Result<String, RegistryError> {
        let realm = ch.param("realm").ok_or_else(|| RegistryError::AuthFailed {
            registry: self.registry.into(),
            message: "the Bearer challenge names no realm".into(),
        })?;
        let push_scope = format!("repository:{}:pull,push", self.repository);
        let mut url = realm.to_string();
        if let Some(service) = ch.param("service") {
            url = with_query(&url, "service", service);
        }
        url = with_query(&url, "scope", &push_scope);
        if let Some(scope) = ch.param("scope").filter(|s| *s != push_scope) {
            url = with_query(&url, "scope", scope);
        }
        if self.credentials.is_some() {
            credentials_may_go_to(realm, &self.base).map_err(|why| RegistryError::AuthFailed {
                registry: self.registry.into(),
                message: format!(
                    "refusing to send the registry password to the token server {realm}: {why}"
                ),
            })?;
        }
        let fetch = || {
            let mut req = self.agent.get(&url);
            if let Some(c) = self.credentials {
                req = req.header("Authorization", &basic_header(c));
            }
            let resp = req.call().map_err(|e| Failure::connection(&url, &e))?;
            let r = Reply::read(resp, false);
            if r.status >= 500 || r.status == 429 {
                return Err(self.unexpected("GET", &url, &r).into());
            }
            Ok(r)
        };
        let r = retrying(fetch)?;
        match r.status {
            200 => {}
            401 | 403 => {
                let why = if self.credentials.is_some() {
                    "the token server rejected the credentials"
                } else {
                    "the token server requires credentials and none were given"
                };
                return Err(self.auth_failed(&r, why));
            }
            _ => return Err(self.unexpected("GET", &url, &r)),
        }
        let json: Value =
            serde_json::from_slice(&r.body).map_err(|e| RegistryError::AuthFailed {
                registry: self.registry.into(),
                message: format!(
                    "the token server at {realm} answered something that is not JSON: {e}"
                ),
            })?;
        ["token", "access_token"]
            .iter()
            .find_map(|k| {
                json.get(k)
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
            })
            .map(str::to_string)
            .ok_or_else(|| RegistryError::AuthFailed {
                registry: self.registry.into(),
                message: format!("the token server at {realm} returned no token"),
            })
    }

    fn auth_failed(&self, reply: &Reply, why: &str) -> RegistryError {
        let detail = registry_message(&reply.body);
        RegistryError::AuthFailed {
            registry: self.registry.into(),
            message: match detail {
                Some(d) => format!("{why} (HTTP {}: {d})", reply.status),
                None => format!("{why} (HTTP {})", reply.status),
            },
        }
    }

    fn unexpected(&self, method: &str, url: &str, reply: &Reply) -> RegistryError {
        RegistryError::Registry {
            method: method.into(),
            url: url.into(),
            status: reply.status,
            message: registry_message(&reply.body).unwrap_or_else(|| {
                if method == "HEAD" {
                    "no details (HEAD answers have no body)".into()
                } else {
                    "no error details".into()
                }
            }),
        }
    }
}

impl Reply {
    fn read(mut resp: http::Response<ureq::Body>, head: bool) -> Reply {
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let location = header("location");
        let content_digest = header("docker-content-digest");
        let oci_subject = header("oci-subject");
        let content_type = header("content-type");
        let challenges = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        let body = if head {
            Vec::new()
        } else {
            resp.body_mut()
                .with_config()
                .limit(MAX_REPLY)
                .read_to_vec()
                .unwrap_or_default()
        };
        Reply {
            status: resp.status().as_u16(),
            location,
            content_digest,
            oci_subject,
            content_type,
            challenges,
            body,
        }
    }
}

/// An error, and whether trying again may help.
pub struct Failure {
    error: RegistryError,
    transient: bool,
}

impl From<RegistryError> for Failure {
    /// Registry answers 5xx and 429 are transient; other errors are not.
    fn from(error: RegistryError) -> Failure {
        let transient = matches!(error, RegistryError::Registry { status, .. } if status >= 500 || status == 429);
        Failure { error, transient }
    }
}

impl Failure {
    fn permanent(error: RegistryError) -> Failure {
        Failure {
            error,
            transient: false,
        }
    }

    /// A request to `url` that got no HTTP answer.
    fn connection(url: &str, e: &ureq::Error) -> Failure {
        use std::io::ErrorKind as K;
        let transient = match e {
            ureq::Error::Io(io) => matches!(
                io.kind(),
                K::ConnectionRefused
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::NotConnected
                    | K::BrokenPipe
                    | K::UnexpectedEof
                    | K::TimedOut
                    | K::Interrupted
            ),
            ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed => true,
            _ => false,
        };
        Failure {
            error: RegistryError::Unreachable {
                url: url.into(),
                message: describe(url, e),
            },
            transient,
        }
    }
}

/// Runs `op` again after a transient failure, with exponential backoff.
fn retrying<T>(mut op: impl FnMut() -> Result<T, Failure>) -> Result<T, RegistryError> {
    let mut delay = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        match op() {
            Ok(v) => return Ok(v),
            Err(f) if attempt < ATTEMPTS && f.transient => {
                std::thread::sleep(delay);
                delay *= 4;
                attempt += 1;
            }
            Err(f) => return Err(f.error),
        }
    }
}

fn check_digest(reply: &Reply, what: &str, expected: &str) -> Result<(), RegistryError> {
    match reply.content_digest.as_deref() {
        Some(actual) if actual != expected => Err(RegistryError::DigestMismatch {
            what: what.into(),
            expected: expected.into(),
            actual: actual.into(),
        }),
        // The header is optional in the OCI distribution spec; a registry
        // that accepted a digest-addressed upload has checked it anyway.
        _ => Ok(()),
    }
}

fn describe(url: &str, e: &ureq::Error) -> String {
    let tls = url.starts_with("https://");
    match e {
        ureq::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
            std::io::ErrorKind::ConnectionReset => "connection reset by the registry".into(),
            std::io::ErrorKind::UnexpectedEof => "the registry closed the connection".into(),
            std::io::ErrorKind::BrokenPipe => {
                "the registry closed the connection (broken pipe)".into()
            }
            std::io::ErrorKind::InvalidData if tls => {
                format!("TLS handshake failed ({io}); a plain-http registry needs --insecure")
            }
            _ => io.to_string(),
        },
        ureq::Error::Rustls(_) | ureq::Error::Tls(_) => format!("TLS failed: {e}"),
        other => other.to_string(),
    }
}

/// Whether a registry at `base` (`scheme://host[:port]`) may have our
/// credentials sent to the token `realm` it names: over HTTPS anywhere (the
/// registry could read them anyway), over plain HTTP only to the registry's
/// own host when the registry itself is plain HTTP (`--insecure`, loopback).
fn credentials_may_go_to(realm: &str, base: &str) -> Result<(), String> {
    fn host_of(url: &str) -> Option<&str> {
        let rest = url.split_once("://")?.1;
        let authority = rest.split(['/', '?', '#']).next()?;
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if host_port.starts_with('[') {
            return host_port.split_inclusive(']').next();
        }
        host_port.split(':').next()
    }
    let lower = realm.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Ok(());
    }
    if !lower.starts_with("http://") {
        return Err("it is not an http(s) URL".into());
    }
    if !base.starts_with("http://") {
        return Err("it is plain http while the registry is https".into());
    }
    match (host_of(realm), host_of(base)) {
        (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => Ok(()),
        _ => Err("it is plain http on another host than the registry".into()),
    }
}

fn basic_header(c: &Credentials) -> String {
    let raw = format!("{}:{}", c.username, c.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// The message of a registry's JSON error body
/// (`{"errors":[{"code":…,"message":…,"detail":…}]}`), or its text.
fn registry_message(body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(errors) = v.get("errors").and_then(Value::as_array) {
            let parts: Vec<String> = errors
                .iter()
                .map(|e| {
                    let code = e.get("code").and_then(Value::as_str).unwrap_or("ERROR");
                    let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
                    let mut s = format!("{code}: {msg}");
                    match e.get("detail") {
                        None | Some(Value::Null) => {}
                        Some(Value::String(d)) => s.push_str(&format!(" ({d})")),
                        Some(d) => s.push_str(&format!(" ({d})")),
                    }
                    s
                })
                .collect();
            if !parts.is_empty() {
                return Some(parts.join("; "));
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut short: String = text.chars().take(300).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    Some(short)
}

/// Appends `key=value` (value percent-encoded) to `url`, after `?` or `&`.
pub fn with_query(url: &str, key: &str, value: &str) -> String {
    let sep = if !url.contains('?') {
        "?"
    } else if url.ends_with('?') || url.ends_with('&') {
        ""
    } else {
        "&"
    };
    format!("{url}{sep}{key}={}", percent_encode(value))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One `WWW-Authenticate` challenge: `Scheme key="value", key=value, …`.
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn parse(header: &str) -> Challenge {
        let header = header.trim();
        let (scheme, rest) = header
            .split_once(char::is_whitespace)
            .unwrap_or((header, ""));
        let mut params = Vec::new();
        let mut chars = rest.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
                chars.next();
            }
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            if key.is_empty() {
                break;
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next()),
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(c) = chars.peek().copied() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
                value = value.trim().to_string();
            }
            params.push((key.trim().to_ascii_lowercase(), value));
        }
        Challenge {
            scheme: scheme.to_string(),
            params,
        }
    }

    fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges_with_commas_in_quotes() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example.org/token",service="registry.example.org",scope="repository:a/b:pull,push", error="insufficient_scope""#,
        );
        assert_eq!(c.scheme, "Bearer");
        assert_eq!(c.param("realm"), Some("https://auth.example.org/token"));
        assert_eq!(c.param("service"), Some("registry.example.org"));
        assert_eq!(c.param("scope"), Some("repository:a/b:pull,push"));
        assert_eq!(c.param("error"), Some("insufficient_scope"));
        let c = Challenge::parse(r#"Basic realm="a \"quoted\" realm", charset=UTF-8"#);
        assert_eq!(c.scheme, "Basic");
        assert_eq!(c.param("realm"), Some(r#"a "quoted" realm"#));
        assert_eq!(c.param("charset"), Some("UTF-8"));
        assert!(Challenge::parse("Basic").params.is_empty());
    }

    #[test]
    fn appends_query_parameters() {
        assert_eq!(
            with_query("http://h/u", "digest", "sha256:ab"),
            "http://h/u?digest=sha256%3Aab"
        );
        assert_eq!(
            with_query("http://h/u?_state=x", "digest", "sha256:ab"),
            "http://h/u?_state=x&digest=sha256%3Aab"
        );
        assert_eq!(with_query("http://h/u?", "a", "b c"), "http://h/u?a=b%20c");
    }

    #[test]
    fn resolves_locations() {
        let r = Reference::parse("127.0.0.1:5000/a/b:1").unwrap();
        let opts = PushOptions {
            insecure: true,
            ..PushOptions::default()
        };
        let c = Client::new(&r, &opts);
        let req = "http://127.0.0.1:5000/v2/a/b/blobs/uploads/";
        assert_eq!(
            c.resolve("/v2/a/b/blobs/uploads/u1?s=1", req),
            "http://127.0.0.1:5000/v2/a/b/blobs/uploads/u1?s=1"
        );
        assert_eq!(
            c.resolve("u1", req),
            "http://127.0.0.1:5000/v2/a/b/blobs/uploads/u1"
        );
        assert_eq!(
            c.resolve("https://store.example/x?y=1", req),
            "https://store.example/x?y=1"
        );
        assert_eq!(
            c.resolve("//store.example/x", req),
            "http://store.example/x"
        );
    }

    #[test]
    fn extracts_registry_error_messages() {
        let body = br#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:ab"}]}"#;
        assert_eq!(
            registry_message(body).unwrap(),
            "MANIFEST_BLOB_UNKNOWN: blob unknown to registry (sha256:ab)"
        );
        assert_eq!(registry_message(b"  plain text\n").unwrap(), "plain text");
        assert_eq!(registry_message(b""), None);
    }

    #[test]
    fn credentials_never_go_to_a_plain_http_token_server_elsewhere() {
        let ok = |realm: &str, base: &str| credentials_may_go_to(realm, base).is_ok();
        assert!(ok(
            "https://auth.example.org/token",
            "https://registry.example.org"
        ));
        assert!(ok("http://127.0.0.1:5001/token", "http://127.0.0.1:5000"));
        assert!(!ok(
            "http://auth.example.org/token",
            "https://registry.example.org"
        ));
        assert!(!ok("http://evil.example/token", "http://127.0.0.1:5000"));
        assert!(!ok(
            "http://127.0.0.1.evil.example/t",
            "http://127.0.0.1:5000"
        ));
        assert!(!ok("http://user@evil.example/t", "http://127.0.0.1:5000"));
        assert!(!ok("ftp://127.0.0.1/t", "http://127.0.0.1:5000"));
        assert!(!ok("/token", "http://127.0.0.1:5000"));
    }
}

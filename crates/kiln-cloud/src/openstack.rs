//! `openstack://CLOUD`: a Glance v2 image in the OpenStack cloud `CLOUD`
//! of `clouds.yaml`, logged in through Keystone v3.
//!
//! 1. The cloud is read from `clouds.yaml` as OpenStack's SDKs read it
//!    (`OS_CLIENT_CONFIG_FILE`, `./clouds.yaml`,
//!    `~/.config/openstack/clouds.yaml`, `/etc/openstack/clouds.yaml`;
//!    secrets may sit in a `secure.yaml` beside it). The cloud `envvars`
//!    is made from the `OS_*` variables of an openrc file instead.
//! 2. Keystone v3 gives a token (password, token or application
//!    credential) and the catalog; the `image` service's endpoint of the
//!    cloud's interface and region is where the image goes
//!    (`image_endpoint_override` wins).
//! 3. The file is checked (a qcow2 with no backing or data file whose size
//!    is the UEFI GPT disk's, or that disk itself) and hashed: its sha256
//!    must be the build's.
//! 4. An active image with this digest in its `kiln_sha256` property and
//!    Glance's sha512 of these bytes is reused as it is; one left queued
//!    or killed by a cut upload is deleted; an image of the name with
//!    another digest is refused unless `replace` (then it is deleted once
//!    the new one is active).
//! 5. The image is created with the properties operators expect
//!    (`os_distro`, `os_version`, `hw_firmware_type=uefi`,
//!    `hw_machine_type=q35`, `hw_disk_bus`, `architecture`, …), the file
//!    uploaded, and Glance's size and sha512 of what it stored checked
//!    against what was sent; if anything fails the new image is deleted,
//!    so nothing half-made is left or recorded.
//!
//! Passwords, secrets and tokens are sent only to Keystone and Glance and
//! shown nowhere.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::Digest;
use ureq::http;
use yaml_rust2::{Yaml, YamlLoader};

use crate::CloudError;

pub const CONFIG_SOURCES: &str = "clouds.yaml: OS_CLIENT_CONFIG_FILE, ./clouds.yaml, ~/.config/openstack/clouds.yaml or /etc/openstack/clouds.yaml (secrets may be in secure.yaml beside it); the cloud `envvars` is made from OS_AUTH_URL, OS_USERNAME, OS_PASSWORD, … (an openrc file)";

/// A cloud's name in `clouds.yaml`: letters, digits, `-`, `_`, `.`.
pub fn valid_cloud_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// One cloud of `clouds.yaml`: how to log in and where.
#[derive(Clone)]
pub struct Cloud {
    pub name: String,
    /// Where it was read from (for messages).
    pub source: String,
    pub auth_type: String,
    auth: BTreeMap<String, String>,
    pub region: Option<String>,
    pub interface: String,
    pub image_endpoint: Option<String>,
}

impl std::fmt::Debug for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No secret in a debug print either.
        f.debug_struct("Cloud")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("auth_type", &self.auth_type)
            .field("auth_keys", &self.auth.keys().collect::<Vec<_>>())
            .field("region", &self.region)
            .finish()
    }
}

fn cred_err(message: String) -> CloudError {
    CloudError::Credentials {
        provider: "openstack",
        message,
        hint: format!("the cloud is read from {CONFIG_SOURCES}"),
    }
}

fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn read_yaml(path: &Path) -> Result<Option<Yaml>, CloudError> {
    let text = match std::fs::File::open(path) {
        Ok(f) => {
            let mut s = String::new();
            f.take(1 << 20)
                .read_to_string(&mut s)
                .map_err(|e| cred_err(format!("{}: {e}", path.display())))?;
            s
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(cred_err(format!("{}: {e}", path.display()))),
    };
    let docs = YamlLoader::load_from_str(&text)
        .map_err(|e| cred_err(format!("{} is not YAML: {e}", path.display())))?;
    Ok(Some(docs.into_iter().next().unwrap_or(Yaml::Null)))
}

/// The files `clouds.yaml` is looked for in, in order.
pub fn config_paths(secure: bool) -> Vec<PathBuf> {
    let (var, file) = if secure {
        ("OS_CLIENT_SECURE_FILE", "secure.yaml")
    } else {
        ("OS_CLIENT_CONFIG_FILE", "clouds.yaml")
    };
    let mut v = Vec::new();
    if let Some(f) = std::env::var_os(var).filter(|f| !f.is_empty()) {
        v.push(PathBuf::from(f));
    }
    v.push(PathBuf::from(file));
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    if let Some(c) = config {
        v.push(c.join("openstack").join(file));
    }
    v.push(PathBuf::from("/etc/openstack").join(file));
    v
}

/// The cloud `name`, from the first `clouds.yaml` that exists (and the
/// first `secure.yaml`), or from `OS_*` for `envvars`.
pub fn load_cloud(name: &str) -> Result<Cloud, CloudError> {
    if name == "envvars" {
        return cloud_from_env();
    }
    let mut tried = Vec::new();
    for p in config_paths(false) {
        if let Some(doc) = read_yaml(&p)? {
            let secure = config_paths(true)
                .into_iter()
                .find_map(|s| read_yaml(&s).transpose())
                .transpose()?;
            return cloud_from(&doc, secure.as_ref(), name, &p.display().to_string());
        }
        tried.push(p.display().to_string());
    }
    Err(cred_err(format!(
        "no clouds.yaml (looked for {})",
        tried.join(", ")
    )))
}

/// The cloud `name` of the `clouds.yaml` at `path` (no `secure.yaml`).
pub fn load_cloud_from(path: &Path, name: &str) -> Result<Cloud, CloudError> {
    let doc =
        read_yaml(path)?.ok_or_else(|| cred_err(format!("{} does not exist", path.display())))?;
    cloud_from(&doc, None, name, &path.display().to_string())
}

fn cloud_from(
    doc: &Yaml,
    secure: Option<&Yaml>,
    name: &str,
    source: &str,
) -> Result<Cloud, CloudError> {
    let clouds = &doc["clouds"];
    let Some(all) = clouds.as_hash() else {
        return Err(cred_err(format!("{source} has no `clouds:` map")));
    };
    let entry = &clouds[name];
    if entry.as_hash().is_none() {
        let names: Vec<String> = all.keys().filter_map(scalar).collect();
        return Err(CloudError::Credentials {
            provider: "openstack",
            message: format!("{source} has no cloud `{name}`"),
            hint: format!(
                "its clouds: {}; publish to openstack://NAME with one of them",
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            ),
        });
    }
    let mut auth = BTreeMap::new();
    let mut fields = BTreeMap::new();
    for e in [Some(entry), secure.map(|s| &s["clouds"][name])]
        .into_iter()
        .flatten()
    {
        if let Some(h) = e["auth"].as_hash() {
            for (k, v) in h {
                if let (Some(k), Some(v)) = (scalar(k), scalar(v)) {
                    auth.insert(k, v);
                }
            }
        }
        if let Some(h) = e.as_hash() {
            for (k, v) in h {
                if let (Some(k), Some(v)) = (scalar(k), scalar(v)) {
                    fields.insert(k, v);
                }
            }
        }
    }
    if let Some(v) = fields.get("identity_api_version") {
        if !v.starts_with('3') {
            return Err(cred_err(format!(
                "{source}: cloud `{name}` asks for identity API {v}; Kiln speaks Keystone v3"
            )));
        }
    }
    Ok(Cloud {
        name: name.to_string(),
        source: source.to_string(),
        auth_type: fields
            .get("auth_type")
            .cloned()
            .unwrap_or_else(|| "password".into()),
        auth,
        region: fields.get("region_name").cloned().filter(|r| !r.is_empty()),
        interface: fields
            .get("interface")
            .map(|i| i.trim_end_matches("URL").to_string())
            .unwrap_or_else(|| "public".into()),
        image_endpoint: fields.get("image_endpoint_override").cloned(),
    })
}

fn cloud_from_env() -> Result<Cloud, CloudError> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut auth = BTreeMap::new();
    for (var, key) in [
        ("OS_AUTH_URL", "auth_url"),
        ("OS_USERNAME", "username"),
        ("OS_USER_ID", "user_id"),
        ("OS_PASSWORD", "password"),
        ("OS_PROJECT_NAME", "project_name"),
        ("OS_TENANT_NAME", "project_name"),
        ("OS_PROJECT_ID", "project_id"),
        ("OS_TENANT_ID", "project_id"),
        ("OS_USER_DOMAIN_NAME", "user_domain_name"),
        ("OS_USER_DOMAIN_ID", "user_domain_id"),
        ("OS_PROJECT_DOMAIN_NAME", "project_domain_name"),
        ("OS_PROJECT_DOMAIN_ID", "project_domain_id"),
        ("OS_DOMAIN_NAME", "domain_name"),
        ("OS_TOKEN", "token"),
        ("OS_APPLICATION_CREDENTIAL_ID", "application_credential_id"),
        (
            "OS_APPLICATION_CREDENTIAL_NAME",
            "application_credential_name",
        ),
        (
            "OS_APPLICATION_CREDENTIAL_SECRET",
            "application_credential_secret",
        ),
    ] {
        if let Some(v) = env(var) {
            auth.entry(key.to_string()).or_insert(v);
        }
    }
    if !auth.contains_key("auth_url") {
        return Err(cred_err(
            "the cloud `envvars` needs OS_AUTH_URL (source the cloud's openrc file first)".into(),
        ));
    }
    Ok(Cloud {
        name: "envvars".into(),
        source: "the OS_* environment".into(),
        auth_type: env("OS_AUTH_TYPE").unwrap_or_else(|| {
            if auth.contains_key("application_credential_secret") {
                "v3applicationcredential".into()
            } else {
                "password".into()
            }
        }),
        auth,
        region: env("OS_REGION_NAME"),
        interface: env("OS_INTERFACE")
            .map(|i| i.trim_end_matches("URL").to_string())
            .unwrap_or_else(|| "public".into()),
        image_endpoint: env("OS_IMAGE_URL"),
    })
}

struct Reply {
    status: u16,
    subject_token: Option<String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A logged-in session: the token and the image service.
struct Session {
    agent: ureq::Agent,
    token: Option<String>,
    /// Glance's `…/v2`.
    glance: String,
    region: String,
}

fn http_url(u: &str) -> bool {
    (u.starts_with("http://") || u.starts_with("https://"))
        && u.len() < 2048
        && !u.bytes().any(|b| b.is_ascii_control() || b == b' ')
}

fn call(
    agent: &ureq::Agent,
    token: Option<&str>,
    region: &str,
    action: &str,
    method: &str,
    url: &str,
    body: Option<(&str, Vec<u8>)>,
) -> Result<Reply, CloudError> {
    let service = if action.starts_with("auth") {
        "keystone"
    } else {
        "glance"
    };
    let transport = |message: String| CloudError::Transport {
        service,
        action: action.to_string(),
        region: region.to_string(),
        message,
    };
    let mut req = http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("X-Auth-Token", t);
    }
    let (ctype, bytes) = body.unwrap_or(("application/json", Vec::new()));
    let req = req
        .header("Content-Type", ctype)
        .header("Accept", "application/json")
        .body(bytes)
        .map_err(|e| transport(format!("bad request: {e}")))?;
    let mut resp = agent.run(req).map_err(|e| {
        transport(format!(
            "cannot reach {}: {e}",
            url.split('?').next().unwrap_or(url)
        ))
    })?;
    finish(resp.status().as_u16(), &mut resp)
}

fn finish(status: u16, resp: &mut http::Response<ureq::Body>) -> Result<Reply, CloudError> {
    let subject_token = resp
        .headers()
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp
        .body_mut()
        .with_config()
        .limit(4 << 20)
        .read_to_vec()
        .unwrap_or_default();
    Ok(Reply {
        status,
        subject_token,
        body,
    })
}

fn api(service: &'static str, action: &str, region: &str, r: &Reply) -> CloudError {
    let v = r.json();
    // Keystone: {"error": {"code", "title", "message"}}; Glance: HTML or
    // {"message"}.
    let e = &v["error"];
    let text = String::from_utf8_lossy(&r.body[..r.body.len().min(400)]).into_owned();
    CloudError::Api {
        service,
        action: action.to_string(),
        region: region.to_string(),
        status: r.status,
        code: e["title"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP{}", r.status)),
        message: e["message"]
            .as_str()
            .or_else(|| v["message"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| strip_tags(&text)),
    }
}

fn strip_tags(s: &str) -> String {
    let mut o = String::new();
    let mut inside = false;
    for c in s.chars() {
        match c {
            '<' => inside = true,
            '>' => inside = false,
            c if !inside => o.push(c),
            _ => {}
        }
    }
    o.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn get_auth<'a>(cloud: &'a Cloud, k: &str) -> Option<&'a str> {
    cloud
        .auth
        .get(k)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// Keystone v3's `auth` request for the cloud (no secret leaves here but
/// in the body to Keystone).
fn auth_request(cloud: &Cloud) -> Result<Value, CloudError> {
    let a = |k: &str| get_auth(cloud, k);
    let domain = |prefix: &str| -> Value {
        if let Some(id) = a(&format!("{prefix}_domain_id")).or(a("domain_id")) {
            json!({ "id": id })
        } else if let Some(n) = a(&format!("{prefix}_domain_name")).or(a("domain_name")) {
            json!({ "name": n })
        } else {
            json!({ "id": "default" })
        }
    };
    let scope = if let Some(id) = a("project_id") {
        Some(json!({ "project": { "id": id } }))
    } else {
        a("project_name").map(|n| json!({ "project": { "name": n, "domain": domain("project") } }))
    };
    let need = |k: &str| {
        a(k).ok_or_else(|| {
            cred_err(format!(
                "{}: cloud `{}` has no auth.{k} (auth_type {})",
                cloud.source, cloud.name, cloud.auth_type
            ))
        })
    };
    let (identity, scoped) = match cloud.auth_type.as_str() {
        "password" | "v3password" => {
            let user = match a("user_id") {
                Some(id) => json!({ "id": id, "password": need("password")? }),
                None => json!({ "name": need("username")?, "domain": domain("user"), "password": need("password")? }),
            };
            (json!({ "methods": ["password"], "password": { "user": user } }), true)
        }
        "token" | "v3token" => (
            json!({ "methods": ["token"], "token": { "id": need("token")? } }),
            true,
        ),
        "v3applicationcredential" | "applicationcredential" => {
            let cred = match a("application_credential_id") {
                Some(id) => json!({ "id": id, "secret": need("application_credential_secret")? }),
                None => json!({
                    "name": need("application_credential_name")?,
                    "secret": need("application_credential_secret")?,
                    "user": { "name": need("username")?, "domain": domain("user") },
                }),
            };
            // An application credential carries its own scope.
            (json!({ "methods": ["application_credential"], "application_credential": cred }), false)
        }
        other => {
            return Err(cred_err(format!(
                "{}: cloud `{}` has auth_type `{other}`; Kiln logs in with password, token, v3applicationcredential or none",
                cloud.source, cloud.name
            )))
        }
    };
    let mut auth = json!({ "identity": identity });
    if scoped {
        if let Some(s) = scope {
            auth["scope"] = s;
        }
    }
    Ok(json!({ "auth": auth }))
}

/// `…/v3` of an `auth_url` (given with or without its version).
fn keystone_v3(auth_url: &str) -> String {
    let u = auth_url.trim_end_matches('/');
    if u.ends_with("/v3") {
        u.to_string()
    } else {
        format!("{u}/v3")
    }
}

/// `…/v2` of a Glance endpoint (given with or without its version).
fn glance_v2(url: &str) -> String {
    let u = url.trim_end_matches('/');
    if u.ends_with("/v2") {
        u.to_string()
    } else {
        format!("{u}/v2")
    }
}

fn login(cloud: &Cloud) -> Result<Session, CloudError> {
    let agent = crate::agent();
    let region_label = cloud.region.clone().unwrap_or_else(|| "any region".into());
    if cloud.auth_type == "none" || cloud.auth_type == "noauth" {
        let Some(ep) = cloud
            .image_endpoint
            .clone()
            .or_else(|| cloud.auth.get("endpoint").cloned())
        else {
            return Err(cred_err(format!(
                "{}: cloud `{}` has auth_type none but no image_endpoint_override",
                cloud.source, cloud.name
            )));
        };
        if !http_url(&ep) {
            return Err(cred_err(format!(
                "{}: `{ep:.80}` is not an http(s) URL",
                cloud.source
            )));
        }
        return Ok(Session {
            agent,
            token: None,
            glance: glance_v2(&ep),
            region: cloud.region.clone().unwrap_or_else(|| "default".into()),
        });
    }
    let Some(auth_url) = get_auth(cloud, "auth_url") else {
        return Err(cred_err(format!(
            "{}: cloud `{}` has no auth.auth_url",
            cloud.source, cloud.name
        )));
    };
    if !http_url(auth_url) {
        return Err(cred_err(format!(
            "{}: cloud `{}`: auth_url `{auth_url:.80}` is not an http(s) URL",
            cloud.source, cloud.name
        )));
    }
    let body = serde_json::to_vec(&auth_request(cloud)?).expect("JSON");
    let url = format!("{}/auth/tokens", keystone_v3(auth_url));
    let r = call(
        &agent,
        None,
        &region_label,
        "auth",
        "POST",
        &url,
        Some(("application/json", body)),
    )?;
    if r.status == 401 || r.status == 403 {
        return Err(CloudError::Credentials {
            provider: "openstack",
            message: format!(
                "Keystone at {} refused the credentials of cloud `{}` (HTTP {}: {})",
                keystone_v3(auth_url),
                cloud.name,
                r.status,
                api("keystone", "auth", &region_label, &r)
                    .to_string()
                    .rsplit(": ")
                    .nth(1)
                    .unwrap_or("")
            ),
            hint: format!(
                "check auth in {} (username, password, project, domains) or the application credential",
                cloud.source
            ),
        });
    }
    if r.status != 201 && r.status != 200 {
        return Err(api("keystone", "auth", &region_label, &r));
    }
    let Some(token) = r
        .subject_token
        .clone()
        .filter(|t| !t.is_empty() && t.len() < 8192 && t.bytes().all(|b| b.is_ascii_graphic()))
    else {
        return Err(CloudError::Transport {
            service: "keystone",
            action: "auth".into(),
            region: region_label,
            message: "the answer has no X-Subject-Token".into(),
        });
    };
    let v = r.json();
    let (glance, region) = match &cloud.image_endpoint {
        Some(ep) => (
            ep.clone(),
            cloud.region.clone().unwrap_or_else(|| "default".into()),
        ),
        None => image_endpoint(cloud, &v["token"]["catalog"])?,
    };
    if !http_url(&glance) {
        return Err(CloudError::Transport {
            service: "keystone",
            action: "catalog".into(),
            region,
            message: format!("the image endpoint `{glance:.80}` is not an http(s) URL"),
        });
    }
    Ok(Session {
        agent,
        token: Some(token),
        glance: glance_v2(&glance),
        region,
    })
}

/// The image service's URL and region in a Keystone catalog.
fn image_endpoint(cloud: &Cloud, catalog: &Value) -> Result<(String, String), CloudError> {
    let mut regions = Vec::new();
    for svc in catalog.as_array().into_iter().flatten() {
        if svc["type"] != "image" {
            continue;
        }
        for ep in svc["endpoints"].as_array().into_iter().flatten() {
            if ep["interface"].as_str() != Some(cloud.interface.as_str()) {
                continue;
            }
            let region = ep["region_id"]
                .as_str()
                .or_else(|| ep["region"].as_str())
                .unwrap_or("")
                .to_string();
            let Some(url) = ep["url"].as_str() else {
                continue;
            };
            match &cloud.region {
                Some(r) if *r != region => regions.push(region),
                _ => return Ok((url.to_string(), region)),
            }
        }
    }
    Err(CloudError::Target {
        target: format!("openstack://{}", cloud.name),
        message: match &cloud.region {
            Some(r) => format!(
                "the catalog has no {} image service in region `{r}`{}",
                cloud.interface,
                if regions.is_empty() {
                    String::new()
                } else {
                    format!(" (it has one in {})", regions.join(", "))
                }
            ),
            None => format!("the catalog has no {} image service (Glance)", cloud.interface),
        },
        hint: Some(format!(
            "set region_name of cloud `{}` in {} to a region of the cloud, or image_endpoint_override",
            cloud.name, cloud.source
        )),
    })
}

/// Glance's image ids are UUIDs; nothing else from an answer becomes part
/// of a URL.
fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// What a qcow2 header says, once it is safe to hand to a cloud: no
/// backing file, no external data file, no encryption.
pub fn check_qcow2(path: &Path) -> Result<u64, CloudError> {
    let bad = |m: String| {
        CloudError::Target {
        target: path.display().to_string(),
        message: m,
        hint: Some("publish the build's own disk.qcow2 (kiln build makes it), or its disk.raw with openstack://CLOUD?format=raw".into()),
    }
    };
    let mut h = [0u8; 512];
    let mut f = std::fs::File::open(path).map_err(|e| CloudError::Io {
        what: format!("reading {}", path.display()),
        source: e,
    })?;
    let n = f.read(&mut h).map_err(|e| CloudError::Io {
        what: format!("reading {}", path.display()),
        source: e,
    })?;
    let be32 = |o: usize| u32::from_be_bytes(h[o..o + 4].try_into().unwrap());
    let be64 = |o: usize| u64::from_be_bytes(h[o..o + 8].try_into().unwrap());
    if n < 104 || &h[..4] != b"QFI\xfb" {
        return Err(bad("not a qcow2 image".into()));
    }
    let version = be32(4);
    if version != 2 && version != 3 {
        return Err(bad(format!("qcow2 version {version} (2 or 3 expected)")));
    }
    if be64(8) != 0 || be32(16) != 0 {
        return Err(bad(
            "the qcow2 image names a backing file (it would read another file)".into(),
        ));
    }
    if !(9..=21).contains(&be32(20)) {
        return Err(bad(format!("a cluster size of 2^{} bytes", be32(20))));
    }
    if be32(32) != 0 {
        return Err(bad("the qcow2 image is encrypted".into()));
    }
    let mut ext = 72usize;
    if version == 3 {
        // Allowed: dirty (0), compression type (3), extended L2 (4); not
        // corrupt (1), an external data file (2) or unknown ones.
        if be64(72) & !0b1_1001 != 0 {
            return Err(bad(format!(
                "the qcow2 image has incompatible features {:#x} (corrupt, an external data file, or ones Kiln does not know)",
                be64(72)
            )));
        }
        ext = be32(100) as usize;
    }
    // Header extensions: none may name another file.
    while ext + 8 <= n {
        let (ty, len) = (be32(ext), be32(ext + 4) as usize);
        if ty == 0 {
            break;
        }
        if ty == 0x4441_5441 || ty == 0xE279_2ACA {
            return Err(bad(
                "the qcow2 image names an external data file or backing format".into(),
            ));
        }
        ext += 8 + len.div_ceil(8) * 8;
    }
    Ok(be64(24))
}

pub struct OpenStackImage<'a> {
    /// The file to upload: a qcow2 (`disk_format = "qcow2"`) or the raw disk.
    pub file: &'a Path,
    pub disk_format: &'a str,
    /// Its sha256 (hex), from the build's manifest.
    pub sha256: &'a str,
    /// The raw UEFI GPT disk it holds (checked before anything is sent).
    pub disk: &'a Path,
    pub name: String,
    /// Debian's architecture (`amd64`, `arm64`).
    pub architecture: &'a str,
    /// `os_version` (Debian's release, `13`).
    pub os_version: String,
    /// More properties (`kiln_image`, `kiln_build`).
    pub properties: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenStackReport {
    pub image_id: String,
    /// The catalog's region of the image service.
    pub region: String,
    /// `…/v2/images/ID`.
    pub url: String,
    /// `uploaded` or `reused`.
    pub how: &'static str,
    pub bytes_sent: u64,
    /// Images deleted: left by a cut upload, or replaced.
    pub deleted: Vec<String>,
}

/// sha256 and sha512 of a file and its length, the two hashes on two
/// threads.
fn hashes(path: &Path) -> Result<(String, String, u64), CloudError> {
    let read = |e: std::io::Error| CloudError::Io {
        what: format!("reading {}", path.display()),
        source: e,
    };
    let p = path.to_path_buf();
    let other = std::thread::spawn(move || -> std::io::Result<String> {
        let mut r = Hashing::new(std::fs::File::open(p)?, sha2::Sha512::new());
        std::io::copy(&mut r, &mut std::io::sink())?;
        Ok(r.finish().0)
    });
    let mut r = Hashing::new(
        std::fs::File::open(path).map_err(read)?,
        sha2::Sha256::new(),
    );
    std::io::copy(&mut r, &mut std::io::sink()).map_err(read)?;
    let (s256, n) = r.finish();
    let s512 = other.join().expect("the hashing thread").map_err(read)?;
    Ok((s256, s512, n))
}

/// A reader that hashes what passes through it.
struct Hashing<R, D> {
    inner: R,
    digest: D,
    n: u64,
}

impl<R: Read, D: Digest> Hashing<R, D> {
    fn new(inner: R, digest: D) -> Self {
        Hashing {
            inner,
            digest,
            n: 0,
        }
    }
    fn finish(self) -> (String, u64) {
        (hex::encode(self.digest.finalize()), self.n)
    }
}

impl<R: Read, D: Digest> Read for Hashing<R, D> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.digest.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

impl Session {
    fn call(
        &self,
        action: &str,
        method: &str,
        url: &str,
        body: Option<Value>,
    ) -> Result<Reply, CloudError> {
        call(
            &self.agent,
            self.token.as_deref(),
            &self.region,
            action,
            method,
            url,
            body.map(|b| ("application/json", serde_json::to_vec(&b).expect("JSON"))),
        )
    }

    fn list(&self, query: &str) -> Result<Vec<Value>, CloudError> {
        let r = self.call(
            "images.list",
            "GET",
            &format!("{}/images?{query}&limit=1000", self.glance),
            None,
        )?;
        if r.status != 200 {
            return Err(api("glance", "images.list", &self.region, &r));
        }
        Ok(r.json()["images"].as_array().cloned().unwrap_or_default())
    }

    fn delete(&self, id: &str) -> Result<(), CloudError> {
        let r = self.call(
            "images.delete",
            "DELETE",
            &format!("{}/images/{id}", self.glance),
            None,
        )?;
        if r.status >= 300 && r.status != 404 {
            return Err(api("glance", "images.delete", &self.region, &r));
        }
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Value, CloudError> {
        let r = self.call(
            "images.get",
            "GET",
            &format!("{}/images/{id}", self.glance),
            None,
        )?;
        if r.status != 200 {
            return Err(api("glance", "images.get", &self.region, &r));
        }
        Ok(r.json())
    }
}

/// Publishes `img` into `cloud` (see the module docs).
pub fn publish(
    cloud: &Cloud,
    img: &OpenStackImage,
    replace: bool,
    progress: &dyn Fn(&str),
) -> Result<OpenStackReport, CloudError> {
    let target = format!("openstack://{}", cloud.name);
    let arch = match img.architecture {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        a => {
            return Err(CloudError::Target {
                target,
                message: format!("Kiln publishes amd64 and arm64 images to OpenStack, not {a}"),
                hint: None,
            })
        }
    };
    // The file, checked and hashed before anything is sent.
    let uefi = kiln_image::cloud::check_uefi_disk(img.disk)?;
    if img.disk_format == "qcow2" {
        let virtual_size = check_qcow2(img.file)?;
        if virtual_size != uefi.size {
            return Err(CloudError::Target {
                target: img.file.display().to_string(),
                message: format!(
                    "the qcow2 image is {virtual_size} bytes, its disk {} bytes: it is not this disk",
                    uefi.size
                ),
                hint: Some("build again: disk.qcow2 is made from disk.raw".into()),
            });
        }
    }
    // The file is hashed while Kiln logs in.
    let file = img.file.to_path_buf();
    let hashing = std::thread::spawn(move || hashes(&file));
    let login = login(cloud);
    let (sha256, sha512, size) = hashing.join().expect("the hashing thread")?;
    let s = login?;
    if sha256 != img.sha256 {
        return Err(CloudError::Target {
            target: img.file.display().to_string(),
            message: format!(
                "its sha256 is {sha256}, the build's manifest says {}: the file changed since it was built",
                img.sha256
            ),
            hint: Some("build again, or publish the build whose manifest it is".into()),
        });
    }
    let mut deleted = Vec::new();

    // Images with this digest: reused when whole, cleaned up when left by
    // a cut upload.
    for v in s.list(&format!("kiln_sha256={}", img.sha256))? {
        // A Glance that ignores the filter lists every image.
        if v["kiln_sha256"] != img.sha256 {
            continue;
        }
        let id = v["id"].as_str().unwrap_or("");
        if !valid_id(id) {
            continue;
        }
        let status = v["status"].as_str().unwrap_or("");
        let whole = status == "active"
            && v["size"].as_u64() == Some(size)
            && v["os_hash_algo"] == "sha512"
            && v["os_hash_value"] == sha512.as_str();
        if whole && v["name"] == img.name.as_str() {
            progress(&format!("image {id} in {} has this disk already", s.region));
            return Ok(OpenStackReport {
                image_id: id.to_string(),
                region: s.region.clone(),
                url: format!("{}/images/{id}", s.glance),
                how: "reused",
                bytes_sent: 0,
                deleted,
            });
        }
        if matches!(
            status,
            "queued" | "saving" | "killed" | "uploading" | "importing"
        ) {
            progress(&format!(
                "deleting image {id}, left {status} by an upload that did not finish"
            ));
            s.delete(id)?;
            deleted.push(id.to_string());
        } else if status == "active" && !whole && !replace {
            return Err(CloudError::Target {
                target,
                message: format!(
                    "image {id} says it holds this disk (kiln_sha256 {}) but Glance's size or sha512 of its bytes is not this file's",
                    img.sha256
                ),
                hint: Some("publish with --replace to delete it and upload the disk again".into()),
            });
        } else if status == "active" && !whole {
            progress(&format!(
                "deleting image {id} (its bytes are not this disk's; --replace)"
            ));
            s.delete(id)?;
            deleted.push(id.to_string());
        }
    }
    // The name: another disk's image is refused, or replaced afterwards.
    let mut replaced = Vec::new();
    for v in s.list(&format!("name={}", crate::percent_encode(&img.name)))? {
        if v["name"] != img.name.as_str() {
            continue;
        }
        let id = v["id"].as_str().unwrap_or("").to_string();
        if !valid_id(&id) || deleted.contains(&id) {
            continue;
        }
        if !replace {
            return Err(CloudError::Target {
                target,
                message: format!(
                    "the image name `{}` is already used by image {id} with another disk (kiln_sha256 {}), not this one ({})",
                    img.name,
                    v["kiln_sha256"].as_str().unwrap_or("none"),
                    img.sha256
                ),
                hint: Some("publish with --replace to make this disk's image and delete that one once it is active".into()),
            });
        }
        replaced.push(id);
    }

    // The image.
    let mut body = json!({
        "name": img.name,
        "disk_format": img.disk_format,
        "container_format": "bare",
        "min_disk": uefi.size.div_ceil(1 << 30),
        "os_distro": "debian",
        "os_version": img.os_version,
        "os_type": "linux",
        "architecture": arch,
        "hw_firmware_type": "uefi",
        "hw_machine_type": if arch == "x86_64" { "q35" } else { "virt" },
        "hw_disk_bus": "scsi",
        "hw_scsi_model": "virtio-scsi",
        "hw_qemu_guest_agent": "yes",
        "kiln_sha256": img.sha256,
    });
    for (k, v) in &img.properties {
        body[k] = v.clone().into();
    }
    let r = s.call(
        "images.create",
        "POST",
        &format!("{}/images", s.glance),
        Some(body),
    )?;
    if r.status != 201 {
        return Err(api("glance", "images.create", &s.region, &r));
    }
    let id = r.json()["id"].as_str().unwrap_or("").to_string();
    if !valid_id(&id) {
        return Err(CloudError::Transport {
            service: "glance",
            action: "images.create".into(),
            region: s.region.clone(),
            message: format!("the answer's image id `{id:.80}` is not one"),
        });
    }
    progress(&format!(
        "uploading {} MiB ({}) to image {id} in {}",
        size >> 20,
        img.disk_format,
        s.region
    ));
    match upload(&s, &id, img, size, &sha512) {
        Ok(()) => {}
        Err(e) => {
            // Nothing half-made stays: the image goes (and if that fails
            // too, the next publish deletes it, it is queued or killed).
            let _ = s.delete(&id);
            return Err(e);
        }
    }
    for old in &replaced {
        progress(&format!("deleting image {old} (replaced; --replace)"));
        s.delete(old)?;
        deleted.push(old.clone());
    }
    Ok(OpenStackReport {
        url: format!("{}/images/{id}", s.glance),
        image_id: id,
        region: s.region.clone(),
        how: "uploaded",
        bytes_sent: size,
        deleted,
    })
}

fn upload(
    s: &Session,
    id: &str,
    img: &OpenStackImage,
    size: u64,
    sha512: &str,
) -> Result<(), CloudError> {
    let f = std::fs::File::open(img.file).map_err(|e| CloudError::Io {
        what: format!("reading {}", img.file.display()),
        source: e,
    })?;
    // What is sent is hashed again: the file must not change meanwhile.
    let mut sent = Hashing::new(f.take(size), sha2::Sha512::new());
    let url = format!("{}/images/{id}/file", s.glance);
    let mut req = http::Request::builder()
        .method("PUT")
        .uri(&url)
        .header("Content-Type", "application/octet-stream")
        .header("Content-Length", size);
    if let Some(t) = &s.token {
        req = req.header("X-Auth-Token", t);
    }
    let transport = |message: String| CloudError::Transport {
        service: "glance",
        action: "images.upload".into(),
        region: s.region.clone(),
        message,
    };
    let req = req
        .body(ureq::SendBody::from_reader(&mut sent))
        .map_err(|e| transport(format!("bad request: {e}")))?;
    let mut resp = s
        .agent
        .run(req)
        .map_err(|e| transport(format!("the upload to {url} broke off: {e}")))?;
    let r = finish(resp.status().as_u16(), &mut resp)?;
    if r.status >= 300 {
        return Err(api("glance", "images.upload", &s.region, &r));
    }
    let (s512, n) = sent.finish();
    if n != size || s512 != sha512 {
        return Err(CloudError::Target {
            target: img.file.display().to_string(),
            message: "the file changed while it was being uploaded".into(),
            hint: Some("publish again once nothing writes to the build".into()),
        });
    }
    // What Glance stored must be what was sent.
    let v = s.get(id)?;
    let stored = v["size"].as_u64();
    let (algo, value) = (v["os_hash_algo"].as_str(), v["os_hash_value"].as_str());
    let hash_ok = match algo {
        Some("sha512") => value == Some(sha512),
        Some("sha256") => value == Some(img.sha256),
        _ => true,
    };
    if v["status"] != "active" || stored != Some(size) || !hash_ok {
        return Err(CloudError::Transport {
            service: "glance",
            action: "images.upload".into(),
            region: s.region.clone(),
            message: format!(
                "image {id} is {} with {} bytes (hash {} {}), not active with the {size} bytes sent",
                v["status"].as_str().unwrap_or("?"),
                stored.map_or("no".into(), |n| n.to_string()),
                algo.unwrap_or("none"),
                value.map_or("", |v| &v[..v.len().min(16)]),
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Yaml {
        YamlLoader::load_from_str(s).unwrap().remove(0)
    }

    #[test]
    fn clouds_yaml_is_read_and_secrets_stay_out_of_prints() {
        let doc = yaml(
            "clouds:\n  lab:\n    auth:\n      auth_url: https://keystone.example:5000\n      username: u\n      project_id: 42\n    region_name: R2\n    interface: publicURL\n",
        );
        let secure = yaml("clouds:\n  lab:\n    auth:\n      password: hunter2\n");
        let c = cloud_from(&doc, Some(&secure), "lab", "x.yaml").unwrap();
        assert_eq!(c.region.as_deref(), Some("R2"));
        assert_eq!(c.interface, "public");
        assert!(!format!("{c:?}").contains("hunter2"));
        let req = auth_request(&c).unwrap();
        assert_eq!(
            req["auth"]["identity"]["password"]["user"]["password"],
            "hunter2"
        );
        assert_eq!(req["auth"]["scope"]["project"]["id"], "42");
        let e = cloud_from(&doc, None, "prod", "x.yaml").unwrap_err();
        assert!(e.to_string().contains("no cloud `prod`"), "{e}");
        assert!(e.hint().unwrap().contains("lab"));
        let e = auth_request(&cloud_from(&doc, None, "lab", "x.yaml").unwrap()).unwrap_err();
        assert!(e.to_string().contains("auth.password"), "{e}");
        for bad in ["clouds: [1, 2]\n", "x: 1\n"] {
            assert!(cloud_from(&yaml(bad), None, "lab", "x.yaml").is_err());
        }
        assert_eq!(keystone_v3("http://k:5000/"), "http://k:5000/v3");
        assert_eq!(keystone_v3("http://k:5000/v3"), "http://k:5000/v3");
        assert_eq!(glance_v2("http://g:9292/v2/"), "http://g:9292/v2");
        assert!(
            valid_cloud_name("my-cloud_1.lab")
                && !valid_cloud_name("../x")
                && !valid_cloud_name("")
        );
        assert!(valid_id("a2c5b8d3-9a7a-4446-8c65-8da1033b235f") && !valid_id("../../x"));
    }

    #[test]
    fn qcow2_headers_that_read_other_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&(64u64 << 20).to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        let p = dir.path().join("x.qcow2");
        std::fs::write(&p, &h).unwrap();
        assert_eq!(check_qcow2(&p).unwrap(), 64 << 20);
        let mut b = h.clone();
        b[8..16].copy_from_slice(&512u64.to_be_bytes());
        b[16..20].copy_from_slice(&10u32.to_be_bytes());
        std::fs::write(&p, &b).unwrap();
        assert!(check_qcow2(&p)
            .unwrap_err()
            .to_string()
            .contains("backing file"));
        let mut b = h.clone();
        b[72..80].copy_from_slice(&4u64.to_be_bytes());
        std::fs::write(&p, &b).unwrap();
        assert!(check_qcow2(&p)
            .unwrap_err()
            .to_string()
            .contains("external data file"));
        let mut b = h.clone();
        b[112..116].copy_from_slice(&0x4441_5441u32.to_be_bytes());
        b[116..120].copy_from_slice(&8u32.to_be_bytes());
        std::fs::write(&p, &b).unwrap();
        assert!(check_qcow2(&p).is_err());
        std::fs::write(&p, b"not a disk").unwrap();
        assert!(check_qcow2(&p)
            .unwrap_err()
            .to_string()
            .contains("not a qcow2"));
    }
}

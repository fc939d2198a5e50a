//! Test support: real `docker-registry` processes, skopeo, small OCI
//! layouts, and a minimal loopback HTTP server for fakes.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const MANIFEST_V1: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_V1: &str = "application/vnd.oci.image.index.v1+json";
pub const CONFIG_V1: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub fn need(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is needed by these tests: apt-get install docker-registry skopeo apache2-utils openssl \
         (missing package: {package})"
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

// ---------------------------------------------------------------------------
// A real registry.

/// How the registry authenticates.
pub enum RegistryAuth {
    None,
    /// Basic authentication against a bcrypt htpasswd file.
    Htpasswd {
        user: String,
        password: String,
    },
    /// Bearer tokens signed by `key_dir/cert.pem`'s key.
    Token {
        realm: String,
        service: String,
        issuer: String,
        cert: PathBuf,
    },
}

/// A `docker-registry serve` process on 127.0.0.1, killed on drop.
pub struct Registry {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Registry {
    pub fn start(auth: RegistryAuth) -> Registry {
        need("docker-registry", "docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let auth_yaml = match auth {
            RegistryAuth::None => String::new(),
            RegistryAuth::Htpasswd { user, password } => {
                need("htpasswd", "apache2-utils");
                let out = Command::new("htpasswd")
                    .args(["-nbB", &user, &password])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "htpasswd failed");
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, &out.stdout).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                    file.display()
                )
            }
            RegistryAuth::Token {
                realm,
                service,
                issuer,
                cert,
            } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                cert.display()
            ),
        };
        let config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: kiln-test-secret\n\
             {auth_yaml}",
            dir.path().join("storage").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let mut r = Registry {
            port,
            dir,
            child: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("registry.log"))
            .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("docker-registry exited with {st}: {}", self.log());
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                // Accepting connections is not enough: wait for an answer.
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn reference(&self, repo_tag: &str) -> kiln_registry::Reference {
        kiln_registry::Reference::parse(&format!("{}/{repo_tag}", self.host())).unwrap()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts on the same port with the same storage.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Digests of the blobs the registry stores.
    pub fn stored_blobs(&self) -> Vec<String> {
        let root = self
            .dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256");
        let mut out = Vec::new();
        for prefix in std::fs::read_dir(root).into_iter().flatten().flatten() {
            for b in std::fs::read_dir(prefix.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if b.path().join("data").is_file() {
                    out.push(format!("sha256:{}", b.file_name().to_string_lossy()));
                }
            }
        }
        out
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// skopeo.

pub fn skopeo(args: &[&str]) -> Output {
    need("skopeo", "skopeo");
    Command::new("skopeo")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running skopeo")
}

/// `skopeo inspect --raw`: the manifest bytes the registry serves for
/// `repo:tag`, or skopeo's error.
pub fn skopeo_raw(host: &str, repo_tag: &str, creds: Option<&str>) -> Result<Vec<u8>, String> {
    let image = format!("docker://{host}/{repo_tag}");
    let mut args = vec!["inspect", "--tls-verify=false", "--raw"];
    if let Some(c) = creds {
        args.extend(["--creds", c]);
    }
    args.push(&image);
    let out = skopeo(&args);
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `skopeo copy` from the registry into an OCI layout at `dest`.
pub fn skopeo_copy_to_oci(host: &str, repo_tag: &str, dest: &Path) {
    let policy = dest.with_extension("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let out = skopeo(&[
        "copy",
        "--policy",
        policy.to_str().unwrap(),
        "--src-tls-verify=false",
        &format!("docker://{host}/{repo_tag}"),
        &format!("oci:{}:copied", dest.display()),
    ]);
    assert!(
        out.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// OCI layouts.

/// Writes `bytes` as a blob of the layout; returns its descriptor.
pub fn write_blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Value {
    let digest = sha256(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&digest[7..]), bytes).unwrap();
    json!({ "mediaType": media_type, "digest": digest, "size": bytes.len() })
}

pub fn blob_path(layout: &Path, desc: &Value) -> PathBuf {
    let d = desc["digest"].as_str().unwrap();
    layout.join("blobs/sha256").join(&d[7..])
}

/// A gzipped tar holding one file whose content is `seed`.
fn layer(seed: &str) -> (Vec<u8>, String) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(seed.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    tar.append_data(&mut h, "hello.txt", seed.as_bytes())
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let diff_id = sha256(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), diff_id)
}

/// Writes a one-layer image for `arch`; returns the manifest descriptor.
pub fn write_image(layout: &Path, arch: &str, seed: &str) -> Value {
    let (layer, diff_id) = layer(seed);
    let layer = write_blob(layout, LAYER_GZIP, &layer);
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "config": { "Cmd": ["/bin/true"] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    });
    let config = write_blob(layout, CONFIG_V1, &serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_V1,
        "config": config,
        "layers": [layer],
    });
    write_blob(layout, MANIFEST_V1, &serde_json::to_vec(&manifest).unwrap())
}

pub fn with_ref_name(desc: &Value, name: &str) -> Value {
    let mut d = desc.clone();
    d["annotations"] = json!({ "org.opencontainers.image.ref.name": name });
    d
}

pub fn with_platform(desc: &Value, arch: &str) -> Value {
    let mut d = desc.clone();
    d["platform"] = json!({ "architecture": arch, "os": "linux" });
    d
}

pub fn write_index_json(layout: &Path, entries: Vec<Value>) {
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = json!({ "schemaVersion": 2, "mediaType": INDEX_V1, "manifests": entries });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

/// A one-image layout listed under the tags "1.0" and "latest"; returns the
/// manifest descriptor.
pub fn single_image_layout(layout: &Path, seed: &str) -> Value {
    let m = write_image(layout, "amd64", seed);
    write_index_json(
        layout,
        vec![with_ref_name(&m, "1.0"), with_ref_name(&m, "latest")],
    );
    m
}

/// A two-platform layout the way Kiln writes it: an image index blob listed
/// in index.json; returns the index descriptor.
pub fn multi_arch_layout(layout: &Path, seed: &str) -> Value {
    let amd = write_image(layout, "amd64", &format!("{seed} amd64"));
    let arm = write_image(layout, "arm64", &format!("{seed} arm64"));
    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_V1,
        "manifests": [with_platform(&amd, "amd64"), with_platform(&arm, "arm64")],
    });
    let index = write_blob(layout, INDEX_V1, &serde_json::to_vec(&index).unwrap());
    write_index_json(
        layout,
        vec![
            with_ref_name(&index, "1.0"),
            with_ref_name(&index, "latest"),
            // Each platform by name too, for umoci.
            with_ref_name(&with_platform(&amd, "amd64"), "1.0-amd64"),
            with_ref_name(&with_platform(&arm, "arm64"), "1.0-arm64"),
        ],
    );
    index
}

pub fn collect_progress() -> (Arc<Mutex<Vec<String>>>, impl Fn(&str)) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    (lines, move |s: &str| l.lock().unwrap().push(s.to_string()))
}

// ---------------------------------------------------------------------------
// A minimal HTTP/1.1 server on loopback: one request per connection.

pub struct Request {
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Lowercased names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap()
    }
    pub fn query(&self, key: &str) -> Vec<String> {
        let q = self.target.split_once('?').map_or("", |(_, q)| q);
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| percent_decode(v))
            .collect()
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Close the connection without answering.
    pub drop_connection: bool,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            drop_connection: false,
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Response {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn body(mut self, b: impl Into<Vec<u8>>) -> Response {
        self.body = b.into();
        self
    }
    pub fn dropped() -> Response {
        Response {
            drop_connection: true,
            ..Response::new(0)
        }
    }
}

pub struct Server {
    pub port: u16,
    /// "METHOD target" of every request, in order.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler = Arc::new(handler);
        let l = log.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let handler = handler.clone();
                let log = l.clone();
                std::thread::spawn(move || serve(conn, &*handler, &log));
            }
        });
        Server { port, log }
    }

    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn serve(conn: TcpStream, handler: &dyn Fn(&Request) -> Response, log: &Mutex<Vec<String>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    log.lock().unwrap().push(format!("{method} {target}"));
    let req = Request {
        method,
        target,
        headers,
        body,
    };
    let resp = handler(&req);
    if resp.drop_connection {
        let _ = conn.shutdown(std::net::Shutdown::Both);
        return;
    }
    let mut out = format!("HTTP/1.1 {} X\r\n", resp.status);
    for (k, v) in &resp.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        if req.method == "HEAD" {
            0
        } else {
            resp.body.len()
        }
    ));
    let mut conn = conn;
    let _ = conn.write_all(out.as_bytes());
    if req.method != "HEAD" {
        let _ = conn.write_all(&resp.body);
    }
    let _ = conn.flush();
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An in-memory registry speaking just enough of the distribution API for
/// the push client: what tests wrap to inject faults.
#[derive(Default)]
pub struct FakeRegistry {
    pub blobs: Mutex<HashMap<String, Vec<u8>>>,
    pub manifests: Mutex<HashMap<String, Vec<u8>>>,
    uploads: Mutex<u32>,
}

impl FakeRegistry {
    /// Answers `req`; upload locations are relative paths with a query.
    pub fn handle(&self, req: &Request) -> Response {
        let path = req.path();
        if path == "/v2/" {
            return Response::new(200);
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return Response::new(404);
        };
        if let Some((repo, digest)) = rest.split_once("/blobs/sha256:") {
            let _ = repo;
            let digest = format!("sha256:{digest}");
            return if self.blobs.lock().unwrap().contains_key(&digest) {
                Response::new(200).header("Docker-Content-Digest", &digest)
            } else {
                Response::new(404)
            };
        }
        if let Some(repo) = rest.strip_suffix("/blobs/uploads/") {
            let mut n = self.uploads.lock().unwrap();
            *n += 1;
            return Response::new(202).header(
                "Location",
                &format!("/v2/{repo}/blobs/uploads/u{n}?_state=opaque"),
            );
        }
        if rest.contains("/blobs/uploads/u") && req.method == "PUT" {
            let digest = req.query("digest").pop().unwrap_or_default();
            if req.query("_state") != ["opaque"] {
                return Response::new(400).body("lost _state");
            }
            if sha256(&req.body) != digest {
                return Response::new(400)
                    .body(r#"{"errors":[{"code":"DIGEST_INVALID","message":"provided digest did not match uploaded content"}]}"#);
            }
            self.blobs
                .lock()
                .unwrap()
                .insert(digest.clone(), req.body.clone());
            return Response::new(201).header("Docker-Content-Digest", &digest);
        }
        if let Some((_, reference)) = rest.split_once("/manifests/") {
            if req.method == "PUT" {
                let digest = sha256(&req.body);
                self.manifests
                    .lock()
                    .unwrap()
                    .insert(reference.to_string(), req.body.clone());
                return Response::new(201).header("Docker-Content-Digest", &digest);
            }
        }
        Response::new(404)
    }
}

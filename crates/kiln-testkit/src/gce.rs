//! Google Cloud stand-ins for the tests: the Cloud Storage emulator (PyPI
//! `gcp-storage-emulator`) on loopback, read back with plain HTTP from
//! Python, and a Compute API recorder (no emulator implements
//! `images.insert`): images by name, operations done at once, every
//! request kept for the test to check.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Gcs {
    child: Child,
    pub port: u16,
}

impl Drop for Gcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the emulator with the bucket `bucket`.
pub fn gcs(bucket: &str) -> Gcs {
    let port = free_port();
    let child = Command::new("python3")
        .args([
            "-m",
            "gcp_storage_emulator",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--in-memory",
            "--default-bucket",
            bucket,
            "-q",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs");
    let g = Gcs { child, port };
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the GCS emulator did not start: pip install gcp-storage-emulator (.ci/run does)"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    g
}

/// The object's metadata and the sha256 of its content, as plain HTTP
/// from Python reads them; null when there is none.
pub fn object(port: u16, bucket: &str, name: &str) -> serde_json::Value {
    let script = r#"
import hashlib, json, sys, urllib.request, urllib.error, urllib.parse
base = f"http://127.0.0.1:{sys.argv[1]}/storage/v1/b/{sys.argv[2]}/o/" + urllib.parse.quote(sys.argv[3], safe="")
try:
    meta = json.load(urllib.request.urlopen(base))
except urllib.error.HTTPError as e:
    print("null"); sys.exit(0)
data = urllib.request.urlopen(base + "?alt=media").read()
print(json.dumps({"metadata": meta.get("metadata", {}), "size": int(meta["size"]), "sha256": hashlib.sha256(data).hexdigest()}))
"#;
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(port.to_string())
        .arg(bucket)
        .arg(name)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A Compute API stand-in: images by name, operations that are done at
/// once; every request recorded (method, path, authorization, body).
/// One recorded request: (method, path, authorization, body).
pub type Recorded = (String, String, String, String);

pub struct ComputeApi {
    pub port: u16,
    /// (method, path, authorization, body) of every request.
    pub requests: Arc<Mutex<Vec<Recorded>>>,
}

/// A Compute API stand-in for `project`.
pub fn compute_api(project: &str) -> ComputeApi {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let images: Arc<Mutex<HashMap<String, serde_json::Value>>> = Arc::default();
    let rec = requests.clone();
    let project = project.to_string();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (method, path) = (
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("").to_string(),
            );
            let (mut len, mut auth) = (0usize, String::new());
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap_or((h, ""));
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "authorization" => auth = v.trim().to_string(),
                    _ => {}
                }
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).unwrap();
            let body = String::from_utf8_lossy(&body).into_owned();
            rec.lock()
                .unwrap()
                .push((method.clone(), path.clone(), auth, body.clone()));
            let prefix = format!("/compute/v1/projects/{project}/global/");
            let rest = path.strip_prefix(&prefix).unwrap_or("");
            let mut imgs = images.lock().unwrap();
            let (status, answer) = match (method.as_str(), rest.split_once('/')) {
                ("GET", Some(("images", name))) => match imgs.get(name) {
                    Some(v) => (200, v.clone()),
                    None => (
                        404,
                        serde_json::json!({"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}),
                    ),
                },
                ("DELETE", Some(("images", name))) => {
                    imgs.remove(name);
                    (
                        200,
                        serde_json::json!({"name": "operation-del", "status": "DONE"}),
                    )
                }
                ("POST", None) if rest == "images" => {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                    let mut stored = v.clone();
                    stored["status"] = "READY".into();
                    imgs.insert(v["name"].as_str().unwrap().to_string(), stored);
                    (
                        200,
                        serde_json::json!({"name": "operation-ins", "status": "RUNNING"}),
                    )
                }
                ("GET", Some(("operations", name))) => {
                    (200, serde_json::json!({"name": name, "status": "DONE"}))
                }
                _ => (400, serde_json::json!({"error": {"message": "unexpected"}})),
            };
            let text = answer.to_string();
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
            let _ = s.shutdown(Shutdown::Both);
        }
    });
    ComputeApi { port, requests }
}

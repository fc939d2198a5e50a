//! Google Cloud stand-ins for the tests: the Cloud Storage emulator (PyPI
//! `gcp-storage-emulator`) on loopback, read back with plain HTTP from
//! Python, and a Compute API recorder (no emulator implements
//! `images.insert`): images by name, operations done at once, every
//! request kept for the test to check.

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
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

/// One recorded request: (method, path, authorization, body).
pub use crate::Recorded;

/// A Compute API stand-in: images by name, operations that are done at
/// once; every request recorded.
pub type ComputeApi = crate::Recorder;

/// A Compute API stand-in for `project`.
pub fn compute_api(project: &str) -> ComputeApi {
    let images: Mutex<HashMap<String, serde_json::Value>> = Mutex::default();
    let prefix = format!("/compute/v1/projects/{project}/global/");
    crate::recording_server(move |method, path, _auth, body| {
        let rest = path.strip_prefix(&prefix).unwrap_or("");
        let mut imgs = images.lock().unwrap();
        match (method, rest.split_once('/')) {
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
                let v: serde_json::Value = serde_json::from_str(body).unwrap();
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
        }
    })
}

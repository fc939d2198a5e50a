//! Azurite (npm `azurite`), the Azure Storage emulator: its blob service
//! started on loopback for one test, what it holds read back with the
//! Azure SDK for Python (`azure-storage-blob`), not with Kiln.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Azurite's well-known development account (published by Microsoft).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub struct Azurite {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Azurite {
    pub fn start() -> Azurite {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("azurite-blob")
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--silent",
                "--skipApiVersionCheck",
                "--location",
            ])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("azurite-blob runs: install it with `npm install -g azurite` (.ci/run does)");
        let a = Azurite {
            child,
            port,
            _dir: dir,
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "azurite did not start"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        a
    }

    /// The connection string of the development account here.
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint=http://127.0.0.1:{}/{ACCOUNT};",
            self.port
        )
    }

    /// Writes a 1 KiB block blob `name` the way another tool would (no
    /// metadata), creating the container.
    pub fn put_foreign_blob(&self, container: &str, name: &str) {
        let script = r#"
import sys
from azure.storage.blob import BlobServiceClient
svc = BlobServiceClient.from_connection_string(sys.argv[1])
c = svc.get_container_client(sys.argv[2])
if not c.exists():
    c.create_container()
c.upload_blob(sys.argv[3], b"x" * 1024, overwrite=True)
"#;
        let o = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(self.connection_string())
            .arg(container)
            .arg(name)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    /// The blobs of `container`: name → `{type, size, metadata, sha256}`
    /// (the sha256 of the content as downloaded).
    pub fn blobs(&self, container: &str) -> serde_json::Value {
        let script = r#"
import hashlib, json, sys
from azure.storage.blob import BlobServiceClient
svc = BlobServiceClient.from_connection_string(sys.argv[1])
c = svc.get_container_client(sys.argv[2])
out = {}
if c.exists():
    for b in c.list_blobs(include=["metadata"]):
        data = c.download_blob(b.name).readall()
        out[b.name] = {"type": str(b.blob_type), "size": b.size, "metadata": b.metadata or {},
                       "sha256": hashlib.sha256(data).hexdigest()}
print(json.dumps(out))
"#;
        let o = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(self.connection_string())
            .arg(container)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }
}

/// The token the Resource Manager stand-in hands out and accepts.
pub const ARM_TOKEN: &str = "arm-test-token-never-shown";

/// A stand-in for Microsoft Entra ID's token endpoint (tenant `tenant`,
/// client secret `secret`) and Resource Manager's managed images, which
/// no emulator has: an image is `Creating` at its first read after the
/// PUT, then `Succeeded`; a PUT to a region not in `locations` is refused
/// as Azure refuses it, and so is the resource group `missing-rg`.
pub fn arm(tenant: &str, secret: &str, locations: &[&str]) -> crate::Recorder {
    use serde_json::{json, Value};
    let images: std::sync::Mutex<std::collections::HashMap<String, (Value, u32)>> =
        Default::default();
    let token_path = format!("/{tenant}/oauth2/v2.0/token");
    let secret = format!("client_secret={secret}");
    let locations: Vec<String> = locations.iter().map(|l| l.to_string()).collect();
    crate::recording_server(move |method, path, auth, body| {
        let p = path.split('?').next().unwrap_or("");
        if method == "POST" && p == token_path {
            return if body.split('&').any(|kv| kv == secret) {
                (
                    200,
                    json!({"token_type": "Bearer", "expires_in": 3599, "access_token": ARM_TOKEN}),
                )
            } else {
                (
                    401,
                    json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}),
                )
            };
        }
        if auth != format!("Bearer {ARM_TOKEN}") {
            return (
                401,
                json!({"error": {"code": "InvalidAuthenticationToken", "message": "The access token is invalid."}}),
            );
        }
        if p.contains("/resourceGroups/missing-rg/") {
            return (
                404,
                json!({"error": {"code": "ResourceGroupNotFound", "message": "Resource group 'missing-rg' could not be found."}}),
            );
        }
        let mut imgs = images.lock().unwrap();
        match method {
            "GET" => match imgs.get_mut(p) {
                Some((v, reads)) => {
                    *reads += 1;
                    if *reads > 1 {
                        v["properties"]["provisioningState"] = "Succeeded".into();
                    }
                    (200, v.clone())
                }
                None => (
                    404,
                    json!({"error": {"code": "ResourceNotFound", "message": "not found"}}),
                ),
            },
            "PUT" => {
                let mut v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                if !locations.iter().any(|l| v["location"] == l.as_str()) {
                    return (
                        400,
                        json!({"error": {"code": "LocationNotAvailableForResourceType", "message": "The provided location is not available for resource type 'Microsoft.Compute/images'."}}),
                    );
                }
                v["id"] = p.into();
                v["properties"]["provisioningState"] = "Creating".into();
                imgs.insert(p.to_string(), (v.clone(), 0));
                (201, v)
            }
            "DELETE" => {
                imgs.remove(p);
                (202, json!({}))
            }
            _ => (
                400,
                json!({"error": {"code": "Unexpected", "message": method}}),
            ),
        }
    })
}

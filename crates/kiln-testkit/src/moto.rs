//! moto in server mode (PyPI `moto[server]`), the AWS emulator: started on
//! loopback for one test, its state read back with boto3 (not with Kiln).

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts moto on a free loopback port and waits until it answers.
    pub fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs");
        let m = Moto { child, port };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "moto did not start: install it with `pip install 'moto[server]'` (.ci/run does)"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        m
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The account's images (`{id, name, tags}`) and snapshots (`{id,
    /// state, tags}`) per region, as boto3 reads them.
    pub fn state(&self, regions: &[&str]) -> serde_json::Value {
        let script = r#"
import boto3, json, sys
port, regions = sys.argv[1], sys.argv[2:]
out = {}
for r in regions:
    ec2 = boto3.client("ec2", region_name=r, endpoint_url=f"http://127.0.0.1:{port}",
                       aws_access_key_id="x", aws_secret_access_key="y")
    out[r] = {
        "images": [{"id": i["ImageId"], "name": i.get("Name"),
                    "tags": {t["Key"]: t["Value"] for t in i.get("Tags", [])}}
                   for i in ec2.describe_images(Owners=["self"])["Images"]],
        "snapshots": [{"id": s["SnapshotId"], "state": s["State"],
                       "tags": {t["Key"]: t["Value"] for t in s.get("Tags", [])}}
                      for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]],
    }
print(json.dumps(out))
"#;
        // Whatever AWS settings a test gives Kiln are not boto3's.
        let o = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(self.port.to_string())
            .args(regions)
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SHARED_CREDENTIALS_FILE")
            .env_remove("AWS_CONFIG_FILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// The images of `region` tagged `kiln:sha256` = `sha`.
    pub fn images_tagged(
        state: &serde_json::Value,
        region: &str,
        sha: &str,
    ) -> Vec<serde_json::Value> {
        state[region]["images"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["tags"]["kiln:sha256"] == sha)
            .cloned()
            .collect()
    }
}

//! Shared fixtures: a catalog of fake builds recorded through the real
//! catalog, the real finder server, a static file server for exports and a
//! raw HTTP client.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kiln_catalog::{Catalog, Publication};

/// An image name and version a hostile recipe could carry.
pub const HOSTILE_NAME: &str = "evil<script>window.__pwned=1</script>\"'&amp;";
pub const HOSTILE_VERSION: &str = "1\"><img src=x onerror=\"window.__pwned=2\">";
/// web 1's AMIs (kiln publish --to aws://eu-west-1,us-east-1).
pub const WEB1_AMI_EU: &str = "ami-0e1e1e1e1e1e1e1e1";
pub const WEB1_AMI_US: &str = "ami-0a5a5a5a5a5a5a5a5";
pub const WEB_V2_DIGEST: &str =
    "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

pub struct Build<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub suite: &'a str,
    pub arch: &'a str,
    pub distroless: bool,
    pub epoch: i64,
    pub packages: &'a [(&'a str, &'a str)],
    pub formats: &'a [&'a str],
}

/// A build output directory with a valid manifest.
pub fn build_dir(root: &Path, b: &Build) -> PathBuf {
    let dir = root.join(format!("build-{}", b.epoch));
    std::fs::create_dir_all(&dir).unwrap();
    let pk: Vec<_> = b
        .packages
        .iter()
        .map(|(n, v)| {
            serde_json::json!({"name": n, "version": v, "architecture": b.arch, "target": b.arch,
                "source": n, "source-version": v, "sha256": "0".repeat(64)})
        })
        .collect();
    let outputs: Vec<_> = b
        .formats
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let path = match *f {
                "tar" => "rootfs.tar",
                "oci" => "oci",
                "disk" => "disk.raw",
                _ => "disk.qcow2",
            };
            serde_json::json!({"path": path, "format": f, "architecture": b.arch,
                "size": 1000 * (i as u64 + 1), "sha256": format!("{:x}", i + 10).repeat(64)})
        })
        .collect();
    let m = serde_json::json!({
        "schema-version": 1, "image": b.name, "version": b.version, "suite": b.suite,
        "architectures": [b.arch], "distroless": b.distroless, "source-date-epoch": b.epoch,
        "lock": {"path": "../x.lock", "recipe-sha256": "1".repeat(64)},
        "packages": pk, "outputs": outputs,
        "disk": {}, "tests": [], "users": [], "generator": "kiln test"
    });
    std::fs::write(dir.join("manifest.json"), m.to_string()).unwrap();
    dir
}

/// A catalog with:
/// - `web` 1 (2025-01-01, openssl 3.5.1-1, curl, tar, tests passed, a registry tag),
/// - `web` 2 (2025-02-19, openssl 3.5.4-1~deb13u1, tar+oci, a registry digest and a tree),
/// - `db` 7 (bookworm, arm64, distroless, openssl 3.5.10-1, oci, tests failed),
/// - `tiny` 0.1 (disk+qcow2, no openssl),
/// - a hostile name and version (openssl 3.0.0-1, tar).
pub fn catalog(root: &Path) -> PathBuf {
    let path = root.join("catalog.sqlite");
    let mut c = Catalog::open(&path).unwrap();
    let builds = root.join("builds");
    let web1 = build_dir(
        &builds,
        &Build {
            name: "web",
            version: "1",
            suite: "trixie",
            arch: "amd64",
            distroless: false,
            epoch: 1_735_689_600,
            packages: &[("openssl", "3.5.1-1"), ("curl", "8.11.1-1")],
            formats: &["tar"],
        },
    );
    let web2 = build_dir(
        &builds,
        &Build {
            name: "web",
            version: "2",
            suite: "trixie",
            arch: "amd64",
            distroless: false,
            epoch: 1_740_000_000,
            packages: &[("openssl", "3.5.4-1~deb13u1"), ("curl", "8.14.1-2")],
            formats: &["tar", "oci"],
        },
    );
    let db = build_dir(
        &builds,
        &Build {
            name: "db",
            version: "7",
            suite: "bookworm",
            arch: "arm64",
            distroless: true,
            epoch: 1_738_000_000,
            packages: &[("openssl", "3.5.10-1"), ("libc6", "2.36-9")],
            formats: &["oci"],
        },
    );
    let tiny = build_dir(
        &builds,
        &Build {
            name: "tiny",
            version: "0.1",
            suite: "trixie",
            arch: "amd64",
            distroless: false,
            epoch: 1_730_000_000,
            packages: &[("libc6", "2.41-12")],
            formats: &["disk", "qcow2"],
        },
    );
    let evil = build_dir(
        &builds,
        &Build {
            name: HOSTILE_NAME,
            version: HOSTILE_VERSION,
            suite: "trixie",
            arch: "amd64",
            distroless: false,
            epoch: 1_720_000_000,
            packages: &[("openssl", "3.0.0-1")],
            formats: &["tar"],
        },
    );
    for d in [&web1, &web2, &db, &tiny, &evil] {
        assert!(c.record_build(d).unwrap());
    }
    let report = root.join("report.xml");
    c.record_test(&web1, "rootfs.tar", true, 3.5, &report)
        .unwrap();
    c.record_test(&db, "oci", false, 9.0, &report).unwrap();
    let publication = |kind: &str, target: &str, location: &str, digest: &str| Publication {
        target: target.into(),
        kind: kind.into(),
        location: location.into(),
        digest: Some(digest.into()),
        channel: (kind == "tree").then(|| "stable".into()),
        published_at: 0,
        region: None,
    };
    c.record_publication(
        &web1,
        &publication(
            "registry",
            "registry.example:5000/web",
            "registry.example:5000/web:1",
            &format!("sha256:{}", "a".repeat(64)),
        ),
    )
    .unwrap();
    c.record_publication(
        &web2,
        &publication(
            "registry",
            "registry.example:5000/web",
            &format!("registry.example:5000/web@{WEB_V2_DIGEST}"),
            WEB_V2_DIGEST,
        ),
    )
    .unwrap();
    // web 1 as an AMI in two regions.
    for (region, ami) in [("eu-west-1", WEB1_AMI_EU), ("us-east-1", WEB1_AMI_US)] {
        let mut p = publication(
            "aws",
            &format!("aws://{region}"),
            ami,
            &format!("sha256:{}", "d".repeat(64)),
        );
        p.region = Some(region.into());
        c.record_publication(&web1, &p).unwrap();
    }
    c.record_publication(
        &web2,
        &publication(
            "tree",
            "file:///srv/images",
            "/srv/images/channels/stable.json",
            &"c".repeat(64),
        ),
    )
    .unwrap();
    // The watch found web 1 behind, and its rebuild made web 2 (published
    // 3 h after the fix's Release); web 2 was not checked since.
    c.record_watch(
        &manifest_sha256(&web1),
        &kiln_catalog::WatchState {
            status: "security".into(),
            updates: 2,
            security: 1,
            cves: vec![WEB1_CVE.into()],
            detail: "[]".into(),
            checked_at: 1_740_000_000,
        },
    )
    .unwrap();
    c.record_rebuild(&kiln_catalog::Rebuild {
        image: "web".into(),
        from_manifest: Some(manifest_sha256(&web1)),
        to_manifest: Some(manifest_sha256(&web2)),
        outcome: "published".into(),
        packages: vec![kiln_catalog::RebuildPackage {
            package: "openssl".into(),
            architecture: "amd64".into(),
            from: Some("3.5.1-1".into()),
            to: Some("3.5.4-1~deb13u1".into()),
            suite: Some("trixie-security".into()),
            security: true,
        }],
        cves: vec![WEB1_CVE.into()],
        release_date: Some(1_740_000_000 - 3 * 3600),
        output: web2.display().to_string(),
        error: None,
        started_at: 1_739_999_900,
        finished_at: 1_740_000_000,
        published_at: Some(1_740_000_000),
    })
    .unwrap();
    // web 2 is released: to every machine of stable (a barrier), and
    // paused at 25% in beta.
    for (channel, start, duration, paused, barrier) in [
        ("stable", 10_000, 0, false, true),
        ("beta", 2_500, 3_600, true, false),
    ] {
        let mut r = kiln_model::rollout::Rollout::new(channel);
        r.releases.push(kiln_model::rollout::Release {
            image: "web".into(),
            version: "2".into(),
            since: 1_740_000_000,
            start,
            duration,
            paused,
            barrier,
        });
        c.record_rollout("/srv/images", &r).unwrap();
    }
    path
}

/// The CVE the catalog's watch found web 1 lacking the fix of.
pub const WEB1_CVE: &str = "CVE-2026-1111";

fn manifest_sha256(dir: &Path) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(dir.join("manifest.json")).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The finder served on a free loopback port until dropped.
pub struct Finder {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), kiln_serve::ServeError>>>,
}

impl Finder {
    pub fn start(catalog: &Path) -> Finder {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn({
            let (catalog, stop) = (catalog.to_path_buf(), stop.clone());
            move || kiln_serve::serve(&catalog, "127.0.0.1:0", &|a| tx.send(a).unwrap(), &stop)
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the finder did not start listening within 30 s");
        Finder {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Finder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let r = t.join().expect("the server thread panicked");
            if !std::thread::panicking() {
                r.expect("serve returned an error");
            }
        }
    }
}

/// A response read whole from a raw connection.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Sends `request` as is and reads the answer until the server closes.
pub fn raw(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The server may answer (and close) before taking everything.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse_reply(&out)
}

pub fn parse_reply(out: &[u8]) -> Reply {
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {:?}", String::from_utf8_lossy(out)));
    let head = String::from_utf8_lossy(&out[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    Reply {
        status,
        head,
        body: out[end + 4..].to_vec(),
    }
}

pub fn get(addr: SocketAddr, target: &str) -> Reply {
    raw(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )
}

/// A static file server for an exported finder, like any web server a
/// download tree sits on: files only, with content types.
pub struct StaticServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StaticServer {
    pub fn start(root: &Path) -> StaticServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (root, stop) = (root.to_path_buf(), stop.clone());
            move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let root = root.clone();
                            std::thread::spawn(move || serve_file(s, &root));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }
        });
        StaticServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_file(mut s: TcpStream, root: &Path) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&b[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.split(' ').nth(1).unwrap_or("/");
    let path = target.split(['?', '#']).next().unwrap_or("/");
    let mut rel = path.trim_start_matches('/').to_string();
    if rel.is_empty() || rel.ends_with('/') {
        rel += "index.html";
    }
    let file = root.join(&rel);
    let ok = !rel.split('/').any(|c| c == "..") && file.is_file();
    let (status, ctype, body) = if ok {
        let ctype = if rel.ends_with(".html") {
            "text/html; charset=utf-8"
        } else if rel.ends_with(".json") {
            "application/json"
        } else {
            "application/octet-stream"
        };
        ("200 OK", ctype, std::fs::read(&file).unwrap_or_default())
    } else {
        ("404 Not Found", "text/plain", b"not found".to_vec())
    };
    let _ = s.write_all(
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let _ = s.write_all(&body);
}

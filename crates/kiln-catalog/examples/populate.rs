//! For bench/catalog.sh: fills a catalog with generated image versions, and
//! times recording one more.
//!
//!   populate CATALOG N PACKAGES [MANIFEST_DIR]   N versions of PACKAGES packages each
//!   populate CATALOG --record PACKAGES RUNS      median ms to record a new version
//!
//! CATALOG is a file or a postgres:// URL. Every 100th version has the
//! package `rare`; every version has `openssl` at one of four versions.
//! With MANIFEST_DIR, each manifest is also written there (for the
//! file-scanning peer).

use std::path::Path;
use std::time::Instant;

use kiln_catalog::{Catalog, Publication};

fn manifest(i: usize, packages: usize) -> Vec<u8> {
    let openssl = ["3.5.1-1", "3.5.4-1~deb13u1", "3.5.4-1", "3.5.10-1"][i % 4];
    let mut pk: Vec<serde_json::Value> = (0..packages.saturating_sub(2))
        .map(|k| {
            let v = format!("{}.{}-{}", k % 7, i % 13, k % 3);
            serde_json::json!({"name": format!("pkg-{k}"), "version": v, "architecture": "amd64",
                "target": "amd64", "source": format!("src-{k}"), "source-version": v,
                "sha256": format!("{:064x}", i * 1000 + k)})
        })
        .collect();
    pk.push(serde_json::json!({"name": "openssl", "version": openssl, "architecture": "amd64",
        "target": "amd64", "source": "openssl", "source-version": openssl, "sha256": "0".repeat(64)}));
    if i % 100 == 0 {
        pk.push(serde_json::json!({"name": "rare", "version": "1.0-1", "architecture": "amd64",
            "target": "amd64", "source": "rare", "source-version": "1.0-1", "sha256": "1".repeat(64)}));
    }
    serde_json::to_vec(&serde_json::json!({
        "schema-version": 1, "image": format!("img-{}", i % 50), "version": format!("{i}"),
        "suite": "trixie", "architectures": ["amd64"], "distroless": false,
        "source-date-epoch": 1_700_000_000 + i as i64,
        "lock": {"path": "../x.lock", "recipe-sha256": "1".repeat(64)},
        "packages": pk,
        "outputs": [{"path": "rootfs.tar", "format": "tar", "architecture": "amd64",
            "size": 3, "sha256": format!("{:064x}", i)}],
        "disk": {}, "tests": [], "users": [], "generator": "kiln bench"
    }))
    .unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let catalog = Path::new(&args[0]);
    let mut c = Catalog::open(catalog).expect("opening the catalog");
    if args[1] == "--record" {
        let packages: usize = args[2].parse().unwrap();
        let runs: usize = args[3].parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut ms = Vec::new();
        for r in 0..runs {
            // A build output directory as kiln build leaves it.
            let out = dir.path().join(format!("b{r}"));
            std::fs::create_dir_all(&out).unwrap();
            std::fs::write(
                out.join("manifest.json"),
                manifest(10_000_000 + r, packages),
            )
            .unwrap();
            std::fs::write(out.join("sbom.spdx.json"), "{}").unwrap();
            std::fs::write(out.join("provenance.json"), "{}").unwrap();
            let t = Instant::now();
            assert!(c.record_build(&out).unwrap());
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        println!("{:.2}", ms[ms.len() / 2]);
        return;
    }
    let n: usize = args[1].parse().unwrap();
    let packages: usize = args[2].parse().unwrap();
    let dir = args.get(3).map(Path::new);
    let t = Instant::now();
    for i in 0..n {
        let m = manifest(i, packages);
        if let Some(d) = dir {
            let sub = d.join(format!("{i}"));
            std::fs::create_dir_all(&sub).unwrap();
            std::fs::write(sub.join("manifest.json"), &m).unwrap();
        }
        c.record_imported(
            &m,
            Path::new("generated"),
            "/srv/images",
            &[],
            &Publication {
                target: "file:///srv/images".into(),
                kind: "tree".into(),
                location: "/srv/images/channels/stable.json".into(),
                digest: None,
                channel: Some("stable".into()),
                published_at: 0,
                region: None,
            },
        )
        .unwrap();
        if i % 1000 == 999 {
            eprintln!("  {} versions ({:.0} s)", i + 1, t.elapsed().as_secs_f64());
        }
    }
}

//! Publishing a raw disk keeps its holes: the pool copy takes the space of
//! its data, not its length, and has the same bytes.

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;

use kiln_publish::source::Build;
use kiln_publish::tree::{publish, TreeOptions};
use sha2::Digest;

#[test]
fn a_sparse_disk_stays_sparse_in_the_pool() {
    let d = tempfile::tempdir().unwrap();
    let out = kiln_testkit::fake_build(d.path(), "cloud", 100, &[("base-files", "13.8")]);
    // 256 MiB, data only at its start, middle and last byte.
    let size: u64 = 256 << 20;
    let disk = out.join("disk.raw");
    let mut f = std::fs::File::create(&disk).unwrap();
    f.write_all(b"EFI PART").unwrap();
    f.seek(SeekFrom::Start(size / 2 + 123)).unwrap();
    f.write_all(&[7u8; 10_000]).unwrap();
    f.seek(SeekFrom::Start(size - 1)).unwrap();
    f.write_all(&[1]).unwrap();
    drop(f);
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(&disk).unwrap(), &mut h).unwrap();
    let sha = hex::encode(h.finalize());
    // The manifest names the disk instead of the tarball.
    let mpath = out.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["outputs"] = serde_json::json!([{"path": "disk.raw", "format": "disk", "architecture": "amd64",
        "size": size, "sha256": sha}]);
    std::fs::write(&mpath, m.to_string()).unwrap();
    std::fs::write(out.join("sbom.cdx.json"), "{}").unwrap();
    std::fs::write(out.join("provenance.json"), "{}").unwrap();
    let key_path = d.path().join("k.pem");
    assert!(std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key_path)
        .status()
        .unwrap()
        .success());
    let key = kiln_attest::SigningKey::from_pem_file(&key_path).unwrap();
    let build = Build::open(&out, &|_| {}).unwrap();
    let tree = d.path().join("tree");
    let r = publish(
        &tree,
        &[&build],
        &TreeOptions {
            channel: "stable",
            key: &key,
            valid_for: 86_400,
            now: kiln_publish::unix_now(),
            base_url: None,
            keep: 3,
            progress: &|_| {},
        },
    )
    .unwrap();
    let f = r.builds[0]
        .files
        .iter()
        .find(|f| f.path.ends_with("/disk.raw"))
        .unwrap();
    let copy = tree.join(&f.path);
    let meta = std::fs::metadata(&copy).unwrap();
    assert_eq!(meta.len(), size);
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "the pool copy takes {} bytes of disk for {} bytes of data",
        meta.blocks() * 512,
        10_010
    );
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(&copy).unwrap(), &mut h).unwrap();
    assert_eq!(hex::encode(h.finalize()), sha);
}

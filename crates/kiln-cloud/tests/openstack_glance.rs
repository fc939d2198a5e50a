//! The OpenStack publisher against OpenStack's own Keystone and Glance
//! (Debian's packages, started here on loopback with SQLite and a file
//! store): the image read back over Glance's API, a second publish
//! reusing it, and the bad input the issue names.

use std::path::{Path, PathBuf};

use kiln_cloud::openstack::{load_cloud_from, publish, OpenStackImage, OpenStackReport};
use kiln_cloud::CloudError;
use kiln_image::gpt::{types, write_disk, Partition};
use kiln_testkit::openstack::{OpenStack, PASSWORD, REGION};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

/// A UEFI GPT disk whose ESP holds 12 MiB of noise, and its qcow2.
fn disk(dir: &Path, seed: u64) -> (PathBuf, PathBuf, String) {
    let dir = dir.join(format!("disk{seed}"));
    std::fs::create_dir_all(&dir).unwrap();
    let noise = kiln_testkit::noise((12 * MIB) as usize, seed * 2 + 1);
    let esp = dir.join("esp.img");
    std::fs::write(&esp, noise).unwrap();
    let raw = dir.join("disk.raw");
    write_disk(
        &raw,
        "99999999-2222-3333-4444-555555555555",
        &[
            Partition {
                type_guid: types::ESP.into(),
                guid: "aaaaaaaa-2222-3333-4444-555555555555".into(),
                label: "esp".into(),
                image: Some(esp),
                size: 16 * MIB,
                attributes: 0,
            },
            Partition {
                type_guid: types::ROOT_X86_64.into(),
                guid: "11111111-2222-3333-4444-555555555555".into(),
                label: "root".into(),
                image: None,
                size: 8 * MIB,
                attributes: 0,
            },
        ],
    )
    .unwrap();
    let q = dir.join("disk.qcow2");
    kiln_image::disk::make_qcow2(&raw, &q).unwrap();
    let sha = kiln_image::cloud::sha256_file(&q).unwrap();
    (raw, q, sha)
}

fn image<'a>(raw: &'a Path, q: &'a Path, sha: &'a str, name: &str) -> OpenStackImage<'a> {
    OpenStackImage {
        file: q,
        disk_format: "qcow2",
        sha256: sha,
        disk: raw,
        name: name.into(),
        architecture: "amd64",
        os_version: "13".into(),
        properties: vec![("kiln_image".into(), "generic".into())],
    }
}

fn run(
    yaml: &Path,
    cloud: &str,
    img: &OpenStackImage,
    replace: bool,
) -> Result<OpenStackReport, CloudError> {
    let c = load_cloud_from(yaml, cloud)?;
    publish(&c, img, replace, &|_| {})
}

fn with_digest(os: &OpenStack, sha: &str) -> Vec<Value> {
    os.images()
        .into_iter()
        .filter(|i| i["kiln_sha256"] == sha)
        .collect()
}

#[test]
fn glance_gets_the_image_once_and_bad_input_is_refused() {
    let os = OpenStack::start();
    let tmp = tempfile::tempdir().unwrap();
    let (raw, q, sha) = disk(tmp.path(), 1);
    let img = image(&raw, &q, &sha, "debian-13-generic-amd64");

    // Wrong password: refused, the source named, the password not shown.
    let wrong = tmp.path().join("wrong");
    std::fs::create_dir(&wrong).unwrap();
    let y = os.clouds_yaml(&wrong, "lab", "not-the-password", REGION);
    let e = run(&y, "lab", &img, false).unwrap_err();
    let shown = format!("{e} {}", e.hint().unwrap_or_default());
    assert!(matches!(e, CloudError::Credentials { .. }), "{e:?}");
    assert!(
        shown.contains("refused the credentials") && shown.contains(&y.display().to_string()),
        "{shown}"
    );
    assert!(!shown.contains("not-the-password"), "{shown}");
    // A cloud clouds.yaml does not have, a region the catalog does not.
    let e = run(&y, "prod", &img, false).unwrap_err();
    assert!(
        e.to_string().contains("no cloud `prod`") && e.hint().unwrap().contains("lab"),
        "{e}"
    );
    let atlantis = tmp.path().join("atlantis");
    std::fs::create_dir(&atlantis).unwrap();
    let ya = os.clouds_yaml(&atlantis, "lab", PASSWORD, "Atlantis");
    let e = run(&ya, "lab", &img, false).unwrap_err();
    assert!(
        e.to_string().contains("region `Atlantis`") && e.to_string().contains(REGION),
        "{e}"
    );
    assert!(os.images().is_empty(), "{:?}", os.images());

    // The image, with its properties and exactly these bytes.
    let y = os.clouds_yaml(tmp.path(), "lab", PASSWORD, REGION);
    let r = run(&y, "lab", &img, false).unwrap_or_else(|e| panic!("{e}\n{}", os.log()));
    assert_eq!((r.how, r.region.as_str()), ("uploaded", REGION));
    assert_eq!(r.bytes_sent, std::fs::metadata(&q).unwrap().len());
    let all = os.images();
    assert_eq!(all.len(), 1, "{all:?}");
    let i = &all[0];
    assert_eq!(i["id"], r.image_id.as_str());
    for (k, v) in [
        ("status", "active"),
        ("name", "debian-13-generic-amd64"),
        ("disk_format", "qcow2"),
        ("container_format", "bare"),
        ("os_distro", "debian"),
        ("os_version", "13"),
        ("hw_firmware_type", "uefi"),
        ("hw_disk_bus", "scsi"),
        ("architecture", "x86_64"),
        ("kiln_image", "generic"),
    ] {
        assert_eq!(i[k], v, "{k}: {i}");
    }
    assert_eq!(i["kiln_sha256"], sha.as_str());
    assert!(i["checksum"].as_str().is_some_and(|c| c.len() == 32), "{i}");
    assert_eq!(os.image_sha256(&r.image_id), sha);

    // Again: the image is found by its digest, nothing is sent.
    let again = run(&y, "lab", &img, false).unwrap();
    assert_eq!((again.how, again.bytes_sent), ("reused", 0));
    assert_eq!(again.image_id, r.image_id);
    assert_eq!(os.images().len(), 1);

    // An upload cut midway: the half-made image is deleted, and a queued
    // one left by an earlier cut is cleaned up by the next publish.
    let (raw2, q2, sha2) = disk(tmp.path(), 2);
    let img2 = image(&raw2, &q2, &sha2, "debian-13-other-amd64");
    let (proxy, cut) = kiln_testkit::cutting_proxy(os.glance_port, 4 * MIB);
    let cutdir = tmp.path().join("cut");
    std::fs::create_dir(&cutdir).unwrap();
    let yc = os.clouds_yaml(&cutdir, "lab", PASSWORD, REGION);
    let text = std::fs::read_to_string(&yc).unwrap();
    std::fs::write(
        &yc,
        format!("{text}    image_endpoint_override: http://127.0.0.1:{proxy}\n"),
    )
    .unwrap();
    let e = run(&yc, "lab", &img2, false).unwrap_err();
    assert!(
        cut.load(std::sync::atomic::Ordering::SeqCst),
        "the proxy cut nothing: {e}"
    );
    assert!(with_digest(&os, &sha2).is_empty(), "{:?}", os.images());
    assert!(e.hint().is_some(), "{e}");
    let left = os.make_image("debian-13-other-amd64", json!({"kiln_sha256": sha2}), None);
    let r2 = run(&y, "lab", &img2, false).unwrap();
    assert_eq!(r2.how, "uploaded");
    assert_eq!(r2.deleted, vec![left.clone()]);
    let mine = with_digest(&os, &sha2);
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0]["status"], "active");

    // The name of another disk's image: refused, then replaced.
    let (raw3, q3, sha3) = disk(tmp.path(), 3);
    let img3 = image(&raw3, &q3, &sha3, "debian-13-generic-amd64");
    let e = run(&y, "lab", &img3, false).unwrap_err();
    assert!(
        e.to_string().contains("already used by image") && e.hint().unwrap().contains("--replace"),
        "{e}"
    );
    assert!(with_digest(&os, &sha3).is_empty());
    let r3 = run(&y, "lab", &img3, true).unwrap();
    assert_eq!(r3.deleted, vec![r.image_id.clone()]);
    assert!(os.images().iter().all(|i| i["id"] != r.image_id.as_str()));
    assert_eq!(os.image_sha256(&r3.image_id), sha3);

    // Hostile: an image that claims this disk's digest but holds other
    // bytes is not taken for it.
    let (raw4, q4, sha4) = disk(tmp.path(), 4);
    let img4 = image(&raw4, &q4, &sha4, "debian-13-four-amd64");
    let fake = os.make_image(
        "debian-13-four-amd64",
        json!({"kiln_sha256": sha4}),
        Some(b"not the disk"),
    );
    let e = run(&y, "lab", &img4, false).unwrap_err();
    assert!(
        e.to_string().contains(&fake) && e.to_string().contains("sha512"),
        "{e}"
    );
    let r4 = run(&y, "lab", &img4, true).unwrap();
    assert_eq!(r4.deleted, vec![fake]);
    assert_eq!(os.image_sha256(&r4.image_id), sha4);

    // Checked before anything is sent: a disk that is not UEFI GPT, a
    // file that is not the build's.
    let before = os.images().len();
    let plain = tmp.path().join("plain.raw");
    std::fs::write(&plain, vec![0u8; 4 << 20]).unwrap();
    let mut bad = image(&plain, &q, &sha, "x");
    let e = run(&y, "lab", &bad, false).unwrap_err();
    assert!(matches!(e, CloudError::Disk(_)), "{e}");
    bad.disk = &raw;
    bad.sha256 = &sha2;
    let e = run(&y, "lab", &bad, false).unwrap_err();
    assert!(
        e.to_string()
            .contains("the file changed since it was built"),
        "{e}"
    );
    let mut raw_img = image(&raw, &raw, &sha, "x");
    raw_img.disk_format = "raw";
    assert!(run(&y, "lab", &raw_img, false)
        .unwrap_err()
        .to_string()
        .contains("the build's manifest"));
    assert_eq!(os.images().len(), before);
}

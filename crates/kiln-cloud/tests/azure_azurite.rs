//! The Azure publisher against Azurite (npm `azurite`, started here on
//! loopback): a fixed VHD into a page blob, its digest in the metadata,
//! read back with the Azure SDK for Python (`azure-storage-blob`), not
//! with Kiln.

use std::path::{Path, PathBuf};

use kiln_cloud::azure::{publish, AzureImage};
use kiln_cloud::CloudError;
use kiln_image::gpt::{types, write_disk, Partition};
use kiln_testkit::azurite::{Azurite, KEY};
use kiln_testkit::with_env;

const MIB: u64 = 1 << 20;

fn vhd(dir: &Path, flip: bool) -> (PathBuf, String) {
    let esp = dir.join("esp.img");
    let data: Vec<u8> = (0..3 * MIB as usize)
        .map(|i| (i * 13 % 251) as u8 + 1)
        .collect();
    std::fs::write(&esp, data).unwrap();
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
                size: 8 * MIB,
                attributes: 0,
            },
            Partition {
                type_guid: types::ROOT_X86_64.into(),
                guid: "11111111-2222-3333-4444-555555555555".into(),
                label: "root".into(),
                image: None,
                size: 14 * MIB,
                attributes: 0,
            },
        ],
    )
    .unwrap();
    if flip {
        let mut b = std::fs::read(&raw).unwrap();
        b[5 * MIB as usize] ^= 0xff;
        std::fs::write(&raw, b).unwrap();
    }
    let out = dir.join("disk.vhd");
    kiln_image::cloud::write_fixed_vhd(&raw, &out, 0).unwrap();
    let sha = kiln_image::cloud::sha256_file(&out).unwrap();
    (out, sha)
}

fn run(
    cs: Option<String>,
    container: &str,
    img: &AzureImage,
    replace: bool,
) -> Result<kiln_cloud::azure::AzureReport, CloudError> {
    with_env(
        &[
            ("AZURE_STORAGE_CONNECTION_STRING", cs),
            ("AZURE_STORAGE_ACCOUNT", None),
            ("AZURE_STORAGE_KEY", None),
        ],
        || publish(container, img, replace, &|_| {}),
    )
}

#[test]
fn a_vhd_becomes_a_page_blob_once_and_a_clash_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let az = Azurite::start();
    let cs = az.connection_string();
    let (path, sha) = vhd(t.path(), false);
    let img = AzureImage {
        vhd: &path,
        sha256: &sha,
        blob: "kiln-test-13-amd64.vhd".into(),
        metadata: vec![("kiln_image".into(), "kiln-test".into())],
    };
    let r = run(Some(cs.clone()), "kiln-images", &img, false).unwrap();
    assert_eq!(r.how, "uploaded");
    assert!(
        r.url.ends_with("/kiln-images/kiln-test-13-amd64.vhd"),
        "{}",
        r.url
    );
    // Only the non-zero 4 MiB ranges went: the ESP's data and the footer.
    assert!(r.pages_sent >= 2 && r.pages_sent <= 4, "{r:?}");
    let b = az.blobs("kiln-images");
    let blob = &b["kiln-test-13-amd64.vhd"];
    assert_eq!(blob["type"], "BlobType.PAGEBLOB", "{b}");
    assert_eq!(blob["size"], std::fs::metadata(&path).unwrap().len());
    assert_eq!(
        blob["sha256"],
        sha.as_str(),
        "the blob holds the VHD's bytes"
    );
    assert_eq!(blob["metadata"]["kiln_sha256"], sha.as_str());
    assert_eq!(blob["metadata"]["kiln_image"], "kiln-test");
    // Again: reused, nothing sent.
    let again = run(Some(cs.clone()), "kiln-images", &img, false).unwrap();
    assert_eq!((again.how, again.pages_sent), ("reused", 0));
    // Another disk under the name: refused, then replaced when asked.
    let other = t.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (path2, sha2) = vhd(&other, true);
    let img2 = AzureImage {
        vhd: &path2,
        sha256: &sha2,
        ..AzureImage {
            metadata: vec![],
            ..img
        }
    };
    let e = run(Some(cs.clone()), "kiln-images", &img2, false).unwrap_err();
    assert!(
        e.to_string().contains("already there with another disk"),
        "{e}"
    );
    assert!(e.hint().unwrap().contains("--replace"));
    assert_eq!(
        az.blobs("kiln-images")["kiln-test-13-amd64.vhd"]["sha256"],
        sha.as_str(),
        "left as it was"
    );
    let r = run(Some(cs.clone()), "kiln-images", &img2, true).unwrap();
    assert_eq!(r.how, "uploaded");
    assert_eq!(
        az.blobs("kiln-images")["kiln-test-13-amd64.vhd"]["sha256"],
        sha2.as_str()
    );
    // A blob another tool wrote under a name: refused and left as it is.
    az.put_foreign_blob("kiln-images", "foreign.vhd");
    let img3 = AzureImage {
        blob: "foreign.vhd".into(),
        ..img2
    };
    let e = run(Some(cs.clone()), "kiln-images", &img3, false).unwrap_err();
    assert!(e.to_string().contains("not written by kiln publish"), "{e}");
    assert_eq!(az.blobs("kiln-images")["foreign.vhd"]["size"], 1024);
}

#[test]
fn a_wrong_key_or_a_bad_vhd_is_refused_and_nothing_stays() {
    let t = tempfile::tempdir().unwrap();
    let az = Azurite::start();
    let (path, sha) = vhd(t.path(), false);
    let img = AzureImage {
        vhd: &path,
        sha256: &sha,
        blob: "x.vhd".into(),
        metadata: vec![],
    };
    // Another key: the service refuses the signature; the key is not shown.
    let wrong = az
        .connection_string()
        .replace(KEY, "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=");
    let e = run(Some(wrong), "kiln-images", &img, false).unwrap_err();
    let text = format!("{e} {}", e.hint().unwrap_or_default());
    assert!(matches!(e, CloudError::Api { status: 403, .. }), "{text}");
    assert!(text.contains("credentials"), "{text}");
    assert!(!text.contains(KEY) && !text.contains("d3Jvbmct"), "{text}");
    // No account at all: where it is read from.
    let e = run(None, "kiln-images", &img, false).unwrap_err();
    assert!(
        e.hint()
            .unwrap()
            .contains("AZURE_STORAGE_CONNECTION_STRING"),
        "{e}"
    );
    // Not a fixed VHD (a raw disk): refused before anything is sent.
    let raw = t.path().join("disk.raw");
    let bad = AzureImage {
        vhd: &raw,
        ..AzureImage {
            vhd: &path,
            sha256: &sha,
            blob: "x.vhd".into(),
            metadata: vec![],
        }
    };
    let e = run(Some(az.connection_string()), "kiln-images", &bad, false).unwrap_err();
    assert!(e.to_string().contains("no VHD footer"), "{e}");
    assert!(
        az.blobs("kiln-images").as_object().unwrap().is_empty(),
        "nothing was written"
    );
    // A truncated VHD.
    let cut = t.path().join("cut.vhd");
    let b = std::fs::read(&path).unwrap();
    std::fs::write(&cut, &b[..b.len() - 100]).unwrap();
    let bad = AzureImage { vhd: &cut, ..bad };
    assert!(run(Some(az.connection_string()), "kiln-images", &bad, false).is_err());
}

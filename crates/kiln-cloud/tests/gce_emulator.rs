//! The GCE publisher: the archive into a real Cloud Storage emulator
//! (PyPI `gcp-storage-emulator`, started here on loopback, read back with
//! plain HTTP from Python), and `images.insert`, which no emulator has,
//! against a Compute API recorder here whose requests are checked.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use kiln_cloud::gce::{publish, GceImage};
use kiln_cloud::CloudError;
use kiln_image::gpt::{types, write_disk, Partition};
use kiln_testkit::cutting_proxy;
use kiln_testkit::gce::{compute_api, gcs, object};

const MIB: u64 = 1 << 20;
const PROJECT: &str = "kiln-test-1";
const BUCKET: &str = "kiln-images";
const TOKEN: &str = "ya29.kiln-test-token-never-shown";

/// GCE's archive of a UEFI GPT disk whose ESP holds 20 MiB of noise (so the
/// archive is larger than two 8 MiB chunks).
fn archive(dir: &Path, seed: u64) -> (PathBuf, String) {
    let mut x = seed | 1;
    let noise: Vec<u8> = (0..20 * MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
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
                size: 24 * MIB,
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
    let out = dir.join("disk.tar.gz");
    kiln_image::cloud::write_gce_tar(&raw, &out, 0).unwrap();
    let sha = kiln_image::cloud::sha256_file(&out).unwrap();
    (out, sha)
}

fn run(
    env: &[(&str, Option<String>)],
    img: &GceImage,
    replace: bool,
) -> Result<kiln_cloud::gce::GceReport, CloudError> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for (k, v) in env {
        // SAFETY: every test that touches the environment holds LOCK.
        unsafe {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
    }
    publish(
        PROJECT,
        BUCKET,
        img,
        replace,
        Duration::from_secs(30),
        &|_| {},
    )
}

fn env(storage: u16, compute: u16, token: Option<&str>) -> Vec<(&'static str, Option<String>)> {
    vec![
        (
            "STORAGE_EMULATOR_HOST",
            Some(format!("http://127.0.0.1:{storage}")),
        ),
        (
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE",
            Some(format!("http://127.0.0.1:{compute}/compute/v1/")),
        ),
        ("GOOGLE_OAUTH_ACCESS_TOKEN", token.map(str::to_string)),
        ("CLOUDSDK_AUTH_ACCESS_TOKEN", None),
    ]
}

#[test]
fn an_archive_becomes_an_image_once_through_the_bucket_even_when_cut() {
    let t = tempfile::tempdir().unwrap();
    let g = gcs(BUCKET);
    let api = compute_api(PROJECT);
    let (path, sha) = archive(t.path(), 7);
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size > 16 * MIB, "{size}");
    let img = GceImage {
        archive: &path,
        sha256: &sha,
        name: "kiln-test-13-amd64-20261207-120000".into(),
        description: "Kiln test image".into(),
        architecture: "amd64",
        labels: vec![("kiln-image".into(), "kiln-test".into())],
    };
    // Through a proxy that drops the connection once, inside the second
    // chunk: the upload asks where the service is and goes on from there.
    let (proxy, cut) = cutting_proxy(g.port, 12 * MIB);
    let r = run(&env(proxy, api.port, Some(TOKEN)), &img, false).unwrap();
    assert!(cut.load(Ordering::SeqCst), "the proxy cut the upload");
    assert_eq!(r.how, "uploaded");
    assert!(r.resumed >= 1, "{r:?}");
    assert_eq!(
        r.image,
        format!("projects/{PROJECT}/global/images/kiln-test-13-amd64-20261207-120000")
    );
    let o = object(g.port, BUCKET, "kiln-test-13-amd64-20261207-120000.tar.gz");
    assert_eq!(
        o["sha256"],
        sha.as_str(),
        "the object is the archive, byte for byte: {o}"
    );
    assert_eq!(o["metadata"]["kiln_sha256"], sha.as_str());
    // images.insert as GCE wants it, with the token as a bearer token.
    let reqs = api.requests.lock().unwrap().clone();
    let insert = reqs
        .iter()
        .find(|r| r.0 == "POST")
        .expect("images.insert was sent");
    assert_eq!(
        insert.1,
        format!("/compute/v1/projects/{PROJECT}/global/images")
    );
    assert_eq!(insert.2, format!("Bearer {TOKEN}"));
    let body: serde_json::Value = serde_json::from_str(&insert.3).unwrap();
    assert_eq!(
        body["rawDisk"]["source"],
        format!(
            "https://storage.googleapis.com/{BUCKET}/kiln-test-13-amd64-20261207-120000.tar.gz"
        )
    );
    assert!(
        body["guestOsFeatures"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["type"] == "UEFI_COMPATIBLE"),
        "{body}"
    );
    assert_eq!(body["architecture"], "X86_64");
    assert_eq!(
        format!(
            "{}{}",
            body["labels"]["kiln-sha256-1"].as_str().unwrap(),
            body["labels"]["kiln-sha256-2"].as_str().unwrap()
        ),
        sha
    );
    assert!(
        reqs.iter()
            .any(|r| r.1.ends_with("/global/operations/operation-ins")),
        "the operation was waited for"
    );
    // Again: the image is found by its labels, nothing is sent.
    let n = reqs.len();
    let again = run(&env(g.port, api.port, Some(TOKEN)), &img, false).unwrap();
    assert_eq!((again.how, again.bytes_sent), ("reused", 0));
    let reqs = api.requests.lock().unwrap().clone();
    assert_eq!(reqs[n..].iter().filter(|r| r.0 == "POST").count(), 0);
    // Another disk under the name: refused unless --replace.
    let other = t.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (path2, sha2) = archive(&other, 99);
    let img2 = GceImage {
        archive: &path2,
        sha256: &sha2,
        ..GceImage {
            labels: vec![],
            ..img
        }
    };
    let e = run(&env(g.port, api.port, Some(TOKEN)), &img2, false).unwrap_err();
    assert!(e.to_string().contains("already used"), "{e}");
    assert!(e.hint().unwrap().contains("--replace"));
    let r = run(&env(g.port, api.port, Some(TOKEN)), &img2, true).unwrap();
    assert_eq!(r.how, "uploaded");
    assert!(api.requests.lock().unwrap().iter().any(|r| r.0 == "DELETE"));
    assert_eq!(
        object(g.port, BUCKET, "kiln-test-13-amd64-20261207-120000.tar.gz")["sha256"],
        sha2.as_str()
    );
}

#[test]
fn no_token_or_a_bad_archive_is_refused_before_anything_is_sent() {
    let t = tempfile::tempdir().unwrap();
    let g = gcs(BUCKET);
    let api = compute_api(PROJECT);
    let (path, sha) = archive(t.path(), 3);
    let img = GceImage {
        archive: &path,
        sha256: &sha,
        name: "kiln-refused".into(),
        description: "x".into(),
        architecture: "amd64",
        labels: vec![],
    };
    let e = run(&env(g.port, api.port, None), &img, false).unwrap_err();
    assert!(
        e.hint().unwrap().contains("GOOGLE_OAUTH_ACCESS_TOKEN"),
        "{e}"
    );
    // A truncated archive, and a raw disk that is no archive.
    let cut = t.path().join("cut.tar.gz");
    let b = std::fs::read(&path).unwrap();
    std::fs::write(&cut, &b[..b.len() / 2]).unwrap();
    let bad = GceImage {
        archive: &cut,
        ..GceImage {
            archive: &path,
            sha256: &sha,
            name: "kiln-refused".into(),
            description: "x".into(),
            architecture: "amd64",
            labels: vec![],
        }
    };
    let e = run(&env(g.port, api.port, Some(TOKEN)), &bad, false).unwrap_err();
    assert!(
        e.to_string().contains("gzip") || e.to_string().contains("truncated"),
        "{e}"
    );
    let raw = t.path().join("disk.raw");
    let bad = GceImage {
        archive: &raw,
        ..bad
    };
    let e = run(&env(g.port, api.port, Some(TOKEN)), &bad, false).unwrap_err();
    assert!(e.to_string().contains("gzip"), "{e}");
    assert!(
        api.requests.lock().unwrap().is_empty(),
        "nothing reached the Compute API"
    );
    assert!(object(g.port, BUCKET, "kiln-refused.tar.gz").is_null());
    // The token appears in no error.
    assert!(!format!("{e} {:?}", e.hint()).contains(TOKEN));
}

//! The GCE publisher: the archive into a real Cloud Storage emulator
//! (PyPI `gcp-storage-emulator`, started here on loopback, read back with
//! plain HTTP from Python), and `images.insert`, which no emulator has,
//! against a Compute API recorder here whose requests are checked.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
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
    let noise = kiln_testkit::noise((20 * MIB) as usize, seed | 1);
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
    kiln_testkit::with_env(env, || {
        publish(
            PROJECT,
            BUCKET,
            img,
            replace,
            Duration::from_secs(30),
            &|_| {},
        )
    })
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
        ("GOOGLE_APPLICATION_CREDENTIALS", None),
        (
            "CLOUDSDK_CONFIG",
            Some("/nonexistent/kiln-test-gcloud".into()),
        ),
    ]
}

/// Credentials from key files: a service account's signed JWT and gcloud's
/// authorized user, exchanged at a token endpoint stand-in for the token
/// the APIs then get; the assertion's signature checked with openssl.
#[test]
fn key_files_give_the_token_and_bad_ones_are_refused() {
    use base64::Engine;
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let ok = |c: &mut std::process::Command| assert!(c.status().unwrap().success());
    ok(std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-quiet",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(d.join("key.pem")));
    ok(std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(d.join("key.pem"))
        .arg("-out")
        .arg(d.join("pub.pem")));
    let tokens = kiln_testkit::recording_server(|_, path, _, body| {
        let good = body
            .contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer")
            || body.contains("refresh_token=good-refresh-token");
        if path == "/token" && good {
            (
                200,
                serde_json::json!({"access_token": "ya29.from-key-file", "expires_in": 3599, "token_type": "Bearer"}),
            )
        } else {
            (
                400,
                serde_json::json!({"error": "invalid_grant", "error_description": "Bad Request"}),
            )
        }
    });
    let uri = format!("http://127.0.0.1:{}/token", tokens.port);
    let sa = d.join("sa.json");
    std::fs::write(
        &sa,
        serde_json::json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "k1",
            "private_key": std::fs::read_to_string(d.join("key.pem")).unwrap(),
            "client_email": "kiln@kiln-test-1.iam.gserviceaccount.com",
            "token_uri": uri,
        })
        .to_string(),
    )
    .unwrap();
    let g = gcs(BUCKET);
    let api = compute_api(PROJECT);
    let (path, sha) = archive(d, 11);
    let img = GceImage {
        archive: &path,
        sha256: &sha,
        name: "kiln-key-file-13-amd64".into(),
        description: "x".into(),
        architecture: "amd64",
        labels: vec![],
    };
    let mut e = env(g.port, api.port, None);
    e.push((
        "GOOGLE_APPLICATION_CREDENTIALS",
        Some(sa.display().to_string()),
    ));
    let r = run(&e, &img, false).unwrap();
    assert_eq!(r.how, "uploaded");
    let reqs = api.requests.lock().unwrap().clone();
    assert!(
        !reqs.is_empty() && reqs.iter().all(|r| r.2 == "Bearer ya29.from-key-file"),
        "{reqs:?}"
    );
    // The assertion: for this endpoint, from the account, signed with its key.
    let body = tokens.requests.lock().unwrap()[0].3.clone();
    let jwt = body
        .split('&')
        .find_map(|kv| kv.strip_prefix("assertion="))
        .unwrap();
    let parts: Vec<&str> = jwt.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims: serde_json::Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["iss"], "kiln@kiln-test-1.iam.gserviceaccount.com");
    assert_eq!(claims["aud"], uri.as_str());
    assert_eq!(
        claims["scope"],
        "https://www.googleapis.com/auth/cloud-platform"
    );
    std::fs::write(d.join("signed"), format!("{}.{}", parts[0], parts[1])).unwrap();
    std::fs::write(d.join("sig"), b64.decode(parts[2]).unwrap()).unwrap();
    let v = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(d.join("pub.pem"))
        .arg("-signature")
        .arg(d.join("sig"))
        .arg(d.join("signed"))
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));

    // gcloud's application-default file (an authorized user): good, then
    // a refresh token the endpoint refuses, named and not shown.
    let gcloud = d.join("gcloud");
    std::fs::create_dir(&gcloud).unwrap();
    let adc = |refresh: &str| {
        std::fs::write(
            gcloud.join("application_default_credentials.json"),
            serde_json::json!({"type": "authorized_user", "client_id": "c.apps", "client_secret": "adc-client-secret", "refresh_token": refresh, "token_uri": uri}).to_string(),
        )
        .unwrap()
    };
    let mut e = env(g.port, api.port, None);
    e.push(("CLOUDSDK_CONFIG", Some(gcloud.display().to_string())));
    adc("good-refresh-token");
    assert_eq!(run(&e, &img, false).unwrap().how, "reused");
    adc("revoked-refresh-token");
    let err = run(&e, &img, false).unwrap_err();
    let shown = format!("{err} {}", err.hint().unwrap_or_default());
    assert!(
        matches!(err, CloudError::Credentials { .. }) && shown.contains("refused the credentials"),
        "{shown}"
    );
    assert!(
        !shown.contains("revoked-refresh-token") && !shown.contains("adc-client-secret"),
        "{shown}"
    );

    // A key file whose key is not one, or whose token_uri is not https.
    let mut bad: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sa).unwrap()).unwrap();
    bad["private_key"] =
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n".into();
    std::fs::write(&sa, bad.to_string()).unwrap();
    let mut e = env(g.port, api.port, None);
    e.push((
        "GOOGLE_APPLICATION_CREDENTIALS",
        Some(sa.display().to_string()),
    ));
    let err = run(&e, &img, false).unwrap_err();
    assert!(
        err.to_string().contains("not an RSA PKCS#8 key") && err.to_string().contains("sa.json"),
        "{err}"
    );
    bad["token_uri"] = "http://198.51.100.7/token".into();
    std::fs::write(&sa, bad.to_string()).unwrap();
    let err = run(&e, &img, false).unwrap_err();
    assert!(err.to_string().contains("not an https URL"), "{err}");
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

//! Pushes against real `docker-registry` processes (and a few in-process
//! fakes for faults a real registry does not produce), checked with skopeo.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use kiln_registry::{push, Credentials, PushOptions, Reference, RegistryError};
use serde_json::Value;

fn insecure<'a>(progress: &'a dyn Fn(&str)) -> PushOptions<'a> {
    PushOptions {
        insecure: true,
        credentials: None,
        progress,
    }
}

fn creds(user: &str, password: &str) -> Option<Credentials> {
    Some(Credentials {
        username: user.into(),
        password: password.into(),
    })
}

#[test]
fn pushes_an_image_that_skopeo_reads_back() {
    let reg = Registry::start(RegistryAuth::None);
    let layout = tempfile::tempdir().unwrap();
    let manifest = single_image_layout(layout.path(), "hello");
    let (lines, progress) = collect_progress();

    let report = push(
        layout.path(),
        &reg.reference("kiln/base:1.0"),
        &insecure(&progress),
    )
    .unwrap();

    let digest = manifest["digest"].as_str().unwrap();
    assert_eq!(report.digest, digest);
    assert_eq!(report.blobs_uploaded, 2, "config and layer");
    assert_eq!(report.blobs_skipped, 0);
    assert_eq!(
        report.manifests_pushed, 1,
        "the manifest listed twice is pushed once"
    );
    assert!(lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.starts_with("tagged ")));

    let out = skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{}/kiln/base:1.0", reg.host()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["Digest"], digest);
    assert_eq!(info["Architecture"], "amd64");
    // Only the requested tag exists.
    assert!(skopeo_raw(&reg.host(), "kiln/base:latest", None).is_err());

    let back = tempfile::tempdir().unwrap();
    let dest = back.path().join("copy");
    skopeo_copy_to_oci(&reg.host(), "kiln/base:1.0", &dest);
    let index: Value =
        serde_json::from_slice(&std::fs::read(dest.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest);
    let copied = std::fs::read(blob_path(&dest, &manifest)).unwrap();
    assert_eq!(
        copied,
        std::fs::read(blob_path(layout.path(), &manifest)).unwrap()
    );
}

#[test]
fn pushes_multi_arch_indexes() {
    let reg = Registry::start(RegistryAuth::None);

    // Kiln's own shape: index.json -> image index blob -> two manifests.
    let layout = tempfile::tempdir().unwrap();
    let index = multi_arch_layout(layout.path(), "multi");
    let report = push(
        layout.path(),
        &reg.reference("kiln/multi:1.0"),
        &insecure(&|_| {}),
    )
    .unwrap();
    assert_eq!(report.digest, index["digest"].as_str().unwrap());
    assert_eq!(report.blobs_uploaded, 4);
    assert_eq!(report.manifests_pushed, 3);
    let raw = skopeo_raw(&reg.host(), "kiln/multi:1.0", None).unwrap();
    assert_eq!(sha256(&raw), report.digest);
    let raw: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(raw["mediaType"], INDEX_V1);
    let archs: Vec<&str> = raw["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(archs, ["amd64", "arm64"]);
    // Each platform's manifest is pullable by digest.
    for m in raw["manifests"].as_array().unwrap() {
        let d = m["digest"].as_str().unwrap();
        let got = skopeo_raw(&reg.host(), &format!("kiln/multi@{d}"), None).unwrap();
        assert_eq!(sha256(&got), d);
    }
    // Under a tag the layout does not name, the index (which lists the
    // per-platform entries) is still the image.
    let report = push(
        layout.path(),
        &reg.reference("kiln/multi:v2"),
        &insecure(&|_| {}),
    )
    .unwrap();
    assert_eq!(report.digest, index["digest"].as_str().unwrap());

    // Platform manifests listed directly in index.json: an index of them is
    // made and pushed under the tag.
    let layout = tempfile::tempdir().unwrap();
    let amd = write_image(layout.path(), "amd64", "direct amd64");
    let arm = write_image(layout.path(), "arm64", "direct arm64");
    write_index_json(
        layout.path(),
        vec![
            with_ref_name(&with_platform(&amd, "amd64"), "2.0"),
            with_ref_name(&with_platform(&arm, "arm64"), "2.0"),
        ],
    );
    let report = push(
        layout.path(),
        &reg.reference("kiln/direct:2.0"),
        &insecure(&|_| {}),
    )
    .unwrap();
    let raw = skopeo_raw(&reg.host(), "kiln/direct:2.0", None).unwrap();
    assert_eq!(sha256(&raw), report.digest);
    let raw: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(raw["mediaType"], INDEX_V1);
    assert_eq!(raw["manifests"][0]["digest"], amd["digest"]);
    assert_eq!(raw["manifests"][1]["digest"], arm["digest"]);
    assert!(
        raw["manifests"][0].get("annotations").is_none(),
        "ref.name is layout-local"
    );
}

#[test]
fn picks_the_image_whose_ref_name_is_the_tag() {
    let reg = Registry::start(RegistryAuth::None);
    let layout = tempfile::tempdir().unwrap();
    let a = write_image(layout.path(), "amd64", "image a");
    let b = write_image(layout.path(), "amd64", "image b");
    write_index_json(
        layout.path(),
        vec![with_ref_name(&a, "a"), with_ref_name(&b, "b")],
    );
    let report = push(
        layout.path(),
        &reg.reference("kiln/pick:b"),
        &insecure(&|_| {}),
    )
    .unwrap();
    assert_eq!(report.digest, b["digest"].as_str().unwrap());
    let err = push(
        layout.path(),
        &reg.reference("kiln/pick:c"),
        &insecure(&|_| {}),
    )
    .unwrap_err();
    assert!(matches!(err, RegistryError::Layout { .. }), "{err}");
    assert!(err.to_string().contains("ref names: a, b"), "{err}");
}

#[test]
fn unreachable_registry_fails_fast_and_clearly() {
    let layout = tempfile::tempdir().unwrap();
    single_image_layout(layout.path(), "nowhere");
    // A privileged port no test registry can get and nothing listens on.
    let port = 1;
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    let reference = Reference::parse(&format!("127.0.0.1:{port}/kiln/x:1")).unwrap();
    let start = Instant::now();
    let err = push(layout.path(), &reference, &insecure(&|_| {})).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("http://127.0.0.1:{port}/v2/")),
        "{msg}"
    );
    assert!(msg.contains("connection refused"), "{msg}");
    assert!(err.hint().unwrap().contains("--insecure"));

    // HTTPS against a plain-http registry is "unreachable" too, with the
    // same hint.
    let reg = Registry::start(RegistryAuth::None);
    let err = push(
        layout.path(),
        &reg.reference("kiln/x:1"),
        &PushOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("https://"), "{err}");
}

#[test]
fn basic_auth_rejects_wrong_password_and_accepts_the_right_one() {
    let reg = Registry::start(RegistryAuth::Htpasswd {
        user: "kiln".into(),
        password: "s3cret".into(),
    });
    let layout = tempfile::tempdir().unwrap();
    let manifest = single_image_layout(layout.path(), "auth");
    let reference = reg.reference("kiln/private:1.0");
    let with = |c| PushOptions {
        insecure: true,
        credentials: c,
        progress: &|_| {},
    };

    let err = push(layout.path(), &reference, &with(None)).unwrap_err();
    assert!(matches!(err, RegistryError::AuthFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("requires credentials"), "{err}");

    let err = push(layout.path(), &reference, &with(creds("kiln", "wrong"))).unwrap_err();
    assert!(matches!(err, RegistryError::AuthFailed { .. }), "{err:?}");
    assert!(
        err.to_string().contains("rejected the credentials"),
        "{err}"
    );
    assert!(err.hint().unwrap().contains("--username/--password"));
    assert!(reg.stored_blobs().is_empty());

    let report = push(layout.path(), &reference, &with(creds("kiln", "s3cret"))).unwrap();
    assert_eq!(report.digest, manifest["digest"].as_str().unwrap());
    let raw = skopeo_raw(&reg.host(), "kiln/private:1.0", Some("kiln:s3cret")).unwrap();
    assert_eq!(sha256(&raw), report.digest);
}

#[test]
fn corrupt_blobs_are_refused_before_any_upload() {
    let reg = Registry::start(RegistryAuth::None);
    let layout = tempfile::tempdir().unwrap();
    let manifest = single_image_layout(layout.path(), "corrupt");
    let m: Value =
        serde_json::from_slice(&std::fs::read(blob_path(layout.path(), &manifest)).unwrap())
            .unwrap();
    let layer = blob_path(layout.path(), &m["layers"][0]);

    // Same size, one byte changed.
    let mut bytes = std::fs::read(&layer).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&layer, &bytes).unwrap();
    let err = push(
        layout.path(),
        &reg.reference("kiln/corrupt:1.0"),
        &insecure(&|_| {}),
    )
    .unwrap_err();
    match &err {
        RegistryError::CorruptBlob { digest, path, .. } => {
            assert_eq!(digest, m["layers"][0]["digest"].as_str().unwrap());
            assert_eq!(path, &layer);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().contains("content hashes to sha256:"),
        "{err}"
    );
    assert!(err.hint().is_some());

    // Truncated.
    std::fs::write(&layer, &bytes[..10]).unwrap();
    let err = push(
        layout.path(),
        &reg.reference("kiln/corrupt:1.0"),
        &insecure(&|_| {}),
    )
    .unwrap_err();
    assert!(err.to_string().contains("size is 10 bytes"), "{err}");

    // Missing.
    std::fs::remove_file(&layer).unwrap();
    let err = push(
        layout.path(),
        &reg.reference("kiln/corrupt:1.0"),
        &insecure(&|_| {}),
    )
    .unwrap_err();
    assert!(matches!(err, RegistryError::CorruptBlob { .. }), "{err:?}");

    assert!(reg.stored_blobs().is_empty(), "nothing was uploaded");
    assert!(skopeo_raw(&reg.host(), "kiln/corrupt:1.0", None).is_err());
}

#[test]
fn malformed_layouts_are_refused() {
    let reference = Reference::parse("127.0.0.1:9/kiln/x:1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = push(dir.path(), &reference, &insecure(&|_| {})).unwrap_err();
    assert!(matches!(err, RegistryError::Layout { .. }), "{err:?}");
    assert!(err.to_string().contains("oci-layout"), "{err}");

    write_index_json(dir.path(), vec![]);
    let err = push(dir.path(), &reference, &insecure(&|_| {})).unwrap_err();
    assert!(err.to_string().contains("lists no manifests"), "{err}");

    let config = write_blob(dir.path(), CONFIG_V1, b"{}");
    write_index_json(dir.path(), vec![config]);
    let err = push(dir.path(), &reference, &insecure(&|_| {})).unwrap_err();
    assert!(
        err.to_string()
            .contains("neither an image manifest nor an image index"),
        "{err}"
    );
}

#[test]
fn an_interrupted_push_leaves_no_tag() {
    let reg = Arc::new(Mutex::new(Registry::start(RegistryAuth::None)));
    let (host, reference) = {
        let r = reg.lock().unwrap();
        (r.host(), r.reference("kiln/interrupted:1.0"))
    };
    let layout = tempfile::tempdir().unwrap();
    multi_arch_layout(layout.path(), "interrupted");
    let uploads = AtomicUsize::new(0);
    let progress = |line: &str| {
        // The registry dies right after the first blob arrived.
        if line.starts_with("uploaded blob") && uploads.fetch_add(1, Ordering::SeqCst) == 0 {
            reg.lock().unwrap().kill();
        }
    };
    let err = push(layout.path(), &reference, &insecure(&progress)).unwrap_err();
    assert_eq!(uploads.load(Ordering::SeqCst), 1);
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err:?}");

    let mut reg = reg.lock().unwrap();
    reg.restart();
    assert_eq!(reg.stored_blobs().len(), 1);
    let e = skopeo_raw(&host, "kiln/interrupted:1.0", None).unwrap_err();
    assert!(
        e.contains("manifest unknown") || e.contains("not found"),
        "{e}"
    );

    // Pushing again completes the image and skips the blob already there.
    let report = push(layout.path(), &reference, &insecure(&|_| {})).unwrap();
    assert_eq!((report.blobs_skipped, report.blobs_uploaded), (1, 3));
    assert!(skopeo_raw(&host, "kiln/interrupted:1.0", None).is_ok());
}

#[test]
fn a_second_push_skips_existing_blobs() {
    let reg = Registry::start(RegistryAuth::None);
    let layout = tempfile::tempdir().unwrap();
    single_image_layout(layout.path(), "again");
    let first = push(
        layout.path(),
        &reg.reference("kiln/again:1.0"),
        &insecure(&|_| {}),
    )
    .unwrap();
    assert_eq!((first.blobs_uploaded, first.blobs_skipped), (2, 0));
    let (lines, progress) = collect_progress();
    let second = push(
        layout.path(),
        &reg.reference("kiln/again:latest"),
        &insecure(&progress),
    )
    .unwrap();
    assert_eq!((second.blobs_uploaded, second.blobs_skipped), (0, 2));
    assert_eq!(second.digest, first.digest);
    // The manifest is there by digest: only the new tag is sent.
    assert_eq!((second.manifests_pushed, second.manifests_skipped), (0, 1));
    assert!(!second.tag_unchanged, "latest was a new tag");
    assert_eq!(
        lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("blob ") && l.contains("already present"))
            .count(),
        2
    );
    let raw = skopeo_raw(&reg.host(), "kiln/again:latest", None).unwrap();
    assert_eq!(sha256(&raw), first.digest);
    // The same tag again: nothing at all is sent.
    let third = push(
        layout.path(),
        &reg.reference("kiln/again:latest"),
        &insecure(&|_| {}),
    )
    .unwrap();
    assert_eq!((third.blobs_uploaded, third.manifests_pushed), (0, 0));
    assert!(third.tag_unchanged);
}

#[test]
fn streams_a_large_layer() {
    let reg = Registry::start(RegistryAuth::None);
    let layout = tempfile::tempdir().unwrap();
    // 24 MiB of incompressible bytes.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let big: Vec<u8> = (0..3 << 20)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let layer = write_blob(layout.path(), LAYER_GZIP, &big);
    let config = write_blob(
        layout.path(),
        CONFIG_V1,
        br#"{"architecture":"amd64","os":"linux"}"#,
    );
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_V1,
        "config": config,
        "layers": [layer],
    });
    let manifest = write_blob(
        layout.path(),
        MANIFEST_V1,
        &serde_json::to_vec(&manifest).unwrap(),
    );
    write_index_json(layout.path(), vec![manifest.clone()]);
    let report = push(
        layout.path(),
        &reg.reference("kiln/big:1"),
        &insecure(&|_| {}),
    )
    .unwrap();
    assert_eq!(report.digest, manifest["digest"].as_str().unwrap());
    assert!(reg
        .stored_blobs()
        .contains(&layer["digest"].as_str().unwrap().to_string()));
    let stored = reg.dir.path().join(format!(
        "storage/docker/registry/v2/blobs/sha256/{}/{}/data",
        &layer["digest"].as_str().unwrap()[7..9],
        &layer["digest"].as_str().unwrap()[7..]
    ));
    assert_eq!(std::fs::metadata(stored).unwrap().len(), big.len() as u64);
}

// ---------------------------------------------------------------------------
// Bearer tokens: a real registry with `auth: token`, and a token server in
// the test that signs JWTs with a self-made RSA key (via openssl).

struct TokenIssuer {
    dir: tempfile::TempDir,
    kid: String,
}

impl TokenIssuer {
    fn new() -> TokenIssuer {
        need("openssl", "openssl");
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        let ok = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=kiln-test-token",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let spki = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(spki.status.success());
        // The libtrust key ID the registry derives from the certificate.
        let hash = sha2::Digest::finalize(sha2::Digest::chain_update(
            <sha2::Sha256 as sha2::Digest>::new(),
            &spki.stdout,
        ));
        let b32 = base32(&hash[..30]);
        let kid = b32
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        TokenIssuer { dir, kid }
    }

    fn cert(&self) -> std::path::PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn sign(&self, claims: &Value) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = serde_json::json!({ "typ": "JWT", "alg": "RS256", "kid": self.kid });
        let input = format!(
            "{}.{}",
            b64.encode(serde_json::to_vec(&header).unwrap()),
            b64.encode(serde_json::to_vec(claims).unwrap())
        );
        let mut child = std::process::Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(self.dir.path().join("key.pem"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        format!("{input}.{}", b64.encode(out.stdout))
    }
}

fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0);
    for &b in bytes {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Starts a token server granting what is asked to `user:password`.
fn token_server(issuer: Arc<TokenIssuer>, user: &'static str, password: &'static str) -> Server {
    use base64::Engine;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    Server::start(move |req| {
        if req.path() != "/token" {
            return Response::new(404);
        }
        if req.headers.get("authorization") != Some(&expected) {
            return Response::new(401).body(r#"{"details":"bad credentials"}"#);
        }
        let access: Vec<Value> = req
            .query("scope")
            .iter()
            .filter_map(|s| {
                let mut p = s.splitn(3, ':');
                let (t, name, actions) = (p.next()?, p.next()?, p.next()?);
                Some(serde_json::json!({ "type": t, "name": name, "actions": actions.split(',').collect::<Vec<_>>() }))
            })
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json::json!({
            "iss": "kiln-test-issuer",
            "sub": user,
            "aud": req.query("service").pop().unwrap_or_default(),
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": format!("{now}-{}", req.target.len()),
            "access": access,
        });
        let token = issuer.sign(&claims);
        // Only `access_token`, as some token servers answer.
        Response::new(200)
            .header("Content-Type", "application/json")
            .body(serde_json::json!({ "access_token": token, "expires_in": 300 }).to_string())
    })
}

#[test]
fn bearer_tokens_from_the_challenge_realm() {
    let issuer = Arc::new(TokenIssuer::new());
    let tokens = token_server(issuer.clone(), "kiln", "t0ken-pass");
    let reg = Registry::start(RegistryAuth::Token {
        realm: format!("http://127.0.0.1:{}/token", tokens.port),
        service: "kiln-test-registry".into(),
        issuer: "kiln-test-issuer".into(),
        cert: issuer.cert(),
    });
    let layout = tempfile::tempdir().unwrap();
    let index = multi_arch_layout(layout.path(), "bearer");
    let reference = reg.reference("kiln/bearer:1.0");
    let with = |c| PushOptions {
        insecure: true,
        credentials: c,
        progress: &|_| {},
    };

    let err = push(layout.path(), &reference, &with(creds("kiln", "nope"))).unwrap_err();
    assert!(matches!(err, RegistryError::AuthFailed { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("token server rejected the credentials"),
        "{err}"
    );
    let err = push(layout.path(), &reference, &with(None)).unwrap_err();
    assert!(err.to_string().contains("requires credentials"), "{err}");

    let before = tokens.requests().len();
    let report = push(
        layout.path(),
        &reference,
        &with(creds("kiln", "t0ken-pass")),
    )
    .unwrap();
    assert_eq!(report.digest, index["digest"].as_str().unwrap());
    let asked = tokens.requests()[before..].to_vec();
    assert_eq!(
        asked.len(),
        1,
        "the token is fetched once and cached: {asked:?}"
    );
    assert!(
        asked[0].contains("service=kiln-test-registry")
            && asked[0].contains("scope=repository%3Akiln%2Fbearer%3Apull%2Cpush"),
        "{asked:?}"
    );
    let raw = skopeo_raw(&reg.host(), "kiln/bearer:1.0", Some("kiln:t0ken-pass"))
        .unwrap_or_else(|e| panic!("{e}\n{}", reg.log()));
    assert_eq!(sha256(&raw), report.digest);
}

// ---------------------------------------------------------------------------
// Faults a real registry does not produce, on an in-process fake.

fn fake_reference(server: &Server, repo_tag: &str) -> Reference {
    Reference::parse(&format!("127.0.0.1:{}/{repo_tag}", server.port)).unwrap()
}

fn manifest_puts(server: &Server) -> Vec<String> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PUT ") && r.contains("/manifests/"))
        .collect()
}

#[test]
fn a_registry_storing_other_bytes_is_a_digest_mismatch_and_nothing_is_tagged() {
    let fake = Arc::new(FakeRegistry::default());
    let f = fake.clone();
    let server = Server::start(move |req| {
        let resp = f.handle(req);
        if req.method == "PUT" && req.path().contains("/manifests/") {
            let wrong = sha256(b"something else");
            return Response::new(201).header("Docker-Content-Digest", &wrong);
        }
        resp
    });
    let layout = tempfile::tempdir().unwrap();
    let manifest = single_image_layout(layout.path(), "mismatch");
    let err = push(
        layout.path(),
        &fake_reference(&server, "kiln/m:1.0"),
        &insecure(&|_| {}),
    )
    .unwrap_err();
    match &err {
        RegistryError::DigestMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, manifest["digest"].as_str().unwrap());
            assert_eq!(actual, &sha256(b"something else"));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().starts_with("digest mismatch"), "{err}");
    let puts = manifest_puts(&server);
    assert_eq!(puts.len(), 1, "{puts:?}");
    assert!(
        puts[0].ends_with(manifest["digest"].as_str().unwrap()),
        "only by digest: {puts:?}"
    );
}

#[test]
fn a_dropped_blob_upload_is_retried_then_fails_without_a_tag() {
    let fake = Arc::new(FakeRegistry::default());
    let f = fake.clone();
    let server = Server::start(move |req| {
        // Every upload of the gzip layer (the larger blob) loses its
        // connection before the registry answers.
        if req.method == "PUT"
            && req.path().contains("/blobs/uploads/")
            && req.body.starts_with(&[0x1f, 0x8b])
        {
            return Response::dropped();
        }
        f.handle(req)
    });
    let layout = tempfile::tempdir().unwrap();
    single_image_layout(layout.path(), "dropped");
    let err = push(
        layout.path(),
        &fake_reference(&server, "kiln/d:1.0"),
        &insecure(&|_| {}),
    )
    .unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err:?}");
    let uploads = server
        .requests()
        .iter()
        .filter(|r| r.starts_with("POST ") && r.contains("/blobs/uploads/"))
        .count();
    assert!(
        uploads >= 3,
        "each attempt opens a new upload session: {:?}",
        server.requests()
    );
    assert!(manifest_puts(&server).is_empty(), "{:?}", server.requests());
    assert!(fake.manifests.lock().unwrap().is_empty());
}

#[test]
fn transient_errors_are_retried_and_relative_locations_followed() {
    let fake = Arc::new(FakeRegistry::default());
    let f = fake.clone();
    let failures = AtomicUsize::new(0);
    let server = Server::start(move |req| {
        // The first HEAD and the first manifest PUT fail with 503.
        let first = (req.method == "HEAD" && failures.fetch_or(1, Ordering::SeqCst) & 1 == 0)
            || (req.method == "PUT"
                && req.path().contains("/manifests/")
                && failures.fetch_or(2, Ordering::SeqCst) & 2 == 0);
        if first {
            return Response::new(503)
                .body(r#"{"errors":[{"code":"UNAVAILABLE","message":"try again"}]}"#);
        }
        f.handle(req)
    });
    let layout = tempfile::tempdir().unwrap();
    let manifest = single_image_layout(layout.path(), "retry");
    let report = push(
        layout.path(),
        &fake_reference(&server, "kiln/r:1.0"),
        &insecure(&|_| {}),
    )
    .unwrap();
    assert_eq!(report.digest, manifest["digest"].as_str().unwrap());
    let stored = fake.manifests.lock().unwrap();
    let tagged = stored.get("1.0").expect("tagged");
    assert_eq!(sha256(tagged), report.digest);
    assert_eq!(fake.blobs.lock().unwrap().len(), 2);
}

#[test]
fn registry_errors_carry_the_registry_message() {
    let server = Server::start(|req| {
        match (req.method.as_str(), req.path()) {
            ("GET", "/v2/") => return Response::new(200),
            ("HEAD", _) => return Response::new(404),
            _ => {}
        }
        Response::new(400)
            .body(r#"{"errors":[{"code":"NAME_INVALID","message":"invalid repository name"}]}"#)
    });
    let layout = tempfile::tempdir().unwrap();
    single_image_layout(layout.path(), "errors");
    let err = push(
        layout.path(),
        &fake_reference(&server, "kiln/e:1.0"),
        &insecure(&|_| {}),
    )
    .unwrap_err();
    assert!(
        matches!(err, RegistryError::Registry { status: 400, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("POST http://127.0.0.1:"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("NAME_INVALID: invalid repository name"),
        "{err}"
    );
}

//! The AWS publisher against moto in server mode (PyPI `moto[server]`,
//! started here on loopback): EBS direct APIs, EC2 images in two regions,
//! tags. What moto does not keep (RegisterImage's boot mode, ENA,
//! architecture and block device mapping) is checked on the requests
//! themselves, recorded by a proxy between Kiln and moto. moto's state is
//! read back with boto3, not with Kiln.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_cloud::aws::{publish, AwsImage, AwsOptions};
use kiln_cloud::CloudError;
use kiln_image::gpt::{types, write_disk, Partition};
use kiln_testkit::moto::Moto;

const MIB: u64 = 1 << 20;

/// A proxy in front of moto that records what Kiln sends and can cut the
/// connection after `cut_after` block uploads.
struct Proxy {
    port: u16,
    log: Arc<Mutex<Vec<u8>>>,
    blocks: Arc<AtomicUsize>,
}

fn proxy(to: u16, cut_after: Option<usize>) -> Proxy {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let blocks = Arc::new(AtomicUsize::new(0));
    let (log2, blocks2) = (log.clone(), blocks.clone());
    std::thread::spawn(move || {
        for client in l.incoming() {
            let Ok(mut client) = client else { return };
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", to)) else {
                return;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(Shutdown::Both);
            });
            let (log, blocks) = (log2.clone(), blocks2.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let pat = b"PUT /snapshots/";
                let mut tail: Vec<u8> = Vec::new();
                loop {
                    let n = match client.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut scan = std::mem::take(&mut tail);
                    scan.extend_from_slice(&buf[..n]);
                    let hits = scan.windows(pat.len()).filter(|w| w == pat).count();
                    tail = scan[scan.len().saturating_sub(pat.len() - 1)..].to_vec();
                    let total = blocks.fetch_add(hits, Ordering::SeqCst) + hits;
                    if cut_after.is_some_and(|k| total > k) {
                        let _ = server.shutdown(Shutdown::Both);
                        let _ = client.shutdown(Shutdown::Both);
                        break;
                    }
                    // Block bodies are not kept, only the requests' text.
                    if !scan.starts_with(pat) {
                        let mut l = log.lock().unwrap();
                        if l.len() < 64 << 20 {
                            l.extend_from_slice(&buf[..n.min(8192)]);
                        }
                    }
                    if server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = server.shutdown(Shutdown::Both);
            });
        }
    });
    Proxy { port, log, blocks }
}

/// A UEFI GPT disk of 24 MiB with 3 MiB of data in it (the rest zeros).
fn disk(dir: &Path) -> PathBuf {
    let esp = dir.join("esp.img");
    let data: Vec<u8> = (0..3 * MIB as usize)
        .map(|i| (i * 7 % 253) as u8 + 1)
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
    raw
}

fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

/// Runs the publisher in a child process's environment: credentials and
/// the endpoint are process-wide, so each case sets them for itself.
fn with_env<T>(vars: &[(&str, Option<&str>)], f: impl FnOnce() -> T) -> T {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let old: Vec<(String, Option<String>)> = vars
        .iter()
        .map(|(k, _)| (k.to_string(), std::env::var(k).ok()))
        .collect();
    for (k, v) in vars {
        // SAFETY: the test's threads that read the environment hold LOCK.
        unsafe {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
    }
    let r = f();
    for (k, v) in old {
        unsafe {
            match v {
                Some(v) => std::env::set_var(&k, v),
                None => std::env::remove_var(&k),
            }
        }
    }
    r
}

fn env_for(port: u16, home: &Path) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("AWS_ENDPOINT_URL", Some(format!("http://127.0.0.1:{port}"))),
        ("AWS_ACCESS_KEY_ID", Some("AKIDKILNTEST".into())),
        (
            "AWS_SECRET_ACCESS_KEY",
            Some("kiln-secret-never-printed".into()),
        ),
        ("AWS_SESSION_TOKEN", None),
        ("AWS_PROFILE", None),
        ("AWS_SHARED_CREDENTIALS_FILE", None),
        ("HOME", Some(home.display().to_string())),
    ]
}

fn run(
    env: &[(&'static str, Option<String>)],
    regions: &[&str],
    img: &AwsImage,
    replace: bool,
) -> Result<kiln_cloud::aws::AwsReport, CloudError> {
    let vars: Vec<(&str, Option<&str>)> = env.iter().map(|(k, v)| (*k, v.as_deref())).collect();
    let regions: Vec<String> = regions.iter().map(|s| s.to_string()).collect();
    let lines = Mutex::new(Vec::<String>::new());
    let progress = |m: &str| lines.lock().unwrap().push(m.to_string());
    with_env(&vars, || {
        publish(
            &regions,
            img,
            &AwsOptions {
                replace,
                progress: &progress,
                wait: Duration::from_secs(60),
            },
        )
    })
}

fn tagged(state: &serde_json::Value, region: &str, sha: &str) -> Vec<serde_json::Value> {
    Moto::images_tagged(state, region, sha)
}

#[test]
fn a_disk_becomes_an_ami_in_two_regions_once() {
    let t = tempfile::tempdir().unwrap();
    let m = Moto::start();
    let p = proxy(m.port, None);
    let env = env_for(p.port, t.path());
    let raw = disk(t.path());
    let sha = sha256_file(&raw);
    let img = AwsImage {
        disk: &raw,
        sha256: &sha,
        name: "kiln-test-13-amd64-20261207".into(),
        description: "Kiln test image".into(),
        architecture: "amd64",
        tags: vec![("kiln:image".into(), "kiln-test".into())],
    };
    let r = run(&env, &["eu-west-1", "us-east-1"], &img, false).unwrap();
    assert_eq!(r.images.len(), 2);
    assert_eq!(r.images[0].how, "uploaded");
    assert_eq!(r.images[1].how, "copied");
    // 24 MiB = 48 blocks; the ESP's 3 MiB and the GPT's sectors are not
    // zero, the rest is skipped.
    assert!(r.blocks_sent >= 6 && r.blocks_sent <= 10, "{r:?}");
    assert_eq!(r.blocks_sent + r.blocks_skipped, 48, "{r:?}");
    let state = m.state(&["eu-west-1", "us-east-1"]);
    for (region, img) in [("eu-west-1", &r.images[0]), ("us-east-1", &r.images[1])] {
        let found = tagged(&state, region, &sha);
        assert_eq!(found.len(), 1, "{region}: {state}");
        assert_eq!(found[0]["id"], img.image_id.as_str(), "{state}");
        assert_eq!(found[0]["name"], "kiln-test-13-amd64-20261207");
        assert_eq!(found[0]["tags"]["kiln:image"], "kiln-test");
    }
    let snaps: Vec<_> = state["eu-west-1"]["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["tags"]["kiln:sha256"] == sha.as_str())
        .collect();
    assert_eq!(snaps.len(), 1, "{state}");
    assert_eq!(snaps[0]["state"], "completed");
    // What moto does not keep, on the wire: RegisterImage asked for UEFI,
    // ENA, x86_64 and the uploaded snapshot as the root volume.
    let log = String::from_utf8_lossy(&p.log.lock().unwrap()).into_owned();
    let reg = log
        .split("Action=RegisterImage")
        .nth(1)
        .expect("RegisterImage was sent");
    let reg = reg.split("HTTP/1.1").next().unwrap();
    for want in [
        "BootMode=uefi",
        "EnaSupport=true",
        "Architecture=x86_64",
        "ImdsSupport=v2.0",
        &format!(
            "BlockDeviceMapping.1.Ebs.SnapshotId={}",
            snaps[0]["id"].as_str().unwrap()
        ),
    ] {
        assert!(reg.contains(want), "{want} not in RegisterImage: {reg}");
    }
    // Credentials went into signatures only.
    assert!(
        log.contains("AWS4-HMAC-SHA256 Credential=AKIDKILNTEST/"),
        "requests are signed"
    );
    assert!(!log.contains("kiln-secret-never-printed"));

    // Again: found by the digest tag, nothing uploaded or copied.
    let before = p.blocks.load(Ordering::SeqCst);
    let again = run(&env, &["eu-west-1", "us-east-1"], &img, false).unwrap();
    assert!(again.nothing_sent(), "{again:?}");
    assert_eq!(
        p.blocks.load(Ordering::SeqCst),
        before,
        "no block was sent again"
    );
    assert_eq!(again.images[0].image_id, r.images[0].image_id);
    assert_eq!(again.images[1].image_id, r.images[1].image_id);
    let state = m.state(&["eu-west-1", "us-east-1"]);
    assert_eq!(tagged(&state, "us-east-1", &sha).len(), 1, "{state}");

    // Another disk under the same name is refused, unless --replace.
    let other = t.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let raw2 = disk(&other);
    let mut b = std::fs::read(&raw2).unwrap();
    b[5 * MIB as usize] ^= 0xff;
    std::fs::write(&raw2, &b).unwrap();
    let sha2 = sha256_file(&raw2);
    let img2 = AwsImage {
        disk: &raw2,
        sha256: &sha2,
        ..AwsImage {
            tags: vec![],
            ..img
        }
    };
    let e = run(&env, &["eu-west-1"], &img2, false).unwrap_err();
    assert!(e.to_string().contains("already used in eu-west-1"), "{e}");
    assert!(e.hint().unwrap().contains("--replace"));
    let replaced = run(&env, &["eu-west-1"], &img2, true).unwrap();
    let state = m.state(&["eu-west-1"]);
    assert!(
        tagged(&state, "eu-west-1", &sha).is_empty(),
        "the old AMI is gone: {state}"
    );
    assert_eq!(
        tagged(&state, "eu-west-1", &sha2)[0]["id"],
        replaced.images[0].image_id.as_str()
    );
}

#[test]
fn bad_regions_credentials_and_disks_are_refused_before_upload() {
    let t = tempfile::tempdir().unwrap();
    let m = Moto::start();
    let env = env_for(m.port, t.path());
    let raw = disk(t.path());
    let sha = sha256_file(&raw);
    let img = |disk: &'static Path| AwsImage {
        disk,
        sha256: Box::leak(sha.clone().into_boxed_str()),
        name: "kiln-refusals".into(),
        description: "x".into(),
        architecture: "amd64",
        tags: vec![],
    };
    let raw: &'static Path = Box::leak(raw.into_boxed_path());
    // A region DescribeRegions does not list.
    let e = run(&env, &["eu-west-1", "eu-nowhere-9"], &img(raw), false).unwrap_err();
    assert!(
        e.to_string()
            .contains("region `eu-nowhere-9` does not exist"),
        "{e}"
    );
    assert!(e.hint().unwrap().contains("eu-west-1"), "{:?}", e.hint());
    // No credentials anywhere: the error says where they are read from.
    let mut none = env.clone();
    for (k, v) in none.iter_mut() {
        if k.starts_with("AWS_ACCESS") || k.starts_with("AWS_SECRET") {
            *v = None;
        }
    }
    let e = run(&none, &["eu-west-1"], &img(raw), false).unwrap_err();
    let text = format!("{e} {}", e.hint().unwrap());
    assert!(
        text.contains("AWS_ACCESS_KEY_ID") && text.contains(".aws/credentials"),
        "{text}"
    );
    // A profile file works, and its secret is never shown.
    let creds = t.path().join("creds");
    std::fs::write(
        &creds,
        "[ci]\naws_access_key_id = AKIDFILE\naws_secret_access_key = file-secret\n",
    )
    .unwrap();
    let mut file = none.clone();
    file.push((
        "AWS_SHARED_CREDENTIALS_FILE",
        Some(creds.display().to_string()),
    ));
    file.push(("AWS_PROFILE", Some("ci".into())));
    let ok = run(&file, &["eu-west-1"], &img(raw), false).unwrap();
    assert_eq!(ok.images[0].how, "uploaded");
    let mut wrong_profile = file.clone();
    wrong_profile.push(("AWS_PROFILE", Some("prod".into())));
    let e = run(&wrong_profile, &["eu-west-1"], &img(raw), false).unwrap_err();
    assert!(
        e.to_string().contains("profile `prod`") && !e.to_string().contains("file-secret"),
        "{e}"
    );
    // Not a UEFI GPT disk: nothing is sent.
    let junk: &'static Path = Box::leak(t.path().join("junk.raw").into_boxed_path());
    std::fs::write(junk, vec![1u8; 2 << 20]).unwrap();
    let e = run(&env, &["eu-west-1"], &img(junk), false).unwrap_err();
    assert!(e.to_string().contains("protective MBR"), "{e}");
    let mut arm = img(raw);
    arm.architecture = "riscv64";
    let e = run(&env, &["eu-west-1"], &arm, false).unwrap_err();
    assert!(e.to_string().contains("not riscv64"), "{e}");
}

#[test]
fn an_upload_cut_midway_leaves_no_snapshot_and_the_next_one_completes() {
    let t = tempfile::tempdir().unwrap();
    let m = Moto::start();
    let cut = proxy(m.port, Some(3));
    let raw = disk(t.path());
    let sha = sha256_file(&raw);
    let img = AwsImage {
        disk: &raw,
        sha256: &sha,
        name: "kiln-cut-upload".into(),
        description: "x".into(),
        architecture: "amd64",
        tags: vec![],
    };
    // Through a proxy that drops every connection after the third block:
    // the retries fail too, the snapshot is deleted (straight to moto,
    // since the proxy keeps cutting).
    let mut env = env_for(cut.port, t.path());
    env.push((
        "AWS_ENDPOINT_URL_EC2",
        Some(format!("http://127.0.0.1:{}", m.port)),
    ));
    let e = run(&env, &["eu-west-1"], &img, false).unwrap_err();
    assert!(matches!(e, CloudError::Transport { .. }), "{e}");
    assert!(
        e.hint().unwrap().contains("publishing again resumes"),
        "{:?}",
        e.hint()
    );
    let state = m.state(&["eu-west-1"]);
    assert!(
        tagged(&state, "eu-west-1", &sha).is_empty(),
        "no AMI: {state}"
    );
    let live: Vec<_> = state["eu-west-1"]["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["tags"]["kiln:sha256"] == sha.as_str())
        .collect();
    assert!(
        live.is_empty(),
        "the half-written snapshot was deleted: {state}"
    );
    // Straight to moto: it completes.
    let env = env_for(m.port, t.path());
    let r = run(&env, &["eu-west-1"], &img, false).unwrap();
    assert_eq!(r.images[0].how, "uploaded");
    let state = m.state(&["eu-west-1"]);
    assert_eq!(tagged(&state, "eu-west-1", &sha).len(), 1, "{state}");
}

//! `verify` of download trees a hostile mirror could serve: forged, replayed,
//! frozen, swapped and escaping documents, changed and linked files.

use std::path::{Path, PathBuf};

use kiln_attest::{SigningKey, VerifyingKey};
use kiln_publish::document::{Channel, File, Image, Version};
use kiln_publish::verify::{verify, VerifyOptions, VerifyReport};
use sha2::Digest;

fn key(dir: &Path, name: &str) -> SigningKey {
    let path = dir.join(format!("{name}.pem"));
    let o = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&path)
        .output()
        .expect("openssl is installed");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    SigningKey::from_pem_file(&path).unwrap()
}

const NOW: i64 = 1_800_000_000;

struct Tree {
    dir: tempfile::TempDir,
    key: SigningKey,
}

impl Tree {
    /// A tree with one image version of two pool files.
    fn new() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let key = key(dir.path(), "k");
        let t = Tree { dir, key };
        t.put_file("pool/web/a/rootfs.tar", b"the root filesystem");
        t.put_file("pool/web/b/manifest.json", b"{}");
        t.write_doc(&t.doc(1, NOW + 86_400));
        t
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("tree")
    }

    fn put_file(&self, rel: &str, bytes: &[u8]) {
        let p = self.root().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    fn file(&self, rel: &str, bytes: &[u8]) -> File {
        File {
            role: "artifact".into(),
            format: Some("tar".into()),
            architecture: Some("amd64".into()),
            path: rel.into(),
            size: bytes.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(bytes)),
        }
    }

    fn doc(&self, serial: u64, expires: i64) -> Channel {
        let mut c = Channel::new("stable");
        c.serial = serial;
        c.generated = kiln_publish::rfc3339(NOW - 10);
        c.expires = kiln_publish::rfc3339(expires);
        let files = vec![
            self.file("pool/web/a/rootfs.tar", b"the root filesystem"),
            self.file("pool/web/b/manifest.json", b"{}"),
        ];
        let mut image = Image::default();
        image.versions.insert(
            "20261201T000000Z-0123456789ab".into(),
            Version {
                build_id: "0".repeat(64),
                image_version: Some("1".into()),
                suite: "trixie".into(),
                architectures: vec!["amd64".into()],
                distroless: false,
                built: kiln_publish::rfc3339(NOW - 100),
                recipe_sha256: "1".repeat(64),
                packages: 3,
                files,
            },
        );
        c.images.insert("web".into(), image);
        c
    }

    fn write_doc(&self, c: &Channel) {
        self.put_file("channels/stable.json", c.sign(&self.key).as_bytes());
    }

    fn verify_with(&self, key: &VerifyingKey, now: i64, state: Option<&Path>) -> VerifyReport {
        verify(
            &self.root(),
            &VerifyOptions {
                key,
                channels: Vec::new(),
                now,
                state_dir: state.map(Path::to_path_buf),
                progress: &|_| {},
            },
        )
        .unwrap()
    }

    fn verify(&self) -> VerifyReport {
        self.verify_with(&self.key.verifying_key(), NOW, None)
    }
}

fn problems(r: &VerifyReport) -> String {
    r.channels
        .iter()
        .flat_map(|c| c.problems.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_good_tree_verifies_and_every_file_is_read() {
    let t = Tree::new();
    let r = t.verify();
    assert!(r.ok, "{}", problems(&r));
    assert_eq!(r.channels[0].files_checked, 2);
    assert_eq!(r.channels[0].bytes_checked, 21);
    assert_eq!(r.channels[0].serial, Some(1));
}

#[test]
fn a_changed_or_missing_file_is_named() {
    let t = Tree::new();
    t.put_file("pool/web/a/rootfs.tar", b"the root filesystem!");
    let r = t.verify();
    assert!(!r.ok);
    assert!(
        problems(&r).contains("pool/web/a/rootfs.tar: 20 bytes, the document says 19"),
        "{}",
        problems(&r)
    );
    // Same size, one byte flipped.
    t.put_file("pool/web/a/rootfs.tar", b"the root filesystEm");
    assert!(problems(&t.verify()).contains("pool/web/a/rootfs.tar: sha256 "));
    std::fs::remove_file(t.root().join("pool/web/b/manifest.json")).unwrap();
    assert!(problems(&t.verify()).contains("pool/web/b/manifest.json"));
}

#[test]
fn a_forged_document_or_another_key_is_refused() {
    let t = Tree::new();
    // The payload edited after signing (a file swapped for the attacker's).
    let path = t.root().join("channels/stable.json");
    let env: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let payload = env["payload"].as_str().unwrap();
    let mid = payload.len() / 2;
    let flipped = if &payload[mid..mid + 1] == "A" {
        "B"
    } else {
        "A"
    };
    let forged = format!("{}{flipped}{}", &payload[..mid], &payload[mid + 1..]);
    let mut env2 = env.clone();
    env2["payload"] = forged.into();
    std::fs::write(&path, env2.to_string()).unwrap();
    let r = t.verify();
    assert!(!r.ok);
    assert!(
        problems(&r).contains("signature does not verify"),
        "{}",
        problems(&r)
    );
    // Signed, but by someone else.
    std::fs::write(&path, env.to_string()).unwrap();
    let other = key(t.dir.path(), "other");
    let r = t.verify_with(&other.verifying_key(), NOW, None);
    assert!(!r.ok);
    assert!(
        problems(&r).contains("signature does not verify"),
        "{}",
        problems(&r)
    );
}

#[test]
fn an_older_document_is_a_rollback_once_a_newer_was_seen() {
    let t = Tree::new();
    let state = t.dir.path().join("state");
    let old = std::fs::read(t.root().join("channels/stable.json")).unwrap();
    assert!(t.verify_with(&t.key.verifying_key(), NOW, Some(&state)).ok);
    t.write_doc(&t.doc(2, NOW + 86_400));
    let r = t.verify_with(&t.key.verifying_key(), NOW, Some(&state));
    assert!(r.ok, "{}", problems(&r));
    assert_eq!(r.channels[0].last_seen_serial, Some(1));
    // The mirror serves the serial-1 document again: validly signed, but old.
    std::fs::write(t.root().join("channels/stable.json"), &old).unwrap();
    let r = t.verify_with(&t.key.verifying_key(), NOW, Some(&state));
    assert!(!r.ok);
    assert!(
        problems(&r).contains("rollback: serial 1 is older than serial 2"),
        "{}",
        problems(&r)
    );
    // Another document with serial 2 (the publisher signed two).
    let mut twin = t.doc(2, NOW + 2 * 86_400);
    twin.generated = kiln_publish::rfc3339(NOW);
    t.write_doc(&twin);
    let r = t.verify_with(&t.key.verifying_key(), NOW, Some(&state));
    assert!(
        problems(&r).contains("serial 2 was accepted before with other content"),
        "{}",
        problems(&r)
    );
}

#[test]
fn an_expired_document_is_a_frozen_tree() {
    let t = Tree::new();
    let r = t.verify_with(&t.key.verifying_key(), NOW + 86_400 + 1, None);
    assert!(!r.ok);
    assert!(problems(&r).contains("expired at"), "{}", problems(&r));
}

#[test]
fn a_document_moved_to_another_channel_is_refused() {
    let t = Tree::new();
    std::fs::copy(
        t.root().join("channels/stable.json"),
        t.root().join("channels/beta.json"),
    )
    .unwrap();
    let r = t.verify();
    assert!(!r.ok);
    assert!(
        problems(&r).contains("is the signed document of channel \"stable\", not \"beta\""),
        "{}",
        problems(&r)
    );
}

#[test]
fn signed_paths_that_leave_the_tree_are_refused_and_not_read() {
    let t = Tree::new();
    // A secret beside the tree whose hash the attacker knows.
    std::fs::write(t.dir.path().join("secret"), b"the root filesystem").unwrap();
    for evil in ["../secret", "/etc/passwd", "pool/../../secret"] {
        let mut c = t.doc(1, NOW + 86_400);
        c.images
            .get_mut("web")
            .unwrap()
            .versions
            .values_mut()
            .next()
            .unwrap()
            .files[0]
            .path = evil.into();
        t.write_doc(&c);
        let r = t.verify();
        assert!(!r.ok, "{evil} accepted");
        assert!(
            problems(&r).contains("web 20261201T000000Z-0123456789ab"),
            "{evil}: {}",
            problems(&r)
        );
        assert_eq!(r.channels[0].files_checked, 0, "{evil}: files were read");
    }
}

#[test]
fn a_pool_file_linked_out_of_the_tree_is_not_followed() {
    let t = Tree::new();
    let outside = t.dir.path().join("outside");
    std::fs::write(&outside, b"the root filesystem").unwrap();
    let p = t.root().join("pool/web/a/rootfs.tar");
    std::fs::remove_file(&p).unwrap();
    std::os::unix::fs::symlink(&outside, &p).unwrap();
    let r = t.verify();
    assert!(!r.ok, "a link out of the tree was followed");
    assert!(
        problems(&r).contains("pool/web/a/rootfs.tar"),
        "{}",
        problems(&r)
    );
    assert_eq!(r.channels[0].bytes_checked, 2, "the outside file was read");
    // The channel document itself as a link out.
    let doc = t.root().join("channels/stable.json");
    std::fs::rename(&doc, t.dir.path().join("doc.json")).unwrap();
    std::os::unix::fs::symlink(t.dir.path().join("doc.json"), &doc).unwrap();
    let r = t.verify();
    assert!(!r.ok);
    assert!(
        problems(&r).contains("channels/stable.json: cannot read it"),
        "{}",
        problems(&r)
    );
}

#[test]
fn an_oversized_document_is_not_read_whole() {
    let t = Tree::new();
    let f = std::fs::File::create(t.root().join("channels/stable.json")).unwrap();
    f.set_len(kiln_publish::document::MAX_DOCUMENT + 1).unwrap();
    let r = t.verify();
    assert!(!r.ok);
    assert!(problems(&r).contains("larger than"), "{}", problems(&r));
}

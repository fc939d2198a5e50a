//! DSSE envelopes against openssl: keys made by `openssl genpkey`, signatures
//! checked by `openssl pkeyutl -verify -rawin` over PAE bytes rebuilt here,
//! and the other way round.

mod common;

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::{provenance_input, run, text};
use kiln_attest::{
    parse_statement, sign_envelope, statement, unsigned_envelope, verify_envelope, AttestError,
    SigningKey, VerifyingKey,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

const OPENSSL: &str = "apt-get install openssl";

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = run("openssl", args, dir, OPENSSL);
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        text(&out)
    );
    text(&out)
}

/// key.pem and key.pub in `dir`, made by openssl.
fn make_key(dir: &Path, stem: &str) -> (SigningKey, VerifyingKey) {
    let pem = format!("{stem}.pem");
    let public = format!("{stem}.pub");
    openssl(dir, &["genpkey", "-algorithm", "ed25519", "-out", &pem]);
    openssl(dir, &["pkey", "-in", &pem, "-pubout", "-out", &public]);
    let signing = SigningKey::from_pem_file(dir.join(&pem)).expect("openssl's key loads");
    let verifying = VerifyingKey::from_pem_file(dir.join(&public)).expect("openssl's pubkey loads");
    (signing, verifying)
}

/// The DSSE pre-authentication encoding, written out here independently of
/// the crate.
fn pae_bytes(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(b"DSSEv1 ");
    v.extend_from_slice(payload_type.len().to_string().as_bytes());
    v.push(b' ');
    v.extend_from_slice(payload_type.as_bytes());
    v.push(b' ');
    v.extend_from_slice(payload.len().to_string().as_bytes());
    v.push(b' ');
    v.extend_from_slice(payload);
    v
}

fn b64(v: &Value) -> Vec<u8> {
    STANDARD.decode(v.as_str().unwrap()).unwrap()
}

#[test]
fn openssl_verifies_our_signature() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = make_key(dir.path(), "key");
    assert_eq!(key.verifying_key(), public);
    let payload = statement(&provenance_input());
    let envelope = sign_envelope(&payload, &key);

    let env: Value = serde_json::from_str(&envelope).unwrap();
    assert_eq!(env["payloadType"], "application/vnd.in-toto+json");
    assert_eq!(b64(&env["payload"]), payload);
    let sigs = env["signatures"].as_array().unwrap();
    assert_eq!(sigs.len(), 1);

    // keyid = sha256 of the SPKI DER, as openssl writes it.
    openssl(
        dir.path(),
        &[
            "pkey", "-pubin", "-in", "key.pub", "-outform", "DER", "-out", "key.der",
        ],
    );
    let der = std::fs::read(dir.path().join("key.der")).unwrap();
    assert_eq!(sigs[0]["keyid"], hex::encode(Sha256::digest(&der)));
    assert_eq!(public.keyid(), hex::encode(Sha256::digest(&der)));

    std::fs::write(
        dir.path().join("pae.bin"),
        pae_bytes("application/vnd.in-toto+json", &payload),
    )
    .unwrap();
    std::fs::write(dir.path().join("sig.bin"), b64(&sigs[0]["sig"])).unwrap();
    let out = openssl(
        dir.path(),
        &[
            "pkeyutl", "-verify", "-pubin", "-inkey", "key.pub", "-rawin", "-in", "pae.bin",
            "-sigfile", "sig.bin",
        ],
    );
    assert!(out.contains("Signature Verified Successfully"), "{out}");

    // The shell recipe of the crate docs builds the same PAE.
    std::fs::write(dir.path().join("payload.json"), &payload).unwrap();
    let script = r#"set -e
T=application/vnd.in-toto+json
printf 'DSSEv1 %d %s %d ' ${#T} "$T" "$(stat -c %s payload.json)" > pae2.bin
cat payload.json >> pae2.bin
openssl pkeyutl -verify -pubin -inkey key.pub -rawin -in pae2.bin -sigfile sig.bin"#;
    let out = run("bash", &["-c", script], dir.path(), "apt-get install bash");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(dir.path().join("pae2.bin")).unwrap(),
        std::fs::read(dir.path().join("pae.bin")).unwrap()
    );

    // And Kiln's own check agrees and gives the statement back.
    let verified = verify_envelope(&envelope, &public).expect("verifies");
    assert_eq!(verified, payload);
    let (subjects, deps) = parse_statement(&verified).unwrap();
    let input = provenance_input();
    assert_eq!(subjects, input.subjects);
    assert_eq!(deps, input.dependencies);
}

#[test]
fn we_verify_an_openssl_signature() {
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = make_key(dir.path(), "key");
    let payload = statement(&provenance_input());
    std::fs::write(
        dir.path().join("pae.bin"),
        pae_bytes("application/vnd.in-toto+json", &payload),
    )
    .unwrap();
    openssl(
        dir.path(),
        &[
            "pkeyutl", "-sign", "-inkey", "key.pem", "-rawin", "-in", "pae.bin", "-out", "sig.bin",
        ],
    );
    let sig = std::fs::read(dir.path().join("sig.bin")).unwrap();
    let envelope = serde_json::json!({
        "payloadType": "application/vnd.in-toto+json",
        "payload": STANDARD.encode(&payload),
        "signatures": [{"sig": STANDARD.encode(&sig)}],
    })
    .to_string();
    assert_eq!(verify_envelope(&envelope, &public).unwrap(), payload);
}

#[test]
fn tampering_and_other_keys_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = make_key(dir.path(), "key");
    let (_, other_public) = make_key(dir.path(), "other");
    let payload = statement(&provenance_input());
    let envelope = sign_envelope(&payload, &key);
    let env: Value = serde_json::from_str(&envelope).unwrap();

    // One byte of the payload changed.
    for position in [0, payload.len() / 2, payload.len() - 1] {
        let mut tampered = payload.clone();
        tampered[position] ^= 0x01;
        let mut e = env.clone();
        e["payload"] = STANDARD.encode(&tampered).into();
        let err = verify_envelope(&e.to_string(), &public).unwrap_err();
        assert!(matches!(err, AttestError::BadSignature { .. }), "{err}");
        assert!(
            err.hint().unwrap().contains("changed after signing"),
            "{:?}",
            err.hint()
        );
    }

    // One bit of the signature changed.
    let mut sig = b64(&env["signatures"][0]["sig"]);
    sig[10] ^= 0x80;
    let mut e = env.clone();
    e["signatures"][0]["sig"] = STANDARD.encode(&sig).into();
    assert!(matches!(
        verify_envelope(&e.to_string(), &public),
        Err(AttestError::BadSignature { .. })
    ));

    // The payload type is signed too.
    let mut e = env.clone();
    e["payloadType"] = "application/json".into();
    assert!(matches!(
        verify_envelope(&e.to_string(), &public),
        Err(AttestError::PayloadType { .. })
    ));

    // Another key.
    let err = verify_envelope(&envelope, &other_public).unwrap_err();
    assert!(matches!(err, AttestError::BadSignature { .. }), "{err}");
    assert!(err.to_string().contains(&public.keyid()), "{err}");
    assert!(
        err.hint().unwrap().contains("signed with another key"),
        "{:?}",
        err.hint()
    );

    // No signature, and not an envelope at all.
    let err = verify_envelope(&unsigned_envelope(&payload), &public).unwrap_err();
    assert!(matches!(err, AttestError::Unsigned), "{err}");
    for junk in [
        "",
        "{}",
        "[1]",
        "{\"payloadType\": 1}",
        &envelope[..envelope.len() - 1],
    ] {
        let err = verify_envelope(junk, &public).unwrap_err();
        assert!(
            matches!(err, AttestError::EnvelopeJson { .. }),
            "{junk}: {err}"
        );
    }
    let mut e = env.clone();
    e["payload"] = "not base64!".into();
    assert!(matches!(
        verify_envelope(&e.to_string(), &public),
        Err(AttestError::Base64 { .. })
    ));
}

#[test]
fn unsigned_envelope_shape() {
    let env: Value = serde_json::from_str(&unsigned_envelope(b"{}")).unwrap();
    assert_eq!(
        env,
        serde_json::json!({
            "payloadType": "application/vnd.in-toto+json",
            "payload": "e30=",
            "signatures": [],
        })
    );
}

#[test]
fn wrong_key_files_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_key(d, "key");
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "rsa.pem",
        ],
    );
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ec.pem",
        ],
    );
    openssl(d, &["pkey", "-in", "rsa.pem", "-pubout", "-out", "rsa.pub"]);
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "ed25519",
            "-aes-128-cbc",
            "-pass",
            "pass:x",
            "-out",
            "enc.pem",
        ],
    );
    std::fs::write(d.join("junk.pem"), "just some text\n").unwrap();

    let wrong = |e: AttestError, found: &str, fix: &str| {
        let msg = e.to_string();
        let hint = e.hint().unwrap_or_default();
        assert!(matches!(e, AttestError::WrongKey { .. }), "{msg}");
        assert!(msg.contains(found), "{msg}");
        assert!(hint.contains(fix), "{msg}: {hint}");
    };
    let make = "openssl genpkey -algorithm ed25519";

    let e = SigningKey::from_pem_file(d.join("rsa.pem")).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{} holds an RSA private key, but Kiln needs an Ed25519 private key in PKCS#8 PEM \
             ('-----BEGIN PRIVATE KEY-----')",
            d.join("rsa.pem").display()
        )
    );
    wrong(e, "RSA", make);
    wrong(
        SigningKey::from_pem_file(d.join("ec.pem")).unwrap_err(),
        "an EC",
        make,
    );
    wrong(
        SigningKey::from_pem_file(d.join("key.pub")).unwrap_err(),
        "a public key",
        "private key",
    );
    wrong(
        SigningKey::from_pem_file(d.join("enc.pem")).unwrap_err(),
        "passphrase",
        "openssl pkey",
    );
    wrong(
        VerifyingKey::from_pem_file(d.join("rsa.pub")).unwrap_err(),
        "an RSA public key",
        make,
    );
    wrong(
        VerifyingKey::from_pem_file(d.join("key.pem")).unwrap_err(),
        "a private key",
        "-pubout",
    );

    let e = SigningKey::from_pem_file(d.join("missing.pem")).unwrap_err();
    assert!(matches!(e, AttestError::KeyMissing { .. }), "{e}");
    assert!(e.to_string().contains("missing.pem"), "{e}");
    assert!(e.hint().unwrap().contains(make));

    let e = SigningKey::from_pem_file(d.join("junk.pem")).unwrap_err();
    assert!(matches!(e, AttestError::NotPem { .. }), "{e}");
    assert!(e.hint().unwrap().contains(make));

    openssl(
        d,
        &[
            "pkey", "-in", "key.pem", "-outform", "DER", "-out", "key.der",
        ],
    );
    let e = SigningKey::from_pem_file(d.join("key.der")).unwrap_err();
    assert!(matches!(e, AttestError::NotPem { .. }), "{e}");
    assert!(e.to_string().contains("-inform DER"), "{e}");
}

#[test]
fn public_key_pem_round_trips_through_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = make_key(dir.path(), "key");
    assert_eq!(
        key.verifying_key().to_pem(),
        std::fs::read_to_string(dir.path().join("key.pub")).unwrap()
    );
}

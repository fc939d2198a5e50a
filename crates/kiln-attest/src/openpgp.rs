//! OpenPGP (RFC 4880) for the one key Kiln signs with: its Ed25519 key as
//! an OpenPGP v4 EdDSA key, and detached signatures of files.
//!
//! systemd-sysupdate authenticates an update channel's `SHA256SUMS` with
//! `gpg --verify SHA256SUMS.gpg` against a keyring the image carries
//! (`/usr/lib/systemd/import-pubring.gpg`). So that one key signs the
//! provenance, the channel documents and the sysupdate listing, the
//! signing key is written out as an OpenPGP key here, with no GnuPG on the
//! build host:
//!
//! - [`public_keyring`]: a transferable public key (key packet, user ID,
//!   positive self-certification), the bytes of a binary keyring;
//! - [`detached_signature`]: a binary-document signature packet, what
//!   `gpg --detach-sign` writes;
//! - [`verify_detached`]: checks such a signature with the public key, for
//!   `kiln verify` (a strict, bounded reader of exactly what Kiln writes).
//!
//! Everything is deterministic: the key's creation time is fixed (so its
//! fingerprint depends on the key alone) and a signature carries the time
//! it is given. The output is checked against GnuPG's `gpgv` in the tests.

use sha1::Digest as _;
use sha2::{Digest as _, Sha256};

use crate::{SigningKey, VerifyingKey};

/// The creation time written into the key packet: fixed, so the same
/// Ed25519 key always has the same OpenPGP fingerprint.
pub const KEY_CREATED: u32 = 1_577_836_800; // 2020-01-01T00:00:00Z

/// OID of Ed25519 for the (legacy) EdDSA algorithm 22, as gpg writes it.
const ED25519_OID: [u8; 9] = [0x2B, 0x06, 0x01, 0x04, 0x01, 0xDA, 0x47, 0x0F, 0x01];
const ALGO_EDDSA: u8 = 22;
const HASH_SHA256: u8 = 8;
const SIG_BINARY: u8 = 0x00;
const SIG_POSITIVE_CERT: u8 = 0x13;

/// The body of the public-key packet (tag 6).
fn key_body(key: &VerifyingKey) -> Vec<u8> {
    let mut b = vec![4];
    b.extend_from_slice(&KEY_CREATED.to_be_bytes());
    b.push(ALGO_EDDSA);
    b.push(ED25519_OID.len() as u8);
    b.extend_from_slice(&ED25519_OID);
    // MPI of the native point: 0x40 followed by the 32 bytes (263 bits).
    b.extend_from_slice(&263u16.to_be_bytes());
    b.push(0x40);
    b.extend_from_slice(&key.to_bytes());
    b
}

/// The v4 fingerprint: SHA-1 of 0x99, the body's length and the body.
pub fn fingerprint(key: &VerifyingKey) -> [u8; 20] {
    let body = key_body(key);
    let mut h = sha1::Sha1::new();
    h.update([0x99]);
    h.update((body.len() as u16).to_be_bytes());
    h.update(&body);
    h.finalize().into()
}

/// The fingerprint as gpg prints it (upper-case hex).
pub fn fingerprint_hex(key: &VerifyingKey) -> String {
    hex::encode_upper(fingerprint(key))
}

/// The user ID of the key: names it by its Kiln key id.
fn user_id(key: &VerifyingKey) -> String {
    format!("Kiln image signing key {}", &key.keyid()[..16])
}

/// A new-format packet: tag, length, body.
fn packet(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![0xC0 | tag];
    let n = body.len();
    if n < 192 {
        p.push(n as u8);
    } else if n < 8384 {
        let m = n - 192;
        p.push(((m >> 8) + 192) as u8);
        p.push((m & 0xFF) as u8);
    } else {
        p.push(0xFF);
        p.extend_from_slice(&(n as u32).to_be_bytes());
    }
    p.extend_from_slice(body);
    p
}

fn subpacket(kind: u8, data: &[u8]) -> Vec<u8> {
    debug_assert!(data.len() < 191);
    let mut s = vec![(data.len() + 1) as u8, kind];
    s.extend_from_slice(data);
    s
}

/// An MPI of a big-endian number: leading zero bits dropped.
fn mpi(bytes: &[u8]) -> Vec<u8> {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    let v = &bytes[start..];
    let bits = if v.is_empty() {
        0
    } else {
        (v.len() - 1) * 8 + (8 - v[0].leading_zeros() as usize)
    };
    let mut out = (bits as u16).to_be_bytes().to_vec();
    out.extend_from_slice(v);
    out
}

/// The hashed part of a v4 signature: version, type, algorithms and the
/// hashed subpackets.
fn sig_head(kind: u8, hashed: &[u8]) -> Vec<u8> {
    let mut h = vec![4, kind, ALGO_EDDSA, HASH_SHA256];
    h.extend_from_slice(&(hashed.len() as u16).to_be_bytes());
    h.extend_from_slice(hashed);
    h
}

/// The v4 trailer that closes the hashed data.
fn trailer(head: &[u8]) -> Vec<u8> {
    let mut t = vec![4, 0xFF];
    t.extend_from_slice(&(head.len() as u32).to_be_bytes());
    t
}

/// A complete signature packet over `prefix` (what is hashed before the
/// signature's own fields).
fn signature(key: &SigningKey, kind: u8, prefix: &[Vec<u8>], created: u32, flags: bool) -> Vec<u8> {
    let public = key.verifying_key();
    let fpr = fingerprint(&public);
    let mut hashed = subpacket(2, &created.to_be_bytes());
    let mut issuer_fpr = vec![4];
    issuer_fpr.extend_from_slice(&fpr);
    hashed.extend(subpacket(33, &issuer_fpr));
    if flags {
        // Key flags: certify and sign.
        hashed.extend(subpacket(27, &[0x03]));
    }
    let head = sig_head(kind, &hashed);
    let mut h = Sha256::new();
    for p in prefix {
        h.update(p);
    }
    h.update(&head);
    h.update(trailer(&head));
    let digest = h.finalize();
    let sig = key.sign(&digest);
    let unhashed = subpacket(16, &fpr[12..]);
    let mut body = head;
    body.extend_from_slice(&(unhashed.len() as u16).to_be_bytes());
    body.extend_from_slice(&unhashed);
    body.extend_from_slice(&digest[..2]);
    body.extend(mpi(&sig[..32]));
    body.extend(mpi(&sig[32..]));
    packet(2, &body)
}

fn key_prefix(public: &VerifyingKey) -> Vec<u8> {
    let body = key_body(public);
    let mut p = vec![0x99];
    p.extend_from_slice(&(body.len() as u16).to_be_bytes());
    p.extend(body);
    p
}

/// The public key as a binary OpenPGP keyring (what
/// `gpg --export KEY` writes): key, user ID, self-certification.
pub fn public_keyring(key: &SigningKey) -> Vec<u8> {
    let public = key.verifying_key();
    let uid = user_id(&public);
    let mut uid_prefix = vec![0xB4];
    uid_prefix.extend_from_slice(&(uid.len() as u32).to_be_bytes());
    uid_prefix.extend_from_slice(uid.as_bytes());
    let mut out = packet(6, &key_body(&public));
    out.extend(packet(13, uid.as_bytes()));
    out.extend(signature(
        key,
        SIG_POSITIVE_CERT,
        &[key_prefix(&public), uid_prefix],
        KEY_CREATED,
        true,
    ));
    out
}

/// A detached binary-document signature of `data` made at `created`
/// (what `gpg --detach-sign` writes).
pub fn detached_signature(key: &SigningKey, data: &[u8], created: u32) -> Vec<u8> {
    signature(key, SIG_BINARY, &[data.to_vec()], created, false)
}

/// Why a detached signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgpError {
    #[error("not an OpenPGP signature packet ({0})")]
    Malformed(&'static str),
    #[error("the signature was made by key {found}, not {wanted}")]
    OtherKey { found: String, wanted: String },
    #[error("the signature does not match the signed file")]
    Mismatch,
}

/// Checks a detached signature made by [`detached_signature`] (a v4
/// binary-document EdDSA/SHA-256 signature) against `key`; returns its
/// creation time.
pub fn verify_detached(key: &VerifyingKey, data: &[u8], sig: &[u8]) -> Result<u32, PgpError> {
    use PgpError::Malformed as M;
    let (&tag, rest) = sig.split_first().ok_or(M("empty"))?;
    if tag != 0xC2 {
        return Err(M("not a new-format signature packet"));
    }
    let (len, body) = match rest {
        [n @ 0..=191, b @ ..] => (*n as usize, b),
        [a @ 192..=223, b, r @ ..] => (((*a as usize - 192) << 8) + *b as usize + 192, r),
        _ => return Err(M("unsupported length")),
    };
    if body.len() != len {
        return Err(M("length does not match the packet"));
    }
    if body.len() < 6 || body[..4] != [4, SIG_BINARY, ALGO_EDDSA, HASH_SHA256] {
        return Err(M("not a v4 EdDSA SHA-256 binary-document signature"));
    }
    let hashed_len = u16::from_be_bytes([body[4], body[5]]) as usize;
    let head_end = 6 + hashed_len;
    let head = body.get(..head_end).ok_or(M("truncated"))?;
    let mut created = None;
    let mut issuer = None;
    let mut sub = &head[6..];
    while let Some((&n, r)) = sub.split_first() {
        let n = n as usize;
        if n == 0 || n >= 192 || r.len() < n {
            return Err(M("bad subpacket"));
        }
        let (kind, data) = (r[0] & 0x7F, &r[1..n]);
        match kind {
            2 if data.len() == 4 => created = Some(u32::from_be_bytes(data.try_into().unwrap())),
            33 if data.len() == 21 && data[0] == 4 => issuer = Some(data[1..].to_vec()),
            _ if r[0] & 0x80 != 0 => return Err(M("unknown critical subpacket")),
            _ => {}
        }
        sub = &r[n..];
    }
    let created = created.ok_or(M("no creation time"))?;
    let wanted = fingerprint(key);
    match issuer {
        Some(f) if f != wanted => {
            return Err(PgpError::OtherKey {
                found: hex::encode_upper(f),
                wanted: hex::encode_upper(wanted),
            })
        }
        Some(_) => {}
        None => return Err(M("no issuer fingerprint")),
    }
    let rest = &body[head_end..];
    let unhashed_len = u16::from_be_bytes([
        *rest.first().ok_or(M("truncated"))?,
        *rest.get(1).ok_or(M("truncated"))?,
    ]) as usize;
    // Unhashed: nothing, or exactly the issuer key id (it is not signed,
    // so nothing else is taken from there).
    let unhashed = rest.get(2..2 + unhashed_len).ok_or(M("truncated"))?;
    if !unhashed.is_empty() && unhashed != subpacket(16, &wanted[12..]).as_slice() {
        return Err(M("unexpected unhashed subpackets"));
    }
    let rest = &rest[2 + unhashed_len..];
    let (left, mut mpis) = rest.split_at_checked(2).ok_or(M("truncated"))?;
    let mut parts = Vec::new();
    for _ in 0..2 {
        let bits = u16::from_be_bytes([
            *mpis.first().ok_or(M("truncated"))?,
            *mpis.get(1).ok_or(M("truncated"))?,
        ]) as usize;
        let n = bits.div_ceil(8);
        if n > 32 {
            return Err(M("signature value too long"));
        }
        let v = mpis.get(2..2 + n).ok_or(M("truncated"))?;
        if mpi(v) != mpis[..2 + n] {
            return Err(M("MPI length is not the value's bit length"));
        }
        let mut fixed = [0u8; 32];
        fixed[32 - n..].copy_from_slice(v);
        parts.extend_from_slice(&fixed);
        mpis = &mpis[2 + n..];
    }
    if !mpis.is_empty() {
        return Err(M("trailing bytes"));
    }
    let mut h = Sha256::new();
    h.update(data);
    h.update(head);
    h.update(trailer(head));
    let digest = h.finalize();
    if left != &digest[..2] || !key.verify(&digest, &parts) {
        return Err(PgpError::Mismatch);
    }
    Ok(created)
}

/// ASCII armour (for humans and `gpg --import` from a paste).
pub fn armor(kind: &str, data: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = format!("-----BEGIN PGP {kind}-----\n\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    let crc = crc24(data);
    let c = base64::engine::general_purpose::STANDARD.encode(&crc.to_be_bytes()[1..]);
    out.push_str(&format!("={c}\n-----END PGP {kind}-----\n"));
    out
}

fn crc24(data: &[u8]) -> u32 {
    let mut crc: u32 = 0xB704CE;
    for &b in data {
        crc ^= (b as u32) << 16;
        for _ in 0..8 {
            crc <<= 1;
            if crc & 0x1000000 != 0 {
                crc ^= 0x1864CFB;
            }
        }
    }
    crc & 0xFFFFFF
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBa5L1T55v8LU+qNQmjri6FsqJiJDQlXaZ7Omo2+R0XB\n-----END PRIVATE KEY-----\n";
    const OTHER: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIC0NR7IWdkd7SDR+pS40FczuLdjD9wNfWp+2QzNEbkSg\n-----END PRIVATE KEY-----\n";

    fn gpgv(dir: &std::path::Path, keyring: &[u8], data: &[u8], sig: &[u8]) -> (bool, String) {
        std::fs::write(dir.join("ring.gpg"), keyring).unwrap();
        std::fs::write(dir.join("data"), data).unwrap();
        std::fs::write(dir.join("data.gpg"), sig).unwrap();
        let out = Command::new("gpgv")
            .arg("--homedir")
            .arg(dir)
            .arg("--keyring")
            .arg(dir.join("ring.gpg"))
            .arg(dir.join("data.gpg"))
            .arg(dir.join("data"))
            .output()
            .expect("gpgv (package gpgv) runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    #[test]
    fn gnupg_accepts_the_key_and_signature_and_refuses_changes() {
        let key = SigningKey::from_pem(PEM).unwrap();
        let other = SigningKey::from_pem(OTHER).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ring = public_keyring(&key);
        let data = b"0123 NAME_1_abc.usr.raw.gz\n";
        let sig = detached_signature(&key, data, 1_800_000_000);
        let (ok, err) = gpgv(dir.path(), &ring, data, &sig);
        assert!(ok, "gpgv refused Kiln's signature: {err}");
        assert!(
            err.contains(&fingerprint_hex(&key.verifying_key())),
            "gpgv names the key by its fingerprint: {err}"
        );
        // A changed file, and a signature by another key.
        let (ok, _) = gpgv(dir.path(), &ring, b"0124 NAME_1_abc.usr.raw.gz\n", &sig);
        assert!(!ok, "gpgv accepted a changed file");
        let forged = detached_signature(&other, data, 1_800_000_000);
        let (ok, err) = gpgv(dir.path(), &ring, data, &forged);
        assert!(!ok, "gpgv accepted another key's signature: {err}");
        // gpg itself (as systemd-pull runs it) with the same keyring.
        let gpg_verify = || {
            Command::new("gpg")
                .arg("--homedir")
                .arg(dir.path())
                .args([
                    "--no-options",
                    "--no-default-keyring",
                    "--batch",
                    "--trust-model=always",
                    "--keyring",
                ])
                .arg(dir.path().join("ring.gpg"))
                .arg("--verify")
                .arg(dir.path().join("data.gpg"))
                .arg(dir.path().join("data"))
                .output()
                .unwrap()
        };
        let out = gpg_verify();
        std::fs::write(dir.path().join("data.gpg"), &sig).unwrap();
        let out2 = gpg_verify();
        assert!(!out.status.success(), "gpg accepted the forged signature");
        assert!(
            out2.status.success(),
            "gpg --verify refused: {}",
            String::from_utf8_lossy(&out2.stderr)
        );
    }

    #[test]
    fn own_reader_checks_key_data_and_shape() {
        let key = SigningKey::from_pem(PEM).unwrap();
        let other = SigningKey::from_pem(OTHER).unwrap();
        let data = b"SHA256SUMS body\n";
        let sig = detached_signature(&key, data, 1_800_000_123);
        assert_eq!(
            verify_detached(&key.verifying_key(), data, &sig),
            Ok(1_800_000_123)
        );
        assert_eq!(
            verify_detached(&key.verifying_key(), b"SHA256SUMS bodY\n", &sig),
            Err(PgpError::Mismatch)
        );
        assert!(matches!(
            verify_detached(&other.verifying_key(), data, &sig),
            Err(PgpError::OtherKey { .. })
        ));
        // Every truncation and every flipped byte is refused, never a panic.
        for n in 0..sig.len() {
            assert!(verify_detached(&key.verifying_key(), data, &sig[..n]).is_err());
            let mut bad = sig.clone();
            bad[n] ^= 0x01;
            assert!(
                verify_detached(&key.verifying_key(), data, &bad).is_err(),
                "byte {n} flipped was accepted"
            );
        }
        // Deterministic.
        assert_eq!(sig, detached_signature(&key, data, 1_800_000_123));
        assert_eq!(public_keyring(&key), public_keyring(&key));
        assert!(armor("PUBLIC KEY BLOCK", &public_keyring(&key))
            .starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n"));
    }
}

//! OpenPGP checks of Release files, done by `gpgv` exactly as apt does.
//!
//! apt itself delegates to gpgv; doing the same keeps Kiln's trust decisions
//! identical to the host's and avoids a second OpenPGP implementation.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::ArchiveError;
use crate::sources::Keyring;

/// Verifies a clearsigned InRelease and returns exactly the signed text.
pub fn verify_clearsigned(
    inrelease: &[u8],
    keyring: &Keyring,
    source_name: &str,
) -> Result<String, ArchiveError> {
    let dir = tempdir()?;
    let input = dir.path().join("InRelease");
    write(&input, inrelease)?;
    let out = dir.path().join("Release");
    run_gpgv(dir.path(), keyring, source_name, &[&input], Some(&out))?;
    let text = std::fs::read(&out).map_err(|e| io("reading gpgv output", e))?;
    String::from_utf8(text).map_err(|_| ArchiveError::BadRelease {
        source_name: source_name.into(),
        message: "not UTF-8".into(),
    })
}

/// Verifies a Release file against its detached `Release.gpg` signature.
pub fn verify_detached(
    release: &[u8],
    signature: &[u8],
    keyring: &Keyring,
    source_name: &str,
) -> Result<(), ArchiveError> {
    let dir = tempdir()?;
    let data = dir.path().join("Release");
    let sig = dir.path().join("Release.gpg");
    write(&data, release)?;
    write(&sig, signature)?;
    run_gpgv(dir.path(), keyring, source_name, &[&sig, &data], None)
}

/// Strips the OpenPGP clearsign wrapper without checking anything, for
/// sources the user explicitly marked `allow-unsigned`.
pub fn strip_clearsign(text: &str) -> String {
    if !text.starts_with("-----BEGIN PGP SIGNED MESSAGE-----") {
        return text.to_string();
    }
    let mut lines = text.lines();
    // Armor headers end with an empty line.
    for l in lines.by_ref() {
        if l.trim().is_empty() {
            break;
        }
    }
    let mut out = String::new();
    for l in lines {
        if l.starts_with("-----BEGIN PGP SIGNATURE-----") {
            break;
        }
        out.push_str(l.strip_prefix("- ").unwrap_or(l));
        out.push('\n');
    }
    out
}

fn tempdir() -> Result<tempfile::TempDir, ArchiveError> {
    tempfile::Builder::new()
        .prefix("kiln-gpgv")
        .tempdir()
        .map_err(|e| io("creating a temporary directory", e))
}

fn write(p: &Path, b: &[u8]) -> Result<(), ArchiveError> {
    std::fs::write(p, b).map_err(|e| io(&format!("writing {}", p.display()), e))
}

fn io(what: &str, e: std::io::Error) -> ArchiveError {
    ArchiveError::Io {
        what: what.to_string(),
        source: e,
    }
}

/// Turns every key of the keyring into a binary keyring file gpgv can read.
fn keyring_files(
    dir: &Path,
    keyring: &Keyring,
    source_name: &str,
) -> Result<Vec<PathBuf>, ArchiveError> {
    let bad = |detail: String| ArchiveError::BadSignature {
        source_name: source_name.to_string(),
        keyring: keyring.describe(),
        detail,
    };
    let mut out = Vec::new();
    let mut armored = Vec::new();
    match keyring {
        Keyring::Inline(text) => armored.push(text.clone()),
        Keyring::Files(files) => {
            if files.is_empty() {
                return Err(bad("no keyring is configured".into()));
            }
            for f in files {
                let bytes = std::fs::read(f)
                    .map_err(|e| bad(format!("cannot read keyring {}: {e}", f.display())))?;
                if bytes.starts_with(b"-----BEGIN") {
                    armored.push(String::from_utf8_lossy(&bytes).into_owned());
                } else {
                    out.push(std::path::absolute(f).unwrap_or_else(|_| f.clone()));
                }
            }
        }
    }
    for (i, text) in armored.iter().enumerate() {
        let bin = dearmor(text).ok_or_else(|| bad("malformed armored key".into()))?;
        let p = dir.join(format!("key{i}.gpg"));
        write(&p, &bin)?;
        out.push(p);
    }
    Ok(out)
}

fn run_gpgv(
    dir: &Path,
    keyring: &Keyring,
    source_name: &str,
    args: &[&Path],
    output: Option<&Path>,
) -> Result<(), ArchiveError> {
    let keys = keyring_files(dir, keyring, source_name)?;
    let mut cmd = Command::new("gpgv");
    cmd.env("GNUPGHOME", dir).arg("--status-fd").arg("1");
    for k in &keys {
        cmd.arg("--keyring").arg(k);
    }
    if let Some(o) = output {
        cmd.arg("--output").arg(o);
    }
    cmd.args(args);
    let out = cmd.output().map_err(ArchiveError::Gpgv)?;
    let status = String::from_utf8_lossy(&out.stdout);
    // apt's rule: at least one valid signature from a trusted key and no bad one.
    let mut valid = false;
    let mut problems = Vec::new();
    for line in status.lines() {
        let Some(rest) = line.strip_prefix("[GNUPG:] ") else {
            continue;
        };
        let word = rest.split_whitespace().next().unwrap_or("");
        match word {
            "VALIDSIG" => valid = true,
            "BADSIG" => problems.push("a signature is BAD (the data was modified)".to_string()),
            "EXPKEYSIG" => problems.push("signed with an expired key".to_string()),
            "REVKEYSIG" => problems.push("signed with a revoked key".to_string()),
            "NODATA" => problems.push("no signature found".to_string()),
            _ => {}
        }
    }
    let bad_sig = problems.iter().any(|p| p.contains("BAD"));
    if valid && !bad_sig {
        return Ok(());
    }
    if problems.is_empty() {
        problems.push(if status.contains("NO_PUBKEY") {
            "signed by a key that is not in the keyring".to_string()
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            err.lines().last().unwrap_or("gpgv rejected it").to_string()
        });
    }
    Err(ArchiveError::BadSignature {
        source_name: source_name.to_string(),
        keyring: keyring.describe(),
        detail: problems.join("; "),
    })
}

/// Decodes every ASCII-armored block in `text` into concatenated packets.
fn dearmor(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut lines = text.lines().map(str::trim);
    let mut found = false;
    while let Some(l) = lines.next() {
        if !l.starts_with("-----BEGIN PGP") {
            continue;
        }
        found = true;
        // Skip armor headers up to the blank line.
        let mut body = String::new();
        let mut in_headers = true;
        for l in lines.by_ref() {
            if l.starts_with("-----END PGP") {
                break;
            }
            if in_headers {
                if l.is_empty() {
                    in_headers = false;
                } else if !l.contains(": ") {
                    in_headers = false;
                    body.push_str(l);
                }
                continue;
            }
            if l.starts_with('=') {
                continue; // CRC-24 checksum line
            }
            body.push_str(l);
        }
        out.extend(base64_decode(&body)?);
    }
    found.then_some(out)
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        assert_eq!(base64_decode("aGVsbG8gd29ybGQ=").unwrap(), b"hello world");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert!(base64_decode("a$b").is_none());
    }

    #[test]
    fn strips_clearsign_wrapper() {
        let t = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: x\n- -dash\n-----BEGIN PGP SIGNATURE-----\nabc\n-----END PGP SIGNATURE-----\n";
        assert_eq!(strip_clearsign(t), "Origin: x\n-dash\n");
    }
}

//! OpenPGP checks of Release files, done by `gpgv` as apt does.
//!
//! apt itself delegates to gpgv; doing the same keeps Kiln's trust decisions
//! identical to the host's and avoids a second OpenPGP implementation. Like
//! apt, Kiln judges gpgv's status lines rather than its exit code: gpgv calls
//! a signature by an expired or revoked key good and exits 0.

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
    let problems = match judge(&status) {
        Ok(()) => return Ok(()),
        Err(p) => p,
    };
    let mut detail: Vec<String> = problems.iter().map(Problem::to_string).collect();
    if detail.is_empty() {
        let err = String::from_utf8_lossy(&out.stderr);
        detail.push(err.lines().last().unwrap_or("gpgv rejected it").to_string());
    }
    let detail = detail.join("; ");
    // A bad signature or a missing key is a trust failure; a signature that is
    // genuine but worthless (expired, revoked, weak) has its own remedy.
    let worthless = problems.iter().find_map(Problem::cause);
    let untrusted = problems
        .iter()
        .any(|p| matches!(p, Problem::Bad { .. } | Problem::NoData));
    match worthless {
        Some(cause) if !untrusted => Err(ArchiveError::WorthlessSignature {
            source_name: source_name.to_string(),
            keyring: keyring.describe(),
            detail,
            cause,
        }),
        _ => Err(ArchiveError::BadSignature {
            source_name: source_name.to_string(),
            keyring: keyring.describe(),
            detail,
        }),
    }
}

/// Why a genuine signature does not count (see [`ArchiveError::WorthlessSignature`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigCause {
    /// The signing key has expired.
    KeyExpired,
    /// The signing key was revoked.
    KeyRevoked,
    /// The signature itself has expired.
    SignatureExpired,
    /// The signature uses a digest algorithm apt refuses (MD5, SHA1, RIPEMD160).
    WeakDigest,
}

/// What gpgv's status lines said about one signature.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Signature {
    /// The long key id of GOODSIG, BADSIG, ERRSIG and friends.
    key_id: String,
    /// The user id gpgv printed beside it.
    user_id: String,
    verdict: Verdict,
    /// From VALIDSIG: the primary key's fingerprint.
    fingerprint: Option<String>,
    /// From VALIDSIG: the OpenPGP hash algorithm number.
    digest: Option<u32>,
    /// From VALIDSIG: when the signature expires (0: never).
    sig_expires: Option<i64>,
    /// From KEYEXPIRED: when the key expired.
    key_expired: Option<i64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Verdict {
    #[default]
    Unknown,
    Good,
    Bad,
    ExpiredSig,
    ExpiredKey,
    RevokedKey,
    NoPubkey,
    Error,
}

impl Signature {
    /// The key as the user should look for it: the fingerprint if gpgv gave one.
    fn key(&self) -> String {
        let id = self.fingerprint.as_deref().unwrap_or(&self.key_id);
        if self.user_id.is_empty() {
            id.to_string()
        } else {
            format!("{id} ({})", self.user_id)
        }
    }
}

/// One reason a signature was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Problem {
    Bad { key: String },
    KeyExpired { key: String, when: Option<i64> },
    KeyRevoked { key: String },
    SignatureExpired { key: String, when: Option<i64> },
    WeakDigest { key: String, algo: u32 },
    NoPubkey { key: String },
    Unconfirmed { key: String },
    Unchecked { key: String },
    NoData,
}

impl Problem {
    fn cause(&self) -> Option<SigCause> {
        Some(match self {
            Problem::KeyExpired { .. } => SigCause::KeyExpired,
            Problem::KeyRevoked { .. } => SigCause::KeyRevoked,
            Problem::SignatureExpired { .. } => SigCause::SignatureExpired,
            Problem::WeakDigest { .. } => SigCause::WeakDigest,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on = |t: &Option<i64>| match t {
            Some(t) if *t > 0 => format!(" on {}", crate::date::format_rfc3339(*t)),
            _ => String::new(),
        };
        match self {
            Problem::Bad { key } => {
                write!(
                    f,
                    "the signature by key {key} is BAD (the data was modified)"
                )
            }
            Problem::KeyExpired { key, when } => {
                write!(f, "signed by key {key}, which expired{}", on(when))
            }
            Problem::KeyRevoked { key } => write!(f, "signed by key {key}, which is revoked"),
            Problem::SignatureExpired { key, when } => {
                write!(f, "the signature by key {key} expired{}", on(when))
            }
            Problem::WeakDigest { key, algo } => write!(
                f,
                "the signature by key {key} uses the weak digest algorithm {}",
                digest_name(*algo)
            ),
            Problem::NoPubkey { key } => {
                write!(f, "signed by key {key}, which is not in the keyring")
            }
            Problem::Unconfirmed { key } => write!(
                f,
                "gpgv did not confirm the signature by key {key} (no VALIDSIG)"
            ),
            Problem::Unchecked { key } => write!(
                f,
                "the signature by key {key} cannot be checked (unsupported algorithm or malformed)"
            ),
            Problem::NoData => write!(f, "no signature found"),
        }
    }
}

/// OpenPGP hash algorithm numbers (RFC 4880, 9.4) apt refuses: MD5, SHA1, RIPEMD160.
fn weak_digest(algo: u32) -> bool {
    matches!(algo, 1..=3)
}

fn digest_name(algo: u32) -> String {
    match algo {
        1 => "MD5".into(),
        2 => "SHA1".into(),
        3 => "RIPEMD160".into(),
        8 => "SHA256".into(),
        9 => "SHA384".into(),
        10 => "SHA512".into(),
        11 => "SHA224".into(),
        n => format!("number {n}"),
    }
}

/// Groups gpgv's status lines (`--status-fd`) into one record per signature.
fn parse_status(status: &str) -> (Vec<Signature>, bool) {
    let mut sigs: Vec<Signature> = Vec::new();
    let mut no_data = false;
    // The signature the current line is about; gpgv starts each with NEWSIG.
    fn current(sigs: &mut Vec<Signature>, verdict_line: bool) -> &mut Signature {
        let fresh = match sigs.last() {
            None => true,
            Some(s) => verdict_line && s.verdict != Verdict::Unknown,
        };
        if fresh {
            sigs.push(Signature::default());
        }
        sigs.last_mut().expect("just pushed")
    }
    for line in status.lines() {
        let Some(rest) = line.strip_prefix("[GNUPG:] ") else {
            continue;
        };
        let mut words = rest.split(' ');
        let word = words.next().unwrap_or("");
        let args: Vec<&str> = words.collect();
        let verdict = match word {
            "GOODSIG" => Some(Verdict::Good),
            "BADSIG" => Some(Verdict::Bad),
            "EXPSIG" => Some(Verdict::ExpiredSig),
            "EXPKEYSIG" => Some(Verdict::ExpiredKey),
            "REVKEYSIG" => Some(Verdict::RevokedKey),
            "ERRSIG" => Some(if args.get(5) == Some(&"9") {
                Verdict::NoPubkey
            } else {
                Verdict::Error
            }),
            _ => None,
        };
        if let Some(v) = verdict {
            let s = current(&mut sigs, true);
            s.verdict = v;
            s.key_id = args.first().unwrap_or(&"").to_string();
            if word == "ERRSIG" {
                s.fingerprint = args.get(6).map(|f| f.to_string());
            } else {
                s.user_id = args.get(1..).unwrap_or(&[]).join(" ");
            }
            continue;
        }
        match word {
            "NEWSIG" => sigs.push(Signature::default()),
            "NODATA" => no_data = true,
            "NO_PUBKEY" => {
                let s = current(&mut sigs, false);
                if s.verdict == Verdict::Unknown || s.verdict == Verdict::Error {
                    s.verdict = Verdict::NoPubkey;
                }
                if s.key_id.is_empty() {
                    s.key_id = args.first().unwrap_or(&"").to_string();
                }
            }
            "KEYEXPIRED" => {
                current(&mut sigs, false).key_expired = args.first().and_then(|t| t.parse().ok())
            }
            "VALIDSIG" => {
                // fpr date timestamp expire-timestamp version reserved pk-algo
                // hash-algo class [primary-fpr]
                let s = current(&mut sigs, false);
                s.fingerprint = args
                    .get(9)
                    .or(args.first())
                    .map(|f| f.to_string())
                    .filter(|f| !f.is_empty());
                s.sig_expires = args.get(3).and_then(|t| t.parse().ok());
                s.digest = args.get(7).and_then(|a| a.parse().ok());
            }
            _ => {}
        }
    }
    (sigs, no_data)
}

/// apt's rule: accepted when no signature is bad and at least one is good
/// (GOODSIG and VALIDSIG) by a key that is neither expired nor revoked, not
/// itself expired, and made with a strong digest. Signatures by keys that are
/// not in the keyring are ignored when another one is good.
fn judge(status: &str) -> Result<(), Vec<Problem>> {
    let (sigs, no_data) = parse_status(status);
    let mut problems = Vec::new();
    let mut good = false;
    for s in &sigs {
        let key = s.key();
        let problem = match s.verdict {
            Verdict::Good => match s.digest {
                None => Some(Problem::Unconfirmed { key }),
                Some(algo) if weak_digest(algo) => Some(Problem::WeakDigest { key, algo }),
                Some(_) => None,
            },
            Verdict::Bad => Some(Problem::Bad { key }),
            Verdict::ExpiredSig => Some(Problem::SignatureExpired {
                key,
                when: s.sig_expires,
            }),
            Verdict::ExpiredKey => Some(Problem::KeyExpired {
                key,
                when: s.key_expired,
            }),
            Verdict::RevokedKey => Some(Problem::KeyRevoked { key }),
            Verdict::NoPubkey => Some(Problem::NoPubkey { key }),
            Verdict::Error => Some(Problem::Unchecked { key }),
            Verdict::Unknown => None,
        };
        match problem {
            Some(p) => problems.push(p),
            None => good |= s.verdict == Verdict::Good,
        }
    }
    let bad = problems.iter().any(|p| matches!(p, Problem::Bad { .. }));
    if good && !bad {
        return Ok(());
    }
    if no_data && sigs.is_empty() {
        problems.push(Problem::NoData);
    }
    Err(problems)
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

    // Status lines as gpgv 2.2 writes them (keys made for these tests).
    const EXPIRED: &str = "[GNUPG:] NEWSIG e@kiln.invalid
[GNUPG:] KEY_CONSIDERED 0903685C3D57053F1B6AEB5BDC0295D2A922DE25 0
[GNUPG:] KEYEXPIRED 1704153600
[GNUPG:] SIG_ID EA6/dIEI+fI2BEAyQWo9Jq0P5GY 2024-01-01 1704110400
[GNUPG:] KEY_CONSIDERED 0903685C3D57053F1B6AEB5BDC0295D2A922DE25 0
[GNUPG:] EXPKEYSIG DC0295D2A922DE25 Exp <e@kiln.invalid>
[GNUPG:] VALIDSIG 0903685C3D57053F1B6AEB5BDC0295D2A922DE25 2024-01-01 1704110400 0 4 0 22 8 01 0903685C3D57053F1B6AEB5BDC0295D2A922DE25
";
    const GOOD: &str = "[GNUPG:] NEWSIG g@kiln.invalid
[GNUPG:] KEY_CONSIDERED 7A95293343D266FFE55BED3E7B7C8CC51F603107 0
[GNUPG:] SIG_ID TQtDSjHXijxiVd8pbjlNhNuh5Mc 2024-01-01 1704110400
[GNUPG:] KEY_CONSIDERED 7A95293343D266FFE55BED3E7B7C8CC51F603107 0
[GNUPG:] GOODSIG 7B7C8CC51F603107 Good <g@kiln.invalid>
[GNUPG:] VALIDSIG 7A95293343D266FFE55BED3E7B7C8CC51F603107 2024-01-01 1704110400 0 4 0 22 8 01 7A95293343D266FFE55BED3E7B7C8CC51F603107
";
    const REVOKED: &str = "[GNUPG:] NEWSIG
[GNUPG:] KEY_CONSIDERED 5A82458A9FABB0B2CE04B310643411E8CCCD1FA1 0
[GNUPG:] SIG_ID i4bbwawgt++BhE1QOgCVaEuEj9c 2026-12-02 1796169803
[GNUPG:] KEY_CONSIDERED 5A82458A9FABB0B2CE04B310643411E8CCCD1FA1 0
[GNUPG:] REVKEYSIG 643411E8CCCD1FA1 Rev <r@kiln.invalid>
[GNUPG:] VALIDSIG 5A82458A9FABB0B2CE04B310643411E8CCCD1FA1 2026-12-02 1796169803 0 4 0 22 8 01 5A82458A9FABB0B2CE04B310643411E8CCCD1FA1
";
    const EXPSIG: &str = "[GNUPG:] NEWSIG g@kiln.invalid
[GNUPG:] EXPSIG 7B7C8CC51F603107 Good <g@kiln.invalid>
[GNUPG:] VALIDSIG 7A95293343D266FFE55BED3E7B7C8CC51F603107 2024-01-01 1704110400 1704196800 4 0 22 8 01 7A95293343D266FFE55BED3E7B7C8CC51F603107
";
    const NO_PUBKEY: &str = "[GNUPG:] NEWSIG
[GNUPG:] ERRSIG 643411E8CCCD1FA1 22 8 01 1796169803 9 5A82458A9FABB0B2CE04B310643411E8CCCD1FA1
[GNUPG:] NO_PUBKEY 643411E8CCCD1FA1
";
    const BAD: &str = "[GNUPG:] NEWSIG
[GNUPG:] BADSIG 7B7C8CC51F603107 Good <g@kiln.invalid>
";

    fn problems(status: &str) -> Vec<String> {
        judge(status)
            .unwrap_err()
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn a_good_signature_by_a_valid_key_is_accepted() {
        assert_eq!(judge(GOOD), Ok(()));
    }

    #[test]
    fn expired_and_revoked_keys_and_expired_signatures_do_not_count() {
        assert_eq!(
            problems(EXPIRED),
            [
                "signed by key 0903685C3D57053F1B6AEB5BDC0295D2A922DE25 (Exp <e@kiln.invalid>), \
              which expired on 2024-01-02T00:00:00Z"
            ]
        );
        assert_eq!(
            problems(REVOKED),
            ["signed by key 5A82458A9FABB0B2CE04B310643411E8CCCD1FA1 (Rev <r@kiln.invalid>), which is revoked"]
        );
        assert_eq!(
            problems(EXPSIG),
            ["the signature by key 7A95293343D266FFE55BED3E7B7C8CC51F603107 (Good <g@kiln.invalid>) \
              expired on 2024-01-02T12:00:00Z"]
        );
    }

    #[test]
    fn one_valid_signature_beside_worthless_or_unknown_ones_is_enough() {
        assert_eq!(judge(&format!("{EXPIRED}{GOOD}")), Ok(()));
        assert_eq!(judge(&format!("{REVOKED}{NO_PUBKEY}{GOOD}")), Ok(()));
        assert_eq!(
            problems(&format!("{EXPIRED}{NO_PUBKEY}")).len(),
            2,
            "every signature is accounted for"
        );
    }

    #[test]
    fn a_bad_signature_spoils_a_good_one() {
        let p = problems(&format!("{GOOD}{BAD}"));
        assert_eq!(
            p,
            ["the signature by key 7B7C8CC51F603107 (Good <g@kiln.invalid>) is BAD (the data was modified)"]
        );
    }

    #[test]
    fn weak_digests_are_refused() {
        for (algo, name) in [("1", "MD5"), ("2", "SHA1"), ("3", "RIPEMD160")] {
            let status = GOOD.replace(" 22 8 01 ", &format!(" 22 {algo} 01 "));
            assert_eq!(
                problems(&status),
                [format!(
                    "the signature by key 7A95293343D266FFE55BED3E7B7C8CC51F603107 (Good <g@kiln.invalid>) \
                     uses the weak digest algorithm {name}"
                )]
            );
        }
        for algo in ["8", "9", "10", "11"] {
            let status = GOOD.replace(" 22 8 01 ", &format!(" 22 {algo} 01 "));
            assert_eq!(judge(&status), Ok(()), "hash algorithm {algo}");
        }
    }

    #[test]
    fn a_good_signature_needs_validsig() {
        let status: String = GOOD
            .lines()
            .filter(|l| !l.contains("VALIDSIG"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            problems(&status),
            ["gpgv did not confirm the signature by key 7B7C8CC51F603107 (Good <g@kiln.invalid>) (no VALIDSIG)"]
        );
    }

    #[test]
    fn unknown_keys_and_missing_signatures_are_named() {
        assert_eq!(
            problems(NO_PUBKEY),
            ["signed by key 5A82458A9FABB0B2CE04B310643411E8CCCD1FA1, which is not in the keyring"]
        );
        assert_eq!(
            problems("[GNUPG:] NODATA 1\n[GNUPG:] NODATA 2\n"),
            ["no signature found"]
        );
        assert_eq!(judge(""), Err(vec![]));
    }

    #[test]
    fn signatures_are_told_apart_without_newsig() {
        let strip = |s: &str| {
            s.replace("[GNUPG:] NEWSIG e@kiln.invalid\n", "")
                .replace("[GNUPG:] NEWSIG g@kiln.invalid\n", "")
        };
        assert_eq!(judge(&strip(&format!("{EXPIRED}{GOOD}"))), Ok(()));
        assert_eq!(problems(&strip(EXPIRED)).len(), 1);
    }

    #[test]
    fn strips_clearsign_wrapper() {
        let t = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: x\n- -dash\n-----BEGIN PGP SIGNATURE-----\nabc\n-----END PGP SIGNATURE-----\n";
        assert_eq!(strip_clearsign(t), "Origin: x\n-dash\n");
    }
}

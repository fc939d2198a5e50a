//! The systemd-sysupdate channel of a download tree:
//!
//! ```text
//! TREE/sysupdate/CHANNEL/NAME_VERSION_UUID.usr-ARCH.raw.xz         payloads, never rewritten
//! TREE/sysupdate/CHANNEL/NAME_VERSION_UUID.usr-ARCH-verity.raw.xz
//! TREE/sysupdate/CHANNEL/NAME_VERSION_ARCH.efi
//! TREE/sysupdate/CHANNEL/SHA256SUMS                                 every file's sha256 + BEST-BEFORE-YYYY-MM-DD
//! TREE/sysupdate/CHANNEL/SHA256SUMS.gpg                             OpenPGP signature by the tree's key
//! ```
//!
//! What an `[update]` image's `sysupdate.d` transfers read. The payloads go
//! in first (hard links to the pool), then the listing and its signature;
//! versions beyond the newest `keep` of each image leave the listing, and
//! their files are removed after it. A version already published with
//! other content is refused: a version names one set of bytes forever.

use std::collections::{BTreeMap, BTreeSet};

use kiln_attest::{openpgp, VerifyingKey};
use kiln_rootfs::inroot::Root;
use sha2::{Digest, Sha256};

use crate::tree::{no_links, read_limited};
use crate::PublishError;

pub const LISTING: &str = "SHA256SUMS";
pub const SIGNATURE: &str = "SHA256SUMS.gpg";
/// A listing larger than this is refused (a hostile tree).
const MAX_LISTING: u64 = 1 << 20;
const BEST_BEFORE: &str = "BEST-BEFORE-";

pub fn dir(channel: &str) -> String {
    format!("sysupdate/{channel}")
}

/// One payload of a build to list.
pub struct Payload {
    pub name: String,
    /// The file in the tree's pool it is linked from.
    pub pool: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, Default)]
pub struct SysupdateReport {
    pub dir: String,
    /// Versions listed, per image, oldest first.
    pub versions: BTreeMap<String, Vec<String>>,
    pub best_before: String,
    pub pruned: Vec<String>,
    pub written: bool,
}

/// `NAME_VERSION_…` → (NAME, VERSION); None for other names.
pub fn split_name(file: &str) -> Option<(&str, &str)> {
    let (name, rest) = file.split_once('_')?;
    let (version, _) = rest.split_once('_')?;
    (!name.is_empty() && !version.is_empty()).then_some((name, version))
}

/// A parsed listing: file → sha256, and the best-before date.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub files: BTreeMap<String, String>,
    pub best_before: Option<String>,
}

fn bad_name(n: &str) -> bool {
    n.is_empty()
        || n.starts_with('.')
        || !n
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-+~^".contains(&c))
}

/// Reads `SHA256SUMS` text (`HASH  NAME` lines, as sha256sum writes).
pub fn parse_listing(text: &str) -> Result<Listing, String> {
    let mut l = Listing::default();
    for (i, line) in text.lines().enumerate() {
        let at = || format!("line {}", i + 1);
        let (hash, name) = line
            .split_once("  ")
            .or_else(|| line.split_once(" *"))
            .ok_or_else(|| format!("{}: not `SHA256  NAME`", at()))?;
        if hash.len() != 64 || !hash.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("{}: `{hash}` is not a sha256", at()));
        }
        if let Some(date) = name.strip_prefix(BEST_BEFORE) {
            if crate::parse_rfc3339(&format!("{date}T00:00:00Z")).is_none() {
                return Err(format!("{}: `{name}` is not BEST-BEFORE-YYYY-MM-DD", at()));
            }
            l.best_before = Some(date.to_string());
            continue;
        }
        if bad_name(name) {
            return Err(format!("{}: `{name}` is not a plain file name", at()));
        }
        if l.files.insert(name.into(), hash.to_lowercase()).is_some() {
            return Err(format!("{}: `{name}` is listed twice", at()));
        }
    }
    Ok(l)
}

fn render(l: &Listing) -> String {
    let mut out = String::new();
    for (name, sha) in &l.files {
        out.push_str(&format!("{sha}  {name}\n"));
    }
    if let Some(d) = &l.best_before {
        // The marker names no file; its hash is that of nothing.
        let empty = hex::encode(Sha256::digest(b""));
        out.push_str(&format!("{empty}  {BEST_BEFORE}{d}\n"));
    }
    out
}

/// Reads and checks the channel's signed listing, if it has one.
pub fn read(
    root: &Root,
    channel: &str,
    key: &VerifyingKey,
) -> Result<Option<(Listing, u32)>, String> {
    let d = dir(channel);
    let text = match read_limited(root, &format!("{d}/{LISTING}"), MAX_LISTING) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{d}/{LISTING}: cannot read it: {e}")),
    };
    let sig = read_limited(root, &format!("{d}/{SIGNATURE}"), 4096)
        .map_err(|e| format!("{d}/{SIGNATURE}: cannot read it ({e}): the listing is unsigned"))?;
    let signed =
        openpgp::verify_detached(key, &text, &sig).map_err(|e| format!("{d}/{SIGNATURE}: {e}"))?;
    let text = String::from_utf8(text).map_err(|_| format!("{d}/{LISTING} is not text"))?;
    let l = parse_listing(&text).map_err(|e| format!("{d}/{LISTING}: {e}"))?;
    Ok(Some((l, signed)))
}

/// The date `valid_for` seconds after `now`, as `YYYY-MM-DD`.
pub fn best_before(now: i64, valid_for: i64) -> String {
    crate::rfc3339(now + valid_for)[..10].to_string()
}

/// Adds `payloads` to the channel's listing, keeps the newest `keep`
/// versions of each image, signs it.
pub fn publish(
    root: &Root,
    payloads: &[Payload],
    opts: &crate::tree::TreeOptions<'_>,
) -> Result<SysupdateReport, PublishError> {
    let (channel, key, now, valid_for, keep, progress) = (
        opts.channel,
        opts.key,
        opts.now,
        opts.valid_for,
        opts.keep,
        opts.progress,
    );
    let d = dir(channel);
    let tree_err = |message: String| PublishError::Tree {
        path: root.path().join(&d),
        message,
    };
    no_links(root, &format!("{d}/{LISTING}"))?;
    let old = read(root, channel, &key.verifying_key()).map_err(|m| {
        tree_err(format!(
            "{m}; publish with the key that signed it, or move {d} away to start the channel afresh"
        ))
    })?;
    let mut listing = old.map(|(l, _)| l).unwrap_or_default();
    let before = render(&listing);
    for p in payloads {
        if split_name(&p.name).is_none() || bad_name(&p.name) {
            return Err(tree_err(format!(
                "`{}` is not an update payload name (NAME_VERSION_…)",
                p.name
            )));
        }
        let rel = format!("{d}/{}", p.name);
        match listing.files.get(&p.name) {
            Some(sha) if *sha != p.sha256 => {
                return Err(tree_err(format!(
                    "{} is already published with other content (sha256 {sha}, this build's {}): \
                     a version names one set of bytes; build with a new --image-version",
                    p.name, p.sha256
                )))
            }
            _ => {}
        }
        let have = root
            .metadata(&rel)
            .ok()
            .filter(|m| m.is_file() && m.len == p.size);
        let intact = have.is_some()
            && root
                .open_file(&rel)
                .ok()
                .and_then(|mut f| crate::verify::hash(&mut f).ok())
                .is_some_and(|(_, h)| h == p.sha256);
        if !intact {
            let src = root.path().join(&p.pool);
            root.copy_in(&src, &rel, 0o644)
                .map_err(PublishError::io(format!("writing {rel}")))?;
            progress(&rel);
        }
        listing.files.insert(p.name.clone(), p.sha256.clone());
    }
    // Versions per image, newest first; the newest `keep` stay.
    let mut versions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in listing.files.keys() {
        if let Some((n, v)) = split_name(f) {
            versions.entry(n.into()).or_default().insert(v.into());
        }
    }
    let mut pruned = Vec::new();
    let mut report = SysupdateReport {
        dir: d.clone(),
        ..Default::default()
    };
    for (image, vs) in &versions {
        let mut vs: Vec<&String> = vs.iter().collect();
        vs.sort_by(|a, b| kiln_model::sdversion::compare(a, b));
        let cut = vs.len().saturating_sub(keep.max(1));
        for v in &vs[..cut] {
            let gone: Vec<String> = listing
                .files
                .keys()
                .filter(|f| split_name(f) == Some((image.as_str(), v.as_str())))
                .cloned()
                .collect();
            for g in gone {
                listing.files.remove(&g);
                pruned.push(g);
            }
        }
        report.versions.insert(
            image.clone(),
            vs[cut..].iter().map(|v| v.to_string()).collect(),
        );
    }
    let fresh = listing.best_before.as_deref().is_some_and(|b| {
        crate::parse_rfc3339(&format!("{b}T00:00:00Z")).is_some_and(|t| t - now > valid_for / 2)
    });
    report.best_before = listing.best_before.clone().unwrap_or_default();
    if render(&listing) == before && fresh {
        progress(&format!(
            "{d}/{LISTING} already lists these versions; not rewritten"
        ));
        return Ok(report);
    }
    listing.best_before = Some(best_before(now, valid_for));
    report.best_before = listing.best_before.clone().unwrap();
    let text = render(&listing);
    let sig = openpgp::detached_signature(key, text.as_bytes(), now.max(0) as u32);
    // The listing, then its signature: a reader in between finds them not
    // matching and refuses (and tries again later), never a mix accepted.
    root.write(format!("{d}/{LISTING}"), text.as_bytes(), 0o644)
        .map_err(PublishError::io(format!("writing {d}/{LISTING}")))?;
    root.write(format!("{d}/{SIGNATURE}"), &sig, 0o644)
        .map_err(PublishError::io(format!("writing {d}/{SIGNATURE}")))?;
    progress(&format!(
        "signed {d}/{LISTING} (best before {})",
        report.best_before
    ));
    for g in &pruned {
        let _ = root.remove_file(format!("{d}/{g}"));
    }
    report.pruned = pruned;
    report.written = true;
    Ok(report)
}

/// Checks a channel's sysupdate listing as a machine would: the signature,
/// the best-before date, every listed file's hash. Returns the problems.
pub fn verify(root: &Root, channel: &str, key: &VerifyingKey, now: i64) -> Vec<String> {
    let d = dir(channel);
    let mut problems = Vec::new();
    let (listing, _) = match read(root, channel, key) {
        Ok(Some(l)) => l,
        Ok(None) => return problems,
        Err(e) => return vec![e],
    };
    match &listing.best_before {
        None => problems.push(format!(
            "{d}/{LISTING} has no BEST-BEFORE entry: a stale listing could be replayed forever"
        )),
        Some(b) => {
            let t = crate::parse_rfc3339(&format!("{b}T00:00:00Z")).unwrap_or(0);
            if t <= now {
                problems.push(format!(
                    "{d}/{LISTING} expired on {b} (BEST-BEFORE): publish again to renew it"
                ));
            }
        }
    }
    for (name, sha) in &listing.files {
        let rel = format!("{d}/{name}");
        if let Err(p) = no_links(root, &rel) {
            problems.push(p.to_string());
            continue;
        }
        match root
            .open_file(&rel)
            .map(|mut f| crate::verify::hash(&mut f))
        {
            Ok(Ok((_, h))) if h == *sha => {}
            Ok(Ok((_, h))) => problems.push(format!(
                "{rel}: sha256 {h}, but {LISTING} lists {sha} (changed after signing)"
            )),
            Ok(Err(e)) | Err(e) => problems.push(format!("{rel}: cannot read it: {e}")),
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_attest::SigningKey;

    const PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBa5L1T55v8LU+qNQmjri6FsqJiJDQlXaZ7Omo2+R0XB\n-----END PRIVATE KEY-----\n";
    const OTHER: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIC0NR7IWdkd7SDR+pS40FczuLdjD9wNfWp+2QzNEbkSg\n-----END PRIVATE KEY-----\n";

    /// A payload in the tree's pool with this content.
    fn payload(root: &Root, name: &str, content: &[u8]) -> Payload {
        let sha = hex::encode(Sha256::digest(content));
        let pool = format!("pool/img/{sha}/{name}");
        root.write(&pool, content, 0o644).unwrap();
        Payload {
            name: name.into(),
            pool,
            size: content.len() as u64,
            sha256: sha,
        }
    }

    #[test]
    fn publishing_keeps_the_newest_versions_refuses_changed_ones_and_verify_sees_tampering() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::open(d.path()).unwrap();
        let key = SigningKey::from_pem(PEM).unwrap();
        let now = 1_800_000_000;
        let opts = crate::tree::TreeOptions {
            channel: "stable",
            key: &key,
            valid_for: 86_400 * 10,
            now,
            base_url: None,
            keep: 3,
            progress: &|_| {},
        };
        // Versions in an order systemd sorts differently from text: 9 < 10.
        for v in ["9", "10", "10.1", "11"] {
            let p = payload(&root, &format!("img_{v}_x86-64.efi"), v.as_bytes());
            let r = publish(&root, &[p], &opts).unwrap();
            assert!(r.written);
        }
        let (l, signed) = read(&root, "stable", &key.verifying_key())
            .unwrap()
            .unwrap();
        assert_eq!(signed, now as u32);
        let names: Vec<&str> = l.files.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "img_10.1_x86-64.efi",
                "img_10_x86-64.efi",
                "img_11_x86-64.efi"
            ]
        );
        assert!(
            !root.exists("sysupdate/stable/img_9_x86-64.efi"),
            "pruned file kept"
        );
        assert_eq!(
            l.best_before.as_deref(),
            Some(&best_before(now, 86_400 * 10)[..])
        );
        // The same again: nothing rewritten; other bytes under a listed name: refused.
        let again = payload(&root, "img_11_x86-64.efi", b"11");
        assert!(!publish(&root, &[again], &opts).unwrap().written);
        let changed = payload(&root, "img_11_x86-64.efi", b"eleven");
        let e = publish(&root, &[changed], &opts).unwrap_err().to_string();
        assert!(e.contains("already published with other content"), "{e}");
        // Another key cannot take the channel over.
        let other = SigningKey::from_pem(OTHER).unwrap();
        let theirs = crate::tree::TreeOptions {
            key: &other,
            ..opts
        };
        let p = payload(&root, "img_12_x86-64.efi", b"12");
        let e = publish(&root, &[p], &theirs).unwrap_err().to_string();
        assert!(e.contains("SHA256SUMS.gpg"), "{e}");
        // Verify: clean, then a changed payload, an expired listing, a forged one.
        let vk = key.verifying_key();
        assert!(verify(&root, "stable", &vk, now).is_empty());
        let later = now + 86_400 * 11;
        assert!(verify(&root, "stable", &vk, later)[0].contains("expired"));
        root.write("sysupdate/stable/img_10_x86-64.efi", b"1O", 0o644)
            .unwrap();
        let p = verify(&root, "stable", &vk, now);
        assert!(
            p.iter()
                .any(|m| m.contains("img_10_x86-64.efi") && m.contains("changed after signing")),
            "{p:?}"
        );
        let listing = root.read("sysupdate/stable/SHA256SUMS").unwrap();
        let mut forged = listing.clone();
        forged.extend_from_slice(format!("{}  img_99_x86-64.efi\n", "0".repeat(64)).as_bytes());
        root.write("sysupdate/stable/SHA256SUMS", &forged, 0o644)
            .unwrap();
        let p = verify(&root, "stable", &vk, now);
        assert!(p[0].contains("does not match"), "{p:?}");
    }

    #[test]
    fn listings_round_trip_and_hostile_ones_are_refused() {
        let sha = "a".repeat(64);
        let l = parse_listing(&format!(
            "{sha}  img_2_U.usr-x86-64.raw.xz\n{sha}  BEST-BEFORE-2026-12-31\n"
        ))
        .unwrap();
        assert_eq!(l.best_before.as_deref(), Some("2026-12-31"));
        assert_eq!(parse_listing(&render(&l)).unwrap(), l);
        for bad in [
            format!("{sha}  ../etc/passwd\n"),
            format!("{sha}  a/b\n"),
            format!("{sha}  .hidden\n"),
            "abc  img_1_x.efi\n".to_string(),
            format!("{sha}  BEST-BEFORE-soon\n"),
            format!("{sha}  img_1_x.efi\n{sha}  img_1_x.efi\n"),
            "no separator\n".to_string(),
        ] {
            assert!(parse_listing(&bad).is_err(), "accepted {bad:?}");
        }
        assert_eq!(
            split_name("img_13.1_0123.usr-x86-64.raw.xz"),
            Some(("img", "13.1"))
        );
        assert_eq!(split_name("SHA256SUMS"), None);
    }
}

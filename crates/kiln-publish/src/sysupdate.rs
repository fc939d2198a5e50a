//! The systemd-sysupdate channel of a download tree:
//!
//! ```text
//! TREE/sysupdate/CHANNEL/NAME_VERSION_UUID.usr-ARCH.raw.xz         payloads, never rewritten
//! TREE/sysupdate/CHANNEL/NAME_VERSION_UUID.usr-ARCH-verity.raw.xz
//! TREE/sysupdate/CHANNEL/NAME_VERSION_ARCH.efi
//! TREE/sysupdate/CHANNEL/SHA256SUMS                                 every file's sha256 + BEST-BEFORE-YYYY-MM-DD
//! TREE/sysupdate/CHANNEL/ROLLOUT                                    staged rollout (kiln_model::rollout), listed
//! TREE/sysupdate/CHANNEL/SHA256SUMS.gpg                             OpenPGP signature by the tree's key
//! ```
//!
//! A published version is offered to no machine until `kiln release`
//! enters it in the channel's `ROLLOUT` with a wave (the image's update
//! gate reads it); the document is listed in `SHA256SUMS`, so the
//! listing's signature covers it.
//!
//! What an `[update]` image's `sysupdate.d` transfers read. The payloads go
//! in first (hard links to the pool), then the listing and its signature;
//! versions beyond the newest `keep` of each image leave the listing, and
//! their files are removed after it. A version already published with
//! other content is refused: a version names one set of bytes forever.

use std::collections::{BTreeMap, BTreeSet};

use kiln_attest::{openpgp, SigningKey, VerifyingKey};
use kiln_model::rollout::{self, Release, Rollout};
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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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

/// The channel's rollout document, checked against the signed listing.
fn read_rollout(root: &Root, d: &str, listing: &Listing) -> Result<Option<Rollout>, String> {
    let Some(sha) = listing.files.get(rollout::FILE) else {
        return Ok(None);
    };
    let rel = format!("{d}/{}", rollout::FILE);
    no_links(root, &rel).map_err(|e| e.to_string())?;
    let bytes = read_limited(root, &rel, rollout::MAX_SIZE as u64)
        .map_err(|e| format!("{rel}: cannot read it: {e}"))?;
    let have = hex::encode(Sha256::digest(&bytes));
    if have != *sha {
        return Err(format!(
            "{rel}: sha256 {have}, but {LISTING} lists {sha} (changed after signing)"
        ));
    }
    let text = String::from_utf8(bytes).map_err(|_| format!("{rel} is not text"))?;
    Rollout::parse(&text)
        .map(Some)
        .map_err(|e| format!("{rel}: {e}"))
}

/// The rollout document's text when the listing does not name it yet
/// (its new hash is put into the listing; the caller writes both).
fn rollout_text(listing: &mut Listing, r: &Rollout) -> Option<String> {
    let text = r.render();
    let sha = hex::encode(Sha256::digest(text.as_bytes()));
    if listing.files.get(rollout::FILE) == Some(&sha) {
        return None;
    }
    listing.files.insert(rollout::FILE.into(), sha);
    Some(text)
}

/// Writes files of the channel directory together: each into a temporary
/// file first, and only when all are written are they renamed over the old
/// ones, in order. A failure (a full disk) leaves the channel as it was.
fn commit_files(root: &Root, d: &str, files: &[(&str, &[u8])]) -> Result<(), PublishError> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let dir = root
        .dir(d, 0o755)
        .map_err(PublishError::io(format!("opening {d}")))?;
    let mut temps = Vec::new();
    for (name, bytes) in files {
        let written = dir.create_temp().and_then(|(t, mut f)| {
            let w = f
                .write_all(bytes)
                .and_then(|_| f.set_permissions(std::fs::Permissions::from_mode(0o644)))
                .and_then(|_| f.sync_all());
            match w {
                Ok(()) => Ok(t),
                Err(e) => {
                    dir.discard(t);
                    Err(e)
                }
            }
        });
        match written {
            Ok(t) => temps.push((t, *name)),
            Err(e) => {
                for (t, _) in temps {
                    dir.discard(t);
                }
                return Err(PublishError::io(format!(
                    "writing {d}/{name} (the channel is left as it was)"
                ))(e));
            }
        }
    }
    for (t, name) in temps {
        dir.commit(t, std::ffi::OsStr::new(name))
            .map_err(PublishError::io(format!("renaming {d}/{name} into place")))?;
    }
    Ok(())
}

/// Signs `listing` and writes it with its signature, and the rollout
/// document when given, all or nothing: the rollout, then the listing,
/// then its signature, so a reader in between finds them not matching and
/// refuses (and tries again later), never a mix accepted.
pub fn write_signed(
    root: &Root,
    channel: &str,
    listing: &Listing,
    key: &SigningKey,
    now: i64,
) -> Result<(), PublishError> {
    write_channel(root, channel, listing, None, key, now)
}

fn write_channel(
    root: &Root,
    channel: &str,
    listing: &Listing,
    rollout_doc: Option<&str>,
    key: &SigningKey,
    now: i64,
) -> Result<(), PublishError> {
    let d = dir(channel);
    let text = render(listing);
    let sig = openpgp::detached_signature(key, text.as_bytes(), now.max(0) as u32);
    let mut files: Vec<(&str, &[u8])> = Vec::new();
    if let Some(r) = rollout_doc {
        files.push((rollout::FILE, r.as_bytes()));
    }
    files.push((LISTING, text.as_bytes()));
    files.push((SIGNATURE, &sig));
    commit_files(root, &d, &files)
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
    let mut rollout_doc = read_rollout(root, &d, &listing).map_err(tree_err)?;
    let mut pruned = Vec::new();
    let mut report = SysupdateReport {
        dir: d.clone(),
        ..Default::default()
    };
    for (image, vs) in &versions {
        let mut vs: Vec<&String> = vs.iter().collect();
        vs.sort_by(|a, b| kiln_model::sdversion::compare(a, b));
        // A barrier release stays: machines older than it pass through it.
        let barrier = |v: &str| {
            rollout_doc
                .as_ref()
                .and_then(|r| r.find(image, v))
                .is_some_and(|r| r.barrier)
        };
        let cut = vs.len().saturating_sub(keep.max(1));
        let (mut gone_vs, mut kept) = (Vec::new(), Vec::new());
        for (i, v) in vs.iter().enumerate() {
            if i < cut && !barrier(v) {
                gone_vs.push(*v);
            } else {
                kept.push(*v);
            }
        }
        if let Some(r) = rollout_doc.as_mut() {
            r.releases
                .retain(|x| !(x.image == *image && gone_vs.contains(&&x.version)));
        }
        for v in &gone_vs {
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
        report
            .versions
            .insert(image.clone(), kept.iter().map(|v| v.to_string()).collect());
    }
    let new_rollout = rollout_doc
        .as_ref()
        .and_then(|r| rollout_text(&mut listing, r));
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
    write_channel(root, channel, &listing, new_rollout.as_deref(), key, now)?;
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

/// What `kiln release` does to a version's entry in the rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// (Re)start its wave now.
    Wave(rollout::Wave),
    Pause,
    Resume,
}

pub struct ReleaseRequest<'a> {
    pub channel: &'a str,
    pub image: &'a str,
    pub version: &'a str,
    pub action: Action,
    /// Make it a barrier (Some(true)) or not (Some(false)); None keeps it.
    pub barrier: Option<bool>,
    pub key: &'a SigningKey,
    pub now: i64,
    pub valid_for: i64,
}

#[derive(Clone, Debug)]
pub struct ReleaseReport {
    pub dir: String,
    pub release: Release,
    /// Every release of the channel after this one.
    pub rollout: Rollout,
    pub best_before: String,
}

#[derive(Debug)]
pub enum ReleaseError {
    /// The request cannot be carried out as given: (problem, hint).
    Usage(String, String),
    Publish(PublishError),
}

impl From<PublishError> for ReleaseError {
    fn from(e: PublishError) -> Self {
        ReleaseError::Publish(e)
    }
}

/// The channels a tree has (directories under `sysupdate/` with a listing).
pub fn channels(root: &Root) -> Vec<String> {
    let mut out: Vec<String> = root
        .read_dir("sysupdate")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(n, _)| n.into_string().ok())
        .filter(|c| !bad_name(c) && root.is_file(format!("sysupdate/{c}/{LISTING}")))
        .collect();
    out.sort();
    out
}

/// Enters, restarts, pauses or resumes a published version's release in
/// the channel's rollout, and signs the listing again.
pub fn release(root: &Root, req: &ReleaseRequest<'_>) -> Result<ReleaseReport, ReleaseError> {
    let d = dir(req.channel);
    let tree_err = |message: String| PublishError::Tree {
        path: root.path().join(&d),
        message,
    };
    if bad_name(req.channel) {
        return Err(ReleaseError::Usage(
            format!("`{}` is not a channel name", req.channel),
            "channels are plain names such as stable or beta".into(),
        ));
    }
    no_links(root, &format!("{d}/{LISTING}"))?;
    let Some((mut listing, _)) = read(root, req.channel, &req.key.verifying_key())
        .map_err(|m| tree_err(format!("{m}; release with the key that signed the channel")))?
    else {
        let have = channels(root);
        return Err(ReleaseError::Usage(
            format!(
                "{} has no channel `{}` (it has {})",
                root.path().display(),
                req.channel,
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            ),
            format!(
                "publish the build into it first: kiln publish OUT --to file://{} --channel {}",
                root.path().display(),
                req.channel
            ),
        ));
    };
    let listed = listing
        .files
        .keys()
        .any(|f| split_name(f) == Some((req.image, req.version)));
    if !listed {
        return Err(ReleaseError::Usage(
            format!(
                "{} {} is not published in channel {} (its SHA256SUMS does not list it)",
                req.image, req.version, req.channel
            ),
            format!(
                "publish it first: kiln publish OUT --to file://{} --channel {}",
                root.path().display(),
                req.channel
            ),
        ));
    }
    let mut doc = read_rollout(root, &d, &listing)
        .map_err(tree_err)?
        .unwrap_or_else(|| Rollout::new(req.channel));
    if doc.channel != req.channel {
        return Err(tree_err(format!(
            "{d}/{} is the rollout of channel {}",
            rollout::FILE,
            doc.channel
        ))
        .into());
    }
    let now = req.now;
    match (doc.find_mut(req.image, req.version), req.action) {
        (Some(r), Action::Wave(w)) => {
            (r.since, r.start, r.duration, r.paused) = (now, w.start, w.duration, false);
        }
        (Some(r), Action::Pause) => r.pause(now),
        (Some(r), Action::Resume) => {
            if !r.paused {
                return Err(ReleaseError::Usage(
                    format!("{} {} is not paused", req.image, req.version),
                    "--resume goes on with a paused wave; --wave P%/DURATION starts it again"
                        .into(),
                ));
            }
            r.resume(now)
        }
        (None, Action::Wave(w)) => doc.releases.push(Release {
            image: req.image.into(),
            version: req.version.into(),
            since: now,
            start: w.start,
            duration: w.duration,
            paused: false,
            barrier: false,
        }),
        (None, _) => {
            return Err(ReleaseError::Usage(
                format!(
                "{} {} has not been released in channel {}: there is no wave to pause or resume",
                req.image, req.version, req.channel
            ),
                "release it first with --wave P%/DURATION".into(),
            ))
        }
    }
    let r = doc.find_mut(req.image, req.version).unwrap();
    if let Some(b) = req.barrier {
        r.barrier = b;
    }
    let release = r.clone();
    let text = rollout_text(&mut listing, &doc);
    listing.best_before = Some(best_before(now, req.valid_for));
    write_channel(root, req.channel, &listing, text.as_deref(), req.key, now)?;
    Ok(ReleaseReport {
        dir: d,
        release,
        rollout: doc,
        best_before: listing.best_before.unwrap(),
    })
}

/// The channel's rollout as signed (None when it has none).
pub fn read_channel_rollout(
    root: &Root,
    channel: &str,
    key: &VerifyingKey,
) -> Result<Option<Rollout>, String> {
    match read(root, channel, key)? {
        Some((l, _)) => read_rollout(root, &dir(channel), &l),
        None => Ok(None),
    }
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
    match read_rollout(root, &d, &listing) {
        Err(e) => problems.push(e),
        Ok(Some(r)) => {
            if r.channel != channel {
                problems.push(format!(
                    "{d}/{}: the rollout of channel {}",
                    rollout::FILE,
                    r.channel
                ));
            }
            for x in &r.releases {
                let listed = listing
                    .files
                    .keys()
                    .any(|f| split_name(f) == Some((x.image.as_str(), x.version.as_str())));
                if !listed {
                    problems.push(format!(
                        "{d}/{}: releases {} {}, which {LISTING} does not list",
                        rollout::FILE,
                        x.image,
                        x.version
                    ));
                }
            }
        }
        Ok(None) => {}
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
    fn releases_enter_the_signed_rollout_and_bad_ones_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::open(d.path()).unwrap();
        let key = SigningKey::from_pem(PEM).unwrap();
        let vk = key.verifying_key();
        let now = 1_800_000_000;
        let opts = crate::tree::TreeOptions {
            channel: "stable",
            key: &key,
            valid_for: 86_400 * 10,
            now,
            base_url: None,
            keep: 2,
            progress: &|_| {},
        };
        for v in ["1", "2"] {
            let p = payload(&root, &format!("img_{v}_x86-64.efi"), v.as_bytes());
            publish(&root, &[p], &opts).unwrap();
        }
        let req = |version: &'static str, action: Action| ReleaseRequest {
            channel: "stable",
            image: "img",
            version,
            action,
            barrier: None,
            key: &key,
            now,
            valid_for: 86_400 * 10,
        };
        let wave = Action::Wave(rollout::parse_wave("10%/24h").unwrap());
        // Published but not released: the channel has no rollout yet.
        assert_eq!(read_channel_rollout(&root, "stable", &vk).unwrap(), None);
        let r = release(&root, &req("2", wave)).unwrap();
        assert_eq!((r.release.start, r.release.duration), (1000, 86_400));
        let (l, _) = read(&root, "stable", &vk).unwrap().unwrap();
        assert!(l.files.contains_key(rollout::FILE), "{l:?}");
        assert!(verify(&root, "stable", &vk, now).is_empty());
        let doc = read_channel_rollout(&root, "stable", &vk).unwrap().unwrap();
        assert_eq!(doc.find("img", "2").unwrap().share(now + 43_200), 5500);
        // Pause, resume, barrier.
        release(&root, &req("2", Action::Pause)).unwrap();
        let doc = read_channel_rollout(&root, "stable", &vk).unwrap().unwrap();
        assert!(doc.find("img", "2").unwrap().paused);
        let e = match release(&root, &req("1", Action::Resume)) {
            Err(ReleaseError::Usage(m, _)) => m,
            other => panic!("{other:?}"),
        };
        assert!(e.contains("has not been released"), "{e}");
        release(&root, &req("2", Action::Resume)).unwrap();
        let mut b = req("1", Action::Wave(rollout::parse_wave("100%").unwrap()));
        b.barrier = Some(true);
        release(&root, &b).unwrap();
        // A missing channel and an unpublished version name the fix.
        let mut missing = req("2", wave);
        missing.channel = "beta";
        match release(&root, &missing) {
            Err(ReleaseError::Usage(m, hint)) => {
                assert!(m.contains("no channel `beta` (it has stable)"), "{m}");
                assert!(hint.contains("kiln publish"), "{hint}");
            }
            other => panic!("{other:?}"),
        }
        match release(&root, &req("7", wave)) {
            Err(ReleaseError::Usage(m, _)) => assert!(m.contains("not published"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Pruning (keep 2) drops version 2's files and release, but keeps
        // the barrier 1.
        for v in ["3", "4"] {
            let p = payload(&root, &format!("img_{v}_x86-64.efi"), v.as_bytes());
            publish(&root, &[p], &opts).unwrap();
        }
        let doc = read_channel_rollout(&root, "stable", &vk).unwrap().unwrap();
        assert!(doc.find("img", "1").is_some() && doc.find("img", "2").is_none());
        assert!(root.exists("sysupdate/stable/img_1_x86-64.efi"));
        assert!(!root.exists("sysupdate/stable/img_2_x86-64.efi"));
        assert!(verify(&root, "stable", &vk, now).is_empty());
        // A rollout changed after signing: verify and release refuse it.
        let text = root.read_to_string("sysupdate/stable/ROLLOUT").unwrap();
        root.write(
            "sysupdate/stable/ROLLOUT",
            text.replace("active", "paused").as_bytes(),
            0o644,
        )
        .unwrap();
        let p = verify(&root, "stable", &vk, now);
        assert!(
            p.iter()
                .any(|m| m.contains("ROLLOUT") && m.contains("changed after signing")),
            "{p:?}"
        );
        assert!(matches!(
            release(&root, &req("4", wave)),
            Err(ReleaseError::Publish(_))
        ));
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

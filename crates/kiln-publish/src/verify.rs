//! `kiln verify TREE`: checks a download tree as a client would before
//! trusting it.
//!
//! For each channel document: the signature (with the key the user gives,
//! never one found in the tree), rollback (a serial older than the last one
//! this machine accepted, or the same serial with other content), freeze
//! (past its expiry), and every file it lists (present inside the tree,
//! size and sha256). The serial is remembered only when everything passed.

use std::io::Read;
use std::path::{Path, PathBuf};

use kiln_attest::VerifyingKey;
use kiln_rootfs::inroot::Root;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::document::Channel;
use crate::tree::{document_path, read_limited};
use crate::{parse_rfc3339, PublishError};

pub fn hash(r: &mut impl Read) -> std::io::Result<(u64, String)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}

pub struct VerifyOptions<'a> {
    pub key: &'a VerifyingKey,
    /// Channels to check; empty: every `channels/*.json`.
    pub channels: Vec<String>,
    pub now: i64,
    /// Where the last accepted serial of each channel is kept; None: no
    /// rollback check against earlier runs.
    pub state_dir: Option<PathBuf>,
    pub progress: &'a dyn Fn(&str),
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ChannelResult {
    pub channel: String,
    pub document: String,
    pub serial: Option<u64>,
    pub expires: Option<String>,
    pub images: usize,
    pub versions: usize,
    pub files_checked: usize,
    pub bytes_checked: u64,
    /// Serial last accepted on this machine, if any.
    pub last_seen_serial: Option<u64>,
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct VerifyReport {
    pub schema_version: u32,
    pub tree: String,
    pub keyid: String,
    pub ok: bool,
    pub channels: Vec<ChannelResult>,
}

/// The default place for last-seen serials: `$XDG_STATE_HOME/kiln/trees`
/// (else `~/.local/state/kiln/trees`).
pub fn default_state_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .map(|d| d.join("kiln/trees"))
}

fn state_file(dir: &Path, keyid: &str, channel: &str) -> PathBuf {
    let name = hex::encode(Sha256::digest(format!("{keyid}\0{channel}").as_bytes()));
    dir.join(format!("{}.seen", &name[..32]))
}

/// `SERIAL SHA256-OF-PAYLOAD` as last accepted.
fn read_seen(path: &Path) -> Option<(u64, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut it = text.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.to_string()))
}

pub fn verify(tree: &Path, opts: &VerifyOptions<'_>) -> Result<VerifyReport, PublishError> {
    verify_documents(tree, opts).map(|(report, _)| report)
}

/// [`verify`], also returning each channel's document as it was checked
/// (`None` where it could not be read or verified).
pub(crate) fn verify_documents(
    tree: &Path,
    opts: &VerifyOptions<'_>,
) -> Result<(VerifyReport, Vec<Option<Channel>>), PublishError> {
    let root = Root::open(tree).map_err(|e| PublishError::Tree {
        path: tree.to_path_buf(),
        message: format!("cannot open the tree: {e}"),
    })?;
    let mut channels = opts.channels.clone();
    if channels.is_empty() {
        let listed = root.read_dir("channels").map_err(|e| PublishError::Tree {
            path: tree.join("channels"),
            message: format!("no channel documents ({e}): not a Kiln download tree"),
        })?;
        for (n, _) in listed {
            if let Some(c) = n.to_str().and_then(|n| n.strip_suffix(".json")) {
                if crate::document::check_channel(c).is_ok() {
                    channels.push(c.to_string());
                }
            }
        }
        if channels.is_empty() {
            return Err(PublishError::Tree {
                path: tree.join("channels"),
                message: "holds no channel document".into(),
            });
        }
    }
    let keyid = opts.key.keyid();
    let mut report = VerifyReport {
        schema_version: 1,
        tree: tree.display().to_string(),
        keyid: keyid.clone(),
        ok: true,
        channels: Vec::new(),
    };
    let mut documents = Vec::new();
    for c in &channels {
        let (r, doc) = verify_channel(&root, tree, c, opts, &keyid);
        report.ok &= r.problems.is_empty();
        report.channels.push(r);
        documents.push(doc);
    }
    Ok((report, documents))
}

fn verify_channel(
    root: &Root,
    tree: &Path,
    channel: &str,
    opts: &VerifyOptions<'_>,
    keyid: &str,
) -> (ChannelResult, Option<Channel>) {
    let rel = document_path(channel);
    let mut r = ChannelResult {
        channel: channel.into(),
        document: rel.clone(),
        serial: None,
        expires: None,
        images: 0,
        versions: 0,
        files_checked: 0,
        bytes_checked: 0,
        last_seen_serial: None,
        problems: Vec::new(),
    };
    if let Err(m) = crate::document::check_channel(channel) {
        r.problems.push(m);
        return (r, None);
    }
    let bytes = match read_limited(root, &rel, crate::document::MAX_DOCUMENT) {
        Ok(b) => b,
        Err(e) => {
            r.problems.push(format!("{rel}: cannot read it: {e}"));
            return (r, None);
        }
    };
    let doc = match Channel::open(&bytes, opts.key, &tree.join(&rel).display().to_string()) {
        Ok(d) => d,
        Err(e) => {
            r.problems.push(e.to_string());
            return (r, None);
        }
    };
    (opts.progress)(&format!(
        "{rel}: signature by key {} verified, serial {}",
        &keyid[..16],
        doc.serial
    ));
    r.serial = Some(doc.serial);
    r.expires = Some(doc.expires.clone());
    if doc.channel != channel {
        r.problems.push(format!(
            "{rel} is the signed document of channel {:?}, not {channel:?} (a document moved between channels)",
            doc.channel
        ));
    }
    let payload_sha = hex::encode(Sha256::digest(&bytes));
    let state = opts
        .state_dir
        .as_ref()
        .map(|d| state_file(d, keyid, channel));
    if let Some((seen, seen_sha)) = state.as_deref().and_then(read_seen) {
        r.last_seen_serial = Some(seen);
        if doc.serial < seen {
            r.problems.push(format!(
                "rollback: serial {} is older than serial {seen}, which this machine accepted before",
                doc.serial
            ));
        } else if doc.serial == seen && seen_sha != payload_sha {
            r.problems.push(format!(
                "serial {} was accepted before with other content: the publisher signed two documents with one serial",
                doc.serial
            ));
        }
    }
    match parse_rfc3339(&doc.expires) {
        Some(e) if e <= opts.now => r.problems.push(format!(
            "expired at {} (a frozen tree: the publisher stopped refreshing it, or it is replayed)",
            doc.expires
        )),
        Some(_) => {}
        None => r
            .problems
            .push(format!("its expiry {:?} is not a time", doc.expires)),
    }
    r.images = doc.images.len();
    for (name, image) in &doc.images {
        r.versions += image.versions.len();
        for (key, v) in &image.versions {
            for f in &v.files {
                r.files_checked += 1;
                let problem = match root.open_file(&f.path) {
                    Err(e) => Some(format!("{}: {e}", f.path)),
                    Ok(mut file) => match hash(&mut file) {
                        Err(e) => Some(format!("{}: {e}", f.path)),
                        Ok((n, h)) => {
                            r.bytes_checked += n;
                            if n != f.size {
                                Some(format!(
                                    "{}: {n} bytes, the document says {}",
                                    f.path, f.size
                                ))
                            } else if h != f.sha256 {
                                Some(format!(
                                    "{}: sha256 {h}, the document says {}",
                                    f.path, f.sha256
                                ))
                            } else {
                                None
                            }
                        }
                    },
                };
                if let Some(p) = problem {
                    r.problems.push(format!("{name} {key}: {p}"));
                }
            }
        }
    }
    if r.problems.is_empty() {
        if let Some(path) = &state {
            let newer = r.last_seen_serial.is_none_or(|s| doc.serial > s);
            if newer {
                if let Some(d) = path.parent() {
                    let _ = std::fs::create_dir_all(d);
                }
                if let Err(e) = kiln_model::fsutil::write_atomic(
                    path,
                    format!("{} {payload_sha}\n", doc.serial).as_bytes(),
                ) {
                    r.problems.push(format!(
                        "cannot remember serial {} in {}: {e}",
                        doc.serial,
                        path.display()
                    ));
                }
            }
        }
    }
    // The machines' view of the channel: the signed sysupdate listing.
    let sysupdate = crate::sysupdate::verify(root, channel, opts.key, opts.now);
    if sysupdate.is_empty() && root.exists(crate::sysupdate::dir(channel)) {
        (opts.progress)(&format!(
            "{}/{}: OpenPGP signature verified, every payload intact",
            crate::sysupdate::dir(channel),
            crate::sysupdate::LISTING
        ));
    }
    r.problems.extend(sysupdate);
    (r, Some(doc))
}

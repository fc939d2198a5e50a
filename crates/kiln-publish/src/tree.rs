//! Publishing builds into a download tree.
//!
//! ```text
//! TREE/pool/IMAGE/SHA256/NAME        every file, content-addressed, never rewritten
//! TREE/channels/CHANNEL.json         the signed document (DSSE envelope), written last
//! TREE/streams/v1/index.json         simplestreams index:1.0
//! TREE/streams/v1/CONTENT_ID.json    simplestreams products:1.0, one per channel
//! TREE/coreos/CHANNEL/IMAGE.json     Fedora CoreOS stream.json shape, latest version
//! ```
//!
//! Files are written to a temporary name and renamed, so a publish that
//! dies leaves no partial file at a pool path and an unchanged document;
//! the next run finds the files already there (their hash checked) and
//! goes on. Nothing is followed out of the tree: it is opened as a
//! [`Root`].

use std::path::{Path, PathBuf};

use kiln_attest::SigningKey;
use kiln_rootfs::inroot::Root;

use crate::document::{self, Channel, Version, MAX_DOCUMENT};
use crate::source::{Build, Role};
use crate::{rfc3339, PublishError};

pub struct TreeOptions<'a> {
    pub channel: &'a str,
    pub key: &'a SigningKey,
    /// Seconds the document stays valid after it is written.
    pub valid_for: i64,
    pub now: i64,
    /// Prefix for absolute URLs in the stream.json export (else paths
    /// relative to the tree).
    pub base_url: Option<&'a str>,
    /// Versions of each image the sysupdate listing keeps (newest first).
    pub keep: usize,
    pub progress: &'a dyn Fn(&str),
}

/// One file of a published build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedFile {
    pub role: Role,
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// False when the tree already had it.
    pub copied: bool,
}

#[derive(Clone, Debug)]
pub struct PublishedBuild {
    pub build_id: String,
    pub image: String,
    pub version: String,
    pub files: Vec<PublishedFile>,
}

#[derive(Clone, Debug)]
pub struct TreeReport {
    pub tree: PathBuf,
    pub channel: String,
    pub document: String,
    pub serial: u64,
    /// Whether the channel document was written (false: it already listed
    /// exactly these builds and is far from its expiry).
    pub document_written: bool,
    pub builds: Vec<PublishedBuild>,
    pub bytes_copied: u64,
    /// The channel's sysupdate listing, when a build had update artifacts.
    pub sysupdate: Option<crate::sysupdate::SysupdateReport>,
}

pub fn document_path(channel: &str) -> String {
    format!("channels/{channel}.json")
}

/// Reads and verifies a channel document of the tree, if it has one.
pub fn read_channel(
    root: &Root,
    channel: &str,
    key: &kiln_attest::VerifyingKey,
) -> Result<Option<Channel>, PublishError> {
    let rel = document_path(channel);
    let what = root.path().join(&rel).display().to_string();
    let bytes = match read_limited(root, &rel, MAX_DOCUMENT) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(PublishError::Tree {
                path: what.into(),
                message: format!("cannot read it: {e}"),
            })
        }
    };
    Channel::open(&bytes, key, &what).map(Some)
}

/// The file `rel` of `root`, refused when larger than `max`.
pub fn read_limited(root: &Root, rel: &str, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = root.open_file(rel)?;
    let mut out = Vec::new();
    f.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(out)
}

/// Holds the tree's publish lock (another publish into the same tree waits).
struct Lock(#[allow(dead_code)] std::fs::File);

fn lock_tree(tree: &Path, progress: &dyn Fn(&str)) -> Result<Lock, PublishError> {
    let path = tree.join(".kiln-publish.lock");
    let f = kiln_model::owner::lock_waiting(&path, || {
        progress(&format!(
            "waiting for another publish into {}",
            tree.display()
        ))
    })
    .map_err(PublishError::io(format!("locking {}", path.display())))?;
    Ok(Lock(f))
}

/// Publishes `builds` into the tree at `tree` under `opts.channel`.
pub fn publish(
    tree: &Path,
    builds: &[&Build],
    opts: &TreeOptions<'_>,
) -> Result<TreeReport, PublishError> {
    document::check_channel(opts.channel).map_err(|m| PublishError::Target {
        target: format!("--channel {}", opts.channel),
        message: m,
    })?;
    let progress = opts.progress;
    std::fs::create_dir_all(tree)
        .map_err(PublishError::io(format!("creating {}", tree.display())))?;
    let _lock = lock_tree(tree, progress)?;
    let root = Root::open(tree).map_err(PublishError::io(format!("opening {}", tree.display())))?;
    let key = opts.key.verifying_key();
    let old = read_channel(&root, opts.channel, &key).map_err(|e| match e {
        PublishError::Tree { path, message } => PublishError::Tree {
            path,
            message: format!(
                "{message}; publish with the key that signed it, or move the document away to start the channel afresh"
            ),
        },
        e => e,
    })?;
    let mut doc = old.clone().unwrap_or_else(|| Channel::new(opts.channel));
    let mut report = TreeReport {
        tree: tree.to_path_buf(),
        channel: opts.channel.into(),
        document: document_path(opts.channel),
        serial: doc.serial,
        document_written: false,
        builds: Vec::new(),
        bytes_copied: 0,
        sysupdate: None,
    };
    let mut payloads = Vec::new();
    for b in builds {
        let image = &b.manifest.image;
        let version_key = b.version_key();
        let mut files = Vec::new();
        let mut entries = Vec::new();
        for f in &b.files {
            let (size, sha) = match &f.digest {
                Some(d) => d.clone(),
                // An OCI layout: archive it once to learn its digest.
                None => b.write_file(f, &mut std::io::sink())?,
            };
            let rel = format!("pool/{image}/{sha}/{}", f.name);
            document::check_path(&rel).map_err(|m| PublishError::Build {
                path: b.dir.clone(),
                message: m,
            })?;
            let copied = put(&root, b, f, &rel, size, &sha, progress)?;
            if copied {
                report.bytes_copied += size;
            }
            if f.format == Some(kiln_model::Format::Update) {
                payloads.push(crate::sysupdate::Payload {
                    name: f.name.clone(),
                    pool: rel.clone(),
                    size,
                    sha256: sha.clone(),
                });
            }
            entries.push(document::File {
                role: f.role.name().into(),
                format: f.format.map(|x| x.name().to_string()),
                architecture: f.architecture.clone(),
                path: rel.clone(),
                size,
                sha256: sha.clone(),
            });
            files.push(PublishedFile {
                role: f.role,
                path: rel,
                size,
                sha256: sha,
                copied,
            });
        }
        let m = &b.manifest;
        doc.images
            .entry(image.clone())
            .or_default()
            .versions
            .insert(
                version_key.clone(),
                Version {
                    build_id: b.id.clone(),
                    image_version: m.version.clone(),
                    suite: m.suite.clone(),
                    architectures: m.architectures.clone(),
                    distroless: m.distroless,
                    built: rfc3339(m.source_date_epoch),
                    recipe_sha256: m.lock.recipe_sha256.clone(),
                    packages: m.packages.len(),
                    files: entries,
                },
            );
        report.builds.push(PublishedBuild {
            build_id: b.id.clone(),
            image: image.clone(),
            version: version_key,
            files,
        });
    }
    // The machines' listing before the document that names the builds.
    if !payloads.is_empty() {
        report.sysupdate = Some(crate::sysupdate::publish(&root, &payloads, opts)?);
    }
    let fresh = old.as_ref().is_some_and(|o| {
        crate::parse_rfc3339(&o.expires).is_some_and(|e| e - opts.now > opts.valid_for / 2)
    });
    if old.as_ref().is_some_and(|o| o.same_images(&doc)) && fresh {
        progress(&format!(
            "{} already lists these builds (serial {}); not rewritten",
            report.document, doc.serial
        ));
        return Ok(report);
    }
    doc.serial += 1;
    doc.generated = rfc3339(opts.now);
    doc.expires = rfc3339(opts.now + opts.valid_for);
    // The exports first, the signed document last: a reader that sees the
    // new document finds every file it names.
    crate::exports::write(&root, &doc, opts.base_url)?;
    let envelope = doc.sign(opts.key);
    no_links(&root, &report.document)?;
    root.write(&report.document, envelope.as_bytes(), 0o644)
        .map_err(PublishError::io(format!(
            "writing {}",
            tree.join(&report.document).display()
        )))?;
    progress(&format!(
        "signed {} (serial {}, expires {})",
        report.document, doc.serial, doc.expires
    ));
    report.serial = doc.serial;
    report.document_written = true;
    Ok(report)
}

/// Refuses `rel` when one of its directories in the tree is a symbolic
/// link: a download tree is served as it is, and a link would make the
/// served tree differ from what was checked (or lead a web server out).
pub(crate) fn no_links(root: &Root, rel: &str) -> Result<(), PublishError> {
    let mut at = String::new();
    let parts: Vec<&str> = rel.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        if !at.is_empty() {
            at.push('/');
        }
        at.push_str(part);
        match root.metadata(&at) {
            Ok(m) if m.is_symlink() => {
                return Err(PublishError::Tree {
                    path: root.path().join(&at),
                    message: "is a symbolic link; a download tree holds only real directories and files, \
                              and Kiln follows no link in it (replace the link with a directory, or publish \
                              to the directory it points at)"
                        .into(),
                })
            }
            Ok(m) if !m.is_dir() => {
                return Err(PublishError::Tree {
                    path: root.path().join(&at),
                    message: "is not a directory; move it away".into(),
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// Puts one file at `rel` unless the tree has it already (same size and
/// hash). Returns whether it was copied.
fn put(
    root: &Root,
    b: &Build,
    f: &crate::source::BuildFile,
    rel: &str,
    size: u64,
    sha: &str,
    progress: &dyn Fn(&str),
) -> Result<bool, PublishError> {
    no_links(root, rel)?;
    if let Ok(m) = root.metadata(rel) {
        if m.is_file() && m.len == size {
            let mut existing = root
                .open_file(rel)
                .map_err(PublishError::io(format!("reading {rel} in the tree")))?;
            let (_, have) = crate::verify::hash(&mut existing)
                .map_err(PublishError::io(format!("reading {rel} in the tree")))?;
            if have == sha {
                progress(&format!("{rel} already there"));
                return Ok(false);
            }
        }
        progress(&format!("{rel} in the tree is damaged; replacing it"));
    }
    let mut failure = None;
    let r = root.write_with(Path::new(rel), 0o644, &mut |out| {
        let mut w = Sparse::new(out);
        match b.write_file(f, &mut w) {
            Ok((n, h)) if n == size && h == sha => w.finish(),
            Ok(_) => Err(std::io::Error::other(
                "the archive came out different the second time",
            )),
            Err(e) => {
                failure = Some(e);
                Err(std::io::Error::other("write failed"))
            }
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    r.map_err(PublishError::io(format!(
        "writing {rel} in {}",
        root.path().display()
    )))?;
    progress(&format!("copied {} ({size} bytes) to {rel}", f.rel));
    Ok(true)
}

/// Writes into a file leaving holes where whole 4 KiB blocks are zero: a
/// raw disk image is mostly holes, and copied plainly a 2 GiB `disk.raw`
/// would take 2 GiB in the pool.
struct Sparse<'a> {
    file: &'a mut std::fs::File,
    buf: Vec<u8>,
    /// Zero bytes not written yet (skipped over with a seek).
    hole: u64,
    len: u64,
}

const BLOCK: usize = 4096;

impl<'a> Sparse<'a> {
    fn new(file: &'a mut std::fs::File) -> Sparse<'a> {
        Sparse {
            file,
            buf: Vec::with_capacity(1 << 20),
            hole: 0,
            len: 0,
        }
    }

    /// Writes out `buf`'s first `n` bytes, runs of data as one write.
    fn drain(&mut self, n: usize) -> std::io::Result<()> {
        use std::io::{Seek, Write};
        let mut k = 0;
        while k < n {
            let end = (k + BLOCK).min(n);
            if self.buf[k..end].iter().all(|&b| b == 0) {
                self.hole += (end - k) as u64;
                k = end;
                continue;
            }
            if self.hole > 0 {
                self.file
                    .seek(std::io::SeekFrom::Current(self.hole as i64))?;
                self.hole = 0;
            }
            let mut stop = end;
            while stop < n {
                let next = (stop + BLOCK).min(n);
                if self.buf[stop..next].iter().all(|&b| b == 0) {
                    break;
                }
                stop = next;
            }
            self.file.write_all(&self.buf[k..stop])?;
            k = stop;
        }
        self.buf.drain(..n);
        Ok(())
    }

    /// Writes what is left and gives the file its whole length (a hole at
    /// the end included).
    fn finish(mut self) -> std::io::Result<()> {
        let n = self.buf.len();
        self.drain(n)?;
        self.file.set_len(self.len)?;
        Ok(())
    }
}

impl std::io::Write for Sparse<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.len += data.len() as u64;
        if self.buf.len() >= 1 << 20 {
            let whole = self.buf.len() / BLOCK * BLOCK;
            self.drain(whole)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

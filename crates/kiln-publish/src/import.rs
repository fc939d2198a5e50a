//! What `kiln catalog import TREE` reads from a download tree: every image
//! version of every channel that verifies (signature, rollback, expiry,
//! every file), with its `manifest.json` read from the pool and checked
//! against the signed document.

use std::path::{Path, PathBuf};

use kiln_rootfs::inroot::Root;
use sha2::{Digest, Sha256};

use crate::document::{self, File, MAX_DOCUMENT};
use crate::tree::{document_path, read_limited};
use crate::verify::{verify_documents, VerifyOptions, VerifyReport};
use crate::PublishError;

/// One image version listed in a verified channel document.
#[derive(Clone, Debug)]
pub struct TreeVersion {
    pub channel: String,
    /// The channel document's path.
    pub document: PathBuf,
    pub image: String,
    pub version: String,
    /// The bytes of its `manifest.json`, whose sha256 is the signed build id.
    pub manifest: Vec<u8>,
    /// Its files, paths relative to the tree.
    pub files: Vec<File>,
}

/// Verifies the tree at `tree` and returns the versions of the channels
/// that passed (with the report, which names the problems of the others).
pub fn versions(
    tree: &Path,
    opts: &VerifyOptions<'_>,
) -> Result<(VerifyReport, Vec<TreeVersion>), PublishError> {
    let (report, documents) = verify_documents(tree, opts)?;
    let root = Root::open(tree).map_err(PublishError::io(format!("opening {}", tree.display())))?;
    let mut out = Vec::new();
    // The documents as verified: not read again (they could change between).
    for (c, doc) in report.channels.iter().zip(&documents) {
        let Some(doc) = doc.as_ref().filter(|_| c.problems.is_empty()) else {
            continue;
        };
        let bad = |message: String| PublishError::Tree {
            path: tree.join(document_path(&c.channel)),
            message,
        };
        for (image, i) in &doc.images {
            for (key, v) in &i.versions {
                let what = format!("{image} {key}");
                let m = v
                    .files
                    .iter()
                    .find(|f| f.role == "manifest")
                    .ok_or_else(|| bad(format!("{what} lists no manifest.json")))?;
                document::check_path(&m.path).map_err(|e| bad(format!("{what}: {e}")))?;
                let bytes = read_limited(&root, &m.path, MAX_DOCUMENT)
                    .map_err(|e| bad(format!("{what}: {}: {e}", m.path)))?;
                let sha = hex::encode(Sha256::digest(&bytes));
                if sha != m.sha256 || sha != v.build_id {
                    return Err(bad(format!(
                        "{what}: {} has sha256 {sha}, the signed document says {} (build {})",
                        m.path, m.sha256, v.build_id
                    )));
                }
                out.push(TreeVersion {
                    channel: c.channel.clone(),
                    document: tree.join(document_path(&c.channel)),
                    image: image.clone(),
                    version: key.clone(),
                    manifest: bytes,
                    files: v.files.clone(),
                });
            }
        }
    }
    Ok((report, out))
}
